//! Sessions on a real hot standby (`pg_basebackup -R`, streaming from its primary), provisioned
//! through the primary: the config's entry names the standby (`uri`) and its writer
//! (`primary:`). What a person sees is checked with `psql` on the standby: a login right after
//! the start's answer succeeds, and an end closes the open `psql` and refuses the next login.
//! `scripts/test` runs it on PostgreSQL 15 (Debian's, whose `pg_basebackup` makes the standby)
//! and 18 (npm's, which has none: the standby is a copy of the stopped primary's data, as
//! `scratch_postgres::Cluster::start_standby` says); `psql` is the installation's, or Debian's.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use autouser_engine::pg::AdminConnection;
use autouser_engine::preflight::{self, Status};
use autouser_engine::{engine, replica, Error};
use autouser_policy::config::{Config, ResolvedDatabase};
use autouser_policy::event::SessionEvent;
use autouser_policy::outcome::EndStatus;
use autouser_policy::request;
use scratch_postgres::{Cluster, PgInstall, RoundTripCounter};

mod support;

use support::connect_as;

const ADMIN: &str = "replica_admin";
const GROUP: &str = "replica_group";

/// The standby's entry: sessions on `standby`, changes on the writer at `writer_port` (the
/// primary, or a round-trip counter in front of it).
fn config(standby: &Cluster, writer_port: u16, replica_wait: &str) -> Config {
    let entry = scratch_login::database_yaml(standby, standby.port(), "main", ADMIN).unwrap();
    let entry = format!("{entry}    primary: {{uri: \"localhost:{writer_port}\"}}\n    replica_wait: {replica_wait}\n");
    let text = scratch_login::one_role_config_yaml(GROUP, &entry, "devs", "keep", "db_roles: [replica_reader]");
    let text = format!("terminate_connections: true\n{text}");
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/")).unwrap()
}

fn event(user: &str, session: &str) -> SessionEvent {
    SessionEvent::from_value(serde_json::json!({
        "session_id": session, "user": user, "roles": ["devs"], "database": "main", "db_name": "postgres"
    }))
    .unwrap()
}

/// The entry resolved, and its writer's view.
fn databases(config: &Config) -> (ResolvedDatabase, ResolvedDatabase) {
    let db = config.databases[0].resolve_static().unwrap();
    let writer = db.writer_database().expect("the entry names its writer");
    (db, writer)
}

struct Pair {
    primary: Cluster,
    standby: Cluster,
}

async fn pair() -> Pair {
    let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
    let mut primary = Cluster::start(&install).unwrap();
    let superuser = connect_as(&primary, "postgres").await;
    let mut setup = format!(
        "CREATE ROLE {ADMIN} LOGIN CREATEROLE; GRANT pg_signal_backend TO {ADMIN};
         CREATE SCHEMA {GROUP} AUTHORIZATION {ADMIN}; CREATE ROLE replica_reader;"
    );
    if primary.major() >= 16 {
        setup.push_str(&format!("GRANT replica_reader TO {ADMIN} WITH ADMIN OPTION;"));
    }
    superuser.batch_execute(&setup).await.unwrap();
    let standby = primary.start_standby().expect("a standby of the primary (pg_basebackup)");
    // The standby applies each commit 100 ms after the primary made it, as a busy replica may:
    // an answer that did not wait for the replay would be followed by a refused login.
    let on_standby = connect_as(&standby, "postgres").await;
    on_standby.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '100ms'").await.unwrap();
    on_standby.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    Pair { primary, standby }
}

/// `user` logging in to the standby with its client certificate, by `psql`.
fn psql(standby: &Cluster, user: &str, sql: &str) -> Command {
    let psql = std::env::var("AUTOUSER_PG_BIN")
        .map(|bin| PathBuf::from(bin).join("psql"))
        .ok()
        .filter(|path| path.is_file())
        // The npm builds of 16-18 have no psql: Debian's (15) logs in to them as well.
        .unwrap_or_else(|| PathBuf::from("/usr/bin/psql"));
    let cert = standby.client_cert(user).unwrap();
    let conninfo = format!(
        "host=localhost port={} dbname=postgres user={user} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} \
         connect_timeout=10",
        standby.port(),
        standby.ca_cert_path().display(),
        cert.cert_path.display(),
        cert.key_path.display()
    );
    let mut command = Command::new(psql);
    command.args(["-X", "-A", "-t", "-c", sql, &conninfo]).stdin(Stdio::null()).env_remove("PGPASSWORD");
    command
}

