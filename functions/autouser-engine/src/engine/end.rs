//! The end: one attempt, running its decision (keep or drop, with the keep in place of a
//! blocked drop), an end in doubt after a lost COMMIT reply, and the outcome's reasons.

use std::collections::BTreeSet;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::outcome::{EndOutcome, EndStatus};
use autouser_policy::permissions::{KeptPrivileges, ObjectBatch};
use autouser_policy::plan::{self, EndDecision, ObjectCleanup, ObservedState, Step};
use autouser_policy::request::{EndRequest, Target};

use super::attempt::{describe, is_conflict, postgres_error, run_and_commit, step_failure, Failure};
use super::drop_blocked::{drop_blocked_by, explain_blocked_drop, locked_instead};
use super::hand_over::{create_object_inheritor, hand_over_in};
use super::objects::ObjectListing;
use super::pipeline::{rollback, run_pipelined, run_pipelined_committing_with_the_last, Statement};
use super::read::begin_and_read;
use super::OtherDatabases;

/// Records the session of `req` as ended in the managed group's comment, in a transaction of
/// its own that touches nothing of the user's (whose row its connections hold): see
/// [`super::session_end`]. A failure is logged; the end's own error is what the caller hears.
pub(super) async fn record_unfinished_end(connection: &AdminConnection, req: &EndRequest) {
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

pub(super) async fn end_once(
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

/// Runs an end's `decision`, planned from `state` in the open transaction, and commits.
pub(super) async fn run_end(
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

pub(super) async fn terminate_connections(client: &Client, user_oid: u32) -> Result<usize, tokio_postgres::Error> {
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
