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
//! A drop commits in its second round trip too ([`run_pipelined_committing_with_the_last`]); it
//! takes a third only to fall back to `keep` when objects depend on the user.
//! Attempts that lose a race (serialization failure, deadlock, a concurrent catalog update,
//! a duplicate role) are retried a bounded number of times with jittered backoff.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::pg::{AdminConnection, ObjectListingStatements};
use crate::sql;
use crate::Error;
use autouser_policy::config::RDS_IAM_ROLE;
use autouser_policy::ledger::{Ledger, STARTED_AT_SERVER_CLOCK};
use autouser_policy::outcome::{DropBlocked, DropBlockedKind, EndOutcome, EndStatus, StartOutcome};
use autouser_policy::permissions::{
    DbObject, KeptPrivileges, ObjectBatch, ObjectKind, ObjectRules, ObjectState, PermissionSummary, SchemaState,
};
use autouser_policy::plan::{self, EndDecision, ObjectCleanup, ObservedState, StartDecision, Step};
use autouser_policy::request::{EndRequest, StartRequest, Target};

/// Attempts per call before giving up with [`Error::Contention`].
pub const MAX_ATTEMPTS: u32 = 12;

/// Opens (or confirms) a session: see [`plan::plan_start`] for what changes.
///
/// For a user this connection has not seen exist, it first tries to create the user in one
/// round trip, planning from [`ObservedState::expected_for_new_user`] instead of reading: if
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

/// The one-round-trip start of a new user: a check that the user does not exist yet, the
/// user's lock, a check that no role it grants is one a start refuses
/// ([`sql::db_roles_check`]), `CREATE ROLE … LOGIN`, the ledger (dated by the server's clock),
/// `GRANT <group>, <roles> TO …` and the check that the group's comment does not list the
/// session as ended, in one message and so in one implicit transaction
/// ([`sql::locked_transaction`]). A returning user fails the first check without queueing
/// for her lock, so she waits for it once, in the read path. `None` when the admin is (or may
/// be) a superuser: it could grant a superuser role, which the read path refuses, while
/// PostgreSQL refuses that to any other admin. The login's report can be stale (the admin
/// promoted on a live, pooled connection), so the transaction also checks the catalog and
/// fails if the admin is a superuser now; the read path follows.
async fn create_in_one_round_trip(
    connection: &AdminConnection,
    req: &StartRequest,
) -> Result<Option<StartOutcome>, tokio_postgres::Error> {
    let t = &req.target;
    if connection.admin_is_superuser() != Some(false) {
        return Ok(None);
    }
    // The creator applies on PostgreSQL 16+; an unknown version takes the read path.
    let creator_applies = match connection.server_major() {
        Some(major) => major >= 16,
        None if req.target.creator.is_some() => return Ok(None),
        None => false,
    };
    let expected = ObservedState::expected_for_new_user(req, creator_applies);
    // Nothing was read, so the server's clock is not known yet: the ledger's statement puts it in.
    let Ok(StartDecision::Apply { steps, ledger, created_user: true, .. }) =
        plan::plan_start(req, &expected, STARTED_AT_SERVER_CLOCK)
    else {
        return Ok(None);
    };
    // A failure rolls the implicit transaction back: nothing is left to undo. That includes a
    // call of a creator's function that is not there: the read path then finds out why.
    let without_function = connection.creators_without_function();
    let renderer =
        sql::Renderer::new(&t.managed_group, &without_function).with_check_functions(connection.has_check_functions());
    // Nothing was read either about the roles it grants: the catalog is checked before them.
    let wanted: Vec<String> = req.db_roles.union(&req.platform_roles).cloned().collect();
    let roles_check = sql::db_roles_check(&wanted, plan::RoleGuard::of(req));
    let mut text = sql::locked_transaction(&t.db_user, sql::user_lock_key(&t.db_user), &roles_check, &steps, renderer);
    if connection.captures_commit_lsn() {
        // The message's implicit transaction commits at the explicit COMMIT, and the WAL
        // position is read after it, in the same round trip.
        text.push_str(";\n");
        text.push_str(sql::COMMIT);
        text.push_str(";\n");
        text.push_str(sql::COMMIT_LSN);
    }
    // The check functions, where the connection has not made them yet, go first in the flight.
    let ((), started) = tokio::join!(connection.make_check_functions(), connection.client().simple_query(&text));
    connection.saw_commit_lsn(&started?);
    connection.saw_user(&t.db_user, true);
    Ok(Some(start_outcome(req, &ledger, true, false, Vec::new())))
}

/// The answer to a session-start, from the ledger as committed.
fn start_outcome(
    req: &StartRequest,
    ledger: &Ledger,
    created_user: bool,
    already_active: bool,
    db_permissions: Vec<PermissionSummary>,
) -> StartOutcome {
    let t = &req.target;
    let session = ledger.sessions.get(&t.session_id);
    StartOutcome {
        status: "active",
        db_user: t.db_user.clone(),
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        session_id: t.session_id.clone(),
        mode: session.map_or(req.mode, |s| s.mode),
        db_roles: session
            .map_or_else(|| req.db_roles.iter().cloned().collect(), |s| s.db_roles.iter().cloned().collect()),
        base_roles: std::iter::once(t.managed_group.clone()).chain(req.platform_roles.iter().cloned()).collect(),
        created_user,
        already_active,
        open_sessions: ledger.sessions.len(),
        db_permissions,
    }
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

/// Records the session of `req` as ended in the managed group's comment, in a transaction of
/// its own that touches nothing of the user's (whose row its connections hold): see
/// [`session_end`]. A failure is logged; the end's own error is what the caller hears.
async fn record_unfinished_end(connection: &AdminConnection, req: &EndRequest) {
    let t = &req.target;
    let record = plan::record_unfinished_end(req);
    let statements = [Statement::Raw(sql::BEGIN), Statement::Step(&record), Statement::Raw(sql::COMMIT)];
    match run_pipelined(connection, Some(&t.managed_group), &statements).await {
        Ok(()) => tracing::warn!(db_user = %t.db_user, session_id = %t.session_id,
            "the end could not finish: it is recorded in the managed group's comment, and the reaper closes the session"),
        Err((_, error)) => {
            rollback(connection.client()).await;
            tracing::error!(db_user = %t.db_user, session_id = %t.session_id, error = %crate::pg::error_chain(&error),
                "the end could not finish, and could not be recorded for the reaper either");
        }
    }
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

/// Why one attempt failed.
enum Failure {
    /// Lost a race; the next attempt will see the winner's result.
    Retry(String),
    /// Timed out waiting for a lock on the user's row or objects, which only a transaction of
    /// the user's own holds that long: [`retrying`] tries once more, and that attempt ends the
    /// user's connections first. The error is the answer if it happens again.
    HeldUp(Error),
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

async fn retrying<T, F, Fut>(connection: &AdminConnection, target: &Target, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut last = String::new();
    let mut held_up_before = false;
    for n in 1..=MAX_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(error)) => return Err(error),
            // Once: the next attempt ends the user's connections first. Held up again, by
            // something else, the caller hears it within two lock timeouts.
            Err(Failure::HeldUp(error)) if held_up_before => {
                connection.take_held_up_by(&target.db_user);
                return Err(error);
            }
            Err(Failure::HeldUp(error)) => {
                tracing::warn!(db_user = %target.db_user, error = %error,
                    "a lock wait timed out; ending the user's connections before the next attempt");
                held_up_before = true;
                last = error.to_string();
            }
            Err(Failure::Retry(reason)) => {
                tracing::debug!(db_user = %target.db_user, attempt = n, %reason, "retrying after a conflict");
                last = reason;
                tokio::time::sleep(backoff(n)).await;
            }
        }
    }
    Err(Error::Contention { user: target.db_user.clone(), attempts: MAX_ATTEMPTS, last })
}

