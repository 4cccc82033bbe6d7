//! The databases: where each is (a static address, an RDS instance or Aurora cluster, a read
//! replica's writer), its resolved form for a session, and the checks of a `databases` entry.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::naming;

use super::admin::{RawAuth, RawTls};
use super::{
    invalid, parse_duration, AdminUser, AuthConfig, Config, ConfigError, TlsConfig, TlsMode, DURATION_PATTERN,
};

pub const DEFAULT_PORT: u16 = 5432;

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
    /// The reader endpoint of an Aurora cluster (`cluster_id` with `endpoint: reader`): sessions
    /// on any of its readers, provisioned through the writer.
    ClusterReaders(String),
}

impl RdsResource {
    /// The instance's or cluster's identifier.
    pub fn id(&self) -> &str {
        match self {
            RdsResource::Instance(id) | RdsResource::Cluster(id) | RdsResource::ClusterReaders(id) => id,
        }
    }
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
    /// Set when this endpoint is an Aurora reader endpoint, which spreads connections over the
    /// cluster's readers: the reader instances, each of which must have replayed the writer's
    /// change before a call answers. Empty when the cluster has no reader (the reader endpoint
    /// then reaches the writer). `None` for any other endpoint.
    pub reader_instances: Option<Vec<ReaderInstance>>,
}

/// A reader instance behind an Aurora reader endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInstance {
    /// The instance's identifier.
    pub id: String,
    pub host: String,
    pub port: u16,
}

impl Config {
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
            RdsResource::Instance(id) | RdsResource::Cluster(id) | RdsResource::ClusterReaders(id) => id.clone(),
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
            reader_instances: None,
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
            reader_instances: None,
            ..self.clone()
        })
    }

    /// The replicas a session on this entry may log in to, each of which must have replayed
    /// the writer's change before a call answers: the entry's own endpoint for a read replica,
    /// or each reader instance behind an Aurora reader endpoint. Empty when this endpoint is
    /// the writer, or a reader endpoint of a cluster without readers.
    pub fn replica_databases(&self) -> Vec<ResolvedDatabase> {
        if self.writer.is_none() {
            return Vec::new();
        }
        let Some(readers) = &self.reader_instances else {
            return vec![self.clone()];
        };
        readers
            .iter()
            .map(|reader| ResolvedDatabase {
                host: reader.host.clone(),
                port: reader.port,
                hostaddr: None,
                reader_instances: None,
                ..self.clone()
            })
            .collect()
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

/// A database: a static address (`uri`) or an RDS instance or Aurora cluster (`rds`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Database")]
#[schemars(extend("oneOf" = [{"required": ["uri"]}, {"required": ["rds"]}]))]
pub(super) struct RawDatabase {
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
    /// With `cluster_id`: which of the cluster's endpoints sessions use. `writer` (the default)
    /// is the cluster endpoint; `reader` is its reader endpoint, which spreads sessions over the
    /// readers: the admin makes its changes on the writer and waits for every reader instance
    /// to replay them.
    endpoint: Option<ClusterEndpoint>,
}

/// An Aurora cluster's endpoint that sessions use.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ClusterEndpoint {
    Writer,
    Reader,
}

impl RawDatabase {
    pub(super) fn validate(
        self,
        at: &str,
        base_dir: &Path,
        managed_group: &str,
    ) -> Result<DatabaseConfig, ConfigError> {
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
                            "{host} is an Aurora {kind} endpoint, which spreads sessions over several instances: \
                             name the cluster instead, rds: {{cluster_id: …, endpoint: reader}} for its reader \
                             endpoint, so that the admin finds its writer and waits for every reader"
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
        let resource = match (self.instance_id, self.cluster_id, self.endpoint) {
            (Some(_), None, Some(_)) => {
                return Err(invalid(
                    format!("{at}.endpoint"),
                    "is for Aurora clusters (cluster_id); an instance_id entry is that instance's endpoint",
                ))
            }
            (Some(id), None, None) if !id.is_empty() => RdsResource::Instance(id),
            (None, Some(id), Some(ClusterEndpoint::Reader)) if !id.is_empty() => RdsResource::ClusterReaders(id),
            (None, Some(id), None | Some(ClusterEndpoint::Writer)) if !id.is_empty() => RdsResource::Cluster(id),
            _ => return Err(invalid(at, "needs exactly one of instance_id or cluster_id")),
        };
        if self.region.is_empty() {
            return Err(invalid(format!("{at}.region"), "must not be empty"));
        }
        Ok(RdsLocator { resource, region: self.region, hostaddr: self.hostaddr })
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
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn verify_full_without_ca_is_refused() {
        let text = EXAMPLE.replace("tls: {mode: verify-full, ca_file: ca.pem}", "tls: {mode: verify-full}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("databases[0].tls.ca_file"), "{err}");
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
    fn an_aurora_reader_endpoint_is_a_cluster_with_endpoint_reader() {
        let entry = |rds: &str| format!("databases:\n  - name: r\n    rds: {rds}\n");
        let config = parse(&entry("{cluster_id: analytics, region: us-east-1, endpoint: reader}")).unwrap();
        let Location::Rds(locator) = &config.databases[0].location else { panic!("an rds: entry") };
        assert_eq!(locator.resource, RdsResource::ClusterReaders("analytics".into()));
        let config = parse(&entry("{cluster_id: analytics, region: us-east-1, endpoint: writer}")).unwrap();
        let Location::Rds(locator) = &config.databases[0].location else { panic!("an rds: entry") };
        assert_eq!(locator.resource, RdsResource::Cluster("analytics".into()));
        let err = parse(&entry("{instance_id: orders, region: us-east-1, endpoint: reader}")).unwrap_err();
        assert!(err.to_string().contains("databases[0].rds.endpoint"), "{err}");
        assert!(parse(&entry("{cluster_id: a, region: us-east-1, endpoint: custom}")).is_err());
    }

    #[test]
    fn the_replicas_of_an_entry_are_itself_or_the_readers_behind_its_reader_endpoint() {
        let config = parse(EXAMPLE).unwrap();
        let primary = config.databases[0].resolve_static().unwrap();
        assert_eq!(primary.replica_databases(), Vec::new(), "a writer has no replica to wait for");
        let writer = WriterEndpoint {
            host: "writer.internal".into(),
            port: 5432,
            hostaddr: None,
            tls: primary.tls.clone(),
            auth: None,
        };
        let standby = ResolvedDatabase { writer: Some(writer), ..primary.clone() };
        assert_eq!(standby.replica_databases(), vec![standby.clone()]);
        let reader = |id: &str| ReaderInstance { id: id.into(), host: format!("{id}.internal"), port: 5433 };
        let reader_endpoint = ResolvedDatabase {
            host: "analytics.cluster-ro-x.us-east-1.rds.amazonaws.com".into(),
            reader_instances: Some(vec![reader("analytics-2"), reader("analytics-3")]),
            ..standby.clone()
        };
        let replicas = reader_endpoint.replica_databases();
        let endpoints: Vec<String> = replicas.iter().map(ResolvedDatabase::endpoint).collect();
        assert_eq!(endpoints, ["analytics-2.internal:5433", "analytics-3.internal:5433"]);
        assert!(replicas.iter().all(|r| r.writer == standby.writer && r.reader_instances.is_none()));
        let without_readers = ResolvedDatabase { reader_instances: Some(Vec::new()), ..reader_endpoint };
        assert_eq!(without_readers.replica_databases(), Vec::new(), "its reader endpoint reaches the writer");
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
}
