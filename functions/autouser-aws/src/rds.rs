//! Resolving `rds:` databases: the endpoint (the writer, for Aurora), the admin and its default
//! database from tags, all tags as policy labels.
//!
//! A read-only endpoint (a read replica, an Aurora reader instance, a replica or global
//! secondary cluster) resolves with the writer the RDS API names for it, described where the
//! API names it (another region, for a cross-region replica): sessions log in to the endpoint,
//! the admin makes its changes on the writer. A writer the function cannot look up is
//! `WriterUnreachable`, never a guess; `allow_replica: false` keeps refusing such endpoints
//! (`ReadOnlyEndpoint`).
//!
//! A resource without the admin tag is not managed: removing the tag is how an operator turns
//! provisioning off (before an RDS Blue/Green switchover, say).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use autouser_engine::Error;
use autouser_policy::config::{
    AdminUser, AuthConfig, Config, DatabaseConfig, Location, RdsLocator, RdsResource, ReaderInstance, ResolvedDatabase,
    TagKeys, WriterEndpoint,
};
use aws_sdk_rds::error::SdkError;
use aws_sdk_rds::types::Tag;

use crate::AwsContext;

/// How long a lookup is reused in a warm process; a failed login forgets it sooner.
pub const RESOLUTION_TTL: Duration = Duration::from_secs(300);

/// What the RDS API says about a resource, before the policy and tags are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsFacts {
    pub description: String,
    pub host: String,
    pub port: u16,
    pub iam_auth_enabled: bool,
    pub tags: BTreeMap<String, String>,
    /// Set when this endpoint cannot take writes (a read replica, an Aurora reader instance or
    /// reader endpoint, a replica or secondary cluster): why, and the writer that serves it.
    pub replica: Option<ReplicaFacts>,
    /// An Aurora reader endpoint's reader instances, which sessions may reach through it.
    pub reader_instances: Option<Vec<ReaderInstance>>,
}

/// A read-only endpoint and the writer its changes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFacts {
    /// Why the endpoint is read-only, for messages: `it is a read replica of orders-main`.
    pub reason: String,
    /// The writer as the RDS API names it, or why the function could not look it up.
    pub writer: Result<RdsWriter, UnreachedWriter>,
}

/// The writer of a read-only endpoint: where the admin creates, locks and drops users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsWriter {
    /// `RDS instance <id> in <region>` or `Aurora cluster <id> in <region>`.
    pub description: String,
    pub host: String,
    pub port: u16,
    /// The writer's region: an IAM token for it is signed for this region.
    pub region: String,
    pub iam_auth_enabled: bool,
}

impl RdsWriter {
    /// `<description> at <host>:<port>`, for reports.
    pub fn to_text(&self) -> String {
        format!("{} at {}:{}", self.description, self.host, self.port)
    }
}

/// A writer the RDS API names that the function could not look up: a source in an account or
/// region it may not describe, a deleted source. Permanent: the RDS API being unavailable is an
/// error of the lookup instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreachedWriter {
    /// The writer as the RDS API names it (an id or ARN), or which global database's writer.
    pub writer: String,
    pub detail: String,
}

/// A writer lookup that the RDS API answered: the writer, or why it is out of reach.
type Lookup<T> = Result<T, UnreachedWriter>;

/// The most replication hops followed from a read-only endpoint to its writer (RDS allows
/// cascading read replicas a few levels deep; an Aurora reader adds its cluster).
const MAX_REPLICATION_HOPS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Instance,
    Cluster,
}

/// A replication source as the RDS API names it: an id in the replica's region, or an ARN,
/// which the Describe calls take as it is (in the ARN's region).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    kind: SourceKind,
    region: String,
    identifier: String,
}

impl Source {
    /// `name` is an id of a `kind` resource in `region`, or an RDS ARN
    /// (`arn:<partition>:rds:<region>:<account>:db:<id>` or `…:cluster:<id>`).
    fn parse(name: &str, region: &str, kind: SourceKind) -> Lookup<Source> {
        if !name.starts_with("arn:") {
            return Ok(Source { kind, region: region.to_string(), identifier: name.to_string() });
        }
        let parts: Vec<&str> = name.splitn(7, ':').collect();
        let (region, kind) = match parts.as_slice() {
            [_, _, "rds", region, _, "db", _] if !region.is_empty() => (region, SourceKind::Instance),
            [_, _, "rds", region, _, "cluster", _] if !region.is_empty() => (region, SourceKind::Cluster),
            _ => {
                return Err(UnreachedWriter {
                    writer: name.to_string(),
                    detail: "not the ARN of an RDS instance or cluster".into(),
                })
            }
        };
        Ok(Source { kind, region: region.to_string(), identifier: name.to_string() })
    }

    /// For messages: the ARN, or `RDS instance <id> in <region>`.
    fn name(&self) -> String {
        match (self.identifier.starts_with("arn:"), self.kind) {
            (true, _) => self.identifier.clone(),
            (false, SourceKind::Instance) => describe(&RdsResource::Instance(self.identifier.clone()), &self.region),
            (false, SourceKind::Cluster) => describe(&RdsResource::Cluster(self.identifier.clone()), &self.region),
        }
    }

