//! Object permissions (`db_permissions`): which privileges on which tables, views, sequences,
//! functions and procedures a session gets, and what to grant and revoke to get there.
//!
//! Pure: the engine lists the objects of the session's database ([`ObjectState`]), this module
//! labels them, evaluates the rules and diffs the result against what the user holds.
//!
//! The contract:
//! - Every object carries the labels `object_kind`, `database` (the PostgreSQL database, the
//!   session's `db_name`), `schema` and `name`, plus those its import rules add. Import rules
//!   apply in ascending `priority` (equal priorities in config order); a later rule overrides a
//!   label an earlier one set. They cannot set the built-in labels.
//! - A rule's `match` is a label selector, as `db_labels`: every key must be on the object with
//!   a value matching one of its globs; `{"*": "*"}` matches everything.
//! - A rule's permissions apply to the kinds it matches that accept them (`SELECT` on a
//!   sequence, not on a function). A permission no matched kind accepts is a load error.
//! - The session gets the union of the allow rules of the roles whose allow block matched,
//!   minus every permission of every applying deny rule. Deny never adds.
//! - `USAGE` on a schema comes with any permission on an object in it.
//! - A privilege the admin cannot grant, but that the user has anyway through PUBLIC or a
//!   role the session gives it (USAGE on `public` and EXECUTE on functions, by PostgreSQL's
//!   defaults), needs no grant. What the user cannot get is refused, naming the fix.
//! - pg-autouser revokes only privileges granted directly to the managed user. PostgreSQL
//!   records who granted each privilege and lets the admin revoke only its own grants, so an
//!   operator's direct grant survives (managed users should have none). On an object the
//!   admin holds nothing on, PostgreSQL refuses the `REVOKE` outright: such objects are left
//!   out of it, and what the user keeps is reported ([`KeptPrivileges`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::label_match::{glob_match, labels_match, LabelValues};

/// The kinds of objects pg-autouser grants on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// Ordinary, partitioned and foreign tables.
    Table,
    /// Views and materialized views.
    View,
    Sequence,
    Function,
    Procedure,
}

pub const TABLE_PRIVILEGES: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"];
pub const SEQUENCE_PRIVILEGES: &[&str] = &["USAGE", "SELECT", "UPDATE"];
pub const ROUTINE_PRIVILEGES: &[&str] = &["EXECUTE"];

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] =
        [ObjectKind::Table, ObjectKind::View, ObjectKind::Sequence, ObjectKind::Function, ObjectKind::Procedure];

    /// The `object_kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::View => "view",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Function => "function",
            ObjectKind::Procedure => "procedure",
        }
    }

    /// The privileges `GRANT … ON <kind>` accepts.
    pub fn privileges(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Table | ObjectKind::View => TABLE_PRIVILEGES,
            ObjectKind::Sequence => SEQUENCE_PRIVILEGES,
            ObjectKind::Function | ObjectKind::Procedure => ROUTINE_PRIVILEGES,
        }
    }

    /// The object type keyword of `GRANT … ON <keyword>` (views are granted on as tables).
    pub fn sql_keyword(self) -> &'static str {
        match self {
            ObjectKind::Table | ObjectKind::View => "TABLE",
            ObjectKind::Sequence => "SEQUENCE",
            ObjectKind::Function => "FUNCTION",
            ObjectKind::Procedure => "PROCEDURE",
        }
    }

    /// The `ALL … IN SCHEMA` form, for fix statements.
    pub fn all_in_schema(self) -> &'static str {
        match self {
            ObjectKind::Table | ObjectKind::View => "ALL TABLES",
            ObjectKind::Sequence => "ALL SEQUENCES",
            ObjectKind::Function => "ALL FUNCTIONS",
            ObjectKind::Procedure => "ALL PROCEDURES",
        }
    }

    fn accepts(self, privilege: &str) -> bool {
        self.privileges().contains(&privilege)
    }
}

/// One `db_permissions` entry, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionRule {
    #[serde(rename = "match")]
    pub selector: BTreeMap<String, LabelValues>,
    pub permissions: Vec<String>,
}

