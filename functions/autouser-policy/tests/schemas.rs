//! The JSON Schemas in `schemas/`, which editors use to validate and complete configs:
//! - they are what the loader's types generate (`Config::json_schema`,
//!   `SessionEvent::json_schema`); after changing the types, regenerate them with
//!   `AUTOUSER_WRITE_SCHEMAS=1 cargo test -p autouser-policy --test schemas`;
//! - every config and event of the README and of the manual (`docs/**/*.md`), and the role
//!   documents of `tests/teleport-roles`, validate, and the loader accepts them too;
//! - `docs/reference/config.md`, the configuration reference, is what the config's schema
//!   generates (rewritten by the same `AUTOUSER_WRITE_SCHEMAS=1`);
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

/// Compares the committed file at `file` (relative to the repository) with `generated`, or,
/// with `AUTOUSER_WRITE_SCHEMAS` set, rewrites it.
fn check_committed(file: &str, generated: &str) {
    let path = repository().join(file);
    if std::env::var_os("AUTOUSER_WRITE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{file} is not what the types generate: regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_committed_config_schema_is_what_the_types_generate() {
    check_committed("schemas/config.schema.json", &render(&Config::json_schema()));
}

#[test]
fn the_committed_event_schema_is_what_the_types_generate() {
    check_committed("schemas/event.schema.json", &render(&SessionEvent::json_schema()));
}

#[test]
fn the_committed_config_reference_is_what_the_types_generate() {
    let schema = serde_json::to_value(Config::json_schema()).unwrap();
    check_committed("docs/reference/config.md", &reference::markdown(&schema));
}

/// The configuration reference, `docs/reference/config.md`: the config's JSON Schema as
/// Markdown, one section per object type (the top level first, then each type in the order
/// the top level reaches it), one table row per key.
mod reference {
    use std::collections::BTreeMap;

    use serde_json::Value;

    pub fn markdown(schema: &Value) -> String {
        let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
        // Where each type is used, as key paths from the top level.
        let mut used_at: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        walk_object(schema, "", &defs, &mut used_at, &mut order, &mut Vec::new());

        let mut out = String::new();
        out.push_str("# Configuration reference\n\n");
        out.push_str(
            "<!-- Generated from the config's types, as schemas/config.schema.json is. Do not edit: \
             run `AUTOUSER_WRITE_SCHEMAS=1 cargo test -p autouser-policy --test schemas`. -->\n\n",
        );
        out.push_str(
            "Every key of the config file, with its type, its default and its documentation. This \
             page is generated from the same types as `schemas/config.schema.json` (the loader's); \
             a test fails when it is out of date. The loader checks more than types: names, \
             addresses, templates and patterns. For what the keys do together, read \
             [Configuration](../configuration.md).\n\n",
        );
        out.push_str(
            "A key that is not required may be left out (or set to `null`). Unless a section says \
             otherwise, an unknown key is an error.\n\n",
        );
        out.push_str("## Top level\n\n");
        section_body(schema, &mut out);
        for name in &order {
            let def = &defs[name];
            out.push_str(&format!("## {name}\n\n"));
            let paths = &used_at[name];
            let shown: Vec<String> = paths.iter().map(|p| format!("`{p}`")).collect();
            out.push_str(&format!("Used at: {}.\n\n", shown.join(", ")));
            section_body(def, &mut out);
        }
        out
    }

    /// The description, the keys (or the values), and what else the type requires.
    fn section_body(schema: &Value, out: &mut String) {
        if let Some(description) = schema.get("description").and_then(Value::as_str) {
            out.push_str(&format!("{}\n\n", one_line(description)));
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str("| key | type | required | default | description |\n");
            out.push_str("| --- | --- | --- | --- | --- |\n");
            for (key, property) in properties {
                let description = property.get("description").and_then(Value::as_str).map(one_line);
                let default = property
                    .get("default")
                    .filter(|d| !d.is_null())
                    .map(|d| format!("`{}`", literal(d)))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| `{key}` | {} | {} | {default} | {} |\n",
                    cell(&type_of(property)),
                    if required.contains(&key.as_str()) { "yes" } else { "no" },
                    cell(&description.unwrap_or_default()),
                ));
            }
            out.push('\n');
        }
        let alternatives = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array);
        if let Some(values) = alternatives.filter(|a| a.iter().all(|v| v.get("const").is_some())) {
            out.push_str("| value | meaning |\n| --- | --- |\n");
            for value in values {
                let description = value.get("description").and_then(Value::as_str).map(one_line);
                out.push_str(&format!(
                    "| `{}` | {} |\n",
                    literal(&value["const"]),
                    cell(&description.unwrap_or_default())
                ));
            }
            out.push('\n');
        } else if schema.get("properties").is_none() {
            out.push_str(&format!("Type: {}.\n\n", type_of(schema)));
        }
        if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
            let keys: Vec<String> = one_of
                .iter()
                .filter_map(|o| o.get("required").and_then(Value::as_array))
                .flatten()
                .filter_map(Value::as_str)
                .map(|k| format!("`{k}`"))
                .collect();
            if !keys.is_empty() {
                out.push_str(&format!("Exactly one of {} is given.\n\n", keys.join(", ")));
            }
        }
        if schema.get("properties").is_some() {
            match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => {}
                _ if schema.get("propertyNames").is_some() => {
                    out.push_str("Other keys are ignored, except unknown `db_*` keys, which are errors.\n\n")
                }
                _ => out.push_str("Other keys are ignored.\n\n"),
            }
        }
    }

    /// Records, for every type that `schema`'s keys reach, the paths it is used at, and the
    /// order in which types are first reached.
    fn walk_object(
        schema: &Value,
        path: &str,
        defs: &serde_json::Map<String, Value>,
        used_at: &mut BTreeMap<String, Vec<String>>,
        order: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, property) in properties {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                walk_value(property, &at, defs, used_at, order, stack);
            }
        }
    }

    fn walk_value(
        schema: &Value,
        path: &str,
        defs: &serde_json::Map<String, Value>,
        used_at: &mut BTreeMap<String, Vec<String>>,
        order: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) {
        if let Some(name) = reference(schema) {
            if !order.contains(&name) {
                order.push(name.clone());
            }
            let paths = used_at.entry(name.clone()).or_default();
            if !paths.iter().any(|p| p == path) {
                paths.push(path.to_string());
            }
            if !stack.contains(&name) {
                stack.push(name.clone());
                walk_value(&defs[&name], path, defs, used_at, order, stack);
                stack.pop();
            }
        }
        for key in ["anyOf", "oneOf"] {
            for option in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
                walk_value(option, path, defs, used_at, order, stack);
            }
        }
        if let Some(items) = schema.get("items") {
            walk_value(items, &format!("{path}[]"), defs, used_at, order, stack);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            walk_value(values, &format!("{path}.<key>"), defs, used_at, order, stack);
        }
        walk_object(schema, path, defs, used_at, order, stack);
    }

    fn reference(schema: &Value) -> Option<String> {
        let target = schema.get("$ref")?.as_str()?;
        Some(target.strip_prefix("#/$defs/").expect("a local reference").to_string())
    }

    /// A key's type as a reader writes it: `string`, `list of string`, a link to a type.
    fn type_of(schema: &Value) -> String {
        if let Some(name) = reference(schema) {
            return format!("[{name}](#{})", name.to_lowercase());
        }
        if let Some(value) = schema.get("const") {
            return format!("`{}`", literal(value));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            let values: Vec<String> = values.iter().map(|v| format!("`{}`", literal(v))).collect();
            return format!("one of {}", values.join(", "));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let types: Vec<String> =
                    options.iter().filter(|o| o.get("type") != Some(&Value::from("null"))).map(type_of).collect();
                if !types.is_empty() {
                    return types.join(" or ");
                }
            }
        }
        let named = match schema.get("type") {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).filter(|n| *n != "null").collect(),
            _ => vec![],
        };
        if named.is_empty() {
            return "any".into();
        }
        let types: Vec<String> = named.iter().map(|name| one_type(name, schema)).collect();
        let mut text = types.join(" or ");
        let mut limits = Vec::new();
        if schema.get("minLength").and_then(Value::as_u64) == Some(1) {
            limits.push("not empty".to_string());
        }
        if let Some(n) = schema.get("minItems").and_then(Value::as_u64) {
            limits.push(format!("at least {n}"));
        }
        match (schema.get("minimum"), schema.get("maximum")) {
            (Some(min), Some(max)) => limits.push(format!("{min} to {max}")),
            (Some(min), None) => limits.push(format!("at least {min}")),
            (None, Some(max)) => limits.push(format!("at most {max}")),
            (None, None) => {}
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            limits.push(format!("matching `{pattern}`"));
        }
        if !limits.is_empty() {
            text = format!("{text}, {}", limits.join(", "));
        }
        text
    }

    fn one_type(name: &str, schema: &Value) -> String {
        match name {
            "array" => format!("list of {}", schema.get("items").map(type_of).unwrap_or_else(|| "any".into())),
            "object" => match schema.get("additionalProperties").filter(|v| v.is_object()) {
                Some(values) => format!("map of string to {}", type_of(values)),
                None => "object".into(),
            },
            "string" if schema.get("format").and_then(Value::as_str) == Some("ip") => "IP address".into(),
            other => other.into(),
        }
    }

    /// A value as it is written in YAML: a plain string unquoted, anything else as JSON.
    fn literal(value: &Value) -> String {
        match value {
            Value::String(text) if !text.is_empty() => text.clone(),
            other => other.to_string(),
        }
    }

    /// A doc comment's lines joined into one paragraph.
    fn one_line(text: &str) -> String {
        text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
    }

    /// Text safe in a table cell.
    fn cell(text: &str) -> String {
        text.replace('|', "\\|")
    }
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

