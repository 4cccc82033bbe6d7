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
use tokio_postgres::Client;

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
/// Logins the server refuses for want of a connection slot (`too_many_connections` 53300: its
/// `max_connections`, a database's or the admin's `CONNECTION LIMIT`), for want of resources
/// (53000), or because it is starting or stopping (`cannot_connect_now` 57P03) are tried this
/// many times in all: a burst of cold containers often finds a slot a moment later.
pub const LOGIN_ATTEMPTS: u32 = 3;
/// The waits between those attempts: exponential backoff with full jitter, a random time up
/// to `LOGIN_BACKOFF_BASE × 2^(n-1)` (never more than [`LOGIN_BACKOFF_CAP`]) before retry `n`,
/// so that the containers of a burst do not come back in step. At most 100 + 200 ms with
/// three attempts: with the attempts themselves, well within the session functions' 30 s.
pub const LOGIN_BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const LOGIN_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// A retry begins only within this time of the first attempt, so that a login takes at most
/// this and one [`CONNECT_TIMEOUT`] (a server slow to refuse is not waited on three times).
pub const LOGIN_RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Admin logins retried in this process because the server had no slot or was not accepting
/// connections ([`LOGIN_ATTEMPTS`]).
static LOGIN_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many admin logins this process has retried because the server refused them for want
/// of a connection slot or resources, or while starting or stopping (for logs and tests).
pub fn login_retries() -> u64 {
    LOGIN_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The wait before retry `retry` (1 for the first) of a refused login: full jitter, a uniform
/// random time between zero and the exponential backoff's ceiling.
fn login_backoff(retry: u32) -> Duration {
    let ceiling = LOGIN_BACKOFF_BASE.saturating_mul(1 << retry.saturating_sub(1).min(16)).min(LOGIN_BACKOFF_CAP);
    Duration::from_micros(rand::random_range(0..=ceiling.as_micros() as u64))
}

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
/// is a superuser (from the server's startup report, so it costs no query), the user's lock
/// and the catalog query ([`sql::LOCK_USER`], [`sql::READ_STATE`]) prepared at their first use, and the users this connection has seen exist.
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
    read_state: tokio::sync::OnceCell<ReadStatements>,
    object_listing: tokio::sync::OnceCell<ObjectListingStatements>,
    existing_users: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The creators whose function this connection saw missing ([`sql::Renderer`]).
    without_function: std::sync::Mutex<sql::CreatorsWithoutFunction>,
    /// Whether the server session has the check functions ([`sql::Check`]).
    check_functions: std::sync::Mutex<CheckFunctions>,
    /// Users whose call here last timed out waiting for a lock: the next attempt ends their
    /// connections first ([`sql::END_HOLDING_CONNECTIONS`]).
    held_up_by: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set on a read replica's writer: every `COMMIT` this connection sends is followed, in the
    /// same message, by [`sql::COMMIT_LSN`], whose answer is kept for [`AdminConnection::take_commit_lsn`].
    captures_commit_lsn: std::sync::atomic::AtomicBool,
    commit_lsn: std::sync::Mutex<Option<String>>,
}

/// Where a connection stands with the check functions ([`sql::make_check_functions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckFunctions {
    /// Not made yet, or gone from the server session since: the next call makes them.
    NotMade,
    Made,
    /// The admin may not create temporary objects in this database: the checks stay `DO`
    /// blocks on this connection.
    Unavailable,
}

/// The queries every call's first round trip runs, prepared together.
pub(crate) struct ReadStatements {
    /// [`sql::LOCK_USER`]: planning its views (`pg_locks`, `pg_stat_activity`) each time cost
    /// more than the rest of a warm call's statements on the server.
    pub lock_user: tokio_postgres::Statement,
    pub read_state: tokio_postgres::Statement,
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

