//! What the pg-autouser Lambda functions share. Each function binary is a page of glue:
//! set up logging, build a [`State`] once per container, run [`handle`] for every invocation.
//!
//! Error classes, as callers see them:
//! - **permanent** (a person must act: policy refusal, name conflict, malformed event, missing
//!   privilege): a direct invoke gets a typed error whose `errorType` is [`Error::kind`]; an
//!   EventBridge event or SQS record is logged, counted and *not* retried;
//! - **transient** ([`Error::is_transient`]: database unreachable, contention, AWS throttling or
//!   outage, a timeout), and for an end every cause that is not the event's own
//!   ([`is_retried`]): the invocation fails (EventBridge) or the record is reported in
//!   `batchItemFailures` (SQS), so that Lambda or SQS retries it.

pub mod audit;
pub mod bus;
pub mod discovery;
pub mod input;
pub mod live_config;
pub mod metrics;
pub mod pool;
pub mod reaper;
pub mod reaper_totals;

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use audit::Auditor;
use autouser_aws::config_store::ConfigLocation;
use autouser_aws::jwks::JwksCache;
use autouser_aws::AwsContext;
use autouser_engine::{engine, replica, Error};
use autouser_policy::config::{Config, Overrides};
use autouser_policy::event::SessionEvent;
use autouser_policy::identity::{self, IdentityConfig, VerifiedIdentity};
use autouser_policy::request;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use tracing::Instrument;

pub use input::Function;
use input::Invocation;
use pool::replicas;

/// Default `source` of the EventBridge events the functions accept.
pub const DEFAULT_EVENT_SOURCE: &str = "autouser";

/// The longest one session event can take: the admin's connect (its timeout, and a second for
/// the TLS handshake) and the wait for the user's lock. An SQS record is started only while
/// this much of the invocation remains, so that a record never dies with the invocation.
pub const RECORD_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(
    autouser_engine::pg::CONNECT_TIMEOUT.as_secs() + 1 + autouser_engine::pg::LOCK_TIMEOUT.as_secs(),
);

/// Built once per container, outside the handler: config, AWS clients, cached secrets and RDS
/// lookups, and the admin connections kept open across warm invocations.
pub struct State {
    config: live_config::LiveConfig,
    aws: AwsContext,
    pool: pool::Pool,
    event_source: String,
    auditor: Auditor,
    /// The identity providers' keys of `jwks_uri` issuers, kept across warm invocations.
    jwks: JwksCache,
}

/// Why a container cannot start; logged, and Lambda reports an init error.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "set one of AUTOUSER_CONFIG (the YAML itself), AUTOUSER_CONFIG_FILE (a bundled file), \
         AUTOUSER_CONFIG_SSM_PARAMETER or AUTOUSER_CONFIG_S3_URI, not several"
    )]
    BothConfigSources,
    #[error(
        "set AUTOUSER_CONFIG (the YAML itself), AUTOUSER_CONFIG_FILE (a bundled file), \
         AUTOUSER_CONFIG_SSM_PARAMETER (a parameter name or ARN) or AUTOUSER_CONFIG_S3_URI (s3://bucket/key)"
    )]
    NoConfigSource,
    #[error("{0}")]
    ConfigSetting(String),
    #[error("the config could not be read: {0}")]
    StoredConfig(String),
    #[error(transparent)]
    Config(#[from] autouser_policy::config::ConfigError),
    #[error("{0}")]
    Discovery(String),
    #[error("{0}")]
    Reaper(String),
}

/// What the environment says, validated; no I/O but reading a config file.
#[derive(Debug)]
pub struct Settings {
    pub config: ConfigSource,
    pub event_source: String,
    /// Bus name or ARN for audit events; `None`: logged only.
    pub audit_bus: Option<String>,
    pub audit_source: String,
}

/// Where the config comes from.
#[derive(Debug)]
pub enum ConfigSource {
    /// `AUTOUSER_CONFIG` or `AUTOUSER_CONFIG_FILE`, read at start.
    Fixed(Config),
    /// `AUTOUSER_CONFIG_SSM_PARAMETER` or `AUTOUSER_CONFIG_S3_URI`, read through the SDK.
    Stored(live_config::StoredConfigSource),
}

