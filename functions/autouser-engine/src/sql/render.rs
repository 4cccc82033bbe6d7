//! The plan's steps as SQL: one step ([`render`]), or a transaction's steps as a connection
//! runs them ([`Renderer`]: a creator's statements through its function); and the `DO` blocks
//! of the steps that take more than one statement (the ledger on the server's clock, disarming
//! what a user owns, recording ended sessions in the managed group's comment).

use autouser_policy::ledger::{ENDED_SESSIONS_HEADER, GROUP_ENDED_SESSIONS_KEPT, STARTED_AT_SERVER_CLOCK};
use autouser_policy::permissions::{
    ObjectBatch, ObjectKind, ObjectRef, ROUTINE_PRIVILEGES, SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES,
};
use autouser_policy::plan::Step;
use std::collections::BTreeSet;

use super::checks::{guard, refuse_if_ended};
use super::creators::{call_creator_function, prepare_creator};
use super::quote::{quote_ident, quote_idents, quote_literal};

/// The SQL of one plan step, its checks as `DO` blocks.
pub fn render(step: &Step) -> String {
    render_with(step, false)
}

/// The SQL of one plan step, its checks as calls of their functions when `check_functions`
/// (see [`Check`](super::Check)).
fn render_with(step: &Step, check_functions: bool) -> String {
    match step {
        Step::CreateGroup { group } => format!("CREATE ROLE {} NOLOGIN", quote_ident(group)),
        Step::CreateUser { user } => format!("CREATE ROLE {} LOGIN", quote_ident(user)),
        // `roles` is never empty.
        Step::GrantRoles { roles, user } => format!("GRANT {} TO {}", quote_idents(roles), quote_ident(user)),
        // `roles` is never empty.
        Step::RevokeRoles { roles, user } => {
            let roles: Vec<String> = roles.iter().map(|role| quote_ident(role)).collect();
            format!("REVOKE {} FROM {}", roles.join(", "), quote_ident(user))
        }
        Step::SetLogin { user, login } => {
            format!("ALTER ROLE {} WITH {}", quote_ident(user), if *login { "LOGIN" } else { "NOLOGIN" })
        }
        Step::ClearPassword { user } => format!("ALTER ROLE {} PASSWORD NULL", quote_ident(user)),
        Step::ResetSettings { user, database: None } => format!("ALTER ROLE {} RESET ALL", quote_ident(user)),
        Step::ResetSettings { user, database: Some(database) } => {
            format!("ALTER ROLE {} IN DATABASE {} RESET ALL", quote_ident(user), quote_ident(database))
        }
        Step::Guard { user, expected_ledger } => guard(user, expected_ledger.as_deref()).render(check_functions),
        Step::WriteLedger { user, ledger } => write_ledger(user, ledger),
        Step::DropUser { user } => format!("DROP ROLE {}", quote_ident(user)),
        Step::ReassignOwned { user, inheritor } => {
            format!("REASSIGN OWNED BY {} TO {}", quote_ident(user), quote_ident(inheritor))
        }
        Step::DropOwned { user } => format!("DROP OWNED BY {}", quote_ident(user)),
        Step::DisarmOwned { user } => disarm_owned(user),
        Step::ReserveName { user } => reserve_name(user),
        Step::RecordEnded { group, user, sessions, window_secs } => record_ended(group, user, sessions, *window_secs),
        Step::RefuseIfEnded { group, user, session } => refuse_if_ended(group, user, session).render(check_functions),
        Step::GrantObjects { batch, user } => {
            format!("GRANT {} TO {}", privilege_on_objects(batch), quote_ident(user))
        }
        Step::RevokeObjects { batch, user } => {
            format!("REVOKE {} FROM {}", privilege_on_objects(batch), quote_ident(user))
        }
        Step::GrantSchemaUsage { schemas, user } => {
            format!("GRANT USAGE ON SCHEMA {} TO {}", quote_idents(schemas), quote_ident(user))
        }
        Step::RevokeSchemaUsage { schemas, user } => {
            format!("REVOKE USAGE ON SCHEMA {} FROM {}", quote_idents(schemas), quote_ident(user))
        }
        Step::SetRole { role: Some(role) } => format!("SET LOCAL ROLE {}", quote_ident(role)),
        Step::SetRole { role: None } => "SET LOCAL ROLE NONE".to_string(),
        Step::PrepareCreator { creator, roles, schema } => prepare_creator(creator, roles, schema),
    }
}

