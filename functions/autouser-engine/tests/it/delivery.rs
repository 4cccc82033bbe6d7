//! Delivery without order or uniqueness (EventBridge and Lambda's asynchronous retries, SQS):
//! a start after its own end, an end before its start, two people whose names map to one role,
//! and the clock that dates a session. None of them may leave a user able to log in.

use std::sync::Arc;
use std::time::Duration;

use autouser_engine::{engine, sql};
use autouser_policy::event::SessionEvent;
use autouser_policy::outcome::EndStatus;
use autouser_policy::request;
use futures_util::future::join_all;
use serde_json::json;

use crate::fixture::{set, Fixture};

/// The ledger of `user`, as JSON.
async fn ledger(fx: &Fixture, user: &str) -> serde_json::Value {
    let comment = fx.state(user).await.expect("the user exists").comment.expect("a ledger");
    serde_json::from_str(&comment).unwrap()
}

fn remote(fx: &Fixture, session: &str, user: &str, origin: &str) -> serde_json::Value {
    let mut event = fx.event(session, user, &["keep"]);
    event["origin_cluster"] = json!(origin);
    event
}

/// The server's clock, Unix seconds.
async fn server_now(fx: &Fixture) -> u64 {
    let row = fx.superuser.query_one("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint", &[]).await.unwrap();
    row.get::<_, i64>(0) as u64
}

#[tokio::test]
async fn a_start_redelivered_after_its_drop_is_refused() {
    let fx = Fixture::new("dl_drop").await;
    let alice = fx.user("alice");
    let s1 = fx.event("s1", &alice, &["drop"]);
    fx.start(s1.clone()).await.unwrap();
    assert_eq!(fx.end(s1.clone()).await.unwrap().status, EndStatus::Dropped);
    let err = fx.start(s1.clone()).await.unwrap_err();
    assert_eq!(err.kind(), "SessionAlreadyEnded", "{err}");
    assert!(fx.state(&alice).await.is_none(), "the dropped user is not re-created");

    // A new session of the same person is not affected, and the old one stays refused while
    // the new one runs and after it too ends.
    let s2 = fx.event("s2", &alice, &["drop"]);
    fx.start(s2.clone()).await.unwrap();
    assert_eq!(fx.start(s1.clone()).await.unwrap_err().kind(), "SessionAlreadyEnded");
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader()]));
    assert_eq!(fx.end(s2.clone()).await.unwrap().status, EndStatus::Dropped);
    assert_eq!(fx.start(s2).await.unwrap_err().kind(), "SessionAlreadyEnded");
    assert_eq!(fx.start(s1).await.unwrap_err().kind(), "SessionAlreadyEnded");
    assert!(fx.state(&alice).await.is_none());
    assert_eq!(fx.users_able_to_log_in().await, Vec::<String>::new());
}

#[tokio::test]
async fn an_end_before_its_users_first_start_makes_the_start_refused() {
    let fx = Fixture::new("dl_early").await;
    let alice = fx.user("alice");
    let s1 = fx.event("s1", &alice, &["keep"]);
    let early = fx.end(s1.clone()).await.unwrap();
    assert_eq!(early.status, EndStatus::Noop);
    assert!(early.reason.unwrap().contains("recorded"));
    assert!(fx.state(&alice).await.is_none(), "the end creates no user");
    assert_eq!(fx.end(s1.clone()).await.unwrap().status, EndStatus::Noop, "a duplicate end");
    let err = fx.start(s1).await.unwrap_err();
    assert_eq!(err.kind(), "SessionAlreadyEnded", "{err}");
    assert!(fx.state(&alice).await.is_none(), "no user, so no orphan session");
    // The person's next session starts as usual.
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert!(fx.state(&alice).await.unwrap().login);
}

