//! Read-only RDS endpoints resolved through the emulator's RDS API: a read replica, an Aurora
//! reader instance, a cross-region replica, an Aurora global secondary. Each resolves with the
//! writer the RDS API names (sessions keep the replica's endpoint), or is refused with the
//! writer it could not reach; `allow_replica: false` keeps refusing them; discovery reports
//! them with their writers.
//!
//! Each test has its regions to itself, so that listing them finds only its resources.

use autouser_aws::discovery::{DiscoveryOptions, DiscoveryStatus};
use autouser_aws::AwsContext;
use autouser_engine::pg::AdminCredentials;
use autouser_engine::Error;
use autouser_policy::config::{AuthConfig, Config, ResolvedDatabase};
use aws_sdk_rds::types::Tag;
use scratch_aws::Moto;

const ADMIN_TAG: &str = "teleport.dev/db-admin";
const ACCOUNT: &str = "123456789012";

async fn rds(region: &str) -> aws_sdk_rds::Client {
    let sdk = Moto::global().sdk_config(None).await;
    aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&sdk).region(aws_sdk_rds::config::Region::new(region.to_string())).build(),
    )
}

fn admin_tag() -> Tag {
    Tag::builder().key(ADMIN_TAG).value("teleport-admin").build()
}

/// A PostgreSQL instance reporting `port`, tagged with the admin tag when `tagged`.
async fn instance(region: &str, id: &str, port: u16, tagged: bool) {
    let tags: &[(&str, &str)] = if tagged { &[(ADMIN_TAG, "teleport-admin")] } else { &[] };
    Moto::global().create_postgres_instance(region, id, true, Some(port), tags).await;
}

/// A read replica `id` in `region` of `source` (an id in `region`, or an ARN), tagged.
async fn read_replica(region: &str, id: &str, source: &str) {
    rds(region)
        .await
        .create_db_instance_read_replica()
        .db_instance_identifier(id)
        .source_db_instance_identifier(source)
        .tags(admin_tag())
        .send()
        .await
        .unwrap();
}

/// An Aurora PostgreSQL cluster with IAM authentication, tagged, and its instances: the first
/// becomes the writer, the others readers. Reader instances named in `tagged_readers` carry
/// the admin tag themselves.
async fn aurora(region: &str, id: &str, instances: &[&str], tagged_readers: &[&str]) {
    aurora_cluster(region, id, None).await;
    let client = rds(region).await;
    for instance in instances {
        let tags = if tagged_readers.contains(instance) { vec![admin_tag()] } else { vec![] };
        client
            .create_db_instance()
            .db_instance_identifier(*instance)
            .db_cluster_identifier(id)
            .engine("aurora-postgresql")
            .db_instance_class("db.r6g.large")
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap();
    }
}

fn arn(region: &str, kind: &str, id: &str) -> String {
    format!("arn:aws:rds:{region}:{ACCOUNT}:{kind}:{id}")
}

fn config_with(rds_yaml: &str, extra: &str) -> Config {
    let text = format!("databases:\n  - name: orders-replica\n    rds: {rds_yaml}\n{extra}");
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/")).unwrap()
}

async fn resolve(rds_yaml: &str) -> Result<ResolvedDatabase, Error> {
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config_with(rds_yaml, "");
    aws.resolve_database(&config, &config.databases[0]).await
}

/// An Aurora global database `name`: its `primary` cluster, made first, takes the writes, and
/// `secondary` replicates it in another region. Both tagged with the admin.
async fn global_database(name: &str, primary: (&str, &str), secondary: (&str, &str)) {
    rds(primary.0)
        .await
        .create_global_cluster()
        .global_cluster_identifier(name)
        .engine("aurora-postgresql")
        .send()
        .await
        .unwrap();
    for (region, id) in [primary, secondary] {
        aurora_cluster(region, id, Some(name)).await;
    }
}