/// A rule checked at load: permissions upper-cased, and for each kind it can match, the
/// permissions that kind accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompiledRule {
    pub selector: BTreeMap<String, LabelValues>,
    pub by_kind: BTreeMap<ObjectKind, BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("db_permissions entry {index}: object_kind {value:?} matches no kind: use table, view, sequence, function or procedure")]
    UnknownKind { index: usize, value: String },
    #[error("db_permissions entry {index}: lists no permission")]
    NoPermissions { index: usize },
    #[error("db_permissions entry {index}: permission {permission:?} applies to none of the kinds it matches ({kinds}): tables and views take {tables}, sequences {sequences}, functions and procedures EXECUTE",
        tables = TABLE_PRIVILEGES.join(", "), sequences = SEQUENCE_PRIVILEGES.join(", "))]
    InvalidPermission { index: usize, permission: String, kinds: String },
    #[error("db_permissions entry {index}: label key \"*\" only matches with value \"*\"")]
    WildcardLabelKey { index: usize },
}

impl PermissionRule {
    pub fn compile(&self, index: usize) -> Result<CompiledRule, RuleError> {
        let kinds: Vec<ObjectKind> = match self.selector.get("object_kind") {
            None => ObjectKind::ALL.to_vec(),
            Some(values) => {
                let kinds: Vec<ObjectKind> = ObjectKind::ALL
                    .into_iter()
                    .filter(|kind| values.globs().iter().any(|g| glob_match(g, kind.label())))
                    .collect();
                if let Some(unknown) =
                    values.globs().iter().find(|g| !ObjectKind::ALL.iter().any(|k| glob_match(g, k.label())))
                {
                    return Err(RuleError::UnknownKind { index, value: unknown.clone() });
                }
                kinds
            }
        };
        if let Some(values) = self.selector.get("*") {
            if values.globs() != ["*"] {
                return Err(RuleError::WildcardLabelKey { index });
            }
        }
        if self.permissions.is_empty() {
            return Err(RuleError::NoPermissions { index });
        }
        let mut by_kind: BTreeMap<ObjectKind, BTreeSet<String>> = BTreeMap::new();
        for written in &self.permissions {
            let permission = written.trim().to_ascii_uppercase();
            let accepting: Vec<ObjectKind> = kinds.iter().copied().filter(|k| k.accepts(&permission)).collect();
            if accepting.is_empty() {
                let kinds = kinds.iter().map(|k| k.label()).collect::<Vec<_>>().join(", ");
                return Err(RuleError::InvalidPermission { index, permission: written.clone(), kinds });
            }
            for kind in accepting {
                by_kind.entry(kind).or_default().insert(permission.clone());
            }
        }
        Ok(CompiledRule { selector: self.selector.clone(), by_kind })
    }
}

/// `import_rules`: labels added to objects by database, schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRule {
    pub name: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(rename = "match", default)]
    pub selector: ImportMatch,
    pub add_labels: BTreeMap<String, String>,
}

/// Globs on an object's database, schema and name; an absent list matches every value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportMatch {
    #[serde(default)]
    pub database: Vec<String>,
    #[serde(default)]
    pub schema: Vec<String>,
    #[serde(default)]
    pub name: Vec<String>,
}

pub const BUILT_IN_LABELS: [&str; 4] = ["object_kind", "database", "schema", "name"];

/// Sorts and checks import rules: names unique and non-empty, built-in labels untouched.
pub fn compile_import_rules(mut rules: Vec<ImportRule>) -> Result<Vec<ImportRule>, String> {
    let mut names = BTreeSet::new();
    for rule in &rules {
        if rule.name.is_empty() {
            return Err("an import rule has an empty name: name every rule".into());
        }
        if !names.insert(rule.name.as_str()) {
            return Err(format!("import rule {:?} is defined twice", rule.name));
        }
        if let Some(key) = rule.add_labels.keys().find(|k| BUILT_IN_LABELS.contains(&k.as_str())) {
            return Err(format!("import rule {:?} sets the built-in label {key:?}, which cannot change", rule.name));
        }
        if rule.add_labels.is_empty() {
            return Err(format!("import rule {:?} adds no label", rule.name));
        }
    }
    // Stable: equal priorities keep their order in the config.
    rules.sort_by_key(|rule| rule.priority);
    Ok(rules)
}

