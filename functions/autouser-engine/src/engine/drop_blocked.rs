//! The drop-blocked explanation: which failures block a drop (the user is locked instead),
//! what blocked it, and the statement that fixes it.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::sql;
use autouser_policy::outcome::{DropBlocked, DropBlockedKind};
use autouser_policy::plan::{ObservedState, Step};
use autouser_policy::request::Target;

use super::attempt::{describe, is_conflict};
use super::pipeline::Statement;

/// The outcome's reason for a drop that `blocked` turned into a lock.
pub(super) fn locked_instead(blocked: &DropBlocked) -> String {
    let fix =
        blocked.fix.as_deref().map(|fix| format!("; so that the next end drops it, run `{fix}`")).unwrap_or_default();
    match blocked.kind {
        DropBlockedKind::DependentObjects => {
            format!("objects depend on the user, so it was locked instead: it {}{fix}", blocked.detail)
        }
        DropBlockedKind::CannotConnect | DropBlockedKind::StepFailed => format!(
            "the user's objects could not be handed over in database {:?}, so it was locked instead, with its \
             objects there untouched: {}{fix}",
            blocked.db_name, blocked.detail
        ),
        DropBlockedKind::AdminLacksPrivilege => format!(
            "the admin lacks a privilege the drop needs (in database {:?}), so the user was locked instead: {}{fix}",
            blocked.db_name, blocked.detail
        ),
    }
}

/// Whether the failure of `statement` means the drop cannot happen now, so that the user is
/// locked instead (and which kind of block it is); `None` for failures to retry or report.
pub(super) fn drop_blocked_by(statement: &Statement, error: &tokio_postgres::Error) -> Option<DropBlockedKind> {
    let code = error.code()?;
    match statement {
        Statement::Step(Step::DropUser { .. }) if *code == SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
            Some(DropBlockedKind::DependentObjects)
        }
        // Without a record of its ended sessions, a dropped user could be re-created by a
        // late start: lock it instead, and its own ledger records them.
        Statement::Step(Step::RecordEnded { .. }) if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
            Some(DropBlockedKind::AdminLacksPrivilege)
        }
        Statement::Step(
            Step::GrantRoles { .. } | Step::DisarmOwned { .. } | Step::ReassignOwned { .. } | Step::DropOwned { .. },
        ) => {
            if is_conflict(error, None) {
                None
            } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
                Some(DropBlockedKind::AdminLacksPrivilege)
            } else {
                Some(DropBlockedKind::StepFailed)
            }
        }
        _ => None,
    }
}

/// Says what blocked the drop, and the statement that fixes it when that is the admin's
/// privileges. Runs inside the end's transaction, rolled back to before the drop (or, in
/// another database, after its rollback).
pub(super) async fn explain_blocked_drop(
    client: &Client,
    t: &Target,
    state: &ObservedState,
    inheritor: Option<&str>,
    kind: DropBlockedKind,
    statement: &Statement<'_>,
    error: &tokio_postgres::Error,
) -> DropBlocked {
    let db_name = t.admin_db_name.clone();
    let failed = || format!("{} failed: {}", describe(statement), crate::pg::error_chain(error));
    let admin = sql::quote_ident(&t.admin);
    match (kind, statement) {
        (DropBlockedKind::DependentObjects, _) => {
            let detail = match state.user_oid {
                Some(oid) => match client.query_typed(sql::USER_DEPENDENCIES, &[(&oid, Type::OID)]).await {
                    Ok(rows) => describe_dependencies(&rows),
                    Err(error) => {
                        format!("has dependencies that could not be listed ({})", crate::pg::error_chain(&error))
                    }
                },
                None => failed(),
            };
            DropBlocked { kind, db_name, detail, fix: None }
        }
        (_, Statement::Step(Step::RecordEnded { group, .. })) => DropBlocked {
            kind,
            db_name,
            detail: format!(
                "the admin cannot write the comment of the managed group {group:?}, where the ended sessions of \
                 dropped users are remembered"
            ),
            fix: Some(format!("GRANT {} TO {admin} WITH ADMIN OPTION", sql::quote_ident(group))),
        },
        (DropBlockedKind::AdminLacksPrivilege, Statement::Step(Step::GrantRoles { .. })) => DropBlocked {
            kind,
            db_name,
            detail: format!(
                "the admin cannot take the privileges of the user, which REASSIGN OWNED needs: {}",
                failed()
            ),
            fix: Some(if state.server_version_num >= 160000 {
                format!("GRANT {} TO {admin} WITH ADMIN OPTION", sql::quote_ident(&t.db_user))
            } else {
                format!("ALTER ROLE {admin} CREATEROLE")
            }),
        },
        (DropBlockedKind::AdminLacksPrivilege, _) => {
            let inheritor = inheritor.unwrap_or_default();
            let fix = match client.query_typed(sql::ADMIN_HAND_OVER_PRIVILEGES, &[(&inheritor, Type::TEXT)]).await {
                Ok(rows) => match rows.first().map(|row| (row.get::<_, bool>(0), row.get::<_, bool>(1))) {
                    Some((false, _)) => Some(format!("ALTER ROLE {admin} INHERIT")),
                    Some((true, false)) => Some(format!("GRANT {} TO {admin}", sql::quote_ident(inheritor))),
                    _ => None,
                },
                Err(_) => None,
            };
            if let (None, Statement::Step(Step::ReassignOwned { .. }), Some(oid)) = (&fix, statement, state.user_oid) {
                let schemas = client
                    .query_typed(sql::INHERITOR_LACKS_CREATE, &[(&oid, Type::OID), (&inheritor, Type::TEXT)])
                    .await
                    .map(|rows| rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<String>>());
                if let Ok(schemas) = schemas.as_deref() {
                    if !schemas.is_empty() {
                        return DropBlocked {
                            kind,
                            db_name,
                            detail: format!(
                                "the object inheritor {inheritor:?} may not create in schema(s) {schemas:?}, where the \
                                 user owns routines (or other objects whose new owner needs CREATE on their schema): {}",
                                failed()
                            ),
                            fix: Some(format!(
                                "GRANT CREATE ON SCHEMA {} TO {}",
                                schemas.iter().map(|schema| sql::quote_ident(schema)).collect::<Vec<_>>().join(", "),
                                sql::quote_ident(inheritor)
                            )),
                        };
                    }
                }
            }
            DropBlocked { kind, db_name, detail: failed(), fix }
        }
        _ => DropBlocked { kind, db_name, detail: failed(), fix: None },
    }
}

