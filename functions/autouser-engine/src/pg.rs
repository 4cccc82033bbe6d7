//! The PostgreSQL edge: admin connections over TLS, and what a driver error means.
//!
//! TLS is OpenSSL, as in libpq, and `tls.mode` means what libpq's `sslmode` means with the
//! same files: see [`crate::tls`].

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

pub use crate::error::{error_chain, is_transient};
use crate::tls::{self, ClientIdentity, FailureSlot};
use crate::{sql, Error};
use autouser_policy::config::{AuthConfig, TlsConfig, TlsMode};

/// The admin's `search_path`, set in every admin connection's startup options (which take
/// precedence over the role's and the database's defaults): names resolve only to
/// PostgreSQL's catalog. With the default (`"$user", public`) an operator or function a user
/// planted in `public` that matches a call's argument types more exactly than the catalog's
/// would run as the admin (CVE-2018-1058's class). `pg_temp` is named last so that it is never
/// searched before the catalog (functions and operators are never looked up there at all).
pub const ADMIN_SEARCH_PATH: &str = "pg_catalog,pg_temp";
/// How long to wait for the server to accept a connection and finish the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side bound of one statement; a hung statement fails instead of hanging the caller.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on waiting for a lock (the per-user advisory lock, a role row).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long data sent to the server may stay unacknowledged before the connection is given
/// up (`TCP_USER_TIMEOUT`): a pooled connection to a host that vanished in a failover fails in
/// this time instead of hanging until Lambda ends the invocation. A slow statement is not
/// affected: the server's kernel acknowledges the request while the statement runs.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalives on an idle connection (waiting for an answer counts as idle): the first
/// probe after this long without traffic…
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
/// …then one every this long, and the connection is given up after this many unanswered,
/// so a host that vanished while we waited for its answer is noticed in about 11 s. Together
/// with [`TCP_USER_TIMEOUT`], [`CONNECT_TIMEOUT`] for the reconnection and the work, a dead
/// pooled connection costs well under the session functions' 30 s timeout (template.yaml).
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVES_RETRIES: u32 = 3;

/// The admin's secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminCredentials {
    Password(String),
    /// The certificate file's PEM (the admin's certificate, then any intermediates), the key's
    /// PEM, and the key's passphrase if it is encrypted (libpq's `sslpassword`).
    ClientCert {
        cert_pem: String,
        key_pem: String,
        key_password: Option<String>,
    },
}

impl fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminCredentials::Password(_) => f.write_str("Password(<redacted>)"),
            AdminCredentials::ClientCert { .. } => f.write_str("ClientCert(<redacted>)"),
        }
    }
}

impl AdminCredentials {
    /// Reads credentials that live on this machine (files, environment). AWS sources are
    /// resolved by the AWS adapter.
    pub fn from_local_config(auth: &AuthConfig) -> Result<AdminCredentials, Error> {
        match auth {
            AuthConfig::CertFiles { cert_file, key_file, key_password_env } => {
                let read = |path: &std::path::Path, what: &str| {
                    std::fs::read_to_string(path).map_err(|e| {
                        Error::Credentials(format!("cannot read the admin's {what} {}: {e}", path.display()))
                    })
                };
                let key_password = match key_password_env {
                    None => None,
                    Some(var) => match std::env::var(var) {
                        Ok(password) if !password.is_empty() => Some(password),
                        _ => {
                            return Err(Error::Credentials(format!(
                                "environment variable {var} (auth.key_password_env) is not set: export the \
                                 passphrase of the admin's private key in it"
                            )))
                        }
                    },
                };
                Ok(AdminCredentials::ClientCert {
                    cert_pem: read(cert_file, "certificate")?,
                    key_pem: read(key_file, "private key")?,
                    key_password,
                })
            }
            AuthConfig::PasswordEnv { password_env } => match std::env::var(password_env) {
                Ok(password) if !password.is_empty() => Ok(AdminCredentials::Password(password)),
                _ => Err(Error::Credentials(format!(
                    "environment variable {password_env} (auth.password_env) is not set: export the admin's password in it"
                ))),
            },
            other => Err(Error::Credentials(format!(
                "auth method {:?} with an AWS source needs the AWS adapter (autouser_aws::AwsContext); \
                 this caller resolves only cert_file/key_file and password_env",
                other.method()
            ))),
        }
    }
}

