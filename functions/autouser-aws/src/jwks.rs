//! The identity edge: an issuer's keys from its `jwks_uri` (over HTTPS only), or from SSM or
//! S3 (`jwks_ssm_parameter`, `jwks_s3_uri`, read as the config is), cached per process for
//! [`MAX_AGE`], and read again when a token names a key id the cached set lacks, at most once
//! a minute per source (a flood of forged key ids cannot make us hammer the issuer). The
//! policy crate does the verification ([`identity`]); this module only brings the keys.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autouser_policy::event::SessionEvent;
use autouser_policy::identity::{self, Check, IdentityConfig, KeySource, Purpose, Unverified, VerifiedIdentity};
use bytes::Bytes;

use crate::config_store::ConfigLocation;
use crate::AwsContext;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A fetched set is refetched for an unknown key id no sooner than this after the last fetch.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// A cached set older than this is fetched again before use, so that a key the issuer
/// removed stops working within this time.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// One fetch's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// A fetched JWKS and when it was fetched.
type Fetched = (Arc<JwkSet>, Instant);

/// JWKS documents by URI, with when each was fetched. Cheap to clone (shared).
#[derive(Clone)]
pub struct JwksCache {
    sets: Arc<Mutex<HashMap<String, Fetched>>>,
    roots: Arc<std::sync::OnceLock<Arc<rustls::RootCertStore>>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    min_refresh: Duration,
    max_age: Duration,
}

impl JwksCache {
    /// Trusts the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), read at
    /// the first fetch: a config without `jwks_uri` never reads them.
    pub fn new() -> JwksCache {
        JwksCache::with_roots(Arc::new(std::sync::OnceLock::new()))
    }

    /// Trusts only the CA certificates of the PEM file `ca_file` (a private identity provider;
    /// the tests' local server).
    pub fn with_ca_file(ca_file: &std::path::Path) -> Result<JwksCache, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        Ok(JwksCache::with_roots(Arc::new(std::sync::OnceLock::from(Arc::new(roots)))))
    }

    fn with_roots(roots: Arc<std::sync::OnceLock<Arc<rustls::RootCertStore>>>) -> JwksCache {
        JwksCache {
            sets: Arc::default(),
            roots,
            fetches: Arc::default(),
            min_refresh: MIN_REFRESH_INTERVAL,
            max_age: MAX_AGE,
        }
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.roots
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::warn!(%error, "a system root certificate could not be read");
                }
                roots.add_parsable_certificates(native.certs);
                Arc::new(roots)
            })
            .clone()
    }

    /// The same cache refreshing on an unknown key id at most once per `min_refresh` instead
    /// of [`MIN_REFRESH_INTERVAL`], and keeping a set at most `max_age` instead of [`MAX_AGE`]
    /// (tests of rotation).
    pub fn with_timing(self, min_refresh: Duration, max_age: Duration) -> JwksCache {
        JwksCache { min_refresh, max_age, ..self }
    }

    /// How many fetches this cache made (for tests and metrics).
    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The event with its identity token verified and applied, as
    /// [`identity::authenticate`], with the keys of a `jwks_uri` issuer fetched (and cached)
    /// here; an unknown key id refreshes the set once, if the last fetch is a minute old.
    /// `aws` reads keys kept in SSM or S3 (`jwks_ssm_parameter`, `jwks_s3_uri`).
    pub async fn authenticate(
        &self,
        aws: Option<&AwsContext>,
        config: Option<&IdentityConfig>,
        event: SessionEvent,
        purpose: Purpose,
    ) -> Result<(SessionEvent, Option<VerifiedIdentity>), Unverified> {
        let source = match (config, &event.identity_token) {
            (Some(config), Some(token)) => match &config.issuer_of(&token.0)?.keys {
                KeySource::File { .. } => None,
                source => Some(source.clone()),
            },
            _ => None,
        };
        let Some(source) = source else {
            return identity::authenticate(config, event, purpose, identity::file_keys);
        };
        let uri = source.describe();
        let keys = self.keys(aws, &source, false).await?;
        let first = identity::authenticate(config, event.clone(), purpose, |_| Ok(Cow::Owned((*keys).clone())));
        match first {
            Err(Unverified { check: Check::UnknownKey, .. }) if self.may_refresh(&uri) => {
                let keys = self.keys(aws, &source, true).await?;
                identity::authenticate(config, event, purpose, |_| Ok(Cow::Owned((*keys).clone())))
            }
            result => result,
        }
    }

    fn may_refresh(&self, uri: &str) -> bool {
        let sets = self.sets.lock().unwrap();
        sets.get(uri).is_none_or(|(_, fetched)| fetched.elapsed() >= self.min_refresh)
    }

    async fn keys(
        &self,
        aws: Option<&AwsContext>,
        source: &KeySource,
        refresh: bool,
    ) -> Result<Arc<JwkSet>, Unverified> {
        let uri = &source.describe();
        if !refresh {
            let cached = self.sets.lock().unwrap().get(uri).cloned();
            if let Some((keys, fetched)) = cached {
                if fetched.elapsed() < self.max_age {
                    return Ok(keys);
                }
            }
        }
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = match source {
            KeySource::Uri(uri) => self.fetch(uri).await,
            KeySource::SsmParameter(name) => read_stored(aws, ConfigLocation::SsmParameter(name.clone())).await,
            KeySource::S3Object(uri) => match ConfigLocation::from_s3_uri(uri) {
                Ok(location) => read_stored(aws, location).await,
                Err(detail) => Err(detail),
            },
            KeySource::File { path, .. } => Err(format!("{} is read when the config loads", path.display())),
        };
        let text = text.map_err(|detail| Unverified {
            check: Check::Keys,
            detail: format!("cannot read the issuer's keys from {uri}: {detail}"),
        })?;
        let keys = Arc::new(identity::parse_jwks(&text).map_err(|detail| Unverified {
            check: Check::Keys,
            detail: format!("the issuer's keys at {uri}: {detail}"),
        })?);
        tracing::info!(jwks = uri, keys = keys.keys.len(), "fetched an identity provider's keys");
        self.sets.lock().unwrap().insert(uri.to_string(), (keys.clone(), Instant::now()));
        Ok(keys)
    }

    async fn fetch(&self, uri: &str) -> Result<String, String> {
        let uri: http::Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err("not an https:// URL".into());
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
            .await
            .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
            .map_err(|e| autouser_engine::error::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("the server answered {}", response.status()));
        }
        let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(response.into_body(), MAX_JWKS_BYTES).collect())
            .await
            .map_err(|_| format!("the document did not arrive within {} s", FETCH_TIMEOUT.as_secs()))?
            .map_err(|e| format!("reading the document (at most {MAX_JWKS_BYTES} bytes): {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the document is not UTF-8".into())
    }
}

/// A JWKS kept in SSM or S3, read as the config is.
async fn read_stored(aws: Option<&AwsContext>, location: ConfigLocation) -> Result<String, String> {
    let aws = aws.ok_or_else(|| format!("{location} needs AWS credentials, and none were set up"))?;
    match aws.read_stored_config(&location, None).await {
        Ok(Some(stored)) => Ok(stored.text),
        Ok(None) => Err(format!("{location} was not read")),
        Err(error) => Err(error.to_string()),
    }
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache::new()
    }
}
