//! The access policy: which sessions get a database user, in which mode, with which roles.
//!
//! Roles use the shape of Teleport's role v7. The semantics, which are the contract:
//! - A person's roles (`AccessRequest::role_names`) must all exist in the policy.
//! - A role's **allow** block matches a session when its `db_labels` match the database's
//!   labels and its `db_names` match the session's `db_name`. Every label key of the selector
//!   must be on the database with a value matching one of the key's globs; `{"*": "*"}` matches
//!   every database. An absent or empty `db_labels` or `db_names` matches nothing.
//! - A **deny** block applies to a database when its `db_labels` match; an absent deny
//!   `db_labels` applies to every database, so that a deny never fails open (this differs from
//!   allow on purpose); a deny block with no `db_*` field at all does nothing. An applying deny block with neither `db_names` nor `db_roles` denies the
//!   database; one whose `db_names` match denies the session; its `db_roles` (globs and
//!   templates allowed) remove roles from the grant. Deny blocks of all the person's roles
//!   apply, whether or not their allow matched. Deny wins.
//! - Only roles whose allow matched count. The mode is the strongest of theirs
//!   (`best_effort_drop` > `keep` > `off`); no match, or `off`, refuses the session.
//! - The database roles are the union of the matched roles' `db_roles`, with templates
//!   (`{{internal.x}}`, `{{external.x}}`, optionally inside a literal prefix/suffix) expanded
//!   from the person's traits, minus denied ones. A requested subset narrows the grant; asking
//!   for a role outside it is an error.
//! - Globs: `*` matches any run of characters; everything else is literal. Trait values are
//!   always literal: a trait value `*` is the role name `*`.
//! - `db_permissions` (object permissions) are rules on labelled objects, evaluated once the
//!   objects are listed: see [`crate::permissions`]. The session carries the allow rules of the
//!   matched roles and the deny rules of the applying deny blocks. A deny block's
//!   `db_permissions` remove permissions; they do not deny the database.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::naming;
use crate::permissions::{self, CompiledRule, ImportRule, ObjectRules, PermissionRule, RuleError};

/// What happens to a person's database user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateDbUserMode {
    /// No provisioning.
    #[default]
    Off,
    /// Lock the user (strip roles, NOLOGIN) at session end.
    Keep,
    /// Drop the user at session end, or lock it when objects depend on it.
    BestEffortDrop,
}

impl fmt::Display for CreateDbUserMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CreateDbUserMode::Off => "off",
            CreateDbUserMode::Keep => "keep",
            CreateDbUserMode::BestEffortDrop => "best_effort_drop",
        })
    }
}

/// A person's traits, as in the event: `{"internal": {"db_roles": ["auditor"]}, "external": {}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traits {
    #[serde(default)]
    pub internal: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub external: BTreeMap<String, Vec<String>>,
}

