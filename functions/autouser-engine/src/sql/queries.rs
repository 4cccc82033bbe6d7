//! The other fixed queries, each sent as it is with bind parameters, by caller: the engine's
//! beyond its first round trip (a user's connections, the hand-over, why a statement was
//! refused), the reaper's and `autouser status`'s reads of the managed group, preflight's
//! connection budget, and a read replica's.

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

/// Ends every connection of the role with OID `$1` but our own, and counts them. Needs the
/// admin to hold `pg_signal_backend` (or the role's privileges).
pub const TERMINATE_CONNECTIONS: &str = "\
SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid))::int
  FROM pg_catalog.pg_stat_activity a
 WHERE a.usesysid = $1::oid AND a.pid <> pg_catalog.pg_backend_pid()";

/// [`TERMINATE_CONNECTIONS`], each awaited until its backend has exited, for at most a second
/// (`pg_terminate_backend`'s timeout, PostgreSQL 14+): a backend still exiting is not counted,
/// and is counted by a later call that finds it. Used on a read replica, whose user's
/// connections may be ended twice in one session-end.
pub const TERMINATE_CONNECTIONS_AWAITED: &str = "\
SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid, 1000))::int
  FROM pg_catalog.pg_stat_activity a
 WHERE a.usesysid = $1::oid AND a.pid <> pg_catalog.pg_backend_pid()";

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

/// Preflight's `connection_limit`: the current user's (the admin's) `CONNECTION LIMIT` (-1:
/// none), the server's `max_connections`, and the slots kept from ordinary roles:
/// `superuser_reserved_connections`, and `reserved_connections` (PostgreSQL 16+; 0 before).
pub const CONNECTION_BUDGET: &str = "\
SELECT r.rolconnlimit AS admin_limit,
       pg_catalog.current_setting('max_connections')::int AS max_connections,
       pg_catalog.current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       COALESCE(pg_catalog.current_setting('reserved_connections', true), '0')::int AS reserved
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

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
