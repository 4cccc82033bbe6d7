//! The check of the roles a start grants: what the catalog says about each role a wanted role
//! is or reaches (`ReachedRole`, `RoleFact`), and why a grant is refused (`db_role_refusal`).

use std::collections::BTreeSet;

use crate::refusal::Refusal;
use crate::request::StartRequest;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_support::*;
    use crate::plan::*;
    use crate::policy::CreateDbUserMode;

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
}