    fn unreached(&self, detail: String) -> UnreachedWriter {
        UnreachedWriter { writer: self.name(), detail }
    }
}

impl AwsContext {
    /// The resolved form of `db`: as configured for a static database, looked up for an RDS one.
    pub async fn resolve_database(&self, config: &Config, db: &DatabaseConfig) -> Result<ResolvedDatabase, Error> {
        self.resolve(config, db, false).await
    }

    /// [`AwsContext::resolve_database`] for a session-end or the reaper, which lock users:
    /// turning provisioning off (removing the admin tag) stops starts, not ends. An RDS
    /// resource without the tag is reached as the admin its tag last named in this process,
    /// else as the database's `fallback_admin_user`; without either it is `NotManaged`, which
    /// a session-end is retried for.
    pub async fn resolve_database_for_end(
        &self,
        config: &Config,
        db: &DatabaseConfig,
    ) -> Result<ResolvedDatabase, Error> {
        self.resolve(config, db, true).await
    }

    async fn resolve(&self, config: &Config, db: &DatabaseConfig, for_end: bool) -> Result<ResolvedDatabase, Error> {
        let locator = match &db.location {
            Location::Static { .. } => {
                return db
                    .resolve_static()
                    .ok_or_else(|| Error::Credentials("static database without admin_user".into()))
            }
            Location::Rds(locator) => locator,
        };
        let key = format!("{}/{:?}", locator.region, locator.resource);
        let cached = self.rds_cache.lock().expect("rds cache lock").get(&key).cloned();
        let facts = match cached {
            Some((at, facts)) if at.elapsed() < RESOLUTION_TTL => facts,
            _ => {
                let facts = self.describe(locator).await?;
                // A writer out of reach is looked up again next time: the operator is fixing it.
                if !matches!(&facts.replica, Some(ReplicaFacts { writer: Err(_), .. })) {
                    self.rds_cache.lock().expect("rds cache lock").insert(key.clone(), (Instant::now(), facts.clone()));
                }
                facts
            }
        };
        let seen = self.rds_admins_seen.lock().expect("rds admins lock").get(&key).cloned();
        let untagged_admin = if for_end { seen.or_else(|| db.fallback_admin_user.clone()) } else { None };
        let mut resolved = apply_facts_with(db, &config.tag_keys, facts, untagged_admin.as_ref())?;
        resolved.hostaddr = locator.hostaddr;
        if resolved.labels.get(&config.tag_keys.admin_user).is_some_and(|admin| !admin.is_empty()) {
            self.rds_admins_seen.lock().expect("rds admins lock").insert(key, resolved.admin_user.clone());
        } else {
            tracing::warn!(database = %db.name, admin = %resolved.admin_user.name, tag = %config.tag_keys.admin_user,
                "the admin tag is gone (provisioning is off): ending sessions as the admin the tag last named, or \
                 fallback_admin_user, so that what is still open is locked");
        }
        Ok(resolved)
    }

    /// Forgets every RDS lookup, so that the next session looks again (after a failed login).
    pub fn forget_resolutions(&self) {
        self.rds_cache.lock().expect("rds cache lock").clear();
    }

    /// The facts of a resource, with the writer of a read-only one looked up.
    pub(crate) async fn describe(&self, locator: &RdsLocator) -> Result<RdsFacts, Error> {
        let client = self.rds_client(&locator.region);
        let region = &locator.region;
        match &locator.resource {
            RdsResource::Instance(id) => {
                let output = client
                    .describe_db_instances()
                    .db_instance_identifier(id)
                    .send()
                    .await
                    .map_err(|e| rds_error("DescribeDBInstances", id, region, e))?;
                let instance = output.db_instances().first().ok_or_else(|| not_found("instance", id, region))?;
                if let Some(cluster_id) = instance.db_cluster_identifier() {
                    let cluster = describe_cluster(&client, cluster_id, region).await?;
                    return self.cluster_reader_facts(id, region, instance, &cluster).await;
                }
                let mut facts = instance_facts(id, region, instance)
                    .ok_or_else(|| still_creating(describe(&locator.resource, region)))?;
                if let Some((reason, source)) = instance_upstream(region, instance) {
                    facts.replica = Some(ReplicaFacts { reason, writer: self.follow(source).await? });
                }
                Ok(facts)
            }
            RdsResource::Cluster(id) => {
                let cluster = describe_cluster(&client, id, region).await?;
                // The cluster (writer) endpoint; an entry names the reader endpoint explicitly.
                let mut facts = cluster_facts(id, region, &cluster)
                    .ok_or_else(|| still_creating(describe(&locator.resource, region)))?;
                if let Some((reason, source)) = self.cluster_upstream(region, &cluster).await? {
                    facts.replica = Some(ReplicaFacts { reason, writer: self.follow(source).await? });
                }
                Ok(facts)
            }
            RdsResource::ClusterReaders(id) => {
                let cluster = describe_cluster(&client, id, region).await?;
                self.cluster_readers_facts(id, region, &cluster).await
            }
        }
    }

