//! Object permissions (`db_permissions`): what the user holds on tables, views, sequences,
//! functions and schemas after starts and ends, read from the ACLs by a superuser.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use autouser_engine::tokio_postgres::Client;
use autouser_policy::outcome::EndStatus;
use serde_json::json;

use crate::fixture::{cluster, connect, q, set, Fixture};

/// Objects with names that need quoting, in schemas `public` and `a"b`, all grantable by the
/// admin, as an application owner (here the superuser) would set them up.
const OBJECTS: &str = r#"
CREATE SCHEMA "a""b";
CREATE TABLE public.orders (id int);
CREATE TABLE public.orders_2026 (id int);
CREATE TABLE public.secret_keys (k text);
CREATE TABLE public."Weird Table" (x int);
CREATE TABLE "a""b".t (x int);
CREATE VIEW public.orders_view AS SELECT id FROM public.orders;
CREATE SEQUENCE public.ids;
CREATE FUNCTION public."Fn ""x"""(a integer, b text) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION public."Fn ""x"""(a integer) RETURNS int LANGUAGE sql AS 'SELECT 2';
CREATE PROCEDURE public.tidy() LANGUAGE sql AS 'SELECT 1';
"#;

fn admin_may_grant(admin: &str) -> String {
    let admin = q(admin);
    format!(
        r#"
GRANT USAGE ON SCHEMA public, "a""b" TO {admin} WITH GRANT OPTION;
GRANT ALL ON ALL TABLES IN SCHEMA public, "a""b" TO {admin} WITH GRANT OPTION;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {admin} WITH GRANT OPTION;
GRANT ALL ON ALL ROUTINES IN SCHEMA public TO {admin} WITH GRANT OPTION;
"#
    )
}

/// One role: `mode`, the database roles none, these `db_permissions` (YAML flow lists).
fn policy(mode: &str, allow: &str, deny: &str) -> String {
    format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: objects}}
    spec:
      options: {{create_db_user_mode: {mode}}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_permissions: {allow}
      deny:
        db_permissions: {deny}
"#
    )
}

const READ_PUBLIC_TABLES: &str = r#"[{match: {object_kind: table, schema: public}, permissions: [SELECT, INSERT]},
                         {match: {object_kind: [view, sequence], schema: public}, permissions: [SELECT]},
                         {match: {object_kind: function, name: "Fn*"}, permissions: [EXECUTE]},
                         {match: {object_kind: table, schema: 'a"b'}, permissions: [UPDATE]}]"#;

/// A fixture whose database holds [`OBJECTS`], with `roles` as the policy.
async fn objects_fixture(ns: &str, roles: &str) -> Fixture {
    let fx = Fixture::new(ns).await.with_roles(roles);
    superuser_in(&fx.db).await.batch_execute(&format!("{OBJECTS}{}", admin_may_grant(&fx.admin))).await.unwrap();
    fx
}

async fn superuser_in(db: &str) -> Client {
    scratch_login::superuser(cluster(), db).await
}

/// What `user` holds directly, per object (`schema.name`, functions with their arguments,
/// `schema <name>` for schemas), from the ACLs of database `db`.
async fn held(db: &str, user: &str) -> BTreeMap<String, BTreeSet<String>> {
    let rows = superuser_in(db)
        .await
        .query(
            "WITH u AS (SELECT oid FROM pg_roles WHERE rolname = $1)
             SELECT n.nspname || '.' || c.relname, a.privilege_type
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
              WHERE a.grantee = (SELECT oid FROM u)
             UNION ALL
             SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                    a.privilege_type
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a
              WHERE a.grantee = (SELECT oid FROM u)
             UNION ALL
             SELECT 'schema ' || n.nspname, a.privilege_type
               FROM pg_namespace n, aclexplode(n.nspacl) a
              WHERE a.grantee = (SELECT oid FROM u)",
            &[&user],
        )
        .await
        .unwrap();
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        held.entry(row.get(0)).or_default().insert(row.get(1));
    }
    held
}

fn expected(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    entries.iter().map(|(object, privileges)| (object.to_string(), set(privileges))).collect()
}

