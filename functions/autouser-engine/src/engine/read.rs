//! The first round trip of an attempt: `BEGIN`, the user's lock and the state read under it.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::pg::AdminConnection;
use crate::sql;
use crate::Error;
use autouser_policy::ledger::Ledger;
use autouser_policy::permissions::ObjectState;
use autouser_policy::plan::{self, ObservedState};
use autouser_policy::request::Target;

use super::attempt::{is_conflict, postgres_error, Failure};
use super::objects::{list_objects, ObjectListing};
use super::pipeline::rollback;

pub(super) async fn begin_and_read(
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
