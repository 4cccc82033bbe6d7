//! The configuration file: which databases pg-autouser manages, how it logs in as their admin,
//! and the access policy (Teleport role documents, inline under `roles` or from `roles_file`).
//!
//! YAML, so JSON loads too. Unknown keys in our own sections are errors: a typo must not turn
//! into a silently ignored setting. Relative file paths are resolved against the directory of
//! the configuration file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::identity::{IdentityConfig, RawIdentity};
use crate::naming;
use crate::permissions::ImportRule;
use crate::policy::{Policy, PolicyError, Role};

pub const DEFAULT_MANAGED_GROUP: &str = "teleport-auto-user";
/// The default `object_inheritor`.
pub const DEFAULT_OBJECT_INHERITOR: &str = "teleport-object-inheritor";
pub const DEFAULT_PORT: u16 = 5432;
/// Role PostgreSQL on RDS requires for IAM authentication.
pub const RDS_IAM_ROLE: &str = "rds_iam";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid YAML or JSON at `{path}`: {message}")]
    Syntax { path: String, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("config `roles` or `roles_file`: {0}")]
    Policy(#[from] PolicyError),
    #[error("cannot read roles_file {path}: {source}")]
    ReadRoles { path: PathBuf, source: std::io::Error },
    #[error(
        "roles_file {path}, document {document}: not a Teleport role document or list of them at `{at}`: {message}"
    )]
    RolesSyntax { path: PathBuf, document: usize, at: String, message: String },
    #[error("role {role:?} is defined twice, in {first} and in {second}: keep one")]
    DuplicateRole { role: String, first: String, second: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// Values that replace the config file's, set by a deployment (environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub managed_group: Option<String>,
    pub admin_user_tag: Option<String>,
    pub default_database_tag: Option<String>,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// This cluster's name: people whose `origin_cluster` differs get `remote-<user>-<origin>`.
    pub cluster_name: Option<String>,
    /// Group every provisioned user belongs to; membership is what makes a user "managed".
    pub managed_group: String,
    /// The `NOLOGIN` role that `best_effort_reassign_and_drop` hands a dropped user's objects
    /// to (`REASSIGN OWNED`); created where missing, as the managed group is.
    pub object_inheritor: String,
    pub databases: Vec<DatabaseConfig>,
    pub tag_keys: TagKeys,
    pub policy: Policy,
    /// Sessions older than this, whose user has no live connection, are closed by the reaper.
    pub max_session_duration: std::time::Duration,
    /// How long the managed group's comment remembers a session ended without a ledger to
    /// record it (its user dropped, or its end delivered before its start), so that a start
    /// delivered that late is still refused. At least the longest time the delivery path can
    /// hold an event.
    pub redelivery_window: std::time::Duration,
    /// When a user's last session ends (or the reaper locks it), end its open connections
    /// too: `NOLOGIN` and `DROP ROLE` only stop new logins. Off by default.
    pub terminate_connections: bool,
    /// The reaper retries the drop of a user that an end locked because its drop was blocked
    /// (`best_effort_drop` with dependent objects, a hand-over that could not run), in the mode
    /// the blocked end recorded. Off by default: see docs/policies.md.
    pub retry_blocked_drops: bool,
    /// How many creator roles create and manage the users on PostgreSQL 16+ (0: none, the
    /// admin does; [`DEFAULT_CREATOR_ROLES`] unless set). Each user belongs to one, by its
    /// name's hash ([`naming::creator_role_for`]).
    pub creator_roles: u32,
    /// PostgreSQL's predefined roles (`pg_*`) that policies may grant; every other predefined
    /// role, and every role that is a member of one, is refused (`RefusedDbRole`).
    pub allowed_predefined_roles: BTreeSet<String>,
    /// Signed identity (`identity:`): the issuers whose tokens say who a person is. `None`:
    /// events are taken on trust.
    pub identity: Option<IdentityConfig>,
}

/// `creator_roles` unless the config sets it. Creators are made as users need them, and each
/// is made once, so a start that makes one costs more: 128 are all made within the first few
/// hundred users, and keep each creator's share under 80 users up to 10,000 (BENCHMARKS.md,
/// "Scale"). Larger populations set more, up to [`naming::MAX_CREATOR_ROLES`].
pub const DEFAULT_CREATOR_ROLES: u32 = 128;

fn default_creator_roles() -> u32 {
    DEFAULT_CREATOR_ROLES
}

impl Config {
    /// The creator role of `db_user`, when `creator_roles` is set.
    pub fn creator_role_for(&self, db_user: &str) -> Option<String> {
        (self.creator_roles > 0).then(|| naming::creator_role_for(&self.managed_group, self.creator_roles, db_user))
    }

    /// Every creator role's name, in order.
    pub fn creator_role_names(&self) -> Vec<String> {
        (0..self.creator_roles).map(|index| naming::creator_role_name(&self.managed_group, index)).collect()
    }
}

/// Predefined roles that read, write or run anything as the server's operating system
/// account: `allowed_predefined_roles` refuses them.
const SERVER_ACCOUNT_ROLES: &[&str] = &["pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"];

/// The default `max_session_duration`: Teleport's default maximum session TTL.
pub const DEFAULT_MAX_SESSION_DURATION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The default `redelivery_window`: EventBridge's longest retry (maximum event age 24 hours),
/// which is also longer than Lambda's asynchronous retries (at most 6 hours).
pub const DEFAULT_REDELIVERY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseType {
    SelfHosted,
    Rds,
}

/// A configured database: where it is, as a static address or an RDS resource to look up.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// What events call this database.
    pub name: String,
    pub location: Location,
    pub db_type: DatabaseType,
    /// Static databases: the policy labels. RDS databases take theirs from the resource's tags.
    pub labels: BTreeMap<String, String>,
    /// Static databases: the admin. RDS databases take it from the admin tag.
    pub admin_user: Option<AdminUser>,
    /// RDS databases: the admin that session-ends and the reaper log in as once the admin tag
    /// is removed (provisioning turned off), so that open sessions are still closed. Starts
    /// always need the tag.
    pub fallback_admin_user: Option<AdminUser>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Self-hosted read replicas: the writer the admin makes its changes on (`primary:`).
    pub primary: Option<WriterEndpoint>,
    /// How long a session call on a read replica waits for it to replay the writer's commit.
    pub replica_wait: std::time::Duration,
    /// Whether sessions on a read replica are provisioned through its writer; `false` refuses
    /// them (`ReadOnlyEndpoint`).
    pub allow_replica: bool,
}

/// The default `replica_wait`.
pub const DEFAULT_REPLICA_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The writer of a read replica: where the admin creates, locks and drops users, which reach
/// the replica by replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterEndpoint {
    pub host: String,
    pub port: u16,
    /// Where to connect when it differs from what `host` resolves to.
    pub hostaddr: Option<IpAddr>,
    pub tls: TlsConfig,
    /// The admin's credentials on the writer when they differ from the replica's: an IAM token
    /// signed for the writer's region, for an RDS replica of a writer in another region.
    pub auth: Option<AuthConfig>,
}