fn psql_login(standby: &Cluster, user: &str) -> Output {
    psql(standby, user, "SELECT current_user").output().expect("psql runs")
}

async fn start(writer: &AdminConnection, replica: &replica::Replica<'_>, config: &Config, user: &str, session: &str) {
    let (db, _) = databases(config);
    let req = request::prepare_start(config, &db, &event(user, session)).unwrap();
    replica::session_start(writer, replica, &req).await.unwrap_or_else(|e| panic!("start of {user}: {e}"));
}

/// The ledger's revision of `user` on the primary.
async fn revision(primary: &Cluster, user: &str) -> u64 {
    let client = connect_as(primary, "postgres").await;
    let row = client
        .query_one("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .unwrap();
    let ledger: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
    ledger["revision"].as_u64().unwrap()
}

#[tokio::test]
async fn sessions_on_a_hot_standby_are_provisioned_through_the_primary() {
    let Pair { primary, standby } = pair().await;
    let config = config(&standby, primary.port(), "10s");
    let (db, writer_db) = databases(&config);
    assert_eq!(writer_db.port, primary.port());
    let writer = connect_as(&primary, ADMIN).await;
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica =
        replica::Replica { client: replica_connection.client(), endpoint: db.endpoint(), wait: db.replica_wait };
    let finding = preflight::check_replica(Ok(replica_connection.client()), &db).await;
    assert_eq!(finding.status, Status::Pass, "{finding:?}");

    // Every start's answer comes after the standby has the user: psql logs in right after.
    for i in 0..50 {
        let user = format!("replica_user_{i}");
        start(&writer, &replica, &config, &user, &format!("s{i}")).await;
        let login = psql_login(&standby, &user);
        assert!(
            login.status.success(),
            "iteration {i}: {user} cannot log in to the standby right after the start: {}",
            String::from_utf8_lossy(&login.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), user);
    }

    // An end closes the user's open psql on the standby, and the next login there is refused.
    let user = "replica_user_0";
    let mut open: Child =
        psql(&standby, user, "SELECT pg_sleep(60)").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let on_standby = connect_as(&standby, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_standby.query("SELECT 1 FROM pg_stat_activity WHERE usename = $1", &[&user]).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the user's psql did not connect to the standby");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = request::prepare_end(&config, &db, &event(user, "s0")).unwrap();
    let outcome = replica::session_end(&writer, &replica, &req, &engine::NoOtherDatabases).await.unwrap();
    assert_eq!(outcome.status, EndStatus::Deactivated);
    assert_eq!(outcome.replica_replayed, Some(true), "{outcome:?}");
    assert!(outcome.terminated_connections.is_some_and(|n| n >= 1), "{outcome:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = open.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the user's psql on the standby is still open after the end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the user's psql was ended, not finished");
    let login = psql_login(&standby, user);
    assert!(!login.status.success(), "a login to the standby after the end must be refused");
    assert!(String::from_utf8_lossy(&login.stderr).contains("not permitted to log in"), "{login:?}");
}

#[tokio::test]
async fn a_paused_standby_answers_replica_behind_and_the_retry_only_waits() {
    let Pair { primary, standby } = pair().await;
    let counter = RoundTripCounter::start(([127, 0, 0, 1], primary.port()).into()).unwrap();
    let config = config(&standby, counter.port(), "3s");
    let (db, writer_db) = databases(&config);
    let writer = support::connect_to(&writer_db, "postgres").await;
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica =
        replica::Replica { client: replica_connection.client(), endpoint: db.endpoint(), wait: db.replica_wait };

    // A first start of a new user on a warm writer connection is one round trip to the writer,
    // the replica's wait included, once bootstrap has prepared the creator roles (16+), as
    // discovery does.
    let (_, facts) = preflight::check(writer.client(), &config, &writer_db).await.unwrap();
    preflight::bootstrap(writer.client(), &config, &facts).await.unwrap();
    start(&writer, &replica, &config, "replica_warm", "w0").await;
    let before = counter.round_trips();
    start(&writer, &replica, &config, "replica_new", "n0").await;
    assert_eq!(counter.round_trips() - before, 1, "a new user's start on a replica entry costs one writer round trip");

    let on_standby = connect_as(&standby, "postgres").await;
    on_standby.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    let req = request::prepare_start(&config, &db, &event("replica_paused", "p1")).unwrap();
    let began = Instant::now();
    let error = replica::session_start(&writer, &replica, &req).await.unwrap_err();
    assert!(began.elapsed() < db.replica_wait, "a paused replica is reported without waiting out the bound");
    let Error::ReplicaBehind { paused: true, replica: ref named, .. } = error else { panic!("{error:?}") };
    assert_eq!(named, &db.endpoint());
    assert!(error.is_transient(), "a retry may succeed: {error}");
    assert!(error.to_string().contains("pg_wal_replay_resume()"), "{error}");
    assert_eq!(revision(&primary, "replica_paused").await, 1, "the writer has the user");

    on_standby.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    replica::session_start(&writer, &replica, &req).await.unwrap();
    assert_eq!(revision(&primary, "replica_paused").await, 1, "the retry changed nothing on the writer");
    assert!(psql_login(&standby, "replica_paused").status.success());
}

#[tokio::test]
async fn a_replica_entry_whose_standby_was_promoted_is_refused() {
    let Pair { primary, standby } = pair().await;
    let config = config(&standby, primary.port(), "2s");
    let (db, _) = databases(&config);
    let writer = connect_as(&primary, ADMIN).await;
    connect_as(&standby, "postgres").await.batch_execute("SELECT pg_promote()").await.unwrap();
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica =
        replica::Replica { client: replica_connection.client(), endpoint: db.endpoint(), wait: db.replica_wait };
    let req = request::prepare_start(&config, &db, &event("replica_promoted", "s1")).unwrap();
    let error = replica::session_start(&writer, &replica, &req).await.unwrap_err();
    assert!(matches!(error, Error::NotAReplica { .. }), "{error:?}");
    let finding = preflight::check_replica(Ok(replica_connection.client()), &db).await;
    assert_eq!(finding.status, Status::Fail, "{finding:?}");
    assert!(finding.detail.contains("not in recovery"), "{finding:?}");
    assert!(!error.is_transient());
}

/// The users' connections are on the replica: the reaper counts them there, leaves an expired
/// session of a connected user open, and closes it once the user has gone, on the writer, with
/// the lock replayed on the replica before it answers.
#[tokio::test]
async fn the_reaper_counts_connections_on_the_replica_and_closes_through_the_writer() {
    let Pair { primary, standby } = pair().await;
    let config = config(&standby, primary.port(), "10s");
    let (db, writer_db) = databases(&config);
    let writer = connect_as(&primary, ADMIN).await;
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica =
        replica::Replica { client: replica_connection.client(), endpoint: db.endpoint(), wait: db.replica_wait };
    let user = "replica_reaped";
    start(&writer, &replica, &config, user, "r1").await;
    let mut open =
        psql(&standby, user, "SELECT pg_sleep(60)").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let on_standby = connect_as(&standby, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_standby.query("SELECT 1 FROM pg_stat_activity WHERE usename = $1", &[&user]).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the user's psql did not connect to the standby");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the default maximum session duration (12 h).
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 13 * 3600;
    let reap = || async {
        let connect_to = |db_name: String| {
            let writer_db = &writer_db;
            async move { Ok(support::connect_to(writer_db, &db_name).await) }
        };
        autouser_engine::reaper::reap(&writer, "postgres", &config, &db, Some(&replica), later, None, connect_to)
            .await
            .unwrap()
    };
    let report = reap().await;
    assert!(report.closed.is_empty(), "{report:?}");
    assert_eq!(report.left_open.len(), 1, "the user is connected to the replica: {report:?}");
    assert_eq!(report.left_open[0].connections, 1, "{report:?}");

    // The user logs out (its backend would sleep on without a client until pg_sleep ends).
    open.kill().unwrap();
    open.wait().unwrap();
    on_standby
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&user])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !on_standby.query("SELECT 1 FROM pg_stat_activity WHERE usename = $1", &[&user]).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the user's psql did not leave the standby");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = reap().await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].status, EndStatus::Deactivated, "{report:?}");
    let login = psql_login(&standby, user);
    assert!(!login.status.success(), "the reaper's lock has reached the standby when it answers");
}