/// How a connection reaches the statements of a creator role (`creator_roles`). The plan marks
/// them with [`Step::SetRole`], and `SET LOCAL ROLE <creator>` works everywhere; but on
/// PostgreSQL 16+ the server checks it by walking every role the admin may SET to, which reads
/// every creator's membership in each of its users (the whole population, after any change to
/// `pg_auth_members`). A `SECURITY DEFINER` function owned by the creator runs the same
/// statement as the creator, and calling it checks only the admin's `EXECUTE`, which walks
/// nothing.
///
/// [`Step::PrepareCreator`] makes one per creator, once per database, in the schema named as
/// the managed group that the admin owns. `Renderer` renders a creator's statements as calls of
/// its function, and as `SET LOCAL ROLE` for the creators in `without_function`: those whose
/// function the connection saw missing (see [`crate::pg::AdminConnection`]).
pub struct Renderer<'f> {
    schema: &'f str,
    without_function: &'f CreatorsWithoutFunction,
    /// Whether the connection has made the checks as functions ([`super::make_check_functions`]).
    pub(super) check_functions: bool,
    /// The creator whose function runs the steps being rendered.
    through: Option<String>,
}

/// The creators whose statements a connection runs after `SET ROLE`: see [`Renderer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CreatorsWithoutFunction {
    /// None: every creator's function is called (the default, until a transaction sees
    /// otherwise; a call of a missing function fails its transaction, which a one-round-trip
    /// start takes as "read first").
    #[default]
    None,
    /// These.
    Some(BTreeSet<String>),
    /// All: the functions cannot be made in this database (see preflight's
    /// `creator_functions`).
    All,
}

impl CreatorsWithoutFunction {
    fn includes(&self, creator: &str) -> bool {
        match self {
            CreatorsWithoutFunction::None => false,
            CreatorsWithoutFunction::Some(creators) => creators.contains(creator),
            CreatorsWithoutFunction::All => true,
        }
    }
}

impl<'f> Renderer<'f> {
    /// A renderer for a connection to a database whose creators' functions are in `schema`,
    /// but for `without_function`.
    pub fn new(schema: &'f str, without_function: &'f CreatorsWithoutFunction) -> Self {
        Renderer { schema, without_function, check_functions: false, through: None }
    }

    /// The same, on a connection that has made the checks as functions
    /// ([`super::make_check_functions`]) when `check_functions`.
    pub fn with_check_functions(self, check_functions: bool) -> Self {
        Renderer { check_functions, ..self }
    }

    /// The SQL of `step`, after the steps rendered before it. `None` for a [`Step::SetRole`] that
    /// the creator's function makes needless: the steps up to the next `SetRole` are calls of it.
    pub fn render(&mut self, step: &Step) -> Option<String> {
        match step {
            Step::SetRole { role: Some(role) } => {
                self.through = (!self.without_function.includes(role)).then(|| role.clone());
                if self.through.is_some() {
                    return None;
                }
            }
            Step::SetRole { role: None } if self.through.take().is_some() => return None,
            _ => {}
        }
        let text = render_with(step, self.check_functions);
        Some(match &self.through {
            Some(creator) => call_creator_function(self.schema, creator, &text),
            None => text,
        })
    }
}