impl WriterEndpoint {
    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        host_port(&self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Static { host: String, port: u16 },
    Rds(RdsLocator),
}

/// An RDS instance or Aurora cluster, resolved through the RDS API at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsLocator {
    pub resource: RdsResource,
    pub region: String,
    /// Connect to this address instead of resolving the endpoint's name, as libpq's
    /// `hostaddr` (a tunnel, a local emulator). TLS and the IAM token still use the name.
    pub hostaddr: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsResource {
    Instance(String),
    Cluster(String),
}

/// Tags of RDS resources that name the admin and its default database.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagKeys {
    #[serde(default = "default_admin_tag")]
    pub admin_user: String,
    #[serde(default = "default_admin_database_tag")]
    pub default_database: String,
}

pub const DEFAULT_ADMIN_TAG: &str = "teleport.dev/db-admin";
pub const DEFAULT_ADMIN_DATABASE_TAG: &str = "teleport.dev/db-admin-default-database";

fn default_admin_tag() -> String {
    DEFAULT_ADMIN_TAG.to_string()
}

fn default_admin_database_tag() -> String {
    DEFAULT_ADMIN_DATABASE_TAG.to_string()
}

impl Default for TagKeys {
    fn default() -> Self {
        TagKeys { admin_user: default_admin_tag(), default_database: default_admin_database_tag() }
    }
}

/// A database with everything a session needs known: address, admin, labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDatabase {
    pub name: String,
    pub db_type: DatabaseType,
    pub host: String,
    pub port: u16,
    /// Where to connect when it differs from what `host` resolves to.
    pub hostaddr: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub admin_user: AdminUser,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Set when this endpoint is a read replica: sessions log in here, and the admin makes
    /// its changes on the writer, then waits up to `replica_wait` for this endpoint to replay
    /// them.
    pub writer: Option<WriterEndpoint>,
    pub replica_wait: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    pub name: String,
    /// Database the admin logs into; when absent, the session's `db_name`.
    pub default_database: Option<String>,
}

/// Where the admin's credentials come from. The core only reads files and environment
/// variables; AWS sources (IAM tokens, Secrets Manager) are resolved by the AWS adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// X.509 client certificate (and chain) and key, PEM files; an encrypted key's passphrase
    /// in the environment variable `key_password_env` (libpq's `sslpassword`).
    CertFiles { cert_file: PathBuf, key_file: PathBuf, key_password_env: Option<String> },
    /// X.509 client certificate and key, PEM, in a Secrets Manager secret.
    CertSecret { secret_arn: String },
    /// Password from an environment variable.
    PasswordEnv { password_env: String },
    /// RDS-style JSON secret (`username`, `password`, …) in Secrets Manager.
    PasswordSecret { secret_arn: String },
    /// RDS IAM authentication token.
    Iam { region: Option<String> },
}

impl AuthConfig {
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::CertFiles { .. } | AuthConfig::CertSecret { .. } => "cert",
            AuthConfig::PasswordEnv { .. } | AuthConfig::PasswordSecret { .. } => "password",
            AuthConfig::Iam { .. } => "iam",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Verify the server certificate chain and that it names the host.
    VerifyFull,
    /// Verify the chain only.
    VerifyCa,
    /// Encrypt, but accept any server certificate.
    Require,
    /// Plain text: for local experiments only.
    Disable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
}

impl Config {
    /// The JSON Schema (draft 2020-12) of the config file, derived from the types the loader
    /// reads: `schemas/config.schema.json`. It refuses unknown keys where the loader does; the
    /// loader checks more (names, addresses, durations, the roles) than a schema can say.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(RawConfig)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &Overrides::default())
    }

    /// [`Config::load`] with [`Overrides`].
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_with(&text, base, overrides)
    }

    /// Parses and validates a config; relative paths are resolved against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, base_dir, &Overrides::default())
    }

    /// [`Config::parse`], with `overrides` (deployment parameters) replacing the file's values
    /// before validation, so that every rule applies to them too.
    pub fn parse_with(text: &str, base_dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut raw: RawConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::Syntax { path: e.path().to_string(), message: e.inner().to_string() })?;
        if let Some(group) = &overrides.managed_group {
            raw.managed_group = Some(group.clone());
        }
        if let Some(tag) = &overrides.admin_user_tag {
            raw.tag_keys.admin_user = tag.clone();
        }
        if let Some(tag) = &overrides.default_database_tag {
            raw.tag_keys.default_database = tag.clone();
        }
        raw.validate(base_dir)
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| db.name == name)
    }

    /// The configured database for an RDS resource, if the config lists it.
    pub fn database_for(&self, locator: &RdsLocator) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| {
            matches!(&db.location, Location::Rds(l) if l.resource == locator.resource && l.region == locator.region)
        })
    }
}

impl DatabaseConfig {
    /// A database found by discovery and not listed in the config: named after the resource,
    /// IAM authentication, TLS verified against the RDS CA bundle, admin from the tags.
    pub fn discovered(locator: RdsLocator) -> DatabaseConfig {
        let name = match &locator.resource {
            RdsResource::Instance(id) | RdsResource::Cluster(id) => id.clone(),
        };
        DatabaseConfig {
            name,
            auth: AuthConfig::Iam { region: Some(locator.region.clone()) },
            location: Location::Rds(locator),
            db_type: DatabaseType::Rds,
            labels: BTreeMap::new(),
            admin_user: None,
            fallback_admin_user: None,
            tls: TlsConfig { mode: TlsMode::VerifyFull, ca_file: None },
            primary: None,
            replica_wait: DEFAULT_REPLICA_WAIT,
            allow_replica: true,
        }
    }

    /// The resolved form of a database with a static address; `None` for RDS databases,
    /// which the AWS adapter resolves.
    pub fn resolve_static(&self) -> Option<ResolvedDatabase> {
        let (Location::Static { host, port }, Some(admin_user)) = (&self.location, &self.admin_user) else {
            return None;
        };
        Some(ResolvedDatabase {
            name: self.name.clone(),
            db_type: self.db_type.clone(),
            host: host.clone(),
            port: *port,
            hostaddr: None,
            labels: self.labels.clone(),
            admin_user: admin_user.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            writer: self.primary.clone(),
            replica_wait: self.replica_wait,
        })
    }
}

