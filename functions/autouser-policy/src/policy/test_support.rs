//! What the policy's tests share: the documented roles, `policy`, and `Ask`, a session's
//! request to evaluate.

use std::collections::BTreeMap;

use super::*;

pub(super) const YAML: &str = r#"
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

pub(super) fn policy(yaml: &str) -> Result<Policy, PolicyError> {
    Policy::new(serde_yaml_ng::from_str(yaml).expect("yaml parses"))
}

pub(super) struct Ask {
    pub(super) roles: Vec<String>,
    pub(super) traits: Traits,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) db_name: String,
    pub(super) requested: Option<Vec<String>>,
}

impl Ask {
    pub(super) fn new(roles: &[&str]) -> Ask {
        Ask {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            traits: Traits::default(),
            labels: BTreeMap::from([("env".to_string(), "dev".to_string())]),
            db_name: "app".into(),
            requested: None,
        }
    }
    pub(super) fn label(mut self, key: &str, value: &str) -> Ask {
        self.labels.insert(key.into(), value.into());
        self
    }
    pub(super) fn internal(mut self, name: &str, values: &[&str]) -> Ask {
        self.traits.internal.insert(name.into(), values.iter().map(|v| v.to_string()).collect());
        self
    }
    pub(super) fn external(mut self, name: &str, values: &[&str]) -> Ask {
        self.traits.external.insert(name.into(), values.iter().map(|v| v.to_string()).collect());
        self
    }
    pub(super) fn run(&self, policy: &Policy) -> Result<Grant, PolicyError> {
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

pub(super) fn roles(grant: &Grant) -> Vec<&str> {
    grant.db_roles.iter().map(String::as_str).collect()
}

pub(super) fn one_role(spec: &str) -> Result<Policy, PolicyError> {
    policy(&format!("[{{kind: role, version: v7, metadata: {{name: r}}, spec: {spec}}}]"))
}

pub(super) const KEEP_ALL: &str =
    r#"options: {create_db_user_mode: keep}, allow: {db_labels: {"*": "*"}, db_names: ["*"]"#;
