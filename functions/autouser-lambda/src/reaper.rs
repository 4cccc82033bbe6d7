//! The reaper function: on a schedule, runs the core's reaper ([`autouser_core::reaper`]) on
//! every database of the config, a few at a time. Expired sessions of users with no live
//! connection are closed as their lost session-ends would have, and managed users able to log
//! in with no open session are locked.
//!
//! Only configured databases are reaped: they are the only ones session-start provisions users
//! on (an event naming any other database is refused with `UnknownDatabase`), so a tagged RDS
//! database that discovery bootstrapped but the config does not list has no users of ours.
//!
//! It reports what it did in one summary log line, one line per action (the core's), an audit
//! event per user it changed, and an EMF line (`SessionsReaped`, `UsersLocked`,
//! `ExpiredSessionsLeftOpen`, `ReaperFailures`). A database it cannot reach or an action that
//! fails counts in `ReaperFailures`; an RDS database whose admin tag was removed (provisioning
//! turned off) is skipped, not a failure. The invocation itself fails only when no database
//! could be reaped and one failed, as discovery fails only when no region could be listed.

use std::time::{SystemTime, UNIX_EPOCH};

use autouser_aws::AwsContext;
use autouser_core::config::{Config, DatabaseConfig};
use autouser_core::reaper::{self, ReapReport};
use autouser_core::{preflight, Error};
use futures_util::StreamExt;
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};

use crate::audit::{self, Auditor};
use crate::{built_or_exit, init_tracing, FunctionError, InitError, Settings};

/// The function's name, as in logs, metrics and audit events.
pub const FUNCTION_NAME: &str = "reaper";

/// Default number of databases reaped at the same time.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// What one run did, over all databases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub closed: usize,
    pub locked: usize,
    pub left_open: usize,
    /// Databases not reached, and actions that failed.
    pub failed: usize,
}

impl Totals {
    fn of(results: &[(String, Result<ReapReport, Error>)]) -> Totals {
        let mut totals = Totals::default();
        for (_, result) in results {
            match result {
                Ok(report) => {
                    totals.closed += report.closed.len();
                    totals.locked += report.locked.len();
                    totals.left_open += report.left_open.len();
                    totals.failed += report.failed.len();
                }
                Err(error) if is_failure(error) => totals.failed += 1,
                Err(_) => {}
            }
        }
        totals
    }
}

/// Whether a database that could not be reaped counts as a failure: all but a database whose
/// admin tag was removed, where provisioning is off on purpose.
fn is_failure(error: &Error) -> bool {
    !matches!(error, Error::NotManaged { .. })
}

pub struct Reaper {
    config: Config,
    aws: AwsContext,
    auditor: Auditor,
    concurrency: usize,
}

impl Reaper {
    /// From the environment: what [`Settings::from_vars`] reads, and
    /// `AUTOUSER_REAPER_CONCURRENCY` (databases at a time, default 4). Audit events go to
    /// `AUTOUSER_AUDIT_EVENT_BUS`.
    pub async fn from_env() -> Result<Reaper, InitError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let settings = Settings::from_vars(var)?;
        let concurrency = concurrency_from_vars(var)?;
        let aws = AwsContext::from_env().await;
        let auditor = match settings.audit_bus {
            Some(bus) => Auditor::to_bus(aws.sdk_config(), bus, settings.audit_source),
            None => Auditor::log_only(),
        };
        Ok(Reaper::new(settings.config, aws, auditor).with_concurrency(concurrency))
    }

    pub fn new(config: Config, aws: AwsContext, auditor: Auditor) -> Reaper {
        Reaper { config, aws, auditor, concurrency: DEFAULT_CONCURRENCY }
    }

    pub fn with_concurrency(self, concurrency: usize) -> Reaper {
        Reaper { concurrency: concurrency.max(1), ..self }
    }

    /// One run, whatever the trigger (the schedule, or a direct invoke).
    pub async fn handle(&self, _event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.run_at(now).await
    }

    /// One run as if the time were `now` (Unix seconds): the summary, or an error when no
    /// database could be reaped and one failed.
    pub async fn run_at(&self, now: u64) -> Result<Value, FunctionError> {
        // Unordered: a database that hangs (until the connect timeout) holds its own slot
        // only, where `buffered` would start nothing new until it is done. The summary keeps
        // the config's order.
        let mut results: Vec<(usize, String, Result<ReapReport, Error>)> =
            futures_util::stream::iter(self.config.databases.iter().enumerate())
                .map(|(index, db_config)| async move {
                    (index, db_config.name.clone(), self.reap_database(db_config, now).await)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        results.sort_by_key(|(index, _, _)| *index);
        let results: Vec<(String, Result<ReapReport, Error>)> =
            results.into_iter().map(|(_, database, result)| (database, result)).collect();
        for (database, result) in &results {
            match result {
                Ok(report) => self.report(report).await,
                Err(error) if is_failure(error) => tracing::error!(
                    database = %database,
                    kind = error.kind(),
                    error = %error,
                    "the reaper could not reap this database; its expired sessions stay open until a run does"
                ),
                Err(error) => tracing::info!(database = %database, error = %error, "the reaper skipped this database"),
            }
        }
        let totals = Totals::of(&results);
        crate::metrics::reaper(&totals);
        let summary = summary(&results, &totals);
        tracing::info!(summary = %summary, "reaper finished");
        let unreached: Vec<String> = results
            .iter()
            .filter_map(|(database, result)| {
                result.as_ref().err().filter(|e| is_failure(e)).map(|e| format!("{database}: {e}"))
            })
            .collect();
        let reaped = results.iter().filter(|(_, result)| result.is_ok()).count();
        if reaped == 0 && !unreached.is_empty() {
            return Err(FunctionError {
                kind: "DependencyUnavailable",
                message: format!("no database could be reaped: {}", unreached.join("; ")),
            });
        }
        Ok(summary)
    }

    /// Boxed: the engine's futures are deep (see `process_event`).
    fn reap_database<'a>(
        &'a self,
        db_config: &'a DatabaseConfig,
        now: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ReapReport, Error>> + Send + 'a>> {
        Box::pin(async move {
            let db = self.aws.resolve_database(&self.config, db_config).await?;
            let admin_db_name = preflight::admin_database(&db);
            let connection = self.aws.connect_admin(&db, admin_db_name).await?;
            let connect_to = |db_name: String| {
                let db = &db;
                async move { self.aws.connect_admin(db, &db_name).await }
            };
            reaper::reap(&connection, admin_db_name, &self.config, &db, now, connect_to).await
        })
    }

    /// Logs what needs a person, and audits what changed a user.
    async fn report(&self, report: &ReapReport) {
        for open in &report.left_open {
            tracing::warn!(
                database = %report.database,
                db_user = %open.db_user,
                session_id = %open.session_id,
                started_at = open.started_at,
                connections = open.connections,
                "an expired session stays open because its user is still connected; set \
                 terminate_connections or end the session to close it"
            );
        }
        for failed in &report.failed {
            tracing::error!(
                database = %report.database,
                db_user = %failed.db_user,
                kind = %failed.kind,
                error = %failed.error,
                "the reaper could not close or lock this user; the next run tries again"
            );
        }
        let closed = report.closed.iter().filter_map(|closed| audit::of_reaped_session(&report.database, closed));
        let locked = report.locked.iter().map(|user| audit::of_locked_user(&report.database, user));
        self.auditor.record_all(FUNCTION_NAME, closed.chain(locked).collect()).await;
    }
}

