//! Session start and end, ours against the baseline: the minimal SQL that reaches the same end
//! state, written by hand and sent in one simple-query batch (one round trip).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::sql::quote_ident;
use autouser_engine::tokio_postgres::Client;
use autouser_engine::{engine, Error};
use autouser_policy::config::{Config, ResolvedDatabase};
use autouser_policy::event::SessionEvent;
use autouser_policy::request;
use futures_util::future::join_all;
use scratch_postgres::Cluster;

use crate::stats::Samples;

pub const ADMIN: &str = "bench_admin";
pub const GROUP: &str = "teleport-auto-user";
/// The two database roles every benchmarked user gets.
pub const ROLES: [&str; 2] = ["bench_reader", "bench_writer"];

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Baseline,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Baseline => "baseline",
        }
    }
}

/// The benchmark's view of one server (or of a proxy in front of it): the config the CLI and
/// the Lambda functions would load, and how to log in as the admin.
pub struct Target {
    pub config: Config,
    pub database: ResolvedDatabase,
    credentials: AdminCredentials,
    tls: TlsSettings,
}

/// Creates the admin, the two roles and the managed group on a fresh cluster, and the
/// schema of the creator roles' functions, as the README's admin setup does; then runs
/// bootstrap, as discovery does.
pub async fn prepare_server(cluster: &Cluster) -> Result<(), Error> {
    let superuser = connect_as(cluster, cluster.superuser()).await?;
    let mut sql = format!("CREATE ROLE {ADMIN} LOGIN CREATEROLE;");
    sql.push_str(&format!("CREATE SCHEMA {} AUTHORIZATION {ADMIN};", quote_ident(GROUP)));
    for role in ROLES {
        sql.push_str(&format!("CREATE ROLE {role};"));
        if cluster.major() >= 16 {
            sql.push_str(&format!("GRANT {role} TO {ADMIN} WITH ADMIN OPTION;"));
        }
    }
    superuser.batch_execute(&sql).await.map_err(|e| Error::Unreachable {
        endpoint: format!("localhost:{}", cluster.port()),
        detail: format!("preparing the benchmark roles: {e}"),
    })?;
    // The admin creates the group, as session-start does when it is missing, so that both sides
    // may grant it (PostgreSQL 16+ gives a role's creator ADMIN OPTION on it).
    let target = Target::new(cluster, cluster.port())?;
    let admin = target.connect().await?;
    admin
        .client()
        .batch_execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(GROUP)))
        .await
        .map_err(|e| Error::Unreachable { endpoint: format!("localhost:{}", cluster.port()), detail: e.to_string() })?;
    // As discovery does on a deployment: preflight, then bootstrap, which prepares every
    // creator role (PostgreSQL 16+), so that no measured start pays for preparing one.
    let (_, facts) = autouser_engine::preflight::check(admin.client(), &target.config, &target.database).await?;
    autouser_engine::preflight::bootstrap(admin.client(), &target.config, &facts).await?;
    Ok(())
}

async fn connect_as(cluster: &Cluster, user: &str) -> Result<Client, Error> {
    scratch_login::connect(cluster, user, "postgres").await
}

/// The config of `cluster` reached on `port` (the server's, or a proxy's), as the CLI and the
/// Lambda functions (`AUTOUSER_CONFIG`) load it.
pub fn config_text(cluster: &Cluster, port: u16) -> Result<String, Error> {
    config_with_grants(cluster, port, &format!("db_roles: [{}, {}]", ROLES[0], ROLES[1]))
}

/// The config of a read replica's entry: sessions on `standby`, changes on its writer at
/// `writer_port`, with the benchmark's policy.
pub fn replica_config_text(standby: &Cluster, writer_port: u16) -> Result<String, Error> {
    let entry = scratch_login::database_yaml(standby, standby.port(), "main", ADMIN)?;
    let entry = format!("{entry}    primary: {{uri: \"localhost:{writer_port}\"}}\n");
    let grants = format!("db_roles: [{}, {}]", ROLES[0], ROLES[1]);
    Ok(scratch_login::one_role_config_yaml(GROUP, &entry, "bench", "keep", &grants))
}

/// The benchmark config whose one role, `bench` (mode `keep`, every database), grants what
/// `grants` says (YAML under `allow`: `db_roles: [...]`, `db_permissions: [...]`).
pub fn config_with_grants(cluster: &Cluster, port: u16, grants: &str) -> Result<String, Error> {
    let main = scratch_login::database_yaml(cluster, port, "main", ADMIN)?;
    Ok(scratch_login::one_role_config_yaml(GROUP, &main, "bench", "keep", grants))
}

impl Target {
    /// The admin's view of `cluster`, reached on `port` (the server's, or a proxy's).
    pub fn new(cluster: &Cluster, port: u16) -> Result<Target, Error> {
        Target::from_config_text(&config_text(cluster, port)?)
    }