/// An Aurora PostgreSQL cluster `id` with IAM authentication, tagged with the admin; a member of
/// the global database `global` if given.
async fn aurora_cluster(region: &str, id: &str, global: Option<&str>) {
    rds(region)
        .await
        .create_db_cluster()
        .db_cluster_identifier(id)
        .engine("aurora-postgresql")
        .set_global_cluster_identifier(global.map(str::to_string))
        .master_username("master")
        .master_user_password("master-password")
        .enable_iam_database_authentication(true)
        .tags(admin_tag())
        .send()
        .await
        .unwrap();
}

/// The endpoint RDS reports for an instance or cluster.
async fn endpoint_of(region: &str, kind: &str, id: &str) -> (String, u16) {
    let client = rds(region).await;
    if kind == "db" {
        let output = client.describe_db_instances().db_instance_identifier(id).send().await.unwrap();
        let endpoint = output.db_instances()[0].endpoint().unwrap();
        (endpoint.address().unwrap().to_string(), endpoint.port().unwrap() as u16)
    } else {
        let output = client.describe_db_clusters().db_cluster_identifier(id).send().await.unwrap();
        let cluster = &output.db_clusters()[0];
        (cluster.endpoint().unwrap().to_string(), cluster.port().unwrap() as u16)
    }
}

/// The writer's `host:port`, and the writer's view of the database.
fn writer_of(db: &ResolvedDatabase) -> ((String, u16), ResolvedDatabase) {
    let writer = db.writer.as_ref().unwrap_or_else(|| panic!("{} resolved without a writer", db.name));
    ((writer.host.clone(), writer.port), db.writer_database().unwrap())
}

/// The admin's IAM token for `db`: `host:port/?Action=connect&…`, its credential scope naming
/// the region it is signed for.
async fn iam_token(db: &ResolvedDatabase) -> String {
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let AdminCredentials::Password(token) = aws.admin_credentials(db).await.unwrap() else {
        panic!("an IAM admin's credentials are a password")
    };
    token
}

fn signed_for(token: &str) -> String {
    let scope = token.split("X-Amz-Credential=").nth(1).unwrap().split('&').next().unwrap();
    scope.split("%2F").nth(2).unwrap().to_string()
}

#[tokio::test]
async fn a_read_replica_resolves_with_its_source_as_the_writer() {
    const REGION: &str = "us-west-1";
    instance(REGION, "rr-main", 5499, false).await;
    read_replica(REGION, "rr-replica", "rr-main").await;
    let db = resolve(&format!("{{instance_id: rr-replica, region: {REGION}}}")).await.unwrap();
    assert!(db.host.starts_with("rr-replica."), "sessions log in to the replica: {}", db.host);
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, endpoint_of(REGION, "db", "rr-main").await);
    assert!(writer.0.starts_with("rr-main."), "{writer:?}");
    assert_eq!(writer.1, 5499);
    assert_eq!(on_writer.admin_user.name, "teleport-admin", "the replica's admin, whose role replicated");

    // The admin's IAM token for the writer is made for the writer's host, in its region.
    let token = iam_token(&on_writer).await;
    assert!(token.starts_with(&format!("{}:5499/?Action=connect&DBUser=teleport-admin&", writer.0)), "{token}");
    assert_eq!(signed_for(&token), REGION);
    assert!(iam_token(&db).await.starts_with(&format!("{}:", db.host)), "and the replica's for the replica");

    // A replica of a replica: the chain is followed to the instance that takes writes.
    read_replica(REGION, "rr-cascade", "rr-replica").await;
    let db = resolve(&format!("{{instance_id: rr-cascade, region: {REGION}}}")).await.unwrap();
    assert!(db.host.starts_with("rr-cascade."), "{}", db.host);
    assert_eq!(writer_of(&db).0, writer, "rr-main, not the intermediate replica");
}

