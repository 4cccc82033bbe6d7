//! The checks a transaction runs among its statements ([`Check`]), which fail it when it must
//! not go on: a new user's, the walk of the roles granted, the ledger's guard, the session not
//! ended, and the user's lock as a function. Each runs as a `DO` block, or as a call of its
//! function in the connection's temporary schema ([`make_check_functions`]). And the message
//! of the one-round-trip start: checks, the lock and the steps ([`locked_transaction`]).

use autouser_policy::ledger::ENDED_SESSIONS_HEADER;
use autouser_policy::plan::{RoleGuard, Step};

use super::quote::quote_literal;
use super::render::Renderer;
use super::state::reached_roles;
use super::transaction::LOCK_USER;

/// A check a transaction runs among its statements, which fails the transaction (with its
/// own SQLSTATE and message) when it must not go on: a PL/pgSQL body over named parameters.
///
/// PL/pgSQL plans the queries of a `DO` block at every run, and some of these (the walk of
/// [`DB_ROLES_CHECK`], the lock's views) cost more to plan than everything else a warm call
/// runs. A function's plans are kept for the session. So a connection makes the checks once, as
/// functions in its own temporary schema ([`make_check_functions`]), and calls them; until it
/// has (its first call), or where it cannot (no `TEMP` on the database), it runs the same
/// body as a `DO` block with the values declared ([`CheckCall::render`]).
pub struct Check {
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
    returns: &'static str,
    body: &'static str,
}

/// A [`Check`] with its arguments, as SQL literals in the order of its parameters.
pub struct CheckCall {
    check: &'static Check,
    args: Vec<String>,
}

impl CheckCall {
    /// The check as a call of its function in the connection's temporary schema, or, without
    /// `functions`, as a `DO` block.
    pub fn render(&self, functions: bool) -> String {
        let values = self.check.params.iter().zip(&self.args);
        if functions {
            let args: Vec<String> = values.map(|((_, ty), arg)| format!("({arg})::{ty}")).collect();
            return format!("SELECT pg_temp.{}({})", self.check.name, args.join(", "));
        }
        let declarations: String = values.map(|((name, ty), arg)| format!("{name} {ty} := {arg}; ")).collect();
        format!("DO {}", quote_literal(&format!("DECLARE {declarations}{}", self.check.body)))
    }
}

/// The checks a connection makes as functions, the last made last ([`CHECK_FUNCTIONS_MADE`]).
const CHECKS: [&Check; 5] = [&NEW_USER_CHECK, &DB_ROLES_CHECK, &REFUSE_IF_ENDED, &LOCK_USER_FUNCTION, &GUARD];

/// The name of the function [`make_check_functions`] makes last: `READ_STATE` looks for it to
/// tell whether the connection's server session has them all.
pub const CHECK_FUNCTIONS_MADE: &str = "autouser_guard_v1";