impl ConfigSource {
    /// The container's config; a stored one is read now, and must load.
    pub async fn load(self, aws: &AwsContext, function: &'static str) -> Result<live_config::LiveConfig, InitError> {
        match self {
            ConfigSource::Fixed(config) => Ok(live_config::LiveConfig::fixed(config)),
            ConfigSource::Stored(source) => live_config::LiveConfig::load(aws, source, function).await,
        }
    }
}

impl Settings {
    /// From `AUTOUSER_CONFIG` (inline YAML; relative paths in it are resolved against
    /// `LAMBDA_TASK_ROOT`, where the function's bundle is), `AUTOUSER_CONFIG_FILE`,
    /// `AUTOUSER_CONFIG_SSM_PARAMETER` (`SecureString` allowed) or `AUTOUSER_CONFIG_S3_URI`
    /// (`s3://bucket/key`; both read again when `AUTOUSER_CONFIG_TTL`, default `60s`, has
    /// passed), exactly one of them;
    /// `AUTOUSER_EVENT_SOURCE` (default `autouser`), `AUTOUSER_AUDIT_EVENT_BUS` (a bus name or
    /// ARN; unset: audit events are logged only), `AUTOUSER_AUDIT_SOURCE` (default
    /// `autouser.audit`), and `AUTOUSER_MANAGED_GROUP`, `AUTOUSER_ADMIN_TAG`,
    /// `AUTOUSER_ADMIN_DATABASE_TAG`, which replace the config's `managed_group` and
    /// `tag_keys` (deployment parameters). Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, InitError> {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let overrides = Overrides {
            managed_group: var("AUTOUSER_MANAGED_GROUP"),
            admin_user_tag: var("AUTOUSER_ADMIN_TAG"),
            default_database_tag: var("AUTOUSER_ADMIN_DATABASE_TAG"),
        };
        let base_dir = std::path::PathBuf::from(var("LAMBDA_TASK_ROOT").unwrap_or_else(|| ".".to_string()));
        let sources =
            ["AUTOUSER_CONFIG", "AUTOUSER_CONFIG_FILE", "AUTOUSER_CONFIG_SSM_PARAMETER", "AUTOUSER_CONFIG_S3_URI"]
                .map(&var);
        let stored = |location| -> Result<ConfigSource, InitError> {
            let ttl = match var("AUTOUSER_CONFIG_TTL") {
                None => live_config::DEFAULT_CONFIG_TTL,
                Some(text) => autouser_policy::config::parse_duration(&text)
                    .map_err(|message| InitError::ConfigSetting(format!("AUTOUSER_CONFIG_TTL {message}")))?,
            };
            Ok(ConfigSource::Stored(live_config::StoredConfigSource {
                location,
                overrides: overrides.clone(),
                base_dir: base_dir.clone(),
                ttl,
            }))
        };
        let config = match sources {
            [Some(text), None, None, None] => ConfigSource::Fixed(Config::parse_with(&text, &base_dir, &overrides)?),
            [None, Some(path), None, None] => {
                ConfigSource::Fixed(Config::load_with(std::path::Path::new(&path), &overrides)?)
            }
            [None, None, Some(parameter), None] => stored(ConfigLocation::SsmParameter(parameter))?,
            [None, None, None, Some(uri)] => stored(
                ConfigLocation::from_s3_uri(&uri)
                    .map_err(|message| InitError::ConfigSetting(format!("AUTOUSER_CONFIG_S3_URI: {message}")))?,
            )?,
            [None, None, None, None] => return Err(InitError::NoConfigSource),
            _ => return Err(InitError::BothConfigSources),
        };
        Ok(Settings {
            config,
            event_source: var("AUTOUSER_EVENT_SOURCE").unwrap_or_else(|| DEFAULT_EVENT_SOURCE.to_string()),
            audit_bus: var("AUTOUSER_AUDIT_EVENT_BUS"),
            audit_source: var("AUTOUSER_AUDIT_SOURCE").unwrap_or_else(|| audit::DEFAULT_AUDIT_SOURCE.to_string()),
        })
    }
}

