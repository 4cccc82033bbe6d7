//! The provisioned user as the adversary of `best_effort_reassign_and_drop`: logged in during
//! its session, it leaves objects that run as their owner (`SECURITY DEFINER` routines, views,
//! rules, trigger functions, materialized views, expression indexes) and grants them to
//! everyone. After the hand-over their owner is the object inheritor; none of them may lend
//! the inheritor's rights to anyone. Another login role, `<ns>_mallory`, tries each against a
//! table only the inheritor can read. Also: a hand-over blocked by the inheritor's missing
//! `CREATE` on a schema names the `GRANT` that unblocks it.

use autouser_engine::tokio_postgres::{Client, SimpleQueryMessage};
use autouser_policy::outcome::{DropBlockedKind, EndStatus};

use crate::fixture::{as_superuser, cluster, connect, major, q, Fixture};

/// What the inheritor alone may read.
const SECRET: &str = "classified";

/// A fixture whose `writers` role (`best_effort_reassign_and_drop`) gives `<ns>_writer`, which
/// may create in `public` of the test's database and of `<ns>_b`. With `ready_heir`, the
/// inheritor `<ns>_heir` exists, the admin has its privileges, it may create in `public` of
/// both databases (so that routines can be handed to it), and it owns `public.secret`; the
/// login role `<ns>_mallory` owns `public.drop_box`, where anyone may insert.
async fn hostile_fixture(ns: &str, ready_heir: bool) -> Fixture {
    let mut fx = Fixture::new(ns).await;
    let writer = fx.writer();
    fx = fx.with_roles(&format!(
        r#"
  - kind: role
    version: v7
    metadata: {{name: writers}}
    spec:
      options: {{create_db_user_mode: best_effort_reassign_and_drop}}
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
    if ready_heir {
        let (heir, mallory) = (q(&heir(&fx)), q(&mallory(&fx)));
        fx.sql(&format!("CREATE ROLE {heir} NOLOGIN; GRANT {heir} TO {}; CREATE ROLE {mallory} LOGIN", q(&fx.admin)))
            .await;
        for db in [fx.db.clone(), other_db(&fx)] {
            as_superuser(&db, &format!("GRANT CREATE ON SCHEMA public TO {heir}")).await;
        }
        as_superuser(
            &fx.db,
            &format!(
                "CREATE TABLE public.secret (v text);
                 INSERT INTO public.secret VALUES ('{SECRET}');
                 ALTER TABLE public.secret OWNER TO {heir};
                 CREATE TABLE public.drop_box (v text);
                 ALTER TABLE public.drop_box OWNER TO {mallory};
                 GRANT INSERT ON public.drop_box TO PUBLIC;"
            ),
        )
        .await;
    }
    fx
}

fn heir(fx: &Fixture) -> String {
    format!("{}_heir", fx.ns)
}

fn mallory(fx: &Fixture) -> String {
    format!("{}_mallory", fx.ns)
}

fn other_db(fx: &Fixture) -> String {
    format!("{}_b", fx.ns)
}

/// Every text value `sql` answers, or its error.
async fn values(client: &Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| format!("{e:?}"))?;
    let mut found = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            found.extend((0..row.len()).filter_map(|i| row.get(i).map(str::to_string)));
        }
    }
    Ok(found)
}

/// Runs `attack` as mallory; whether the secret reached mallory, in the answer or in its drop
/// box (emptied afterwards), with what mallory saw.
async fn secret_reached_mallory(fx: &Fixture, attack: &str) -> (bool, String) {
    let mallory = connect(&mallory(fx), &fx.db).await.expect("mallory logs in");
    let answer = values(&mallory, attack).await;
    let dropped = values(&mallory, "SELECT v FROM public.drop_box; DELETE FROM public.drop_box").await;
    let leaked = answer.iter().chain(dropped.iter()).flatten().any(|v| v == SECRET);
    (leaked, format!("answer {answer:?}, drop box {dropped:?}"))
}