    /// A cluster's reader endpoint: sessions log in through it to any of the cluster's readers,
    /// and the admin makes its changes on the cluster's writer (upstream of a replica or
    /// secondary cluster), then waits for every reader instance. The readers are those the
    /// cluster lists as members that are not its writer and that have an endpoint; a cluster
    /// without readers has none (its reader endpoint reaches the writer). IAM authentication
    /// and the tags are the cluster's.
    async fn cluster_readers_facts(
        &self,
        id: &str,
        region: &str,
        cluster: &aws_sdk_rds::types::DbCluster,
    ) -> Result<RdsFacts, Error> {
        let resource = RdsResource::ClusterReaders(id.to_string());
        let own = cluster_facts(id, region, cluster).ok_or_else(|| still_creating(describe(&resource, region)))?;
        let reader_endpoint =
            cluster.reader_endpoint().ok_or_else(|| still_creating(describe(&resource, region)))?.to_string();
        let members = aws_sdk_rds::types::Filter::builder().name("db-cluster-id").values(id).build();
        let output = self
            .rds_client(region)
            .describe_db_instances()
            .filters(members)
            .send()
            .await
            .map_err(|e| rds_error("DescribeDBInstances", id, region, e))?;
        let readers = output
            .db_instances()
            .iter()
            .filter_map(|instance| {
                let instance_id = instance.db_instance_identifier()?;
                let endpoint = instance.endpoint()?;
                is_cluster_reader(instance_id, cluster).then(|| ReaderInstance {
                    id: instance_id.to_string(),
                    host: endpoint.address().unwrap_or_default().to_string(),
                    port: endpoint.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432),
                })
            })
            .filter(|reader| !reader.host.is_empty())
            .collect();
        let writer = match self.cluster_upstream(region, cluster).await? {
            // The reader endpoint of a replica or secondary cluster: that cluster's writer, upstream.
            Some((_, source)) => self.follow(source).await?,
            None => Ok(writer_of(own.clone(), region)),
        };
        Ok(RdsFacts {
            description: describe(&resource, region),
            host: reader_endpoint,
            replica: Some(ReplicaFacts { reason: format!("it is the reader endpoint of cluster {id}"), writer }),
            reader_instances: Some(readers),
            ..own
        })
    }

    /// An instance of a cluster (an Aurora reader, or a reader of a Multi-AZ DB cluster):
    /// sessions use the instance's endpoint, the admin makes its changes on the cluster's
    /// writer endpoint. IAM authentication is the cluster's; the tags are the cluster's, the
    /// instance's own added and taking precedence. The cluster's writer instance is refused:
    /// its entry would stop reaching the writer at the next failover.
    async fn cluster_reader_facts(
        &self,
        id: &str,
        region: &str,
        instance: &aws_sdk_rds::types::DbInstance,
        cluster: &aws_sdk_rds::types::DbCluster,
    ) -> Result<RdsFacts, Error> {
        let cluster_id = cluster.db_cluster_identifier().unwrap_or_default();
        if !is_cluster_reader(id, cluster) {
            return Err(Error::Credentials(format!(
                "RDS instance {id} in {region} is the writer of cluster {cluster_id}: configure \
                 rds: {{cluster_id: {cluster_id}}} so that sessions follow the writer through a failover \
                 (an instance_id entry of a cluster is for a reader instance)"
            )));
        }
        let resource = RdsResource::Instance(id.to_string());
        let mut facts =
            instance_facts(id, region, instance).ok_or_else(|| still_creating(describe(&resource, region)))?;
        facts.iam_auth_enabled = cluster.iam_database_authentication_enabled().unwrap_or(false);
        let mut merged = tags(cluster.tag_list());
        merged.append(&mut facts.tags);
        facts.tags = merged;
        let writer = match self.cluster_upstream(region, cluster).await? {
            // A reader of a replica or secondary cluster: that cluster's writer, upstream.
            Some((_, source)) => self.follow(source).await?,
            None => {
                let cluster_resource = RdsResource::Cluster(cluster_id.to_string());
                let own = cluster_facts(cluster_id, region, cluster)
                    .ok_or_else(|| still_creating(describe(&cluster_resource, region)))?;
                Ok(writer_of(own, region))
            }
        };
        facts.replica = Some(ReplicaFacts { reason: format!("it is a reader of cluster {cluster_id}"), writer });
        Ok(facts)
    }

    /// What a cluster replicates from, if anything: a read replica cluster's source
    /// (`ReplicationSourceIdentifier`), or the writer cluster of the Aurora global database
    /// it is a secondary of. `None` for a cluster that takes writes.
    async fn cluster_upstream(
        &self,
        region: &str,
        cluster: &aws_sdk_rds::types::DbCluster,
    ) -> Result<Option<(String, Lookup<Source>)>, Error> {
        if let Some(source) = cluster.replication_source_identifier() {
            return Ok(Some((
                format!("it is a read replica cluster of {source}"),
                Source::parse(source, region, SourceKind::Cluster),
            )));
        }
        let Some(global) = cluster.global_cluster_identifier() else { return Ok(None) };
        // The id, also when the API gives the global cluster's ARN.
        let global_id = global.rsplit(':').next().unwrap_or(global);
        let reason = format!("it is a secondary cluster of Aurora global database {global_id}");
        let unreached = |detail: String| UnreachedWriter {
            writer: format!("the writer cluster of Aurora global database {global_id}"),
            detail,
        };
        let arn = cluster.db_cluster_arn().unwrap_or_default();
        let output = match self
            .rds_client(region)
            .describe_global_clusters()
            .global_cluster_identifier(global_id)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                // Without rds:DescribeGlobalClusters (which deployments before replica support
                // did not grant) the cluster's role is unknown. It is taken as configured, as
                // it was before: the admin acts on its own endpoint, which takes the writes if
                // it is the primary cluster, and refuses them (ReadOnlyEndpoint) if it is a
                // secondary. No other writer is guessed at.
                let detail = writer_lookup_failure("DescribeGlobalClusters", global_id, region, error)?;
                tracing::warn!(cluster = %arn, global_database = %global_id, %detail,
                    "cannot tell whether this cluster is its global database's writer: the admin acts on the \
                     cluster itself; a secondary cluster refuses that (ReadOnlyEndpoint) until the function may \
                     call rds:DescribeGlobalClusters");
                return Ok(None);
            }
        };
        let members = output
            .global_clusters()
            .iter()
            .map(|g| g.global_cluster_members())
            .find(|members| members.iter().any(|m| m.db_cluster_arn() == Some(arn)));
        let Some(members) = members else {
            let detail = format!("DescribeGlobalClusters {global_id} does not list {arn} among its members");
            return Ok(Some((reason, Err(unreached(detail)))));
        };
        if members.iter().any(|m| m.db_cluster_arn() == Some(arn) && m.is_writer() == Some(true)) {
            return Ok(None);
        }
        match members.iter().find(|m| m.is_writer() == Some(true)).and_then(|m| m.db_cluster_arn()) {
            Some(writer) => Ok(Some((reason, Source::parse(writer, region, SourceKind::Cluster)))),
            None => Err(Error::DependencyUnavailable {
                what: format!("Aurora global database {global_id}"),
                detail: "has no writer cluster now (a switchover or failover in progress?)".into(),
            }),
        }
    }

    /// The writer at the end of the replication chain that starts at `source`, each hop
    /// described where the RDS API names it (an ARN's region).
    async fn follow(&self, source: Lookup<Source>) -> Result<Lookup<RdsWriter>, Error> {
        let first = match &source {
            Ok(source) => source.name(),
            Err(unreached) => return Ok(Err(unreached.clone())),
        };
        let mut next = source;
        for _ in 0..MAX_REPLICATION_HOPS {
            let source = match next {
                Ok(source) => source,
                Err(unreached) => return Ok(Err(unreached)),
            };
            let client = self.rds_client(&source.region);
            let region = source.region.as_str();
            next = match source.kind {
                SourceKind::Instance => {
                    let found = client.describe_db_instances().db_instance_identifier(&source.identifier).send().await;
                    let instance = match found {
                        Ok(output) => output.db_instances().first().cloned(),
                        Err(error) => {
                            let detail =
                                writer_lookup_failure("DescribeDBInstances", &source.identifier, region, error)?;
                            return Ok(Err(source.unreached(detail)));
                        }
                    };
                    let Some(instance) = instance else {
                        return Ok(Err(
                            source.unreached(format!("DescribeDBInstances in {region} found no such instance"))
                        ));
                    };
                    let id = instance.db_instance_identifier().unwrap_or_default().to_string();
                    if let Some(cluster) = instance.db_cluster_identifier() {
                        // By ARN, in the instance's account: never a namesake in this one.
                        let identifier = match instance.db_instance_arn().and_then(|arn| arn.rsplit_once(":db:")) {
                            Some((prefix, _)) => format!("{prefix}:cluster:{cluster}"),
                            None => cluster.to_string(),
                        };
                        Ok(Source { kind: SourceKind::Cluster, region: region.to_string(), identifier })
                    } else if let Some((_, upstream)) = instance_upstream(region, &instance) {
                        upstream
                    } else {
                        let resource = describe(&RdsResource::Instance(id.clone()), region);
                        let facts = instance_facts(&id, region, &instance).ok_or_else(|| still_creating(resource))?;
                        return Ok(Ok(writer_of(facts, region)));
                    }
                }
                SourceKind::Cluster => {
                    let found = client.describe_db_clusters().db_cluster_identifier(&source.identifier).send().await;
                    let cluster = match found {
                        Ok(output) => output.db_clusters().first().cloned(),
                        Err(error) => {
                            let detail =
                                writer_lookup_failure("DescribeDBClusters", &source.identifier, region, error)?;
                            return Ok(Err(source.unreached(detail)));
                        }
                    };
                    let Some(cluster) = cluster else {
                        return Ok(Err(
                            source.unreached(format!("DescribeDBClusters in {region} found no such cluster"))
                        ));
                    };
                    match self.cluster_upstream(region, &cluster).await? {
                        Some((_, upstream)) => upstream,
                        None => {
                            let id = cluster.db_cluster_identifier().unwrap_or_default().to_string();
                            let resource = describe(&RdsResource::Cluster(id.clone()), region);
                            let facts = cluster_facts(&id, region, &cluster).ok_or_else(|| still_creating(resource))?;
                            return Ok(Ok(writer_of(facts, region)));
                        }
                    }
                }
            };
        }
        Ok(Err(UnreachedWriter {
            writer: first,
            detail: format!("no writer within {MAX_REPLICATION_HOPS} replication hops"),
        }))
    }
}

