//! The AWS adapter against real peers: boto3's tokens, a throwaway PostgreSQL, and a local
//! AWS emulator (`moto_server`).

mod cluster;
mod discovery;
mod golden;
mod login;
mod replicas;
mod resolve;
mod retries;
mod secrets;