/// Makes the [`CHECKS`] as functions in the connection's temporary schema, in one implicit
/// transaction: owned by the admin, run as the caller (the admin), the `search_path` pinned,
/// and reachable by no other session. Needs `TEMP` on the database (`PUBLIC` has it by
/// default): without it the checks stay `DO` blocks.
pub fn make_check_functions() -> String {
    CHECKS
        .iter()
        .map(|check| {
            let params: Vec<String> = check.params.iter().map(|(name, ty)| format!("{name} {ty}")).collect();
            format!(
                "CREATE OR REPLACE FUNCTION pg_temp.{}({}) RETURNS {} LANGUAGE plpgsql \
                 SET search_path = pg_catalog, pg_temp AS {}",
                check.name,
                params.join(", "),
                check.returns,
                quote_literal(check.body)
            )
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

/// The one-round-trip start of a new user `user`: [`new_user_check`], the user's lock,
/// `roles_check` ([`db_roles_check`]) and `steps`, as one simple-query message. PostgreSQL
/// runs the statements of one such message as one implicit transaction: committed after the
/// last, rolled back entirely at the first error (the rest do not run). The key is an
/// integer, so the lock needs no bind parameter. The lock comes early in the text, which is
/// what `pg_stat_activity` shows of a waiting call (its first 1,024 bytes by default).
pub fn locked_transaction(
    user: &str,
    lock_key: i64,
    roles_check: &CheckCall,
    steps: &[Step],
    mut renderer: Renderer,
) -> String {
    let functions = renderer.check_functions;
    let lock = match functions {
        true => CheckCall { check: &LOCK_USER_FUNCTION, args: vec![format!("({lock_key})")] }.render(true),
        false => LOCK_USER.replace("$1::bigint", &format!("({lock_key})::bigint")),
    };
    let mut text = format!("{};\n{lock};\n{}", new_user_check(user).render(functions), roles_check.render(functions));
    for sql in steps.iter().filter_map(|step| renderer.render(step)) {
        text.push_str(";\n");
        text.push_str(&sql);
    }
    text
}

/// A `DO` that fails unless the one-round-trip start of `user` may go on, before it queues for
/// the user's lock:
/// - SQLSTATE 42501 when the admin is a superuser now. That start plans without reading which
///   roles are superusers, which is safe only because PostgreSQL refuses a superuser role to
///   any other admin; the server's `is_superuser` report at login can be stale on a pooled
///   connection (the admin promoted since), so the transaction checks the catalog.
/// - SQLSTATE 42710 when `user` exists: a returning user on a connection that has not seen
///   her. Without this check the attempt would wait its turn for her lock only to fail at
///   `CREATE ROLE`, and then wait again in the read path.
///
/// On either failure the start takes the read path. A user created after this check makes the
/// `CREATE ROLE` fail, as before.
fn new_user_check(user: &str) -> CheckCall {
    CheckCall { check: &NEW_USER_CHECK, args: vec![quote_literal(user)] }
}

const NEW_USER_CHECK: Check = Check {
    name: "autouser_new_user_check_v1",
    params: &[("p_user", "text")],
    returns: "void",
    body: "BEGIN \
             IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN \
               RAISE EXCEPTION 'pg-autouser: the admin is a superuser: a start reads the superuser roles first' \
                 USING ERRCODE = 'insufficient_privilege'; \
             END IF; \
             IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = p_user) THEN \
               RAISE EXCEPTION 'pg-autouser: role % exists: a start reads its state first', p_user \
                 USING ERRCODE = 'duplicate_object'; \
             END IF; \
           END",
};

/// A `DO` that fails with SQLSTATE 42501 when a start would refuse one of `roles` (see
/// [`autouser_policy::plan::db_role_refusal`]): the one-round-trip start of a new user reads
/// nothing, so it checks the catalog in the same message, before its `GRANT`. The same walk as
/// `READ_STATE`'s ([`reached_roles!`]) and the same rules; on a failure the start takes the read
/// path, whose plan refuses the role and says why.
pub fn db_roles_check(roles: &[String], guard: RoleGuard<'_>) -> CheckCall {
    let array = |names: Vec<String>| format!("ARRAY[{}]::text[]", names.join(", "));
    CheckCall {
        check: &DB_ROLES_CHECK,
        args: vec![
            array(roles.iter().map(|role| quote_literal(role)).collect()),
            quote_literal(guard.managed_group),
            array(guard.allowed_predefined.iter().map(|role| quote_literal(role)).collect()),
            quote_literal(guard.object_inheritor),
        ],
    }
}

const DB_ROLES_CHECK: Check = Check {
    name: "autouser_db_roles_check_v1",
    params: &[("v_wanted", "text[]"), ("v_group", "text"), ("v_allowed", "text[]"), ("v_inheritor", "text")],
    returns: "void",
    body: concat!(
        "BEGIN \
           IF EXISTS (SELECT 1 FROM (",
        reached_roles!("v_wanted", "v_group"),
        ") AS reached \
                       WHERE (reached.facts <> ''::text \
                              AND NOT (reached.facts = 'predefined'::text AND reached.role = ANY (v_allowed))) \
                          OR reached.role = v_inheritor OR reached.role = v_group \
                          OR pg_catalog.starts_with(reached.role, v_group || '-creator-'::text)) THEN \
             RAISE EXCEPTION 'pg-autouser: a role the policy grants may be refused: a start reads them first' \
               USING ERRCODE = 'insufficient_privilege'; \
           END IF; \
         END"
    ),
};

/// [`LOCK_USER`] as a function, for the one-round-trip start: the views it reads only when the
/// lock is taken by someone else are then planned only then, once per connection.
const LOCK_USER_FUNCTION: Check = Check {
    name: "autouser_lock_user_v1",
    params: &[("p_key", "bigint")],
    returns: "text",
    body: "BEGIN \
             IF pg_catalog.pg_try_advisory_xact_lock(p_key) THEN \
               RETURN 'taken'; \
             END IF; \
             IF EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                          JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
                         WHERE l.locktype = 'advisory'::text AND l.granted AND l.objsubid = 1::smallint \
                           AND l.classid = ((p_key >> 32) & 4294967295::bigint)::oid \
                           AND l.objid = (p_key & 4294967295::bigint)::oid \
                           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d \
                                              WHERE d.datname = pg_catalog.current_database()) \
                           AND a.usename = session_user) THEN \
               PERFORM pg_catalog.pg_advisory_xact_lock(p_key); \
               RETURN 'waited'; \
             END IF; \
             RETURN 'skipped'; \
           END",
};

/// See [`Step::RefuseIfEnded`]: the check of `READ_STATE`'s `session_ended_in_group`, failing
/// with SQLSTATE 40001.
pub(super) fn refuse_if_ended(group: &str, user: &str, session: &str) -> CheckCall {
    CheckCall {
        check: &REFUSE_IF_ENDED,
        args: vec![
            quote_literal(group),
            quote_literal(user),
            quote_literal(session),
            quote_literal(ENDED_SESSIONS_HEADER),
        ],
    }
}

const REFUSE_IF_ENDED: Check = Check {
    name: "autouser_refuse_if_ended_v1",
    params: &[("p_group", "text"), ("p_user", "text"), ("p_session", "text"), ("p_header", "text")],
    returns: "void",
    body: "BEGIN \
           IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles g \
                        JOIN pg_catalog.pg_shdescription d \
                          ON d.objoid = g.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid \
                       WHERE g.rolname = p_group \
                         AND d.description LIKE p_header || pg_catalog.chr(10) || '%' \
                         AND pg_catalog.strpos(d.description, pg_catalog.chr(10) \
                               || pg_catalog.to_json(p_user)::text || pg_catalog.chr(9) \
                               || pg_catalog.to_json(p_session)::text || pg_catalog.chr(9)) > 0) THEN \
             RAISE EXCEPTION 'pg-autouser: session % of role % has already ended', p_session, p_user \
               USING ERRCODE = 'serialization_failure'; \
           END IF; \
         END",
};

/// Fails with SQLSTATE 40001 (retried) when the user's ledger is no longer what the plan was
/// computed from. Runs after the plan's first write to the user's `pg_authid` row, which
/// blocks every other writer of that user until commit, so it detects changes committed
/// through another database, where our advisory lock does not reach.
///
/// The body is passed as an ordinary string literal rather than dollar-quoted, because a
/// dollar-quote tag could appear inside a user name.
pub(super) fn guard(user: &str, expected_ledger: Option<&str>) -> CheckCall {
    let expected = expected_ledger.map_or_else(|| "NULL".to_string(), quote_literal);
    CheckCall { check: &GUARD, args: vec![quote_literal(user), expected] }
}

const GUARD: Check = Check {
    name: "autouser_guard_v1",
    params: &[("p_user", "text"), ("p_expected", "text")],
    returns: "void",
    body: "BEGIN \
             IF (SELECT d.description \
                   FROM pg_catalog.pg_roles r \
                   JOIN pg_catalog.pg_shdescription d \
                     ON d.objoid = r.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid \
                  WHERE r.rolname = p_user) IS DISTINCT FROM p_expected THEN \
               RAISE EXCEPTION 'pg-autouser: the ledger of role % changed concurrently', p_user \
                 USING ERRCODE = 'serialization_failure'; \
             END IF; \
           END",
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{render, CreatorsWithoutFunction, READ_STATE};
    use std::collections::BTreeSet;

    /// `READ_STATE` looks for the function made last, by name.
    #[test]
    fn read_state_looks_for_the_last_check_function() {
        assert_eq!(CHECKS.last().map(|check| check.name), Some(CHECK_FUNCTIONS_MADE));
        assert!(READ_STATE.contains(&format!("p.proname = '{CHECK_FUNCTIONS_MADE}'::pg_catalog.name")));
    }

    /// A check's `DO` block declares its parameters with the values, and its call passes them,
    /// typed, to the function of the same body.
    #[test]
    fn a_check_is_a_do_block_or_a_call_of_its_function() {
        let check = guard("o'neil", None);
        assert_eq!(check.render(true), "SELECT pg_temp.autouser_guard_v1(('o''neil')::text, (NULL)::text)");
        let block = check.render(false);
        let declared = "DO 'DECLARE p_user text := ''o''''neil''; p_expected text := NULL; BEGIN";
        assert!(block.starts_with(declared), "{block}");
        assert!(block.contains("RAISE EXCEPTION"), "{block}");
        let made = make_check_functions();
        for check in CHECKS {
            assert!(made.contains(&format!("CREATE OR REPLACE FUNCTION pg_temp.{}(", check.name)), "{made}");
        }
    }

    #[test]
    fn locked_transaction_is_the_new_user_check_the_lock_then_the_steps_in_one_message() {
        let steps = [
            Step::CreateUser { user: "al;ice".into() },
            Step::WriteLedger { user: "al;ice".into(), ledger: "{'x'}".into() },
            Step::GrantRoles { roles: vec!["grp".into(), "re\"ader".into()], user: "al;ice".into() },
        ];
        let allowed = BTreeSet::new();
        let guard = RoleGuard { managed_group: "grp", object_inheritor: "heir", allowed_predefined: &allowed };
        let roles_check = db_roles_check(&["re\"ader".to_string()], guard);
        for functions in [false, true] {
            let without_function = CreatorsWithoutFunction::None;
            let renderer = Renderer::new("grp", &without_function).with_check_functions(functions);
            let text = locked_transaction("al;ice", -42, &roles_check, &steps, renderer);
            let check = new_user_check("al;ice").render(functions);
            let lock = match functions {
                false => LOCK_USER.replace("$1::bigint", "(-42)::bigint"),
                true => "SELECT pg_temp.autouser_lock_user_v1(((-42))::bigint)".to_string(),
            };
            assert!(!lock.contains('$') && lock.contains("(-42)"), "{lock}");
            let expected = format!(
                "{check};\n{lock};\n{};\n\
                 CREATE ROLE \"al;ice\" LOGIN;\n\
                 COMMENT ON ROLE \"al;ice\" IS '{{''x''}}';\n\
                 GRANT \"grp\", \"re\"\"ader\" TO \"al;ice\"",
                roles_check.render(functions)
            );
            assert_eq!(text, expected);
        }
        let check = new_user_check("al;ice").render(false);
        assert!(check.contains("rolsuper") && check.contains("p_user text := ''al;ice''"), "{check}");
        assert_eq!(
            new_user_check("al;ice").render(true),
            "SELECT pg_temp.autouser_new_user_check_v1(('al;ice')::text)"
        );
    }

    #[test]
    fn guard_survives_dollar_quotes_in_names() {
        let sql = render(&Step::Guard { user: "$$x$$'".into(), expected_ledger: None });
        assert!(sql.starts_with("DO 'DECLARE p_user text := ''$$x$$''''''; p_expected text := NULL; BEGIN"), "{sql}");
        assert!(sql.contains("IS DISTINCT FROM p_expected"), "{sql}");
    }
}
