//! `Step`: one change a plan makes, which the engine's `sql::render` words as SQL.

use crate::permissions::ObjectBatch;

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
    /// until the next one or the end of the transaction. Placed by [`run_as_creator`](super::run_as_creator).
    SetRole {
        role: Option<String>,
    },
    /// As the admin, makes `creator` ready where it is not: creates it (`NOLOGIN CREATEROLE`),
    /// gives the admin a membership in it with SET and without INHERIT, gives it ADMIN OPTION
    /// on each of `roles`, and makes its function in the schema `schema` (named as the managed
    /// group, owned by the admin; created where the admin may): owned by the creator,
    /// `SECURITY DEFINER`, executable by the admin alone, through which the admin runs the
    /// creator's statements without `SET ROLE`. Placed by [`run_as_creator`](super::run_as_creator).
    PrepareCreator {
        creator: String,
        roles: Vec<String>,
        schema: String,
    },
}