/// 5 ms doubling up to 320 ms, with up to 100% jitter so that racing callers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    Duration::from_millis(base + u64::from(nanos) % (base + 1))
}

async fn start_once(connection: &AdminConnection, req: &StartRequest) -> Result<StartOutcome, Failure> {
    let t = &req.target;
    let candidates: Vec<String> = req.db_roles.union(&req.platform_roles).cloned().collect();
    let session_roles: Vec<String> = candidates.iter().chain([&t.managed_group]).cloned().collect();
    let listing = req.db_permissions.as_ref().map(|rules| ObjectListing::for_rules(rules, session_roles));
    let state = begin_and_read(connection, t, &candidates, listing.as_ref()).await?;
    let client = connection.client();
    let decision = match plan::plan_start(req, &state, state.server_now) {
        Ok(decision) => decision,
        Err(error) => {
            rollback(client).await;
            return Err(Failure::Fatal(error.into()));
        }
    };
    match decision {
        StartDecision::AlreadyActive { ledger, db_permissions } => {
            rollback(client).await;
            Ok(start_outcome(req, &ledger, false, true, db_permissions))
        }
        StartDecision::Apply { steps, ledger, created_user, db_permissions } => {
            run_and_commit(connection, t, &state, &steps).await?;
            Ok(start_outcome(req, &ledger, created_user, false, db_permissions))
        }
    }
}

async fn end_once(
    connection: &AdminConnection,
    req: &EndRequest,
    others: &dyn OtherDatabases,
    revokes_failed: &std::sync::Mutex<Option<String>>,
) -> Result<EndOutcome, Failure> {
    let t = &req.target;
    // Only what the user holds matters at an end: no grant option to check.
    let listing = req.revokes_db_permissions.then(ObjectListing::default);
    let mut state = begin_and_read(connection, t, &[], listing.as_ref()).await?;
    let revokes_failed_note = revokes_failed.lock().map(|note| note.clone()).unwrap_or_default();
    if revokes_failed_note.is_some() {
        // An earlier attempt's revokes failed: lock without them. The ledger keeps the
        // database, so a later start or end there revokes what is left.
        state.objects = None;
    }
    let client = connection.client();
    let decision = match plan::plan_end(req, &state) {
        Ok(decision) => decision,
        Err(error) => {
            rollback(client).await;
            return Err(Failure::Fatal(error.into()));
        }
    };
    run_end(connection, req, others, &state, decision, revokes_failed, revokes_failed_note).await
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

/// Runs an end's `decision`, planned from `state` in the open transaction, and commits.
async fn run_end(
    connection: &AdminConnection,
    req: &EndRequest,
    others: &dyn OtherDatabases,
    state: &ObservedState,
    decision: EndDecision,
    revokes_failed: &std::sync::Mutex<Option<String>>,
    revokes_failed_note: Option<String>,
) -> Result<EndOutcome, Failure> {
    let (client, t) = (connection.client(), &req.target);
    let outcome = |status, mode, open_sessions, reasons: &[Option<String>], mut objects: ObjectCleanup| {
        if revokes_failed_note.is_some() {
            objects.left_in.retain(|db| *db != t.admin_db_name);
        }
        EndOutcome {
            status,
            db_user: t.db_user.clone(),
            database: t.database.clone(),
            db_name: t.db_name.clone(),
            session_id: t.session_id.clone(),
            mode,
            open_sessions,
            reason: {
                let left = objects_left(&t.db_user, &objects);
                let kept = objects_kept(&t.db_user, &objects.kept);
                let reasons: Vec<&str> = reasons
                    .iter()
                    .flatten()
                    .chain(revokes_failed_note.iter())
                    .chain(kept.iter())
                    .chain(left.iter())
                    .map(String::as_str)
                    .collect();
                (!reasons.is_empty()).then(|| reasons.join("; "))
            },
            revoked_db_permissions: objects.revoked,
            unrevoked_db_permissions: objects.kept.summary,
            terminated_connections: None,
            drop_blocked: None,
            // Reset by the steps of an end that keeps the user (`plan::lock_and_guard`).
            cleared_settings: match status {
                EndStatus::InUse | EndStatus::Deactivated => {
                    state.settings_in.iter().map(|database| (!database.is_empty()).then(|| database.clone())).collect()
                }
                EndStatus::Dropped | EndStatus::Noop => Vec::new(),
            },
            replica_replayed: None,
        }
    };
    match decision {
        EndDecision::Noop { reason } => {
            rollback(client).await;
            Ok(outcome(EndStatus::Noop, None, 0, &[Some(reason.to_string())], ObjectCleanup::default()))
        }
        EndDecision::RecordEarly { steps, reason, open_sessions } => {
            run_and_commit(connection, t, state, &steps).await?;
            Ok(outcome(EndStatus::Noop, None, open_sessions, &[Some(reason.to_string())], ObjectCleanup::default()))
        }
        EndDecision::InUse { steps, ledger, mode, objects } => {
            let planned = outcome(EndStatus::InUse, Some(mode), ledger.sessions.len(), &[], objects);
            run_end_and_commit(connection, t, state, &steps, revokes_failed)
                .await
                .map_err(|failure| in_doubt(connection, t, failure, &planned))?;
            Ok(planned)
        }
        EndDecision::Deactivate { steps, mode, objects } => {
            let planned = outcome(EndStatus::Deactivated, Some(mode), 0, &[unrevocable_roles(t, state)], objects);
            run_end_and_commit(connection, t, state, &steps, revokes_failed)
                .await
                .map_err(|failure| in_doubt(connection, t, failure, &planned))?;
            Ok(end_connections(client, req, state, planned).await)
        }
        EndDecision::Drop { mode, reassign_to, before_drop, drop, after_drop, fallback, objects } => {
            let mut statements: Vec<Statement> = before_drop.iter().map(Statement::Step).collect();
            statements.push(Statement::Raw(sql::SAVEPOINT_DROP));
            let hand_over_here = match &reassign_to {
                None => Vec::new(),
                Some(inheritor) => {
                    // The user is NOLOGIN from here to the COMMIT, and this transaction holds its
                    // row: a start anywhere waits for the outcome, and sees it dropped or kept.
                    if let Err((statement, error)) =
                        run_pipelined(connection, Some(&t.managed_group), &statements).await
                    {
                        return Err(end_step_failure(connection, t, state, statement, error, revokes_failed).await);
                    }
                    statements.clear();
                    let user_oid = state.user_oid.expect("a user to drop exists");
                    let row = client
                        .query_typed(sql::HAND_OVER_STATE, &[(&user_oid, Type::OID), (inheritor, Type::TEXT)])
                        .await
                        .map_err(|error| {
                            Failure::Fatal(postgres_error("reading where the user has objects", t, error))
                        });
                    let row = match row {
                        Ok(rows) => rows.into_iter().next().expect("one row"),
                        Err(failure) => {
                            rollback(client).await;
                            return Err(failure);
                        }
                    };
                    if !row.get::<_, bool>("inheritor_exists") {
                        rollback(client).await;
                        create_object_inheritor(connection, t, state, inheritor).await?;
                        return Err(Failure::Retry(format!("created the object inheritor {inheritor:?}")));
                    }
                    let elsewhere: Vec<String> = row.get("other_databases");
                    let mut blocked = None;
                    for db_name in &elsewhere {
                        if let Err(why) = hand_over_in(others, db_name, t, state, inheritor).await {
                            blocked = Some(why);
                            break;
                        }
                    }
                    if let Some(blocked) = blocked {
                        let planned = |reason| {
                            let mut planned = outcome(
                                EndStatus::Deactivated,
                                Some(mode),
                                0,
                                &[Some(reason), unrevocable_roles(t, state)],
                                objects.clone(),
                            );
                            planned.drop_blocked = Some(blocked.clone());
                            planned
                        };
                        let planned = planned(locked_instead(&blocked));
                        return keep_instead_of_drop(connection, req, state, &fallback, planned).await;
                    }
                    plan::hand_over_objects(t, state, inheritor, false)
                }
            };
            statements.extend(hand_over_here.iter().map(Statement::Step));
            statements.extend(drop.iter().map(Statement::Step));
            statements.extend(after_drop.iter().map(Statement::Step));
            let dropped = outcome(EndStatus::Dropped, Some(mode), 0, &[], objects.clone());
            match run_pipelined_committing_with_the_last(connection, Some(&t.managed_group), &statements).await {
                Ok(()) => {
                    connection.saw_user(&t.db_user, false);
                    Ok(end_connections(client, req, state, dropped).await)
                }
                Err((statement, error)) => {
                    let blocked = match drop_blocked_by(&statement, &error) {
                        None => {
                            let failure =
                                end_step_failure(connection, t, state, statement, error, revokes_failed).await;
                            // The connection died with the COMMIT in flight: it may have applied.
                            return Err(in_doubt(connection, t, failure, &dropped));
                        }
                        Some(kind) => {
                            if let Err(error) = client.simple_query(sql::ROLLBACK_TO_DROP).await {
                                return Err(step_failure(
                                    connection,
                                    t,
                                    state,
                                    Statement::Raw(sql::ROLLBACK_TO_DROP),
                                    error,
                                )
                                .await);
                            }
                            explain_blocked_drop(client, t, state, reassign_to.as_deref(), kind, &statement, &error)
                                .await
                        }
                    };
                    let mut planned = outcome(
                        EndStatus::Deactivated,
                        Some(mode),
                        0,
                        &[Some(locked_instead(&blocked)), unrevocable_roles(t, state)],
                        objects,
                    );
                    planned.drop_blocked = Some(blocked);
                    keep_instead_of_drop(connection, req, state, &fallback, planned).await
                }
            }
        }
    }
}

/// The drop of `req`'s user was rolled back (to its savepoint): runs the `keep` changes in
/// its place and commits; `planned` says why.
async fn keep_instead_of_drop(
    connection: &AdminConnection,
    req: &EndRequest,
    state: &ObservedState,
    fallback: &[Step],
    planned: EndOutcome,
) -> Result<EndOutcome, Failure> {
    let (client, t) = (connection.client(), &req.target);
    tracing::warn!(db_user = %t.db_user, reason = planned.reason.as_deref().unwrap_or_default(),
        "the user's drop was blocked; it was locked instead");
    let mut statements = vec![Statement::Raw(sql::ROLLBACK_TO_DROP)];
    statements.extend(fallback.iter().map(Statement::Step));
    statements.push(Statement::Raw(sql::COMMIT));
    if let Err((statement, error)) = run_pipelined(connection, Some(&t.managed_group), &statements).await {
        let failure = step_failure(connection, t, state, statement, error).await;
        return Err(in_doubt(connection, t, failure, &planned));
    }
    Ok(end_connections(client, req, state, planned).await)
}

/// The outcome's reason for a drop that `blocked` turned into a lock.
fn locked_instead(blocked: &DropBlocked) -> String {
    let fix =
        blocked.fix.as_deref().map(|fix| format!("; so that the next end drops it, run `{fix}`")).unwrap_or_default();
    match blocked.kind {
        DropBlockedKind::DependentObjects => {
            format!("objects depend on the user, so it was locked instead: it {}{fix}", blocked.detail)
        }
        DropBlockedKind::CannotConnect | DropBlockedKind::StepFailed => format!(
            "the user's objects could not be handed over in database {:?}, so it was locked instead, with its \
             objects there untouched: {}{fix}",
            blocked.db_name, blocked.detail
        ),
        DropBlockedKind::AdminLacksPrivilege => format!(
            "the admin lacks a privilege the drop needs (in database {:?}), so the user was locked instead: {}{fix}",
            blocked.db_name, blocked.detail
        ),
    }
}

/// Whether the failure of `statement` means the drop cannot happen now, so that the user is
/// locked instead (and which kind of block it is); `None` for failures to retry or report.
fn drop_blocked_by(statement: &Statement, error: &tokio_postgres::Error) -> Option<DropBlockedKind> {
    let code = error.code()?;
    match statement {
        Statement::Step(Step::DropUser { .. }) if *code == SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
            Some(DropBlockedKind::DependentObjects)
        }
        // Without a record of its ended sessions, a dropped user could be re-created by a
        // late start: lock it instead, and its own ledger records them.
        Statement::Step(Step::RecordEnded { .. }) if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
            Some(DropBlockedKind::AdminLacksPrivilege)
        }
        Statement::Step(
            Step::GrantRoles { .. } | Step::DisarmOwned { .. } | Step::ReassignOwned { .. } | Step::DropOwned { .. },
        ) => {
            if is_conflict(error, None) {
                None
            } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
                Some(DropBlockedKind::AdminLacksPrivilege)
            } else {
                Some(DropBlockedKind::StepFailed)
            }
        }
        _ => None,
    }
}