    pub fn from_config_text(text: &str) -> Result<Target, Error> {
        let config = Config::parse(text, std::path::Path::new("/")).map_err(Error::from)?;
        let database = config.databases[0].resolve_static().expect("a self-hosted database resolves statically");
        let credentials = AdminCredentials::from_local_config(&database.auth)?;
        let tls = TlsSettings::from_config(&database.tls)?;
        Ok(Target { config, database, credentials, tls })
    }

    /// A new TLS admin connection, by the same client library and settings for both sides.
    pub async fn connect(&self) -> Result<AdminConnection, Error> {
        self.connect_to("postgres").await
    }

    /// A new TLS admin connection to the entry's writer (a read replica's entry).
    pub async fn connect_writer(&self) -> Result<AdminConnection, Error> {
        let writer = self.database.writer_database().expect("a read replica's entry names its writer");
        let tls = TlsSettings::from_config(&writer.tls)?;
        pg::connect_admin(&ConnectParams::admin_of(&writer, "postgres", &tls, &self.credentials)).await
    }

    pub async fn connect_to(&self, dbname: &str) -> Result<AdminConnection, Error> {
        let params = ConnectParams::admin_of(&self.database, dbname, &self.tls, &self.credentials);
        pg::connect_admin(&params).await
    }

    pub async fn start(&self, side: Side, connection: &AdminConnection, user: &str) -> Result<(), Error> {
        match side {
            Side::Ours => self.start_session(connection, user, &format!("{user}-session")).await,
            Side::Baseline => batch(connection.client(), &baseline_start_sql(user)).await,
        }
    }

    pub async fn end(&self, side: Side, connection: &AdminConnection, user: &str) -> Result<(), Error> {
        match side {
            Side::Ours => self.end_session(connection, user, &format!("{user}-session")).await,
            Side::Baseline => batch(connection.client(), &baseline_end_sql(user)).await,
        }
    }

    /// Our session-start of session `session` for `user`.
    pub async fn start_session(&self, connection: &AdminConnection, user: &str, session: &str) -> Result<(), Error> {
        let event = SessionEvent::from_value(session_event(user, session))?;
        let req = request::prepare_start(&self.config, &self.database, &event)?;
        engine::session_start(connection, &req).await.map(drop)
    }

    /// Our session-end of session `session` for `user`.
    pub async fn end_session(&self, connection: &AdminConnection, user: &str, session: &str) -> Result<(), Error> {
        let event = SessionEvent::from_value(session_event(user, session))?;
        let req = request::prepare_end(&self.config, &self.database, &event)?;
        engine::session_end(connection, &req, &engine::NoOtherDatabases).await.map(drop)
    }
}

pub fn session_event(user: &str, session: &str) -> serde_json::Value {
    serde_json::json!({
        "session_id": session, "user": user, "roles": ["bench"],
        "database": "main", "db_name": "postgres",
    })
}

/// The baseline session-start: a login role in the group with the two roles, one transaction.
pub fn baseline_start_sql(user: &str) -> String {
    let user = quote_ident(user);
    let mut sql = format!("BEGIN; CREATE ROLE {user} LOGIN IN ROLE {};", quote_ident(GROUP));
    for role in ROLES {
        sql.push_str(&format!(" GRANT {} TO {user};", quote_ident(role)));
    }
    sql.push_str(" COMMIT");
    sql
}

/// The baseline session-start of a user that exists (one a `keep` end left): login again and
/// the roles granted again.
pub fn baseline_restart_sql(user: &str) -> String {
    let roles: Vec<String> = ROLES.iter().map(|r| quote_ident(r)).collect();
    let user = quote_ident(user);
    format!("BEGIN; ALTER ROLE {user} LOGIN; GRANT {} TO {user}; COMMIT", roles.join(", "))
}

/// The baseline session-end: the end state of `keep` (roles revoked, group kept, no login).
pub fn baseline_end_sql(user: &str) -> String {
    let roles: Vec<String> = ROLES.iter().map(|r| quote_ident(r)).collect();
    let user = quote_ident(user);
    format!("BEGIN; REVOKE {} FROM {user}; ALTER ROLE {user} NOLOGIN; COMMIT", roles.join(", "))
}

