//! Handing a dropped user's objects to the object inheritor: creating the inheritor, and the
//! hand-over in the server's other databases ([`super::OtherDatabases`]).

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::outcome::{DropBlocked, DropBlockedKind};
use autouser_policy::plan::{self, ObservedState};
use autouser_policy::request::Target;

use super::attempt::{postgres_error, run_and_commit, Failure};
use super::drop_blocked::{drop_blocked_by, explain_blocked_drop};
use super::pipeline::{rollback, run_pipelined, Statement};
use super::OtherDatabases;

/// Creates the object inheritor in a transaction of its own (see
/// [`plan::create_object_inheritor`]); a concurrent creation is a lost race, retried.
pub(super) async fn create_object_inheritor(
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
pub(super) async fn hand_over_in(
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
