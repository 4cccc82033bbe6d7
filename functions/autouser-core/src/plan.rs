//! The planner: from a request and what the database holds now, decide what to change.
//!
//! Pure: no I/O, no clock (the caller passes `now`). The executor in [`crate::engine`] runs the
//! steps in one transaction, in order, and maps a failing step to a typed error.
//!
//! Ordering matters for concurrency: when the user exists, the first write is always
//! [`Step::SetLogin`] (a write to the user's `pg_authid` row, which blocks other writers of the
//! same user until we commit) followed by [`Step::Guard`] (which checks that the ledger we
//! planned from is still current).

use std::collections::BTreeSet;

use crate::ledger::{Ledger, SessionRecord};
use crate::policy::CreateDbUserMode;
use crate::request::{EndRequest, StartRequest, Target};
use crate::Error;

/// What the database holds now, read in the same transaction, under the user's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedState {
    pub user_exists: bool,
    pub user_can_login: bool,
    /// Roles the user is a direct member of.
    pub member_of: BTreeSet<String>,
    /// The user's role comment, where the ledger lives.
    pub ledger_comment: Option<String>,
    /// Memberships of the user that the admin cannot revoke (PostgreSQL 16+: granted by
    /// another role), as `(role, grantor)`.
    pub foreign_grants: BTreeSet<(String, String)>,
    pub group_exists: bool,
    /// Which of the roles the plan may grant exist.
    pub existing_roles: BTreeSet<String>,
    /// Which of the roles the plan may grant are superusers.
    pub superuser_roles: BTreeSet<String>,
    pub server_version_num: i32,
    pub read_only: bool,
}

impl ObservedState {
    /// What a session-start for a user that does not exist yet expects to find: the group
    /// and every wanted role present, none of them a superuser, a writable server. The
    /// one-round-trip start ([`crate::engine`]) plans from this instead of reading; any
    /// difference makes one of its statements fail, and it falls back to reading.
    pub fn expected_for_new_user(req: &StartRequest) -> ObservedState {
        ObservedState {
            group_exists: true,
            existing_roles: req.db_roles.union(&req.platform_roles).cloned().collect(),
            ..ObservedState::default()
        }
    }
}

