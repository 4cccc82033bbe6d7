//! One throwaway PostgreSQL per test process, and helpers to set up admins on it.

use autouser_engine::sql::{quote_ident, quote_literal};
use autouser_engine::tokio_postgres::Client;
use autouser_policy::config::Config;
use scratch_postgres::PASSWORD_LOGIN_GROUP;

pub use scratch_login::test_cluster as cluster;

pub async fn superuser() -> Client {
    scratch_login::superuser(cluster(), "postgres").await
}

/// Creates `admin` (LOGIN CREATEROLE); with a password, as a password-login user.
pub async fn create_admin(admin: &str, password: Option<&str>) {
    let superuser = superuser().await;
    superuser
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {group}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
            group = quote_ident(PASSWORD_LOGIN_GROUP)
        ))
        .await
        .unwrap();
    let mut sql = format!("CREATE ROLE {} LOGIN CREATEROLE", quote_ident(admin));
    if let Some(password) = password {
        sql.push_str(&format!(" PASSWORD {} IN ROLE {}", quote_literal(password), quote_ident(PASSWORD_LOGIN_GROUP)));
    }
    superuser.batch_execute(&sql).await.unwrap();
}

pub async fn set_password(admin: &str, password: &str) {
    superuser()
        .await
        .batch_execute(&format!("ALTER ROLE {} PASSWORD {}", quote_ident(admin), quote_literal(password)))
        .await
        .unwrap();
}

/// A config with one static database `local` on the test cluster, whose `auth` is given.
pub fn config(admin: &str, auth_yaml: &str) -> Config {
    let local = scratch_login::database_yaml_with_auth(cluster(), cluster().port(), "local", admin, auth_yaml);
    let text = format!("databases:\n{local}");
    Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub async fn current_user(client: &Client) -> String {
    client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0)
}
