//! Object listing for `db_permissions`: which objects and privileges to list, and the listing.

use std::collections::BTreeSet;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::pg::ObjectListingStatements;
use autouser_policy::permissions::{DbObject, ObjectKind, ObjectRules, SchemaState};

/// Which objects to list with the state (besides those the user holds privileges on), and
/// which privileges to check the admin may grant. The default lists only what the user holds,
/// which is all an end needs.
#[derive(Default)]
pub(super) struct ObjectListing {
    table_privileges: Vec<String>,
    sequence_privileges: Vec<String>,
    /// `pg_class.relkind`s the rules can match.
    relkinds: Vec<String>,
    /// Whether the rules can match functions or procedures.
    routines: bool,
    /// The roles the session gives the user: privileges they carry need no grant.
    session_roles: Vec<String>,
}

impl ObjectListing {
    pub(super) fn for_rules(rules: &ObjectRules, session_roles: Vec<String>) -> ObjectListing {
        let privileges = |kinds: &[ObjectKind]| -> Vec<String> {
            let set: BTreeSet<&String> = rules
                .allow
                .iter()
                .flat_map(|rule| kinds.iter().filter_map(|k| rule.by_kind.get(k)))
                .flatten()
                .collect();
            set.into_iter().cloned().collect()
        };
        let kinds: BTreeSet<ObjectKind> = rules.allow.iter().flat_map(|rule| rule.by_kind.keys().copied()).collect();
        let relkinds = kinds
            .iter()
            .flat_map(|kind| match kind {
                ObjectKind::Table => &["r", "p", "f"][..],
                ObjectKind::View => &["v", "m"][..],
                ObjectKind::Sequence => &["S"][..],
                ObjectKind::Function | ObjectKind::Procedure => &[][..],
            })
            .map(|relkind| relkind.to_string())
            .collect();
        ObjectListing {
            table_privileges: privileges(&[ObjectKind::Table, ObjectKind::View]),
            sequence_privileges: privileges(&[ObjectKind::Sequence]),
            relkinds,
            routines: kinds.contains(&ObjectKind::Function) || kinds.contains(&ObjectKind::Procedure),
            session_roles,
        }
    }
}

pub(super) async fn list_objects(
    client: &Client,
    statements: &ObjectListingStatements,
    user: &str,
    listing: &ObjectListing,
) -> Result<(Vec<SchemaState>, Vec<DbObject>), tokio_postgres::Error> {
    let roles = &listing.session_roles;
    let schema_params: [&(dyn ToSql + Sync); 2] = [&user, roles];
    let relation_params: [&(dyn ToSql + Sync); 5] =
        [&user, &listing.table_privileges, &listing.sequence_privileges, &listing.relkinds, roles];
    let routine_params: [&(dyn ToSql + Sync); 3] = [&user, &listing.routines, roles];
    let (schemas, relations, routines) = tokio::try_join!(
        client.query(&statements.schemas, &schema_params),
        client.query(&statements.relations, &relation_params),
        client.query(&statements.routines, &routine_params),
    )?;
    let set = |row: &tokio_postgres::Row, column| -> BTreeSet<String> {
        row.get::<_, Vec<String>>(column).into_iter().collect()
    };
    let kept = |row: &tokio_postgres::Row| -> BTreeSet<(String, String)> {
        row.get::<_, Vec<String>>("kept_privileges")
            .into_iter()
            .zip(row.get::<_, Vec<String>>("kept_grantors"))
            .collect()
    };
    let schemas = schemas
        .iter()
        .map(|row| SchemaState {
            name: row.get("name"),
            user_has_usage: row.get("user_has_usage"),
            user_has_usage_otherwise: row.get("user_has_usage_otherwise"),
            admin_has_usage: row.get("admin_has_usage"),
            admin_can_grant_usage: row.get("admin_can_grant_usage"),
            admin_may_revoke: row.get("admin_may_revoke"),
            usage_kept_by: set(row, "usage_kept_by"),
        })
        .collect();
    let mut objects: Vec<DbObject> = relations
        .iter()
        .map(|row| DbObject {
            kind: match row.get::<_, &str>("relkind") {
                "S" => ObjectKind::Sequence,
                "v" | "m" => ObjectKind::View,
                _ => ObjectKind::Table,
            },
            schema: row.get("schema"),
            name: row.get("name"),
            arguments: None,
            held: set(row, "held"),
            admin_grantable: set(row, "admin_grantable"),
            held_otherwise: set(row, "held_otherwise"),
            admin_may_revoke: row.get("admin_may_revoke"),
            kept: kept(row),
        })
        .collect();
    objects.extend(routines.iter().map(|row| DbObject {
        kind: if row.get::<_, &str>("prokind") == "p" { ObjectKind::Procedure } else { ObjectKind::Function },
        schema: row.get("schema"),
        name: row.get("name"),
        arguments: Some(row.get("arguments")),
        held: set(row, "held"),
        admin_grantable: if row.get("admin_can_grant") {
            BTreeSet::from(["EXECUTE".to_string()])
        } else {
            BTreeSet::new()
        },
        held_otherwise: if row.get("executable_otherwise") {
            BTreeSet::from(["EXECUTE".to_string()])
        } else {
            BTreeSet::new()
        },
        admin_may_revoke: row.get("admin_may_revoke"),
        kept: kept(row),
    }));
    Ok((schemas, objects))
}
