//! The reaper function: on a schedule, runs the core's reaper ([`autouser_engine::reaper`]) on
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
//!
//! A run stops starting work shortly before the invocation's deadline ([`stop_time`]): the
//! databases and actions it did not start are counted as deferred (`DatabasesDeferred`,
//! `ActionsDeferred`) and the next run does them, so a backlog larger than one run drains
//! over several runs, each reported in full. Each database is reported (logs, audit events)
//! as soon as it is done.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autouser_aws::AwsContext;
use autouser_engine::reaper::{self, ReapReport};
use autouser_engine::{preflight, Error};
use autouser_policy::config::{Config, DatabaseConfig};
use futures_util::StreamExt;
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};

use crate::audit::{self, Auditor};
use crate::pool::{self, ReplicaConnection};
pub use crate::reaper_totals::{Totals, FUNCTION_NAME};
use crate::{built_or_exit, init_tracing, FunctionError, InitError, Settings};

/// Default number of databases reaped at the same time.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// The most a run keeps, before the invocation's deadline, for the actions under way and
/// the report ([`stop_time`]).
pub const STOP_MARGIN: Duration = Duration::from_secs(30);

/// What a run did with one database.
#[derive(Debug)]
pub enum DatabaseRun {
    Reaped(ReapReport),
    /// Not reached or not resolved: a failure, unless provisioning is off ([`is_failure`]).
    NotReaped(Error),
    /// Not started: the run's stop time had come.
    Deferred,
}

impl Totals {
    fn of(results: &[(String, DatabaseRun)]) -> Totals {
        let mut totals = Totals::default();
        for (_, result) in results {
            match result {
                DatabaseRun::Reaped(report) => {
                    totals.closed += report.closed.len();
                    totals.locked += report.locked.len();
                    totals.left_open += report.left_open.len();
                    totals.unowned_logins += report.unowned_logins.len();
                    totals.failed += report.failed.len();
                    totals.deferred_actions += report.deferred;
                }
                DatabaseRun::NotReaped(error) if is_failure(error) => totals.failed += 1,
                DatabaseRun::NotReaped(_) => {}
                DatabaseRun::Deferred => totals.deferred_databases += 1,
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
    config: crate::live_config::LiveConfig,
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
        let config = settings.config.load(&aws, FUNCTION_NAME).await?;
        Ok(Reaper { config, aws, auditor, concurrency: DEFAULT_CONCURRENCY }.with_concurrency(concurrency))
    }

    pub fn new(config: Config, aws: AwsContext, auditor: Auditor) -> Reaper {
        Reaper { config: crate::live_config::LiveConfig::fixed(config), aws, auditor, concurrency: DEFAULT_CONCURRENCY }
    }

    pub fn with_concurrency(self, concurrency: usize) -> Reaper {
        Reaper { concurrency: concurrency.max(1), ..self }
    }

    /// One run, whatever the trigger (the schedule, or a direct invoke), that stops starting
    /// work shortly before the invocation's deadline.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, FunctionError> {
        let now = SystemTime::now();
        let stop_at = stop_time(event.context.deadline, now, Instant::now());
        self.run_until(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()), stop_at).await
    }

    /// One run as if the time were `now` (Unix seconds), with no stop time.
    pub async fn run_at(&self, now: u64) -> Result<Value, FunctionError> {
        self.run_until(now, None).await
    }

