//! End planning: `plan_end` records a session's end in the user's ledger (or, without a user, in
//! the managed group's comment), revokes its object privileges, and keeps or drops the user
//! when its last session ends.

use crate::ledger::Ledger;
use crate::permissions::{self, KeptPrivileges, PermissionSummary};
use crate::policy::CreateDbUserMode;
use crate::refusal::Refusal;
use crate::request::{EndRequest, Target};

use super::{lock_and_guard, object_steps, run_as_creator, write_ledger, ObservedState, Step};

/// What an end does about object privileges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectCleanup {
    /// Revoked in the connected database: its last session that had them ended.
    pub revoked: Vec<PermissionSummary>,
    /// Other databases where the ledger says privileges may remain with no session left to
    /// need them (the end ran elsewhere): the outcome's reason says how to revoke them.
    pub left_in: Vec<String>,
    /// What the user keeps in the connected database because the admin cannot revoke it.
    pub kept: KeptPrivileges,
}

/// The reason of an end that finds its session ended already (a duplicate, or a rerun of an
/// end whose COMMIT was applied).
pub const ALREADY_ENDED: &str = "the session has already ended";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndDecision {
    Noop {
        reason: &'static str,
    },
    /// The session is unknown: its end is recorded (in the user's ledger, or in the managed
    /// group's comment when the user does not exist), so that its start, delivered later, is
    /// refused. Nothing else changes.
    RecordEarly {
        steps: Vec<Step>,
        reason: &'static str,
        open_sessions: usize,
    },
    /// Other sessions remain: only the ledger changes.
    InUse {
        steps: Vec<Step>,
        ledger: Ledger,
        mode: CreateDbUserMode,
        objects: ObjectCleanup,
    },
    /// Last session, `keep`: strip roles, NOLOGIN.
    Deactivate {
        steps: Vec<Step>,
        mode: CreateDbUserMode,
        objects: ObjectCleanup,
    },
    /// Last session, `best_effort_drop`: run `before_drop`, then drop the user, then
    /// `after_drop` (which records its ended sessions in the managed group's comment); if
    /// objects depend on it, roll back to before the drop and run `fallback` (the `keep`
    /// changes).
    ///
    /// `best_effort_reassign_and_drop` (`reassign_to` is the object inheritor): before the
    /// drop, the user's objects are handed to the inheritor in every database that holds any
    /// (`REASSIGN OWNED`, `DROP OWNED`); a step that cannot run leads to `fallback` too.
    Drop {
        mode: CreateDbUserMode,
        reassign_to: Option<String>,
        before_drop: Vec<Step>,
        /// `DROP ROLE`, as whoever manages the user ([`run_as_creator`]).
        drop: Vec<Step>,
        after_drop: Vec<Step>,
        fallback: Vec<Step>,
        objects: ObjectCleanup,
    },
}

/// At an end (after the ledger records it): revoke the object privileges of the connected
/// database if no open session there needs them any more, and name the other databases that
/// may still hold some. The database stays in the ledger while the user keeps privileges
/// there that the admin cannot revoke, so later starts and ends there report them again.
fn object_cleanup(user: &str, ledger: &mut Ledger, state: &ObservedState) -> (Vec<Step>, ObjectCleanup) {
    let needed =
        |ledger: &Ledger, db: &str| ledger.sessions.values().any(|s| s.db_name == db && s.db_permissions.is_some());
    let mut cleanup = ObjectCleanup::default();
    let mut steps = Vec::new();
    let connected = state.objects.as_ref().map(|objects| objects.database.as_str());
    if let Some(objects) = &state.objects {
        if ledger.object_databases.contains(&objects.database) && !needed(ledger, &objects.database) {
            let mut changes = permissions::revoke_all(objects);
            cleanup.revoked = changes.summary.clone();
            cleanup.kept = std::mem::take(&mut changes.kept);
            steps = object_steps(user, changes);
            if cleanup.kept.is_empty() {
                ledger.object_databases.remove(&objects.database);
            }
        }
    }
    cleanup.left_in = ledger
        .object_databases
        .iter()
        .filter(|db| !needed(ledger, db) && Some(db.as_str()) != connected)
        .cloned()
        .collect();
    (steps, cleanup)
}

