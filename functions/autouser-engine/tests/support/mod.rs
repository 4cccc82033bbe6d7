//! What the test binaries that own their cluster share (`standby`, `crash`): an admin-side
//! connection over TLS with a client certificate, and a one-database config.

use autouser_engine::pg::AdminConnection;
use autouser_policy::config::Config;
use scratch_postgres::Cluster;

/// `user` logged in to `postgres` on `cluster` with its client certificate.
pub async fn connect_as(cluster: &Cluster, user: &str) -> AdminConnection {
    scratch_login::connect_admin(cluster, user, "postgres").await.unwrap()
}

#[allow(dead_code)] // not every test binary that shares this module uses it
/// Database `main` on `cluster`, administered by `admin` (certificate login), managed group
/// `group`, and one role `devs` (mode `keep`) granting `db_roles` (a YAML list).
pub fn config(cluster: &Cluster, admin: &str, group: &str, db_roles: &str) -> Config {
    let main = scratch_login::database_yaml(cluster, cluster.port(), "main", admin).unwrap();
    let text = scratch_login::one_role_config_yaml(group, &main, "devs", "keep", &format!("db_roles: {db_roles}"));
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/")).unwrap()
}

#[allow(dead_code)] // not every test binary that shares this module uses it
/// The admin of `db` (as the config resolves it) logged in to `dbname`, as the CLI logs in.
pub async fn connect_to(db: &autouser_policy::config::ResolvedDatabase, dbname: &str) -> AdminConnection {
    use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
    let credentials = AdminCredentials::from_local_config(&db.auth).unwrap();
    let tls = TlsSettings::from_config(&db.tls).unwrap();
    pg::connect_admin(&ConnectParams::admin_of(db, dbname, &tls, &credentials)).await.unwrap()
}
