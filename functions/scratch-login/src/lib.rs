//! Logins to a [`scratch_postgres::Cluster`] as any role: over TLS, verified against the
//! cluster's CA (`verify-full`), with the role's client certificate, through the engine's
//! connector. For tests, the demo and the benchmarks. (`scratch-postgres` itself depends on
//! no crate of ours, so this lives apart.)
//!
//! Also the one place for what the test crates share on top of a login: the test process's
//! cluster ([`test_cluster`]), the superuser's login ([`superuser`], [`superuser_sql`]), and
//! configs ([`database_yaml`], [`one_role_config_yaml`]), and the check that every config a
//! test loads validates against the config's JSON Schema ([`schema_checked`]).

use std::path::Path;
use std::sync::OnceLock;

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::tokio_postgres::Client;
use autouser_engine::Error;
use autouser_policy::config::TlsMode;
use scratch_postgres::{Cluster, PgInstall};

/// The one cluster of a test process, of the installation `AUTOUSER_PG_BIN` names, started at
/// the first call. Panics when it cannot start: for tests.
pub fn test_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
        Cluster::start(&install).expect("the test cluster starts")
    })
}

/// The cluster's superuser logged in to `dbname`. Panics when it cannot log in: for tests.
pub async fn superuser(cluster: &Cluster, dbname: &str) -> Client {
    connect(cluster, cluster.superuser(), dbname).await.expect("superuser connects")
}

/// Runs `sql` (one or more statements) as the superuser in `postgres`. Panics with the
/// statements when they fail: for tests.
pub async fn superuser_sql(cluster: &Cluster, sql: &str) {
    let client = superuser(cluster, "postgres").await;
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// `user` logged in to `dbname` on `cluster`.
pub async fn connect(cluster: &Cluster, user: &str, dbname: &str) -> Result<Client, Error> {
    let (tls, credentials) = certificate_login(cluster, user)?;
    pg::connect(&params(cluster, user, dbname, &tls, &credentials)).await
}

/// `user` logged in to `dbname` on `cluster`, as the engine's admin connection.
pub async fn connect_admin(cluster: &Cluster, user: &str, dbname: &str) -> Result<AdminConnection, Error> {
    let (tls, credentials) = certificate_login(cluster, user)?;
    pg::connect_admin(&params(cluster, user, dbname, &tls, &credentials)).await
}

fn certificate_login(cluster: &Cluster, user: &str) -> Result<(TlsSettings, AdminCredentials), Error> {
    let cert = cluster.client_cert(user).map_err(|e| Error::Unreachable {
        endpoint: format!("{}:{}", cluster.host(), cluster.port()),
        detail: format!("no client certificate for {user}: {e}"),
    })?;
    let tls = TlsSettings { mode: TlsMode::VerifyFull, ca_pem: Some(cluster.ca_cert_pem().to_string()) };
    Ok((tls, AdminCredentials::ClientCert { cert_pem: cert.cert_pem, key_pem: cert.key_pem, key_password: None }))
}

fn params<'a>(
    cluster: &'a Cluster,
    user: &'a str,
    dbname: &'a str,
    tls: &'a TlsSettings,
    credentials: &'a AdminCredentials,
) -> ConnectParams<'a> {
    ConnectParams { host: cluster.host(), port: cluster.port(), hostaddr: None, dbname, user, tls, credentials }
}

/// The config's entry (an item of `databases:`, indented for it) for database `name` reached
/// on `port` of `cluster` (the server's, or a proxy's): administered by `admin` with its client
/// certificate, `postgres` as the admin's database, TLS verified against the cluster's CA.
pub fn database_yaml(cluster: &Cluster, port: u16, name: &str, admin: &str) -> Result<String, Error> {
    let cert = cluster.client_cert(admin).map_err(|e| Error::Unreachable {
        endpoint: format!("{}:{}", cluster.host(), cluster.port()),
        detail: format!("no client certificate for {admin}: {e}"),
    })?;
    let auth = format!(
        "{{method: cert, cert_file: {:?}, key_file: {:?}}}",
        cert.cert_path.display().to_string(),
        cert.key_path.display().to_string()
    );
    Ok(database_yaml_with_auth(cluster, port, name, admin, &auth))
}

