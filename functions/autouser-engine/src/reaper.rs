//! The reaper: closes what lost session-ends leave behind.
//!
//! For one managed database it lists the managed users in one query and decides, without I/O
//! ([`decide`]):
//! - a session older than `max_session_duration` whose user has no live connection on the
//!   server is closed as its session-end would have (the mode recorded at its start);
//! - a session that old whose user is still connected is left open and reported;
//! - a session whose end was delivered but could not finish (the user's own connections held
//!   it up: [`engine::session_end`] then lists it in the managed group's comment) is closed
//!   whatever its age, connected or not, and the user's connections are ended;
//! - a managed user that can log in with no open session is locked (`NOLOGIN`, roles
//!   stripped, as `keep` does);
//! - with `retry_blocked_drops`, a locked user whose last end recorded a blocked drop, and that
//!   has no open session and no live connection, is dropped now if it can be (in the mode the
//!   end recorded: the hand-over to the object inheritor included), or stays locked;
//! - a member of the managed group whose comment holds no pg-autouser ledger is someone
//!   else's (Teleport itself provisioned it, or a second admin): it is reported when it can
//!   log in, and never acted on.
//!
//! Every action then runs through the engine, under the user's lock and ledger guard, and is
//! planned again from what it reads there: a session that opened since the list was read
//! makes the lock a no-op, and an end already applied makes the close one. So the reaper is
//! safe alongside session-start, session-end and other reapers. It only ever lists members of
//! the managed group, and acts only on those whose ledger it wrote.
//!
//! A run given a stop time starts no action after it: what is left is counted as deferred,
//! and the next run decides it again.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use crate::engine;
use crate::pg::{error_chain, AdminConnection};
use crate::replica::{self, Replica};
use crate::sql;
use crate::Error;
use autouser_policy::config::{Config, ResolvedDatabase};
use autouser_policy::ledger::{self, is_pg_autouser_ledger, Ledger, SessionRecord};
use autouser_policy::outcome::EndStatus;
use autouser_policy::policy::CreateDbUserMode;
use autouser_policy::request::{EndRequest, Target};

/// A member of the managed group, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedUser {
    pub name: String,
    pub can_login: bool,
    pub ledger: Option<String>,
    /// Live connections of the user on the whole server.
    pub connections: i32,
    /// Its sessions that the managed group's comment lists as ended: their end was delivered
    /// and could not finish ([`engine::session_end`]).
    pub ended_unfinished: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `unfinished`: the session's end was delivered and could not finish; the user's
    /// connections are ended with it.
    Close {
        user: String,
        session_id: String,
        record: SessionRecord,
        unfinished: bool,
    },
    Lock {
        user: String,
    },
    RetryDrop {
        user: String,
    },
}

