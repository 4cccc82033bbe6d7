//! The access policy's roles: those written under `roles` merged with those of `roles_file`, read
//! as `tctl get roles` writes them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::policy::Role;

use super::ConfigError;

/// The roles of `roles:` and of `roles_file`, each with where it was written; a name defined
/// twice is an error naming both places.
pub(super) fn merge_roles(inline: Vec<Role>, roles_file: Option<&Path>) -> Result<Vec<Role>, ConfigError> {
    let mut placed: Vec<(String, Role)> =
        inline.into_iter().enumerate().map(|(index, role)| (format!("roles[{index}]"), role)).collect();
    if let Some(path) = roles_file {
        placed.extend(read_roles_file(path)?);
    }
    let mut places: BTreeMap<&str, &str> = BTreeMap::new();
    for (place, role) in &placed {
        if let Some(first) = places.insert(&role.metadata.name, place) {
            return Err(ConfigError::DuplicateRole {
                role: role.metadata.name.clone(),
                first: first.to_string(),
                second: place.clone(),
            });
        }
    }
    Ok(placed.into_iter().map(|(_, role)| role).collect())
}

/// Role documents separated by `---`, as `tctl get roles > roles.yaml` writes them; a document
/// may also be a list of roles, as `tctl get roles --format=json` prints them.
fn read_roles_file(path: &Path) -> Result<Vec<(String, Role)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadRoles { path: path.into(), source })?;
    let mut roles = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let number = index + 1;
        let syntax = |at: String, message: String| ConfigError::RolesSyntax {
            path: path.to_path_buf(),
            document: number,
            at,
            message,
        };
        let value = serde_yaml_ng::Value::deserialize(document).map_err(|e| syntax(".".into(), e.to_string()))?;
        let place = |entry: Option<usize>| match entry {
            None => format!("{} document {number}", path.display()),
            Some(entry) => format!("{} document {number} entry {entry}", path.display()),
        };
        let role = |value: serde_yaml_ng::Value| {
            serde_path_to_error::deserialize::<_, Role>(value)
                .map_err(|e| syntax(e.path().to_string(), e.inner().to_string()))
        };
        match value {
            // An empty document, such as one a trailing `---` opens.
            serde_yaml_ng::Value::Null => {}
            serde_yaml_ng::Value::Sequence(items) => {
                for (entry, item) in items.into_iter().enumerate() {
                    roles.push((place(Some(entry)), role(item)?));
                }
            }
            value => roles.push((place(None), role(value)?)),
        }
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;
    use crate::policy::{AccessRequest, CreateDbUserMode, PolicyError, Traits};
    use std::path::PathBuf;

    /// The fixtures of `tests/teleport-roles`, shaped as `tctl get roles` prints them.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/teleport-roles")
    }

    fn in_fixtures(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &fixtures())
    }

    #[test]
    fn a_roles_file_as_tctl_get_roles_writes_it_loads_and_merges_with_roles() {
        let inline = "roles:\n  - {kind: role, version: v7, metadata: {name: inline}, spec: {options: {create_db_user_mode: keep}}}\n";
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.yaml\n{inline}")).unwrap();
        assert_eq!(
            config.policy.role_names().collect::<Vec<_>>(),
            ["access", "auditor", "auto-db-users", "db-staging", "editor", "inline", "legacy-db-users", "reviewer"]
        );
    }

    #[test]
    fn the_json_list_tctl_prints_loads_too() {
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.json\n")).unwrap();
        assert_eq!(config.policy.role_names().collect::<Vec<_>>(), ["access", "auto-db-users"]);
    }

    #[test]
    fn fixture_roles_grant_what_teleport_would() {
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.yaml\n")).unwrap();
        let db = config.database("orders").unwrap().resolve_static().unwrap();
        let traits = Traits {
            internal: BTreeMap::from([
                ("db_roles".to_string(), vec!["auditor".to_string()]),
                ("db_names".to_string(), vec!["app".to_string()]),
            ]),
            external: BTreeMap::from([
                ("groups".to_string(), vec!["db-writer".into(), "devs".into(), "db-admin_x".into()]),
                ("email".to_string(), vec!["alice@example.com".to_string()]),
            ]),
        };
        let ask = |roles: &[&str], db_name: &str| {
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            config.policy.evaluate(&AccessRequest {
                role_names: &roles,
                traits: &traits,
                database: "orders",
                labels: &db.labels,
                db_name,
                requested_db_roles: None,
            })
        };
        // `access` does not provision (create_db_user: false), so its {{internal.db_roles}}
        // grants nothing; admin_x is denied by ^admin_.*$; devs does not match ^db-(.*)$.
        let grant = ask(&["access", "auto-db-users", "db-staging", "editor"], "app").unwrap();
        assert_eq!(grant.mode, CreateDbUserMode::BestEffortDrop);
        assert_eq!(grant.db_roles.iter().map(String::as_str).collect::<Vec<_>>(), ["alice_ro", "reader", "writer"]);
        assert!(matches!(ask(&["access"], "app"), Err(PolicyError::ProvisioningOff { .. })));
        assert!(matches!(ask(&["db-staging"], "secret"), Err(PolicyError::DbNameDenied { .. })));
        // db-staging allows report_* and the person's db_names, nothing else.
        assert!(ask(&["db-staging"], "report_q3").is_ok());
        assert!(matches!(ask(&["db-staging"], "other"), Err(PolicyError::NoMatchingRole { .. })));
        // create_db_user: true without create_db_user_mode is keep.
        let legacy = ask(&["legacy-db-users"], "app").unwrap();
        assert_eq!((legacy.mode, legacy.db_roles.len()), (CreateDbUserMode::Keep, 1));
    }

    #[test]
    fn a_role_defined_twice_names_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = std::fs::read_to_string(fixtures().join("tctl-get-roles.yaml")).unwrap();
        std::fs::write(dir.path().join("roles.yaml"), &fixture).unwrap();
        let inline = "roles:\n  - {kind: role, version: v7, metadata: {name: db-staging}}\n";
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n{inline}"), dir.path()).unwrap_err();
        let roles_yaml = dir.path().join("roles.yaml").display().to_string();
        assert!(matches!(err, ConfigError::DuplicateRole { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("roles[0]") && message.contains(&format!("{roles_yaml} document 6")), "{message}");

        std::fs::write(
            dir.path().join("roles.yaml"),
            format!("{fixture}---\n{}", fixture.split("---\n").nth(1).unwrap()),
        )
        .unwrap();
        let message =
            Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("document 2") && message.contains("document 8") && message.contains("auditor"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_document_in_the_roles_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join("roles.yaml"), text).unwrap();
        write("kind: role\nversion: v7\nmetadata: {name: a}\n---\nkind: role\nversion: v7\nmetadata: {nam: b}\n");
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("roles.yaml, document 2") && err.contains("name"), "{err}");
        write("kind: role\nversion: v7\nmetadata: {name: a}\n---\n");
        assert_eq!(
            Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path())
                .unwrap()
                .policy
                .role_names()
                .count(),
            1
        );
        let err = Config::parse(&format!("{DATABASE}roles_file: missing.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read roles_file") && err.contains("missing.yaml"), "{err}");
        // A role the policy refuses is named, wherever it came from.
        write("kind: role\nversion: v7\nmetadata: {name: a}\nspec: {allow: {db_labels_expression: 'labels.env == \"x\"'}}\n");
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("role \"a\"") && err.contains("allow.db_labels_expression"), "{err}");
    }
}
