//! `autouser demo`: the whole job on a throwaway PostgreSQL, needing only an installed server.
//!
//! It sets the server up the way the seed's self-hosted section does (TLS, an X.509
//! authenticated `teleport-admin` with CREATEROLE), writes a config and events to files, and
//! runs them through the same code paths as `autouser session-start/session-end`.
//!
//! With `--rds` it goes on with an RDS instance in a local AWS emulator (moto): the instance's
//! tags name the admin and the labels, the admin's password is in Secrets Manager, and
//! `rds.hostaddr` points the connection at the throwaway PostgreSQL.

use std::path::{Path, PathBuf};

use autouser_engine::sql::{quote_ident, quote_literal};
use autouser_engine::tokio_postgres::Client;
use scratch_postgres::{Cluster, PgInstall};

use crate::commands::{self, AwsSetup, Failure};

const ADMIN: &str = "teleport-admin";

fn failure(message: impl std::fmt::Display) -> Failure {
    Failure { message: format!("demo: {message}"), exit_code: 1 }
}

pub async fn run(rds: bool) -> Result<Option<String>, Failure> {
    let install = PgInstall::from_env().map_err(failure)?;
    println!("pg-autouser demo\n");
    println!("Starting a throwaway PostgreSQL {} from {} ...", install.major(), install.bin_dir().display());
    let cluster =
        tokio::task::spawn_blocking(move || Cluster::start(&install)).await.map_err(failure)?.map_err(failure)?;
    println!("  listening on {}:{} with TLS; every login needs a client certificate\n", cluster.host(), cluster.port());

    let mut result = walk_through(&cluster).await;
    if rds && result.is_ok() {
        result = walk_through_rds(&cluster).await;
    }
    println!("\nStopping PostgreSQL and removing {} ...", cluster.dir().display());
    drop(cluster);
    result?;
    println!("Done.");
    Ok(None)
}

async fn walk_through(cluster: &Cluster) -> Result<(), Failure> {
    let superuser = connect_as(cluster, cluster.superuser()).await?;
    let major = cluster.major();
    let admin = quote_ident(ADMIN);
    let mut setup = vec![
        format!("CREATE USER {admin} LOGIN CREATEROLE"),
        "CREATE ROLE reader NOLOGIN".to_string(),
        "CREATE ROLE auditor NOLOGIN".to_string(),
        "CREATE TABLE public.orders (id int PRIMARY KEY, note text)".to_string(),
        "GRANT SELECT ON public.orders TO reader".to_string(),
    ];
    if major >= 16 {
        setup.push(format!("GRANT reader TO {admin} WITH ADMIN OPTION"));
        setup.push(format!("GRANT auditor TO {admin} WITH ADMIN OPTION"));
    }
    println!("Setting up the admin as the seed's self-hosted section does:");
    for statement in &setup {
        println!("  {statement};");
        superuser.batch_execute(statement).await.map_err(failure)?;
    }

    let admin_cert = cluster.client_cert(ADMIN).map_err(failure)?;
    let dir = cluster.dir();
    let config_path = dir.join("autouser.yaml");
    std::fs::write(&config_path, config_yaml(cluster, &admin_cert.cert_path, &admin_cert.key_path)).map_err(failure)?;
    println!("\nConfig written to {}:\n", config_path.display());
    for line in std::fs::read_to_string(&config_path).map_err(failure)?.lines() {
        println!("    {line}");
    }

    println!("\n1. keep mode: alice opens two overlapping sessions, then closes them");
    show(&superuser, "alice", "before anything").await?;
    let alice = r#""user": "alice", "roles": ["auto-db-keep"], "database": "demo", "db_name": "postgres",
        "traits": {"internal": {"db_roles": ["auditor"]}}"#;
    step(dir, &config_path, "session-start", "alice-1", alice).await?;
    show(&superuser, "alice", "after her first session started").await?;
    log_in(cluster, "alice", "during her session").await;
    step(dir, &config_path, "session-start", "alice-2", alice).await?;
    step(dir, &config_path, "session-end", "alice-1", alice).await?;
    show(&superuser, "alice", "after her first session ended (the second is still open)").await?;
    step(dir, &config_path, "session-end", "alice-2", alice).await?;
    show(&superuser, "alice", "after her last session ended: locked, roles stripped").await?;
    log_in(cluster, "alice", "after her last session ended").await;

    println!("\n2. best_effort_drop mode: bob's user exists only while his session does");
    let bob = r#""user": "bob", "roles": ["auto-db-drop"], "database": "demo", "db_name": "postgres""#;
    step(dir, &config_path, "session-start", "bob-1", bob).await?;
    show(&superuser, "bob", "during his session").await?;
    log_in(cluster, "bob", "during his session").await;
    step(dir, &config_path, "session-end", "bob-1", bob).await?;
    show(&superuser, "bob", "after his session ended").await?;
    log_in(cluster, "bob", "after his session ended").await;

    println!("\n3. a role named like a person but not managed by pg-autouser is never touched");
    superuser.batch_execute("CREATE ROLE carol LOGIN").await.map_err(failure)?;
    let carol = r#""user": "carol", "roles": ["auto-db-keep"], "database": "demo", "db_name": "postgres""#;
    step(dir, &config_path, "session-start", "carol-1", carol).await?;
    show(&superuser, "carol", "unchanged").await?;
    Ok(())
}

