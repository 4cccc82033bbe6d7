//! The planner: from a request and what the database holds now, decide what to change.
//!
//! Pure: no I/O, no clock (the caller passes `now`). The executor in [`crate::engine`] runs the
//! steps in one transaction, in order, and maps a failing step to a typed error.
//!
//! Ordering matters for concurrency: when the user exists, the first write is always
//! [`Step::SetLogin`] (a write to the user's `pg_authid` row, which blocks other writers of the
//! same user until we commit) followed by [`Step::Guard`] (which checks that the ledger we
//! planned from is still current).
//!
//! This module holds what a plan starts from (`ObservedState`) and the first writes that every
//! plan for an existing user shares; the rest is cut by concern: `step` (the `Step`s), `roles`
//! (which roles a start may grant), `start` and `end` (the session's two calls), `reaper` (the
//! reaper's retried drop and lock), `hand_over` (the objects of a dropped user) and `creator`
//! (`run_as_creator`).

mod creator;
mod end;
mod hand_over;
mod reaper;
mod roles;
mod start;
mod step;

use std::collections::BTreeSet;

use crate::ledger::Ledger;
use crate::permissions::{ObjectChanges, ObjectState};
use crate::request::StartRequest;

pub use creator::run_as_creator;
pub use end::{plan_end, record_unfinished_end, EndDecision, ObjectCleanup, ALREADY_ENDED};
pub use hand_over::{create_object_inheritor, hand_over_objects};
pub use reaper::{plan_lock, plan_retry_drop};
pub use roles::{db_role_refusal, ReachedRole, RoleFact, RoleGuard};
pub use start::{plan_start, StartDecision};
pub use step::Step;

/// What the database holds now, read in the same transaction, under the user's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedState {
    pub user_exists: bool,
    /// The user's OID, to find its connections after it is locked or dropped.
    pub user_oid: Option<u32>,
    pub user_can_login: bool,
    /// Roles the user is a direct member of.
    pub member_of: BTreeSet<String>,
    /// The user's role comment, where the ledger lives.
    pub ledger_comment: Option<String>,
    /// Where the user has role-level settings (`pg_db_role_setting`): database names, and `""`
    /// for those of every database. Cleared whenever the user is locked or unlocked.
    pub settings_in: BTreeSet<String>,
    /// Memberships of the user that the admin cannot revoke (PostgreSQL 16+: granted by
    /// another role), as `(role, grantor)`.
    pub foreign_grants: BTreeSet<(String, String)>,
    pub group_exists: bool,
    /// Which of the roles the plan may grant exist.
    pub existing_roles: BTreeSet<String>,
    /// Every role that a role the plan may grant is, or is a member of (directly or through
    /// other roles), with what the catalog says about it: see [`db_role_refusal`].
    pub reached_roles: BTreeSet<ReachedRole>,
    pub server_version_num: i32,
    pub read_only: bool,
    /// The managed group's comment records this session as ended (its user was dropped, or
    /// its end came before its start): see [`crate::ledger::ENDED_SESSIONS_HEADER`].
    pub session_ended_in_group: bool,
    /// The server's clock at the transaction's start, Unix seconds: a session's `started_at`.
    pub server_now: u64,
    /// The objects of the connected database, listed when object permissions are in play:
    /// the session has rules, or the ledger says privileges were granted in this database.
    pub objects: Option<ObjectState>,
    /// The user's creator role when it applies (PostgreSQL 16+ and an admin that is not a
    /// superuser): the one that created the user, or for a new user [`Target::creator`](crate::request::Target::creator). See
    /// [`run_as_creator`].
    pub creator: Option<String>,
    /// The creator exists, the admin may `SET ROLE` to it, and it holds ADMIN OPTION on the
    /// managed group and on every role of the read that exists: nothing to prepare first.
    pub creator_ready: bool,
    /// The creator holds ADMIN OPTION on the user: it created it. A user created by the admin
    /// (before `creator_roles` was set) stays the admin's to manage.
    pub creator_admins_user: bool,
    /// The user's memberships the creator granted, which only it may revoke.
    pub creator_grants: BTreeSet<String>,
}

