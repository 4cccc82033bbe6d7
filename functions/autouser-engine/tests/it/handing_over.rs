//! Users who created objects: `best_effort_reassign_and_drop` hands them to the object
//! inheritor in every database that holds some, then drops the user; `best_effort_drop` and a
//! hand-over that cannot run lock the user instead, and say what blocked the drop. The
//! objects are made as a person would make them, logged in as the user with `psql`-style SQL.

use autouser_policy::outcome::{DropBlockedKind, EndStatus};

use crate::fixture::{as_superuser, cluster, connect, major, q, Fixture};

/// A fixture whose `writers` role (mode `mode`) gives `<ns>_writer`, which may create in the
/// `public` schema of the test's database and of a second database `<ns>_b`; the inheritor is
/// `<ns>_heir`, so that parallel tests do not share one.
async fn writers_fixture(ns: &str, mode: &str) -> Fixture {
    let mut fx = Fixture::new(ns).await;
    let writer = fx.writer();
    fx.give_admin_option(&writer).await;
    fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: writers}}
    spec:
      options: {{create_db_user_mode: {mode}}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{writer}"]
"#
    ));
    fx.extra_yaml = format!("object_inheritor: {:?}\n", heir(&fx));
    fx.sql(&format!("CREATE DATABASE {}", q(&other_db(&fx)))).await;
    for db in [fx.db.clone(), other_db(&fx)] {
        as_superuser(&db, &format!("GRANT USAGE, CREATE ON SCHEMA public TO {}", q(&writer))).await;
    }
    fx
}

fn heir(fx: &Fixture) -> String {
    format!("{}_heir", fx.ns)
}

fn other_db(fx: &Fixture) -> String {
    format!("{}_b", fx.ns)
}

/// Logs in as `user` and creates, in the test's database, a table with rows, a sequence that
/// has been used and a view, and lets the reader role read the table; in the second database,
/// a table with rows.
async fn create_objects(fx: &Fixture, user: &str) {
    let here = connect(user, &fx.db).await.expect("the user logs in");
    here.batch_execute(&format!(
        "CREATE TABLE public.orders (id int PRIMARY KEY, total numeric);
         INSERT INTO public.orders SELECT i, i * 1.5 FROM generate_series(1, 100) AS i;
         CREATE SEQUENCE public.order_ids START 1000;
         SELECT nextval('public.order_ids'), nextval('public.order_ids');
         CREATE VIEW public.big_orders AS SELECT * FROM public.orders WHERE total > 100;
         GRANT SELECT ON public.orders TO {reader};",
        reader = q(&fx.reader())
    ))
    .await
    .expect("the user creates objects");
    let there = connect(user, &other_db(fx)).await.expect("the user logs in to the second database");
    there
        .batch_execute("CREATE TABLE public.notes (body text); INSERT INTO public.notes VALUES ('a'), ('b'), ('c');")
        .await
        .expect("the user creates a table in the second database");
}