const RDS_ADMIN: &str = "rds-admin";
const RDS_INSTANCE: &str = "demo-orders";

async fn walk_through_rds(cluster: &Cluster) -> Result<(), Failure> {
    println!("\n4. RDS: an instance resolved through a local AWS emulator (moto)");
    let moto = scratch_aws::Moto::global();
    println!("  moto_server listening on {}", moto.url());
    let sdk = moto.sdk_config(None).await;
    let superuser = connect_as(cluster, cluster.superuser()).await?;
    let password = "demo-rds-admin-password";
    let (rds_admin, login_group) = (quote_ident(RDS_ADMIN), quote_ident(scratch_postgres::PASSWORD_LOGIN_GROUP));
    let mut setup = vec![
        format!("CREATE ROLE {login_group}"),
        "CREATE ROLE rds_iam".to_string(),
        format!("CREATE USER {rds_admin} LOGIN CREATEROLE PASSWORD {} IN ROLE {login_group}", quote_literal(password)),
    ];
    if cluster.major() >= 16 {
        setup.push(format!("GRANT rds_iam TO {rds_admin} WITH ADMIN OPTION"));
        setup.push(format!("GRANT reader TO {rds_admin} WITH ADMIN OPTION"));
        // The managed group was created by the first admin; this one must be able to grant it.
        setup.push(format!("GRANT {} TO {rds_admin} WITH ADMIN OPTION", quote_ident("teleport-auto-user")));
    }
    println!("  Setting up the admin (on RDS you would run these as the master user):");
    for statement in &setup {
        println!("    {};", statement.replace(password, "<password>"));
        superuser.batch_execute(statement).await.map_err(failure)?;
    }
    let secret = serde_json::json!({"username": RDS_ADMIN, "password": password}).to_string();
    let arn = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name("demo/rds-admin")
        .secret_string(secret)
        .send()
        .await
        .map_err(|e| failure(format!("creating the secret: {e}")))?
        .arn()
        .unwrap_or_default()
        .to_string();
    println!("  Secrets Manager: {arn} holds the admin's password");
    let tag = |k: &str, v: &str| aws_sdk_rds::types::Tag::builder().key(k).value(v).build();
    aws_sdk_rds::Client::new(&sdk)
        .create_db_instance()
        .db_instance_identifier(RDS_INSTANCE)
        .db_instance_class("db.t4g.micro")
        .engine("postgres")
        .allocated_storage(20)
        .port(i32::from(cluster.port()))
        .master_username("master")
        .master_user_password("master-password")
        .tags(tag("teleport.dev/db-admin", RDS_ADMIN))
        .tags(tag("teleport.dev/db-admin-default-database", "postgres"))
        .tags(tag("env", "staging"))
        .send()
        .await
        .map_err(|e| failure(format!("creating the RDS instance: {e}")))?;
    println!(
        "  RDS: instance {RDS_INSTANCE} tagged teleport.dev/db-admin={RDS_ADMIN}, \
         teleport.dev/db-admin-default-database=postgres, env=staging"
    );
    let dir = cluster.dir();
    let config_path = dir.join("rds.yaml");
    let config = format!(
        r#"databases:
  - name: orders
    rds: {{instance_id: {RDS_INSTANCE}, region: {region}, hostaddr: 127.0.0.1}}
    auth: {{method: password, secret_arn: "{arn}"}}
    # The emulated endpoint's name is not in the demo server's certificate.
    tls: {{mode: verify-ca, ca_file: "{ca}"}}
roles:
  - kind: role
    version: v7
    metadata: {{name: staging-readers}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{env: staging}}
        db_names: ["*"]
        db_roles: [reader]
"#,
        region = scratch_aws::REGION,
        ca = cluster.ca_cert_path().display(),
    );
    std::fs::write(&config_path, &config).map_err(failure)?;
    println!("\n  Config written to {}:\n", config_path.display());
    for line in config.lines() {
        println!("    {line}");
    }
    let aws = AwsSetup::Given(Box::new(sdk));
    let dave = r#""user": "dave", "roles": ["staging-readers"], "database": "orders", "db_name": "postgres""#;
    step_with(dir, &config_path, "session-start", "dave-1", dave, &aws).await?;
    show(&superuser, "dave", "during his session: rds_iam added because the database is RDS").await?;
    step_with(dir, &config_path, "session-end", "dave-1", dave, &aws).await?;
    show(&superuser, "dave", "after his session ended").await?;
    Ok(())
}

