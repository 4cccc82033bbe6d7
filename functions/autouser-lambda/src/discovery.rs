//! The discovery function: on a schedule, or when RDS says a database was created or its tags
//! changed, find every tagged PostgreSQL database, check it (preflight), bootstrap it, and
//! report each as an EventBridge event (`Database Ready`, `Database Needs Attention`,
//! `Database Not Managed`) and all in one summary log line.

use autouser_aws::discovery::{DiscoveredDatabase, DiscoveryOptions, DiscoveryReport, DiscoveryStatus};
use autouser_aws::AwsContext;
use autouser_policy::config::{Config, RdsLocator, RdsResource};
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};

use crate::bus::EventBus;
use crate::{built_or_exit, init_tracing, FunctionError, InitError, Settings};

/// Default number of databases checked at the same time.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Why the function runs. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A schedule, an RDS event, or anything else: look at every tagged database.
    Sweep,
    /// CloudTrail recorded a tag change on this resource: sweep, and report the resource even
    /// when it no longer carries the admin tag.
    TagChange(RdsLocator),
}

/// Tells a CloudTrail `AddTagsToResource`/`RemoveTagsFromResource` event from the rest.
pub fn trigger(payload: &Value) -> Trigger {
    let detail = &payload["detail"];
    let tag_change = matches!(detail["eventName"].as_str(), Some("AddTagsToResource" | "RemoveTagsFromResource"));
    if !tag_change || detail["eventSource"] != "rds.amazonaws.com" {
        return Trigger::Sweep;
    }
    detail["requestParameters"]["resourceName"]
        .as_str()
        .and_then(locator_of_arn)
        .map_or(Trigger::Sweep, Trigger::TagChange)
}

/// `arn:aws:rds:<region>:<account>:db:<id>` or `…:cluster:<id>`.
fn locator_of_arn(arn: &str) -> Option<RdsLocator> {
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, "rds", region, _, kind, id] = parts.as_slice() else { return None };
    let resource = match *kind {
        "db" => RdsResource::Instance(id.to_string()),
        "cluster" => RdsResource::Cluster(id.to_string()),
        _ => return None,
    };
    Some(RdsLocator { resource, region: region.to_string(), hostaddr: None })
}

/// The EventBridge `detail-type` of a database's report, if it gets one.
pub fn detail_type(status: DiscoveryStatus) -> Option<&'static str> {
    match status {
        DiscoveryStatus::Ready => Some("Database Ready"),
        DiscoveryStatus::NeedsAttention => Some("Database Needs Attention"),
        DiscoveryStatus::NotManaged => Some("Database Not Managed"),
        DiscoveryStatus::Skipped => None,
    }
}

pub struct Discovery {
    config: crate::live_config::LiveConfig,
    aws: AwsContext,
    options: DiscoveryOptions,
    bus: Option<EventBus>,
}

impl Discovery {
    /// From the environment: what [`Settings::from_vars`] reads, and
    /// `AUTOUSER_DISCOVERY_REGIONS` (comma-separated; default `AWS_REGION`),
    /// `AUTOUSER_DISCOVERY_CONCURRENCY` (default 8), `AUTOUSER_DISCOVERY_BOOTSTRAP`
    /// (`true` or `false`, default `true`). Reports go to `AUTOUSER_AUDIT_EVENT_BUS`.
    pub async fn from_env() -> Result<Discovery, InitError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let settings = Settings::from_vars(var)?;
        let options = options_from_vars(var)?;
        let aws = AwsContext::from_env().await;
        let bus = settings.audit_bus.map(|name| EventBus::new(aws.sdk_config(), name, settings.audit_source));
        let config = settings.config.load(&aws, "discovery").await?;
        Ok(Discovery { config, aws, options, bus })
    }

    pub fn new(config: Config, aws: AwsContext, options: DiscoveryOptions, bus: Option<EventBus>) -> Discovery {
        Discovery { config: crate::live_config::LiveConfig::fixed(config), aws, options, bus }
    }

    /// One run. Fails (so that EventBridge retries) only when no region could be listed.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
        let trigger = trigger(&event.payload);
        let config = self.config.get(&self.aws).await;
        let mut report = self.aws.discover(&config, &self.options).await;
        if let Trigger::TagChange(locator) = trigger {
            let id = locator.resource.id().to_string();
            let listed =
                report.databases.iter().any(|d| d.region == locator.region && d.resource.contains(&format!(" {id} ")));
            if !listed {
                report.databases.push(self.aws.discover_one(&config, locator, self.options.bootstrap).await);
            }
        }
        for db in report.databases.iter().filter(|d| d.status == DiscoveryStatus::NeedsAttention) {
            tracing::warn!(database = %db.database, resource = %db.resource, reason = ?db.reason, "database needs attention");
        }
        let rejected = self.publish(&report.databases).await;
        let summary = summary(&report, rejected);
        tracing::info!(summary = %summary, "discovery finished");
        crate::metrics::discovery(&report);
        if !self.options.regions.is_empty() && report.failed_regions.len() == self.options.regions.len() {
            let reasons: Vec<String> =
                report.failed_regions.iter().map(|f| format!("{}: {}", f.region, f.reason)).collect();
            return Err(FunctionError {
                kind: "DependencyUnavailable",
                message: format!("no region could be listed: {}", reasons.join("; ")),
            });
        }
        Ok(summary)
    }

    /// Puts one event per reported database on the bus; returns how many were rejected.
    async fn publish(&self, databases: &[DiscoveredDatabase]) -> usize {
        let Some(bus) = &self.bus else { return 0 };
        let events: Vec<(&str, Value)> = databases
            .iter()
            .filter_map(|db| Some((detail_type(db.status)?, serde_json::to_value(db).expect("reports serialise"))))
            .collect();
        let rejected = bus.put(&events).await;
        for (index, problem) in &rejected {
            tracing::error!(
                report = %events[*index].1,
                bus = bus.name(),
                error = %problem,
                "could not put the discovery report on the EventBridge bus; it is only in this log. \
                 Check the bus name and the function's events:PutEvents permission"
            );
        }
        rejected.len()
    }
}