/// Says what blocked the drop, and the statement that fixes it when that is the admin's
/// privileges. Runs inside the end's transaction, rolled back to before the drop (or, in
/// another database, after its rollback).
async fn explain_blocked_drop(
    client: &Client,
    t: &Target,
    state: &ObservedState,
    inheritor: Option<&str>,
    kind: DropBlockedKind,
    statement: &Statement<'_>,
    error: &tokio_postgres::Error,
) -> DropBlocked {
    let db_name = t.admin_db_name.clone();
    let failed = || format!("{} failed: {}", describe(statement), crate::pg::error_chain(error));
    let admin = sql::quote_ident(&t.admin);
    match (kind, statement) {
        (DropBlockedKind::DependentObjects, _) => {
            let detail = match state.user_oid {
                Some(oid) => match client.query_typed(sql::USER_DEPENDENCIES, &[(&oid, Type::OID)]).await {
                    Ok(rows) => describe_dependencies(&rows),
                    Err(error) => {
                        format!("has dependencies that could not be listed ({})", crate::pg::error_chain(&error))
                    }
                },
                None => failed(),
            };
            DropBlocked { kind, db_name, detail, fix: None }
        }
        (_, Statement::Step(Step::RecordEnded { group, .. })) => DropBlocked {
            kind,
            db_name,
            detail: format!(
                "the admin cannot write the comment of the managed group {group:?}, where the ended sessions of \
                 dropped users are remembered"
            ),
            fix: Some(format!("GRANT {} TO {admin} WITH ADMIN OPTION", sql::quote_ident(group))),
        },
        (DropBlockedKind::AdminLacksPrivilege, Statement::Step(Step::GrantRoles { .. })) => DropBlocked {
            kind,
            db_name,
            detail: format!(
                "the admin cannot take the privileges of the user, which REASSIGN OWNED needs: {}",
                failed()
            ),
            fix: Some(if state.server_version_num >= 160000 {
                format!("GRANT {} TO {admin} WITH ADMIN OPTION", sql::quote_ident(&t.db_user))
            } else {
                format!("ALTER ROLE {admin} CREATEROLE")
            }),
        },
        (DropBlockedKind::AdminLacksPrivilege, _) => {
            let inheritor = inheritor.unwrap_or_default();
            let fix = match client.query_typed(sql::ADMIN_HAND_OVER_PRIVILEGES, &[(&inheritor, Type::TEXT)]).await {
                Ok(rows) => match rows.first().map(|row| (row.get::<_, bool>(0), row.get::<_, bool>(1))) {
                    Some((false, _)) => Some(format!("ALTER ROLE {admin} INHERIT")),
                    Some((true, false)) => Some(format!("GRANT {} TO {admin}", sql::quote_ident(inheritor))),
                    _ => None,
                },
                Err(_) => None,
            };
            if let (None, Statement::Step(Step::ReassignOwned { .. }), Some(oid)) = (&fix, statement, state.user_oid) {
                let schemas = client
                    .query_typed(sql::INHERITOR_LACKS_CREATE, &[(&oid, Type::OID), (&inheritor, Type::TEXT)])
                    .await
                    .map(|rows| rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<String>>());
                if let Ok(schemas) = schemas.as_deref() {
                    if !schemas.is_empty() {
                        return DropBlocked {
                            kind,
                            db_name,
                            detail: format!(
                                "the object inheritor {inheritor:?} may not create in schema(s) {schemas:?}, where the \
                                 user owns routines (or other objects whose new owner needs CREATE on their schema): {}",
                                failed()
                            ),
                            fix: Some(format!(
                                "GRANT CREATE ON SCHEMA {} TO {}",
                                schemas.iter().map(|schema| sql::quote_ident(schema)).collect::<Vec<_>>().join(", "),
                                sql::quote_ident(inheritor)
                            )),
                        };
                    }
                }
            }
            DropBlocked { kind, db_name, detail: failed(), fix }
        }
        _ => DropBlocked { kind, db_name, detail: failed(), fix: None },
    }
}