/// The entry of [`database_yaml`] with `auth_yaml` (a YAML flow mapping: a password, a secret)
/// as the admin's login instead of its client certificate.
pub fn database_yaml_with_auth(cluster: &Cluster, port: u16, name: &str, admin: &str, auth_yaml: &str) -> String {
    database_entry_yaml(port, name, admin, auth_yaml, cluster.ca_cert_path())
}

/// The entry of [`database_yaml_with_auth`], with `ca_file` as the CA that verifies the server:
/// the text alone, which needs no cluster.
pub fn database_entry_yaml(port: u16, name: &str, admin: &str, auth_yaml: &str, ca_file: &Path) -> String {
    format!(
        r#"  - name: {name:?}
    type: self-hosted
    uri: "localhost:{port}"
    admin_user: {{name: {admin:?}, default_database: postgres}}
    auth: {auth_yaml}
    tls: {{mode: verify-full, ca_file: {ca:?}}}
"#,
        ca = ca_file.display().to_string(),
    )
}

/// A config: managed group `group`, the entries `databases` (from [`database_yaml`]), and one
/// role `role` of mode `mode` for every database, allowing what `allow` adds to `db_labels`
/// and `db_names` (YAML lines of the `allow` block, the lines after the first indented by
/// eight spaces: `db_roles: [reader]`, `db_permissions: [...]`).
pub fn one_role_config_yaml(group: &str, databases: &str, role: &str, mode: &str, allow: &str) -> String {
    format!(
        r#"managed_group: {group:?}
databases:
{databases}roles:
  - kind: role
    version: v7
    metadata: {{name: {role:?}}}
    spec:
      options: {{create_db_user_mode: {mode}}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        {allow}
"#
    )
}

/// `text`, a config a test is about to load, once it has validated against
/// `schemas/config.schema.json`, the schema editors and the README point operators to: every
/// config the tests use is one an operator could write with the schema's help. Panics with the
/// schema's errors, each at its place in the config.
pub fn schema_checked(text: &str) -> &str {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/config.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    });
    let config: serde_json::Value =
        serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("this test's config is not YAML: {e}\n{text}"));
    let errors: Vec<String> =
        validator.iter_errors(&config).map(|error| format!("at {}: {error}", error.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "this test's config does not validate against schemas/config.schema.json: {errors:#?}\n{text}"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every config these helpers make, as the test crates and the benchmarks make them,
    /// validates against `schemas/config.schema.json` (what editors check configs with) and loads.
    #[test]
    fn the_configs_the_helpers_make_validate_against_the_config_schema() {
        let ca = Path::new("/tmp/scratch/ca.crt");
        let auths = [
            r#"{method: cert, cert_file: "/tmp/scratch/admin.crt", key_file: "/tmp/scratch/admin.key"}"#,
            r#"{method: password, secret_arn: "arn:aws:secretsmanager:us-east-1:123456789012:secret:admin-AbCdEf"}"#,
            "{method: password, password_env: ADMIN_PASSWORD}",
            "{method: iam, region: eu-west-1}",
        ];
        let allows = [
            "db_roles: [reader]",
            "db_roles: [ns_reader, ns_writer]",
            "db_permissions: [{match: {object_kind: table, schema: bench}, permissions: [SELECT]}]",
        ];
        let mut configs = Vec::new();
        for auth in auths {
            let entries = format!(
                "{}{}",
                database_entry_yaml(5432, "main", "admin", auth, ca),
                database_entry_yaml(6432, "via_proxy", "admin", auth, ca)
            );
            configs.push(format!("databases:\n{entries}"));
            for (mode, allow) in ["keep", "best_effort_drop"].into_iter().zip(allows).chain([("keep", allows[2])]) {
                configs.push(one_role_config_yaml("ns_grp", &entries, "devs", mode, allow));
            }
        }
        for text in configs {
            autouser_policy::config::Config::parse(schema_checked(&text), Path::new("/"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
    }

    #[test]
    #[should_panic(expected = "does not validate against schemas/config.schema.json")]
    fn a_config_the_schema_refuses_fails_the_check() {
        schema_checked("databases: []\nno_such_key: 1\n");
    }
}
