//! How a person becomes a database role name, and which names are never provisioned.
//!
//! PostgreSQL silently truncates identifiers longer than 63 bytes (NAMEDATALEN - 1), so two
//! long names could map to one role. We refuse such names instead of letting that happen.

use thiserror::Error;

/// The longest role name PostgreSQL stores without truncating it.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Role names PostgreSQL itself reserves or treats as keywords in role specifications.
const POSTGRES_RESERVED: &[&str] = &["public", "none", "current_user", "session_user", "current_role"];

/// Roles owned by the server or by RDS that a person's name must never collide with.
const SERVER_ROLES: &[&str] = &["postgres", "rdsadmin", "rdsrepladmin"];

/// The role name pg-autouser takes (creates and drops within one transaction) to serialise
/// the writers of the managed group's comment: see [`crate::sql::ENDED_SESSIONS_LOCK_ROLE`].
pub const ENDED_SESSIONS_LOCK_ROLE: &str = "pg-autouser-ended-sessions-lock";

/// The most creator roles a config may ask for (`creator_roles`).
pub const MAX_CREATOR_ROLES: u32 = 1024;

/// The name of creator role `index` of the managed group `group`: `<group>-creator-<index>`.
/// Creator roles (`creator_roles`, PostgreSQL 16+) create and manage the users, so that each
/// role statement's check of the creator's memberships walks only its own share of them.
pub fn creator_role_name(group: &str, index: u32) -> String {
    format!("{group}{}{index}", creator_role_infix())
}

fn creator_role_infix() -> &'static str {
    "-creator-"
}

/// The creator role of `db_user` among `count` (at least 1): the same for a user in every
/// release and process, from [`crate::stable_hash`].
pub fn creator_role_for(group: &str, count: u32, db_user: &str) -> String {
    let hash = crate::stable_hash::fnv1a_64(b"pg-autouser creator\0".iter().chain(db_user.as_bytes()).copied());
    creator_role_name(group, (hash % u64::from(count)) as u32)
}

/// Whether `name` is shaped like a creator role of `group` (whatever the count).
pub fn is_creator_role_name(group: &str, name: &str) -> bool {
    name.strip_prefix(group).and_then(|rest| rest.strip_prefix(creator_role_infix())).is_some()
}

/// Prefixes PostgreSQL (`pg_`) and RDS (`rds_`) reserve for their own roles.
const RESERVED_PREFIXES: &[&str] = &["pg_", "rds_"];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("database user name is empty: the event's `user` must name a person")]
    Empty,
    #[error("database user name {name:?} contains a NUL byte, which PostgreSQL cannot store")]
    ContainsNul { name: String },
    #[error(
        "database user name {name:?} is {bytes} bytes long; PostgreSQL would truncate it to \
         {MAX_IDENTIFIER_BYTES} bytes and could confuse it with another user: use a shorter \
         user or cluster name"
    )]
    TooLong { name: String, bytes: usize },
    #[error("database user name {name:?} is reserved ({reason}); it is never provisioned")]
    Reserved { name: String, reason: &'static str },
}

/// The database role name for a person: their name, or `remote-<user>-<origin_cluster>` when
/// they come from another cluster than `cluster_name` (a missing `cluster_name` means every
/// origin is remote).
pub fn db_user_name(user: &str, origin_cluster: Option<&str>, cluster_name: Option<&str>) -> String {
    match origin_cluster {
        Some(origin) if Some(origin) != cluster_name => format!("remote-{user}-{origin}"),
        _ => user.to_string(),
    }
}

/// Checks that PostgreSQL stores `name` exactly as given.
pub fn validate_identifier(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains('\0') {
        return Err(NameError::ContainsNul { name: name.to_string() });
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(NameError::TooLong { name: name.to_string(), bytes: name.len() });
    }
    Ok(())
}

