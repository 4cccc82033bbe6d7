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
//!
//! A ledger goes with its role, so what must outlive the role (a session ended by a drop) or
//! precede it (an end delivered before its start) is kept in the managed group's comment
//! instead: see [`ENDED_SESSIONS_HEADER`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::policy::CreateDbUserMode;

/// Marker that tells our ledgers apart from other comments.
pub const MANAGED_BY: &str = "pg-autouser";
/// The ledger format of users without object permissions, which every release reads.
pub const FORMAT: u32 = 1;
/// The format of a ledger that records object permissions (`db_permissions`, `object_databases`).
/// Written only when it has them, so releases that predate them refuse those ledgers (and say
/// to upgrade) instead of dropping what they do not know, and read all others.
pub const FORMAT_WITH_OBJECTS: u32 = 2;
/// The format of a ledger that records its owner's [`Identity`] (with or without object
/// permissions): every ledger this release writes for a start. Earlier releases refuse it and
/// say to upgrade, rather than failing on a field they do not know.
pub const FORMAT_WITH_IDENTITY: u32 = 3;
/// The format of a ledger that records a `best_effort_reassign_and_drop` session or a drop
/// that was blocked ([`Ledger::blocked_drop`]). Earlier releases refuse it and say to upgrade.
pub const FORMAT_WITH_HAND_OVER: u32 = 4;
/// The format of a ledger that records the defaults its user had set on its own role, which
/// the write reset ([`Ledger::cleared_settings`]). Earlier releases refuse it and say to
/// upgrade.
pub const FORMAT_WITH_CLEARED: u32 = 5;
/// How many ended session ids are remembered, so a start redelivered after its end is refused.
pub const ENDED_SESSIONS_KEPT: usize = 32;

/// The first line of the managed group's comment when it records ended sessions that have no
/// ledger to live in: those of users a `best_effort_drop` end dropped, and ends delivered
/// before their start. Each further line is one session, `<user>\t<session id>\t<ended at>`,
/// the names as JSON strings (so no tab or newline is ever raw inside one) and the time in
/// Unix seconds of the server's clock. The lines are written, pruned and searched by the
/// statements in [`crate::sql`] ([`crate::plan::Step::RecordEnded`],
/// [`crate::plan::Step::RefuseIfEnded`]): entries older than the redelivery window go, and
/// at most [`GROUP_ENDED_SESSIONS_KEPT`] stay.
pub const ENDED_SESSIONS_HEADER: &str = "pg-autouser ended sessions v1";
/// The most ended sessions the managed group's comment keeps (newest first), so that every
/// start's check of it stays cheap: about 100 KB at most.
pub const GROUP_ENDED_SESSIONS_KEPT: u32 = 2000;
/// A `started_at` that the statement writing the ledger replaces with the server's clock
/// (the transaction's start), for ledgers planned without reading it (the one-round-trip
/// start).
pub const STARTED_AT_SERVER_CLOCK: u64 = u64::MAX;

/// The sessions the managed group's comment records as ended, as `(user, session id)`: see
/// [`ENDED_SESSIONS_HEADER`]. A comment without the header records none; a line that does
/// not read as one is skipped.
pub fn ended_in_group(comment: Option<&str>) -> BTreeSet<(String, String)> {
    let Some(rest) = comment.and_then(|comment| comment.strip_prefix(ENDED_SESSIONS_HEADER)) else {
        return BTreeSet::new();
    };
    rest.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let user: String = serde_json::from_str(fields.next()?).ok()?;
            let session: String = serde_json::from_str(fields.next()?).ok()?;
            Some((user, session))
        })
        .collect()
}

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
    /// Databases (`db_name`s) where this user may hold object privileges pg-autouser granted;
    /// each is removed when the privileges there are revoked.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub object_databases: BTreeSet<String>,
    /// The person this role belongs to. Two identities can map to one role name
    /// (`remote-<user>-<cluster>`); a start of another identity is refused. Ledgers written
    /// before this was recorded have none, and the next start records its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The mode whose drop the last end could not do (objects depend on the user, or the
    /// hand-over to the object inheritor could not run), so it locked the user instead. With
    /// `retry_blocked_drops`, the reaper tries that drop again; a new session clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_drop: Option<CreateDbUserMode>,
    /// The defaults the user had set on its own role while logged in (`ALTER ROLE self [IN
    /// DATABASE d] SET ...`) that this write's transaction reset: database names, `None` for
    /// those of every database. Empty when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared_settings: Vec<Option<String>>,
}