/// A PostgreSQL RDS instance or Aurora PostgreSQL cluster that carries the admin tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedDatabase {
    pub locator: RdsLocator,
    pub facts: RdsFacts,
    /// Maybe read-only: a read replica, a reader instance of a cluster, a replica cluster or a
    /// member of an Aurora global database. `facts` say nothing of a writer yet:
    /// [`AwsContext::describe`] looks it up (discovery does, when it examines the database).
    pub read_only: bool,
}

impl AwsContext {
    /// Every PostgreSQL instance and Aurora PostgreSQL cluster in `region` that carries the
    /// admin tag, paging through all of them. A cluster's instances are left out (the cluster
    /// is what sessions use), except reader instances that carry the admin tag themselves.
    pub async fn list_tagged_databases(&self, region: &str, tag_keys: &TagKeys) -> Result<Vec<TaggedDatabase>, Error> {
        let client = self.rds_client(region);
        let locator = |resource| RdsLocator { resource, region: region.to_string(), hostaddr: None };
        let tagged = |facts: &RdsFacts| facts.tags.get(&tag_keys.admin_user).is_some_and(|a| !a.is_empty());
        let mut found = Vec::new();
        // The clusters first: which instances are their readers.
        let mut readers = std::collections::HashSet::new();
        let mut clusters = client.describe_db_clusters().into_paginator().items().send();
        while let Some(cluster) = clusters.next().await {
            let cluster = cluster.map_err(|e| rds_error("DescribeDBClusters", "(all)", region, e))?;
            let id = cluster.db_cluster_identifier().unwrap_or_default().to_string();
            for member in cluster.db_cluster_members() {
                if member.is_cluster_writer() == Some(false) {
                    readers.insert(member.db_instance_identifier().unwrap_or_default().to_ascii_lowercase());
                }
            }
            if cluster.engine() != Some("aurora-postgresql") {
                continue;
            }
            let read_only =
                cluster.replication_source_identifier().is_some() || cluster.global_cluster_identifier().is_some();
            if let Some(facts) = cluster_facts(&id, region, &cluster).filter(tagged) {
                found.push(TaggedDatabase { locator: locator(RdsResource::Cluster(id)), facts, read_only });
            }
        }
        let mut instances = client.describe_db_instances().into_paginator().items().send();
        while let Some(instance) = instances.next().await {
            let instance = instance.map_err(|e| rds_error("DescribeDBInstances", "(all)", region, e))?;
            let id = instance.db_instance_identifier().unwrap_or_default().to_string();
            let read_only = match (instance.engine(), instance.db_cluster_identifier()) {
                (Some("postgres"), None) => instance_upstream(region, &instance).is_some(),
                (Some("postgres" | "aurora-postgresql"), Some(_)) if readers.contains(&id.to_ascii_lowercase()) => true,
                _ => continue,
            };
            if let Some(facts) = instance_facts(&id, region, &instance).filter(tagged) {
                found.push(TaggedDatabase { locator: locator(RdsResource::Instance(id)), facts, read_only });
            }
        }
        Ok(found)
    }

