//! Engine tests against a real PostgreSQL. The version is the one `AUTOUSER_PG_BIN` points at;
//! `scripts/test` runs this binary once per supported version.

mod checks;
mod concurrency;
mod connection;
mod creators;
mod delivery;
mod errors;
mod faults;
mod fixture;
mod handing_over;
mod hostile;
mod hostile_db_roles;
mod hostile_hand_over;
mod injection;
mod lifecycle;
mod object_permissions;
mod preflight;
mod reaper;
mod round_trips;
mod tls_interop;
