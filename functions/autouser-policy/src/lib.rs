//! pg-autouser's pure domain: everything that decides just-in-time PostgreSQL user
//! provisioning, with no I/O, independent of how it is triggered (CLI, Lambda), of AWS and of
//! the PostgreSQL driver.
//!
//! Config and events come in (`config`, `event`); the Teleport role model (`policy`,
//! `label_match`, `templates`) and object rules (`permissions`) evaluate them; `naming`,
//! `request` and `ledger` make a fully decided request; `plan` turns the observed database
//! state and a request into ordered `Step`s, or a [`Refusal`]. The `autouser-engine` crate
//! renders the steps as SQL and runs them. `status` turns what a read of a database found into
//! who has access now, and where the catalog drifted from the ledgers.
//!
//! The crate depends on no tokio, PostgreSQL, TLS or AWS crate (checked by
//! `tests/boundaries.rs`), and no module imports one that imports it back.

pub mod config;
pub mod event;
pub mod identity;
pub mod label_match;
pub mod ledger;
pub mod naming;
pub mod outcome;
pub mod permissions;
pub mod plan;
pub mod policy;
#[cfg(test)]
mod properties;
#[doc(hidden)]
pub mod property_reach;
pub mod refusal;
pub mod request;
pub mod stable_hash;
pub mod status;
pub mod templates;

pub use refusal::Refusal;
