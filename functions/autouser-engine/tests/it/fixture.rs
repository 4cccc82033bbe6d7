//! Shared fixtures: one throwaway cluster per test process (the PostgreSQL version comes from
//! `AUTOUSER_PG_BIN`), and per test its own database, admin, managed group and role names, so
//! tests run in parallel without seeing each other.

use std::collections::BTreeSet;

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::tokio_postgres::Client;
use autouser_engine::{engine, Error};
use autouser_policy::config::Config;
use autouser_policy::event::SessionEvent;
use autouser_policy::outcome::{EndOutcome, StartOutcome};
use autouser_policy::request::{self, EndRequest, StartRequest};

pub use scratch_login::test_cluster as cluster;

pub fn major() -> u32 {
    cluster().major()
}

/// A quoted identifier, for test SQL.
pub fn q(name: &str) -> String {
    autouser_engine::sql::quote_ident(name)
}

pub struct Fixture {
    /// Prefix of every name this test creates.
    pub ns: String,
    pub db: String,
    pub admin: String,
    pub group: String,
    pub superuser: Client,
    /// Roles of the policy section of the config, YAML list items.
    pub roles_yaml: String,
    pub db_type: &'static str,
    pub default_database: Option<String>,
    pub auth_yaml: Option<String>,
    /// Top-level config sections after `roles` (`import_rules`, say).
    pub extra_yaml: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub login: bool,
    pub member_of: BTreeSet<String>,
    pub comment: Option<String>,
}

impl Fixture {
    /// A fresh database `<ns>`, an admin `<ns>_admin` (LOGIN CREATEROLE, CONNECT), roles
    /// `<ns>_reader` and `<ns>_writer` the admin may grant, and a default keep policy.
    pub async fn new(ns: &str) -> Fixture {
        let cluster = cluster();
        let superuser = connect(cluster.superuser(), "postgres").await.expect("superuser connects");
        let admin = format!("{ns}_admin");
        let reader = format!("{ns}_reader");
        let writer = format!("{ns}_writer");
        superuser.batch_execute(&format!("CREATE DATABASE {}", q(ns))).await.expect("fixture database");
        superuser
            .batch_execute(&format!(
                "CREATE ROLE {admin} LOGIN CREATEROLE; CREATE ROLE {reader}; CREATE ROLE {writer}",
                admin = q(&admin),
                reader = q(&reader),
                writer = q(&writer),
            ))
            .await
            .expect("fixture setup");
        let fixture = Fixture {
            ns: ns.to_string(),
            db: ns.to_string(),
            group: format!("{ns}_grp"),
            admin,
            superuser,
            roles_yaml: String::new(),
            db_type: "self-hosted",
            default_database: None,
            auth_yaml: None,
            extra_yaml: String::new(),
        };
        fixture.give_admin_option(&reader).await;
        fixture.give_admin_option(&writer).await;
        // The README's admin setup: the schema that keeps the creator roles' functions.
        as_superuser(ns, &format!("CREATE SCHEMA {} AUTHORIZATION {}", q(&fixture.group), q(&fixture.admin))).await;
        fixture.with_roles(&format!(
            r#"
  - kind: role
    version: v7
    metadata: {{name: keep}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}", "{{{{internal.db_roles}}}}"]
  - kind: role
    version: v7
    metadata: {{name: drop}}
    spec:
      options: {{create_db_user_mode: best_effort_drop}}
      allow:
        db_labels: {{"*": "*"}}
        db_names: ["*"]
        db_roles: ["{reader}"]
"#
        ))
    }

    pub fn with_roles(mut self, roles_yaml: &str) -> Fixture {
        self.roles_yaml = roles_yaml.to_string();
        self
    }

    pub fn reader(&self) -> String {
        format!("{}_reader", self.ns)
    }

    pub fn writer(&self) -> String {
        format!("{}_writer", self.ns)
    }

    /// A user name unique to this test.
    pub fn user(&self, name: &str) -> String {
        format!("{}_{name}", self.ns)
    }

    /// On PostgreSQL 16+, a CREATEROLE admin needs ADMIN OPTION on every role it grants.
    pub async fn give_admin_option(&self, role: &str) {
        if major() >= 16 {
            self.sql(&format!("GRANT {} TO {} WITH ADMIN OPTION", q(role), q(&self.admin))).await;
        }
    }

    pub async fn sql(&self, statements: &str) {
        self.superuser.batch_execute(statements).await.unwrap_or_else(|e| panic!("{statements}: {e:?}"));
    }

    pub fn config(&self) -> Config {
        self.config_on_port(cluster().port())
    }