#[tokio::test]
async fn allow_replica_false_keeps_refusing_read_replicas() {
    const REGION: &str = "us-west-1";
    instance(REGION, "rr-refused-main", 5432, false).await;
    read_replica(REGION, "rr-refused", "rr-refused-main").await;
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config_with(&format!("{{instance_id: rr-refused, region: {REGION}}}"), "    allow_replica: false\n");
    let err = aws.resolve_database(&config, &config.databases[0]).await.unwrap_err();
    assert_eq!(err.kind(), "ReadOnlyEndpoint", "{err}");
    assert!(err.to_string().contains("read replica of rr-refused-main"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_aurora_reader_instance_resolves_with_its_clusters_writer_endpoint() {
    const REGION: &str = "us-west-1";
    aurora(REGION, "ar-cluster", &["ar-writer", "ar-reader"], &[]).await;
    let cluster_endpoint = endpoint_of(REGION, "cluster", "ar-cluster").await;

    let db = resolve(&format!("{{instance_id: ar-reader, region: {REGION}}}")).await.unwrap();
    assert!(db.host.starts_with("ar-reader."), "sessions log in to the reader instance: {}", db.host);
    assert_eq!(db.labels.get(ADMIN_TAG).map(String::as_str), Some("teleport-admin"), "the cluster's tags");
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, cluster_endpoint, "the cluster (writer) endpoint, which follows failovers");
    assert!(writer.0.starts_with("ar-cluster.cluster-") && !writer.0.contains("cluster-ro-"), "{writer:?}");
    assert!(iam_token(&on_writer).await.starts_with(&format!("{}:{}/", writer.0, writer.1)));

    // The cluster's entry keeps resolving to its writer endpoint, as a writer.
    let db = resolve(&format!("{{cluster_id: ar-cluster, region: {REGION}}}")).await.unwrap();
    assert_eq!((db.host.clone(), db.port), cluster_endpoint);
    assert_eq!(db.writer, None);

    // The writer instance's entry would stop reaching the writer at a failover: refused.
    let err = resolve(&format!("{{instance_id: ar-writer, region: {REGION}}}")).await.unwrap_err();
    assert!(err.to_string().contains("cluster_id: ar-cluster"), "{err}");
}

/// An Aurora reader endpoint (`cluster_id` with `endpoint: reader`): sessions log in through
/// the cluster's reader endpoint, the admin acts on its writer endpoint, and the calls wait for
/// each reader instance, which the reader endpoint may send a session to.
#[tokio::test]
async fn an_aurora_reader_endpoint_resolves_with_its_writer_and_every_reader_instance() {
    const REGION: &str = "us-west-1";
    aurora(REGION, "re-cluster", &["re-writer", "re-reader-1", "re-reader-2"], &[]).await;
    let cluster_endpoint = endpoint_of(REGION, "cluster", "re-cluster").await;
    let readers = [endpoint_of(REGION, "db", "re-reader-1").await, endpoint_of(REGION, "db", "re-reader-2").await];

    let db = resolve(&format!("{{cluster_id: re-cluster, region: {REGION}, endpoint: reader}}")).await.unwrap();
    assert!(db.host.starts_with("re-cluster.cluster-ro-"), "sessions use the reader endpoint: {}", db.host);
    assert_eq!(db.labels.get(ADMIN_TAG).map(String::as_str), Some("teleport-admin"), "the cluster's tags");
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, cluster_endpoint, "the cluster (writer) endpoint, which follows failovers");
    assert!(iam_token(&on_writer).await.starts_with(&format!("{}:{}/", writer.0, writer.1)));
    let mut waited_for: Vec<(String, u16)> =
        db.replica_databases().iter().map(|replica| (replica.host.clone(), replica.port)).collect();
    waited_for.sort();
    assert_eq!(waited_for, readers, "every reader instance, not the writer instance");
    for replica in db.replica_databases() {
        assert!(iam_token(&replica).await.starts_with(&format!("{}:{}/", replica.host, replica.port)));
    }

    // A cluster without readers: its reader endpoint reaches the writer, with nothing to wait for.
    aurora(REGION, "re-alone", &["re-alone-writer"], &[]).await;
    let db = resolve(&format!("{{cluster_id: re-alone, region: {REGION}, endpoint: reader}}")).await.unwrap();
    assert!(db.writer.is_some());
    assert_eq!(db.replica_databases(), Vec::new());

    // allow_replica: false refuses it, as any read-only endpoint.
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let rds = format!("{{cluster_id: re-cluster, region: {REGION}, endpoint: reader}}");
    let config = config_with(&rds, "    allow_replica: false\n");
    let err = aws.resolve_database(&config, &config.databases[0]).await.unwrap_err();
    assert_eq!(err.kind(), "ReadOnlyEndpoint", "{err}");
    assert!(err.to_string().contains("reader endpoint of cluster re-cluster"), "{err}");
}

#[tokio::test]
async fn a_cross_region_replica_resolves_with_its_writer_in_the_sources_region() {
    const REGION: &str = "us-west-1";
    const SOURCE_REGION: &str = "eu-west-1";
    instance(SOURCE_REGION, "xr-main", 5432, false).await;
    read_replica(REGION, "xr-replica", &arn(SOURCE_REGION, "db", "xr-main")).await;
    let db = resolve(&format!("{{instance_id: xr-replica, region: {REGION}}}")).await.unwrap();
    assert!(db.host.starts_with("xr-replica.") && db.host.contains(REGION), "{}", db.host);
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, endpoint_of(SOURCE_REGION, "db", "xr-main").await);
    assert!(writer.0.contains(SOURCE_REGION), "{writer:?}");
    // IAM tokens are signed for the region of the endpoint they log in to.
    assert_eq!(on_writer.auth, AuthConfig::Iam { region: Some(SOURCE_REGION.into()) });
    assert_eq!(signed_for(&iam_token(&on_writer).await), SOURCE_REGION);
    assert_eq!(signed_for(&iam_token(&db).await), REGION);
}

