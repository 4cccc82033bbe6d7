//! What a call reads before it plans: [`READ_STATE`], in one round trip, with its walk up
//! the memberships of the roles a session grants ([`reached_roles!`], which preflight's
//! [`REACHED_ROLES`] and the one-round-trip start's check also run).

use autouser_policy::plan::RoleFact;
use std::collections::BTreeSet;

use super::creators::{creator_function_callable, creator_functions_makeable, creator_lacks_admin_option};

/// Every role that a role named in the text array `$wanted` is, or is a member of (directly or
/// through other roles), as rows `(wanted, role, facts)`; `facts` holds the words of
/// [`role_facts`] that the catalog says of `role`, separated by spaces (empty: none).
/// `managed_user` is a member of the managed group, whose name is the text `$group`. The walk
/// goes up through `pg_auth_members`' index on the member, one lookup per role reached, and
/// every name and OID through `pg_authid`'s indexes. See [`plan::db_role_refusal`].
///
/// Each join is a `LATERAL` subquery fenced by `OFFSET 0`, and the group fact a `LIMIT 1`
/// scalar subquery, so that a generic plan (the admin's connections force them) still looks
/// each role up by index. Planned generically, plain joins became hash joins over the whole of
/// `pg_auth_members` and `pg_authid`: 4.0 ms at 5,000 users on PostgreSQL 15, against 0.3 ms
/// now (`EXPLAIN ANALYZE` of `READ_STATE`), and a kept user's start grew with the population.
///
/// [`plan::db_role_refusal`]: autouser_policy::plan::db_role_refusal
macro_rules! reached_roles {
    ($wanted:literal, $group:literal) => {
        concat!(
            "WITH RECURSIVE reach(wanted, roleid) AS (
    SELECT r.rolname::text, r.oid
      FROM pg_catalog.unnest(",
            $wanted,
            ") AS w(name)
     CROSS JOIN LATERAL (SELECT r.rolname, r.oid FROM pg_catalog.pg_roles r
                          WHERE r.rolname = w.name OFFSET 0) AS r
  UNION
    SELECT reach.wanted, m.roleid
      FROM reach
     CROSS JOIN LATERAL (SELECT m.roleid FROM pg_catalog.pg_auth_members m
                          WHERE m.member = reach.roleid OFFSET 0) AS m)
SELECT reach.wanted, r.rolname::text AS role,
       pg_catalog.concat_ws(' '::text,
         CASE WHEN r.rolsuper THEN 'superuser'::text END,
         CASE WHEN r.rolcreaterole THEN 'createrole'::text END,
         CASE WHEN r.rolcreatedb THEN 'createdb'::text END,
         CASE WHEN r.rolreplication THEN 'replication'::text END,
         CASE WHEN r.rolbypassrls THEN 'bypassrls'::text END,
         CASE WHEN r.oid < '16384'::pg_catalog.oid THEN 'predefined'::text END,
         CASE WHEN (SELECT true FROM pg_catalog.pg_auth_members g
                     WHERE g.member = r.oid
                       AND g.roleid = (SELECT gr.oid FROM pg_catalog.pg_roles gr WHERE gr.rolname = ",
            $group,
            ")
                     LIMIT 1)
              THEN 'managed_user'::text END) AS facts
  FROM reach
 CROSS JOIN LATERAL (SELECT r.oid, r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                            r.rolbypassrls
                       FROM pg_catalog.pg_roles r WHERE r.oid = reach.roleid OFFSET 0) AS r"
        )
    };
}
pub(super) use reached_roles;

/// For preflight: what each role named in the text array `$1` reaches, as `READ_STATE` reads
/// it (`$2` the managed group), ordered by wanted role and reached role.
pub const REACHED_ROLES: &str = concat!(
    "SELECT r.wanted, r.role, r.facts FROM (",
    reached_roles!("$1::text[]", "$2::text"),
    ") AS r ORDER BY 1, 2"
);

/// The facts of a [`reached_roles!`] row, from its words.
pub fn role_facts(words: &str) -> BTreeSet<RoleFact> {
    words
        .split_whitespace()
        .map(|word| match word {
            "superuser" => RoleFact::Superuser,
            "createrole" => RoleFact::CreateRole,
            "createdb" => RoleFact::CreateDb,
            "replication" => RoleFact::Replication,
            "bypassrls" => RoleFact::BypassRls,
            "predefined" => RoleFact::Predefined,
            "managed_user" => RoleFact::ManagedUser,
            other => panic!("reached_roles! wrote a fact no one reads: {other:?}"),
        })
        .collect()
}

/// Everything the planner needs to know, in one round trip.
/// `$1` user name, `$2` managed group, `$3` names of roles the plan may grant, `$4` session id,
/// `$5` the creator role a new user gets (NULL without `creator_roles`).
///
/// Prepared once per connection and run with a generic plan ([`crate::pg::AdminConnection`]),
/// so every lookup is by an indexed key: names through `pg_roles.rolname`, memberships through
/// `pg_auth_members.member`, and role names of OIDs through `pg_get_userbyid`.
pub const READ_STATE: &str = concat!(
    "\
SELECT
  u.oid IS NOT NULL AS user_exists,
  u.oid AS user_oid,
  COALESCE(u.rolcanlogin, false) AS user_can_login,
  ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid
         ORDER BY 1) AS member_of,
  (SELECT d.description FROM pg_catalog.pg_shdescription d
    WHERE d.objoid = u.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid) AS ledger,
  -- The user's own defaults (ALTER ROLE self [IN DATABASE d] SET ...): '' for every database.
  ARRAY(SELECT COALESCE(db.datname::text, ''::text)
          FROM pg_catalog.pg_db_role_setting s
          LEFT JOIN pg_catalog.pg_database db ON db.oid = s.setdatabase
         WHERE s.setrole = u.oid
         ORDER BY 1) AS settings_in,
  -- PostgreSQL 16+ lets a non-superuser revoke only the grants it made itself: the user's
  -- memberships granted by someone else, as two parallel arrays (role, grantor).
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND m.grantor IS DISTINCT FROM creator.oid
           AND admin.revokes_own_grants_only
         ORDER BY m.roleid, m.grantor) AS foreign_grant_roles,
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.grantor)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND m.grantor IS DISTINCT FROM creator.oid
           AND admin.revokes_own_grants_only
         ORDER BY m.roleid, m.grantor) AS foreign_grant_grantors,
  -- The creator role (creator_roles) runs the user's role statements on PostgreSQL 16+ for an
  -- admin that is not a superuser: see plan::run_as_creator. An existing user's is the creator
  -- role of the group holding ADMIN OPTION on it, whatever creator_roles says now.
  CASE WHEN admin.revokes_own_grants_only THEN COALESCE(found.rolname::text, $5::text) END AS creator,
  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
           WHERE m.roleid = u.oid AND m.member = creator.oid AND m.admin_option) AS creator_admins_user,
  ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor = creator.oid
         ORDER BY 1) AS creator_grants,
  -- Ready: the admin holds the membership in the creator that PrepareCreator grants (SET
  -- TRUE), the creator holds ADMIN OPTION on the group and on the roles of $3 that exist, and
  -- its function is there, unless PrepareCreator could not make it (see Renderer).
  -- The membership row is read directly: pg_has_role(..., 'SET') would walk every role the admin
  -- may SET to, and so every creator's memberships in its users (see Renderer). Its
  -- set_option is read through to_jsonb because PostgreSQL 15 has no such column, and
  -- `creator` is NULL there.
  creator.oid IS NOT NULL
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                 WHERE m.roleid = creator.oid AND m.member = admin.oid
                   AND (pg_catalog.to_jsonb(m.*) ->> 'set_option')::boolean)
    AND NOT ",
    creator_lacks_admin_option!("creator.oid", "pg_catalog.array_append($3::text[], $2::text)"),
    "
    AND (",
    creator_function_callable!("creator", "$2::text", "admin.oid"),
    "
         OR NOT ",
    creator_functions_makeable!("$2::text", "admin.oid"),
    ") AS creator_ready,
  -- The admin may call the creator's function (see Renderer).
  creator.oid IS NOT NULL AND ",
    creator_function_callable!("creator", "$2::text", "admin.oid"),
    " AS creator_function,
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname = $2::text) AS group_exists,
  ARRAY(SELECT r.rolname::text
          FROM pg_catalog.unnest($3::text[]) AS wanted(name)
          JOIN pg_catalog.pg_roles r ON r.rolname = wanted.name
         ORDER BY 1) AS existing_roles,
  -- What the roles of $3 reach through membership, as three parallel arrays (see reached_roles!).
  COALESCE(reached.wanted, '{}'::text[]) AS reached_wanted,
  COALESCE(reached.role, '{}'::text[]) AS reached_role,
  COALESCE(reached.facts, '{}'::text[]) AS reached_facts,
  -- The managed group's comment records this session as ended (see ENDED_SESSIONS_HEADER):
  -- a line `<user>\t<session>\t<time>`, the names as JSON strings, after a newline.
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
            JOIN pg_catalog.pg_shdescription d
              ON d.objoid = g.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid
           WHERE g.rolname = $2::text
             AND d.description LIKE 'pg-autouser ended sessions v1' || pg_catalog.chr(10) || '%'
             AND pg_catalog.strpos(d.description, pg_catalog.chr(10) || pg_catalog.to_json($1::text)::text
                   || pg_catalog.chr(9) || pg_catalog.to_json($4::text)::text || pg_catalog.chr(9)) > 0)
    AS session_ended_in_group,
  -- The transaction's start on the server's clock: a session's `started_at`.
  pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.now()))::bigint AS server_now,
  pg_catalog.current_setting('server_version_num')::int AS server_version_num,
  pg_catalog.current_database()::text AS current_database,
  current_user::text AS admin,
  -- This server session has the check functions (make_check_functions; the name is
  -- CHECK_FUNCTIONS_MADE).
  EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
           WHERE p.pronamespace = pg_catalog.pg_my_temp_schema()
             AND p.proname = 'autouser_guard_v1'::pg_catalog.name) AS check_functions,
  pg_catalog.current_setting('transaction_read_only') = 'on' AS read_only
