//! Audit events: what happened to whom, put on an EventBridge bus when one is configured.
//!
//! | outcome                                   | `detail-type`               |
//! |-------------------------------------------|-----------------------------|
//! | session-start applied (or redelivered)    | `Database User Activated`   |
//! | session-end: last session, `keep`         | `Database User Deactivated` |
//! | session-end: last session, dropped        | `Database User Dropped`     |
//! | a permanent error, or an unreadable event | `Database Session Refused`  |
//! | reaper: an expired session was the last, `keep` | `Database User Deactivated` |
//! | reaper: an expired session was the last, dropped | `Database User Dropped`  |
//! | reaper: a user able to log in with no session, locked | `Database User Deactivated` |
//!
//! Nothing is audited for a session end that leaves other sessions open or changes nothing,
//! nor for a transient failure (it is retried, and audited when it settles). The reaper's
//! events say `"function": "reaper"` and why in `reason`; they have no person (`user`), since
//! the ledger keeps only the database user.
//!
//! Every audit event is also logged (`audit` field), so the record exists in CloudWatch Logs
//! even without a bus or when `PutEvents` fails. A failed put never fails the session: the
//! database change is already made, and the log line and the `AuditFailures` metric say so.

use autouser_aws::SdkConfig;
use autouser_engine::reaper::{Closed, RetriedDrop};
use autouser_policy::identity::VerifiedIdentity;
use autouser_policy::outcome::EndStatus;
use serde_json::{json, Value};

use crate::bus::EventBus;
use crate::input::Function;
use crate::metrics;

/// Default `source` of the audit events.
pub const DEFAULT_AUDIT_SOURCE: &str = "autouser.audit";

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub detail_type: &'static str,
    pub detail: Value,
}

/// The fields of the session event, read leniently: a refused event may be malformed.
fn from_event(event: Option<&Value>, field: &str) -> Value {
    event.and_then(|e| e.get(field)).cloned().unwrap_or(Value::Null)
}

/// The fields every session audit event has. With a verified identity token, the person and
/// their access roles are the token's, and `identity` names the issuer and the token's `sub`
/// and `jti` (never the token); without one, there is no `identity` and they are the event's.
fn detail(
    function: Function,
    event: Option<&Value>,
    verified: Option<&VerifiedIdentity>,
) -> serde_json::Map<String, Value> {
    let mut detail = serde_json::Map::new();
    detail.insert("function".into(), Value::from(function.name()));
    for field in ["session_id", "user", "origin_cluster", "database", "db_name"] {
        detail.insert(field.into(), from_event(event, field));
    }
    // The person's access roles, as the event names them.
    detail.insert("access_roles".into(), from_event(event, "roles"));
    if let Some(verified) = verified {
        detail.insert("user".into(), Value::from(verified.user.clone()));
        if let Some(roles) = &verified.roles {
            detail.insert("access_roles".into(), json!(roles));
        }
        let identity = json!({"issuer": verified.issuer, "sub": verified.subject, "jti": verified.token_id});
        detail.insert("identity".into(), identity);
    }
    detail
}

/// The audit event of a successful outcome, if it is one worth auditing. Pure.
pub fn of_outcome(
    function: Function,
    event: &Value,
    verified: Option<&VerifiedIdentity>,
    outcome: &Value,
) -> Option<AuditEvent> {
    let detail_type = match outcome.get("status").and_then(Value::as_str)? {
        "active" => "Database User Activated",
        "deactivated" => "Database User Deactivated",
        "dropped" => "Database User Dropped",
        _ => return None,
    };
    let mut detail = detail(function, Some(event), verified);
    detail.insert("db_user".into(), outcome.get("db_user").cloned().unwrap_or(Value::Null));
    // The database roles the user holds from now on: the session's roles when activated,
    // none when deactivated or dropped.
    let roles = match detail_type {
        "Database User Activated" => outcome.get("db_roles").cloned().unwrap_or_else(|| json!([])),
        _ => json!([]),
    };
    detail.insert("roles".into(), roles);
    detail.insert("mode".into(), outcome.get("mode").cloned().unwrap_or(Value::Null));
    detail.insert("reason".into(), outcome.get("reason").cloned().unwrap_or(Value::Null));
    // What blocked a drop (the user was locked instead): kind, database, detail, fix.
    if let Some(blocked) = outcome.get("drop_blocked") {
        detail.insert("drop_blocked".into(), blocked.clone());
    }
    if let Some(redelivered) = outcome.get("already_active") {
        detail.insert("redelivered".into(), redelivered.clone());
    }
    Some(AuditEvent { detail_type, detail: Value::Object(detail) })
}

