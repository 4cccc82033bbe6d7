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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::label_match::{self, Matcher, PatternError};
use crate::naming;
use crate::permissions::{self, CompiledRule, ImportRule, ObjectRules, PermissionRule, RuleError};
use crate::templates::{Template, TemplateError, Value};

pub use crate::label_match::{glob_match, LabelValues};

/// Role versions whose database fields this module reads. `tctl get roles` prints Teleport's
/// preset roles at v6 and v7, and custom roles at the version they were written in.
pub const SUPPORTED_VERSIONS: &[&str] = &["v3", "v4", "v5", "v6", "v7", "v8"];

/// What happens to a person's database user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreateDbUserMode {
    /// No provisioning.
    #[default]
    Off,
    /// Lock the user (strip roles, NOLOGIN) at session end.
    Keep,
    /// Drop the user at session end, or lock it when objects depend on it.
    BestEffortDrop,
    /// Hand the user's objects to the object inheritor (`REASSIGN OWNED`, then `DROP OWNED`)
    /// in every database where it has any, then drop it; lock it when a step cannot run.
    BestEffortReassignAndDrop,
}

impl fmt::Display for CreateDbUserMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CreateDbUserMode::Off => "off",
            CreateDbUserMode::Keep => "keep",
            CreateDbUserMode::BestEffortDrop => "best_effort_drop",
            CreateDbUserMode::BestEffortReassignAndDrop => "best_effort_reassign_and_drop",
        })
    }
}

/// A person's traits, as in the event: `{"internal": {"db_roles": ["auditor"]}, "external": {}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Traits {
    #[serde(default)]
    pub internal: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub external: BTreeMap<String, Vec<String>>,
}

/// A Teleport role document. Fields Teleport adds that this module does not name are ignored,
/// except unknown `db_*` fields of `allow` and `deny`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Role {
    #[schemars(extend("const" = "role"))]
    pub kind: String,
    #[schemars(extend("enum" = SUPPORTED_VERSIONS))]
    pub version: String,
    pub metadata: RoleMetadata,
    #[serde(default)]
    pub spec: RoleSpec,
}

/// `name`; `description`, `labels`, `expires`, `revision` and the rest are ignored.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RoleMetadata {
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct RoleSpec {
    #[serde(default)]
    pub options: RoleOptions,
    /// `db_service_labels` here may only be `{"*": "*"}`.
    #[serde(default)]
    #[schemars(extend("properties" = {"db_service_labels": {"anyOf": [
        {"type": "null"}, {"const": {"*": "*"}}, {"const": {"*": ["*"]}}
    ]}}))]
    pub allow: Conditions,
    /// `db_service_labels` here may only be empty.
    #[serde(default)]
    #[schemars(extend("properties" = {"db_service_labels": {"anyOf": [{"type": "null"}, {"maxProperties": 0}]}}))]
    pub deny: Conditions,
}

/// The options that bear on database users; the others (`max_session_ttl`, `forward_agent`,
/// `record_session`, …) are Teleport's own and ignored.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct RoleOptions {
    /// `off`, `keep`, `best_effort_drop` or `best_effort_reassign_and_drop`, or Teleport's
    /// numbers (1 off, 2 keep, 3 best_effort_drop). `None` when unset (Teleport's "unspecified", also written `""` or
    /// `0`): then `create_db_user` decides.
    #[serde(default, deserialize_with = "deserialize_mode")]
    #[schemars(schema_with = "mode_schema")]
    pub create_db_user_mode: Option<CreateDbUserMode>,
    /// The legacy option: `true` means `keep` when `create_db_user_mode` is unset.
    #[serde(default)]
    pub create_db_user: Option<bool>,
}

impl RoleOptions {
    /// The role's mode as Teleport computes it: `create_db_user_mode` wins when set.
    pub fn mode(&self) -> CreateDbUserMode {
        match (self.create_db_user_mode, self.create_db_user) {
            (Some(mode), _) => mode,
            (None, Some(true)) => CreateDbUserMode::Keep,
            (None, _) => CreateDbUserMode::Off,
        }
    }
}

/// `create_db_user_mode` as Teleport decodes it: the names, the enum numbers (0 unspecified,
/// 1 off, 2 keep, 3 best_effort_drop), or `false` (YAML 1.1's reading of a bare `off`).
fn deserialize_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<CreateDbUserMode>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Name(String),
        Number(i64),
        Flag(bool),
    }
    let invalid = |what: String| {
        serde::de::Error::custom(format!("create_db_user_mode {what} is not a mode: use off, keep, best_effort_drop or best_effort_reassign_and_drop"))
    };
    match Option::<Written>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Written::Name(name)) => match name.as_str() {
            "" => Ok(None),
            "off" => Ok(Some(CreateDbUserMode::Off)),
            "keep" => Ok(Some(CreateDbUserMode::Keep)),
            "best_effort_drop" => Ok(Some(CreateDbUserMode::BestEffortDrop)),
            "best_effort_reassign_and_drop" => Ok(Some(CreateDbUserMode::BestEffortReassignAndDrop)),
            _ => Err(invalid(format!("{name:?}"))),
        },
        Some(Written::Number(number)) => match number {
            0 => Ok(None),
            1 => Ok(Some(CreateDbUserMode::Off)),
            2 => Ok(Some(CreateDbUserMode::Keep)),
            3 => Ok(Some(CreateDbUserMode::BestEffortDrop)),
            _ => Err(invalid(number.to_string())),
        },
        Some(Written::Flag(false)) => Ok(Some(CreateDbUserMode::Off)),
        Some(Written::Flag(true)) => Err(invalid("true".into())),
    }
}

