//! All SQL text of pg-autouser, in one place for reviewers.
//!
//! Invariants:
//! - identifiers go through [`quote_ident`] and nothing else;
//! - values go through bind parameters where PostgreSQL allows them; utility statements
//!   (`CREATE ROLE`, `GRANT`, `COMMENT ON`, `DO`) accept no parameters, so their values go
//!   through [`quote_literal`] and nothing else.
//!
//! Both wrap `postgres_protocol::escape`, which doubles quotes and uses the `E''` form when a
//! value holds a backslash, so the result is correct whatever `standard_conforming_strings` is.

use crate::plan::Step;

/// Quotes a role or object name as a PostgreSQL identifier. The caller must have refused
/// names with NUL bytes ([`crate::naming::validate_identifier`]).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Quotes a value as a PostgreSQL string literal.
pub fn quote_literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

/// Serialises provisioning of one database user across concurrent calls on one database.
/// Advisory locks are per database; [`Step::Guard`] covers calls through other databases.
/// `$1` is [`user_lock_key`].
pub const LOCK_USER: &str = "SELECT pg_advisory_xact_lock($1::bigint)";

/// Everything the planner needs to know, in one round trip.
/// `$1` user name, `$2` managed group, `$3` names of roles the plan may grant.
///
/// Prepared once per connection and run with a generic plan ([`crate::pg::AdminConnection`]),
/// so every lookup is by an indexed key: names through `pg_roles.rolname`, memberships through
/// `pg_auth_members.member`, and role names of OIDs through `pg_get_userbyid`.
pub const READ_STATE: &str = "\
SELECT
  u.oid IS NOT NULL AS user_exists,
  COALESCE(u.rolcanlogin, false) AS user_can_login,
  ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid
         ORDER BY 1) AS member_of,
  (SELECT d.description FROM pg_catalog.pg_shdescription d
    WHERE d.objoid = u.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass) AS ledger,
  -- PostgreSQL 16+ lets a non-superuser revoke only the grants it made itself: the user's
  -- memberships granted by someone else, as two parallel arrays (role, grantor).
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND admin.revokes_own_grants_only
         ORDER BY m.roleid, m.grantor) AS foreign_grant_roles,
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.grantor)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND admin.revokes_own_grants_only
         ORDER BY m.roleid, m.grantor) AS foreign_grant_grantors,
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname = $2::text) AS group_exists,
  ARRAY(SELECT r.rolname::text
          FROM pg_catalog.unnest($3::text[]) AS wanted(name)
          JOIN pg_catalog.pg_roles r ON r.rolname = wanted.name
         ORDER BY 1) AS existing_roles,
  ARRAY(SELECT r.rolname::text
          FROM pg_catalog.unnest($3::text[]) AS wanted(name)
          JOIN pg_catalog.pg_roles r ON r.rolname = wanted.name
         WHERE r.rolsuper
         ORDER BY 1) AS superuser_roles,
  pg_catalog.current_setting('server_version_num')::int AS server_version_num,
  current_user::text AS admin,
  pg_catalog.current_setting('transaction_read_only') = 'on' AS read_only
FROM (SELECT a.oid,
             pg_catalog.current_setting('server_version_num')::int >= 160000 AND NOT a.rolsuper
               AS revokes_own_grants_only
        FROM pg_catalog.pg_roles a
       WHERE a.rolname = current_user) AS admin
LEFT JOIN pg_catalog.pg_roles u ON u.rolname = $1::text";

/// Which of `$1` (role names) the current user holds WITH ADMIN OPTION. Used to explain a
/// "permission denied to grant role" error.
pub const ROLES_WITHOUT_ADMIN_OPTION: &str = "\
SELECT r.rolname::text
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = ANY($1::text[])
   AND NOT pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')
 ORDER BY 1";

/// Whether the current user may create roles at all.
pub const ADMIN_MAY_CREATE_ROLES: &str =
    "SELECT rolcreaterole OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user";

pub const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT_DROP: &str = "SAVEPOINT autouser_drop";
pub const ROLLBACK_TO_DROP: &str = "ROLLBACK TO SAVEPOINT autouser_drop";

