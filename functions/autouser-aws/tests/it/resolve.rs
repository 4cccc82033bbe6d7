//! `rds:` databases resolved through the RDS API of the emulator.

use autouser_aws::AwsContext;
use autouser_policy::config::{AdminUser, Config, DatabaseType};
use aws_sdk_rds::types::Tag;

use scratch_aws::Moto;

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

async fn create_instance(id: &str, iam: bool, tags: &[(&str, &str)]) {
    Moto::global().create_postgres_instance(scratch_aws::REGION, id, iam, None, tags).await;
}

fn config(rds_yaml: &str) -> Config {
    let text = format!("databases:\n  - name: orders\n    rds: {rds_yaml}\n");
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/")).unwrap()
}

async fn resolve(rds_yaml: &str) -> Result<autouser_policy::config::ResolvedDatabase, autouser_engine::Error> {
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config(rds_yaml);
    aws.resolve_database(&config, &config.databases[0]).await
}

#[tokio::test]
async fn tagged_instance_resolves_to_its_endpoint_admin_and_labels() {
    create_instance(
        "rs-tagged",
        true,
        &[
            ("teleport.dev/db-admin", "teleport-admin"),
            ("teleport.dev/db-admin-default-database", "postgres"),
            ("env", "prod"),
        ],
    )
    .await;
    let db = resolve("{instance_id: rs-tagged, region: us-east-1}").await.unwrap();
    assert_eq!(db.admin_user, AdminUser { name: "teleport-admin".into(), default_database: Some("postgres".into()) });
    assert_eq!(db.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(db.db_type, DatabaseType::Rds);
    assert!(db.host.starts_with("rs-tagged."), "{}", db.host);
    assert_eq!(db.port, 5432);
}

#[tokio::test]
async fn untagged_instance_is_not_managed() {
    create_instance("rs-untagged", true, &[("env", "prod")]).await;
    let err = resolve("{instance_id: rs-untagged, region: us-east-1}").await.unwrap_err();
    assert_eq!(err.kind(), "NotManaged", "{err}");
    assert!(err.to_string().contains("rs-untagged"), "{err}");
}

#[tokio::test]
async fn instance_without_iam_auth_is_refused_for_iam_admins() {
    create_instance("rs-noiam", false, &[("teleport.dev/db-admin", "teleport-admin")]).await;
    let err = resolve("{instance_id: rs-noiam, region: us-east-1}").await.unwrap_err();
    assert_eq!(err.kind(), "IamAuthDisabled", "{err}");
    assert!(err.to_string().contains("--enable-iam-database-authentication"), "{err}");
}

#[tokio::test]
async fn aurora_cluster_resolves_to_its_writer_endpoint() {
    aws_sdk_rds::Client::new(&Moto::global().sdk_config(None).await)
        .create_db_cluster()
        .db_cluster_identifier("rs-aurora")
        .engine("aurora-postgresql")
        .master_username("master")
        .master_user_password("master-password")
        .enable_iam_database_authentication(true)
        .tags(tag("teleport.dev/db-admin", "teleport-admin"))
        .send()
        .await
        .unwrap();
    let db = resolve("{cluster_id: rs-aurora, region: us-east-1}").await.unwrap();
    assert!(db.host.starts_with("rs-aurora.cluster-"), "the writer endpoint, not a reader: {}", db.host);
    assert!(!db.host.contains("cluster-ro-"), "{}", db.host);
    assert_eq!(db.admin_user.name, "teleport-admin");
}

#[tokio::test]
async fn unknown_instance_names_the_id() {
    let err = resolve("{instance_id: rs-nowhere, region: us-east-1}").await.unwrap_err();
    assert!(err.to_string().contains("rs-nowhere"), "{err}");
    assert!(!err.is_transient());
}

/// Listing pages through more resources than one page (100) holds. Its own region keeps the
/// other tests' resources out.
#[tokio::test]
async fn listing_pages_past_one_hundred_resources() {
    const REGION: &str = "eu-central-1";
    let sdk = aws_sdk_rds::config::Builder::from(&Moto::global().sdk_config(None).await)
        .region(aws_sdk_rds::config::Region::new(REGION))
        .build();
    let client = aws_sdk_rds::Client::from_conf(sdk);
    let moto = Moto::global();
    let admin_tag = [("teleport.dev/db-admin", "teleport-admin")];
    let ids: Vec<String> = (0..105).map(|i| format!("pg-{i:03}")).collect();
    for chunk in ids.chunks(15) {
        let creates = chunk.iter().map(|id| moto.create_postgres_instance(REGION, id, false, None, &admin_tag));
        futures_util::future::join_all(creates).await;
    }
    moto.create_postgres_instance(REGION, "untagged-1", false, None, &[]).await;
    client
        .create_db_cluster()
        .db_cluster_identifier("aurora-tagged")
        .engine("aurora-postgresql")
        .master_username("master")
        .master_user_password("master-password")
        .tags(tag("teleport.dev/db-admin", "teleport-admin"))
        .send()
        .await
        .unwrap();

    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let found = aws.list_tagged_databases(REGION, &Default::default()).await.unwrap();
    let names: Vec<String> = found.iter().map(|d| format!("{:?}", d.locator.resource)).collect();
    assert_eq!(found.len(), 106, "105 instances and one cluster: {names:?}");
    assert!(names.contains(&"Instance(\"pg-104\")".to_string()), "the last page was read");
    assert!(names.contains(&"Cluster(\"aurora-tagged\")".to_string()));
    assert!(!names.iter().any(|n| n.contains("untagged")), "untagged resources are not listed");
}

/// Turning provisioning off (removing the admin tag, as before a Blue/Green switchover) stops
/// starts, not ends: a session-end or the reaper still reaches the database, as the admin the
/// tag last named in this process, or, in a process that never saw the tag, as the
/// database's `fallback_admin_user`. Without either it stays `NotManaged`, which an end is
/// retried for.
#[tokio::test]
async fn ends_still_reach_a_database_whose_admin_tag_was_removed() {
    let sdk = Moto::global().sdk_config(None).await;
    create_instance("rs-offboarded", true, &[("teleport.dev/db-admin", "teleport-admin")]).await;
    let rds_yaml = "{instance_id: rs-offboarded, region: us-east-1}";
    let config = config(rds_yaml);
    let db = &config.databases[0];
    let warm = AwsContext::new(sdk.clone());
    assert_eq!(warm.resolve_database(&config, db).await.unwrap().admin_user.name, "teleport-admin");

    aws_sdk_rds::Client::new(&sdk)
        .remove_tags_from_resource()
        .resource_name("arn:aws:rds:us-east-1:123456789012:db:rs-offboarded")
        .tag_keys("teleport.dev/db-admin")
        .send()
        .await
        .unwrap();
    warm.forget_resolutions();
    assert_eq!(warm.resolve_database(&config, db).await.unwrap_err().kind(), "NotManaged", "starts stop");
    let for_end = warm.resolve_database_for_end(&config, db).await.unwrap();
    assert_eq!(for_end.admin_user.name, "teleport-admin", "the admin the tag last named");
    assert!(for_end.host.starts_with("rs-offboarded."), "{}", for_end.host);

    let cold = AwsContext::new(sdk.clone());
    assert_eq!(cold.resolve_database_for_end(&config, db).await.unwrap_err().kind(), "NotManaged");
    let with_fallback_yaml =
        format!("databases:\n  - name: orders\n    rds: {rds_yaml}\n    fallback_admin_user: {{name: break-glass}}\n");
    let with_fallback =
        Config::parse(scratch_login::schema_checked(&with_fallback_yaml), std::path::Path::new("/")).unwrap();
    let db = &with_fallback.databases[0];
    assert_eq!(cold.resolve_database_for_end(&with_fallback, db).await.unwrap().admin_user.name, "break-glass");
    assert_eq!(cold.resolve_database(&with_fallback, db).await.unwrap_err().kind(), "NotManaged", "starts stop");
}