#[tokio::test]
async fn an_end_before_its_start_on_an_existing_user_makes_the_start_refused() {
    let fx = Fixture::new("dl_early_known").await;
    let alice = fx.user("alice");
    let s1 = fx.event("s1", &alice, &["keep"]);
    let s2 = fx.event("s2", &alice, &["keep"]);
    fx.start(s1.clone()).await.unwrap();
    let early = fx.end(s2.clone()).await.unwrap();
    assert_eq!(early.status, EndStatus::Noop);
    assert_eq!(early.open_sessions, 1);
    assert!(fx.state(&alice).await.unwrap().login, "s1 is still open");
    assert_eq!(fx.start(s2).await.unwrap_err().kind(), "SessionAlreadyEnded");
    assert_eq!(ledger(&fx, &alice).await["sessions"].as_object().unwrap().len(), 1);
    assert_eq!(fx.end(s1).await.unwrap().status, EndStatus::Deactivated);
    assert_eq!(fx.users_able_to_log_in().await, Vec::<String>::new());
}

/// The group's comment is written by ends of many users at once, through two databases (so
/// the per-database advisory lock does not serialise them): every end's record survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_drops_and_early_ends_of_many_users_are_all_remembered() {
    const USERS: usize = 24;
    let fx = Arc::new(Fixture::new("dl_many").await);
    fx.sql("CREATE DATABASE dl_many_other").await;
    let event = |fx: &Fixture, i: usize| {
        let mut event = fx.event(&format!("s{i}"), &fx.user(&format!("u{i}")), &["drop"]);
        if i % 2 == 1 {
            event["db_name"] = json!("dl_many_other");
        }
        event
    };
    // Even users are started first (and dropped by their end); odd users' ends come first.
    for i in (0..USERS).step_by(2) {
        fx.start(event(&fx, i)).await.unwrap();
    }
    let ends = (0..USERS).map(|i| {
        let fx = fx.clone();
        let event = event(&fx, i);
        tokio::spawn(async move { fx.end(event).await.map(|outcome| outcome.status) })
    });
    for (i, status) in join_all(ends).await.into_iter().enumerate() {
        let expected = if i % 2 == 0 { EndStatus::Dropped } else { EndStatus::Noop };
        assert_eq!(status.unwrap().unwrap(), expected, "end of u{i}");
    }
    let starts = (0..USERS).map(|i| {
        let fx = fx.clone();
        let event = event(&fx, i);
        tokio::spawn(async move { fx.start(event).await })
    });
    for (i, result) in join_all(starts).await.into_iter().enumerate() {
        let err = result.unwrap().expect_err("a start after its end");
        assert_eq!(err.kind(), "SessionAlreadyEnded", "u{i}: {err}");
    }
    assert_eq!(fx.users_able_to_log_in().await, Vec::<String>::new());
}

/// A start racing an end of the same session delivered first: whichever commits first, the
/// user is never left able to log in with that session open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_racing_its_own_early_end_never_leaves_the_session_open() {
    let fx = Arc::new(Fixture::new("dl_race").await);
    for round in 0..12 {
        let alice = fx.user(&format!("u{round}"));
        let event = fx.event("s1", &alice, &["drop"]);
        let (start, end) = tokio::join!(fx.start(event.clone()), fx.end(event.clone()));
        let end = end.unwrap();
        match start {
            // The start won: the end then closed (dropped) it.
            Ok(_) => assert_eq!(end.status, EndStatus::Dropped, "round {round}"),
            Err(err) => {
                assert_eq!(err.kind(), "SessionAlreadyEnded", "round {round}: {err}");
                assert_eq!(end.status, EndStatus::Noop, "round {round}");
            }
        }
        assert!(fx.state(&alice).await.is_none(), "round {round}");
    }
}

#[tokio::test]
async fn a_local_person_named_like_a_remote_users_role_does_not_get_it() {
    let fx = Fixture::new("dl_ident").await;
    let alice = fx.user("alice");
    let role = format!("remote-{alice}-root");
    assert_eq!(fx.start(remote(&fx, "s1", &alice, "root")).await.unwrap().db_user, role);
    let err = fx.start(fx.event("s2", &role, &["keep"])).await.unwrap_err();
    assert_eq!(err.kind(), "IdentityConflict", "{err}");
    let message = err.to_string();
    assert!(message.contains(&format!("user {alice:?} of cluster \"root\"")), "{message}");
    assert!(message.contains(&format!("local user {role:?}")), "{message}");
    assert_eq!(ledger(&fx, &role).await["sessions"].as_object().unwrap().len(), 1);
    // Once locked, the role still belongs to alice of root, and to her only.
    fx.end(remote(&fx, "s1", &alice, "root")).await.unwrap();
    assert_eq!(fx.start(fx.event("s3", &role, &["keep"])).await.unwrap_err().kind(), "IdentityConflict");
    assert!(!fx.state(&role).await.unwrap().login);
    fx.start(remote(&fx, "s4", &alice, "root")).await.unwrap();
    assert!(fx.state(&role).await.unwrap().login);
}