/// The advisory lock key of a database user: FNV-1a over a fixed namespace and the name.
/// Stable across releases, so the CLI, the Lambda functions and the reaper agree on it.
pub fn user_lock_key(db_user: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in b"pg-autouser\0".iter().chain(db_user.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash as i64
}

/// The user's lock and `steps` as one simple-query message. PostgreSQL runs the statements
/// of one such message as one implicit transaction: committed after the last, rolled back
/// entirely at the first error (the rest do not run). The key is an integer, so the lock
/// needs no bind parameter.
pub fn locked_transaction(lock_key: i64, steps: &[Step]) -> String {
    let mut text = format!("SELECT pg_catalog.pg_advisory_xact_lock({lock_key})");
    for step in steps {
        text.push_str(";\n");
        text.push_str(&render(step));
    }
    text
}

/// The SQL of one plan step.
pub fn render(step: &Step) -> String {
    match step {
        Step::CreateGroup { group } => format!("CREATE ROLE {} NOLOGIN", quote_ident(group)),
        // `member_of` is never empty: it holds the managed group.
        Step::CreateUser { user, member_of } => {
            let roles: Vec<String> = member_of.iter().map(|role| quote_ident(role)).collect();
            format!("CREATE ROLE {} LOGIN IN ROLE {}", quote_ident(user), roles.join(", "))
        }
        Step::GrantRole { role, user } => {
            format!("GRANT {} TO {}", quote_ident(role), quote_ident(user))
        }
        // `roles` is never empty.
        Step::RevokeRoles { roles, user } => {
            let roles: Vec<String> = roles.iter().map(|role| quote_ident(role)).collect();
            format!("REVOKE {} FROM {}", roles.join(", "), quote_ident(user))
        }
        Step::SetLogin { user, login } => {
            format!("ALTER ROLE {} WITH {}", quote_ident(user), if *login { "LOGIN" } else { "NOLOGIN" })
        }
        Step::Guard { user, expected_ledger } => guard(user, expected_ledger.as_deref()),
        Step::WriteLedger { user, ledger } => {
            format!("COMMENT ON ROLE {} IS {}", quote_ident(user), quote_literal(ledger))
        }
        Step::DropUser { user } => format!("DROP ROLE {}", quote_ident(user)),
    }
}

/// Fails with SQLSTATE 40001 (retried) when the user's ledger is no longer what the plan was
/// computed from. Runs after the plan's first write to the user's `pg_authid` row, which
/// blocks every other writer of that user until commit, so it detects changes committed
/// through another database, where our advisory lock does not reach.
///
/// The body is passed as an ordinary string literal rather than dollar-quoted, because a
/// dollar-quote tag could appear inside a user name.
fn guard(user: &str, expected_ledger: Option<&str>) -> String {
    let expected = expected_ledger.map_or_else(|| "NULL".to_string(), quote_literal);
    let body = format!(
        "BEGIN \
           IF (SELECT d.description \
                 FROM pg_catalog.pg_roles r \
                 JOIN pg_catalog.pg_shdescription d \
                   ON d.objoid = r.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass \
                WHERE r.rolname = {name}) IS DISTINCT FROM {expected} THEN \
             RAISE EXCEPTION 'pg-autouser: the ledger of role % changed concurrently', {name} \
               USING ERRCODE = 'serialization_failure'; \
           END IF; \
         END",
        name = quote_literal(user),
    );
    format!("DO {}", quote_literal(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn locked_transaction_is_the_lock_then_the_steps_in_one_message() {
        let steps = [
            Step::CreateUser { user: "al;ice".into(), member_of: vec!["grp".into(), "re\"ader".into()] },
            Step::WriteLedger { user: "al;ice".into(), ledger: "{'x'}".into() },
        ];
        assert_eq!(
            locked_transaction(-42, &steps),
            "SELECT pg_catalog.pg_advisory_xact_lock(-42);\n\
             CREATE ROLE \"al;ice\" LOGIN IN ROLE \"grp\", \"re\"\"ader\";\n\
             COMMENT ON ROLE \"al;ice\" IS '{''x''}'"
        );
    }

    #[test]
    fn identifiers_double_their_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident("Robert'); DROP TABLE x;--"), r#""Robert'); DROP TABLE x;--""#);
    }

    #[test]
    fn literals_with_backslashes_use_the_escape_form() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r" E'a\\b'");
    }

    #[test]
    fn grant_quotes_both_names() {
        let sql = render(&Step::GrantRole { role: "re\"ader".into(), user: "al;ice".into() });
        assert_eq!(sql, r#"GRANT "re""ader" TO "al;ice""#);
    }

    #[test]
    fn guard_survives_dollar_quotes_in_names() {
        let sql = render(&Step::Guard { user: "$$x$$'".into(), expected_ledger: None });
        assert!(sql.starts_with("DO '"));
        assert!(sql.contains("IS DISTINCT FROM NULL"));
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(user_lock_key("alice"), user_lock_key("alice"));
        assert_ne!(user_lock_key("alice"), user_lock_key("bob"));
    }

    /// Reads a quoted identifier back the way PostgreSQL's scanner does.
    fn unquote_ident(quoted: &str) -> Option<String> {
        let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                // A lone quote would end the identifier early: that would be an injection.
                if chars.next() != Some('"') {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    /// Reads a string literal back the way PostgreSQL's scanner does (both forms).
    fn unquote_literal(quoted: &str) -> Option<String> {
        let (escape_form, inner) = match quoted.strip_prefix(" E'") {
            Some(rest) => (true, rest.strip_suffix('\'')?),
            None => (false, quoted.strip_prefix('\'')?.strip_suffix('\'')?),
        };
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.next() != Some('\'') => return None,
                '\\' if escape_form => out.push(chars.next()?),
                _ => out.push(c),
            }
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn quoted_identifiers_read_back_to_the_name(name in "[^\\x00]{0,64}") {
            prop_assert_eq!(unquote_ident(&quote_ident(&name)), Some(name));
        }

        #[test]
        fn quoted_literals_read_back_to_the_value(value in "[^\\x00]{0,64}") {
            prop_assert_eq!(unquote_literal(&quote_literal(&value)), Some(value));
        }

        #[test]
        fn hostile_names_stay_inside_one_identifier(
            name in proptest::collection::vec(prop_oneof![
                Just("\"".to_string()), Just("'".to_string()), Just(";".to_string()),
                Just("\\".to_string()), Just("$$".to_string()), Just("--".to_string()),
                "\\PC{1,3}",
            ], 0..12).prop_map(|parts| parts.concat())
        ) {
            let sql = render(&Step::RevokeRoles { roles: vec![name.clone()], user: "u".into() });
            let quoted = sql.strip_prefix("REVOKE ").unwrap().strip_suffix(" FROM \"u\"").unwrap();
            prop_assert_eq!(unquote_ident(quoted), Some(name));
        }
    }
}
