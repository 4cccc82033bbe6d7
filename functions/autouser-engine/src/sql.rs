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

use autouser_policy::ledger::{ENDED_SESSIONS_HEADER, GROUP_ENDED_SESSIONS_KEPT, STARTED_AT_SERVER_CLOCK};
use autouser_policy::permissions::{
    ObjectBatch, ObjectKind, ObjectRef, ROUTINE_PRIVILEGES, SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES,
};
use autouser_policy::plan::{RoleFact, RoleGuard, Step};
use autouser_policy::stable_hash;
use std::collections::BTreeSet;

/// Quotes a role or object name as a PostgreSQL identifier. The caller must have refused
/// names with NUL bytes ([`autouser_policy::naming::validate_identifier`]).
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
///
/// Any role may take an advisory lock, and the key is no secret (anyone can compute it, and
/// `pg_locks` shows it while we hold it). So the call waits only for another admin session
/// (ours: the same login role): when someone else holds the key, it goes on without it, and
/// the user's `pg_authid` row (the first write of every call, then [`Step::Guard`]) serialises
/// it, as it does calls through other databases. A user holding its own key, or another
/// user's, holds up no start or end. The answer says which: `taken`, `waited` or `skipped`.
pub const LOCK_USER: &str = "\
SELECT CASE
  WHEN pg_catalog.pg_try_advisory_xact_lock($1::bigint) THEN 'taken'::text
  WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                 JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory'::text AND l.granted AND l.objsubid = 1::smallint
                  AND l.classid = (($1::bigint >> 32) & 4294967295::bigint)::oid
                  AND l.objid = ($1::bigint & 4294967295::bigint)::oid
                  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                     WHERE d.datname = pg_catalog.current_database())
                  AND a.usename = session_user)
    THEN (SELECT 'waited'::text FROM pg_catalog.pg_advisory_xact_lock($1::bigint) AS waited(v))
  ELSE 'skipped'::text
END AS user_lock";

/// Ends every connection of the managed user `$1` (a member of the group `$2`; nobody else's)
/// but our own, and waits up to 5 s for each to exit, so that the locks it held are released.
/// Run in the first round trip of a call whose previous attempt timed out waiting for a lock
/// (`lock_timeout`): a logged-in user can hold its own role's row (`BEGIN; ALTER ROLE self
/// PASSWORD ...`) or its objects, and must not hold up its own end. Needs the admin to hold
/// `pg_signal_backend` (or the user's privileges).
pub const END_HOLDING_CONNECTIONS: &str = "\
SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid, 5000::bigint))::int
  FROM pg_catalog.pg_stat_activity a
  JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
 WHERE u.rolname = $1::text AND a.pid <> pg_catalog.pg_backend_pid()
   AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                 JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                WHERE m.member = u.oid AND g.rolname = $2::text)";

/// Whether the creator role with OID `$creator` lacks ADMIN OPTION on one of the roles named in
/// the text array `$roles` that exist: what it must hold to grant them (and the group). One
/// index lookup per name (`rolname = ANY`), whatever the number of roles.
macro_rules! creator_lacks_admin_option {
    ($creator:literal, $roles:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
           WHERE r.rolname = ANY (",
            $roles,
            ")
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                              WHERE m.roleid = r.oid AND m.member = ",
            $creator,
            " AND m.admin_option))"
        )
    };
}

/// Whether the current user (the admin) may call the function of the creator role `$creator`
/// (a `pg_roles` row's alias) that [`Step::PrepareCreator`] makes: in the schema named by the
/// text `$schema` (the managed group's name) that the role of OID `$admin` owns, owned by the
/// creator, `SECURITY DEFINER`. One lookup by the function's name.
macro_rules! creator_function_callable {
    ($creator:literal, $schema:literal, $admin:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE p.proname = ",
            $creator,
            ".rolname AND n.nspname = ",
            $schema,
            " AND n.nspowner = ",
            $admin,
            " AND p.proowner = ",
            $creator,
            ".oid AND p.prosecdef
            AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE'::pg_catalog.text))"
        )
    };
}

/// Whether [`Step::PrepareCreator`] can make the creators' functions: the schema named by the
/// text `$schema` is the admin's (the role of OID `$admin`), or is missing and the admin may
/// create schemas in this database.
macro_rules! creator_functions_makeable {
    ($schema:literal, $admin:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = ",
            $schema,
            " AND n.nspowner = ",
            $admin,
            ")
      OR (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = ",
            $schema,
            ")
          AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'::pg_catalog.text)))"
        )
    };
}

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

/// Schemas that are not PostgreSQL's own: objects there can carry `db_permissions`.
macro_rules! user_schemas {
    ($alias:literal) => {
        concat!(
            $alias,
            ".nspname NOT IN ('pg_catalog', 'information_schema') AND ",
            $alias,
            ".nspname::pg_catalog.text !~ '^pg_(toast|temp_|toast_temp_)'::pg_catalog.text"
        )
    };
}

/// The roles whose grants to the user an admin's `REVOKE` on an object owned by `$owner`
/// removes: PostgreSQL revokes as the admin itself, or as the owner when the admin is a
/// superuser or has the owner's privileges (it then holds every grant option). `$may_revoke`
/// is whether the `REVOKE` can run at all; `$acl_entry` the `aclexplode` row. Grants from any
/// other grantor stay, with at most a warning.
macro_rules! removed_by_admin {
    ($acl_entry:literal, $owner:literal, $may_revoke:literal) => {
        concat!(
            "(",
            $may_revoke,
            " AND (",
            $acl_entry,
            ".grantor = admin.oid OR (",
            $acl_entry,
            ".grantor = ",
            $owner,
            " AND (admin.rolsuper OR pg_catalog.pg_has_role(",
            $owner,
            ", 'USAGE')))))"
        )
    };
}