/// The run's answer: the totals, and per database its report or why it was not reached.
fn summary(results: &[(String, Result<ReapReport, Error>)], totals: &Totals) -> Value {
    let databases: Vec<Value> = results
        .iter()
        .map(|(database, result)| match result {
            Ok(report) => serde_json::to_value(report).expect("reports serialise"),
            Err(error) => json!({"database": database, "kind": error.kind(), "error": error.to_string()}),
        })
        .collect();
    json!({
        "closed": totals.closed,
        "locked": totals.locked,
        "left_open": totals.left_open,
        "failed": totals.failed,
        "databases": databases,
    })
}

fn concurrency_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<usize, InitError> {
    match var("AUTOUSER_REAPER_CONCURRENCY") {
        None => Ok(DEFAULT_CONCURRENCY),
        Some(text) => text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            InitError::Reaper(format!("AUTOUSER_REAPER_CONCURRENCY is {text:?}: set a positive number"))
        }),
    }
}

/// The reaper function's `main`.
pub async fn run() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let reaper = built_or_exit(FUNCTION_NAME, Reaper::from_env().await);
    lambda_runtime::run(lambda_runtime::service_fn(|event| reaper.handle(event))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_comes_from_the_environment() {
        let none = |_: &str| None;
        assert_eq!(concurrency_from_vars(none).unwrap(), DEFAULT_CONCURRENCY);
        assert_eq!(concurrency_from_vars(|_: &str| Some("2".to_string())).unwrap(), 2);
        let zero = concurrency_from_vars(|_: &str| Some("0".to_string())).unwrap_err().to_string();
        assert!(zero.contains("AUTOUSER_REAPER_CONCURRENCY") && zero.contains("positive number"), "{zero}");
    }

    #[test]
    fn totals_count_unreached_databases_as_failures_but_not_untagged_ones() {
        let report = |closed: usize| ReapReport {
            database: "orders".into(),
            managed_users: 3,
            closed: (0..closed)
                .map(|i| reaper::Closed {
                    db_user: format!("u{i}"),
                    session_id: "s".into(),
                    db_name: "app".into(),
                    mode: autouser_core::policy::CreateDbUserMode::Keep,
                    started_at: 0,
                    status: autouser_core::outcome::EndStatus::Deactivated,
                    reason: None,
                })
                .collect(),
            locked: vec!["idle".into()],
            left_open: vec![],
            failed: vec![],
        };
        let results = vec![
            ("orders".to_string(), Ok(report(2))),
            ("down".to_string(), Err(Error::UnknownDatabase { database: "down".into() })),
            (
                "untagged".to_string(),
                Err(Error::NotManaged {
                    database: "untagged".into(),
                    resource: "db:untagged".into(),
                    tag: "teleport.dev/db-admin".into(),
                }),
            ),
        ];
        let totals = Totals::of(&results);
        assert_eq!(totals, Totals { closed: 2, locked: 1, left_open: 0, failed: 1 });
        let summary = summary(&results, &totals);
        assert_eq!(summary["databases"][1]["kind"], "UnknownDatabase");
        assert_eq!(summary["databases"][0]["closed"][1]["db_user"], "u1");
        assert_eq!(summary["databases"][2]["kind"], "NotManaged", "a database with provisioning off is skipped");
    }
}