/// TLS settings with the CA bundle already loaded.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub ca_pem: Option<String>,
}

impl TlsSettings {
    pub fn from_config(tls: &TlsConfig) -> Result<TlsSettings, Error> {
        let ca_pem = match &tls.ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Credentials(format!("cannot read tls.ca_file {}: {e}", path.display())))?,
            ),
        };
        Ok(TlsSettings { mode: tls.mode, ca_pem })
    }
}

/// Where and as whom the admin connects.
#[derive(Debug, Clone)]
pub struct ConnectParams<'a> {
    /// The server's name: what TLS verifies and, for RDS, what the IAM token is signed for.
    pub host: &'a str,
    pub port: u16,
    /// Where to connect, when not where `host` resolves to (libpq's `hostaddr`).
    pub hostaddr: Option<std::net::IpAddr>,
    pub dbname: &'a str,
    pub user: &'a str,
    pub tls: &'a TlsSettings,
    pub credentials: &'a AdminCredentials,
}

impl<'a> ConnectParams<'a> {
    /// The admin of `db`, logging in to `dbname`.
    pub fn admin_of(
        db: &'a autouser_policy::config::ResolvedDatabase,
        dbname: &'a str,
        tls: &'a TlsSettings,
        credentials: &'a AdminCredentials,
    ) -> ConnectParams<'a> {
        ConnectParams {
            host: &db.host,
            port: db.port,
            hostaddr: db.hostaddr,
            dbname,
            user: &db.admin_user.name,
            tls,
            credentials,
        }
    }

    fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An admin connection as the engine uses it: the client (it derefs to it), whether the admin
/// is a superuser (from the server's startup report, so it costs no query), the catalog query
/// [`sql::READ_STATE`] prepared at its first use, and the users this connection has seen exist.
///
/// Planning the catalog query costs several times more than running it, so a connection
/// reused across calls (the Lambda pool) plans it once: the admin's connections use
/// `plan_cache_mode=force_generic_plan`, so even the first execution builds the plan that
/// every later one reuses. The users seen tell the engine which starts are probably of new
/// users, which it tries in one round trip.
pub struct AdminConnection {
    client: Client,
    admin_is_superuser: Option<bool>,
    server_major: Option<u32>,
    read_state: tokio::sync::OnceCell<tokio_postgres::Statement>,
    object_listing: tokio::sync::OnceCell<ObjectListingStatements>,
    existing_users: std::sync::Mutex<std::collections::HashSet<String>>,
    creator_functions: std::sync::Mutex<CreatorFunctions>,
    /// Session-starts, -ends and reaper actions begun on this connection.
    calls: std::sync::atomic::AtomicU32,
    /// Users whose call here last timed out waiting for a lock: the next attempt ends their
    /// connections first ([`sql::END_HOLDING_CONNECTIONS`]).
    held_up_by: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The creator roles' functions ([`sql::Renderer`]) of a connection.
#[derive(Debug, Default)]
struct CreatorFunctions {
    /// The creator roles [`AdminConnection::make_creator_functions`] looked at.
    considered: BTreeSet<String>,
    /// Those whose function the connection's temporary schema holds, as last seen.
    made: BTreeSet<String>,
}

/// The object listing queries, prepared.
pub(crate) struct ObjectListingStatements {
    pub schemas: tokio_postgres::Statement,
    pub relations: tokio_postgres::Statement,
    pub routines: tokio_postgres::Statement,
}

/// Users an [`AdminConnection`] remembers before it starts over (a few hundred KiB).
const REMEMBERED_USERS: usize = 10_000;

impl fmt::Debug for AdminConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConnection")
            .field("admin_is_superuser", &self.admin_is_superuser)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for AdminConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl AdminConnection {
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the admin is a superuser, as the server reported at login; `None` if it did
    /// not report it (a connection pooler in between may not).
    pub fn admin_is_superuser(&self) -> Option<bool> {
        self.admin_is_superuser
    }

    /// The server's major version (`16` of `16.4`), as it reported at login.
    pub fn server_major(&self) -> Option<u32> {
        self.server_major
    }

    /// [`sql::READ_STATE`], prepared on its first use (one round trip).
    pub(crate) async fn read_state(&self) -> Result<&tokio_postgres::Statement, tokio_postgres::Error> {
        self.read_state
            .get_or_try_init(|| {
                self.client
                    .prepare_typed(sql::READ_STATE, &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY, Type::TEXT, Type::TEXT])
            })
            .await
    }

