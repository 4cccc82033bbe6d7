//! The server itself killed (SIGKILL to the postmaster and its backends, as a crash) while
//! session-starts and session-ends run, and restarted: the user is always consistent (it can
//! log in exactly when its ledger has an open session), and a retry of the same event
//! completes. `scripts/test` runs this on PostgreSQL 15; it owns its cluster.
//!
//! The kill points inside a call's transaction are made certain by holding a lock the call
//! needs and killing once its backend waits for it; a sweep of kills at fixed delays adds
//! whatever points this machine's speed puts them at.

use std::time::Duration;

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::{engine, sql};
use autouser_policy::config::Config;
use autouser_policy::event::SessionEvent;
use autouser_policy::ledger::Ledger;
use autouser_policy::request;
use scratch_postgres::{Cluster, PgInstall};

const ADMIN: &str = "crash_admin";

mod support;

fn config(cluster: &Cluster) -> Config {
    support::config(cluster, ADMIN, "crash_group", "[crash_reader]")
}

/// Starts (`start` true) or ends session `session` of `user` on a new admin connection.
async fn run(config: &Config, user: &str, session: &str, start: bool) -> Result<(), autouser_engine::Error> {
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
        let others = engine::NoOtherDatabases;
        engine::session_end(&connection, &request::prepare_end(config, &db, &event)?, &others).await.map(drop)
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

/// A lock the test holds so that a call stops at a known point of its transaction.
#[derive(Clone, Copy, Debug)]
enum Blocker {
    /// The user's advisory lock: the call waits right after `BEGIN`, before any write.
    UserLock,
    /// An uncommitted comment on the user: the call waits at its ledger write, after
    /// `ALTER ROLE .. LOGIN/NOLOGIN`, so the kill lands after a write and before the commit.
    LedgerWrite,
}

impl Blocker {
    async fn hold(self, holder: &AdminConnection, user: &str) {
        let statement = match self {
            Blocker::UserLock => format!("SELECT pg_advisory_lock({})", sql::user_lock_key(user)),
            Blocker::LedgerWrite => format!("BEGIN; COMMENT ON ROLE {} IS 'held by the test'", sql::quote_ident(user)),
        };
        holder.batch_execute(&statement).await.unwrap();
    }

    /// What the waiting call's current statement contains.
    fn waiting_statement(self) -> &'static str {
        match self {
            Blocker::UserLock => "advisory_xact_lock",
            Blocker::LedgerWrite => "COMMENT ON ROLE",
        }
    }
}