/// The objects a user makes, logged in during its session, to read `public.secret` once the
/// inheritor owns them; then what mallory runs to use each.
fn attacks() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut attacks = vec![
        (
            "a SECURITY DEFINER function running any query",
            "CREATE FUNCTION public.peek(q text) RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
               AS $f$ BEGIN RETURN QUERY EXECUTE q; END $f$;
             GRANT EXECUTE ON FUNCTION public.peek(text) TO PUBLIC;",
            "SELECT public.peek('SELECT v FROM public.secret')",
        ),
        (
            "a SECURITY DEFINER procedure",
            "CREATE PROCEDURE public.copy_out() LANGUAGE sql SECURITY DEFINER
               AS $f$ INSERT INTO public.drop_box SELECT v FROM public.secret $f$;",
            "CALL public.copy_out()",
        ),
        (
            "a SECURITY DEFINER SQL function that hides behind search_path",
            "CREATE FUNCTION public.plain() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
               SET search_path = public AS $f$ SELECT v FROM secret $f$;",
            "SELECT public.plain()",
        ),
        (
            "a view",
            "CREATE VIEW public.window_on AS SELECT v FROM public.secret;
             GRANT SELECT ON public.window_on TO PUBLIC;",
            "SELECT v FROM public.window_on",
        ),
        (
            "a view over a view",
            "CREATE VIEW public.inner_window AS SELECT v FROM public.secret;
             CREATE VIEW public.outer_window AS SELECT v FROM public.inner_window;
             GRANT SELECT ON public.outer_window TO PUBLIC;",
            "SELECT v FROM public.outer_window",
        ),
        (
            "a table with a rule",
            "CREATE TABLE public.inbox (v text);
             CREATE RULE copy_out AS ON INSERT TO public.inbox
               DO ALSO INSERT INTO public.drop_box SELECT s.v FROM public.secret s;
             GRANT INSERT ON public.inbox TO PUBLIC;",
            "INSERT INTO public.inbox VALUES ('x')",
        ),
        (
            "a view with an INSTEAD rule",
            "CREATE VIEW public.mailbox AS SELECT 'x'::text AS v;
             CREATE RULE copy_out AS ON INSERT TO public.mailbox
               DO INSTEAD INSERT INTO public.drop_box SELECT s.v FROM public.secret s;
             GRANT INSERT ON public.mailbox TO PUBLIC;",
            "INSERT INTO public.mailbox VALUES ('x')",
        ),
        (
            "a table whose trigger runs a SECURITY DEFINER function",
            "CREATE FUNCTION public.on_note() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               AS $f$ BEGIN INSERT INTO public.drop_box SELECT v FROM public.secret; RETURN NEW; END $f$;
             CREATE TABLE public.notes (v text);
             CREATE TRIGGER on_note AFTER INSERT ON public.notes FOR EACH ROW EXECUTE FUNCTION public.on_note();
             GRANT INSERT ON public.notes TO PUBLIC;",
            "INSERT INTO public.notes VALUES ('x')",
        ),
    ];
    if major() >= 17 {
        // MAINTAIN lets its holder refresh, which runs the query as the owner.
        attacks.push((
            "a materialized view its grantees may refresh",
            "CREATE MATERIALIZED VIEW public.snapshot AS SELECT v FROM public.secret WITH NO DATA;
             GRANT SELECT, MAINTAIN ON public.snapshot TO PUBLIC;",
            "REFRESH MATERIALIZED VIEW public.snapshot; SELECT v FROM public.snapshot",
        ));
    }
    attacks
}

#[tokio::test]
async fn nothing_a_user_hands_over_lends_the_inheritors_rights() {
    let fx = hostile_fixture("hho_lend", true).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    let user = connect(&alice, &fx.db).await.expect("the user logs in");
    assert!(values(&user, "SELECT v FROM public.secret").await.is_err(), "the user cannot read the secret");
    for (what, plant, _) in attacks() {
        user.batch_execute(plant).await.unwrap_or_else(|e| panic!("the user plants {what}: {e:?}"));
    }
    let (leaked, saw) = secret_reached_mallory(&fx, "SELECT v FROM public.secret").await;
    assert!(!leaked, "mallory reads the secret directly: {saw}");
    drop(user);

    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
    assert!(fx.state(&alice).await.is_none(), "the user is gone");

    let mut lent = Vec::new();
    for (what, _, attack) in attacks() {
        let (leaked, saw) = secret_reached_mallory(&fx, attack).await;
        eprintln!("PostgreSQL {}: {what}: {}: {saw}", major(), if leaked { "LEAKED" } else { "held" });
        if leaked {
            lent.push(what);
        }
    }
    assert!(lent.is_empty(), "handed-over objects lent the inheritor's rights through: {lent:?}");

    // An operator shares them again, as the inheritor: what ran as the owner still does not
    // (SECURITY INVOKER, security_invoker views, disabled rules and triggers). Not a view's
    // INSTEAD rule nor a materialized view's refresh: SECURITY.md says so.
    let shared_again = [
        ("a SECURITY DEFINER function running any query", "GRANT EXECUTE ON FUNCTION public.peek(text) TO PUBLIC"),
        ("a SECURITY DEFINER procedure", "GRANT EXECUTE ON PROCEDURE public.copy_out() TO PUBLIC"),
        (
            "a SECURITY DEFINER SQL function that hides behind search_path",
            "GRANT EXECUTE ON FUNCTION public.plain() TO PUBLIC",
        ),
        ("a view", "GRANT SELECT ON public.window_on TO PUBLIC"),
        ("a view over a view", "GRANT SELECT ON public.outer_window, public.inner_window TO PUBLIC"),
        ("a table with a rule", "GRANT INSERT ON public.inbox TO PUBLIC"),
        (
            "a table whose trigger runs a SECURITY DEFINER function",
            "GRANT INSERT ON public.notes TO PUBLIC; GRANT EXECUTE ON FUNCTION public.on_note() TO PUBLIC",
        ),
    ];
    for (what, grant) in shared_again {
        as_superuser(&fx.db, &format!("SET ROLE {}; {grant}", q(&heir(&fx)))).await;
        let (_, _, attack) = attacks().into_iter().find(|(name, _, _)| *name == what).expect("an attack");
        let (leaked, saw) = secret_reached_mallory(&fx, attack).await;
        eprintln!("PostgreSQL {}: {what}, shared again: {}: {saw}", major(), if leaked { "LEAKED" } else { "held" });
        if leaked {
            lent.push(what);
        }
    }
    assert!(lent.is_empty(), "shared again, handed-over objects lent the inheritor's rights through: {lent:?}");
}

