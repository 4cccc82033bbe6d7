//! Evaluation: what the policy allows a session (`Policy::evaluate`: deny first, the matched
//! provisioning roles' mode, database roles and object rules), and what any role could grant
//! on a database, for preflight checks.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::naming;
use crate::permissions::{CompiledRule, ObjectRules};

use super::compile::{names_match, CompiledRole, Granting, Selecting};
use super::{CreateDbUserMode, Policy, PolicyError};

/// A person's traits, as in the event: `{"internal": {"db_roles": ["auditor"]}, "external": {}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Traits {
    #[serde(default)]
    pub internal: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub external: BTreeMap<String, Vec<String>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;
    use crate::policy::*;

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
}
