//! What the CLI prints for people: the `status` table and the `plan` review.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use autouser_engine::dry_run::PlannedCall;
use autouser_engine::sql;
use autouser_policy::config::ResolvedDatabase;
use autouser_policy::event::SessionEvent;
use autouser_policy::ledger::Ledger;
use autouser_policy::permissions::PermissionSummary;
use autouser_policy::plan::{self, EndDecision, StartDecision, Step};
use autouser_policy::policy::{CreateDbUserMode, Grant};
use autouser_policy::request::{EndRequest, StartRequest};
use autouser_policy::status::DatabaseStatus;

/// One database of `autouser status`: its status, or why it could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DatabaseReport {
    Read(DatabaseStatus),
    Failed { database: String, kind: String, error: String },
}

/// Unix seconds as `2026-12-01 16:00:00Z`.
pub fn time(unix_seconds: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix_seconds);
    humantime::format_rfc3339_seconds(at).to_string().replacen('T', " ", 1)
}

/// The `status` table: per database, one line per managed user (and one more per further
/// open session), its drift below it, then the logins outside the managed group.
pub fn status_text(reports: &[DatabaseReport]) -> String {
    let mut out = String::new();
    for report in reports {
        let status = match report {
            DatabaseReport::Read(status) => status,
            DatabaseReport::Failed { database, kind, error } => {
                out.push_str(&format!("database {database}: NOT READ: {error} [{kind}]\n\n"));
                continue;
            }
        };
        let drifting = status.users.iter().filter(|u| !u.drift.is_empty()).count();
        let read_on = match &status.read_replica {
            Some(replica) => format!(" (read replica {}, read on its writer {})", replica.replica, replica.writer),
            None => String::new(),
        };
        out.push_str(&format!(
            "database {}{read_on}: {} managed user(s), {} able to log in, {} with drift\n",
            status.database,
            status.users.len(),
            status.users.iter().filter(|u| u.can_login).count(),
            drifting
        ));
        let mut rows =
            vec![["USER", "LOGIN", "ROLES", "SESSION", "MODE", "STARTED", "REAPER CLOSES"].map(String::from)];
        let mut drift_after: Vec<(usize, Vec<String>)> = Vec::new();
        for user in &status.users {
            let roles = if user.roles.is_empty() { "-".to_string() } else { user.roles.join(",") };
            let login = if user.can_login { "yes" } else { "no" }.to_string();
            if user.open_sessions.is_empty() {
                rows.push([
                    user.db_user.clone(),
                    login.clone(),
                    roles.clone(),
                    "-".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
            }
            for (n, session) in user.open_sessions.iter().enumerate() {
                let (name, login, roles) =
                    if n == 0 { (user.db_user.clone(), login.clone(), roles.clone()) } else { Default::default() };
                rows.push([
                    name,
                    login,
                    roles,
                    session.session_id.clone(),
                    mode_name(session.mode),
                    time(session.started_at),
                    time(session.expires_at),
                ]);
            }
            if !user.drift.is_empty() {
                drift_after.push((
                    rows.len() - 1,
                    user.drift.iter().map(|d| format!("drift: {} {d}", user.db_user)).collect(),
                ));
            }
        }
        if status.users.is_empty() {
            out.push_str("  (no managed users)\n");
        } else {
            let widths: Vec<usize> =
                (0..7).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
            for (index, row) in rows.iter().enumerate() {
                let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
                out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
                for (_, lines) in drift_after.iter().filter(|(at, _)| *at == index) {
                    for line in lines {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
        }
        for name in &status.unowned_logins {
            out.push_str(&format!(
                "  not ours: {name} is in the managed group and can log in, with no pg-autouser ledger\n"
            ));
        }
        let unmanaged =
            if status.unmanaged_logins.is_empty() { "(none)".to_string() } else { status.unmanaged_logins.join(", ") };
        out.push_str(&format!("  unmanaged logins: {unmanaged}\n\n"));
    }
    out
}

/// What `autouser plan` shows a reviewer: the decision and why, and the statements the call
/// would run now, in order.
#[derive(Debug, Serialize)]
pub struct Review {
    pub call: &'static str,
    pub session_id: String,
    pub db_user: String,
    pub database: String,
    pub db_name: String,
    pub decision: Decision,
    /// The call's transaction, from `BEGIN` to `COMMIT` (empty when it changes nothing).
    pub statements: Vec<String>,
    /// For a drop: what runs instead of the drop when objects depend on the user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_statements: Vec<String>,
    /// For `best_effort_reassign_and_drop`: the transactions that hand the user's objects to
    /// the inheritor in the other databases that hold some, before the drop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hand_over: Vec<HandOverIn>,
    pub notes: Vec<String>,
    /// A read replica's entry: the writer the statements would run on, and the replica whose
    /// replay the answer would wait for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_replica: Option<autouser_policy::status::ReadReplica>,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    /// `apply` or `already_active` for a start; `noop`, `record_early`, `in_use`,
    /// `deactivate` or `drop` for an end.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<CreateDbUserMode>,
    pub db_roles: Vec<String>,
    pub base_roles: Vec<String>,
    pub db_permissions: Vec<PermissionSummary>,
    pub why: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct HandOverIn {
    pub db_name: String,
    pub statements: Vec<String>,
}

/// `BEGIN`, `steps` rendered, `COMMIT`.
fn transaction(steps: &[Step]) -> Vec<String> {
    std::iter::once(sql::BEGIN.to_string())
        .chain(steps.iter().map(sql::render))
        .chain(std::iter::once(sql::COMMIT.to_string()))
        .collect()
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".into();
    }
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

const NOTHING_CHANGED: &str = "nothing was changed: the state was read in a transaction that was rolled back";

pub fn start_review(
    req: &StartRequest,
    grant: &Grant,
    event: &SessionEvent,
    db: &ResolvedDatabase,
    planned: PlannedCall,
) -> Review {
    let t = &req.target;
    let PlannedCall::Start { state, decision } = planned else { unreachable!("a start was planned") };
    let mut why = vec![
        format!("the event's roles: {}", quoted(event.start_roles().unwrap_or_default())),
        format!(
            "provisioning roles whose allow block matched database {:?} (labels {}) and db_name {:?}: {}",
            db.name,
            if db.labels.is_empty() {
                "none".to_string()
            } else {
                db.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
            },
            t.db_name,
            quoted(&grant.matched_roles)
        ),
        format!(
            "their db_roles, minus what deny blocks remove{}: {}",
            if event.db_roles.is_some() { ", narrowed to the event's db_roles" } else { "" },
            quoted(&req.db_roles.iter().cloned().collect::<Vec<_>>())
        ),
        format!("mode {:?}: the strongest create_db_user_mode of the matched roles", mode_name(req.mode)),
    ];
    if !req.platform_roles.is_empty() {
        why.push(format!(
            "{} because the database is RDS",
            quoted(&req.platform_roles.iter().cloned().collect::<Vec<_>>())
        ));
    }
    let mut notes = Vec::new();
    let (action, statements, db_permissions) = match decision {
        StartDecision::AlreadyActive { db_permissions, .. } => {
            notes.push("the session is already open and the user is as it should be: the start changes nothing".into());
            ("already_active", Vec::new(), db_permissions)
        }
        StartDecision::Apply { steps, created_user, db_permissions, .. } => {
            notes.push(if created_user {
                format!("the database user {:?} does not exist: the start creates it", t.db_user)
            } else {
                format!(
                    "the database user {:?} exists ({}): the start {}",
                    t.db_user,
                    if state.user_can_login { "can log in" } else { "locked" },
                    "unlocks it and sets its roles to exactly these"
                )
            });
            ("apply", transaction(&steps), db_permissions)
        }
    };
    notes.push(NOTHING_CHANGED.into());
    Review {
        call: "session-start",
        session_id: t.session_id.clone(),
        db_user: t.db_user.clone(),
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        decision: Decision {
            action,
            mode: Some(req.mode),
            db_roles: req.db_roles.iter().cloned().collect(),
            base_roles: std::iter::once(t.managed_group.clone()).chain(req.platform_roles.iter().cloned()).collect(),
            db_permissions,
            why,
        },
        statements,
        fallback_statements: Vec::new(),
        hand_over: Vec::new(),
        notes,
        read_replica: None,
    }
}

fn mode_name(mode: CreateDbUserMode) -> String {
    serde_json::to_value(mode).ok().and_then(|m| m.as_str().map(String::from)).unwrap_or_default()
}

pub fn end_review(req: &EndRequest, planned: PlannedCall) -> Review {
    let t = &req.target;
    let PlannedCall::End { state, decision, hand_over } = planned else { unreachable!("an end was planned") };
    let ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref()).unwrap_or_default();
    let record = ledger.sessions.get(&t.session_id);
    let mut why = Vec::new();
    if let Some(record) = record {
        why.push(format!(
            "the ledger records session {:?}, started {} in mode {:?} with db_roles {}: the end undoes what it was given, \
             whatever the policy says now",
            t.session_id,
            time(record.started_at),
            mode_name(record.mode),
            quoted(&record.db_roles.iter().cloned().collect::<Vec<_>>())
        ));
    }
    let others = ledger.sessions.len().saturating_sub(usize::from(record.is_some()));
    let mut notes = Vec::new();
    let mut fallback_statements = Vec::new();
    let mut hand_over_in = Vec::new();
    let (action, mode, statements) = match decision {
        EndDecision::Noop { reason } => {
            why.push(reason.to_string());
            ("noop", None, Vec::new())
        }
        EndDecision::RecordEarly { steps, reason, .. } => {
            why.push(reason.to_string());
            ("record_early", None, transaction(&steps))
        }
        EndDecision::InUse { steps, mode, .. } => {
            why.push(format!("{others} other session(s) of the user remain open: only the ledger changes"));
            ("in_use", Some(mode), transaction(&steps))
        }
        EndDecision::Deactivate { steps, mode, .. } => {
            why.push("the user's last session: keep locks the user (NOLOGIN) and revokes its roles".into());
            ("deactivate", Some(mode), transaction(&steps))
        }
        EndDecision::Drop { mode, reassign_to, before_drop, drop, after_drop, fallback, .. } => {
            why.push(format!("the user's last session: {} drops the user", mode_name(mode)));
            let mut statements = vec![sql::BEGIN.to_string()];
            statements.extend(before_drop.iter().map(sql::render));
            statements.push(sql::SAVEPOINT_DROP.to_string());
            if let Some(hand_over) = &hand_over {
                statements.extend(hand_over.here.iter().map(sql::render));
                if !hand_over.inheritor_exists {
                    notes.push(format!(
                        "the object inheritor {:?} does not exist: the end first creates it, in a transaction of its own: {}",
                        hand_over.inheritor,
                        plan::create_object_inheritor(t, &hand_over.inheritor)
                            .iter()
                            .map(sql::render)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                if hand_over.elsewhere.is_empty() {
                    notes.push(format!(
                        "the user's objects in {:?} go to the object inheritor {:?}; no other database holds any",
                        t.admin_db_name, hand_over.inheritor
                    ));
                } else {
                    notes.push(format!(
                        "before the drop, the user's objects go to the object inheritor {:?} in {:?} and in each other \
                         database that holds some: {}",
                        hand_over.inheritor,
                        t.admin_db_name,
                        quoted(&hand_over.elsewhere.iter().map(|(db, _)| db.clone()).collect::<Vec<_>>())
                    ));
                }
                hand_over_in = hand_over
                    .elsewhere
                    .iter()
                    .map(|(db_name, steps)| HandOverIn { db_name: db_name.clone(), statements: transaction(steps) })
                    .collect();
            } else if reassign_to.is_some() {
                notes.push("the user's objects go to the object inheritor before the drop".into());
            }
            statements.extend(drop.iter().map(sql::render));
            statements.extend(after_drop.iter().map(sql::render));
            statements.push(sql::COMMIT.to_string());
            fallback_statements.push(sql::ROLLBACK_TO_DROP.to_string());
            fallback_statements.extend(fallback.iter().map(sql::render));
            fallback_statements.push(sql::COMMIT.to_string());
            notes.push(
                "if objects depend on the user (or a hand-over step cannot run), the drop is rolled back to its \
                 savepoint and the user is locked instead: see fallback_statements"
                    .into(),
            );
            ("drop", Some(mode), statements)
        }
    };
    if req.terminate_connections && matches!(action, "deactivate" | "drop") {
        notes.push("terminate_connections: after the COMMIT, the user's open connections are ended".into());
    }
    notes.push(NOTHING_CHANGED.into());
    Review {
        call: "session-end",
        session_id: t.session_id.clone(),
        db_user: t.db_user.clone(),
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        decision: Decision {
            action,
            mode,
            db_roles: record.map(|r| r.db_roles.iter().cloned().collect()).unwrap_or_default(),
            base_roles: vec![t.managed_group.clone()],
            db_permissions: Vec::new(),
            why,
        },
        statements,
        fallback_statements,
        hand_over: hand_over_in,
        notes,
        read_replica: None,
    }
}

impl Review {
    pub fn to_text(&self) -> String {
        let d = &self.decision;
        let mut out = format!(
            "plan {}: session {:?} of database user {:?} on database {:?} (db_name {:?})\n\n",
            self.call, self.session_id, self.db_user, self.database, self.db_name
        );
        if let Some(replica) = &self.read_replica {
            out.push_str(&format!(
                "read replica {}: the statements run on its writer {}, and the answer waits until the replica has \
                 replayed them\n\n",
                replica.replica, replica.writer
            ));
        }
        out.push_str(&format!("decision: {}\n", d.action));
        if let Some(mode) = d.mode {
            out.push_str(&format!("  mode: {}\n", mode_name(mode)));
        }
        out.push_str(&format!("  db_roles: {}\n", quoted(&d.db_roles)));
        out.push_str(&format!("  base roles: {}\n", quoted(&d.base_roles)));
        if d.db_permissions.is_empty() {
            out.push_str("  object permissions: none\n");
        } else {
            out.push_str("  object permissions:\n");
            for summary in &d.db_permissions {
                out.push_str(&format!("    {}\n", serde_json::to_string(summary).expect("summaries serialise")));
            }
        }
        out.push_str("  why:\n");
        for line in &d.why {
            out.push_str(&format!("    - {line}\n"));
        }
        let block = |out: &mut String, title: &str, statements: &[String]| {
            out.push_str(&format!("\n{title}\n"));
            for statement in statements {
                out.push_str(&format!("  {statement};\n"));
            }
        };
        if self.statements.is_empty() {
            out.push_str("\nstatements: none (the call changes nothing)\n");
        } else {
            block(
                &mut out,
                "statements, in order (the user's advisory lock and the read of its state come after BEGIN):",
                &self.statements,
            );
        }
        for hand_over in &self.hand_over {
            block(&mut out, &format!("in database {:?}, before the drop:", hand_over.db_name), &hand_over.statements);
        }
        if !self.fallback_statements.is_empty() {
            block(
                &mut out,
                "if the drop is blocked, instead of DROP ROLE and what follows it:",
                &self.fallback_statements,
            );
        }
        out.push_str("\nnotes:\n");
        for note in &self.notes {
            out.push_str(&format!("  - {note}\n"));
        }
        out
    }
}
