//! The ledger: which sessions of a database user are open, kept inside the target PostgreSQL.
//!
//! It lives in the user's role comment (`COMMENT ON ROLE`, stored in the shared catalog
//! `pg_shdescription`). That makes it:
//! - cluster-wide: every database of the server sees the same ledger;
//! - atomic with the role changes: it is written in the same transaction;
//! - self-cleaning: dropping the role drops its comment;
//! - free of schema privileges: no table to create, no `USAGE`/`CREATE` on any schema.
//!
//! A managed role whose comment is missing or is not a pg-autouser ledger (a user created by
//! Teleport itself, say) is adopted with an empty ledger. The comment of a managed user belongs
//! to pg-autouser; an operator's comment on such a user is overwritten.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::policy::CreateDbUserMode;

/// Marker that tells our ledgers apart from other comments.
pub const MANAGED_BY: &str = "pg-autouser";
/// The ledger format this build reads and writes.
pub const FORMAT: u32 = 1;
/// How many ended session ids are remembered, so a start redelivered after its end is refused.
pub const ENDED_SESSIONS_KEPT: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub managed_by: String,
    pub format: u32,
    /// Incremented by every write, so a concurrent change is always visible.
    pub revision: u64,
    pub sessions: BTreeMap<String, SessionRecord>,
    /// Most recently ended session ids, oldest first.
    #[serde(default)]
    pub ended: Vec<String>,
}

/// What a session was given when it started: the end applies this, never a new evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    pub mode: CreateDbUserMode,
    pub database: String,
    pub db_name: String,
    pub db_roles: BTreeSet<String>,
    /// Unix seconds.
    pub started_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pg-autouser ledger in the comment of role {user:?} is unreadable ({detail}): {hint}")]
pub struct LedgerError {
    pub user: String,
    pub detail: String,
    pub hint: &'static str,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            managed_by: MANAGED_BY.to_string(),
            format: FORMAT,
            revision: 0,
            sessions: BTreeMap::new(),
            ended: Vec::new(),
        }
    }
}

impl Ledger {
    /// Reads the ledger from a role comment. A missing or foreign comment is an empty ledger;
    /// a pg-autouser ledger that this build cannot read is an error, so it is never clobbered.
    pub fn from_comment(user: &str, comment: Option<&str>) -> Result<Ledger, LedgerError> {
        let Some(text) = comment else {
            return Ok(Ledger::default());
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return Ok(Ledger::default());
        };
        if value.get("managed_by").and_then(|v| v.as_str()) != Some(MANAGED_BY) {
            return Ok(Ledger::default());
        }
        let error = |detail: String, hint| LedgerError { user: user.to_string(), detail, hint };
        match value.get("format").and_then(|v| v.as_u64()) {
            Some(f) if f == u64::from(FORMAT) => {}
            other => {
                return Err(error(
                    format!("format {other:?}, this build reads format {FORMAT}"),
                    "upgrade pg-autouser everywhere that manages this server",
                ))
            }
        }
        serde_json::from_value(value).map_err(|e| {
            error(
                e.to_string(),
                "fix or remove the role's comment (COMMENT ON ROLE ... IS NULL) once no session is open",
            )
        })
    }

    pub fn to_comment(&self) -> String {
        serde_json::to_string(self).expect("a ledger always serialises")
    }

    pub fn was_ended(&self, session_id: &str) -> bool {
        self.ended.iter().any(|id| id == session_id)
    }

    /// Records that `session_id` ended, forgetting the oldest ended ids beyond the bound.
    pub fn record_end(&mut self, session_id: &str) {
        self.sessions.remove(session_id);
        self.ended.retain(|id| id != session_id);
        self.ended.push(session_id.to_string());
        let excess = self.ended.len().saturating_sub(ENDED_SESSIONS_KEPT);
        self.ended.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SessionRecord {
        SessionRecord {
            mode: CreateDbUserMode::Keep,
            database: "orders".into(),
            db_name: "app".into(),
            db_roles: ["reader".to_string()].into(),
            started_at: 1,
        }
    }

    #[test]
    fn missing_or_foreign_comments_are_empty_ledgers() {
        assert_eq!(Ledger::from_comment("u", None).unwrap(), Ledger::default());
        assert_eq!(Ledger::from_comment("u", Some("temp user")).unwrap(), Ledger::default());
        assert_eq!(Ledger::from_comment("u", Some(r#"{"a":1}"#)).unwrap(), Ledger::default());
    }

    #[test]
    fn ledger_round_trips_through_a_comment() {
        let mut ledger = Ledger::default();
        ledger.sessions.insert("s1".into(), record());
        ledger.revision = 7;
        let back = Ledger::from_comment("u", Some(&ledger.to_comment())).unwrap();
        assert_eq!(back, ledger);
    }

    #[test]
    fn future_format_is_an_error_not_a_reset() {
        let text = r#"{"managed_by":"pg-autouser","format":2,"revision":1,"sessions":{}}"#;
        let err = Ledger::from_comment("alice", Some(text)).unwrap_err();
        assert!(err.to_string().contains("alice"));
    }

    #[test]
    fn ended_sessions_are_bounded() {
        let mut ledger = Ledger::default();
        for i in 0..(ENDED_SESSIONS_KEPT + 5) {
            ledger.record_end(&format!("s{i}"));
        }
        assert_eq!(ledger.ended.len(), ENDED_SESSIONS_KEPT);
        assert!(!ledger.was_ended("s0"));
        assert!(ledger.was_ended(&format!("s{}", ENDED_SESSIONS_KEPT + 4)));
    }
}