fn summary(report: &DiscoveryReport, events_rejected: usize) -> Value {
    json!({
        "ready": report.count(DiscoveryStatus::Ready),
        "needs_attention": report.count(DiscoveryStatus::NeedsAttention),
        "skipped": report.count(DiscoveryStatus::Skipped),
        "not_managed": report.count(DiscoveryStatus::NotManaged),
        "failed_regions": report.failed_regions,
        "events_rejected": events_rejected,
    })
}

fn options_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<DiscoveryOptions, InitError> {
    let regions: Vec<String> = var("AUTOUSER_DISCOVERY_REGIONS")
        .or_else(|| var("AWS_REGION"))
        .ok_or(InitError::Discovery("set AUTOUSER_DISCOVERY_REGIONS (comma-separated) or AWS_REGION".into()))?
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let concurrency = match var("AUTOUSER_DISCOVERY_CONCURRENCY") {
        None => DEFAULT_CONCURRENCY,
        Some(text) => text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            InitError::Discovery(format!("AUTOUSER_DISCOVERY_CONCURRENCY is {text:?}: set a positive number"))
        })?,
    };
    let bootstrap = match var("AUTOUSER_DISCOVERY_BOOTSTRAP").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(InitError::Discovery(format!("AUTOUSER_DISCOVERY_BOOTSTRAP is {other:?}: set true or false")))
        }
    };
    Ok(DiscoveryOptions { regions, concurrency, bootstrap })
}

/// The discovery function's `main`.
pub async fn run() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let discovery = built_or_exit("discovery", Discovery::from_env().await);
    // Boxed: see `crate::run`.
    lambda_runtime::run(lambda_runtime::service_fn(|event| Box::pin(discovery.handle(event)))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudtrail_tag_changes_name_the_resource() {
        let event = json!({"source": "aws.rds", "detail-type": "AWS API Call via CloudTrail",
            "detail": {"eventSource": "rds.amazonaws.com", "eventName": "RemoveTagsFromResource",
                       "requestParameters": {"resourceName": "arn:aws:rds:eu-west-1:123456789012:cluster:analytics",
                                             "tagKeys": ["teleport.dev/db-admin"]}}});
        assert_eq!(
            trigger(&event),
            Trigger::TagChange(RdsLocator {
                resource: RdsResource::Cluster("analytics".into()),
                region: "eu-west-1".into(),
                hostaddr: None
            })
        );
    }

    #[test]
    fn schedules_and_rds_events_sweep() {
        let schedule = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(trigger(&schedule), Trigger::Sweep);
        let created = json!({"source": "aws.rds", "detail-type": "RDS DB Instance Event",
                             "detail": {"EventID": "RDS-EVENT-0005", "SourceIdentifier": "orders"}});
        assert_eq!(trigger(&created), Trigger::Sweep);
        let odd_arn = json!({"detail": {"eventSource": "rds.amazonaws.com", "eventName": "AddTagsToResource",
                             "requestParameters": {"resourceName": "arn:aws:rds:us-east-1:1:snapshot:s"}}});
        assert_eq!(trigger(&odd_arn), Trigger::Sweep);
    }

    #[test]
    fn options_come_from_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let options = options_from_vars(vars(&[("AWS_REGION", "us-east-1")])).unwrap();
        assert_eq!((options.regions, options.concurrency, options.bootstrap), (vec!["us-east-1".into()], 8, true));
        let options = options_from_vars(vars(&[
            ("AUTOUSER_DISCOVERY_REGIONS", "eu-west-1, us-east-2"),
            ("AUTOUSER_DISCOVERY_CONCURRENCY", "3"),
            ("AUTOUSER_DISCOVERY_BOOTSTRAP", "false"),
        ]))
        .unwrap();
        assert_eq!(options.regions, ["eu-west-1", "us-east-2"]);
        assert_eq!((options.concurrency, options.bootstrap), (3, false));
        let bad = options_from_vars(vars(&[("AWS_REGION", "x"), ("AUTOUSER_DISCOVERY_CONCURRENCY", "0")]));
        assert!(bad.unwrap_err().to_string().contains("positive number"));
        assert!(options_from_vars(vars(&[])).unwrap_err().to_string().contains("AUTOUSER_DISCOVERY_REGIONS"));
    }
}
