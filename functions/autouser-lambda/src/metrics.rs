//! CloudWatch Embedded Metric Format: one JSON line on stdout per outcome, which CloudWatch
//! turns into metrics without any API call. Namespace `pg-autouser`, dimension `Function`
//! (and `Kind` for refusals).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use autouser_aws::discovery::{DiscoveryReport, DiscoveryStatus};

use crate::input::Function;

pub const NAMESPACE: &str = "pg-autouser";

/// The metric counted for an outcome status: `Activations`, `Deactivations`, `Drops`, or
/// `Noops` for the rest.
fn metric_for(status: &str) -> &'static str {
    match status {
        "active" => "Activations",
        "deactivated" => "Deactivations",
        "dropped" => "Drops",
        "in_use" => "SessionsEndedInUse",
        _ => "Noops",
    }
}

/// The EMF line of a successful outcome. Pure, for tests.
pub fn outcome_line(function: Function, status: &str, latency: Duration, now: SystemTime) -> Value {
    let metric = metric_for(status);
    json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": [
                    {"Name": metric, "Unit": "Count"},
                    {"Name": "ProvisioningLatency", "Unit": "Milliseconds"}
                ]
            }]
        },
        "Function": function.name(),
        metric: 1,
        "ProvisioningLatency": latency.as_secs_f64() * 1000.0,
    })
}

/// The EMF line counting one `metric` (`Refusals`, `TransientFailures`) of kind `kind`.
/// Pure, for tests.
pub fn kind_line(function: &str, metric: &str, kind: &str, now: SystemTime) -> Value {
    json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function", "Kind"]],
                "Metrics": [{"Name": metric, "Unit": "Count"}]
            }]
        },
        "Function": function,
        "Kind": kind,
        metric: 1,
    })
}

pub fn outcome(function: Function, status: &str, latency: Duration) {
    println!("{}", outcome_line(function, status, latency, SystemTime::now()));
}

/// A permanent error of kind `kind`: the session was refused.
pub fn refusal(function: Function, kind: &str) {
    println!("{}", kind_line(function.name(), "Refusals", kind, SystemTime::now()));
}

/// A transient error of kind `kind`: the invocation or record will be retried.
pub fn transient_failure(function: Function, kind: &str) {
    println!("{}", kind_line(function.name(), "TransientFailures", kind, SystemTime::now()));
}

/// An audit event that could not be put on the bus (it is in the log).
/// The EMF line of a new config (SSM or S3) that could not be read or is invalid: dimension
/// `Function` only, so that one alarm covers every kind; `Kind` (the error's kind, or
/// `ConfigInvalid`) is a property of the line, for Logs Insights. Pure, for tests.
pub fn config_failure_line(function: &str, kind: &str, now: SystemTime) -> Value {
    json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": [{"Name": "ConfigLoadFailures", "Unit": "Count"}]
            }]
        },
        "Function": function,
        "Kind": kind,
        "ConfigLoadFailures": 1,
    })
}

/// A new config that could not be loaded: the last good one stays in use.
pub fn config_load_failure(function: &str, kind: &str) {
    println!("{}", config_failure_line(function, kind, SystemTime::now()));
}

pub fn audit_failure(function: &str) {
    println!("{}", kind_line(function, "AuditFailures", "PutEvents", SystemTime::now()));
}

/// The EMF line of a discovery run: how many databases are in each state. Pure.
pub fn discovery_line(report: &DiscoveryReport, now: SystemTime) -> Value {
    let counts = [
        ("DatabasesReady", report.count(DiscoveryStatus::Ready)),
        ("DatabasesNeedingAttention", report.count(DiscoveryStatus::NeedsAttention)),
        ("RegionsNotListed", report.failed_regions.len()),
    ];
    counts_line("discovery", &counts, now)
}

pub fn discovery(report: &DiscoveryReport) {
    println!("{}", discovery_line(report, SystemTime::now()));
}

