//! Property tests over hostile input, 10,000 cases each (`PROPTEST_CASES` raises it for long
//! local runs): event parsing, config and policy parsing, template expansion, object rules.
//! Identifier and literal quoting have their own properties in `sql` and `naming`.
//!
//! Each property holds for every input: no panic, and whatever is accepted is well-formed.
//! The generators make mostly valid input (events as the README documents them, configs like
//! its examples, Teleport roles as `tctl get roles` prints them and `tests/teleport-roles/`),
//! then mutate some of it (hostile text, injections, oversized values, wrong types, unknown
//! and missing keys), so that properties are checked on accepted input and the refusals still
//! run. Each test counts the cases that reached its assertion ([`Reach`]) and fails when fewer
//! than 20% did.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use crate::config::Config;
use crate::event::{SessionEvent, MAX_SESSION_ID_BYTES};
use crate::naming;
use crate::permissions::{ObjectKind, PermissionRule};
use crate::policy::{AccessRequest, Traits};
use crate::property_reach::Reach;

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

/// What injections and confused writers put in a value.
const INJECTIONS: [&str; 20] = [
    "'; DROP ROLE postgres; --",
    "\"; GRANT pg_write_server_files TO x; --",
    "$$; SELECT 1; $$",
    "{{internal.db_roles}}",
    "{{external[\"x\"]}}",
    "{{regexp.replace(internal.db_roles, \"(\", \"\")}}",
    "{{internal.db_roles",
    "^(a+)+$",
    "^[$",
    "*",
    "pg_read_server_files",
    "rds_superuser",
    "postgres",
    "a\0b",
    "\u{202e}evil",
    "\u{feff}bom",
    "line\nbreak",
    "../../etc/passwd",
    "${PGPASSWORD}",
    "🦀",
];

/// A string a mutation puts in place of a valid one: hostile text, an injection, nothing, or
/// an oversized value (over PostgreSQL's 63 bytes, the 256 of a session id, the 1 KiB of a
/// pattern).
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostile_text(),
        3 => proptest::sample::select(INJECTIONS.to_vec()).prop_map(String::from),
        1 => Just(String::new()),
        2 => proptest::sample::select(vec![("x", 64), ("€", 22), ("x", 257), ("🦀", 65), ("a", 4096)])
            .prop_map(|(text, times)| text.repeat(times)),
    ]
}

/// Names as people, identity providers and operators write them, including what PostgreSQL
/// stores exactly but injections like (quotes, semicolons, non-ASCII).
const NAMES: [&str; 14] = [
    "alice",
    "bob",
    "reader",
    "auditor",
    "app_ro",
    "analytics",
    "db-staging",
    "Ünïcødé",
    "o'brien",
    "ops@example.com",
    "x\"y",
    "crab🦀",
    "Robert'); DROP TABLE students;--",
    "MixedCase",
];

/// A valid name: 1 to 48 bytes (room for a template's prefix and suffix), no NUL, and nothing
/// a policy reads as a glob, a regular expression or a template.
fn plausible_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
        2 => "[a-z][a-z0-9_-]{0,24}",
        2 => hostile_text().prop_map(|text| legal_name(&text)),
    ]
}

fn legal_name(text: &str) -> String {
    let mut name: String = text.chars().filter(|c| !"\0*{}".contains(*c)).collect();
    if name.is_empty() || crate::label_match::is_regex(&name) {
        name.insert(0, 'n');
    }
    while name.len() > 48 {
        name.pop();
    }
    name
}

/// A change to a JSON document at nodes chosen by `Index`: what hostile or careless writers
/// do to a valid one.
#[derive(Debug, Clone)]
enum Mutation {
    /// A string replaced with hostile text.
    Text(prop::sample::Index, String),
    /// A value replaced with one of another type or shape.
    Type(prop::sample::Index, serde_json::Value),
    /// A key added to an object.
    AddKey(prop::sample::Index, String, serde_json::Value),
    /// A key removed from an object.
    RemoveKey(prop::sample::Index, prop::sample::Index),
    /// An item appended to a list.
    Append(prop::sample::Index, serde_json::Value),
}