/// The audit event of a refusal of kind `kind`. `event` is the session event when there is
/// one to read. Pure.
pub fn of_refusal(
    function: Function,
    event: Option<&Value>,
    verified: Option<&VerifiedIdentity>,
    kind: &str,
    reason: &str,
) -> AuditEvent {
    let mut detail = detail(function, event, verified);
    detail.insert("db_user".into(), Value::Null);
    detail.insert("roles".into(), from_event(event, "db_roles"));
    detail.insert("mode".into(), Value::Null);
    detail.insert("kind".into(), Value::from(kind));
    detail.insert("reason".into(), Value::from(reason));
    AuditEvent { detail_type: "Database Session Refused", detail: Value::Object(detail) }
}

/// The audit event of an expired session the reaper closed on `database`, if the user
/// changed (it was the user's last session). Pure.
pub fn of_reaped_session(database: &str, closed: &Closed) -> Option<AuditEvent> {
    let detail_type = match closed.status {
        EndStatus::Deactivated => "Database User Deactivated",
        EndStatus::Dropped => "Database User Dropped",
        EndStatus::InUse | EndStatus::Noop => return None,
    };
    let reason = format!(
        "closed by the reaper: the session started at {} (Unix time) is older than max_session_duration \
         and its user had no live connection, so its session-end was lost",
        closed.started_at
    );
    Some(reaper_event(
        detail_type,
        database,
        Some(&closed.session_id),
        Some(&closed.db_name),
        &closed.db_user,
        json!(closed.mode),
        reason,
    ))
}

/// The audit event of a blocked drop the reaper retried on `database` (`retry_blocked_drops`),
/// if it dropped the user; a retry blocked again changed nothing. Pure.
pub fn of_retried_drop(database: &str, retried: &RetriedDrop) -> Option<AuditEvent> {
    (retried.status == EndStatus::Dropped).then(|| {
        let reason = "dropped by the reaper (retry_blocked_drops): the drop its last session-end could not do \
                      could be done now"
            .to_string();
        reaper_event("Database User Dropped", database, None, None, &retried.db_user, json!(retried.mode), reason)
    })
}

/// The audit event of a user the reaper locked on `database`. Pure.
pub fn of_locked_user(database: &str, db_user: &str) -> AuditEvent {
    let reason = "locked by the reaper: the user could log in with no open session in its ledger".to_string();
    reaper_event("Database User Deactivated", database, None, None, db_user, json!("keep"), reason)
}

fn reaper_event(
    detail_type: &'static str,
    database: &str,
    session_id: Option<&str>,
    db_name: Option<&str>,
    db_user: &str,
    mode: Value,
    reason: String,
) -> AuditEvent {
    let detail = json!({
        "function": crate::reaper_totals::FUNCTION_NAME, "session_id": session_id, "user": null, "origin_cluster": null,
        "database": database, "db_name": db_name, "access_roles": null, "db_user": db_user, "roles": [],
        "mode": mode, "reason": reason,
    });
    AuditEvent { detail_type, detail }
}

/// Where audit events go: the log always, and an EventBridge bus when configured.
pub struct Auditor {
    bus: Option<EventBus>,
}

impl Auditor {
    /// Audit events are logged only.
    pub fn log_only() -> Auditor {
        Auditor { bus: None }
    }

    /// Audit events are logged and put on the bus `name` (a name or an ARN) with `source`.
    pub fn to_bus(sdk: &SdkConfig, name: String, source: String) -> Auditor {
        Auditor { bus: Some(EventBus::new(sdk, name, source)) }
    }

    /// Records `event` of the function named `function`. Never fails: see the module's
    /// documentation.
    pub async fn record(&self, function: &str, event: AuditEvent) {
        // Boxed: the handlers' futures are deep already (see `process_event`); one more level
        // inline overflows the compiler's query depth in a build without incremental cache.
        Box::pin(self.record_all(function, vec![event])).await;
    }

