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

/// Signed identity fixtures (`identity:`): keys made by the `openssl` command line, their JWKS
/// and tokens made by PyJWT, by `tests/identity/make_tokens.py` in the `.deps/venv` that
/// `scripts/install-deps` makes. A missing tool fails the test.
pub struct IdentityFixtures {
    pub dir: std::path::PathBuf,
    /// `jwks.json`: the RS256, ES256 and EdDSA keys (kids `rsa-1`, `ec-1`, `ed-1`).
    pub jwks_file: std::path::PathBuf,
    pub teleport_issuer: String,
    pub oidc_issuer: String,
    pub audience: String,
    tokens: serde_json::Map<String, serde_json::Value>,
}

impl IdentityFixtures {
    /// Keys, JWKS and tokens for `user` with `roles`, in `dir`. The tokens: `teleport_<alg>`
    /// and `oidc_<alg>` (RS256, ES256, EdDSA) valid; `expired`, `not_yet_valid`,
    /// `wrong_iss`, `wrong_aud`, `unknown_kid`, `unknown_issuer`, `tampered_payload`,
    /// `tampered_signature`, `alg_none`, `hs256_public_key` refused; `other_user`, valid for
    /// `<user>_other`.
    pub fn make(dir: &Path, user: &str, roles: &[&str]) -> IdentityFixtures {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".deps/venv/bin/python");
        let (teleport_issuer, oidc_issuer, audience) =
            ("teleport.example.com".to_string(), "https://idp.example.com".to_string(), "pg-autouser".to_string());
        let spec = serde_json::json!({"user": user, "roles": roles, "teleport_issuer": teleport_issuer,
                                      "oidc_issuer": oidc_issuer, "audience": audience});
        let output = std::process::Command::new(&python)
            .arg(root.join("tests/identity/make_tokens.py"))
            .arg(dir)
            .arg(spec.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (run scripts/install-deps): {e}", python.display()));
        assert!(
            output.status.success(),
            "make_tokens.py failed (run scripts/install-deps for PyJWT and openssl): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tokens = std::fs::read_to_string(dir.join("tokens.json")).expect("make_tokens.py wrote tokens.json");
        let serde_json::Value::Object(tokens) = serde_json::from_str(&tokens).unwrap() else {
            panic!("tokens.json is not an object")
        };
        IdentityFixtures {
            jwks_file: dir.join("jwks.json"),
            dir: dir.into(),
            teleport_issuer,
            oidc_issuer,
            audience,
            tokens,
        }
    }

    /// The token named `name` (see [`IdentityFixtures::make`]).
    pub fn token(&self, name: &str) -> String {
        self.tokens.get(name).and_then(|t| t.as_str()).unwrap_or_else(|| panic!("no token {name}")).to_string()
    }

    /// The `identity:` block trusting both issuers with the fixtures' JWKS: the `teleport`
    /// preset and the `oidc` preset; `required` and `required_for_end` as given.
    pub fn identity_yaml(&self, required: bool, required_for_end: bool) -> String {
        format!(
            "identity:\n  required: {required}\n  required_for_end: {required_for_end}\n  issuers:\n    \
             - {{preset: teleport, issuer: {}, audience: {}, jwks_file: {}}}\n    \
             - {{preset: oidc, issuer: \"{}\", audience: {}, jwks_file: {}, leeway_seconds: 30}}\n",
            self.teleport_issuer,
            self.audience,
            self.jwks_file.display(),
            self.oidc_issuer,
            self.audience,
            self.jwks_file.display()
        )
    }
}

/// A directory served over HTTPS on 127.0.0.1 by `tests/identity/serve_jwks.py`, with a CA of
/// its own (made by the `openssl` command line), as an identity provider serves its JWKS.
/// Stopped when dropped.
pub struct JwksServer {
    pub port: u16,
    /// The CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    pub ca_file: std::path::PathBuf,
    child: std::process::Child,
}

impl JwksServer {
    pub fn start(dir: &Path) -> JwksServer {
        use std::io::BufRead;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".deps/venv/bin/python");
        let mut child = std::process::Command::new(&python)
            .arg(root.join("tests/identity/serve_jwks.py"))
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (run scripts/install-deps): {e}", python.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("serve_jwks.py did not print its port: {line:?}"));
        JwksServer { port, ca_file: dir.join("ca.pem"), child }
    }

    /// The URL of `name` in the served directory.
    pub fn url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}", self.port)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