/// The schemas of the connected database. `$1` user name, `$2` the roles the session gives
/// the user (the managed group and its database roles).
///
/// `user_has_usage` is USAGE granted to the user itself (pg-autouser's to revoke);
/// `user_has_usage_otherwise` is USAGE it has anyway, through PUBLIC (PostgreSQL gives PUBLIC
/// USAGE on `public`) or through one of those roles. The admin needs USAGE itself to name
/// objects in a schema, and any privilege on it for its `REVOKE USAGE` to run (PostgreSQL
/// refuses it outright otherwise). `usage_kept_by` lists the grantors of the user's own USAGE
/// that the admin's `REVOKE` leaves in place.
pub const LIST_SCHEMAS: &str = concat!(
    "WITH u AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text),
admin AS (SELECT a.oid, a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname = current_user)
SELECT n.nspname::text AS name,
  EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a
           WHERE a.grantee = (SELECT oid FROM u) AND a.privilege_type = 'USAGE') AS user_has_usage,
  pg_catalog.has_schema_privilege('public'::name, n.oid, 'USAGE')
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                WHERE r.rolname = ANY ($2::text[]) AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE'))
    AS user_has_usage_otherwise,
  pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS admin_has_usage,
  pg_catalog.has_schema_privilege(n.oid, 'USAGE WITH GRANT OPTION') AS admin_can_grant_usage,
  may.revoke_runs AS admin_may_revoke,
  ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantor)::text
          FROM pg_catalog.aclexplode(n.nspacl) a
         WHERE a.grantee = (SELECT oid FROM u) AND a.privilege_type = 'USAGE'
           AND NOT ",
    removed_by_admin!("a", "n.nspowner", "may.revoke_runs"),
    "
         ORDER BY 1) AS usage_kept_by
FROM pg_catalog.pg_namespace n
CROSS JOIN admin
CROSS JOIN LATERAL (SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE, CREATE') AS revoke_runs) AS may
WHERE ",
    user_schemas!("n"),
    "
ORDER BY 1"
);