/// Checks that `name` may be created and managed as a person's database user.
pub fn validate_db_user(
    name: &str,
    admin_user: &str,
    managed_group: &str,
    object_inheritor: &str,
) -> Result<(), NameError> {
    validate_identifier(name)?;
    let reserved = |reason| Err(NameError::Reserved { name: name.to_string(), reason });
    if name == admin_user {
        return reserved("it is the admin user");
    }
    if name == managed_group {
        return reserved("it is the managed group");
    }
    if name == object_inheritor {
        return reserved("it is the object inheritor, which owns the objects of dropped users");
    }
    if name == ENDED_SESSIONS_LOCK_ROLE {
        return reserved("pg-autouser takes this name as a lock");
    }
    if is_creator_role_name(managed_group, name) {
        return reserved("it is shaped like a creator role of the managed group");
    }
    if SERVER_ROLES.contains(&name) {
        return reserved("it is a server or RDS role");
    }
    if POSTGRES_RESERVED.contains(&name) {
        return reserved("PostgreSQL reserves it");
    }
    if RESERVED_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
        return reserved("the pg_ and rds_ prefixes belong to PostgreSQL and RDS");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::cases;
    use crate::property_reach::Reach;
    use proptest::prelude::*;

    #[test]
    fn creator_roles_are_stable_spread_and_reserved() {
        // Pinned: a user's creator never changes between releases.
        // FNV-1a 64 of "pg-autouser creator\0alice", modulo 64 (computed independently).
        assert_eq!(creator_role_for("grp", 64, "alice"), "grp-creator-63");
        let used: std::collections::BTreeSet<String> =
            (0..1000).map(|i| creator_role_for("grp", 8, &format!("user{i}"))).collect();
        assert_eq!(used.len(), 8, "{used:?}");
        assert!(used.iter().all(|name| is_creator_role_name("grp", name)));
        assert_eq!(creator_role_name("grp", 7), "grp-creator-7");
        assert!(matches!(validate_db_user("grp-creator-3", "admin", "grp", "heir"), Err(NameError::Reserved { .. })));
        assert!(validate_db_user("grp-creators", "admin", "grp", "heir").is_ok());
    }

    #[test]
    fn local_user_keeps_their_name() {
        assert_eq!(db_user_name("alice", None, Some("leaf")), "alice");
        assert_eq!(db_user_name("alice", Some("leaf"), Some("leaf")), "alice");
    }

    #[test]
    fn remote_user_gets_prefixed_name() {
        assert_eq!(db_user_name("alice", Some("root"), Some("leaf")), "remote-alice-root");
        assert_eq!(db_user_name("alice", Some("root"), None), "remote-alice-root");
    }

    #[test]
    fn sixty_three_bytes_pass_and_sixty_four_fail() {
        assert!(validate_identifier(&"a".repeat(63)).is_ok());
        assert!(matches!(validate_identifier(&"a".repeat(64)), Err(NameError::TooLong { bytes: 64, .. })));
        // 21 three-byte characters are 63 bytes; one more is 66.
        assert!(validate_identifier(&"€".repeat(21)).is_ok());
        assert!(validate_identifier(&"€".repeat(22)).is_err());
    }

    #[test]
    fn empty_and_nul_names_are_refused() {
        assert_eq!(validate_identifier(""), Err(NameError::Empty));
        assert!(matches!(validate_identifier("a\0b"), Err(NameError::ContainsNul { .. })));
    }

    #[test]
    fn reserved_names_are_refused() {
        for name in [
            "teleport-admin",
            "teleport-auto-user",
            "teleport-object-inheritor",
            "postgres",
            "rdsadmin",
            "rdsrepladmin",
            "pg_monitor",
            "rds_superuser",
            "public",
            "none",
            ENDED_SESSIONS_LOCK_ROLE,
        ] {
            assert!(
                matches!(
                    validate_db_user(name, "teleport-admin", "teleport-auto-user", "teleport-object-inheritor"),
                    Err(NameError::Reserved { .. })
                ),
                "{name} must be reserved"
            );
        }
        assert!(
            validate_db_user("Postgres", "teleport-admin", "teleport-auto-user", "teleport-object-inheritor").is_ok()
        );
        assert!(validate_db_user("rdsx", "teleport-admin", "teleport-auto-user", "teleport-object-inheritor").is_ok());
    }

    #[test]
    fn remote_name_contains_user_and_origin() {
        let reach = Reach::new("remote_name_contains_user_and_origin");
        proptest!(cases(), |(user in "\\PC{1,20}", origin in "\\PC{1,20}", cluster in "\\PC{1,20}")| {
            reach.case();
            let name = db_user_name(&user, Some(&origin), Some(&cluster));
            reach.reached();
            if origin == cluster {
                prop_assert_eq!(name, user);
            } else {
                prop_assert_eq!(name, format!("remote-{user}-{origin}"));
            }
        });
        reach.check();
    }

    #[test]
    fn validation_accepts_exactly_what_postgres_stores_untruncated() {
        let reach = Reach::new("validation_accepts_exactly_what_postgres_stores_untruncated");
        proptest!(cases(), |(name in "\\PC{0,40}")| {
            reach.case();
            let ok = validate_identifier(&name).is_ok();
            let storable = !name.is_empty() && !name.contains('\0') && name.len() <= MAX_IDENTIFIER_BYTES;
            reach.reached();
            prop_assert_eq!(ok, storable);
        });
        reach.check();
    }

    #[test]
    fn remote_names_never_collide_with_reserved_prefixes() {
        let reach = Reach::new("remote_names_never_collide_with_reserved_prefixes");
        proptest!(cases(), |(user in "[a-z]{1,10}", origin in "[a-z]{1,10}")| {
            let name = db_user_name(&user, Some(&origin), Some("local"));
            prop_assume!(origin != "local");
            reach.case();
            reach.reached();
            prop_assert!(validate_db_user(&name, "teleport-admin", "teleport-auto-user", "teleport-object-inheritor").is_ok());
        });
        reach.check();
    }
}
