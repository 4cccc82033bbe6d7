//! `creator_roles`: on PostgreSQL 16+ the users are created and managed by creator roles, each
//! its share, so that the server's check of a role statement walks the memberships of one
//! creator instead of every user the admin ever created. On 15 the setting changes nothing.
//! Users created before it was set stay the admin's, and keep working.

use autouser_policy::outcome::EndStatus;

use crate::fixture::{as_superuser, cluster, connect, function_calls, major, q, set, Fixture};

/// Who holds what on `user`, as `(role, member, grantor, admin_option)` rows of
/// `pg_auth_members` where `user` is the role or the member.
pub(crate) async fn memberships(fx: &Fixture, user: &str) -> Vec<(String, String, String, bool)> {
    let rows = fx
        .superuser
        .query(
            "SELECT m.roleid::regrole::text, m.member::regrole::text, m.grantor::regrole::text, m.admin_option
               FROM pg_auth_members m
              WHERE m.member = $1::text::regrole OR m.roleid = $1::text::regrole
              ORDER BY 1, 2, 3",
            &[&user],
        )
        .await
        .expect("memberships");
    rows.iter()
        .map(|row| {
            let unquote = |name: String| name.trim_matches('"').to_string();
            (unquote(row.get(0)), unquote(row.get(1)), unquote(row.get(2)), row.get(3))
        })
        .collect()
}

/// The creator roles of this test's group that exist.
async fn creators(fx: &Fixture) -> Vec<String> {
    let rows = fx
        .superuser
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1 || '-creator-') ORDER BY 1",
            &[&fx.group],
        )
        .await
        .expect("creators");
    rows.iter().map(|row| row.get(0)).collect()
}

fn with_creators(mut fx: Fixture, count: u32) -> Fixture {
    fx.extra_yaml = format!("creator_roles: {count}\n");
    fx
}

#[tokio::test]
async fn users_are_created_granted_locked_and_dropped_by_their_creator() {
    let fx = with_creators(Fixture::new("cr_cycle").await, 4);
    let config = fx.config();
    let alice = fx.user("alice");
    let creator = config.creator_role_for(&alice).expect("a creator");

    let started = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(started.created_user);
    let state = fx.state(&alice).await.unwrap();
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
    let held = memberships(&fx, &alice).await;
    if major() >= 16 {
        assert_eq!(creators(&fx).await, vec![creator.clone()], "only the creator this user needed");
        assert!(held.contains(&(alice.clone(), creator.clone(), "postgres".into(), true)), "{held:?}");
        assert!(held.contains(&(fx.group.clone(), alice.clone(), creator.clone(), false)), "{held:?}");
        assert!(held.contains(&(fx.reader(), alice.clone(), creator.clone(), false)), "{held:?}");
        assert!(!held.iter().any(|(_, member, _, _)| *member == fx.admin), "the admin holds nothing on it: {held:?}");
    } else {
        assert!(creators(&fx).await.is_empty(), "PostgreSQL 15 has no use for them");
        assert!(held.iter().all(|(_, _, grantor, _)| *grantor == fx.admin), "{held:?}");
    }
    connect(&alice, &fx.db).await.expect("the user logs in");
    // Status lists the user, without drift (its creator's grants are ours), and no creator.
    let db = config.databases[0].resolve_static().unwrap();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let status = autouser_engine::status::status(&connection, &config, &db).await.unwrap();
    let listed: Vec<&str> = status.users.iter().map(|user| user.db_user.as_str()).collect();
    assert_eq!(listed, [alice.as_str()], "{status:?}");
    assert!(status.users[0].drift.is_empty(), "{status:?}");
    assert!(status.users[0].can_login && status.users[0].open_sessions.len() == 1, "{status:?}");

    // A second session of the same user, then the two ends: the first leaves it usable.
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    let first_end = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(first_end.status, EndStatus::InUse);
    connect(&alice, &fx.db).await.expect("still able to log in during the other session");
    let last_end = fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(last_end.status, EndStatus::Deactivated, "{last_end:?}");
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&fx.group]), "keep revoked the role the creator granted");
    assert!(connect(&alice, &fx.db).await.is_err(), "locked");

    // The reaper sees one managed user, not the creator (a member of the group too).
    let report = fx.reap(u64::MAX / 4).await;
    assert_eq!(report.managed_users, 1, "{report:?}");
    assert!(report.unowned_logins.is_empty(), "{report:?}");

    // A drop: the creator drops the user and records the end in the group's comment.
    let bob = fx.user("bob");
    fx.start(fx.event("s3", &bob, &["drop"])).await.unwrap();
    let dropped = fx.end(fx.event("s3", &bob, &["drop"])).await.unwrap();
    assert_eq!(dropped.status, EndStatus::Dropped, "{dropped:?}");
    assert!(fx.state(&bob).await.is_none());
    let late = fx.start(fx.event("s3", &bob, &["drop"])).await.unwrap_err();
    assert_eq!(late.kind(), "SessionAlreadyEnded", "{late}");
}