#[tokio::test]
async fn two_remote_identities_whose_names_collide_never_share_a_role() {
    let fx = Fixture::new("dl_collide").await;
    // `<ns>_a-b` of cluster `c` and `<ns>_a` of cluster `b-c` are both `remote-<ns>_a-b-c`.
    let first = fx.user("a-b");
    let second = fx.user("a");
    let role = fx.start(remote(&fx, "s1", &first, "c")).await.unwrap().db_user;
    assert_eq!(role, format!("remote-{}-b-c", fx.user("a")));
    let err = fx.start(remote(&fx, "s2", &second, "b-c")).await.unwrap_err();
    assert_eq!(err.kind(), "IdentityConflict", "{err}");
    let identity = &ledger(&fx, &role).await["identity"];
    assert_eq!(identity, &json!({"user": first, "origin_cluster": "c"}));
}

#[tokio::test]
async fn a_ledger_written_by_the_previous_release_is_adopted_by_the_next_start() {
    let fx = Fixture::new("dl_adopt").await;
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap(); // creates the group
    let (first, second) = (fx.user("a-b"), fx.user("a"));
    let role = format!("remote-{first}-c");
    // What the previous release wrote for an open session: no identity.
    let previous = format!(
        r#"{{"managed_by":"pg-autouser","format":1,"revision":1,"sessions":{{"s1":{{"mode":"keep","database":"main","db_name":"{db}","db_roles":["{reader}"],"started_at":{now}}}}},"ended":[]}}"#,
        db = fx.db,
        reader = fx.reader(),
        now = server_now(&fx).await,
    );
    // Written by the admin, as the previous release did (on PostgreSQL 16+ the admin manages
    // only roles it created).
    let admin = crate::fixture::connect(&fx.admin, &fx.db).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {user} LOGIN; GRANT {group}, {reader} TO {user}; COMMENT ON ROLE {user} IS {ledger}",
            user = crate::fixture::q(&role),
            group = crate::fixture::q(&fx.group),
            reader = crate::fixture::q(&fx.reader()),
            ledger = sql::quote_literal(&previous),
        ))
        .await
        .unwrap();
    let out = fx.start(remote(&fx, "s2", &first, "c")).await.unwrap();
    assert_eq!(out.db_user, role);
    assert_eq!(out.open_sessions, 2);
    let written = ledger(&fx, &role).await;
    assert_eq!(written["identity"], json!({"user": first, "origin_cluster": "c"}));
    assert!(written["sessions"]["s1"].is_object(), "the old session is kept: {written}");
    // From then on, the role is the adopter's only.
    let err = fx.start(remote(&fx, "s3", &second, "b-c")).await.unwrap_err();
    assert_eq!(err.kind(), "IdentityConflict", "{err}");
    // The previous release's session ends as before.
    assert_eq!(fx.end(remote(&fx, "s1", &first, "c")).await.unwrap().status, EndStatus::InUse);
}