#[tokio::test]
async fn a_replica_whose_writer_cannot_be_looked_up_is_refused_naming_the_writer() {
    const REGION: &str = "us-west-1";
    const SOURCE_REGION: &str = "eu-west-1";
    instance(SOURCE_REGION, "xr-gone", 5432, false).await;
    read_replica(REGION, "xr-orphan", &arn(SOURCE_REGION, "db", "xr-gone")).await;
    rds(SOURCE_REGION)
        .await
        .delete_db_instance()
        .db_instance_identifier("xr-gone")
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();
    let rds_yaml = format!("{{instance_id: xr-orphan, region: {REGION}}}");
    let err = resolve(&rds_yaml).await.unwrap_err();
    assert_eq!(err.kind(), "WriterUnreachable", "{err}");
    assert!(!err.is_transient(), "a person must act: {err}");
    let text = err.to_string();
    assert!(text.contains(&arn(SOURCE_REGION, "db", "xr-gone")), "names the writer: {text}");
    assert!(text.contains(&format!("RDS instance xr-orphan in {REGION}")), "names the replica: {text}");
    assert!(text.contains(SOURCE_REGION) && text.contains("DescribeDBInstances"), "says what failed: {text}");

    // Looked up again next time (not cached), so that a fix takes effect at once.
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config_with(&rds_yaml, "");
    for _ in 0..2 {
        assert_eq!(aws.resolve_database(&config, &config.databases[0]).await.unwrap_err().kind(), "WriterUnreachable");
    }
}

#[tokio::test]
async fn a_cross_region_replica_cluster_resolves_with_its_source_clusters_writer() {
    const REGION: &str = "us-west-1";
    const SOURCE_REGION: &str = "eu-west-1";
    aurora(SOURCE_REGION, "xc-source", &["xc-source-1"], &[]).await;
    rds(REGION)
        .await
        .create_db_cluster()
        .db_cluster_identifier("xc-replica")
        .engine("aurora-postgresql")
        .master_username("master")
        .master_user_password("master-password")
        .enable_iam_database_authentication(true)
        .replication_source_identifier(arn(SOURCE_REGION, "cluster", "xc-source"))
        .tags(admin_tag())
        .send()
        .await
        .unwrap();
    let db = resolve(&format!("{{cluster_id: xc-replica, region: {REGION}}}")).await.unwrap();
    assert_eq!((db.host.clone(), db.port), endpoint_of(REGION, "cluster", "xc-replica").await);
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, endpoint_of(SOURCE_REGION, "cluster", "xc-source").await);
    assert_eq!(on_writer.auth, AuthConfig::Iam { region: Some(SOURCE_REGION.into()) });
}