fn wrong_type() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(true)),
        Just(serde_json::Value::Null),
        Just(serde_json::json!(1.5e300)),
        Just(serde_json::json!([1, "x", null])),
        Just(serde_json::json!({"x": {"y": 1}})),
        hostile_value().prop_map(serde_json::Value::String),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>;
    let added = prop_oneof![
        // Misspelt or unsupported fields of events, configs and roles.
        proptest::sample::select(vec![
            ("db_role", serde_json::json!(["admin"])),
            ("extra", serde_json::json!(1)),
            ("$schema", serde_json::json!("./event.schema.json")),
            ("db_labels_expression", serde_json::json!("labels[\"env\"] == \"prod\"")),
            ("db_service_labels", serde_json::json!({"env": "prod"})),
            ("db_usres", serde_json::json!(["*"])),
            ("create_db_user_mode", serde_json::json!("always")),
        ])
        .prop_map(|(key, value)| (key.to_string(), value)),
        (hostile_value(), wrong_type()),
    ];
    prop_oneof![
        4 => (at(), hostile_value()).prop_map(|(at, text)| Mutation::Text(at, text)),
        2 => (at(), wrong_type()).prop_map(|(at, value)| Mutation::Type(at, value)),
        2 => (at(), added).prop_map(|(at, (key, value))| Mutation::AddKey(at, key, value)),
        2 => (at(), at()).prop_map(|(at, key)| Mutation::RemoveKey(at, key)),
        1 => (at(), hostile_value()).prop_map(|(at, text)| Mutation::Append(at, text.into())),
    ]
}

/// No mutation for most documents, one or a few for the rest.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        6 => Just(Vec::new()),
        3 => proptest::collection::vec(mutation(), 1..2),
        1 => proptest::collection::vec(mutation(), 2..4),
    ]
}

