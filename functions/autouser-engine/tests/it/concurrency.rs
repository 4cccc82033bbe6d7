//! Many calls at once: zero errors, and nobody left able to log in afterwards.

use std::sync::Arc;

use autouser_policy::ledger::Ledger;
use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::fixture::Fixture;

/// Each of `n` sessions of one user starts and then ends, all at once, half of them through a
/// second database of the same server (so the advisory lock alone cannot serialise them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_sessions_of_one_user_never_lock_each_other_out() {
    const SESSIONS: usize = 200;
    let fx = Arc::new(Fixture::new("cc_one").await);
    fx.sql("CREATE DATABASE cc_one_other").await;
    let alice = fx.user("alice");
    let calls = (0..SESSIONS).map(|i| {
        let fx = fx.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut event = fx.event(&format!("s{i}"), &alice, &["keep"]);
            if i % 2 == 1 {
                event["db_name"] = json!("cc_one_other");
            }
            let started = fx.start(event.clone()).await.map_err(|e| format!("start s{i}: {e}"))?;
            if !started.db_roles.contains(&fx.reader()) {
                return Err(format!("start s{i} lacks the reader role"));
            }
            // While this session is open, the user must be able to log in.
            let state = fx.state(&alice).await.expect("user exists during a session");
            if !state.login {
                return Err(format!("session s{i} is open but its user is locked"));
            }
            fx.end(event).await.map_err(|e| format!("end s{i}: {e}"))?;
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
               JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $1 AND u.rolname <> $2",
            &[&fx.group, &fx.admin],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, (USERS / 2) as i64, "keep users stay (locked), drop users are gone");
}