/// What [`decide`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub actions: Vec<Action>,
    pub left_open: Vec<LeftOpen>,
    pub failed: Vec<Failed>,
    /// Members of the managed group able to log in whose ledger pg-autouser did not write.
    pub unowned_logins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOpen {
    pub db_user: String,
    pub session_id: String,
    pub started_at: u64,
    pub connections: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closed {
    pub db_user: String,
    pub session_id: String,
    pub db_name: String,
    pub mode: CreateDbUserMode,
    pub started_at: u64,
    /// `deactivated` or `dropped` when it was the user's last session, `in_use` otherwise.
    pub status: EndStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetriedDrop {
    pub db_user: String,
    pub mode: CreateDbUserMode,
    pub status: EndStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failed {
    pub db_user: String,
    pub kind: String,
    pub error: String,
}

/// What one run did on one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    pub database: String,
    pub managed_users: usize,
    /// Sessions closed as their session-end would have. A session that a session-end or
    /// another reaper closed first is not listed.
    pub closed: Vec<Closed>,
    /// Users locked because they could log in with no open session.
    pub locked: Vec<String>,
    /// Expired sessions kept because their user is still connected.
    pub left_open: Vec<LeftOpen>,
    pub failed: Vec<Failed>,
    /// Members of the managed group able to log in whose comment holds no pg-autouser ledger:
    /// provisioned by someone else (Teleport itself during a migration, a second admin). They
    /// are reported, never locked or closed.
    pub unowned_logins: Vec<String>,
    /// With `retry_blocked_drops`: the drops retried, and what each did (`dropped`, or
    /// `deactivated` when still blocked, with the reason).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retried_drops: Vec<RetriedDrop>,
    /// Closes and locks not started because the run's stop time had come; the next run
    /// decides them again.
    pub deferred: usize,
}

/// The actions for `users` at `now` (Unix seconds); `retry_blocked_drops` as configured.
pub fn decide(users: &[ManagedUser], now: u64, max_session_duration: Duration, retry_blocked_drops: bool) -> Decisions {
    let mut decisions = Decisions::default();
    for user in users {
        if !is_pg_autouser_ledger(user.ledger.as_deref()) {
            if user.can_login {
                decisions.unowned_logins.push(user.name.clone());
            }
            continue;
        }
        let ledger = match Ledger::from_comment(&user.name, user.ledger.as_deref()) {
            Ok(ledger) => ledger,
            Err(error) => {
                decisions.failed.push(Failed {
                    db_user: user.name.clone(),
                    kind: "LedgerUnreadable".into(),
                    error: error.to_string(),
                });
                continue;
            }
        };
        let expired = |record: &SessionRecord| record.started_at.saturating_add(max_session_duration.as_secs()) <= now;
        for (session_id, record) in &ledger.sessions {
            let unfinished = user.ended_unfinished.contains(session_id);
            if !unfinished && !expired(record) {
                continue;
            }
            if user.connections > 0 && !unfinished {
                decisions.left_open.push(LeftOpen {
                    db_user: user.name.clone(),
                    session_id: session_id.clone(),
                    started_at: record.started_at,
                    connections: user.connections,
                });
            } else {
                decisions.actions.push(Action::Close {
                    user: user.name.clone(),
                    session_id: session_id.clone(),
                    record: record.clone(),
                    unfinished,
                });
            }
        }
        // The lock also strips its roles; the engine decides that under the user's lock.
        if ledger.sessions.is_empty() && user.can_login {
            decisions.actions.push(Action::Lock { user: user.name.clone() });
        }
        if retry_blocked_drops && ledger.sessions.is_empty() && ledger.blocked_drop.is_some() && user.connections == 0 {
            decisions.actions.push(Action::RetryDrop { user: user.name.clone() });
        }
    }
    decisions
}

/// One run on `db`, over `connection` (logged in to `admin_db_name`), as of `now` (Unix
/// seconds). When the policy grants object permissions, a session is closed in its own
/// database, through `connect_to`. No action starts after `stop_at`.
///
/// For a read replica's entry, `connection` and `connect_to` reach its writer, and `replicas`
/// the replicas, where the users' sessions are (empty for any other entry): their connections
/// there count as live, and a close waits for the replicas and ends them there too
/// ([`replica::session_end`]).
#[allow(clippy::too_many_arguments)]
pub async fn reap<C, Fut>(
    connection: &AdminConnection,
    admin_db_name: &str,
    config: &Config,
    db: &ResolvedDatabase,
    replicas: &[Replica<'_>],
    now: u64,
    stop_at: Option<Instant>,
    connect_to: C,
) -> Result<ReapReport, Error>
where
    C: Fn(String) -> Fut + Sync,
    Fut: Future<Output = Result<AdminConnection, Error>> + Send,
{
    let others = engine::ConnectWith(&connect_to);
    let client = connection.client();
    let listing_failed =
        |source| Error::Postgres { action: "listing the managed users".into(), endpoint: db.endpoint(), source };
    let group_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&config.managed_group];
    let (rows, group) = tokio::join!(
        client.query(sql::LIST_MANAGED_USERS, &group_param),
        client.query(sql::GROUP_COMMENT, &group_param)
    );
    let (rows, group) = (rows.map_err(listing_failed)?, group.map_err(listing_failed)?);
    let group_comment: Option<String> = group.first().and_then(|row| row.get("comment"));
    let ended_in_group = ledger::ended_in_group(group_comment.as_deref());
    let mut users: Vec<ManagedUser> = rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            let ended_unfinished =
                ended_in_group.iter().filter(|(user, _)| *user == name).map(|(_, session)| session.clone()).collect();
            ManagedUser {
                can_login: row.get("can_login"),
                ledger: row.get("ledger"),
                connections: row.get("connections"),
                ended_unfinished,
                name,
            }
        })
        .collect();
    // The users' connections on the replicas. A replica the admin cannot read counts none there
    // (a warning says so): an expired session is then closed even if the user is connected to
    // it, which locks the user rather than leave it able to log in.
    let names: Vec<&str> = users.iter().map(|user| user.name.as_str()).collect();
    let counted = join_all(replicas.iter().map(|replica| {
        let names = &names;
        async move {
            let counted = match replica.client {
                Ok(client) => client.query(sql::CONNECTIONS_BY_USER, &[names]).await.map_err(|e| error_chain(&e)),
                Err(error) => Err(error.to_string()),
            };
            counted.unwrap_or_else(|error| {
                tracing::warn!(replica = %replica.endpoint, %error,
                    "cannot count the users' connections on the read replica; counting none there");
                Vec::new()
            })
        }
    }))
    .await;
    for row in counted.into_iter().flatten() {
        let (name, connections): (String, i32) = (row.get(0), row.get(1));
        if let Some(user) = users.iter_mut().find(|user| user.name == name) {
            user.connections += connections;
        }
    }
    let decisions = decide(&users, now, config.max_session_duration, config.retry_blocked_drops);
    let mut report = ReapReport {
        database: db.name.clone(),
        managed_users: users.len(),
        closed: Vec::new(),
        locked: Vec::new(),
        left_open: decisions.left_open,
        failed: decisions.failed,
        unowned_logins: decisions.unowned_logins,
        retried_drops: Vec::new(),
        deferred: 0,
    };
    let target = |user: &str, session_id: &str, database: &str, db_name: &str| Target {
        session_id: session_id.to_string(),
        person: user.to_string(),
        db_user: user.to_string(),
        database: database.to_string(),
        db_name: db_name.to_string(),
        admin_db_name: admin_db_name.to_string(),
        admin: db.admin_user.name.clone(),
        managed_group: config.managed_group.clone(),
        endpoint: db.endpoint(),
        creator: config.creator_role_for(user),
    };
    let failed = |user: &str, error: Error| Failed {
        db_user: user.to_string(),
        kind: error.kind().into(),
        error: error.to_string(),
    };
    let revokes_db_permissions = config.policy.has_db_permissions();
    let terminate_connections = config.terminate_connections;
    let mut other_databases: Vec<(String, AdminConnection)> = Vec::new();
    let mut actions = decisions.actions.into_iter();
    while let Some(action) = actions.next() {
        if stop_at.is_some_and(|stop_at| Instant::now() >= stop_at) {
            report.deferred = 1 + actions.len();
            break;
        }
        match action {
            Action::Close { user, session_id, record, unfinished } => {
                let mut target = target(&user, &session_id, &record.database, &record.db_name);
                // Object privileges are revoked by an end in the session's own database: where
                // the session was granted some, whatever the policy says now.
                let revokes_db_permissions = revokes_db_permissions || record.db_permissions.is_some();
                let connection = if revokes_db_permissions && record.db_name != admin_db_name {
                    target.admin_db_name = record.db_name.clone();
                    connection_to(&mut other_databases, &record.db_name, &connect_to).await
                } else {
                    Ok(connection)
                };
                let request = EndRequest {
                    target,
                    revokes_db_permissions,
                    terminate_connections: terminate_connections || unfinished,
                    redelivery_window_secs: config.redelivery_window.as_secs(),
                    object_inheritor: config.object_inheritor.clone(),
                };
                let result = match connection {
                    Ok(connection) if replicas.is_empty() => engine::session_end(connection, &request, &others).await,
                    Ok(connection) => replica::session_end(connection, replicas, &request, &others).await,
                    Err(error) => Err(error),
                };
                // The close may have been applied: a new connection finds out, so that what it
                // did is reported (and audited).
                let result = match result {
                    Err(Error::EndUnconfirmed { planned, .. }) => {
                        match connect_to(request.target.admin_db_name.clone()).await {
                            Ok(fresh) if replicas.is_empty() => {
                                engine::confirm_end(&fresh, &request, &others, *planned).await
                            }
                            Ok(fresh) => replica::confirm_end(&fresh, replicas, &request, &others, *planned).await,
                            Err(error) => Err(error),
                        }
                    }
                    result => result,
                };
                match result {
                    // Closed meanwhile, by its late session-end or by another reaper.
                    Ok(outcome) if outcome.status == EndStatus::Noop => {}
                    Ok(outcome) => {
                        tracing::info!(db_user = %user, session_id = %session_id, status = ?outcome.status,
                            started_at = record.started_at, "reaper closed an expired session");
                        report.closed.push(Closed {
                            db_user: user,
                            session_id,
                            db_name: record.db_name,
                            mode: record.mode,
                            started_at: record.started_at,
                            status: outcome.status,
                            reason: outcome.reason,
                        });
                    }
                    Err(error) => report.failed.push(failed(&user, error)),
                }
            }
            Action::Lock { user } => match engine::lock_idle_user(
                connection,
                &target(&user, "", &db.name, admin_db_name),
                config.terminate_connections,
            )
            .await
            {
                Ok(true) => {
                    tracing::info!(db_user = %user, "reaper locked a managed user with no open session");
                    report.locked.push(user);
                }
                Ok(false) => {}
                Err(error) => report.failed.push(failed(&user, error)),
            },
            Action::RetryDrop { user } => {
                let request = EndRequest {
                    target: target(&user, "", &db.name, admin_db_name),
                    revokes_db_permissions: false,
                    terminate_connections,
                    redelivery_window_secs: config.redelivery_window.as_secs(),
                    object_inheritor: config.object_inheritor.clone(),
                };
                match engine::retry_blocked_drop(connection, &request, &others).await {
                    Ok(Some(outcome)) => {
                        tracing::info!(db_user = %user, status = ?outcome.status, "reaper retried a blocked drop");
                        report.retried_drops.push(RetriedDrop {
                            db_user: user,
                            mode: outcome.mode.unwrap_or_default(),
                            status: outcome.status,
                            reason: outcome.reason,
                        });
                    }
                    Ok(None) => {}
                    Err(error) => report.failed.push(failed(&user, error)),
                }
            }
        }
    }
    Ok(report)
}

