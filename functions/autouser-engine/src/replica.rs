//! Sessions on a read replica: the admin acts on the writer exactly as on a primary, then waits
//! until the replica has replayed the writer's commit, so that the login that follows the
//! answer finds the role as the writer left it.
//!
//! Roles live in shared catalogs, which physical replication copies: a role created, locked or
//! dropped on the writer is so on every replica once it has replayed that WAL. The writer's
//! connection captures the WAL position after each `COMMIT` in the same message
//! ([`AdminConnection::capture_commit_lsn`]), so the wait adds no round trip to the writer; the
//! replica is polled with backoff, bounded by the entry's `replica_wait`. Behind an Aurora
//! reader endpoint, a session may log in to any of the cluster's readers: the calls take every
//! replica the session may reach, and wait on each.

use std::time::{Duration, Instant};

use autouser_policy::config::ResolvedDatabase;
use autouser_policy::outcome::{EndOutcome, EndStatus, StartOutcome};
use autouser_policy::request::{EndRequest, StartRequest};
use futures_util::future::{join_all, try_join_all};
use tokio_postgres::Client;

use crate::engine::{self, OtherDatabases};
use crate::pg::{error_chain, AdminConnection};
use crate::{sql, Error};

/// The read replica of a session call: the admin's connection to it (or why the admin could
/// not log in), what to call it in messages, and how long to wait for it.
pub struct Replica<'a> {
    pub client: Result<&'a Client, &'a Error>,
    /// `host:port` of the replica, as the config names it.
    pub endpoint: String,
    pub wait: Duration,
}

impl<'a> Replica<'a> {
    /// The replica `db` (one of [`ResolvedDatabase::replica_databases`]), over the admin's
    /// connection to it, or the error of its login.
    pub fn of(connection: Result<&'a AdminConnection, &'a Error>, db: &ResolvedDatabase) -> Replica<'a> {
        Replica { client: connection.map(AdminConnection::client), endpoint: db.endpoint(), wait: db.replica_wait }
    }
}

/// How far the replica got when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The replica has replayed the writer's commit.
    Done,
    /// It has not, within the bound.
    Behind { behind_bytes: Option<i64>, paused: bool },
    /// The admin could not log in to it, or lost its connection: whether it replayed is not
    /// known.
    Unreached { detail: String },
}

/// How the replica is polled. At idle replication a replica replays a commit within about a
/// millisecond, less than the timer's resolution: for the first 2 ms the polls follow each
/// other without a pause (each is a round trip to the replica), then come 1 ms apart until
/// 12 ms, then the pause doubles up to 50 ms.
const BACK_TO_BACK: Duration = Duration::from_millis(2);
const FIRST_POLL_PAUSE: Duration = Duration::from_millis(1);
const SHORT_PAUSES_UNTIL: Duration = Duration::from_millis(12);
const LONGEST_POLL_PAUSE: Duration = Duration::from_millis(50);