impl State {
    /// From the environment ([`Settings::from_vars`]) and the AWS SDK's usual variables.
    pub async fn from_env(function: Function) -> Result<State, InitError> {
        State::from_vars(|name| std::env::var(name).ok(), AwsContext::from_env().await, function.name()).await
    }

    /// From `var` ([`Settings::from_vars`]) and `aws`; `function` names the function in the
    /// config's failure metric.
    pub async fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        aws: AwsContext,
        function: &'static str,
    ) -> Result<State, InitError> {
        let settings = Settings::from_vars(var)?;
        let auditor = match settings.audit_bus {
            Some(bus) => Auditor::to_bus(aws.sdk_config(), bus, settings.audit_source),
            None => Auditor::log_only(),
        };
        let config = settings.config.load(&aws, function).await?;
        Ok(State::with_live_config(config, aws, settings.event_source).with_auditor(auditor))
    }

    /// A state that logs audit events only; see [`State::with_auditor`].
    pub fn new(config: Config, aws: AwsContext, event_source: String) -> State {
        State::with_live_config(live_config::LiveConfig::fixed(config), aws, event_source)
    }

    fn with_live_config(config: live_config::LiveConfig, aws: AwsContext, event_source: String) -> State {
        State {
            config,
            aws,
            pool: pool::Pool::default(),
            event_source,
            auditor: Auditor::log_only(),
            jwks: JwksCache::new(),
        }
    }

    /// The config in use now (read again from SSM or S3 when its TTL has passed).
    pub async fn config(&self) -> std::sync::Arc<Config> {
        self.config.get(&self.aws).await
    }

    pub fn with_auditor(self, auditor: Auditor) -> State {
        State { auditor, ..self }
    }

    /// The same state fetching `jwks_uri` keys through `jwks` (a private CA's roots).
    pub fn with_jwks(self, jwks: JwksCache) -> State {
        State { jwks, ..self }
    }

    /// Admin connections opened since the container started (for tests and metrics).
    pub fn connections_opened(&self) -> usize {
        self.pool.opened()
    }
}

/// A failed invocation, as Lambda reports it: `errorType` is the stable kind.
#[derive(Debug)]
pub struct FunctionError {
    pub kind: &'static str,
    pub message: String,
}

impl From<FunctionError> for Diagnostic {
    fn from(error: FunctionError) -> Diagnostic {
        Diagnostic { error_type: error.kind.to_string(), error_message: error.message }
    }
}

impl From<&Error> for FunctionError {
    fn from(error: &Error) -> FunctionError {
        FunctionError { kind: error.kind(), message: error.to_string() }
    }
}

/// Handles one invocation of `function`, whatever its input form.
pub async fn handle(state: &State, function: Function, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
    let span = tracing::info_span!("invocation", request_id = %event.context.request_id);
    let deadline = invocation_deadline(&event.context);
    async move {
        let invocation = match input::classify(event.payload, function, &state.event_source) {
            Ok(invocation) => invocation,
            Err(e) => {
                refuse_unreadable(state, function, None, &e.to_string()).await;
                return Err(FunctionError { kind: "EventInvalid", message: e.to_string() });
            }
        };
        match invocation {
            Invocation::Direct(event) => process(state, function, event).await.map_err(|e| FunctionError::from(&e)),
            Invocation::EventBridge(event) => match process(state, function, event).await {
                Ok(outcome) => Ok(outcome),
                Err(e) if is_retried(function, &e) => Err(FunctionError::from(&e)),
                // Retrying cannot help; the refusal is logged and counted.
                Err(e) => Ok(json!({"status": "refused", "kind": e.kind(), "reason": e.to_string()})),
            },
            Invocation::Sqs(records) => Ok(process_batch(state, function, records, deadline).await),
        }
    }
    .instrument(span)
    .await
}

/// When Lambda ends the invocation; `None` for a context that names no deadline
/// (`Context::default()`, as the tests build it).
fn invocation_deadline(context: &lambda_runtime::Context) -> Option<SystemTime> {
    (context.deadline != 0).then(|| context.deadline())
}

