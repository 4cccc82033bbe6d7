//! The discovery function's handler against the emulator and the local PostgreSQL: reports
//! land on the bus, one per database, and a removed tag is reported.

use autouser_aws::discovery::DiscoveryOptions;
use autouser_aws::AwsContext;
use autouser_lambda::bus::EventBus;
use autouser_lambda::discovery::Discovery;
use autouser_policy::config::Config;
use lambda_runtime::{Context, LambdaEvent};
use scratch_aws::Moto;
use serde_json::{json, Value};

use crate::audit::{bus_into_queue, drain};
use crate::{cluster, superuser};

const REGION: &str = "ca-central-1";
const PASSWORD: &str = "Discovery-Admin-7d1e";

async fn rds() -> aws_sdk_rds::Client {
    let sdk = Moto::global().sdk_config(None).await;
    aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&sdk).region(aws_sdk_rds::config::Region::new(REGION)).build(),
    )
}

async fn create_instance(id: &str, iam: bool, admin: &str) {
    let tags = [("teleport.dev/db-admin", admin)];
    Moto::global().create_postgres_instance(REGION, id, iam, Some(cluster().port()), &tags).await;
}

async fn invoke(discovery: &Discovery, payload: Value) -> Value {
    discovery.handle(LambdaEvent::new(payload, Context::default())).await.unwrap()
}

#[tokio::test]
async fn discovery_reports_each_database_on_the_bus() {
    let admin = "ld_disc_admin";
    superuser()
        .await
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE password_login; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{PASSWORD}' IN ROLE password_login;
             GRANT rds_iam TO {admin} WITH ADMIN OPTION;"
        ))
        .await
        .unwrap();
    create_instance("disc-ready", false, admin).await;
    create_instance("disc-noiam", false, admin).await;
    let sdk = Moto::global().sdk_config(None).await;
    let arn = Moto::global().create_password_secret("ld-disc-admin", admin, PASSWORD).await;
    let config = Config::parse(
        scratch_login::schema_checked(&format!(
            r#"managed_group: ld_disc_group
databases:
  - name: ready
    rds: {{instance_id: disc-ready, region: {REGION}, hostaddr: 127.0.0.1}}
    auth: {{method: password, secret_arn: "{arn}"}}
    tls: {{mode: verify-ca, ca_file: {ca:?}}}
"#,
            ca = cluster().ca_cert_path().display().to_string()
        )),
        std::path::Path::new("/"),
    )
    .unwrap();
    let queue = bus_into_queue("discovery-reports").await;
    let bus = EventBus::new(&sdk, "discovery-reports".into(), "discovery-reports.audit".into());
    let options = DiscoveryOptions { regions: vec![REGION.into()], concurrency: 2, bootstrap: true };
    let discovery = Discovery::new(config, AwsContext::new(sdk.clone()), options, Some(bus));

    let schedule = json!({"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
                          "account": "123456789012", "time": "2026-11-28T04:00:00Z", "region": REGION,
                          "resources": [], "detail": {}});
    let summary = invoke(&discovery, schedule).await;
    assert_eq!(summary["ready"], 1, "{summary}");
    assert_eq!(summary["needs_attention"], 1, "{summary}");
    assert_eq!(summary["events_rejected"], 0, "{summary}");
    let events = drain(&queue).await;
    let types: Vec<&str> = events.iter().map(|e| e["detail-type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Database Needs Attention", "Database Ready"], "{events:#?}");
    let attention = &events[0]["detail"];
    assert_eq!(attention["database"], "disc-noiam");
    assert!(attention["reason"].as_str().unwrap().contains("IAM database authentication is disabled"), "{attention}");
    let ready = &events[1]["detail"];
    assert_eq!(ready["database"], "ready");
    // The group, then (PostgreSQL 16+, the default config) every creator role in one statement.
    let bootstrapped = ready["bootstrapped"].as_array().unwrap();
    assert_eq!(bootstrapped[0], json!("CREATE ROLE \"ld_disc_group\" NOLOGIN"), "{ready}");
    assert_bootstrapped_creators(&bootstrapped[1..], "ld_disc_group");
    assert_eq!(ready["preflight"]["ready"], true);

    // Someone removes the admin tag: CloudTrail's event names the resource.
    rds()
        .await
        .remove_tags_from_resource()
        .resource_name(format!("arn:aws:rds:{REGION}:123456789012:db:disc-ready"))
        .tag_keys("teleport.dev/db-admin")
        .send()
        .await
        .unwrap();
    let untagged = json!({"version": "0", "id": "2", "detail-type": "AWS API Call via CloudTrail", "source": "aws.rds",
        "account": "123456789012", "time": "2026-11-28T04:05:00Z", "region": REGION, "resources": [],
        "detail": {"eventSource": "rds.amazonaws.com", "eventName": "RemoveTagsFromResource", "awsRegion": REGION,
                   "requestParameters": {"resourceName": format!("arn:aws:rds:{REGION}:123456789012:db:disc-ready"),
                                         "tagKeys": ["teleport.dev/db-admin"]}}});
    let summary = invoke(&discovery, untagged).await;
    assert_eq!(summary["not_managed"], 1, "{summary}");
    let events = drain(&queue).await;
    let not_managed = events.iter().find(|e| e["detail-type"] == "Database Not Managed").expect("a Not Managed event");
    assert_eq!(not_managed["detail"]["database"], "ready");
    assert!(not_managed["detail"]["reason"].as_str().unwrap().contains("teleport.dev/db-admin"), "{not_managed}");
}

/// `statements` (after the group's creation in a report's `bootstrapped`) are one statement that
/// prepares the default config's creator roles of `group` on PostgreSQL 16+, and none before.
pub(crate) fn assert_bootstrapped_creators(statements: &[serde_json::Value], group: &str) {
    if scratch_login::test_cluster().major() < 16 {
        assert!(statements.is_empty(), "{statements:?}");
        return;
    }
    assert_eq!(statements.len(), 1, "{statements:?}");
    let statement = statements[0].as_str().unwrap();
    for index in 0..autouser_policy::config::DEFAULT_CREATOR_ROLES {
        assert!(statement.contains(&format!("''{group}-creator-{index}''")), "creator {index}: {statement}");
    }
}