    fn rds_client(&self, region: &str) -> aws_sdk_rds::Client {
        let mut config =
            aws_sdk_rds::config::Builder::from(&self.sdk).region(aws_sdk_rds::config::Region::new(region.to_string()));
        for interceptor in &self.rds_interceptors {
            config.push_interceptor(interceptor.clone());
        }
        aws_sdk_rds::Client::from_conf(config.build())
    }
}

/// `RDS instance <id> in <region>` or `Aurora cluster <id> in <region>`, for messages.
pub(crate) fn describe(resource: &RdsResource, region: &str) -> String {
    match resource {
        RdsResource::Instance(id) => format!("RDS instance {id} in {region}"),
        RdsResource::Cluster(id) => format!("Aurora cluster {id} in {region}"),
        RdsResource::ClusterReaders(id) => format!("the reader endpoint of Aurora cluster {id} in {region}"),
    }
}

/// The cluster `id` as `DescribeDBClusters` in `region` describes it.
async fn describe_cluster(
    client: &aws_sdk_rds::Client,
    id: &str,
    region: &str,
) -> Result<aws_sdk_rds::types::DbCluster, Error> {
    let output = client
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
        .map_err(|e| rds_error("DescribeDBClusters", id, region, e))?;
    output.db_clusters().first().cloned().ok_or_else(|| not_found("cluster", id, region))
}

