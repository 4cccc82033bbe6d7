//! `run_as_creator`: places a list's role statements under the user's creator role
//! (`creator_roles`, PostgreSQL 16+), and the rest under the admin.

use std::collections::BTreeSet;

use crate::request::Target;

use super::{ObservedState, Step};

/// One `REVOKE` of the user's `roles` as up to two statements: those `by_creator` picks, run
/// as the creator, then the others, run as the admin.
fn split_by_runner(
    split: &mut Vec<(Runner, Step)>,
    roles: Vec<String>,
    by_creator: impl Fn(&str) -> bool,
    statement: impl Fn(Vec<String>) -> Step,
) {
    let (creators, admins): (Vec<String>, Vec<String>) = roles.into_iter().partition(|role| by_creator(role));
    for (runs, roles) in [(Runner::Creator, creators), (Runner::Admin, admins)] {
        if !roles.is_empty() {
            split.push((runs, statement(roles)));
        }
    }
}

/// Who runs a step of a user that has a creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    Admin,
    Creator,
    /// Needs no privilege on roles: runs as whoever runs the step before it.
    Either,
}

fn runner(step: &Step) -> Runner {
    match step {
        Step::CreateUser { .. }
        | Step::SetLogin { .. }
        | Step::ClearPassword { .. }
        | Step::ResetSettings { .. }
        | Step::WriteLedger { .. }
        | Step::DropUser { .. }
        | Step::ReserveName { .. }
        | Step::RecordEnded { .. }
        | Step::GrantRoles { .. }
        | Step::RevokeRoles { .. } => Runner::Creator,
        Step::Guard { .. } | Step::RefuseIfEnded { .. } => Runner::Either,
        // The group and the inheritor are the admin's; objects are granted with the admin's
        // grant options; `REASSIGN OWNED` needs the admin's privileges of both roles.
        Step::CreateGroup { .. }
        | Step::DisarmOwned { .. }
        | Step::ReassignOwned { .. }
        | Step::DropOwned { .. }
        | Step::GrantObjects { .. }
        | Step::RevokeObjects { .. }
        | Step::GrantSchemaUsage { .. }
        | Step::RevokeSchemaUsage { .. }
        | Step::SetRole { .. }
        | Step::PrepareCreator { .. } => Runner::Admin,
    }
}