/// `SELECT ON TABLE "s"."a", "s"."b"`: one statement for a whole batch. The privilege is one
/// of the known keywords (checked here, so no other text reaches the statement).
fn privilege_on_objects(batch: &ObjectBatch) -> String {
    let privilege = [TABLE_PRIVILEGES, SEQUENCE_PRIVILEGES, ROUTINE_PRIVILEGES, &["ALL"]]
        .concat()
        .into_iter()
        .find(|known| *known == batch.privilege)
        .unwrap_or_else(|| panic!("privilege {:?} was not validated", batch.privilege));
    let objects: Vec<String> = batch.objects.iter().map(|object| object_name(batch.kind, object)).collect();
    format!("{privilege} ON {} {}", batch.kind.sql_keyword(), objects.join(", "))
}

/// `"schema"."name"`, and for routines the identity arguments as the server printed them
/// (`pg_get_function_identity_arguments` quotes names and types itself).
pub fn object_name(kind: ObjectKind, object: &ObjectRef) -> String {
    let name = format!("{}.{}", quote_ident(&object.schema), quote_ident(&object.name));
    match (kind, &object.arguments) {
        (ObjectKind::Function | ObjectKind::Procedure, Some(arguments)) => format!("{name}({arguments})"),
        _ => name,
    }
}

/// `COMMENT ON ROLE` with the ledger. A ledger planned without the server's clock (its new
/// session's `started_at` is [`STARTED_AT_SERVER_CLOCK`]) gets the transaction's start time
/// from the server instead, so that a caller's clock never dates a session.
fn write_ledger(user: &str, ledger: &str) -> String {
    let placeholder = format!("\"started_at\":{STARTED_AT_SERVER_CLOCK}");
    if !ledger.contains(&placeholder) {
        return format!("COMMENT ON ROLE {} IS {}", quote_ident(user), quote_literal(ledger));
    }
    let body = format!(
        "BEGIN \
           EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', {name}, \
             pg_catalog.replace({ledger}, {placeholder}, \
               '\"started_at\":'::pg_catalog.text || ({SERVER_NOW})::pg_catalog.text)); \
         END",
        name = quote_literal(user),
        ledger = quote_literal(ledger),
        placeholder = quote_literal(&placeholder),
    );
    format!("DO {}", quote_literal(&body))
}

/// The transaction's start on the server's clock, in Unix seconds.
const SERVER_NOW: &str = "pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.now()))::bigint";

