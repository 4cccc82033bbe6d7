//! The creator roles' functions (`creator_roles`, PostgreSQL 16+): whether a creator is ready
//! (the fragments `READ_STATE` and preflight's [`CREATORS_NOT_READY`] share), their making
//! ([`prepare_creators`]), and the call of one ([`call_creator_function`]).

use super::quote::{quote_ident, quote_literal};

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
pub(super) use {creator_function_callable, creator_functions_makeable, creator_lacks_admin_option};

/// Of the creator roles `$1` that exist, those not ready for the current user (the admin):
/// not settable (`SET ROLE`) by it, lacking ADMIN OPTION on one of the roles `$2` that exist,
/// or without their function where [`Step::PrepareCreator`] can make it (`not_ready`); how
/// those of `$1` that do not exist yet (`missing`: the first session of each makes it); the owner of
/// the functions' schema, named `$3` (`schema_owner`, NULL when there is none); and whether
/// the creators' functions can be made (`functions_makeable`). PostgreSQL 16+ only (the SET
/// privilege). Preflight's, like `READ_STATE`'s `creator_ready`.
///
/// [`Step::PrepareCreator`]: autouser_policy::plan::Step::PrepareCreator
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
///
/// [`Step::PrepareCreator`]: autouser_policy::plan::Step::PrepareCreator
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
///
/// [`Step::PrepareCreator`]: autouser_policy::plan::Step::PrepareCreator
pub(super) fn prepare_creator(creator: &str, roles: &[String], schema: &str) -> String {
    prepare_creators(&[creator.to_string()], roles, schema)
}

/// `statement`, run as `creator` by its function in `schema` (see [`Renderer`](super::Renderer)).
pub(super) fn call_creator_function(schema: &str, creator: &str, statement: &str) -> String {
    format!("SELECT {}.{}({})", quote_ident(schema), quote_ident(creator), quote_literal(statement))
}
