//! The hand-over of a dropped user's objects to the object inheritor
//! (`best_effort_reassign_and_drop`): the inheritor's creation, and the steps in each database.

use crate::request::Target;

use super::{run_as_creator, ObservedState, Step};

/// The steps that hand the objects of a user whose drop is planned to `inheritor`, in one
/// database: the admin takes the user's privileges (`REASSIGN OWNED` and `DROP OWNED` need
/// them; PostgreSQL 16+ gives a role's creator only ADMIN OPTION on it), disarms what the
/// user owns ([`Step::DisarmOwned`]: nothing handed over runs as the inheritor or lends its
/// rights), reassigns, and revokes what is left. In a database other than the end's own (`elsewhere`), the admin gives
/// the membership back before that transaction commits; in the end's own, the drop removes it.
pub fn hand_over_objects(t: &Target, state: &ObservedState, inheritor: &str, elsewhere: bool) -> Vec<Step> {
    let user = &t.db_user;
    let mut steps = vec![
        Step::GrantRoles { roles: vec![user.clone()], user: t.admin.clone() },
        Step::DisarmOwned { user: user.clone() },
        Step::ReassignOwned { user: user.clone(), inheritor: inheritor.to_string() },
        Step::DropOwned { user: user.clone() },
    ];
    if elsewhere {
        steps.push(Step::RevokeRoles { roles: vec![user.clone()], user: t.admin.clone() });
    }
    run_as_creator(steps, t, state)
}

/// Creates the object inheritor, `NOLOGIN`, and gives the admin its privileges, which
/// `REASSIGN OWNED` needs: run in a transaction of its own, so that every database sees it.
pub fn create_object_inheritor(t: &Target, inheritor: &str) -> Vec<Step> {
    vec![
        Step::CreateGroup { group: inheritor.to_string() },
        Step::GrantRoles { roles: vec![inheritor.to_string()], user: t.admin.clone() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::plan::*;
    use crate::policy::CreateDbUserMode;

    /// The disarming runs once the admin holds the user's privileges (which altering and
    /// revoking as the owner need) and before `REASSIGN OWNED`, while the objects are still
    /// the user's and so told apart from what the inheritor already owns.
    #[test]
    fn a_hand_over_disarms_the_users_objects_as_the_admin_between_taking_its_privileges_and_reassigning() {
        let state = started(fresh_server(), &start("s1", &["writer"], CreateDbUserMode::BestEffortReassignAndDrop));
        let t = target("s1");
        let take = Step::GrantRoles { roles: vec!["alice".into()], user: "teleport-admin".into() };
        let disarm = Step::DisarmOwned { user: "alice".into() };
        let reassign = Step::ReassignOwned { user: "alice".into(), inheritor: "heir".into() };
        let drop_owned = Step::DropOwned { user: "alice".into() };
        assert_eq!(
            hand_over_objects(&t, &state, "heir", false),
            vec![take.clone(), disarm.clone(), reassign.clone(), drop_owned.clone()]
        );
        let give_back = Step::RevokeRoles { roles: vec!["alice".into()], user: "teleport-admin".into() };
        assert_eq!(hand_over_objects(&t, &state, "heir", true), vec![take, disarm, reassign, drop_owned, give_back]);

        // With a creator, the creator grants the user's privileges; the disarming, like the
        // reassignment, is the admin's.
        let state = started(
            with_creator(fresh_server()),
            &start("s1", &["writer"], CreateDbUserMode::BestEffortReassignAndDrop),
        );
        for elsewhere in [false, true] {
            let steps = hand_over_objects(&t, &state, "heir", elsewhere);
            let mut as_creator = false;
            let mut seen = Vec::new();
            for step in &steps {
                match step {
                    Step::SetRole { role } => as_creator = role.is_some(),
                    Step::GrantRoles { .. } => seen.push(("take", as_creator)),
                    Step::DisarmOwned { user } => {
                        assert_eq!(user, "alice");
                        seen.push(("disarm", as_creator))
                    }
                    Step::ReassignOwned { .. } => seen.push(("reassign", as_creator)),
                    Step::DropOwned { .. } => seen.push(("drop owned", as_creator)),
                    _ => {}
                }
            }
            assert_eq!(
                seen,
                vec![("take", true), ("disarm", false), ("reassign", false), ("drop owned", false)],
                "{steps:?}"
            );
            assert_eq!(steps.iter().filter(|step| matches!(step, Step::DisarmOwned { .. })).count(), 1);
        }
    }

    /// An end that drops without handing over (`best_effort_drop`) disarms nothing: the drop
    /// fails on the objects instead, and the user is kept.
    #[test]
    fn only_a_hand_over_disarms() {
        for mode in
            [CreateDbUserMode::Keep, CreateDbUserMode::BestEffortDrop, CreateDbUserMode::BestEffortReassignAndDrop]
        {
            let state = started(fresh_server(), &start("s1", &["writer"], mode));
            let steps: Vec<Step> = match plan_end(&end("s1"), &state).unwrap() {
                EndDecision::Deactivate { steps, .. } => steps,
                EndDecision::Drop { before_drop, drop, after_drop, fallback, .. } => {
                    [before_drop, drop, after_drop, fallback].concat()
                }
                other => panic!("{other:?}"),
            };
            assert!(!steps.iter().any(|step| matches!(step, Step::DisarmOwned { .. })), "{mode:?}: {steps:?}");
        }
    }
}