#[tokio::test]
async fn grants_follow_the_rules_and_deny_and_the_user_can_use_them() {
    let deny = r#"[{match: {object_kind: table, name: "secret_*"}, permissions: [SELECT]}]"#;
    let fx = objects_fixture("op_grants", &policy("keep", READ_PUBLIC_TABLES, deny)).await;
    let alice = fx.user("alice");
    let out = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();

    assert_eq!(
        held(&fx.db, &alice).await,
        expected(&[
            ("public.orders", &["INSERT", "SELECT"]),
            ("public.orders_2026", &["INSERT", "SELECT"]),
            // Deny removed SELECT only.
            ("public.secret_keys", &["INSERT"]),
            ("public.Weird Table", &["INSERT", "SELECT"]),
            ("public.orders_view", &["SELECT"]),
            ("public.ids", &["SELECT"]),
            ("public.Fn \"x\"(a integer)", &["EXECUTE"]),
            ("public.Fn \"x\"(a integer, b text)", &["EXECUTE"]),
            ("a\"b.t", &["UPDATE"]),
            ("schema public", &["USAGE"]),
            ("schema a\"b", &["USAGE"]),
        ])
    );
    let summary = serde_json::to_value(&out.db_permissions).unwrap();
    let public_tables = summary
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["object_kind"] == "table" && s["schema"] == "public")
        .expect("a public table group");
    assert_eq!(public_tables["objects"], 4);
    assert_eq!(public_tables["privileges"], json!({"INSERT": 4, "SELECT": 3}));
    assert_eq!(summary.as_array().unwrap().len(), 5, "{summary}");

    // The grants work: alice reads the quoted table and is refused the denied one.
    let client = connect(&alice, &fx.db).await.unwrap();
    client
        .batch_execute(r#"INSERT INTO public."Weird Table" VALUES (1); SELECT * FROM public."Weird Table""#)
        .await
        .unwrap();
    client.batch_execute(r#"UPDATE "a""b".t SET x = 2"#).await.unwrap();
    let err = client.batch_execute("SELECT * FROM public.secret_keys").await.unwrap_err();
    assert!(err.to_string().contains("permission denied") || format!("{err:?}").contains("42501"), "{err:?}");
    drop(client);

    // A duplicate start reports what the user holds and changes nothing.
    let again = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert!(again.already_active);
    assert_eq!(again.db_permissions, out.db_permissions);
}

#[tokio::test]
async fn keep_revokes_every_object_privilege_at_the_end() {
    let fx = objects_fixture("op_keep", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert!(!held(&fx.db, &alice).await.is_empty());
    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(!out.revoked_db_permissions.is_empty());
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login);
    assert_eq!(state.member_of, set(&[&fx.group]));
}

#[tokio::test]
async fn best_effort_drop_revokes_then_drops_the_user() {
    let fx = objects_fixture("op_drop", &policy("best_effort_drop", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    // The privileges were dependencies: left in place, they would have blocked the drop.
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn import_rules_label_objects_in_priority_order() {
    let mut fx = objects_fixture(
        "op_import",
        &policy("keep", r#"[{match: {object_kind: table, environment: prod}, permissions: [SELECT]}]"#, "[]"),
    )
    .await;
    fx.extra_yaml = r#"
import_rules:
  - name: archive
    priority: 20
    match: {name: ["*_2026"]}
    add_labels: {environment: archive}
  - name: prod-tables
    priority: 10
    match: {database: ["op_*"], schema: ["public"], name: ["orders*", "secret*"]}
    add_labels: {environment: prod}
"#
    .to_string();
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    // orders_2026 matched both rules; the later one (archive) set the label last.
    assert_eq!(
        held(&fx.db, &alice).await,
        expected(&[("public.orders", &["SELECT"]), ("public.secret_keys", &["SELECT"]), ("schema public", &["USAGE"])])
    );
}

#[tokio::test]
async fn overlapping_sessions_on_two_databases_each_clean_up_their_own() {
    let fx = objects_fixture("op_twodb", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let other_db = format!("{}_other", fx.db);
    fx.sql(&format!("CREATE DATABASE {}", q(&other_db))).await;
    superuser_in(&other_db).await.batch_execute(&format!("{OBJECTS}{}", admin_may_grant(&fx.admin))).await.unwrap();
    let alice = fx.user("alice");
    let on = |session: &str, db: &str| {
        let mut event = fx.event(session, &alice, &["objects"]);
        event["db_name"] = json!(db);
        event
    };
    fx.start(on("s1", &fx.db)).await.unwrap();
    let second = fx.start(on("s2", &other_db)).await.unwrap();
    assert_eq!(second.open_sessions, 2);
    let granted = held(&fx.db, &alice).await;
    assert!(granted.contains_key("public.orders"));
    assert_eq!(held(&other_db, &alice).await, granted);

    // The session on the first database ends: its privileges go, the other session's stay.
    let out = fx.end(on("s1", &fx.db)).await.unwrap();
    assert_eq!(out.status, EndStatus::InUse);
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    assert_eq!(held(&other_db, &alice).await, granted);
    assert!(fx.state(&alice).await.unwrap().login);
    let client = connect(&alice, &other_db).await.unwrap();
    client.batch_execute("SELECT * FROM public.orders").await.unwrap();
    drop(client);

    let out = fx.end(on("s2", &other_db)).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert_eq!(out.reason, None, "nothing is left anywhere");
    assert_eq!(held(&other_db, &alice).await, BTreeMap::new());
    assert!(!fx.state(&alice).await.unwrap().login);
}

#[tokio::test]
async fn objects_created_or_dropped_between_start_and_end() {
    let fx = objects_fixture("op_ddl", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let owner = superuser_in(&fx.db).await;
    owner
        .batch_execute(&format!(
            "DROP VIEW public.orders_view; DROP TABLE public.orders_2026; CREATE TABLE public.added (x int);
             GRANT ALL ON public.added TO {} WITH GRANT OPTION",
            q(&fx.admin)
        ))
        .await
        .unwrap();
    // A second session of the same rules picks up the new table; the dropped ones are gone.
    let out = fx.start(fx.event("s2", &alice, &["objects"])).await.unwrap();
    assert_eq!(out.open_sessions, 2);
    let now = held(&fx.db, &alice).await;
    assert_eq!(now.get("public.added"), Some(&set(&["INSERT", "SELECT"])));
    assert!(!now.contains_key("public.orders_2026"));

    owner.batch_execute("DROP TABLE public.added; CREATE TABLE public.late (x int)").await.unwrap();
    assert_eq!(fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap().status, EndStatus::InUse);
    // The database still has a session: nothing is revoked yet.
    assert_eq!(held(&fx.db, &alice).await.get("public.orders"), Some(&set(&["INSERT", "SELECT"])));
    assert_eq!(fx.end(fx.event("s2", &alice, &["objects"])).await.unwrap().status, EndStatus::Deactivated);
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
}

#[tokio::test]
async fn a_start_revokes_what_an_earlier_session_left_behind() {
    let fx = objects_fixture(
        "op_stale",
        &policy("keep", r#"[{match: {object_kind: table, name: orders}, permissions: [SELECT]}]"#, "[]"),
    )
    .await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    // As if an earlier release, or a lost end, had left privileges the policy no longer gives.
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            // Kinds the rules do not match are found through the user's shared dependencies.
            r#"SET ROLE {admin}; GRANT UPDATE ON public.secret_keys TO {alice};
               GRANT USAGE ON SEQUENCE public.ids TO {alice}; GRANT EXECUTE ON PROCEDURE public.tidy() TO {alice}"#,
            admin = q(&fx.admin),
            alice = q(&alice)
        ))
        .await
        .unwrap();
    if crate::fixture::major() >= 17 {
        // A privilege the build has no keyword for is revoked too (with REVOKE ALL).
        superuser_in(&fx.db)
            .await
            .batch_execute(&format!(
                "SET ROLE {admin}; GRANT MAINTAIN ON public.orders TO {alice}",
                admin = q(&fx.admin),
                alice = q(&alice)
            ))
            .await
            .unwrap();
    }
    assert_eq!(held(&fx.db, &alice).await.len(), if crate::fixture::major() >= 17 { 4 } else { 3 });
    fx.start(fx.event("s2", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, expected(&[("public.orders", &["SELECT"]), ("schema public", &["USAGE"])]));
    // The same holds at the end: everything the user holds goes.
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            "SET ROLE {admin}; GRANT EXECUTE ON PROCEDURE public.tidy() TO {alice}",
            admin = q(&fx.admin),
            alice = q(&alice)
        ))
        .await
        .unwrap();
    fx.end(fx.event("s2", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
}

#[tokio::test]
async fn an_admin_without_grant_option_gets_the_fix_and_nothing_changes() {
    let fx = Fixture::new("op_nogrant").await.with_roles(&policy(
        "keep",
        r#"[{match: {object_kind: table}, permissions: [SELECT]}]"#,
        "[]",
    ));
    let owner = superuser_in(&fx.db).await;
    owner
        .batch_execute(&format!(
            "CREATE TABLE public.ledger (x int); GRANT USAGE ON SCHEMA public TO {admin} WITH GRANT OPTION;
             GRANT SELECT ON public.ledger TO {admin}",
            admin = q(&fx.admin)
        ))
        .await
        .unwrap();
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap_err();
    assert_eq!(err.kind(), "MissingObjectGrantOption", "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO {} WITH GRANT OPTION",
            q(&fx.admin)
        )),
        "{message}"
    );
    assert!(fx.state(&alice).await.is_none(), "the refused start created nothing");

    // The fix in the message works.
    owner.batch_execute(&format!("GRANT SELECT ON public.ledger TO {} WITH GRANT OPTION", q(&fx.admin))).await.unwrap();
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await.get("public.ledger"), Some(&set(&["SELECT"])));
}

/// 10,000 tables in one schema, granted in batches. The time is printed, not asserted
/// (`BENCHMARKS.md` has the measured figure).
#[tokio::test]
async fn ten_thousand_tables_are_granted_and_revoked() {
    let fx = Fixture::new("op_10k").await.with_roles(&policy(
        "keep",
        r#"[{match: {object_kind: table, schema: wide}, permissions: [SELECT]}]"#,
        "[]",
    ));
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA wide;
             DO $$ BEGIN FOR i IN 1..10000 LOOP EXECUTE format('CREATE TABLE wide.%I ()', 't' || i); END LOOP; END $$;
             GRANT USAGE ON SCHEMA wide TO {admin} WITH GRANT OPTION;
             GRANT SELECT ON ALL TABLES IN SCHEMA wide TO {admin} WITH GRANT OPTION",
            admin = q(&fx.admin)
        ))
        .await
        .unwrap();
    let alice = fx.user("alice");
    let started = Instant::now();
    let out = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let start_time = started.elapsed();
    assert_eq!(out.db_permissions.len(), 1);
    assert_eq!(out.db_permissions[0].objects, 10_000);
    assert_eq!(held(&fx.db, &alice).await.len(), 10_001, "10,000 tables and the schema");
    let ended = Instant::now();
    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let end_time = ended.elapsed();
    assert_eq!(out.revoked_db_permissions[0].objects, 10_000);
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    eprintln!("10,000 tables: session-start {start_time:?}, session-end {end_time:?} (including connecting)");
}

/// The README's grant for a non-superuser admin ("What the admin needs"), run by the owner of
/// the tables: nothing on the schema, nothing on routines.
fn readme_table_grant(schema: &str, admin: &str) -> String {
    format!("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {} WITH GRANT OPTION;", q(schema), q(admin))
}

/// [`readme_table_grant`] and USAGE on the schema WITH GRANT OPTION.
fn with_schema_grant_option(schema: &str, admin: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA {} TO {} WITH GRANT OPTION; {}",
        q(schema),
        q(admin),
        readme_table_grant(schema, admin)
    )
}

/// A database fresh from `initdb`'s template, tables and a function made by their owner (here
/// the superuser), and the admin set up as the README says: `CREATE USER … LOGIN CREATEROLE`
/// (the fixture) and the one table grant. PUBLIC keeps its defaults: USAGE on `public` (and,
/// from PostgreSQL 15 on, no CREATE there), EXECUTE on functions.
#[tokio::test]
async fn on_a_stock_database_public_needs_only_the_readme_table_grant() {
    let fx = Fixture::new("op_stock").await.with_roles(&policy(
        "keep",
        r#"[{match: {object_kind: table, schema: public}, permissions: [SELECT]},
            {match: {object_kind: function, schema: public}, permissions: [EXECUTE]}]"#,
        "[]",
    ));
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id int); INSERT INTO public.orders VALUES (7);
             CREATE FUNCTION public.answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
             {}",
            readme_table_grant("public", &fx.admin)
        ))
        .await
        .unwrap();
    let alice = fx.user("alice");
    let out = fx.start(fx.event("s1", &alice, &["objects"])).await.expect("the session starts");
    // USAGE on public and EXECUTE come through PUBLIC: nothing to grant for them.
    assert_eq!(held(&fx.db, &alice).await, expected(&[("public.orders", &["SELECT"])]));
    let summary = serde_json::to_value(&out.db_permissions).unwrap();
    assert_eq!(
        summary,
        json!([{"object_kind": "table", "schema": "public", "objects": 1, "privileges": {"SELECT": 1}},
               {"object_kind": "function", "schema": "public", "objects": 1, "privileges": {"EXECUTE": 1}}])
    );
    let client = connect(&alice, &fx.db).await.unwrap();
    let row = client.query_one("SELECT (SELECT id FROM public.orders), public.answer()", &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (7, 42));
    drop(client);
    let again = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert!(again.already_active);
    assert_eq!(again.db_permissions, out.db_permissions, "a redelivered start reports the same");

    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert_eq!(out.reason, None);
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    assert!(connect(&alice, &fx.db).await.is_err(), "the user is locked");
}

