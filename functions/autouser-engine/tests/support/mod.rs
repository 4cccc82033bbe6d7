//! What the test binaries that own their cluster share (`standby`, `crash`): an admin-side
//! connection over TLS with a client certificate, and a one-database config.

use autouser_engine::pg::AdminConnection;
use autouser_policy::config::Config;
use scratch_postgres::Cluster;

/// `user` logged in to `postgres` on `cluster` with its client certificate.
pub async fn connect_as(cluster: &Cluster, user: &str) -> AdminConnection {
    scratch_login::connect_admin(cluster, user, "postgres").await.unwrap()
}

/// Database `main` on `cluster`, administered by `admin` (certificate login), managed group
/// `group`, and one role `devs` (mode `keep`) granting `db_roles` (a YAML list).
pub fn config(cluster: &Cluster, admin: &str, group: &str, db_roles: &str) -> Config {
    let main = scratch_login::database_yaml(cluster, cluster.port(), "main", admin).unwrap();
    let text = scratch_login::one_role_config_yaml(group, &main, "devs", "keep", &format!("db_roles: {db_roles}"));
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/")).unwrap()
}