#[tokio::test]
async fn an_aurora_global_secondary_resolves_with_the_primary_clusters_writer() {
    const PRIMARY_REGION: &str = "us-east-2";
    const SECONDARY_REGION: &str = "ca-central-1";
    global_database("gdb-orders", (PRIMARY_REGION, "gdb-primary"), (SECONDARY_REGION, "gdb-secondary")).await;
    let db = resolve(&format!("{{cluster_id: gdb-secondary, region: {SECONDARY_REGION}}}")).await.unwrap();
    assert_eq!((db.host.clone(), db.port), endpoint_of(SECONDARY_REGION, "cluster", "gdb-secondary").await);
    let (writer, on_writer) = writer_of(&db);
    assert_eq!(writer, endpoint_of(PRIMARY_REGION, "cluster", "gdb-primary").await);
    assert_eq!(on_writer.auth, AuthConfig::Iam { region: Some(PRIMARY_REGION.into()) });

    let primary = resolve(&format!("{{cluster_id: gdb-primary, region: {PRIMARY_REGION}}}")).await.unwrap();
    assert_eq!(primary.writer, None, "the global database's writer cluster is a writer");
}

#[tokio::test]
async fn discovery_reports_read_replicas_and_readers_with_their_writers() {
    const REGION: &str = "us-west-2";
    const SOURCE_REGION: &str = "eu-west-2";
    instance(REGION, "dr-main", 5432, true).await;
    read_replica(REGION, "dr-replica", "dr-main").await;
    read_replica(REGION, "dr-refused", "dr-main").await;
    instance(SOURCE_REGION, "dr-far-main", 5432, false).await;
    read_replica(REGION, "dr-far", &arn(SOURCE_REGION, "db", "dr-far-main")).await;
    instance(SOURCE_REGION, "dr-gone", 5432, false).await;
    read_replica(REGION, "dr-orphan", &arn(SOURCE_REGION, "db", "dr-gone")).await;
    rds(SOURCE_REGION)
        .await
        .delete_db_instance()
        .db_instance_identifier("dr-gone")
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();
    // Readers are reported when they carry the admin tag themselves; the writer instance
    // never (its cluster is).
    aurora(REGION, "dr-aurora", &["dr-aurora-1", "dr-aurora-2", "dr-aurora-3"], &["dr-aurora-1", "dr-aurora-2"]).await;

    let config = Config::parse(
        scratch_login::schema_checked(&format!(
            "databases:\n  - name: refused\n    rds: {{instance_id: dr-refused, region: {REGION}}}\n    \
             allow_replica: false\n"
        )),
        std::path::Path::new("/"),
    )
    .unwrap();
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let options = DiscoveryOptions { regions: vec![REGION.into()], concurrency: 4, bootstrap: false };
    let report = aws.discover(&config, &options).await;
    let text = report.to_text();
    let ids: Vec<&str> = report.databases.iter().map(|d| d.resource.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(
        ids,
        ["dr-aurora", "dr-aurora-2", "dr-far", "dr-main", "dr-orphan", "dr-refused", "dr-replica"],
        "{text}"
    );
    let by_id = |id: &str| report.databases.iter().find(|d| d.resource.split_whitespace().nth(2) == Some(id)).unwrap();
    let (main, _) = endpoint_of(REGION, "db", "dr-main").await;
    let (far_main, _) = endpoint_of(SOURCE_REGION, "db", "dr-far-main").await;
    let (cluster, _) = endpoint_of(REGION, "cluster", "dr-aurora").await;

    for (id, writer) in [
        ("dr-replica", format!("RDS instance dr-main in {REGION} at {main}:5432")),
        ("dr-far", format!("RDS instance dr-far-main in {SOURCE_REGION} at {far_main}:5432")),
        ("dr-aurora-2", format!("Aurora cluster dr-aurora in {REGION} at {cluster}:5432")),
    ] {
        let entry = by_id(id);
        assert_eq!(entry.writer.as_deref(), Some(writer.as_str()), "{text}");
        // Nothing here can be logged in to: the check stops at the writer, as for any database.
        assert_eq!(entry.status, DiscoveryStatus::NeedsAttention, "{text}");
        let reason = entry.reason.as_deref().unwrap();
        assert!(reason.starts_with("the admin cannot log in to the writer"), "{text}");
        assert_eq!(entry.preflight.as_ref().unwrap().findings[0].check, "login", "{text}");
        assert!(text.contains(&format!("({}, writer {writer}): NEEDS ATTENTION", entry.resource)), "{text}");
        let json = serde_json::to_value(entry).unwrap();
        assert_eq!(json["writer"], writer.as_str(), "{json}");
    }
    for writer_itself in ["dr-main", "dr-aurora"] {
        assert_eq!(by_id(writer_itself).writer, None, "{text}");
        assert!(serde_json::to_value(by_id(writer_itself)).unwrap().get("writer").is_none());
    }

    let orphan = by_id("dr-orphan");
    assert_eq!(orphan.status, DiscoveryStatus::NeedsAttention, "{text}");
    assert_eq!(orphan.writer.as_deref(), Some(arn(SOURCE_REGION, "db", "dr-gone").as_str()), "{text}");
    assert!(orphan.reason.as_deref().unwrap().contains("could not be reached through the RDS API"), "{text}");

    let refused = by_id("dr-refused");
    assert_eq!(refused.database, "refused");
    assert_eq!(refused.status, DiscoveryStatus::Skipped, "{text}");
    assert!(refused.reason.as_deref().unwrap().contains("allow_replica: false"), "{text}");
    assert_eq!(refused.writer.as_deref(), Some(format!("RDS instance dr-main in {REGION} at {main}:5432").as_str()));
    assert_eq!(report.count(DiscoveryStatus::Skipped), 1);
}

/// Answers every `DescribeGlobalClusters` with AccessDenied, as RDS does for a function whose
/// policy does not grant it.
#[derive(Debug)]
struct DenyDescribeGlobalClusters;

impl aws_sdk_rds::config::Intercept for DenyDescribeGlobalClusters {
    fn name(&self) -> &'static str {
        "DenyDescribeGlobalClusters"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<
            '_,
        >,
        _components: &aws_sdk_rds::config::RuntimeComponents,
        cfg: &mut aws_sdk_rds::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>().map(|m| m.name());
        if operation == Some("DescribeGlobalClusters") {
            let response = context.response_mut();
            *response.status_mut() = 403.try_into().unwrap();
            *response.body_mut() = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                <Message>not authorized to perform: rds:DescribeGlobalClusters</Message></Error>\
                <RequestId>denied</RequestId></ErrorResponse>"
                .into();
        }
        Ok(())
    }
}