    /// [`sql::LIST_SCHEMAS`], [`sql::LIST_RELATIONS`] and [`sql::LIST_ROUTINES`], prepared on
    /// first use, for sessions with object permissions.
    pub(crate) async fn object_listing(&self) -> Result<&ObjectListingStatements, tokio_postgres::Error> {
        self.object_listing
            .get_or_try_init(|| async {
                let (schemas, relations, routines) = tokio::try_join!(
                    self.client.prepare_typed(sql::LIST_SCHEMAS, &[Type::TEXT, Type::TEXT_ARRAY]),
                    self.client.prepare_typed(
                        sql::LIST_RELATIONS,
                        &[Type::TEXT, Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY]
                    ),
                    self.client.prepare_typed(sql::LIST_ROUTINES, &[Type::TEXT, Type::BOOL, Type::TEXT_ARRAY]),
                )?;
                Ok(ObjectListingStatements { schemas, relations, routines })
            })
            .await
    }

    /// Makes the creator roles' functions ([`sql::make_creator_functions`], one round trip) when
    /// this connection has not looked for them yet, or when `creator` was not among the
    /// creators it looked at (one made since). Outside any transaction: the functions live as
    /// long as the connection.
    pub(crate) async fn make_creator_functions(&self, group: &str, creator: &str) -> Result<(), tokio_postgres::Error> {
        let looked_at = self.creator_functions.lock().is_ok_and(|functions| functions.considered.contains(creator));
        if looked_at {
            return Ok(());
        }
        let mut found = CreatorFunctions::default();
        for message in self.client.simple_query(&sql::make_creator_functions(group)).await? {
            if let SimpleQueryMessage::Row(row) = message {
                let name = row.get("creator").unwrap_or_default().to_string();
                if row.get("has_function") == Some("t") {
                    found.made.insert(name.clone());
                }
                found.considered.insert(name);
            }
        }
        tracing::debug!(made = ?found.made, considered = found.considered.len(), "creator functions");
        if let Ok(mut functions) = self.creator_functions.lock() {
            *functions = found;
        }
        Ok(())
    }

    /// Records what a transaction saw of `creator`'s function: whether the temporary schema of
    /// the server session it ran in holds it. It can be gone though this connection made it
    /// (`DISCARD TEMP`, or a pooler in transaction mode that hands the next transaction to
    /// another server session); from then on the creator's statements run after `SET ROLE`.
    pub(crate) fn saw_creator_function(&self, creator: &str, present: bool) {
        let Ok(mut functions) = self.creator_functions.lock() else { return };
        if present {
            functions.made.insert(creator.to_string());
        } else if functions.made.remove(creator) {
            tracing::warn!(%creator, "the creator role's function is gone from the server session (DISCARD TEMP, \
                or a pooler in transaction mode): its statements run after SET ROLE, which costs more");
        }
    }