/// `owns table public.t, sequence public.s; holds privileges on schema public; and 3 more;
/// and 2 objects in database "reports"`: the first [`DEPENDENCIES_NAMED`] of the connected
/// database and the shared objects, then counts.
fn describe_dependencies(rows: &[tokio_postgres::Row]) -> String {
    const VERBS: [(&str, &str); 4] =
        [("o", "owns"), ("a", "holds privileges on"), ("r", "is named by"), ("i", "has initial privileges on")];
    let mut here: Vec<(usize, String)> = Vec::new();
    let mut elsewhere: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for row in rows {
        match (row.get::<_, Option<String>>("object"), row.get::<_, Option<String>>("other_database")) {
            (Some(object), _) => {
                let deptype: String = row.get("deptype");
                let kind = VERBS.iter().position(|(d, _)| *d == deptype).unwrap_or(VERBS.len());
                here.push((kind, object));
            }
            (None, Some(database)) => *elsewhere.entry(database).or_default() += 1,
            (None, None) => {}
        }
    }
    here.sort();
    let mut parts: Vec<String> = Vec::new();
    for (kind, (_, verb)) in VERBS.iter().enumerate() {
        let named: Vec<&str> = here
            .iter()
            .take(DEPENDENCIES_NAMED)
            .filter(|(k, _)| *k == kind)
            .map(|(_, object)| object.as_str())
            .collect();
        if !named.is_empty() {
            parts.push(format!("{verb} {}", named.join(", ")));
        }
    }
    if here.len() > DEPENDENCIES_NAMED {
        parts.push(format!("and {} more here", here.len() - DEPENDENCIES_NAMED));
    }
    for (database, count) in elsewhere {
        parts.push(format!("has {count} object(s) or privilege(s) in database {database:?}"));
    }
    parts.join("; ")
}

/// How many dependencies a blocked drop's reason names before it counts the rest.
const DEPENDENCIES_NAMED: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(kind: DropBlockedKind) -> DropBlocked {
        DropBlocked { kind, db_name: "app".into(), detail: "why".into(), fix: Some("GRANT x TO y".into()) }
    }

    #[test]
    fn a_blocked_drops_reason_says_what_kind_of_block_it_was() {
        let privilege = locked_instead(&blocked(DropBlockedKind::AdminLacksPrivilege));
        assert!(privilege.contains("lacks a privilege") && !privilege.contains("handed over"), "{privilege}");
        assert!(privilege.ends_with("run `GRANT x TO y`"), "{privilege}");
        let connect = locked_instead(&blocked(DropBlockedKind::CannotConnect));
        assert!(connect.contains("could not be handed over in database \"app\""), "{connect}");
        let objects = locked_instead(&blocked(DropBlockedKind::DependentObjects));
        assert!(objects.starts_with("objects depend on the user"), "{objects}");
    }
}