/// A schema PUBLIC cannot use: the session would be useless without USAGE, so it is refused
/// with the statement that fixes it, and that statement is enough.
#[tokio::test]
async fn a_schema_the_user_could_not_use_is_refused_with_the_exact_fix() {
    let fx = Fixture::new("op_nousage").await.with_roles(&policy(
        "keep",
        r#"[{match: {object_kind: table, schema: sales}, permissions: [SELECT]}]"#,
        "[]",
    ));
    let owner = superuser_in(&fx.db).await;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA sales; CREATE TABLE sales.t (x int); {}",
            readme_table_grant("sales", &fx.admin)
        ))
        .await
        .unwrap();
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap_err();
    assert_eq!(err.kind(), "MissingSchemaGrantOption", "{err}");
    let fix = format!("GRANT USAGE ON SCHEMA \"sales\" TO {} WITH GRANT OPTION", q(&fx.admin));
    assert!(err.to_string().contains(&fix), "{err}");
    assert!(fx.state(&alice).await.is_none(), "the refused start created nothing");

    owner.batch_execute(&fix).await.unwrap();
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, expected(&[("sales.t", &["SELECT"]), ("schema sales", &["USAGE"])]));
    connect(&alice, &fx.db).await.unwrap().batch_execute("SELECT * FROM sales.t").await.unwrap();
}

