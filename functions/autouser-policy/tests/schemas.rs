//! The JSON Schemas in `schemas/`, which editors use to validate and complete configs:
//! - they are what the loader's types generate (`Config::json_schema`,
//!   `SessionEvent::json_schema`); after changing the types, regenerate them with
//!   `AUTOUSER_WRITE_SCHEMAS=1 cargo test -p autouser-policy --test schemas`;
//! - every config and event of the README, and the role documents of `tests/teleport-roles`,
//!   validate, and the loader accepts them too;
//! - what the loader refuses as an unknown key, the schema refuses.
//!
//! `scripts/test` runs it: `cargo test -p autouser-policy --test schemas`.

use std::path::{Path, PathBuf};

use autouser_policy::config::Config;
use autouser_policy::event::SessionEvent;
use serde_json::{json, Value};

const REGENERATE: &str = "AUTOUSER_WRITE_SCHEMAS=1 cargo test -p autouser-policy --test schemas";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A schema as committed: pretty JSON and a final newline.
fn render(schema: &schemars::Schema) -> String {
    format!("{}\n", serde_json::to_string_pretty(schema).unwrap())
}

fn check_committed(file: &str, schema: &schemars::Schema) {
    let path = repository().join("schemas").join(file);
    let generated = render(schema);
    if std::env::var_os("AUTOUSER_WRITE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/{file} is not what the types generate: regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_committed_config_schema_is_what_the_types_generate() {
    check_committed("config.schema.json", &Config::json_schema());
}

#[test]
fn the_committed_event_schema_is_what_the_types_generate() {
    check_committed("event.schema.json", &SessionEvent::json_schema());
}

/// The validator of a committed schema, checked against the draft 2020-12 meta-schema.
fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repository().join("schemas").join(file)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{file}");
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{file} is not a valid JSON Schema: {e}"));
    jsonschema::draft202012::new(&schema).unwrap()
}