/// Who a database user is: the person's name and, for people from another cluster, that
/// cluster (`None` for local people).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_cluster: Option<String>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.origin_cluster {
            Some(cluster) => write!(f, "user {:?} of cluster {cluster:?}", self.user),
            None => write!(f, "local user {:?}", self.user),
        }
    }
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
    /// Fingerprint of the session's object permission rules, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_permissions: Option<String>,
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
            object_databases: BTreeSet::new(),
            identity: None,
            blocked_drop: None,
            cleared_settings: Vec::new(),
        }
    }
}

/// Whether `comment` is a ledger that pg-autouser wrote, readable by this build or not. A
/// member of the managed group without one was provisioned by someone else (Teleport itself,
/// a second admin): the reaper reports it and never acts on it.
pub fn is_pg_autouser_ledger(comment: Option<&str>) -> bool {
    ledger_json(comment).is_some()
}

/// The two fields every pg-autouser ledger has, in any format; the rest is skipped unread.
#[derive(Deserialize)]
struct LedgerHeader {
    managed_by: Option<String>,
    format: Option<serde_json::Value>,
}

/// The comment and its header, when it is a pg-autouser ledger: a JSON object whose
/// `managed_by` is ours. The header is read on its own so that a large ledger is parsed once,
/// straight into a [`Ledger`], rather than into a JSON tree first.
fn ledger_json(comment: Option<&str>) -> Option<(&str, LedgerHeader)> {
    let comment = comment?;
    if !comment.trim_start().starts_with("{") {
        return None;
    }
    let header: LedgerHeader = serde_json::from_str(comment).ok()?;
    (header.managed_by.as_deref() == Some(MANAGED_BY)).then_some((comment, header))
}

impl Ledger {
    /// Reads the ledger from a role comment. A missing or foreign comment is an empty ledger;
    /// a pg-autouser ledger that this build cannot read is an error, so it is never clobbered.
    pub fn from_comment(user: &str, comment: Option<&str>) -> Result<Ledger, LedgerError> {
        let Some((comment, header)) = ledger_json(comment) else {
            return Ok(Ledger::default());
        };
        let error = |detail: String, hint| LedgerError { user: user.to_string(), detail, hint };
        match header.format.as_ref().and_then(|v| v.as_u64()) {
            Some(f)
                if [FORMAT, FORMAT_WITH_OBJECTS, FORMAT_WITH_IDENTITY, FORMAT_WITH_HAND_OVER, FORMAT_WITH_CLEARED]
                    .map(u64::from)
                    .contains(&f) => {}
            other => {
                return Err(error(
                    format!(
                        "format {other:?}, this build reads formats {FORMAT}, {FORMAT_WITH_OBJECTS}, \
                         {FORMAT_WITH_IDENTITY}, {FORMAT_WITH_HAND_OVER} and {FORMAT_WITH_CLEARED}"
                    ),
                    "upgrade pg-autouser everywhere that manages this server",
                ))
            }
        }
        serde_json::from_str(comment).map_err(|e| {
            error(
                e.to_string(),
                "fix or remove the role's comment (COMMENT ON ROLE ... IS NULL) once no session is open",
            )
        })
    }

