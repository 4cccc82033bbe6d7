//! The container's config: fixed (from `AUTOUSER_CONFIG` or a bundled file), or read from an
//! SSM parameter or an S3 object and checked again at most every `AUTOUSER_CONFIG_TTL`. A new
//! version that fails to load or validate is logged at `ERROR` and counted
//! (`ConfigLoadFailures`, alarmed), and the last good config stays in use: a container never
//! runs without one, and a bad edit never turns provisioning off.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use autouser_aws::config_store::ConfigLocation;
use autouser_aws::AwsContext;
use autouser_policy::config::{Config, Overrides};

use crate::InitError;

/// The default `AUTOUSER_CONFIG_TTL`.
pub const DEFAULT_CONFIG_TTL: Duration = Duration::from_secs(60);

pub struct LiveConfig {
    current: RwLock<Arc<Config>>,
    stored: Option<Stored>,
}

/// A config kept in SSM or S3, and what its reload needs.
struct Stored {
    location: ConfigLocation,
    overrides: Overrides,
    /// Relative paths in the config are relative to this (the function's bundle).
    base_dir: PathBuf,
    ttl: Duration,
    /// The function, for the failure metric.
    function: &'static str,
    checked: tokio::sync::Mutex<Checked>,
}

struct Checked {
    at: Instant,
    /// The version of the config in use.
    version: String,
}

/// Where a stored config is and how it is read: what [`crate::Settings`] found in the
/// environment.
#[derive(Debug, Clone)]
pub struct StoredConfigSource {
    pub location: ConfigLocation,
    pub overrides: Overrides,
    pub base_dir: PathBuf,
    pub ttl: Duration,
}

impl LiveConfig {
    /// A config that never changes.
    pub fn fixed(config: Config) -> LiveConfig {
        LiveConfig { current: RwLock::new(Arc::new(config)), stored: None }
    }

    /// Reads the stored config for the first time; the container cannot start without it.
    pub async fn load(
        aws: &AwsContext,
        source: StoredConfigSource,
        function: &'static str,
    ) -> Result<LiveConfig, InitError> {
        let read = aws
            .read_stored_config(&source.location, None)
            .await
            .map_err(|error| InitError::StoredConfig(error.to_string()))?
            .expect("a first read has no version to compare");
        let config = Config::parse_with(&read.text, &source.base_dir, &source.overrides)
            .map_err(|error| InitError::StoredConfig(format!("{}: {error}", source.location)))?;
        tracing::info!(source = %source.location, version = %read.version, "config loaded");
        Ok(LiveConfig {
            current: RwLock::new(Arc::new(config)),
            stored: Some(Stored {
                location: source.location,
                overrides: source.overrides,
                base_dir: source.base_dir,
                ttl: source.ttl,
                function,
                checked: tokio::sync::Mutex::new(Checked { at: Instant::now(), version: read.version }),
            }),
        })
    }

    /// The config to use now: for a stored one, read again first when the last check is
    /// older than the TTL.
    pub async fn get(&self, aws: &AwsContext) -> Arc<Config> {
        if let Some(stored) = &self.stored {
            self.reload_if_due(aws, stored).await;
        }
        self.current.read().expect("config lock").clone()
    }

    async fn reload_if_due(&self, aws: &AwsContext, stored: &Stored) {
        let mut checked = stored.checked.lock().await;
        if checked.at.elapsed() < stored.ttl {
            return;
        }
        checked.at = Instant::now();
        let failed = |kind: &str, error: String| {
            tracing::error!(source = %stored.location, %error,
                "the new config could not be loaded; the last good one stays in use: fix it");
            crate::metrics::config_load_failure(stored.function, kind);
        };
        match aws.read_stored_config(&stored.location, Some(&checked.version)).await {
            Ok(None) => {}
            Ok(Some(read)) => match Config::parse_with(&read.text, &stored.base_dir, &stored.overrides) {
                Ok(config) => {
                    *self.current.write().expect("config lock") = Arc::new(config);
                    tracing::info!(source = %stored.location, version = %read.version, "config reloaded");
                    checked.version = read.version;
                }
                Err(error) => failed("ConfigInvalid", format!("version {}: {error}", read.version)),
            },
            Err(error) => failed(error.kind(), error.to_string()),
        }
    }
}
