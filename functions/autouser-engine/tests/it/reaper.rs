//! The reaper against a real server: expired sessions closed, idle users locked, live
//! connections respected, unmanaged roles untouched, and no race with session-start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use autouser_policy::outcome::EndStatus;

use crate::fixture::{connect, q, set, Fixture};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const THIRTEEN_HOURS: u64 = 13 * 3600;

/// A closed client's backend leaves `pg_stat_activity` a moment after the socket closes.
async fn wait_until_disconnected(fx: &Fixture, user: &str) {
    for _ in 0..100 {
        let row =
            fx.superuser.query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&user]).await.unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} is still connected 5 s after closing its connection");
}

/// A user of ours with no open session that can log in all the same: one session started and
/// ended (`keep`), then `ALTER ROLE … LOGIN`, as an operator (or a lost write) leaves it.
async fn idle_user_of_ours(fx: &Fixture, user: &str) {
    fx.start(fx.event("s0", user, &["keep"])).await.unwrap();
    fx.end(fx.event("s0", user, &["keep"])).await.unwrap();
    fx.sql(&format!("ALTER ROLE {} LOGIN", q(user))).await;
}

#[tokio::test]
async fn expired_sessions_close_idle_users_lock_and_live_ones_stay() {
    let fx = Fixture::new("rp_main").await;
    let (alice, bob, carol, dave, frank) =
        (fx.user("alice"), fx.user("bob"), fx.user("carol"), fx.user("dave"), fx.user("frank"));
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.start(fx.event("s1", &bob, &["keep"])).await.unwrap();
    fx.start(fx.event("s1", &frank, &["drop"])).await.unwrap();
    // carol: ours, with no open session in its ledger, yet able to log in with a role (an
    // operator's ALTER ROLE and GRANT after its end); dave: not managed at all; erin: a member
    // of the managed group able to log in whose comment holds no ledger of ours (provisioned
    // by Teleport itself during a migration, or by a second admin).
    let erin = fx.user("erin");
    idle_user_of_ours(&fx, &carol).await;
    fx.sql(&format!(
        "SET ROLE {admin}; GRANT {reader} TO {carol}; RESET ROLE",
        admin = q(&fx.admin),
        reader = q(&fx.reader()),
        carol = q(&carol)
    ))
    .await;
    fx.sql(&format!(
        "CREATE ROLE {dave} LOGIN IN ROLE {reader};
         SET ROLE {admin}; CREATE ROLE {erin} LOGIN IN ROLE {group}, {reader}; RESET ROLE;
         COMMENT ON ROLE {erin} IS 'provisioned by Teleport'",
        admin = q(&fx.admin),
        dave = q(&dave),
        erin = q(&erin),
        group = q(&fx.group),
        reader = q(&fx.reader())
    ))
    .await;
    let bob_session = connect(&bob, &fx.db).await.expect("bob is connected");

    // Now: no session is old enough; carol is locked.
    let report = fx.reap(now()).await;
    assert_eq!(report.closed, vec![]);
    assert_eq!(report.locked, vec![carol.clone()]);
    assert_eq!(report.failed, vec![]);
    assert_eq!(report.managed_users, 5, "alice, bob, carol, erin, frank: {report:?}");
    let carol_state = fx.state(&carol).await.unwrap();
    assert!(!carol_state.login);
    assert_eq!(carol_state.member_of, set(&[&fx.group]));
    assert!(fx.state(&alice).await.unwrap().login);
    // erin is reported, never touched.
    assert_eq!(report.unowned_logins, vec![erin.clone()]);
    let erin_state = fx.state(&erin).await.unwrap();
    assert!(erin_state.login, "the reaper locked a user whose ledger it did not write");
    assert_eq!(erin_state.member_of, set(&[&fx.group, &fx.reader()]));

    // Thirteen hours later: alice's and frank's sessions close as their ends would have;
    // bob's stays, because bob is connected.
    let report = fx.reap(now() + THIRTEEN_HOURS).await;
    let closed: Vec<(&str, EndStatus)> = report.closed.iter().map(|c| (c.db_user.as_str(), c.status)).collect();
    assert_eq!(closed, vec![(alice.as_str(), EndStatus::Deactivated), (frank.as_str(), EndStatus::Dropped)]);
    assert_eq!(report.left_open.len(), 1);
    assert_eq!(report.left_open[0].db_user, bob);
    assert!(report.locked.is_empty(), "{report:?}");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert!(fx.state(&frank).await.is_none());
    assert!(fx.state(&bob).await.unwrap().login);
    // The unmanaged role is untouched.
    let dave_state = fx.state(&dave).await.unwrap();
    assert!(dave_state.login);
    assert_eq!(dave_state.member_of, set(&[&fx.reader()]));

    // Once bob disconnects, his session closes too, and everyone managed is locked.
    drop(bob_session);
    wait_until_disconnected(&fx, &bob).await;
    let report = fx.reap(now() + THIRTEEN_HOURS).await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].db_user, bob);
    assert_eq!(fx.users_able_to_log_in().await, vec![erin.clone()], "only the user that is not ours");
    // A second run finds nothing to do, and reports erin again.
    let again = fx.reap(now() + THIRTEEN_HOURS).await;
    assert!(again.closed.is_empty() && again.locked.is_empty() && again.failed.is_empty(), "{again:?}");
    assert_eq!(again.unowned_logins, vec![erin.clone()]);
}