#[tokio::test]
async fn a_user_created_before_creator_roles_were_set_keeps_working_as_the_admins() {
    let mut fx = Fixture::new("cr_upgrade").await;
    fx.extra_yaml = "creator_roles: 0\n".into();
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();

    // The upgrade turns creator roles on.
    let fx = with_creators(fx, 2);
    let again = fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert!(!again.created_user);
    let state = fx.state(&alice).await.unwrap();
    assert!(state.login);
    assert_eq!(state.member_of, set(&[&fx.group, &fx.reader()]));
    connect(&alice, &fx.db).await.expect("the user logs in");
    let end = fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert_eq!(end.status, EndStatus::Deactivated, "{end:?}");
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&fx.group]));
    let held = memberships(&fx, &alice).await;
    assert!(
        held.iter().filter(|(_, member, _, _)| *member == alice).all(|(_, _, grantor, _)| *grantor == fx.admin),
        "the admin still manages it: {held:?}"
    );

    // A new user of the same deployment is its creator's.
    let bob = fx.user("bob");
    fx.start(fx.event("s3", &bob, &["keep"])).await.unwrap();
    let creator = fx.config().creator_role_for(&bob).unwrap();
    let held = memberships(&fx, &bob).await;
    let expected_grantor = if major() >= 16 { creator } else { fx.admin.clone() };
    assert!(held.contains(&(fx.group.clone(), bob.clone(), expected_grantor, false)), "{held:?}");
}

#[tokio::test]
async fn an_unmanaged_role_of_the_users_name_is_refused_and_left_alone() {
    let fx = with_creators(Fixture::new("cr_rule1").await, 2);
    let carol = fx.user("carol");
    fx.sql(&format!("CREATE ROLE {} LOGIN", crate::fixture::q(&carol))).await;
    let refused = fx.start(fx.event("s1", &carol, &["keep"])).await.unwrap_err();
    assert_eq!(refused.kind(), "UserConflict", "{refused}");
    let state = fx.state(&carol).await.unwrap();
    assert!(state.login && state.member_of.is_empty(), "{state:?}");
    // The cluster's own superuser is untouched too.
    assert!(fx.state(cluster().superuser()).await.is_some());
}

/// Many first starts at once, before any creator exists: they race to create and prepare the
/// same creators, and every one of them succeeds.
#[tokio::test]
async fn concurrent_first_starts_prepare_the_creators_once_and_all_succeed() {
    let fx = with_creators(Fixture::new("cr_race").await, 2);
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap(); // the group
    let users: Vec<String> = (0..8).map(|i| fx.user(&format!("u{i}"))).collect();
    let starts = users.iter().map(|user| fx.start(fx.event("s1", user, &["keep"])));
    for (user, result) in users.iter().zip(futures_util::future::join_all(starts).await) {
        let started = result.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(started.created_user, "{started:?}");
        assert_eq!(fx.state(user).await.unwrap().member_of, set(&[&fx.group, &fx.reader()]));
    }
    let expected = if major() >= 16 { 2 } else { 0 };
    assert_eq!(creators(&fx).await.len(), expected);
}

/// A user keeps the creator it was created under when `creator_roles` changes, or is set back
/// to 0: its roles are still revoked at the end, by the creator that granted them.
#[tokio::test]
async fn a_user_keeps_its_creator_when_creator_roles_change() {
    let mut fx = with_creators(Fixture::new("cr_change").await, 2);
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    for count in [7, 0] {
        fx.extra_yaml = format!("creator_roles: {count}\n");
        let session = format!("s-{count}");
        fx.start(fx.event(&session, &alice, &["keep"])).await.unwrap();
        assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader()]));
        let end = fx.end(fx.event(&session, &alice, &["keep"])).await.unwrap();
        assert_eq!(end.status, EndStatus::Deactivated, "{end:?}");
        assert_eq!(end.reason, None, "nothing left unrevoked: {end:?}");
        let state = fx.state(&alice).await.unwrap();
        assert!(!state.login);
        assert_eq!(state.member_of, set(&[&fx.group]), "with creator_roles: {count}");
    }
}

/// How many functions named `creator` the database of `in_db` holds, in any schema.
async fn functions_named(in_db: &tokio_postgres::Client, creator: &str) -> usize {
    in_db.query("SELECT 1 FROM pg_proc WHERE proname = $1", &[&creator]).await.expect("functions").len()
}