/// The JSON pointers of every node of `value`, each with what it is.
fn nodes(value: &serde_json::Value, at: String, out: &mut Vec<(String, &'static str)>) {
    match value {
        serde_json::Value::Object(map) => {
            out.push((at.clone(), "object"));
            for (key, item) in map {
                nodes(item, format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        serde_json::Value::Array(items) => {
            out.push((at.clone(), "array"));
            for (index, item) in items.iter().enumerate() {
                nodes(item, format!("{at}/{index}"), out);
            }
        }
        serde_json::Value::String(_) => out.push((at, "string")),
        _ => out.push((at, "scalar")),
    }
}

fn mutate(document: &mut serde_json::Value, mutation: &Mutation) {
    let mut all = Vec::new();
    nodes(document, String::new(), &mut all);
    let pick = |kind: Option<&str>, at: &prop::sample::Index| {
        let found: Vec<&String> =
            all.iter().filter(|(_, k)| kind.is_none_or(|kind| *k == kind)).map(|(pointer, _)| pointer).collect();
        (!found.is_empty()).then(|| at.get(&found).to_string())
    };
    fn node(document: &mut serde_json::Value, pointer: Option<String>) -> Option<&mut serde_json::Value> {
        pointer.map(|pointer| document.pointer_mut(&pointer).expect("a node of the document"))
    }
    match mutation {
        Mutation::Text(at, text) => {
            if let Some(node) = node(document, pick(Some("string"), at)) {
                *node = text.clone().into();
            }
        }
        Mutation::Type(at, value) => {
            if let Some(node) = node(document, pick(None, at)) {
                *node = value.clone();
            }
        }
        Mutation::AddKey(at, key, value) => {
            if let Some(serde_json::Value::Object(map)) = node(document, pick(Some("object"), at)) {
                map.insert(key.clone(), value.clone());
            }
        }
        Mutation::RemoveKey(at, key) => {
            if let Some(serde_json::Value::Object(map)) = node(document, pick(Some("object"), at)) {
                let keys: Vec<String> = map.keys().cloned().collect();
                if !keys.is_empty() {
                    map.remove(key.get(&keys));
                }
            }
        }
        Mutation::Append(at, value) => {
            if let Some(serde_json::Value::Array(items)) = node(document, pick(Some("array"), at)) {
                items.push(value.clone());
            }
        }
    }
}

fn one_of<T: Clone + std::fmt::Debug + 'static>(values: &[T]) -> proptest::sample::Select<T> {
    proptest::sample::select(values.to_vec())
}

/// A person's traits as identity providers send them.
fn traits_json() -> impl Strategy<Value = serde_json::Value> {
    let values = || proptest::collection::vec(prop_oneof![8 => plausible_name(), 1 => hostile_value()], 0..3);
    (
        proptest::collection::btree_map(
            one_of(&["db_roles", "db_names", "logins", "kubernetes_groups"]),
            values(),
            0..3,
        ),
        proptest::collection::btree_map(one_of(&["groups", "email", "team", "db roles"]), values(), 0..3),
    )
        .prop_map(|(internal, external)| serde_json::json!({"internal": internal, "external": external}))
}

/// A session event as the README documents it (start or end), all values valid.
fn event_document() -> impl Strategy<Value = serde_json::Value> {
    let session_id = prop_oneof![
        4 => "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        2 => plausible_name(),
        1 => "[A-Za-z0-9+/=._-]{100,256}",
        1 => Just("s".repeat(MAX_SESSION_ID_BYTES)),
    ];
    let role_names = proptest::collection::vec(
        prop_oneof![3 => one_of(&["auto-db-users", "access", "db-staging"]).prop_map(String::from), 1 => plausible_name()],
        0..4,
    );
    (
        (
            session_id,
            plausible_name(),
            proptest::option::of(prop_oneof![one_of(&["root", "leaf"]).prop_map(String::from), plausible_name()]),
        ),
        (proptest::option::of(role_names), proptest::option::of(traits_json())),
        (
            prop_oneof![one_of(&["orders", "reports"]).prop_map(String::from), plausible_name()],
            prop_oneof![one_of(&["app", "postgres", "report_2024"]).prop_map(String::from), plausible_name()],
            proptest::option::of(proptest::collection::vec(plausible_name(), 0..3)),
        ),
    )
        .prop_map(|((session_id, user, origin_cluster), (roles, traits), (database, db_name, db_roles))| {
            let mut event =
                serde_json::json!({"session_id": session_id, "user": user, "database": database, "db_name": db_name});
            let object = event.as_object_mut().expect("an object");
            for (key, value) in [
                ("origin_cluster", origin_cluster.map(serde_json::Value::from)),
                ("roles", roles.map(serde_json::Value::from)),
                ("traits", traits),
                ("db_roles", db_roles.map(serde_json::Value::from)),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_string(), value);
                }
            }
            event
        })
}

/// A change to an event's text itself.
#[derive(Debug, Clone)]
enum TextMutation {
    None,
    Truncate(prop::sample::Index),
    Trailing(String),
    Replace(String),
}

/// An event as JSON text, and whether it was changed after it was made valid.
fn event_json() -> impl Strategy<Value = (String, bool)> {
    let text_mutation = prop_oneof![
        27 => Just(TextMutation::None),
        1 => any::<prop::sample::Index>().prop_map(TextMutation::Truncate),
        1 => hostile_value().prop_map(TextMutation::Trailing),
        1 => prop_oneof![hostile_value(), any::<String>()].prop_map(TextMutation::Replace),
    ];
    (event_document(), mutations(), text_mutation).prop_map(|(mut event, mutations, text_mutation)| {
        for mutation in &mutations {
            mutate(&mut event, mutation);
        }
        let text = event.to_string();
        let mutated = !mutations.is_empty() || !matches!(text_mutation, TextMutation::None);
        let text = match text_mutation {
            TextMutation::None => text,
            TextMutation::Truncate(at) => text.chars().take(at.index(text.chars().count())).collect(),
            TextMutation::Trailing(garbage) => format!("{text} {garbage}"),
            TextMutation::Replace(other) => other,
        };
        (text, mutated)
    })
}

/// The role documents of `tests/teleport-roles/`, as `tctl get roles --format=json` prints them.
static FIXTURE_ROLES: std::sync::LazyLock<Vec<serde_json::Value>> = std::sync::LazyLock::new(|| {
    serde_json::from_str(include_str!("../../../tests/teleport-roles/tctl-get-roles.json"))
        .expect("the fixture is JSON")
});

/// The role names the generated roles take, by position (none is a fixture's).
const ROLE_NAMES: [&str; 3] = ["team-db-users", "read-public", "analysts"];

const ROLE_TEMPLATES: [&str; 6] = [
    "{{internal.db_roles}}",
    "{{external.groups}}",
    "{{regexp.replace(external.groups, \"^db-(.*)$\", \"$1\")}}",
    "{{email.local(external.email)}}_ro",
    "app_{{external.team}}_ro",
    "{{external[\"db roles\"]}}",
];

/// A `db_permissions` entry as the README writes them: kinds and the permissions they take.
fn permission_rule_json() -> impl Strategy<Value = serde_json::Value> {
    one_of(&[
        serde_json::json!({"match": {"object_kind": "table", "schema": "public"}, "permissions": ["SELECT"]}),
        serde_json::json!({"match": {"object_kind": ["sequence"], "environment": "prod"}, "permissions": ["USAGE"]}),
        serde_json::json!({"match": {"object_kind": ["table", "view"], "name": "orders*"}, "permissions": ["select", "INSERT"]}),
        serde_json::json!({"match": {"object_kind": "function"}, "permissions": ["EXECUTE"]}),
        serde_json::json!({"match": {"*": "*"}, "permissions": ["SELECT"]}),
    ])
}

/// A Teleport role in the shape `tctl get roles` prints (v3 to v8, Teleport's own fields
/// beside the database ones), its database fields like the README's and the fixtures'.
fn role_document() -> impl Strategy<Value = serde_json::Value> {
    let options = one_of(&[
        serde_json::json!({"create_db_user_mode": "keep"}),
        serde_json::json!({"create_db_user_mode": "best_effort_drop", "max_session_ttl": "8h0m0s"}),
        serde_json::json!({"create_db_user_mode": "best_effort_reassign_and_drop"}),
        serde_json::json!({"create_db_user_mode": 2, "cert_format": "standard", "forward_agent": false}),
        serde_json::json!({"create_db_user": true}),
        serde_json::json!({"create_db_user_mode": "off"}),
        serde_json::json!({"create_db_user": false, "record_session": {"default": "best_effort", "desktop": true}}),
    ]);
    let labels = one_of(&[
        serde_json::json!({"*": "*"}),
        serde_json::json!({"env": "dev"}),
        serde_json::json!({"env": "^(dev|staging)$"}),
        serde_json::json!({"team": ["data", "analytics-*"]}),
        serde_json::json!({"env": "*", "team": "data"}),
    ]);
    let names = one_of(&[
        serde_json::json!(["*"]),
        serde_json::json!(["app"]),
        serde_json::json!(["{{internal.db_names}}", "report_*"]),
        serde_json::json!(["^(app|reports)$"]),
    ]);
    let db_roles = proptest::collection::vec(
        prop_oneof![3 => plausible_name(), 2 => one_of(&ROLE_TEMPLATES).prop_map(String::from)],
        1..4,
    );
    let extras = one_of(&[
        serde_json::json!({}),
        serde_json::json!({"db_service_labels": {"*": "*"}, "db_users": ["{{internal.db_users}}"]}),
        serde_json::json!({"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
            "rules": [{"resources": ["event"], "verbs": ["list", "read"]}]}),
        serde_json::json!({"request": {"roles": ["db-staging"], "thresholds": [{"approve": 1, "deny": 1}]}}),
    ]);
    let deny = one_of(&[
        serde_json::json!({}),
        serde_json::json!({"db_roles": ["^admin_.*$"], "logins": ["root"]}),
        serde_json::json!({"db_names": ["secret"]}),
        serde_json::json!({"db_labels": {"env": "prod"}}),
        serde_json::json!({"db_roles": ["{{external.denied}}", "auditor"]}),
        serde_json::json!({"db_permissions": [{"match": {"object_kind": "table", "name": "secret_*"}, "permissions": ["SELECT"]}]}),
    ]);
    (
        one_of(&["v3", "v4", "v5", "v6", "v7", "v8"]),
        options,
        (labels, names, db_roles, extras),
        proptest::collection::vec(permission_rule_json(), 0..2),
        deny,
    )
        .prop_map(|(version, options, (labels, names, db_roles, extras), permissions, deny)| {
            let mut allow = serde_json::json!({"db_labels": labels, "db_names": names, "db_roles": db_roles});
            let object = allow.as_object_mut().expect("an object");
            object.extend(extras.as_object().expect("an object").clone());
            if !permissions.is_empty() {
                object.insert("db_permissions".into(), permissions.into());
            }
            serde_json::json!({
                "kind": "role",
                "version": version,
                "metadata": {"name": "", "description": "made by a property test", "revision": "3c1f9a52-7d4e-4b0a-9e63-0f2d8b5c4a17"},
                "spec": {"options": options, "allow": allow, "deny": deny},
            })
        })
}

/// A config like the README's: a static database (and sometimes an RDS one), optional
/// top-level settings, roles (generated, and some of the fixtures), sometimes import rules.
fn config_document() -> impl Strategy<Value = serde_json::Value> {
    let orders = (
        one_of(&["localhost:5432", "db.internal:6432", "[::1]:5432", "postgres://orders.example.com:5432/app", "10.0.0.5"]),
        one_of(&[
            serde_json::json!({"env": "dev", "team": "data"}),
            serde_json::json!({"env": "staging", "team": "analytics-eu"}),
            serde_json::json!({"env": "dev"}),
        ]),
        one_of(&[
            serde_json::json!({"name": "teleport-admin"}),
            serde_json::json!({"name": "teleport-admin", "default_database": "postgres"}),
        ]),
        one_of(&[
            (serde_json::json!({"method": "password", "password_env": "PGPASSWORD"}), serde_json::json!({"mode": "require"})),
            (serde_json::json!({"method": "password", "password_env": "PGPASSWORD"}), serde_json::json!({"mode": "disable"})),
            (serde_json::json!({"method": "cert", "cert_file": "admin.crt", "key_file": "admin.key"}),
                serde_json::json!({"mode": "verify-full", "ca_file": "ca.pem"})),
            (serde_json::json!({"method": "password", "secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pg"}),
                serde_json::json!({"mode": "verify-ca", "ca_file": "certs/ca.pem"})),
        ]),
    )
        .prop_map(|(uri, labels, admin_user, (auth, tls))| {
            serde_json::json!({"name": "orders", "type": "self-hosted", "uri": uri, "labels": labels,
                "admin_user": admin_user, "auth": auth, "tls": tls})
        });
    let reports = proptest::option::of(one_of(&[
        serde_json::json!({"name": "reports", "rds": {"instance_id": "reports-prod", "region": "us-east-1"}}),
        serde_json::json!({"name": "reports", "rds": {"cluster_id": "reports", "region": "eu-west-1"},
            "fallback_admin_user": {"name": "teleport-admin"}}),
    ]));
    let settings = proptest::collection::btree_map(
        one_of(&[
            "cluster_name",
            "managed_group",
            "object_inheritor",
            "creator_roles",
            "allowed_predefined_roles",
            "max_session_duration",
            "redelivery_window",
            "terminate_connections",
            "retry_blocked_drops",
        ]),
        any::<prop::sample::Index>(),
        0..4,
    )
    .prop_map(|chosen| {
        let values: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::from([
            ("cluster_name", vec!["leaf".into(), "eu-1".into()]),
            ("managed_group", vec!["teleport-auto-user".into(), "autousers".into()]),
            ("object_inheritor", vec!["teleport-object-inheritor".into(), "heir".into()]),
            ("creator_roles", vec![0.into(), 8.into(), 128.into()]),
            (
                "allowed_predefined_roles",
                vec![serde_json::json!(["pg_read_all_data"]), serde_json::json!(["pg_monitor", "pg_read_all_stats"])],
            ),
            ("max_session_duration", vec!["12h".into(), "90m".into()]),
            ("redelivery_window", vec!["24h".into(), "2d".into()]),
            ("terminate_connections", vec![true.into(), false.into()]),
            ("retry_blocked_drops", vec![true.into(), false.into()]),
        ]);
        chosen
            .into_iter()
            .map(|(key, at)| (key.to_string(), at.get(&values[key]).clone()))
            .collect::<serde_json::Map<_, _>>()
    });
    let fixtures = proptest::sample::subsequence((0..FIXTURE_ROLES.len()).collect::<Vec<_>>(), 0..=2);
    let import_rules = proptest::option::of(Just(serde_json::json!([
        {"name": "prod-tables", "priority": 10, "match": {"database": ["app"], "schema": ["public"], "name": ["orders*"]},
         "add_labels": {"environment": "prod"}}
    ])));
    (orders, reports, settings, proptest::collection::vec(role_document(), 1..4), fixtures, import_rules).prop_map(
        |(orders, reports, settings, roles, fixtures, import_rules)| {
            let mut config = serde_json::Map::from_iter(settings);
            config.insert("databases".into(), std::iter::once(orders).chain(reports).collect());
            let roles = roles
                .into_iter()
                .zip(ROLE_NAMES)
                .map(|(mut role, name)| {
                    role["metadata"]["name"] = name.into();
                    role
                })
                .chain(fixtures.into_iter().map(|index| FIXTURE_ROLES[index].clone()));
            config.insert("roles".into(), roles.collect());
            if let Some(rules) = import_rules {
                config.insert("import_rules".into(), rules);
            }
            serde_json::Value::Object(config)
        },
    )
}

/// A config as YAML text, and whether it was changed after it was made valid.
fn config_yaml() -> impl Strategy<Value = (String, bool)> {
    (config_document(), mutations()).prop_map(|(mut config, mutations)| {
        for mutation in &mutations {
            mutate(&mut config, mutation);
        }
        (serde_yaml_ng::to_string(&config).expect("JSON values serialise"), !mutations.is_empty())
    })
}

/// A trait value to expand: mostly a valid name, with quotes, non-ASCII and template syntax
/// that must not be reinterpreted; sometimes empty, with NUL, or too long.
fn trait_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => plausible_name(),
        2 => "[a-z]{1,8}(\\{\\{internal\\.db_roles\\}\\}|\\$1|\\{\\{|\\}\\}|\\*)[a-z]{0,8}",
        2 => hostile_value(),
    ]
}

