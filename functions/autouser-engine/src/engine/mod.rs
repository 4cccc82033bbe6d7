//! Executes session starts and ends against a connected admin client.
//!
//! A start of a user the connection has not seen exist is first tried in one round trip
//! (see [`session_start`]). Otherwise one attempt is one transaction in two round trips:
//! 1. `BEGIN`, the per-user advisory lock and [`sql::READ_STATE`], pipelined; the catalog
//!    query is prepared once per connection ([`AdminConnection`]), because planning it costs
//!    several times more than running it;
//! 2. the plan's statements and `COMMIT`, pipelined. PostgreSQL turns the `COMMIT` of a
//!    transaction in which a statement failed into a rollback, so a failure anywhere leaves
//!    nothing behind; the first failing statement tells us which step failed.
//!
//! A drop commits in its second round trip too
//! ([`run_pipelined_committing_with_the_last`](pipeline::run_pipelined_committing_with_the_last));
//! it takes a third only to fall back to `keep` when objects depend on the user.
//! Attempts that lose a race (serialization failure, deadlock, a concurrent catalog update,
//! a duplicate role) are retried a bounded number of times with jittered backoff.
//!
//! This module holds the public calls; the rest is cut by concern: `start` and `end` (with
//! `hand_over` to the object inheritor and `drop_blocked`, why a drop was blocked), `read`
//! (the first round trip) and `objects` (its object listing), `pipeline` (sending a batch) and
//! `attempt` (retrying, and what a failing statement means).

mod attempt;
mod drop_blocked;
mod end;
mod hand_over;
mod objects;
mod pipeline;
mod read;
mod start;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::outcome::{EndOutcome, EndStatus, StartOutcome};
use autouser_policy::plan::{self, EndDecision};
use autouser_policy::request::{EndRequest, StartRequest, Target};

use attempt::{postgres_error, retrying, run_and_commit, Failure};
use end::{end_once, record_unfinished_end, run_end, terminate_connections};
use objects::ObjectListing;
use pipeline::rollback;
use read::begin_and_read;
use start::{create_in_one_round_trip, start_once};

/// Attempts per call before giving up with [`Error::Contention`].
pub const MAX_ATTEMPTS: u32 = 12;

/// Opens (or confirms) a session: see [`plan::plan_start`] for what changes.
///
/// For a user this connection has not seen exist, it first tries to create the user in one
/// round trip, planning from [`ObservedState::expected_for_new_user`](plan::ObservedState::expected_for_new_user) instead of reading: if
/// the user exists after all (or the group, a role, or write access is missing), a statement
/// of that transaction fails, nothing is kept, and the usual read-then-write attempt follows.
pub async fn session_start(connection: &AdminConnection, req: &StartRequest) -> Result<StartOutcome, Error> {
    let t = &req.target;
    // Object permissions need the database's objects listed first: no one-round-trip start.
    if !connection.user_seen(&t.db_user) && req.db_permissions.is_none() {
        match create_in_one_round_trip(connection, req).await {
            Ok(Some(outcome)) => return Ok(outcome),
            Ok(None) => {}
            // Waiting for the user's lock (or the statement) timed out: the read path would
            // wait as long again, so the caller hears now (a transient error), within the
            // lock timeout the deployment's timeouts are sized for.
            Err(error)
                if error
                    .code()
                    .is_some_and(|code| [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED].contains(code)) =>
            {
                return Err(postgres_error("taking the user's lock", t, error));
            }
            Err(error) => {
                tracing::debug!(db_user = %t.db_user, %error, "the user is not new; reading its state");
            }
        }
    }
    retrying(connection, t, || start_once(connection, req)).await
}