    /// One run as if the time were `now` (Unix seconds) that starts no database and no action
    /// after `stop_at`: the summary, or an error when no database could be reaped and one
    /// failed.
    pub async fn run_until(&self, now: u64, stop_at: Option<Instant>) -> Result<Value, FunctionError> {
        // Unordered: a database that hangs (until the connect timeout) holds its own slot
        // only, where `buffered` would start nothing new until it is done. The summary keeps
        // the config's order.
        let config = self.config.get(&self.aws).await;
        let config = &*config;
        let mut results: Vec<(usize, String, DatabaseRun)> =
            futures_util::stream::iter(config.databases.iter().enumerate())
                .map(|(index, db_config)| async move {
                    let result = if stop_at.is_some_and(|stop_at| Instant::now() >= stop_at) {
                        DatabaseRun::Deferred
                    } else {
                        match self.reap_database(config, db_config, now, stop_at).await {
                            Ok(report) => DatabaseRun::Reaped(report),
                            Err(error) => DatabaseRun::NotReaped(error),
                        }
                    };
                    self.report(&db_config.name, &result).await;
                    (index, db_config.name.clone(), result)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        results.sort_by_key(|(index, _, _)| *index);
        let results: Vec<(String, DatabaseRun)> =
            results.into_iter().map(|(_, database, result)| (database, result)).collect();
        let totals = Totals::of(&results);
        crate::metrics::reaper(&totals);
        let summary = summary(&results, &totals);
        tracing::info!(summary = %summary, "reaper finished");
        let unreached: Vec<String> = results
            .iter()
            .filter_map(|(database, result)| match result {
                DatabaseRun::NotReaped(error) if is_failure(error) => Some(format!("{database}: {error}")),
                _ => None,
            })
            .collect();
        let reaped = results.iter().filter(|(_, result)| matches!(result, DatabaseRun::Reaped(_))).count();
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
        config: &'a Config,
        db_config: &'a DatabaseConfig,
        now: u64,
        stop_at: Option<Instant>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ReapReport, Error>> + Send + 'a>> {
        Box::pin(async move {
            let db = self.aws.resolve_database_for_end(config, db_config).await?;
            let admin_db_name = preflight::admin_database(&db);
            // A read replica's entry: the reaper acts on its writer, and counts and ends the
            // users' connections on the replica.
            let writer_db = db.writer_database();
            let acted_on = writer_db.as_ref().unwrap_or(&db);
            let connection = self.aws.connect_admin(acted_on, admin_db_name).await?;
            let mut replica_connections = Vec::new();
            for replica in db.replica_databases() {
                let connection = self.aws.connect_admin(&replica, admin_db_name).await.map(Arc::new);
                replica_connections.push(ReplicaConnection { replica, connection });
            }
            let replicas = pool::replicas(&replica_connections);
            let connect_to = |db_name: String| async move { self.aws.connect_admin(acted_on, &db_name).await };
            reaper::reap(&connection, admin_db_name, config, &db, &replicas, now, stop_at, connect_to).await
        })
    }

    /// Logs what needs a person, and audits what changed a user, for one database.
    async fn report(&self, database: &str, result: &DatabaseRun) {
        let report = match result {
            DatabaseRun::Reaped(report) => report,
            DatabaseRun::NotReaped(error) if is_failure(error) => {
                tracing::error!(
                    database = %database,
                    kind = error.kind(),
                    error = %error,
                    "the reaper could not reap this database; its expired sessions stay open until a run does"
                );
                return;
            }
            DatabaseRun::NotReaped(error) => {
                tracing::info!(database = %database, error = %error, "the reaper skipped this database");
                return;
            }
            DatabaseRun::Deferred => {
                tracing::warn!(
                    database = %database,
                    "the run's time was up before this database; the next run reaps it. If this \
                     repeats, give the function a longer timeout or raise AUTOUSER_REAPER_CONCURRENCY"
                );
                return;
            }
        };
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
        if !report.unowned_logins.is_empty() {
            tracing::warn!(
                database = %report.database,
                db_users = ?report.unowned_logins,
                "these members of the managed group can log in but carry no pg-autouser ledger \
                 (Teleport itself or another admin provisioned them); the reaper leaves them alone. \
                 Move them out of the managed group, or lock them yourself if they should not log in"
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
        if report.deferred > 0 {
            tracing::warn!(
                database = %report.database,
                deferred = report.deferred,
                "the run's time was up before these closes and locks; the next run does them. If \
                 this repeats, give the function a longer timeout"
            );
        }
        let closed = report.closed.iter().filter_map(|closed| audit::of_reaped_session(&report.database, closed));
        let locked = report.locked.iter().map(|user| audit::of_locked_user(&report.database, user));
        let dropped =
            report.retried_drops.iter().filter_map(|retried| audit::of_retried_drop(&report.database, retried));
        self.auditor.record_all(FUNCTION_NAME, closed.chain(locked).chain(dropped).collect()).await;
    }
}

/// When a run stops starting work: before the invocation's `deadline` (Unix milliseconds, as
/// the Lambda runtime gives it) by a quarter of the time left, at most [`STOP_MARGIN`], which
/// leaves the actions under way and the report time to finish. `None` without a deadline, or
/// with one that is no Unix time: `cargo lambda watch` sends its timeout there (600000).
pub fn stop_time(deadline: u64, now: SystemTime, now_instant: Instant) -> Option<Instant> {
    /// 2020-01-01 in Unix milliseconds: no real deadline comes before it.
    const EARLIEST_DEADLINE: u64 = 1_577_836_800_000;
    if deadline < EARLIEST_DEADLINE {
        return None;
    }
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(deadline.saturating_sub(now_ms));
    Some(now_instant + left - (left / 4).min(STOP_MARGIN))
}

/// The run's answer: the totals, and per database its report, why it was not reached, or
/// that it was deferred.
fn summary(results: &[(String, DatabaseRun)], totals: &Totals) -> Value {
    let databases: Vec<Value> = results
        .iter()
        .map(|(database, result)| match result {
            DatabaseRun::Reaped(report) => serde_json::to_value(report).expect("reports serialise"),
            DatabaseRun::NotReaped(error) => {
                json!({"database": database, "kind": error.kind(), "error": error.to_string()})
            }
            DatabaseRun::Deferred => json!({"database": database, "deferred": true}),
        })
        .collect();
    json!({
        "closed": totals.closed,
        "locked": totals.locked,
        "left_open": totals.left_open,
        "unowned_logins": totals.unowned_logins,
        "failed": totals.failed,
        "deferred_actions": totals.deferred_actions,
        "deferred_databases": totals.deferred_databases,
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
    // Boxed: see `crate::run`.
    lambda_runtime::run(lambda_runtime::service_fn(|event| Box::pin(reaper.handle(event)))).await
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
                    mode: autouser_policy::policy::CreateDbUserMode::Keep,
                    started_at: 0,
                    status: autouser_policy::outcome::EndStatus::Deactivated,
                    reason: None,
                })
                .collect(),
            locked: vec!["idle".into()],
            left_open: vec![],
            failed: vec![],
            unowned_logins: vec!["teleports".into()],
            retried_drops: vec![],
            deferred: 3,
        };
        let results = vec![
            ("orders".to_string(), DatabaseRun::Reaped(report(2))),
            ("down".to_string(), DatabaseRun::NotReaped(Error::UnknownDatabase { database: "down".into() })),
            (
                "untagged".to_string(),
                DatabaseRun::NotReaped(Error::NotManaged {
                    database: "untagged".into(),
                    resource: "db:untagged".into(),
                    tag: "teleport.dev/db-admin".into(),
                }),
            ),
            ("late".to_string(), DatabaseRun::Deferred),
        ];
        let totals = Totals::of(&results);
        let expected = Totals {
            closed: 2,
            locked: 1,
            left_open: 0,
            unowned_logins: 1,
            failed: 1,
            deferred_actions: 3,
            deferred_databases: 1,
        };
        assert_eq!(totals, expected);
        let summary = summary(&results, &totals);
        assert_eq!(summary["databases"][1]["kind"], "UnknownDatabase");
        assert_eq!(summary["databases"][0]["closed"][1]["db_user"], "u1");
        assert_eq!(summary["databases"][0]["deferred"], 3);
        assert_eq!(summary["databases"][0]["unowned_logins"], json!(["teleports"]));
        assert_eq!(summary["unowned_logins"], 1);
        assert_eq!(summary["databases"][2]["kind"], "NotManaged", "a database with provisioning off is skipped");
        assert_eq!(summary["databases"][3], json!({"database": "late", "deferred": true}));
        assert_eq!((&summary["deferred_actions"], &summary["deferred_databases"]), (&json!(3), &json!(1)));
    }

    #[test]
    fn a_run_stops_starting_work_a_quarter_of_its_time_before_the_deadline_at_most_thirty_seconds() {
        let now_secs = 1_795_970_000; // 2026-11-29
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let instant = Instant::now();
        let deadline_in = |secs: u64| (now_secs + secs) * 1000;
        assert_eq!(stop_time(deadline_in(300), now, instant), Some(instant + Duration::from_secs(270)));
        assert_eq!(stop_time(deadline_in(60), now, instant), Some(instant + Duration::from_secs(45)));
        assert_eq!(stop_time(deadline_in(0), now, instant), Some(instant), "a deadline passed stops at once");
        assert_eq!(stop_time(0, now, instant), None, "no deadline, no stop time");
        assert_eq!(stop_time(600_000, now, instant), None, "cargo lambda's timeout is no deadline");
    }
}