pub fn plan_end(req: &EndRequest, state: &ObservedState) -> Result<EndDecision, Refusal> {
    let t: &Target = &req.target;
    let user = &t.db_user;
    let already_ended = EndDecision::Noop { reason: ALREADY_ENDED };
    let read_only = || Err(Refusal::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    if !state.user_exists {
        if state.session_ended_in_group {
            return Ok(already_ended);
        }
        if state.read_only {
            return read_only();
        }
        // An end before its start (delivery has no order): remember it where the start will
        // look, holding the name so that a start creating the user meanwhile waits for us.
        let mut steps = Vec::new();
        if !state.group_exists {
            steps.push(Step::CreateGroup { group: t.managed_group.clone() });
        }
        steps.push(Step::ReserveName { user: user.clone() });
        steps.push(record_ended(req, vec![t.session_id.clone()]));
        return Ok(EndDecision::RecordEarly {
            steps: run_as_creator(steps, t, state),
            reason: "the database user does not exist: the end is recorded, so that a start of this session \
                     delivered later is refused",
            open_sessions: 0,
        });
    }
    if !state.member_of.contains(&t.managed_group) {
        return Ok(EndDecision::Noop {
            reason: "the database user is not in the managed group, so it is not ours to touch",
        });
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    let Some(record) = ledger.sessions.get(&t.session_id).cloned() else {
        if ledger.was_ended(&t.session_id) || state.session_ended_in_group {
            return Ok(already_ended);
        }
        if state.read_only {
            return read_only();
        }
        ledger.record_end(&t.session_id);
        ledger.revision += 1;
        let mut steps = lock_and_guard(user, state.user_can_login, state, &mut ledger);
        steps.push(write_ledger(user, &ledger));
        return Ok(EndDecision::RecordEarly {
            steps: run_as_creator(steps, t, state),
            reason: "the session is unknown: its end is recorded, so that a start of it delivered later is refused",
            open_sessions: ledger.sessions.len(),
        });
    };
    if state.read_only {
        return read_only();
    }
    ledger.record_end(&t.session_id);
    ledger.revision += 1;
    let (revoke_objects, objects) = object_cleanup(user, &mut ledger, state);

    if !ledger.sessions.is_empty() {
        let mut steps = lock_and_guard(user, true, state, &mut ledger);
        steps.push(write_ledger(user, &ledger));
        steps.extend(revoke_objects);
        let steps = run_as_creator(steps, t, state);
        return Ok(EndDecision::InUse { steps, ledger, mode: record.mode, objects });
    }
    // Object privileges go before the drop: they are dependencies that would block it.
    let mut before = lock_and_guard(user, false, state, &mut ledger);
    before.extend(revoke_objects);
    Ok(match record.mode {
        mode @ (CreateDbUserMode::BestEffortDrop | CreateDbUserMode::BestEffortReassignAndDrop) => {
            drop_decision(req, state, mode, before, ledger, objects)
        }
        mode => {
            let keep = keep_steps(t, state, &ledger);
            let steps = run_as_creator(before.into_iter().chain(keep).collect(), t, state);
            EndDecision::Deactivate { steps, mode, objects }
        }
    })
}

/// A drop in `mode`, after `before` (the lock, the object revokes); its fallback is `keep`,
/// with the ledger recording the blocked drop, for the reaper's `retry_blocked_drops`.
pub(super) fn drop_decision(
    req: &EndRequest,
    state: &ObservedState,
    mode: CreateDbUserMode,
    before: Vec<Step>,
    ledger: Ledger,
    objects: ObjectCleanup,
) -> EndDecision {
    let blocked = Ledger { blocked_drop: Some(mode), ..ledger.clone() };
    let t = &req.target;
    EndDecision::Drop {
        mode,
        reassign_to: (mode == CreateDbUserMode::BestEffortReassignAndDrop).then(|| req.object_inheritor.clone()),
        before_drop: run_as_creator(before, t, state),
        drop: run_as_creator(vec![Step::DropUser { user: t.db_user.clone() }], t, state),
        // The user's ledger goes with it: its ended sessions move to the group's comment.
        after_drop: run_as_creator(vec![record_ended(req, ledger.ended)], t, state),
        fallback: run_as_creator(keep_steps(t, state, &blocked), t, state),
        objects,
    }
}

/// What `keep` changes once the user is NOLOGIN: the ledger (written before the revokes: see
/// plan_start), then every role but the managed group revoked.
fn keep_steps(t: &Target, state: &ObservedState, ledger: &Ledger) -> Vec<Step> {
    let mut keep = vec![write_ledger(&t.db_user, ledger)];
    let held: Vec<String> = state.member_of.iter().filter(|r| **r != t.managed_group).cloned().collect();
    if !held.is_empty() {
        keep.push(Step::RevokeRoles { roles: held, user: t.db_user.clone() });
    }
    keep
}

/// The record, in the managed group's comment, of an end that was delivered but could not
/// finish (the user's connections held it up): no start opens the session again, and the
/// reaper closes it.
pub fn record_unfinished_end(req: &EndRequest) -> Step {
    record_ended(req, vec![req.target.session_id.clone()])
}

fn record_ended(req: &EndRequest, sessions: Vec<String>) -> Step {
    Step::RecordEnded {
        group: req.target.managed_group.clone(),
        user: req.target.db_user.clone(),
        sessions,
        window_secs: req.redelivery_window_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::plan::*;

    #[test]
    fn end_of_one_of_two_sessions_keeps_the_user_usable() {
        let req1 = start("s1", &["reader"], CreateDbUserMode::Keep);
        let state = started(started(fresh_server(), &req1), &start("s2", &["reader"], CreateDbUserMode::Keep));
        let EndDecision::InUse { steps, ledger, .. } = plan_end(&end("s1"), &state).unwrap() else {
            panic!("expected in use")
        };
        assert_eq!(ledger.sessions.len(), 1);
        let state = apply(state, &steps);
        assert!(state.user_can_login);
        assert_eq!(state.member_of, set(&["grp", "reader"]));
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s2"), &state).unwrap() else {
            panic!("expected keep")
        };
        let state = apply(state, &steps);
        assert!(!state.user_can_login);
        assert_eq!(state.member_of, set(&["grp"]));
    }

    #[test]
    fn end_applies_the_mode_recorded_at_start() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::BestEffortDrop));
        assert!(matches!(plan_end(&end("s1"), &state).unwrap(), EndDecision::Drop { reassign_to: None, .. }));
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::BestEffortReassignAndDrop));
        let EndDecision::Drop { mode, reassign_to, .. } = plan_end(&end("s1"), &state).unwrap() else {
            panic!("expected a drop")
        };
        assert_eq!((mode, reassign_to.as_deref()), (CreateDbUserMode::BestEffortReassignAndDrop, Some("inheritor")));
    }

    #[test]
    fn duplicate_or_unknown_end_is_a_noop_and_late_start_is_refused() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        let state = apply(state, &steps);
        assert!(matches!(plan_end(&end("s1"), &state).unwrap(), EndDecision::Noop { .. }));
        let err = plan_start(&start("s1", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::SessionAlreadyEnded { .. }));
    }

    #[test]
    fn an_end_before_its_start_is_recorded_in_the_ledger_and_the_start_refused() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let EndDecision::RecordEarly { steps, open_sessions, .. } = plan_end(&end("s2"), &state).unwrap() else {
            panic!("expected the early end to be recorded")
        };
        assert_eq!(open_sessions, 1);
        assert!(matches!(steps[0], Step::SetLogin { login: true, .. }), "{steps:?}");
        assert!(matches!(steps[1], Step::Guard { .. }), "{steps:?}");
        let state = apply(state, &steps);
        assert!(state.user_can_login, "s1 is still open");
        assert!(matches!(plan_end(&end("s2"), &state).unwrap(), EndDecision::Noop { .. }), "a duplicate end");
        let err = plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::SessionAlreadyEnded { .. }), "{err:?}");
    }

    #[test]
    fn an_end_before_its_users_first_start_is_recorded_in_the_group_and_the_start_refused() {
        let EndDecision::RecordEarly { steps, .. } = plan_end(&end("s1"), &fresh_server()).unwrap() else {
            panic!("expected the early end to be recorded")
        };
        assert_eq!(steps[0], Step::CreateGroup { group: "grp".into() });
        assert_eq!(steps[1], Step::ReserveName { user: "alice".into() });
        assert_eq!(
            steps[2],
            Step::RecordEnded {
                group: "grp".into(),
                user: "alice".into(),
                sessions: vec!["s1".into()],
                window_secs: 86400
            }
        );
        let state = apply(fresh_server(), &steps);
        assert!(matches!(plan_end(&end("s1"), &state).unwrap(), EndDecision::Noop { .. }), "a duplicate end");
        let err = plan_start(&start("s1", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::SessionAlreadyEnded { .. }), "{err:?}");
        let read_only = ObservedState { read_only: true, ..fresh_server() };
        assert!(matches!(plan_end(&end("s1"), &read_only), Err(Refusal::ReadOnlyEndpoint { .. })));
    }

    #[test]
    fn a_drop_moves_the_users_ended_sessions_to_the_group() {
        let state = started(fresh_server(), &start("s0", &["reader"], CreateDbUserMode::Keep));
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s0"), &state).unwrap() else { panic!() };
        let state = started(apply(state, &steps), &start("s1", &["reader"], CreateDbUserMode::BestEffortDrop));
        let EndDecision::Drop { after_drop, fallback, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        assert_eq!(
            after_drop,
            [Step::RecordEnded {
                group: "grp".into(),
                user: "alice".into(),
                sessions: vec!["s0".into(), "s1".into()],
                window_secs: 86400
            }]
        );
        let kept = apply(state, &fallback);
        let ledger = Ledger::from_comment("alice", kept.ledger_comment.as_deref()).unwrap();
        assert!(ledger.was_ended("s1"), "the fallback's own ledger records the end: {ledger:?}");
    }

    #[test]
    fn the_last_end_on_a_database_revokes_there_even_when_other_sessions_remain() {
        let mut s1 = start("s1", &[], CreateDbUserMode::Keep);
        s1.db_permissions = Some(object_rules("SELECT"));
        let state = started(with_objects("app"), &s1);
        // s2 runs on another database, through another connection: only the ledger is shared.
        let mut s2 = start("s2", &[], CreateDbUserMode::Keep);
        s2.target.db_name = "analytics".into();
        s2.db_permissions = Some(object_rules("SELECT"));
        let in_analytics = ObservedState {
            objects: Some(ObjectState { database: "analytics".into(), ..ObjectState::default() }),
            ..state.clone()
        };
        let state = ObservedState { ledger_comment: started(in_analytics, &s2).ledger_comment, ..state };
        let EndDecision::InUse { steps, ledger, objects, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        assert_eq!(ledger.object_databases, set(&["analytics"]));
        assert_eq!(objects.revoked[0].objects, 1);
        assert!(objects.left_in.is_empty(), "analytics still has a session: {objects:?}");
        let state = apply(state, &steps);
        assert!(held(&state).iter().all(|(_, held)| held.is_empty()));
        assert!(!state.objects.as_ref().unwrap().schemas[0].user_has_usage);
        assert!(state.user_can_login);

        // The last session ends connected to `app`: analytics is named as left behind.
        let EndDecision::Deactivate { objects, .. } = plan_end(&end("s2"), &state).unwrap() else { panic!() };
        assert_eq!(objects.left_in, ["analytics"]);
    }

    #[test]
    fn a_drop_revokes_object_privileges_before_dropping() {
        let mut s1 = start("s1", &[], CreateDbUserMode::BestEffortDrop);
        s1.db_permissions = Some(object_rules("SELECT"));
        let state = started(with_objects("app"), &s1);
        let EndDecision::Drop { before_drop, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        assert!(matches!(before_drop.last(), Some(Step::RevokeSchemaUsage { .. })), "{before_drop:?}");
        assert!(before_drop.iter().any(|s| matches!(s, Step::RevokeObjects { batch, .. } if batch.privilege == "ALL")));
    }

    #[test]
    fn object_privileges_are_revoked_where_the_ledger_says_whatever_the_policy_says() {
        let mut s1 = start("s1", &[], CreateDbUserMode::Keep);
        s1.db_permissions = Some(object_rules("SELECT"));
        let granted = started(with_objects("app"), &s1);
        assert!(held(&granted).iter().any(|(_, held)| !held.is_empty()));

        // The end of a session whose rules have left the policy.
        let EndDecision::Deactivate { steps, objects, .. } = plan_end(&end("s1"), &granted).unwrap() else { panic!() };
        assert_eq!(objects.revoked.len(), 1, "{objects:?}");
        let ended = apply(granted.clone(), &steps);
        assert!(held(&ended).iter().all(|(_, held)| held.is_empty()));
        let ledger = Ledger::from_comment("alice", ended.ledger_comment.as_deref()).unwrap();
        assert!(ledger.object_databases.is_empty());

        // A start without rules, after an end that could not revoke: it revokes first.
        let mut unrevoked = granted.clone();
        let mut ledger = Ledger::from_comment("alice", granted.ledger_comment.as_deref()).unwrap();
        ledger.record_end("s1");
        unrevoked.ledger_comment = Some(ledger.to_comment());
        unrevoked.user_can_login = false;
        let StartDecision::Apply { steps, ledger, db_permissions, .. } =
            plan_start(&start("s2", &[], CreateDbUserMode::Keep), &unrevoked, 0).unwrap()
        else {
            panic!()
        };
        assert!(db_permissions.is_empty());
        assert!(ledger.object_databases.is_empty());
        let restarted = apply(unrevoked, &steps);
        assert!(restarted.user_can_login);
        assert!(held(&restarted).iter().all(|(_, held)| held.is_empty()));
        assert!(!restarted.objects.as_ref().unwrap().schemas[0].user_has_usage);
    }

    #[test]
    fn an_end_keeps_the_database_in_the_ledger_while_privileges_it_cannot_revoke_remain() {
        let mut s1 = start("s1", &[], CreateDbUserMode::Keep);
        s1.db_permissions = Some(object_rules("SELECT"));
        let mut state = started(with_objects("app"), &s1);
        let secret = &mut state.objects.as_mut().unwrap().objects[1];
        secret.held.insert("UPDATE".into());
        secret.admin_may_revoke = false;
        secret.kept.insert(("UPDATE".into(), "owner".into()));
        let EndDecision::Deactivate { steps, objects, .. } = plan_end(&end("s1"), &state).unwrap() else { panic!() };
        assert!(steps.iter().any(|s| matches!(s, Step::SetLogin { login: false, .. })));
        assert_eq!(objects.kept.objects.len(), 1);
        assert!(objects.left_in.is_empty(), "the connected database is reported as kept, not left: {objects:?}");
        let ended = apply(state, &steps);
        assert_eq!(held(&ended), [("orders".into(), set(&[])), ("secret".into(), set(&["UPDATE"]))]);
        let ledger = Ledger::from_comment("alice", ended.ledger_comment.as_deref()).unwrap();
        assert_eq!(ledger.object_databases, set(&["app"]));
    }
}