    /// Counts a session-start, -end or reaper action begun on this connection.
    pub(crate) fn count_call(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many session-starts, -ends and reaper actions were begun on this connection.
    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The creator roles whose function this connection has (see [`sql::Renderer`]).
    pub(crate) fn creator_functions(&self) -> BTreeSet<String> {
        self.creator_functions.lock().map(|functions| functions.made.clone()).unwrap_or_default()
    }

    /// Whether `user` was seen to exist on this connection (and not seen dropped since).
    pub(crate) fn user_seen(&self, user: &str) -> bool {
        self.existing_users.lock().map(|users| users.contains(user)).unwrap_or(false)
    }

    /// Remembers that a call for `user` timed out waiting for a lock, which only a transaction
    /// of the user's own holds that long: see [`AdminConnection::take_held_up_by`].
    pub(crate) fn held_up_by(&self, user: &str) {
        if let Ok(mut users) = self.held_up_by.lock() {
            users.insert(user.to_string());
        }
    }

    /// Whether the last attempt for `user` was held up, forgetting it: the caller ends the
    /// user's connections in this attempt.
    pub(crate) fn take_held_up_by(&self, user: &str) -> bool {
        self.held_up_by.lock().is_ok_and(|mut users| users.remove(user))
    }

    /// Remembers whether `user` exists after what this connection read or did.
    pub(crate) fn saw_user(&self, user: &str, exists: bool) {
        let Ok(mut users) = self.existing_users.lock() else { return };
        if !exists {
            users.remove(user);
            return;
        }
        if users.len() >= REMEMBERED_USERS {
            users.clear();
        }
        users.insert(user.to_string());
    }
}

/// Opens an admin connection for the engine; see [`connect`].
pub async fn connect_admin(params: &ConnectParams<'_>) -> Result<AdminConnection, Error> {
    let (client, LoginReport { admin_is_superuser, server_major }) = open(params).await?;
    Ok(AdminConnection {
        client,
        admin_is_superuser,
        server_major,
        read_state: tokio::sync::OnceCell::new(),
        object_listing: tokio::sync::OnceCell::new(),
        existing_users: std::sync::Mutex::new(std::collections::HashSet::new()),
        creator_functions: std::sync::Mutex::new(CreatorFunctions::default()),
        calls: std::sync::atomic::AtomicU32::new(0),
        held_up_by: std::sync::Mutex::new(std::collections::HashSet::new()),
    })
}

/// Opens an admin connection and drives it on the current tokio runtime.
pub async fn connect(params: &ConnectParams<'_>) -> Result<Client, Error> {
    open(params).await.map(|(client, _)| client)
}

/// The client, driven on the current tokio runtime, and the server's `is_superuser` report.
async fn open(params: &ConnectParams<'_>) -> Result<(Client, LoginReport), Error> {
    let endpoint = params.endpoint();
    if params.tls.mode != TlsMode::VerifyFull {
        tracing::warn!(%endpoint, mode = ?params.tls.mode, "TLS verification is lowered by configuration (tls.mode)");
    }
    let mut config = tokio_postgres::Config::new();
    config
        .host(params.host)
        .port(params.port)
        .dbname(params.dbname)
        .user(params.user)
        .application_name("pg-autouser")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVES_IDLE)
        .keepalives_interval(KEEPALIVES_INTERVAL)
        .keepalives_retries(KEEPALIVES_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .options(format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
             -c plan_cache_mode=force_generic_plan -c search_path={ADMIN_SEARCH_PATH}",
            STATEMENT_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis()
        ));
    if let Some(address) = params.hostaddr {
        config.hostaddr(address);
    }
    if let AdminCredentials::Password(password) = params.credentials {
        config.password(password);
    }
    let connecting = async {
        if params.tls.mode == TlsMode::Disable {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            let report = LoginReport::of(&connection);
            tokio::spawn(drive(connection));
            Ok::<_, ConnectFailure>((client, report))
        } else {
            config.ssl_mode(SslMode::Require);
            let client_identity = match params.credentials {
                AdminCredentials::ClientCert { cert_pem, key_pem, key_password } => {
                    Some(ClientIdentity { cert_pem, key_pem, key_password: key_password.as_deref() })
                }
                AdminCredentials::Password(_) => None,
            };
            let (tls, failure) =
                tls::connector(params.tls.mode, params.tls.ca_pem.as_deref(), client_identity, params.host)?;
            let (client, connection) =
                config.connect(tls).await.map_err(|error| ConnectFailure::Tls { error, failure })?;
            let report = LoginReport::of(&connection);
            tokio::spawn(drive(connection));
            Ok((client, report))
        }
    };
    let result: Result<(Client, LoginReport), ConnectFailure> =
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting).await {
            Ok(result) => result,
            Err(_) => {
                return Err(Error::Unreachable { endpoint, detail: "timed out connecting".into() });
            }
        };
    result.map_err(|failure| match failure {
        ConnectFailure::Setup(error) => error,
        ConnectFailure::Postgres(error) => classify_connect_error(error, params, endpoint, None),
        ConnectFailure::Tls { error, failure } => {
            let verify_failure = failure.lock().ok().and_then(|slot| slot.clone());
            classify_connect_error(error, params, endpoint, verify_failure)
        }
    })
}

