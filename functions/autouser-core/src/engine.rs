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
//! A drop needs a third round trip, to fall back to `keep` when objects depend on the user.
//! Attempts that lose a race (serialization failure, deadlock, a concurrent catalog update,
//! a duplicate role) are retried a bounded number of times with jittered backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::RDS_IAM_ROLE;
use crate::ledger::Ledger;
use crate::outcome::{EndOutcome, EndStatus, StartOutcome};
use crate::pg::AdminConnection;
use crate::plan::{self, EndDecision, ObservedState, StartDecision, Step};
use crate::policy::CreateDbUserMode;
use crate::request::{EndRequest, StartRequest, Target};
use crate::sql;
use crate::Error;

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
    if !connection.user_seen(&t.db_user) {
        match create_in_one_round_trip(connection, req).await {
            Ok(Some(outcome)) => return Ok(outcome),
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(db_user = %t.db_user, %error, "the user is not new; reading its state");
            }
        }
    }
    retrying(t, || start_once(connection, req)).await
}

/// The one-round-trip start of a new user: the user's lock, `CREATE ROLE … LOGIN IN ROLE …`
/// and the ledger, in one message and so in one implicit transaction
/// ([`sql::locked_transaction`]). `None` when the admin is (or may be) a
/// superuser: it could grant a superuser role, which the read path refuses, while PostgreSQL
/// refuses that to any other admin.
async fn create_in_one_round_trip(
    connection: &AdminConnection,
    req: &StartRequest,
) -> Result<Option<StartOutcome>, tokio_postgres::Error> {
    let t = &req.target;
    if connection.admin_is_superuser() != Some(false) {
        return Ok(None);
    }
    let expected = ObservedState::expected_for_new_user(req);
    let Ok(StartDecision::Apply { steps, ledger, created_user: true }) = plan::plan_start(req, &expected, unix_now())
    else {
        return Ok(None);
    };
    // A failure rolls the implicit transaction back: nothing is left to undo.
    let text = sql::locked_transaction(sql::user_lock_key(&t.db_user), &steps);
    connection.client().simple_query(&text).await?;
    connection.saw_user(&t.db_user, true);
    Ok(Some(start_outcome(req, &ledger, true, false)))
}

/// The answer to a session-start, from the ledger as committed.
fn start_outcome(req: &StartRequest, ledger: &Ledger, created_user: bool, already_active: bool) -> StartOutcome {
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
    }
}

/// Closes a session: see [`plan::plan_end`] for what changes.
pub async fn session_end(connection: &AdminConnection, req: &EndRequest) -> Result<EndOutcome, Error> {
    retrying(&req.target, || end_once(connection, req)).await
}

