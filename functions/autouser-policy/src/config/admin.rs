//! How the admin logs in: its name (`AdminUser`), its credentials (`AuthConfig`) and TLS
//! (`TlsConfig`), and the checks of the file's `auth` and `tls` blocks.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    pub name: String,
    /// Database the admin logs into; when absent, the session's `db_name`.
    pub default_database: Option<String>,
}

/// Where the admin's credentials come from. The core only reads files and environment
/// variables; AWS sources (IAM tokens, Secrets Manager) are resolved by the AWS adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// X.509 client certificate (and chain) and key, PEM files; an encrypted key's passphrase
    /// in the environment variable `key_password_env` (libpq's `sslpassword`).
    CertFiles { cert_file: PathBuf, key_file: PathBuf, key_password_env: Option<String> },
    /// X.509 client certificate and key, PEM, in a Secrets Manager secret.
    CertSecret { secret_arn: String },
    /// Password from an environment variable.
    PasswordEnv { password_env: String },
    /// RDS-style JSON secret (`username`, `password`, …) in Secrets Manager.
    PasswordSecret { secret_arn: String },
    /// RDS IAM authentication token.
    Iam { region: Option<String> },
}

impl AuthConfig {
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::CertFiles { .. } | AuthConfig::CertSecret { .. } => "cert",
            AuthConfig::PasswordEnv { .. } | AuthConfig::PasswordSecret { .. } => "password",
            AuthConfig::Iam { .. } => "iam",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Verify the server certificate chain and that it names the host.
    VerifyFull,
    /// Verify the chain only.
    VerifyCa,
    /// Encrypt, but accept any server certificate.
    Require,
    /// Plain text: for local experiments only.
    Disable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
}

/// How the admin logs in: `cert` (`cert_file` and `key_file`, or `secret_arn`), `password`
/// (`password_env` or `secret_arn`) or `iam` (optional `region`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
pub(super) struct RawAuth {
    #[schemars(extend("enum" = ["cert", "password", "iam"]))]
    method: String,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    key_password_env: Option<String>,
    password_env: Option<String>,
    secret_arn: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
pub(super) struct RawTls {
    pub(super) mode: TlsMode,
    pub(super) ca_file: Option<PathBuf>,
}

impl RawAuth {
    pub(super) fn validate(self, at: &str, base_dir: &Path) -> Result<AuthConfig, ConfigError> {
        let RawAuth { method, cert_file, key_file, key_password_env, password_env, secret_arn, region } = self;
        let unexpected = |field: &str, present: bool| -> Result<(), ConfigError> {
            if present {
                Err(invalid(format!("{at}.{field}"), format!("does not apply to method {method:?}")))
            } else {
                Ok(())
            }
        };
        match method.as_str() {
            "cert" => {
                unexpected("password_env", password_env.is_some())?;
                unexpected("region", region.is_some())?;
                if key_password_env.as_deref() == Some("") {
                    return Err(invalid(format!("{at}.key_password_env"), "must name an environment variable"));
                }
                match (cert_file, key_file, secret_arn) {
                    (Some(cert), Some(key), None) => Ok(AuthConfig::CertFiles {
                        cert_file: base_dir.join(cert),
                        key_file: base_dir.join(key),
                        key_password_env,
                    }),
                    (None, None, Some(_)) if key_password_env.is_some() => Err(invalid(
                        format!("{at}.key_password_env"),
                        "does not apply to a secret: put the passphrase in the secret's private_key_password",
                    )),
                    (None, None, Some(arn)) => Ok(AuthConfig::CertSecret { secret_arn: arn }),
                    _ => Err(invalid(at, "method cert needs either cert_file and key_file, or secret_arn")),
                }
            }
            "password" => {
                unexpected("key_password_env", key_password_env.is_some())?;
                unexpected("cert_file", cert_file.is_some())?;
                unexpected("key_file", key_file.is_some())?;
                unexpected("region", region.is_some())?;
                match (password_env, secret_arn) {
                    (Some(var), None) if !var.is_empty() => Ok(AuthConfig::PasswordEnv { password_env: var }),
                    (None, Some(arn)) => Ok(AuthConfig::PasswordSecret { secret_arn: arn }),
                    _ => Err(invalid(at, "method password needs either password_env or secret_arn")),
                }
            }
            "iam" => {
                unexpected("key_password_env", key_password_env.is_some())?;
                unexpected("cert_file", cert_file.is_some())?;
                unexpected("key_file", key_file.is_some())?;
                unexpected("password_env", password_env.is_some())?;
                unexpected("secret_arn", secret_arn.is_some())?;
                Ok(AuthConfig::Iam { region })
            }
            other => {
                Err(invalid(format!("{at}.method"), format!("unknown method {other:?}: use cert, password or iam")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn auth_methods_need_their_fields() {
        let text = EXAMPLE.replace("{method: cert, cert_file: admin.crt, key_file: admin.key}", "{method: password}");
        assert!(parse(&text).unwrap_err().to_string().contains("password_env or secret_arn"));
        let text = EXAMPLE.replace(
            "{method: cert, cert_file: admin.crt, key_file: admin.key}",
            "{method: password, secret_arn: 'arn:aws:secretsmanager:us-east-1:1:secret:x'}",
        );
        assert!(matches!(parse(&text).unwrap().databases[0].auth, AuthConfig::PasswordSecret { .. }));
        let text = EXAMPLE.replace("{method: cert, cert_file: admin.crt, key_file: admin.key}", "{method: kerberos}");
        assert!(parse(&text).unwrap_err().to_string().contains("databases[0].auth.method"));
    }
}
