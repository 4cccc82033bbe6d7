//! The provisioned user as the attacker. Logged in during its session, a user can run any
//! SQL its roles allow while the admin works in the same database: plant operators and
//! functions where the admin's statements would find them, hold locks on its own role or on
//! the keys our calls take, set itself a password or defaults. None of it may make the admin
//! run the user's code, hold up an end, or outlive the session.
//!
//! Attacks on the hand-over (`hostile_hand_over`) and on `db_roles` (`hostile_db_roles`)
//! have modules of their own.

use std::time::{Duration, Instant};

use autouser_engine::{engine, pg, sql};
use autouser_policy::event::SessionEvent;
use autouser_policy::outcome::EndStatus;
use autouser_policy::request;

use crate::fixture::{as_superuser, cluster, connect, q, Fixture};

/// Operators whose `pg_catalog` versions are polymorphic or need an implicit cast for these
/// argument types, so that an operator of exactly these types in a schema on the default
/// `search_path` wins over the catalog's: `(symbol, left, right, result, the catalog's
/// answer)`. The types are those our SQL puts side by side (`text[] || text` in READ_STATE,
/// `text || bigint` in the ledger, `oid = integer` and `oid = regclass` in the listings...).
const TRAPPED_OPERATORS: &[(&str, &str, &str, &str, &str)] = &[
    ("||", "text", "bigint", "text", "l || r::text"),
    ("||", "bigint", "text", "text", "l::text || r"),
    ("||", "text", "integer", "text", "l || r::text"),
    ("||", "integer", "text", "text", "l::text || r"),
    ("||", "text[]", "text", "text[]", "pg_catalog.array_append(l, r)"),
    ("||", "text", "text[]", "text[]", "pg_catalog.array_prepend(l, r)"),
    ("||", "text[]", "text[]", "text[]", "pg_catalog.array_cat(l, r)"),
    ("||", "name", "text", "text", "l::text || r"),
    ("=", "oid", "integer", "boolean", "l = r::oid"),
    ("=", "integer", "oid", "boolean", "l::oid = r"),
    ("=", "oid", "bigint", "boolean", "l = r::oid"),
    ("=", "oid", "regclass", "boolean", "l = r::oid"),
    ("<>", "oid", "integer", "boolean", "l <> r::oid"),
    ("=", "text[]", "text[]", "boolean", "l = r"),
    ("&&", "text[]", "text[]", "boolean", "l && r"),
    ("@>", "text[]", "text[]", "boolean", "l @> r"),
    ("=", "\"char\"", "text", "boolean", "l::text = r"),
    ("!~", "name", "name", "boolean", "l::text !~ r::text"),
    ("~", "name", "name", "boolean", "l::text ~ r::text"),
    ("~~", "name", "name", "boolean", "l::text ~~ r::text"),
];

/// Functions the same way: `(name, argument types, result, the catalog's answer)`, the
/// arguments named `a1`, `a2`... Our SQL names every function `pg_catalog.`; these catch
/// one that is not.
const TRAPPED_FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("starts_with", "name, text", "boolean", "pg_catalog.starts_with(a1::text, a2)"),
    ("strpos", "name, text", "integer", "pg_catalog.strpos(a1::text, a2)"),
    ("to_json", "text", "json", "pg_catalog.to_json(a1)"),
    ("to_jsonb", "text", "jsonb", "pg_catalog.to_jsonb(a1)"),
    ("format", "text, text", "text", "pg_catalog.format(a1, a2)"),
    ("format", "text, text, text", "text", "pg_catalog.format(a1, a2, a3)"),
    ("concat", "text, text", "text", "pg_catalog.concat(a1, a2)"),
    ("array_to_string", "text[], text", "text", "pg_catalog.array_to_string(a1, a2)"),
    ("cardinality", "text[]", "integer", "pg_catalog.cardinality(a1)"),
    ("array_length", "text[], integer", "integer", "pg_catalog.array_length(a1, a2)"),
    ("quote_ident", "name", "text", "pg_catalog.quote_ident(a1::text)"),
    ("length", "name", "integer", "pg_catalog.length(a1::text)"),
];

/// The table every trap writes to when it runs: who ran it.
const TRAP_LOG: &str = "public.autouser_trap_log";