/// The start of an object listing's `WITH`: `u` the user (`$1`), `admin` the admin, and
/// `session_roles` PUBLIC and the roles named in the text array `$roles` (those the session
/// gives the user), each followed by a comma.
macro_rules! user_admin_and_session_roles {
    ($roles:literal) => {
        concat!(
            "WITH u AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text),
admin AS (SELECT a.oid, a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname = current_user),
session_roles AS (SELECT 'public'::name AS name
                  UNION ALL SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.rolname = ANY (",
            $roles,
            "::text[])),
"
        )
    };
}

/// The objects of class `$class` (a `regclass` literal) in the current database that the user
/// (`u.oid`) holds a privilege on, from the shared dependencies PostgreSQL records for every
/// role named in an object's ACL (`deptype 'a'`), found through their index on the role.
macro_rules! held_by_user {
    ($class:literal) => {
        concat!(
            "SELECT d.objid FROM pg_catalog.pg_shdepend d
   WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid AND d.refobjid = (SELECT oid FROM u)
     AND d.deptype = 'a' AND d.classid = '",
            $class,
            "'::pg_catalog.regclass::pg_catalog.oid
     AND d.dbid = (SELECT db.oid FROM pg_catalog.pg_database db WHERE db.datname = pg_catalog.current_database())"
        )
    };
}

/// `has_table_privilege`, or `has_sequence_privilege` for a sequence (`c`), of `$role`
/// (empty: the admin) for `$privilege`.
macro_rules! has_relation_privilege {
    ($role:literal, $privilege:literal) => {
        concat!(
            "CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(",
            $role,
            "c.oid, ",
            $privilege,
            ") ELSE pg_catalog.has_table_privilege(",
            $role,
            "c.oid, ",
            $privilege,
            ") END"
        )
    };
}

/// The privileges the user holds directly on an object (`$acl`, owned by `$owner`), and those
/// of them the admin's `REVOKE` leaves in place, as two parallel arrays (`kept_privileges`,
/// `kept_grantors`). Read only for the objects the user holds something on
/// (`listed.user_holds`): a start lists thousands, the user holds a few.
macro_rules! held_and_kept {
    ($acl:literal, $owner:literal) => {
        concat!(
            "CASE WHEN listed.user_holds THEN ARRAY(SELECT a.privilege_type::text FROM pg_catalog.aclexplode(",
            $acl,
            ") a
         WHERE a.grantee = (SELECT oid FROM u) ORDER BY 1) ELSE '{}' END AS held,
  CASE WHEN listed.user_holds THEN ARRAY(SELECT a.privilege_type::text FROM pg_catalog.aclexplode(",
            $acl,
            ") a
         WHERE a.grantee = (SELECT oid FROM u) AND NOT ",
            removed_by_admin!("a", $owner, "may.revoke_runs"),
            "
         ORDER BY a.privilege_type, a.grantor) ELSE '{}' END AS kept_privileges,
  CASE WHEN listed.user_holds THEN ARRAY(SELECT pg_catalog.pg_get_userbyid(a.grantor)::text
         FROM pg_catalog.aclexplode(",
            $acl,
            ") a
         WHERE a.grantee = (SELECT oid FROM u) AND NOT ",
            removed_by_admin!("a", $owner, "may.revoke_runs"),
            "
         ORDER BY a.privilege_type, a.grantor) ELSE '{}' END AS kept_grantors"
        )
    };
}

/// The CTEs `held_objects` (`$held`: the OIDs the user holds a privilege on) and `listed`:
/// those and the OIDs of `$by_kind`, each with whether the user holds a privilege on it.
macro_rules! listed {
    ($by_kind:expr, $held:expr) => {
        concat!(
            "held_objects AS (",
            $held,
            "),
listed AS (
  SELECT l.oid, l.oid IN (SELECT h.objid FROM held_objects h) AS user_holds
    FROM (",
            $by_kind,
            "
          UNION
          SELECT h.objid FROM held_objects h) AS l)"
        )
    };
}

/// Tables (`r` ordinary, `p` partitioned, `f` foreign), views (`v`, `m` materialized) and
/// sequences (`S`) of the connected database: all those of the kinds in `$4` (what the rules
/// can match), and those the user holds a privilege on. For each, the privileges the user
/// holds directly, which of the privileges in question the admin may grant, and of those it
/// may not, the ones the user has anyway (through PUBLIC or one of the roles in `$5`, those
/// the session gives it). `admin_may_revoke`: the admin's `REVOKE` can run (PostgreSQL refuses
/// it to a role with no privilege on the object, or without USAGE on its schema);
/// `kept_privileges`/`kept_grantors`: what that `REVOKE` leaves. `$1` user name, `$2` the
/// table and view privileges the rules use, `$3` the sequence privileges, `$4` relkinds.
pub const LIST_RELATIONS: &str = concat!(
    user_admin_and_session_roles!("$5"),
    listed!(
        concat!(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE pg_catalog.cardinality($4::text[]) > 0 AND c.relkind::text = ANY ($4::text[]) AND ",
            user_schemas!("n")
        ),
        held_by_user!("pg_catalog.pg_class")
    ),
    "
SELECT c.relkind::text AS relkind, n.nspname::text AS schema, c.relname::text AS name,
  ",
    held_and_kept!("c.relacl", "c.relowner"),
    ",
  ARRAY(SELECT p.privilege
          FROM pg_catalog.unnest(CASE WHEN c.relkind = 'S' THEN $3::text[] ELSE $2::text[] END) AS p(privilege)
         WHERE ",
    has_relation_privilege!("", "p.privilege || ' WITH GRANT OPTION'"),
    "
         ORDER BY 1) AS admin_grantable,
  ARRAY(SELECT p.privilege
          FROM pg_catalog.unnest(CASE WHEN c.relkind = 'S' THEN $3::text[] ELSE $2::text[] END) AS p(privilege)
         WHERE NOT ",
    has_relation_privilege!("", "p.privilege || ' WITH GRANT OPTION'"),
    "
           AND EXISTS (SELECT 1 FROM session_roles r WHERE ",
    has_relation_privilege!("r.name, ", "p.privilege"),
    ")
         ORDER BY 1) AS held_otherwise,
  may.revoke_runs AS admin_may_revoke
FROM listed
JOIN pg_catalog.pg_class c ON c.oid = listed.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN admin
CROSS JOIN LATERAL (SELECT NOT listed.user_holds OR pg_catalog.has_schema_privilege(n.oid, 'USAGE') AND CASE
    WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(c.oid, 'USAGE, SELECT, UPDATE')
    ELSE pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END
    AS revoke_runs) AS may
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND ",
    user_schemas!("n"),
    "
ORDER BY 2, 3"
);

/// Functions and procedures of the connected database: all of them when `$2` (the rules can
/// match routines), else those the user holds a privilege on; with their identity arguments
/// (which tell overloads apart), the user's privileges, whether the admin may grant
/// `EXECUTE`, and if not, whether the user can execute it anyway (through PUBLIC, which
/// PostgreSQL gives `EXECUTE` on new functions, or one of the roles in `$3`, those the
/// session gives it); `admin_may_revoke` and the kept privileges as for [`LIST_RELATIONS`].
/// `$1` user name.
pub const LIST_ROUTINES: &str = concat!(
    user_admin_and_session_roles!("$3"),
    listed!(
        concat!(
            "SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
           WHERE $2::bool AND ",
            user_schemas!("n")
        ),
        held_by_user!("pg_catalog.pg_proc")
    ),
    "
SELECT p.prokind::text AS prokind, n.nspname::text AS schema, p.proname::text AS name,
  pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments,
  ",
    held_and_kept!("p.proacl", "p.proowner"),
    ",
  pg_catalog.has_function_privilege(p.oid, 'EXECUTE WITH GRANT OPTION') AS admin_can_grant,
  NOT pg_catalog.has_function_privilege(p.oid, 'EXECUTE WITH GRANT OPTION')
    AND EXISTS (SELECT 1 FROM session_roles r WHERE pg_catalog.has_function_privilege(r.name, p.oid, 'EXECUTE'))
    AS executable_otherwise,
  may.revoke_runs AS admin_may_revoke
FROM listed
JOIN pg_catalog.pg_proc p ON p.oid = listed.oid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
CROSS JOIN admin
CROSS JOIN LATERAL (SELECT NOT listed.user_holds OR pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                       AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE') AS revoke_runs) AS may
WHERE p.prokind IN ('f', 'p') AND ",
    user_schemas!("n"),
    "
ORDER BY 2, 3, 4"
);

/// The managed users (direct members of the group `$1`, but not the admin, which on
/// PostgreSQL 16+ is a member of the group it created, nor the creator roles, which hold it
/// WITH ADMIN OPTION): whether each can log in, its ledger, and its live connections on the
/// whole server.
pub const LIST_MANAGED_USERS: &str = "\
SELECT u.rolname::text AS name, u.rolcanlogin AS can_login,
  (SELECT d.description FROM pg_catalog.pg_shdescription d
    WHERE d.objoid = u.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid) AS ledger,
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = u.oid)::int AS connections
FROM pg_catalog.pg_roles u
WHERE u.oid IN (SELECT m.member FROM pg_catalog.pg_auth_members m
                  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                 WHERE g.rolname = $1::text)
  AND u.rolname <> current_user
  AND NOT pg_catalog.starts_with(u.rolname::text, $1::text || '-creator-')
ORDER BY 1";

/// The live connections of each of the users named in `$1` that has any: on a read replica,
/// where the managed users' sessions are, for the reaper.
pub const CONNECTIONS_BY_USER: &str = "\
SELECT a.usename::text, pg_catalog.count(*)::int
  FROM pg_catalog.pg_stat_activity a
 WHERE a.usename = ANY ($1::text[])
 GROUP BY a.usename";

/// The managed group's (`$1`) comment, where the sessions ended without a ledger to record
/// them are listed ([`autouser_policy::ledger::ENDED_SESSIONS_HEADER`]).
pub const GROUP_COMMENT: &str = "\
SELECT (SELECT d.description FROM pg_catalog.pg_shdescription d
         WHERE d.objoid = g.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid) AS comment
  FROM pg_catalog.pg_roles g
 WHERE g.rolname = $1::text";

/// What `autouser status` shows of a database, in one query whatever the number of users:
/// one row per direct member of the managed group `$1` (but the admin, as in
/// [`LIST_MANAGED_USERS`]), with whether it can log in, its comment (the ledger), its direct
/// memberships, and those granted by a role other than the admin as two parallel arrays
/// (role, grantor); and on every row the login roles outside the group, as preflight lists
/// them. With no member, one row whose `name` is NULL. A superuser admin's grants are
/// recorded (PostgreSQL 16+) as the bootstrap superuser's (OID 10), so those are its own; so
/// are the grants of the creator roles (`<group>-creator-<n>`), which are not listed as users.
pub const STATUS: &str = "\
WITH admin AS (SELECT a.oid, a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname = current_user),
unmanaged AS (
  SELECT ARRAY(SELECT r.rolname::text FROM pg_catalog.pg_roles r
                WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> current_user
                  AND r.rolname::pg_catalog.text !~ '^(pg_|rds)'::pg_catalog.text
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                                    JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                                   WHERE m.member = r.oid AND g.rolname = $1::text)
                ORDER BY 1) AS names)
SELECT unmanaged.names AS unmanaged_logins,
  u.rolname::text AS name,
  COALESCE(u.rolcanlogin, false) AS can_login,
  (SELECT d.description FROM pg_catalog.pg_shdescription d
    WHERE d.objoid = u.oid AND d.classoid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid) AS ledger,
  ARRAY(SELECT DISTINCT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid
         ORDER BY 1) AS member_of,
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.roleid)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND NOT (admin.rolsuper AND m.grantor = 10)
           AND NOT pg_catalog.starts_with(pg_catalog.pg_get_userbyid(m.grantor)::text, $1::text || '-creator-')
         ORDER BY m.roleid, m.grantor) AS foreign_grant_roles,
  ARRAY(SELECT pg_catalog.pg_get_userbyid(m.grantor)::text
          FROM pg_catalog.pg_auth_members m
         WHERE m.member = u.oid AND m.grantor <> admin.oid AND NOT (admin.rolsuper AND m.grantor = 10)
           AND NOT pg_catalog.starts_with(pg_catalog.pg_get_userbyid(m.grantor)::text, $1::text || '-creator-')
         ORDER BY m.roleid, m.grantor) AS foreign_grant_grantors