/// See [`Step::DisarmOwned`]: one `DO` block over what `user` owns in the connected database
/// (another session's temporary objects left out: they go with that session). Objects are
/// named by the server (`regprocedure`, `regclass`, `regtype`, `regnamespace`, `%I`), grantees
/// through `quote_ident`, and every privilege is revoked `CASCADE`, so that grants made with a
/// grant option the user gave go too. Its SQL resolves only to `pg_catalog`.
fn disarm_owned(user: &str) -> String {
    let body = format!(
        r#"DECLARE
  owner_oid pg_catalog.oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = {name}::pg_catalog.name);
  item record;
BEGIN
  -- SECURITY DEFINER routines run as their owner: from now on, as their caller.
  FOR item IN SELECT p.oid::pg_catalog.regprocedure AS routine
                FROM pg_catalog.pg_proc p
               WHERE p.proowner = owner_oid AND p.prosecdef
                 AND NOT pg_catalog.pg_is_other_temp_schema(p.pronamespace) LOOP
    EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY INVOKER', item.routine);
  END LOOP;
  -- Views read their relations with their owner's privileges: from now on, their reader's.
  -- Tables' triggers run as whoever writes them (a cascade from a foreign key: their owner).
  FOR item IN SELECT c.oid::pg_catalog.regclass AS relation, c.relkind = 'v'::pg_catalog."char" AS is_view
                FROM pg_catalog.pg_class c
               WHERE c.relowner = owner_oid
                 AND (c.relkind = 'v'::pg_catalog."char"
                      OR (c.relhastriggers AND c.relkind = ANY ('{{r,p,f}}'::pg_catalog."char"[])))
                 AND NOT pg_catalog.pg_is_other_temp_schema(c.relnamespace) LOOP
    IF item.is_view THEN
      EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true)', item.relation);
    ELSE
      EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER USER', item.relation);
    END IF;
  END LOOP;
  -- Rules run with the table owner's privileges (a view's other than its SELECT, too: those
  -- cannot be disabled, and no one but the owner may write the view once it is revoked below).
  FOR item IN SELECT r.ev_class::pg_catalog.regclass AS relation, r.rulename
                FROM pg_catalog.pg_rewrite r
                JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
               WHERE c.relowner = owner_oid AND c.relkind = ANY ('{{r,p,f}}'::pg_catalog."char"[])
                 AND r.ev_enabled <> 'D'::pg_catalog."char"
                 AND NOT pg_catalog.pg_is_other_temp_schema(c.relnamespace) LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE RULE %I', item.relation, item.rulename);
  END LOOP;
  -- Every privilege on the user's objects, from every role but the owner; on routines, from
  -- the owner too (default privileges included: PUBLIC's EXECUTE and USAGE on types).
  FOR item IN
    SELECT o.kind, o.name,
           pg_catalog.string_agg(DISTINCT CASE WHEN g.grantee = 0::pg_catalog.oid THEN 'PUBLIC'::pg_catalog.text
                                          ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)::pg_catalog.text)
                                          END, ', '::pg_catalog.text) AS grantees
      FROM (SELECT 'ROUTINE'::pg_catalog.text AS kind, p.oid::pg_catalog.regprocedure::pg_catalog.text AS name,
                   COALESCE(p.proacl, pg_catalog.acldefault('f'::pg_catalog."char", p.proowner)) AS acl,
                   true AS owner_too
              FROM pg_catalog.pg_proc p
             WHERE p.proowner = owner_oid AND NOT pg_catalog.pg_is_other_temp_schema(p.pronamespace)
            UNION ALL
            SELECT CASE WHEN c.relkind = 'S'::pg_catalog."char" THEN 'SEQUENCE'::pg_catalog.text
                        ELSE 'TABLE'::pg_catalog.text END,
                   c.oid::pg_catalog.regclass::pg_catalog.text, acl.acl, false
              FROM pg_catalog.pg_class c
             CROSS JOIN LATERAL (SELECT c.relacl
                                 UNION ALL
                                 -- A table's REVOKE revokes its columns' privileges too.
                                 SELECT a.attacl FROM pg_catalog.pg_attribute a
                                  WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL) AS acl(acl)
             WHERE c.relowner = owner_oid AND c.relkind = ANY ('{{r,p,v,m,S,f}}'::pg_catalog."char"[])
               AND NOT pg_catalog.pg_is_other_temp_schema(c.relnamespace)
            UNION ALL
            SELECT 'SCHEMA'::pg_catalog.text, n.oid::pg_catalog.regnamespace::pg_catalog.text, n.nspacl, false
              FROM pg_catalog.pg_namespace n
             WHERE n.nspowner = owner_oid
            UNION ALL
            -- Types that take privileges of their own: not arrays, multiranges or the row
            -- types of relations other than composite types.
            SELECT 'TYPE'::pg_catalog.text, t.oid::pg_catalog.regtype::pg_catalog.text,
                   COALESCE(t.typacl, pg_catalog.acldefault('T'::pg_catalog."char", t.typowner)), false
              FROM pg_catalog.pg_type t
             WHERE t.typowner = owner_oid AND t.typtype <> 'm'::pg_catalog."char"
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
               AND (t.typrelid = 0::pg_catalog.oid
                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                WHERE c.oid = t.typrelid AND c.relkind = 'c'::pg_catalog."char"))
               AND NOT pg_catalog.pg_is_other_temp_schema(t.typnamespace)
            UNION ALL
            SELECT 'LARGE OBJECT'::pg_catalog.text, l.oid::pg_catalog.text, l.lomacl, false
              FROM pg_catalog.pg_largeobject_metadata l
             WHERE l.lomowner = owner_oid
            UNION ALL
            SELECT 'FOREIGN SERVER'::pg_catalog.text, pg_catalog.quote_ident(s.srvname::pg_catalog.text), s.srvacl, false
              FROM pg_catalog.pg_foreign_server s
             WHERE s.srvowner = owner_oid) AS o
     CROSS JOIN LATERAL pg_catalog.aclexplode(o.acl) AS g
     WHERE g.grantee <> owner_oid OR o.owner_too
     GROUP BY o.kind, o.name
  LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s CASCADE', item.kind, item.name, item.grantees);
  END LOOP;