/// The object rules that apply to one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRules {
    pub allow: Vec<CompiledRule>,
    pub deny: Vec<CompiledRule>,
    /// In application order.
    pub import_rules: Vec<ImportRule>,
}

impl ObjectRules {
    /// A stable digest of the rules, recorded per session in the ledger: sessions of one user
    /// on one database must share their rules, because they share the grants.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("rules always serialise");
        format!("{:016x}", crate::stable_hash::fnv1a_64(text.bytes()))
    }

    /// The privileges each object should carry for this session.
    pub fn evaluate(&self, database: &str, objects: &[DbObject]) -> Vec<BTreeSet<String>> {
        objects
            .iter()
            .map(|object| {
                let labels = self.labels(database, object);
                let collect = |rules: &[CompiledRule]| -> BTreeSet<String> {
                    rules
                        .iter()
                        .filter(|rule| labels_match(&rule.selector, &labels))
                        .filter_map(|rule| rule.by_kind.get(&object.kind))
                        .flatten()
                        .cloned()
                        .collect()
                };
                let allowed = collect(&self.allow);
                if allowed.is_empty() {
                    return allowed;
                }
                let denied = collect(&self.deny);
                allowed.difference(&denied).cloned().collect()
            })
            .collect()
    }

    fn labels(&self, database: &str, object: &DbObject) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for rule in &self.import_rules {
            let matches =
                |globs: &[String], value: &str| globs.is_empty() || globs.iter().any(|g| glob_match(g, value));
            if matches(&rule.selector.database, database)
                && matches(&rule.selector.schema, &object.schema)
                && matches(&rule.selector.name, &object.name)
            {
                labels.extend(rule.add_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        for (key, value) in [
            ("object_kind", object.kind.label()),
            ("database", database),
            ("schema", &object.schema),
            ("name", &object.name),
        ] {
            labels.insert(key.to_string(), value.to_string());
        }
        labels
    }
}

/// An object of the session's database, as listed under the user's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbObject {
    pub kind: ObjectKind,
    pub schema: String,
    pub name: String,
    /// Functions and procedures: the identity arguments, as `pg_get_function_identity_arguments`
    /// prints them (already quoted by the server), which tell overloads apart.
    pub arguments: Option<String>,
    /// Privileges the user holds on it directly.
    pub held: BTreeSet<String>,
    /// Privileges the admin may grant on it (held WITH GRANT OPTION, or as owner or superuser).
    pub admin_grantable: BTreeSet<String>,
    /// Of the privileges in question that the admin may not grant, those the user has anyway:
    /// through PUBLIC, or through a role the session gives it.
    pub held_otherwise: BTreeSet<String>,
    /// Whether the admin's `REVOKE` on it can run: PostgreSQL refuses it when the admin holds
    /// no privilege on the object, or no USAGE on its schema.
    pub admin_may_revoke: bool,
    /// The user's own privileges on it that the admin's `REVOKE` leaves in place, with their
    /// grantors: `(privilege, grantor)`.
    pub kept: BTreeSet<(String, String)>,
}

impl DbObject {
    /// `schema.name` or `schema.name(args)`, for messages.
    pub fn display(&self) -> String {
        match &self.arguments {
            Some(args) => format!("{}.{}({args})", self.schema, self.name),
            None => format!("{}.{}", self.schema, self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    pub name: String,
    /// The user holds `USAGE` directly.
    pub user_has_usage: bool,
    /// The user has `USAGE` anyway, through PUBLIC or a role the session gives it.
    pub user_has_usage_otherwise: bool,
    /// The admin has `USAGE`, which it needs to name the objects in the schema.
    pub admin_has_usage: bool,
    /// The admin may grant `USAGE` on it.
    pub admin_can_grant_usage: bool,
    /// The admin's `REVOKE USAGE` can run (it holds some privilege on the schema).
    pub admin_may_revoke: bool,
    /// Grantors of the user's own `USAGE` that the admin's `REVOKE` leaves in place.
    pub usage_kept_by: BTreeSet<String>,
}

/// The objects of the database the admin is connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub database: String,
    pub schemas: Vec<SchemaState>,
    pub objects: Vec<DbObject>,
}

/// Privileges on a batch of objects of one kind, granted or revoked in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectBatch {
    pub kind: ObjectKind,
    /// `ALL` revokes everything.
    pub privilege: String,
    pub objects: Vec<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub schema: String,
    pub name: String,
    pub arguments: Option<String>,
}

/// What a session holds, grouped by object kind and schema, for the outcome JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermissionSummary {
    pub object_kind: ObjectKind,
    pub schema: String,
    /// Objects with at least one privilege.
    pub objects: usize,
    /// How many objects carry each privilege.
    pub privileges: BTreeMap<String, usize>,
}