FROM admin
CROSS JOIN unmanaged
LEFT JOIN pg_catalog.pg_roles u
  ON u.oid IN (SELECT m.member FROM pg_catalog.pg_auth_members m
                 JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                WHERE g.rolname = $1::text)
 AND u.rolname <> current_user
 AND NOT pg_catalog.starts_with(u.rolname::text, $1::text || '-creator-')
ORDER BY u.rolname";

/// Ends every connection of the role with OID `$1` but our own, and counts them. Needs the
/// admin to hold `pg_signal_backend` (or the role's privileges).
pub const TERMINATE_CONNECTIONS: &str = "\
SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid))::int
  FROM pg_catalog.pg_stat_activity a
 WHERE a.usesysid = $1::oid AND a.pid <> pg_catalog.pg_backend_pid()";

/// Which of `$1` (role names) the current user holds WITH ADMIN OPTION. Used to explain a
/// "permission denied to grant role" error.
pub const ROLES_WITHOUT_ADMIN_OPTION: &str = "\
SELECT r.rolname::text
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = ANY($1::text[])
   AND NOT pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')
 ORDER BY 1";

/// For an end that hands a user's objects to the object inheritor: whether the inheritor
/// (`$2`) exists, and the other databases of the server where the user (OID `$1`) owns objects
/// or holds privileges, from the shared dependencies (`pg_shdepend`).
pub const HAND_OVER_STATE: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = $2::text) AS inheritor_exists,
       ARRAY(SELECT d.datname::text
               FROM pg_catalog.pg_database d
              WHERE d.datname <> pg_catalog.current_database()
                AND d.oid IN (SELECT s.dbid FROM pg_catalog.pg_shdepend s
                               WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid
                                 AND s.refobjid = $1::oid)
              ORDER BY 1) AS other_databases";

/// What depends on the user (OID `$1`), from the shared dependencies: in the connected
/// database and on shared objects, each object by its kind and schema-qualified name
/// (`table public.orders`, from `pg_identify_object`); in other databases, only the database's name, which is all this
/// database's catalog can say. `deptype`: `o` owner, `a` privileges, `r` policy, `i` initial
/// privileges.
pub const USER_DEPENDENCIES: &str = "\
SELECT CASE WHEN s.dbid IN (0, here.oid)
            THEN (SELECT o.type || ' ' || o.identity
                    FROM pg_catalog.pg_identify_object(s.classid, s.objid, s.objsubid) AS o) END AS object,
       CASE WHEN s.dbid NOT IN (0, here.oid) THEN d.datname::text END AS other_database,
       s.deptype::text AS deptype
  FROM pg_catalog.pg_shdepend s
 CROSS JOIN (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) AS here
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass::pg_catalog.oid AND s.refobjid = $1::oid
 ORDER BY 2 NULLS FIRST, 3 DESC, 1";