/// The owners of the test's objects, by name, in `db`.
async fn owners(db: &str, names: &[&str]) -> Vec<(String, String)> {
    let client = connect(cluster().superuser(), db).await.expect("superuser connects");
    let rows = client
        .query(
            "SELECT c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text
               FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
              ORDER BY 1",
            &[&names],
        )
        .await
        .expect("owners");
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

fn owned_by(owner: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut owned: Vec<(String, String)> = names.iter().map(|name| (name.to_string(), owner.to_string())).collect();
    owned.sort();
    owned
}

#[tokio::test]
async fn a_user_with_objects_in_two_databases_is_dropped_and_the_inheritor_owns_them_with_their_data() {
    let mut fx = writers_fixture("ho_two", "best_effort_reassign_and_drop").await;
    fx.extra_yaml.push_str("creator_roles: 0\n");
    hands_over_in_two_databases_and_drops(&fx, &fx.admin).await;
}

/// With `creator_roles`, the creator gives the admin the user's privileges for the hand-over
/// (PostgreSQL 16+: only a role holding ADMIN OPTION on the user can), and drops the user.
/// The user is the creator's alone: the admin holds nothing on it, so it could not hand the
/// objects over without the creator. On 15 the setting changes nothing: the admin manages it.
#[tokio::test]
async fn a_creators_user_with_objects_in_two_databases_is_handed_over_and_dropped() {
    let mut fx = writers_fixture("ho_creator", "best_effort_reassign_and_drop").await;
    fx.extra_yaml.push_str("creator_roles: 2\n");
    let creator = fx.config().creator_role_for(&fx.user("alice")).expect("a creator");
    let manager = if major() >= 16 { creator } else { fx.admin.clone() };
    hands_over_in_two_databases_and_drops(&fx, &manager).await;
}

/// `manager` is the role expected to manage the user: to have granted its roles and, on
/// PostgreSQL 16+, to hold ADMIN OPTION on it.
async fn hands_over_in_two_databases_and_drops(fx: &Fixture, manager: &str) {
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(fx, &alice).await;
    let held = crate::creators::memberships(fx, &alice).await;
    for role in [fx.group.clone(), fx.writer()] {
        assert!(held.contains(&(role, alice.clone(), manager.to_string(), false)), "{manager}: {held:?}");
    }
    if major() >= 16 {
        assert!(held.iter().any(|(role, member, _, admin)| *role == alice && member == manager && *admin), "{held:?}");
    }
    if manager != fx.admin {
        let admins = held.iter().filter(|(_, member, grantor, _)| *member == fx.admin || *grantor == fx.admin);
        assert_eq!(admins.count(), 0, "the admin holds nothing on the user: {held:?}");
    }

    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
    assert_eq!(out.drop_blocked, None);
    assert!(fx.state(&alice).await.is_none(), "the user is gone");

    let heir = heir(fx);
    assert_eq!(
        owners(&fx.db, &["orders", "order_ids", "big_orders"]).await,
        owned_by(&heir, &["orders", "order_ids", "big_orders"])
    );
    assert_eq!(owners(&other_db(fx), &["notes"]).await, owned_by(&heir, &["notes"]));
    let here = connect(cluster().superuser(), &fx.db).await.unwrap();
    let row = here
        .query_one(
            "SELECT (SELECT count(*) FROM public.orders)::int, (SELECT sum(total) FROM public.orders)::text,
                    (SELECT last_value FROM public.order_ids)::bigint, (SELECT count(*) FROM public.big_orders)::int,
                    pg_catalog.has_table_privilege($1::text, 'public.orders', 'SELECT'),
                    (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $2::text)",
            &[&fx.reader(), &heir],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 100, "the rows are intact");
    assert_eq!(row.get::<_, String>(1), "7575.0");
    assert_eq!(row.get::<_, i64>(2), 1001, "the sequence kept its position");
    assert_eq!(row.get::<_, i32>(3), 34, "the view still reads the table");
    // What the user granted goes with it: the inheritor's objects lend nothing
    // (`Step::DisarmOwned`, tests/it/hostile_hand_over.rs); an operator may grant again.
    assert!(!row.get::<_, bool>(4), "what the user granted on the table was revoked");
    assert!(!row.get::<_, bool>(5), "the inheritor cannot log in");
    let there = connect(cluster().superuser(), &other_db(fx)).await.unwrap();
    let notes: i64 = there.query_one("SELECT count(*) FROM public.notes", &[]).await.unwrap().get(0);
    assert_eq!(notes, 3);

    // The name is free again: a new session of the same person starts afresh.
    let again = fx.start(fx.event("s2", &alice, &["writers"])).await.unwrap();
    assert!(again.created_user, "{again:?}");
}

#[tokio::test]
async fn best_effort_drop_names_the_objects_and_databases_that_blocked_the_drop() {
    let fx = writers_fixture("ho_named", "best_effort_drop").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(&fx, &alice).await;

    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
    let blocked = out.drop_blocked.clone().expect("the outcome says what blocked the drop");
    assert_eq!(blocked.kind, DropBlockedKind::DependentObjects);
    let reason = out.reason.clone().unwrap();
    for named in [
        "owns ",
        "table public.orders",
        "sequence public.order_ids",
        "view public.big_orders",
        &format!("in database {:?}", other_db(&fx)),
    ] {
        assert!(reason.contains(named), "{named:?} not in {reason:?}");
        assert!(blocked.detail.contains(named), "{named:?} not in {blocked:?}");
    }
    let state = fx.state(&alice).await.expect("kept");
    assert!(!state.login, "locked");
    assert_eq!(owners(&fx.db, &["orders"]).await, owned_by(&alice, &["orders"]), "nothing moved");
}

#[tokio::test]
async fn an_admin_without_connect_where_objects_are_locks_the_user_and_names_the_grant() {
    let fx = writers_fixture("ho_connect", "best_effort_reassign_and_drop").await;
    let alice = fx.user("alice");
    let other = other_db(&fx);
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    // Only the user may connect to the second database; the admin may not. (Not through the
    // writer role: on 16+, the admin's ADMIN OPTION grant of it inherits its privileges.)
    fx.sql(&format!(
        "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {alice}",
        db = q(&other),
        alice = q(&alice)
    ))
    .await;
    create_objects(&fx, &alice).await;

    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
    let blocked = out.drop_blocked.clone().expect("drop_blocked");
    assert_eq!(blocked.kind, DropBlockedKind::CannotConnect, "{blocked:?}");
    assert_eq!(blocked.db_name, other);
    let grant = format!("GRANT CONNECT ON DATABASE {} TO {}", q(&other), q(&fx.admin));
    assert_eq!(blocked.fix.as_deref(), Some(grant.as_str()));
    assert!(out.reason.as_deref().unwrap().contains(&grant), "{out:?}");
    let state = fx.state(&alice).await.expect("kept");
    assert!(!state.login, "locked, never left able to log in");
    assert_eq!(state.member_of, crate::fixture::set(&[&fx.group]));
    assert_eq!(owners(&fx.db, &["orders"]).await, owned_by(&alice, &["orders"]), "nothing half done here");

    // The operator runs the GRANT, and takes back the CONNECT it gave the user (the admin
    // cannot revoke a grant the database's owner made); the next session's end drops the user.
    fx.sql(&format!("{grant}; REVOKE CONNECT ON DATABASE {} FROM {}", q(&other), q(&alice))).await;
    fx.start(fx.event("s2", &alice, &["writers"])).await.unwrap();
    let out = fx.end(fx.event("s2", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
    assert_eq!(owners(&other, &["notes"]).await, owned_by(&heir(&fx), &["notes"]));
}

#[tokio::test]
async fn an_admin_without_the_inheritors_privileges_locks_the_user_and_names_the_grant() {
    let fx = writers_fixture("ho_heirpriv", "best_effort_reassign_and_drop").await;
    let alice = fx.user("alice");
    // An operator made the inheritor, and gave the admin nothing on it.
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&heir(&fx)))).await;
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(&fx, &alice).await;

    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
    let blocked = out.drop_blocked.clone().expect("drop_blocked");
    assert_eq!(blocked.kind, DropBlockedKind::AdminLacksPrivilege, "{blocked:?}");
    let grant = format!("GRANT {} TO {}", q(&heir(&fx)), q(&fx.admin));
    assert_eq!(blocked.fix.as_deref(), Some(grant.as_str()), "{blocked:?}");
    let state = fx.state(&alice).await.expect("kept");
    assert!(!state.login, "locked");
    assert_eq!(owners(&fx.db, &["orders"]).await, owned_by(&alice, &["orders"]));
    assert_eq!(owners(&other_db(&fx), &["notes"]).await, owned_by(&alice, &["notes"]));

    fx.sql(&grant).await;
    fx.start(fx.event("s2", &alice, &["writers"])).await.unwrap();
    let out = fx.end(fx.event("s2", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
}

/// Which call of a round the test lets take the user's lock first.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// The end queues for the user's lock (held by the test) first, then the start.
    EndFirst,
    /// The start queues first, then the end.
    StartFirst,
    /// No lock held: the start is called this many milliseconds after the end.
    Timed(u64),
}

/// Returns once `count` transactions wait for the advisory lock `key`; panics after 10 s.
async fn until_waiting(key: i64, count: i64) {
    let client = connect(cluster().superuser(), "postgres").await.expect("superuser connects");
    let (classid, objid) = ((key >> 32) as u32, key as u32);
    let query = "SELECT count(*) FROM pg_catalog.pg_locks
                  WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 AND classid = $1 AND objid = $2";
    for _ in 0..1000 {
        let waiting: i64 = client.query_one(query, &[&classid, &objid]).await.expect("lock waiters").get(0);
        if waiting >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{count} calls did not queue for the user's lock within 10 s");
}

/// A start of a new session racing the end: the start waits for the end's transaction, which
/// holds the user's row from the lock to the drop. Either the start came first (the end finds
/// a session open and moves nothing), or the end did (everything moved, the user dropped,
/// and the start creates it afresh). Never some objects moved and some not.
///
/// Rounds left to timing make whatever interleavings this machine makes; then both orders are
/// forced once: the test holds the user's lock (as the admin, whose calls wait for it) until
/// both calls queue for it, in the order it chose, and PostgreSQL grants it in that order.
#[tokio::test]
async fn a_start_racing_the_end_sees_the_user_kept_or_gone_never_half_handed_over() {
    let fx = writers_fixture("ho_race", "best_effort_reassign_and_drop").await;
    let heir = heir(&fx);
    let (mut came_first, mut went_first) = (0, 0);
    // The first end also creates the inheritor, and plans again after it: a forced round
    // comes after it, once the end runs in one transaction from its lock to its drop.
    let orders = (0..6).map(|n| Order::Timed(n * 15)).chain([Order::EndFirst, Order::StartFirst]);
    for (round, order) in orders.enumerate() {
        let user = fx.user(&format!("u{round}"));
        fx.start(fx.event("s1", &user, &["writers"])).await.unwrap();
        create_objects(&fx, &user).await;
        let key = autouser_engine::sql::user_lock_key(&user);
        let holder = match order {
            Order::Timed(_) => None,
            Order::EndFirst | Order::StartFirst => {
                let holder = fx.admin_client(&fx.config(), &fx.db).await.unwrap();
                holder.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
                Some(holder)
            }
        };
        let end = async {
            if let Order::StartFirst = order {
                until_waiting(key, 1).await;
            }
            fx.end(fx.event("s1", &user, &["writers"])).await
        };
        let start = async {
            match order {
                Order::EndFirst => until_waiting(key, 1).await,
                Order::StartFirst => {}
                Order::Timed(delay) => tokio::time::sleep(std::time::Duration::from_millis(delay)).await,
            }
            fx.start(fx.event("s2", &user, &["writers"])).await
        };
        let release = async {
            if let Some(holder) = &holder {
                until_waiting(key, 2).await;
                holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
            }
        };
        let (ended, started, ()) = tokio::join!(end, start, release);
        let (ended, started) = (ended.unwrap(), started.unwrap());
        let context = format!("round {round} ({order:?})");
        let here = owners(&fx.db, &["orders", "order_ids", "big_orders"]).await;
        let there = owners(&other_db(&fx), &["notes"]).await;
        let state = fx.state(&user).await.expect("the second session's user exists");
        assert!(state.login, "the open session can log in");
        match ended.status {
            EndStatus::InUse => {
                came_first += 1;
                assert!(!matches!(order, Order::EndFirst), "{context}: the start came first: {ended:?}");
                assert!(!started.created_user);
                assert_eq!(here, owned_by(&user, &["orders", "order_ids", "big_orders"]), "{context}");
                assert_eq!(there, owned_by(&user, &["notes"]), "{context}");
            }
            EndStatus::Dropped => {
                went_first += 1;
                assert!(!matches!(order, Order::StartFirst), "{context}: the end came first: {ended:?}");
                assert!(started.created_user, "{context}: {started:?}");
                assert_eq!(here, owned_by(&heir, &["orders", "order_ids", "big_orders"]), "{context}");
                assert_eq!(there, owned_by(&heir, &["notes"]), "{context}");
            }
            other => panic!("{context}: {other:?} {ended:?}"),
        }
        // Tidy the round's objects so that the next round's names are free.
        for (db, drop) in [
            (fx.db.clone(), "DROP VIEW public.big_orders; DROP TABLE public.orders; DROP SEQUENCE public.order_ids"),
            (other_db(&fx), "DROP TABLE public.notes"),
        ] {
            as_superuser(&db, drop).await;
        }
    }
    eprintln!("PostgreSQL {}: the start came first {came_first} times, the end {went_first} times", major());
    assert!(came_first >= 1 && went_first >= 1, "start first {came_first} times, end first {went_first} times");
}

#[tokio::test]
async fn preflight_checks_the_object_inheritor_and_bootstrap_creates_it() {
    use crate::preflight::{finding, preflight};
    let fx = writers_fixture("ho_preflight", "best_effort_reassign_and_drop").await;
    let report = preflight(&fx).await;
    let inheritor = finding(&report, "object_inheritor");
    assert_eq!(inheritor.status, autouser_engine::preflight::Status::Pass, "{}", report.to_text());
    assert!(inheritor.detail.contains("will create it"), "{}", report.to_text());

    let config = fx.config();
    let db = config.databases[0].resolve_static().unwrap();
    let client = fx.admin_client(&config, "postgres").await.unwrap();
    let (_, facts) = autouser_engine::preflight::check(&client, &config, &db).await.unwrap();
    let ran = autouser_engine::preflight::bootstrap(&client, &config, &facts).await.unwrap();
    let heir = q(&heir(&fx));
    assert!(ran.contains(&format!("CREATE ROLE {heir} NOLOGIN")), "{ran:?}");
    assert!(ran.contains(&format!("GRANT {heir} TO {}", q(&fx.admin))), "{ran:?}");
    let after = preflight(&fx).await;
    assert!(after.ready && finding(&after, "object_inheritor").detail.contains("exists"), "{}", after.to_text());

    // The bootstrapped inheritor takes a user's objects.
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(&fx, &alice).await;
    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
}

#[tokio::test]
async fn preflight_prints_the_grant_an_admin_lacks_on_an_operators_inheritor() {
    use crate::preflight::{apply_fixes_until_ready, finding, preflight};
    let fx = writers_fixture("ho_pfgrant", "best_effort_reassign_and_drop").await;
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&heir(&fx)))).await;
    let report = preflight(&fx).await;
    assert_eq!(finding(&report, "object_inheritor").status, autouser_engine::preflight::Status::Fail);
    let fixes = apply_fixes_until_ready(&fx).await;
    assert_eq!(fixes, [format!("GRANT {} TO {};", q(&heir(&fx)), q(&fx.admin))]);
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(&fx, &alice).await;
    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
}