/// An SQS batch, in order. Returns the records to redeliver (`batchItemFailures`): those that
/// failed transiently; every later record of a user whose earlier record failed so, so that
/// a user's events are never applied out of the order of the queue (a FIFO queue's order,
/// kept across redeliveries); and every record left when less than [`RECORD_TIME_BUDGET`]
/// remains of the invocation, so that no record is cut off by its timeout (which would
/// redeliver the whole batch). Unreadable records and permanent refusals are not redelivered.
async fn process_batch(
    state: &State,
    function: Function,
    records: Vec<input::SqsRecord>,
    deadline: Option<SystemTime>,
) -> Value {
    let mut failures = Vec::new();
    let mut held_users = HashSet::new();
    let config = state.config().await;
    for record in records {
        let remaining = deadline.map(|deadline| deadline.duration_since(SystemTime::now()).unwrap_or_default());
        if remaining.is_some_and(|remaining| remaining < RECORD_TIME_BUDGET) {
            tracing::warn!(
                message_id = record.message_id,
                ?remaining,
                "too close to the invocation's deadline to start; left for redelivery"
            );
            failures.push(json!({"itemIdentifier": record.message_id}));
            continue;
        }
        let event = match record.event {
            Ok(event) => event,
            Err(e) => {
                refuse_unreadable(state, function, Some(&record.message_id), &e.to_string()).await;
                continue;
            }
        };
        let user = user_of(&event, config.identity.as_ref());
        if user.as_ref().is_some_and(|user| held_users.contains(user)) {
            tracing::info!(
                message_id = record.message_id,
                "held behind an earlier record of the same user that will be retried"
            );
            failures.push(json!({"itemIdentifier": record.message_id}));
            continue;
        }
        if matches!(process(state, function, event).await, Err(e) if is_retried(function, &e)) {
            failures.push(json!({"itemIdentifier": record.message_id}));
            held_users.extend(user);
        }
    }
    json!({"batchItemFailures": failures})
}

/// The person an event is for (name and origin cluster), as far as the raw event says, or,
/// when it leaves the name out, as its identity token claims (unverified: this only orders
/// records); an event without either is refused when processed, so it holds nothing back.
fn user_of(event: &Value, identity: Option<&IdentityConfig>) -> Option<(String, Option<String>)> {
    let named = event.get("user").and_then(Value::as_str).filter(|user| !user.is_empty()).map(str::to_string);
    let claimed = || {
        let token = event.get("identity_token")?.as_str()?;
        identity?.claimed_user(token)
    };
    let user = named.or_else(claimed)?;
    let origin_cluster = event.get("origin_cluster").and_then(Value::as_str).map(str::to_string);
    Some((user, origin_cluster))
}

/// Whether an EventBridge event or SQS record that failed with `error` is retried. A transient
/// error always is. An end is what locks a user, so it is also retried for every cause that is
/// not the event's own: a database whose admin tag was removed (turning provisioning off stops
/// starts, not ends), a writer demoted by a failover, an admin login refused (RDS IAM
/// throttling looks like that), a config or privilege being fixed. It is retried until its
/// queue gives it to the dead-letter queue, which alarms, rather than dropped. Only a
/// malformed event, a person's name that can never be a user, or an identity token that
/// failed verification (a forged or expired token never becomes valid; keys that could not be
/// read may) is the event's own.
pub fn is_retried(function: Function, error: &Error) -> bool {
    let events_own = match error {
        Error::Event(_) | Error::InvalidUserName { .. } => true,
        Error::IdentityUnverified { check, .. } => *check != identity::Check::Keys,
        _ => false,
    };
    error.is_transient() || (function == Function::SessionEnd && !events_own)
}

/// A payload or SQS record that is not a session event: logged, counted, audited, not retried.
async fn refuse_unreadable(state: &State, function: Function, message_id: Option<&str>, reason: &str) {
    tracing::warn!(message_id, error = reason, "refused an invocation it cannot read");
    metrics::refusal(function, "EventInvalid");
    state.auditor.record(function.name(), audit::of_refusal(function, None, None, "EventInvalid", reason)).await;
}

