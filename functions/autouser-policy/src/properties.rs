//! Property tests over hostile input, 10,000 cases each (`PROPTEST_CASES` raises it for long
//! local runs): event parsing, config and policy parsing, template expansion, object rules.
//! Identifier and literal quoting have their own properties in `sql` and `naming`.
//!
//! Each property holds for every input: no panic, and whatever is accepted is well-formed.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use crate::config::Config;
use crate::event::{SessionEvent, MAX_SESSION_ID_BYTES};
use crate::naming;
use crate::permissions::{ObjectKind, PermissionRule};
use crate::policy::{AccessRequest, Traits};

/// 10,000 cases unless `PROPTEST_CASES` says otherwise.
pub(crate) fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Short strings rich in what breaks parsers and SQL: quotes, braces, globs, templates,
/// separators, NUL, non-ASCII, and long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("internal.".to_string()),
        Just("*".to_string()),
        Just(";".to_string()),
        Just("\0".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("ü".to_string()),
        Just("x".repeat(40)),
        "[a-z_]{1,8}",
        "\\PC{1,4}",
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// A JSON value for an event field: mostly strings, sometimes the wrong type.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        6 => hostile_text().prop_map(serde_json::Value::String),
        1 => any::<i64>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::Null),
        2 => proptest::collection::vec(hostile_text(), 0..4).prop_map(|v| serde_json::json!(v)),
        1 => proptest::collection::btree_map(hostile_text(), proptest::collection::vec(hostile_text(), 0..3), 0..3)
            .prop_map(|m| serde_json::json!({"internal": m})),
    ]
}

const EVENT_FIELDS: [&str; 10] =
    ["session_id", "user", "origin_cluster", "roles", "traits", "database", "db_name", "db_roles", "db_role", "extra"];

fn event_json() -> impl Strategy<Value = String> {
    let field = (proptest::sample::select(EVENT_FIELDS.to_vec()), json_value());
    prop_oneof![
        8 => proptest::collection::vec(field, 0..10).prop_map(|fields| {
            let object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            serde_json::Value::Object(object).to_string()
        }),
        1 => hostile_text(),
        1 => any::<String>(),
    ]
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialise")
}

/// A `db_permissions` entry: an object kind (or a glob, or a typo), permissions, a name glob.
fn permission_rule() -> impl Strategy<Value = (&'static str, Vec<&'static str>, String)> {
    let kinds =
        proptest::sample::select(vec!["table", "view", "sequence", "function", "procedure", "*", "tab*", "nope"]);
    let permissions =
        proptest::sample::select(vec!["SELECT", "insert", "EXECUTE", "USAGE", "TRUNCATE", "DROP", "ALL", ""]);
    (kinds, proptest::collection::vec(permissions, 0..3), hostile_text())
}

