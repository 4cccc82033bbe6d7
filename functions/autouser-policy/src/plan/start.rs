//! Start planning: `plan_start` checks a session start against the user's ledger, its roles and
//! what the catalog holds, and orders the steps that create or unlock the user.

use std::collections::BTreeSet;

use crate::ledger::{Ledger, SessionRecord};
use crate::permissions::{self, PermissionSummary, Ungrantable};
use crate::refusal::Refusal;
use crate::request::{StartRequest, Target};

use super::{
    db_role_refusal, lock_and_guard, object_steps, run_as_creator, write_ledger, ObservedState, RoleGuard, Step,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// The session is already open and the user is as it should be: change nothing.
    AlreadyActive { ledger: Ledger, db_permissions: Vec<PermissionSummary> },
    Apply {
        steps: Vec<Step>,
        ledger: Ledger,
        created_user: bool,
        /// The object permissions the session holds once the steps ran.
        db_permissions: Vec<PermissionSummary>,
    },
}

pub fn plan_start(req: &StartRequest, state: &ObservedState, now: u64) -> Result<StartDecision, Refusal> {
    let t = &req.target;
    if state.user_exists && !state.member_of.contains(&t.managed_group) {
        return Err(Refusal::UserConflict { user: t.db_user.clone(), group: t.managed_group.clone() });
    }
    let mut ledger = Ledger::from_comment(&t.db_user, state.ledger_comment.as_deref())?;
    match &ledger.identity {
        Some(owner) if *owner != req.identity => {
            return Err(Refusal::IdentityConflict {
                user: t.db_user.clone(),
                owner: Box::new(owner.clone()),
                requested: Box::new(req.identity.clone()),
            });
        }
        Some(_) => {}
        // A new user, or a ledger an earlier release wrote: the identity starting it owns it.
        None => ledger.identity = Some(req.identity.clone()),
    }
    let wanted: BTreeSet<String> = req.db_roles.union(&req.platform_roles).cloned().collect();

    // The session's object rules, and the objects of its database to apply them to.
    let objects = match (&req.db_permissions, &state.objects) {
        (Some(rules), Some(objects)) => Some((rules, objects)),
        (Some(_), None) => unreachable!("the engine lists the objects of a session with db_permissions"),
        (None, _) => None,
    };
    // Privileges an earlier session was granted here that no end revoked (the policy lost its
    // db_permissions, say): this session has no rules, so they all go before it unlocks.
    let granted_before = match (&req.db_permissions, &state.objects) {
        (None, Some(objects)) if ledger.object_databases.contains(&objects.database) => Some(objects),
        _ => None,
    };
    let fingerprint = objects.map(|(rules, _)| rules.fingerprint());
    // The group's comment lists a session still open in the ledger when its end was delivered
    // and could not finish (the reaper closes it): it is over all the same.
    if state.session_ended_in_group {
        return Err(Refusal::SessionAlreadyEnded { session_id: t.session_id.clone(), user: t.db_user.clone() });
    }
    if let Some(record) = ledger.sessions.get(&t.session_id) {
        let mut held = record.db_roles.union(&req.platform_roles).cloned().collect::<BTreeSet<_>>();
        held.insert(t.managed_group.clone());
        if state.user_can_login && state.member_of == held {
            // What the session's rules give that the user has, directly or through PUBLIC or
            // its roles: what the start that opened the session reported.
            let db_permissions = objects.map_or_else(Vec::new, |(rules, o)| {
                let wanted = rules.evaluate(&o.database, &o.objects);
                let has: Vec<BTreeSet<String>> = o
                    .objects
                    .iter()
                    .zip(wanted)
                    .map(|(object, wanted)| {
                        wanted
                            .into_iter()
                            .filter(|p| object.held.contains(p) || object.held_otherwise.contains(p))
                            .collect()
                    })
                    .collect();
                permissions::summarize(o, &has)
            });
            return Ok(StartDecision::AlreadyActive { ledger, db_permissions });
        }
    } else if ledger.was_ended(&t.session_id) {
        return Err(Refusal::SessionAlreadyEnded { session_id: t.session_id.clone(), user: t.db_user.clone() });
    }
    if let Some(other) = ledger.sessions.iter().find(|(id, s)| **id != t.session_id && s.db_roles != req.db_roles) {
        return Err(Refusal::RolesMismatch {
            user: t.db_user.clone(),
            active: other.1.db_roles.clone(),
            requested: req.db_roles.clone(),
        });
    }
    if let Some((_, other)) = ledger
        .sessions
        .iter()
        .find(|(id, s)| **id != t.session_id && s.db_name == t.db_name && s.db_permissions != fingerprint)
    {
        return Err(Refusal::PermissionsMismatch {
            user: t.db_user.clone(),
            db_name: t.db_name.clone(),
            other_session_has_rules: other.db_permissions.is_some(),
        });
    }
    let object_changes = match objects {
        Some((rules, objects)) => {
            let wanted = rules.evaluate(&objects.database, &objects.objects);
            Some(permissions::changes(objects, &wanted).map_err(|missing| ungrantable(t, missing))?)
        }
        None => None,
    };
    for role in &wanted {
        if !state.existing_roles.contains(role) {
            return Err(Refusal::UnknownDbRole { role: role.clone(), database: t.database.clone() });
        }
        if let Some(refusal) = db_role_refusal(RoleGuard::of(req), role, &state.reached_roles) {
            return Err(refusal);
        }
    }
    let stray = |role: &String| !wanted.contains(role) && *role != t.managed_group;
    if let Some((role, grantor)) = state.foreign_grants.iter().find(|(role, _)| stray(role)) {
        return Err(Refusal::ForeignGrant { user: t.db_user.clone(), role: role.clone(), grantor: grantor.clone() });
    }
    if state.read_only {
        return Err(Refusal::ReadOnlyEndpoint { endpoint: t.endpoint.clone() });
    }

    let user = &t.db_user;
    // The user is in use again: its next last end decides about the drop afresh.
    ledger.blocked_drop = None;
    ledger.sessions.entry(t.session_id.clone()).or_insert_with(|| SessionRecord {
        mode: req.mode,
        database: t.database.clone(),
        db_name: t.db_name.clone(),
        db_roles: req.db_roles.clone(),
        started_at: now,
        db_permissions: fingerprint.clone(),
    });
    if let Some((_, objects)) = objects {
        ledger.object_databases.insert(objects.database.clone());
    }
    let revoke_granted_before = granted_before.map(|objects| {
        let changes = permissions::revoke_all(objects);
        if changes.kept.is_empty() {
            ledger.object_databases.remove(&objects.database);
        }
        changes
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
        steps.extend(lock_and_guard(user, true, state, &mut ledger));
        steps.push(write_ledger(user, &ledger));
        let strays: Vec<String> = state.member_of.iter().filter(|r| stray(r)).cloned().collect();
        if !strays.is_empty() {
            steps.push(Step::RevokeRoles { roles: strays, user: user.clone() });
        }
        let missing: Vec<String> = std::iter::once(&t.managed_group)
            .chain(&wanted)
            .filter(|role| !state.member_of.contains(*role))
            .cloned()
            .collect();
        if !missing.is_empty() {
            steps.push(Step::GrantRoles { roles: missing, user: user.clone() });
        }
    } else {
        // The same order for a new user: creating it is a membership change of the admin
        // (PostgreSQL 16+), so the ledger goes right after it, and every grant in one statement.
        steps.push(Step::CreateUser { user: user.clone() });
        steps.push(write_ledger(user, &ledger));
        let roles = std::iter::once(t.managed_group.clone()).chain(wanted.iter().cloned()).collect();
        steps.push(Step::GrantRoles { roles, user: user.clone() });
        // After the creation, which waits for an end recording this session concurrently.
        steps.push(Step::RefuseIfEnded {
            group: t.managed_group.clone(),
            user: user.clone(),
            session: t.session_id.clone(),
        });
    }
    let db_permissions = match object_changes {
        Some(changes) => {
            let summary = changes.summary.clone();
            steps.extend(object_steps(user, changes));
            summary
        }
        None => Vec::new(),
    };
    if let Some(changes) = revoke_granted_before {
        steps.extend(object_steps(user, changes));
    }
    let steps = run_as_creator(steps, t, state);
    Ok(StartDecision::Apply { steps, ledger, created_user: !state.user_exists, db_permissions })
}

fn ungrantable(t: &Target, missing: Ungrantable) -> Refusal {
    match missing {
        Ungrantable::Object(missing) => Refusal::MissingObjectGrantOption {
            admin: t.admin.clone(),
            db_name: t.db_name.clone(),
            missing: Box::new(missing),
        },
        Ungrantable::SchemaUsage { schema } => {
            Refusal::MissingSchemaGrantOption { admin: t.admin.clone(), db_name: t.db_name.clone(), schema }
        }
        Ungrantable::SchemaLookup { schema } => {
            Refusal::MissingSchemaUsage { admin: t.admin.clone(), db_name: t.db_name.clone(), schema }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::plan::*;
    use crate::policy::CreateDbUserMode;

    #[test]
    fn first_start_creates_the_group_then_the_user_then_writes_the_ledger_then_grants() {
        let req = start("s1", &["reader"], CreateDbUserMode::Keep);
        let StartDecision::Apply { steps, created_user, .. } = plan_start(&req, &fresh_server(), 10).unwrap() else {
            panic!("expected a plan")
        };
        assert!(created_user);
        assert_eq!(steps[0], Step::CreateGroup { group: "grp".into() });
        assert_eq!(steps[1], Step::CreateUser { user: "alice".into() });
        assert!(matches!(steps[2], Step::WriteLedger { .. }), "{steps:?}");
        assert_eq!(steps[3], Step::GrantRoles { roles: vec!["grp".into(), "reader".into()], user: "alice".into() });
        assert_eq!(steps[4], Step::RefuseIfEnded { group: "grp".into(), user: "alice".into(), session: "s1".into() });
        assert_eq!(steps.len(), 5, "{steps:?}");
        let state = apply(fresh_server(), &steps);
        assert_eq!(state.member_of, set(&["grp", "reader"]));
        assert!(state.user_can_login);
    }

    #[test]
    fn existing_unmanaged_role_is_a_conflict() {
        let state = ObservedState { user_exists: true, member_of: set(&["reader"]), ..fresh_server() };
        let err = plan_start(&start("s1", &[], CreateDbUserMode::Keep), &state, 10).unwrap_err();
        assert!(matches!(err, Refusal::UserConflict { .. }));
        let end = plan_end(&end("s1"), &state).unwrap();
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
        let EndDecision::Deactivate { steps, .. } = plan_end(&end("s1"), &state).unwrap() else {
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
        assert!(matches!(err, Refusal::RolesMismatch { .. }), "{err:?}");
        assert!(plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).is_ok());
    }

    #[test]
    fn a_start_of_another_identity_mapping_to_the_same_role_is_refused() {
        let state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let mut other = start("s2", &["reader"], CreateDbUserMode::Keep);
        other.identity = crate::ledger::Identity { user: "alice".into(), origin_cluster: Some("root".into()) };
        let err = plan_start(&other, &state, 0).unwrap_err();
        let Refusal::IdentityConflict { owner, requested, .. } = &err else { panic!("{err:?}") };
        assert_eq!(owner.user, "alice");
        assert_eq!(owner.origin_cluster, None);
        assert_eq!(requested.origin_cluster.as_deref(), Some("root"));
        assert_eq!(owner.to_string(), "local user \"alice\"");
        assert_eq!(requested.to_string(), "user \"alice\" of cluster \"root\"");
    }

    #[test]
    fn a_ledger_without_an_identity_is_adopted_by_the_next_start() {
        let mut state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        let mut ledger = Ledger::from_comment("alice", state.ledger_comment.as_deref()).unwrap();
        ledger.identity = None;
        state.ledger_comment = Some(ledger.to_comment());
        let mut next = start("s2", &["reader"], CreateDbUserMode::Keep);
        next.identity = crate::ledger::Identity { user: "bob".into(), origin_cluster: None };
        let StartDecision::Apply { ledger, .. } = plan_start(&next, &state, 0).unwrap() else { panic!() };
        assert_eq!(ledger.identity, Some(next.identity.clone()));
        assert_eq!(ledger.sessions.len(), 2);
    }

    #[test]
    fn stray_role_granted_by_someone_else_refuses_the_start() {
        let mut state = started(fresh_server(), &start("s1", &["reader"], CreateDbUserMode::Keep));
        state.member_of.insert("writer".into());
        state.foreign_grants.insert(("writer".into(), "postgres".into()));
        let err = plan_start(&start("s2", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::ForeignGrant { .. }), "{err:?}");
        // A foreign grant of a role the session gets anyway is harmless.
        let req = start("s2", &["reader", "writer"], CreateDbUserMode::Keep);
        state.ledger_comment = None;
        assert!(plan_start(&req, &state, 0).is_ok());
    }

    #[test]
    fn read_only_endpoint_is_refused_before_any_write() {
        let state = ObservedState { read_only: true, ..fresh_server() };
        let err = plan_start(&start("s1", &[], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::ReadOnlyEndpoint { .. }));
    }

    #[test]
    fn object_permissions_are_granted_with_schema_usage_and_recorded_per_database() {
        let mut req = start("s1", &[], CreateDbUserMode::Keep);
        req.db_permissions = Some(object_rules("SELECT"));
        let StartDecision::Apply { steps, ledger, db_permissions, .. } =
            plan_start(&req, &with_objects("app"), 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(ledger.object_databases, set(&["app"]));
        assert!(ledger.sessions["s1"].db_permissions.is_some());
        assert_eq!(db_permissions.len(), 1);
        assert_eq!(db_permissions[0].privileges["SELECT"], 1);
        let state = apply(with_objects("app"), &steps);
        assert_eq!(held(&state), [("orders".into(), set(&["SELECT"])), ("secret".into(), set(&[]))]);
        assert!(state.objects.as_ref().unwrap().schemas[0].user_has_usage);

        // Another session on the same database with other rules would change what s1 holds.
        let mut other = start("s2", &[], CreateDbUserMode::Keep);
        other.db_permissions = Some(object_rules("INSERT"));
        let err = plan_start(&other, &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::PermissionsMismatch { .. }), "{err:?}");
        let mut without = start("s2", &[], CreateDbUserMode::Keep);
        without.db_permissions = None;
        assert!(matches!(plan_start(&without, &state, 0), Err(Refusal::PermissionsMismatch { .. })));
    }
}
