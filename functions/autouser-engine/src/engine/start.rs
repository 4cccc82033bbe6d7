//! The start: the one-round-trip start of a user the connection has not seen exist, and the
//! read-then-write attempt.

use crate::pg::AdminConnection;
use crate::sql;
use autouser_policy::ledger::{Ledger, STARTED_AT_SERVER_CLOCK};
use autouser_policy::outcome::StartOutcome;
use autouser_policy::permissions::PermissionSummary;
use autouser_policy::plan::{self, ObservedState, StartDecision};
use autouser_policy::request::StartRequest;

use super::attempt::{run_and_commit, Failure};
use super::objects::ObjectListing;
use super::pipeline::rollback;
use super::read::begin_and_read;

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
pub(super) async fn create_in_one_round_trip(
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

pub(super) async fn start_once(connection: &AdminConnection, req: &StartRequest) -> Result<StartOutcome, Failure> {
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