/// The caller's clock never dates a session: a start that waited 3 s for the user's lock
/// records the moment its transaction began on the server, not the caller's time after it;
/// a start in one round trip (which reads nothing) gets the server's time too.
#[tokio::test]
async fn a_session_is_dated_by_the_servers_clock() {
    let fx = Fixture::new("dl_clock").await;
    let alice = fx.user("alice");
    let config = fx.config();
    let prepare = |session: &str| {
        let event = SessionEvent::from_value(fx.event(session, &alice, &["keep"])).unwrap();
        let db = request::database(&config, &event).unwrap().resolve_static().unwrap();
        request::prepare_start(&config, &db, &event).unwrap()
    };
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap(); // creates the group
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    // A new user starts in one round trip, planned without reading the server's clock.
    let before = server_now(&fx).await;
    engine::session_start(&connection, &prepare("s1")).await.unwrap();
    let after = server_now(&fx).await;
    let started_at = ledger(&fx, &alice).await["sessions"]["s1"]["started_at"].as_u64().unwrap();
    assert!((before..=after).contains(&started_at), "{before} <= {started_at} <= {after}");

    // This connection has seen alice: the start reads under her lock, which another holds.
    let key = sql::user_lock_key(&alice);
    let holder = fx.admin_client(&config, &fx.db).await.unwrap();
    holder.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
    let s2 = prepare("s2");
    let start = engine::session_start(&connection, &s2);
    // Both times are read on the server while the start waits: its transaction's start, and
    // the moment the lock is released, at least 3 s later. No caller's clock, no tolerance.
    let release = async {
        let began = transaction_waiting_for(&fx, key).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let released = server_now(&fx).await;
        holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        (began, released)
    };
    let (started, (began, released)) = tokio::join!(start, release);
    started.unwrap();
    assert!(began + 3 <= released, "the start waited from {began} to {released}");
    let started_at = ledger(&fx, &alice).await["sessions"]["s2"]["started_at"].as_u64().unwrap();
    assert_eq!(started_at, began, "started_at is not the start of the transaction that waited until {released}");
}

/// When the transaction waiting for the advisory lock `key` began (`xact_start`, Unix seconds
/// of the server's clock, as `now()` in it reads): polled until one waits, within 10 s.
async fn transaction_waiting_for(fx: &Fixture, key: i64) -> u64 {
    let query = "SELECT floor(extract(epoch FROM a.xact_start))::bigint
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 1
                    AND l.classid = $1 AND l.objid = $2";
    let (classid, objid) = ((key >> 32) as u32, key as u32);
    for _ in 0..1000 {
        if let Some(row) = fx.superuser.query(query, &[&classid, &objid]).await.unwrap().first() {
            return row.get::<_, i64>(0) as u64;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no transaction waited for the user's lock within 10 s");
}

/// The lines of the managed group's comment after its header.
async fn ended_in_group(fx: &Fixture) -> Vec<String> {
    let row = fx
        .superuser
        .query_one("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", &[&fx.group])
        .await
        .unwrap();
    let comment: String = row.get(0);
    let mut lines = comment.lines().map(str::to_string);
    assert_eq!(lines.next().as_deref(), Some(autouser_policy::ledger::ENDED_SESSIONS_HEADER));
    lines.collect()
}

/// What the group remembers is bounded: entries older than `redelivery_window` go at the
/// next write (and a start that late is a new session), and at most the newest 2,000 stay.
#[tokio::test]
async fn the_groups_record_forgets_by_age_and_by_count() {
    let mut fx = Fixture::new("dl_prune").await;
    fx.extra_yaml = "redelivery_window: 2s\n".into();
    let (alice, bob) = (fx.user("alice"), fx.user("bob"));
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(ended_in_group(&fx).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    fx.end(fx.event("s2", &bob, &["keep"])).await.unwrap();
    let lines = ended_in_group(&fx).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{}\t\"s2\"\t", serde_json::to_string(&bob).unwrap())), "{lines:?}");
    fx.start(fx.event("s1", &alice, &["keep"])).await.expect("beyond the window, s1 is new to pg-autouser");

    // One write of more than the bound keeps the bound, the newest (then by line) first.
    let kept = autouser_policy::ledger::GROUP_ENDED_SESSIONS_KEPT as usize;
    let sessions: Vec<String> = (0..kept + 50).map(|i| format!("bulk{i:05}")).collect();
    let step = autouser_policy::plan::Step::RecordEnded {
        group: fx.group.clone(),
        user: bob.clone(),
        sessions,
        window_secs: 3600,
    };
    fx.sql(&format!("BEGIN; {}; COMMIT", sql::render(&step))).await;
    let lines = ended_in_group(&fx).await;
    assert_eq!(lines.len(), kept);
    assert!(lines.iter().all(|line| line.contains("bulk")), "the older entries went first");
    assert!(lines.len() * 64 < 200_000, "the comment stays small");
}
