//! Discovery over 2,000 RDS resources in the emulator: which are found, how many API calls
//! that takes, and a tagged instance that is really a local PostgreSQL checked as its admin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use autouser_aws::discovery::{DiscoveryOptions, DiscoveryStatus};
use autouser_aws::AwsContext;
use autouser_policy::config::{Config, RdsLocator, RdsResource};
use aws_sdk_rds::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_rds::types::Tag;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use futures_util::stream::{self, StreamExt};
use scratch_aws::Moto;

use crate::cluster::{cluster, create_admin, superuser};

const REGIONS: [&str; 2] = ["ap-southeast-2", "sa-east-1"];
const ADMIN_TAG: &str = "teleport.dev/db-admin";

/// Counts the RDS API requests sent, by operation (retries included).
#[derive(Debug, Clone, Default)]
struct CallCounter(Arc<Mutex<BTreeMap<String, usize>>>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg.load::<Metadata>().map(|m| m.name().to_string()).unwrap_or_default();
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
        Ok(())
    }
}

impl CallCounter {
    fn calls(&self, operation: &str) -> usize {
        self.0.lock().unwrap().get(operation).copied().unwrap_or(0)
    }
}

fn tags(tagged: bool, extra: &[(&str, &str)]) -> Vec<Tag> {
    let mut tags: Vec<Tag> = extra.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
    if tagged {
        tags.push(Tag::builder().key(ADMIN_TAG).value("teleport-admin").build());
    }
    tags
}

async fn rds(region: &str) -> aws_sdk_rds::Client {
    let sdk = Moto::global().sdk_config(None).await;
    aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&sdk).region(aws_sdk_rds::config::Region::new(region.to_string())).build(),
    )
}

