//! `rds:` databases through the local AWS emulator: the RDS lookup (tags give the admin and
//! labels), the admin's secret from Secrets Manager, and a real PostgreSQL behind `hostaddr`.
//! Every run logs at trace level, and no secret or token may appear in what it prints.

use scratch_aws::Moto;

use crate::{autouser_with_env, cluster, stderr, stdout_json, superuser_sql, write_config};

const PASSWORD: &str = "Rds-Admin-Secret-9f1c";

async fn seed_emulator(instance: &str, admin: &str, iam: bool) -> String {
    let moto = Moto::global();
    let tags =
        [("teleport.dev/db-admin", admin), ("teleport.dev/db-admin-default-database", "postgres"), ("env", "staging")];
    moto.create_postgres_instance(scratch_aws::REGION, instance, iam, Some(cluster().port()), &tags).await;
    moto.create_password_secret(&format!("{instance}-admin"), admin, PASSWORD).await
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
        "DO $$ BEGIN CREATE ROLE password_login; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
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
    let config = write_config(
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

    // `status` reaches the instance through the same resolution: rds_iam is expected there.
    let mut quiet = Moto::global().env();
    quiet.push(("RUST_LOG", "warn".into()));
    let output = autouser_with_env(&["status", "--config", &config, "--json"], None, &quiet);
    let status = stdout_json(&output);
    let user = &status["databases"][0]["users"][0];
    assert_eq!(user["db_user"], "alice_rds", "{status}");
    assert_eq!(user["roles"], serde_json::json!([format!("{group}_reader"), "rds_iam"]), "{status}");
    assert_eq!(user["open_sessions"][0]["session_id"], "s1", "{status}");
    assert_eq!(user["drift"], serde_json::json!([]), "{status}");

    let output = autouser_with_env(&["session-end", "--config", &config, "--event", "-"], Some(event), &env());
    assert_eq!(stdout_json(&output)["status"], "deactivated");
    assert!(!stderr(&output).contains(PASSWORD));
}

#[tokio::test]
async fn iam_tokens_never_appear_in_logs() {
    superuser_sql("CREATE ROLE cli_iam_admin LOGIN CREATEROLE").await;
    seed_emulator("cli-iam-orders", "cli_iam_admin", true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "c.yaml", &config("cli-iam-orders", "{method: iam}", "cli_iam"));
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
        "DO $$ BEGIN CREATE ROLE password_login; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{PASSWORD}' IN ROLE password_login;
         CREATE ROLE {group}_reader;
         GRANT rds_iam TO {admin} WITH ADMIN OPTION; GRANT {group}_reader TO {admin} WITH ADMIN OPTION;"
    ))
    .await;
    let moto = Moto::global();
    let (port, tagged, untagged) =
        (Some(cluster().port()), [("env", "staging"), ("teleport.dev/db-admin", admin)], [("env", "staging")]);
    moto.create_postgres_instance("eu-north-1", "disc-local", false, port, &tagged).await;
    moto.create_postgres_instance("eu-north-1", "disc-untagged", true, port, &untagged).await;
    moto.create_postgres_instance("eu-south-1", "disc-noiam", false, port, &tagged).await;
    let arn = moto.create_password_secret("disc-local-admin", admin, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config("disc-local", &format!("{{method: password, secret_arn: {arn:?}}}"), group)
        .replace("region: us-east-1", "region: eu-north-1");
    let config = write_config(dir.path(), "c.yaml", &text);

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
    // Two databases, stderr a pipe: the log lines, and no progress bar.
    let log = stderr(&attention);
    assert!(!log.contains("checking [") && !log.contains('\r') && !log.contains('\u{1b}'), "{log}");
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