/// A user that the reaper sees able to log in with no session, while a session-start for it
/// runs: whatever the order, the started session ends up with a user that can log in.
#[tokio::test]
async fn the_reaper_never_locks_out_a_session_starting_beside_it() {
    let fx = Fixture::new("rp_race").await;
    let racer = fx.user("racer");
    fx.start(fx.event("s0", &racer, &["keep"])).await.unwrap();
    fx.end(fx.event("s0", &racer, &["keep"])).await.unwrap();
    for i in 1..=15 {
        // As if a lost end had left the user able to log in.
        fx.sql(&format!("ALTER ROLE {} LOGIN", q(&racer))).await;
        let session = format!("s{i}");
        let (started, report) = tokio::join!(fx.start(fx.event(&session, &racer, &["keep"])), fx.reap(now()));
        started.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        let state = fx.state(&racer).await.unwrap();
        assert!(state.login, "iteration {i}: the open session's user was locked ({report:?})");
        assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
        fx.end(fx.event(&session, &racer, &["keep"])).await.unwrap();
    }
}

/// Two reapers at once (overlapping schedules, a retried invocation): each expired session is
/// closed by one of them, each idle user locked by one, and neither fails.
#[tokio::test]
async fn two_reapers_at_once_do_each_thing_once() {
    let fx = Fixture::new("rp_twice").await;
    let mut expired: Vec<String> = (0..6).map(|i| fx.user(&format!("u{i}"))).collect();
    for user in &expired {
        fx.start(fx.event("s1", user, &["keep"])).await.unwrap();
    }
    let mut idle: Vec<String> = (0..4).map(|i| fx.user(&format!("idle{i}"))).collect();
    for user in &idle {
        idle_user_of_ours(&fx, user).await;
    }
    let later = now() + THIRTEEN_HOURS;
    let (first, second) = tokio::join!(fx.reap(later), fx.reap(later));
    assert!(first.failed.is_empty() && second.failed.is_empty(), "{first:?}\n{second:?}");
    let mut closed: Vec<String> = first.closed.iter().chain(&second.closed).map(|c| c.db_user.clone()).collect();
    closed.sort();
    expired.sort();
    assert_eq!(closed, expired, "each session closed once:\n{first:?}\n{second:?}");
    let mut locked: Vec<String> = first.locked.iter().chain(&second.locked).cloned().collect();
    locked.sort();
    idle.sort();
    assert_eq!(locked, idle, "each idle user locked once:\n{first:?}\n{second:?}");
    assert!(fx.users_able_to_log_in().await.is_empty());
}

/// A run whose stop time has come starts nothing: its closes and locks are counted as
/// deferred and the users are as they were; the next run does them.
#[tokio::test]
async fn a_run_past_its_stop_time_defers_its_actions_to_the_next() {
    let fx = Fixture::new("rp_stop").await;
    let (alice, carol) = (fx.user("alice"), fx.user("carol"));
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    idle_user_of_ours(&fx, &carol).await;

    let later = now() + THIRTEEN_HOURS;
    let report = fx.reap_until(later, Some(std::time::Instant::now())).await;
    assert_eq!((report.closed.len(), report.locked.len(), report.deferred), (0, 0, 2), "{report:?}");
    assert_eq!(report.managed_users, 2);
    assert!(fx.state(&alice).await.unwrap().login, "alice's session is still open");
    assert!(fx.state(&carol).await.unwrap().login, "carol is not locked yet");

    let in_an_hour = std::time::Instant::now() + Duration::from_secs(3600);
    let report = fx.reap_until(later, Some(in_an_hour)).await;
    assert_eq!((report.closed.len(), report.locked.len(), report.deferred), (1, 1, 0), "{report:?}");
    assert!(fx.users_able_to_log_in().await.is_empty());
}