/// Plants the traps in `public` and in a schema named after the admin (the default
/// `search_path` is `"$user", public`), owned by a role of no privilege, as a user with
/// `CREATE` on a schema would. Each trap gives the catalog's answer, so calls that reach one
/// still work, and records that it ran.
async fn plant_traps(fx: &Fixture) {
    let planter = q(&format!("{}_planter", fx.ns));
    let admin_schema = q(&fx.admin);
    let mut text = format!(
        "CREATE ROLE {planter};
         GRANT CREATE ON SCHEMA public TO {planter};
         CREATE SCHEMA {admin_schema} AUTHORIZATION {planter};
         GRANT USAGE ON SCHEMA {admin_schema} TO PUBLIC;
         CREATE TABLE {TRAP_LOG} (trap text, ran_as name, session_role name);
         GRANT INSERT ON {TRAP_LOG} TO PUBLIC;
         SET ROLE {planter};\n"
    );
    for schema in ["public".to_string(), admin_schema.clone()] {
        for (n, (symbol, left, right, result, answer)) in TRAPPED_OPERATORS.iter().enumerate() {
            let label = sql::quote_literal(&format!("{schema}.{symbol}({left}, {right})"));
            text.push_str(&format!(
                "CREATE FUNCTION {schema}.trap_op_{n}(l {left}, r {right}) RETURNS {result}
                   LANGUAGE plpgsql SET search_path = pg_catalog AS $trap$
                 BEGIN
                   INSERT INTO {TRAP_LOG} VALUES ({label}, current_user, session_user);
                   RETURN {answer};
                 END $trap$;
                 CREATE OPERATOR {schema}.{symbol} (LEFTARG = {left}, RIGHTARG = {right},
                   FUNCTION = {schema}.trap_op_{n});\n"
            ));
        }
        for (name, arguments, result, answer) in TRAPPED_FUNCTIONS {
            let label = sql::quote_literal(&format!("{schema}.{name}({arguments})"));
            let parameters: Vec<String> =
                arguments.split(", ").enumerate().map(|(i, kind)| format!("a{} {kind}", i + 1)).collect();
            text.push_str(&format!(
                "CREATE FUNCTION {schema}.{name}({parameters}) RETURNS {result}
                   LANGUAGE plpgsql SET search_path = pg_catalog AS $trap$
                 BEGIN
                   INSERT INTO {TRAP_LOG} VALUES ({label}, current_user, session_user);
                   RETURN {answer};
                 END $trap$;\n",
                parameters = parameters.join(", ")
            ));
        }
    }
    text.push_str("RESET ROLE;");
    as_superuser(&fx.db, &text).await;

    // The traps work: a session with the default search_path runs them instead of the
    // catalog's operators. Without this, a test that finds none fired would prove nothing.
    as_superuser(
        &fx.db,
        "SET search_path = \"$user\", public;
         SELECT 'a'::text || 1::bigint, ARRAY['a']::text[] || 'b'::text, 1::oid = 1::integer,
                starts_with('a'::name, 'a'::text);",
    )
    .await;
    let fired = traps_fired(fx).await;
    assert_eq!(fired.len(), 4, "the traps shadow the catalog on the default search_path: {fired:?}");
    as_superuser(&fx.db, &format!("TRUNCATE {TRAP_LOG}")).await;
}

/// The traps that ran since planting: `(trap, ran as, session role)`.
async fn traps_fired(fx: &Fixture) -> Vec<(String, String, String)> {
    let superuser = connect(cluster().superuser(), &fx.db).await.unwrap();
    let rows = superuser
        .query(&format!("SELECT trap, ran_as::text, session_role::text FROM {TRAP_LOG} ORDER BY 1"), &[])
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect()
}

