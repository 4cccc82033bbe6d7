//! Where a deployment keeps the config when it is too large for an environment variable
//! (Lambda allows 4 KB for all of them together): an SSM parameter (`String` or
//! `SecureString`, decrypted) or an S3 object. Each read says the version it read (the
//! parameter's version, the object's ETag), so a caller can skip what it already has.

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::AwsContext;
use autouser_engine::Error;

/// A stored config's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    /// A parameter name (`/pg-autouser/config`) or ARN.
    SsmParameter(String),
    S3Object {
        bucket: String,
        key: String,
    },
}

impl ConfigLocation {
    /// `s3://bucket/key`.
    pub fn from_s3_uri(uri: &str) -> Result<ConfigLocation, String> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| format!("{uri:?} is not an s3://bucket/key URI"))?;
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                Ok(ConfigLocation::S3Object { bucket: bucket.to_string(), key: key.to_string() })
            }
            _ => Err(format!("{uri:?} names no object: write s3://bucket/key")),
        }
    }
}

impl std::fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigLocation::SsmParameter(name) => write!(f, "SSM parameter {name}"),
            ConfigLocation::S3Object { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// A config as read: its text, and the version that changes whenever the text does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    pub text: String,
    pub version: String,
}

impl AwsContext {
    /// Reads the config at `location`, or `None` when its version is still `known_version`
    /// (for S3, a `HeadObject` then decides whether to fetch the object).
    pub async fn read_stored_config(
        &self,
        location: &ConfigLocation,
        known_version: Option<&str>,
    ) -> Result<Option<StoredConfig>, Error> {
        let unavailable = |detail: String| Error::DependencyUnavailable { what: location.to_string(), detail };
        match location {
            ConfigLocation::SsmParameter(name) => {
                let client = aws_sdk_ssm::Client::new(self.sdk_config());
                let answer = client
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| unavailable(sdk_error(e)))?;
                let parameter = answer.parameter.ok_or_else(|| unavailable("the answer holds no parameter".into()))?;
                let version = parameter.version.to_string();
                if known_version == Some(version.as_str()) {
                    return Ok(None);
                }
                let text = parameter.value.ok_or_else(|| unavailable("the parameter has no value".into()))?;
                Ok(Some(StoredConfig { text, version }))
            }
            ConfigLocation::S3Object { bucket, key } => {
                let client = self.s3_client();
                if let Some(known) = known_version {
                    let head = client
                        .head_object()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(|e| unavailable(sdk_error(e)))?;
                    if head.e_tag.as_deref() == Some(known) {
                        return Ok(None);
                    }
                }
                let object =
                    client.get_object().bucket(bucket).key(key).send().await.map_err(|e| unavailable(sdk_error(e)))?;
                let version = object.e_tag.clone().unwrap_or_default();
                let bytes = object.body.collect().await.map_err(|e| unavailable(e.to_string()))?.into_bytes();
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| unavailable("the object is not UTF-8 text".into()))?;
                Ok(Some(StoredConfig { text, version }))
            }
        }
    }

    /// An S3 client; path-style addressing when an endpoint is configured (an emulator, whose
    /// address takes no bucket subdomain).
    fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(self.sdk_config())
            .force_path_style(self.sdk_config().endpoint_url().is_some())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// An SDK error in words: the service's code and message, or the transport's failure.
fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: SdkError<E, R>,
) -> String {
    match &error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            format!(
                "{}: {}",
                inner.code().unwrap_or("error"),
                inner.message().unwrap_or("no message (check the function's IAM permissions)")
            )
        }
        other => format!("{}", aws_sdk_ssm::error::DisplayErrorContext(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_name_a_bucket_and_a_key() {
        assert_eq!(
            ConfigLocation::from_s3_uri("s3://configs/pg-autouser/config.yaml"),
            Ok(ConfigLocation::S3Object { bucket: "configs".into(), key: "pg-autouser/config.yaml".into() })
        );
        for bad in ["configs/config.yaml", "s3://configs", "s3://configs/", "s3:///key", "https://x/y"] {
            assert!(ConfigLocation::from_s3_uri(bad).is_err(), "{bad}");
        }
    }
}