/// `owns table public.t, sequence public.s; holds privileges on schema public; and 3 more;
/// and 2 objects in database "reports"`: the first [`DEPENDENCIES_NAMED`] of the connected
/// database and the shared objects, then counts.
fn describe_dependencies(rows: &[tokio_postgres::Row]) -> String {
    const VERBS: [(&str, &str); 4] =
        [("o", "owns"), ("a", "holds privileges on"), ("r", "is named by"), ("i", "has initial privileges on")];
    let mut here: Vec<(usize, String)> = Vec::new();
    let mut elsewhere: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for row in rows {
        match (row.get::<_, Option<String>>("object"), row.get::<_, Option<String>>("other_database")) {
            (Some(object), _) => {
                let deptype: String = row.get("deptype");
                let kind = VERBS.iter().position(|(d, _)| *d == deptype).unwrap_or(VERBS.len());
                here.push((kind, object));
            }
            (None, Some(database)) => *elsewhere.entry(database).or_default() += 1,
            (None, None) => {}
        }
    }
    here.sort();
    let mut parts: Vec<String> = Vec::new();
    for (kind, (_, verb)) in VERBS.iter().enumerate() {
        let named: Vec<&str> = here
            .iter()
            .take(DEPENDENCIES_NAMED)
            .filter(|(k, _)| *k == kind)
            .map(|(_, object)| object.as_str())
            .collect();
        if !named.is_empty() {
            parts.push(format!("{verb} {}", named.join(", ")));
        }
    }
    if here.len() > DEPENDENCIES_NAMED {
        parts.push(format!("and {} more here", here.len() - DEPENDENCIES_NAMED));
    }
    for (database, count) in elsewhere {
        parts.push(format!("has {count} object(s) or privilege(s) in database {database:?}"));
    }
    parts.join("; ")
}

/// How many dependencies a blocked drop's reason names before it counts the rest.
const DEPENDENCIES_NAMED: usize = 5;

/// Creates the object inheritor in a transaction of its own (see
/// [`plan::create_object_inheritor`]); a concurrent creation is a lost race, retried.
async fn create_object_inheritor(
    connection: &AdminConnection,
    t: &Target,
    state: &ObservedState,
    inheritor: &str,
) -> Result<(), Failure> {
    if let Err(error) = connection.simple_query(sql::BEGIN).await {
        return Err(Failure::Fatal(postgres_error("BEGIN", t, error)));
    }
    tracing::info!(%inheritor, "creating the object inheritor");
    run_and_commit(connection, t, state, &plan::create_object_inheritor(t, inheritor)).await
}