fn still_creating(description: String) -> Error {
    Error::DependencyUnavailable { what: description, detail: "has no endpoint yet (still creating?)".into() }
}

/// Facts of an instance, without its writer; `None` while it has no endpoint yet.
fn instance_facts(id: &str, region: &str, instance: &aws_sdk_rds::types::DbInstance) -> Option<RdsFacts> {
    let endpoint = instance.endpoint()?;
    Some(RdsFacts {
        description: describe(&RdsResource::Instance(id.to_string()), region),
        host: endpoint.address()?.to_string(),
        port: endpoint.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432),
        iam_auth_enabled: instance.iam_database_authentication_enabled().unwrap_or(false),
        tags: tags(instance.tag_list()),
        replica: None,
        reader_instances: None,
    })
}

/// Facts of a cluster with its cluster (writer) endpoint, without the writer it replicates
/// from, if any; `None` while it has no endpoint yet.
fn cluster_facts(id: &str, region: &str, cluster: &aws_sdk_rds::types::DbCluster) -> Option<RdsFacts> {
    Some(RdsFacts {
        description: describe(&RdsResource::Cluster(id.to_string()), region),
        host: cluster.endpoint()?.to_string(),
        port: cluster.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432),
        iam_auth_enabled: cluster.iam_database_authentication_enabled().unwrap_or(false),
        tags: tags(cluster.tag_list()),
        replica: None,
        reader_instances: None,
    })
}

/// What a standalone instance replicates from, if it is a read replica: its source instance
/// (`ReadReplicaSourceDBInstanceIdentifier`) or cluster (`ReadReplicaSourceDBClusterIdentifier`).
fn instance_upstream(region: &str, instance: &aws_sdk_rds::types::DbInstance) -> Option<(String, Lookup<Source>)> {
    let (source, kind) = match (
        instance.read_replica_source_db_instance_identifier(),
        instance.read_replica_source_db_cluster_identifier(),
    ) {
        (Some(source), _) => (source, SourceKind::Instance),
        (None, Some(source)) => (source, SourceKind::Cluster),
        (None, None) => return None,
    };
    Some((format!("it is a read replica of {source}"), Source::parse(source, region, kind)))
}

/// Whether the cluster lists instance `id` as a member that is not its writer.
fn is_cluster_reader(id: &str, cluster: &aws_sdk_rds::types::DbCluster) -> bool {
    cluster.db_cluster_members().iter().any(|member| {
        member.db_instance_identifier().is_some_and(|m| m.eq_ignore_ascii_case(id))
            && member.is_cluster_writer() == Some(false)
    })
}

fn writer_of(facts: RdsFacts, region: &str) -> RdsWriter {
    RdsWriter {
        description: facts.description,
        host: facts.host,
        port: facts.port,
        region: region.to_string(),
        iam_auth_enabled: facts.iam_auth_enabled,
    }
}

/// Applies what RDS said to the configured database. Pure.
pub fn apply_facts(db: &DatabaseConfig, tag_keys: &TagKeys, facts: RdsFacts) -> Result<ResolvedDatabase, Error> {
    apply_facts_with(db, tag_keys, facts, None)
}

/// [`apply_facts`], with the admin to use when the resource has no admin tag (for ends).
fn apply_facts_with(
    db: &DatabaseConfig,
    tag_keys: &TagKeys,
    facts: RdsFacts,
    untagged_admin: Option<&AdminUser>,
) -> Result<ResolvedDatabase, Error> {
    let tagged = facts.tags.get(&tag_keys.admin_user).filter(|a| !a.is_empty()).map(|name| AdminUser {
        name: name.clone(),
        default_database: facts.tags.get(&tag_keys.default_database).filter(|d| !d.is_empty()).cloned(),
    });
    let Some(admin_user) = tagged.or_else(|| untagged_admin.cloned()) else {
        return Err(Error::NotManaged {
            database: db.name.clone(),
            resource: facts.description,
            tag: tag_keys.admin_user.clone(),
        });
    };
    let iam = matches!(db.auth, AuthConfig::Iam { .. });
    let writer = match facts.replica {
        None => None,
        Some(replica) if !db.allow_replica => {
            return Err(Error::ReadOnlyEndpoint {
                endpoint: format!("{} ({}; the entry has allow_replica: false)", facts.description, replica.reason),
            });
        }
        Some(ReplicaFacts { writer: Err(unreached), .. }) => {
            return Err(Error::WriterUnreachable {
                replica: facts.description,
                writer: unreached.writer,
                detail: unreached.detail,
            });
        }
        Some(ReplicaFacts { writer: Ok(writer), .. }) => {
            if iam && !writer.iam_auth_enabled {
                return Err(Error::IamAuthDisabled { database: db.name.clone(), resource: writer.description });
            }
            // An IAM token is signed for the region of the endpoint it logs in to.
            let auth = match &db.auth {
                AuthConfig::Iam { region } if region.as_deref() != Some(writer.region.as_str()) => {
                    Some(AuthConfig::Iam { region: Some(writer.region.clone()) })
                }
                _ => None,
            };
            Some(WriterEndpoint { host: writer.host, port: writer.port, hostaddr: None, tls: db.tls.clone(), auth })
        }
    };
    if iam && !facts.iam_auth_enabled {
        return Err(Error::IamAuthDisabled { database: db.name.clone(), resource: facts.description });
    }
    autouser_policy::naming::validate_identifier(&admin_user.name)
        .map_err(|e| Error::Credentials(format!("tag {} of {}: {e}", tag_keys.admin_user, facts.description)))?;
    Ok(ResolvedDatabase {
        name: db.name.clone(),
        db_type: db.db_type.clone(),
        host: facts.host,
        port: facts.port,
        hostaddr: None,
        labels: facts.tags,
        admin_user,
        auth: db.auth.clone(),
        tls: db.tls.clone(),
        writer,
        replica_wait: db.replica_wait,
        reader_instances: facts.reader_instances,
    })
}