/// Why `REASSIGN OWNED` or `DROP OWNED` was refused: whether the current user inherits
/// privileges at all, and whether it has those of the inheritor (`$1`).
pub const ADMIN_HAND_OVER_PRIVILEGES: &str = "\
SELECT a.rolinherit,
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                WHERE r.rolname = $1::text AND pg_catalog.pg_has_role(current_user, r.oid, 'USAGE'))
  FROM pg_catalog.pg_roles a
 WHERE a.rolname = current_user";

/// Why `REASSIGN OWNED` was refused with 42501 on a schema: the schemas holding objects of the
/// user (OID `$1`) whose owner change needs the new owner's `CREATE` on their schema
/// (PostgreSQL's generic `ALTER ... OWNER`: routines, aggregates, operators and their classes
/// and families, collations, conversions, statistics, text search dictionaries and
/// configurations; not relations or types), where the inheritor (`$2`) lacks it.
pub const INHERITOR_LACKS_CREATE: &str = "\
SELECT n.nspname::pg_catalog.text
  FROM pg_catalog.pg_namespace n
 WHERE n.oid IN (SELECT p.pronamespace FROM pg_catalog.pg_proc p WHERE p.proowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT o.oprnamespace FROM pg_catalog.pg_operator o WHERE o.oprowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT c.opcnamespace FROM pg_catalog.pg_opclass c WHERE c.opcowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT f.opfnamespace FROM pg_catalog.pg_opfamily f WHERE f.opfowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT c.collnamespace FROM pg_catalog.pg_collation c WHERE c.collowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT c.connamespace FROM pg_catalog.pg_conversion c WHERE c.conowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT s.stxnamespace FROM pg_catalog.pg_statistic_ext s WHERE s.stxowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT d.dictnamespace FROM pg_catalog.pg_ts_dict d WHERE d.dictowner = $1::pg_catalog.oid
                 UNION ALL
                 SELECT c.cfgnamespace FROM pg_catalog.pg_ts_config c WHERE c.cfgowner = $1::pg_catalog.oid)
   AND NOT pg_catalog.pg_is_other_temp_schema(n.oid)
   AND NOT pg_catalog.has_schema_privilege($2::pg_catalog.name, n.oid, 'CREATE'::pg_catalog.text)
 ORDER BY 1";

/// Of the creator roles `$1` that exist, those not ready for the current user (the admin):
/// not settable (`SET ROLE`) by it, lacking ADMIN OPTION on one of the roles `$2` that exist,
/// or without their function where [`Step::PrepareCreator`] can make it (`not_ready`); how
/// those of `$1` that do not exist yet (`missing`: the first session of each makes it); the owner of
/// the functions' schema, named `$3` (`schema_owner`, NULL when there is none); and whether
/// the creators' functions can be made (`functions_makeable`). PostgreSQL 16+ only (the SET
/// privilege). Preflight's, like `READ_STATE`'s `creator_ready`.
pub const CREATORS_NOT_READY: &str = concat!(
    "\
SELECT ARRAY(
  SELECT c.rolname::text
    FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS wanted(name, n)
    JOIN pg_catalog.pg_roles c ON c.rolname = wanted.name
   WHERE NOT pg_catalog.pg_has_role(current_user, c.oid, 'SET'::pg_catalog.text)
      OR ",
    creator_lacks_admin_option!("c.oid", "$2::text[]"),
    "
      OR (NOT ",
    creator_function_callable!("c", "$3::text", "admin.oid"),
    " AND ",
    creator_functions_makeable!("$3::text", "admin.oid"),
    ")
   ORDER BY wanted.n) AS not_ready,
       ARRAY(SELECT wanted.name
               FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS wanted(name, n)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles c WHERE c.rolname = wanted.name)
              ORDER BY wanted.n) AS missing,
       (SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text
          FROM pg_catalog.pg_namespace n WHERE n.nspname = $3::text) AS schema_owner,
       ",
    creator_functions_makeable!("$3::text", "admin.oid"),
    " AS functions_makeable
  FROM (SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = current_user) AS admin"
);

/// Preflight's `connection_limit`: the current user's (the admin's) `CONNECTION LIMIT` (-1:
/// none), the server's `max_connections`, and the slots kept from ordinary roles:
/// `superuser_reserved_connections`, and `reserved_connections` (PostgreSQL 16+; 0 before).
pub const CONNECTION_BUDGET: &str = "\
SELECT r.rolconnlimit AS admin_limit,
       pg_catalog.current_setting('max_connections')::int AS max_connections,
       pg_catalog.current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       COALESCE(pg_catalog.current_setting('reserved_connections', true), '0')::int AS reserved
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

/// Whether the current user may create roles at all.
pub const ADMIN_MAY_CREATE_ROLES: &str =
    "SELECT rolcreaterole OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user";

pub const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
pub const COMMIT: &str = "COMMIT";

/// The OID of the role named `$1`, if it exists.
pub const ROLE_OID: &str = "SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text";