/// USAGE a role of the session carries needs no grant; the admin still has to be able to
/// name the objects in the schema, and is told so when it cannot.
#[tokio::test]
async fn usage_through_a_role_of_the_session_needs_no_grant() {
    let fx = Fixture::new("op_roleusage").await;
    let reader = fx.reader();
    let fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: objects}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}"]
        db_permissions: [{{match: {{object_kind: table, schema: sales}}, permissions: [SELECT]}}]
"#
    ));
    let owner = superuser_in(&fx.db).await;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA sales; CREATE TABLE sales.t (x int); GRANT USAGE ON SCHEMA sales TO {reader}; {}",
            readme_table_grant("sales", &fx.admin),
            reader = q(&reader)
        ))
        .await
        .unwrap();
    if crate::fixture::major() >= 16 {
        // The admin holds the role WITH ADMIN OPTION (the fixture), which by default lets it use
        // the role's privileges, USAGE on sales among them; kept from using them, as a careful
        // operator sets it up, it cannot name the tables.
        fx.sql(&format!("GRANT {} TO {} WITH INHERIT FALSE", q(&reader), q(&fx.admin))).await;
    }
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap_err();
    assert_eq!(err.kind(), "MissingSchemaUsage", "{err}");
    let fix = format!("GRANT USAGE ON SCHEMA \"sales\" TO {}", q(&fx.admin));
    assert!(err.to_string().contains(&format!("`{fix}`")), "{err}");
    assert!(fx.state(&alice).await.is_none(), "the refused start created nothing");

    owner.batch_execute(&fix).await.unwrap();
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, expected(&[("sales.t", &["SELECT"])]));
    connect(&alice, &fx.db).await.unwrap().batch_execute("SELECT * FROM sales.t").await.unwrap();
}