/// The Markdown files whose examples are checked: README.md first, then every `.md` under
/// `docs/`, in path order, as paths relative to the repository.
fn documents() -> Vec<String> {
    fn walk(dir: &Path, relative: &str, found: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                walk(&path, &format!("{relative}{name}/"), found);
            } else if name.ends_with(".md") {
                found.push(format!("{relative}{name}"));
            }
        }
    }
    let mut found = vec!["README.md".to_string()];
    walk(&repository().join("docs"), "docs/", &mut found);
    found
}

/// The fenced blocks of `language` in the README and the manual, each with the file and line
/// it starts on (`docs/rds.md line 12`). Only unindented fences count: a block indented under
/// a list item (the audit event's detail) is an excerpt, not an input.
fn doc_blocks(language: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(repository().join(&file)).unwrap();
        let mut open: Option<(String, String)> = None;
        for (number, line) in text.lines().enumerate() {
            match &mut open {
                None if line.trim_end() == format!("```{language}") => {
                    open = Some((format!("{file} line {}", number + 1), String::new()))
                }
                None => {}
                Some(_) if line.starts_with("```") => blocks.push(open.take().unwrap()),
                Some((_, text)) => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// The configs of the README and the manual: every YAML block with a top-level key of the
/// config. A block that shows one section (`roles:` with `import_rules:`) is checked as a
/// config with the first block's `databases` (the README's).
fn doc_configs() -> Vec<(String, Value)> {
    let blocks: Vec<(String, Value)> =
        doc_blocks("yaml").into_iter().map(|(place, text)| (place, yaml_to_json(&text))).collect();
    let databases = blocks
        .iter()
        .find_map(|(_, config)| config.get("databases").cloned())
        .expect("a README config lists databases");
    blocks
        .into_iter()
        .filter(|(_, block)| {
            ["databases", "roles", "import_rules", "tag_keys", "identity"].iter().any(|key| block.get(key).is_some())
        })
        .map(|(place, mut config)| {
            if config.get("databases").is_none() {
                config["databases"] = databases.clone();
            }
            (place, config)
        })
        .collect()
}

#[test]
fn every_config_of_the_readme_and_the_manual_validates_and_loads() {
    let validator = validator("config.schema.json");
    let configs = doc_configs();
    assert!(configs.len() >= 3, "found the README's and the manual's configs: {configs:?}");
    for (place, config) in &configs {
        if let Some(errors) = errors(&validator, config) {
            panic!("{place}: the config fails the schema: {errors}\n{config:#}");
        }
        // roles_file names a file the docs do not ship: load the rest.
        let mut loaded = config.clone();
        loaded.as_object_mut().unwrap().remove("roles_file");
        Config::parse(&loaded.to_string(), Path::new("/etc/autouser"))
            .unwrap_or_else(|e| panic!("{place}: the config validates but does not load: {e}"));
    }
}

#[test]
fn the_readme_shows_the_schema_line_editors_read() {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    assert!(readme.contains("# yaml-language-server: $schema="), "the README shows the yaml-language-server line");
}

/// The session events of the README and the manual: each JSON block that is one, the `detail`
/// of each that is an EventBridge event, and the payload of the `aws lambda invoke` example.
/// Every JSON block must be JSON.
fn doc_events() -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for (place, text) in doc_blocks("json") {
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{place}: {e}"));
        if value.get("session_id").is_some() {
            events.push((place, value));
        } else if let Some(detail) = value.get("detail") {
            events.push((place, detail.clone()));
        }
    }
    for (place, text) in doc_blocks("sh") {
        if let Some((_, rest)) = text.split_once("--payload '") {
            let payload = rest.split('\'').next().unwrap();
            let event = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{place}: {e}"));
            events.push((place, event));
        }
    }
    events
}

#[test]
fn every_event_of_the_readme_and_the_manual_validates_and_parses() {
    let validator = validator("event.schema.json");
    let events = doc_events();
    assert!(events.len() >= 3, "found the README's and the manual's events: {events:?}");
    for (place, event) in &events {
        if let Some(errors) = errors(&validator, event) {
            panic!("{place}: the event fails the schema: {errors}\n{event:#}");
        }
        SessionEvent::from_value(event.clone())
            .unwrap_or_else(|e| panic!("{place}: the event validates but does not parse: {e}"));
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
    let (place, mut config) = doc_configs().remove(0);
    assert!(place.starts_with("README.md "), "the first config is the README's: {place}");
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
    let (_, event) = doc_events().remove(0);
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
