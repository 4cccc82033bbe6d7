//! The AWS edge of pg-autouser. The core never calls AWS; this crate turns AWS credentials
//! into what the core's `pg::connect` takes.

pub mod rds_token;
