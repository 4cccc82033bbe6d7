//! The object listing for `db_permissions`: the schemas ([`LIST_SCHEMAS`]), relations
//! ([`LIST_RELATIONS`]) and routines ([`LIST_ROUTINES`]) of the connected database, with what
//! the user holds on each and what the admin may grant and revoke.

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