/// The changes that bring the user's object privileges to the wanted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectChanges {
    pub revoke: Vec<ObjectBatch>,
    pub revoke_usage: Vec<String>,
    pub grant_usage: Vec<String>,
    pub grant: Vec<ObjectBatch>,
    pub summary: Vec<PermissionSummary>,
    /// What the user keeps after the revokes ([`revoke_all`] only).
    pub kept: KeptPrivileges,
}

/// Privileges the user holds directly and keeps after the admin's revokes: granted by another
/// role (an operator), or on objects or schemas the admin holds nothing on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptPrivileges {
    pub objects: Vec<KeptOnObject>,
    /// Schemas where the user keeps `USAGE`, with its grantors.
    pub schema_usage: Vec<(String, BTreeSet<String>)>,
    /// The kept object privileges by kind and schema, for the outcome JSON.
    pub summary: Vec<PermissionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptOnObject {
    pub kind: ObjectKind,
    pub object: ObjectRef,
    pub privileges: BTreeSet<String>,
    pub grantors: BTreeSet<String>,
}

impl KeptPrivileges {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.schema_usage.is_empty()
    }
}

/// The admin cannot grant something the session should get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ungrantable {
    Object(UngrantableObject),
    SchemaUsage {
        schema: String,
    },
    /// The admin has no `USAGE` on the schema, so it cannot name the objects to grant on.
    SchemaLookup {
        schema: String,
    },
}

/// The first object privilege the admin cannot grant, and how many more there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UngrantableObject {
    pub kind: ObjectKind,
    pub schema: String,
    /// `schema.name`, with the arguments of a routine.
    pub object: String,
    pub privilege: String,
    pub more: usize,
}

impl ObjectChanges {
    pub fn is_empty(&self) -> bool {
        self.revoke.is_empty() && self.revoke_usage.is_empty() && self.grant_usage.is_empty() && self.grant.is_empty()
    }
}