/// Why one attempt failed.
enum Failure {
    /// Lost a race; the next attempt will see the winner's result.
    Retry(String),
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

async fn retrying<T, F, Fut>(target: &Target, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut last = String::new();
    for n in 1..=MAX_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(error)) => return Err(error),
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

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn start_once(connection: &AdminConnection, req: &StartRequest) -> Result<StartOutcome, Failure> {
    let t = &req.target;
    let candidates: Vec<String> = req.db_roles.union(&req.platform_roles).cloned().collect();
    let state = begin_and_read(connection, t, &candidates).await?;
    let client = connection.client();
    let decision = match plan::plan_start(req, &state, unix_now()) {
        Ok(decision) => decision,
        Err(error) => {
            rollback(client).await;
            return Err(Failure::Fatal(error));
        }
    };
    match decision {
        StartDecision::AlreadyActive { ledger } => {
            rollback(client).await;
            Ok(start_outcome(req, &ledger, false, true))
        }
        StartDecision::Apply { steps, ledger, created_user } => {
            run_and_commit(client, t, &state, &steps).await?;
            Ok(start_outcome(req, &ledger, created_user, false))
        }
    }
}

async fn end_once(connection: &AdminConnection, req: &EndRequest) -> Result<EndOutcome, Failure> {
    let t = &req.target;
    let state = begin_and_read(connection, t, &[]).await?;
    let client = connection.client();
    let decision = match plan::plan_end(req, &state) {
        Ok(decision) => decision,
        Err(error) => {
            rollback(client).await;
            return Err(Failure::Fatal(error));
        }
    };
    let outcome = |status, mode, open_sessions, reason: Option<&str>| EndOutcome {
        status,
        db_user: t.db_user.clone(),
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        session_id: t.session_id.clone(),
        mode,
        open_sessions,
        reason: reason.map(str::to_string),
    };
    match decision {
        EndDecision::Noop { reason } => {
            rollback(client).await;
            Ok(outcome(EndStatus::Noop, None, 0, Some(reason)))
        }
        EndDecision::InUse { steps, ledger, mode } => {
            run_and_commit(client, t, &state, &steps).await?;
            Ok(outcome(EndStatus::InUse, Some(mode), ledger.sessions.len(), None))
        }
        EndDecision::Deactivate { steps, mode } => {
            run_and_commit(client, t, &state, &steps).await?;
            Ok(outcome(EndStatus::Deactivated, Some(mode), 0, unrevocable_roles(t, &state).as_deref()))
        }
        EndDecision::Drop { before_drop, fallback } => {
            let mode = Some(CreateDbUserMode::BestEffortDrop);
            let drop = Step::DropUser { user: t.db_user.clone() };
            let mut statements: Vec<Statement> = before_drop.iter().map(Statement::Step).collect();
            statements.push(Statement::Raw(sql::SAVEPOINT_DROP));
            statements.push(Statement::Step(&drop));
            match run_pipelined(client, &statements).await {
                Ok(()) => {
                    commit(client, t).await?;
                    connection.saw_user(&t.db_user, false);
                    Ok(outcome(EndStatus::Dropped, mode, 0, None))
                }
                Err((Statement::Step(Step::DropUser { .. }), error))
                    if error.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
                {
                    let mut statements = vec![Statement::Raw(sql::ROLLBACK_TO_DROP)];
                    statements.extend(fallback.iter().map(Statement::Step));
                    statements.push(Statement::Raw(sql::COMMIT));
                    if let Err((statement, error)) = run_pipelined(client, &statements).await {
                        return Err(step_failure(client, t, &state, statement, error).await);
                    }
                    let mut reason = error
                        .as_db_error()
                        .map(|db| format!("objects depend on the user, so it was locked instead: {}", db.message()))
                        .unwrap_or_default();
                    if let Some(note) = unrevocable_roles(t, &state) {
                        reason = format!("{reason}; {note}");
                    }
                    Ok(outcome(EndStatus::Deactivated, mode, 0, Some(&reason)))
                }
                Err((statement, error)) => Err(step_failure(client, t, &state, statement, error).await),
            }
        }
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

/// A statement of a pipelined batch: a plan step, or transaction control.
#[derive(Debug, Clone, Copy)]
enum Statement<'a> {
    Step(&'a Step),
    Raw(&'static str),
}

impl Statement<'_> {
    fn sql(&self) -> String {
        match self {
            Statement::Step(step) => sql::render(step),
            Statement::Raw(text) => text.to_string(),
        }
    }
}

/// Sends all statements at once and waits for all answers. Returns the first failure; the
/// statements after it fail too, with "current transaction is aborted".
async fn run_pipelined<'a>(
    client: &Client,
    statements: &[Statement<'a>],
) -> Result<(), (Statement<'a>, tokio_postgres::Error)> {
    let texts: Vec<String> = statements.iter().map(Statement::sql).collect();
    let results: Vec<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>> =
        join_all(texts.iter().map(|text| client.simple_query(text))).await;
    for (statement, result) in statements.iter().zip(results) {
        if let Err(error) = result {
            return Err((*statement, error));
        }
    }
    Ok(())
}

async fn run_and_commit(client: &Client, t: &Target, state: &ObservedState, steps: &[Step]) -> Result<(), Failure> {
    let mut statements: Vec<Statement> = steps.iter().map(Statement::Step).collect();
    statements.push(Statement::Raw(sql::COMMIT));
    match run_pipelined(client, &statements).await {
        Ok(()) => Ok(()),
        Err((statement, error)) => Err(step_failure(client, t, state, statement, error).await),
    }
}

async fn commit(client: &Client, t: &Target) -> Result<(), Failure> {
    client.simple_query(sql::COMMIT).await.map(drop).map_err(|error| {
        if is_conflict(&error, None) {
            Failure::Retry(crate::pg::error_chain(&error))
        } else {
            Failure::Fatal(postgres_error("COMMIT", t, error))
        }
    })
}

async fn rollback(client: &Client) {
    // Ending an already ended transaction only raises a warning; a dead connection has no
    // transaction left. Either way there is nothing more to do.
    let _ = client.simple_query(sql::ROLLBACK).await;
}

async fn begin_and_read(
    connection: &AdminConnection,
    t: &Target,
    candidates: &[String],
) -> Result<ObservedState, Failure> {
    let client = connection.client();
    let failure = |error: tokio_postgres::Error| {
        if is_conflict(&error, None) {
            Failure::Retry(crate::pg::error_chain(&error))
        } else {
            Failure::Fatal(postgres_error("reading the user's state", t, error))
        }
    };
    let read_state = connection.read_state().await.map_err(failure)?;
    let lock_key = sql::user_lock_key(&t.db_user);
    let lock_params: [(&(dyn ToSql + Sync), Type); 1] = [(&lock_key, Type::INT8)];
    let read_params: [&(dyn ToSql + Sync); 3] = [&t.db_user, &t.managed_group, &candidates];
    let begin = client.simple_query(sql::BEGIN);
    let lock = client.query_typed(sql::LOCK_USER, &lock_params);
    let read = client.query(read_state, &read_params);
    let (begin, lock, read) = tokio::join!(begin, lock, read);
    let row = match begin.and(lock).and(read) {
        Ok(rows) => rows.into_iter().next(),
        Err(error) => {
            rollback(client).await;
            return Err(failure(error));
        }
    };
    let row = row.expect("READ_STATE returns exactly one row");
    let get = |name| -> Vec<String> { row.get(name) };
    let state = ObservedState {
        user_exists: row.get("user_exists"),
        user_can_login: row.get("user_can_login"),
        member_of: get("member_of").into_iter().collect(),
        ledger_comment: row.get("ledger"),
        foreign_grants: get("foreign_grant_roles").into_iter().zip(get("foreign_grant_grantors")).collect(),
        group_exists: row.get("group_exists"),
        existing_roles: get("existing_roles").into_iter().collect(),
        superuser_roles: get("superuser_roles").into_iter().collect(),
        server_version_num: row.get("server_version_num"),
        read_only: row.get("read_only"),
    };
    connection.saw_user(&t.db_user, state.user_exists);
    Ok(state)
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
    if matches!(step, Some(Step::CreateUser { .. } | Step::CreateGroup { .. })) && *code == SqlState::DUPLICATE_OBJECT {
        return true;
    }
    if matches!(
        step,
        Some(Step::CreateUser { .. } | Step::SetLogin { .. } | Step::GrantRole { .. } | Step::RevokeRoles { .. })
    ) && *code == SqlState::UNDEFINED_OBJECT
    {
        return true;
    }
    // Concurrent updates of one catalog row raise an internal error, not a SQLSTATE of its own.
    *code == SqlState::INTERNAL_ERROR && db.message().starts_with("tuple concurrently")
}

/// Turns the failure of `statement` into a retry or a typed error. The transaction has ended
/// (the pipelined COMMIT became a rollback) or is rolled back here.
async fn step_failure(
    client: &Client,
    t: &Target,
    state: &ObservedState,
    statement: Statement<'_>,
    error: tokio_postgres::Error,
) -> Failure {
    rollback(client).await;
    let step = match statement {
        Statement::Step(step) => Some(step),
        Statement::Raw(_) => None,
    };
    if is_conflict(&error, step) {
        return Failure::Retry(crate::pg::error_chain(&error));
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
            Some(Step::CreateUser { member_of, .. }) => {
                match create_user_denied(client, member_of, state.server_version_num).await {
                    Ok(CreateDenied::NoCreateRole) | Err(_) => Error::MissingCreateRole { admin },
                    Ok(CreateDenied::NoAdminOption(role)) => Error::MissingAdminOption { admin, role },
                    Ok(CreateDenied::Other) => Error::PermissionDenied { admin, action: describe(&statement), detail },
                }
            }
            Some(Step::GrantRole { role, .. }) => {
                match roles_lacking_admin_option(client, std::slice::from_ref(role)).await {
                    Ok(lacking) if !lacking.is_empty() => Error::MissingAdminOption { admin, role: role.clone() },
                    _ if role == RDS_IAM_ROLE => Error::MissingAdminOption { admin, role: role.clone() },
                    _ => Error::PermissionDenied { admin, action: describe(&statement), detail },
                }
            }
            Some(Step::RevokeRoles { roles, .. }) => match roles_lacking_admin_option(client, roles).await {
                Ok(lacking) if !lacking.is_empty() => Error::MissingAdminOption { admin, role: lacking[0].clone() },
                _ if roles.iter().any(|role| role == RDS_IAM_ROLE) => {
                    Error::MissingAdminOption { admin, role: RDS_IAM_ROLE.into() }
                }
                _ => Error::PermissionDenied { admin, action: describe(&statement), detail },
            },
            // PostgreSQL 16+ lets a CREATEROLE admin alter or drop only roles it holds
            // WITH ADMIN OPTION (it gets that option on the roles it creates).
            Some(Step::SetLogin { user, .. } | Step::WriteLedger { user, .. } | Step::DropUser { user })
                if state.server_version_num >= 160000 =>
            {
                Error::MissingAdminOption { admin, role: user.clone() }
            }
            _ => Error::PermissionDenied { admin, action: describe(&statement), detail },
        });
    }
    Failure::Fatal(postgres_error(&describe(&statement), t, error))
}

/// Why `CREATE ROLE … IN ROLE …` was denied.
enum CreateDenied {
    NoCreateRole,
    /// PostgreSQL 16+: a role of `IN ROLE` the admin does not hold WITH ADMIN OPTION.
    NoAdminOption(String),
    Other,
}

async fn create_user_denied(
    client: &Client,
    member_of: &[String],
    server_version_num: i32,
) -> Result<CreateDenied, tokio_postgres::Error> {
    let may_create: bool = client.query_one(sql::ADMIN_MAY_CREATE_ROLES, &[]).await?.get(0);
    if !may_create {
        return Ok(CreateDenied::NoCreateRole);
    }
    if server_version_num < 160000 {
        return Ok(CreateDenied::Other);
    }
    Ok(match roles_lacking_admin_option(client, member_of).await?.into_iter().next() {
        Some(role) => CreateDenied::NoAdminOption(role),
        None if member_of.iter().any(|role| role == RDS_IAM_ROLE) => CreateDenied::NoAdminOption(RDS_IAM_ROLE.into()),
        None => CreateDenied::Other,
    })
}

/// Which of `roles` the admin does not hold WITH ADMIN OPTION, by name.
async fn roles_lacking_admin_option(client: &Client, roles: &[String]) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query_typed(sql::ROLES_WITHOUT_ADMIN_OPTION, &[(&roles, Type::TEXT_ARRAY)]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

fn describe(statement: &Statement<'_>) -> String {
    match statement {
        Statement::Step(Step::CreateGroup { group }) => format!("creating the managed group {group:?}"),
        Statement::Step(Step::CreateUser { user, member_of }) => {
            format!("creating database user {user:?} in roles {member_of:?}")
        }
        Statement::Step(Step::GrantRole { role, user }) => format!("granting role {role:?} to {user:?}"),
        Statement::Step(Step::RevokeRoles { roles, user }) => format!("revoking roles {roles:?} from {user:?}"),
        Statement::Step(Step::SetLogin { user, login: true }) => format!("enabling LOGIN of {user:?}"),
        Statement::Step(Step::SetLogin { user, login: false }) => format!("setting NOLOGIN on {user:?}"),
        Statement::Step(Step::Guard { user, .. }) => format!("checking the ledger of {user:?}"),
        Statement::Step(Step::WriteLedger { user, .. }) => format!("writing the session ledger of {user:?}"),
        Statement::Step(Step::DropUser { user }) => format!("dropping database user {user:?}"),
        Statement::Raw(text) => (*text).to_string(),
    }
}

fn postgres_error(action: &str, t: &Target, source: tokio_postgres::Error) -> Error {
    Error::Postgres { action: action.to_string(), endpoint: t.endpoint.clone(), source }
}