    /// The config, with the server reached on `port` (a proxy's, say).
    pub fn config_on_port(&self, port: u16) -> Config {
        let cluster = cluster();
        let cert = cluster.client_cert(&self.admin).expect("admin cert");
        let auth = self.auth_yaml.clone().unwrap_or_else(|| {
            format!(
                "{{method: cert, cert_file: {:?}, key_file: {:?}}}",
                cert.cert_path.display().to_string(),
                cert.key_path.display().to_string()
            )
        });
        let default_database = match &self.default_database {
            Some(db) => format!(", default_database: {db:?}"),
            None => String::new(),
        };
        let text = format!(
            r#"
cluster_name: local
managed_group: {group:?}
databases:
  - name: main
    type: {db_type}
    uri: "localhost:{port}"
    labels: {{env: test}}
    admin_user: {{name: {admin:?}{default_database}}}
    auth: {auth}
    tls: {{mode: verify-full, ca_file: {ca:?}}}
roles:{roles}
{extra}"#,
            group = self.group,
            db_type = self.db_type,
            admin = self.admin,
            ca = cluster.ca_cert_path().display().to_string(),
            roles = self.roles_yaml,
            extra = self.extra_yaml_with_legacy_mode(),
        );
        Config::parse(scratch_login::schema_checked(&text), std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// `extra_yaml`, with `creator_roles: 0` added when `AUTOUSER_TEST_ADMIN_ONLY=1` and the
    /// test does not set it: the run of the suite's focused subset in the admin-only mode
    /// (scripts/test). Any other value of the variable is refused, so a typo cannot run the
    /// default mode under the admin-only mode's name.
    fn extra_yaml_with_legacy_mode(&self) -> String {
        match std::env::var("AUTOUSER_TEST_ADMIN_ONLY").as_deref() {
            Err(_) => self.extra_yaml.clone(),
            Ok("1") if self.extra_yaml.contains("creator_roles:") => self.extra_yaml.clone(),
            Ok("1") => format!("{}\ncreator_roles: 0\n", self.extra_yaml),
            Ok(other) => panic!("AUTOUSER_TEST_ADMIN_ONLY is {other:?}: set it to 1, or leave it unset"),
        }
    }

    /// A start event JSON for `user` (a full name), session `session`, on this test's database.
    pub fn event(&self, session: &str, user: &str, roles: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "session_id": session, "user": user, "roles": roles,
            "database": "main", "db_name": self.db,
        })
    }

    pub async fn start(&self, event: serde_json::Value) -> Result<StartOutcome, Error> {
        self.start_with(&self.config(), event).await
    }

    /// The start request of `event` under `config`.
    fn start_request(config: &Config, event: serde_json::Value) -> Result<StartRequest, Error> {
        let event = SessionEvent::from_value(event)?;
        let db = request::database(config, &event)?.resolve_static().expect("a static database");
        Ok(request::prepare_start(config, &db, &event)?)
    }

    /// The end request of `event` under `config`.
    fn end_request(config: &Config, event: serde_json::Value) -> Result<EndRequest, Error> {
        let event = SessionEvent::from_value(event)?;
        let db = request::database(config, &event)?.resolve_static().expect("a static database");
        Ok(request::prepare_end(config, &db, &event)?)
    }

    /// A session-start with `config` (one reaching the server through a proxy, say).
    pub async fn start_with(&self, config: &Config, event: serde_json::Value) -> Result<StartOutcome, Error> {
        let req = Fixture::start_request(config, event)?;
        let client = self.admin_client(config, &req.target.admin_db_name).await?;
        engine::session_start(&client, &req).await
    }

    /// A session-start on `connection`, an open admin connection to the event's database (as
    /// a warm Lambda container keeps one).
    pub async fn start_on(
        &self,
        connection: &AdminConnection,
        event: serde_json::Value,
    ) -> Result<StartOutcome, Error> {
        engine::session_start(connection, &Fixture::start_request(&self.config(), event)?).await
    }

    /// A session-end on `connection`, as [`Fixture::start_on`]; its user holds no objects elsewhere.
    pub async fn end_on(&self, connection: &AdminConnection, event: serde_json::Value) -> Result<EndOutcome, Error> {
        let req = Fixture::end_request(&self.config(), event)?;
        engine::session_end(connection, &req, &engine::NoOtherDatabases).await
    }

    pub async fn end(&self, event: serde_json::Value) -> Result<EndOutcome, Error> {
        self.end_with(&self.config(), event).await
    }