/// A session-start on read replicas: [`engine::session_start`] on the writer, then the wait on
/// every replica the session may log in to (each instance behind an Aurora reader endpoint),
/// side by side. A start a replica has not replayed within the bound fails with
/// [`Error::ReplicaBehind`], which is transient: a retried delivery finds the session open on
/// the writer, changes nothing there, and only waits. A replica the admin cannot reach is not
/// waited for (a warning says so): the session is open on the writer, and reaches that replica
/// when it replays.
pub async fn session_start(
    writer: &AdminConnection,
    replicas: &[Replica<'_>],
    req: &StartRequest,
) -> Result<StartOutcome, Error> {
    writer.capture_commit_lsn();
    writer.take_commit_lsn();
    let outcome = engine::session_start(writer, req).await?;
    let lsn = commit_lsn(writer).await?;
    let replays = try_join_all(replicas.iter().map(|replica| wait_for_replay(replica, &lsn))).await?;
    for (replica, replay) in replicas.iter().zip(replays) {
        match replay {
            Replay::Done => {}
            Replay::Behind { behind_bytes, paused } => {
                return Err(Error::ReplicaBehind {
                    replica: replica.endpoint.clone(),
                    behind_bytes,
                    paused,
                    bound: replica.wait,
                });
            }
            Replay::Unreached { detail } => {
                tracing::warn!(replica = %replica.endpoint, %detail, db_user = %req.target.db_user,
                    "the session is open on the writer, but the read replica could not be reached to wait for it");
            }
        }
    }
    Ok(outcome)
}

/// A session-end on read replicas: [`engine::session_end`] on the writer, then
/// [`end_on_replica`] on each replica, side by side. The end does not fail when a replica
/// lags or cannot be reached: `replica_replayed` says whether the lock had reached every one.
pub async fn session_end(
    writer: &AdminConnection,
    replicas: &[Replica<'_>],
    req: &EndRequest,
    others: &impl OtherDatabases,
) -> Result<EndOutcome, Error> {
    writer.capture_commit_lsn();
    writer.take_commit_lsn();
    // The user's OID on each replica, read before the end: a dropped user has no name there
    // once the drop has replayed, and its connections are found by OID.
    let (ended, user_oids) =
        tokio::join!(engine::session_end(writer, req, others), join_all(replicas.iter().map(|r| user_oid(r, req))));
    let outcome = ended?;
    end_on_replicas(writer, replicas, outcome, user_oids).await
}

/// [`engine::confirm_end`] for a read replica's entry, after [`Error::EndUnconfirmed`]: the
/// rerun on a new connection to the writer, then [`end_on_replica`] on each replica, which the
/// first run did not reach. A user a replica no longer knows by name (its drop has replayed)
/// has no connection found there.
pub async fn confirm_end(
    writer: &AdminConnection,
    replicas: &[Replica<'_>],
    req: &EndRequest,
    others: &dyn OtherDatabases,
    planned: EndOutcome,
) -> Result<EndOutcome, Error> {
    writer.capture_commit_lsn();
    writer.take_commit_lsn();
    let user_oids = join_all(replicas.iter().map(|replica| user_oid(replica, req))).await;
    let outcome = engine::confirm_end(writer, req, others, planned).await?;
    end_on_replicas(writer, replicas, outcome, user_oids).await
}

/// [`end_on_replica`] on each replica, side by side, with the user's OID read on each; the
/// outcome adds up what they did.
async fn end_on_replicas(
    writer: &AdminConnection,
    replicas: &[Replica<'_>],
    mut outcome: EndOutcome,
    user_oids: Vec<Option<u32>>,
) -> Result<EndOutcome, Error> {
    let lsn = commit_lsn(writer).await?;
    let ended_access = matches!(outcome.status, EndStatus::Deactivated | EndStatus::Dropped);
    let terminate_asked = outcome.terminated_connections.is_some();
    let ends = replicas
        .iter()
        .zip(user_oids)
        .map(|(replica, user_oid)| end_on_replica(replica, &lsn, user_oid.filter(|_| ended_access), terminate_asked));
    let mut terminated = 0;
    let mut replayed = true;
    for (replay, ended) in try_join_all(ends).await? {
        if let Replay::Unreached { detail } = &replay {
            tracing::warn!(db_user = %outcome.db_user, %detail,
                "a read replica could not be reached after the end: its lock reaches the replica when it replays, \
                 and the user's connections there were not ended");
        }
        replayed &= replay == Replay::Done;
        terminated += ended;
    }
    outcome.replica_replayed = Some(replayed);
    if terminated > 0 || terminate_asked {
        outcome.terminated_connections = Some(outcome.terminated_connections.unwrap_or(0) + terminated);
    }
    Ok(outcome)
}

/// What an end does on one replica once the writer has committed `lsn`: the wait for the
/// replay, and, when the end locked or dropped the user (`user_oid`), the end of its
/// connections there, where its sessions actually are. Returns how far the replay got and how
/// many connections were ended. Fails only when the endpoint is not a replica.
///
/// The user may hold the replay back itself: a query of its own on the replica (a lock, or a
/// snapshot, that a change replayed from the writer must wait for) delays every later commit,
/// the lock included, for up to the replica's `max_standby_streaming_delay`, which may be
/// unlimited. So when the replica has not replayed the end within half the bound, the user's
/// connections there are ended, whether the end asked for it (`terminate_asked`) or not: a
/// session that holds back the replay of its own end would otherwise keep its access. The rest
/// of the bound is then waited for, and the connections the end asked to close are ended after
/// the replay, when no new login can follow.
async fn end_on_replica(
    replica: &Replica<'_>,
    lsn: &str,
    user_oid: Option<u32>,
    terminate_asked: bool,
) -> Result<(Replay, usize), Error> {
    let began = Instant::now();
    let mut replay = wait_within(replica, lsn, replica.wait / 2).await?;
    let mut terminated = 0;
    if let (Replay::Behind { paused: false, .. }, Some(oid)) = (&replay, user_oid) {
        terminated += terminate_on_replica(replica, oid).await;
        if terminated > 0 {
            tracing::warn!(replica = %replica.endpoint, connections = terminated,
                "the replica had not replayed the end; ended the user's connections there, which may hold the replay back");
        }
        replay = wait_within(replica, lsn, replica.wait.saturating_sub(began.elapsed())).await?;
    }
    if let (true, Some(oid)) = (terminate_asked, user_oid) {
        terminated += terminate_on_replica(replica, oid).await;
    }
    Ok((replay, terminated))
}

/// The OID of the request's user on the replica, if it has one there (and the replica could be
/// read).
async fn user_oid(replica: &Replica<'_>, req: &EndRequest) -> Option<u32> {
    let client = replica.client.ok()?;
    match client.query_opt(sql::ROLE_OID, &[&req.target.db_user]).await {
        Ok(row) => row.map(|row| row.get(0)),
        Err(error) => {
            tracing::warn!(replica = %replica.endpoint, error = %error_chain(&error), "reading the user on the read replica");
            None
        }
    }
}

/// Ends the connections of the user `oid` on the replica, each awaited until its backend has
/// exited (so that a later call does not count it again); returns how many ended. A replica
/// that cannot be read ends none (a warning says so).
async fn terminate_on_replica(replica: &Replica<'_>, oid: u32) -> usize {
    let Ok(client) = replica.client else { return 0 };
    match client.query_one(sql::TERMINATE_CONNECTIONS_AWAITED, &[&oid]).await {
        Ok(row) => row.get::<_, i32>(0).max(0) as usize,
        Err(error) => {
            tracing::warn!(replica = %replica.endpoint, error = %error_chain(&error),
                "ending the user's connections on the read replica");
            0
        }
    }
}

/// The WAL position after the writer's last commit of this call; when the call committed
/// nothing (a redelivered start), the writer's position now, which is past every commit the
/// call's reads saw.
async fn commit_lsn(writer: &AdminConnection) -> Result<String, Error> {
    if let Some(lsn) = writer.take_commit_lsn() {
        return Ok(lsn);
    }
    let row = writer.client().query_one(sql::COMMIT_LSN, &[]).await.map_err(|error| Error::Unreachable {
        endpoint: "the writer".into(),
        detail: format!("reading the WAL position: {}", error_chain(&error)),
    })?;
    Ok(row.get(0))
}

/// Polls the replica until it has replayed `lsn`, with backoff, for at most the bound. Returns
/// at once when replay is paused, and when the replica cannot be read ([`Replay::Unreached`]).
/// Fails with [`Error::NotAReplica`] when the endpoint is not in recovery: it does not receive
/// the writer's changes.
pub async fn wait_for_replay(replica: &Replica<'_>, lsn: &str) -> Result<Replay, Error> {
    wait_within(replica, lsn, replica.wait).await
}

/// [`wait_for_replay`] for at most `bound`.
async fn wait_within(replica: &Replica<'_>, lsn: &str, bound: Duration) -> Result<Replay, Error> {
    let client = match replica.client {
        Ok(client) => client,
        Err(error) => return Ok(Replay::Unreached { detail: format!("{}: {error}", replica.endpoint) }),
    };
    let began = Instant::now();
    let deadline = began + bound;
    let mut pause = FIRST_POLL_PAUSE;
    loop {
        let row = match client.query_one(sql::REPLAY_PROGRESS, &[&lsn]).await {
            Ok(row) => row,
            Err(error) => {
                let detail = format!("{}: reading its replay position: {}", replica.endpoint, error_chain(&error));
                return Ok(Replay::Unreached { detail });
            }
        };
        let in_recovery: bool = row.get("in_recovery");
        if !in_recovery {
            return Err(Error::NotAReplica { endpoint: replica.endpoint.clone() });
        }
        if row.get::<_, bool>("replayed") {
            return Ok(Replay::Done);
        }
        let paused: bool = row.get("paused");
        let behind = Replay::Behind { behind_bytes: row.get("behind_bytes"), paused };
        let now = Instant::now();
        if paused || now >= deadline {
            return Ok(behind);
        }
        let waited = now - began;
        if waited < BACK_TO_BACK {
            continue;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        if waited >= SHORT_PAUSES_UNTIL {
            pause = (pause * 2).min(LONGEST_POLL_PAUSE);
        }
    }
}