/// One session event: its identity verified (`identity:`), then decide, connect (from the
/// pool), apply. Logs, counts and audits the outcome.
async fn process(state: &State, function: Function, event: Value) -> Result<Value, Error> {
    let started = Instant::now();
    let config = state.config().await;
    let (verified, result) = match authenticate(state, &config, function, event.clone()).await {
        Ok((session, verified)) => (verified, process_event(state, config, function, session).await),
        Err(e) => (None, Err(e)),
    };
    let verified = verified.as_ref();
    match &result {
        Ok(outcome) => {
            let status = outcome.get("status").and_then(Value::as_str).unwrap_or_default();
            tracing::info!(status, "session event applied");
            metrics::outcome(function, status, started.elapsed());
            if let Some(audit) = audit::of_outcome(function, &event, verified, outcome) {
                state.auditor.record(function.name(), audit).await;
            }
        }
        Err(e) if is_retried(function, e) => {
            tracing::warn!(kind = e.kind(), error = %e, "failed; will be retried");
            metrics::transient_failure(function, e.kind());
        }
        Err(e) => {
            tracing::warn!(kind = e.kind(), error = %e, "session refused");
            metrics::refusal(function, e.kind());
            let audit = audit::of_refusal(function, Some(&event), verified, e.kind(), &e.to_string());
            state.auditor.record(function.name(), audit).await;
        }
    }
    result
}

/// The session event with its identity token verified and applied (`identity:` in the
/// config): the person, roles and traits are the token's. The token goes no further. A
/// `jwks_uri`'s keys come from the container's cache.
async fn authenticate(
    state: &State,
    config: &Config,
    function: Function,
    event: Value,
) -> Result<(SessionEvent, Option<VerifiedIdentity>), Error> {
    let event = SessionEvent::from_value(event)?;
    let purpose = match function {
        Function::SessionStart => identity::Purpose::Start,
        Function::SessionEnd => identity::Purpose::End,
    };
    state
        .jwks
        .authenticate(Some(&state.aws), config.identity.as_ref(), event, purpose)
        .await
        .map_err(|unverified| Error::from(autouser_policy::Refusal::from(unverified)))
}

/// Boxed: the engine's futures are deep, and an unboxed chain overflows the compiler's layout
/// recursion limit in the function binaries.
fn process_event(
    state: &State,
    config: std::sync::Arc<Config>,
    function: Function,
    event: SessionEvent,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Error>> + Send + '_>> {
    Box::pin(process_event_unboxed(state, config, function, event))
}

async fn process_event_unboxed(
    state: &State,
    config: std::sync::Arc<Config>,
    function: Function,
    event: SessionEvent,
) -> Result<Value, Error> {
    let span = tracing::info_span!("session", session_id = %event.session_id, database = %event.database, db_user = tracing::field::Empty);
    async {
        let config = &*config;
        let db = request::database(config, &event)?;
        // Turning provisioning off (removing the admin tag) stops starts, not ends.
        let db = match function {
            Function::SessionStart => state.aws.resolve_database(config, db).await?,
            Function::SessionEnd => state.aws.resolve_database_for_end(config, db).await?,
        };
        let outcome = match function {
            Function::SessionStart => {
                let req = request::prepare_start(config, &db, &event)?;
                tracing::Span::current().record("db_user", req.target.db_user.as_str());
                let outcome = match db.writer_database() {
                    None => {
                        state
                            .pool
                            .with_admin(&state.aws, &db, &req.target.admin_db_name, |connection| {
                                let req = &req;
                                async move { engine::session_start(&connection, req).await }
                            })
                            .await?
                    }
                    // A read replica: the changes on its writer, then the wait for the replica.
                    Some(writer_db) => {
                        let dbname = &req.target.admin_db_name;
                        let replica_connections = state.pool.replica_connections(&state.aws, &db, dbname).await;
                        state
                            .pool
                            .with_admin(&state.aws, &writer_db, dbname, |writer| {
                                let (req, replica_connections) = (&req, &replica_connections);
                                async move { replica::session_start(&writer, &replicas(replica_connections), req).await }
                            })
                            .await?
                    }
                };
                serde_json::to_value(outcome)
            }
            Function::SessionEnd => {
                let req = request::prepare_end(config, &db, &event)?;
                tracing::Span::current().record("db_user", req.target.db_user.as_str());
                // A read replica's changes are made on its writer, with the writer's other databases.
                let writer_db = db.writer_database();
                let acted_on = writer_db.as_ref().unwrap_or(&db);
                let others = state.pool.other_databases(&state.aws, acted_on);
                let replica_connections = state.pool.replica_connections(&state.aws, &db, &req.target.admin_db_name).await;
                let ended = state
                    .pool
                    .with_admin(&state.aws, acted_on, &req.target.admin_db_name, |connection| {
                        let (req, others, replica_connections) = (&req, &others, &replica_connections);
                        async move {
                            if replica_connections.is_empty() {
                                engine::session_end(&connection, req, others).await
                            } else {
                                replica::session_end(&connection, &replicas(replica_connections), req, others).await
                            }
                        }
                    })
                    .await;
                let outcome = match ended {
                    // The first run may have been applied: the rerun finds out, so that what
                    // it did is answered and audited.
                    Err(Error::EndUnconfirmed { planned, detail, .. }) => {
                        tracing::warn!(%detail, "the connection closed during the session-end's COMMIT; running it again");
                        state
                            .pool
                            .with_admin(&state.aws, acted_on, &req.target.admin_db_name, |connection| {
                                let (req, others, planned) = (&req, &others, planned.clone());
                                let replica_connections = &replica_connections;
                                async move {
                                    if replica_connections.is_empty() {
                                        engine::confirm_end(&connection, req, others, *planned).await
                                    } else {
                                        let replicas = replicas(replica_connections);
                                        replica::confirm_end(&connection, &replicas, req, others, *planned).await
                                    }
                                }
                            })
                            .await?
                    }
                    ended => ended?,
                };
                serde_json::to_value(outcome)
            }
        };
        Ok(outcome.expect("outcomes serialise"))
    }
    .instrument(span)
    .await
}