/// A function not allowed `rds:DescribeGlobalClusters` (deployments from before replica
/// support) cannot tell a global database's clusters apart: each is taken as configured, as
/// before, and acted on itself. The primary keeps working; a secondary refuses the admin's
/// writes (ReadOnlyEndpoint). No other writer is guessed at.
#[tokio::test]
async fn without_describe_global_clusters_a_global_databases_clusters_resolve_as_before() {
    const PRIMARY_REGION: &str = "us-east-2";
    const SECONDARY_REGION: &str = "ca-central-1";
    global_database("gdb-denied", (PRIMARY_REGION, "gdd-primary"), (SECONDARY_REGION, "gdd-secondary")).await;
    let aws = AwsContext::new(Moto::global().sdk_config(None).await).with_rds_interceptor(DenyDescribeGlobalClusters);
    for (region, id) in [(PRIMARY_REGION, "gdd-primary"), (SECONDARY_REGION, "gdd-secondary")] {
        let config = config_with(&format!("{{cluster_id: {id}, region: {region}}}"), "");
        let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
        assert_eq!((db.host.clone(), db.port), endpoint_of(region, "cluster", id).await);
        assert_eq!(db.writer, None, "{id}: acted on itself");
    }
    // With the permission, the secondary resolves with its writer (the test above in full).
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config_with(&format!("{{cluster_id: gdd-secondary, region: {SECONDARY_REGION}}}"), "");
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    assert_eq!(writer_of(&db).0, endpoint_of(PRIMARY_REGION, "cluster", "gdd-primary").await);
}