#[test]
fn events_parse_or_fail_cleanly_and_accepted_ones_are_valid() {
    let reach = Reach::new("events_parse_or_fail_cleanly_and_accepted_ones_are_valid");
    proptest!(cases(), |((text, mutated) in event_json())| {
        reach.case();
        let parsed = SessionEvent::from_json(&text);
        // Events as the README documents them are accepted.
        prop_assert!(mutated || parsed.is_ok(), "{parsed:?}\n{text}");
        if let Ok(event) = parsed {
            reach.reached();
            prop_assert!(!event.session_id.is_empty() && event.session_id.len() <= MAX_SESSION_ID_BYTES);
            prop_assert!(!event.user.is_empty());
            prop_assert!(!event.database.is_empty() && !event.db_name.is_empty());
            for value in [&event.session_id, &event.user, &event.database, &event.db_name] {
                prop_assert!(!value.contains('\0'), "{value:?}");
            }
            prop_assert!(event.origin_cluster.as_deref() != Some(""));
            // And they say exactly what the JSON says.
            let json: serde_json::Value = serde_json::from_str(&text).expect("an accepted event is JSON");
            for (field, value) in [
                ("session_id", &event.session_id),
                ("user", &event.user),
                ("database", &event.database),
                ("db_name", &event.db_name),
            ] {
                prop_assert_eq!(json[field].as_str(), Some(value.as_str()), "{}", field);
            }
            prop_assert_eq!(json["origin_cluster"].as_str(), event.origin_cluster.as_deref());
            let list = |field: &str| serde_json::from_value::<Option<Vec<String>>>(json[field].clone()).expect("a list");
            prop_assert_eq!(list("roles"), event.roles);
            prop_assert_eq!(list("db_roles"), event.db_roles);
        }
    });
    reach.check();
}

