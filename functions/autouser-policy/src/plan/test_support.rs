//! What the plan's tests share: requests, observed states, and `apply`, which runs steps on an
//! observed state as far as the planner cares.

use std::collections::BTreeSet;

use crate::permissions::ObjectState;
use crate::policy::CreateDbUserMode;
use crate::request::{EndRequest, StartRequest, Target};

use super::*;

pub(super) fn target(session: &str) -> Target {
    Target {
        session_id: session.into(),
        person: "alice".into(),
        db_user: "alice".into(),
        database: "orders".into(),
        db_name: "app".into(),
        admin_db_name: "app".into(),
        creator: None,
        admin: "teleport-admin".into(),
        managed_group: "grp".into(),
        endpoint: "localhost:5432".into(),
    }
}

pub(super) fn start(session: &str, roles: &[&str], mode: CreateDbUserMode) -> StartRequest {
    StartRequest {
        target: target(session),
        identity: crate::ledger::Identity { user: "alice".into(), origin_cluster: None },
        mode,
        db_roles: roles.iter().map(|r| r.to_string()).collect(),
        platform_roles: BTreeSet::new(),
        db_permissions: None,
        object_inheritor: "heir".into(),
        allowed_predefined_roles: BTreeSet::new(),
    }
}

pub(super) fn end(session: &str) -> EndRequest {
    EndRequest {
        target: target(session),
        revokes_db_permissions: false,
        terminate_connections: false,
        redelivery_window_secs: 86400,
        object_inheritor: "inheritor".into(),
    }
}

pub(super) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(super) fn fresh_server() -> ObservedState {
    ObservedState {
        existing_roles: set(&["reader", "writer", "rds_iam"]),
        server_version_num: 160000,
        ..Default::default()
    }
}

/// The state after `steps` ran, as far as the planner cares.
pub(super) fn apply(mut state: ObservedState, steps: &[Step]) -> ObservedState {
    let mut as_creator = false;
    for step in steps {
        match step {
            Step::CreateGroup { .. } => state.group_exists = true,
            Step::CreateUser { .. } => {
                state.user_exists = true;
                state.user_can_login = true;
                state.creator_admins_user = as_creator;
            }
            Step::GrantRoles { roles, user } if *user == "alice" => {
                state.member_of.extend(roles.iter().cloned());
                if as_creator {
                    state.creator_grants.extend(roles.iter().cloned());
                }
            }
            Step::RevokeRoles { roles, user } if *user == "alice" => {
                for role in roles {
                    assert_eq!(as_creator, state.creator_grants.contains(role), "{role} revoked by its grantor");
                    state.member_of.remove(role);
                    state.creator_grants.remove(role);
                }
            }
            // The admin taking the user's privileges for a hand-over.
            Step::GrantRoles { .. } | Step::RevokeRoles { .. } => {}
            Step::SetRole { role } => {
                assert_eq!(role.as_ref(), state.creator.as_ref().filter(|_| !as_creator), "{steps:#?}");
                as_creator = role.is_some();
            }
            Step::PrepareCreator { .. } => {
                assert!(!as_creator);
                state.creator_ready = true;
            }
            Step::SetLogin { login, .. } => state.user_can_login = *login,
            Step::ClearPassword { .. } => {}
            Step::ResetSettings { database, .. } => {
                state.settings_in.remove(database.as_deref().unwrap_or_default());
            }
            Step::WriteLedger { ledger, .. } => state.ledger_comment = Some(ledger.clone()),
            Step::Guard { expected_ledger, .. } => assert_eq!(expected_ledger, &state.ledger_comment),
            Step::DropUser { .. } => {
                assert_eq!(as_creator, state.creator.is_some() && state.creator_admins_user);
                state = ObservedState {
                    user_exists: false,
                    member_of: BTreeSet::new(),
                    creator_grants: BTreeSet::new(),
                    creator_admins_user: false,
                    ..state
                }
            }
            Step::ReserveName { .. } => assert!(!state.user_exists),
            // Ownership is not part of the observed state.
            Step::DisarmOwned { .. } | Step::ReassignOwned { .. } | Step::DropOwned { .. } => {}
            // The group's comment is the server's business; the tests of crate::sql and
            // the integration tests check it.
            Step::RecordEnded { .. } => state.session_ended_in_group = true,
            Step::RefuseIfEnded { .. } => assert!(!state.session_ended_in_group),
            Step::GrantObjects { batch, .. } | Step::RevokeObjects { batch, .. } => {
                let objects = state.objects.as_mut().expect("objects listed");
                for object in objects.objects.iter_mut() {
                    let reference = (&object.schema, &object.name);
                    if !batch.objects.iter().any(|o| (&o.schema, &o.name) == reference) {
                        continue;
                    }
                    match step {
                        Step::GrantObjects { .. } => {
                            object.held.insert(batch.privilege.clone());
                        }
                        _ if batch.privilege == "ALL" => object.held.clear(),
                        _ => {
                            object.held.remove(&batch.privilege);
                        }
                    }
                }
            }
            Step::GrantSchemaUsage { schemas, .. } | Step::RevokeSchemaUsage { schemas, .. } => {
                let grant = matches!(step, Step::GrantSchemaUsage { .. });
                for schema in &mut state.objects.as_mut().expect("objects listed").schemas {
                    if schemas.contains(&schema.name) {
                        schema.user_has_usage = grant;
                    }
                }
            }
        }
    }
    state
}

pub(super) fn started(state: ObservedState, req: &StartRequest) -> ObservedState {
    match plan_start(req, &state, 10).unwrap() {
        StartDecision::Apply { steps, .. } => apply(state, &steps),
        StartDecision::AlreadyActive { .. } => state,
    }
}

pub(super) fn with_creator(state: ObservedState) -> ObservedState {
    ObservedState { creator: Some("grp-creator-1".into()), ..state }
}

pub(super) fn with_objects(database: &str) -> ObservedState {
    use crate::permissions::{DbObject, ObjectKind, SchemaState};
    let table = |name: &str| DbObject {
        kind: ObjectKind::Table,
        schema: "public".into(),
        name: name.into(),
        arguments: None,
        held: BTreeSet::new(),
        admin_grantable: set(&["SELECT", "INSERT"]),
        held_otherwise: BTreeSet::new(),
        admin_may_revoke: true,
        kept: BTreeSet::new(),
    };
    ObservedState {
        objects: Some(ObjectState {
            database: database.into(),
            schemas: vec![SchemaState {
                name: "public".into(),
                user_has_usage: false,
                user_has_usage_otherwise: false,
                admin_has_usage: true,
                admin_can_grant_usage: true,
                admin_may_revoke: true,
                usage_kept_by: BTreeSet::new(),
            }],
            objects: vec![table("orders"), table("secret")],
        }),
        ..fresh_server()
    }
}

pub(super) fn object_rules(permission: &str) -> crate::permissions::ObjectRules {
    let rule: crate::permissions::PermissionRule = serde_yaml_ng::from_str(&format!(
        "{{match: {{object_kind: table, name: orders}}, permissions: [{permission}]}}"
    ))
    .unwrap();
    crate::permissions::ObjectRules { allow: vec![rule.compile(0).unwrap()], deny: vec![], import_rules: vec![] }
}

pub(super) fn held(state: &ObservedState) -> Vec<(String, BTreeSet<String>)> {
    let objects = state.objects.as_ref().unwrap();
    objects.objects.iter().map(|o| (o.name.clone(), o.held.clone())).collect()
}
