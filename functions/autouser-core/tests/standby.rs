//! A real hot standby, made with `pg_basebackup` and streaming from its primary: preflight
//! fails the `writable` check, and a session-start is refused as read-only, with nothing
//! written. Needs `pg_basebackup` in `AUTOUSER_PG_BIN`: `scripts/test` runs this with
//! PostgreSQL 15 from Debian.

use std::time::{Duration, Instant};

use autouser_core::config::{Config, TlsMode};
use autouser_core::event::SessionEvent;
use autouser_core::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_core::preflight::{self, Status};
use autouser_core::{engine, request, Error};
use scratch_postgres::{Cluster, PgInstall};

async fn connect_as(cluster: &Cluster, user: &str) -> AdminConnection {
    let cert = cluster.client_cert(user).unwrap();
    let credentials = AdminCredentials::ClientCert { cert_pem: cert.cert_pem, key_pem: cert.key_pem };
    let tls = TlsSettings { mode: TlsMode::VerifyFull, ca_pem: Some(cluster.ca_cert_pem().to_string()) };
    let params = ConnectParams {
        host: cluster.host(),
        port: cluster.port(),
        hostaddr: None,
        dbname: "postgres",
        user,
        tls: &tls,
        credentials: &credentials,
    };
    pg::connect_admin(&params).await.unwrap()
}

fn config(cluster: &Cluster) -> Config {
    let cert = cluster.client_cert("standby_admin").unwrap();
    let text = format!(
        r#"managed_group: standby_group
databases:
  - name: main
    type: self-hosted
    uri: "localhost:{port}"
    admin_user: {{name: standby_admin, default_database: postgres}}
    auth: {{method: cert, cert_file: {cert:?}, key_file: {key:?}}}
    tls: {{mode: verify-full, ca_file: {ca:?}}}
roles:
  - kind: role
    version: v7
    metadata: {{name: devs}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{"*": "*"}}, db_names: ["*"], db_roles: []}}
"#,
        port = cluster.port(),
        cert = cert.cert_path.display().to_string(),
        key = cert.key_path.display().to_string(),
        ca = cluster.ca_cert_path().display().to_string(),
    );
    Config::parse(&text, std::path::Path::new("/")).unwrap()
}

#[tokio::test]
async fn a_hot_standby_is_read_only_for_preflight_and_sessions() {
    let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
    let primary = Cluster::start(&install).unwrap();
    connect_as(&primary, "postgres").await.batch_execute("CREATE ROLE standby_admin LOGIN CREATEROLE").await.unwrap();
    let standby = primary.start_standby().expect("a standby of the primary (pg_basebackup)");

    let on_standby = connect_as(&standby, "postgres").await;
    let in_recovery: bool = on_standby.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(in_recovery, "the standby is in recovery");
    // Streaming works: a role made on the primary after the base backup reaches the standby.
    connect_as(&primary, "postgres").await.batch_execute("CREATE ROLE standby_marker").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_standby.query("SELECT 1 FROM pg_roles WHERE rolname = 'standby_marker'", &[]).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the standby does not replay the primary's changes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = config(&standby);
    let db = config.databases[0].resolve_static().unwrap();
    let admin = connect_as(&standby, "standby_admin").await;
    let (report, facts) = preflight::check(&admin, &config, &db).await.unwrap();
    let writable = report.findings.iter().find(|f| f.check == "writable").unwrap();
    assert_eq!(writable.status, Status::Fail, "{}", report.to_text());
    assert!(writable.detail.contains("standby (in recovery)"), "{writable:?}");
    assert!(!report.ready);
    assert!(preflight::bootstrap(&admin, &config, &facts).await.unwrap().is_empty(), "nothing is created on a standby");

    let event = SessionEvent::from_value(serde_json::json!({
        "session_id": "s1", "user": "standby_alice", "roles": ["devs"], "database": "main", "db_name": "postgres"
    }))
    .unwrap();
    let req = request::prepare_start(&config, &db, &event).unwrap();
    let err = engine::session_start(&admin, &req).await.unwrap_err();
    assert!(matches!(err, Error::ReadOnlyEndpoint { .. }), "{err}");
    assert!(err.to_string().contains("writer"), "{err}");

    // The same admin on the primary is ready.
    let config = self::config(&primary);
    let db = config.databases[0].resolve_static().unwrap();
    let (report, _) =
        preflight::check(connect_as(&primary, "standby_admin").await.client(), &config, &db).await.unwrap();
    assert!(report.ready, "{}", report.to_text());
}