/// Whatever the config says, loading never panics, configs shaped as the README's load, and a
/// session's database roles are always names PostgreSQL stores exactly (templates included).
#[test]
fn configs_load_or_fail_cleanly_and_grants_are_exact_names() {
    let reach = Reach::new("configs_load_or_fail_cleanly_and_grants_are_exact_names");
    proptest!(cases(), |(
        (yaml, mutated) in config_yaml(),
        traits in traits_json(),
        db_name in prop_oneof![4 => Just("app".to_string()), 1 => Just("report_2024".to_string()), 1 => hostile_value()],
    )| {
        reach.case();
        let config = Config::parse(&yaml, Path::new("/"));
        prop_assert!(mutated || config.is_ok(), "{:?}\n{yaml}", config.err());
        let Ok(config) = config else { return Ok(()) };
        let traits: Traits = serde_json::from_value(traits).expect("traits");
        let roles: Vec<String> = config.policy.role_names().map(String::from).collect();
        let database = &config.databases[0];
        let request = AccessRequest {
            role_names: &roles,
            traits: &traits,
            database: &database.name,
            labels: &database.labels,
            db_name: &db_name,
            requested_db_roles: None,
        };
        if let Ok(grant) = config.policy.evaluate(&request) {
            if !grant.db_roles.is_empty() {
                reach.reached();
            }
            for role in &grant.db_roles {
                prop_assert!(naming::validate_identifier(role).is_ok(), "{role:?}");
            }
        }
    });
    reach.check();
}

