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

/// `psql` of [`psql`] running in the background, its output discarded.
fn spawn_psql(standby: &Cluster, user: &str, sql: &str) -> Child {
    psql(standby, user, sql).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("psql starts")
}

/// Whether the user (`$1`) has a connection.
const USER_CONNECTED: &str = "SELECT 1 FROM pg_stat_activity WHERE usename = $1";

/// Waits up to 20 s until `query`, with `user` as `$1`, returns a row on `on` (`present`) or
/// none (`!present`); fails with `what` otherwise.
async fn wait_for_rows(on: &tokio_postgres::Client, query: &str, user: &str, present: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while on.query(query, &[&user]).await.unwrap().is_empty() == present {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 20 s until `child` has exited, and returns how; fails with `what` otherwise.
fn wait_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn psql_login(standby: &Cluster, user: &str) -> Output {
    psql(standby, user, "SELECT current_user").output().expect("psql runs")
}

async fn start(writer: &AdminConnection, replica: &replica::Replica<'_>, config: &Config, user: &str, session: &str) {
    let (db, _) = databases(config);
    let req = request::prepare_start(config, &db, &event(user, session)).unwrap();
    replica::session_start(writer, std::slice::from_ref(replica), &req)
        .await
        .unwrap_or_else(|e| panic!("start of {user}: {e}"));
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
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
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
    let mut open: Child = spawn_psql(&standby, user, "SELECT pg_sleep(60)");
    let on_standby = connect_as(&standby, "postgres").await;
    wait_for_rows(&on_standby, USER_CONNECTED, user, true, "the user's psql did not connect to the standby").await;
    let req = request::prepare_end(&config, &db, &event(user, "s0")).unwrap();
    let outcome =
        replica::session_end(&writer, std::slice::from_ref(&replica), &req, &engine::NoOtherDatabases).await.unwrap();
    assert_eq!(outcome.status, EndStatus::Deactivated);
    assert_eq!(outcome.replica_replayed, Some(true), "{outcome:?}");
    assert!(outcome.terminated_connections.is_some_and(|n| n >= 1), "{outcome:?}");
    let status = wait_for_exit(&mut open, "the user's psql on the standby is still open after the end");
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
    let replica = replica::Replica::of(Ok(&replica_connection), &db);

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
    let error = replica::session_start(&writer, std::slice::from_ref(&replica), &req).await.unwrap_err();
    assert!(began.elapsed() < db.replica_wait, "a paused replica is reported without waiting out the bound");
    let Error::ReplicaBehind { paused: true, replica: ref named, .. } = error else { panic!("{error:?}") };
    assert_eq!(named, &db.endpoint());
    assert!(error.is_transient(), "a retry may succeed: {error}");
    assert!(error.to_string().contains("pg_wal_replay_resume()"), "{error}");
    assert_eq!(revision(&primary, "replica_paused").await, 1, "the writer has the user");

    on_standby.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    replica::session_start(&writer, std::slice::from_ref(&replica), &req).await.unwrap();
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
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
    let req = request::prepare_start(&config, &db, &event("replica_promoted", "s1")).unwrap();
    let error = replica::session_start(&writer, std::slice::from_ref(&replica), &req).await.unwrap_err();
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
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
    let user = "replica_reaped";
    start(&writer, &replica, &config, user, "r1").await;
    let mut open = spawn_psql(&standby, user, "SELECT pg_sleep(60)");
    let on_standby = connect_as(&standby, "postgres").await;
    wait_for_rows(&on_standby, USER_CONNECTED, user, true, "the user's psql did not connect to the standby").await;
    // Past the default maximum session duration (12 h).
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 13 * 3600;
    let reap = || async {
        let connect_to = |db_name: String| {
            let writer_db = &writer_db;
            async move { Ok(support::connect_to(writer_db, &db_name).await) }
        };
        autouser_engine::reaper::reap(
            &writer,
            "postgres",
            &config,
            &db,
            std::slice::from_ref(&replica),
            later,
            None,
            connect_to,
        )
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
    wait_for_rows(&on_standby, USER_CONNECTED, user, false, "the user's psql did not leave the standby").await;
    let report = reap().await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].status, EndStatus::Deactivated, "{report:?}");
    let login = psql_login(&standby, user);
    assert!(!login.status.success(), "the reaper's lock has reached the standby when it answers");
}

/// The user as an attacker on the replica: it holds a lock there, in an open transaction, that
/// the replay of an application's change on the writer must wait for (`TRUNCATE` takes an
/// `ACCESS EXCLUSIVE` lock, which the standby replays). On a replica that lets queries hold
/// replay back without limit (`max_standby_streaming_delay = -1`, as analytics replicas are set),
/// every later commit waits behind it, the end's lock included: the user would keep its access
/// on the replica. The end ends the user's connections on the replica once the replica lags,
/// which frees the replay, and answers when the lock has replayed.
#[tokio::test]
async fn a_user_holding_back_replay_on_the_replica_cannot_keep_its_access() {
    let Pair { primary, standby } = pair().await;
    let config = config(&standby, primary.port(), "4s");
    let (db, _) = databases(&config);
    let superuser = connect_as(&primary, "postgres").await;
    superuser
        .batch_execute("CREATE TABLE public.app_orders (id int); GRANT SELECT ON public.app_orders TO replica_reader;")
        .await
        .unwrap();
    let on_standby = connect_as(&standby, "postgres").await;
    on_standby.batch_execute("ALTER SYSTEM SET max_standby_streaming_delay = -1").await.unwrap();
    on_standby.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let writer = connect_as(&primary, ADMIN).await;
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
    let user = "replica_holder";
    start(&writer, &replica, &config, user, "h1").await;

    // The user's transaction on the standby holds its lock on the table.
    let mut holder = spawn_psql(&standby, user, "BEGIN; SELECT count(*) FROM public.app_orders; SELECT pg_sleep(120)");
    let held = "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE a.usename = $1 AND l.relation = 'public.app_orders'::regclass AND l.granted";
    wait_for_rows(&on_standby, held, user, true, "the user's transaction did not take its lock on the standby").await;
    // An application's change on the writer, whose replay waits for the user's lock.
    superuser.batch_execute("TRUNCATE public.app_orders").await.unwrap();

    let req = request::prepare_end(&config, &db, &event(user, "h1")).unwrap();
    let outcome =
        replica::session_end(&writer, std::slice::from_ref(&replica), &req, &engine::NoOtherDatabases).await.unwrap();
    assert_eq!(outcome.status, EndStatus::Deactivated);
    assert_eq!(outcome.replica_replayed, Some(true), "the lock must reach the replica before the answer: {outcome:?}");
    assert!(outcome.terminated_connections.is_some_and(|n| n >= 1), "{outcome:?}");
    wait_for_exit(&mut holder, "the user's transaction on the standby is still open after the end");
    let login = psql_login(&standby, user);
    assert!(!login.status.success(), "a login to the standby after the end must be refused");
    assert!(String::from_utf8_lossy(&login.stderr).contains("not permitted to log in"), "{login:?}");
}

/// An end whose COMMIT on the writer is applied but whose reply is lost never reached the
/// replica: `replica::confirm_end`, on a new connection to the writer, finds the end applied,
/// then waits for the replay and ends the user's connections on the replica, as the end would
/// have.
#[tokio::test]
async fn an_end_whose_commit_reply_is_lost_is_finished_on_the_replica_by_the_rerun() {
    let Pair { primary, standby } = pair().await;
    let proxy = RoundTripCounter::start(([127, 0, 0, 1], primary.port()).into()).unwrap();
    let config = config(&standby, proxy.port(), "10s");
    let (db, _) = databases(&config);
    let through_proxy = support::connect_to(&db.writer_database().unwrap(), "postgres").await;
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
    // A warm connection (its statements prepared by another user's end) ends a session in two
    // round trips to the writer: the read, then the changes and COMMIT.
    for user in ["replica_warm", "replica_lost"] {
        start(&through_proxy, &replica, &config, user, "l1").await;
    }
    let warm = request::prepare_end(&config, &db, &event("replica_warm", "l1")).unwrap();
    replica::session_end(&through_proxy, std::slice::from_ref(&replica), &warm, &engine::NoOtherDatabases)
        .await
        .unwrap();

    let user = "replica_lost";
    let mut open = spawn_psql(&standby, user, "SELECT pg_sleep(60)");
    let on_standby = connect_as(&standby, "postgres").await;
    wait_for_rows(&on_standby, USER_CONNECTED, user, true, "the user's psql did not connect to the standby").await;
    let req = request::prepare_end(&config, &db, &event(user, "l1")).unwrap();
    proxy.lose_the_reply_to_burst(2);
    let error = replica::session_end(&through_proxy, std::slice::from_ref(&replica), &req, &engine::NoOtherDatabases)
        .await
        .unwrap_err();
    assert_eq!(proxy.replies_lost(), 1);
    let Error::EndUnconfirmed { planned, .. } = error else { panic!("{error:?}") };
    assert!(open.try_wait().unwrap().is_none(), "the first run did not reach the replica");

    let fresh = connect_as(&primary, ADMIN).await;
    let confirmed =
        replica::confirm_end(&fresh, std::slice::from_ref(&replica), &req, &engine::NoOtherDatabases, *planned)
            .await
            .unwrap();
    assert_eq!(confirmed.status, EndStatus::Deactivated, "{confirmed:?}");
    assert!(confirmed.reason.as_deref().unwrap_or_default().contains("COMMIT reply was lost"), "{confirmed:?}");
    assert_eq!(confirmed.replica_replayed, Some(true), "{confirmed:?}");
    wait_for_exit(&mut open, "the user's psql on the standby is still open after the rerun");
    let login = psql_login(&standby, user);
    assert!(!login.status.success(), "a login to the standby after the end must be refused");
}

/// Behind an Aurora reader endpoint, a session may log in to any of the readers: a call waits
/// for every one of them. Two standbys of one primary stand for two readers: with one paused,
/// the start names that one; once it resumes, the person logs in to either, and an end closes
/// the person's connection wherever it is and refuses logins on both.
#[tokio::test]
async fn a_session_behind_a_reader_endpoint_waits_for_every_reader() {
    let Pair { mut primary, standby } = pair().await;
    let second = primary.start_standby().expect("a second standby of the primary");
    let config = config(&standby, primary.port(), "3s");
    let (db, _) = databases(&config);
    let writer = connect_as(&primary, ADMIN).await;
    let (first_connection, second_connection) = (connect_as(&standby, ADMIN).await, connect_as(&second, ADMIN).await);
    let second_endpoint = format!("localhost:{}", second.port());
    let replicas = [
        replica::Replica::of(Ok(&first_connection), &db),
        replica::Replica {
            client: Ok(second_connection.client()),
            endpoint: second_endpoint.clone(),
            wait: db.replica_wait,
        },
    ];

    // Without pg_basebackup (npm's builds), the second standby's copy restarted the primary:
    // the first streams again once its receiver has reconnected (within 5 s), and replays a
    // change made after the restart.
    let on_primary = connect_as(&primary, "postgres").await;
    on_primary.batch_execute("CREATE TABLE public.after_the_restart ()").await.unwrap();
    let primary_lsn: String = on_primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let patient = replica::Replica {
        client: Ok(first_connection.client()),
        endpoint: db.endpoint(),
        wait: Duration::from_secs(30),
    };
    assert_eq!(replica::wait_for_replay(&patient, &primary_lsn).await.unwrap(), replica::Replay::Done);

    let on_second = connect_as(&second, "postgres").await;
    on_second.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    let user = "replica_reader_endpoint";
    let req = request::prepare_start(&config, &db, &event(user, "e1")).unwrap();
    let error = replica::session_start(&writer, &replicas, &req).await.unwrap_err();
    let Error::ReplicaBehind { replica: ref named, paused: true, .. } = error else { panic!("{error:?}") };
    assert_eq!(named, &second_endpoint, "the reader that has not replayed is named");
    on_second.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    replica::session_start(&writer, &replicas, &req).await.unwrap();
    for reader in [&standby, &second] {
        let login = psql_login(reader, user);
        assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    }

    let mut open = spawn_psql(&second, user, "SELECT pg_sleep(60)");
    wait_for_rows(&on_second, USER_CONNECTED, user, true, "the user's psql did not connect to the second standby")
        .await;
    let req = request::prepare_end(&config, &db, &event(user, "e1")).unwrap();
    let outcome = replica::session_end(&writer, &replicas, &req, &engine::NoOtherDatabases).await.unwrap();
    assert_eq!(outcome.status, EndStatus::Deactivated);
    assert_eq!(outcome.replica_replayed, Some(true), "{outcome:?}");
    assert_eq!(outcome.terminated_connections, Some(1), "{outcome:?}");
    wait_for_exit(&mut open, "the user's psql on the second standby is still open after the end");
    for reader in [&standby, &second] {
        assert!(!psql_login(reader, user).status.success(), "a login to a reader after the end must be refused");
    }
}

/// With `synchronous_commit = off` on the writer, a commit answers before its WAL is flushed:
/// the position waited for is where the commit was inserted, not the flush position, which may
/// still be before it. Each start is followed by a login to the standby, which finds the role.
#[tokio::test]
async fn starts_on_a_writer_with_asynchronous_commit_wait_for_their_commit() {
    let Pair { primary, standby } = pair().await;
    let superuser = connect_as(&primary, "postgres").await;
    superuser.batch_execute("ALTER SYSTEM SET synchronous_commit = off").await.unwrap();
    superuser.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let config = config(&standby, primary.port(), "10s");
    let (db, _) = databases(&config);
    let writer = connect_as(&primary, ADMIN).await;
    let setting: String = writer.client().query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    assert_eq!(setting, "off");
    let replica_connection = connect_as(&standby, ADMIN).await;
    let replica = replica::Replica::of(Ok(&replica_connection), &db);
    for i in 0..20 {
        let user = format!("replica_async_{i}");
        start(&writer, &replica, &config, &user, "a1").await;
        let login = psql_login(&standby, &user);
        assert!(login.status.success(), "iteration {i}: {}", String::from_utf8_lossy(&login.stderr));
    }
}

/// A replica the admin cannot reach stops neither a start nor an end on the writer: the end
/// locks the user there and answers `replica_replayed: false`, and the lock reaches the replica
/// when it is back. An unreachable reader behind an Aurora reader endpoint would otherwise
/// keep every session of the cluster open.
#[tokio::test]
async fn a_replica_that_is_down_stops_no_call_on_the_writer() {
    let Pair { primary, mut standby } = pair().await;
    let config = config(&standby, primary.port(), "4s");
    let (db, _) = databases(&config);
    let writer = connect_as(&primary, ADMIN).await;
    let user = "replica_down";
    {
        let replica_connection = connect_as(&standby, ADMIN).await;
        let replica = replica::Replica::of(Ok(&replica_connection), &db);
        start(&writer, &replica, &config, user, "d1").await;
        standby.kill().unwrap();
        // The admin's connection to the replica is gone: its reads fail.
        let req = request::prepare_end(&config, &db, &event(user, "d1")).unwrap();
        let outcome = replica::session_end(&writer, std::slice::from_ref(&replica), &req, &engine::NoOtherDatabases)
            .await
            .unwrap();
        assert_eq!(outcome.status, EndStatus::Deactivated, "{outcome:?}");
        assert_eq!(outcome.replica_replayed, Some(false), "{outcome:?}");
    }
    // The admin cannot log in to it at all: a start is not held up either.
    let refused = Error::Unreachable { endpoint: db.endpoint(), detail: "connection refused".into() };
    let replica = replica::Replica { client: Err(&refused), endpoint: db.endpoint(), wait: db.replica_wait };
    start(&writer, &replica, &config, "replica_down_2", "d2").await;

    standby.restart().unwrap();
    let replica_connection = connect_as(&standby, ADMIN).await;
    let lsn: String = writer.client().query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let patient = replica::Replica {
        client: Ok(replica_connection.client()),
        endpoint: db.endpoint(),
        wait: Duration::from_secs(30),
    };
    assert_eq!(replica::wait_for_replay(&patient, &lsn).await.unwrap(), replica::Replay::Done);
    let login = psql_login(&standby, user);
    assert!(String::from_utf8_lossy(&login.stderr).contains("not permitted to log in"), "{login:?}");
    assert!(psql_login(&standby, "replica_down_2").status.success(), "the start reached the replica once it was back");
}