/// Closes a session: see [`plan::plan_end`] for what changes.
///
/// The end always locks: when its object revokes fail for a reason the listing could not
/// foresee (anything but a lost race), the next attempt locks the user without them, and the
/// outcome's reason says what failed.
///
/// `others` reaches the server's other databases, where a `best_effort_reassign_and_drop`
/// end hands over the user's objects.
///
/// An end that the user's own connections held up and that could not finish even so (the
/// admin may not end them, or the user held it up again) is recorded as ended in the managed
/// group's comment before the error is returned: from then on no start opens that session
/// again, and the reaper closes it at its next run, connected or not
/// ([`crate::reaper::decide`]).
pub async fn session_end(
    connection: &AdminConnection,
    req: &EndRequest,
    others: &dyn OtherDatabases,
) -> Result<EndOutcome, Error> {
    let revokes_failed = std::sync::Mutex::new(None);
    let revokes_failed = &revokes_failed;
    let held_up = std::sync::atomic::AtomicBool::new(false);
    let result = retrying(connection, &req.target, || async {
        let attempt = end_once(connection, req, others, revokes_failed).await;
        if matches!(attempt, Err(Failure::HeldUp(_))) {
            held_up.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        attempt
    })
    .await;
    if result.is_err() && held_up.load(std::sync::atomic::Ordering::Relaxed) {
        record_unfinished_end(connection, req).await;
    }
    result
}

/// Locks a managed user that has no open session (see [`plan::plan_lock`]), and with
/// `terminate` ends its open connections. Returns whether it changed anything.
pub async fn lock_idle_user(connection: &AdminConnection, t: &Target, terminate: bool) -> Result<bool, Error> {
    retrying(connection, t, || async {
        let state = begin_and_read(connection, t, &[], None).await?;
        let client = connection.client();
        match plan::plan_lock(t, &state) {
            Ok(Some(steps)) => {
                run_and_commit(connection, t, &state, &steps).await?;
                if let (true, Some(oid)) = (terminate, state.user_oid) {
                    if let Err(error) = terminate_connections(client, oid).await {
                        tracing::warn!(db_user = %t.db_user, error = %crate::pg::error_chain(&error),
                            "could not end the locked user's connections: grant pg_signal_backend to the admin");
                    }
                }
                Ok(true)
            }
            Ok(None) => {
                rollback(client).await;
                Ok(false)
            }
            Err(error) => {
                rollback(client).await;
                Err(Failure::Fatal(error.into()))
            }
        }
    })
    .await
}

/// The reaper's retry of a drop that an end could not do (see [`plan::plan_retry_drop`]):
/// `None` when there was nothing to retry. `req`'s session id is empty.
pub async fn retry_blocked_drop(
    connection: &AdminConnection,
    req: &EndRequest,
    others: &dyn OtherDatabases,
) -> Result<Option<EndOutcome>, Error> {
    let revokes_failed = std::sync::Mutex::new(None);
    retrying(connection, &req.target, || async {
        let state = begin_and_read(connection, &req.target, &[], None).await?;
        let client = connection.client();
        match plan::plan_retry_drop(req, &state) {
            Ok(Some(decision)) => {
                run_end(connection, req, others, &state, decision, &revokes_failed, None).await.map(Some)
            }
            Ok(None) => {
                rollback(client).await;
                Ok(None)
            }
            Err(error) => {
                rollback(client).await;
                Err(Failure::Fatal(error.into()))
            }
        }
    })
    .await
}

/// Runs the end of `req` again, on a new `connection`, after [`Error::EndUnconfirmed`]: when
/// it finds the session ended, the first run's COMMIT was applied and `planned` is the
/// outcome (so the caller audits what was done, not a `noop`); otherwise the rerun did the
/// end itself, and its outcome is the answer. A concurrent duplicate of the end that applied
/// it first is indistinguishable, so its change may be audited twice, never not at all.
pub async fn confirm_end(
    connection: &AdminConnection,
    req: &EndRequest,
    others: &dyn OtherDatabases,
    planned: EndOutcome,
) -> Result<EndOutcome, Error> {
    let rerun = session_end(connection, req, others).await?;
    if rerun.status != EndStatus::Noop || rerun.reason.as_deref() != Some(plan::ALREADY_ENDED) {
        return Ok(rerun);
    }
    tracing::info!(db_user = %req.target.db_user, session_id = %req.target.session_id, status = ?planned.status,
        "the reply to the session-end's COMMIT was lost; the rerun found it applied");
    let confirmed = "applied by a first attempt whose COMMIT reply was lost, as a rerun found";
    let reason = match planned.reason {
        Some(reason) => format!("{reason}; {confirmed}"),
        None => confirmed.to_string(),
    };
    Ok(EndOutcome { reason: Some(reason), ..planned })
}

/// Plans `call` as it would run now, and changes nothing: `BEGIN`, the user's lock and the
/// state as the call reads them, the plan, and `ROLLBACK`. For a `best_effort_reassign_and_drop`
/// end, also where the user's objects would be handed over. Fails as the call would, with
/// the same typed error (a refusal, a missing privilege, a transient failure).
pub async fn plan_call(
    connection: &AdminConnection,
    call: crate::dry_run::Call<'_>,
) -> Result<crate::dry_run::PlannedCall, Error> {
    use crate::dry_run::{Call, HandOver, PlannedCall};
    let t = call.target();
    let client = connection.client();
    retrying(connection, t, || async {
        let planned = match call {
            Call::Start(req) => {
                let candidates: Vec<String> = req.db_roles.union(&req.platform_roles).cloned().collect();
                let session_roles: Vec<String> = candidates.iter().chain([&t.managed_group]).cloned().collect();
                let listing = req.db_permissions.as_ref().map(|rules| ObjectListing::for_rules(rules, session_roles));
                let state = begin_and_read(connection, t, &candidates, listing.as_ref()).await?;
                plan::plan_start(req, &state, state.server_now)
                    .map(|decision| PlannedCall::Start { state: Box::new(state), decision })
                    .map_err(|refusal| Failure::Fatal(refusal.into()))
            }
            Call::End(req) => {
                let listing = req.revokes_db_permissions.then(ObjectListing::default);
                let state = begin_and_read(connection, t, &[], listing.as_ref()).await?;
                match plan::plan_end(req, &state) {
                    Err(refusal) => Err(Failure::Fatal(refusal.into())),
                    Ok(decision) => {
                        let hand_over = match (&decision, state.user_oid) {
                            (EndDecision::Drop { reassign_to: Some(inheritor), .. }, Some(user_oid)) => client
                                .query_typed(sql::HAND_OVER_STATE, &[(&user_oid, Type::OID), (inheritor, Type::TEXT)])
                                .await
                                .map(|rows| {
                                    let row = rows.into_iter().next().expect("one row");
                                    let elsewhere: Vec<String> = row.get("other_databases");
                                    Some(HandOver {
                                        inheritor: inheritor.clone(),
                                        inheritor_exists: row.get("inheritor_exists"),
                                        elsewhere: elsewhere
                                            .into_iter()
                                            .map(|db| {
                                                let steps = plan::hand_over_objects(t, &state, inheritor, true);
                                                (db, steps)
                                            })
                                            .collect(),
                                        here: plan::hand_over_objects(t, &state, inheritor, false),
                                    })
                                })
                                .map_err(|error| {
                                    Failure::Fatal(postgres_error("reading where the user has objects", t, error))
                                }),
                            _ => Ok(None),
                        };
                        hand_over.map(|hand_over| PlannedCall::End { state: Box::new(state), decision, hand_over })
                    }
                }
            }
        };
        rollback(client).await;
        planned
    })
    .await
}

/// Admin connections to the other databases of the server an end runs on, logged in as the
/// same admin: a `best_effort_reassign_and_drop` end hands over the user's objects in each
/// database that holds some.
pub trait OtherDatabases: Sync {
    fn connect<'a>(
        &'a self,
        db_name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<std::sync::Arc<AdminConnection>, Error>> + Send + 'a>>;
}

/// [`OtherDatabases`] for a caller that connects to one database only (the benchmarks): an
/// end that needs another database locks the user instead of dropping it, and says so.
pub struct NoOtherDatabases;

impl OtherDatabases for NoOtherDatabases {
    fn connect<'a>(
        &'a self,
        db_name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<std::sync::Arc<AdminConnection>, Error>> + Send + 'a>>
    {
        Box::pin(async move {
            Err(Error::DependencyUnavailable {
                what: format!("database {db_name:?}"),
                detail: "this caller connects to one database only".into(),
            })
        })
    }
}

/// [`OtherDatabases`] through a function that opens an admin connection to a database name
/// of the same server: for callers without a pool (the CLI, the reaper, tests).
pub struct ConnectWith<C>(pub C);

impl<C, Fut> OtherDatabases for ConnectWith<C>
where
    C: Fn(String) -> Fut + Sync,
    Fut: std::future::Future<Output = Result<AdminConnection, Error>> + Send,
{
    fn connect<'a>(
        &'a self,
        db_name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<std::sync::Arc<AdminConnection>, Error>> + Send + 'a>>
    {
        Box::pin(async move { (self.0)(db_name.to_string()).await.map(std::sync::Arc::new) })
    }
}