impl ResolvedDatabase {
    /// The database the admin connects to for a session on `db_name`.
    pub fn admin_database<'a>(&'a self, db_name: &'a str) -> &'a str {
        self.admin_user.default_database.as_deref().unwrap_or(db_name)
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// The writer's view of this database: the same admin, credentials and labels at the
    /// writer's address (credentials for the writer's region when the writer says so).
    /// `None` when this endpoint is the writer.
    pub fn writer_database(&self) -> Option<ResolvedDatabase> {
        let writer = self.writer.as_ref()?;
        Some(ResolvedDatabase {
            host: writer.host.clone(),
            port: writer.port,
            hostaddr: writer.hostaddr,
            tls: writer.tls.clone(),
            auth: writer.auth.clone().unwrap_or_else(|| self.auth.clone()),
            writer: None,
            ..self.clone()
        })
    }
}

/// `host:port`, or `[v6]:port`.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A `max_session_duration` or `redelivery_window` as [`parse_duration`] reads it.
const DURATION_PATTERN: &str = r"^\s*[0-9]+[smhd]\s*$";

/// The config file of pg-autouser.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pg-autouser config")]
struct RawConfig {
    /// This cluster's name: people whose `origin_cluster` differs get `remote-<user>-<origin>`.
    #[schemars(length(min = 1))]
    cluster_name: Option<String>,
    /// Group every provisioned user belongs to (default `teleport-auto-user`).
    managed_group: Option<String>,
    /// The NOLOGIN role `best_effort_reassign_and_drop` hands dropped users' objects to
    /// (default `teleport-object-inheritor`).
    object_inheritor: Option<String>,
    #[schemars(length(min = 1))]
    databases: Vec<RawDatabase>,
    #[serde(default)]
    tag_keys: TagKeys,
    /// Teleport role documents, as `tctl get roles` prints them.
    #[serde(default)]
    roles: Vec<Role>,
    /// Role documents as `tctl get roles` prints them, merged with `roles`.
    roles_file: Option<PathBuf>,
    /// Custom labels on database objects, for `db_permissions`.
    #[serde(default)]
    import_rules: Vec<ImportRule>,
    /// Sessions older than this (e.g. `12h`; units s, m, h, d) whose user has no live
    /// connection are closed by the reaper.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    max_session_duration: Option<String>,
    /// How long an ended session's id is remembered to refuse its late start (default `24h`).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    redelivery_window: Option<String>,
    /// At a user's last session end, also end its open connections.
    #[serde(default)]
    terminate_connections: bool,
    /// The reaper retries the drop of a user an end locked because its drop was blocked.
    #[serde(default)]
    retry_blocked_drops: bool,
    /// On PostgreSQL 16+, up to this many NOLOGIN CREATEROLE roles create and manage the
    /// users, each its share, so that role statements cost the same at 10,000 users as at 100
    /// (default 128; about one per 80 users kept). Each is made by the first session that
    /// needs it. 0: the admin does everything, slower with every user kept.
    #[serde(default = "default_creator_roles")]
    #[schemars(range(max = 1024))]
    creator_roles: u32,
    /// PostgreSQL's predefined roles (`pg_*`, such as `pg_read_all_data`) that policies may
    /// grant. Any other predefined role, or a role that is a member of one, is refused.
    #[serde(default)]
    allowed_predefined_roles: Vec<String>,
    /// Signed identity: act only on who an identity provider's token says the person is.
    identity: Option<RawIdentity>,
}

/// A database: a static address (`uri`) or an RDS instance or Aurora cluster (`rds`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Database")]
#[schemars(extend("oneOf" = [{"required": ["uri"]}, {"required": ["rds"]}]))]
struct RawDatabase {
    /// What events call this database.
    #[schemars(length(min = 1))]
    name: String,
    /// Required with `uri`; an `rds:` database is of type `rds`.
    #[serde(rename = "type")]
    db_type: Option<DatabaseType>,
    /// `host`, `host:port`, `[v6]:port` or `postgres://host:port`, without credentials.
    uri: Option<String>,
    rds: Option<RawRds>,
    /// `uri:` databases only; RDS databases take their labels from the resource's tags.
    labels: Option<BTreeMap<String, String>>,
    /// `uri:` databases only; RDS databases take the admin from the admin tag.
    admin_user: Option<AdminUser>,
    /// `rds:` databases only: the admin of ends and the reaper once the admin tag is removed.
    fallback_admin_user: Option<AdminUser>,
    auth: Option<RawAuth>,
    tls: Option<RawTls>,
    /// `uri:` databases that are a read replica: where its writer is. Sessions use `uri`; the
    /// admin makes its changes on the writer and waits for the replica to replay them.
    primary: Option<RawPrimary>,
    /// How long a session call on a read replica waits for the replica to replay the writer's
    /// commit (default `10s`; units s, m, h, d); past it the call fails with `ReplicaBehind`,
    /// which is transient.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    replica_wait: Option<String>,
    /// `false`: refuse sessions on read replicas and reader endpoints (`ReadOnlyEndpoint`)
    /// instead of provisioning them through the writer (default `true`).
    allow_replica: Option<bool>,
}

/// The writer of a self-hosted read replica.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Primary")]
struct RawPrimary {
    /// `host`, `host:port`, `[v6]:port` or `postgres://host:port`, without credentials.
    uri: String,
    /// TLS to the writer; the entry's `tls` when absent.
    tls: Option<RawTls>,
}

/// An RDS instance or Aurora cluster, looked up through the RDS API.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rds")]
#[schemars(extend("oneOf" = [{"required": ["instance_id"]}, {"required": ["cluster_id"]}]))]
struct RawRds {
    #[schemars(length(min = 1))]
    instance_id: Option<String>,
    #[schemars(length(min = 1))]
    cluster_id: Option<String>,
    #[schemars(length(min = 1))]
    region: String,
    /// Connect to this address instead of the endpoint's name (libpq's `hostaddr`).
    hostaddr: Option<IpAddr>,
}

/// How the admin logs in: `cert` (`cert_file` and `key_file`, or `secret_arn`), `password`
/// (`password_env` or `secret_arn`) or `iam` (optional `region`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
struct RawAuth {
    #[schemars(extend("enum" = ["cert", "password", "iam"]))]
    method: String,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    key_password_env: Option<String>,
    password_env: Option<String>,
    secret_arn: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
struct RawTls {
    mode: TlsMode,
    ca_file: Option<PathBuf>,
}

impl RawConfig {
    fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let managed_group = self.managed_group.unwrap_or_else(|| DEFAULT_MANAGED_GROUP.to_string());
        naming::validate_identifier(&managed_group).map_err(|e| invalid("managed_group", e.to_string()))?;
        if managed_group.starts_with("pg_") || managed_group.starts_with("rds_") {
            return Err(invalid("managed_group", "the pg_ and rds_ prefixes belong to PostgreSQL and RDS"));
        }
        let object_inheritor = self.object_inheritor.unwrap_or_else(|| DEFAULT_OBJECT_INHERITOR.to_string());
        naming::validate_identifier(&object_inheritor).map_err(|e| invalid("object_inheritor", e.to_string()))?;
        if object_inheritor.starts_with("pg_") || object_inheritor.starts_with("rds_") {
            return Err(invalid("object_inheritor", "the pg_ and rds_ prefixes belong to PostgreSQL and RDS"));
        }
        if object_inheritor == managed_group {
            return Err(invalid(
                "object_inheritor",
                "must differ from managed_group: every managed user is a member of the group, and would own what the inheritor owns",
            ));
        }
        if let Some(name) = &self.cluster_name {
            if name.is_empty() {
                return Err(invalid("cluster_name", "must not be empty; remove it instead"));
            }
        }
        if self.databases.is_empty() {
            return Err(invalid("databases", "lists no database: add at least one"));
        }
        let mut databases: Vec<DatabaseConfig> = Vec::with_capacity(self.databases.len());
        for (index, raw) in self.databases.into_iter().enumerate() {
            let db = raw.validate(&format!("databases[{index}]"), base_dir, &managed_group)?;
            if databases.iter().any(|other| other.name == db.name) {
                return Err(invalid(
                    format!("databases[{index}].name"),
                    format!("database {:?} is listed twice", db.name),
                ));
            }
            databases.push(db);
        }
        for (field, key) in
            [("admin_user", &self.tag_keys.admin_user), ("default_database", &self.tag_keys.default_database)]
        {
            if key.is_empty() {
                return Err(invalid(format!("tag_keys.{field}"), "must not be empty"));
            }
        }
        let roles_file = self.roles_file.as_ref().map(|file| base_dir.join(file));
        let roles = merge_roles(self.roles, roles_file.as_deref())?;
        let max_session_duration = match &self.max_session_duration {
            None => DEFAULT_MAX_SESSION_DURATION,
            Some(text) => parse_duration(text).map_err(|m| invalid("max_session_duration", m))?,
        };
        let redelivery_window = match &self.redelivery_window {
            None => DEFAULT_REDELIVERY_WINDOW,
            Some(text) => parse_duration(text).map_err(|m| invalid("redelivery_window", m))?,
        };
        if self.creator_roles > naming::MAX_CREATOR_ROLES {
            return Err(invalid(
                "creator_roles",
                format!("is {}; at most {} are supported", self.creator_roles, naming::MAX_CREATOR_ROLES),
            ));
        }
        if self.creator_roles > 0 {
            let longest = naming::creator_role_name(&managed_group, self.creator_roles - 1);
            naming::validate_identifier(&longest).map_err(|_| {
                invalid(
                    "creator_roles",
                    format!(
                        "the creator role name {longest:?} is longer than {} bytes: use a shorter managed_group",
                        naming::MAX_IDENTIFIER_BYTES
                    ),
                )
            })?;
        }
        let mut allowed_predefined_roles = BTreeSet::new();
        for (index, role) in self.allowed_predefined_roles.into_iter().enumerate() {
            let field = format!("allowed_predefined_roles[{index}]");
            naming::validate_identifier(&role).map_err(|e| invalid(field.clone(), e.to_string()))?;
            if !role.starts_with("pg_") {
                return Err(invalid(field, format!("{role:?} is not a predefined role of PostgreSQL (pg_*)")));
            }
            if SERVER_ACCOUNT_ROLES.contains(&role.as_str()) {
                return Err(invalid(
                    field,
                    format!(
                        "{role:?} gives the server's operating system account, as much as superuser: never granted"
                    ),
                ));
            }
            allowed_predefined_roles.insert(role);
        }
        let identity = match self.identity {
            None => None,
            Some(raw) => Some(raw.validate(base_dir).map_err(|(field, message)| invalid(field, message))?),
        };
        Ok(Config {
            identity,
            allowed_predefined_roles,
            creator_roles: self.creator_roles,
            max_session_duration,
            redelivery_window,
            terminate_connections: self.terminate_connections,
            retry_blocked_drops: self.retry_blocked_drops,
            cluster_name: self.cluster_name,
            managed_group,
            object_inheritor,
            databases,
            tag_keys: self.tag_keys,
            policy: Policy::with_import_rules(roles, self.import_rules)?,
        })
    }
}

/// The roles of `roles:` and of `roles_file`, each with where it was written; a name defined
/// twice is an error naming both places.
fn merge_roles(inline: Vec<Role>, roles_file: Option<&Path>) -> Result<Vec<Role>, ConfigError> {
    let mut placed: Vec<(String, Role)> =
        inline.into_iter().enumerate().map(|(index, role)| (format!("roles[{index}]"), role)).collect();
    if let Some(path) = roles_file {
        placed.extend(read_roles_file(path)?);
    }
    let mut places: BTreeMap<&str, &str> = BTreeMap::new();
    for (place, role) in &placed {
        if let Some(first) = places.insert(&role.metadata.name, place) {
            return Err(ConfigError::DuplicateRole {
                role: role.metadata.name.clone(),
                first: first.to_string(),
                second: place.clone(),
            });
        }
    }
    Ok(placed.into_iter().map(|(_, role)| role).collect())
}

/// Role documents separated by `---`, as `tctl get roles > roles.yaml` writes them; a document
/// may also be a list of roles, as `tctl get roles --format=json` prints them.
fn read_roles_file(path: &Path) -> Result<Vec<(String, Role)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadRoles { path: path.into(), source })?;
    let mut roles = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let number = index + 1;
        let syntax = |at: String, message: String| ConfigError::RolesSyntax {
            path: path.to_path_buf(),
            document: number,
            at,
            message,
        };
        let value = serde_yaml_ng::Value::deserialize(document).map_err(|e| syntax(".".into(), e.to_string()))?;
        let place = |entry: Option<usize>| match entry {
            None => format!("{} document {number}", path.display()),
            Some(entry) => format!("{} document {number} entry {entry}", path.display()),
        };
        let role = |value: serde_yaml_ng::Value| {
            serde_path_to_error::deserialize::<_, Role>(value)
                .map_err(|e| syntax(e.path().to_string(), e.inner().to_string()))
        };
        match value {
            // An empty document, such as one a trailing `---` opens.
            serde_yaml_ng::Value::Null => {}
            serde_yaml_ng::Value::Sequence(items) => {
                for (entry, item) in items.into_iter().enumerate() {
                    roles.push((place(Some(entry)), role(item)?));
                }
            }
            value => roles.push((place(None), role(value)?)),
        }
    }
    Ok(roles)
}

