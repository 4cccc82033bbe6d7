//! The reaper function's name and the totals of one run: what the reaper, its metrics and its
//! audit events share. A module of its own, so that `metrics` and `audit` need not import
//! `reaper`, which imports them.

/// The reaper function's name, as in logs, metrics and audit events.
pub const FUNCTION_NAME: &str = "reaper";

/// What one run did, over all databases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub closed: usize,
    pub locked: usize,
    pub left_open: usize,
    /// Members of the managed group able to log in with no ledger of ours: reported, untouched.
    pub unowned_logins: usize,
    /// Databases not reached, and actions that failed.
    pub failed: usize,
    /// Closes and locks not started because the run's time was up.
    pub deferred_actions: usize,
    /// Databases not started because the run's time was up.
    pub deferred_databases: usize,
}
