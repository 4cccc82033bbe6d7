//! What the pure domain refuses, as facts: a request that the config, the event or the policy
//! does not allow (`request`), or a plan that the observed database state does not allow
//! (`plan`), or an event or ledger that cannot be read. Refusals cost no I/O beyond what was
//! already read.
//!
//! A refusal has no message of its own: the engine's `Error` words each one (same name, same
//! fields), because the messages quote the SQL that fixes them and SQL text is the engine's.

use std::collections::BTreeSet;

use crate::event::EventError;
use crate::identity::{Check, Unverified};
use crate::ledger::{Identity, LedgerError};
use crate::naming::NameError;
use crate::permissions::UngrantableObject;
use crate::policy::PolicyError;

/// A decision not to go on. Each variant is the engine `Error` variant of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The event is not one a session can start or end with.
    Event(EventError),
    /// The user's ledger cannot be read, so nothing is decided about the user.
    Ledger(LedgerError),
    /// The policy gives the person no access to the database.
    Policy { person: String, database: String, source: Box<PolicyError> },
    /// The person's name cannot become a role name.
    InvalidUserName { person: String, source: NameError },
    /// The event names a database the config does not have.
    UnknownDatabase { database: String },
    /// The role exists and is not in the managed group.
    UserConflict { user: String, group: String },
    /// The role belongs to another identity (its ledger says).
    IdentityConflict { user: String, owner: Box<Identity>, requested: Box<Identity> },
    /// An open session holds other roles.
    RolesMismatch { user: String, active: BTreeSet<String>, requested: BTreeSet<String> },
    /// The user holds a membership granted by another role, which the admin cannot revoke.
    ForeignGrant { user: String, role: String, grantor: String },
    /// An open session on the same database has other object rules.
    PermissionsMismatch { user: String, db_name: String, other_session_has_rules: bool },
    /// The admin lacks the grant option on an object the rules grant.
    MissingObjectGrantOption { admin: String, db_name: String, missing: Box<UngrantableObject> },
    /// The admin cannot grant USAGE on a schema the user needs.
    MissingSchemaGrantOption { admin: String, db_name: String, schema: String },
    /// The admin has no USAGE on a schema of objects it grants on.
    MissingSchemaUsage { admin: String, db_name: String, schema: String },
    /// The session has already ended.
    SessionAlreadyEnded { session_id: String, user: String },
    /// A role the policy grants does not exist.
    UnknownDbRole { role: String, database: String },
    /// A role pg-autouser never grants, and why.
    RefusedDbRole { role: String, reason: String },
    /// The server is read-only.
    ReadOnlyEndpoint { endpoint: String },
    /// The event's identity token is missing or failed a check (`identity:`).
    IdentityUnverified { check: Check, detail: String },
}

impl From<Unverified> for Refusal {
    fn from(error: Unverified) -> Self {
        Refusal::IdentityUnverified { check: error.check, detail: error.detail }
    }
}

impl From<EventError> for Refusal {
    fn from(error: EventError) -> Self {
        Refusal::Event(error)
    }
}

impl From<LedgerError> for Refusal {
    fn from(error: LedgerError) -> Self {
        Refusal::Ledger(error)
    }
}