impl RawDatabase {
    fn validate(self, at: &str, base_dir: &Path, managed_group: &str) -> Result<DatabaseConfig, ConfigError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{at}.name"), "must not be empty"));
        }
        let (location, db_type) = match (self.uri, self.rds) {
            (Some(uri), None) => {
                let (host, port) = parse_uri(&uri).map_err(|m| invalid(format!("{at}.uri"), m))?;
                if let Some(kind) = aurora_non_writer_endpoint(&host) {
                    return Err(invalid(
                        format!("{at}.uri"),
                        format!(
                            "{host} is an Aurora {kind} endpoint; automatic user provisioning is not compatible with \
                             Aurora reader endpoints: use the cluster (writer) endpoint, or rds: {{cluster_id: …}}"
                        ),
                    ));
                }
                let db_type =
                    self.db_type.ok_or_else(|| invalid(format!("{at}.type"), "is required: self-hosted or rds"))?;
                (Location::Static { host, port }, db_type)
            }
            (None, Some(rds)) => {
                if self.db_type == Some(DatabaseType::SelfHosted) {
                    return Err(invalid(format!("{at}.type"), "an rds: database is of type rds"));
                }
                for (field, present) in [("admin_user", self.admin_user.is_some()), ("labels", self.labels.is_some())] {
                    if present {
                        return Err(invalid(
                            format!("{at}.{field}"),
                            "comes from the RDS resource's tags for an rds: database: remove it here",
                        ));
                    }
                }
                (Location::Rds(rds.validate(&format!("{at}.rds"))?), DatabaseType::Rds)
            }
            _ => return Err(invalid(at, "needs exactly one of `uri` or `rds`")),
        };
        for (field, admin) in [("admin_user", &self.admin_user), ("fallback_admin_user", &self.fallback_admin_user)] {
            let Some(admin) = admin else { continue };
            naming::validate_identifier(&admin.name)
                .map_err(|e| invalid(format!("{at}.{field}.name"), e.to_string()))?;
            if admin.name == managed_group {
                return Err(invalid(format!("{at}.{field}.name"), "the admin cannot be the managed group"));
            }
            if let Some(db) = &admin.default_database {
                naming::validate_identifier(db)
                    .map_err(|e| invalid(format!("{at}.{field}.default_database"), e.to_string()))?;
            }
        }
        if self.admin_user.is_none() && matches!(location, Location::Static { .. }) {
            return Err(invalid(format!("{at}.admin_user"), "is required: name the admin pg-autouser logs in as"));
        }
        if self.fallback_admin_user.is_some() && matches!(location, Location::Static { .. }) {
            return Err(invalid(
                format!("{at}.fallback_admin_user"),
                "is for rds: databases, whose admin tag can be removed; a uri: database has admin_user",
            ));
        }
        let auth = match (self.auth, &location) {
            (Some(auth), _) => auth.validate(&format!("{at}.auth"), base_dir)?,
            (None, Location::Rds(rds)) => AuthConfig::Iam { region: Some(rds.region.clone()) },
            (None, Location::Static { .. }) => {
                return Err(invalid(format!("{at}.auth"), "is required: cert, password or iam"));
            }
        };
        let tls = match self.tls {
            None => TlsConfig { mode: TlsMode::VerifyFull, ca_file: None },
            Some(raw) => TlsConfig { mode: raw.mode, ca_file: raw.ca_file.map(|p| base_dir.join(p)) },
        };
        let primary = match (self.primary, &location) {
            (None, _) => None,
            (Some(_), Location::Rds(_)) => {
                return Err(invalid(
                    format!("{at}.primary"),
                    "is for uri: databases; an rds: read replica's writer is found through the RDS API",
                ));
            }
            (Some(raw), Location::Static { .. }) => {
                let (host, port) = parse_uri(&raw.uri).map_err(|m| invalid(format!("{at}.primary.uri"), m))?;
                let tls = match raw.tls {
                    None => tls.clone(),
                    Some(raw) => TlsConfig { mode: raw.mode, ca_file: raw.ca_file.map(|p| base_dir.join(p)) },
                };
                Some(WriterEndpoint { host, port, hostaddr: None, tls, auth: None })
            }
        };
        let replica_wait = match &self.replica_wait {
            None => DEFAULT_REPLICA_WAIT,
            Some(text) => parse_duration(text).map_err(|m| invalid(format!("{at}.replica_wait"), m))?,
        };
        let allow_replica = self.allow_replica.unwrap_or(true);
        if primary.is_some() && !allow_replica {
            return Err(invalid(
                format!("{at}.primary"),
                "names a writer, but allow_replica is false: remove one of them",
            ));
        }
        // RDS databases are verified against the RDS CA bundle shipped with pg-autouser.
        if db_type == DatabaseType::SelfHosted
            && matches!(tls.mode, TlsMode::VerifyFull | TlsMode::VerifyCa)
            && tls.ca_file.is_none()
        {
            return Err(invalid(
                format!("{at}.tls.ca_file"),
                "is required to verify the server: give the CA bundle that signed the server certificate",
            ));
        }
        if tls.mode == TlsMode::Disable && matches!(auth, AuthConfig::CertFiles { .. } | AuthConfig::CertSecret { .. })
        {
            return Err(invalid(format!("{at}.tls.mode"), "cert authentication needs TLS: use verify-full"));
        }
        Ok(DatabaseConfig {
            name: self.name,
            location,
            db_type,
            labels: self.labels.unwrap_or_default(),
            admin_user: self.admin_user,
            fallback_admin_user: self.fallback_admin_user,
            auth,
            tls,
            primary,
            replica_wait,
            allow_replica,
        })
    }
}

