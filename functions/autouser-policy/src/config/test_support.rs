//! What the config's tests share: the documented example, a database entry, and `parse`.

use std::path::Path;

use super::{Config, ConfigError};

pub(super) const EXAMPLE: &str = r#"
cluster_name: leaf
managed_group: teleport-auto-user
databases:
  - name: orders
    type: self-hosted
    uri: localhost:5432
    labels: {env: dev}
    admin_user: {name: teleport-admin, default_database: postgres}
    auth: {method: cert, cert_file: admin.crt, key_file: admin.key}
    tls: {mode: verify-full, ca_file: ca.pem}
roles:
  - kind: role
    version: v7
    metadata: {name: auto-db-users}
    spec:
      options: {create_db_user_mode: keep}
      allow:
        db_labels: {"*": "*"}
        db_names: ["*"]
        db_roles: [reader, "{{internal.db_roles}}"]
"#;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/autouser"))
}

pub(super) const DATABASE: &str = "databases:\n  - {name: orders, type: self-hosted, uri: 'localhost:5432', labels: {env: staging, team: data}, admin_user: {name: teleport-admin}, auth: {method: password, password_env: PW}, tls: {mode: require}}\n";