/// PostgreSQL 16+ checks `SET ROLE <creator>` by walking every creator's memberships, so a
/// creator's statements are calls of its function instead, from a connection's first call on.
/// The server counts those calls. The function is made once, with the creator, in the schema
/// named as the managed group that the admin owns: the creator's, `SECURITY DEFINER`, and only
/// the admin may call it: another login role that names it is refused, and so is the user. On
/// 15 there is none.
#[tokio::test]
async fn a_creators_statements_are_calls_of_its_function_from_a_connections_first_call() {
    let fx = with_creators(Fixture::new("cr_function").await, 1);
    let config = fx.config();
    let creator = format!("{}-creator-0", fx.group);
    fx.sql(&format!("ALTER ROLE {} SET track_functions = 'pl'", q(&fx.admin))).await;
    // The first start prepares the creator, and makes its function.
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap();
    // Functions and their statistics are per database.
    let in_db = connect(cluster().superuser(), &fx.db).await.unwrap();
    let functions = in_db
        .query(
            "SELECT p.pronamespace::regnamespace::text, p.proowner::regrole::text, p.prosecdef,
                    p.proacl::text[], p.proconfig
               FROM pg_proc p WHERE p.proname = $1",
            &[&creator],
        )
        .await
        .unwrap();
    if major() < 16 {
        assert!(functions.is_empty(), "no creator function before 16");
        return;
    }
    assert_eq!(functions.len(), 1, "one function, in the group's schema");
    let (schema, owner, security_definer, acl, settings): (String, String, bool, Vec<String>, Vec<String>) =
        (functions[0].get(0), functions[0].get(1), functions[0].get(2), functions[0].get(3), functions[0].get(4));
    assert_eq!(schema, fx.group, "named as the group");
    assert_eq!(owner, q(&creator));
    assert!(security_definer);
    assert_eq!(settings, ["search_path=pg_catalog, pg_temp"]);
    let (creator_q, admin_q) = (q(&creator), fx.admin.clone());
    assert_eq!(acl, [format!("{creator_q}=X/{creator_q}"), format!("{admin_q}=X/{creator_q}")]);

    // A new connection's first call, a new user's start, then its end: both call it.
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let bob = fx.user("bob");
    fx.start_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();
    let after_start = function_calls(&in_db, &connection, &creator, 0).await;
    assert!(after_start > 0, "bob's start, the connection's first call, called the creator's function");
    fx.end_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();
    let after_end = function_calls(&in_db, &connection, &creator, after_start).await;
    assert!(after_end > after_start, "bob's end called it too ({after_start} then {after_end})");
    let state = fx.state(&bob).await.unwrap();
    assert!(!state.login && state.member_of == set(&[&fx.group]), "bob is locked: {state:?}");

    let outsider = format!("{}_outsider", fx.ns);
    fx.sql(&format!("CREATE ROLE {} LOGIN", q(&outsider))).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s3", &alice, &["keep"])).await.unwrap();
    for caller in [&outsider, &alice] {
        let other = connect(caller, &fx.db).await.unwrap();
        let call = format!("SELECT {schema}.{creator_q}('CREATE ROLE {}')", q(&fx.user("mallory")));
        let refused = other.simple_query(&call).await.expect_err("only the admin may call the function");
        assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused}");
    }
    assert!(fx.state(&fx.user("mallory")).await.is_none());
}

