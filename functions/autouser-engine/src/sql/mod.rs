//! All SQL text of pg-autouser, in one place for reviewers.
//!
//! Invariants:
//! - identifiers go through [`quote_ident`] and nothing else;
//! - values go through bind parameters where PostgreSQL allows them; utility statements
//!   (`CREATE ROLE`, `GRANT`, `COMMENT ON`, `DO`) accept no parameters, so their values go
//!   through [`quote_literal`] and nothing else.
//!
//! Both wrap `postgres_protocol::escape`, which doubles quotes and uses the `E''` form when a
//! value holds a backslash, so the result is correct whatever `standard_conforming_strings` is.
//!
//! A folder, a file per concern; this file re-exports every public name, so callers write
//! `sql::NAME`:
//! - `quote`: [`quote_ident`] and [`quote_literal`], the only code that quotes;
//! - `transaction`: `BEGIN`, `COMMIT`, the rollbacks, the drop's savepoint, the user's lock
//!   ([`LOCK_USER`]), the WAL position after a `COMMIT` ([`COMMIT_LSN`]);
//! - `state`: [`READ_STATE`], what a call reads before it plans, and its walk of the roles
//!   reached;
//! - `objects`: the object listing for `db_permissions` (`LIST_*`);
//! - `checks`: the checks a transaction runs among its statements ([`Check`]), as `DO` blocks
//!   or functions, and the one-round-trip start's message ([`locked_transaction`]);
//! - `render`: the plan's steps as SQL ([`render`], [`Renderer`]);
//! - `creators`: the creator roles' functions: whether ready, their making, their call;
//! - `queries`: the other fixed queries, by caller (an end's, the reaper's, `status`'s,
//!   preflight's, a read replica's);
//! - `tests`: the checks over the sources (quoting only in `quote`, SQL text in ASCII).

mod checks;
mod creators;
mod objects;
mod queries;
mod quote;
mod render;
mod state;
mod transaction;

pub use checks::{db_roles_check, locked_transaction, make_check_functions, Check, CheckCall, CHECK_FUNCTIONS_MADE};
pub use creators::{prepare_creators, CREATORS_NOT_READY};
pub use objects::{LIST_RELATIONS, LIST_ROUTINES, LIST_SCHEMAS};
pub use queries::{
    ADMIN_HAND_OVER_PRIVILEGES, ADMIN_MAY_CREATE_ROLES, CONNECTIONS_BY_USER, CONNECTION_BUDGET,
    END_HOLDING_CONNECTIONS, GROUP_COMMENT, HAND_OVER_STATE, INHERITOR_LACKS_CREATE, LIST_MANAGED_USERS,
    REPLAY_PROGRESS, ROLES_WITHOUT_ADMIN_OPTION, ROLE_OID, STATUS, TERMINATE_CONNECTIONS,
    TERMINATE_CONNECTIONS_AWAITED, USER_DEPENDENCIES,
};
pub use quote::{quote_ident, quote_literal};
pub use render::{object_name, render, CreatorsWithoutFunction, Renderer, ENDED_SESSIONS_LOCK_ROLE};
pub use state::{role_facts, REACHED_ROLES, READ_STATE};
pub use transaction::{
    user_lock_key, BEGIN, COMMIT, COMMIT_LSN, COMMIT_LSN_COLUMN, LOCK_USER, ROLLBACK, ROLLBACK_TO_DROP, SAVEPOINT_DROP,
};

#[cfg(test)]
mod tests;