END"#,
        name = quote_literal(user),
    );
    format!("DO {}", quote_literal(&body))
}

fn reserve_name(user: &str) -> String {
    format!("CREATE ROLE {user} NOLOGIN; DROP ROLE {user}", user = quote_ident(user))
}

/// The role whose name serialises the writers of the managed group's comment. It is created
/// and dropped in the writer's transaction, so it never exists for anyone else: a second
/// writer's `CREATE ROLE` waits on the name's unique index until the first commits (then goes
/// on, the name being free again). Unlike the comment's own lock (taken by `COMMENT ON`, too
/// late to read what it protects), this lock comes before the read, on every version and
/// across databases (advisory locks are per database). The name is reserved
/// ([`autouser_policy::naming::validate_db_user`]).
pub const ENDED_SESSIONS_LOCK_ROLE: &str = autouser_policy::naming::ENDED_SESSIONS_LOCK_ROLE;

/// The line of the managed group's comment that records `session` of `user` as ended, up to
/// its time; `user` and `session` are SQL expressions of type text.
fn ended_line_prefix(user: &str, session: &str) -> String {
    format!(
        "pg_catalog.to_json(({user})::text)::text || pg_catalog.chr(9) || pg_catalog.to_json(({session})::text)::text \
         || pg_catalog.chr(9)"
    )
}