/// A Teleport role document.
#[derive(Debug, Clone, Deserialize)]
pub struct Role {
    pub kind: String,
    pub version: String,
    pub metadata: RoleMetadata,
    #[serde(default)]
    pub spec: RoleSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleMetadata {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoleSpec {
    #[serde(default)]
    pub options: RoleOptions,
    #[serde(default)]
    pub allow: Conditions,
    #[serde(default)]
    pub deny: Conditions,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoleOptions {
    #[serde(default)]
    pub create_db_user_mode: CreateDbUserMode,
}

/// A label selector value: one glob or a list of globs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    pub fn globs(&self) -> &[String] {
        match self {
            LabelValues::One(value) => std::slice::from_ref(value),
            LabelValues::Many(values) => values,
        }
    }
}

/// The database part of an allow or deny block. Other Teleport fields (`logins`,
/// `node_labels`, …) are ignored; unknown `db_*` fields are kept to be refused as typos.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Conditions {
    pub db_labels: Option<BTreeMap<String, LabelValues>>,
    #[serde(default)]
    pub db_names: Vec<String>,
    #[serde(default)]
    pub db_roles: Vec<String>,
    #[serde(default)]
    pub db_permissions: Vec<PermissionRule>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("role {role:?}: kind must be \"role\", not {kind:?}")]
    NotARole { role: String, kind: String },
    #[error("role {role:?}: version {version:?} is not supported: use v7")]
    UnsupportedVersion { role: String, version: String },
    #[error("a role has an empty metadata.name: name every role")]
    UnnamedRole,
    #[error("role {role:?} is defined twice: role names must be unique")]
    DuplicateRole { role: String },
    #[error("role {role:?}: unknown field {block}.{field}: check the spelling (db_labels, db_names, db_roles, db_permissions)")]
    UnknownField { role: String, block: &'static str, field: String },
    #[error("role {role:?}: {block}.{source}")]
    DbPermissions { role: String, block: &'static str, source: RuleError },
    #[error("import_rules: {0}")]
    ImportRules(String),
    #[error("role {role:?}: {value:?} is a regular expression, which is not supported: use * globs")]
    RegexNotSupported { role: String, value: String },
    #[error("role {role:?}: label key \"*\" only matches with value \"*\"")]
    WildcardLabelKey { role: String },
    #[error("role {role:?}: allow.db_roles entry {value:?} is a glob; allow lists literal roles so that no role is reached by accident")]
    GlobInAllowedRole { role: String, value: String },
    #[error("role {role:?}: invalid template {value:?}: use {{{{internal.<trait>}}}} or {{{{external.<trait>}}}}")]
    InvalidTemplate { role: String, value: String },
    #[error("role {role:?}: db_roles entry {value:?} is not a valid role name: {reason}")]
    InvalidRoleName { role: String, value: String, reason: String },
    #[error("role {role:?} is not in the policy: add it under `roles` or fix the event's roles")]
    UnknownRole { role: String },
    #[error("no role of {roles:?} allows database {database:?} with db_name {db_name:?}")]
    NoMatchingRole { database: String, db_name: String, roles: Vec<String> },
    #[error("user provisioning is off for database {database:?} with db_name {db_name:?}: set create_db_user_mode to keep or best_effort_drop")]
    ProvisioningOff { database: String, db_name: String },
    #[error("role {role:?} denies database {database:?}")]
    DatabaseDenied { role: String, database: String },
    #[error("role {role:?} denies db_name {db_name:?}")]
    DbNameDenied { role: String, db_name: String },
    #[error("database role {db_role:?} was requested but is not allowed on database {database:?}")]
    DbRoleNotAllowed { db_role: String, database: String },
    #[error("database role {db_role:?} was requested but role {role:?} denies it")]
    DbRoleDenied { db_role: String, role: String },
    #[error("trait {trait_name} value {value:?} is not a valid role name: {reason}")]
    InvalidTraitValue { trait_name: String, value: String, reason: String },
}

/// One entry of `db_roles`: a literal, or a template with a literal prefix and suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleEntry {
    Literal(String),
    Template { prefix: String, namespace: Namespace, name: String, suffix: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Internal,
    External,
}

impl RoleEntry {
    fn parse(role: &str, value: &str) -> Result<RoleEntry, PolicyError> {
        let invalid = || PolicyError::InvalidTemplate { role: role.to_string(), value: value.to_string() };
        let Some(open) = value.find("{{") else {
            if value.contains("}}") {
                return Err(invalid());
            }
            return Ok(RoleEntry::Literal(value.to_string()));
        };
        let close = value[open..].find("}}").map(|i| open + i).ok_or_else(invalid)?;
        let (prefix, suffix) = (&value[..open], &value[close + 2..]);
        if suffix.contains("{{") || suffix.contains("}}") || prefix.contains("}}") {
            return Err(invalid());
        }
        let expression = value[open + 2..close].trim();
        let (namespace, name) = match expression.split_once('.') {
            Some(("internal", name)) => (Namespace::Internal, name),
            Some(("external", name)) => (Namespace::External, name),
            _ => return Err(invalid()),
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
        {
            return Err(invalid());
        }
        Ok(RoleEntry::Template {
            prefix: prefix.to_string(),
            namespace,
            name: name.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The role names this entry stands for, given the person's traits.
    fn expand(&self, traits: &Traits) -> Result<Vec<String>, PolicyError> {
        match self {
            RoleEntry::Literal(value) => Ok(vec![value.clone()]),
            RoleEntry::Template { prefix, namespace, name, suffix } => {
                let (map, label) = match namespace {
                    Namespace::Internal => (&traits.internal, "internal"),
                    Namespace::External => (&traits.external, "external"),
                };
                let values = map.get(name).map(Vec::as_slice).unwrap_or_default();
                values
                    .iter()
                    .map(|value| {
                        let role = format!("{prefix}{value}{suffix}");
                        naming::validate_identifier(&role).map(|()| role).map_err(|e| PolicyError::InvalidTraitValue {
                            trait_name: format!("{label}.{name}"),
                            value: value.clone(),
                            reason: e.to_string(),
                        })
                    })
                    .collect()
            }
        }
    }
}

/// A role, validated and with its `db_roles` parsed.
#[derive(Debug, Clone)]
struct CompiledRole {
    role: Role,
    allow_roles: Vec<RoleEntry>,
    deny_roles: Vec<RoleEntry>,
    allow_permissions: Vec<CompiledRule>,
    deny_permissions: Vec<CompiledRule>,
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
    /// Roles whose allow block matched.
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
            if name.is_empty() {
                return Err(PolicyError::UnnamedRole);
            }
            if role.kind != "role" {
                return Err(PolicyError::NotARole { role: name, kind: role.kind });
            }
            if !matches!(role.version.as_str(), "v7" | "v8") {
                return Err(PolicyError::UnsupportedVersion { role: name, version: role.version });
            }
            let allow_roles = compile_block(&name, "allow", &role.spec.allow)?;
            let deny_roles = compile_block(&name, "deny", &role.spec.deny)?;
            for (value, entry) in role.spec.allow.db_roles.iter().zip(&allow_roles) {
                if value.contains('*') {
                    return Err(PolicyError::GlobInAllowedRole { role: name, value: value.clone() });
                }
                if let RoleEntry::Literal(literal) = entry {
                    naming::validate_identifier(literal).map_err(|e| PolicyError::InvalidRoleName {
                        role: name.clone(),
                        value: literal.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            let permissions = |block, rules: &[PermissionRule]| {
                rules
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| rule.compile(index))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| PolicyError::DbPermissions { role: name.clone(), block, source })
            };
            let allow_permissions = permissions("allow", &role.spec.allow.db_permissions)?;
            let deny_permissions = permissions("deny", &role.spec.deny.db_permissions)?;
            let entry = CompiledRole { role, allow_roles, deny_roles, allow_permissions, deny_permissions };
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
        // (pattern, whether it is a glob, denying role)
        let mut denied: Vec<(String, bool, &str)> = Vec::new();
        let mut denied_permissions: Vec<CompiledRule> = Vec::new();
        for compiled in &roles {
            let deny = &compiled.role.spec.deny;
            let name = compiled.role.metadata.name.as_str();
            let empty = deny.db_labels.is_none()
                && deny.db_names.is_empty()
                && deny.db_roles.is_empty()
                && deny.db_permissions.is_empty();
            let applies = deny.db_labels.as_ref().is_none_or(|selector| labels_match(selector, req.labels));
            if empty || !applies {
                continue;
            }
            denied_permissions.extend(compiled.deny_permissions.iter().cloned());
            if deny.db_names.is_empty() && deny.db_roles.is_empty() && deny.db_permissions.is_empty() {
                return Err(PolicyError::DatabaseDenied { role: name.to_string(), database: req.database.to_string() });
            }
            if deny.db_names.iter().any(|g| glob_match(g, req.db_name)) {
                return Err(PolicyError::DbNameDenied { role: name.to_string(), db_name: req.db_name.to_string() });
            }
            for entry in &compiled.deny_roles {
                match entry {
                    // A literal deny entry may be a glob.
                    RoleEntry::Literal(glob) => denied.push((glob.clone(), true, name)),
                    // Expanded trait values are names, compared exactly.
                    template => {
                        for value in template.expand(req.traits)? {
                            denied.push((value, false, name));
                        }
                    }
                }
            }
        }

        let matched: Vec<&CompiledRole> = roles
            .iter()
            .copied()
            .filter(|c| {
                let allow = &c.role.spec.allow;
                allow.db_labels.as_ref().is_some_and(|s| !s.is_empty() && labels_match(s, req.labels))
                    && allow.db_names.iter().any(|g| glob_match(g, req.db_name))
            })
            .collect();
        if matched.is_empty() {
            return Err(PolicyError::NoMatchingRole {
                database: req.database.to_string(),
                db_name: req.db_name.to_string(),
                roles: req.role_names.to_vec(),
            });
        }
        let mode = matched.iter().map(|c| c.role.spec.options.create_db_user_mode).max().unwrap_or_default();
        if mode == CreateDbUserMode::Off {
            return Err(PolicyError::ProvisioningOff {
                database: req.database.to_string(),
                db_name: req.db_name.to_string(),
            });
        }

        let denied_by = |db_role: &str| {
            denied
                .iter()
                .find(|(pattern, is_glob, _)| if *is_glob { glob_match(pattern, db_role) } else { pattern == db_role })
                .map(|(_, _, role)| role.to_string())
        };
        let mut allowed = BTreeSet::new();
        for compiled in &matched {
            for entry in &compiled.allow_roles {
                for db_role in entry.expand(req.traits)? {
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
            matched_roles: matched.iter().map(|c| c.role.metadata.name.clone()).collect(),
            db_permissions,
        })
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
            let allow = &compiled.role.spec.allow;
            let applies = allow.db_labels.as_ref().is_some_and(|s| !s.is_empty() && labels_match(s, labels))
                && !allow.db_names.is_empty()
                && compiled.role.spec.options.create_db_user_mode != CreateDbUserMode::Off;
            if !applies {
                continue;
            }
            for (entry, written) in compiled.allow_roles.iter().zip(&allow.db_roles) {
                match entry {
                    RoleEntry::Literal(name) => grantable.literal.insert(name.clone()),
                    _ => grantable.templated.insert(written.clone()),
                };
            }
        }
        grantable
    }
}

fn compile_block(role: &str, block: &'static str, conditions: &Conditions) -> Result<Vec<RoleEntry>, PolicyError> {
    if let Some(field) = conditions.other.keys().find(|k| k.starts_with("db_")) {
        return Err(PolicyError::UnknownField { role: role.to_string(), block, field: field.clone() });
    }
    let regex = |value: &String| {
        if value.starts_with('^') && value.ends_with('$') {
            Err(PolicyError::RegexNotSupported { role: role.to_string(), value: value.clone() })
        } else {
            Ok(())
        }
    };
    if let Some(selector) = &conditions.db_labels {
        for (key, values) in selector {
            regex(key)?;
            for value in values.globs() {
                regex(value)?;
            }
            if key == "*" && values.globs() != ["*"] {
                return Err(PolicyError::WildcardLabelKey { role: role.to_string() });
            }
        }
    }
    conditions.db_names.iter().try_for_each(regex)?;
    conditions.db_roles.iter().try_for_each(regex)?;
    conditions.db_roles.iter().map(|value| RoleEntry::parse(role, value)).collect()
}

pub(crate) fn labels_match(selector: &BTreeMap<String, LabelValues>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, values)| {
        if key == "*" {
            return true;
        }
        labels.get(key).is_some_and(|value| values.globs().iter().any(|g| glob_match(g, value)))
    })
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
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
        assert_eq!(roles(&g), ["auditor", "reader", "writer"]);
        assert!(matches!(Ask::new(&["off"]).run(&p), Err(PolicyError::ProvisioningOff { .. })));
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
    fn overlong_empty_and_nul_trait_values_are_refused() {
        let p = policy(YAML).unwrap();
        for bad in ["r".repeat(64), String::new(), "a\0b".to_string()] {
            let err = Ask::new(&["auto-db-users"]).internal("db_roles", &[&bad]).run(&p).unwrap_err();
            assert!(matches!(err, PolicyError::InvalidTraitValue { .. }), "{err}");
        }
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
            (role("{allow: {db_roles: [\"read*\"]}}"), "glob"),
            (role("{allow: {db_roles: [\"{{email.local(external.email)}}\"]}}"), "invalid template"),
            (role("{allow: {db_roles: [\"{{internal.a}}{{internal.b}}\"]}}"), "invalid template"),
            (role("{allow: {db_roles: [\"{{internal.a\"]}}"), "invalid template"),
            (role("{allow: {db_names: [\"^app.*$\"]}}"), "regular expression"),
            (role("{allow: {db_labels: {\"*\": prod}}}"), "label key"),
            (role("{allow: {db_roles: [\"\"]}}"), "not a valid role name"),
            ("[{kind: user, version: v7, metadata: {name: r}}]".to_string(), "kind"),
            ("[{kind: role, version: v3, metadata: {name: r}}]".to_string(), "version"),
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

    #[test]
    fn globs_match_whole_strings() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*.prod", "db.prod"));
        assert!(!glob_match("a*a", "a"));
    }
}
