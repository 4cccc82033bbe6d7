//! RDS IAM auth tokens: byte-for-byte against boto3, and accepted as a password on the wire.

mod golden;
mod login;