    /// Records `events` of the function named `function`, put on the bus ten per call.
    /// Never fails: see the module's documentation.
    pub async fn record_all(&self, function: &str, events: Vec<AuditEvent>) {
        for event in &events {
            tracing::info!(audit = %event.detail, detail_type = event.detail_type, "audit event");
        }
        let Some(bus) = &self.bus else { return };
        let entries: Vec<(&str, Value)> = events.iter().map(|e| (e.detail_type, e.detail.clone())).collect();
        for (index, problem) in bus.put(&entries).await {
            let event = &events[index];
            tracing::error!(
                audit = %event.detail,
                detail_type = event.detail_type,
                bus = bus.name(),
                error = %problem,
                "could not put the audit event on the EventBridge bus; it is only in this log. \
                 Check the bus name and the function's events:PutEvents permission"
            );
            metrics::audit_failure(function);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Value {
        json!({"session_id": "s1", "user": "alice", "roles": ["devs"], "database": "orders",
               "db_name": "app", "db_roles": ["reader"]})
    }

    #[test]
    fn an_activation_names_the_user_and_the_granted_roles() {
        let outcome = json!({"status": "active", "db_user": "alice", "mode": "keep",
                             "db_roles": ["reader"], "base_roles": ["teleport-auto-user"],
                             "already_active": false});
        let audit = of_outcome(Function::SessionStart, &session(), None, &outcome).unwrap();
        assert_eq!(audit.detail_type, "Database User Activated");
        assert_eq!(
            audit.detail,
            json!({"function": "session-start", "session_id": "s1", "user": "alice", "origin_cluster": null,
                   "database": "orders", "db_name": "app", "access_roles": ["devs"], "db_user": "alice",
                   "roles": ["reader"], "mode": "keep", "reason": null, "redelivered": false})
        );
    }

    #[test]
    fn session_ends_are_audited_only_when_the_user_changes() {
        let end = |status: &str| {
            of_outcome(Function::SessionEnd, &session(), None, &json!({"status": status, "db_user": "alice"}))
                .map(|a| a.detail_type)
        };
        assert_eq!(end("deactivated"), Some("Database User Deactivated"));
        assert_eq!(end("dropped"), Some("Database User Dropped"));
        assert_eq!(end("in_use"), None);
        assert_eq!(end("noop"), None);
        let dropped = of_outcome(Function::SessionEnd, &session(), None, &json!({"status": "dropped"})).unwrap();
        assert_eq!(dropped.detail["roles"], json!([]));
    }

    #[test]
    fn a_verified_identity_names_the_issuer_and_token_ids_never_the_token() {
        let event = json!({"session_id": "s1", "identity_token": "header.payload.signature",
                           "database": "orders", "db_name": "app"});
        let verified = VerifiedIdentity {
            issuer: "teleport.example.com".into(),
            subject: Some("alice".into()),
            token_id: Some("jti-1".into()),
            user: "alice".into(),
            roles: Some(vec!["devs".into()]),
            traits: None,
            session_id: None,
            origin_cluster: None,
        };
        let outcome = json!({"status": "active", "db_user": "alice", "db_roles": ["reader"]});
        let audit = of_outcome(Function::SessionStart, &event, Some(&verified), &outcome).unwrap();
        assert_eq!(audit.detail["user"], "alice");
        assert_eq!(audit.detail["access_roles"], json!(["devs"]));
        assert_eq!(audit.detail["identity"], json!({"issuer": "teleport.example.com", "sub": "alice", "jti": "jti-1"}));
        assert!(!audit.detail.to_string().contains("payload"), "{}", audit.detail);
        let refused = of_refusal(Function::SessionStart, Some(&event), None, "IdentityUnverified", "expired");
        assert!(refused.detail.get("identity").is_none());
        assert!(!refused.detail.to_string().contains("payload"), "{}", refused.detail);
    }

    #[test]
    fn a_refusal_keeps_what_can_be_read_of_a_malformed_event() {
        let audit = of_refusal(
            Function::SessionStart,
            Some(&json!({"user": "mallory", "database": 7})),
            None,
            "EventInvalid",
            "event field `session_id` is missing",
        );
        assert_eq!(audit.detail_type, "Database Session Refused");
        assert_eq!(audit.detail["user"], "mallory");
        assert_eq!(audit.detail["database"], 7);
        assert_eq!(audit.detail["session_id"], Value::Null);
        assert_eq!(audit.detail["kind"], "EventInvalid");
        assert_eq!(audit.detail["reason"], "event field `session_id` is missing");
        let unreadable = of_refusal(Function::SessionEnd, None, None, "EventInvalid", "not JSON");
        assert_eq!(unreadable.detail["function"], "session-end");
    }

    #[test]
    fn a_blocked_drop_is_audited_with_what_blocked_it() {
        let event =
            json!({"session_id": "s1", "user": "alice", "roles": ["dev"], "database": "orders", "db_name": "app"});
        let outcome = json!({"status": "deactivated", "db_user": "alice", "mode": "best_effort_reassign_and_drop",
            "reason": "the user's objects could not be handed over in database \"reports\"",
            "drop_blocked": {"kind": "cannot_connect", "db_name": "reports", "detail": "no CONNECT",
                             "fix": "GRANT CONNECT ON DATABASE \"reports\" TO \"admin\""}});
        let audit = of_outcome(Function::SessionEnd, &event, None, &outcome).unwrap();
        assert_eq!(audit.detail_type, "Database User Deactivated");
        assert_eq!(audit.detail["drop_blocked"]["kind"], "cannot_connect");
        assert_eq!(audit.detail["drop_blocked"]["fix"], "GRANT CONNECT ON DATABASE \"reports\" TO \"admin\"");
        assert_eq!(audit.detail["reason"], outcome["reason"]);
        let plain = json!({"status": "deactivated", "db_user": "alice", "mode": "keep"});
        assert!(of_outcome(Function::SessionEnd, &event, None, &plain).unwrap().detail.get("drop_blocked").is_none());
    }

    #[test]
    fn the_reaper_audits_what_changed_a_user_and_says_why() {
        let closed = |status| Closed {
            db_user: "alice".into(),
            session_id: "s1".into(),
            db_name: "app".into(),
            mode: autouser_policy::policy::CreateDbUserMode::BestEffortDrop,
            started_at: 1_700_000_000,
            status,
            reason: None,
        };
        let dropped = of_reaped_session("orders", &closed(EndStatus::Dropped)).unwrap();
        assert_eq!(dropped.detail_type, "Database User Dropped");
        assert_eq!(dropped.detail["function"], "reaper");
        assert_eq!(dropped.detail["database"], "orders");
        assert_eq!(dropped.detail["db_name"], "app");
        assert_eq!(dropped.detail["session_id"], "s1");
        assert_eq!(dropped.detail["db_user"], "alice");
        assert_eq!(dropped.detail["mode"], "best_effort_drop");
        assert_eq!(dropped.detail["user"], Value::Null, "the ledger does not know the person");
        let reason = dropped.detail["reason"].as_str().unwrap();
        assert!(reason.contains("1700000000") && reason.contains("max_session_duration"), "{reason}");
        assert_eq!(
            of_reaped_session("orders", &closed(EndStatus::Deactivated)).unwrap().detail_type,
            "Database User Deactivated"
        );
        assert_eq!(of_reaped_session("orders", &closed(EndStatus::InUse)), None, "the user did not change");

        let retried = |status| RetriedDrop {
            db_user: "carol".into(),
            mode: autouser_policy::policy::CreateDbUserMode::BestEffortReassignAndDrop,
            status,
            reason: None,
        };
        let dropped = of_retried_drop("orders", &retried(EndStatus::Dropped)).unwrap();
        assert_eq!(dropped.detail_type, "Database User Dropped");
        assert_eq!(dropped.detail["db_user"], "carol");
        assert_eq!(dropped.detail["mode"], "best_effort_reassign_and_drop");
        assert_eq!(of_retried_drop("orders", &retried(EndStatus::Deactivated)), None, "still blocked: unchanged");
        let locked = of_locked_user("orders", "bob");
        assert_eq!(locked.detail_type, "Database User Deactivated");
        assert_eq!(locked.detail["db_user"], "bob");
        assert_eq!(locked.detail["session_id"], Value::Null);
        assert_eq!(locked.detail["mode"], "keep");
        assert!(locked.detail["reason"].as_str().unwrap().contains("no open session"));
    }
}