/// A fixture whose policy also has `heirs` (the writer role, handing objects to `<ns>_heir`)
/// and `drops` (best_effort_drop); the writer may create in `public`. With creator roles on
/// 16+, so that their functions and `SET ROLE` run too.
async fn trapped_fixture(ns: &str) -> Fixture {
    let mut fx = Fixture::new(ns).await;
    let (reader, writer) = (fx.reader(), fx.writer());
    fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}"]
  - kind: role
    version: v7
    metadata: {{name: drops}}
    spec:
      options: {{create_db_user_mode: best_effort_drop}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}"]
  - kind: role
    version: v7
    metadata: {{name: heirs}}
    spec:
      options: {{create_db_user_mode: best_effort_reassign_and_drop}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{writer}"]
  - kind: role
    version: v7
    metadata: {{name: objects}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_permissions: [{{match: {{object_kind: table, schema: public, name: accounts}}, permissions: [SELECT]}}]
"#
    ));
    fx.extra_yaml = format!("object_inheritor: {:?}\ncreator_roles: 2\n", format!("{ns}_heir"));
    // Ending a user's connections needs it (the README's admin setup grants it).
    fx.sql(&format!("GRANT pg_signal_backend TO {}", q(&fx.admin))).await;
    as_superuser(
        &fx.db,
        &format!(
            "GRANT USAGE, CREATE ON SCHEMA public TO {writer};
             CREATE TABLE public.accounts (id int);
             GRANT USAGE ON SCHEMA public TO {admin} WITH GRANT OPTION;
             GRANT SELECT ON public.accounts TO {admin} WITH GRANT OPTION;",
            writer = q(&writer),
            admin = q(&fx.admin)
        ),
    )
    .await;
    fx
}

/// Every kind of call the admin makes, on a database full of traps: starts (a new user in one
/// round trip, a returning one), ends (in use, keep, drop, the hand-over), object
/// permissions, `plan`, `status`, preflight and bootstrap, the reaper, on fresh and warm
/// connections (on 16+, warm ones call the creators' functions). No trap runs as the admin.
#[tokio::test]
async fn the_admin_runs_none_of_the_user_s_operators_or_functions() {
    let fx = trapped_fixture("ho_traps").await;
    let config = fx.config();
    let db = config.databases[0].resolve_static().unwrap();
    // Bootstrap first (the group, the inheritor, the creators), as discovery would.
    let admin_db = autouser_engine::preflight::admin_database(&db).to_string();
    let client = fx.admin_client(&config, &admin_db).await.unwrap();
    plant_traps(&fx).await;
    let (_, facts) = autouser_engine::preflight::check(&client, &config, &db).await.unwrap();
    autouser_engine::preflight::bootstrap(&client, &config, &facts).await.unwrap();

    let (alice, bob, carol, dave, erin) =
        (fx.user("alice"), fx.user("bob"), fx.user("carol"), fx.user("dave"), fx.user("erin"));
    fx.start(fx.event("a1", &alice, &["keep"])).await.unwrap();
    let warm = fx.admin_client(&config, &fx.db).await.unwrap();
    for (session, user, role) in
        [("a2", &alice, "keep"), ("b1", &bob, "keep"), ("c1", &carol, "drops"), ("d1", &dave, "heirs")]
    {
        fx.start_on(&warm, fx.event(session, user, &[role])).await.unwrap();
    }
    fx.start(fx.event("e1", &erin, &["objects"])).await.unwrap();

    // The users set themselves a password and defaults, and dave makes a table to hand over.
    let alice_client = connect(&alice, &fx.db).await.unwrap();
    alice_client
        .batch_execute(&format!(
            "ALTER ROLE {alice} SET work_mem = '1MB'; ALTER ROLE {alice} IN DATABASE {db} SET work_mem = '2MB'",
            alice = q(&alice),
            db = q(&fx.db)
        ))
        .await
        .unwrap();
    drop(alice_client);
    connect(&dave, &fx.db).await.unwrap().batch_execute("CREATE TABLE public.daves (x int)").await.unwrap();

    // plan, status.
    let event = SessionEvent::from_value(fx.event("a3", &alice, &["keep"])).unwrap();
    let start = request::prepare_start(&config, &db, &event).unwrap();
    engine::plan_call(&warm, autouser_engine::dry_run::Call::Start(&start)).await.unwrap();
    let status = autouser_engine::status::status(&warm, &config, &db).await.unwrap();
    assert_eq!(status.users.len(), 5, "{status:?}");

    // Ends of every kind.
    let in_use = fx.end_on(&warm, fx.event("a2", &alice, &["keep"])).await.unwrap();
    assert_eq!(in_use.status, EndStatus::InUse);
    let kept = fx.end(fx.event("a1", &alice, &["keep"])).await.unwrap();
    assert_eq!(kept.status, EndStatus::Deactivated, "{kept:?}");
    let dropped = fx.end_on(&warm, fx.event("c1", &carol, &["drops"])).await.unwrap();
    assert_eq!(dropped.status, EndStatus::Dropped, "{dropped:?}");
    let handed_over = fx.end(fx.event("d1", &dave, &["heirs"])).await.unwrap();
    assert_eq!(handed_over.status, EndStatus::Dropped, "{handed_over:?}");
    let objects = fx.end(fx.event("e1", &erin, &["objects"])).await.unwrap();
    assert_eq!(objects.status, EndStatus::Deactivated, "{objects:?}");
    // The reaper closes bob's session, long expired.
    let far = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 13 * 3600;
    let reaped = fx.reap(far).await;
    assert_eq!(reaped.closed.len(), 1, "{reaped:?}");
    assert!(fx.users_able_to_log_in().await.is_empty());

    let fired = traps_fired(&fx).await;
    let by_admin: Vec<_> = fired.iter().filter(|(_, _, session)| *session == fx.admin).collect();
    assert!(by_admin.is_empty(), "the admin ran the user's code: {by_admin:?}");
    assert!(fired.is_empty(), "nobody else ran SQL here: {fired:?}");
}