/// Why `instance` fails `validator`, or `None` when it validates.
fn errors(validator: &jsonschema::Validator, instance: &Value) -> Option<String> {
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

fn yaml_to_json(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// The fenced blocks of `language` in the README, with the line each starts on.
fn readme_blocks(language: &str) -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (number, line) in readme.lines().enumerate() {
        match &mut open {
            None if line.trim_end() == format!("```{language}") => open = Some((number + 1, String::new())),
            None => {}
            Some(_) if line.starts_with("```") => blocks.push(open.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

/// The README's configs: every YAML block with a top-level key of the config. A block that
/// shows one section (`roles:` with `import_rules:`) is checked as a config with the first
/// block's `databases`.
fn readme_configs() -> Vec<(usize, Value)> {
    let blocks: Vec<(usize, Value)> =
        readme_blocks("yaml").into_iter().map(|(line, text)| (line, yaml_to_json(&text))).collect();
    let databases = blocks
        .iter()
        .find_map(|(_, config)| config.get("databases").cloned())
        .expect("a README config lists databases");
    blocks
        .into_iter()
        .filter(|(_, block)| {
            ["databases", "roles", "import_rules", "tag_keys"].iter().any(|key| block.get(key).is_some())
        })
        .map(|(line, mut config)| {
            if config.get("databases").is_none() {
                config["databases"] = databases.clone();
            }
            (line, config)
        })
        .collect()
}

#[test]
fn every_config_of_the_readme_validates_and_loads() {
    let validator = validator("config.schema.json");
    let configs = readme_configs();
    assert!(configs.len() >= 3, "found the README's configs: {configs:?}");
    for (line, config) in &configs {
        if let Some(errors) = errors(&validator, config) {
            panic!("README.md line {line}: the config fails the schema: {errors}\n{config:#}");
        }
        // roles_file names a file the README does not ship: load the rest.
        let mut loaded = config.clone();
        loaded.as_object_mut().unwrap().remove("roles_file");
        Config::parse(&loaded.to_string(), Path::new("/etc/autouser"))
            .unwrap_or_else(|e| panic!("README.md line {line}: the config validates but does not load: {e}"));
    }
}

#[test]
fn the_readme_shows_the_schema_line_editors_read() {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    assert!(readme.contains("# yaml-language-server: $schema="), "the README shows the yaml-language-server line");
}

/// The README's session events: each JSON block that is one, the `detail` of each that is an
/// EventBridge event, and the payload of the `aws lambda invoke` example.
fn readme_events() -> Vec<(usize, Value)> {
    let mut events = Vec::new();
    for (line, text) in readme_blocks("json") {
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("README.md line {line}: {e}"));
        if value.get("session_id").is_some() {
            events.push((line, value));
        } else if let Some(detail) = value.get("detail") {
            events.push((line, detail.clone()));
        }
    }
    for (line, text) in readme_blocks("sh") {
        if let Some((_, rest)) = text.split_once("--payload '") {
            let payload = rest.split('\'').next().unwrap();
            events.push((line, serde_json::from_str(payload).unwrap()));
        }
    }
    events
}

#[test]
fn every_event_of_the_readme_validates_and_parses() {
    let validator = validator("event.schema.json");
    let events = readme_events();
    assert!(events.len() >= 3, "found the README's events: {events:?}");
    for (line, event) in &events {
        if let Some(errors) = errors(&validator, event) {
            panic!("README.md line {line}: the event fails the schema: {errors}\n{event:#}");
        }
        SessionEvent::from_value(event.clone())
            .unwrap_or_else(|e| panic!("README.md line {line}: the event validates but does not parse: {e}"));
    }
}

/// The role documents of `tests/teleport-roles` (what `tctl get roles` prints), each checked
/// as the one role of a config.
#[test]
fn the_teleport_role_fixtures_validate_as_roles_of_a_config() {
    let validator = validator("config.schema.json");
    let dir = repository().join("tests/teleport-roles");
    let yaml = std::fs::read_to_string(dir.join("tctl-get-roles.yaml")).unwrap();
    let mut roles: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|role: &Value| !role.is_null())
        .collect();
    let json: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tctl-get-roles.json")).unwrap()).unwrap();
    roles.extend(json);
    assert!(roles.len() >= 8, "read the fixtures: {} roles", roles.len());
    for role in roles {
        let config = json!({"databases": [{"name": "orders", "rds": {"instance_id": "orders", "region": "us-east-1"}}], "roles": [role]});
        if let Some(errors) = errors(&validator, &config) {
            panic!("role {} fails the schema: {errors}", role["metadata"]["name"]);
        }
        Config::parse(&config.to_string(), Path::new("/")).unwrap();
    }
}

/// The README's first config, without its `roles_file` (a file the README does not ship).
fn first_readme_config() -> Value {
    let mut config = readme_configs().remove(0).1;
    config.as_object_mut().unwrap().remove("roles_file");
    config
}

/// Sets the value at `pointer` (its parent must exist) in a copy of `config`.
fn with(config: &Value, pointer: &str, value: Value) -> Value {
    let mut config = config.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    config.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"))[key] = value;
    config
}

#[test]
fn an_unknown_key_fails_the_schema_wherever_it_fails_the_loader() {
    let validator = validator("config.schema.json");
    let config = first_readme_config();
    assert!(errors(&validator, &config).is_none());
    for pointer in [
        "/databse",
        "/databases/0/admin_usr",
        "/databases/0/admin_user/nam",
        "/databases/0/auth/passwrd_env",
        "/databases/0/tls/ca",
        "/tag_keys/admin",
        "/roles/0/spec/allow/db_role",
        "/roles/0/spec/deny/db_lables",
    ] {
        let mut bad = config.clone();
        if pointer.starts_with("/tag_keys") {
            bad["tag_keys"] = json!({});
        }
        if pointer.starts_with("/roles/0/spec/deny") {
            bad["roles"][0]["spec"]["deny"] = json!({});
        }
        let bad = with(&bad, pointer, json!("x"));
        let loader = Config::parse(&bad.to_string(), Path::new("/"));
        assert!(loader.is_err(), "{pointer}: the loader refuses it");
        assert!(errors(&validator, &bad).is_some(), "{pointer}: the schema must refuse what the loader refuses");
    }
    // Teleport's own fields, which the loader ignores, are allowed.
    for pointer in ["/roles/0/metadata/labels", "/roles/0/spec/allow/logins", "/roles/0/spec/options/max_session_ttl"] {
        let good = with(&config, pointer, json!({}));
        assert!(Config::parse(&good.to_string(), Path::new("/")).is_ok(), "{pointer}");
        assert!(errors(&validator, &good).is_none(), "{pointer}: {:?}", errors(&validator, &good));
    }
}

#[test]
fn the_schema_refuses_what_the_loader_refuses_in_roles() {
    let validator = validator("config.schema.json");
    let config = first_readme_config();
    for (pointer, value) in [
        ("/roles/0/kind", json!("user")),
        ("/roles/0/version", json!("v2")),
        ("/roles/0/metadata/name", json!("")),
        ("/roles/0/spec/options/create_db_user_mode", json!("sometimes")),
        ("/roles/0/spec/options/create_db_user_mode", json!(7)),
        ("/roles/0/spec/allow/db_labels_expression", json!("labels.env == \"prod\"")),
        ("/roles/0/spec/allow/db_service_labels", json!({"env": "prod"})),
        ("/databases/0/tls/mode", json!("prefer")),
        ("/databases/0/auth/method", json!("kerberos")),
        ("/max_session_duration", json!("12 hours")),
    ] {
        let bad = with(&config, pointer, value.clone());
        assert!(Config::parse(&bad.to_string(), Path::new("/")).is_err(), "{pointer} {value}: the loader refuses it");
        assert!(errors(&validator, &bad).is_some(), "{pointer} {value}: the schema must refuse it");
    }
    // Teleport's other ways of writing a mode load, and validate.
    for mode in [json!(""), json!(0), json!(3), json!(false), json!("best_effort_drop")] {
        let good = with(&config, "/roles/0/spec/options/create_db_user_mode", mode.clone());
        assert!(Config::parse(&good.to_string(), Path::new("/")).is_ok(), "{mode}");
        assert!(errors(&validator, &good).is_none(), "{mode}: {:?}", errors(&validator, &good));
    }
    let denied = with(&config, "/roles/0/spec/deny", json!({"db_service_labels": {"*": "*"}}));
    assert!(Config::parse(&denied.to_string(), Path::new("/")).is_err());
    assert!(errors(&validator, &denied).is_some(), "deny.db_service_labels");
}

#[test]
fn an_unknown_key_fails_the_event_schema_as_it_fails_the_parser() {
    let validator = validator("event.schema.json");
    let (_, event) = readme_events().remove(0);
    assert!(errors(&validator, &event).is_none());
    for pointer in ["/db_role", "/traits/interna"] {
        let bad = with(&event, pointer, json!(["x"]));
        assert!(SessionEvent::from_value(bad.clone()).is_err(), "{pointer}: the parser refuses it");
        assert!(errors(&validator, &bad).is_some(), "{pointer}: the schema must refuse it");
    }
    for field in ["session_id", "user", "database", "db_name"] {
        let mut bad = event.clone();
        bad.as_object_mut().unwrap().remove(field);
        assert!(SessionEvent::from_value(bad.clone()).is_err(), "{field}");
        assert!(errors(&validator, &bad).is_some(), "without {field}: the schema must refuse it");
        let empty = with(&event, &format!("/{field}"), json!(""));
        assert!(errors(&validator, &empty).is_some(), "{field} empty: the schema must refuse it");
    }
}
