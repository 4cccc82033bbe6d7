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
pub fn kind_line(function: Function, metric: &str, kind: &str, now: SystemTime) -> Value {
    json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function", "Kind"]],
                "Metrics": [{"Name": metric, "Unit": "Count"}]
            }]
        },
        "Function": function.name(),
        "Kind": kind,
        metric: 1,
    })
}

pub fn outcome(function: Function, status: &str, latency: Duration) {
    println!("{}", outcome_line(function, status, latency, SystemTime::now()));
}

/// A permanent error of kind `kind`: the session was refused.
pub fn refusal(function: Function, kind: &str) {
    println!("{}", kind_line(function, "Refusals", kind, SystemTime::now()));
}

/// A transient error of kind `kind`: the invocation or record will be retried.
pub fn transient_failure(function: Function, kind: &str) {
    println!("{}", kind_line(function, "TransientFailures", kind, SystemTime::now()));
}

/// An audit event that could not be put on the bus (it is in the log).
pub fn audit_failure(function: Function) {
    println!("{}", kind_line(function, "AuditFailures", "PutEvents", SystemTime::now()));
}

/// The EMF line of a discovery run: how many databases are in each state. Pure.
pub fn discovery_line(report: &DiscoveryReport, now: SystemTime) -> Value {
    json!({
        "_aws": {
            "Timestamp": millis(now),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Function"]],
                "Metrics": [
                    {"Name": "DatabasesReady", "Unit": "Count"},
                    {"Name": "DatabasesNeedingAttention", "Unit": "Count"},
                    {"Name": "RegionsNotListed", "Unit": "Count"}
                ]
            }]
        },
        "Function": "discovery",
        "DatabasesReady": report.count(DiscoveryStatus::Ready),
        "DatabasesNeedingAttention": report.count(DiscoveryStatus::NeedsAttention),
        "RegionsNotListed": report.failed_regions.len(),
    })
}

pub fn discovery(report: &DiscoveryReport) {
    println!("{}", discovery_line(report, SystemTime::now()));
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
        let line = kind_line(Function::SessionEnd, "Refusals", "UserConflict", UNIX_EPOCH);
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
}