/// Runs the role statements of `steps` as the user's creator, when it has one: the user was
/// created by it, or is about to be. PostgreSQL 16+ checks a role statement of a CREATEROLE
/// role by walking every membership of that role, and its creator is a member (WITH ADMIN
/// OPTION) of every role it created: run as the admin, each statement's cost grows with all
/// the users; run as a creator among `creator_roles`, with its share of them.
///
/// Adds [`Step::SetRole`] where the runner changes, and [`Step::PrepareCreator`] before the
/// first statement of the creator unless [`ObservedState::creator_ready`]. The list starts and
/// ends as the admin, so lists compose (and a savepoint between them rolls back to the admin).
/// A `REVOKE` of the user's roles is split: what the creator granted it revokes, the rest
/// (granted by the admin) the admin does. A user the admin created keeps being the admin's:
/// `steps` come back unchanged, as they do without a creator.
pub fn run_as_creator(steps: Vec<Step>, t: &Target, state: &ObservedState) -> Vec<Step> {
    let Some(creator) = &state.creator else {
        return steps;
    };
    if state.user_exists && !state.creator_admins_user {
        return steps;
    }
    // No user and none to create (an end that only records its session as ended): the creator
    // is not needed, and preparing one here would take the group's lock before the ended
    // sessions' (RecordEnded takes them the other way round), which deadlocks with another end.
    let creates_user = steps.iter().any(|step| matches!(step, Step::CreateUser { .. }));
    if !state.user_exists && !creates_user && !state.creator_ready {
        return steps;
    }
    let mut split = Vec::with_capacity(steps.len());
    for step in steps {
        match step {
            Step::RevokeRoles { roles, user } if user == t.db_user => split_by_runner(
                &mut split,
                roles,
                |role| state.creator_grants.contains(role),
                |roles| Step::RevokeRoles { roles, user: user.clone() },
            ),
            step => split.push((runner(&step), step)),
        }
    }
    let mut prepare = (!state.creator_ready).then(|| {
        let mut roles: BTreeSet<String> = BTreeSet::from([t.managed_group.clone()]);
        for (_, step) in &split {
            if let Step::GrantRoles { roles: granted, user } = step {
                if *user == t.db_user {
                    roles.extend(granted.iter().cloned());
                }
            }
        }
        Step::PrepareCreator {
            creator: creator.clone(),
            roles: roles.into_iter().collect(),
            schema: t.managed_group.clone(),
        }
    });
    let mut as_creator = false;
    let mut out = Vec::with_capacity(split.len() + 4);
    for (runs, step) in split {
        match runs {
            Runner::Creator if !as_creator => {
                out.extend(prepare.take());
                out.push(Step::SetRole { role: Some(creator.clone()) });
                as_creator = true;
            }
            Runner::Admin if as_creator => {
                out.push(Step::SetRole { role: None });
                as_creator = false;
            }
            _ => {}
        }
        out.push(step);
    }
    if as_creator {
        out.push(Step::SetRole { role: None });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::plan::test_support::*;
    use crate::plan::*;
    use crate::policy::CreateDbUserMode;

    #[test]
    fn with_a_creator_the_users_role_statements_run_as_it_and_the_rest_as_the_admin() {
        let req = start("s1", &["reader"], CreateDbUserMode::Keep);
        let StartDecision::Apply { steps, .. } = plan_start(&req, &with_creator(fresh_server()), 10).unwrap() else {
            panic!("expected a plan")
        };
        let creator = Some("grp-creator-1".to_string());
        assert_eq!(steps[0], Step::CreateGroup { group: "grp".into() });
        // The group is new: the creator gets ADMIN OPTION on it, and on the granted role.
        assert_eq!(
            steps[1],
            Step::PrepareCreator {
                creator: "grp-creator-1".into(),
                roles: vec!["grp".into(), "reader".into()],
                schema: "grp".into()
            }
        );
        assert_eq!(steps[2], Step::SetRole { role: creator.clone() });
        assert_eq!(steps[3], Step::CreateUser { user: "alice".into() });
        assert_eq!(steps.last(), Some(&Step::SetRole { role: None }));
        let state = apply(with_creator(fresh_server()), &steps);
        assert!(state.creator_admins_user && state.creator_ready);
        assert_eq!(state.creator_grants, set(&["grp", "reader"]));

        // Ready now: no preparation; the end locks and revokes as the creator.
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &state).unwrap() else {
            panic!("expected keep")
        };
        assert_eq!(steps[0], Step::SetRole { role: creator.clone() });
        assert!(!steps.iter().any(|step| matches!(step, Step::PrepareCreator { .. })), "{steps:?}");
        let state = apply(state, &steps);
        assert_eq!(state.member_of, set(&["grp"]));
        assert!(!state.user_can_login);

        // A drop, and the end's record of it in the group's comment, run as the creator.
        let state = started(state, &start("s2", &["reader"], CreateDbUserMode::BestEffortDrop));
        let EndDecision::Drop { before_drop, drop, after_drop, fallback, .. } = plan_end(&end("s2"), &state).unwrap()
        else {
            panic!("expected a drop")
        };
        for list in [&before_drop, &drop, &after_drop, &fallback] {
            assert_eq!(list.first(), Some(&Step::SetRole { role: creator.clone() }), "{list:?}");
            assert_eq!(list.last(), Some(&Step::SetRole { role: None }), "{list:?}");
        }
        let dropped = apply(apply(apply(state.clone(), &before_drop), &drop), &after_drop);
        assert!(!dropped.user_exists);
        let kept = apply(apply(state, &before_drop), &fallback);
        assert_eq!(kept.member_of, set(&["grp"]));
    }

    #[test]
    fn with_a_creator_a_revoke_is_split_by_who_granted_it() {
        // The creator granted reader; writer was granted as the admin (by an operator, say).
        let mut state = started(with_creator(fresh_server()), &start("s1", &["reader"], CreateDbUserMode::Keep));
        state.member_of.insert("writer".into());
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &state).unwrap() else {
            panic!("expected keep")
        };
        let mut as_creator = false;
        let mut revokes = Vec::new();
        for step in &steps {
            match step {
                Step::SetRole { role } => as_creator = role.is_some(),
                Step::RevokeRoles { roles, .. } => revokes.push((roles, as_creator)),
                _ => {}
            }
        }
        assert_eq!(revokes, vec![(&vec!["reader".to_string()], true), (&vec!["writer".to_string()], false)]);
        let state = apply(state, &steps);
        assert_eq!(state.member_of, set(&["grp"]));
    }

    #[test]
    fn a_user_the_admin_created_stays_the_admins_with_a_creator_configured() {
        // Created before creator_roles was set: the creator holds no ADMIN OPTION on it.
        let legacy = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let legacy = ObservedState { creator_ready: true, ..with_creator(legacy) };
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &legacy).unwrap() else {
            panic!("expected keep")
        };
        assert!(
            !steps.iter().any(|step| matches!(step, Step::SetRole { .. } | Step::PrepareCreator { .. })),
            "{steps:?}"
        );
        let state = apply(legacy, &steps);
        let StartDecision::Apply { steps, .. } =
            plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 20).unwrap()
        else {
            panic!("expected a plan")
        };
        assert!(!steps.iter().any(|step| matches!(step, Step::SetRole { .. })), "{steps:?}");
    }
}
