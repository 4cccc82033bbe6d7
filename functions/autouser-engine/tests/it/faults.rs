//! Faults: the admin connection cut at every point of a session-start and a session-end,
//! events out of order, a server that hangs or holds the user's lock.
//!
//! The invariants, checked after every fault: a managed user can log in exactly when its
//! ledger has an open session, and retrying the same event completes it.

use std::time::{Duration, Instant};

use autouser_engine::Error;
use autouser_policy::ledger::Ledger;
use autouser_policy::outcome::EndStatus;
use scratch_postgres::{Cut, RoundTripCounter};

use crate::fixture::{cluster, Fixture};

/// Connection setup and the longest operation take fewer client bursts than this.
const BURSTS: u64 = 14;

/// Whether `user` can log in exactly when its ledger has an open session.
async fn assert_consistent(fx: &Fixture, user: &str, context: &str) -> Option<(bool, usize)> {
    let state = fx.state(user).await?;
    let ledger = Ledger::from_comment(user, state.comment.as_deref()).expect("a readable ledger");
    assert_eq!(
        state.login,
        !ledger.sessions.is_empty(),
        "{context}: login {} with {} open sessions",
        state.login,
        ledger.sessions.len()
    );
    Some((state.login, ledger.sessions.len()))
}

#[tokio::test]
async fn a_connection_cut_anywhere_leaves_a_consistent_user_and_the_retry_completes() {
    let fx = Fixture::new("ft_cut").await;
    let upstream = ([127, 0, 0, 1], cluster().port()).into();
    let mut cuts_that_failed = 0;
    for after_forwarding in [false, true] {
        for at_burst in 1..=BURSTS {
            let cut = Cut { at_burst, after_forwarding };
            let proxy = RoundTripCounter::start_cutting(upstream, cut).unwrap();
            let through_proxy = fx.config_on_port(proxy.port());
            let user = fx.user(&format!("u{at_burst}_{}", u8::from(after_forwarding)));
            // A new user (one round trip), then a second session of it (the read path).
            for session in ["s1", "s2"] {
                let event = fx.event(session, &user, &["keep"]);
                let context = format!("{cut:?}, start {session}");
                if fx.start_with(&through_proxy, event.clone()).await.is_err() {
                    cuts_that_failed += 1;
                }
                assert_consistent(&fx, &user, &context).await;
                let retried = fx.start(event).await.unwrap_or_else(|e| panic!("{context}: retry failed: {e}"));
                assert_eq!(retried.status, "active");
                let consistent = assert_consistent(&fx, &user, &context).await;
                assert_eq!(consistent.map(|(login, _)| login), Some(true), "{context}");
            }
            for session in ["s1", "s2"] {
                let event = fx.event(session, &user, &["keep"]);
                let context = format!("{cut:?}, end {session}");
                if fx.end_with(&through_proxy, event.clone()).await.is_err() {
                    cuts_that_failed += 1;
                }
                assert_consistent(&fx, &user, &context).await;
                let retried = fx.end(event).await.unwrap_or_else(|e| panic!("{context}: retry failed: {e}"));
                assert!(
                    [EndStatus::InUse, EndStatus::Deactivated, EndStatus::Noop].contains(&retried.status),
                    "{context}: {retried:?}"
                );
                assert_consistent(&fx, &user, &context).await;
            }
            let (login, open) = assert_consistent(&fx, &user, "after both ends").await.unwrap();
            assert!(!login && open == 0, "{cut:?}: every session ended");
        }
    }
    // The cuts did hit the operations (and not only connection setup): most of them failed.
    assert!(cuts_that_failed > 2 * BURSTS as usize, "only {cuts_that_failed} operations failed");
}

/// An end that arrives before its start is recorded, and the start is then refused: no
/// session is left open for an end that already came. A start retried after its end is
/// refused too.
#[tokio::test]
async fn events_out_of_order() {
    let fx = Fixture::new("ft_order").await;
    let alice = fx.user("alice");
    let event = fx.event("s1", &alice, &["keep"]);
    let early_end = fx.end(event.clone()).await.unwrap();
    assert_eq!(early_end.status, EndStatus::Noop);
    let err = fx.start(event.clone()).await.unwrap_err();
    assert!(matches!(err, Error::SessionAlreadyEnded { .. }), "{err}");
    assert_eq!(assert_consistent(&fx, &alice, "late start").await, None);

    let bob = fx.user("bob");
    let event = fx.event("s1", &bob, &["keep"]);
    fx.start(event.clone()).await.unwrap();
    fx.end(event.clone()).await.unwrap();
    let err = fx.start(event).await.unwrap_err();
    assert!(matches!(err, Error::SessionAlreadyEnded { .. }), "{err}");
    assert_eq!(assert_consistent(&fx, &bob, "start after end").await, Some((false, 0)));
}

