//! The server itself killed (SIGKILL to the postmaster and its backends, as a crash) while
//! session-starts and session-ends run, at several points, and restarted: the user is always
//! consistent (it can log in exactly when its ledger has an open session), and a retry of the
//! same event completes. `scripts/test` runs this on PostgreSQL 15; it owns its cluster.

use std::time::Duration;

use autouser_core::config::Config;
use autouser_core::event::SessionEvent;
use autouser_core::ledger::Ledger;
use autouser_core::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
use autouser_core::{engine, request};
use scratch_postgres::{Cluster, PgInstall};

const ADMIN: &str = "crash_admin";

mod support;

fn config(cluster: &Cluster) -> Config {
    support::config(cluster, ADMIN, "crash_group", "[crash_reader]")
}

/// Starts (`start` true) or ends session `session` of `user` on a new admin connection.
async fn run(config: &Config, user: &str, session: &str, start: bool) -> Result<(), autouser_core::Error> {
    let event = SessionEvent::from_value(serde_json::json!({
        "session_id": session, "user": user, "roles": ["devs"], "database": "main", "db_name": "postgres",
    }))?;
    let db = config.databases[0].resolve_static().unwrap();
    let credentials = AdminCredentials::from_local_config(&db.auth)?;
    let tls = TlsSettings::from_config(&db.tls)?;
    let connection = pg::connect_admin(&ConnectParams::admin_of(&db, "postgres", &tls, &credentials)).await?;
    if start {
        engine::session_start(&connection, &request::prepare_start(config, &db, &event)?).await.map(drop)
    } else {
        engine::session_end(&connection, &request::prepare_end(config, &db, &event)?).await.map(drop)
    }
}

/// Whether `user` can log in exactly when its ledger has an open session; its state.
async fn assert_consistent(cluster: &Cluster, user: &str, context: &str) -> Option<(bool, usize)> {
    let rows = support::connect_as(cluster, cluster.superuser())
        .await
        .query("SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .unwrap();
    let row = rows.first()?;
    let login: bool = row.get(0);
    let ledger = Ledger::from_comment(user, row.get::<_, Option<&str>>(1)).unwrap();
    assert_eq!(login, !ledger.sessions.is_empty(), "{context}: login {login}, {} open sessions", ledger.sessions.len());
    Some((login, ledger.sessions.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_start_or_end_leaves_a_consistent_user_and_the_retry_completes() {
    let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
    let mut cluster = Cluster::start(&install).unwrap();
    let setup = format!("CREATE ROLE {ADMIN} LOGIN CREATEROLE; CREATE ROLE crash_reader;");
    support::connect_as(&cluster, cluster.superuser()).await.batch_execute(&setup).await.unwrap();
    if cluster.major() >= 16 {
        let grant = format!("GRANT crash_reader TO {ADMIN} WITH ADMIN OPTION");
        support::connect_as(&cluster, cluster.superuser()).await.batch_execute(&grant).await.unwrap();
    }
    let config = std::sync::Arc::new(config(&cluster));
    let mut interrupted = 0;
    // Delays from the call to the kill: through the connection (TLS, login) into the
    // transaction and past it.
    for (n, delay_ms) in [0u64, 2, 4, 6, 8, 10, 13, 16, 20, 30].into_iter().enumerate() {
        let user = format!("crash_user_{n}");
        for (step, start) in [("start", true), ("end", false)] {
            let context = format!("{step} killed after {delay_ms} ms");
            let call = tokio::spawn({
                let (config, user) = (config.clone(), user.clone());
                async move { run(&config, &user, "s1", start).await }
            });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            cluster.kill().unwrap();
            if call.await.unwrap().is_err() {
                interrupted += 1;
            }
            cluster.restart().unwrap();
            assert_consistent(&cluster, &user, &context).await;
            run(&config, &user, "s1", start).await.unwrap_or_else(|e| panic!("{context}: the retry failed: {e}"));
            let state = assert_consistent(&cluster, &user, &context).await;
            assert_eq!(state, Some((start, usize::from(start))), "{context}: the retry completed the {step}");
        }
    }
    eprintln!("{interrupted} of 20 calls were interrupted by the kill");
    // The early kills land before the login; the point is that the later ones land inside.
    assert!(interrupted >= 4, "only {interrupted} of 20 calls were interrupted: the kills came too late");
}
