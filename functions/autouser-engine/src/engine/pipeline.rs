//! Pipelining: the statements of a batch, rendered as the connection runs them and sent at
//! once, or committing with the last message; the rollback.

use futures_util::future::join_all;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::pg::AdminConnection;
use crate::sql;
use autouser_policy::plan::Step;

/// A statement of a pipelined batch: a plan step, or transaction control.
#[derive(Debug, Clone, Copy)]
pub(super) enum Statement<'a> {
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
pub(super) async fn run_pipelined<'a>(
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
pub(super) async fn run_pipelined_committing_with_the_last<'a>(
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

pub(super) async fn rollback(client: &Client) {
    // Ending an already ended transaction only raises a warning; a dead connection has no
    // transaction left. Either way there is nothing more to do.
    let _ = client.simple_query(sql::ROLLBACK).await;
}
