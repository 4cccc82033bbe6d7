//! Sessions on a read replica: the admin acts on the writer exactly as on a primary, then waits
//! until the replica has replayed the writer's commit, so that the login that follows the
//! answer finds the role as the writer left it.
//!
//! Roles live in shared catalogs, which physical replication copies: a role created, locked or
//! dropped on the writer is so on every replica once it has replayed that WAL. The writer's
//! connection captures the WAL position after each `COMMIT` in the same message
//! ([`AdminConnection::capture_commit_lsn`]), so the wait adds no round trip to the writer; the
//! replica is polled with backoff, bounded by the entry's `replica_wait`.

use std::time::{Duration, Instant};

use autouser_policy::outcome::{EndOutcome, EndStatus, StartOutcome};
use autouser_policy::request::{EndRequest, StartRequest};
use tokio_postgres::Client;

use crate::engine::{self, OtherDatabases};
use crate::pg::{error_chain, AdminConnection};
use crate::{sql, Error};

/// The read replica of a session call: the admin's connection to it, what to call it in
/// messages, and how long to wait for it.
pub struct Replica<'a> {
    pub client: &'a Client,
    /// `host:port` of the replica, as the config names it.
    pub endpoint: String,
    pub wait: Duration,
}

/// How far the replica got when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The replica has replayed the writer's commit.
    Done,
    /// It has not, within the bound.
    Behind { behind_bytes: Option<i64>, paused: bool },
}

/// How the replica is polled. A replica at idle replication replays a commit within a
/// millisecond or so, less than the timer's resolution: the first polls follow each other
/// without a pause (each is a round trip to the replica), then come 1 ms apart, then the pause
/// doubles up to the longest.
const POLLS_WITHOUT_PAUSE: u32 = 5;
const FIRST_POLL_PAUSE: Duration = Duration::from_millis(1);
const SHORT_POLLS: u32 = 15;
const LONGEST_POLL_PAUSE: Duration = Duration::from_millis(50);

/// A session-start on a read replica: [`engine::session_start`] on the writer, then the wait.
/// A start the replica has not replayed within the bound fails with [`Error::ReplicaBehind`],
/// which is transient: a retried delivery finds the session open on the writer, changes
/// nothing there, and only waits.
pub async fn session_start(
    writer: &AdminConnection,
    replica: &Replica<'_>,
    req: &StartRequest,
) -> Result<StartOutcome, Error> {
    writer.capture_commit_lsn();
    writer.take_commit_lsn();
    let outcome = engine::session_start(writer, req).await?;
    let lsn = commit_lsn(writer).await?;
    match wait_for_replay(replica, &lsn).await? {
        Replay::Done => Ok(outcome),
        Replay::Behind { behind_bytes, paused } => {
            Err(Error::ReplicaBehind { replica: replica.endpoint.clone(), behind_bytes, paused, bound: replica.wait })
        }
    }
}

/// A session-end on a read replica: [`engine::session_end`] on the writer, the wait, and, when
/// the end locked or dropped the user and ends its connections (`terminate_connections`), the
/// user's connections on the replica too, where its sessions actually are. The end does not
/// fail when the replica lags: `replica_replayed` says whether the lock had reached it.
pub async fn session_end(
    writer: &AdminConnection,
    replica: &Replica<'_>,
    req: &EndRequest,
    others: &impl OtherDatabases,
) -> Result<EndOutcome, Error> {
    writer.capture_commit_lsn();
    writer.take_commit_lsn();
    // The user's OID on the replica, read before the end: a dropped user has no name there
    // once the drop has replayed, and its connections are found by OID.
    let user_oid = async {
        replica
            .client
            .query_opt(sql::ROLE_OID, &[&req.target.db_user])
            .await
            .map(|row| row.map(|row| row.get::<_, u32>(0)))
    };
    let (ended, user_oid) = tokio::join!(engine::session_end(writer, req, others), user_oid);
    let mut outcome = ended?;
    let user_oid = user_oid.map_err(|error| unreachable(replica, &error))?;
    let lsn = commit_lsn(writer).await?;
    let replayed = wait_for_replay(replica, &lsn).await? == Replay::Done;
    outcome.replica_replayed = Some(replayed);
    let ended_access = matches!(outcome.status, EndStatus::Deactivated | EndStatus::Dropped);
    if let (true, Some(terminated), Some(oid)) = (ended_access, outcome.terminated_connections, user_oid) {
        let row = replica
            .client
            .query_one(sql::TERMINATE_CONNECTIONS, &[&oid])
            .await
            .map_err(|error| unreachable(replica, &error))?;
        outcome.terminated_connections = Some(terminated + row.get::<_, i32>(0).max(0) as usize);
    }
    Ok(outcome)
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
/// at once when replay is paused. Fails with [`Error::NotAReplica`] when the endpoint is not in
/// recovery: it does not receive the writer's changes.
pub async fn wait_for_replay(replica: &Replica<'_>, lsn: &str) -> Result<Replay, Error> {
    let deadline = Instant::now() + replica.wait;
    let mut pause = FIRST_POLL_PAUSE;
    let mut polls = 0;
    loop {
        polls += 1;
        let row =
            replica.client.query_one(sql::REPLAY_PROGRESS, &[&lsn]).await.map_err(|e| unreachable(replica, &e))?;
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
        if polls <= POLLS_WITHOUT_PAUSE {
            continue;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        if polls >= SHORT_POLLS {
            pause = (pause * 2).min(LONGEST_POLL_PAUSE);
        }
    }
}

fn unreachable(replica: &Replica<'_>, error: &tokio_postgres::Error) -> Error {
    Error::Unreachable {
        endpoint: replica.endpoint.clone(),
        detail: format!("on the read replica: {}", error_chain(error)),
    }
}