/// A config whose policy and import rules are made of hostile pieces.
fn config_yaml() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(hostile_text(), 0..4),
        proptest::collection::vec(hostile_text(), 0..3),
        proptest::collection::vec(permission_rule(), 0..3),
        proptest::collection::vec(permission_rule(), 0..2),
        hostile_text(),
        hostile_text(),
        any::<i8>(),
    )
        .prop_map(|(db_roles, deny_roles, allow_rules, deny_rules, label, import_label, priority)| {
            let list = |items: &[String]| format!("[{}]", items.iter().map(|s| yaml_string(s)).collect::<Vec<_>>().join(", "));
            let rules = |rules: &[(&str, Vec<&str>, String)]| {
                let entries: Vec<String> = rules
                    .iter()
                    .map(|(kind, permissions, name)| {
                        format!(
                            "{{match: {{object_kind: {}, name: {}}}, permissions: {}}}",
                            yaml_string(kind),
                            yaml_string(name),
                            list(&permissions.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                        )
                    })
                    .collect();
                format!("[{}]", entries.join(", "))
            };
            format!(
                r#"
databases:
  - {{name: d, type: self-hosted, uri: "h:5432", admin_user: {{name: admin}}, auth: {{method: password, password_env: P}}, tls: {{mode: require}}, labels: {{env: {label}}}}}
roles:
  - kind: role
    version: v7
    metadata: {{name: r}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{"*": "*"}}, db_names: ["*"], db_roles: {db_roles}, db_permissions: {allow_rules}}}
      deny: {{db_labels: {{env: {label}}}, db_roles: {deny_roles}, db_permissions: {deny_rules}}}
import_rules:
  - {{name: i, priority: {priority}, match: {{name: [{label}]}}, add_labels: {{k: {import_label}}}}}
"#,
                label = yaml_string(&label),
                import_label = yaml_string(&import_label),
                db_roles = list(&db_roles),
                deny_roles = list(&deny_roles),
                allow_rules = rules(&allow_rules),
                deny_rules = rules(&deny_rules),
            )
        })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn events_parse_or_fail_cleanly_and_accepted_ones_are_valid(text in event_json()) {
        if let Ok(event) = SessionEvent::from_json(&text) {
            prop_assert!(!event.session_id.is_empty() && event.session_id.len() <= MAX_SESSION_ID_BYTES);
            prop_assert!(!event.user.is_empty());
            prop_assert!(!event.database.is_empty() && !event.db_name.is_empty());
        }
    }

    /// Whatever the config says, loading never panics, and a session's database roles are
    /// always names PostgreSQL stores exactly (templates included).
    #[test]
    fn configs_load_or_fail_cleanly_and_grants_are_exact_names(
        yaml in config_yaml(),
        trait_values in proptest::collection::vec(hostile_text(), 0..4),
    ) {
        let Ok(config) = Config::parse(&yaml, Path::new("/")) else { return Ok(()) };
        let traits = Traits {
            internal: BTreeMap::from([("db_roles".to_string(), trait_values)]),
            external: BTreeMap::new(),
        };
        let roles = vec!["r".to_string()];
        let labels = BTreeMap::from([("env".to_string(), "x".to_string())]);
        let request = AccessRequest {
            role_names: &roles,
            traits: &traits,
            database: "d",
            labels: &labels,
            db_name: "app",
            requested_db_roles: None,
        };
        if let Ok(grant) = config.policy.evaluate(&request) {
            for role in &grant.db_roles {
                prop_assert!(naming::validate_identifier(role).is_ok(), "{role:?}");
            }
        }
    }

    /// A template expands to exactly the trait value inside its prefix and suffix, or is
    /// refused: never truncated, never reinterpreted. An empty value is dropped.
    #[test]
    fn templates_expand_to_the_exact_trait_value(value in hostile_text()) {
        let yaml = r#"[{kind: role, version: v7, metadata: {name: r}, spec: {options: {create_db_user_mode: keep},
            allow: {db_labels: {"*": "*"}, db_names: ["*"], db_roles: ["pre_{{internal.db_roles}}_suf"]}}}]"#;
        let policy = crate::policy::Policy::new(serde_yaml_ng::from_str(yaml).unwrap()).unwrap();
        let traits = Traits { internal: BTreeMap::from([("db_roles".to_string(), vec![value.clone()])]), external: BTreeMap::new() };
        let roles = vec!["r".to_string()];
        let result = policy.evaluate(&AccessRequest {
            role_names: &roles,
            traits: &traits,
            database: "d",
            labels: &BTreeMap::new(),
            db_name: "app",
            requested_db_roles: None,
        });
        let expected = format!("pre_{value}_suf");
        match result {
            // Teleport drops empty trait values.
            Ok(grant) if value.is_empty() => prop_assert!(grant.db_roles.is_empty()),
            Ok(grant) => prop_assert_eq!(grant.db_roles.into_iter().collect::<Vec<_>>(), vec![expected]),
            Err(_) => prop_assert!(naming::validate_identifier(&expected).is_err()),
        }
    }

    /// Compiled object rules only ever carry privileges their kinds accept.
    #[test]
    fn object_rules_carry_only_privileges_their_kinds_accept(
        kinds in proptest::collection::vec(hostile_text(), 0..3),
        permissions in proptest::collection::vec(
            prop_oneof![proptest::sample::select(vec!["SELECT", "execute", "USAGE", "TRIGGER"]).prop_map(String::from), hostile_text()],
            0..4,
        ),
    ) {
        let mut selector = BTreeMap::new();
        if !kinds.is_empty() {
            selector.insert("object_kind".to_string(), crate::policy::LabelValues::Many(kinds));
        }
        if let Ok(rule) = (PermissionRule { selector, permissions }).compile(0) {
            for (kind, privileges) in &rule.by_kind {
                for privilege in privileges {
                    prop_assert!(ObjectKind::privileges(*kind).contains(&privilege.as_str()), "{kind:?} {privilege}");
                }
            }
        }
    }
}