/// The second line of defence: our SQL names PostgreSQL's operators and functions with exact
/// types, so it resolves to the catalog even on a connection whose `search_path` is the
/// default again (a pooler that drops startup options, say). The calls run on one admin
/// connection that sets it back, on a database full of traps.
#[tokio::test]
async fn our_sql_resolves_to_the_catalog_even_without_the_pinned_search_path() {
    let fx = trapped_fixture("ho_unpinned").await;
    let config = fx.config();
    let db = config.databases[0].resolve_static().unwrap();
    plant_traps(&fx).await;
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    connection.batch_execute("SET search_path = \"$user\", public").await.unwrap();
    let (_, facts) = autouser_engine::preflight::check(&connection, &config, &db).await.unwrap();
    autouser_engine::preflight::bootstrap(&connection, &config, &facts).await.unwrap();

    let (alice, carol, erin) = (fx.user("alice"), fx.user("carol"), fx.user("erin"));
    for (session, user, role) in
        [("a1", &alice, "keep"), ("a2", &alice, "keep"), ("c1", &carol, "drops"), ("e1", &erin, "objects")]
    {
        fx.start_on(&connection, fx.event(session, user, &[role])).await.unwrap();
    }
    connect(&alice, &fx.db)
        .await
        .unwrap()
        .batch_execute(&format!("ALTER ROLE {} SET work_mem = '1MB'", q(&alice)))
        .await
        .unwrap();
    let event = SessionEvent::from_value(fx.event("a3", &alice, &["keep"])).unwrap();
    let start = request::prepare_start(&config, &db, &event).unwrap();
    engine::plan_call(&connection, autouser_engine::dry_run::Call::Start(&start)).await.unwrap();
    autouser_engine::status::status(&connection, &config, &db).await.unwrap();
    for (session, user, role, status) in [
        ("a2", &alice, "keep", EndStatus::InUse),
        ("a1", &alice, "keep", EndStatus::Deactivated),
        ("c1", &carol, "drops", EndStatus::Dropped),
        ("e1", &erin, "objects", EndStatus::Deactivated),
        ("zz", &fx.user("nobody"), "keep", EndStatus::Noop),
    ] {
        let ended = fx.end_on(&connection, fx.event(session, user, &[role])).await.unwrap();
        assert_eq!(ended.status, status, "{ended:?}");
    }

    let fired = traps_fired(&fx).await;
    assert!(fired.is_empty(), "the admin ran the user's code: {fired:?}");
}

