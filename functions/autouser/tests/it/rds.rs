//! `rds:` databases through the local AWS emulator: the RDS lookup (tags give the admin and
//! labels), the admin's secret from Secrets Manager, and a real PostgreSQL behind `hostaddr`.
//! Every run logs at trace level, and no secret or token may appear in what it prints.

use scratch_aws::Moto;

use crate::{autouser_with_env, cluster, stderr, stdout_json, superuser_sql, write};

const PASSWORD: &str = "Rds-Admin-Secret-9f1c";

async fn seed_emulator(instance: &str, admin: &str, iam: bool) -> String {
    let sdk = Moto::global().sdk_config(None).await;
    let tag = |k: &str, v: &str| aws_sdk_rds::types::Tag::builder().key(k).value(v).build();
    aws_sdk_rds::Client::new(&sdk)
        .create_db_instance()
        .db_instance_identifier(instance)
        .db_instance_class("db.t4g.micro")
        .engine("postgres")
        .allocated_storage(20)
        .port(i32::from(cluster().port()))
        .master_username("master")
        .master_user_password("master-password")
        .enable_iam_database_authentication(iam)
        .tags(tag("teleport.dev/db-admin", admin))
        .tags(tag("teleport.dev/db-admin-default-database", "postgres"))
        .tags(tag("env", "staging"))
        .send()
        .await
        .unwrap();
    let secret = serde_json::json!({"username": admin, "password": PASSWORD}).to_string();
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(format!("{instance}-admin"))
        .secret_string(secret)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

fn config(instance: &str, auth: &str, group: &str) -> String {
    format!(
        r#"managed_group: {group}
databases:
  - name: orders
    rds: {{instance_id: {instance}, region: us-east-1, hostaddr: 127.0.0.1}}
    auth: {auth}
    # The emulator's host name is not in the test server's certificate: verify the chain only.
    tls: {{mode: verify-ca, ca_file: {ca:?}}}
roles:
  - kind: role
    version: v7
    metadata: {{name: staging-readers}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{env: staging}}, db_names: ["*"], db_roles: [{group}_reader]}}
"#,
        ca = cluster().ca_cert_path().display().to_string(),
    )
}

fn env() -> Vec<(&'static str, String)> {
    let mut env = Moto::global().env();
    env.push(("RUST_LOG", "trace".into()));
    env
}

#[tokio::test]
async fn rds_database_resolved_through_the_emulator_provisions_a_user() {
    let (admin, group) = ("cli_rds_admin", "cli_rds");
    superuser_sql(&format!(
        "DO $$ BEGIN CREATE ROLE password_login; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{PASSWORD}' IN ROLE password_login;
         CREATE ROLE {group}_reader;"
    ))
    .await;
    if cluster().major() >= 16 {
        superuser_sql(&format!(
            "GRANT {group}_reader TO {admin} WITH ADMIN OPTION; GRANT rds_iam TO {admin} WITH ADMIN OPTION"
        ))
        .await;
    }
    let arn = seed_emulator("cli-rds-orders", admin, false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "c.yaml",
        &config("cli-rds-orders", &format!("{{method: password, secret_arn: {arn:?}}}"), group),
    );
    let event = r#"{"session_id": "s1", "user": "alice_rds", "roles": ["staging-readers"], "database": "orders", "db_name": "postgres"}"#;
    let output = autouser_with_env(&["session-start", "--config", &config, "--event", "-"], Some(event), &env());
    let log = stderr(&output);
    let started = stdout_json(&output);
    assert_eq!(started["status"], "active");
    assert_eq!(started["base_roles"], serde_json::json!([format!("{group}"), "rds_iam"]));
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the run logged at trace level");
    assert!(
        !log.contains(PASSWORD) && !String::from_utf8_lossy(&output.stdout).contains(PASSWORD),
        "the secret leaked"
    );
    // The AWS calls were signed with a session token: its value never shows either.
    assert!(!log.contains(scratch_aws::SESSION_TOKEN), "the session token leaked");
    assert_no_token_in(&log);

    let output = autouser_with_env(&["session-end", "--config", &config, "--event", "-"], Some(event), &env());
    assert_eq!(stdout_json(&output)["status"], "deactivated");
    assert!(!stderr(&output).contains(PASSWORD));
}

#[tokio::test]
async fn iam_tokens_never_appear_in_logs() {
    superuser_sql("CREATE ROLE cli_iam_admin LOGIN CREATEROLE").await;
    seed_emulator("cli-iam-orders", "cli_iam_admin", true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "c.yaml", &config("cli-iam-orders", "{method: iam}", "cli_iam"));
    let event = r#"{"session_id": "s1", "user": "iam_bob", "roles": ["staging-readers"], "database": "orders", "db_name": "postgres"}"#;
    // The server does not hold this token, so the login fails: after a token was made and sent.
    // Asking for the signer's own trace output must not reveal it either.
    for log_filter in ["trace", "aws_sigv4=trace,trace"] {
        let mut env = env();
        env.push(("RUST_LOG", log_filter.into()));
        let output = autouser_with_env(&["session-start", "--config", &config, "--event", "-"], Some(event), &env);
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{log}");
        assert!(log.contains("[AdminAuthFailed]"), "{log}");
        assert!(log.contains("TRACE"), "the run logged at trace level");
        assert_no_token_in(&log);
    }
}