/// A template expands to exactly the trait value inside its prefix and suffix, or is
/// refused: never truncated, never reinterpreted. An empty value is dropped.
#[test]
fn templates_expand_to_the_exact_trait_value() {
    let reach = Reach::new("templates_expand_to_the_exact_trait_value");
    let templates = [
        ("pre_", "{{internal.db_roles}}", "_suf", true),
        ("", "{{internal.db_roles}}", "", true),
        ("app_", "{{external.team}}", "_ro", false),
        ("", "{{external[\"db roles\"]}}", "'; --", false),
    ];
    proptest!(cases(), |(value in trait_value(), (prefix, expression, suffix, internal) in one_of(&templates))| {
        reach.case();
        let written = format!("{prefix}{expression}{suffix}");
        let role = serde_json::json!([{"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {
            "options": {"create_db_user_mode": "keep"},
            "allow": {"db_labels": {"*": "*"}, "db_names": ["*"], "db_roles": [written]}}}]);
        let policy = crate::policy::Policy::new(serde_json::from_value(role).unwrap()).unwrap();
        let name = if internal { "db_roles" } else if prefix.is_empty() { "db roles" } else { "team" };
        let values = BTreeMap::from([(name.to_string(), vec![value.clone()])]);
        let traits = if internal {
            Traits { internal: values, external: BTreeMap::new() }
        } else {
            Traits { internal: BTreeMap::new(), external: values }
        };
        let roles = vec!["r".to_string()];
        let result = policy.evaluate(&AccessRequest {
            role_names: &roles,
            traits: &traits,
            database: "d",
            labels: &BTreeMap::new(),
            db_name: "app",
            requested_db_roles: None,
        });
        let expected = format!("{prefix}{value}{suffix}");
        match result {
            // Teleport drops empty trait values.
            Ok(grant) if value.is_empty() => prop_assert!(grant.db_roles.is_empty()),
            Ok(grant) => {
                reach.reached();
                prop_assert_eq!(grant.db_roles.into_iter().collect::<Vec<_>>(), vec![expected]);
            }
            Err(_) => prop_assert!(naming::validate_identifier(&expected).is_err()),
        }
    });
    reach.check();
}

