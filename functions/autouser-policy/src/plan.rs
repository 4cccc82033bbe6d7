//! The planner: from a request and what the database holds now, decide what to change.
//!
//! Pure: no I/O, no clock (the caller passes `now`). The executor in [`crate::engine`] runs the
//! steps in one transaction, in order, and maps a failing step to a typed error.
//!
//! Ordering matters for concurrency: when the user exists, the first write is always
//! [`Step::SetLogin`] (a write to the user's `pg_authid` row, which blocks other writers of the
//! same user until we commit) followed by [`Step::Guard`] (which checks that the ledger we
//! planned from is still current).

use std::collections::BTreeSet;

use crate::ledger::{is_pg_autouser_ledger, Ledger, SessionRecord};
use crate::permissions::{
    self, KeptPrivileges, ObjectBatch, ObjectChanges, ObjectState, PermissionSummary, Ungrantable,
};
use crate::policy::CreateDbUserMode;
use crate::refusal::Refusal;
use crate::request::{EndRequest, StartRequest, Target};

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
    /// superuser): the one that created the user, or for a new user [`Target::creator`]. See
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

/// A role that a wanted role `wanted` is (`role == wanted`) or is a member of, directly or
/// through other roles: whoever is granted `wanted` may `SET ROLE` to it or has its privileges.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReachedRole {
    pub wanted: String,
    pub role: String,
    pub facts: BTreeSet<RoleFact>,
}

/// What the catalog says about a role that makes it more than a role's privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoleFact {
    Superuser,
    /// A member of the managed group: another person's user (or a role made to look like one).
    ManagedUser,
    CreateRole,
    CreateDb,
    Replication,
    BypassRls,
    /// One of PostgreSQL's own roles, made by `initdb` (OID below 16384).
    Predefined,
}

/// What a start checks the wanted roles against, besides the catalog's facts.
#[derive(Debug, Clone, Copy)]
pub struct RoleGuard<'a> {
    pub managed_group: &'a str,
    pub object_inheritor: &'a str,
    /// `allowed_predefined_roles`.
    pub allowed_predefined: &'a BTreeSet<String>,
}