    /// [`sql::LOCK_USER`] and [`sql::READ_STATE`], prepared on their first use (one round trip).
    pub(crate) async fn read_statements(&self) -> Result<&ReadStatements, tokio_postgres::Error> {
        self.read_state
            .get_or_try_init(|| async {
                let (lock_user, read_state) = tokio::try_join!(
                    self.client.prepare_typed(sql::LOCK_USER, &[Type::INT8]),
                    self.client.prepare_typed(
                        sql::READ_STATE,
                        &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY, Type::TEXT, Type::TEXT]
                    ),
                )?;
                Ok(ReadStatements { lock_user, read_state })
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

    /// Records what a transaction saw of `creator`'s function ([`sql::Renderer`]): whether the
    /// admin may call it, and whether the creator is ready (then a missing function means the
    /// functions cannot be made in this database: preflight's `creator_functions`). From then
    /// on the statements of a creator without one run after `SET ROLE`; a creator not ready gets
    /// its function from [`autouser_policy::plan::Step::PrepareCreator`] in the same
    /// transaction only where it can be made, so that transaction uses `SET ROLE` too.
    pub(crate) fn saw_creator_function(&self, creator: &str, callable: bool, ready: bool) {
        use sql::CreatorsWithoutFunction as Without;
        let Ok(mut without) = self.without_function.lock() else { return };
        let next = match (&*without, callable, ready) {
            (Without::All, true, _) => Without::None,
            (Without::All, false, _) => Without::All,
            (_, false, true) => {
                tracing::warn!(%creator, "the creator roles' functions cannot be made in this database (see preflight's \
                    creator_functions): their statements run after SET ROLE, which costs more at scale");
                Without::All
            }
            (Without::None, true, _) => Without::None,
            (Without::None, false, false) => Without::Some(BTreeSet::from([creator.to_string()])),
            (Without::Some(creators), callable, _) => {
                let mut creators = creators.clone();
                if callable {
                    creators.remove(creator);
                } else {
                    creators.insert(creator.to_string());
                }
                Without::Some(creators)
            }
        };
        *without = next;
    }

    /// Makes the check functions ([`sql::make_check_functions`]) unless the connection has them,
    /// outside any transaction: a call sends it first in its first flight, so it costs no
    /// round trip. A failure is only logged: the checks stay `DO` blocks.
    pub(crate) async fn make_check_functions(&self) {
        if self.check_functions.lock().map_or(true, |state| *state != CheckFunctions::NotMade) {
            return;
        }
        let made = self.client.batch_execute(&sql::make_check_functions()).await;
        let next = match &made {
            Ok(()) => CheckFunctions::Made,
            Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::warn!(error = %error_chain(error), "the admin may not create temporary objects in this \
                    database (TEMP): its checks run as DO blocks, which cost more");
                CheckFunctions::Unavailable
            }
            Err(error) => {
                tracing::debug!(error = %error_chain(error), "could not make the check functions");
                CheckFunctions::NotMade
            }
        };
        if let Ok(mut state) = self.check_functions.lock() {
            *state = next;
        }
    }

    /// Whether the connection has made the check functions (see [`sql::Check`]).
    pub(crate) fn has_check_functions(&self) -> bool {
        self.check_functions.lock().is_ok_and(|state| *state == CheckFunctions::Made)
    }

    /// Records whether a transaction's server session had the check functions. They can be
    /// gone though this connection made them (`DISCARD TEMP`, or a pooler in transaction mode
    /// that hands the next transaction to another server session): that transaction runs its
    /// checks as `DO` blocks, and the next call makes them again.
    pub(crate) fn saw_check_functions(&self, present: bool) {
        let Ok(mut state) = self.check_functions.lock() else { return };
        match (*state, present) {
            (CheckFunctions::Unavailable, false) => {}
            (_, true) => *state = CheckFunctions::Made,
            (_, false) => *state = CheckFunctions::NotMade,
        }
    }

    /// The creators whose statements this connection runs after `SET ROLE` ([`sql::Renderer`]).
    pub(crate) fn creators_without_function(&self) -> sql::CreatorsWithoutFunction {
        self.without_function.lock().map(|without| without.clone()).unwrap_or_default()
    }

    /// From now on, every `COMMIT` this connection sends asks in the same message for the
    /// server's WAL position after it ([`sql::COMMIT_LSN`]): a read replica's writer, whose
    /// callers wait for the replica to replay that far, at no added round trip.
    pub fn capture_commit_lsn(&self) {
        self.captures_commit_lsn.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn captures_commit_lsn(&self) -> bool {
        self.captures_commit_lsn.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps the WAL position a [`sql::COMMIT_LSN`] in `messages` answered, if any.
    pub(crate) fn saw_commit_lsn(&self, messages: &[tokio_postgres::SimpleQueryMessage]) {
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                if row.columns().first().is_some_and(|c| c.name() == sql::COMMIT_LSN_COLUMN) {
                    if let (Some(lsn), Ok(mut kept)) = (row.get(0), self.commit_lsn.lock()) {
                        *kept = Some(lsn.to_string());
                    }
                }
            }
        }
    }

    /// The WAL position after the last `COMMIT` this connection sent since the last take, when
    /// it captures them ([`AdminConnection::capture_commit_lsn`]).
    pub fn take_commit_lsn(&self) -> Option<String> {
        self.commit_lsn.lock().ok().and_then(|mut kept| kept.take())
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
        without_function: std::sync::Mutex::new(sql::CreatorsWithoutFunction::None),
        check_functions: std::sync::Mutex::new(CheckFunctions::NotMade),
        held_up_by: std::sync::Mutex::new(std::collections::HashSet::new()),
        captures_commit_lsn: std::sync::atomic::AtomicBool::new(false),
        commit_lsn: std::sync::Mutex::new(None),
    })
}