/// One change, rendered to SQL by [`crate::sql::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateGroup {
        group: String,
    },
    /// A new user, able to log in, member of `member_of` (the group and the session's roles):
    /// one statement, where an existing user needs one per change.
    CreateUser {
        user: String,
        member_of: Vec<String>,
    },
    GrantRole {
        role: String,
        user: String,
    },
    /// One statement for all of them: PostgreSQL 16+ recomputes the admin's memberships after
    /// every statement that changes some, at a cost that grows with the users it created.
    RevokeRoles {
        roles: Vec<String>,
        user: String,
    },
    SetLogin {
        user: String,
        login: bool,
    },
    Guard {
        user: String,
        expected_ledger: Option<String>,
    },
    WriteLedger {
        user: String,
        ledger: String,
    },
    DropUser {
        user: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// The session is already open and the user is as it should be: change nothing.
    AlreadyActive {
        ledger: Ledger,
    },
    Apply {
        steps: Vec<Step>,
        ledger: Ledger,
        created_user: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndDecision {
    Noop {
        reason: &'static str,
    },
    /// Other sessions remain: only the ledger changes.
    InUse {
        steps: Vec<Step>,
        ledger: Ledger,
        mode: CreateDbUserMode,
    },
    /// Last session, `keep`: strip roles, NOLOGIN.
    Deactivate {
        steps: Vec<Step>,
        mode: CreateDbUserMode,
    },
    /// Last session, `best_effort_drop`: run `before_drop`, then drop the user; if objects
    /// depend on it, roll back to before the drop and run `fallback` (the `keep` changes).
    Drop {
        before_drop: Vec<Step>,
        fallback: Vec<Step>,
    },
}

pub fn plan_start(req: &StartRequest, state: &ObservedState, now: u64) -> Result<StartDecision, Error> {
    let t = &req.target;
    if state.user_exists && !state.member_of.contains(&t.managed_group) {
        return Err(Error::UserConflict { user: t.db_user.clone(), group: t.managed_group.clone() });
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    let wanted: BTreeSet<String> = req.db_roles.union(&req.platform_roles).cloned().collect();

    if let Some(record) = ledger.sessions.get(&t.session_id) {
        let mut held = record.db_roles.union(&req.platform_roles).cloned().collect::<BTreeSet<_>>();
        held.insert(t.managed_group.clone());
        if state.user_can_login && state.member_of == held {
            return Ok(StartDecision::AlreadyActive { ledger });
        }
    } else if ledger.was_ended(&t.session_id) {
        return Err(Error::SessionAlreadyEnded { session_id: t.session_id.clone(), user: t.db_user.clone() });
    }
    if let Some(other) = ledger.sessions.iter().find(|(id, s)| **id != t.session_id && s.db_roles != req.db_roles) {
        return Err(Error::RolesMismatch {
            user: t.db_user.clone(),
            active: other.1.db_roles.clone(),
            requested: req.db_roles.clone(),
        });
    }
    for role in &wanted {
        if !state.existing_roles.contains(role) {
            return Err(Error::UnknownDbRole { role: role.clone(), database: t.database.clone() });
        }
        if state.superuser_roles.contains(role) {
            return Err(Error::RefusedDbRole {
                role: role.clone(),
                reason: "it is a superuser role, and a member could SET ROLE to it",
            });
        }
    }
    let stray = |role: &String| !wanted.contains(role) && *role != t.managed_group;
    if let Some((role, grantor)) = state.foreign_grants.iter().find(|(role, _)| stray(role)) {
        return Err(Error::ForeignGrant { user: t.db_user.clone(), role: role.clone(), grantor: grantor.clone() });
    }
    if state.read_only {
        return Err(Error::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }

    let user = &t.db_user;
    ledger.sessions.entry(t.session_id.clone()).or_insert_with(|| SessionRecord {
        mode: req.mode,
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        db_roles: req.db_roles.clone(),
        started_at: now,
    });
    ledger.revision += 1;
    let mut steps = Vec::new();
    if !state.group_exists {
        steps.push(Step::CreateGroup { group: t.managed_group.clone() });
    }
    if state.user_exists {
        // The ledger right after the guard, before any membership change: PostgreSQL 16+
        // recomputes the admin's memberships (one per user it created) for the first privilege
        // check after each membership change, so writes that check privileges go first.
        steps.extend(lock_and_guard(user, true, state));
        steps.push(write_ledger(user, &ledger));
        if !state.member_of.contains(&t.managed_group) {
            steps.push(grant(&t.managed_group, user));
        }
        let strays: Vec<String> = state.member_of.iter().filter(|r| stray(r)).cloned().collect();
        if !strays.is_empty() {
            steps.push(Step::RevokeRoles { roles: strays, user: user.clone() });
        }
        for role in wanted.difference(&state.member_of) {
            steps.push(grant(role, user));
        }
    } else {
        let member_of = std::iter::once(t.managed_group.clone()).chain(wanted.iter().cloned()).collect();
        steps.push(Step::CreateUser { user: user.clone(), member_of });
        steps.push(write_ledger(user, &ledger));
    }
    Ok(StartDecision::Apply { steps, ledger, created_user: !state.user_exists })
}

pub fn plan_end(req: &EndRequest, state: &ObservedState) -> Result<EndDecision, Error> {
    let t: &Target = &req.target;
    if !state.user_exists {
        return Ok(EndDecision::Noop { reason: "the database user does not exist" });
    }
    if !state.member_of.contains(&t.managed_group) {
        return Ok(EndDecision::Noop {
            reason: "the database user is not in the managed group, so it is not ours to touch",
        });
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    let Some(record) = ledger.sessions.get(&t.session_id).cloned() else {
        return Ok(EndDecision::Noop {
            reason: if ledger.was_ended(&t.session_id) {
                "the session has already ended"
            } else {
                "the session is unknown"
            },
        });
    };
    if state.read_only {
        return Err(Error::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }
    let user = &t.db_user;
    ledger.record_end(&t.session_id);
    ledger.revision += 1;

    if !ledger.sessions.is_empty() {
        let mut steps = lock_and_guard(user, true, state);
        steps.push(write_ledger(user, &ledger));
        return Ok(EndDecision::InUse { steps, ledger, mode: record.mode });
    }
    let before = lock_and_guard(user, false, state);
    // The ledger before the revokes: see plan_start.
    let mut keep = vec![write_ledger(user, &ledger)];
    let held: Vec<String> = state.member_of.iter().filter(|r| **r != t.managed_group).cloned().collect();
    if !held.is_empty() {
        keep.push(Step::RevokeRoles { roles: held, user: user.clone() });
    }
    Ok(match record.mode {
        CreateDbUserMode::BestEffortDrop => EndDecision::Drop { before_drop: before, fallback: keep },
        mode => EndDecision::Deactivate { steps: before.into_iter().chain(keep).collect(), mode },
    })
}

fn lock_and_guard(user: &str, login: bool, state: &ObservedState) -> Vec<Step> {
    vec![
        Step::SetLogin { user: user.to_string(), login },
        Step::Guard { user: user.to_string(), expected_ledger: state.ledger_comment.clone() },
    ]
}

fn grant(role: &str, user: &str) -> Step {
    Step::GrantRole { role: role.to_string(), user: user.to_string() }
}

fn write_ledger(user: &str, ledger: &Ledger) -> Step {
    Step::WriteLedger { user: user.to_string(), ledger: ledger.to_comment() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(session: &str) -> Target {
        Target {
            session_id: session.into(),
            person: "alice".into(),
            db_user: "alice".into(),
            database: "orders".into(),
            db_name: "app".into(),
            admin_db_name: "app".into(),
            admin: "teleport-admin".into(),
            managed_group: "grp".into(),
            endpoint: "localhost:5432".into(),
        }
    }

    fn start(session: &str, roles: &[&str], mode: CreateDbUserMode) -> StartRequest {
        StartRequest {
            target: target(session),
            mode,
            db_roles: roles.iter().map(|r| r.to_string()).collect(),
            platform_roles: BTreeSet::new(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn fresh_server() -> ObservedState {
        ObservedState {
            existing_roles: set(&["reader", "writer", "rds_iam"]),
            server_version_num: 160000,
            ..Default::default()
        }
    }

    /// The state after `steps` ran, as far as the planner cares.
    fn apply(mut state: ObservedState, steps: &[Step]) -> ObservedState {
        for step in steps {
            match step {
                Step::CreateGroup { .. } => state.group_exists = true,
                Step::CreateUser { member_of, .. } => {
                    state.user_exists = true;
                    state.user_can_login = true;
                    state.member_of.extend(member_of.iter().cloned());
                }
                Step::GrantRole { role, .. } => {
                    state.member_of.insert(role.clone());
                }
                Step::RevokeRoles { roles, .. } => {
                    for role in roles {
                        state.member_of.remove(role);
                    }
                }
                Step::SetLogin { login, .. } => state.user_can_login = *login,
                Step::WriteLedger { ledger, .. } => state.ledger_comment = Some(ledger.clone()),
                Step::Guard { expected_ledger, .. } => assert_eq!(expected_ledger, &state.ledger_comment),
                Step::DropUser { .. } => state = ObservedState { user_exists: false, ..state },
            }
        }
        state
    }

    fn started(state: ObservedState, req: &StartRequest) -> ObservedState {
        match plan_start(req, &state, 10).unwrap() {
            StartDecision::Apply { steps, .. } => apply(state, &steps),
            StartDecision::AlreadyActive { .. } => state,
        }
    }

    #[test]
    fn first_start_creates_the_group_then_the_user_in_one_statement() {
        let req = start("s1", &["reader"], CreateDbUserMode::Keep);
        let StartDecision::Apply { steps, created_user, .. } = plan_start(&req, &fresh_server(), 10).unwrap() else {
            panic!("expected a plan")
        };
        assert!(created_user);
        assert_eq!(steps[0], Step::CreateGroup { group: "grp".into() });
        assert_eq!(steps[1], Step::CreateUser { user: "alice".into(), member_of: vec!["grp".into(), "reader".into()] });
        assert!(matches!(steps[2], Step::WriteLedger { .. }), "{steps:?}");
        assert_eq!(steps.len(), 3, "{steps:?}");
        let state = apply(fresh_server(), &steps);
        assert_eq!(state.member_of, set(&["grp", "reader"]));
        assert!(state.user_can_login);
    }

    #[test]
    fn existing_unmanaged_role_is_a_conflict() {
        let state = ObservedState { user_exists: true, member_of: set(&["reader"]), ..fresh_server() };
        let err = plan_start(&start("s1", &[], CreateDbUserMode::Keep), &state, 10).unwrap_err();
        assert!(matches!(err, Error::UserConflict { .. }));
        let end = plan_end(&EndRequest { target: target("s1") }, &state).unwrap();
        assert!(matches!(end, EndDecision::Noop { .. }));
    }

    #[test]
    fn duplicate_start_changes_nothing() {
        let req = start("s1", &["reader"], CreateDbUserMode::Keep);
        let state = started(ObservedState { group_exists: true, ..fresh_server() }, &req);
        assert!(matches!(plan_start(&req, &state, 11).unwrap(), StartDecision::AlreadyActive { .. }));
    }

    #[test]
    fn restart_revokes_leftover_roles() {
        let mut state = started(fresh_server(), &start("s1", &["reader", "writer"], CreateDbUserMode::Keep));
        let EndDecision::Deactivate { steps, .. } = plan_end(&EndRequest { target: target("s1") }, &state).unwrap()
        else {
            panic!("expected keep")
        };
        state = apply(state, &steps);
        // Someone granted an extra role while the user was locked.
        state.member_of.insert("writer".into());
        let state = started(state, &start("s2", &["reader"], CreateDbUserMode::Keep));
        assert_eq!(state.member_of, set(&["grp", "reader"]));
        assert!(state.user_can_login);
    }

    #[test]
    fn overlapping_session_with_other_roles_is_refused() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let err = plan_start(&start("s2", &["reader", "writer"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Error::RolesMismatch { .. }), "{err}");
        assert!(plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).is_ok());
    }

    #[test]
    fn end_of_one_of_two_sessions_keeps_the_user_usable() {
        let req1 = start("s1", &["reader"], CreateDbUserMode::Keep);
        let state = started(started(fresh_server(), &req1), &start("s2", &["reader"], CreateDbUserMode::Keep));
        let EndDecision::InUse { steps, ledger, .. } = plan_end(&EndRequest { target: target("s1") }, &state).unwrap()
        else {
            panic!("expected in use")
        };
        assert_eq!(ledger.sessions.len(), 1);
        let state = apply(state, &steps);
        assert!(state.user_can_login);
        assert_eq!(state.member_of, set(&["grp", "reader"]));
        let EndDecision::Deactivate { steps, .. } = plan_end(&EndRequest { target: target("s2") }, &state).unwrap()
        else {
            panic!("expected keep")
        };
        let state = apply(state, &steps);
        assert!(!state.user_can_login);
        assert_eq!(state.member_of, set(&["grp"]));
    }

    #[test]
    fn end_applies_the_mode_recorded_at_start() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::BestEffortDrop));
        assert!(matches!(plan_end(&EndRequest { target: target("s1") }, &state).unwrap(), EndDecision::Drop { .. }));
    }

    #[test]
    fn duplicate_or_unknown_end_is_a_noop_and_late_start_is_refused() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let end = EndRequest { target: target("s1") };
        let EndDecision::Deactivate { steps, .. } = plan_end(&end, &state).unwrap() else { panic!() };
        let state = apply(state, &steps);
        assert!(matches!(plan_end(&end, &state).unwrap(), EndDecision::Noop { .. }));
        assert!(matches!(plan_end(&EndRequest { target: target("nope") }, &state).unwrap(), EndDecision::Noop { .. }));
        let err = plan_start(&start("s1", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Error::SessionAlreadyEnded { .. }));
    }

    #[test]
    fn missing_and_superuser_roles_are_refused() {
        let err = plan_start(&start("s1", &["ghost"], CreateDbUserMode::Keep), &fresh_server(), 0).unwrap_err();
        assert!(matches!(err, Error::UnknownDbRole { .. }));
        let state = ObservedState { superuser_roles: set(&["reader"]), ..fresh_server() };
        let err = plan_start(&start("s1", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Error::RefusedDbRole { .. }));
    }

    #[test]
    fn stray_role_granted_by_someone_else_refuses_the_start() {
        let mut state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        state.member_of.insert("writer".into());
        state.foreign_grants.insert(("writer".into(), "postgres".into()));
        let err = plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Error::ForeignGrant { .. }), "{err}");
        // A foreign grant of a role the session gets anyway is harmless.
        let req = start("s2", &["reader", "writer"], CreateDbUserMode::Keep);
        state.ledger_comment = None;
        assert!(plan_start(&req, &state, 0).is_ok());
    }

    #[test]
    fn read_only_endpoint_is_refused_before_any_write() {
        let state = ObservedState { read_only: true, ..fresh_server() };
        let err = plan_start(&start("s1", &[], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Error::ReadOnlyEndpoint { .. }));
    }

    #[test]
    fn existing_user_is_locked_and_guarded_before_other_writes() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let StartDecision::Apply { steps, .. } =
            plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap()
        else {
            panic!()
        };
        assert!(matches!(steps[0], Step::SetLogin { login: true, .. }));
        assert!(matches!(steps[1], Step::Guard { .. }));
    }
}