    pub async fn end_with(&self, config: &Config, event: serde_json::Value) -> Result<EndOutcome, Error> {
        let req = Fixture::end_request(config, event)?;
        let client = self.admin_client(config, &req.target.admin_db_name).await?;
        let others = engine::ConnectWith(|db_name: String| async move { self.admin_client(config, &db_name).await });
        engine::session_end(&client, &req, &others).await
    }

    /// One reaper run on this test's database, as of `now` (Unix seconds).
    pub async fn reap(&self, now: u64) -> autouser_engine::reaper::ReapReport {
        self.reap_until(now, None).await
    }

    /// One reaper run that starts no action after `stop_at`.
    pub async fn reap_until(
        &self,
        now: u64,
        stop_at: Option<std::time::Instant>,
    ) -> autouser_engine::reaper::ReapReport {
        self.reap_in(&self.db, now, stop_at).await
    }

    /// One reaper run logged in to `admin_db_name`, as the reaper function does to the admin's
    /// default database (`postgres` when none is set).
    pub async fn reap_from(&self, admin_db_name: &str, now: u64) -> autouser_engine::reaper::ReapReport {
        self.reap_in(admin_db_name, now, None).await
    }

    async fn reap_in(
        &self,
        admin_db_name: &str,
        now: u64,
        stop_at: Option<std::time::Instant>,
    ) -> autouser_engine::reaper::ReapReport {
        let config = self.config();
        let db = config.databases[0].resolve_static().expect("a static database");
        let connection = self.admin_client(&config, admin_db_name).await.unwrap();
        let connect_to = |db_name: String| async move { self.admin_client(&self.config(), &db_name).await };
        autouser_engine::reaper::reap(&connection, admin_db_name, &config, &db, &[], now, stop_at, connect_to)
            .await
            .unwrap()
    }

    pub async fn admin_client(&self, config: &Config, dbname: &str) -> Result<AdminConnection, Error> {
        let db = config.databases[0].resolve_static().expect("a static database");
        let credentials = AdminCredentials::from_local_config(&db.auth)?;
        let tls = TlsSettings::from_config(&db.tls)?;
        pg::connect_admin(&ConnectParams::admin_of(&db, dbname, &tls, &credentials)).await
    }

    pub async fn state(&self, user: &str) -> Option<UserState> {
        let rows = self
            .superuser
            .query(
                "SELECT r.rolcanlogin,
                        ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m
                                JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid),
                        shobj_description(r.oid, 'pg_authid')
                   FROM pg_roles r WHERE r.rolname = $1",
                &[&user],
            )
            .await
            .expect("state query");
        rows.first().map(|row| UserState {
            login: row.get(0),
            member_of: row.get::<_, Vec<String>>(1).into_iter().collect(),
            comment: row.get(2),
        })
    }

    /// Managed users (members of this test's group) that can log in. The admin is left out:
    /// on PostgreSQL 16+ it is an implicit member of the group it created.
    pub async fn users_able_to_log_in(&self) -> Vec<String> {
        let rows = self
            .superuser
            .query(
                "SELECT u.rolname::text FROM pg_roles u
                   JOIN pg_auth_members m ON m.member = u.oid
                   JOIN pg_roles g ON g.oid = m.roleid
                  WHERE g.rolname = $1 AND u.rolcanlogin AND u.rolname <> $2",
                &[&self.group, &self.admin],
            )
            .await
            .expect("login query");
        rows.iter().map(|r| r.get(0)).collect()
    }
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs `statements` as the superuser in database `db` (the fixture's `sql` runs them in
/// `postgres`).
pub async fn as_superuser(db: &str, statements: &str) {
    let client = connect(cluster().superuser(), db).await.expect("superuser connects");
    client.batch_execute(statements).await.unwrap_or_else(|e| panic!("{statements}: {e:?}"));
}

/// Connects to the test cluster as `user` with a client certificate.
pub async fn connect(user: &str, dbname: &str) -> Result<Client, Error> {
    scratch_login::connect(cluster(), user, dbname).await
}

/// How many times the server counted calls of the functions named `name` (`track_functions`
/// must be on for the caller), once the backend of `connection` has reported them: it reports
/// at the end of a statement at most once a second, so each try runs one. Waits up to 10 s for
/// the count to pass `more_than`.
pub async fn function_calls(in_db: &Client, connection: &AdminConnection, name: &str, more_than: i64) -> i64 {
    let mut calls = 0;
    for _ in 0..50 {
        connection.simple_query("SELECT 1").await.expect("the admin's connection");
        calls = in_db
            .query_one(
                "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = $1",
                &[&name],
            )
            .await
            .expect("function statistics")
            .get(0);
        if calls > more_than {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    calls
}