impl<'a> RoleGuard<'a> {
    pub fn of(req: &'a StartRequest) -> RoleGuard<'a> {
        RoleGuard {
            managed_group: &req.target.managed_group,
            object_inheritor: &req.object_inheritor,
            allowed_predefined: &req.allowed_predefined_roles,
        }
    }

    /// Why `reached.role` makes granting `reached.wanted` unsafe, if it does.
    fn why(&self, reached: &ReachedRole) -> Option<String> {
        let role = &reached.role;
        let has = |fact| reached.facts.contains(&fact);
        let what = if has(RoleFact::Superuser) {
            "a superuser role".to_string()
        } else if crate::naming::is_creator_role_name(self.managed_group, role) {
            "a creator role of the managed group, which creates and manages its users".to_string()
        } else if role == self.object_inheritor {
            "the object inheritor, which owns the objects of dropped users".to_string()
        } else if role == self.managed_group {
            "the managed group, which every managed user already has".to_string()
        } else if has(RoleFact::ManagedUser) {
            "a member of the managed group (another person's user)".to_string()
        } else if let Some(attribute) = [
            (RoleFact::CreateRole, "CREATEROLE"),
            (RoleFact::CreateDb, "CREATEDB"),
            (RoleFact::Replication, "REPLICATION"),
            (RoleFact::BypassRls, "BYPASSRLS"),
        ]
        .into_iter()
        .find_map(|(fact, attribute)| has(fact).then_some(attribute))
        {
            format!("a role WITH {attribute}")
        } else if has(RoleFact::Predefined) && !self.allowed_predefined.contains(role) {
            "a predefined role of PostgreSQL that allowed_predefined_roles does not list".to_string()
        } else {
            return None;
        };
        Some(if *role == reached.wanted {
            format!("it is {what}: whoever is granted it may SET ROLE to it")
        } else {
            format!(
                "it is a member of {role:?}, directly or through other roles, which is {what}: whoever is granted \
                 it may SET ROLE to {role:?}"
            )
        })
    }
}

/// Why granting `wanted` is refused, from the roles it reaches (`reached`, as read, any
/// wanted role's): the role itself first, then what it is a member of, by name.
pub fn db_role_refusal(guard: RoleGuard<'_>, wanted: &str, reached: &BTreeSet<ReachedRole>) -> Option<Refusal> {
    let mut mine: Vec<&ReachedRole> = reached.iter().filter(|r| r.wanted == wanted).collect();
    mine.sort_by_key(|r| (r.role != wanted, &r.role));
    let reason = mine.into_iter().find_map(|r| guard.why(r))?;
    Some(Refusal::RefusedDbRole { role: wanted.to_string(), reason })
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

/// One change, rendered to SQL by [`crate::sql::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateGroup {
        group: String,
    },
    /// A new user, able to log in; [`Step::GrantRoles`] follows, after the ledger.
    CreateUser {
        user: String,
    },
    /// One statement for all of them, for the reason given at [`Step::RevokeRoles`].
    GrantRoles {
        roles: Vec<String>,
        user: String,
    },
    /// One statement for all of them: PostgreSQL 16+ recomputes the admin's memberships after
    /// every statement that changes some, at a cost that grows with the users it created.
    RevokeRoles {
        roles: Vec<String>,
        user: String,
    },
    SetLogin {
        user: String,
        login: bool,
    },
    /// `ALTER ROLE ... PASSWORD NULL`: a user may set its own password while logged in, and
    /// with it log in later around the proxy. Follows every [`Step::SetLogin`].
    ClearPassword {
        user: String,
    },
    /// `ALTER ROLE ... [IN DATABASE <database>] RESET ALL`: the defaults a user may set for
    /// itself while logged in (`ALTER ROLE self SET ...`), which would shape its next session.
    /// `database` `None`: those of every database.
    ResetSettings {
        user: String,
        database: Option<String>,
    },
    Guard {
        user: String,
        expected_ledger: Option<String>,
    },
    WriteLedger {
        user: String,
        ledger: String,
    },
    DropUser {
        user: String,
    },
    /// `REASSIGN OWNED`: what `user` owns in the connected database (and the databases and
    /// tablespaces it owns) becomes `inheritor`'s.
    ReassignOwned {
        user: String,
        inheritor: String,
    },
    /// `DROP OWNED`, after [`Step::ReassignOwned`]: revokes the privileges `user` holds in the
    /// connected database and on shared objects (it owns nothing there any more).
    DropOwned {
        user: String,
    },
    /// Before [`Step::ReassignOwned`], while the admin holds `user`'s privileges: makes what
    /// `user` owns in the connected database lend nothing once the inheritor owns it.
    /// `SECURITY DEFINER` routines become `SECURITY INVOKER`, views `security_invoker`, user
    /// triggers and rules of its tables are disabled, every privilege on its objects is revoked
    /// from every role but the owner, and `EXECUTE` on its routines from the owner too: no one
    /// but a superuser (or whoever an operator grants it to) runs the code it left, and nothing
    /// of it runs as the inheritor.
    DisarmOwned {
        user: String,
    },
    /// Takes the role name `user` for this transaction without creating it (`CREATE ROLE`,
    /// then `DROP ROLE`): a concurrent `CREATE ROLE` of the name waits for us, and a role
    /// created meanwhile makes this fail.
    ReserveName {
        user: String,
    },
    /// Records `sessions` of `user` as ended in the managed group's comment, and forgets the
    /// entries older than `window_secs`. Writers of that comment are serialised cluster-wide
    /// (see [`crate::sql::render`]), so none loses another's entries.
    RecordEnded {
        group: String,
        user: String,
        sessions: Vec<String>,
        window_secs: u64,
    },
    /// Fails (as a lost race, so that the start reads the state and refuses) when the managed
    /// group's comment records `session` of `user` as ended. Follows the creation of the user,
    /// which waits for a concurrent [`Step::ReserveName`].
    RefuseIfEnded {
        group: String,
        user: String,
        session: String,
    },
    GrantObjects {
        batch: ObjectBatch,
        user: String,
    },
    RevokeObjects {
        batch: ObjectBatch,
        user: String,
    },
    GrantSchemaUsage {
        schemas: Vec<String>,
        user: String,
    },
    RevokeSchemaUsage {
        schemas: Vec<String>,
        user: String,
    },
    /// `SET LOCAL ROLE`: the statements after it run as `role` (`None`: the admin again),
    /// until the next one or the end of the transaction. Placed by [`run_as_creator`].
    SetRole {
        role: Option<String>,
    },
    /// As the admin, makes `creator` ready where it is not: creates it (`NOLOGIN CREATEROLE`),
    /// gives the admin a membership in it with SET and without INHERIT, gives it ADMIN OPTION
    /// on each of `roles`, and makes its function in the schema `schema` (named as the managed
    /// group, owned by the admin; created where the admin may): owned by the creator,
    /// `SECURITY DEFINER`, executable by the admin alone, through which the admin runs the
    /// creator's statements without `SET ROLE`. Placed by [`run_as_creator`].
    PrepareCreator {
        creator: String,
        roles: Vec<String>,
        schema: String,
    },
}

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
fn drop_decision(
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

fn write_ledger(user: &str, ledger: &Ledger) -> Step {
    Step::WriteLedger { user: user.to_string(), ledger: ledger.to_comment() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(session: &str) -> Target {
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

    fn start(session: &str, roles: &[&str], mode: CreateDbUserMode) -> StartRequest {
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

    fn end(session: &str) -> EndRequest {
        EndRequest {
            target: target(session),
            revokes_db_permissions: false,
            terminate_connections: false,
            redelivery_window_secs: 86400,
            object_inheritor: "inheritor".into(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn fresh_server() -> ObservedState {
        ObservedState {
            existing_roles: set(&["reader", "writer", "rds_iam"]),
            server_version_num: 160000,
            ..Default::default()
        }
    }

    /// The state after `steps` ran, as far as the planner cares.
    fn apply(mut state: ObservedState, steps: &[Step]) -> ObservedState {
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

    fn started(state: ObservedState, req: &StartRequest) -> ObservedState {
        match plan_start(req, &state, 10).unwrap() {
            StartDecision::Apply { steps, .. } => apply(state, &steps),
            StartDecision::AlreadyActive { .. } => state,
        }
    }

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

    fn with_creator(state: ObservedState) -> ObservedState {
        ObservedState { creator: Some("grp-creator-1".into()), ..state }
    }

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
    fn with_a_creator_rds_superuser_is_refused_before_anything_runs() {
        // RDS makes rds_superuser WITH CREATEROLE and CREATEDB: no creator, nor the admin,
        // ever grants it, so neither needs to hold it.
        let server = ObservedState {
            existing_roles: set(&["reader", "rds_superuser"]),
            reached_roles: reached("rds_superuser", "rds_superuser", &[RoleFact::CreateRole, RoleFact::CreateDb]),
            ..with_creator(fresh_server())
        };
        let req = start("s1", &["reader", "rds_superuser"], CreateDbUserMode::Keep);
        let err = plan_start(&req, &server, 10).unwrap_err();
        assert!(matches!(&err, Refusal::RefusedDbRole { role, .. } if role == "rds_superuser"), "{err:?}");
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
    fn missing_and_superuser_roles_are_refused() {
        let err = plan_start(&start("s1", &["ghost"], CreateDbUserMode::Keep), &fresh_server(), 0).unwrap_err();
        assert!(matches!(err, Refusal::UnknownDbRole { .. }));
        let state =
            ObservedState { reached_roles: reached("reader", "reader", &[RoleFact::Superuser]), ..fresh_server() };
        let err = plan_start(&start("s1", &["reader"], CreateDbUserMode::Keep), &state, 0).unwrap_err();
        assert!(matches!(err, Refusal::RefusedDbRole { .. }));
    }

    /// `wanted` reaches `role`, which has `facts`.
    fn reached(wanted: &str, role: &str, facts: &[RoleFact]) -> BTreeSet<ReachedRole> {
        BTreeSet::from([ReachedRole {
            wanted: wanted.into(),
            role: role.into(),
            facts: facts.iter().copied().collect(),
        }])
    }

    /// The reason `reader`'s grant is refused with when it reaches `role` with `facts`, or
    /// `None` when the start goes ahead; `allowed` is `allowed_predefined_roles`.
    fn refusal_reaching(role: &str, facts: &[RoleFact], allowed: &[&str]) -> Option<String> {
        let mut req = start("s1", &["reader"], CreateDbUserMode::Keep);
        req.allowed_predefined_roles = set(allowed);
        let mut reached_roles = reached("reader", "reader", &[]);
        reached_roles.extend(reached("reader", role, facts));
        // Another wanted role's facts are not reader's.
        reached_roles.extend(reached("other", "other", &[RoleFact::Superuser]));
        let state = ObservedState { reached_roles, ..fresh_server() };
        match plan_start(&req, &state, 0) {
            Ok(_) => None,
            Err(Refusal::RefusedDbRole { role, reason }) => {
                assert_eq!(role, "reader");
                Some(reason)
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wanted_role_reaching_a_powerful_role_is_refused_naming_why() {
        use RoleFact::*;
        for (facts, why) in [
            (vec![Superuser], "a superuser role"),
            (vec![CreateRole], "WITH CREATEROLE"),
            (vec![CreateDb], "WITH CREATEDB"),
            (vec![Replication], "WITH REPLICATION"),
            (vec![BypassRls], "WITH BYPASSRLS"),
            (vec![ManagedUser], "another person's user"),
            (vec![Predefined], "allowed_predefined_roles does not list"),
            // The strongest reason first.
            (vec![Predefined, CreateRole, Superuser], "a superuser role"),
        ] {
            let reason = refusal_reaching("pg_power", &facts, &[]).unwrap_or_else(|| panic!("{facts:?} granted"));
            assert!(reason.contains(why), "{facts:?}: {reason}");
            assert!(reason.contains("it is a member of \"pg_power\""), "{reason}");
        }
        // Roles of ours, by name: a creator (whatever its attributes) and the inheritor.
        let reason = refusal_reaching("grp-creator-3", &[CreateRole, ManagedUser], &[]).unwrap();
        assert!(reason.contains("a creator role"), "{reason}");
        assert!(refusal_reaching("heir", &[], &[]).unwrap().contains("object inheritor"));
        // Harmless roles, and a predefined role the config allows.
        assert_eq!(refusal_reaching("app_ro", &[], &[]), None);
        assert_eq!(refusal_reaching("pg_read_all_data", &[Predefined], &["pg_read_all_data"]), None);
        assert!(refusal_reaching("pg_read_all_data", &[Predefined, CreateRole], &["pg_read_all_data"]).is_some());
        assert!(refusal_reaching("pg_monitor", &[Predefined], &["pg_read_all_data"]).is_some());
    }

    #[test]
    fn the_wanted_role_itself_is_named_first() {
        let mut req = start("s1", &["reader"], CreateDbUserMode::Keep);
        req.db_roles = set(&["reader"]);
        let mut reached_roles = reached("reader", "reader", &[RoleFact::CreateDb]);
        reached_roles.extend(reached("reader", "a_super", &[RoleFact::Superuser]));
        let err = plan_start(&req, &ObservedState { reached_roles, ..fresh_server() }, 0).unwrap_err();
        let Refusal::RefusedDbRole { role, reason } = err else { panic!("{err:?}") };
        assert_eq!(
            (role.as_str(), reason.as_str()),
            ("reader", "it is a role WITH CREATEDB: whoever is granted it may SET ROLE to it")
        );
    }

    #[test]
    fn a_role_refused_since_a_users_last_start_is_refused_to_its_next_session() {
        let state = started(fresh_server(), &start("s1", &["writer"], CreateDbUserMode::Keep));
        // Someone made writer a member of the managed group meanwhile.
        let state = ObservedState { reached_roles: reached("writer", "writer", &[RoleFact::ManagedUser]), ..state };
        let req = start("s2", &["writer"], CreateDbUserMode::Keep);
        assert!(matches!(plan_start(&req, &state, 0), Err(Refusal::RefusedDbRole { role, .. }) if role == "writer"));
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

    fn with_objects(database: &str) -> ObservedState {
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

    fn object_rules(permission: &str) -> crate::permissions::ObjectRules {
        let rule: crate::permissions::PermissionRule = serde_yaml_ng::from_str(&format!(
            "{{match: {{object_kind: table, name: orders}}, permissions: [{permission}]}}"
        ))
        .unwrap();
        crate::permissions::ObjectRules { allow: vec![rule.compile(0).unwrap()], deny: vec![], import_rules: vec![] }
    }

    fn held(state: &ObservedState) -> Vec<(String, BTreeSet<String>)> {
        let objects = state.objects.as_ref().unwrap();
        objects.objects.iter().map(|o| (o.name.clone(), o.held.clone())).collect()
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