impl RawRds {
    fn validate(self, at: &str) -> Result<RdsLocator, ConfigError> {
        let resource = match (self.instance_id, self.cluster_id) {
            (Some(id), None) if !id.is_empty() => RdsResource::Instance(id),
            (None, Some(id)) if !id.is_empty() => RdsResource::Cluster(id),
            _ => return Err(invalid(at, "needs exactly one of instance_id or cluster_id")),
        };
        if self.region.is_empty() {
            return Err(invalid(format!("{at}.region"), "must not be empty"));
        }
        Ok(RdsLocator { resource, region: self.region, hostaddr: self.hostaddr })
    }
}

impl RawAuth {
    fn validate(self, at: &str, base_dir: &Path) -> Result<AuthConfig, ConfigError> {
        let RawAuth { method, cert_file, key_file, key_password_env, password_env, secret_arn, region } = self;
        let unexpected = |field: &str, present: bool| -> Result<(), ConfigError> {
            if present {
                Err(invalid(format!("{at}.{field}"), format!("does not apply to method {method:?}")))
            } else {
                Ok(())
            }
        };
        match method.as_str() {
            "cert" => {
                unexpected("password_env", password_env.is_some())?;
                unexpected("region", region.is_some())?;
                if key_password_env.as_deref() == Some("") {
                    return Err(invalid(format!("{at}.key_password_env"), "must name an environment variable"));
                }
                match (cert_file, key_file, secret_arn) {
                    (Some(cert), Some(key), None) => Ok(AuthConfig::CertFiles {
                        cert_file: base_dir.join(cert),
                        key_file: base_dir.join(key),
                        key_password_env,
                    }),
                    (None, None, Some(_)) if key_password_env.is_some() => Err(invalid(
                        format!("{at}.key_password_env"),
                        "does not apply to a secret: put the passphrase in the secret's private_key_password",
                    )),
                    (None, None, Some(arn)) => Ok(AuthConfig::CertSecret { secret_arn: arn }),
                    _ => Err(invalid(at, "method cert needs either cert_file and key_file, or secret_arn")),
                }
            }
            "password" => {
                unexpected("key_password_env", key_password_env.is_some())?;
                unexpected("cert_file", cert_file.is_some())?;
                unexpected("key_file", key_file.is_some())?;
                unexpected("region", region.is_some())?;
                match (password_env, secret_arn) {
                    (Some(var), None) if !var.is_empty() => Ok(AuthConfig::PasswordEnv { password_env: var }),
                    (None, Some(arn)) => Ok(AuthConfig::PasswordSecret { secret_arn: arn }),
                    _ => Err(invalid(at, "method password needs either password_env or secret_arn")),
                }
            }
            "iam" => {
                unexpected("key_password_env", key_password_env.is_some())?;
                unexpected("cert_file", cert_file.is_some())?;
                unexpected("key_file", key_file.is_some())?;
                unexpected("password_env", password_env.is_some())?;
                unexpected("secret_arn", secret_arn.is_some())?;
                Ok(AuthConfig::Iam { region })
            }
            other => {
                Err(invalid(format!("{at}.method"), format!("unknown method {other:?}: use cert, password or iam")))
            }
        }
    }
}