fn config_yaml(cluster: &Cluster, cert: &Path, key: &Path) -> String {
    format!(
        r#"managed_group: teleport-auto-user
databases:
  - name: demo
    type: self-hosted
    uri: localhost:{port}
    labels: {{env: demo}}
    admin_user: {{name: {ADMIN}}}
    auth: {{method: cert, cert_file: "{cert}", key_file: "{key}"}}
    tls: {{mode: verify-full, ca_file: "{ca}"}}
roles:
  - kind: role
    version: v7
    metadata: {{name: auto-db-keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: [reader, "{{{{internal.db_roles}}}}"]
  - kind: role
    version: v7
    metadata: {{name: auto-db-drop}}
    spec:
      options: {{create_db_user_mode: best_effort_drop}}
      allow:
        db_labels: {{env: demo}}
        db_names: ["*"]
        db_roles: [reader]
"#,
        port = cluster.port(),
        cert = cert.display(),
        key = key.display(),
        ca = cluster.ca_cert_path().display(),
    )
}

/// Runs one CLI command on an event file, printing the command and its result.
async fn step(dir: &Path, config: &Path, command: &str, session: &str, fields: &str) -> Result<(), Failure> {
    step_with(dir, config, command, session, fields, &AwsSetup::FromEnvironment).await
}

async fn step_with(
    dir: &Path,
    config: &Path,
    command: &str,
    session: &str,
    fields: &str,
    aws: &AwsSetup,
) -> Result<(), Failure> {
    let event = format!(r#"{{"session_id": "{session}", {fields}}}"#);
    let event_path: PathBuf = dir.join(format!("{command}-{session}.json"));
    std::fs::write(&event_path, &event).map_err(failure)?;
    let config_name = config.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!("\n  $ autouser {command} --config {config_name} --event {}", event_path.display());
    let result = match command {
        "session-start" => commands::session_start(config, &event_path, aws).await,
        _ => commands::session_end(config, &event_path, aws).await,
    };
    match result {
        Ok(json) => println!("    {}", json.unwrap_or_default()),
        Err(refused) => println!("    refused (exit {}): {}", refused.exit_code, refused.message),
    }
    Ok(())
}

async fn show(client: &Client, user: &str, when: &str) -> Result<(), Failure> {
    let rows = client
        .query(
            "SELECT r.rolcanlogin,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid ORDER BY 1)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&user],
        )
        .await
        .map_err(failure)?;
    match rows.first() {
        None => println!("    [{user} {when}] no such database user"),
        Some(row) => {
            let login: bool = row.get(0);
            let roles: Vec<String> = row.get(1);
            let roles = if roles.is_empty() { "(none)".to_string() } else { roles.join(", ") };
            println!("    [{user} {when}] {}, member of: {roles}", if login { "LOGIN" } else { "NOLOGIN" });
        }
    }
    Ok(())
}

/// Logs in as `user`, the way a person's client would (TLS verified against the server's CA,
/// the user's own client certificate), reads the demo table through the session's roles, and
/// prints what happened: the login working, or the server's refusal.
async fn log_in(cluster: &Cluster, user: &str, when: &str) {
    let login = scratch_login::connect(cluster, user, "postgres").await;
    let result = match login {
        Ok(client) => client
            .query_one("SELECT current_user::text, count(*) FROM public.orders", &[])
            .await
            .map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())),
        Err(error) => Err(server_message(&error)),
    };
    match result {
        Ok(row) => println!(
            "    [{user} logs in {when}] logged in as {}; SELECT count(*) FROM public.orders: {}",
            row.get::<_, String>(0),
            row.get::<_, i64>(1)
        ),
        Err(message) => println!("    [{user} logs in {when}] refused: {message}"),
    }
}

/// The server's own words for a refused login: the connector words it for an admin and adds
/// a hint about the admin's pg_hba.conf line, which is not what a person's refusal is about.
fn server_message(error: &autouser_engine::Error) -> String {
    match error {
        autouser_engine::Error::AdminAuthFailed { detail, .. } => {
            detail.split_once(": check that pg_hba.conf").map_or(detail.as_str(), |(message, _)| message).to_string()
        }
        other => other.to_string(),
    }
}

async fn connect_as(cluster: &Cluster, user: &str) -> Result<Client, Failure> {
    scratch_login::connect(cluster, user, "postgres").await.map_err(|e| failure(format!("connecting as {user}: {e}")))
}
