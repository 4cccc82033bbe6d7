//! Turns a config and an event into a fully decided request, before any connection is made:
//! which database, which role name, which mode and roles. Everything refused here costs no
//! round trip and touches nothing.

use std::collections::BTreeSet;

use crate::config::{Config, DatabaseType, ResolvedDatabase, RDS_IAM_ROLE};
use crate::event::SessionEvent;
use crate::ledger::Identity;
use crate::naming;
use crate::permissions::ObjectRules;
use crate::policy::{AccessRequest, CreateDbUserMode};
use crate::refusal::Refusal;

/// Who and where, shared by starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub session_id: String,
    pub person: String,
    pub db_user: String,
    /// Database name in the config.
    pub database: String,
    /// Database inside the server the session uses.
    pub db_name: String,
    /// Database the admin connects to: `admin_user.default_database`, or `db_name` when it
    /// is unset or the policy grants object permissions (grants on objects are per database).
    pub admin_db_name: String,
    pub admin: String,
    pub managed_group: String,
    pub endpoint: String,
    /// The user's creator role (`creator_roles`): on PostgreSQL 16+, with an admin that is not
    /// a superuser, it creates the user and runs the user's role statements.
    pub creator: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub target: Target,
    /// The person the session is for; recorded in the ledger of the role, and compared with
    /// the identity recorded there.
    pub identity: Identity,
    pub mode: CreateDbUserMode,
    /// Roles granted on top of the managed group (and `rds_iam`): exactly these.
    pub db_roles: BTreeSet<String>,
    /// `rds_iam` on RDS.
    pub platform_roles: BTreeSet<String>,
    /// Object permission rules, granted in `db_name`.
    pub db_permissions: Option<ObjectRules>,
    /// The object inheritor (`object_inheritor`): never granted, nor a role that reaches it.
    pub object_inheritor: String,
    /// The predefined roles policies may grant (`allowed_predefined_roles`).
    pub allowed_predefined_roles: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndRequest {
    pub target: Target,
    /// The policy grants object permissions somewhere: the end lists the objects of `db_name`
    /// to revoke what a session there was granted.
    pub revokes_db_permissions: bool,
    /// End the user's open connections once its last session ends (`terminate_connections`).
    pub terminate_connections: bool,
    /// How long an ended session that has no ledger left to live in (its user was dropped, or
    /// its end came before its start) is remembered in the managed group's comment
    /// (`redelivery_window`).
    pub redelivery_window_secs: u64,
    /// Who receives the objects of a user dropped in `best_effort_reassign_and_drop`
    /// (`object_inheritor`).
    pub object_inheritor: String,
}

/// The configured database an event names; the caller resolves it (statically, or through
/// the AWS adapter for RDS) before preparing the request.
pub fn database<'c>(config: &'c Config, event: &SessionEvent) -> Result<&'c crate::config::DatabaseConfig, Refusal> {
    config.database(&event.database).ok_or_else(|| Refusal::UnknownDatabase { database: event.database.clone() })
}

fn target(config: &Config, db: &ResolvedDatabase, event: &SessionEvent) -> Result<Target, Refusal> {
    if db.name != event.database {
        return Err(Refusal::UnknownDatabase { database: event.database.clone() });
    }
    let db_user = naming::db_user_name(&event.user, event.origin_cluster.as_deref(), config.cluster_name.as_deref());
    naming::validate_db_user(&db_user, &db.admin_user.name, &config.managed_group, &config.object_inheritor)
        .map_err(|source| Refusal::InvalidUserName { person: event.user.clone(), source })?;
    // Object privileges are granted, and revoked, in the session's own database.
    let admin_db_name =
        if config.policy.has_db_permissions() { &event.db_name } else { db.admin_database(&event.db_name) };
    let creator = config.creator_role_for(&db_user);
    Ok(Target {
        creator,
        session_id: event.session_id.clone(),
        person: event.user.clone(),
        db_user,
        database: db.name.clone(),
        db_name: event.db_name.clone(),
        admin_db_name: admin_db_name.to_string(),
        admin: db.admin_user.name.clone(),
        managed_group: config.managed_group.clone(),
        endpoint: db.endpoint(),
    })
}

pub fn prepare_start(config: &Config, db: &ResolvedDatabase, event: &SessionEvent) -> Result<StartRequest, Refusal> {
    let roles = event.start_roles()?;
    let target = target(config, db, event)?;
    let grant = config
        .policy
        .evaluate(&AccessRequest {
            role_names: roles,
            traits: &event.traits,
            database: &db.name,
            labels: &db.labels,
            db_name: &event.db_name,
            requested_db_roles: event.db_roles.as_deref(),
        })
        .map_err(|source| Refusal::Policy {
            person: event.user.clone(),
            database: db.name.clone(),
            source: Box::new(source),
        })?;
    for role in &grant.db_roles {
        let refused = |reason: &str| Err(Refusal::RefusedDbRole { role: role.clone(), reason: reason.to_string() });
        if *role == target.admin {
            return refused("it is the admin user");
        }
        if *role == target.managed_group {
            return refused("it is the managed group, which every managed user already has");
        }
        if *role == target.db_user {
            return refused("it is the user itself");
        }
        if *role == config.object_inheritor {
            return refused("it is the object inheritor, which owns the objects of dropped users");
        }
    }
    let platform_roles = match db.db_type {
        DatabaseType::Rds => BTreeSet::from([RDS_IAM_ROLE.to_string()]),
        DatabaseType::SelfHosted => BTreeSet::new(),
    };
    let origin_cluster = event.origin_cluster.clone().filter(|origin| Some(origin) != config.cluster_name.as_ref());
    Ok(StartRequest {
        target,
        identity: Identity { user: event.user.clone(), origin_cluster },
        mode: grant.mode,
        db_roles: grant.db_roles,
        platform_roles,
        db_permissions: grant.db_permissions,
        object_inheritor: config.object_inheritor.clone(),
        allowed_predefined_roles: config.allowed_predefined_roles.clone(),
    })
}

pub fn prepare_end(config: &Config, db: &ResolvedDatabase, event: &SessionEvent) -> Result<EndRequest, Refusal> {
    Ok(EndRequest {
        target: target(config, db, event)?,
        revokes_db_permissions: config.policy.has_db_permissions(),
        terminate_connections: config.terminate_connections,
        redelivery_window_secs: config.redelivery_window.as_secs(),
        object_inheritor: config.object_inheritor.clone(),
    })
}