/// ANALYZE (autovacuum's, or a superuser's) evaluates a table's index expressions as the
/// table's owner: code the user left in one must not run as the inheritor.
#[tokio::test]
async fn code_a_user_left_in_an_index_does_not_run_as_the_inheritor() {
    let fx = hostile_fixture("hho_index", true).await;
    let alice = fx.user("alice");
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    let user = connect(&alice, &fx.db).await.expect("the user logs in");
    user.batch_execute(
        "CREATE FUNCTION public.copy_out() RETURNS int LANGUAGE plpgsql
           AS $f$ BEGIN INSERT INTO public.drop_box SELECT v FROM public.secret; RETURN 0; END $f$;
         CREATE FUNCTION public.key(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE
           AS $f$ BEGIN IF current_user <> session_user THEN PERFORM public.copy_out(); END IF; RETURN i; END $f$;
         CREATE TABLE public.ticks (i int);
         INSERT INTO public.ticks SELECT i FROM generate_series(1, 10) AS i;
         CREATE INDEX ticks_key ON public.ticks (public.key(i));",
    )
    .await
    .expect("the user plants an expression index");
    drop(user);
    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");

    // The ANALYZE autovacuum would run: the function acts when it runs as another role than
    // the session's, as ANALYZE runs it (as the table's owner).
    let superuser = connect(cluster().superuser(), &fx.db).await.unwrap();
    let analyzed = superuser.batch_execute("ANALYZE public.ticks").await;
    let (leaked, saw) = secret_reached_mallory(&fx, "SELECT 1").await;
    eprintln!("PostgreSQL {}: analyze {analyzed:?}: {saw}", major());
    assert!(!leaked, "the index's code ran as the inheritor: {saw}");
}

/// Whatever the inheritor owns after a hand-over, only the inheritor holds a privilege on
/// it, and no one may execute a routine it received.
#[tokio::test]
async fn a_hand_over_leaves_no_grant_on_what_the_inheritor_received() {
    let fx = hostile_fixture("hho_grants", true).await;
    let alice = fx.user("alice");
    let reader = q(&fx.reader());
    fx.start(fx.event("s1", &alice, &["writers"])).await.unwrap();
    let user = connect(&alice, &fx.db).await.expect("the user logs in");
    user.batch_execute(&format!(
        "CREATE TABLE public.orders (id int, total numeric);
         GRANT SELECT ON public.orders TO PUBLIC;
         GRANT UPDATE (total) ON public.orders TO {reader} WITH GRANT OPTION;
         CREATE SEQUENCE public.order_ids;
         GRANT USAGE ON SEQUENCE public.order_ids TO PUBLIC;
         CREATE VIEW public.big_orders AS SELECT * FROM public.orders WHERE total > 100;
         GRANT ALL ON public.big_orders TO {reader};
         CREATE FUNCTION public.twice(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $f$ SELECT i * 2 $f$;
         CREATE AGGREGATE public.total_of(numeric) (SFUNC = numeric_add, STYPE = numeric);
         CREATE TYPE public.mood AS ENUM ('ok', 'not ok');
         CREATE DOMAIN public.positive AS int CHECK (VALUE > 0);
         CREATE TYPE public.pair AS (a int, b int);
         GRANT USAGE ON TYPE public.mood TO {reader};
         SELECT pg_catalog.lo_create(0);",
    ))
    .await
    .expect("the user creates and grants");
    user.batch_execute(
        "DO $d$ BEGIN EXECUTE pg_catalog.format('GRANT SELECT ON LARGE OBJECT %s TO PUBLIC',
           (SELECT pg_catalog.max(oid) FROM pg_catalog.pg_largeobject_metadata WHERE lomowner = current_user::regrole)); END $d$",
    )
    .await
    .expect("the user grants its large object");
    drop(user);
    let out = fx.end(fx.event("s1", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");

    let superuser = connect(cluster().superuser(), &fx.db).await.unwrap();
    let rows = superuser
        .query(
            "WITH owned(what, owner, acl) AS (
               SELECT 'relation ' || c.oid::regclass, c.relowner, c.relacl FROM pg_class c
                UNION ALL
               SELECT 'column ' || a.attrelid::regclass || '.' || a.attname, c.relowner, a.attacl
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                UNION ALL
               SELECT 'routine ' || p.oid::regprocedure, p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))
                 FROM pg_proc p
                UNION ALL
               -- Arrays and the row types of tables take no privileges of their own.
               SELECT 'type ' || t.oid::regtype, t.typowner, coalesce(t.typacl, acldefault('T', t.typowner))
                 FROM pg_type t
                WHERE NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
                  AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
                UNION ALL
               SELECT 'large object ' || l.oid, l.lomowner, l.lomacl FROM pg_largeobject_metadata l)
             SELECT o.what || ': ' || x.privilege_type || ' to ' ||
                    CASE x.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END
               FROM owned o, aclexplode(o.acl) x
              WHERE o.owner = $1::text::regrole
                AND (x.grantee <> o.owner OR o.what LIKE 'routine %')
              ORDER BY 1",
            &[&heir(&fx)],
        )
        .await
        .unwrap();
    let granted: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert!(granted.is_empty(), "privileges left on what the inheritor received: {granted:#?}");
    let owned: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relowner = $1::text::regrole AND relname IN ('orders', 'big_orders')",
            &[&heir(&fx)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 2, "the inheritor owns what it received");
}

