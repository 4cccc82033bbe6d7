//! What a session start or end did, as the JSON the CLI prints and the Lambda functions return.

use serde::Serialize;

use crate::permissions::PermissionSummary;
use crate::policy::CreateDbUserMode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartOutcome {
    /// Always `active`.
    pub status: &'static str,
    pub db_user: String,
    pub database: String,
    pub db_name: String,
    pub session_id: String,
    pub mode: CreateDbUserMode,
    /// Database roles the user holds for this session, besides the managed group.
    pub db_roles: Vec<String>,
    /// Roles every managed user on this database holds: the managed group, and `rds_iam` on RDS.
    pub base_roles: Vec<String>,
    /// Whether this call created the database user.
    pub created_user: bool,
    /// Whether the session was already open (a redelivered start): nothing was changed.
    pub already_active: bool,
    /// Sessions of this user open after this call.
    pub open_sessions: usize,
    /// Object permissions (`db_permissions`) the user holds in `db_name`, by object kind and
    /// schema, with counts. Absent when the session has no object permission rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub db_permissions: Vec<PermissionSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStatus {
    /// Last session ended, `keep`: roles stripped, `NOLOGIN`.
    Deactivated,
    /// Last session ended, `best_effort_drop` or `best_effort_reassign_and_drop`: the user is
    /// gone.
    Dropped,
    /// Other sessions of the user remain open; the user is untouched.
    InUse,
    /// Nothing to do: unknown or already ended session, or a user that is not ours.
    Noop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndOutcome {
    pub status: EndStatus,
    pub db_user: String,
    pub database: String,
    pub db_name: String,
    pub session_id: String,
    /// The mode recorded at the session's start, when the session was known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<CreateDbUserMode>,
    pub open_sessions: usize,
    /// Why the outcome is what it is, for `noop` and for a drop that fell back to `keep`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Object privileges revoked in `db_name`, by object kind and schema, with counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked_db_permissions: Vec<PermissionSummary>,
    /// Object privileges the user still holds directly in `db_name` after the end, because the
    /// admin cannot revoke them (an operator granted them as another role, or on objects the
    /// admin holds nothing on); `reason` names each and the `REVOKE` to run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrevoked_db_permissions: Vec<PermissionSummary>,
    /// Connections of the user ended because its last session ended
    /// (`terminate_connections`); absent when the option is off or nothing was locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_connections: Option<usize>,
    /// Why a `best_effort_drop` or `best_effort_reassign_and_drop` end locked the user instead
    /// of dropping it; `reason` says the same in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_blocked: Option<DropBlocked>,
    /// Defaults the user had set on its own role while logged in (`ALTER ROLE self [IN
    /// DATABASE d] SET ...`) that the end reset: the database's name, or `null` for those of
    /// every database. (Its password is cleared by every end that keeps the user, always.)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleared_settings: Vec<Option<String>>,
    /// Sessions on a read replica: whether the replica had replayed the end within the
    /// entry's `replica_wait`. `false`: until it does, the user can still log in there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_replayed: Option<bool>,
}

/// What stopped a drop. The user is locked as in `keep` either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropBlocked {
    pub kind: DropBlockedKind,
    /// The database (inside the server) where it happened.
    pub db_name: String,
    /// What PostgreSQL or pg-autouser found, in words.
    pub detail: String,
    /// What the operator runs so that the next end drops the user, when that is SQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropBlockedKind {
    /// `best_effort_drop`: the user owns objects or holds privileges (`detail` names them).
    DependentObjects,
    /// The admin lacks a privilege that `REASSIGN OWNED`, `DROP OWNED` or the drop needs.
    AdminLacksPrivilege,
    /// The admin could not connect to a database that holds the user's objects.
    CannotConnect,
    /// A statement failed for another reason (`detail` says which and why).
    StepFailed,
}