/// The diff between what the user holds and `wanted` (parallel to `state.objects`), or what
/// the admin lacks to make it.
pub fn changes(state: &ObjectState, wanted: &[BTreeSet<String>]) -> Result<ObjectChanges, Ungrantable> {
    let mut revoke: BTreeMap<(ObjectKind, String), Vec<ObjectRef>> = BTreeMap::new();
    let mut grant: BTreeMap<(ObjectKind, String), Vec<ObjectRef>> = BTreeMap::new();
    let mut ungrantable: Option<(ObjectKind, String, String, String)> = None;
    let mut more_ungrantable = 0;
    let mut unnamable_schema: Option<&str> = None;
    let mut wanted_schemas: BTreeSet<&str> = BTreeSet::new();
    let admin_has_usage: BTreeMap<&str, bool> =
        state.schemas.iter().map(|schema| (schema.name.as_str(), schema.admin_has_usage)).collect();
    for (object, wanted) in state.objects.iter().zip(wanted) {
        let reference =
            ObjectRef { schema: object.schema.clone(), name: object.name.clone(), arguments: object.arguments.clone() };
        if !wanted.is_empty() {
            wanted_schemas.insert(&object.schema);
        }
        let held = if !object.admin_may_revoke {
            // PostgreSQL would refuse the admin's REVOKE here: what the user holds on it is an
            // operator's grant, left alone.
            object.held.clone()
        } else if object.held.iter().any(|p| !object.kind.accepts(p)) {
            // A privilege this build has no keyword for (PostgreSQL 17's MAINTAIN, or a later
            // one) is never written into SQL: `REVOKE ALL` takes it, and the wanted ones are
            // granted again.
            revoke.entry((object.kind, "ALL".to_string())).or_default().push(reference.clone());
            BTreeSet::new()
        } else {
            for privilege in object.held.difference(wanted) {
                revoke.entry((object.kind, privilege.clone())).or_default().push(reference.clone());
            }
            object.held.clone()
        };
        for privilege in wanted.difference(&held) {
            if !object.admin_grantable.contains(privilege) {
                if object.held_otherwise.contains(privilege) {
                    continue;
                }
                if ungrantable.is_none() {
                    ungrantable = Some((object.kind, object.schema.clone(), object.display(), privilege.clone()));
                } else {
                    more_ungrantable += 1;
                }
                continue;
            }
            if !admin_has_usage.get(object.schema.as_str()).copied().unwrap_or(false) {
                unnamable_schema.get_or_insert(&object.schema);
                continue;
            }
            grant.entry((object.kind, privilege.clone())).or_default().push(reference.clone());
        }
    }
    if let Some((kind, schema, object, privilege)) = ungrantable {
        return Err(Ungrantable::Object(UngrantableObject { kind, schema, object, privilege, more: more_ungrantable }));
    }
    let mut grant_usage = Vec::new();
    let mut revoke_usage = Vec::new();
    for schema in &state.schemas {
        let wanted = wanted_schemas.contains(schema.name.as_str());
        if wanted && !schema.user_has_usage {
            if schema.admin_can_grant_usage {
                grant_usage.push(schema.name.clone());
            } else if !schema.user_has_usage_otherwise {
                return Err(Ungrantable::SchemaUsage { schema: schema.name.clone() });
            }
        } else if !wanted && schema.user_has_usage && schema.admin_may_revoke {
            revoke_usage.push(schema.name.clone());
        }
    }
    // After the schemas: USAGE WITH GRANT OPTION, when that is what is missing, fixes both.
    if let Some(schema) = unnamable_schema {
        return Err(Ungrantable::SchemaLookup { schema: schema.to_string() });
    }
    let batches = |map: BTreeMap<(ObjectKind, String), Vec<ObjectRef>>| {
        map.into_iter().map(|((kind, privilege), objects)| ObjectBatch { kind, privilege, objects }).collect()
    };
    Ok(ObjectChanges {
        revoke: batches(revoke),
        revoke_usage,
        grant_usage,
        grant: batches(grant),
        summary: summarize(state, wanted),
        kept: KeptPrivileges::default(),
    })
}

/// Revokes everything the user holds on the objects and schemas of `state` that the admin can
/// revoke, and says what the user keeps. `summary` is what goes.
pub fn revoke_all(state: &ObjectState) -> ObjectChanges {
    let reference = |object: &DbObject| ObjectRef {
        schema: object.schema.clone(),
        name: object.name.clone(),
        arguments: object.arguments.clone(),
    };
    let kept_privileges =
        |object: &DbObject| -> BTreeSet<String> { object.kept.iter().map(|(p, _)| p.clone()).collect() };
    let mut by_kind: BTreeMap<ObjectKind, Vec<ObjectRef>> = BTreeMap::new();
    for object in state.objects.iter().filter(|o| !o.held.is_empty() && o.admin_may_revoke) {
        by_kind.entry(object.kind).or_default().push(reference(object));
    }
    let revoked: Vec<BTreeSet<String>> = state
        .objects
        .iter()
        .map(|o| {
            if o.admin_may_revoke {
                o.held.difference(&kept_privileges(o)).cloned().collect()
            } else {
                BTreeSet::new()
            }
        })
        .collect();
    let kept_objects: Vec<KeptOnObject> = state
        .objects
        .iter()
        .filter(|o| !o.kept.is_empty())
        .map(|o| KeptOnObject {
            kind: o.kind,
            object: reference(o),
            privileges: kept_privileges(o),
            grantors: o.kept.iter().map(|(_, g)| g.clone()).collect(),
        })
        .collect();
    let kept_summary = summarize(state, &state.objects.iter().map(kept_privileges).collect::<Vec<_>>());
    ObjectChanges {
        revoke: by_kind
            .into_iter()
            .map(|(kind, objects)| ObjectBatch { kind, privilege: "ALL".into(), objects })
            .collect(),
        revoke_usage: state
            .schemas
            .iter()
            .filter(|s| s.user_has_usage && s.admin_may_revoke)
            .map(|s| s.name.clone())
            .collect(),
        summary: summarize(state, &revoked),
        kept: KeptPrivileges {
            objects: kept_objects,
            schema_usage: state
                .schemas
                .iter()
                .filter(|s| s.user_has_usage && !s.usage_kept_by.is_empty())
                .map(|s| (s.name.clone(), s.usage_kept_by.clone()))
                .collect(),
            summary: kept_summary,
        },
        ..ObjectChanges::default()
    }
}