/// On a read replica: whether it is in recovery (a standby), whether it has replayed the WAL
/// position `$1`, whether replay is paused, and how many bytes it is behind `$1`.
pub const REPLAY_PROGRESS: &str = "\
SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
       COALESCE(pg_catalog.pg_last_wal_replay_lsn() >= $1::text::pg_catalog.pg_lsn, false) AS replayed,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END AS paused,
       pg_catalog.pg_wal_lsn_diff($1::text::pg_catalog.pg_lsn, pg_catalog.pg_last_wal_replay_lsn())::bigint
         AS behind_bytes";

/// The name of [`COMMIT_LSN`]'s column, by which its answer is found among a message's.
pub const COMMIT_LSN_COLUMN: &str = "autouser_commit_lsn";

/// Sent after a `COMMIT`, in the same message, on a read replica's writer: the WAL position
/// once the commit is written, which the replica must replay before the session's login finds
/// what the commit did. It runs in a transaction of its own, after the `COMMIT` (of the block,
/// or of the message's implicit transaction), and not at all when a statement before it failed.
///
/// The insert position, not the write or flush position: with `synchronous_commit = off` the
/// commit answers before its WAL is flushed. But where the last record ended exactly at a page
/// boundary, the insert position is past the next page's header (24 bytes, or 40 at a segment's
/// start), where no record ends until another is written; a replica replays only to the
/// boundary, and on an idle server would never seem to catch up. So the header is taken off.
pub const COMMIT_LSN: &str = "\
SELECT (w.lsn - CASE WHEN (w.lsn - '0/0'::pg_catalog.pg_lsn) % w.segment = 40 THEN 40
                     WHEN (w.lsn - '0/0'::pg_catalog.pg_lsn) % w.page = 24 THEN 24
                     ELSE 0 END)::pg_catalog.text AS autouser_commit_lsn
  FROM (SELECT pg_catalog.pg_current_wal_insert_lsn() AS lsn,
               pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))::numeric AS segment,
               pg_catalog.current_setting('wal_block_size')::numeric AS page) AS w";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT_DROP: &str = "SAVEPOINT autouser_drop";
pub const ROLLBACK_TO_DROP: &str = "ROLLBACK TO SAVEPOINT autouser_drop";

/// The advisory lock key of a database user: FNV-1a over a fixed namespace and the name.
/// Stable across releases, so the CLI, the Lambda functions and the reaper agree on it.
pub fn user_lock_key(db_user: &str) -> i64 {
    stable_hash::fnv1a_64(b"pg-autouser\0".iter().chain(db_user.as_bytes()).copied()) as i64
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

/// The SQL of one plan step, its checks as `DO` blocks.
pub fn render(step: &Step) -> String {
    render_with(step, false)
}

/// The SQL of one plan step, its checks as calls of their functions when `check_functions`
/// (see [`Check`]).
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
    /// Whether the connection has made the [`CHECKS`] as functions.
    check_functions: bool,
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

    /// The same, on a connection that has made the [`CHECKS`] as functions when
    /// `check_functions`.
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

/// `statement`, run as `creator` by its function in `schema` (see [`Renderer`]).
fn call_creator_function(schema: &str, creator: &str, statement: &str) -> String {
    format!("SELECT {}.{}({})", quote_ident(schema), quote_ident(creator), quote_literal(statement))
}

/// The body of each creator's function: the one statement it is given, run as the creator.
const CREATOR_FUNCTION_BODY: &str = "BEGIN EXECUTE statement; END";

/// See [`Step::PrepareCreator`], for each of `creators` in turn (bootstrap's one statement
/// for them all): one `DO` block, as the admin, that changes only what is missing. A concurrent creation of the creator, the schema or the function (another user's
/// start) is waited for and taken as done. PostgreSQL 16+ only (`set_option`).
///
/// Each `GRANT` of a role takes that role's lock until commit, so the roles are granted in the
/// order a start's `GRANT` takes them: the managed group (named as the schema) first, then
/// the others by name; in any other order, a preparation and a start of a user of a ready
/// creator deadlock (seen at 32 concurrent starts with a role named before the group).
/// The schema comes before the roles: its `GRANT` updates the schema's row, which the next
/// preparation waits for until this transaction ends, so no preparation may hold a role's
/// lock (`GRANT <group> TO <creator>` takes the group's) while it waits there. The function is
/// made as the creator (`SET LOCAL ROLE`, whose check walks the admin's memberships once), so
/// that it owns it: `SECURITY DEFINER` and the pinned `search_path`,
/// `EXECUTE` revoked from `PUBLIC` and granted to the admin alone. The creator gets `USAGE` and `CREATE` on
/// the schema for that; nobody else gets anything on it.
pub fn prepare_creators(creators: &[String], roles: &[String], schema: &str) -> String {
    let creators: Vec<String> = creators.iter().map(|creator| quote_literal(creator)).collect();
    let roles: Vec<String> = roles.iter().map(|role| quote_literal(role)).collect();
    let body = format!(
        "DECLARE \
           creator_name text; \
           schema_name constant text := {schema}; \
           admin_name constant text := current_user; \
           creator_oid oid; \
           admin_oid oid := (SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = current_user); \
           role_name text; \
         BEGIN \
          FOREACH creator_name IN ARRAY ARRAY[{creators}]::text[] LOOP \
           SELECT r.oid INTO creator_oid FROM pg_catalog.pg_roles r WHERE r.rolname = creator_name; \
           IF creator_oid IS NULL THEN \
             BEGIN \
               EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN CREATEROLE', creator_name); \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
             END; \
             SELECT r.oid INTO creator_oid FROM pg_catalog.pg_roles r WHERE r.rolname = creator_name; \
           END IF; \
           IF NOT pg_catalog.pg_has_role(admin_oid, creator_oid, 'SET') THEN \
             EXECUTE pg_catalog.format('GRANT %I TO %I WITH INHERIT FALSE, SET TRUE', creator_name, admin_name); \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = schema_name) \
              AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') THEN \
             BEGIN \
               EXECUTE pg_catalog.format('CREATE SCHEMA %I', schema_name); \
             EXCEPTION WHEN duplicate_schema OR unique_violation THEN NULL; \
             END; \
           END IF; \
           IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n \
                       WHERE n.nspname = schema_name AND n.nspowner = admin_oid) THEN \
             IF NOT pg_catalog.has_schema_privilege(creator_oid, schema_name, 'USAGE, CREATE') THEN \
               EXECUTE pg_catalog.format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', schema_name, creator_name); \
             END IF; \
             EXECUTE pg_catalog.format('SET LOCAL ROLE %I', creator_name); \
             BEGIN \
               EXECUTE pg_catalog.format( \
                 'CREATE OR REPLACE FUNCTION %I.%I(statement text) RETURNS void LANGUAGE plpgsql \
                    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L', \
                 schema_name, creator_name, {function_body}); \
               EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %I.%I(text) FROM PUBLIC', schema_name, creator_name); \
               EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %I.%I(text) TO %I', \
                 schema_name, creator_name, admin_name); \
             EXCEPTION WHEN duplicate_function OR unique_violation THEN NULL; \
             END; \
             SET LOCAL ROLE NONE; \
           END IF; \
           FOR role_name IN \
             SELECT r.rolname FROM pg_catalog.pg_roles r \
              WHERE r.rolname = ANY (ARRAY[{roles}]::text[]) \
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m \
                                 WHERE m.roleid = r.oid AND m.member = creator_oid AND m.admin_option) \
              ORDER BY r.rolname::text <> schema_name, r.rolname \
           LOOP \
             EXECUTE pg_catalog.format('GRANT %I TO %I WITH ADMIN OPTION', role_name, creator_name); \
           END LOOP; \
          END LOOP; \
         END",
        creators = creators.join(", "),
        schema = quote_literal(schema),
        roles = roles.join(", "),
        function_body = quote_literal(CREATOR_FUNCTION_BODY),
    );
    format!("DO {}", quote_literal(&body))
}

