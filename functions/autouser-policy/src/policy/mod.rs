//! The access policy: which sessions get a database user, in which mode, with which roles.
//!
//! Roles are Teleport role documents (v3 to v8) as `tctl get roles` prints them. Every field
//! loads; the fields that bear on database users are read as Teleport reads them, the others
//! are ignored. The semantics, which are the contract:
//! - A person's roles (`AccessRequest::role_names`) must all exist in the policy.
//! - A role provisions when its mode is `keep`, `best_effort_drop` or
//!   `best_effort_reassign_and_drop`: `create_db_user_mode`,
//!   or, when that is unset, the legacy `create_db_user: true` (`keep`), as Teleport reads it.
//! - A role's **allow** block matches a session when its `db_labels` match the database's
//!   labels and its `db_names` match the session's `db_name`. Every label key of the selector
//!   must be on the database with a value matching one of the key's values; `{"*": "*"}`
//!   matches every database. An absent or empty `db_labels` or `db_names` matches nothing.
//! - Values of `db_labels`, `db_names` and deny `db_roles` are `*`, a glob (`*` is the only
//!   wildcard), or a regular expression written `^…$` ([`crate::label_match`]).
//! - A **deny** block applies to a database when its `db_labels` match; an absent deny
//!   `db_labels` applies to every database, so that a deny never fails open (this differs from
//!   allow on purpose); a deny block with no `db_*` field at all does nothing. An applying deny
//!   block with neither `db_names` nor `db_roles` denies the database; one whose `db_names`
//!   match denies the session; its `db_roles` remove roles from the grant. Deny blocks of all
//!   the person's roles apply, whether or not their allow matched. Deny wins.
//! - Only provisioning roles whose allow matched count. The mode is the strongest of theirs
//!   (`best_effort_reassign_and_drop` > `best_effort_drop` > `keep`); a session that only non-provisioning roles match is
//!   refused as `off`, one that no role matches as unmatched.
//! - The database roles are the union of the counted roles' `db_roles`, with templates
//!   ([`crate::templates`]) expanded from the person's traits, minus denied ones. A requested
//!   subset narrows the grant; asking for a role outside it is an error. Allowed `db_roles` are
//!   role names, never patterns. Every expanded value must be a valid role name, or the session
//!   is refused.
//! - Template values in `db_names` name databases exactly, except `*`, as Teleport compares
//!   them; template values in `db_roles` are role names, never patterns.
//! - `db_users` is ignored: under auto-provisioning the user is always the person's own.
//! - A field that would narrow access and that pg-autouser cannot evaluate refuses the role at
//!   load, naming it: `db_labels_expression`, `db_service_labels_expression`,
//!   `db_service_labels` other than `{"*": "*"}` (any in deny), templates in `db_labels`,
//!   regular expressions and templates in `db_permissions` matches, and unknown `db_*` fields.
//! - `db_permissions` (object permissions) are rules on labelled objects, evaluated once the
//!   objects are listed: see [`crate::permissions`]. The session carries the allow rules of the
//!   counted roles and the deny rules of the applying deny blocks. A deny block's
//!   `db_permissions` remove permissions; they do not deny the database.
//!
//! This module holds the `Policy`, built from the roles at load, and its errors; the rest is cut
//! by concern: `document` (the role documents as written), `compile` (each role checked and
//! compiled at load) and `evaluate` (what a session is allowed).

mod compile;
mod document;
mod evaluate;

use std::collections::BTreeMap;

use crate::label_match::PatternError;
use crate::permissions::{self, ImportRule, RuleError};

use compile::{compile_role, CompiledRole};

