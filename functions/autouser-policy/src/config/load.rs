//! Loading: the config file's top level (`RawConfig`, whose types generate the JSON Schema), read
//! from YAML or JSON, with the deployment's `Overrides`, and checked into a `Config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::identity::RawIdentity;
use crate::naming;
use crate::permissions::ImportRule;
use crate::policy::{Policy, Role};

use super::database::RawDatabase;
use super::roles::merge_roles;
use super::{
    invalid, parse_duration, Config, ConfigError, DatabaseConfig, Overrides, TagKeys, DEFAULT_CREATOR_ROLES,
    DEFAULT_MANAGED_GROUP, DEFAULT_MAX_SESSION_DURATION, DEFAULT_OBJECT_INHERITOR, DEFAULT_REDELIVERY_WINDOW,
    DURATION_PATTERN,
};

fn default_creator_roles() -> u32 {
    DEFAULT_CREATOR_ROLES
}

/// Predefined roles that read, write or run anything as the server's operating system
/// account: `allowed_predefined_roles` refuses them.
const SERVER_ACCOUNT_ROLES: &[&str] = &["pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"];

impl Config {
    /// The JSON Schema (draft 2020-12) of the config file, derived from the types the loader
    /// reads: `schemas/config.schema.json`. It refuses unknown keys where the loader does; the
    /// loader checks more (names, addresses, durations, the roles) than a schema can say.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(RawConfig)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &Overrides::default())
    }

    /// [`Config::load`] with [`Overrides`].
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_with(&text, base, overrides)
    }

    /// Parses and validates a config; relative paths are resolved against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, base_dir, &Overrides::default())
    }

    /// [`Config::parse`], with `overrides` (deployment parameters) replacing the file's values
    /// before validation, so that every rule applies to them too.
    pub fn parse_with(text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut raw: RawConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::Syntax { path: e.path().to_string(), message: e.inner().to_string() })?;
        if let Some(group) = &overrides.managed_group {
            raw.managed_group = Some(group.clone());
        }
        if let Some(tag) = &overrides.admin_user_tag {
            raw.tag_keys.admin_user = tag.clone();
        }
        if let Some(tag) = &overrides.default_database_tag {
            raw.tag_keys.default_database = tag.clone();
        }
        raw.validate(base_dir)
    }
}

/// The config file of pg-autouser.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pg-autouser config")]
struct RawConfig {
    /// This cluster's name: people whose `origin_cluster` differs get `remote-<user>-<origin>`.
    #[schemars(length(min = 1))]
    cluster_name: Option<String>,
    /// Group every provisioned user belongs to (default `teleport-auto-user`).
    managed_group: Option<String>,
    /// The NOLOGIN role `best_effort_reassign_and_drop` hands dropped users' objects to
    /// (default `teleport-object-inheritor`).
    object_inheritor: Option<String>,
    #[schemars(length(min = 1))]
    databases: Vec<RawDatabase>,
    #[serde(default)]
    tag_keys: TagKeys,
    /// Teleport role documents, as `tctl get roles` prints them.
    #[serde(default)]
    roles: Vec<Role>,
    /// Role documents as `tctl get roles` prints them, merged with `roles`.
    roles_file: Option<PathBuf>,
    /// Custom labels on database objects, for `db_permissions`.
    #[serde(default)]
    import_rules: Vec<ImportRule>,
    /// Sessions older than this (e.g. `12h`; units s, m, h, d) whose user has no live
    /// connection are closed by the reaper.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    max_session_duration: Option<String>,
    /// How long an ended session's id is remembered to refuse its late start (default `24h`).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    redelivery_window: Option<String>,
    /// At a user's last session end, also end its open connections.
    #[serde(default)]
    terminate_connections: bool,
    /// The reaper retries the drop of a user an end locked because its drop was blocked.
    #[serde(default)]
    retry_blocked_drops: bool,
    /// On PostgreSQL 16+, up to this many NOLOGIN CREATEROLE roles create and manage the
    /// users, each its share, so that role statements cost the same at 10,000 users as at 100
    /// (default 128; about one per 80 users kept). Each is made by the first session that
    /// needs it. 0: the admin does everything, slower with every user kept.
    #[serde(default = "default_creator_roles")]
    #[schemars(range(max = 1024))]
    creator_roles: u32,
    /// PostgreSQL's predefined roles (`pg_*`, such as `pg_read_all_data`) that policies may
    /// grant. Any other predefined role, or a role that is a member of one, is refused.
    #[serde(default)]
    allowed_predefined_roles: Vec<String>,
    /// Signed identity: act only on who an identity provider's token says the person is.
    identity: Option<RawIdentity>,
}

