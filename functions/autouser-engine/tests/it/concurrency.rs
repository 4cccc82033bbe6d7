//! Many calls at once: zero errors, and nobody left able to log in afterwards.

use std::sync::Arc;

use autouser_policy::ledger::Ledger;
use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::fixture::Fixture;

/// Each of `n` sessions of one user starts and then ends, all at once, half of them through a
/// second database of the same server (so the advisory lock alone cannot serialise them).
/// Each session has its own admin connection, opened first, as a burst of invocations finds
/// warm Lambda containers: the calls contend for the user's lock, not for the test machine's
/// CPU in 200 TLS handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_sessions_of_one_user_never_lock_each_other_out() {
    const SESSIONS: usize = 100;
    let fx = Arc::new(Fixture::new("cc_one").await);
    fx.sql("CREATE DATABASE cc_one_other").await;
    let alice = fx.user("alice");
    let db_name = |i: usize| if i % 2 == 1 { "cc_one_other".to_string() } else { fx.db.clone() };
    let config = fx.config();
    let connections = join_all((0..SESSIONS).map(|i| {
        let (fx, config, db_name) = (&fx, &config, db_name(i));
        async move { fx.admin_client(config, &db_name).await.expect("admin connects") }
    }))
    .await;
    let calls = connections.into_iter().enumerate().map(|(i, connection)| {
        let fx = fx.clone();
        let alice = alice.clone();
        let db_name = db_name(i);
        tokio::spawn(async move {
            let mut event = fx.event(&format!("s{i}"), &alice, &["keep"]);
            event["db_name"] = json!(db_name);
            let started = fx.start_on(&connection, event.clone()).await.map_err(|e| format!("start s{i}: {e}"))?;
            if !started.db_roles.contains(&fx.reader()) {
                return Err(format!("start s{i} lacks the reader role"));
            }
            // While this session is open, the user must be able to log in.
            let state = fx.state(&alice).await.expect("user exists during a session");
            if !state.login {
                return Err(format!("session s{i} is open but its user is locked"));
            }
            fx.end_on(&connection, event).await.map_err(|e| format!("end s{i}: {e}"))?;
            Ok::<(), String>(())
        })
    });
    let errors: Vec<String> = join_all(calls).await.into_iter().filter_map(|r| r.unwrap().err()).collect();
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login, "no session is open, so the user is locked");
    let ledger = Ledger::from_comment(&alice, state.comment.as_deref()).unwrap();
    assert!(ledger.sessions.is_empty(), "{ledger:?}");
    assert_eq!(ledger.revision, 2 * SESSIONS as u64, "every start and end wrote the ledger exactly once");
}

/// 1,000 distinct users, each started then ended, 32 at a time, half of them through a second
/// database of the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_users_at_concurrency_thirty_two_across_two_databases() {
    const USERS: usize = 1000;
    let fx = Arc::new(Fixture::new("cc_many").await);
    fx.sql("CREATE DATABASE cc_many_other").await;
    let limit = Arc::new(Semaphore::new(32));
    let calls = (0..USERS).map(|i| {
        let fx = fx.clone();
        let limit = limit.clone();
        tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let user = fx.user(&format!("u{i}"));
            let role = if i % 2 == 0 { "keep" } else { "drop" };
            let mut event = fx.event(&format!("s{i}"), &user, &[role]);
            if i % 4 >= 2 {
                event["db_name"] = json!("cc_many_other");
            }
            fx.start(event.clone()).await.map_err(|e| format!("start {user}: {e}"))?;
            fx.end(event).await.map_err(|e| format!("end {user}: {e}"))?;
            Ok::<(), String>(())
        })
    });
    let errors: Vec<String> = join_all(calls).await.into_iter().filter_map(|r| r.unwrap().err()).collect();
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    assert_eq!(fx.users_able_to_log_in().await, Vec::<String>::new());
    let kept: i64 = fx
        .superuser
        .query_one(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
               JOIN pg_roles u ON u.oid = m.member
              WHERE g.rolname = $1 AND u.rolname <> $2 AND NOT starts_with(u.rolname, $1 || '-creator-')",
            &[&fx.group, &fx.admin],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, (USERS / 2) as i64, "keep users stay (locked), drop users are gone");
}

/// A start of a user who exists, on a connection that has not seen her, first tries to create
/// her in one round trip. That attempt must fail before it queues for her lock: under
/// contention she waits in the queue once (in the read path), not twice.
#[tokio::test]
async fn a_returning_user_on_a_new_connection_queues_for_her_lock_once() {
    let fx = Fixture::new("cc_queue").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    // Another call of ours (the same admin) holds her lock.
    let holder = fx.admin_client(&fx.config(), &fx.db).await.unwrap();
    let key = autouser_engine::sql::user_lock_key(&alice);
    holder.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
    let start = fx.start(fx.event("s2", &alice, &["keep"]));
    let watch = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let waiting = loop {
            let rows = holder
                .query(
                    "SELECT query FROM pg_stat_activity
                      WHERE datname = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[&fx.db],
                )
                .await
                .unwrap();
            if let Some(row) = rows.first() {
                break row.get::<_, String>(0);
            }
            assert!(std::time::Instant::now() < deadline, "the start never waited for her lock");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        waiting
    };
    let (started, waiting) = tokio::join!(start, watch);
    let started = started.unwrap();
    assert!(!started.created_user && started.open_sessions == 1, "{started:?}");
    assert_eq!(waiting, autouser_engine::sql::LOCK_USER, "the statement that waited for her lock");
    assert!(fx.state(&alice).await.unwrap().login);
}