/// Opens an admin connection and drives it on the current tokio runtime.
pub async fn connect(params: &ConnectParams<'_>) -> Result<Client, Error> {
    open(params).await.map(|(client, _)| client)
}

/// The client, driven on the current tokio runtime, and the server's `is_superuser` report.
/// A login the server refuses for want of a slot, or while starting or stopping, is tried
/// again ([`LOGIN_ATTEMPTS`], [`login_backoff`]).
async fn open(params: &ConnectParams<'_>) -> Result<(Client, LoginReport), Error> {
    let endpoint = params.endpoint();
    if params.tls.mode != TlsMode::VerifyFull {
        tracing::warn!(%endpoint, mode = ?params.tls.mode, "TLS verification is lowered by configuration (tls.mode)");
    }
    let began = tokio::time::Instant::now();
    let mut attempts = 1;
    loop {
        let failure = match open_once(params, &endpoint).await {
            Ok(opened) => return Ok(opened),
            Err(failure) => failure,
        };
        let wait = login_backoff(attempts);
        let retry = attempts < LOGIN_ATTEMPTS && began.elapsed() + wait < LOGIN_RETRY_WINDOW;
        if let Some(code) = failure.refused_for_now().filter(|_| retry) {
            LOGIN_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%endpoint, admin = %params.user, sqlstate = code, attempt = attempts,
                wait_ms = wait.as_millis() as u64, "the server refused the admin's login for now; retrying");
            tokio::time::sleep(wait).await;
            attempts += 1;
            continue;
        }
        return Err(match failure {
            ConnectFailure::Setup(error) => error,
            ConnectFailure::Postgres(error) => classify_connect_error(error, params, endpoint, None, attempts),
            ConnectFailure::Tls { error, failure } => {
                let verify_failure = failure.lock().ok().and_then(|slot| slot.clone());
                classify_connect_error(error, params, endpoint, verify_failure, attempts)
            }
        });
    }
}

/// One login attempt.
async fn open_once(params: &ConnectParams<'_>, endpoint: &str) -> Result<(Client, LoginReport), ConnectFailure> {
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
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting).await {
        Ok(result) => result,
        Err(_) => Err(ConnectFailure::Setup(Error::Unreachable {
            endpoint: endpoint.to_string(),
            detail: "timed out connecting".into(),
        })),
    }
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

impl ConnectFailure {
    /// The SQLSTATE of a login the server refused for now and may accept in a moment: no
    /// connection slot (53300), no resources (53000), starting up or shutting down (57P03).
    fn refused_for_now(&self) -> Option<&str> {
        let error = match self {
            ConnectFailure::Setup(_) => return None,
            ConnectFailure::Postgres(error) | ConnectFailure::Tls { error, .. } => error,
        };
        let code = error.as_db_error()?.code();
        let for_now = [SqlState::TOO_MANY_CONNECTIONS, SqlState::INSUFFICIENT_RESOURCES, SqlState::CANNOT_CONNECT_NOW];
        for_now.contains(code).then(|| code.code())
    }
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

/// The error of a failed login; `attempts`: how many were made ([`LOGIN_ATTEMPTS`] when the
/// server kept refusing them for now).
fn classify_connect_error(
    error: tokio_postgres::Error,
    params: &ConnectParams<'_>,
    endpoint: String,
    verify_failure: Option<tls::VerifyFailure>,
    attempts: u32,
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
        if *code == SqlState::TOO_MANY_CONNECTIONS {
            return Error::TooManyConnections { admin, endpoint, detail: db.message().to_string(), attempts };
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
