//! The errors of pg-autouser, one variant per situation an operator or a caller can act on.
//!
//! Every message says what to do next; where a GRANT fixes it, the message quotes the GRANT.
//! [`Error::kind`] is a stable name for callers (the Lambda `errorType`, metrics), and
//! [`Error::is_transient`] says whether retrying the same event may succeed. The policy
//! crate's [`Refusal`]s become the variants of the same name here (`From`), worded here
//! because their messages quote SQL. Driver errors are classified here too (`is_transient`),
//! so that `pg` imports this module and not the reverse.

use std::collections::BTreeSet;

use autouser_policy::config::ConfigError;
use autouser_policy::event::EventError;
use autouser_policy::identity::Check;
use autouser_policy::ledger::{Identity, LedgerError};
use autouser_policy::naming::NameError;
use autouser_policy::outcome::EndOutcome;
use autouser_policy::permissions::UngrantableObject;
use autouser_policy::policy::PolicyError;
use autouser_policy::Refusal;
use tokio_postgres::error::SqlState;

use crate::sql::quote_ident;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(Box<ConfigError>),

    #[error(transparent)]
    Event(#[from] EventError),

    #[error("session of {person:?} on database {database:?} refused: {source}")]
    Policy { person: String, database: String, source: Box<PolicyError> },

    #[error("session of {person:?} refused: {source}")]
    InvalidUserName { person: String, source: NameError },

    #[error("identity not verified (check `{check}`): {detail}; nothing was changed")]
    IdentityUnverified { check: Check, detail: String },

    #[error("database {database:?} is not in the config: add it under `databases` or fix the event's `database`")]
    UnknownDatabase { database: String },

    #[error(
        "database role {user:?} already exists and is not a member of {group:?}, so pg-autouser \
         does not manage it and will not touch it: rename or drop the existing role, or, if it \
         should be managed, run `GRANT {group_sql} TO {user_sql}`",
        group_sql = quote_ident(group), user_sql = quote_ident(user)
    )]
    UserConflict { user: String, group: String },

    #[error(
        "database role {user:?} belongs to {owner}, and this session is of {requested}, whose name \
         maps to the same role: pg-autouser never gives one role to two people; rename one of \
         the users or clusters (or set `cluster_name`), or, once the role has no open session, \
         drop it (`DROP ROLE {user_sql}`) to let the other person have it",
        user_sql = quote_ident(user)
    )]
    IdentityConflict { user: String, owner: Box<Identity>, requested: Box<Identity> },

    #[error(
        "database user {user:?} already has an open session with roles {active:?}; this session \
         would get {requested:?}: pg-autouser never changes what a live session holds; end the \
         other sessions first or request the same roles"
    )]
    RolesMismatch { user: String, active: BTreeSet<String>, requested: BTreeSet<String> },

    #[error(
        "database user {user:?} holds role {role:?} granted by {grantor:?}, which the admin cannot \
         revoke (PostgreSQL 16+ lets only the grantor or a superuser revoke it), so the session \
         would get more than the policy allows: run `REVOKE {role_sql} FROM {user_sql} GRANTED BY \
         {grantor_sql}` as a superuser",
        role_sql = quote_ident(role), user_sql = quote_ident(user), grantor_sql = quote_ident(grantor)
    )]
    ForeignGrant { user: String, role: String, grantor: String },

    #[error(
        "database user {user:?} already has an open session on database {db_name:?} with {other} \
         object permission rules than this session: sessions on one database share the user's \
         object privileges, so pg-autouser refuses to change them under a live session; end the \
         other session first or use the same roles",
        other = if *other_session_has_rules { "other" } else { "no" }
    )]
    PermissionsMismatch { user: String, db_name: String, other_session_has_rules: bool },

    #[error(
        "admin {admin:?} cannot grant {privilege} on {kind} {object} in database {db_name:?}{and_more}: \
         as the owner of the objects (or a superuser), run \
         `GRANT {privilege} ON {all_in_schema} IN SCHEMA {schema_sql} TO {admin_sql} WITH GRANT OPTION` \
         in database {db_name:?}, or narrow the role's db_permissions",
        privilege = missing.privilege, kind = missing.kind.label(), object = missing.object,
        all_in_schema = missing.kind.all_in_schema(),
        schema_sql = quote_ident(&missing.schema), admin_sql = quote_ident(admin),
        and_more = if missing.more > 0 { format!(" (and {} more privileges)", missing.more) } else { String::new() }
    )]
    MissingObjectGrantOption { admin: String, db_name: String, missing: Box<UngrantableObject> },

    #[error(
        "admin {admin:?} cannot grant USAGE on schema {schema:?} in database {db_name:?}, and the \
         user has no USAGE there through PUBLIC or the session's roles, so it could not use the \
         objects it would be granted: as the schema's owner (or a superuser), run \
         `GRANT USAGE ON SCHEMA {schema_sql} TO {admin_sql} WITH GRANT OPTION` in database {db_name:?}",
        schema_sql = quote_ident(schema), admin_sql = quote_ident(admin)
    )]
    MissingSchemaGrantOption { admin: String, db_name: String, schema: String },

    #[error(
        "admin {admin:?} has no USAGE on schema {schema:?} in database {db_name:?}, which it needs \
         to name the objects there it grants on: as the schema's owner (or a superuser), run \
         `GRANT USAGE ON SCHEMA {schema_sql} TO {admin_sql}` in database {db_name:?}",
        schema_sql = quote_ident(schema), admin_sql = quote_ident(admin)
    )]
    MissingSchemaUsage { admin: String, db_name: String, schema: String },

    #[error(
        "session {session_id:?} of database user {user:?} has already ended; a start delivered \
         after its end is refused: start a new session"
    )]
    SessionAlreadyEnded { session_id: String, user: String },

    #[error(
        "database role {role:?} does not exist on database {database:?}: create it \
         (`CREATE ROLE {role_sql}`) or remove it from the policy",
        role_sql = quote_ident(role)
    )]
    UnknownDbRole { role: String, database: String },

    #[error("database role {role:?} is never granted by pg-autouser: {reason}")]
    RefusedDbRole { role: String, reason: String },

    #[error(
        "admin {admin:?} lacks CONNECT on database {db_name:?}: run \
         `GRANT CONNECT ON DATABASE {db_sql} TO {admin_sql}`",
        db_sql = quote_ident(db_name), admin_sql = quote_ident(admin)
    )]
    MissingConnect { admin: String, db_name: String },

    #[error(
        "admin {admin:?} lacks USAGE or CREATE on schema {schema:?} of database {db_name:?}: run \
         `GRANT USAGE ON SCHEMA {schema_sql} TO {admin_sql}; GRANT CREATE ON SCHEMA {schema_sql} TO {admin_sql}`",
        schema_sql = quote_ident(schema), admin_sql = quote_ident(admin)
    )]
    MissingSchemaPrivilege { admin: String, schema: String, db_name: String },

    #[error(
        "admin {admin:?} cannot grant role {role:?} (permission denied): run \
         `GRANT {role_sql} TO {admin_sql} WITH ADMIN OPTION`",
        role_sql = quote_ident(role), admin_sql = quote_ident(admin)
    )]
    MissingAdminOption { admin: String, role: String },

    #[error(
        "admin {admin:?} cannot create roles: run `ALTER ROLE {admin_sql} CREATEROLE` as a superuser \
         (on RDS, as the master user)",
        admin_sql = quote_ident(admin)
    )]
    MissingCreateRole { admin: String },

    #[error(
        "{endpoint} is read-only (an Aurora reader endpoint or a hot standby): point the config at \
         the writer endpoint"
    )]
    ReadOnlyEndpoint { endpoint: String },

    #[error(
        "the read replica {replica} has not replayed the writer's changes within {bound:?} ({}): the \
         user is provisioned on the writer; a retry waits again without redoing it. {}",
        match behind_bytes { Some(bytes) => format!("{bytes} bytes behind"), None => "its position unknown".to_string() },
        if *paused { "Replay is paused on the replica (pg_is_wal_replay_paused()): resume it with \
            SELECT pg_wal_replay_resume()" } else { "If it lags often, raise the entry's replica_wait or \
            look at the replica's replication (pg_stat_wal_receiver)" }
    )]
    ReplicaBehind { replica: String, behind_bytes: Option<i64>, paused: bool, bound: std::time::Duration },

    #[error(
        "{endpoint} is configured as a read replica (primary:) but is not in recovery, so it does not \
         receive the writer's changes (promoted?): point uri at a standby of the writer, or remove \
         primary: if it is now the writer"
    )]
    NotAReplica { endpoint: String },

    #[error(
        "database {database:?} ({resource}) has no tag {tag:?}, so pg-autouser does not manage it: \
         tag it with the admin user's name to enable provisioning (removing the tag is how \
         provisioning is turned off, for example before a Blue/Green switchover)"
    )]
    NotManaged { database: String, resource: String, tag: String },

    #[error(
        "IAM database authentication is disabled on {resource} (database {database:?}): enable it \
         (aws rds modify-db-instance or modify-db-cluster with --enable-iam-database-authentication), \
         or use auth: {{method: password, secret_arn: …}}"
    )]
    IamAuthDisabled { database: String, resource: String },

    #[error("admin {admin:?} could not log in to {endpoint}: {detail}")]
    AdminAuthFailed { admin: String, endpoint: String, detail: String },

    #[error(
        "database {db_name:?} does not exist on {endpoint}: fix the event's db_name or admin_user.default_database"
    )]
    DatabaseNotFound { db_name: String, endpoint: String },

    #[error("admin credentials are unavailable: {0}")]
    Credentials(String),

    #[error("{what} is unavailable, retry later: {detail}")]
    DependencyUnavailable { what: String, detail: String },

    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },

    /// The server refused the admin's login for want of a connection slot (SQLSTATE 53300)
    /// every time it was tried ([`crate::pg::LOGIN_ATTEMPTS`], with backoff).
    #[error(
        "{endpoint} has no connection slot for admin {admin:?}: the server said {detail:?} (SQLSTATE 53300) \
         to {attempts} attempt(s) with backoff; this is retried later, and to make room raise the \
         server's max_connections, lower the session functions' concurrency limit (SessionFunctionConcurrency \
         in template.yaml, sessionFunctionConcurrency in the CDK construct), or, if the admin's own \
         CONNECTION LIMIT ran out, set it to what `autouser preflight` recommends \
         (`ALTER ROLE {admin_sql} CONNECTION LIMIT <n>;`), which also keeps a burst of sessions from \
         taking the applications' slots",
        admin_sql = quote_ident(admin)
    )]
    TooManyConnections { admin: String, endpoint: String, detail: String, attempts: u32 },

    /// The connection closed while a session-end's COMMIT was in flight: it may have been
    /// applied. `planned` is the outcome it had if it was; [`crate::engine::confirm_end`] runs
    /// the end again on a new connection and finds out.
    #[error(
        "the connection to {endpoint} closed during the COMMIT of the session-end of database user \
         {user:?}, so whether it was applied is unknown ({detail}): run the same end again, which finds out"
    )]
    EndUnconfirmed { user: String, endpoint: String, detail: String, planned: Box<EndOutcome> },

    #[error("gave up on database user {user:?} after {attempts} attempts under contention: {last}")]
    Contention { user: String, attempts: u32, last: String },

    #[error(transparent)]
    Ledger(#[from] LedgerError),

    #[error("admin {admin:?} was denied {action}: {detail}")]
    PermissionDenied { admin: String, action: String, detail: String },

    #[error("{action} failed on {endpoint}: {}", error_chain(source))]
    Postgres {
        action: String,
        endpoint: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// An RDS read replica or Aurora reader whose writer the RDS API names, but which the
    /// function could not look up (another region or account it may not describe, a deleted
    /// source): the session is refused rather than provisioned anywhere else.
    #[error(
        "{replica} is a read replica, and its writer {writer} could not be reached through the RDS API \
         ({detail}): allow the function rds:DescribeDBInstances, rds:DescribeDBClusters and \
         rds:DescribeGlobalClusters where the writer is (its region and account), or configure the writer's \
         own entry, or set allow_replica: false to refuse sessions on the replica"
    )]
    WriterUnreachable { replica: String, writer: String, detail: String },
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(Box::new(error))
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Event(error) => Error::Event(error),
            Refusal::Ledger(error) => Error::Ledger(error),
            Refusal::Policy { person, database, source } => Error::Policy { person, database, source },
            Refusal::InvalidUserName { person, source } => Error::InvalidUserName { person, source },
            Refusal::UnknownDatabase { database } => Error::UnknownDatabase { database },
            Refusal::UserConflict { user, group } => Error::UserConflict { user, group },
            Refusal::IdentityConflict { user, owner, requested } => Error::IdentityConflict { user, owner, requested },
            Refusal::RolesMismatch { user, active, requested } => Error::RolesMismatch { user, active, requested },
            Refusal::ForeignGrant { user, role, grantor } => Error::ForeignGrant { user, role, grantor },
            Refusal::PermissionsMismatch { user, db_name, other_session_has_rules } => {
                Error::PermissionsMismatch { user, db_name, other_session_has_rules }
            }
            Refusal::MissingObjectGrantOption { admin, db_name, missing } => {
                Error::MissingObjectGrantOption { admin, db_name, missing }
            }
            Refusal::MissingSchemaGrantOption { admin, db_name, schema } => {
                Error::MissingSchemaGrantOption { admin, db_name, schema }
            }
            Refusal::MissingSchemaUsage { admin, db_name, schema } => {
                Error::MissingSchemaUsage { admin, db_name, schema }
            }
            Refusal::SessionAlreadyEnded { session_id, user } => Error::SessionAlreadyEnded { session_id, user },
            Refusal::UnknownDbRole { role, database } => Error::UnknownDbRole { role, database },
            Refusal::RefusedDbRole { role, reason } => Error::RefusedDbRole { role, reason },
            Refusal::ReadOnlyEndpoint { endpoint } => Error::ReadOnlyEndpoint { endpoint },
            Refusal::IdentityUnverified { check, detail } => Error::IdentityUnverified { check, detail },
        }
    }
}