/// The creators' functions live in the schema named as the managed group, which the README's
/// admin setup creates for the admin. Without it (and without `CREATE` on the database, with
/// which the first session creates it), preflight warns and prints the fix; sessions meanwhile
/// start and end, their creator's statements after `SET ROLE`. Once the fix has run, the next
/// session makes the function.
#[tokio::test]
async fn without_the_functions_schema_a_creator_runs_after_set_role_and_preflight_prints_the_fix() {
    let mut fx = with_creators(Fixture::new("cr_no_schema").await, 1);
    fx.default_database = Some(fx.db.clone());
    let config = fx.config();
    let creator = format!("{}-creator-0", fx.group);
    as_superuser(&fx.db, &format!("DROP SCHEMA {}", q(&fx.group))).await;
    // The first start prepares the creator.
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap();

    let report = crate::preflight::preflight(&fx).await;
    let warned = report.findings.iter().find(|finding| finding.check == "creator_functions");
    if major() < 16 {
        assert!(warned.is_none(), "creator roles are unused before 16: {}", report.to_text());
        return;
    }
    let warned = warned.unwrap_or_else(|| panic!("a creator_functions finding: {}", report.to_text()));
    assert_eq!(warned.status, autouser_engine::preflight::Status::Warn, "{}", report.to_text());
    assert!(report.ready, "sessions work meanwhile: {}", report.to_text());
    let fix = format!("CREATE SCHEMA {} AUTHORIZATION {};", q(&fx.group), q(&fx.admin));
    assert_eq!(warned.fix.as_deref(), Some(fix.as_str()), "{}", report.to_text());

    let in_db = connect(cluster().superuser(), &fx.db).await.unwrap();
    let alice = fx.user("alice");
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    fx.start_on(&connection, fx.event("s1", &alice, &["keep"])).await.expect("a start through SET ROLE");
    connect(&alice, &fx.db).await.expect("alice logs in");
    fx.end_on(&connection, fx.event("s1", &alice, &["keep"])).await.expect("an end through SET ROLE");
    assert!(!fx.state(&alice).await.unwrap().login, "alice is locked");
    assert_eq!(functions_named(&in_db, &creator).await, 0, "no function without the schema");

    as_superuser(&fx.db, &fix).await;
    let after = crate::preflight::preflight(&fx).await;
    let passed = after.findings.iter().find(|finding| finding.check == "creator_functions").expect("the check");
    assert_eq!(passed.status, autouser_engine::preflight::Status::Pass, "{}", after.to_text());
    let bob = fx.user("bob");
    fx.start_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();
    fx.end_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();
    assert_eq!(functions_named(&in_db, &creator).await, 1, "the next session made the function");
}

/// With `CREATE` on the database instead of the schema, the first session that prepares a
/// creator creates the schema, for the admin, and the function in it.
#[tokio::test]
async fn with_create_on_the_database_the_first_session_creates_the_functions_schema() {
    let fx = with_creators(Fixture::new("cr_make_schema").await, 1);
    as_superuser(&fx.db, &format!("DROP SCHEMA {}", q(&fx.group))).await;
    fx.sql(&format!("GRANT CREATE ON DATABASE {} TO {}", q(&fx.db), q(&fx.admin))).await;
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap();
    let in_db = connect(cluster().superuser(), &fx.db).await.unwrap();
    let owner: Option<String> = in_db
        .query_opt("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", &[&fx.group])
        .await
        .unwrap()
        .map(|row| row.get(0));
    let creator = format!("{}-creator-0", fx.group);
    if major() < 16 {
        assert_eq!(owner, None, "no schema before 16");
        return;
    }
    assert_eq!(owner, Some(fx.admin.clone()));
    assert_eq!(functions_named(&in_db, &creator).await, 1);
}

/// A creator's function can be gone though it was there (an operator dropped it). A
/// transaction checks that the function is there before calling it (`READ_STATE`), and a new
/// user's one-round-trip start that calls a missing one fails whole and takes the read path,
/// which makes the function again: no call fails.
#[tokio::test]
async fn a_creators_function_gone_costs_a_read_never_a_failure() {
    let fx = with_creators(Fixture::new("cr_gone").await, 1);
    let config = fx.config();
    fx.start(fx.event("s0", &fx.user("first"), &["keep"])).await.unwrap();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    let (alice, bob, carol) = (fx.user("alice"), fx.user("bob"), fx.user("carol"));
    fx.start_on(&connection, fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.end_on(&connection, fx.event("s1", &alice, &["keep"])).await.unwrap();
    fx.start_on(&connection, fx.event("s2", &bob, &["keep"])).await.unwrap();

    let creator = format!("{}-creator-0", fx.group);
    let in_db = connect(cluster().superuser(), &fx.db).await.unwrap();
    if major() >= 16 {
        as_superuser(&fx.db, &format!("DROP FUNCTION {}.{}(text)", q(&fx.group), q(&creator))).await;
    }
    let started = fx.start_on(&connection, fx.event("s3", &carol, &["keep"])).await.expect("a new user's start");
    assert!(started.created_user);
    connect(&carol, &fx.db).await.expect("carol logs in");
    fx.end_on(&connection, fx.event("s2", &bob, &["keep"])).await.expect("a kept user's end");
    assert!(!fx.state(&bob).await.unwrap().login, "bob is locked");
    fx.start_on(&connection, fx.event("s4", &bob, &["keep"])).await.expect("a kept user's start");
    connect(&bob, &fx.db).await.expect("bob logs in again");
    if major() >= 16 {
        assert_eq!(functions_named(&in_db, &creator).await, 1, "made again");
        let held = memberships(&fx, &carol).await;
        assert!(held.contains(&(fx.group.clone(), carol.clone(), creator, false)), "{held:?}");
    }
}
