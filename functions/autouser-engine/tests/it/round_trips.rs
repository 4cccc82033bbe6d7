//! Round trips per call, counted by a proxy between the admin connection and the server
//! (`scratch_postgres::RoundTripCounter`). The proxy sees only TCP, so these tests pin what
//! the network sees: a warm start of a new user costs one round trip.

use autouser_engine::engine;
use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_policy::event::SessionEvent;
use autouser_policy::request;
use scratch_postgres::RoundTripCounter;

use crate::fixture::{cluster, set, Fixture};

struct Counted {
    fx: Fixture,
    counter: RoundTripCounter,
    config: autouser_policy::config::Config,
}

impl Counted {
    async fn new(ns: &str) -> Counted {
        Counted::with(Fixture::new(ns).await)
    }

    fn with(fx: Fixture) -> Counted {
        let counter = RoundTripCounter::start(([127, 0, 0, 1], cluster().port()).into()).unwrap();
        let config = fx.config_on_port(counter.port());
        Counted { fx, counter, config }
    }

    async fn connect(&self) -> AdminConnection {
        let db = self.config.databases[0].resolve_static().unwrap();
        let credentials = AdminCredentials::from_local_config(&db.auth).unwrap();
        let tls = TlsSettings::from_config(&db.tls).unwrap();
        pg::connect_admin(&ConnectParams::admin_of(&db, &self.fx.db, &tls, &credentials)).await.unwrap()
    }

    /// Starts `user`'s session `session` on `connection`; returns the round trips it took.
    async fn start(&self, connection: &AdminConnection, session: &str, user: &str) -> u64 {
        let event = SessionEvent::from_value(self.fx.event(session, user, &["keep"])).unwrap();
        let db = request::database(&self.config, &event).unwrap().resolve_static().unwrap();
        let req = request::prepare_start(&self.config, &db, &event).unwrap();
        let before = self.counter.round_trips();
        engine::session_start(connection, &req).await.unwrap();
        self.counter.round_trips() - before
    }

    async fn end(&self, connection: &AdminConnection, session: &str, user: &str) -> u64 {
        self.end_as(connection, session, user, "keep").await
    }

    /// [`Counted::end`] of a session of Teleport role `role`.
    async fn end_as(&self, connection: &AdminConnection, session: &str, user: &str, role: &str) -> u64 {
        let event = SessionEvent::from_value(self.fx.event(session, user, &[role])).unwrap();
        let db = request::database(&self.config, &event).unwrap().resolve_static().unwrap();
        let req = request::prepare_end(&self.config, &db, &event).unwrap();
        let before = self.counter.round_trips();
        engine::session_end(connection, &req, &engine::NoOtherDatabases).await.unwrap();
        self.counter.round_trips() - before
    }
}

/// After a first session (which creates the group, and prepares alice's creator role if she
/// has one: the first user is one of its users too), a new user `alice` on a new connection
/// starts in one round trip; she is returned.
async fn a_new_user_starts_in_one_round_trip_after_a_first(c: &Counted) -> String {
    let alice = c.fx.user("alice");
    let creator = c.config.creator_role_for(&alice);
    let first = (0..)
        .map(|i| c.fx.user(&format!("first{i}")))
        .find(|first| c.config.creator_role_for(first) == creator)
        .expect("a user of alice's creator");
    c.fx.start(c.fx.event("s0", &first, &["keep"])).await.unwrap();
    let connection = c.connect().await;
    assert_eq!(c.start(&connection, "s1", &alice).await, 1);
    let state = c.fx.state(&alice).await.expect("alice exists");
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&c.fx.group, &c.fx.reader()]));
    assert!(state.comment.unwrap().contains("\"s1\""), "the ledger records the session");
    alice
}

#[tokio::test]
async fn a_new_user_starts_in_one_round_trip() {
    a_new_user_starts_in_one_round_trip_after_a_first(&Counted::new("rt_new").await).await;
}

/// With `creator_roles` (one, so that every user has the same), once the creator is ready a
/// new user's start is still one round trip on every version.
#[tokio::test]
async fn with_a_creator_role_a_new_user_still_starts_in_one_round_trip() {
    let mut fx = Fixture::new("rt_creator").await;
    fx.extra_yaml = "creator_roles: 1\n".into();
    let c = Counted::with(fx);
    let alice = a_new_user_starts_in_one_round_trip_after_a_first(&c).await;
    let creator_admins_alice: bool =
        c.fx.superuser
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                             WHERE m.roleid = $1::text::regrole AND m.member::regrole::text = $2 AND m.admin_option)",
                &[&alice, &format!("\"{}-creator-0\"", c.fx.group)],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(creator_admins_alice, crate::fixture::major() >= 16);
}

/// A drop writes the managed group's record of ended sessions, which every other drop on the
/// server waits for until the writer commits. The COMMIT goes in the same round trip, so no
/// drop holds that record while a reply crosses the network: a drop takes two round trips,
/// like any other end.
#[tokio::test]
async fn a_drop_commits_in_the_round_trip_that_records_its_end() {
    let c = Counted::new("rt_drop").await;
    let alice = c.fx.user("alice");
    c.fx.start(c.fx.event("s1", &alice, &["drop"])).await.unwrap();
    let connection = c.connect().await;
    // 1 (prepare the catalog query) + 2 (read, then drop, record and commit).
    assert_eq!(c.end_as(&connection, "s1", &alice, "drop").await, 3);
    assert!(c.fx.state(&alice).await.is_none(), "alice is dropped");
    let group_comment: String =
        c.fx.superuser
            .query_one("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", &[&c.fx.group])
            .await
            .unwrap()
            .get(0);
    assert!(group_comment.contains(&format!("\"{alice}\"\t\"s1\"")), "{group_comment}");
}

#[tokio::test]
async fn known_users_take_two_round_trips_once_the_catalog_query_is_prepared() {
    let c = Counted::new("rt_known").await;
    let connection = c.connect().await;
    let alice = c.fx.user("alice");
    // The group is missing: the one-round-trip attempt fails and the read path creates it.
    // 1 (attempt) + 1 (prepare the catalog query) + 2 (read, then write).
    assert_eq!(c.start(&connection, "s1", &alice).await, 4);
    assert_eq!(c.end(&connection, "s1", &alice).await, 2);
    // Alice is known to exist on this connection now: no attempt to create her.
    assert_eq!(c.start(&connection, "s2", &alice).await, 2);
    assert_eq!(c.end(&connection, "s2", &alice).await, 2);
    let state = c.fx.state(&alice).await.expect("alice is kept");
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&c.fx.group]));
}

#[tokio::test]
async fn a_returning_user_on_a_new_connection_is_started_correctly() {
    let c = Counted::new("rt_returning").await;
    let alice = c.fx.user("alice");
    c.fx.start(c.fx.event("s1", &alice, &["keep"])).await.unwrap();
    c.fx.end(c.fx.event("s1", &alice, &["keep"])).await.unwrap();
    let connection = c.connect().await;
    // The attempt to create her fails (she exists); nothing of it stays, the read path
    // re-enables her: 1 + 1 (prepare) + 2.
    assert_eq!(c.start(&connection, "s2", &alice).await, 4);
    let state = c.fx.state(&alice).await.unwrap();
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&c.fx.group, &c.fx.reader()]));
    let comment = state.comment.unwrap();
    assert!(comment.contains("\"s2\"") && comment.contains("\"revision\":3"), "{comment}");
}