FROM (SELECT a.oid,
             pg_catalog.current_setting('server_version_num')::int >= 160000 AND NOT a.rolsuper
               AS revokes_own_grants_only
        FROM pg_catalog.pg_roles a
       WHERE a.rolname = current_user) AS admin
LEFT JOIN pg_catalog.pg_roles u ON u.rolname = $1::text
LEFT JOIN LATERAL (SELECT c.rolname
                     FROM pg_catalog.pg_auth_members m
                     JOIN pg_catalog.pg_roles c ON c.oid = m.member
                    WHERE m.roleid = u.oid AND m.admin_option
                      AND pg_catalog.starts_with(c.rolname::text, $2::text || '-creator-')
                    ORDER BY 1 LIMIT 1) AS found ON true
LEFT JOIN pg_catalog.pg_roles creator ON creator.rolname = COALESCE(found.rolname::text, $5::text)
CROSS JOIN (SELECT pg_catalog.array_agg(r.wanted ORDER BY r.wanted, r.role) AS wanted,
                   pg_catalog.array_agg(r.role ORDER BY r.wanted, r.role) AS role,
                   pg_catalog.array_agg(r.facts ORDER BY r.wanted, r.role) AS facts
              FROM (",
    reached_roles!("$3::text[]", "$2::text"),
    ") AS r) AS reached"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::db_roles_check;
    use autouser_policy::plan::RoleGuard;

    #[test]
    fn every_fact_the_role_walk_writes_is_read_and_the_check_quotes_every_name() {
        let words: Vec<&str> = READ_STATE
            .split("THEN '")
            .skip(1)
            .filter_map(|rest| rest.split_once("'::text END").map(|(word, _)| word))
            .collect();
        assert_eq!(words.len(), 7, "{words:?}");
        for word in &words {
            assert_eq!(role_facts(word).len(), 1, "{word}");
        }
        assert!(REACHED_ROLES.contains("WITH RECURSIVE") && READ_STATE.contains("AS reached_facts"));
        let allowed = BTreeSet::from(["pg_read_all_data".to_string()]);
        let guard = RoleGuard { managed_group: "g'rp", object_inheritor: "he'ir", allowed_predefined: &allowed };
        let check = db_roles_check(&["a'b".to_string(), "c".to_string()], guard).render(false);
        // The body is itself a literal: every quote inside it is doubled once more.
        assert!(check.starts_with("DO '") && check.is_ascii(), "{check}");
        for expected in [
            "ARRAY[''a''''b'', ''c'']::text[]",
            "''g''''rp''",
            "v_inheritor text := ''he''''ir''",
            "ARRAY[''pg_read_all_data'']",
        ] {
            assert!(check.contains(expected), "{expected} in {check}");
        }
        assert!(db_roles_check(&[], guard).render(false).contains("v_wanted text[] := ARRAY[]::text[]"));
    }
}
