//! A role document checked and compiled at load (`CompiledRole`): its selectors, names and
//! templates parsed, the fields pg-autouser cannot evaluate refused, and how its values match.

use std::collections::BTreeMap;

use crate::label_match::{self, Matcher};
use crate::naming;
use crate::permissions::{CompiledRule, PermissionRule};
use crate::templates::{Template, TemplateError, Value};

use super::{AccessRequest, Conditions, CreateDbUserMode, LabelValues, PolicyError, Role, Traits, SUPPORTED_VERSIONS};

/// A compiled label selector.
#[derive(Debug, Clone)]
pub(super) struct Selector {
    /// `{"*": "*"}`: matches every database, whatever the other keys.
    everything: bool,
    keys: Vec<(String, Vec<Matcher>)>,
}

impl Selector {
    pub(super) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.everything
            || self.keys.iter().all(|(key, values)| {
                key == "*" || labels.get(key).is_some_and(|value| values.iter().any(|m| m.matches(value)))
            })
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.everything && self.keys.is_empty()
    }
}

/// A `db_names` entry, or a deny `db_roles` entry.
#[derive(Debug, Clone)]
pub(super) enum Selecting {
    Pattern(Matcher),
    /// Expanded values are compared exactly; for `db_names`, `*` matches every name.
    Template(Template),
}

/// An allow `db_roles` entry: a role name, or a template of role names.
#[derive(Debug, Clone)]
pub(super) enum Granting {
    Name(String),
    Template { template: Template, written: String },
}

/// A role, validated and with its values compiled.
#[derive(Debug, Clone)]
pub(super) struct CompiledRole {
    pub(super) role: Role,
    pub(super) mode: CreateDbUserMode,
    pub(super) allow_labels: Option<Selector>,
    pub(super) allow_names: Vec<Selecting>,
    pub(super) allow_roles: Vec<Granting>,
    pub(super) deny_labels: Option<Selector>,
    pub(super) deny_names: Vec<Selecting>,
    pub(super) deny_roles: Vec<Selecting>,
    pub(super) allow_permissions: Vec<CompiledRule>,
    pub(super) deny_permissions: Vec<CompiledRule>,
}

impl CompiledRole {
    pub(super) fn name(&self) -> &str {
        &self.role.metadata.name
    }

    pub(super) fn allow_matches(&self, req: &AccessRequest<'_>) -> bool {
        self.allow_labels.as_ref().is_some_and(|s| !s.is_empty() && s.matches(req.labels))
            && self.allow_names.iter().any(|entry| names_match(entry, req.db_name, req.traits))
    }
}

pub(super) fn names_match(entry: &Selecting, db_name: &str, traits: &Traits) -> bool {
    match entry {
        Selecting::Pattern(matcher) => matcher.matches(db_name),
        Selecting::Template(template) => {
            template.expand(&traits.internal, &traits.external).iter().any(|value| value == "*" || value == db_name)
        }
    }
}

pub(super) fn compile_role(role: Role) -> Result<CompiledRole, PolicyError> {
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
    use crate::policy::test_support::*;
    use crate::policy::*;

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
}
