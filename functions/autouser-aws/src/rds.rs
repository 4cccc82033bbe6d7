//! Resolving `rds:` databases: the endpoint (the writer, for Aurora), the admin and its default
//! database from tags, all tags as policy labels.
//!
//! A resource without the admin tag is not managed: removing the tag is how an operator turns
//! provisioning off (before an RDS Blue/Green switchover, say).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use autouser_engine::Error;
use autouser_policy::config::{
    AdminUser, AuthConfig, Config, DatabaseConfig, Location, RdsLocator, RdsResource, ResolvedDatabase, TagKeys,
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
    /// Why this endpoint cannot take writes (a read replica), if so.
    pub read_only_reason: Option<String>,
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
                self.rds_cache.lock().expect("rds cache lock").insert(key.clone(), (Instant::now(), facts.clone()));
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

    pub(crate) async fn describe(&self, locator: &RdsLocator) -> Result<RdsFacts, Error> {
        let client = self.rds_client(&locator.region);
        let region = &locator.region;
        let still_creating = |description: String| Error::DependencyUnavailable {
            what: description,
            detail: "has no endpoint yet (still creating?)".into(),
        };
        match &locator.resource {
            RdsResource::Instance(id) => {
                let output = client
                    .describe_db_instances()
                    .db_instance_identifier(id)
                    .send()
                    .await
                    .map_err(|e| rds_error("DescribeDBInstances", id, region, e))?;
                let instance = output.db_instances().first().ok_or_else(|| not_found("instance", id, region))?;
                if let Some(cluster) = instance.db_cluster_identifier() {
                    return Err(Error::Credentials(format!(
                        "RDS instance {id} in {region} belongs to Aurora cluster {cluster}: configure \
                         rds: {{cluster_id: {cluster}}} so that sessions always reach the cluster's writer"
                    )));
                }
                instance_facts(id, region, instance).ok_or_else(|| still_creating(format!("RDS instance {id}")))
            }
            RdsResource::Cluster(id) => {
                let output = client
                    .describe_db_clusters()
                    .db_cluster_identifier(id)
                    .send()
                    .await
                    .map_err(|e| rds_error("DescribeDBClusters", id, region, e))?;
                let cluster = output.db_clusters().first().ok_or_else(|| not_found("cluster", id, region))?;
                // Always the cluster (writer) endpoint, never the reader endpoint.
                cluster_facts(id, region, cluster).ok_or_else(|| still_creating(format!("Aurora cluster {id}")))
            }
        }
    }
}

/// A PostgreSQL RDS instance or Aurora PostgreSQL cluster that carries the admin tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedDatabase {
    pub locator: RdsLocator,
    pub facts: RdsFacts,
}

impl AwsContext {
    /// Every PostgreSQL instance and Aurora PostgreSQL cluster in `region` that carries the
    /// admin tag, paging through all of them. Aurora instances are left out: their cluster is
    /// what sessions use.
    pub async fn list_tagged_databases(&self, region: &str, tag_keys: &TagKeys) -> Result<Vec<TaggedDatabase>, Error> {
        let client = self.rds_client(region);
        let locator = |resource| RdsLocator { resource, region: region.to_string(), hostaddr: None };
        let mut found = Vec::new();
        let mut instances = client.describe_db_instances().into_paginator().items().send();
        while let Some(instance) = instances.next().await {
            let instance = instance.map_err(|e| rds_error("DescribeDBInstances", "(all)", region, e))?;
            let id = instance.db_instance_identifier().unwrap_or_default().to_string();
            if instance.engine() != Some("postgres") || instance.db_cluster_identifier().is_some() {
                continue;
            }
            let facts = instance_facts(&id, region, &instance);
            if let Some(facts) = facts.filter(|f| f.tags.contains_key(&tag_keys.admin_user)) {
                found.push(TaggedDatabase { locator: locator(RdsResource::Instance(id)), facts });
            }
        }
        let mut clusters = client.describe_db_clusters().into_paginator().items().send();
        while let Some(cluster) = clusters.next().await {
            let cluster = cluster.map_err(|e| rds_error("DescribeDBClusters", "(all)", region, e))?;
            let id = cluster.db_cluster_identifier().unwrap_or_default().to_string();
            if cluster.engine() != Some("aurora-postgresql") {
                continue;
            }
            let facts = cluster_facts(&id, region, &cluster);
            if let Some(facts) = facts.filter(|f| f.tags.contains_key(&tag_keys.admin_user)) {
                found.push(TaggedDatabase { locator: locator(RdsResource::Cluster(id)), facts });
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
    }
}

/// Facts of an instance; `None` while it has no endpoint yet.
fn instance_facts(id: &str, region: &str, instance: &aws_sdk_rds::types::DbInstance) -> Option<RdsFacts> {
    let endpoint = instance.endpoint()?;
    Some(RdsFacts {
        description: describe(&RdsResource::Instance(id.to_string()), region),
        host: endpoint.address()?.to_string(),
        port: endpoint.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432),
        iam_auth_enabled: instance.iam_database_authentication_enabled().unwrap_or(false),
        tags: tags(instance.tag_list()),
        read_only_reason: instance
            .read_replica_source_db_instance_identifier()
            .map(|source| format!("it is a read replica of {source}")),
    })
}

/// Facts of a cluster, with its writer endpoint; `None` while it has none yet.
fn cluster_facts(id: &str, region: &str, cluster: &aws_sdk_rds::types::DbCluster) -> Option<RdsFacts> {
    Some(RdsFacts {
        description: describe(&RdsResource::Cluster(id.to_string()), region),
        host: cluster.endpoint()?.to_string(),
        port: cluster.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(5432),
        iam_auth_enabled: cluster.iam_database_authentication_enabled().unwrap_or(false),
        tags: tags(cluster.tag_list()),
        read_only_reason: cluster
            .replication_source_identifier()
            .map(|source| format!("it is a read replica cluster of {source}")),
    })
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
    if let Some(reason) = facts.read_only_reason {
        return Err(Error::ReadOnlyEndpoint { endpoint: format!("{} ({reason})", facts.description) });
    }
    if matches!(db.auth, AuthConfig::Iam { .. }) && !facts.iam_auth_enabled {
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
        writer: None,
        replica_wait: db.replica_wait,
    })
}

fn tags(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter().filter_map(|tag| Some((tag.key()?.to_string(), tag.value().unwrap_or_default().to_string()))).collect()
}

fn not_found(kind: &str, id: &str, region: &str) -> Error {
    Error::Credentials(format!("RDS {kind} {id} was not found in {region}: check rds.{kind}_id and rds.region"))
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
            read_only_reason: None,
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
    fn read_replicas_are_refused() {
        let mut f = facts(&[("teleport.dev/db-admin", "a")]);
        f.read_only_reason = Some("it is a read replica of orders-main".into());
        assert_eq!(apply_facts(&db(iam()), &TagKeys::default(), f).unwrap_err().kind(), "ReadOnlyEndpoint");
    }
}