/// Aurora's reader endpoint (`<cluster>.cluster-ro-<id>.<region>.rds.amazonaws.com`) and custom
/// endpoints (`.cluster-custom-`, which usually group readers) cannot take the role changes.
fn aurora_non_writer_endpoint(host: &str) -> Option<&'static str> {
    let host = host.to_ascii_lowercase();
    if !host.ends_with(".rds.amazonaws.com") && !host.ends_with(".rds.amazonaws.com.cn") {
        return None;
    }
    if host.contains(".cluster-ro-") {
        Some("reader")
    } else if host.contains(".cluster-custom-") {
        Some("custom")
    } else {
        None
    }
}

/// `90s`, `30m`, `12h`, `2d`: a positive whole number and a unit.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration: write a number and s, m, h or d, e.g. 12h")),
    };
    match number.parse::<u64>().ok().and_then(|n| n.checked_mul(seconds_per_unit)) {
        Some(seconds) if seconds > 0 => Ok(std::time::Duration::from_secs(seconds)),
        _ => Err(format!("{text:?} is not a positive duration: e.g. 12h")),
    }
}

/// Parses `host`, `host:port`, `[v6]:port` or `postgres://host:port[/…]`.
fn parse_uri(uri: &str) -> Result<(String, u16), String> {
    let rest = uri.strip_prefix("postgres://").or_else(|| uri.strip_prefix("postgresql://")).unwrap_or(uri);
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry credentials: configure them under auth".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated [ in IPv6 address")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{uri:?} names no host: use host:port, e.g. localhost:5432"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(format!("invalid port {p:?}"))?,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AccessRequest, CreateDbUserMode, Traits};

    const EXAMPLE: &str = r#"
cluster_name: leaf
managed_group: teleport-auto-user
databases:
  - name: orders
    type: self-hosted
    uri: localhost:5432
    labels: {env: dev}
    admin_user: {name: teleport-admin, default_database: postgres}
    auth: {method: cert, cert_file: admin.crt, key_file: admin.key}
    tls: {mode: verify-full, ca_file: ca.pem}
