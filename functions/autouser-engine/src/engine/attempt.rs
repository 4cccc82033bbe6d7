//! Attempts and their failures: retrying lost races with backoff, committing a plan's steps,
//! and turning a failing statement into a retry, a held-up attempt or a typed [`Error`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::config::RDS_IAM_ROLE;
use autouser_policy::plan::{ObservedState, Step};
use autouser_policy::request::Target;

use super::pipeline::{rollback, run_pipelined, Statement};
use super::MAX_ATTEMPTS;

/// Why one attempt failed.
pub(super) enum Failure {
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

pub(super) async fn retrying<T, F, Fut>(
    connection: &AdminConnection,
    target: &Target,
    mut attempt: F,
) -> Result<T, Error>
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

pub(super) async fn run_and_commit(
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

/// Whether an error means another call changed the same user first, so that a fresh attempt
/// will see its result. `step` is the statement that failed, when known.
pub(super) fn is_conflict(error: &tokio_postgres::Error, step: Option<&Step>) -> bool {
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
pub(super) async fn step_failure(
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

pub(super) fn describe(statement: &Statement<'_>) -> String {
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

pub(super) fn postgres_error(action: &str, t: &Target, source: tokio_postgres::Error) -> Error {
    Error::Postgres { action: action.to_string(), endpoint: t.endpoint.clone(), source }
}