/// Privileges per kind and schema.
pub fn summarize(state: &ObjectState, privileges: &[BTreeSet<String>]) -> Vec<PermissionSummary> {
    let mut groups: BTreeMap<(ObjectKind, &str), PermissionSummary> = BTreeMap::new();
    for (object, privileges) in state.objects.iter().zip(privileges) {
        if privileges.is_empty() {
            continue;
        }
        let entry = groups.entry((object.kind, &object.schema)).or_insert_with(|| PermissionSummary {
            object_kind: object.kind,
            schema: object.schema.clone(),
            objects: 0,
            privileges: BTreeMap::new(),
        });
        entry.objects += 1;
        for privilege in privileges {
            *entry.privileges.entry(privilege.clone()).or_default() += 1;
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> CompiledRule {
        let rule: PermissionRule = serde_yaml_ng::from_str(yaml).unwrap();
        rule.compile(0).unwrap()
    }

    fn object(kind: ObjectKind, schema: &str, name: &str, held: &[&str]) -> DbObject {
        DbObject {
            kind,
            schema: schema.into(),
            name: name.into(),
            arguments: (kind == ObjectKind::Function).then(|| "integer".to_string()),
            held: held.iter().map(|s| s.to_string()).collect(),
            admin_grantable: kind.privileges().iter().map(|s| s.to_string()).collect(),
            held_otherwise: BTreeSet::new(),
            admin_may_revoke: true,
            kept: BTreeSet::new(),
        }
    }

    /// A schema the admin can use and revoke on.
    fn schema(name: &str, user_has_usage: bool, admin_can_grant_usage: bool) -> SchemaState {
        SchemaState {
            name: name.into(),
            user_has_usage,
            user_has_usage_otherwise: false,
            admin_has_usage: true,
            admin_can_grant_usage,
            admin_may_revoke: true,
            usage_kept_by: BTreeSet::new(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rules(allow: &[&str], deny: &[&str], import: &str) -> ObjectRules {
        ObjectRules {
            allow: allow.iter().map(|r| rule(r)).collect(),
            deny: deny.iter().map(|r| rule(r)).collect(),
            import_rules: compile_import_rules(serde_yaml_ng::from_str(import).unwrap()).unwrap(),
        }
    }

    #[test]
    fn allow_matches_labels_and_deny_removes() {
        let rules = rules(
            &["{match: {object_kind: table, schema: public}, permissions: [select, INSERT]}"],
            &["{match: {object_kind: table, name: 'secret_*'}, permissions: [SELECT]}"],
            "[]",
        );
        let objects = [
            object(ObjectKind::Table, "public", "orders", &[]),
            object(ObjectKind::Table, "public", "secret_keys", &[]),
            object(ObjectKind::Table, "other", "orders", &[]),
            object(ObjectKind::View, "public", "v", &[]),
        ];
        let wanted = rules.evaluate("app", &objects);
        assert_eq!(wanted, vec![set(&["INSERT", "SELECT"]), set(&["INSERT"]), set(&[]), set(&[])]);
    }

    #[test]
    fn import_rules_apply_in_priority_order_and_later_ones_override() {
        let import = r#"
- {name: late, priority: 20, match: {name: ["orders*"]}, add_labels: {environment: staging}}
- {name: early, priority: 10, match: {database: [app], schema: [public]}, add_labels: {environment: prod, owner: pay}}
"#;
        let rules = rules(&["{match: {environment: prod}, permissions: [SELECT]}"], &[], import);
        let objects = [
            object(ObjectKind::Table, "public", "orders_2026", &[]),
            object(ObjectKind::Table, "public", "invoices", &[]),
            object(ObjectKind::Sequence, "public", "ids", &[]),
            object(ObjectKind::Function, "public", "f", &[]),
        ];
        // `late` overrides prod on orders_2026; SELECT applies to sequences but not functions.
        assert_eq!(rules.evaluate("app", &objects), vec![set(&[]), set(&["SELECT"]), set(&["SELECT"]), set(&[])]);
        assert_eq!(rules.evaluate("other", &objects), vec![set(&[]), set(&[]), set(&[]), set(&[])]);
    }

    #[test]
    fn permissions_are_checked_against_the_kinds_they_match() {
        let parse = |yaml: &str| serde_yaml_ng::from_str::<PermissionRule>(yaml).unwrap().compile(3);
        assert!(matches!(
            parse("{match: {object_kind: function}, permissions: [SELECT]}"),
            Err(RuleError::InvalidPermission { index: 3, .. })
        ));
        assert!(matches!(
            parse("{match: {object_kind: tabel}, permissions: [SELECT]}"),
            Err(RuleError::UnknownKind { .. })
        ));
        assert!(matches!(
            parse("{match: {object_kind: table}, permissions: [DROP]}"),
            Err(RuleError::InvalidPermission { .. })
        ));
        assert!(matches!(
            parse("{match: {object_kind: table}, permissions: []}"),
            Err(RuleError::NoPermissions { .. })
        ));
        let any = parse("{match: {schema: public}, permissions: [EXECUTE, USAGE]}").unwrap();
        assert_eq!(
            any.by_kind.keys().copied().collect::<Vec<_>>(),
            [ObjectKind::Sequence, ObjectKind::Function, ObjectKind::Procedure]
        );
    }

    #[test]
    fn import_rules_cannot_set_built_in_labels() {
        let rules: Vec<ImportRule> =
            serde_yaml_ng::from_str("[{name: x, match: {schema: [a]}, add_labels: {schema: b}}]").unwrap();
        assert!(compile_import_rules(rules).unwrap_err().contains("built-in"));
    }

    #[test]
    fn changes_revoke_the_stale_grant_the_new_and_batch_by_privilege() {
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![schema("public", false, true), schema("old", true, true)],
            objects: vec![
                object(ObjectKind::Table, "public", "a", &["SELECT"]),
                object(ObjectKind::Table, "public", "b", &[]),
                object(ObjectKind::Table, "old", "c", &["UPDATE"]),
            ],
        };
        let wanted = vec![set(&["SELECT"]), set(&["SELECT"]), set(&[])];
        let changes = changes(&state, &wanted).unwrap();
        assert_eq!(changes.grant.len(), 1);
        assert_eq!(changes.grant[0].privilege, "SELECT");
        assert_eq!(changes.grant[0].objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(changes.revoke[0].privilege, "UPDATE");
        assert_eq!(changes.grant_usage, ["public"]);
        assert_eq!(changes.revoke_usage, ["old"]);
        assert_eq!(changes.summary.len(), 1);
        assert_eq!(changes.summary[0].objects, 2);
        assert_eq!(changes.summary[0].privileges["SELECT"], 2);
    }

    #[test]
    fn privileges_without_a_keyword_are_revoked_with_all_and_the_wanted_ones_granted_again() {
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![schema("public", true, true)],
            objects: vec![object(ObjectKind::Table, "public", "a", &["MAINTAIN", "SELECT"])],
        };
        let changes = changes(&state, &[set(&["SELECT"])]).unwrap();
        assert_eq!(changes.revoke.len(), 1);
        assert_eq!(changes.revoke[0].privilege, "ALL");
        assert_eq!(changes.grant.len(), 1);
        assert_eq!(changes.grant[0].privilege, "SELECT");
    }

    #[test]
    fn what_the_admin_cannot_grant_is_reported() {
        let mut table = object(ObjectKind::Table, "public", "a", &[]);
        table.admin_grantable.clear();
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![schema("public", false, false)],
            objects: vec![table.clone(), table],
        };
        let err = changes(&state, &[set(&["SELECT"]), set(&["SELECT"])]).unwrap_err();
        assert!(matches!(err, Ungrantable::Object(UngrantableObject { more: 1, .. })), "{err:?}");
        let mut state = state;
        state.objects.clear();
        state.objects.push(object(ObjectKind::Table, "public", "b", &[]));
        assert_eq!(
            changes(&state, &[set(&["SELECT"])]).unwrap_err(),
            Ungrantable::SchemaUsage { schema: "public".into() }
        );
    }

    #[test]
    fn what_the_user_has_through_public_or_its_roles_needs_no_grant() {
        let mut function = object(ObjectKind::Function, "public", "f", &[]);
        function.admin_grantable.clear();
        function.held_otherwise = set(&["EXECUTE"]);
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![SchemaState { user_has_usage_otherwise: true, ..schema("public", false, false) }],
            objects: vec![object(ObjectKind::Table, "public", "a", &[]), function],
        };
        let changes = changes(&state, &[set(&["SELECT"]), set(&["EXECUTE"])]).unwrap();
        assert!(changes.grant_usage.is_empty());
        assert_eq!(changes.grant.len(), 1, "{changes:?}");
        assert_eq!(changes.grant[0].kind, ObjectKind::Table);
        assert_eq!(changes.summary.len(), 2, "the summary counts what the session has: {changes:?}");

        // Without it, the same session is refused.
        let mut state = state;
        state.schemas[0].user_has_usage_otherwise = false;
        assert_eq!(
            super::changes(&state, &[set(&["SELECT"]), set(&[])]).unwrap_err(),
            Ungrantable::SchemaUsage { schema: "public".into() }
        );
        state.objects[1].held_otherwise.clear();
        assert!(matches!(
            super::changes(&state, &[set(&[]), set(&["EXECUTE"])]).unwrap_err(),
            Ungrantable::Object(UngrantableObject { privilege, .. }) if privilege == "EXECUTE"
        ));
    }

    #[test]
    fn an_admin_without_usage_on_the_schema_cannot_name_its_objects() {
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![SchemaState {
                user_has_usage_otherwise: true,
                admin_has_usage: false,
                ..schema("sales", false, false)
            }],
            objects: vec![object(ObjectKind::Table, "sales", "t", &[])],
        };
        assert_eq!(
            changes(&state, &[set(&["SELECT"])]).unwrap_err(),
            Ungrantable::SchemaLookup { schema: "sales".into() }
        );
    }

    #[test]
    fn what_the_admin_cannot_revoke_is_left_out_of_the_revokes_and_reported() {
        let mut foreign = object(ObjectKind::Table, "private", "notes", &["SELECT"]);
        foreign.admin_may_revoke = false;
        foreign.kept = BTreeSet::from([("SELECT".to_string(), "owner".to_string())]);
        let mut mixed = object(ObjectKind::Table, "public", "orders", &["SELECT", "UPDATE"]);
        mixed.kept = BTreeSet::from([("UPDATE".to_string(), "owner".to_string())]);
        let state = ObjectState {
            database: "app".into(),
            schemas: vec![
                SchemaState {
                    admin_may_revoke: false,
                    usage_kept_by: set(&["owner"]),
                    ..schema("private", true, false)
                },
                schema("public", true, true),
            ],
            objects: vec![foreign, mixed],
        };
        let end = revoke_all(&state);
        assert_eq!(end.revoke.len(), 1);
        assert_eq!(end.revoke[0].objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["orders"]);
        assert_eq!(end.revoke_usage, ["public"]);
        assert_eq!(end.summary.len(), 1);
        assert_eq!(end.summary[0].privileges, BTreeMap::from([("SELECT".to_string(), 1)]));
        assert_eq!(end.kept.objects.len(), 2);
        assert_eq!(end.kept.schema_usage, [("private".to_string(), set(&["owner"]))]);
        assert_eq!(end.kept.summary.len(), 2);

        // A start that no longer wants them revokes only what it can, too.
        let start = changes(&state, &[set(&[]), set(&[])]).unwrap();
        assert_eq!(
            start.revoke.iter().flat_map(|b| &b.objects).map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["orders", "orders"]
        );
        assert_eq!(start.revoke_usage, ["public"]);
    }

    #[test]
    fn fingerprints_differ_with_the_rules() {
        let a = rules(&["{match: {object_kind: table}, permissions: [SELECT]}"], &[], "[]");
        let b = rules(&["{match: {object_kind: table}, permissions: [INSERT]}"], &[], "[]");
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
