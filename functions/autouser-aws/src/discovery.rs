//! Discovery: every RDS PostgreSQL instance and Aurora PostgreSQL cluster carrying the admin
//! tag, in the given regions, checked by preflight as its admin and bootstrapped (the managed
//! group), so that the first session-start does the least work and misconfiguration is
//! reported before a person meets it.
//!
//! A database is checked with its entry in the config when the config lists it (by resource
//! and region), otherwise as [`DatabaseConfig::discovered`]: IAM authentication and TLS
//! verified against the RDS CA bundle. One failing database or region never stops the others.
//!
//! A tagged read-only endpoint (a read replica, a tagged reader instance of a cluster, a replica
//! or global secondary cluster) is reported with the writer that serves it: preflight checks
//! the writer, where the admin makes its changes (and bootstrap runs there), and the endpoint
//! itself (that it is in recovery). An entry with `allow_replica: false` is skipped.

use autouser_engine::preflight::{self, Report};
use autouser_policy::config::{Config, DatabaseConfig, Location, RdsLocator};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::rds::{apply_facts, describe, TaggedDatabase};
use crate::AwsContext;

#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub regions: Vec<String>,
    /// Databases examined at the same time.
    pub concurrency: usize,
    /// Create the managed group where it is missing.
    pub bootstrap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryStatus {
    /// Every preflight check passed: sessions will work.
    Ready,
    /// A check failed, or the admin could not log in: see `reason` and `preflight`.
    NeedsAttention,
    /// Tagged, but its entry refuses sessions on it (a read replica with `allow_replica:
    /// false`); see `reason`.
    Skipped,
    /// The resource no longer carries the admin tag (or no longer exists).
    NotManaged,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiscoveredDatabase {
    /// The config's name for it, or the resource id.
    pub database: String,
    /// `RDS instance <id> in <region>` or `Aurora cluster <id> in <region>`.
    pub resource: String,
    pub region: String,
    pub status: DiscoveryStatus,
    /// For a read replica or reader: the writer that serves it, where the admin makes its
    /// changes (`RDS instance <id> in <region> at <host>:<port>`), or the writer the RDS API
    /// names when the function could not look it up (see `reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Report>,
    /// Statements bootstrap ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootstrapped: Vec<String>,
}

impl DiscoveredDatabase {
    /// An entry that needs attention until the examination says otherwise.
    fn new(database: String, resource: String, region: String) -> DiscoveredDatabase {
        DiscoveredDatabase {
            database,
            resource,
            region,
            status: DiscoveryStatus::NeedsAttention,
            writer: None,
            reason: None,
            preflight: None,
            bootstrapped: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionFailure {
    pub region: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryReport {
    pub databases: Vec<DiscoveredDatabase>,
    /// Regions that could not be listed (their databases are not in `databases`).
    pub failed_regions: Vec<RegionFailure>,
}

impl DiscoveryReport {
    pub fn count(&self, status: DiscoveryStatus) -> usize {
        self.databases.iter().filter(|d| d.status == status).count()
    }

    /// Whether anything needs a person: a database needing attention or a region not listed.
    pub fn needs_attention(&self) -> bool {
        self.count(DiscoveryStatus::NeedsAttention) > 0 || !self.failed_regions.is_empty()
    }

    /// For people: a line per database, the preflight findings of those needing attention.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{} ready, {} need attention, {} skipped, {} not managed\n",
            self.count(DiscoveryStatus::Ready),
            self.count(DiscoveryStatus::NeedsAttention),
            self.count(DiscoveryStatus::Skipped),
            self.count(DiscoveryStatus::NotManaged),
        );
        for failure in &self.failed_regions {
            text.push_str(&format!("region {}: NOT LISTED: {}\n", failure.region, failure.reason));
        }
        for db in &self.databases {
            let status = match db.status {
                DiscoveryStatus::Ready => "ready",
                DiscoveryStatus::NeedsAttention => "NEEDS ATTENTION",
                DiscoveryStatus::Skipped => "skipped",
                DiscoveryStatus::NotManaged => "not managed",
            };
            match &db.writer {
                Some(writer) => text.push_str(&format!("{} ({}, writer {writer}): {status}", db.database, db.resource)),
                None => text.push_str(&format!("{} ({}): {status}", db.database, db.resource)),
            }
            if let Some(reason) = &db.reason {
                text.push_str(&format!(": {reason}"));
            }
            text.push('\n');
            for statement in &db.bootstrapped {
                text.push_str(&format!("  bootstrapped: {statement}\n"));
            }
            if db.status == DiscoveryStatus::NeedsAttention {
                if let Some(report) = &db.preflight {
                    for line in report.to_text().lines().skip(1) {
                        text.push_str(&format!("{line}\n"));
                    }
                }
            }
        }
        text
    }
}

impl AwsContext {
    /// Lists, checks and bootstraps every tagged database in `options.regions`.
    pub async fn discover(&self, config: &Config, options: &DiscoveryOptions) -> DiscoveryReport {
        self.discover_with_progress(config, options, &|_, _| {}).await
    }

    /// [`AwsContext::discover`], calling `progress(examined, total)` once the regions are
    /// listed (with 0) and after each database is examined: for a progress bar.
    pub async fn discover_with_progress(
        &self,
        config: &Config,
        options: &DiscoveryOptions,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> DiscoveryReport {
        let mut tagged = Vec::new();
        let mut failed_regions = Vec::new();
        for region in &options.regions {
            match self.list_tagged_databases(region, &config.tag_keys).await {
                Ok(found) => tagged.extend(found),
                Err(e) => failed_regions.push(RegionFailure { region: region.clone(), reason: e.to_string() }),
            }
        }
        let total = tagged.len();
        progress(0, total);
        let examined = std::sync::atomic::AtomicUsize::new(0);
        let mut databases: Vec<DiscoveredDatabase> = stream::iter(tagged)
            .map(|found| async {
                let database = self.examine(config, found, options.bootstrap).await;
                progress(examined.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
                database
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        databases.sort_by(|a, b| (&a.region, &a.resource).cmp(&(&b.region, &b.resource)));
        DiscoveryReport { databases, failed_regions }
    }

    /// One resource, looked up by itself: what discovery says of it now. A resource without
    /// the admin tag is `NotManaged` (the event that triggered the run removed the tag).
    pub async fn discover_one(&self, config: &Config, locator: RdsLocator, bootstrap: bool) -> DiscoveredDatabase {
        let db_config = database_config(config, &locator);
        match self.describe(&locator).await {
            Ok(facts) if facts.tags.get(&config.tag_keys.admin_user).is_some_and(|a| !a.is_empty()) => {
                self.examine(config, TaggedDatabase { locator, facts, read_only: false }, bootstrap).await
            }
            Ok(facts) => {
                let mut entry = DiscoveredDatabase::new(db_config.name, facts.description, locator.region);
                entry.status = DiscoveryStatus::NotManaged;
                entry.reason = Some(format!(
                    "no tag {}: session-start refuses its sessions until it is tagged again",
                    config.tag_keys.admin_user
                ));
                entry
            }
            Err(e) => {
                let resource = describe(&locator.resource, &locator.region);
                let mut entry = DiscoveredDatabase::new(db_config.name, resource, locator.region);
                entry.reason = Some(e.to_string());
                entry
            }
        }
    }

    async fn examine(&self, config: &Config, found: TaggedDatabase, bootstrap: bool) -> DiscoveredDatabase {
        let db_config = database_config(config, &found.locator);
        let mut entry = DiscoveredDatabase::new(
            db_config.name.clone(),
            found.facts.description.clone(),
            found.locator.region.clone(),
        );
        // A listed read-only endpoint: its writer is looked up now, one database at a time.
        let facts = if found.read_only {
            match self.describe(&found.locator).await {
                Ok(facts) => facts,
                Err(e) => {
                    entry.reason = Some(e.to_string());
                    return entry;
                }
            }
        } else {
            found.facts
        };
        if let Some(replica) = &facts.replica {
            entry.writer = Some(match &replica.writer {
                Ok(writer) => writer.to_text(),
                Err(unreached) => unreached.writer.clone(),
            });
            if !db_config.allow_replica {
                entry.status = DiscoveryStatus::Skipped;
                entry.reason = Some(format!(
                    "{}: its entry has allow_replica: false, so sessions on it are refused",
                    replica.reason
                ));
                return entry;
            }
        }
        let db = match apply_facts(&db_config, &config.tag_keys, facts) {
            Ok(mut db) => {
                if let Location::Rds(configured) = &db_config.location {
                    db.hostaddr = configured.hostaddr;
                }
                db
            }
            Err(e) => {
                entry.reason = Some(e.to_string());
                return entry;
            }
        };
        // A read-only endpoint's checks and bootstrap are on its writer, then its own check.
        let writer_db = db.writer_database();
        let acted_on = writer_db.as_ref().unwrap_or(&db);
        let client = match self.connect_admin(acted_on, preflight::admin_database(acted_on)).await {
            Ok(client) => client,
            Err(e) => {
                let at = if writer_db.is_some() { " to the writer" } else { "" };
                entry.reason = Some(format!("the admin cannot log in{at}: {e}"));
                entry.preflight = Some(Report::login_failed(acted_on, &e));
                return entry;
            }
        };
        let (mut report, facts) = match preflight::check(&client, config, acted_on).await {
            Ok(checked) => checked,
            Err(e) => {
                entry.reason = Some(format!("preflight could not run: {e}"));
                return entry;
            }
        };
        if bootstrap {
            match preflight::bootstrap(&client, config, &facts).await {
                Ok(statements) => entry.bootstrapped = statements,
                Err(e) => entry.reason = Some(format!("bootstrap failed: {e}")),
            }
        }
        if writer_db.is_some() {
            let mut findings = Vec::new();
            for replica_db in db.replica_databases() {
                let replica = self.connect_admin(&replica_db, preflight::admin_database(&replica_db)).await;
                findings.push(preflight::check_replica(replica.as_ref().map(|c| c.client()), &replica_db).await);
            }
            report = Report::of_replica(&db, report, findings);
        }
        if report.ready && entry.reason.is_none() {
            entry.status = DiscoveryStatus::Ready;
        } else if entry.reason.is_none() {
            let failed: Vec<&str> = report
                .findings
                .iter()
                .filter(|f| f.status == preflight::Status::Fail)
                .map(|f| f.check.as_str())
                .collect();
            entry.reason = Some(format!("preflight failed: {}", failed.join(", ")));
        }
        entry.preflight = Some(report);
        entry
    }
}

fn database_config(config: &Config, locator: &RdsLocator) -> DatabaseConfig {
    config.database_for(locator).cloned().unwrap_or_else(|| DatabaseConfig::discovered(locator.clone()))
}