enum Resource {
    Instance { engine: &'static str, iam: bool, port: Option<i32> },
    Cluster { engine: &'static str },
}

/// Creates a resource. A create the SDK retried after the emulator had already made the
/// resource fails on its second attempt (the automated snapshot exists): that is success.
async fn create(region: &str, id: String, resource: Resource, tags: Vec<Tag>) {
    let client = rds(region).await;
    match resource {
        Resource::Instance { engine, iam, port } => {
            let created = client
                .create_db_instance()
                .db_instance_identifier(&id)
                .db_instance_class("db.t4g.micro")
                .engine(engine)
                .allocated_storage(20)
                .master_username("master")
                .master_user_password("master-password")
                .enable_iam_database_authentication(iam)
                .set_port(port)
                .set_tags(Some(tags))
                .send()
                .await;
            if let Err(e) = created {
                client.describe_db_instances().db_instance_identifier(&id).send().await.map_err(|_| e).unwrap();
            }
        }
        Resource::Cluster { engine } => {
            let created = client
                .create_db_cluster()
                .db_cluster_identifier(&id)
                .engine(engine)
                .master_username("master")
                .master_user_password("master-password")
                .enable_iam_database_authentication(true)
                .set_tags(Some(tags))
                .send()
                .await;
            if let Err(e) = created {
                client.describe_db_clusters().db_cluster_identifier(&id).send().await.map_err(|_| e).unwrap();
            }
        }
    }
}

/// Per region: 700 PostgreSQL instances (every 10th tagged), 150 MySQL instances (every 10th
/// tagged), 100 Aurora PostgreSQL clusters (every 5th tagged), 50 Aurora MySQL clusters (every
/// 5th tagged). 1,000 per region, 2,000 in all. Returns the ids discovery must find.
async fn populate() -> BTreeSet<String> {
    let mut plan = Vec::new();
    let mut expected = BTreeSet::new();
    for region in REGIONS {
        for i in 0..700 {
            let id = format!("pg-{region}-{i}");
            if i % 10 == 0 {
                expected.insert(id.clone());
            }
            plan.push((region, id, Resource::Instance { engine: "postgres", iam: true, port: None }, i % 10 == 0));
        }
        for i in 0..150 {
            plan.push((
                region,
                format!("my-{region}-{i}"),
                Resource::Instance { engine: "mysql", iam: true, port: None },
                i % 10 == 0,
            ));
        }
        for i in 0..100 {
            let id = format!("apg-{region}-{i}");
            if i % 5 == 0 {
                expected.insert(id.clone());
            }
            plan.push((region, id, Resource::Cluster { engine: "aurora-postgresql" }, i % 5 == 0));
        }
        for i in 0..50 {
            plan.push((region, format!("amy-{region}-{i}"), Resource::Cluster { engine: "aurora-mysql" }, i % 5 == 0));
        }
    }
    assert_eq!(plan.len(), 2000);
    stream::iter(plan)
        .map(|(region, id, resource, tagged)| create(region, id, resource, tags(tagged, &[("env", "test")])))
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    expected
}

#[tokio::test]
async fn discovery_finds_every_tagged_postgres_resource_in_o_pages_calls() {
    let mut expected = populate().await;
    // Special cases in the first region: a tagged instance without IAM authentication, a
    // tagged read replica, and a tagged instance that is the local PostgreSQL, configured with
    // its admin's password secret and `hostaddr`.
    let region = REGIONS[0];
    create(
        region,
        "pg-noiam".into(),
        Resource::Instance { engine: "postgres", iam: false, port: None },
        tags(true, &[]),
    )
    .await;
    rds(region)
        .await
        .create_db_instance_read_replica()
        .db_instance_identifier("pg-replica")
        .source_db_instance_identifier(format!("pg-{region}-0"))
        .set_tags(Some(tags(true, &[])))
        .send()
        .await
        .unwrap();
    let port = i32::from(cluster().port());
    create(
        region,
        "pg-local".into(),
        Resource::Instance { engine: "postgres", iam: true, port: Some(port) },
        tags(true, &[]),
    )
    .await;
    // The admin tag names `teleport-admin` everywhere; the local instance's admin has a secret.
    let admin = "teleport-admin";
    create_admin(admin, Some("discovery-admin-password")).await;
    // An RDS admin holds rds_iam WITH ADMIN OPTION (preflight checks it).
    superuser()
        .await
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT rds_iam TO \"teleport-admin\" WITH ADMIN OPTION",
        )
        .await
        .unwrap();
    let arn = Moto::global().create_password_secret("discovery-admin", admin, "discovery-admin-password").await;
    expected.extend(["pg-noiam".to_string(), "pg-replica".to_string(), "pg-local".to_string()]);

    let config = Config::parse(
        scratch_login::schema_checked(&format!(
            r#"managed_group: discovered-group
databases:
  - name: local
    rds: {{instance_id: pg-local, region: {region}, hostaddr: 127.0.0.1}}
    auth: {{method: password, secret_arn: "{arn}"}}
    tls: {{mode: verify-ca, ca_file: {ca:?}}}
"#,
            ca = cluster().ca_cert_path().display().to_string()
        )),
        std::path::Path::new("/"),
    )
    .unwrap();
    let counter = CallCounter::default();
    let aws = AwsContext::new(Moto::global().sdk_config(None).await).with_rds_interceptor(counter.clone());
    let options = DiscoveryOptions { regions: REGIONS.map(String::from).to_vec(), concurrency: 8, bootstrap: true };
    let report = aws.discover(&config, &options).await;

    let found: BTreeSet<String> =
        report.databases.iter().map(|d| d.resource.split_whitespace().nth(2).unwrap().to_string()).collect();
    assert_eq!(found, expected, "discovered exactly the tagged PostgreSQL instances and Aurora PostgreSQL clusters");
    assert!(report.failed_regions.is_empty(), "{:?}", report.failed_regions);

    // 851 instances and 150 clusters in the first region, 850 and 150 in the second: RDS
    // answers 100 per page. Tags come with the descriptions: no ListTagsForResource at all.
    // The read replica is described again when it is examined, and so is its source (its
    // writer): two calls more.
    assert!(counter.calls("DescribeDBInstances") <= 9 + 9 + 2 + 2, "{counter:?}");
    assert!(counter.calls("DescribeDBClusters") <= 2 + 2 + 2, "{counter:?}");
    assert_eq!(counter.calls("ListTagsForResource"), 0, "{counter:?}");

    let by_id = |id: &str| {
        report
            .databases
            .iter()
            .find(|d| d.resource.split_whitespace().nth(2) == Some(id))
            .unwrap_or_else(|| panic!("{id} not in the report"))
    };
    let local = by_id("pg-local");
    assert_eq!(local.database, "local", "the configured entry is used");
    assert_eq!(local.status, DiscoveryStatus::Ready, "{}", report.to_text());
    assert_eq!(local.bootstrapped, ["CREATE ROLE \"discovered-group\" NOLOGIN"]);
    let noiam = by_id("pg-noiam");
    assert_eq!(noiam.status, DiscoveryStatus::NeedsAttention);
    assert!(noiam.reason.as_deref().unwrap().contains("--enable-iam-database-authentication"), "{noiam:?}");
    // The read replica is reported with its writer, which is checked (and cannot be reached).
    let replica = by_id("pg-replica");
    assert_eq!(replica.status, DiscoveryStatus::NeedsAttention, "{replica:?}");
    let source = format!("RDS instance pg-{region}-0 in {region} at pg-{region}-0.");
    assert!(replica.writer.as_deref().unwrap().starts_with(&source), "{replica:?}");
    assert!(replica.reason.as_deref().unwrap().starts_with("the admin cannot log in to the writer"), "{replica:?}");
    assert_eq!(report.count(DiscoveryStatus::Skipped), 0);
    // The rest have endpoints nobody can reach from here: each needs attention on its own.
    let unreachable = by_id(&format!("apg-{}-0", REGIONS[1]));
    assert_eq!(unreachable.status, DiscoveryStatus::NeedsAttention);
    assert_eq!(unreachable.preflight.as_ref().unwrap().findings[0].check, "login");
    assert_eq!(report.count(DiscoveryStatus::Ready), 1);

    // The tag is removed: the resource is reported as no longer managed.
    rds(region)
        .await
        .remove_tags_from_resource()
        .resource_name(format!("arn:aws:rds:{region}:123456789012:db:pg-local"))
        .tag_keys(ADMIN_TAG)
        .send()
        .await
        .unwrap();
    let locator =
        RdsLocator { resource: RdsResource::Instance("pg-local".into()), region: region.into(), hostaddr: None };
    let untagged = aws.discover_one(&config, locator, true).await;
    assert_eq!(untagged.status, DiscoveryStatus::NotManaged, "{untagged:?}");
    assert!(untagged.reason.as_deref().unwrap().contains(ADMIN_TAG), "{untagged:?}");
}