/// A connection to `db_name`, opened once per run.
async fn connection_to<'a, C, Fut>(
    open: &'a mut Vec<(String, AdminConnection)>,
    db_name: &str,
    connect_to: &C,
) -> Result<&'a AdminConnection, Error>
where
    C: Fn(String) -> Fut,
    Fut: Future<Output = Result<AdminConnection, Error>>,
{
    if let Some(index) = open.iter().position(|(name, _)| name == db_name) {
        return Ok(&open[index].1);
    }
    let connection = connect_to(db_name.to_string()).await?;
    open.push((db_name.to_string(), connection));
    Ok(&open.last().expect("just pushed").1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(sessions: &[(&str, u64)]) -> Option<String> {
        let mut ledger = Ledger::default();
        for (id, started_at) in sessions {
            ledger.sessions.insert(
                id.to_string(),
                SessionRecord {
                    mode: CreateDbUserMode::Keep,
                    database: "orders".into(),
                    db_name: "app".into(),
                    db_roles: Default::default(),
                    started_at: *started_at,
                    db_permissions: None,
                },
            );
        }
        Some(ledger.to_comment())
    }

    fn user(name: &str, can_login: bool, ledger: Option<String>, connections: i32) -> ManagedUser {
        ManagedUser { name: name.into(), can_login, ledger, connections, ended_unfinished: BTreeSet::new() }
    }

    const HOUR: u64 = 3600;

    #[test]
    fn expired_sessions_of_disconnected_users_are_closed_and_idle_users_locked() {
        let now = 100 * HOUR;
        let max = Duration::from_secs(12 * HOUR);
        let users = [
            user("expired", true, ledger(&[("old", now - 13 * HOUR), ("new", now - HOUR)]), 0),
            user("connected", true, ledger(&[("old", now - 13 * HOUR)]), 2),
            user("idle", true, ledger(&[]), 0),
            user("locked", false, None, 0),
            user("fresh", true, ledger(&[("s", now - 12 * HOUR + 1)]), 0),
            user("broken", true, Some(r#"{"managed_by":"pg-autouser","format":9}"#.into()), 0),
            user("teleports", true, Some("provisioned by Teleport".into()), 0),
            user("teleports-locked", false, None, 0),
        ];
        let decisions = decide(&users, now, max, false);
        assert_eq!(decisions.actions.len(), 2, "{decisions:?}");
        assert!(
            matches!(&decisions.actions[0], Action::Close { user, session_id, .. } if user == "expired" && session_id == "old")
        );
        assert_eq!(decisions.actions[1], Action::Lock { user: "idle".into() });
        assert_eq!(decisions.left_open.len(), 1);
        assert_eq!(decisions.left_open[0].db_user, "connected");
        assert_eq!(decisions.failed.len(), 1);
        assert_eq!(decisions.failed[0].db_user, "broken");
        assert_eq!(decisions.unowned_logins, vec!["teleports".to_string()]);
    }

    /// A session whose end was delivered and could not finish is closed now, whatever its age,
    /// and although its user is connected; the user's other sessions wait for their own end.
    #[test]
    fn a_session_whose_end_could_not_finish_is_closed_connected_or_not() {
        let now = 100 * HOUR;
        let mut held_up = user("held", true, ledger(&[("s1", now - HOUR), ("s2", now - HOUR)]), 3);
        held_up.ended_unfinished = BTreeSet::from(["s1".to_string(), "gone".to_string()]);
        let decisions = decide(&[held_up], now, Duration::from_secs(12 * HOUR), false);
        assert_eq!(decisions.actions.len(), 1, "{decisions:?}");
        assert!(matches!(&decisions.actions[0],
            Action::Close { user, session_id, unfinished: true, .. } if user == "held" && session_id == "s1"));
        assert!(decisions.left_open.is_empty(), "{decisions:?}");
    }

    #[test]
    fn exactly_max_session_duration_is_expired() {
        let users = [user("u", true, ledger(&[("s", 0)]), 0)];
        assert_eq!(decide(&users, 11, Duration::from_secs(12), false).actions, vec![]);
        assert_eq!(decide(&users, 12, Duration::from_secs(12), false).actions.len(), 1);
    }
}