/// What the server reports about the session at login.
struct LoginReport {
    admin_is_superuser: Option<bool>,
    server_major: Option<u32>,
}

impl LoginReport {
    fn of<S, T>(connection: &tokio_postgres::Connection<S, T>) -> LoginReport
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        LoginReport {
            admin_is_superuser: connection.parameter("is_superuser").map(|value| value == "on"),
            server_major: connection
                .parameter("server_version")
                .and_then(|version| version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()),
        }
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!(%error, "admin connection closed with an error");
    }
}

enum ConnectFailure {
    Setup(Error),
    Postgres(tokio_postgres::Error),
    /// A failure over TLS, with what the server certificate's verification recorded.
    Tls {
        error: tokio_postgres::Error,
        failure: FailureSlot,
    },
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectFailure::Postgres(e)
    }
}

impl From<Error> for ConnectFailure {
    fn from(e: Error) -> Self {
        ConnectFailure::Setup(e)
    }
}

fn classify_connect_error(
    error: tokio_postgres::Error,
    params: &ConnectParams<'_>,
    endpoint: String,
    verify_failure: Option<tls::VerifyFailure>,
) -> Error {
    let admin = params.user.to_string();
    if let Some(failure) = verify_failure {
        return Error::AdminAuthFailed {
            admin,
            endpoint,
            detail: format!("TLS handshake failed: {}", failure.explain(params.host)),
        };
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            return Error::MissingConnect { admin, db_name: params.dbname.to_string() };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return Error::DatabaseNotFound { db_name: params.dbname.to_string(), endpoint };
        }
        if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION || *code == SqlState::INVALID_PASSWORD {
            let hint = match params.credentials {
                AdminCredentials::ClientCert { .. } => {
                    "check that pg_hba.conf has a `hostssl ... cert` line for the admin and that the \
                     certificate's CN is the admin's name"
                }
                AdminCredentials::Password(_) => "check the admin's password and pg_hba.conf",
            };
            return Error::AdminAuthFailed { admin, endpoint, detail: format!("{}: {hint}", db.message()) };
        }
        return Error::Unreachable { endpoint, detail: db.message().to_string() };
    }
    if let Some(tls) = find_source::<openssl::ssl::Error>(&error) {
        let hint = if matches!(params.credentials, AdminCredentials::ClientCert { .. }) {
            "check that the server's ssl_ca_file holds the CA of the admin's certificate, and that \
             auth.cert_file holds the chain up to that CA"
        } else {
            "check the server's TLS settings (ssl, ssl_min_protocol_version)"
        };
        return Error::AdminAuthFailed {
            admin,
            endpoint,
            detail: format!("TLS handshake failed ({}): {hint}", error_chain(tls)),
        };
    }
    Error::Unreachable { endpoint, detail: error_chain(&error) }
}

fn find_source<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>()) {
                return Some(found);
            }
        }
        current = e.source();
    }
    None
}