/// The statement of the first backend found waiting for a lock that `holder_pid` holds, within
/// 10 s. Only the holder's locks count: a backend may also wait a moment for another's, such as
/// autovacuum truncating `pg_authid`. `observer` must be outside a transaction: a transaction
/// sees one snapshot of `pg_stat_activity`.
async fn lock_waiter(
    observer: &AdminConnection,
    holder_pid: i32,
    call: &mut tokio::task::JoinHandle<Result<(), autouser_engine::Error>>,
) -> String {
    let query = "SELECT query FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid))";
    for _ in 0..2000 {
        if let Some(row) = observer.query(query, &[&holder_pid]).await.unwrap().first() {
            return row.get(0);
        }
        if call.is_finished() {
            panic!("the call finished without waiting for the test's lock: {:?}", call.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no call waited for the test's lock within 10 s");
}

/// Runs the start or end while `blocker` holds it, kills the server once it waits, and checks
/// that the kill undid the whole call (the user's state is what it was before) and that a
/// retry completes.
async fn kill_while_blocked(
    cluster: &mut Cluster,
    config: &std::sync::Arc<Config>,
    (user, session): (&str, &str),
    start: bool,
    blocker: Blocker,
) {
    let context =
        format!("{} of {session} killed while waiting behind {blocker:?}", if start { "start" } else { "end" });
    let before = assert_consistent(cluster, user, &context).await;
    // Another call of ours holds the user's lock (a lock held by anyone else is not waited
    // for); a superuser holds the user's comment.
    let holder = match blocker {
        Blocker::UserLock => support::connect_as(cluster, ADMIN).await,
        Blocker::LedgerWrite => support::connect_as(cluster, cluster.superuser()).await,
    };
    blocker.hold(&holder, user).await;
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let mut call = tokio::spawn({
        let (config, user, session) = (config.clone(), user.to_string(), session.to_string());
        async move { run(&config, &user, &session, start).await }
    });
    let observer = support::connect_as(cluster, cluster.superuser()).await;
    let waiting = lock_waiter(&observer, holder_pid, &mut call).await;
    assert!(waiting.contains(blocker.waiting_statement()), "{context}: the call waits in {waiting:?}");
    cluster.kill().unwrap();
    let result = call.await.unwrap();
    assert!(result.is_err(), "{context}: the call finished although the server was killed");
    drop((holder, observer));
    cluster.restart().unwrap();
    let after = assert_consistent(cluster, user, &context).await;
    assert_eq!(after, before, "{context}: the interrupted transaction left a change behind");
    run(config, user, session, start).await.unwrap_or_else(|e| panic!("{context}: the retry failed: {e}"));
    let state = assert_consistent(cluster, user, &context).await;
    assert_eq!(state, Some((start, usize::from(start))), "{context}: the retry completed the call");
}

/// Runs the start or end to completion, then kills the server, as if the answer was lost:
/// the change survives the crash and a retry answers the same.
async fn kill_after_commit(cluster: &mut Cluster, config: &Config, (user, session): (&str, &str), start: bool) {
    let context = format!("{} of {session} killed after its commit", if start { "start" } else { "end" });
    run(config, user, session, start).await.unwrap_or_else(|e| panic!("{context}: {e}"));
    cluster.kill().unwrap();
    cluster.restart().unwrap();
    let expected = Some((start, usize::from(start)));
    assert_eq!(assert_consistent(cluster, user, &context).await, expected, "{context}: the commit survived");
    run(config, user, session, start).await.unwrap_or_else(|e| panic!("{context}: the retry failed: {e}"));
    assert_eq!(assert_consistent(cluster, user, &context).await, expected, "{context}: the retry changed nothing");
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

    // Known points: before any write (a new user), after the login switch (an existing user,
    // both ways), and after the commit. An ended session cannot start again: one per pair.
    let user = "crash_user_blocked";
    kill_while_blocked(&mut cluster, &config, (user, "s1"), true, Blocker::UserLock).await;
    kill_while_blocked(&mut cluster, &config, (user, "s1"), false, Blocker::LedgerWrite).await;
    kill_while_blocked(&mut cluster, &config, (user, "s2"), true, Blocker::LedgerWrite).await;
    kill_while_blocked(&mut cluster, &config, (user, "s2"), false, Blocker::UserLock).await;
    kill_after_commit(&mut cluster, &config, (user, "s3"), true).await;
    kill_after_commit(&mut cluster, &config, (user, "s3"), false).await;

    // Delays from the call to the kill: before the connection, through the login, into the
    // transaction and past it, wherever this machine's speed puts them. Both outcomes must
    // happen: calls the kill interrupted, and calls that completed before it. A slow machine
    // gets longer delays until a call completes, within a bound.
    let (mut interrupted, mut completed) = (0, 0);
    let fixed = [0u64, 2, 4, 6, 8, 10, 13, 16, 20, 30];
    let longer = [50u64, 80, 130, 200, 320, 500, 800, 1300, 2000, 3000];
    for (n, delay_ms) in fixed.into_iter().chain(longer).enumerate() {
        if n >= fixed.len() && interrupted > 0 && completed > 0 {
            break;
        }
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
            } else {
                completed += 1;
            }
            cluster.restart().unwrap();
            assert_consistent(&cluster, &user, &context).await;
            run(&config, &user, "s1", start).await.unwrap_or_else(|e| panic!("{context}: the retry failed: {e}"));
            let state = assert_consistent(&cluster, &user, &context).await;
            assert_eq!(state, Some((start, usize::from(start))), "{context}: the retry completed the {step}");
        }
    }
    eprintln!("of the calls killed after a delay, {interrupted} were interrupted and {completed} completed first");
    assert!(interrupted > 0, "no kill interrupted a call: every delay was too long");
    assert!(completed > 0, "no call completed before its kill, even after {} ms", longer[longer.len() - 1]);
}
