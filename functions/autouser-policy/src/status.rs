//! Who has access now: from what one read of a database found (its managed group's members,
//! their memberships and ledgers, the login roles outside the group), the status `autouser
//! status` shows, with the drift between the catalog and the ledgers. Pure: the engine reads
//! the facts, the CLI prints the result.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use crate::ledger::{is_pg_autouser_ledger, Ledger};
use crate::policy::CreateDbUserMode;

/// A member of the managed group, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberFacts {
    pub name: String,
    pub can_login: bool,
    /// The role's comment, where pg-autouser keeps its ledger.
    pub comment: Option<String>,
    /// Roles it is a direct member of (the managed group included).
    pub member_of: BTreeSet<String>,
    /// Memberships granted by a role other than the admin, as `(role, grantor)`.
    pub foreign_grants: BTreeSet<(String, String)>,
}

/// What the read of one database found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseFacts {
    /// The database's `name` in the config.
    pub database: String,
    pub members: Vec<MemberFacts>,
    /// Login roles outside the managed group, as preflight lists them.
    pub unmanaged_logins: Vec<String>,
}

/// How the facts are read: what sessions give every managed user besides their `db_roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRules {
    pub managed_group: String,
    /// `rds_iam` on RDS: every open session holds it, a locked user does not.
    pub platform_roles: BTreeSet<String>,
    /// When the reaper closes a session whose end was lost.
    pub max_session_duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseStatus {
    pub database: String,
    /// Members of the managed group with a pg-autouser ledger, by name.
    pub users: Vec<UserStatus>,
    /// Login roles outside the managed group: a person whose database user is one of them is
    /// refused.
    pub unmanaged_logins: Vec<String>,
    /// Members of the managed group able to log in whose comment holds no pg-autouser ledger:
    /// provisioned by someone else (Teleport itself, a second admin).
    pub unowned_logins: Vec<String>,
    /// A read replica's entry: the replica sessions log in to, and the writer whose catalog
    /// was read (the users are the same on both once the replica has replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_replica: Option<ReadReplica>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadReplica {
    /// `host:port` of the replica.
    pub replica: String,
    /// `host:port` of its writer.
    pub writer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStatus {
    pub db_user: String,
    pub can_login: bool,
    /// The roles it is a direct member of, but the managed group (which every user listed has).
    pub roles: Vec<String>,
    pub open_sessions: Vec<OpenSession>,
    pub drift: Vec<Drift>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenSession {
    pub session_id: String,
    /// Unix seconds, on the server's clock.
    pub started_at: u64,
    pub mode: CreateDbUserMode,
    /// When the reaper closes it if its end never comes: `started_at` + `max_session_duration`.
    pub expires_at: u64,
    pub database: String,
    pub db_name: String,
    pub db_roles: Vec<String>,
}

/// Where the catalog and the ledger disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// The user can log in though no session is open (someone ran `ALTER ROLE … LOGIN`, or
    /// an end was lost and the reaper has not run): the reaper locks it.
    LoginWithoutSession,
    /// Sessions are open but the user cannot log in: someone locked it by hand.
    LockedWithOpenSessions,
    /// A membership someone other than the admin granted: the admin cannot revoke it
    /// (PostgreSQL 16+), so ends leave it in place.
    ForeignGrant { role: String, grantor: String },
    /// The user's roles are not what its open sessions were given (their `db_roles`, the
    /// managed group, and `rds_iam` on RDS; only the managed group when none is open).
    RolesDifferFromLedger { missing: Vec<String>, unexpected: Vec<String> },
    /// The ledger is a pg-autouser ledger this build cannot read.
    LedgerUnreadable { detail: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| if names.is_empty() { "(none)".to_string() } else { names.join(", ") };
        match self {
            Drift::LoginWithoutSession => write!(f, "can log in with no open session (the reaper locks it)"),
            Drift::LockedWithOpenSessions => write!(f, "cannot log in although sessions are open"),
            Drift::ForeignGrant { role, grantor } => {
                write!(f, "member of {role:?} granted by {grantor:?}, not by the admin")
            }
            Drift::RolesDifferFromLedger { missing, unexpected } => {
                write!(f, "roles differ from its sessions': missing {}, unexpected {}", list(missing), list(unexpected))
            }
            Drift::LedgerUnreadable { detail } => write!(f, "ledger unreadable: {detail}"),
        }
    }
}

/// The status of one database from what its read found.
pub fn status(facts: &DatabaseFacts, rules: &StatusRules) -> DatabaseStatus {
    let mut users = Vec::new();
    let mut unowned_logins = Vec::new();
    for member in &facts.members {
        if !is_pg_autouser_ledger(member.comment.as_deref()) {
            if member.can_login {
                unowned_logins.push(member.name.clone());
            }
            continue;
        }
        users.push(user_status(member, rules));
    }
    DatabaseStatus {
        database: facts.database.clone(),
        users,
        unmanaged_logins: facts.unmanaged_logins.clone(),
        unowned_logins,
        read_replica: None,
    }
}

fn user_status(member: &MemberFacts, rules: &StatusRules) -> UserStatus {
    let roles = member.member_of.iter().filter(|role| **role != rules.managed_group).cloned().collect();
    let mut drift: Vec<Drift> = member
        .foreign_grants
        .iter()
        .map(|(role, grantor)| Drift::ForeignGrant { role: role.clone(), grantor: grantor.clone() })
        .collect();
    let ledger = match Ledger::from_comment(&member.name, member.comment.as_deref()) {
        Ok(ledger) => ledger,
        Err(error) => {
            drift.insert(0, Drift::LedgerUnreadable { detail: error.to_string() });
            return UserStatus {
                db_user: member.name.clone(),
                can_login: member.can_login,
                roles,
                open_sessions: Vec::new(),
                drift,
            };
        }
    };
    let open_sessions: Vec<OpenSession> = ledger
        .sessions
        .iter()
        .map(|(session_id, record)| OpenSession {
            session_id: session_id.clone(),
            started_at: record.started_at,
            mode: record.mode,
            expires_at: record.started_at.saturating_add(rules.max_session_duration.as_secs()),
            database: record.database.clone(),
            db_name: record.db_name.clone(),
            db_roles: record.db_roles.iter().cloned().collect(),
        })
        .collect();
    let mut expected: BTreeSet<String> = BTreeSet::from([rules.managed_group.clone()]);
    if !ledger.sessions.is_empty() {
        expected.extend(rules.platform_roles.iter().cloned());
        expected.extend(ledger.sessions.values().flat_map(|record| record.db_roles.iter().cloned()));
    }
    let mut found = Vec::new();
    if member.can_login && open_sessions.is_empty() {
        found.push(Drift::LoginWithoutSession);
    }
    if !member.can_login && !open_sessions.is_empty() {
        found.push(Drift::LockedWithOpenSessions);
    }
    if expected != member.member_of {
        found.push(Drift::RolesDifferFromLedger {
            missing: expected.difference(&member.member_of).cloned().collect(),
            unexpected: member.member_of.difference(&expected).cloned().collect(),
        });
    }
    found.extend(drift);
    UserStatus { db_user: member.name.clone(), can_login: member.can_login, roles, open_sessions, drift: found }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SessionRecord;

    fn rules(platform_roles: &[&str]) -> StatusRules {
        StatusRules {
            managed_group: "grp".into(),
            platform_roles: platform_roles.iter().map(|r| r.to_string()).collect(),
            max_session_duration: Duration::from_secs(12 * 3600),
        }
    }

    fn ledger(sessions: &[(&str, &[&str], u64)]) -> Option<String> {
        let mut ledger = Ledger::default();
        for (id, roles, started_at) in sessions {
            ledger.sessions.insert(
                id.to_string(),
                SessionRecord {
                    mode: CreateDbUserMode::Keep,
                    database: "orders".into(),
                    db_name: "app".into(),
                    db_roles: roles.iter().map(|r| r.to_string()).collect(),
                    started_at: *started_at,
                    db_permissions: None,
                },
            );
        }
        Some(ledger.to_comment())
    }

    fn member(name: &str, can_login: bool, comment: Option<String>, member_of: &[&str]) -> MemberFacts {
        MemberFacts {
            name: name.into(),
            can_login,
            comment,
            member_of: member_of.iter().map(|r| r.to_string()).collect(),
            foreign_grants: BTreeSet::new(),
        }
    }

    fn one(member: MemberFacts, rules: &StatusRules) -> UserStatus {
        let facts = DatabaseFacts { database: "orders".into(), members: vec![member], unmanaged_logins: vec![] };
        let mut status = status(&facts, rules);
        assert_eq!(status.users.len(), 1, "{status:?}");
        status.users.remove(0)
    }

    #[test]
    fn an_open_session_shows_with_its_expiry_and_no_drift() {
        let user = one(member("alice", true, ledger(&[("s1", &["reader"], 1000)]), &["grp", "reader"]), &rules(&[]));
        assert_eq!(user.roles, vec!["reader".to_string()]);
        assert_eq!(user.open_sessions.len(), 1);
        assert_eq!(user.open_sessions[0].session_id, "s1");
        assert_eq!(user.open_sessions[0].expires_at, 1000 + 12 * 3600);
        assert_eq!(user.drift, vec![]);
        let json = serde_json::to_value(&user).unwrap();
        assert_eq!(json["open_sessions"][0]["mode"], "keep");
        assert_eq!(json["drift"], serde_json::json!([]));
    }

    #[test]
    fn a_locked_user_holding_only_the_group_has_no_drift() {
        let user = one(member("alice", false, ledger(&[]), &["grp"]), &rules(&["rds_iam"]));
        assert_eq!(user.drift, vec![]);
        assert!(user.roles.is_empty());
    }

    #[test]
    fn a_login_without_a_session_is_drift() {
        let user = one(member("alice", true, ledger(&[]), &["grp"]), &rules(&[]));
        assert_eq!(user.drift, vec![Drift::LoginWithoutSession]);
        let json = serde_json::to_value(&user.drift).unwrap();
        assert_eq!(json, serde_json::json!([{"kind": "login_without_session"}]));
    }

    #[test]
    fn a_lock_by_hand_under_an_open_session_is_drift() {
        let user = one(member("alice", false, ledger(&[("s1", &[], 1)]), &["grp"]), &rules(&[]));
        assert_eq!(user.drift, vec![Drift::LockedWithOpenSessions]);
    }

    #[test]
    fn roles_other_than_the_sessions_are_drift_and_rds_iam_is_expected_on_rds() {
        let rds = rules(&["rds_iam"]);
        let fine = one(member("a", true, ledger(&[("s1", &["reader"], 1)]), &["grp", "rds_iam", "reader"]), &rds);
        assert_eq!(fine.drift, vec![]);
        let off = one(member("a", true, ledger(&[("s1", &["reader"], 1)]), &["grp", "writer"]), &rds);
        assert_eq!(
            off.drift,
            vec![Drift::RolesDifferFromLedger {
                missing: vec!["rds_iam".into(), "reader".into()],
                unexpected: vec!["writer".into()],
            }]
        );
        assert!(off.drift[0].to_string().contains("missing rds_iam, reader, unexpected writer"), "{}", off.drift[0]);
        let kept = one(member("a", false, ledger(&[]), &["grp", "reader"]), &rds);
        assert!(
            matches!(&kept.drift[..], [Drift::RolesDifferFromLedger { unexpected, .. }] if unexpected == &["reader"])
        );
    }

    #[test]
    fn a_foreign_grant_is_drift_naming_its_grantor() {
        let mut facts = member("a", true, ledger(&[("s1", &["reader"], 1)]), &["grp", "reader"]);
        facts.foreign_grants.insert(("reader".into(), "postgres".into()));
        let user = one(facts, &rules(&[]));
        assert_eq!(user.drift, vec![Drift::ForeignGrant { role: "reader".into(), grantor: "postgres".into() }]);
        let json = serde_json::to_value(&user.drift).unwrap();
        assert_eq!(json, serde_json::json!([{"kind": "foreign_grant", "role": "reader", "grantor": "postgres"}]));
    }

    #[test]
    fn members_without_a_ledger_are_someone_elses_and_unreadable_ledgers_are_reported() {
        let facts = DatabaseFacts {
            database: "orders".into(),
            members: vec![
                member("teleports", true, Some("made by Teleport".into()), &["grp"]),
                member("locked-elsewhere", false, None, &["grp"]),
                member("future", true, Some(r#"{"managed_by":"pg-autouser","format":9}"#.into()), &["grp"]),
            ],
            unmanaged_logins: vec!["app".into()],
        };
        let status = status(&facts, &rules(&[]));
        assert_eq!(status.unowned_logins, vec!["teleports".to_string()]);
        assert_eq!(status.unmanaged_logins, vec!["app".to_string()]);
        assert_eq!(status.users.len(), 1);
        assert!(matches!(&status.users[0].drift[..], [Drift::LedgerUnreadable { .. }]), "{:?}", status.users[0]);
    }
}
