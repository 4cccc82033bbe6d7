//! RDS IAM authentication tokens: a SigV4 presigned `connect` URL, without its scheme, used as
//! the admin's password.
//!
//! We sign with `aws-sigv4` directly instead of `aws_sdk_rds::auth_token::AuthTokenGenerator`
//! because that generator puts the user name into the URL unencoded: for a user such as `a+b`,
//! `a b` or `ü` it signs one string and sends another, and RDS rejects the token. boto3 and the
//! other SDKs percent-encode it; so do we, and the golden vectors generated with boto3
//! (`tests/gen_rds_auth_token_vectors.py`) check every byte. It also spares the Lambda zip the
//! whole RDS client.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// How long a token is valid; RDS accepts at most 15 minutes. Generate one per connection.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Everything but RFC 3986's unreserved characters is percent-encoded, as SigV4 requires.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Where and as whom the token logs in.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    pub host: &'a str,
    pub port: u16,
    pub region: &'a str,
    pub user: &'a str,
}

/// A token. `Debug` and `Display` never show it; use [`AuthToken::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign an RDS IAM auth token for {user:?} at {host}:{port}: {detail}")]
pub struct TokenError {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub detail: String,
}

/// Signs a token with `credentials` at time `now`. Temporary credentials (as in Lambda) add
/// their session token as `X-Amz-Security-Token`.
pub fn generate(
    request: &TokenRequest<'_>,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<AuthToken, TokenError> {
    let error = |detail: String| TokenError {
        host: request.host.to_string(),
        port: request.port,
        user: request.user.to_string(),
        detail,
    };
    let url = format!(
        "https://{}:{}/?Action=connect&DBUser={}",
        request.host,
        request.port,
        utf8_percent_encode(request.user, QUERY_VALUE)
    );
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(request.region)
        .name("rds-db")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| error(e.to_string()))?;
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| error(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params.into()).map_err(|e| error(e.to_string()))?.into_parts();
    let mut token = url["https://".len()..].to_string();
    // aws-sigv4 lists X-Amz-Security-Token after the signature; boto3 and the other SDKs put
    // the signature last. Same URL to RDS, but we match them byte for byte.
    let (signature, rest): (Vec<_>, Vec<_>) =
        instructions.params().iter().partition(|(name, _)| *name == "X-Amz-Signature");
    for (name, value) in rest.into_iter().chain(signature) {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    Ok(AuthToken(token))
}