impl Error {
    /// Stable name of the situation, for callers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigInvalid",
            Error::Event(_) => "EventInvalid",
            Error::Policy { .. } => "PolicyDenied",
            Error::InvalidUserName { .. } => "InvalidUserName",
            Error::UnknownDatabase { .. } => "UnknownDatabase",
            Error::IdentityUnverified { .. } => "IdentityUnverified",
            Error::UserConflict { .. } => "UserConflict",
            Error::IdentityConflict { .. } => "IdentityConflict",
            Error::RolesMismatch { .. } => "RolesMismatch",
            Error::PermissionsMismatch { .. } => "PermissionsMismatch",
            Error::MissingObjectGrantOption { .. } => "MissingObjectGrantOption",
            Error::MissingSchemaGrantOption { .. } => "MissingSchemaGrantOption",
            Error::MissingSchemaUsage { .. } => "MissingSchemaUsage",
            Error::SessionAlreadyEnded { .. } => "SessionAlreadyEnded",
            Error::ForeignGrant { .. } => "ForeignGrant",
            Error::UnknownDbRole { .. } => "UnknownDbRole",
            Error::RefusedDbRole { .. } => "RefusedDbRole",
            Error::MissingConnect { .. } => "MissingConnect",
            Error::MissingSchemaPrivilege { .. } => "MissingSchemaPrivilege",
            Error::MissingAdminOption { .. } => "MissingAdminOption",
            Error::MissingCreateRole { .. } => "MissingCreateRole",
            Error::ReadOnlyEndpoint { .. } => "ReadOnlyEndpoint",
            Error::ReplicaBehind { .. } => "ReplicaBehind",
            Error::NotAReplica { .. } => "NotAReplica",
            Error::AdminAuthFailed { .. } => "AdminAuthFailed",
            Error::NotManaged { .. } => "NotManaged",
            Error::IamAuthDisabled { .. } => "IamAuthDisabled",
            Error::DatabaseNotFound { .. } => "DatabaseNotFound",
            Error::Credentials(_) => "CredentialsInvalid",
            Error::DependencyUnavailable { .. } => "DependencyUnavailable",
            Error::Unreachable { .. } | Error::EndUnconfirmed { .. } => "DatabaseUnreachable",
            Error::TooManyConnections { .. } => "TooManyConnections",
            Error::Contention { .. } => "Contention",
            Error::Ledger(_) => "LedgerUnreadable",
            Error::PermissionDenied { .. } => "PermissionDenied",
            Error::Postgres { .. } => "DatabaseError",
            Error::WriterUnreachable { .. } => "WriterUnreachable",
        }
    }

    /// Whether the same event may succeed when retried later without anyone changing
    /// anything: network trouble, a restarting server, contention. Everything else needs a
    /// person to change the config, the policy, the event or the database.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::EndUnconfirmed { .. }
            | Error::TooManyConnections { .. }
            | Error::Contention { .. }
            | Error::ReplicaBehind { .. }
            | Error::DependencyUnavailable { .. } => true,
            Error::Postgres { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// The error and its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

/// Whether a driver error may go away on retry: a lost connection, a server that is starting
/// or stopping, a timeout, a lock conflict.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return true;
    };
    let code = db.code().code();
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::LOCK_NOT_AVAILABLE]
            .contains(db.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_conflict_names_both_identities() {
        let err = Error::from(Refusal::IdentityConflict {
            user: "alice".into(),
            owner: Box::new(Identity { user: "alice".into(), origin_cluster: None }),
            requested: Box::new(Identity { user: "alice".into(), origin_cluster: Some("root".into()) }),
        });
        assert_eq!(err.kind(), "IdentityConflict");
        assert!(err.to_string().contains("local user \"alice\""), "{err}");
        assert!(err.to_string().contains("user \"alice\" of cluster \"root\""), "{err}");
    }

    #[test]
    fn an_unverified_identity_is_permanent_and_names_its_check() {
        let err =
            Error::from(Refusal::IdentityUnverified { check: Check::Expired, detail: "the token has expired".into() });
        assert_eq!(err.kind(), "IdentityUnverified");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("check `expired`"), "{err}");
    }
}
