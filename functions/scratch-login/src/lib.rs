//! Logins to a [`scratch_postgres::Cluster`] as any role: over TLS, verified against the
//! cluster's CA (`verify-full`), with the role's client certificate, through autouser-core's
//! connector. For tests, the demo and the benchmarks. (`scratch-postgres` itself depends on
//! no crate of ours, so this lives apart.)

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::tokio_postgres::Client;
use autouser_engine::Error;
use autouser_policy::config::TlsMode;
use scratch_postgres::Cluster;

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
    format!(
        r#"  - name: {name:?}
    type: self-hosted
    uri: "localhost:{port}"
    admin_user: {{name: {admin:?}, default_database: postgres}}
    auth: {auth_yaml}
    tls: {{mode: verify-full, ca_file: {ca:?}}}
"#,
        ca = cluster.ca_cert_path().display().to_string(),
    )
}