impl RawConfig {
    fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let managed_group = self.managed_group.unwrap_or_else(|| DEFAULT_MANAGED_GROUP.to_string());
        naming::validate_identifier(&managed_group).map_err(|e| invalid("managed_group", e.to_string()))?;
        if managed_group.starts_with("pg_") || managed_group.starts_with("rds_") {
            return Err(invalid("managed_group", "the pg_ and rds_ prefixes belong to PostgreSQL and RDS"));
        }
        let object_inheritor = self.object_inheritor.unwrap_or_else(|| DEFAULT_OBJECT_INHERITOR.to_string());
        naming::validate_identifier(&object_inheritor).map_err(|e| invalid("object_inheritor", e.to_string()))?;
        if object_inheritor.starts_with("pg_") || object_inheritor.starts_with("rds_") {
            return Err(invalid("object_inheritor", "the pg_ and rds_ prefixes belong to PostgreSQL and RDS"));
        }
        if object_inheritor == managed_group {
            return Err(invalid(
                "object_inheritor",
                "must differ from managed_group: every managed user is a member of the group, and would own what the inheritor owns",
            ));
        }
        if let Some(name) = &self.cluster_name {
            if name.is_empty() {
                return Err(invalid("cluster_name", "must not be empty; remove it instead"));
            }
        }
        if self.databases.is_empty() {
            return Err(invalid("databases", "lists no database: add at least one"));
        }
        let mut databases: Vec<DatabaseConfig> = Vec::with_capacity(self.databases.len());
        for (index, raw) in self.databases.into_iter().enumerate() {
            let db = raw.validate(&format!("databases[{index}]"), base_dir, &managed_group)?;
            if databases.iter().any(|other| other.name == db.name) {
                return Err(invalid(
                    format!("databases[{index}].name"),
                    format!("database {:?} is listed twice", db.name),
                ));
            }
            databases.push(db);
        }
        for (field, key) in
            [("admin_user", &self.tag_keys.admin_user), ("default_database", &self.tag_keys.default_database)]
        {
            if key.is_empty() {
                return Err(invalid(format!("tag_keys.{field}"), "must not be empty"));
            }
        }
        let roles_file = self.roles_file.as_ref().map(|file| base_dir.join(file));
        let roles = merge_roles(self.roles, roles_file.as_deref())?;
        let max_session_duration = match &self.max_session_duration {
            None => DEFAULT_MAX_SESSION_DURATION,
            Some(text) => parse_duration(text).map_err(|m| invalid("max_session_duration", m))?,
        };
        let redelivery_window = match &self.redelivery_window {
            None => DEFAULT_REDELIVERY_WINDOW,
            Some(text) => parse_duration(text).map_err(|m| invalid("redelivery_window", m))?,
        };
        if self.creator_roles > naming::MAX_CREATOR_ROLES {
            return Err(invalid(
                "creator_roles",
                format!("is {}; at most {} are supported", self.creator_roles, naming::MAX_CREATOR_ROLES),
            ));
        }
        if self.creator_roles > 0 {
            let longest = naming::creator_role_name(&managed_group, self.creator_roles - 1);
            naming::validate_identifier(&longest).map_err(|_| {
                invalid(
                    "creator_roles",
                    format!(
                        "the creator role name {longest:?} is longer than {} bytes: use a shorter managed_group",
                        naming::MAX_IDENTIFIER_BYTES
                    ),
                )
            })?;
        }
        let mut allowed_predefined_roles = BTreeSet::new();
        for (index, role) in self.allowed_predefined_roles.into_iter().enumerate() {
            let field = format!("allowed_predefined_roles[{index}]");
            naming::validate_identifier(&role).map_err(|e| invalid(field.clone(), e.to_string()))?;
            if !role.starts_with("pg_") {
                return Err(invalid(field, format!("{role:?} is not a predefined role of PostgreSQL (pg_*)")));
            }
            if SERVER_ACCOUNT_ROLES.contains(&role.as_str()) {
                return Err(invalid(
                    field,
                    format!(
                        "{role:?} gives the server's operating system account, as much as superuser: never granted"
                    ),
                ));
            }
            allowed_predefined_roles.insert(role);
        }
        let identity = match self.identity {
            None => None,
            Some(raw) => Some(raw.validate(base_dir).map_err(|(field, message)| invalid(field, message))?),
        };
        Ok(Config {
            identity,
            allowed_predefined_roles,
            creator_roles: self.creator_roles,
            max_session_duration,
            redelivery_window,
            terminate_connections: self.terminate_connections,
            retry_blocked_drops: self.retry_blocked_drops,
            cluster_name: self.cluster_name,
            managed_group,
            object_inheritor,
            databases,
            tag_keys: self.tag_keys,
            policy: Policy::with_import_rules(roles, self.import_rules)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn the_documented_example_loads() {
        let config = parse(EXAMPLE).unwrap();
        let db = config.database("orders").unwrap().resolve_static().unwrap();
        assert_eq!((db.host.as_str(), db.port), ("localhost", 5432));
        assert_eq!(db.admin_database("app"), "postgres");
        assert_eq!(
            db.auth,
            AuthConfig::CertFiles {
                cert_file: "/etc/autouser/admin.crt".into(),
                key_file: "/etc/autouser/admin.key".into(),
                key_password_env: None
            }
        );
        assert_eq!(config.cluster_name.as_deref(), Some("leaf"));
    }

    #[test]
    fn json_loads_too() {
        let json = r#"{"databases":[{"name":"a","type":"rds","uri":"db.example.com",
            "admin_user":{"name":"teleport-admin"},"auth":{"method":"iam","region":"us-east-1"},
            "tls":{"mode":"require"}}]}"#;
        let config = parse(json).unwrap();
        assert_eq!(config.managed_group, DEFAULT_MANAGED_GROUP);
        let db = config.databases[0].resolve_static().unwrap();
        assert_eq!(db.port, 5432);
        assert_eq!(db.admin_database("app"), "app");
        assert_eq!(db.auth, AuthConfig::Iam { region: Some("us-east-1".into()) });
    }

    #[test]
    fn typo_in_a_field_names_the_field() {
        let text = EXAMPLE.replace("admin_user:", "admin_usr:");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("admin_usr"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let text = EXAMPLE.replace("type: self-hosted", "type: mysql");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("databases[0].type"), "{err}");
    }

    #[test]
    fn allowed_predefined_roles_are_pg_roles_that_do_not_reach_the_os_account() {
        assert!(parse(EXAMPLE).unwrap().allowed_predefined_roles.is_empty());
        let config = parse(&format!("allowed_predefined_roles: [pg_read_all_data, pg_monitor]\n{EXAMPLE}")).unwrap();
        assert_eq!(config.allowed_predefined_roles.iter().collect::<Vec<_>>(), ["pg_monitor", "pg_read_all_data"]);
        for (list, why) in [
            ("[reader]", "not a predefined role"),
            ("[pg_execute_server_program]", "operating system"),
            ("[pg_read_all_data, pg_write_server_files]", "allowed_predefined_roles[1]"),
        ] {
            let err = parse(&format!("allowed_predefined_roles: {list}\n{EXAMPLE}")).unwrap_err().to_string();
            assert!(err.contains(why), "{list}: {err}");
        }
    }

    #[test]
    fn redelivery_window_defaults_to_a_day_and_parses_units() {
        assert_eq!(parse(EXAMPLE).unwrap().redelivery_window.as_secs(), 24 * 3600);
        assert_eq!(parse(&format!("redelivery_window: 4d\n{EXAMPLE}")).unwrap().redelivery_window.as_secs(), 4 * 86400);
        let err = parse(&format!("redelivery_window: soon\n{EXAMPLE}")).unwrap_err().to_string();
        assert!(err.contains("redelivery_window"), "{err}");
    }

    #[test]
    fn max_session_duration_defaults_to_twelve_hours_and_parses_units() {
        assert_eq!(parse(EXAMPLE).unwrap().max_session_duration, DEFAULT_MAX_SESSION_DURATION);
        let config = parse(&format!("max_session_duration: 90m\n{EXAMPLE}")).unwrap();
        assert_eq!(config.max_session_duration.as_secs(), 5400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        for bad in ["0h", "12", "h", "12 hours", "-1h", "99999999999999999999d"] {
            let err = parse(&format!("max_session_duration: {bad:?}\n{EXAMPLE}")).unwrap_err().to_string();
            assert!(err.contains("max_session_duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn object_permissions_and_import_rules_load_and_are_checked() {
        let text = format!(
            "{EXAMPLE}        db_permissions:\n          - match: {{object_kind: table, environment: prod}}\n            \
             permissions: [SELECT]\nimport_rules:\n  - {{name: prod, priority: 1, match: {{schema: [public]}}, \
             add_labels: {{environment: prod}}}}\n"
        );
        let config = parse(&text).unwrap();
        assert!(config.policy.has_db_permissions());
        assert!(!parse(EXAMPLE).unwrap().policy.has_db_permissions());
        let err = parse(&text.replace("add_labels: {environment: prod}", "add_labels: {name: x}")).unwrap_err();
        assert!(err.to_string().contains("import_rules") && err.to_string().contains("built-in"), "{err}");
        let err = parse(&text.replace("[SELECT]", "[EXECUTE]")).unwrap_err().to_string();
        assert!(err.contains("allow.db_permissions entry 0") && err.contains("EXECUTE"), "{err}");
    }

    #[test]
    fn overrides_replace_the_file_and_are_validated() {
        let text = "managed_group: from-file\ndatabases:\n  - name: o\n    rds: {instance_id: i, region: us-east-1}\n";
        let overrides = Overrides {
            managed_group: Some("from-deployment".into()),
            admin_user_tag: Some("corp/admin".into()),
            default_database_tag: None,
        };
        let config = Config::parse_with(text, Path::new("/"), &overrides).unwrap();
        assert_eq!(config.managed_group, "from-deployment");
        assert_eq!(config.tag_keys.admin_user, "corp/admin");
        assert_eq!(config.tag_keys.default_database, DEFAULT_ADMIN_DATABASE_TAG);
        let reserved = Overrides { managed_group: Some("pg_group".into()), ..Overrides::default() };
        let err = Config::parse_with(text, Path::new("/"), &reserved).unwrap_err().to_string();
        assert!(err.contains("managed_group"), "{err}");
    }

    #[test]
    fn the_configs_of_these_tests_validate_against_the_committed_schema() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/config.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let rds = "tag_keys: {admin_user: corp/db-admin}\ndatabases:\n  - name: orders\n    rds: {instance_id: orders-prod, region: eu-west-1}\n    fallback_admin_user: {name: break-glass}\n";
        for text in [
            EXAMPLE.to_string(),
            rds.to_string(),
            format!("max_session_duration: 90m\nredelivery_window: 4d\nterminate_connections: true\n{EXAMPLE}"),
            format!("{DATABASE}roles_file: tctl-get-roles.yaml\n"),
        ] {
            let config: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
            let errors: Vec<String> = validator.iter_errors(&config).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:?}\n{text}");
        }
    }
}