pub use crate::label_match::{glob_match, LabelValues};
pub use document::{Conditions, CreateDbUserMode, Role, RoleMetadata, RoleOptions, RoleSpec, SUPPORTED_VERSIONS};
pub use evaluate::{AccessRequest, Grant, GrantableRoles, Traits};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("role {role:?}: kind must be \"role\", not {kind:?}")]
    NotARole { role: String, kind: String },
    #[error("role {role:?}: version {version:?} is not supported: use one of {}", SUPPORTED_VERSIONS.join(", "))]
    UnsupportedVersion { role: String, version: String },
    #[error("a role has an empty metadata.name: name every role")]
    UnnamedRole,
    #[error("role {role:?} is defined twice: role names must be unique")]
    DuplicateRole { role: String },
    #[error("role {role:?}: unknown field {block}.{field}: check the spelling (db_labels, db_names, db_roles, db_permissions); pg-autouser refuses db_* fields it does not know because they could narrow access")]
    UnknownField { role: String, block: &'static str, field: String },
    #[error("role {role:?}: {block}.{field} {problem}; pg-autouser cannot evaluate it, and ignoring it could grant more than Teleport would: remove it from the roles pg-autouser loads, or express it with db_labels")]
    UnevaluatedField { role: String, block: &'static str, field: &'static str, problem: String },
    #[error("role {role:?}: {block}.{source}")]
    DbPermissions { role: String, block: &'static str, source: RuleError },
    #[error("role {role:?}: {block}.db_permissions entry {index}: match value {value:?} is {what}, which db_permissions do not support: use * globs")]
    DbPermissionsPattern { role: String, block: &'static str, index: usize, value: String, what: &'static str },
    #[error("import_rules: {0}")]
    ImportRules(String),
    #[error("role {role:?}: {field}: {source}")]
    InvalidPattern { role: String, field: String, source: PatternError },
    #[error("role {role:?}: {field} {value:?} is a template, which pg-autouser does not evaluate in {field}: write the values literally")]
    TemplateNotSupported { role: String, field: String, value: String },
    #[error("role {role:?}: label key \"*\" only matches with value \"*\"")]
    WildcardLabelKey { role: String },
    #[error("role {role:?}: allow.db_roles entry {value:?} is a pattern; allow lists role names so that no role is reached by accident")]
    GlobInAllowedRole { role: String, value: String },
    #[error("role {role:?}: invalid template {value:?}: {reason}")]
    InvalidTemplate { role: String, value: String, reason: String },
    #[error("role {role:?}: db_roles entry {value:?} is not a valid role name: {reason}")]
    InvalidRoleName { role: String, value: String, reason: String },
    #[error("role {role:?} is not in the policy: add it under `roles` or fix the event's roles")]
    UnknownRole { role: String },
    #[error("no role of {roles:?} allows database {database:?} with db_name {db_name:?}")]
    NoMatchingRole { database: String, db_name: String, roles: Vec<String> },
    #[error("user provisioning is off for database {database:?} with db_name {db_name:?}: set create_db_user_mode to keep, best_effort_drop or best_effort_reassign_and_drop")]
    ProvisioningOff { database: String, db_name: String },
    #[error("role {role:?} denies database {database:?}")]
    DatabaseDenied { role: String, database: String },
    #[error("role {role:?} denies db_name {db_name:?}")]
    DbNameDenied { role: String, db_name: String },
    #[error("database role {db_role:?} was requested but is not allowed on database {database:?}")]
    DbRoleNotAllowed { db_role: String, database: String },
    #[error("database role {db_role:?} was requested but role {role:?} denies it")]
    DbRoleDenied { db_role: String, role: String },
    #[error("trait {trait_name} value {value:?} does not make a valid role name: {reason}")]
    InvalidTraitValue { trait_name: String, value: String, reason: String },
}

/// A validated set of roles, and the import rules that label database objects.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<String, CompiledRole>,
    import_rules: Vec<ImportRule>,
}

impl Policy {
    pub fn new(roles: Vec<Role>) -> Result<Policy, PolicyError> {
        Policy::with_import_rules(roles, Vec::new())
    }

    pub fn with_import_rules(roles: Vec<Role>, import_rules: Vec<ImportRule>) -> Result<Policy, PolicyError> {
        let import_rules = permissions::compile_import_rules(import_rules).map_err(PolicyError::ImportRules)?;
        let mut compiled = BTreeMap::new();
        for role in roles {
            let name = role.metadata.name.clone();
            let entry = compile_role(role)?;
            if compiled.insert(name.clone(), entry).is_some() {
                return Err(PolicyError::DuplicateRole { role: name });
            }
        }
        Ok(Policy { roles: compiled, import_rules })
    }

    /// Whether any role grants object permissions: sessions then run in their own database.
    pub fn has_db_permissions(&self) -> bool {
        self.roles.values().any(|c| !c.allow_permissions.is_empty())
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name).map(|c| &c.role)
    }

    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod test_support;
