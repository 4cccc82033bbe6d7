//! The reaper's plans for a user with no open session: the retry of a drop an end could not do
//! (`plan_retry_drop`) and the lock of a user left unlocked (`plan_lock`).

use crate::ledger::{is_pg_autouser_ledger, Ledger};
use crate::refusal::Refusal;
use crate::request::{EndRequest, Target};

use super::end::drop_decision;
use super::{lock_and_guard, run_as_creator, write_ledger, EndDecision, ObjectCleanup, ObservedState, Step};

/// The reaper's retry of a drop an end could not do (`retry_blocked_drops`): the user has
/// no open session and its ledger records the blocked drop's mode. `None` when there is
/// nothing to retry: the user is gone, not ours, in use, or its drop was not blocked.
pub fn plan_retry_drop(req: &EndRequest, state: &ObservedState) -> Result<Option<EndDecision>, Refusal> {
    let t = &req.target;
    if !state.user_exists
        || !state.member_of.contains(&t.managed_group)
        || !is_pg_autouser_ledger(state.ledger_comment.as_deref())
    {
        return Ok(None);
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    let Some(mode) = ledger.blocked_drop.filter(|_| ledger.sessions.is_empty()) else {
        return Ok(None);
    };
    if state.read_only {
        return Err(Refusal::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }
    ledger.revision += 1;
    let before = lock_and_guard(&t.db_user, false, state, &mut ledger);
    Ok(Some(drop_decision(req, state, mode, before, ledger, ObjectCleanup::default())))
}

/// The reaper's lock of a managed user with no open session: `NOLOGIN` and no role but the
/// group. `None` when there is nothing to do: the user is gone, not managed, locked already,
/// or a session opened since the reaper looked.
pub fn plan_lock(t: &Target, state: &ObservedState) -> Result<Option<Vec<Step>>, Refusal> {
    if !state.user_exists
        || !state.member_of.contains(&t.managed_group)
        || !is_pg_autouser_ledger(state.ledger_comment.as_deref())
    {
        return Ok(None);
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    let held: Vec<String> = state.member_of.iter().filter(|r| **r != t.managed_group).cloned().collect();
    if !ledger.sessions.is_empty() || (!state.user_can_login && held.is_empty()) {
        return Ok(None);
    }
    if state.read_only {
        return Err(Refusal::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }
    let mut steps = lock_and_guard(&t.db_user, false, state, &mut ledger);
    if !ledger.cleared_settings.is_empty() {
        ledger.revision += 1;
        steps.push(write_ledger(&t.db_user, &ledger));
    }
    if !held.is_empty() {
        steps.push(Step::RevokeRoles { roles: held, user: t.db_user.clone() });
    }
    Ok(Some(run_as_creator(steps, t, state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::plan::*;
    use crate::policy::CreateDbUserMode;

    #[test]
    fn a_blocked_drop_is_recorded_for_the_reaper_to_retry_until_a_new_session_starts() {
        let mode = CreateDbUserMode::BestEffortReassignAndDrop;
        let state = started(fresh_server(), &start("s1", &["reader"], mode));
        assert_eq!(plan_retry_drop(&end(""), &state).unwrap(), None, "a session is open");
        let EndDecision::Drop { before_drop, fallback, .. } = plan_end(&end("s1"), &state).unwrap() else {
            panic!("expected a drop")
        };
        // The drop was blocked: the keep changes ran instead.
        let kept = apply(apply(state, &before_drop), &fallback);
        assert!(!kept.user_can_login && kept.member_of == set(&["grp"]));
        let ledger = Ledger::from_comment("alice", kept.ledger_comment.as_deref()).unwrap();
        assert_eq!(ledger.blocked_drop, Some(mode));
        let Some(EndDecision::Drop { mode: retried, reassign_to, after_drop, fallback, .. }) =
            plan_retry_drop(&end(""), &kept).unwrap()
        else {
            panic!("expected the reaper's retry")
        };
        assert_eq!((retried, reassign_to.as_deref()), (mode, Some("inheritor")));
        assert!(matches!(&after_drop[..], [Step::RecordEnded { sessions, .. }] if sessions == &["s1".to_string()]));
        let still_blocked = apply(kept.clone(), &fallback);
        let ledger = Ledger::from_comment("alice", still_blocked.ledger_comment.as_deref()).unwrap();
        assert_eq!(ledger.blocked_drop, Some(mode), "a retry that is blocked again keeps the record");
        // A new session clears it: its own last end decides again.
        let reopened = started(kept, &start("s2", &["reader"], mode));
        let ledger = Ledger::from_comment("alice", reopened.ledger_comment.as_deref()).unwrap();
        assert_eq!(ledger.blocked_drop, None);
        let EndDecision::Deactivate { steps, .. } =
            plan_end(&end("s2"), &started(fresh_server(), &start("s2", &["reader"], CreateDbUserMode::Keep))).unwrap()
        else {
            panic!("keep")
        };
        let locked = apply(started(fresh_server(), &start("s2", &["reader"], CreateDbUserMode::Keep)), &steps);
        assert_eq!(plan_retry_drop(&end(""), &locked).unwrap(), None, "keep never retries a drop");
    }

    #[test]
    fn the_reaper_locks_only_managed_users_of_ours_without_sessions() {
        let t = target("s1");
        let stray = ObservedState {
            user_exists: true,
            user_can_login: true,
            member_of: set(&["grp", "reader"]),
            ledger_comment: Some(Ledger::default().to_comment()),
            ..fresh_server()
        };
        let not_ours = ObservedState { ledger_comment: Some("provisioned by Teleport".into()), ..stray.clone() };
        assert_eq!(plan_lock(&t, &not_ours).unwrap(), None, "no ledger of ours");
        assert_eq!(plan_lock(&t, &ObservedState { ledger_comment: None, ..stray.clone() }).unwrap(), None);
        let steps = plan_lock(&t, &stray).unwrap().expect("a lock");
        let locked = apply(stray.clone(), &steps);
        assert!(!locked.user_can_login);
        assert_eq!(locked.member_of, set(&["grp"]));
        assert_eq!(plan_lock(&t, &locked).unwrap(), None, "already locked");
        let unmanaged = ObservedState { member_of: set(&["reader"]), ..stray.clone() };
        assert_eq!(plan_lock(&t, &unmanaged).unwrap(), None);
        let in_use = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        assert_eq!(plan_lock(&t, &in_use).unwrap(), None, "a session is open");
    }
}