/// The schema of `create_db_user_mode` as [`deserialize_mode`] reads it.
fn mode_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let name = generator.subschema_for::<CreateDbUserMode>();
    // `false` is YAML 1.1's reading of a bare `off`.
    schemars::json_schema!({
        "anyOf": [name, {"const": ""}, {"enum": [0, 1, 2, 3]}, {"const": false}, {"type": "null"}]
    })
}

/// The `db_*` fields of an allow or deny block that [`Conditions`] names; any other `db_*`
/// field refuses the role.
const CONDITIONS_DB_FIELDS: [&str; 8] = [
    "db_labels",
    "db_names",
    "db_roles",
    "db_permissions",
    "db_users",
    "db_service_labels",
    "db_labels_expression",
    "db_service_labels_expression",
];

/// The database part of an allow or deny block. Other Teleport fields (`logins`,
/// `node_labels`, `rules`, `request`, …) are ignored; unknown `db_*` fields are kept to be
/// refused.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(extend("propertyNames" = {"anyOf": [{"enum": CONDITIONS_DB_FIELDS}, {"not": {"pattern": "^db_"}}]}))]
pub struct Conditions {
    pub db_labels: Option<BTreeMap<String, LabelValues>>,
    #[serde(default)]
    pub db_names: Vec<String>,
    #[serde(default)]
    pub db_roles: Vec<String>,
    #[serde(default)]
    pub db_permissions: Vec<PermissionRule>,
    /// Ignored: under auto-provisioning the user is the person's own.
    pub db_users: Option<serde_json::Value>,
    /// Teleport's Database Service selector; only `{"*": "*"}` is accepted (allow).
    pub db_service_labels: Option<BTreeMap<String, LabelValues>>,
    /// Refused unless empty: pg-autouser cannot evaluate predicate expressions.
    #[schemars(regex(pattern = r"^\s*$"))]
    pub db_labels_expression: Option<String>,
    /// Refused unless empty: pg-autouser cannot evaluate predicate expressions.
    #[schemars(regex(pattern = r"^\s*$"))]
    pub db_service_labels_expression: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

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

/// A compiled label selector.
#[derive(Debug, Clone)]
struct Selector {
    /// `{"*": "*"}`: matches every database, whatever the other keys.
    everything: bool,
    keys: Vec<(String, Vec<Matcher>)>,
}

impl Selector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.everything
            || self.keys.iter().all(|(key, values)| {
                key == "*" || labels.get(key).is_some_and(|value| values.iter().any(|m| m.matches(value)))
            })
    }

    fn is_empty(&self) -> bool {
        !self.everything && self.keys.is_empty()
    }
}

/// A `db_names` entry, or a deny `db_roles` entry.
#[derive(Debug, Clone)]
enum Selecting {
    Pattern(Matcher),
    /// Expanded values are compared exactly; for `db_names`, `*` matches every name.
    Template(Template),
}

/// An allow `db_roles` entry: a role name, or a template of role names.
#[derive(Debug, Clone)]
enum Granting {
    Name(String),
    Template { template: Template, written: String },
}

/// A role, validated and with its values compiled.
#[derive(Debug, Clone)]
struct CompiledRole {
    role: Role,
    mode: CreateDbUserMode,
    allow_labels: Option<Selector>,
    allow_names: Vec<Selecting>,
    allow_roles: Vec<Granting>,
    deny_labels: Option<Selector>,
    deny_names: Vec<Selecting>,
    deny_roles: Vec<Selecting>,
    allow_permissions: Vec<CompiledRule>,
    deny_permissions: Vec<CompiledRule>,
}

impl CompiledRole {
    fn name(&self) -> &str {
        &self.role.metadata.name
    }

    fn allow_matches(&self, req: &AccessRequest<'_>) -> bool {
        self.allow_labels.as_ref().is_some_and(|s| !s.is_empty() && s.matches(req.labels))
            && self.allow_names.iter().any(|entry| names_match(entry, req.db_name, req.traits))
    }
}

fn names_match(entry: &Selecting, db_name: &str, traits: &Traits) -> bool {
    match entry {
        Selecting::Pattern(matcher) => matcher.matches(db_name),
        Selecting::Template(template) => {
            template.expand(&traits.internal, &traits.external).iter().any(|value| value == "*" || value == db_name)
        }
    }
}

/// A validated set of roles, and the import rules that label database objects.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<String, CompiledRole>,
    import_rules: Vec<ImportRule>,
}

/// What the policy is asked about.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    pub role_names: &'a [String],
    pub traits: &'a Traits,
    pub database: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub db_name: &'a str,
    pub requested_db_roles: Option<&'a [String]>,
}