/// The owner of a schema grants the managed user something directly, on objects the admin
/// holds nothing on. The admin cannot revoke it (PostgreSQL refuses the REVOKE outright): the
/// end still locks the user, revokes what it granted, and says what is left and how to remove
/// it. A later start leaves the grant alone, and the reaper's end locks as well.
#[tokio::test]
async fn an_operators_direct_grant_never_blocks_the_end() {
    let fx = Fixture::new("op_foreign").await.with_roles(&policy(
        "keep",
        r#"[{match: {object_kind: table, schema: public}, permissions: [SELECT]}]"#,
        "[]",
    ));
    let owner = fx.user("owner");
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id int); {grant}
             CREATE ROLE {owner}; CREATE SCHEMA private AUTHORIZATION {owner};
             SET ROLE {owner}; CREATE TABLE private.notes (x int); RESET ROLE",
            grant = with_schema_grant_option("public", &fx.admin),
            owner = q(&owner)
        ))
        .await
        .unwrap();
    let alice = fx.user("alice");
    let operator_grants = format!(
        "SET ROLE {owner}; GRANT USAGE ON SCHEMA private TO {alice}; GRANT SELECT ON private.notes TO {alice}",
        owner = q(&owner),
        alice = q(&alice)
    );
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    superuser_in(&fx.db).await.batch_execute(&operator_grants).await.unwrap();

    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.expect("the end succeeds");
    assert_eq!(out.status, EndStatus::Deactivated);
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login, "the user is locked");
    assert_eq!(state.member_of, set(&[&fx.group]));
    assert_eq!(out.revoked_db_permissions.len(), 1, "{out:?}");
    assert_eq!(held(&fx.db, &alice).await, expected(&[("private.notes", &["SELECT"]), ("schema private", &["USAGE"])]));
    let kept = serde_json::to_value(&out.unrevoked_db_permissions).unwrap();
    assert_eq!(kept, json!([{"object_kind": "table", "schema": "private", "objects": 1, "privileges": {"SELECT": 1}}]));
    let reason = out.reason.expect("the outcome says what is left");
    for part in [
        format!("REVOKE ALL ON TABLE \"private\".\"notes\" FROM {}", q(&alice)),
        format!("REVOKE USAGE ON SCHEMA \"private\" FROM {}", q(&alice)),
        q(&owner),
    ] {
        assert!(reason.contains(&part), "{part} in {reason}");
    }
    let fix = reason.rsplit_once("run `").unwrap().1.trim_end_matches('`').to_string();

    // A new session starts beside the grant, and the reaper closes it as an end would.
    fx.start(fx.event("s2", &alice, &["objects"])).await.expect("the grant does not block a start");
    assert!(fx.state(&alice).await.unwrap().login);
    let report = fx.reap(u64::MAX / 2).await;
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert_eq!(held(&fx.db, &alice).await, expected(&[("private.notes", &["SELECT"]), ("schema private", &["USAGE"])]));

    // The statements the reason gives work, run as the grantor.
    superuser_in(&fx.db).await.batch_execute(&format!("SET ROLE {}; {fix}", q(&owner))).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
}