/// See [`Step::RecordEnded`] and [`ENDED_SESSIONS_HEADER`]. In one `DO` block: take the lock
/// ([`ENDED_SESSIONS_LOCK_ROLE`]), read the comment as committed now (each statement of the
/// block sees what committed before it started), keep its lines younger than the window and
/// not about these sessions, add these sessions at the server's time, keep the newest
/// [`GROUP_ENDED_SESSIONS_KEPT`], write it. A comment that is not ours is replaced.
fn record_ended(group: &str, user: &str, sessions: &[String], window_secs: u64) -> String {
    let sessions: Vec<String> = sessions.iter().map(|session| quote_literal(session)).collect();
    let lock = quote_ident(ENDED_SESSIONS_LOCK_ROLE);
    let body = format!(
        "DECLARE \
           header constant text := {header}; \
           current_comment text; \
           kept text; \
         BEGIN \
           EXECUTE {create_lock}; \
           EXECUTE {drop_lock}; \
           SELECT d.description INTO current_comment \
             FROM pg_catalog.pg_roles g \
             JOIN pg_catalog.pg_shdescription d \
               ON d.objoid = g.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid \
            WHERE g.rolname = {group_name}; \
           IF current_comment IS NULL OR current_comment NOT LIKE header || pg_catalog.chr(10) || '%' THEN \
             current_comment := header; \
           END IF; \
           WITH added AS ( \
             SELECT {new_prefix} || ({SERVER_NOW})::pg_catalog.text AS line, {SERVER_NOW} AS ended_at \
               FROM pg_catalog.unnest(ARRAY[{sessions}]::text[]) AS s(session) \
           ), earlier AS ( \
             SELECT l.line, pg_catalog.split_part(l.line, pg_catalog.chr(9), 3)::bigint AS ended_at \
               FROM pg_catalog.unnest(pg_catalog.string_to_array(current_comment, pg_catalog.chr(10))) \
                    WITH ORDINALITY AS l(line, n) \
              WHERE l.n > 1 \
                AND pg_catalog.cardinality(pg_catalog.string_to_array(l.line, pg_catalog.chr(9))) = 3 \
                AND pg_catalog.split_part(l.line, pg_catalog.chr(9), 3) ~ '^[0-9]{{1,18}}$' \
           ), merged AS ( \
             SELECT line, ended_at FROM added \
             UNION ALL \
             SELECT e.line, e.ended_at FROM earlier e \
              WHERE e.ended_at > {SERVER_NOW} - {window_secs} \
                AND NOT EXISTS (SELECT 1 FROM added a \
                                 WHERE pg_catalog.split_part(a.line, pg_catalog.chr(9), 1) \
                                         = pg_catalog.split_part(e.line, pg_catalog.chr(9), 1) \
                                   AND pg_catalog.split_part(a.line, pg_catalog.chr(9), 2) \
                                         = pg_catalog.split_part(e.line, pg_catalog.chr(9), 2)) \
           ) \
           SELECT pg_catalog.string_agg(m.line, pg_catalog.chr(10) ORDER BY m.ended_at DESC, m.line) INTO kept \
             FROM (SELECT line, ended_at FROM merged ORDER BY ended_at DESC, line LIMIT {kept_max}) AS m; \
           EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', {group_name}, \
             header || pg_catalog.chr(10) || kept || pg_catalog.chr(10)); \
         END",
        header = quote_literal(ENDED_SESSIONS_HEADER),
        create_lock = quote_literal(&format!("CREATE ROLE {lock} NOLOGIN")),
        drop_lock = quote_literal(&format!("DROP ROLE {lock}")),
        group_name = quote_literal(group),
        new_prefix = ended_line_prefix(&quote_literal(user), "s.session"),
        sessions = sessions.join(", "),
        kept_max = GROUP_ENDED_SESSIONS_KEPT,
    );
    format!("DO {}", quote_literal(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::READ_STATE;

    #[test]
    fn grant_quotes_both_names() {
        let sql = render(&Step::GrantRoles { roles: vec!["re\"ader".into()], user: "al;ice".into() });
        assert_eq!(sql, r#"GRANT "re""ader" TO "al;ice""#);
    }

    #[test]
    fn object_batches_are_one_statement_with_every_name_quoted() {
        let batch = ObjectBatch {
            kind: ObjectKind::Table,
            privilege: "SELECT".into(),
            objects: vec![
                ObjectRef { schema: "public".into(), name: "Weird Table".into(), arguments: None },
                ObjectRef { schema: "a\"b".into(), name: "t".into(), arguments: None },
            ],
        };
        assert_eq!(
            render(&Step::GrantObjects { batch, user: "al\"ice".into() }),
            r#"GRANT SELECT ON TABLE "public"."Weird Table", "a""b"."t" TO "al""ice""#
        );
        let batch = ObjectBatch {
            kind: ObjectKind::Procedure,
            privilege: "ALL".into(),
            objects: vec![ObjectRef { schema: "s".into(), name: "p".into(), arguments: Some("x integer".into()) }],
        };
        assert_eq!(
            render(&Step::RevokeObjects { batch, user: "u".into() }),
            r#"REVOKE ALL ON PROCEDURE "s"."p"(x integer) FROM "u""#
        );
        let schemas = vec!["public".to_string(), "x y".to_string()];
        assert_eq!(
            render(&Step::GrantSchemaUsage { schemas, user: "u".into() }),
            r#"GRANT USAGE ON SCHEMA "public", "x y" TO "u""#
        );
    }

    #[test]
    #[should_panic(expected = "was not validated")]
    fn unknown_privileges_never_reach_sql() {
        let batch = ObjectBatch { kind: ObjectKind::Table, privilege: "SELECT; DROP".into(), objects: vec![] };
        render(&Step::GrantObjects { batch, user: "u".into() });
    }

    /// A creator's statements are calls of its function in the group's schema, with the `SET
    /// LOCAL ROLE` steps left out; for a creator the connection saw without one, or for all
    /// where the functions cannot be made, they stay as they are. The statement's own quoting
    /// survives the call's.
    #[test]
    fn a_creator_s_statements_are_calls_of_its_function_unless_it_has_none() {
        let steps = [
            Step::CreateGroup { group: "grp".into() },
            Step::SetRole { role: Some("grp-creator-1".into()) },
            Step::CreateUser { user: "o'neil".into() },
            Step::GrantRoles { roles: vec!["grp".into()], user: "o'neil".into() },
            Step::SetRole { role: None },
            Step::GrantSchemaUsage { schemas: vec!["s".into()], user: "o'neil".into() },
        ];
        let rendered = |without: CreatorsWithoutFunction| -> Vec<String> {
            let mut renderer = Renderer::new("g\"rp", &without);
            steps.iter().filter_map(|step| renderer.render(step)).collect()
        };
        let through_function = [
            "CREATE ROLE \"grp\" NOLOGIN",
            "SELECT \"g\"\"rp\".\"grp-creator-1\"('CREATE ROLE \"o''neil\" LOGIN')",
            "SELECT \"g\"\"rp\".\"grp-creator-1\"('GRANT \"grp\" TO \"o''neil\"')",
            "GRANT USAGE ON SCHEMA \"s\" TO \"o'neil\"",
        ];
        assert_eq!(rendered(CreatorsWithoutFunction::None), through_function);
        let other = CreatorsWithoutFunction::Some(BTreeSet::from(["grp-creator-2".to_string()]));
        assert_eq!(rendered(other), through_function);
        let with_set_role = [
            "CREATE ROLE \"grp\" NOLOGIN",
            "SET LOCAL ROLE \"grp-creator-1\"",
            "CREATE ROLE \"o'neil\" LOGIN",
            "GRANT \"grp\" TO \"o'neil\"",
            "SET LOCAL ROLE NONE",
            "GRANT USAGE ON SCHEMA \"s\" TO \"o'neil\"",
        ];
        let this_one = CreatorsWithoutFunction::Some(BTreeSet::from(["grp-creator-1".to_string()]));
        assert_eq!(rendered(this_one), with_set_role);
        assert_eq!(rendered(CreatorsWithoutFunction::All), with_set_role);
    }

    #[test]
    fn a_ledger_planned_without_the_servers_clock_gets_it_from_the_statement() {
        let plain = render(&Step::WriteLedger { user: "u".into(), ledger: r#"{"started_at":5}"#.into() });
        assert_eq!(plain, r#"COMMENT ON ROLE "u" IS '{"started_at":5}'"#);
        let ledger = format!(r#"{{"sessions":{{"s1":{{"started_at":{STARTED_AT_SERVER_CLOCK}}}}}}}"#);
        let stamped = render(&Step::WriteLedger { user: "o'neil".into(), ledger });
        assert!(stamped.starts_with("DO '"), "{stamped}");
        assert!(stamped.contains("pg_catalog.now()"), "{stamped}");
        assert!(stamped.contains("o''''neil"), "the name is a literal inside the block's literal: {stamped}");
    }

    #[test]
    fn the_ended_sessions_statements_quote_every_name_and_search_what_read_state_searches() {
        let record = render(&Step::RecordEnded {
            group: "g'rp".into(),
            user: "al'ice".into(),
            sessions: vec!["s'1".into(), "s2".into()],
            window_secs: 60,
        });
        assert!(record.starts_with("DO '"), "{record}");
        assert!(record.contains("s''''1"), "{record}");
        assert!(record.contains(ENDED_SESSIONS_LOCK_ROLE), "{record}");
        let refuse = render(&Step::RefuseIfEnded { group: "g".into(), user: "u".into(), session: "s".into() });
        assert!(refuse.contains("serialization_failure"), "{refuse}");
        // READ_STATE spells the header out; it must be the one the writer writes.
        assert!(READ_STATE.contains(&format!("'{ENDED_SESSIONS_HEADER}'")));
        assert_eq!(
            render(&Step::ReserveName { user: "a\"b".into() }),
            r#"CREATE ROLE "a""b" NOLOGIN; DROP ROLE "a""b""#
        );
    }
}