fn tags(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter().filter_map(|tag| Some((tag.key()?.to_string(), tag.value().unwrap_or_default().to_string()))).collect()
}

fn not_found(kind: &str, id: &str, region: &str) -> Error {
    Error::Credentials(format!("RDS {kind} {id} was not found in {region}: check rds.{kind}_id and rds.region"))
}

/// A failed writer lookup: `Err` (transient, retried) when the RDS API is unavailable, else
/// what it said, which makes the writer unreached.
fn writer_lookup_failure<E, R>(operation: &str, id: &str, region: &str, error: SdkError<E, R>) -> Result<String, Error>
where
    E: aws_sdk_rds::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let detail = format!("{operation} {id} in {region}: {}", crate::describe_sdk_error(&error));
    if crate::is_transient(&error) {
        return Err(Error::DependencyUnavailable { what: "the RDS API".into(), detail });
    }
    Ok(detail)
}

fn rds_error<E, R>(operation: &str, id: &str, region: &str, error: SdkError<E, R>) -> Error
where
    E: aws_sdk_rds::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let detail = format!("{operation} {id} in {region}: {}", crate::describe_sdk_error(&error));
    if crate::is_transient(&error) {
        return Error::DependencyUnavailable { what: "the RDS API".into(), detail };
    }
    if matches!(&error, SdkError::ServiceError(s) if s.err().code().is_some_and(|c| c.ends_with("NotFoundFault") || c.ends_with("NotFound")))
    {
        return Error::Credentials(format!("{detail}: check the id and region under rds:"));
    }
    Error::Credentials(format!("{detail}: check the function's rds:DescribeDBInstances/DescribeDBClusters permission"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(auth: AuthConfig) -> DatabaseConfig {
        let text = "databases:\n  - name: orders\n    rds: {instance_id: orders-prod, region: us-east-1}\n";
        let mut db = Config::parse(text, std::path::Path::new("/")).unwrap().databases.remove(0);
        db.auth = auth;
        db
    }

    fn facts(tags: &[(&str, &str)]) -> RdsFacts {
        RdsFacts {
            description: "RDS instance orders-prod in us-east-1".into(),
            host: "orders-prod.abc.us-east-1.rds.amazonaws.com".into(),
            port: 5432,
            iam_auth_enabled: true,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            replica: None,
            reader_instances: None,
        }
    }

    fn replica_of(writer: Result<RdsWriter, UnreachedWriter>) -> RdsFacts {
        let mut f = facts(&[("teleport.dev/db-admin", "a")]);
        f.replica = Some(ReplicaFacts { reason: "it is a read replica of orders-main".into(), writer });
        f
    }

    fn writer(region: &str) -> RdsWriter {
        RdsWriter {
            description: format!("RDS instance orders-main in {region}"),
            host: format!("orders-main.abc.{region}.rds.amazonaws.com"),
            port: 5433,
            region: region.into(),
            iam_auth_enabled: true,
        }
    }

    fn iam() -> AuthConfig {
        AuthConfig::Iam { region: Some("us-east-1".into()) }
    }

    #[test]
    fn tags_give_admin_default_database_and_labels() {
        let resolved = apply_facts(
            &db(iam()),
            &TagKeys::default(),
            facts(&[
                ("teleport.dev/db-admin", "teleport-admin"),
                ("teleport.dev/db-admin-default-database", "postgres"),
                ("env", "prod"),
            ]),
        )
        .unwrap();
        assert_eq!(
            resolved.admin_user,
            AdminUser { name: "teleport-admin".into(), default_database: Some("postgres".into()) }
        );
        assert_eq!(resolved.labels["env"], "prod");
        assert_eq!(resolved.host, "orders-prod.abc.us-east-1.rds.amazonaws.com");
    }

    #[test]
    fn untagged_resource_is_not_managed() {
        let err = apply_facts(&db(iam()), &TagKeys::default(), facts(&[("env", "prod")])).unwrap_err();
        assert_eq!(err.kind(), "NotManaged");
        assert!(err.to_string().contains("teleport.dev/db-admin"), "{err}");
    }

    #[test]
    fn iam_disabled_is_refused_only_for_iam_auth() {
        let mut f = facts(&[("teleport.dev/db-admin", "a")]);
        f.iam_auth_enabled = false;
        assert_eq!(apply_facts(&db(iam()), &TagKeys::default(), f.clone()).unwrap_err().kind(), "IamAuthDisabled");
        let password = AuthConfig::PasswordSecret { secret_arn: "arn:x".into() };
        assert!(apply_facts(&db(password), &TagKeys::default(), f).is_ok());
    }

    #[test]
    fn a_read_replica_resolves_with_its_writer() {
        let resolved = apply_facts(&db(iam()), &TagKeys::default(), replica_of(Ok(writer("us-east-1")))).unwrap();
        assert_eq!(resolved.host, "orders-prod.abc.us-east-1.rds.amazonaws.com", "sessions use the replica");
        let writer = resolved.writer.clone().expect("the writer");
        assert_eq!((writer.host.as_str(), writer.port), ("orders-main.abc.us-east-1.rds.amazonaws.com", 5433));
        assert_eq!(writer.auth, None, "the same region: the entry's credentials");
        let on_writer = resolved.writer_database().unwrap();
        assert_eq!(on_writer.host, "orders-main.abc.us-east-1.rds.amazonaws.com");
        assert_eq!(on_writer.admin_user, resolved.admin_user);
    }

    #[test]
    fn a_writer_in_another_region_gets_an_iam_token_for_its_region() {
        let resolved = apply_facts(&db(iam()), &TagKeys::default(), replica_of(Ok(writer("eu-west-1")))).unwrap();
        let on_writer = resolved.writer_database().unwrap();
        assert_eq!(on_writer.auth, AuthConfig::Iam { region: Some("eu-west-1".into()) });
        assert_eq!(resolved.auth, iam(), "the replica's own token stays in its region");
        let password = AuthConfig::PasswordSecret { secret_arn: "arn:x".into() };
        let resolved = apply_facts(&db(password.clone()), &TagKeys::default(), replica_of(Ok(writer("eu-west-1"))));
        assert_eq!(resolved.unwrap().writer_database().unwrap().auth, password, "the role (and password) replicated");
    }

    #[test]
    fn a_writer_without_iam_auth_is_refused_for_iam_admins() {
        let mut w = writer("us-east-1");
        w.iam_auth_enabled = false;
        let err = apply_facts(&db(iam()), &TagKeys::default(), replica_of(Ok(w))).unwrap_err();
        assert_eq!(err.kind(), "IamAuthDisabled");
        assert!(err.to_string().contains("orders-main"), "names the writer: {err}");
    }

    #[test]
    fn allow_replica_false_keeps_refusing_read_replicas() {
        let mut config = db(iam());
        config.allow_replica = false;
        let err = apply_facts(&config, &TagKeys::default(), replica_of(Ok(writer("us-east-1")))).unwrap_err();
        assert_eq!(err.kind(), "ReadOnlyEndpoint");
        assert!(err.to_string().contains("read replica of orders-main"), "{err}");
        let unreached = UnreachedWriter { writer: "x".into(), detail: "y".into() };
        let err = apply_facts(&config, &TagKeys::default(), replica_of(Err(unreached))).unwrap_err();
        assert_eq!(err.kind(), "ReadOnlyEndpoint", "refused before looking at the writer");
    }

    #[test]
    fn an_unreached_writer_is_refused_permanently_naming_it() {
        let unreached = UnreachedWriter {
            writer: "arn:aws:rds:eu-west-1:210987654321:db:orders-main".into(),
            detail: "DBInstanceNotFound".into(),
        };
        let err = apply_facts(&db(iam()), &TagKeys::default(), replica_of(Err(unreached))).unwrap_err();
        assert_eq!(err.kind(), "WriterUnreachable");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(text.contains("arn:aws:rds:eu-west-1:210987654321:db:orders-main"), "{text}");
        assert!(text.contains("RDS instance orders-prod in us-east-1"), "names the replica: {text}");
        assert!(text.contains("DBInstanceNotFound"), "{text}");
    }

    #[test]
    fn sources_are_ids_in_the_replicas_region_or_arns() {
        let id = Source::parse("orders-main", "us-east-1", SourceKind::Instance).unwrap();
        assert_eq!(
            (id.kind, id.region.as_str(), id.name()),
            (SourceKind::Instance, "us-east-1", "RDS instance orders-main in us-east-1".to_string())
        );
        let arn = "arn:aws:rds:eu-west-1:123456789012:cluster:orders";
        let cluster = Source::parse(arn, "us-east-1", SourceKind::Instance).unwrap();
        assert_eq!(
            (cluster.kind, cluster.region.as_str(), cluster.identifier.as_str()),
            (SourceKind::Cluster, "eu-west-1", arn)
        );
        let db = Source::parse("arn:aws-cn:rds:cn-north-1:123456789012:db:orders", "us-east-1", SourceKind::Cluster);
        assert_eq!(db.unwrap().kind, SourceKind::Instance);
        let odd = Source::parse("arn:aws:s3:::bucket", "us-east-1", SourceKind::Instance).unwrap_err();
        assert_eq!(odd.writer, "arn:aws:s3:::bucket");
    }
}