roles:
  - kind: role
    version: v7
    metadata: {name: auto-db-users}
    spec:
      options: {create_db_user_mode: keep}
      allow:
        db_labels: {"*": "*"}
        db_names: ["*"]
        db_roles: [reader, "{{internal.db_roles}}"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/autouser"))
    }

    #[test]
    fn the_documented_example_loads() {
        let config = parse(EXAMPLE).unwrap();
        let db = config.database("orders").unwrap().resolve_static().unwrap();
        assert_eq!((db.host.as_str(), db.port), ("localhost", 5432));
        assert_eq!(db.admin_database("app"), "postgres");
        assert_eq!(
            db.auth,
            AuthConfig::CertFiles {
                cert_file: "/etc/autouser/admin.crt".into(),
                key_file: "/etc/autouser/admin.key".into(),
                key_password_env: None
            }
        );
        assert_eq!(config.cluster_name.as_deref(), Some("leaf"));
    }

    #[test]
    fn json_loads_too() {
        let json = r#"{"databases":[{"name":"a","type":"rds","uri":"db.example.com",
            "admin_user":{"name":"teleport-admin"},"auth":{"method":"iam","region":"us-east-1"},
            "tls":{"mode":"require"}}]}"#;
        let config = parse(json).unwrap();
        assert_eq!(config.managed_group, DEFAULT_MANAGED_GROUP);
        let db = config.databases[0].resolve_static().unwrap();
        assert_eq!(db.port, 5432);
        assert_eq!(db.admin_database("app"), "app");
        assert_eq!(db.auth, AuthConfig::Iam { region: Some("us-east-1".into()) });
    }

    #[test]
    fn typo_in_a_field_names_the_field() {
        let text = EXAMPLE.replace("admin_user:", "admin_usr:");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("admin_usr"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let text = EXAMPLE.replace("type: self-hosted", "type: mysql");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("databases[0].type"), "{err}");
    }

    #[test]
    fn verify_full_without_ca_is_refused() {
        let text = EXAMPLE.replace("tls: {mode: verify-full, ca_file: ca.pem}", "tls: {mode: verify-full}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("databases[0].tls.ca_file"), "{err}");
    }

    #[test]
    fn auth_methods_need_their_fields() {
        let text = EXAMPLE.replace("{method: cert, cert_file: admin.crt, key_file: admin.key}", "{method: password}");
        assert!(parse(&text).unwrap_err().to_string().contains("password_env or secret_arn"));
        let text = EXAMPLE.replace(
            "{method: cert, cert_file: admin.crt, key_file: admin.key}",
            "{method: password, secret_arn: 'arn:aws:secretsmanager:us-east-1:1:secret:x'}",
        );
        assert!(matches!(parse(&text).unwrap().databases[0].auth, AuthConfig::PasswordSecret { .. }));
        let text = EXAMPLE.replace("{method: cert, cert_file: admin.crt, key_file: admin.key}", "{method: kerberos}");
        assert!(parse(&text).unwrap_err().to_string().contains("databases[0].auth.method"));
    }

    #[test]
    fn duplicate_database_names_are_refused() {
        let text = r#"{"databases":[
          {"name":"a","type":"rds","uri":"h","admin_user":{"name":"x"},"auth":{"method":"iam"},"tls":{"mode":"require"}},
          {"name":"a","type":"rds","uri":"h","admin_user":{"name":"x"},"auth":{"method":"iam"},"tls":{"mode":"require"}}]}"#;
        assert!(parse(text).unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn rds_databases_default_to_iam_and_take_admin_and_labels_from_tags() {
        let text = r#"
tag_keys: {admin_user: corp/db-admin}
databases:
  - name: orders
    rds: {instance_id: orders-prod, region: eu-west-1}
  - name: analytics
    rds: {cluster_id: analytics, region: us-east-1}
    tls: {mode: verify-ca}
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.tag_keys.admin_user, "corp/db-admin");
        assert_eq!(config.tag_keys.default_database, DEFAULT_ADMIN_DATABASE_TAG);

        let orders = config.database("orders").unwrap();
        assert_eq!(orders.db_type, DatabaseType::Rds);
        assert_eq!(orders.auth, AuthConfig::Iam { region: Some("eu-west-1".into()) });
        assert_eq!(orders.tls, TlsConfig { mode: TlsMode::VerifyFull, ca_file: None });
        assert!(orders.resolve_static().is_none());
        assert_eq!(
            config.database("analytics").unwrap().location,
            Location::Rds(RdsLocator {
                resource: RdsResource::Cluster("analytics".into()),
                region: "us-east-1".into(),
                hostaddr: None
            })
        );
    }

    #[test]
    fn rds_databases_refuse_static_fields() {
        let base = "databases:\n  - name: o\n    rds: {instance_id: i, region: us-east-1}\n";
        for (extra, field) in [
            ("    admin_user: {name: x}\n", "databases[0].admin_user"),
            ("    labels: {env: x}\n", "databases[0].labels"),
            ("    type: self-hosted\n", "databases[0].type"),
            ("    uri: h:1\n", "needs exactly one of `uri` or `rds`"),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        let err = parse("databases:\n  - name: o\n    rds: {instance_id: i, cluster_id: c, region: r}\n").unwrap_err();
        assert!(err.to_string().contains("exactly one of instance_id or cluster_id"), "{err}");
    }

    #[test]
    fn fallback_admin_user_is_for_rds_databases_only() {
        let rds = "databases:\n  - name: o\n    rds: {instance_id: i, region: us-east-1}\n    fallback_admin_user: {name: break-glass}\n";
        let db = parse(rds).unwrap().databases.remove(0);
        assert_eq!(db.fallback_admin_user.map(|a| a.name), Some("break-glass".to_string()));
        assert_eq!(db.admin_user, None);
        let bad_name = rds.replace("break-glass", &"x".repeat(70));
        assert!(parse(&bad_name).unwrap_err().to_string().contains("databases[0].fallback_admin_user.name"));
        let on_uri = EXAMPLE.replace("    admin_user:", "    fallback_admin_user: {name: x}\n    admin_user:");
        let err = parse(&on_uri).unwrap_err().to_string();
        assert!(err.contains("databases[0].fallback_admin_user") && err.contains("rds:"), "{err}");
    }

    #[test]
    fn aurora_reader_and_custom_endpoints_are_refused() {
        for host in [
            "orders.cluster-ro-abc123.us-east-1.rds.amazonaws.com",
            "analytics.cluster-custom-abc123.eu-west-1.rds.amazonaws.com",
        ] {
            let text = EXAMPLE.replace("localhost:5432", host);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("databases[0].uri") && err.contains("writer"), "{err}");
        }
        let writer = EXAMPLE.replace("localhost:5432", "orders.cluster-abc123.us-east-1.rds.amazonaws.com");
        assert!(parse(&writer).is_ok());
    }

    #[test]
    fn allowed_predefined_roles_are_pg_roles_that_do_not_reach_the_os_account() {
        assert!(parse(EXAMPLE).unwrap().allowed_predefined_roles.is_empty());
        let config = parse(&format!("allowed_predefined_roles: [pg_read_all_data, pg_monitor]\n{EXAMPLE}")).unwrap();
        assert_eq!(config.allowed_predefined_roles.iter().collect::<Vec<_>>(), ["pg_monitor", "pg_read_all_data"]);
        for (list, why) in [
            ("[reader]", "not a predefined role"),
            ("[pg_execute_server_program]", "operating system"),
            ("[pg_read_all_data, pg_write_server_files]", "allowed_predefined_roles[1]"),
        ] {
            let err = parse(&format!("allowed_predefined_roles: {list}\n{EXAMPLE}")).unwrap_err().to_string();
            assert!(err.contains(why), "{list}: {err}");
        }
    }

    #[test]
    fn redelivery_window_defaults_to_a_day_and_parses_units() {
        assert_eq!(parse(EXAMPLE).unwrap().redelivery_window.as_secs(), 24 * 3600);
        assert_eq!(parse(&format!("redelivery_window: 4d\n{EXAMPLE}")).unwrap().redelivery_window.as_secs(), 4 * 86400);
        let err = parse(&format!("redelivery_window: soon\n{EXAMPLE}")).unwrap_err().to_string();
        assert!(err.contains("redelivery_window"), "{err}");
    }

    #[test]
    fn max_session_duration_defaults_to_twelve_hours_and_parses_units() {
        assert_eq!(parse(EXAMPLE).unwrap().max_session_duration, DEFAULT_MAX_SESSION_DURATION);
        let config = parse(&format!("max_session_duration: 90m\n{EXAMPLE}")).unwrap();
        assert_eq!(config.max_session_duration.as_secs(), 5400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        for bad in ["0h", "12", "h", "12 hours", "-1h", "99999999999999999999d"] {
            let err = parse(&format!("max_session_duration: {bad:?}\n{EXAMPLE}")).unwrap_err().to_string();
            assert!(err.contains("max_session_duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn uris_parse() {
        assert_eq!(parse_uri("db:6432").unwrap(), ("db".into(), 6432));
        assert_eq!(parse_uri("postgres://db.example.com:5433/app").unwrap(), ("db.example.com".into(), 5433));
        assert_eq!(parse_uri("[::1]:5433").unwrap(), ("::1".into(), 5433));
        assert!(parse_uri("u:p@db:5432").is_err());
        assert!(parse_uri(":5432").is_err());
        assert!(parse_uri("db:0").is_err());
    }

    #[test]
    fn object_permissions_and_import_rules_load_and_are_checked() {
        let text = format!(
            "{EXAMPLE}        db_permissions:\n          - match: {{object_kind: table, environment: prod}}\n            \
             permissions: [SELECT]\nimport_rules:\n  - {{name: prod, priority: 1, match: {{schema: [public]}}, \
             add_labels: {{environment: prod}}}}\n"
        );
        let config = parse(&text).unwrap();
        assert!(config.policy.has_db_permissions());
        assert!(!parse(EXAMPLE).unwrap().policy.has_db_permissions());
        let err = parse(&text.replace("add_labels: {environment: prod}", "add_labels: {name: x}")).unwrap_err();
        assert!(err.to_string().contains("import_rules") && err.to_string().contains("built-in"), "{err}");
        let err = parse(&text.replace("[SELECT]", "[EXECUTE]")).unwrap_err().to_string();
        assert!(err.contains("allow.db_permissions entry 0") && err.contains("EXECUTE"), "{err}");
    }

    #[test]
    fn overrides_replace_the_file_and_are_validated() {
        let text = "managed_group: from-file\ndatabases:\n  - name: o\n    rds: {instance_id: i, region: us-east-1}\n";
        let overrides = Overrides {
            managed_group: Some("from-deployment".into()),
            admin_user_tag: Some("corp/admin".into()),
            default_database_tag: None,
        };
        let config = Config::parse_with(text, Path::new("/"), &overrides).unwrap();
        assert_eq!(config.managed_group, "from-deployment");
        assert_eq!(config.tag_keys.admin_user, "corp/admin");
        assert_eq!(config.tag_keys.default_database, DEFAULT_ADMIN_DATABASE_TAG);
        let reserved = Overrides { managed_group: Some("pg_group".into()), ..Overrides::default() };
        let err = Config::parse_with(text, Path::new("/"), &reserved).unwrap_err().to_string();
        assert!(err.contains("managed_group"), "{err}");
    }

    #[test]
    fn the_configs_of_these_tests_validate_against_the_committed_schema() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/config.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let rds = "tag_keys: {admin_user: corp/db-admin}\ndatabases:\n  - name: orders\n    rds: {instance_id: orders-prod, region: eu-west-1}\n    fallback_admin_user: {name: break-glass}\n";
        for text in [
            EXAMPLE.to_string(),
            rds.to_string(),
            format!("max_session_duration: 90m\nredelivery_window: 4d\nterminate_connections: true\n{EXAMPLE}"),
            format!("{DATABASE}roles_file: tctl-get-roles.yaml\n"),
        ] {
            let config: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
            let errors: Vec<String> = validator.iter_errors(&config).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:?}\n{text}");
        }
    }

    /// The fixtures of `tests/teleport-roles`, shaped as `tctl get roles` prints them.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/teleport-roles")
    }

    const DATABASE: &str = "databases:\n  - {name: orders, type: self-hosted, uri: 'localhost:5432', labels: {env: staging, team: data}, admin_user: {name: teleport-admin}, auth: {method: password, password_env: PW}, tls: {mode: require}}\n";

    fn in_fixtures(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &fixtures())
    }

    #[test]
    fn a_roles_file_as_tctl_get_roles_writes_it_loads_and_merges_with_roles() {
        let inline = "roles:\n  - {kind: role, version: v7, metadata: {name: inline}, spec: {options: {create_db_user_mode: keep}}}\n";
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.yaml\n{inline}")).unwrap();
        assert_eq!(
            config.policy.role_names().collect::<Vec<_>>(),
            ["access", "auditor", "auto-db-users", "db-staging", "editor", "inline", "legacy-db-users", "reviewer"]
        );
    }

    #[test]
    fn the_json_list_tctl_prints_loads_too() {
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.json\n")).unwrap();
        assert_eq!(config.policy.role_names().collect::<Vec<_>>(), ["access", "auto-db-users"]);
    }

    #[test]
    fn fixture_roles_grant_what_teleport_would() {
        let config = in_fixtures(&format!("{DATABASE}roles_file: tctl-get-roles.yaml\n")).unwrap();
        let db = config.database("orders").unwrap().resolve_static().unwrap();
        let traits = Traits {
            internal: BTreeMap::from([
                ("db_roles".to_string(), vec!["auditor".to_string()]),
                ("db_names".to_string(), vec!["app".to_string()]),
            ]),
            external: BTreeMap::from([
                ("groups".to_string(), vec!["db-writer".into(), "devs".into(), "db-admin_x".into()]),
                ("email".to_string(), vec!["alice@example.com".to_string()]),
            ]),
        };
        let ask = |roles: &[&str], db_name: &str| {
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            config.policy.evaluate(&AccessRequest {
                role_names: &roles,
                traits: &traits,
                database: "orders",
                labels: &db.labels,
                db_name,
                requested_db_roles: None,
            })
        };
        // `access` does not provision (create_db_user: false), so its {{internal.db_roles}}
        // grants nothing; admin_x is denied by ^admin_.*$; devs does not match ^db-(.*)$.
        let grant = ask(&["access", "auto-db-users", "db-staging", "editor"], "app").unwrap();
        assert_eq!(grant.mode, CreateDbUserMode::BestEffortDrop);
        assert_eq!(grant.db_roles.iter().map(String::as_str).collect::<Vec<_>>(), ["alice_ro", "reader", "writer"]);
        assert!(matches!(ask(&["access"], "app"), Err(PolicyError::ProvisioningOff { .. })));
        assert!(matches!(ask(&["db-staging"], "secret"), Err(PolicyError::DbNameDenied { .. })));
        // db-staging allows report_* and the person's db_names, nothing else.
        assert!(ask(&["db-staging"], "report_q3").is_ok());
        assert!(matches!(ask(&["db-staging"], "other"), Err(PolicyError::NoMatchingRole { .. })));
        // create_db_user: true without create_db_user_mode is keep.
        let legacy = ask(&["legacy-db-users"], "app").unwrap();
        assert_eq!((legacy.mode, legacy.db_roles.len()), (CreateDbUserMode::Keep, 1));
    }

    #[test]
    fn a_role_defined_twice_names_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = std::fs::read_to_string(fixtures().join("tctl-get-roles.yaml")).unwrap();
        std::fs::write(dir.path().join("roles.yaml"), &fixture).unwrap();
        let inline = "roles:\n  - {kind: role, version: v7, metadata: {name: db-staging}}\n";
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n{inline}"), dir.path()).unwrap_err();
        let roles_yaml = dir.path().join("roles.yaml").display().to_string();
        assert!(matches!(err, ConfigError::DuplicateRole { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("roles[0]") && message.contains(&format!("{roles_yaml} document 6")), "{message}");

        std::fs::write(
            dir.path().join("roles.yaml"),
            format!("{fixture}---\n{}", fixture.split("---\n").nth(1).unwrap()),
        )
        .unwrap();
        let message =
            Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("document 2") && message.contains("document 8") && message.contains("auditor"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_document_in_the_roles_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join("roles.yaml"), text).unwrap();
        write("kind: role\nversion: v7\nmetadata: {name: a}\n---\nkind: role\nversion: v7\nmetadata: {nam: b}\n");
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("roles.yaml, document 2") && err.contains("name"), "{err}");
        write("kind: role\nversion: v7\nmetadata: {name: a}\n---\n");
        assert_eq!(
            Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path())
                .unwrap()
                .policy
                .role_names()
                .count(),
            1
        );
        let err = Config::parse(&format!("{DATABASE}roles_file: missing.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read roles_file") && err.contains("missing.yaml"), "{err}");
        // A role the policy refuses is named, wherever it came from.
        write("kind: role\nversion: v7\nmetadata: {name: a}\nspec: {allow: {db_labels_expression: 'labels.env == \"x\"'}}\n");
        let err = Config::parse(&format!("{DATABASE}roles_file: roles.yaml\n"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("role \"a\"") && err.contains("allow.db_labels_expression"), "{err}");
    }
}