/// `retry_blocked_drops`: the reaper drops a user kept because its drop was blocked once the
/// block is gone (here: the admin given the inheritor's privileges); off, it never does.
#[tokio::test]
async fn the_reaper_retries_a_blocked_drop_only_when_configured_and_once_it_can_run() {
    let mut fx = writers_fixture("ho_reaper", "best_effort_reassign_and_drop").await;
    let alice = fx.user("alice");
    fx.sql(&format!("CREATE ROLE {} NOLOGIN", q(&heir(&fx)))).await;
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    create_objects(&fx, &alice).await;
    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
    let now = 4_000_000_000;

    let report = fx.reap(now).await;
    assert!(report.retried_drops.is_empty(), "off by default: {report:?}");
    assert!(fx.state(&alice).await.is_some());

    let without_option = fx.extra_yaml.clone();
    fx.extra_yaml = format!("{without_option}retry_blocked_drops: true\n");
    let report = fx.reap(now).await;
    assert_eq!(report.retried_drops.len(), 1, "{report:?}");
    assert_eq!(report.retried_drops[0].status, EndStatus::Deactivated, "still blocked: {report:?}");
    assert!(report.retried_drops[0].reason.as_deref().unwrap().contains("GRANT"), "{report:?}");
    let state = fx.state(&alice).await.expect("still kept");
    assert!(!state.login);

    fx.sql(&format!("GRANT {} TO {}", q(&heir(&fx)), q(&fx.admin))).await;
    let report = fx.reap(now).await;
    assert_eq!(report.retried_drops.len(), 1, "{report:?}");
    assert_eq!(report.retried_drops[0].status, EndStatus::Dropped, "{report:?}");
    assert!(fx.state(&alice).await.is_none(), "dropped");
    assert_eq!(owners(&other_db(&fx), &["notes"]).await, owned_by(&heir(&fx), &["notes"]));
    assert_eq!(owners(&fx.db, &["orders"]).await, owned_by(&heir(&fx), &["orders"]));
    // The session ended before the drop stays ended: its start delivered late is refused.
    let late = fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap_err();
    assert_eq!(late.kind(), "SessionAlreadyEnded", "{late}");
}
