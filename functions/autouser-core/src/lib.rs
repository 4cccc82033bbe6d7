//! pg-autouser core: everything that decides and performs just-in-time PostgreSQL user
//! provisioning, independent of how it is triggered (CLI, Lambda) and of AWS.
//!
//! The pure part (`config`, `event`, `policy`, `label_match`, `templates`, `naming`, `ledger`, `plan`, `sql`) does no I/O
//! and is unit tested. The PostgreSQL edge (`pg`, `engine`) executes plans over a
//! `tokio_postgres::Client` that the caller connects with [`pg::connect`].

pub mod config;
pub mod engine;
pub mod error;
pub mod event;
pub mod label_match;
pub mod ledger;
pub mod naming;
pub mod outcome;
pub mod permissions;
pub mod pg;
pub mod plan;
pub mod policy;
pub mod preflight;
#[cfg(test)]
mod properties;
pub mod reaper;
pub mod request;
pub mod sql;
pub mod templates;
mod tls;

pub use error::Error;
/// The driver, re-exported so adapters name the same `Client` type.
pub use tokio_postgres;