/// [`prepare_creators`] for one creator: see [`Step::PrepareCreator`].
fn prepare_creator(creator: &str, roles: &[String], schema: &str) -> String {
    prepare_creators(&[creator.to_string()], roles, schema)
}

fn quote_idents(names: &[String]) -> String {
    names.iter().map(|name| quote_ident(name)).collect::<Vec<_>>().join(", ")
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

/// The role whose name serialises the writers of the managed group's comment. It is created
/// and dropped in the writer's transaction, so it never exists for anyone else: a second
/// writer's `CREATE ROLE` waits on the name's unique index until the first commits (then goes
/// on, the name being free again). Unlike the comment's own lock (taken by `COMMENT ON`, too
/// late to read what it protects), this lock comes before the read, on every version and
/// across databases (advisory locks are per database). The name is reserved
/// ([`autouser_policy::naming::validate_db_user`]).
pub const ENDED_SESSIONS_LOCK_ROLE: &str = autouser_policy::naming::ENDED_SESSIONS_LOCK_ROLE;

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

/// See [`Step::RefuseIfEnded`]: the check of `READ_STATE`'s `session_ended_in_group`, failing
/// with SQLSTATE 40001.
fn refuse_if_ended(group: &str, user: &str, session: &str) -> CheckCall {
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
fn guard(user: &str, expected_ledger: Option<&str>) -> CheckCall {
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
    use crate::properties::{cases, Reach};
    use proptest::prelude::*;

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

    /// No code outside this module puts a name or a value into SQL by hand: no call of the
    /// escape functions, and no format string that wraps an interpolation in double quotes (an
    /// identifier) or single quotes (a literal). Covers every crate that runs in production.
    #[test]
    fn no_other_code_quotes_names_or_values() {
        fn rust_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    rust_files(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        /// `"{x}"` or `'{x}'` inside a string: an opening quote right before an interpolation
        /// (`{{` is a literal brace, not an interpolation).
        fn wraps_an_interpolation(line: &str) -> bool {
            ["\\\"{", "'{"]
                .iter()
                .any(|quote| line.match_indices(quote).any(|(at, q)| !line[at + q.len()..].starts_with('{')))
        }
        let functions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the functions directory");
        let mut files = Vec::new();
        for krate in [
            "autouser-policy",
            "autouser-engine",
            "autouser-aws",
            "autouser-lambda",
            "autouser",
            "session-start",
            "session-end",
            "discovery",
        ] {
            rust_files(&functions.join(krate).join("src"), &mut files);
        }
        assert!(files.len() > 20, "found the sources: {files:?}");
        let this_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sql.rs");
        let mut offences = Vec::new();
        for file in files.iter().filter(|f| **f != this_file) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.contains("escape_identifier") || line.contains("escape_literal") || wraps_an_interpolation(line)
                {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            offences.is_empty(),
            "quote names with sql::quote_ident and values with sql::quote_literal:\n{}",
            offences.join("\n")
        );
        // The check itself catches both forms.
        assert!(wraps_an_interpolation(r#"format!("GRANT x TO \"{user}\"")"#));
        assert!(wraps_an_interpolation("format!(\"PASSWORD '{password}'\")"));
        assert!(!wraps_an_interpolation(r#"role("{allow: {db_roles: [\"{{internal.a}}\"]}}")"#));
    }

    /// The string literals of a Rust source: `"..."` with its escapes and `r#"..."#`; comments
    /// and character literals skipped. Enough for this crate's sources, which the test reads.
    fn string_literals(source: &str) -> Vec<(usize, String)> {
        let bytes = source.as_bytes();
        let (mut found, mut at, mut line) = (Vec::new(), 0, 1);
        while at < bytes.len() {
            match bytes[at] {
                b'\n' => line += 1,
                b'/' if bytes.get(at + 1) == Some(&b'/') => {
                    while at < bytes.len() && bytes[at] != b'\n' {
                        at += 1;
                    }
                    continue;
                }
                b'\'' if bytes.get(at + 2) == Some(&b'\'') || bytes.get(at + 1) == Some(&b'\\') => {
                    // A character literal ('x', '\n', '\''): skip to its closing quote.
                    at += if bytes[at + 1] == b'\\' { 3 } else { 2 };
                    while at < bytes.len() && bytes[at] != b'\'' {
                        at += 1;
                    }
                }
                b'r' if bytes.get(at + 1) == Some(&b'#') || bytes.get(at + 1) == Some(&b'"') => {
                    let hashes = bytes[at + 1..].iter().take_while(|b| **b == b'#').count();
                    if bytes.get(at + 1 + hashes) == Some(&b'"') && !bytes[at - 1].is_ascii_alphanumeric() {
                        let start = at + 2 + hashes;
                        let close = format!("\"{}", "#".repeat(hashes));
                        let end = start + source[start..].find(&close).expect("a closed raw string");
                        found.push((line, source[start..end].to_string()));
                        line += source[start..end].matches('\n').count();
                        at = end + close.len();
                        continue;
                    }
                }
                b'"' => {
                    let start = at + 1;
                    at += 1;
                    while bytes[at] != b'"' {
                        at += if bytes[at] == b'\\' { 2 } else { 1 };
                    }
                    found.push((line, source[start..at].to_string()));
                    line += source[start..at].matches('\n').count();
                }
                _ => {}
            }
            at += 1;
        }
        found
    }

    /// SQL text stays ASCII: a database whose encoding cannot hold a character (`LATIN1` and
    /// `...`, say) refuses the whole statement, comments included. Every string literal of the
    /// engine's sources that the server could receive (one that reads like SQL) is checked.
    #[test]
    fn sql_text_is_ascii() {
        let sql_words = ["SELECT ", "ALTER ", "GRANT ", "REVOKE ", "CREATE ", "DROP ", "COMMENT ", "DO ", "BEGIN"];
        // Every file of the crate's sources, folder modules (`engine/`) included.
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.iter().any(|path| path.ends_with("engine/mod.rs")), "read the folder modules: {files:?}");
        let mut offences = Vec::new();
        let mut checked = 0;
        for path in files {
            for (line, literal) in string_literals(&std::fs::read_to_string(&path).unwrap()) {
                if sql_words.iter().any(|word| literal.contains(word)) {
                    checked += 1;
                    if !literal.is_ascii() {
                        offences.push(format!("{}:{line}: {}", path.display(), literal.trim()));
                    }
                }
            }
        }
        assert!(checked > 50, "found the SQL literals ({checked})");
        assert!(offences.is_empty(), "SQL text must be ASCII:\n{}", offences.join("\n"));
        // The reader finds what the test relies on.
        let sample =
            "let a = 'x'; // \"not a string\"\nconst Q: &str = \"SELECT 1 -- \\\" \u{2026}\";\nr#\"DO $$ \"x\" $$\"#";
        let literals = string_literals(sample);
        assert_eq!(literals.len(), 2, "{literals:?}");
        assert!(!literals[0].1.is_ascii() && literals[0].0 == 2);
        assert_eq!(literals[1], (3, "DO $$ \"x\" $$".to_string()));
    }

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

    #[test]
    fn guard_survives_dollar_quotes_in_names() {
        let sql = render(&Step::Guard { user: "$$x$$'".into(), expected_ledger: None });
        assert!(sql.starts_with("DO 'DECLARE p_user text := ''$$x$$''''''; p_expected text := NULL; BEGIN"), "{sql}");
        assert!(sql.contains("IS DISTINCT FROM p_expected"), "{sql}");
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(user_lock_key("alice"), 4_826_995_200_119_770_623);
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

    #[test]
    fn quoted_identifiers_read_back_to_the_name() {
        let reach = Reach::new("quoted_identifiers_read_back_to_the_name");
        proptest!(cases(), |(name in "[^\\x00]{0,64}")| {
            reach.case();
            let read_back = unquote_ident(&quote_ident(&name));
            reach.reached();
            prop_assert_eq!(read_back, Some(name));
        });
        reach.check();
    }

    #[test]
    fn quoted_literals_read_back_to_the_value() {
        let reach = Reach::new("quoted_literals_read_back_to_the_value");
        proptest!(cases(), |(value in "[^\\x00]{0,64}")| {
            reach.case();
            let read_back = unquote_literal(&quote_literal(&value));
            reach.reached();
            prop_assert_eq!(read_back, Some(value));
        });
        reach.check();
    }

    #[test]
    fn hostile_names_stay_inside_one_identifier() {
        let reach = Reach::new("hostile_names_stay_inside_one_identifier");
        proptest!(cases(), |(
            name in proptest::collection::vec(prop_oneof![
                Just("\"".to_string()), Just("'".to_string()), Just(";".to_string()),
                Just("\\".to_string()), Just("$$".to_string()), Just("--".to_string()),
                "\\PC{1,3}",
            ], 0..12).prop_map(|parts| parts.concat())
        )| {
            reach.case();
            let sql = render(&Step::RevokeRoles { roles: vec![name.clone()], user: "u".into() });
            let quoted = sql.strip_prefix("REVOKE ").unwrap().strip_suffix(" FROM \"u\"").unwrap();
            reach.reached();
            prop_assert_eq!(unquote_ident(quoted), Some(name));
        });
        reach.check();
    }
}