impl ObservedState {
    /// What a session-start for a user that does not exist yet expects to find: the group
    /// and every wanted role present, none of them refused ([`db_role_refusal`]: the
    /// one-round-trip start checks that in SQL), a writable server. The
    /// one-round-trip start ([`crate::engine`]) plans from this instead of reading; any
    /// difference makes one of its statements fail, and it falls back to reading.
    ///
    /// `creator_applies`: the server is PostgreSQL 16+ (the admin is not a superuser, or the
    /// engine would not start in one round trip); the creator is then expected ready.
    pub fn expected_for_new_user(req: &StartRequest, creator_applies: bool) -> ObservedState {
        let creator = req.target.creator.clone().filter(|_| creator_applies);
        ObservedState {
            group_exists: true,
            existing_roles: req.db_roles.union(&req.platform_roles).cloned().collect(),
            creator_ready: creator.is_some(),
            creator,
            ..ObservedState::default()
        }
    }
}

/// Revokes first, so that a privilege moving between batches is never revoked after its grant.
fn object_steps(user: &str, changes: ObjectChanges) -> Vec<Step> {
    let user = user.to_string();
    let mut steps: Vec<Step> =
        changes.revoke.into_iter().map(|batch| Step::RevokeObjects { batch, user: user.clone() }).collect();
    if !changes.revoke_usage.is_empty() {
        steps.push(Step::RevokeSchemaUsage { schemas: changes.revoke_usage, user: user.clone() });
    }
    if !changes.grant_usage.is_empty() {
        steps.push(Step::GrantSchemaUsage { schemas: changes.grant_usage, user: user.clone() });
    }
    steps.extend(changes.grant.into_iter().map(|batch| Step::GrantObjects { batch, user: user.clone() }));
    steps
}

/// The first writes of a call for an existing user: `LOGIN` or `NOLOGIN`, the ledger guard,
/// then what the user may have set on its own role while logged in cleared: its password and
/// its defaults, which `ledger` (the one the call writes) records.
fn lock_and_guard(user: &str, login: bool, state: &ObservedState, ledger: &mut Ledger) -> Vec<Step> {
    ledger.cleared_settings =
        state.settings_in.iter().map(|database| (!database.is_empty()).then(|| database.clone())).collect();
    let mut steps = vec![
        Step::SetLogin { user: user.to_string(), login },
        Step::Guard { user: user.to_string(), expected_ledger: state.ledger_comment.clone() },
        Step::ClearPassword { user: user.to_string() },
    ];
    steps.extend(state.settings_in.iter().map(|database| Step::ResetSettings {
        user: user.to_string(),
        database: (!database.is_empty()).then(|| database.clone()),
    }));
    steps
}

fn write_ledger(user: &str, ledger: &Ledger) -> Step {
    Step::WriteLedger { user: user.to_string(), ledger: ledger.to_comment() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::policy::CreateDbUserMode;

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

    /// What a user set on its own role while logged in goes wherever `LOGIN` changes: at a
    /// start that unlocks it, at the end that locks it, and when the reaper locks it.
    #[test]
    fn every_lock_and_unlock_clears_the_password_and_the_user_s_defaults() {
        let mut state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        state.settings_in = BTreeSet::from([String::new(), "app".to_string()]);
        let cleared = |steps: &[Step]| {
            let user = || "alice".to_string();
            assert_eq!(
                steps[2..5],
                [
                    Step::ClearPassword { user: user() },
                    Step::ResetSettings { user: user(), database: None },
                    Step::ResetSettings { user: user(), database: Some("app".into()) },
                ],
                "{steps:#?}"
            );
            // The ledger the call writes records what was reset.
            let written = steps.iter().find_map(|step| match step {
                Step::WriteLedger { ledger, .. } => Some(Ledger::from_comment("alice", Some(ledger)).unwrap()),
                _ => None,
            });
            let written = written.expect("a ledger write");
            assert_eq!(written.cleared_settings, [None, Some("app".to_string())]);
            assert_eq!(written.format, crate::ledger::FORMAT_WITH_CLEARED);
        };
        let StartDecision::Apply { steps, .. } =
            plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap()
        else {
            panic!()
        };
        cleared(&steps);
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        cleared(&steps);
        let mut idle = state.clone();
        let mut ledger = Ledger::from_comment("alice", state.ledger_comment.as_deref()).unwrap();
        ledger.sessions.clear();
        idle.ledger_comment = Some(ledger.to_comment());
        let steps = plan_lock(&end("s1").target, &idle).unwrap().expect("the reaper locks an idle user");
        cleared(&steps);
    }
}

#[cfg(test)]
mod test_support;