    pub fn to_comment(&self) -> String {
        let with_objects =
            !self.object_databases.is_empty() || self.sessions.values().any(|s| s.db_permissions.is_some());
        let hands_over = self.blocked_drop.is_some()
            || self.sessions.values().any(|s| s.mode == CreateDbUserMode::BestEffortReassignAndDrop);
        let format = match (&self.identity, with_objects) {
            _ if !self.cleared_settings.is_empty() => FORMAT_WITH_CLEARED,
            _ if hands_over => FORMAT_WITH_HAND_OVER,
            (Some(_), _) => FORMAT_WITH_IDENTITY,
            (None, true) => FORMAT_WITH_OBJECTS,
            (None, false) => FORMAT,
        };
        let ledger = Ledger { format, ..self.clone() };
        serde_json::to_string(&ledger).expect("a ledger always serialises")
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
            db_permissions: None,
        }
    }

    #[test]
    fn a_hand_over_or_a_blocked_drop_is_written_in_a_format_earlier_releases_refuse() {
        let mut ledger =
            Ledger { identity: Some(Identity { user: "a".into(), origin_cluster: None }), ..Ledger::default() };
        assert_eq!(Ledger::from_comment("u", Some(&ledger.to_comment())).unwrap().format, FORMAT_WITH_IDENTITY);
        ledger.blocked_drop = Some(CreateDbUserMode::BestEffortDrop);
        let read = Ledger::from_comment("u", Some(&ledger.to_comment())).unwrap();
        assert_eq!((read.format, read.blocked_drop), (FORMAT_WITH_HAND_OVER, Some(CreateDbUserMode::BestEffortDrop)));
        ledger.blocked_drop = None;
        ledger
            .sessions
            .insert("s1".into(), SessionRecord { mode: CreateDbUserMode::BestEffortReassignAndDrop, ..record() });
        assert_eq!(Ledger::from_comment("u", Some(&ledger.to_comment())).unwrap().format, FORMAT_WITH_HAND_OVER);
    }

    #[test]
    fn the_group_s_comment_reads_as_the_ended_sessions_it_lists() {
        let comment = format!(
            "{ENDED_SESSIONS_HEADER}\n\"al\\tice\"\t\"s1\"\t1700000000\n\"bob\"\t\"s\\n2\"\t1700000001\nnot a line"
        );
        let ended = ended_in_group(Some(&comment));
        let expected = [("al\tice", "s1"), ("bob", "s\n2")].map(|(u, s)| (u.to_string(), s.to_string()));
        assert_eq!(ended, BTreeSet::from(expected));
        assert!(ended_in_group(Some("provisioned by Teleport")).is_empty());
        assert!(ended_in_group(None).is_empty());
    }

    #[test]
    fn missing_or_foreign_comments_are_empty_ledgers() {
        for comment in [
            None,
            Some("temp user"),
            Some(r#"{"a":1}"#),
            Some(r#"{"managed_by":"teleport"}"#),
            Some(r#"{"managed_by":7}"#),
            // JSON, and in the order of a ledger's fields, but not an object.
            Some(r#"["pg-autouser", 3]"#),
            Some(r#"{"managed_by":"pg-autouser""#),
        ] {
            assert!(!is_pg_autouser_ledger(comment), "{comment:?}");
        }
        assert!(is_pg_autouser_ledger(Some(&Ledger::default().to_comment())));
        assert!(is_pg_autouser_ledger(Some(r#"{"managed_by":"pg-autouser","format":9}"#)));
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
    fn object_permissions_raise_the_format_and_only_then() {
        let mut ledger = Ledger::default();
        ledger.sessions.insert("s1".into(), record());
        assert!(ledger.to_comment().contains(r#""format":1"#));
        assert!(!ledger.to_comment().contains("object_databases"));
        ledger.object_databases.insert("app".into());
        ledger.sessions.get_mut("s1").unwrap().db_permissions = Some("f00d".into());
        let comment = ledger.to_comment();
        assert!(comment.contains(r#""format":2"#), "{comment}");
        let back = Ledger::from_comment("u", Some(&comment)).unwrap();
        assert_eq!(back.object_databases, ledger.object_databases);
        assert_eq!(back.sessions, ledger.sessions);
    }

    #[test]
    fn future_format_is_an_error_not_a_reset() {
        let text = r#"{"managed_by":"pg-autouser","format":6,"revision":1,"sessions":{}}"#;
        let err = Ledger::from_comment("alice", Some(text)).unwrap_err();
        assert!(err.to_string().contains("alice"));
        let text = r#"{"managed_by":"pg-autouser","format":"3","revision":1,"sessions":{}}"#;
        let err = Ledger::from_comment("alice", Some(text)).unwrap_err();
        assert!(err.to_string().contains("format None"), "{err}");
    }

    #[test]
    fn an_identity_raises_the_format_and_a_ledger_without_one_still_reads() {
        let mut ledger = Ledger::default();
        ledger.sessions.insert("s1".into(), record());
        let previous_release = ledger.to_comment();
        assert!(previous_release.contains(r#""format":1"#), "{previous_release}");
        assert_eq!(Ledger::from_comment("u", Some(&previous_release)).unwrap().identity, None);
        ledger.identity = Some(Identity { user: "alice".into(), origin_cluster: Some("root".into()) });
        let comment = ledger.to_comment();
        assert!(comment.contains(r#""format":3"#), "{comment}");
        assert!(comment.contains(r#""identity":{"user":"alice","origin_cluster":"root"}"#), "{comment}");
        let back = Ledger::from_comment("u", Some(&comment)).unwrap();
        assert_eq!(Ledger { format: FORMAT, ..back }, ledger);
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
