//! pg-autouser's engine: the PostgreSQL execution of the decisions made by `autouser-policy`.
//!
//! `sql` holds every SQL text and the rendering of the plan's steps; `pg` and `tls` make admin
//! connections; `engine` runs a plan in one transaction over a `tokio_postgres::Client` that
//! the caller connects with [`pg::connect`]; `preflight` and `reaper` read and act on a
//! database's managed users, and `status` reads them for `autouser status`. Never calls AWS.
//! No module imports one that imports it back (checked by `tests/boundaries.rs`).

pub mod dry_run;
pub mod engine;
pub mod error;
pub mod pg;
pub mod preflight;
#[cfg(test)]
mod properties;
pub mod reaper;
pub mod replica;
pub mod sql;
pub mod status;
mod tls;

pub use error::Error;
/// The driver, re-exported so adapters name the same `Client` type.
pub use tokio_postgres;