/// Hands the user's objects in `db_name`, another database of the server, to the inheritor,
/// in one transaction there, on a connection from `others`.
async fn hand_over_in(
    others: &dyn OtherDatabases,
    db_name: &str,
    t: &Target,
    state: &ObservedState,
    inheritor: &str,
) -> Result<(), DropBlocked> {
    let connection = match others.connect(db_name).await {
        Ok(connection) => connection,
        Err(error) => {
            let fix = match &error {
                Error::MissingConnect { admin, db_name } => Some(format!(
                    "GRANT CONNECT ON DATABASE {} TO {}",
                    sql::quote_ident(db_name),
                    sql::quote_ident(admin)
                )),
                _ => None,
            };
            return Err(DropBlocked {
                kind: DropBlockedKind::CannotConnect,
                db_name: db_name.to_string(),
                detail: format!("the admin could not connect there: {error}"),
                fix,
            });
        }
    };
    let client = connection.client();
    let steps = plan::hand_over_objects(t, state, inheritor, true);
    let mut statements = vec![Statement::Raw(sql::BEGIN)];
    statements.extend(steps.iter().map(Statement::Step));
    statements.push(Statement::Raw(sql::COMMIT));
    let Err((statement, error)) = run_pipelined(&connection, None, &statements).await else {
        tracing::info!(db_user = %t.db_user, %db_name, %inheritor, "handed the user's objects over");
        return Ok(());
    };
    rollback(client).await;
    let kind = drop_blocked_by(&statement, &error).unwrap_or(DropBlockedKind::StepFailed);
    let here = Target { admin_db_name: db_name.to_string(), ..t.clone() };
    Err(explain_blocked_drop(client, &here, state, Some(inheritor), kind, &statement, &error).await)
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

/// An end's attempt that failed with its connection closed while its COMMIT was in flight:
/// the server may have applied it, and `planned` is what it did if so
/// ([`Error::EndUnconfirmed`]). Any other failure is returned as it is.
fn in_doubt(connection: &AdminConnection, t: &Target, failure: Failure, planned: &EndOutcome) -> Failure {
    match failure {
        Failure::Fatal(error) if connection.client().is_closed() => Failure::Fatal(Error::EndUnconfirmed {
            user: t.db_user.clone(),
            endpoint: t.endpoint.clone(),
            detail: error.to_string(),
            planned: Box::new(planned.clone()),
        }),
        other => other,
    }
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

/// Roles a locked user still holds because someone other than the admin granted them
/// (PostgreSQL 16+), with the statement that removes them. The user cannot log in, so the
/// end still succeeds; the outcome says what is left.
fn unrevocable_roles(t: &Target, state: &ObservedState) -> Option<String> {
    let left: Vec<String> = state
        .foreign_grants
        .iter()
        .filter(|(role, _)| *role != t.managed_group)
        .map(|(role, grantor)| {
            format!(
                "REVOKE {} FROM {} GRANTED BY {}",
                sql::quote_ident(role),
                sql::quote_ident(&t.db_user),
                sql::quote_ident(grantor)
            )
        })
        .collect();
    (!left.is_empty())
        .then(|| format!("the user keeps roles the admin cannot revoke; as a superuser run `{}`", left.join("; ")))
}

/// With `terminate_connections`, ends the open connections of a user whose last session just
/// ended (`NOLOGIN` and `DROP ROLE` only stop new logins). A failure does not fail the end,
/// which has committed: the outcome says what to grant.
async fn end_connections(
    client: &Client,
    req: &EndRequest,
    state: &ObservedState,
    mut outcome: EndOutcome,
) -> EndOutcome {
    let (true, Some(oid)) = (req.terminate_connections, state.user_oid) else {
        return outcome;
    };
    match terminate_connections(client, oid).await {
        Ok(ended) => outcome.terminated_connections = Some(ended),
        Err(error) => {
            let note = format!(
                "the user's open connections were not ended ({}): run `GRANT pg_signal_backend TO {}`",
                crate::pg::error_chain(&error),
                sql::quote_ident(&req.target.admin)
            );
            outcome.reason = Some(match outcome.reason.take() {
                Some(reason) => format!("{reason}; {note}"),
                None => note,
            });
        }
    }
    outcome
}

async fn terminate_connections(client: &Client, user_oid: u32) -> Result<usize, tokio_postgres::Error> {
    let row = client.query_one(sql::TERMINATE_CONNECTIONS, &[&user_oid]).await?;
    Ok(usize::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

/// Databases where object privileges may remain after this end, with what to do about them.
fn objects_left(user: &str, objects: &ObjectCleanup) -> Option<String> {
    (!objects.left_in.is_empty()).then(|| {
        format!(
            "object privileges granted in database(s) {:?} may remain, because this end ran in another \
             database (with no db_permissions left in the policy, starts and ends run in \
             admin_user.default_database when it is set): the next start or end of this user that \
             runs in such a database revokes them; or there, run \
             `REVOKE ALL ON ALL TABLES IN SCHEMA <schema> FROM {user}` (and the same for SEQUENCES, \
             ROUTINES, and `REVOKE USAGE ON SCHEMA`)",
            objects.left_in,
            user = sql::quote_ident(user)
        )
    })
}

/// How many kept objects the reason names one by one.
const KEPT_NAMED: usize = 10;

/// What the user keeps in the connected database because the admin cannot revoke it, with the
/// statements its grantors can run.
fn objects_kept(user: &str, kept: &KeptPrivileges) -> Option<String> {
    if kept.is_empty() {
        return None;
    }
    let mut described = Vec::new();
    let mut statements = Vec::new();
    for object in &kept.objects {
        let batch = ObjectBatch { kind: object.kind, privilege: "ALL".into(), objects: vec![object.object.clone()] };
        described.push(format!(
            "{} on {} {} granted by {}",
            object.privileges.iter().cloned().collect::<Vec<_>>().join(", "),
            object.kind.label(),
            sql::object_name(object.kind, &object.object),
            quoted_list(&object.grantors)
        ));
        statements.push(sql::render(&Step::RevokeObjects { batch, user: user.to_string() }));
    }
    for (schema, grantors) in &kept.schema_usage {
        described.push(format!("USAGE on schema {} granted by {}", sql::quote_ident(schema), quoted_list(grantors)));
        statements
            .push(sql::render(&Step::RevokeSchemaUsage { schemas: vec![schema.clone()], user: user.to_string() }));
    }
    let more = described.len().saturating_sub(KEPT_NAMED);
    let and_more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
    described.truncate(KEPT_NAMED);
    statements.truncate(KEPT_NAMED);
    Some(format!(
        "the user keeps privileges the admin cannot revoke (granted by other roles, or on objects or schemas \
         the admin holds nothing on): {}{and_more}; as their grantor (a superuser can SET ROLE to it first), \
         run `{}`",
        described.join(", "),
        statements.join("; ")
    ))
}

fn quoted_list(names: &BTreeSet<String>) -> String {
    names.iter().map(|name| sql::quote_ident(name)).collect::<Vec<_>>().join(", ")
}

/// A statement of a pipelined batch: a plan step, or transaction control.
#[derive(Debug, Clone, Copy)]
enum Statement<'a> {
    Step(&'a Step),
    Raw(&'static str),
}

/// `statements` as the SQL `connection` runs, in order, each with its text: a creator's
/// statements as calls of its function where the connection has it ([`sql::Renderer`]), and the
/// `SET LOCAL ROLE` steps those calls make needless left out.
///
/// `functions_schema`: where this database keeps the creators' functions (the managed group's
/// name); `None` on a connection to another database, whose statements run after `SET ROLE`.
fn rendered<'a>(
    connection: &AdminConnection,
    functions_schema: Option<&str>,
    statements: &[Statement<'a>],
) -> (Vec<Statement<'a>>, Vec<String>) {
    let without_function = match functions_schema {
        Some(_) => connection.creators_without_function(),
        None => sql::CreatorsWithoutFunction::All,
    };
    let mut renderer = sql::Renderer::new(functions_schema.unwrap_or_default(), &without_function)
        .with_check_functions(connection.has_check_functions());
    statements
        .iter()
        .filter_map(|statement| match statement {
            Statement::Step(step) => renderer.render(step).map(|text| (*statement, text)),
            Statement::Raw(text) if *text == sql::COMMIT && connection.captures_commit_lsn() => {
                Some((*statement, format!("{text};\n{}", sql::COMMIT_LSN)))
            }
            Statement::Raw(text) => Some((*statement, text.to_string())),
        })
        .unzip()
}

/// Sends all statements at once and waits for all answers. Returns the first failure; the
/// statements after it fail too, with "current transaction is aborted".
async fn run_pipelined<'a>(
    connection: &AdminConnection,
    functions_schema: Option<&str>,
    statements: &[Statement<'a>],
) -> Result<(), (Statement<'a>, tokio_postgres::Error)> {
    let (statements, texts) = rendered(connection, functions_schema, statements);
    send_pipelined(connection, &statements, &texts).await
}

/// Sends `texts`, one message each, at once; the first failure is reported as the statement
/// at its position.
async fn send_pipelined<'a>(
    connection: &AdminConnection,
    statements: &[Statement<'a>],
    texts: &[String],
) -> Result<(), (Statement<'a>, tokio_postgres::Error)> {
    let results: Vec<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>> =
        join_all(texts.iter().map(|text| connection.client().simple_query(text))).await;
    for (statement, result) in statements.iter().zip(results) {
        match result {
            Ok(messages) => connection.saw_commit_lsn(&messages),
            Err(error) => return Err((*statement, error)),
        }
    }
    Ok(())
}

/// [`run_pipelined`], with the `COMMIT` in the last statement's message (`<last>; COMMIT`, one
/// simple query). When all succeed, the transaction commits in this round trip, so the locks
/// the last statements take (the managed group's comment, which every drop on the server
/// writes) are never held while a reply crosses the network. When any statement fails, the
/// rest of the last message is skipped: the `COMMIT` does not run and the transaction stays
/// open, aborted, for a `ROLLBACK TO SAVEPOINT`. A failure of the `COMMIT` itself is reported
/// as the last statement's.
async fn run_pipelined_committing_with_the_last<'a>(
    connection: &AdminConnection,
    functions_schema: Option<&str>,
    statements: &[Statement<'a>],
) -> Result<(), (Statement<'a>, tokio_postgres::Error)> {
    let (statements, mut texts) = rendered(connection, functions_schema, statements);
    let last = texts.last_mut().expect("statements to commit with");
    last.push_str(";\n");
    last.push_str(sql::COMMIT);
    if connection.captures_commit_lsn() {
        last.push_str(";\n");
        last.push_str(sql::COMMIT_LSN);
    }
    send_pipelined(connection, &statements, &texts).await
}

async fn run_and_commit(
    connection: &AdminConnection,
    t: &Target,
    state: &ObservedState,
    steps: &[Step],
) -> Result<(), Failure> {
    let mut statements: Vec<Statement> = steps.iter().map(Statement::Step).collect();
    statements.push(Statement::Raw(sql::COMMIT));
    match run_pipelined(connection, Some(&t.managed_group), &statements).await {
        Ok(()) => Ok(()),
        Err((statement, error)) => Err(step_failure(connection, t, state, statement, error).await),
    }
}

/// [`run_and_commit`] for an end's steps: see [`end_step_failure`].
async fn run_end_and_commit(
    connection: &AdminConnection,
    t: &Target,
    state: &ObservedState,
    steps: &[Step],
    revokes_failed: &std::sync::Mutex<Option<String>>,
) -> Result<(), Failure> {
    let mut statements: Vec<Statement> = steps.iter().map(Statement::Step).collect();
    statements.push(Statement::Raw(sql::COMMIT));
    match run_pipelined(connection, Some(&t.managed_group), &statements).await {
        Ok(()) => Ok(()),
        Err((statement, error)) => Err(end_step_failure(connection, t, state, statement, error, revokes_failed).await),
    }
}

/// [`step_failure`] for an end: an object revoke that failed for a reason the listing did not
/// foresee (not a lost race) is recorded in `revokes_failed` and retried, and the retry locks
/// the user without the revokes, so that no privilege can keep a user able to log in.
async fn end_step_failure(
    connection: &AdminConnection,
    t: &Target,
    state: &ObservedState,
    statement: Statement<'_>,
    error: tokio_postgres::Error,
    revokes_failed: &std::sync::Mutex<Option<String>>,
) -> Failure {
    match statement {
        Statement::Step(step @ (Step::RevokeObjects { .. } | Step::RevokeSchemaUsage { .. }))
            if !is_conflict(&error, Some(step)) =>
        {
            rollback(connection.client()).await;
            let note = format!(
                "{} failed in database {:?} ({}), so the user was locked without its object revokes: \
                 the privileges there remain, and the next start or end of this user there revokes them",
                describe(&statement),
                t.admin_db_name,
                crate::pg::error_chain(&error)
            );
            if let Ok(mut failed) = revokes_failed.lock() {
                *failed = Some(note.clone());
            }
            Failure::Retry(note)
        }
        _ => step_failure(connection, t, state, statement, error).await,
    }
}

async fn rollback(client: &Client) {
    // Ending an already ended transaction only raises a warning; a dead connection has no
    // transaction left. Either way there is nothing more to do.
    let _ = client.simple_query(sql::ROLLBACK).await;
}

/// Which objects to list with the state (besides those the user holds privileges on), and
/// which privileges to check the admin may grant. The default lists only what the user holds,
/// which is all an end needs.
#[derive(Default)]
struct ObjectListing {
    table_privileges: Vec<String>,
    sequence_privileges: Vec<String>,
    /// `pg_class.relkind`s the rules can match.
    relkinds: Vec<String>,
    /// Whether the rules can match functions or procedures.
    routines: bool,
    /// The roles the session gives the user: privileges they carry need no grant.
    session_roles: Vec<String>,
}

impl ObjectListing {
    fn for_rules(rules: &ObjectRules, session_roles: Vec<String>) -> ObjectListing {
        let privileges = |kinds: &[ObjectKind]| -> Vec<String> {
            let set: BTreeSet<&String> = rules
                .allow
                .iter()
                .flat_map(|rule| kinds.iter().filter_map(|k| rule.by_kind.get(k)))
                .flatten()
                .collect();
            set.into_iter().cloned().collect()
        };
        let kinds: BTreeSet<ObjectKind> = rules.allow.iter().flat_map(|rule| rule.by_kind.keys().copied()).collect();
        let relkinds = kinds
            .iter()
            .flat_map(|kind| match kind {
                ObjectKind::Table => &["r", "p", "f"][..],
                ObjectKind::View => &["v", "m"][..],
                ObjectKind::Sequence => &["S"][..],
                ObjectKind::Function | ObjectKind::Procedure => &[][..],
            })
            .map(|relkind| relkind.to_string())
            .collect();
        ObjectListing {
            table_privileges: privileges(&[ObjectKind::Table, ObjectKind::View]),
            sequence_privileges: privileges(&[ObjectKind::Sequence]),
            relkinds,
            routines: kinds.contains(&ObjectKind::Function) || kinds.contains(&ObjectKind::Procedure),
            session_roles,
        }
    }
}

async fn list_objects(
    client: &Client,
    statements: &ObjectListingStatements,
    user: &str,
    listing: &ObjectListing,
) -> Result<(Vec<SchemaState>, Vec<DbObject>), tokio_postgres::Error> {
    let roles = &listing.session_roles;
    let schema_params: [&(dyn ToSql + Sync); 2] = [&user, roles];
    let relation_params: [&(dyn ToSql + Sync); 5] =
        [&user, &listing.table_privileges, &listing.sequence_privileges, &listing.relkinds, roles];
    let routine_params: [&(dyn ToSql + Sync); 3] = [&user, &listing.routines, roles];
    let (schemas, relations, routines) = tokio::try_join!(
        client.query(&statements.schemas, &schema_params),
        client.query(&statements.relations, &relation_params),
        client.query(&statements.routines, &routine_params),
    )?;
    let set = |row: &tokio_postgres::Row, column| -> BTreeSet<String> {
        row.get::<_, Vec<String>>(column).into_iter().collect()
    };
    let kept = |row: &tokio_postgres::Row| -> BTreeSet<(String, String)> {
        row.get::<_, Vec<String>>("kept_privileges")
            .into_iter()
            .zip(row.get::<_, Vec<String>>("kept_grantors"))
            .collect()
    };
    let schemas = schemas
        .iter()
        .map(|row| SchemaState {
            name: row.get("name"),
            user_has_usage: row.get("user_has_usage"),
            user_has_usage_otherwise: row.get("user_has_usage_otherwise"),
            admin_has_usage: row.get("admin_has_usage"),
            admin_can_grant_usage: row.get("admin_can_grant_usage"),
            admin_may_revoke: row.get("admin_may_revoke"),
            usage_kept_by: set(row, "usage_kept_by"),
        })
        .collect();
    let mut objects: Vec<DbObject> = relations
        .iter()
        .map(|row| DbObject {
            kind: match row.get::<_, &str>("relkind") {
                "S" => ObjectKind::Sequence,
                "v" | "m" => ObjectKind::View,
                _ => ObjectKind::Table,
            },
            schema: row.get("schema"),
            name: row.get("name"),
            arguments: None,
            held: set(row, "held"),
            admin_grantable: set(row, "admin_grantable"),
            held_otherwise: set(row, "held_otherwise"),
            admin_may_revoke: row.get("admin_may_revoke"),
            kept: kept(row),
        })
        .collect();
    objects.extend(routines.iter().map(|row| DbObject {
        kind: if row.get::<_, &str>("prokind") == "p" { ObjectKind::Procedure } else { ObjectKind::Function },
        schema: row.get("schema"),
        name: row.get("name"),
        arguments: Some(row.get("arguments")),
        held: set(row, "held"),
        admin_grantable: if row.get("admin_can_grant") {
            BTreeSet::from(["EXECUTE".to_string()])
        } else {
            BTreeSet::new()
        },
        held_otherwise: if row.get("executable_otherwise") {
            BTreeSet::from(["EXECUTE".to_string()])
        } else {
            BTreeSet::new()
        },
        admin_may_revoke: row.get("admin_may_revoke"),
        kept: kept(row),
    }));
    Ok((schemas, objects))
}

async fn begin_and_read(
    connection: &AdminConnection,
    t: &Target,
    candidates: &[String],
    listing: Option<&ObjectListing>,
) -> Result<ObservedState, Failure> {
    let client = connection.client();
    let failure = |error: tokio_postgres::Error| {
        if is_conflict(&error, None) {
            Failure::Retry(crate::pg::error_chain(&error))
        } else {
            Failure::Fatal(postgres_error("reading the user's state", t, error))
        }
    };
    let statements = connection.read_statements().await.map_err(failure)?;
    let listing_statements = match listing {
        Some(_) => Some(connection.object_listing().await.map_err(failure)?),
        None => None,
    };
    let lock_key = sql::user_lock_key(&t.db_user);
    let read_params: [&(dyn ToSql + Sync); 5] = [&t.db_user, &t.managed_group, &candidates, &t.session_id, &t.creator];
    // First in the flight, outside the transaction, where the connection has not made them.
    let make_check_functions = connection.make_check_functions();
    let begin = client.simple_query(sql::BEGIN);
    let lock_params: [&(dyn ToSql + Sync); 1] = [&lock_key];
    let lock = client.query(&statements.lock_user, &lock_params);
    // After the lock, before the read: the user's connections that held up the last attempt
    // are gone (with their locks) when this one reads and writes.
    let end_holding = connection.take_held_up_by(&t.db_user);
    let ended = async {
        if !end_holding {
            return Ok(None);
        }
        let params: [(&(dyn ToSql + Sync), Type); 2] = [(&t.db_user, Type::TEXT), (&t.managed_group, Type::TEXT)];
        let row = client.query_typed(sql::END_HOLDING_CONNECTIONS, &params).await?;
        Ok::<_, tokio_postgres::Error>(row.first().map(|row| row.get::<_, i32>(0)))
    };
    let read = client.query(&statements.read_state, &read_params);
    // Listed after the lock, in the same round trip: what a concurrent call granted is seen.
    let objects = async {
        match (listing, listing_statements) {
            (Some(listing), Some(statements)) => list_objects(client, statements, &t.db_user, listing).await.map(Some),
            _ => Ok(None),
        }
    };
    let ((), begin, lock, ended, read, objects) = tokio::join!(make_check_functions, begin, lock, ended, read, objects);
    if let Err(error) = &ended {
        if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            rollback(client).await;
            return Err(Failure::Fatal(Error::PermissionDenied {
                admin: t.admin.clone(),
                action: format!("ending the connections of {:?}, which held up its own start or end", t.db_user),
                detail: format!(
                    "{}: run `GRANT pg_signal_backend TO {}`",
                    crate::pg::error_chain(error),
                    sql::quote_ident(&t.admin)
                ),
            }));
        }
    }
    if let Ok(Some(ended)) = &ended {
        tracing::warn!(db_user = %t.db_user, ended,
            "ended the user's connections: one of them held up the last attempt with a lock");
    }
    let read = begin.and(lock).and(ended).and(read);
    let (row, objects) = match read.and_then(|rows| Ok((rows.into_iter().next(), objects?))) {
        Ok(read) => read,
        Err(error) => {
            rollback(client).await;
            return Err(failure(error));
        }
    };
    let row = row.expect("READ_STATE returns exactly one row");
    let current_database: String = row.get("current_database");
    // The ledger says privileges were granted in this database, whatever the policy says now
    // (it may have lost its db_permissions): list what the user holds there, in a second round
    // trip under the same lock, so that the plan revokes it.
    let objects = match objects {
        None if ledger_names_database(&t.db_user, row.get("ledger"), &current_database) => {
            let listed = async {
                let statements = connection.object_listing().await?;
                list_objects(client, statements, &t.db_user, &ObjectListing::default()).await
            };
            match listed.await {
                Ok(objects) => Some(objects),
                Err(error) => {
                    rollback(client).await;
                    return Err(failure(error));
                }
            }
        }
        objects => objects,
    };
    let get = |name| -> Vec<String> { row.get(name) };
    let state = ObservedState {
        user_exists: row.get("user_exists"),
        user_oid: row.get("user_oid"),
        user_can_login: row.get("user_can_login"),
        member_of: get("member_of").into_iter().collect(),
        ledger_comment: row.get("ledger"),
        settings_in: get("settings_in").into_iter().collect(),
        foreign_grants: get("foreign_grant_roles").into_iter().zip(get("foreign_grant_grantors")).collect(),
        group_exists: row.get("group_exists"),
        existing_roles: get("existing_roles").into_iter().collect(),
        reached_roles: get("reached_wanted")
            .into_iter()
            .zip(get("reached_role"))
            .zip(get("reached_facts"))
            .map(|((wanted, role), facts)| plan::ReachedRole { wanted, role, facts: sql::role_facts(&facts) })
            .collect(),
        server_version_num: row.get("server_version_num"),
        read_only: row.get("read_only"),
        session_ended_in_group: row.get("session_ended_in_group"),
        server_now: u64::try_from(row.get::<_, i64>("server_now")).unwrap_or(0),
        objects: objects.map(|(schemas, objects)| ObjectState { database: current_database, schemas, objects }),
        creator: row.get("creator"),
        creator_ready: row.get("creator_ready"),
        creator_admins_user: row.get("creator_admins_user"),
        creator_grants: get("creator_grants").into_iter().collect(),
    };
    if let Some(creator) = &state.creator {
        connection.saw_creator_function(creator, row.get("creator_function"), state.creator_ready);
    }
    connection.saw_check_functions(row.get("check_functions"));
    connection.saw_user(&t.db_user, state.user_exists);
    Ok(state)
}

/// Whether the user's ledger records object privileges granted in `database`. An unreadable
/// ledger says no here; the planner reports it.
fn ledger_names_database(user: &str, comment: Option<&str>, database: &str) -> bool {
    Ledger::from_comment(user, comment).is_ok_and(|ledger| ledger.object_databases.contains(database))
}

/// Whether an error means another call changed the same user first, so that a fresh attempt
/// will see its result. `step` is the statement that failed, when known.
fn is_conflict(error: &tokio_postgres::Error, step: Option<&Step>) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code();
    if [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::UNIQUE_VIOLATION].contains(code)
    {
        return true;
    }
    // A role we saw missing was created meanwhile, or one we saw was dropped meanwhile.
    if matches!(step, Some(Step::CreateUser { .. } | Step::CreateGroup { .. } | Step::ReserveName { .. }))
        && *code == SqlState::DUPLICATE_OBJECT
    {
        return true;
    }
    if matches!(
        step,
        Some(Step::CreateUser { .. } | Step::SetLogin { .. } | Step::GrantRoles { .. } | Step::RevokeRoles { .. })
    ) && *code == SqlState::UNDEFINED_OBJECT
    {
        return true;
    }
    // An object or schema listed under our lock was dropped (or renamed) before our grant.
    if matches!(
        step,
        Some(
            Step::GrantObjects { .. }
                | Step::RevokeObjects { .. }
                | Step::GrantSchemaUsage { .. }
                | Step::RevokeSchemaUsage { .. }
        )
    ) && [SqlState::UNDEFINED_TABLE, SqlState::UNDEFINED_FUNCTION, SqlState::INVALID_SCHEMA_NAME].contains(code)
    {
        return true;
    }
    // Concurrent updates of one catalog row raise an internal error, not a SQLSTATE of its own.
    *code == SqlState::INTERNAL_ERROR && db.message().starts_with("tuple concurrently")
}

/// Turns the failure of `statement` into a retry or a typed error. The transaction has ended
/// (the pipelined COMMIT became a rollback) or is rolled back here.
async fn step_failure(
    connection: &AdminConnection,
    t: &Target,
    state: &ObservedState,
    statement: Statement<'_>,
    error: tokio_postgres::Error,
) -> Failure {
    let client = connection.client();
    rollback(client).await;
    let step = match statement {
        Statement::Step(step) => Some(step),
        Statement::Raw(_) => None,
    };
    if is_conflict(&error, step) {
        return Failure::Retry(crate::pg::error_chain(&error));
    }
    if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) && state.user_exists {
        // Our calls hold a user's row for milliseconds, so a wait this long is for a
        // transaction of the user's own (`ALTER ROLE self`, a lock on its objects): the next
        // attempt ends its connections first, so the user cannot hold up its own end.
        connection.held_up_by(&t.db_user);
        return Failure::HeldUp(postgres_error(&describe(&statement), t, error));
    }
    let Some(code) = error.code().cloned() else {
        return Failure::Fatal(postgres_error(&describe(&statement), t, error));
    };
    let admin = t.admin.clone();
    if code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return Failure::Fatal(Error::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }
    if code == SqlState::INVALID_SCHEMA_NAME {
        return Failure::Fatal(Error::MissingSchemaPrivilege {
            admin,
            schema: "public".into(),
            db_name: t.admin_db_name.clone(),
        });
    }
    if code == SqlState::INSUFFICIENT_PRIVILEGE {
        let detail = error.as_db_error().map(|db| db.message().to_string()).unwrap_or_default();
        return Failure::Fatal(match step {
            Some(Step::CreateGroup { .. }) => Error::MissingCreateRole { admin },
            Some(Step::CreateUser { .. }) => match client.query_one(sql::ADMIN_MAY_CREATE_ROLES, &[]).await {
                Ok(row) if row.get::<_, bool>(0) => {
                    Error::PermissionDenied { admin, action: describe(&statement), detail }
                }
                _ => Error::MissingCreateRole { admin },
            },
            Some(
                Step::GrantRoles { roles, .. } | Step::RevokeRoles { roles, .. } | Step::PrepareCreator { roles, .. },
            ) => match roles_lacking_admin_option(client, roles).await {
                Ok(lacking) if !lacking.is_empty() => Error::MissingAdminOption { admin, role: lacking[0].clone() },
                _ if roles.iter().any(|role| role == RDS_IAM_ROLE) => {
                    Error::MissingAdminOption { admin, role: RDS_IAM_ROLE.into() }
                }
                _ => Error::PermissionDenied { admin, action: describe(&statement), detail },
            },
            // PostgreSQL 16+ lets a CREATEROLE admin alter or drop only roles it holds
            // WITH ADMIN OPTION (it gets that option on the roles it creates).
            Some(
                Step::SetLogin { user, .. }
                | Step::ClearPassword { user }
                | Step::ResetSettings { user, .. }
                | Step::WriteLedger { user, .. }
                | Step::DropUser { user },
            ) if state.server_version_num >= 160000 => Error::MissingAdminOption { admin, role: user.clone() },
            Some(Step::RecordEnded { group, .. }) if state.server_version_num >= 160000 => {
                Error::MissingAdminOption { admin, role: group.clone() }
            }
            Some(Step::ReserveName { .. }) => Error::MissingCreateRole { admin },
            _ => Error::PermissionDenied { admin, action: describe(&statement), detail },
        });
    }
    Failure::Fatal(postgres_error(&describe(&statement), t, error))
}

/// Which of `roles` the admin does not hold WITH ADMIN OPTION, by name.
async fn roles_lacking_admin_option(client: &Client, roles: &[String]) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query_typed(sql::ROLES_WITHOUT_ADMIN_OPTION, &[(&roles, Type::TEXT_ARRAY)]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

fn describe(statement: &Statement<'_>) -> String {
    match statement {
        Statement::Step(Step::CreateGroup { group }) => format!("creating the managed group {group:?}"),
        Statement::Step(Step::CreateUser { user }) => format!("creating database user {user:?}"),
        Statement::Step(Step::GrantRoles { roles, user }) => format!("granting roles {roles:?} to {user:?}"),
        Statement::Step(Step::RevokeRoles { roles, user }) => format!("revoking roles {roles:?} from {user:?}"),
        Statement::Step(Step::SetLogin { user, login: true }) => format!("enabling LOGIN of {user:?}"),
        Statement::Step(Step::SetLogin { user, login: false }) => format!("setting NOLOGIN on {user:?}"),
        Statement::Step(Step::ClearPassword { user }) => format!("clearing the password of {user:?}"),
        Statement::Step(Step::ResetSettings { user, database: None }) => format!("resetting the settings of {user:?}"),
        Statement::Step(Step::ResetSettings { user, database: Some(database) }) => {
            format!("resetting the settings of {user:?} in database {database:?}")
        }
        Statement::Step(Step::Guard { user, .. }) => format!("checking the ledger of {user:?}"),
        Statement::Step(Step::WriteLedger { user, .. }) => format!("writing the session ledger of {user:?}"),
        Statement::Step(Step::DropUser { user }) => format!("dropping database user {user:?}"),
        Statement::Step(Step::ReassignOwned { user, inheritor }) => {
            format!("reassigning what {user:?} owns to {inheritor:?}")
        }
        Statement::Step(Step::DropOwned { user }) => format!("revoking the privileges {user:?} holds (DROP OWNED)"),
        Statement::Step(Step::DisarmOwned { user }) => {
            format!("disarming what {user:?} owns (SECURITY INVOKER, security_invoker views, its grants revoked)")
        }
        Statement::Step(Step::ReserveName { user }) => format!("reserving the role name {user:?}"),
        Statement::Step(Step::RecordEnded { group, user, .. }) => {
            format!("recording ended sessions of {user:?} in the comment of the managed group {group:?}")
        }
        Statement::Step(Step::RefuseIfEnded { user, session, .. }) => {
            format!("checking that session {session:?} of {user:?} has not ended")
        }
        Statement::Step(Step::GrantObjects { batch, user }) => {
            format!("granting {} on {} {}s to {user:?}", batch.privilege, batch.objects.len(), batch.kind.label())
        }
        Statement::Step(Step::RevokeObjects { batch, user }) => {
            format!("revoking {} on {} {}s from {user:?}", batch.privilege, batch.objects.len(), batch.kind.label())
        }
        Statement::Step(Step::GrantSchemaUsage { schemas, user }) => {
            format!("granting USAGE on schemas {schemas:?} to {user:?}")
        }
        Statement::Step(Step::RevokeSchemaUsage { schemas, user }) => {
            format!("revoking USAGE on schemas {schemas:?} from {user:?}")
        }
        Statement::Step(Step::SetRole { role: Some(role) }) => format!("switching to the creator role {role:?}"),
        Statement::Step(Step::SetRole { role: None }) => "switching back to the admin".to_string(),
        Statement::Step(Step::PrepareCreator { creator, roles, .. }) => {
            format!("preparing the creator role {creator:?} (ADMIN OPTION on {roles:?})")
        }
        Statement::Raw(text) => (*text).to_string(),
    }
}

fn postgres_error(action: &str, t: &Target, source: tokio_postgres::Error) -> Error {
    Error::Postgres { action: action.to_string(), endpoint: t.endpoint.clone(), source }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(kind: DropBlockedKind) -> DropBlocked {
        DropBlocked { kind, db_name: "app".into(), detail: "why".into(), fix: Some("GRANT x TO y".into()) }
    }

    #[test]
    fn a_blocked_drops_reason_says_what_kind_of_block_it_was() {
        let privilege = locked_instead(&blocked(DropBlockedKind::AdminLacksPrivilege));
        assert!(privilege.contains("lacks a privilege") && !privilege.contains("handed over"), "{privilege}");
        assert!(privilege.ends_with("run `GRANT x TO y`"), "{privilege}");
        let connect = locked_instead(&blocked(DropBlockedKind::CannotConnect));
        assert!(connect.contains("could not be handed over in database \"app\""), "{connect}");
        let objects = locked_instead(&blocked(DropBlockedKind::DependentObjects));
        assert!(objects.starts_with("objects depend on the user"), "{objects}");
    }
}