/// Another call of ours holds the user's lock (a stuck transaction of the same admin): the
/// start waits at most the lock timeout per attempt and fails with a transient error instead
/// of hanging. (A lock held by anyone else is not waited for: `hostile`.)
#[tokio::test]
async fn a_held_lock_times_out_as_a_transient_error() {
    let fx = Fixture::new("ft_lock").await;
    let alice = fx.user("alice");
    let holder = fx.admin_client(&fx.config(), &fx.db).await.unwrap();
    holder.execute("SELECT pg_advisory_lock($1)", &[&autouser_engine::sql::user_lock_key(&alice)]).await.unwrap();
    let began = Instant::now();
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    let waited = began.elapsed();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("lock"), "{err}");
    // One lock timeout, not one per attempt: the deployment's timeouts are sized for one.
    assert!(waited < autouser_engine::pg::LOCK_TIMEOUT + Duration::from_secs(5), "{waited:?}");
    assert!(fx.state(&alice).await.is_none());
}

/// A server that accepts the connection and never answers: connecting gives up after the
/// connect timeout with a transient error.
#[tokio::test]
async fn a_hung_server_does_not_hang_the_call() {
    let fx = Fixture::new("ft_hung").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = std::thread::spawn(move || {
        let connections: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(connections);
    });
    let began = Instant::now();
    let err = fx.start_with(&fx.config_on_port(port), fx.event("s1", &fx.user("alice"), &["keep"])).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(began.elapsed() < autouser_engine::pg::CONNECT_TIMEOUT + Duration::from_secs(5), "{:?}", began.elapsed());
}

/// An end whose COMMIT is applied but whose reply is lost: the engine cannot tell, so it
/// answers `EndUnconfirmed` with the outcome the end had if applied, and `confirm_end` on a
/// new connection finds the session ended and answers that outcome, not a `noop`. Without the
/// loss, `confirm_end` is the end itself.
#[tokio::test]
async fn an_end_whose_commit_reply_is_lost_is_confirmed_by_a_rerun() {
    let fx = Fixture::new("ft_lost").await;
    let proxy = RoundTripCounter::start(([127, 0, 0, 1], cluster().port()).into()).unwrap();
    let through_proxy = fx.config_on_port(proxy.port());
    let alice = fx.user("alice");
    let event = fx.event("s1", &alice, &["keep"]);
    fx.start(event.clone()).await.unwrap();

    let parsed = autouser_policy::event::SessionEvent::from_value(event.clone()).unwrap();
    let db = through_proxy.databases[0].resolve_static().unwrap();
    let req = autouser_policy::request::prepare_end(&through_proxy, &db, &parsed).unwrap();
    let connection = fx.admin_client(&through_proxy, &req.target.admin_db_name).await.unwrap();
    // A warm connection (its statements prepared by an end of another user) ends a session in
    // two round trips: the read, then the changes and COMMIT.
    let warm = fx.user("warm");
    fx.start(fx.event("s1", &warm, &["keep"])).await.unwrap();
    let warm_event = autouser_policy::event::SessionEvent::from_value(fx.event("s1", &warm, &["keep"])).unwrap();
    let warm_req = autouser_policy::request::prepare_end(&through_proxy, &db, &warm_event).unwrap();
    autouser_engine::engine::session_end(&connection, &warm_req, &autouser_engine::engine::NoOtherDatabases)
        .await
        .unwrap();
    proxy.lose_the_reply_to_burst(2);
    let err = autouser_engine::engine::session_end(&connection, &req, &autouser_engine::engine::NoOtherDatabases)
        .await
        .unwrap_err();
    assert_eq!(proxy.replies_lost(), 1);
    assert!(err.is_transient() && err.kind() == "DatabaseUnreachable", "{err}");
    let Error::EndUnconfirmed { planned, .. } = err else { panic!("{err:?}") };
    assert_eq!(planned.status, EndStatus::Deactivated);
    assert_eq!(assert_consistent(&fx, &alice, "after the lost reply").await, Some((false, 0)), "it was applied");

    let fresh = fx.admin_client(&fx.config(), &req.target.admin_db_name).await.unwrap();
    let confirmed = autouser_engine::engine::confirm_end(
        &fresh,
        &req,
        &autouser_engine::engine::NoOtherDatabases,
        *planned.clone(),
    )
    .await
    .unwrap();
    assert_eq!(confirmed.status, EndStatus::Deactivated, "{confirmed:?}");
    assert!(confirmed.reason.as_deref().unwrap_or_default().contains("COMMIT reply was lost"), "{confirmed:?}");

    // Had the first run not been applied, the rerun does the end itself.
    let bob = fx.user("bob");
    let bob_event = fx.event("s1", &bob, &["keep"]);
    fx.start(bob_event.clone()).await.unwrap();
    let parsed = autouser_policy::event::SessionEvent::from_value(bob_event).unwrap();
    let bob_req = autouser_policy::request::prepare_end(&fx.config(), &db, &parsed).unwrap();
    let rerun =
        autouser_engine::engine::confirm_end(&fresh, &bob_req, &autouser_engine::engine::NoOtherDatabases, *planned)
            .await
            .unwrap();
    assert_eq!((rerun.status, rerun.db_user.as_str(), rerun.reason), (EndStatus::Deactivated, bob.as_str(), None));
}