fn assert_no_token_in(log: &str) {
    for fragment in ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Action=connect"] {
        assert!(
            !log.contains(fragment),
            "{fragment} leaked into the log: {}",
            log.lines().filter(|l| l.contains(fragment)).collect::<Vec<_>>().join("\n")
        );
    }
}

/// `autouser discover` against the emulator: a region whose one tagged instance is the local
/// PostgreSQL (ready, group bootstrapped), and a region whose tagged instance has IAM
/// authentication disabled (needs attention, exit 1).
#[tokio::test]
async fn discover_reports_each_tagged_database() {
    let (admin, group) = ("cli_disc_admin", "cli_disc");
    superuser_sql(&format!(
        "DO $$ BEGIN CREATE ROLE password_login; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{PASSWORD}' IN ROLE password_login;
         CREATE ROLE {group}_reader;
         GRANT rds_iam TO {admin} WITH ADMIN OPTION; GRANT {group}_reader TO {admin} WITH ADMIN OPTION;"
    ))
    .await;
    let sdk = Moto::global().sdk_config(None).await;
    let tag = |k: &str, v: &str| aws_sdk_rds::types::Tag::builder().key(k).value(v).build();
    let create = |region: &'static str, id: &'static str, iam: bool, tagged: bool| {
        let sdk = sdk.clone();
        let mut tags = vec![tag("env", "staging")];
        if tagged {
            tags.push(tag("teleport.dev/db-admin", admin));
        }
        async move {
            let config =
                aws_sdk_rds::config::Builder::from(&sdk).region(aws_sdk_rds::config::Region::new(region)).build();
            aws_sdk_rds::Client::from_conf(config)
                .create_db_instance()
                .db_instance_identifier(id)
                .db_instance_class("db.t4g.micro")
                .engine("postgres")
                .allocated_storage(20)
                .port(i32::from(cluster().port()))
                .master_username("master")
                .master_user_password("master-password")
                .enable_iam_database_authentication(iam)
                .set_tags(Some(tags))
                .send()
                .await
                .unwrap();
        }
    };
    create("eu-north-1", "disc-local", false, true).await;
    create("eu-north-1", "disc-untagged", true, false).await;
    create("eu-south-1", "disc-noiam", false, true).await;
    let secret = serde_json::json!({"username": admin, "password": PASSWORD}).to_string();
    let arn = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name("disc-local-admin")
        .secret_string(secret)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config("disc-local", &format!("{{method: password, secret_arn: {arn:?}}}"), group)
        .replace("region: us-east-1", "region: eu-north-1");
    let config = write(dir.path(), "c.yaml", &text);

    let ready = autouser_with_env(&["discover", "--config", &config, "--region", "eu-north-1"], None, &env());
    let out = String::from_utf8_lossy(&ready.stdout);
    assert!(ready.status.success(), "{out}{}", stderr(&ready));
    assert!(out.starts_with("1 ready, 0 need attention"), "{out}");
    assert!(out.contains("orders (RDS instance disc-local in eu-north-1): ready"), "{out}");
    assert!(out.contains(&format!("bootstrapped: CREATE ROLE \"{group}\" NOLOGIN")), "{out}");
    assert!(!out.contains("disc-untagged"), "{out}");
    assert!(!out.contains(PASSWORD) && !stderr(&ready).contains(PASSWORD), "the secret leaked");

    let args = ["discover", "--config", &config, "--region", "eu-north-1", "--region", "eu-south-1", "--json"];
    let attention = autouser_with_env(&args, None, &env());
    assert_eq!(attention.status.code(), Some(1), "{}", stderr(&attention));
    let report: serde_json::Value = serde_json::from_slice(&attention.stdout).unwrap();
    let databases = report["databases"].as_array().unwrap();
    assert_eq!(databases.len(), 2, "{report:#}");
    assert_eq!(databases[0]["database"], "orders");
    assert_eq!(databases[0]["status"], "ready");
    assert!(databases[0].get("bootstrapped").is_none(), "the group exists now: {report:#}");
    assert_eq!(databases[1]["database"], "disc-noiam");
    assert_eq!(databases[1]["status"], "needs_attention");
    assert!(databases[1]["reason"].as_str().unwrap().contains("--enable-iam-database-authentication"), "{report:#}");
}