/// The same with `best_effort_drop`: the user cannot be dropped while it holds privileges,
/// so it is locked instead, and the end succeeds.
#[tokio::test]
async fn an_operators_direct_grant_turns_a_drop_into_a_lock() {
    let fx = Fixture::new("op_foreigndrop").await.with_roles(&policy(
        "best_effort_drop",
        r#"[{match: {object_kind: table, name: orders}, permissions: [SELECT]}]"#,
        "[]",
    ));
    let owner = fx.user("owner");
    let alice = fx.user("alice");
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id int); {grant} CREATE ROLE {owner};
             CREATE TABLE public.notes (x int); ALTER TABLE public.notes OWNER TO {owner}",
            grant = with_schema_grant_option("public", &fx.admin),
            owner = q(&owner)
        ))
        .await
        .unwrap();
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    superuser_in(&fx.db)
        .await
        .batch_execute(&format!("SET ROLE {}; GRANT SELECT ON public.notes TO {}", q(&owner), q(&alice)))
        .await
        .unwrap();
    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.expect("the end succeeds");
    assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
    assert!(!fx.state(&alice).await.unwrap().login);
    assert_eq!(held(&fx.db, &alice).await, expected(&[("public.notes", &["SELECT"])]));
    assert!(out.reason.unwrap().contains("REVOKE ALL ON TABLE \"public\".\"notes\""));
}