/// Runs `sql` (one statement, its own transaction) and answers the WAL position after its
/// commit ([`autouser_engine::sql::COMMIT_LSN`]), in one message.
pub async fn commit_and_read_lsn(client: &Client, sql: &str) -> Result<String, Error> {
    let messages = client
        .simple_query(&format!("{sql}; {}", autouser_engine::sql::COMMIT_LSN))
        .await
        .map_err(|e| Error::Unreachable { endpoint: "benchmark server".into(), detail: e.to_string() })?;
    messages
        .iter()
        .find_map(|message| match message {
            autouser_engine::tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| Error::Unreachable { endpoint: "benchmark server".into(), detail: "no WAL position".into() })
}

pub async fn batch(client: &Client, sql: &str) -> Result<(), Error> {
    client.batch_execute(sql).await.map_err(|e| Error::Unreachable {
        endpoint: "benchmark server".into(),
        detail: format!("baseline SQL failed: {}", pg::error_chain(&e)),
    })
}

/// Logs in as the superuser to compare the users each side left behind.
pub async fn user_state(cluster: &Cluster, user: &str) -> Result<(bool, BTreeSet<String>), Error> {
    let client = connect_as(cluster, cluster.superuser()).await?;
    let row = client
        .query_one(
            "SELECT r.rolcanlogin, ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                      JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&user],
        )
        .await
        .map_err(|e| Error::Unreachable { endpoint: "benchmark server".into(), detail: e.to_string() })?;
    Ok((row.get(0), row.get::<_, Vec<String>>(1).into_iter().collect()))
}

/// Warm latencies of one side: start then end for each user, over one reused connection.
pub struct Warm {
    pub start: Samples,
    pub end: Samples,
}

/// Warm start and end, the two sides interleaved user by user so that both see the same
/// server state (catalog size, checkpoints).
pub async fn warm(target: &Target, iterations: usize, run: &str) -> Result<[Warm; 2], Error> {
    let sides = [Side::Ours, Side::Baseline];
    let clients = [target.connect().await?, target.connect().await?];
    let mut results = [(); 2].map(|_| Warm { start: Samples::default(), end: Samples::default() });
    for i in 0..iterations {
        for (n, side) in sides.iter().enumerate() {
            let user = format!("{run}-warm-{}-{i}", side.name());
            let began = Instant::now();
            target.start(*side, &clients[n], &user).await?;
            results[n].start.push(began.elapsed());
        }
    }
    for i in 0..iterations {
        for (n, side) in sides.iter().enumerate() {
            let user = format!("{run}-warm-{}-{i}", side.name());
            let began = Instant::now();
            target.end(*side, &clients[n], &user).await?;
            results[n].end.push(began.elapsed());
        }
    }
    Ok(results)
}

/// Cold session-starts: a new TLS admin connection, then the start, then the connection closes.
pub async fn cold(target: &Target, iterations: usize, run: &str) -> Result<[Samples; 2], Error> {
    let sides = [Side::Ours, Side::Baseline];
    let mut results = [Samples::default(), Samples::default()];
    for i in 0..iterations {
        for (n, side) in sides.iter().enumerate() {
            let user = format!("{run}-cold-{}-{i}", side.name());
            let began = Instant::now();
            let client = target.connect().await?;
            target.start(*side, &client, &user).await?;
            results[n].push(began.elapsed());
        }
    }
    Ok(results)
}

pub struct Throughput {
    pub elapsed: Duration,
    pub users: usize,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Throughput {
    /// Users started and ended per second.
    pub fn per_second(&self) -> f64 {
        (self.users - self.errors) as f64 / self.elapsed.as_secs_f64()
    }
}

/// `users` distinct users, each started then ended, by `concurrency` workers with one
/// connection each (opened before the clock starts).
pub async fn throughput(
    target: &Target,
    side: Side,
    users: usize,
    concurrency: usize,
    run: &str,
) -> Result<Throughput, Error> {
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(target.connect().await?);
    }
    let next = AtomicUsize::new(0);
    let began = Instant::now();
    let outcomes = join_all(clients.iter().map(|client| {
        let next = &next;
        async move {
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users {
                    return errors;
                }
                let user = format!("{run}-tp{concurrency}-{}-{i}", side.name());
                let result = match target.start(side, client, &user).await {
                    Ok(()) => target.end(side, client, &user).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = result {
                    errors.push(error.to_string());
                }
            }
        }
    }))
    .await;
    let elapsed = began.elapsed();
    let errors: Vec<String> = outcomes.into_iter().flatten().collect();
    Ok(Throughput { elapsed, users, errors: errors.len(), first_error: errors.into_iter().next() })
}

/// Drops the users whose names start with `prefix`, so that the next measurement starts from
/// the same catalog as the previous one.
pub async fn drop_users(cluster: &Cluster, prefix: &str) -> Result<(), Error> {
    let superuser = connect_as(cluster, cluster.superuser()).await?;
    let failed = |e: autouser_engine::tokio_postgres::Error| Error::Unreachable {
        endpoint: "benchmark server".into(),
        detail: format!("dropping benchmark users: {e}"),
    };
    let rows = superuser
        .query("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)", &[&prefix])
        .await
        .map_err(failed)?;
    for chunk in rows.chunks(500) {
        let sql: String = chunk.iter().map(|row| format!("DROP ROLE {};", quote_ident(row.get(0)))).collect();
        superuser.batch_execute(&sql).await.map_err(failed)?;
    }
    Ok(())
}