/// Object kinds and globs as rules write them, and the privileges the chosen kinds accept,
/// written in any case; with hostile kinds and privileges on top.
fn object_rule() -> impl Strategy<Value = (Vec<String>, Vec<String>, BTreeMap<String, String>)> {
    let kinds = proptest::collection::vec(
        prop_oneof![
            8 => one_of(&["table", "view", "sequence", "function", "procedure", "*", "tab*", "*ion", "seq*"]).prop_map(String::from),
            1 => hostile_value(),
        ],
        0..3,
    );
    let others = proptest::collection::btree_map(
        one_of(&["schema", "name", "environment", "*"]).prop_map(String::from),
        one_of(&["public", "orders*", "prod", "*"]).prop_map(String::from),
        0..3,
    );
    (kinds, others).prop_flat_map(|(kinds, others)| {
        let accepted: Vec<&'static str> = ObjectKind::ALL
            .into_iter()
            .filter(|kind| kinds.is_empty() || kinds.iter().any(|g| crate::label_match::glob_match(g, kind.label())))
            .flat_map(|kind| ObjectKind::privileges(kind).iter().copied())
            .collect();
        let accepted = if accepted.is_empty() { vec!["SELECT"] } else { accepted };
        let permission = prop_oneof![
            8 => (one_of(&accepted), any::<bool>(), any::<bool>()).prop_map(|(privilege, lower, padded)| {
                let privilege = if lower { privilege.to_lowercase() } else { privilege.to_string() };
                if padded { format!(" {privilege} ") } else { privilege }
            }),
            1 => one_of(&["SELECT", "EXECUTE", "USAGE", "TRIGGER", "DROP", "ALL", ""]).prop_map(String::from),
            1 => hostile_value(),
        ];
        (Just(kinds), proptest::collection::vec(permission, 0..4), Just(others))
    })
}

/// Compiled object rules only ever carry privileges their kinds accept, and carry every
/// permission the rule lists.
#[test]
fn object_rules_carry_only_privileges_their_kinds_accept() {
    let reach = Reach::new("object_rules_carry_only_privileges_their_kinds_accept");
    proptest!(cases(), |((kinds, permissions, others) in object_rule())| {
        reach.case();
        let mut selector: BTreeMap<String, crate::policy::LabelValues> =
            others.into_iter().map(|(key, value)| (key, crate::policy::LabelValues::One(value))).collect();
        if !kinds.is_empty() {
            selector.insert("object_kind".to_string(), crate::policy::LabelValues::Many(kinds));
        }
        if let Ok(rule) = (PermissionRule { selector, permissions: permissions.clone() }).compile(0) {
            reach.reached();
            for (kind, privileges) in &rule.by_kind {
                for privilege in privileges {
                    prop_assert!(ObjectKind::privileges(*kind).contains(&privilege.as_str()), "{kind:?} {privilege}");
                }
            }
            for permission in &permissions {
                let permission = permission.trim().to_ascii_uppercase();
                prop_assert!(rule.by_kind.values().any(|privileges| privileges.contains(&permission)), "{permission}");
            }
        }
    });
    reach.check();
}