/// What the policy allows a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Never `Off`.
    pub mode: CreateDbUserMode,
    pub db_roles: BTreeSet<String>,
    /// Provisioning roles whose allow block matched.
    pub matched_roles: Vec<String>,
    /// Object permission rules, when a matched role has `db_permissions`.
    pub db_permissions: Option<ObjectRules>,
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

    pub fn evaluate(&self, req: &AccessRequest<'_>) -> Result<Grant, PolicyError> {
        let roles = req
            .role_names
            .iter()
            .map(|name| self.roles.get(name).ok_or_else(|| PolicyError::UnknownRole { role: name.clone() }))
            .collect::<Result<Vec<_>, _>>()?;

        // Deny first: it wins.
        let mut denied: Vec<(&Selecting, &str)> = Vec::new();
        let mut denied_permissions: Vec<CompiledRule> = Vec::new();
        for compiled in &roles {
            let deny = &compiled.role.spec.deny;
            let name = compiled.name();
            let empty = compiled.deny_labels.is_none()
                && deny.db_names.is_empty()
                && deny.db_roles.is_empty()
                && deny.db_permissions.is_empty();
            let applies = compiled.deny_labels.as_ref().is_none_or(|selector| selector.matches(req.labels));
            if empty || !applies {
                continue;
            }
            denied_permissions.extend(compiled.deny_permissions.iter().cloned());
            if deny.db_names.is_empty() && deny.db_roles.is_empty() && deny.db_permissions.is_empty() {
                return Err(PolicyError::DatabaseDenied { role: name.to_string(), database: req.database.to_string() });
            }
            if compiled.deny_names.iter().any(|entry| names_match(entry, req.db_name, req.traits)) {
                return Err(PolicyError::DbNameDenied { role: name.to_string(), db_name: req.db_name.to_string() });
            }
            denied.extend(compiled.deny_roles.iter().map(|entry| (entry, name)));
        }

        let matching: Vec<&CompiledRole> = roles.iter().copied().filter(|c| c.allow_matches(req)).collect();
        if matching.is_empty() {
            return Err(PolicyError::NoMatchingRole {
                database: req.database.to_string(),
                db_name: req.db_name.to_string(),
                roles: req.role_names.to_vec(),
            });
        }
        // As in Teleport, only roles that provision contribute roles and permissions.
        let matched: Vec<&CompiledRole> = matching.into_iter().filter(|c| c.mode != CreateDbUserMode::Off).collect();
        let Some(mode) = matched.iter().map(|c| c.mode).max() else {
            return Err(PolicyError::ProvisioningOff {
                database: req.database.to_string(),
                db_name: req.db_name.to_string(),
            });
        };

        let denied_by = |db_role: &str| {
            denied
                .iter()
                .find(|(entry, _)| match entry {
                    Selecting::Pattern(matcher) => matcher.matches(db_role),
                    // Expanded trait values are names, compared exactly.
                    Selecting::Template(template) => {
                        template.expand(&req.traits.internal, &req.traits.external).iter().any(|v| v == db_role)
                    }
                })
                .map(|(_, role)| role.to_string())
        };
        let mut allowed = BTreeSet::new();
        for compiled in &matched {
            for entry in &compiled.allow_roles {
                for db_role in granted_names(entry, req.traits)? {
                    if denied_by(&db_role).is_none() {
                        allowed.insert(db_role);
                    }
                }
            }
        }
        let db_roles = match req.requested_db_roles {
            None => allowed,
            Some(requested) => {
                let mut narrowed = BTreeSet::new();
                for db_role in requested {
                    if let Some(role) = denied_by(db_role) {
                        return Err(PolicyError::DbRoleDenied { db_role: db_role.clone(), role });
                    }
                    if !allowed.contains(db_role) {
                        return Err(PolicyError::DbRoleNotAllowed {
                            db_role: db_role.clone(),
                            database: req.database.to_string(),
                        });
                    }
                    narrowed.insert(db_role.clone());
                }
                narrowed
            }
        };
        let allowed_permissions: Vec<CompiledRule> =
            matched.iter().flat_map(|c| c.allow_permissions.iter().cloned()).collect();
        let db_permissions = (!allowed_permissions.is_empty()).then(|| ObjectRules {
            allow: allowed_permissions,
            deny: denied_permissions,
            import_rules: self.import_rules.clone(),
        });
        Ok(Grant {
            mode,
            db_roles,
            matched_roles: matched.iter().map(|c| c.name().to_string()).collect(),
            db_permissions,
        })
    }
}

/// The role names an allow `db_roles` entry stands for; an expanded value that is not a valid
/// role name refuses the session.
fn granted_names(entry: &Granting, traits: &Traits) -> Result<Vec<String>, PolicyError> {
    match entry {
        Granting::Name(name) => Ok(vec![name.clone()]),
        Granting::Template { template, .. } => template
            .expand(&traits.internal, &traits.external)
            .into_iter()
            .map(|role| {
                naming::validate_identifier(&role).map(|()| role.clone()).map_err(|e| PolicyError::InvalidTraitValue {
                    trait_name: template.trait_name(),
                    value: role,
                    reason: e.to_string(),
                })
            })
            .collect(),
    }
}

/// What any role of a policy could grant on one database, for preflight checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantableRoles {
    /// Literal database role names.
    pub literal: BTreeSet<String>,
    /// Entries that depend on a person's traits (`{{internal.db_roles}}`), as written.
    pub templated: BTreeSet<String>,
}

impl Policy {
    /// The database roles the allow blocks of any role could grant on a database labelled
    /// `labels`, whatever the `db_name` and the person. Deny blocks are not subtracted: a role
    /// denied to some is still grantable to others.
    pub fn grantable_roles(&self, labels: &BTreeMap<String, String>) -> GrantableRoles {
        let mut grantable = GrantableRoles::default();
        for compiled in self.roles.values() {
            let applies = compiled.allow_labels.as_ref().is_some_and(|s| !s.is_empty() && s.matches(labels))
                && !compiled.allow_names.is_empty()
                && compiled.mode != CreateDbUserMode::Off;
            if !applies {
                continue;
            }
            for entry in &compiled.allow_roles {
                match entry {
                    Granting::Name(name) => grantable.literal.insert(name.clone()),
                    Granting::Template { written, .. } => grantable.templated.insert(written.clone()),
                };
            }
        }
        grantable
    }

    /// Whether a role that applies to a database labelled `labels` hands objects to the
    /// object inheritor (`best_effort_reassign_and_drop`), for preflight checks.
    pub fn reassigns_objects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.roles.values().any(|compiled| {
            compiled.mode == CreateDbUserMode::BestEffortReassignAndDrop
                && compiled.allow_labels.as_ref().is_some_and(|s| !s.is_empty() && s.matches(labels))
        })
    }
}