/// Changing a routine's owner needs the new owner's `CREATE` on its schema: without it, the
/// end locks the user instead and names the `GRANT`, in the end's database and in another.
#[tokio::test]
async fn a_routine_in_a_schema_the_inheritor_may_not_create_in_names_the_missing_grant() {
    let fx = hostile_fixture("hho_create", false).await;
    let alice = fx.user("alice");
    let heir = heir(&fx);
    for (session, db) in [("s1", fx.db.clone()), ("s2", other_db(&fx))] {
        fx.start(fx.event(session, &alice, &["writers"])).await.unwrap();
        let user = connect(&alice, &db).await.expect("the user logs in");
        user.batch_execute(&format!(
            "CREATE FUNCTION public.f_{session}() RETURNS int LANGUAGE sql AS $f$ SELECT 1 $f$;
             CREATE TABLE public.t_{session} (i int);"
        ))
        .await
        .expect("the user creates a function");
        drop(user);

        let out = fx.end(fx.event(session, &alice, &["writers"])).await.unwrap();
        assert_eq!(out.status, EndStatus::Deactivated, "{out:?}");
        let blocked = out.drop_blocked.clone().expect("drop_blocked");
        assert_eq!(blocked.kind, DropBlockedKind::AdminLacksPrivilege, "{blocked:?}");
        assert_eq!(blocked.db_name, db, "{blocked:?}");
        let grant = format!("GRANT CREATE ON SCHEMA {} TO {}", q("public"), q(&heir));
        assert_eq!(blocked.fix.as_deref(), Some(grant.as_str()), "{blocked:?}");
        let reason = out.reason.clone().unwrap();
        assert!(reason.contains(&grant) && reason.contains("CREATE"), "{reason}");
        let state = fx.state(&alice).await.expect("kept");
        assert!(!state.login, "locked");
        as_superuser(&db, &grant).await;
    }
    fx.start(fx.event("s3", &alice, &["writers"])).await.unwrap();
    let out = fx.end(fx.event("s3", &alice, &["writers"])).await.unwrap();
    assert_eq!(out.status, EndStatus::Dropped, "{out:?}");
}