/// The EMF line of a reaper run: sessions closed, users locked, expired sessions left open
/// (their user is connected), members of the group able to log in that are not ours, and
/// failures (databases not reached and actions that failed).
/// Pure.
pub fn reaper_line(totals: &crate::reaper_totals::Totals, now: SystemTime) -> Value {
    let counts = [
        ("SessionsReaped", totals.closed),
        ("UsersLocked", totals.locked),
        ("ExpiredSessionsLeftOpen", totals.left_open),
        ("UnownedLogins", totals.unowned_logins),
        ("ReaperFailures", totals.failed),
        ("ActionsDeferred", totals.deferred_actions),
        ("DatabasesDeferred", totals.deferred_databases),
    ];
    counts_line(crate::reaper_totals::FUNCTION_NAME, &counts, now)
}

pub fn reaper(totals: &crate::reaper_totals::Totals) {
    println!("{}", reaper_line(totals, SystemTime::now()));
}

/// An EMF line of one run's `counts`, each declared as a `Count`, dimension `Function`.
fn counts_line(function: &str, counts: &[(&str, usize)], now: SystemTime) -> Value {
    let declared: Vec<Value> = counts.iter().map(|(name, _)| json!({"Name": name, "Unit": "Count"})).collect();
    let mut line = json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Function"]], "Metrics": declared}]
        },
        "Function": function,
    });
    for (name, count) in counts {
        line[*name] = json!(count);
    }
    line
}

fn millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_line_declares_its_metrics() {
        let line = outcome_line(Function::SessionStart, "active", Duration::from_millis(12), UNIX_EPOCH);
        assert_eq!(line["Activations"], 1);
        assert_eq!(line["ProvisioningLatency"], 12.0);
        assert_eq!(line["Function"], "session-start");
        let declared = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], NAMESPACE);
        assert_eq!(declared["Metrics"][0]["Name"], "Activations");
    }

    #[test]
    fn refusals_carry_their_kind_as_a_dimension() {
        let line = kind_line(Function::SessionEnd.name(), "Refusals", "UserConflict", UNIX_EPOCH);
        assert_eq!(line["Kind"], "UserConflict");
        assert_eq!(line["Refusals"], 1);
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], "Refusals");
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0], json!(["Function", "Kind"]));
    }

    #[test]
    fn end_statuses_map_to_their_metrics() {
        assert_eq!(metric_for("deactivated"), "Deactivations");
        assert_eq!(metric_for("dropped"), "Drops");
        assert_eq!(metric_for("noop"), "Noops");
    }

    #[test]
    fn reaper_line_counts_what_the_run_did() {
        let totals = crate::reaper_totals::Totals {
            closed: 2,
            locked: 1,
            left_open: 3,
            unowned_logins: 7,
            failed: 4,
            deferred_actions: 5,
            deferred_databases: 6,
        };
        let line = reaper_line(&totals, UNIX_EPOCH);
        assert_eq!(line["Function"], "reaper");
        assert_eq!((&line["SessionsReaped"], &line["UsersLocked"]), (&json!(2), &json!(1)));
        assert_eq!((&line["ExpiredSessionsLeftOpen"], &line["ReaperFailures"]), (&json!(3), &json!(4)));
        let declared: Vec<&str> = line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!((&line["ActionsDeferred"], &line["DatabasesDeferred"]), (&json!(5), &json!(6)));
        assert_eq!(line["UnownedLogins"], json!(7));
        assert_eq!(
            declared,
            [
                "SessionsReaped",
                "UsersLocked",
                "ExpiredSessionsLeftOpen",
                "UnownedLogins",
                "ReaperFailures",
                "ActionsDeferred",
                "DatabasesDeferred"
            ]
        );
    }

    #[test]
    fn discovery_line_counts_regions_not_listed() {
        let report = DiscoveryReport {
            databases: vec![],
            failed_regions: vec![autouser_aws::discovery::RegionFailure {
                region: "eu-west-1".into(),
                reason: "throttled".into(),
            }],
        };
        let line = discovery_line(&report, UNIX_EPOCH);
        assert_eq!(
            (&line["Function"], &line["RegionsNotListed"], &line["DatabasesReady"]),
            (&json!("discovery"), &json!(1), &json!(0))
        );
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Metrics"][2],
            json!({"Name": "RegionsNotListed", "Unit": "Count"})
        );
    }
}
