//! The configuration file: which databases pg-autouser manages, how it logs in as their admin,
//! and the access policy (Teleport role documents, inline under `roles` or from `roles_file`).
//!
//! YAML, so JSON loads too. Unknown keys in our own sections are errors: a typo must not turn
//! into a silently ignored setting. Relative file paths are resolved against the directory of
//! the configuration file.
//!
//! This module holds the validated `Config`, its errors and the durations it reads; the rest is
//! cut by concern: `load` (the file's top level, read and checked), `database` (the `databases`
//! entries), `admin` (how the admin logs in: auth and TLS) and `roles` (`roles` and
//! `roles_file`).

mod admin;
mod database;
mod load;
mod roles;

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::identity::IdentityConfig;
use crate::naming;
use crate::policy::{Policy, PolicyError};

pub use admin::{AdminUser, AuthConfig, TlsConfig, TlsMode};
pub use database::{
    DatabaseConfig, DatabaseType, Location, RdsLocator, RdsResource, ReaderInstance, ResolvedDatabase, TagKeys,
    WriterEndpoint, DEFAULT_ADMIN_DATABASE_TAG, DEFAULT_ADMIN_TAG, DEFAULT_PORT, DEFAULT_REPLICA_WAIT,
};

pub const DEFAULT_MANAGED_GROUP: &str = "teleport-auto-user";

/// The default `object_inheritor`.
pub const DEFAULT_OBJECT_INHERITOR: &str = "teleport-object-inheritor";

/// Role PostgreSQL on RDS requires for IAM authentication.
pub const RDS_IAM_ROLE: &str = "rds_iam";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid YAML or JSON at `{path}`: {message}")]
    Syntax { path: String, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("config `roles` or `roles_file`: {0}")]
    Policy(#[from] PolicyError),
    #[error("cannot read roles_file {path}: {source}")]
    ReadRoles { path: PathBuf, source: std::io::Error },
    #[error(
        "roles_file {path}, document {document}: not a Teleport role document or list of them at `{at}`: {message}"
    )]
    RolesSyntax { path: PathBuf, document: usize, at: String, message: String },
    #[error("role {role:?} is defined twice, in {first} and in {second}: keep one")]
    DuplicateRole { role: String, first: String, second: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// Values that replace the config file's, set by a deployment (environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub managed_group: Option<String>,
    pub admin_user_tag: Option<String>,
    pub default_database_tag: Option<String>,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// This cluster's name: people whose `origin_cluster` differs get `remote-<user>-<origin>`.
    pub cluster_name: Option<String>,
    /// Group every provisioned user belongs to; membership is what makes a user "managed".
    pub managed_group: String,
    /// The `NOLOGIN` role that `best_effort_reassign_and_drop` hands a dropped user's objects
    /// to (`REASSIGN OWNED`); created where missing, as the managed group is.
    pub object_inheritor: String,
    pub databases: Vec<DatabaseConfig>,
    pub tag_keys: TagKeys,
    pub policy: Policy,
    /// Sessions older than this, whose user has no live connection, are closed by the reaper.
    pub max_session_duration: std::time::Duration,
    /// How long the managed group's comment remembers a session ended without a ledger to
    /// record it (its user dropped, or its end delivered before its start), so that a start
    /// delivered that late is still refused. At least the longest time the delivery path can
    /// hold an event.
    pub redelivery_window: std::time::Duration,
    /// When a user's last session ends (or the reaper locks it), end its open connections
    /// too: `NOLOGIN` and `DROP ROLE` only stop new logins. Off by default.
    pub terminate_connections: bool,
    /// The reaper retries the drop of a user that an end locked because its drop was blocked
    /// (`best_effort_drop` with dependent objects, a hand-over that could not run), in the mode
    /// the blocked end recorded. Off by default: see docs/policies.md.
    pub retry_blocked_drops: bool,
    /// How many creator roles create and manage the users on PostgreSQL 16+ (0: none, the
    /// admin does; [`DEFAULT_CREATOR_ROLES`] unless set). Each user belongs to one, by its
    /// name's hash ([`naming::creator_role_for`]).
    pub creator_roles: u32,
    /// PostgreSQL's predefined roles (`pg_*`) that policies may grant; every other predefined
    /// role, and every role that is a member of one, is refused (`RefusedDbRole`).
    pub allowed_predefined_roles: BTreeSet<String>,
    /// Signed identity (`identity:`): the issuers whose tokens say who a person is. `None`:
    /// events are taken on trust.
    pub identity: Option<IdentityConfig>,
}

/// `creator_roles` unless the config sets it. Creators are made as users need them, and each
/// is made once, so a start that makes one costs more: 128 are all made within the first few
/// hundred users, and keep each creator's share under 80 users up to 10,000 (BENCHMARKS.md,
/// "Scale"). Larger populations set more, up to [`naming::MAX_CREATOR_ROLES`].
pub const DEFAULT_CREATOR_ROLES: u32 = 128;

impl Config {
    /// The creator role of `db_user`, when `creator_roles` is set.
    pub fn creator_role_for(&self, db_user: &str) -> Option<String> {
        (self.creator_roles > 0).then(|| naming::creator_role_for(&self.managed_group, self.creator_roles, db_user))
    }

    /// Every creator role's name, in order.
    pub fn creator_role_names(&self) -> Vec<String> {
        (0..self.creator_roles).map(|index| naming::creator_role_name(&self.managed_group, index)).collect()
    }
}

/// The default `max_session_duration`: Teleport's default maximum session TTL.
pub const DEFAULT_MAX_SESSION_DURATION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The default `redelivery_window`: EventBridge's longest retry (maximum event age 24 hours),
/// which is also longer than Lambda's asynchronous retries (at most 6 hours).
pub const DEFAULT_REDELIVERY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A `max_session_duration` or `redelivery_window` as [`parse_duration`] reads it.
const DURATION_PATTERN: &str = r"^\s*[0-9]+[smhd]\s*$";

/// `90s`, `30m`, `12h`, `2d`: a positive whole number and a unit.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration: write a number and s, m, h or d, e.g. 12h")),
    };
    match number.parse::<u64>().ok().and_then(|n| n.checked_mul(seconds_per_unit)) {
        Some(seconds) if seconds > 0 => Ok(std::time::Duration::from_secs(seconds)),
        _ => Err(format!("{text:?} is not a positive duration: e.g. 12h")),
    }
}

#[cfg(test)]
mod test_support;