/// A function's `main`: logs, the per-container state, then invocations until Lambda stops
/// the container. A bad environment is logged and ends the process before any invocation.
pub async fn run(function: Function) -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let state = built_or_exit(function.name(), State::from_env(function).await);
    // Boxed: the binary's `main` future would otherwise hold the handler's whole future
    // inline, down to the AWS SDK's, and computing its layout came within a few levels of the
    // compiler's query depth limit (128), which only a build without incremental cache hits.
    lambda_runtime::run(lambda_runtime::service_fn(|event| Box::pin(handle(&state, function, event)))).await
}

/// What a function's `main` built from the environment; or the error logged and the process
/// ended, before any invocation (Lambda reports an init error).
pub(crate) fn built_or_exit<T>(function: &str, built: Result<T, InitError>) -> T {
    built.unwrap_or_else(|e| {
        tracing::error!(function, error = %e, "the function cannot start: fix its environment");
        std::process::exit(1)
    })
}

/// JSON logs on stdout (CloudWatch), `RUST_LOG` or `info`, and never the credential-bearing
/// targets below `warn`.
pub fn init_tracing() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in autouser_aws::CREDENTIAL_LOG_TARGETS {
        filter = filter.add_directive(format!("{target}=warn").parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_target(false)
        .without_time()
        .with_env_filter(filter)
        .init();
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONFIG: &str = "databases:
  - {name: main, type: self-hosted, uri: \"db:5432\", admin_user: {name: admin},
     auth: {method: password, password_env: PW}, tls: {mode: verify-full, ca_file: /ca.pem}}
roles: []
";

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, InitError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_refused_identity_token_is_not_retried_unless_its_keys_could_not_be_read() {
        let refused = |check| Error::IdentityUnverified { check, detail: String::new() };
        for function in [Function::SessionStart, Function::SessionEnd] {
            assert!(!is_retried(function, &refused(identity::Check::Signature)));
            assert!(!is_retried(function, &refused(identity::Check::Expired)));
        }
        assert!(is_retried(Function::SessionEnd, &refused(identity::Check::Keys)));
        assert!(!is_retried(Function::SessionStart, &refused(identity::Check::Keys)));
    }

    #[test]
    fn inline_config_with_defaults() {
        let settings = settings(&[("AUTOUSER_CONFIG", CONFIG), ("AUTOUSER_AUDIT_EVENT_BUS", "")]).unwrap();
        assert_eq!(settings.event_source, "autouser");
        assert_eq!(settings.audit_bus, None, "an empty bus is unset");
        assert_eq!(settings.audit_source, "autouser.audit");
    }

    #[test]
    fn config_file_and_audit_bus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autouser.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let settings = settings(&[
            ("AUTOUSER_CONFIG_FILE", path.to_str().unwrap()),
            ("AUTOUSER_EVENT_SOURCE", "proxy"),
            ("AUTOUSER_AUDIT_EVENT_BUS", "audit"),
            ("AUTOUSER_AUDIT_SOURCE", "proxy.audit"),
        ])
        .unwrap();
        assert_eq!(settings.event_source, "proxy");
        assert_eq!(settings.audit_bus.as_deref(), Some("audit"));
        assert_eq!(settings.audit_source, "proxy.audit");
    }

    #[test]
    fn deployment_parameters_replace_the_group_and_tag_keys() {
        let overridden = settings(&[
            ("AUTOUSER_CONFIG", CONFIG),
            ("AUTOUSER_MANAGED_GROUP", "platform-users"),
            ("AUTOUSER_ADMIN_TAG", "corp/db-admin"),
            ("AUTOUSER_ADMIN_DATABASE_TAG", "corp/db-admin-database"),
        ])
        .unwrap();
        let ConfigSource::Fixed(config) = overridden.config else { panic!("an inline config") };
        assert_eq!(config.managed_group, "platform-users");
        assert_eq!(config.tag_keys.admin_user, "corp/db-admin");
        assert_eq!(config.tag_keys.default_database, "corp/db-admin-database");
        let bad = settings(&[("AUTOUSER_CONFIG", CONFIG), ("AUTOUSER_MANAGED_GROUP", "pg_x")]).unwrap_err();
        assert!(bad.to_string().contains("managed_group"), "{bad}");
    }

    #[test]
    fn a_bad_environment_says_what_to_set() {
        let none = settings(&[]).unwrap_err().to_string();
        assert!(none.contains("AUTOUSER_CONFIG") && none.contains("AUTOUSER_CONFIG_FILE"), "{none}");
        let both = settings(&[("AUTOUSER_CONFIG", CONFIG), ("AUTOUSER_CONFIG_FILE", "/x")]).unwrap_err();
        assert!(matches!(both, InitError::BothConfigSources));
        let missing = settings(&[("AUTOUSER_CONFIG_FILE", "/nonexistent/autouser.yaml")]).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/autouser.yaml"), "{missing}");
        let invalid = settings(&[("AUTOUSER_CONFIG", "databases: 7\nroles: []\n")]).unwrap_err().to_string();
        assert!(invalid.contains("`databases`"), "{invalid}");
        let two = settings(&[("AUTOUSER_CONFIG", CONFIG), ("AUTOUSER_CONFIG_SSM_PARAMETER", "/p")]).unwrap_err();
        assert!(matches!(two, InitError::BothConfigSources));
        let uri = settings(&[("AUTOUSER_CONFIG_S3_URI", "configs/autouser.yaml")]).unwrap_err().to_string();
        assert!(uri.contains("AUTOUSER_CONFIG_S3_URI") && uri.contains("s3://"), "{uri}");
        let ttl = settings(&[("AUTOUSER_CONFIG_SSM_PARAMETER", "/p"), ("AUTOUSER_CONFIG_TTL", "soon")]).unwrap_err();
        assert!(ttl.to_string().contains("AUTOUSER_CONFIG_TTL"), "{ttl}");
    }

    #[test]
    fn a_stored_config_is_read_through_the_sdk_with_a_ttl() {
        let ssm = settings(&[("AUTOUSER_CONFIG_SSM_PARAMETER", "/pg-autouser/config"), ("AUTOUSER_CONFIG_TTL", "5m")])
            .unwrap();
        let ConfigSource::Stored(source) = ssm.config else { panic!("stored") };
        assert_eq!(source.location, ConfigLocation::SsmParameter("/pg-autouser/config".into()));
        assert_eq!(source.ttl, std::time::Duration::from_secs(300));
        let s3 = settings(&[("AUTOUSER_CONFIG_S3_URI", "s3://configs/autouser.yaml")]).unwrap();
        let ConfigSource::Stored(source) = s3.config else { panic!("stored") };
        assert_eq!(source.ttl, live_config::DEFAULT_CONFIG_TTL);
    }
}