fn compile_role(role: Role) -> Result<CompiledRole, PolicyError> {
    let name = role.metadata.name.clone();
    if name.is_empty() {
        return Err(PolicyError::UnnamedRole);
    }
    if role.kind != "role" {
        return Err(PolicyError::NotARole { role: name, kind: role.kind });
    }
    if !SUPPORTED_VERSIONS.contains(&role.version.as_str()) {
        return Err(PolicyError::UnsupportedVersion { role: name, version: role.version });
    }
    let (allow, deny) = (&role.spec.allow, &role.spec.deny);
    check_unevaluated(&name, "allow", allow)?;
    check_unevaluated(&name, "deny", deny)?;

    let allow_labels = allow.db_labels.as_ref().map(|s| compile_selector(&name, "allow", s)).transpose()?;
    let deny_labels = deny.db_labels.as_ref().map(|s| compile_selector(&name, "deny", s)).transpose()?;
    let allow_names = compile_selecting(&name, "allow.db_names", &allow.db_names)?;
    let deny_names = compile_selecting(&name, "deny.db_names", &deny.db_names)?;
    let deny_roles = compile_selecting(&name, "deny.db_roles", &deny.db_roles)?;
    let allow_roles = allow
        .db_roles
        .iter()
        .map(|written| match parse_value(&name, written)? {
            Value::Template(template) => Ok(Granting::Template { template, written: written.clone() }),
            Value::Literal(literal) => {
                if literal.contains('*') || label_match::is_regex(&literal) {
                    return Err(PolicyError::GlobInAllowedRole { role: name.clone(), value: literal });
                }
                naming::validate_identifier(&literal).map_err(|e| PolicyError::InvalidRoleName {
                    role: name.clone(),
                    value: literal.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Granting::Name(literal))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    let permissions = |block, rules: &[PermissionRule]| {
        for (index, rule) in rules.iter().enumerate() {
            for value in rule.selector.values().flat_map(LabelValues::globs) {
                let what = if label_match::is_regex(value) {
                    "a regular expression"
                } else if value.contains("{{") || value.contains("}}") {
                    "a template"
                } else {
                    continue;
                };
                return Err(PolicyError::DbPermissionsPattern {
                    role: name.clone(),
                    block,
                    index,
                    value: value.clone(),
                    what,
                });
            }
        }
        rules
            .iter()
            .enumerate()
            .map(|(index, rule)| rule.compile(index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PolicyError::DbPermissions { role: name.clone(), block, source })
    };
    let allow_permissions = permissions("allow", &allow.db_permissions)?;
    let deny_permissions = permissions("deny", &deny.db_permissions)?;
    Ok(CompiledRole {
        mode: role.spec.options.mode(),
        allow_labels,
        allow_names,
        allow_roles,
        deny_labels,
        deny_names,
        deny_roles,
        allow_permissions,
        deny_permissions,
        role,
    })
}

/// Refuses the fields that would narrow access and that this module cannot evaluate, and
/// unknown `db_*` fields.
fn check_unevaluated(role: &str, block: &'static str, conditions: &Conditions) -> Result<(), PolicyError> {
    if let Some(field) = conditions.other.keys().find(|k| k.starts_with("db_")) {
        return Err(PolicyError::UnknownField { role: role.to_string(), block, field: field.clone() });
    }
    let refuse = |field, problem: &str| {
        Err(PolicyError::UnevaluatedField { role: role.to_string(), block, field, problem: problem.to_string() })
    };
    for (field, expression) in [
        ("db_labels_expression", &conditions.db_labels_expression),
        ("db_service_labels_expression", &conditions.db_service_labels_expression),
    ] {
        if expression.as_deref().is_some_and(|e| !e.trim().is_empty()) {
            return refuse(field, "is a predicate expression");
        }
    }
    if let Some(selector) = &conditions.db_service_labels {
        let everything = selector.len() == 1 && selector.get("*").is_some_and(|v| v.globs() == ["*"]);
        if block == "deny" && !selector.is_empty() {
            return refuse("db_service_labels", "restricts Database Services");
        }
        if block == "allow" && !everything {
            return refuse("db_service_labels", "selects Database Services other than {\"*\": \"*\"}");
        }
    }
    Ok(())
}

fn parse_value(role: &str, written: &str) -> Result<Value, PolicyError> {
    Value::parse(written).map_err(|TemplateError { reason }| PolicyError::InvalidTemplate {
        role: role.to_string(),
        value: written.to_string(),
        reason,
    })
}

fn compile_selecting(role: &str, field: &str, values: &[String]) -> Result<Vec<Selecting>, PolicyError> {
    values
        .iter()
        .map(|written| match parse_value(role, written)? {
            Value::Template(template) => Ok(Selecting::Template(template)),
            Value::Literal(literal) => Matcher::parse(&literal).map(Selecting::Pattern).map_err(|source| {
                PolicyError::InvalidPattern { role: role.to_string(), field: field.to_string(), source }
            }),
        })
        .collect()
}

fn compile_selector(
    role: &str,
    block: &'static str,
    selector: &BTreeMap<String, LabelValues>,
) -> Result<Selector, PolicyError> {
    let field = format!("{block}.db_labels");
    let mut keys = Vec::with_capacity(selector.len());
    for (key, values) in selector {
        for text in std::iter::once(key).chain(values.globs()) {
            if parse_value(role, text)?.is_template() {
                return Err(PolicyError::TemplateNotSupported {
                    role: role.to_string(),
                    field: field.clone(),
                    value: text.clone(),
                });
            }
        }
        if key == "*" && values.globs() != ["*"] {
            return Err(PolicyError::WildcardLabelKey { role: role.to_string() });
        }
        let matchers =
            values.globs().iter().map(|value| Matcher::parse(value)).collect::<Result<Vec<_>, _>>().map_err(
                |source| PolicyError::InvalidPattern {
                    role: role.to_string(),
                    field: format!("{field}.{key}"),
                    source,
                },
            )?;
        keys.push((key.clone(), matchers));
    }
    let everything = selector.get("*").is_some_and(|values| values.globs() == ["*"]);
    Ok(Selector { everything, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
- kind: role
  version: v7
  metadata: {name: auto-db-users}
  spec:
    options: {create_db_user_mode: keep}
    allow:
      db_labels: {"*": "*"}
      db_names: ["*"]
      db_roles: [reader, "{{internal.db_roles}}", "app_{{ external.team }}_ro"]
      logins: [root]
    deny:
      db_labels: {env: prod}
      db_names: [secret*]
      db_roles: ["admin*"]
- kind: role
  version: v7
  metadata: {name: droppers}
  spec:
    options: {create_db_user_mode: best_effort_drop}
    allow:
      db_labels: {team: [blue, "gr*n"]}
      db_names: [app]
      db_roles: [writer]
- kind: role
  version: v7
  metadata: {name: off}
  spec:
    allow: {db_labels: {"*": "*"}, db_names: ["*"], db_roles: [auditor]}
"#;

    fn policy(yaml: &str) -> Result<Policy, PolicyError> {
        Policy::new(serde_yaml_ng::from_str(yaml).expect("yaml parses"))
    }

    struct Ask {
        roles: Vec<String>,
        traits: Traits,
        labels: BTreeMap<String, String>,
        db_name: String,
        requested: Option<Vec<String>>,
    }

    impl Ask {
        fn new(roles: &[&str]) -> Ask {
            Ask {
                roles: roles.iter().map(|r| r.to_string()).collect(),
                traits: Traits::default(),
                labels: BTreeMap::from([("env".to_string(), "dev".to_string())]),
                db_name: "app".into(),
                requested: None,
            }
        }
        fn label(mut self, key: &str, value: &str) -> Ask {
            self.labels.insert(key.into(), value.into());
            self
        }
        fn internal(mut self, name: &str, values: &[&str]) -> Ask {
            self.traits.internal.insert(name.into(), values.iter().map(|v| v.to_string()).collect());
            self
        }
        fn external(mut self, name: &str, values: &[&str]) -> Ask {
            self.traits.external.insert(name.into(), values.iter().map(|v| v.to_string()).collect());
            self
        }
        fn run(&self, policy: &Policy) -> Result<Grant, PolicyError> {
            policy.evaluate(&AccessRequest {
                role_names: &self.roles,
                traits: &self.traits,
                database: "orders",
                labels: &self.labels,
                db_name: &self.db_name,
                requested_db_roles: self.requested.as_deref(),
            })
        }
    }

    fn roles(grant: &Grant) -> Vec<&str> {
        grant.db_roles.iter().map(String::as_str).collect()
    }

    #[test]
    fn grantable_roles_are_what_any_provisioning_role_allows_on_the_labels() {
        let policy = policy(YAML).unwrap();
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let blue = policy.grantable_roles(&labels(&[("team", "blue")]));
        assert_eq!(blue.literal, BTreeSet::from(["reader".to_string(), "writer".to_string()]));
        assert_eq!(
            blue.templated,
            BTreeSet::from(["{{internal.db_roles}}".to_string(), "app_{{ external.team }}_ro".to_string()])
        );
        // `droppers` does not match; `off` never provisions.
        let red = policy.grantable_roles(&labels(&[("team", "red")]));
        assert_eq!(red.literal, BTreeSet::from(["reader".to_string()]));
    }

    #[test]
    fn the_documented_example_grants_literal_and_templated_roles() {
        let p = policy(YAML).unwrap();
        let g =
            Ask::new(&["auto-db-users"]).internal("db_roles", &["auditor"]).external("team", &["pay"]).run(&p).unwrap();
        assert_eq!(g.mode, CreateDbUserMode::Keep);
        assert_eq!(roles(&g), ["app_pay_ro", "auditor", "reader"]);
    }

    #[test]
    fn json_roles_parse_too() {
        let json = r#"[{"kind":"role","version":"v7","metadata":{"name":"r"},
            "spec":{"options":{"create_db_user_mode":"best_effort_drop"},
            "allow":{"db_labels":{"*":"*"},"db_names":["*"],"db_roles":["x"]}}}]"#;
        let p = Policy::new(serde_json::from_str(json).unwrap()).unwrap();
        assert_eq!(Ask::new(&["r"]).run(&p).unwrap().mode, CreateDbUserMode::BestEffortDrop);
    }

    #[test]
    fn missing_traits_expand_to_nothing() {
        let p = policy(YAML).unwrap();
        assert_eq!(roles(&Ask::new(&["auto-db-users"]).run(&p).unwrap()), ["reader"]);
    }

    #[test]
    fn deny_labels_refuse_the_database() {
        let p = policy(
            r#"[{kind: role, version: v7, metadata: {name: a}, spec: {options: {create_db_user_mode: keep},
                allow: {db_labels: {"*": "*"}, db_names: ["*"]}, deny: {db_labels: {env: dev}}}}]"#,
        )
        .unwrap();
        assert!(matches!(Ask::new(&["a"]).run(&p), Err(PolicyError::DatabaseDenied { .. })));
    }

    #[test]
    fn deny_names_refuse_the_session_and_deny_roles_remove_roles() {
        let p = policy(YAML).unwrap();
        let mut ask = Ask::new(&["auto-db-users"]).label("env", "prod").internal("db_roles", &["admin_all", "auditor"]);
        assert_eq!(roles(&ask.run(&p).unwrap()), ["auditor", "reader"]);
        ask.db_name = "secret_stuff".into();
        assert!(matches!(ask.run(&p), Err(PolicyError::DbNameDenied { .. })));
        // The same deny does not apply to a dev database.
        let ask = Ask::new(&["auto-db-users"]).internal("db_roles", &["admin_all"]);
        assert_eq!(roles(&ask.run(&p).unwrap()), ["admin_all", "reader"]);
    }

    #[test]
    fn deny_without_labels_applies_everywhere_and_from_unmatched_roles() {
        let p = policy(
            r#"
- {kind: role, version: v7, metadata: {name: a}, spec: {options: {create_db_user_mode: keep},
   allow: {db_labels: {"*": "*"}, db_names: ["*"], db_roles: [reader, writer]}}}
- {kind: role, version: v7, metadata: {name: b}, spec: {allow: {db_labels: {env: nowhere}}, deny: {db_roles: [writer]}}}
"#,
        )
        .unwrap();
        assert_eq!(roles(&Ask::new(&["a", "b"]).run(&p).unwrap()), ["reader"]);
    }

    #[test]
    fn strongest_mode_wins_and_off_refuses() {
        let p = policy(YAML).unwrap();
        let ask = Ask::new(&["auto-db-users", "droppers", "off"]).label("team", "green");
        let g = ask.run(&p).unwrap();
        assert_eq!(g.mode, CreateDbUserMode::BestEffortDrop);
        // As in Teleport, the `off` role matches but grants nothing: no "auditor".
        assert_eq!(roles(&g), ["reader", "writer"]);
        assert_eq!(g.matched_roles, ["auto-db-users", "droppers"]);
        assert!(matches!(Ask::new(&["off"]).run(&p), Err(PolicyError::ProvisioningOff { .. })));
    }

    #[test]
    fn reassign_and_drop_is_the_strongest_mode() {
        let roles = |mode: &str| {
            policy(&format!(
                "- kind: role\n  version: v7\n  metadata: {{name: inheriting}}\n  spec:\n    \
                 options: {{create_db_user_mode: {mode}}}\n    allow:\n      db_labels: {{'*': '*'}}\n      \
                 db_names: ['*']\n      db_roles: [reader]\n\
                 - kind: role\n  version: v7\n  metadata: {{name: dropping}}\n  spec:\n    \
                 options: {{create_db_user_mode: best_effort_drop}}\n    allow:\n      db_labels: {{'*': '*'}}\n      \
                 db_names: ['*']\n"
            ))
            .unwrap()
        };
        let p = roles("best_effort_reassign_and_drop");
        let g = Ask::new(&["inheriting", "dropping"]).run(&p).unwrap();
        assert_eq!(g.mode, CreateDbUserMode::BestEffortReassignAndDrop);
        assert_eq!(g.mode.to_string(), "best_effort_reassign_and_drop");
        assert!(CreateDbUserMode::Keep < CreateDbUserMode::BestEffortDrop);
        assert!(CreateDbUserMode::BestEffortDrop < CreateDbUserMode::BestEffortReassignAndDrop);
    }

    #[test]
    fn label_globs_and_lists_match() {
        let p = policy(YAML).unwrap();
        assert!(Ask::new(&["droppers"]).label("team", "green").run(&p).is_ok());
        assert!(Ask::new(&["droppers"]).label("team", "blue").run(&p).is_ok());
        assert!(matches!(
            Ask::new(&["droppers"]).label("team", "red").run(&p),
            Err(PolicyError::NoMatchingRole { .. })
        ));
        assert!(matches!(Ask::new(&["droppers"]).run(&p), Err(PolicyError::NoMatchingRole { .. })));
    }

    #[test]
    fn unknown_role_is_an_error() {
        let p = policy(YAML).unwrap();
        assert_eq!(Ask::new(&["nope"]).run(&p), Err(PolicyError::UnknownRole { role: "nope".into() }));
    }

    #[test]
    fn requested_subset_narrows_and_unallowed_requests_fail() {
        let p = policy(YAML).unwrap();
        let mut ask = Ask::new(&["auto-db-users"]).internal("db_roles", &["auditor"]);
        ask.requested = Some(vec!["auditor".into()]);
        assert_eq!(roles(&ask.run(&p).unwrap()), ["auditor"]);
        ask.requested = Some(vec![]);
        assert!(ask.run(&p).unwrap().db_roles.is_empty());
        ask.requested = Some(vec!["superuser".into()]);
        assert!(matches!(ask.run(&p), Err(PolicyError::DbRoleNotAllowed { .. })));
        let mut ask = Ask::new(&["auto-db-users"]).label("env", "prod").internal("db_roles", &["admin_x"]);
        ask.requested = Some(vec!["admin_x".into()]);
        assert!(matches!(ask.run(&p), Err(PolicyError::DbRoleDenied { .. })));
    }

    #[test]
    fn trait_values_are_literal_names() {
        let p = policy(YAML).unwrap();
        let hostile = ["*", "o'brien", "a\"b", "x; DROP ROLE y", "back\\slash", "ünï", "{{internal.db_roles}}"];
        let g = Ask::new(&["auto-db-users"]).internal("db_roles", &hostile).run(&p).unwrap();
        for value in hostile {
            assert!(g.db_roles.contains(value), "{value}");
        }
        assert_eq!(g.db_roles.len(), hostile.len() + 1);
    }

    #[test]
    fn overlong_and_nul_trait_values_are_refused_and_empty_ones_dropped() {
        let p = policy(YAML).unwrap();
        for bad in ["r".repeat(64), "a\0b".to_string()] {
            let err = Ask::new(&["auto-db-users"]).internal("db_roles", &[&bad]).run(&p).unwrap_err();
            assert!(matches!(err, PolicyError::InvalidTraitValue { .. }), "{err}");
        }
        // Teleport drops empty trait values.
        let grant = Ask::new(&["auto-db-users"]).internal("db_roles", &["", "auditor"]).run(&p).unwrap();
        assert_eq!(roles(&grant), ["auditor", "reader"]);
        // The prefix and suffix count: 56 + 7 bytes = 63 is fine, one more is not.
        assert!(Ask::new(&["auto-db-users"]).external("team", &[&"t".repeat(56)]).run(&p).is_ok());
        assert!(Ask::new(&["auto-db-users"]).external("team", &[&"t".repeat(57)]).run(&p).is_err());
    }

    #[test]
    fn load_errors_name_the_role() {
        let role = |spec: &str| format!("[{{kind: role, version: v7, metadata: {{name: r}}, spec: {spec}}}]");
        let cases = [
            (role("{allow: {db_role: [x]}}"), "db_role"),
            (
                role("{allow: {db_permissions: [{match: {object_kind: function}, permissions: [SELECT]}]}}"),
                "allow.db_permissions entry 0: permission \"SELECT\" applies to none",
            ),
            (role("{allow: {db_roles: [\"read*\"]}}"), "pattern"),
            (role("{allow: {db_roles: [\"^read.*$\"]}}"), "pattern"),
            (role("{allow: {db_roles: [\"{{user.email}}\"]}}"), "invalid template"),
            (role("{allow: {db_roles: [\"{{internal.a}}{{internal.b}}\"]}}"), "invalid template"),
            (role("{allow: {db_roles: [\"{{internal.a\"]}}"), "invalid template"),
            (
                role("{allow: {db_names: [\"^app(.*$\"]}}"),
                "allow.db_names: \"^app(.*$\" is not a valid regular expression",
            ),
            (role("{allow: {db_labels: {env: \"^(dev$\"}}}"), "allow.db_labels.env"),
            (role("{deny: {db_roles: [\"^(x$\"]}}"), "deny.db_roles"),
            (role("{allow: {db_labels: {env: \"{{external.env}}\"}}}"), "template"),
            (role("{allow: {db_labels: {\"*\": prod}}}"), "label key"),
            (role("{allow: {db_roles: [\"\"]}}"), "not a valid role name"),
            ("[{kind: user, version: v7, metadata: {name: r}}]".to_string(), "kind"),
            ("[{kind: role, version: v9, metadata: {name: r}}]".to_string(), "version"),
            (
                "[{kind: role, version: v7, metadata: {name: r}}, {kind: role, version: v7, metadata: {name: r}}]"
                    .to_string(),
                "twice",
            ),
        ];
        for (yaml, expected) in cases {
            let err = policy(&yaml).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    fn one_role(spec: &str) -> Result<Policy, PolicyError> {
        policy(&format!("[{{kind: role, version: v7, metadata: {{name: r}}, spec: {spec}}}]"))
    }

    const KEEP_ALL: &str = r#"options: {create_db_user_mode: keep}, allow: {db_labels: {"*": "*"}, db_names: ["*"]"#;

    #[test]
    fn fields_that_would_narrow_access_and_cannot_be_evaluated_refuse_the_role() {
        for (block, field) in [
            (r#"allow: {db_service_labels: {env: prod}}"#, "allow.db_service_labels"),
            (r#"allow: {db_service_labels: {"*": "*", env: prod}}"#, "allow.db_service_labels"),
            (r#"deny: {db_service_labels: {"*": "*"}}"#, "deny.db_service_labels"),
            (r#"allow: {db_labels_expression: 'labels["env"] == "staging"'}"#, "allow.db_labels_expression"),
            (r#"deny: {db_labels_expression: 'labels["env"] == "prod"'}"#, "deny.db_labels_expression"),
            (r#"deny: {db_service_labels_expression: 'labels["env"] == "prod"'}"#, "deny.db_service_labels_expression"),
            (r#"deny: {db_future_selector: [x]}"#, "deny.db_future_selector"),
        ] {
            let err = one_role(&format!("{{{block}}}")).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("role \"r\""), "{block}: {err}");
        }
        for (rule, what) in [
            ("{match: {schema: '^(a|b)$'}, permissions: [SELECT]}", "regular expression"),
            ("{match: {schema: '{{external.schema}}'}, permissions: [SELECT]}", "template"),
        ] {
            for block in ["allow", "deny"] {
                let err = one_role(&format!("{{{block}: {{db_permissions: [{rule}]}}}}")).unwrap_err().to_string();
                assert!(err.contains(&format!("{block}.db_permissions entry 0")) && err.contains(what), "{err}");
            }
        }
    }

    #[test]
    fn fields_that_do_not_bear_on_database_users_load_and_are_ignored() {
        let p = one_role(&format!(
            r#"{{{KEEP_ALL}, db_roles: [reader],
                db_users: ["{{{{internal.db_users}}}}", "*"], db_service_labels: {{"*": "*"}},
                logins: [root], node_labels: {{"*": "*"}}, node_labels_expression: 'labels["a"] == "b"',
                kubernetes_resources: [{{kind: pod, name: "*", namespace: "*", verbs: ["*"]}}],
                rules: [{{resources: [session], verbs: [read], where: 'contains(session.participants, user.metadata.name)'}}],
                impersonate: {{users: ["*"], roles: [jenkins], where: 'true'}},
                request: {{roles: [dba], thresholds: [{{approve: 2, deny: 1}}]}},
                review_requests: {{roles: [dba]}}, join_sessions: [{{name: n, roles: [x], kinds: [ssh], modes: [observer]}}]}},
              deny: {{logins: [admin], node_labels: {{env: prod}}, rules: [{{resources: [role], verbs: [delete]}}]}}}}"#
        ))
        .unwrap();
        assert_eq!(roles(&Ask::new(&["r"]).run(&p).unwrap()), ["reader"]);
    }

    #[test]
    fn label_values_written_caret_dollar_are_regular_expressions() {
        let p = one_role(
            r#"{options: {create_db_user_mode: keep}, allow: {db_labels: {env: '^(dev|staging)$'}, db_names: ["*"], db_roles: [r1]}}"#,
        )
        .unwrap();
        assert!(Ask::new(&["r"]).run(&p).is_ok());
        assert!(Ask::new(&["r"]).label("env", "staging").run(&p).is_ok());
        for env in ["prod", "development"] {
            let err = Ask::new(&["r"]).label("env", env).run(&p).unwrap_err();
            assert!(matches!(err, PolicyError::NoMatchingRole { .. }), "{env}: {err}");
        }
    }

    #[test]
    fn a_wildcard_selector_matches_every_database_whatever_its_other_keys() {
        // Teleport: `'*': '*'` short-circuits the selector.
        let p = one_role(r#"{deny: {db_labels: {"*": "*", env: prod}}}"#).unwrap();
        assert!(matches!(Ask::new(&["r"]).run(&p), Err(PolicyError::DatabaseDenied { .. })));
    }

    #[test]
    fn db_names_and_deny_db_roles_take_regular_expressions() {
        let p = one_role(&format!(
            r#"{{{KEEP_ALL}, db_roles: [admin_x, reader]}}, deny: {{db_names: ['^secret_[0-9]+$'], db_roles: ['^admin_.*$']}}}}"#
        ))
        .unwrap();
        assert_eq!(roles(&Ask::new(&["r"]).run(&p).unwrap()), ["reader"]);
        let mut ask = Ask::new(&["r"]);
        ask.db_name = "secret_42".into();
        assert!(matches!(ask.run(&p), Err(PolicyError::DbNameDenied { .. })));
        ask.db_name = "secret_x".into();
        assert!(ask.run(&p).is_ok());
    }

    #[test]
    fn legacy_create_db_user_counts_only_when_create_db_user_mode_is_unset() {
        let mode = |options: &str| {
            let p =
                one_role(&format!(r#"{{options: {options}, allow: {{db_labels: {{"*": "*"}}, db_names: ["*"]}}}}"#))
                    .unwrap();
            Ask::new(&["r"]).run(&p).map(|g| g.mode)
        };
        assert_eq!(mode("{create_db_user: true}"), Ok(CreateDbUserMode::Keep));
        assert_eq!(mode("{create_db_user: true, create_db_user_mode: ''}"), Ok(CreateDbUserMode::Keep));
        assert_eq!(mode("{create_db_user: true, create_db_user_mode: 0}"), Ok(CreateDbUserMode::Keep));
        assert_eq!(
            mode("{create_db_user: false, create_db_user_mode: best_effort_drop}"),
            Ok(CreateDbUserMode::BestEffortDrop)
        );
        assert_eq!(mode("{create_db_user_mode: 3}"), Ok(CreateDbUserMode::BestEffortDrop));
        for off in ["{create_db_user: true, create_db_user_mode: 'off'}", "{create_db_user: false}", "{}"] {
            assert!(matches!(mode(off), Err(PolicyError::ProvisioningOff { .. })), "{off}");
        }
        let err = serde_yaml_ng::from_str::<Vec<Role>>(
            "[{kind: role, version: v7, metadata: {name: r}, spec: {options: {create_db_user_mode: always}}}]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("keep, best_effort_drop or best_effort_reassign_and_drop"), "{err}");
    }

    #[test]
    fn templated_db_names_name_databases_exactly_or_all_with_star() {
        let p = one_role(
            r#"{options: {create_db_user_mode: keep}, allow: {db_labels: {"*": "*"}, db_names: ["{{internal.db_names}}"], db_roles: [r1]}}"#,
        )
        .unwrap();
        let ask = |names: &[&str], db_name: &str| {
            let mut ask = Ask::new(&["r"]).internal("db_names", names);
            ask.db_name = db_name.into();
            ask.run(&p)
        };
        assert!(ask(&["app", "metrics"], "app").is_ok());
        assert!(ask(&["*"], "anything").is_ok());
        // A trait value is a name, not a glob.
        assert!(ask(&["app*"], "app_1").is_err());
        assert!(ask(&[], "app").is_err());
    }

    #[test]
    fn email_local_and_regexp_replace_templates_grant_what_teleport_would() {
        let p = one_role(&format!(
            r#"{{{KEEP_ALL}, db_roles: ['{{{{email.local(external.email)}}}}_ro', '{{{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}}}', '{{{{external["db-team"]}}}}']}}}}"#
        ))
        .unwrap();
        let grant = Ask::new(&["r"])
            .external("email", &["alice@example.com"])
            .external("groups", &["db-reader", "devs", "db-writer"])
            .external("db-team", &["pay"])
            .run(&p)
            .unwrap();
        assert_eq!(roles(&grant), ["alice_ro", "pay", "reader", "writer"]);
        // An expanded value that is no valid role name refuses the session.
        let err = Ask::new(&["r"]).external("groups", &[&format!("db-{}", "x".repeat(64))]).run(&p).unwrap_err();
        assert!(
            matches!(&err, PolicyError::InvalidTraitValue { trait_name, .. } if trait_name == "external.groups"),
            "{err}"
        );
    }

    #[test]
    fn roles_of_any_version_tctl_prints_load() {
        for version in SUPPORTED_VERSIONS {
            let yaml = format!(
                r#"[{{kind: role, version: {version}, metadata: {{name: r}}, spec: {{{KEEP_ALL}, db_roles: [x]}}}}}}]"#
            );
            assert_eq!(roles(&Ask::new(&["r"]).run(&policy(&yaml).unwrap()).unwrap()), ["x"], "{version}");
        }
    }
}