/// `db_permissions` leaves the policy while a session holds its grants: the end revokes them
/// anyway, because the ledger says where they were made.
#[tokio::test]
async fn an_end_revokes_what_its_session_was_granted_after_the_policy_dropped_db_permissions() {
    let mut fx = objects_fixture("op_policyend", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert!(!held(&fx.db, &alice).await.is_empty());
    fx.roles_yaml = policy("keep", "[]", "[]");

    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(!out.revoked_db_permissions.is_empty(), "{out:?}");
    assert_eq!(out.reason, None);
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    let ledger = fx.state(&alice).await.unwrap().comment.unwrap();
    assert!(!ledger.contains("object_databases"), "{ledger}");
}

/// The end ran where it could not revoke (the admin's default database); the next start in
/// the session's database, under a policy without `db_permissions`, revokes before it unlocks.
#[tokio::test]
async fn a_start_revokes_grants_the_ledger_records_whatever_the_policy_says() {
    let mut fx = objects_fixture("op_policystart", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let granted = held(&fx.db, &alice).await;
    assert!(!granted.is_empty());
    fx.roles_yaml = policy("keep", "[]", "[]");
    fx.default_database = Some("postgres".into());
    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Deactivated);
    assert!(out.reason.unwrap().contains(&fx.db), "the end names the database where privileges remain");
    assert_eq!(held(&fx.db, &alice).await, granted);

    fx.default_database = None;
    let out = fx.start(fx.event("s2", &alice, &["objects"])).await.unwrap();
    assert!(out.db_permissions.is_empty());
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new(), "revoked before the user is unlocked");
    let ledger = fx.state(&alice).await.unwrap().comment.unwrap();
    assert!(!ledger.contains("object_databases"), "{ledger}");
}

/// The reaper closes an expired session in the database its grants were made in, even once
/// the policy has no `db_permissions` and the reaper runs from another database.
#[tokio::test]
async fn the_reaper_revokes_where_the_ledger_says_after_the_policy_dropped_db_permissions() {
    let mut fx = objects_fixture("op_policyreap", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    fx.roles_yaml = policy("keep", "[]", "[]");
    let report = fx.reap_from("postgres", u64::MAX / 2).await;
    assert_eq!(report.failed, vec![]);
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].reason, None, "{report:?}");
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
    assert!(!fx.state(&alice).await.unwrap().login);
}

/// A `REVOKE` that fails for a reason the listing cannot foresee (here an event trigger
/// refusing every object `REVOKE`) does not undo the end: the user is locked without the
/// revokes, the reason says why, and a later end revokes what is left.
#[tokio::test]
async fn a_revoke_failing_for_any_reason_still_locks_the_user() {
    let fx = objects_fixture("op_revokefails", &policy("keep", READ_PUBLIC_TABLES, "[]")).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["objects"])).await.unwrap();
    let granted = held(&fx.db, &alice).await;
    let owner = superuser_in(&fx.db).await;
    owner
        .batch_execute(
            "CREATE FUNCTION public.refuse_revokes() RETURNS event_trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'revokes are frozen for the audit' USING ERRCODE = 'object_not_in_prerequisite_state'; END $$;
             CREATE EVENT TRIGGER refuse_revokes ON ddl_command_start WHEN TAG IN ('REVOKE')
               EXECUTE FUNCTION public.refuse_revokes()",
        )
        .await
        .unwrap();

    let out = fx.end(fx.event("s1", &alice, &["objects"])).await.expect("the end succeeds");
    assert_eq!(out.status, EndStatus::Deactivated);
    let state = fx.state(&alice).await.unwrap();
    assert!(!state.login, "the user is locked");
    assert_eq!(state.member_of, set(&[&fx.group]));
    let reason = out.reason.expect("the reason says what failed");
    assert!(reason.contains("revokes are frozen for the audit"), "{reason}");
    assert!(!reason.contains("ran in another database"), "{reason}");
    assert!(out.revoked_db_permissions.is_empty());
    assert_eq!(held(&fx.db, &alice).await, granted);

    owner.batch_execute("DROP EVENT TRIGGER refuse_revokes").await.unwrap();
    fx.start(fx.event("s2", &alice, &["objects"])).await.unwrap();
    fx.end(fx.event("s2", &alice, &["objects"])).await.unwrap();
    assert_eq!(held(&fx.db, &alice).await, BTreeMap::new());
}
