//! Teleport role documents as `tctl get roles` prints them (v3 to v8): the fields that bear on
//! database users, `create_db_user_mode` read as Teleport reads it, and the schema of each.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::permissions::PermissionRule;

use super::LabelValues;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;
    use crate::policy::*;

    #[test]
    fn json_roles_parse_too() {
        let json = r#"[{"kind":"role","version":"v7","metadata":{"name":"r"},
            "spec":{"options":{"create_db_user_mode":"best_effort_drop"},
            "allow":{"db_labels":{"*":"*"},"db_names":["*"],"db_roles":["x"]}}}]"#;
        let p = Policy::new(serde_json::from_str(json).unwrap()).unwrap();
        assert_eq!(Ask::new(&["r"]).run(&p).unwrap().mode, CreateDbUserMode::BestEffortDrop);
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
    fn roles_of_any_version_tctl_prints_load() {
        for version in SUPPORTED_VERSIONS {
            let yaml = format!(
                r#"[{{kind: role, version: {version}, metadata: {{name: r}}, spec: {{{KEEP_ALL}, db_roles: [x]}}}}}}]"#
            );
            assert_eq!(roles(&Ask::new(&["r"]).run(&policy(&yaml).unwrap()).unwrap()), ["x"], "{version}");
        }
    }
}
