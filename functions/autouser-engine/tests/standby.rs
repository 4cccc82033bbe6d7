//! A real hot standby, made with `pg_basebackup` and streaming from its primary: preflight
//! fails the `writable` check, and a session-start is refused as read-only, with nothing
//! written. Needs `pg_basebackup` in `AUTOUSER_PG_BIN`: `scripts/test` runs this with
//! PostgreSQL 15 from Debian.

use std::time::{Duration, Instant};

use autouser_engine::preflight::{self, Status};
use autouser_engine::{engine, Error};
use autouser_policy::config::Config;
use autouser_policy::event::SessionEvent;
use autouser_policy::request;
use scratch_postgres::{Cluster, PgInstall};

mod support;

use support::connect_as;

fn config(cluster: &Cluster) -> Config {
    support::config(cluster, "standby_admin", "standby_group", "[]")
}

#[tokio::test]
async fn a_hot_standby_is_read_only_for_preflight_and_sessions() {
    let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
    let mut primary = Cluster::start(&install).unwrap();
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