/// The attack as it was found: a user with `CREATE` on `public` plants `text || bigint`
/// (what the ledger's statement uses), whose function creates a login role and, on 15,
/// grants the user `pg_execute_server_program` when the admin runs it. Another user's start
/// and end follow. Nothing of it happens.
#[tokio::test]
async fn a_planted_operator_gains_the_user_nothing() {
    let fx = trapped_fixture("ho_plant").await;
    let (mallory, bob) = (fx.user("mallory"), fx.user("bob"));
    let backdoor = fx.user("backdoor");
    fx.start(fx.event("m1", &mallory, &["heirs"])).await.unwrap();
    let payload = format!(
        "CREATE FUNCTION public.cat(l text, r bigint) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN
           IF session_user = {admin} THEN
             BEGIN
               EXECUTE 'CREATE ROLE {backdoor_ident} LOGIN';
               EXECUTE 'GRANT pg_execute_server_program TO {mallory_ident}';
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
           END IF;
           RETURN l || r::text;
         END $f$;
         CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = bigint, FUNCTION = public.cat);",
        admin = sql::quote_literal(&fx.admin),
        backdoor_ident = q(&backdoor).replace('\'', "''"),
        mallory_ident = q(&mallory).replace('\'', "''"),
    );
    let session = connect(&mallory, &fx.db).await.unwrap();
    session.batch_execute(&payload).await.unwrap();

    fx.start(fx.event("b1", &bob, &["drops"])).await.unwrap();
    fx.end(fx.event("b1", &bob, &["drops"])).await.unwrap();
    fx.end(fx.event("zz", &fx.user("nobody"), &["keep"])).await.unwrap();

    assert!(fx.state(&backdoor).await.is_none(), "the admin ran mallory's function");
    let copied = session.batch_execute("COPY (SELECT 1) TO PROGRAM 'true'").await;
    assert!(copied.is_err(), "mallory runs programs on the server");
}

/// The time an end that nothing holds up takes here, with room to spare: well under the lock
/// timeout, which is what a wait would cost.
fn unheld() -> Duration {
    pg::LOCK_TIMEOUT / 2
}

/// The user holds the advisory lock our calls take for it (its key is public): its end goes
/// on without waiting, and the user is locked and cut off.
#[tokio::test]
async fn a_user_holding_its_own_lock_key_holds_up_nothing() {
    let fx = trapped_fixture("ho_key").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let session = connect(&alice, &fx.db).await.unwrap();
    session.execute("SELECT pg_advisory_lock($1)", &[&sql::user_lock_key(&alice)]).await.unwrap();

    let began = Instant::now();
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("s2", &alice, &["keep"])).await.unwrap();
    let ended = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert!(began.elapsed() < unheld(), "{:?}", began.elapsed());
    assert_eq!(ended.status, EndStatus::Deactivated, "{ended:?}");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert!(connect(&alice, &fx.db).await.is_err(), "alice logs in after her end");
}

/// Another managed user holds alice's key: alice's start and end do not wait for it.
#[tokio::test]
async fn a_user_holding_another_user_s_key_holds_up_nothing() {
    let fx = trapped_fixture("ho_other_key").await;
    let (alice, mallory) = (fx.user("alice"), fx.user("mallory"));
    fx.start(fx.event("m1", &mallory, &["keep"])).await.unwrap();
    let session = connect(&mallory, &fx.db).await.unwrap();
    session.execute("SELECT pg_advisory_lock($1)", &[&sql::user_lock_key(&alice)]).await.unwrap();

    let began = Instant::now();
    let started = fx.start(fx.event("a1", &alice, &["keep"])).await.unwrap();
    assert!(started.created_user);
    fx.start(fx.event("a2", &alice, &["keep"])).await.unwrap();
    fx.end(fx.event("a2", &alice, &["keep"])).await.unwrap();
    let ended = fx.end(fx.event("a1", &alice, &["keep"])).await.unwrap();
    assert!(began.elapsed() < unheld(), "{:?}", began.elapsed());
    assert_eq!(ended.status, EndStatus::Deactivated);
    session.batch_execute("SELECT 1").await.expect("mallory's session is not alice's to end");
}

/// The user keeps a transaction open that changed its own role (`ALTER ROLE self PASSWORD`),
/// which holds the role's row, the first thing every call writes. Its end waits one lock
/// timeout, ends the user's connections, and locks it; the password never takes effect.
#[tokio::test]
async fn a_user_holding_its_own_role_row_does_not_hold_up_its_end() {
    let fx = trapped_fixture("ho_row").await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let session = as_psql_would(&alice, &fx.db).await;
    session.batch_execute(&format!("BEGIN; ALTER ROLE {} PASSWORD 'stays-with-me'", q(&alice))).await.unwrap();

    let began = Instant::now();
    let ended = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let took = began.elapsed();
    assert_eq!(ended.status, EndStatus::Deactivated, "{ended:?}");
    assert!(took < pg::LOCK_TIMEOUT + Duration::from_secs(5), "one lock timeout, then the end: {took:?}");
    assert!(session.batch_execute("SELECT 1").await.is_err(), "the holding connection was ended");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert!(!has_password(&fx, &alice).await);
    assert!(connect(&alice, &fx.db).await.is_err());
}

/// Without `pg_signal_backend`, the admin cannot end the holding connection: the end fails
/// with an error that names the grant, and records the session as ended in the managed
/// group's comment. No start opens it again, and the reaper's next run closes it although
/// the user is still connected and the session young, then ends the user's connections.
#[tokio::test]
async fn an_end_the_user_held_up_for_good_is_finished_by_the_reaper() {
    let fx = trapped_fixture("ho_nosignal").await;
    fx.sql(&format!("REVOKE pg_signal_backend FROM {}", q(&fx.admin))).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    let session = as_psql_would(&alice, &fx.db).await;
    session.batch_execute(&format!("BEGIN; ALTER ROLE {} PASSWORD 'x'", q(&alice))).await.unwrap();
    let err = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert!(err.to_string().contains("GRANT pg_signal_backend TO"), "{err}");
    let refused = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert!(matches!(refused, autouser_engine::Error::SessionAlreadyEnded { .. }), "{refused}");

    // The user lets go of the row (its password set) and stays connected; the operator runs
    // the grant the error named.
    session.batch_execute("COMMIT").await.unwrap();
    assert!(has_password(&fx, &alice).await && fx.state(&alice).await.unwrap().login);
    fx.sql(&format!("GRANT pg_signal_backend TO {}", q(&fx.admin))).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let reaped = fx.reap(now).await;
    assert_eq!(reaped.closed.len(), 1, "{reaped:?}");
    assert_eq!(reaped.closed[0].status, EndStatus::Deactivated, "{reaped:?}");
    assert!(reaped.left_open.is_empty(), "{reaped:?}");
    assert!(session.batch_execute("SELECT 1").await.is_err(), "the user's connection outlived the reaper");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert!(!has_password(&fx, &alice).await);
}

/// What a user set on its own role while logged in (a password, defaults for every database
/// and for one) is gone once its session ends, and again when a session unlocks it.
#[tokio::test]
async fn a_password_and_defaults_the_user_set_do_not_outlive_the_session() {
    let fx = trapped_fixture("ho_password").await;
    let alice = fx.user("alice");
    let set_everything = format!(
        "ALTER ROLE {alice} PASSWORD 'mine'; ALTER ROLE {alice} SET work_mem = '1MB';
         ALTER ROLE {alice} IN DATABASE {db} SET statement_timeout = 0",
        alice = q(&alice),
        db = q(&fx.db)
    );
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
    connect(&alice, &fx.db).await.unwrap().batch_execute(&set_everything).await.unwrap();
    assert!(has_password(&fx, &alice).await && settings_of(&fx, &alice).await == 2);

    let ended = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(ended.status, EndStatus::Deactivated);
    assert_eq!(ended.cleared_settings, [None, Some(fx.db.clone())], "the outcome says what was reset");
    let ledger = fx.state(&alice).await.unwrap().comment.unwrap();
    let ledger: serde_json::Value = serde_json::from_str(&ledger).unwrap();
    assert_eq!(ledger["cleared_settings"], serde_json::json!([null, fx.db]), "so does the ledger: {ledger}");
    assert!(!has_password(&fx, &alice).await, "the password outlived the session");
    assert_eq!(settings_of(&fx, &alice).await, 0, "the defaults outlived the session");

    // Set while locked (by an operator, say): a start clears them before the user logs in.
    fx.sql(&set_everything).await;
    fx.start(fx.event("s2", &alice, &["keep"])).await.unwrap();
    assert!(!has_password(&fx, &alice).await);
    assert_eq!(settings_of(&fx, &alice).await, 0);
}

/// `user`'s connection without timeouts, as psql's would be: the test harness logs
/// in through the admin's connector, whose timeouts would end an idle transaction for us.
async fn as_psql_would(user: &str, db: &str) -> autouser_engine::tokio_postgres::Client {
    let client = connect(user, db).await.unwrap();
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .await
        .unwrap();
    client
}

async fn has_password(fx: &Fixture, user: &str) -> bool {
    let row =
        fx.superuser.query_one("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1", &[&user]).await;
    row.unwrap().get(0)
}

/// The rows of `pg_db_role_setting` of `user`.
async fn settings_of(fx: &Fixture, user: &str) -> i64 {
    let row = fx
        .superuser
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1",
            &[&user],
        )
        .await;
    row.unwrap().get(0)
}
