//! Signed identity (`identity:` in the config): a session event acts only on who the identity
//! provider says the person is. The event's `identity_token` is a JWT its issuer signed; the
//! token is checked here (signature, algorithm, issuer, audience, expiry) with `jsonwebtoken`
//! and the issuer's JWKS, and the event's `user`, `roles` and `traits` must equal the token's,
//! or are left out and taken from it.
//!
//! Pure computation given the keys: a `jwks_file` is read when the config loads (as
//! `roles_file` is); keys from a `jwks_uri` are fetched by the caller (the Lambda edge) and
//! passed to [`verify_with`]. A refusal is an [`Unverified`], naming the [`Check`] that failed;
//! no message quotes the token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::event::{IdentityToken, SessionEvent};
use crate::policy::Traits;

/// The default `leeway_seconds`: clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;

/// The `identity:` block, validated.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// A session start without a valid token is refused.
    pub required: bool,
    /// A session end without a valid token is refused (default: ends are accepted unsigned,
    /// since an end can only remove access).
    pub required_for_end: bool,
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub preset: Preset,
    /// The token's `iss` must equal it.
    pub issuer: String,
    /// The token's `aud` must be (or contain) it.
    pub audience: String,
    pub keys: KeySource,
    pub algorithms: Vec<SigningAlgorithm>,
    pub claims: ClaimNames,
    pub leeway_seconds: u64,
}

/// Where an issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document read when the config loaded.
    File { path: PathBuf, keys: JwkSet },
    /// An HTTPS URL the caller fetches the JWKS from.
    Uri(String),
    /// An SSM parameter (name or ARN) holding the JWKS, which the caller reads.
    SsmParameter(String),
    /// An S3 object (`s3://bucket/key`) holding the JWKS, which the caller reads.
    S3Object(String),
}

impl KeySource {
    /// Where the keys are, for messages and the keys' cache.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File { path, .. } => path.display().to_string(),
            KeySource::Uri(uri) => uri.clone(),
            KeySource::SsmParameter(name) => format!("SSM parameter {name}"),
            KeySource::S3Object(uri) => uri.clone(),
        }
    }
}

/// What an issuer's tokens look like; fills `claims` (and nothing the config sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The JWTs Teleport signs for application access: `username`, `roles`, `traits`.
    Teleport,
    /// A standard OIDC ID token: `sub` as the user, `groups` as the roles, no traits.
    Oidc,
}

/// Signature algorithms an issuer may use. Never `none`, never HMAC: a shared secret would
/// let anyone who can verify also sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SigningAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The default `algorithms`.
pub const DEFAULT_ALGORITHMS: [SigningAlgorithm; 3] =
    [SigningAlgorithm::RS256, SigningAlgorithm::ES256, SigningAlgorithm::EdDSA];

impl SigningAlgorithm {
    fn to_jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::RS256 => Algorithm::RS256,
            SigningAlgorithm::RS384 => Algorithm::RS384,
            SigningAlgorithm::RS512 => Algorithm::RS512,
            SigningAlgorithm::PS256 => Algorithm::PS256,
            SigningAlgorithm::PS384 => Algorithm::PS384,
            SigningAlgorithm::PS512 => Algorithm::PS512,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::ES384 => Algorithm::ES384,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// Which claims of the token name the person, their roles and their traits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub user: String,
    /// `None`: the token carries no roles; the event's are used.
    pub roles: Option<String>,
    /// `None`: the token carries no traits; the event's are used.
    pub traits: Option<String>,
    /// A claim the event's `session_id` must equal (a `sid` or `nonce` the issuer binds to
    /// the session); `None` (the presets): the session id is not bound to the token.
    pub session_id: Option<String>,
    /// A claim naming the cluster the person comes from (`remote-<user>-<cluster>`); `None`
    /// (the presets): the token names no cluster, so the event may name none either.
    pub origin_cluster: Option<String>,
}

impl Preset {
    fn claims(self) -> ClaimNames {
        match self {
            Preset::Teleport => ClaimNames {
                user: "username".into(),
                roles: Some("roles".into()),
                traits: Some("traits".into()),
                session_id: None,
                origin_cluster: None,
            },
            Preset::Oidc => ClaimNames {
                user: "sub".into(),
                roles: Some("groups".into()),
                traits: None,
                session_id: None,
                origin_cluster: None,
            },
        }
    }
}

/// The `identity:` block of the config file.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Identity")]
pub(crate) struct RawIdentity {
    /// A session start without a valid `identity_token` is refused (`IdentityUnverified`).
    #[serde(default)]
    required: bool,
    /// A session end without a valid `identity_token` is refused too (default false: an end
    /// can only remove access).
    #[serde(default)]
    required_for_end: bool,
    /// The identity providers whose tokens are trusted; a token's `iss` picks one.
    #[schemars(length(min = 1))]
    issuers: Vec<RawIssuer>,
}

/// A trusted identity provider.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Issuer")]
#[schemars(extend("oneOf" = [
    {"required": ["jwks_file"]},
    {"required": ["jwks_uri"]},
    {"required": ["jwks_ssm_parameter"]},
    {"required": ["jwks_s3_uri"]},
]))]
struct RawIssuer {
    /// `teleport` (claims `username`, `roles`, `traits`) or `oidc` (claims `sub`, `groups`);
    /// default `oidc`.
    preset: Option<Preset>,
    /// The token's `iss`, exactly.
    #[schemars(length(min = 1))]
    issuer: String,
    /// A value the token's `aud` must hold.
    #[schemars(length(min = 1))]
    audience: String,
    /// A JWKS document (`{"keys": [...]}`), relative to the config file.
    jwks_file: Option<PathBuf>,
    /// An `https://` URL of the issuer's JWKS, cached and refreshed on an unknown `kid`.
    #[schemars(regex(pattern = r"^https://"))]
    jwks_uri: Option<String>,
    /// An SSM parameter (name or ARN) holding the JWKS document, as the config can be kept.
    #[schemars(length(min = 1))]
    jwks_ssm_parameter: Option<String>,
    /// An S3 object (`s3://bucket/key`) holding the JWKS document.
    #[schemars(regex(pattern = r"^s3://[^/]+/.+"))]
    jwks_s3_uri: Option<String>,
    /// Accepted signature algorithms (default RS256, ES256, EdDSA).
    #[schemars(length(min = 1))]
    algorithms: Option<Vec<SigningAlgorithm>>,
    /// Claim names, overriding the preset's.
    claims: Option<RawClaims>,
    /// Clock skew allowed on `exp` and `nbf` (default 60).
    #[schemars(range(max = 600))]
    leeway_seconds: Option<u64>,
}

/// Claim names of the person, their roles and their traits.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "IdentityClaims")]
struct RawClaims {
    #[schemars(length(min = 1))]
    user: Option<String>,
    #[schemars(length(min = 1))]
    roles: Option<String>,
    #[schemars(length(min = 1))]
    traits: Option<String>,
    /// A claim the event's `session_id` must equal (such as `sid` or `nonce`); unset: not bound.
    #[schemars(length(min = 1))]
    session_id: Option<String>,
    /// A claim naming the cluster the person comes from, which the event's `origin_cluster`
    /// must equal; unset: the event may not name an origin cluster (a remote user's role name
    /// would then rest on the caller's word).
    #[schemars(length(min = 1))]
    origin_cluster: Option<String>,
}

/// Longest accepted `leeway_seconds`.
const MAX_LEEWAY_SECONDS: u64 = 600;

impl RawIdentity {
    /// Validates the block; reads each `jwks_file` (relative to `base_dir`). Errors are
    /// `(field, message)`.
    pub(crate) fn validate(self, base_dir: &Path) -> Result<IdentityConfig, (String, String)> {
        if self.issuers.is_empty() {
            return Err(("identity.issuers".into(), "lists no issuer: add one, or remove `identity`".into()));
        }
        let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(self.issuers.len());
        for (index, raw) in self.issuers.into_iter().enumerate() {
            let at = format!("identity.issuers[{index}]");
            let issuer = raw.validate(&at, base_dir)?;
            if issuers.iter().any(|other| other.issuer == issuer.issuer) {
                return Err((format!("{at}.issuer"), format!("issuer {:?} is listed twice", issuer.issuer)));
            }
            issuers.push(issuer);
        }
        Ok(IdentityConfig { required: self.required, required_for_end: self.required_for_end, issuers })
    }
}

impl RawIssuer {
    fn validate(self, at: &str, base_dir: &Path) -> Result<IssuerConfig, (String, String)> {
        let field = |name: &str| format!("{at}.{name}");
        if self.issuer.is_empty() {
            return Err((field("issuer"), "must not be empty".into()));
        }
        if self.audience.is_empty() {
            return Err((field("audience"), "must not be empty".into()));
        }
        let set = [
            self.jwks_file.is_some(),
            self.jwks_uri.is_some(),
            self.jwks_ssm_parameter.is_some(),
            self.jwks_s3_uri.is_some(),
        ];
        match set.iter().filter(|set| **set).count() {
            0 => {
                return Err((
                    at.to_string(),
                    "needs the issuer's public keys: set jwks_file, jwks_uri, jwks_ssm_parameter or jwks_s3_uri".into(),
                ))
            }
            1 => {}
            _ => {
                return Err((
                    at.to_string(),
                    "set one of jwks_file, jwks_uri, jwks_ssm_parameter and jwks_s3_uri, not several".into(),
                ))
            }
        }
        let keys = match (self.jwks_file, self.jwks_uri) {
            (Some(file), _) => {
                let path = base_dir.join(file);
                let keys = read_jwks_file(&path).map_err(|message| (field("jwks_file"), message))?;
                KeySource::File { path, keys }
            }
            (_, Some(uri)) => {
                if !uri.starts_with("https://") || uri.len() <= "https://".len() {
                    return Err((
                        field("jwks_uri"),
                        format!("{uri:?} is not an https:// URL: keys are only fetched over HTTPS"),
                    ));
                }
                KeySource::Uri(uri)
            }
            (None, None) => match (self.jwks_ssm_parameter, self.jwks_s3_uri) {
                (Some(name), _) if !name.is_empty() => KeySource::SsmParameter(name),
                (Some(_), _) => return Err((field("jwks_ssm_parameter"), "must not be empty".into())),
                (None, Some(uri)) => {
                    let valid = uri.strip_prefix("s3://").and_then(|rest| rest.split_once('/'));
                    if !valid.is_some_and(|(bucket, key)| !bucket.is_empty() && !key.is_empty()) {
                        return Err((field("jwks_s3_uri"), format!("{uri:?} is not an s3://bucket/key URI")));
                    }
                    KeySource::S3Object(uri)
                }
                (None, None) => return Err((at.to_string(), "needs the issuer's public keys".into())),
            },
        };
        let algorithms = match self.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) if list.is_empty() => return Err((field("algorithms"), "is empty: list at least one".into())),
            Some(list) => list,
        };
        let preset = self.preset.unwrap_or(Preset::Oidc);
        let mut claims = preset.claims();
        if let Some(raw) = self.claims {
            for (name, value) in [
                ("user", &raw.user),
                ("roles", &raw.roles),
                ("traits", &raw.traits),
                ("session_id", &raw.session_id),
                ("origin_cluster", &raw.origin_cluster),
            ] {
                if value.as_deref() == Some("") {
                    return Err((field(&format!("claims.{name}")), "must not be empty".into()));
                }
            }
            if let Some(user) = raw.user {
                claims.user = user;
            }
            if raw.roles.is_some() {
                claims.roles = raw.roles;
            }
            if raw.traits.is_some() {
                claims.traits = raw.traits;
            }
            if raw.session_id.is_some() {
                claims.session_id = raw.session_id;
            }
            if raw.origin_cluster.is_some() {
                claims.origin_cluster = raw.origin_cluster;
            }
        }
        let leeway_seconds = self.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err((field("leeway_seconds"), format!("is {leeway_seconds}; at most {MAX_LEEWAY_SECONDS}")));
        }
        Ok(IssuerConfig {
            preset,
            issuer: self.issuer,
            audience: self.audience,
            keys,
            algorithms,
            claims,
            leeway_seconds,
        })
    }
}

fn read_jwks_file(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A JWKS document (`{"keys": [...]}`), as an issuer publishes it. HMAC (`oct`) keys are
/// refused: a secret shared with the verifier is not an identity provider's signature.
pub fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let keys: JwkSet = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}} of public JWKs): {e}"))?;
    for (index, key) in keys.keys.iter().enumerate() {
        match &key.algorithm {
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "key {index} is a symmetric (oct) key: only public keys (RSA, EC, OKP) are accepted"
                ))
            }
            AlgorithmParameters::Other(_) => {
                return Err(format!("key {index} is of an unknown key type: only RSA, EC and OKP keys are accepted"))
            }
            _ => {}
        }
        DecodingKey::from_jwk(key).map_err(|e| format!("key {index} is not a usable public key: {e}"))?;
    }
    Ok(keys)
}

/// The check an identity token failed; its name is stable (the operator and the tests read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No token, and `identity` requires one.
    Missing,
    /// Not a JWT (three base64url parts, JSON header and payload).
    Malformed,
    /// `alg` is `none`, HMAC, or not among the issuer's `algorithms`.
    Algorithm,
    /// `iss` is missing or not a configured issuer.
    Issuer,
    /// `aud` is missing or does not hold the issuer's `audience`.
    Audience,
    /// `exp` is missing or past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// The `kid` is not in the issuer's JWKS (after a refresh, for `jwks_uri`).
    UnknownKey,
    /// The signature does not verify: the token was altered, or signed by another key.
    Signature,
    /// The keys of a `jwks_uri` could not be fetched.
    Keys,
    /// The token lacks a claim the issuer's `claims` name, or it has the wrong type.
    Claims,
    /// The event's `user` differs from the token's.
    User,
    /// The event's `roles` differ from the token's.
    Roles,
    /// The event's `traits` differ from the token's.
    Traits,
    /// The event's `session_id` differs from the token's session claim (`claims.session_id`).
    SessionId,
    /// The event's `origin_cluster` differs from the token's (`claims.origin_cluster`), or the
    /// event names one and the token names none.
    OriginCluster,
}

impl Check {
    /// The stable name, as messages and tests read it.
    pub fn name(self) -> &'static str {
        match self {
            Check::Missing => "missing",
            Check::Malformed => "malformed",
            Check::Algorithm => "algorithm",
            Check::Issuer => "issuer",
            Check::Audience => "audience",
            Check::Expired => "expired",
            Check::NotYetValid => "not_yet_valid",
            Check::UnknownKey => "unknown_key",
            Check::Signature => "signature",
            Check::Keys => "keys",
            Check::Claims => "claims",
            Check::User => "user",
            Check::Roles => "roles",
            Check::Traits => "traits",
            Check::SessionId => "session_id",
            Check::OriginCluster => "origin_cluster",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A token (or its absence) refused: which check failed and why. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub check: Check,
    pub detail: String,
}

fn unverified(check: Check, detail: impl Into<String>) -> Unverified {
    Unverified { check, detail: detail.into() }
}

/// Who a verified token says the person is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub issuer: String,
    /// The token's `sub`, for the audit.
    pub subject: Option<String>,
    /// The token's `jti`, for the audit.
    pub token_id: Option<String>,
    pub user: String,
    pub roles: Option<Vec<String>>,
    pub traits: Option<Traits>,
    /// The session the token is bound to (`claims.session_id`), when configured.
    pub session_id: Option<String>,
    /// The cluster the person comes from (`claims.origin_cluster`), when configured and present.
    pub origin_cluster: Option<String>,
}

/// Reads the header's `alg` and the payload's `iss` without verifying anything, to pick the
/// issuer and refuse `none` and HMAC before any key is looked at.
fn peek(token: &str) -> Result<(Algorithm, Option<String>, Option<String>), Unverified> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(unverified(
            Check::Malformed,
            format!("a JWT has 3 dot-separated parts, this token has {}", parts.len()),
        ));
    }
    let header = jsonwebtoken::decode_header(token);
    // `decode_header` refuses `alg` values jsonwebtoken does not implement, `none` among them:
    // read `alg` as text for the message.
    let (alg, kid) = match header {
        Ok(header) => (header.alg, header.kid),
        Err(_) => {
            let alg = raw_header_alg(parts[0])
                .ok_or_else(|| unverified(Check::Malformed, "the header is not base64url JSON with an `alg`"))?;
            return Err(unverified(
                Check::Algorithm,
                format!("`alg` {alg:?} is never accepted: tokens must be signed with RS256, ES256, EdDSA or another public-key algorithm"),
            ));
        }
    };
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| unverified(Check::Malformed, "the payload is not base64url JSON"))?;
    let iss = claims.get("iss").and_then(Value::as_str).map(str::to_string);
    Ok((alg, kid, iss))
}

/// The header's `alg` as text, for a header `jsonwebtoken` does not parse.
fn raw_header_alg(encoded: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg").map(|alg| alg.as_str().map_or_else(|| alg.to_string(), str::to_string))
}

impl IdentityConfig {
    /// The configured issuer the token says it comes from; `none` and HMAC are refused here,
    /// before any key is looked at.
    pub fn issuer_of(&self, token: &str) -> Result<&IssuerConfig, Unverified> {
        let (alg, _, iss) = peek(token)?;
        if alg.family() == AlgorithmFamily::Hmac {
            return Err(unverified(
                Check::Algorithm,
                format!(
                    "`alg` {alg:?} is HMAC, never accepted: a shared secret is not an identity provider's signature"
                ),
            ));
        }
        let iss = iss.ok_or_else(|| unverified(Check::Issuer, "the token has no `iss` claim"))?;
        self.issuers.iter().find(|issuer| issuer.issuer == iss).ok_or_else(|| {
            let configured: Vec<&str> = self.issuers.iter().map(|issuer| issuer.issuer.as_str()).collect();
            unverified(
                Check::Issuer,
                format!("issuer {iss:?} is not configured (identity.issuers: {configured:?}): add it, or fix the token's issuer"),
            )
        })
    }
}

impl IdentityConfig {
    /// The person `token` names for its configured issuer, **unverified**: for ordering the
    /// records of a batch only. A record whose token then fails verification is refused before
    /// it changes anything, and a refused record holds no other back.
    pub fn claimed_user(&self, token: &str) -> Option<String> {
        let issuer = self.issuer_of(token).ok()?;
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        claims.get(&issuer.claims.user)?.as_str().map(str::to_string)
    }
}

/// Verifies `token` against `issuer` with `keys` (its JWKS): algorithm, key (`kid`),
/// signature, `iss`, `aud`, `exp` (required), `nbf`, then reads the person's claims.
pub fn verify_with(issuer: &IssuerConfig, keys: &JwkSet, token: &str) -> Result<VerifiedIdentity, Unverified> {
    let (alg, kid, _) = peek(token)?;
    if !issuer.algorithms.iter().any(|allowed| allowed.to_jwt() == alg) {
        return Err(unverified(
            Check::Algorithm,
            format!("`alg` {alg:?} is not among issuer {:?}'s algorithms {:?}", issuer.issuer, issuer.algorithms),
        ));
    }
    let jwk = match &kid {
        Some(kid) => keys.find(kid).ok_or_else(|| {
            unverified(
                Check::UnknownKey,
                format!("key id (kid) {kid:?} is not in issuer {:?}'s JWKS ({})", issuer.issuer, key_ids(keys)),
            )
        })?,
        None if keys.keys.len() == 1 => &keys.keys[0],
        None => {
            return Err(unverified(
                Check::UnknownKey,
                format!(
                    "the token names no key id (kid) and issuer {:?}'s JWKS has {} keys",
                    issuer.issuer,
                    keys.keys.len()
                ),
            ))
        }
    };
    if let Some(key_alg) = jwk.common.key_algorithm {
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return Err(unverified(
                Check::Algorithm,
                format!("`alg` {alg:?} differs from the algorithm {key_alg:?} the JWKS gives the key"),
            ));
        }
    }
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| unverified(Check::UnknownKey, format!("the JWKS key for this token is not usable: {e}")))?;
    if key.family() != alg.family() {
        return Err(unverified(
            Check::Algorithm,
            format!("`alg` {alg:?} does not fit the key the JWKS gives for it ({:?})", key.family()),
        ));
    }
    // The one algorithm the header names, already checked against the issuer's: jsonwebtoken
    // wants every listed algorithm to be of the key's family.
    let mut validation = Validation::new(alg);
    validation.leeway = issuer.leeway_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&[&issuer.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| refusal_of(issuer, e))?;
    identity_of(issuer, &data.claims)
}

fn key_ids(keys: &JwkSet) -> String {
    let ids: Vec<&str> = keys.keys.iter().filter_map(|key| key.common.key_id.as_deref()).collect();
    format!("its key ids: {ids:?}")
}

fn refusal_of(issuer: &IssuerConfig, error: jsonwebtoken::errors::Error) -> Unverified {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => unverified(
            Check::Signature,
            "the signature does not verify with the issuer's key: the token was altered or signed by another key",
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            unverified(Check::Algorithm, "the token's `alg` does not fit the key the JWKS gives for it")
        }
        ErrorKind::ExpiredSignature => unverified(
            Check::Expired,
            format!("the token has expired (`exp`, with {} s of leeway): get a new one", issuer.leeway_seconds),
        ),
        ErrorKind::ImmatureSignature => unverified(
            Check::NotYetValid,
            format!("the token is not valid yet (`nbf`, with {} s of leeway): check the clocks", issuer.leeway_seconds),
        ),
        ErrorKind::InvalidIssuer => unverified(Check::Issuer, format!("`iss` is not {:?}", issuer.issuer)),
        ErrorKind::InvalidAudience => unverified(
            Check::Audience,
            format!("`aud` does not hold {:?}: the token was issued for another service", issuer.audience),
        ),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => unverified(Check::Expired, "the token has no `exp` claim: tokens must expire"),
            "aud" => {
                unverified(Check::Audience, format!("the token has no `aud` claim; it must hold {:?}", issuer.audience))
            }
            "iss" => unverified(Check::Issuer, "the token has no `iss` claim"),
            other => unverified(Check::Claims, format!("the token has no `{other}` claim")),
        },
        ErrorKind::InvalidClaimFormat(claim) => unverified(
            match claim.as_str() {
                "exp" => Check::Expired,
                "nbf" => Check::NotYetValid,
                "iss" => Check::Issuer,
                "aud" => Check::Audience,
                _ => Check::Claims,
            },
            format!("the token's `{claim}` claim has the wrong type"),
        ),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            unverified(Check::Malformed, "the token is not a well-formed JWT")
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => unverified(Check::UnknownKey, "the JWKS key for this token is not usable"),
        _ => unverified(Check::Signature, format!("the token does not verify: {error}")),
    }
}

/// The person, roles and traits the verified claims name.
fn identity_of(issuer: &IssuerConfig, claims: &Value) -> Result<VerifiedIdentity, Unverified> {
    let names = &issuer.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
    let user = text(&names.user).filter(|user| !user.is_empty()).ok_or_else(|| {
        unverified(Check::Claims, format!("the token has no non-empty string claim `{}` naming the user", names.user))
    })?;
    let roles = match &names.roles {
        None => None,
        Some(name) => match claims.get(name) {
            None | Some(Value::Null) => None,
            Some(value) => Some(string_list(value).ok_or_else(|| {
                unverified(Check::Claims, format!("the token's `{name}` claim is not a list of strings"))
            })?),
        },
    };
    let traits = match &names.traits {
        None => None,
        Some(name) => match claims.get(name) {
            None | Some(Value::Null) => None,
            Some(value) => Some(traits_of(value).ok_or_else(|| {
                unverified(
                    Check::Claims,
                    format!("the token's `{name}` claim is not an object of string lists (name → [values])"),
                )
            })?),
        },
    };
    let session_id = match &names.session_id {
        None => None,
        Some(name) => Some(text(name).ok_or_else(|| {
            unverified(Check::Claims, format!("the token has no string claim `{name}` binding it to a session"))
        })?),
    };
    // A token may name no cluster (a local person): the claim is optional.
    let origin_cluster = names.origin_cluster.as_deref().and_then(text);
    Ok(VerifiedIdentity {
        session_id,
        origin_cluster,
        issuer: issuer.issuer.clone(),
        subject: text("sub"),
        token_id: text("jti"),
        user,
        roles,
        traits,
    })
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|item| item.as_str().map(str::to_string)).collect()
}

/// Teleport's JWT `traits`: one object of trait name → values. Templates read them as
/// `internal.<name>` and `external.<name>`, so both hold them all. `null` values (Teleport
/// writes them for unset traits) count as empty lists.
fn traits_of(value: &Value) -> Option<Traits> {
    let mut all = BTreeMap::new();
    for (name, values) in value.as_object()? {
        let list = match values {
            Value::Null => Vec::new(),
            values => string_list(values)?,
        };
        all.insert(name.clone(), list);
    }
    Some(Traits { internal: all.clone(), external: all })
}

/// Whether the event is a start or an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Start,
    End,
}

/// The event with the token's identity applied: `user`, `roles` and `traits` are the token's
/// (the event's must equal them, or be left out); a start without a token when `required` (an
/// end when `required_for_end`) is refused. Without `identity` in the config, the event is
/// taken as it is (and a token in it is not read).
///
/// `keys` gives an issuer's JWKS: a `jwks_file`'s from the config, a `jwks_uri`'s from the
/// caller's cache.
pub fn authenticate(
    identity: Option<&IdentityConfig>,
    mut event: SessionEvent,
    purpose: Purpose,
    keys: impl for<'a> Fn(&'a IssuerConfig) -> Result<std::borrow::Cow<'a, JwkSet>, Unverified>,
) -> Result<(SessionEvent, Option<VerifiedIdentity>), Unverified> {
    let Some(identity) = identity else {
        if event.user.is_empty() {
            return Err(unverified(
                Check::Missing,
                "the event has no `user`, and the config has no `identity` to take it from its token: send `user`, or configure `identity`",
            ));
        }
        return Ok((event, None));
    };
    let required = match purpose {
        Purpose::Start => identity.required,
        Purpose::End => identity.required_for_end,
    };
    let Some(IdentityToken(token)) = event.identity_token.take() else {
        if required {
            let field = if purpose == Purpose::Start { "identity.required" } else { "identity.required_for_end" };
            return Err(unverified(
                Check::Missing,
                format!("the event has no `identity_token`, and {field} is true: send the token the identity provider signed"),
            ));
        }
        if event.user.is_empty() {
            return Err(unverified(Check::Missing, "the event has neither `user` nor `identity_token`"));
        }
        return Ok((event, None));
    };
    let issuer = identity.issuer_of(&token)?;
    let keys = keys(issuer)?;
    let verified = verify_with(issuer, &keys, &token)?;
    drop(token);
    bind(&mut event, &verified, purpose)?;
    Ok((event, Some(verified)))
}

/// The keys of a `jwks_file` issuer; a `jwks_uri` issuer's come from the caller.
pub fn file_keys(issuer: &IssuerConfig) -> Result<std::borrow::Cow<'_, JwkSet>, Unverified> {
    match &issuer.keys {
        KeySource::File { keys, .. } => Ok(std::borrow::Cow::Borrowed(keys)),
        other => Err(unverified(
            Check::Keys,
            format!(
                "issuer {:?}'s keys come from {}, which this caller does not fetch: use jwks_file",
                issuer.issuer,
                other.describe()
            ),
        )),
    }
}

/// The event's claims must equal the token's; those it leaves out are taken from the token.
fn bind(event: &mut SessionEvent, verified: &VerifiedIdentity, purpose: Purpose) -> Result<(), Unverified> {
    if let Some(bound) = &verified.session_id {
        if *bound != event.session_id {
            return Err(unverified(
                Check::SessionId,
                format!(
                    "the event's session_id {:?} is not the session the token was issued for ({bound:?})",
                    event.session_id
                ),
            ));
        }
    }
    // The cluster is part of who the person is: `remote-<user>-<cluster>` is another person's
    // role than `<user>`'s. Only the token may name it.
    match (&event.origin_cluster, &verified.origin_cluster) {
        (None, token) => event.origin_cluster = token.clone(),
        (Some(named), Some(token)) if named == token => {}
        (Some(named), token) => {
            return Err(unverified(
                Check::OriginCluster,
                match token {
                    Some(token) => format!(
                        "the event's origin_cluster {named:?} differs from the token's {token:?}: leave it out, or send the token's"
                    ),
                    None => format!(
                        "the event names origin_cluster {named:?}, which the token does not (issuer {:?}): leave it out, or \
                         configure the issuer's claims.origin_cluster",
                        verified.issuer
                    ),
                },
            ));
        }
    }
    if event.user.is_empty() {
        event.user = verified.user.clone();
    } else if event.user != verified.user {
        return Err(unverified(
            Check::User,
            format!(
                "the event's user {:?} differs from the token's {:?} (issuer {:?}): leave `user` out, or send the token's",
                event.user, verified.user, verified.issuer
            ),
        ));
    }
    if purpose == Purpose::End {
        return Ok(());
    }
    if let Some(token_roles) = &verified.roles {
        match &event.roles {
            None => event.roles = Some(token_roles.clone()),
            Some(roles) => {
                let sorted = |list: &[String]| {
                    let mut list = list.to_vec();
                    list.sort();
                    list.dedup();
                    list
                };
                if sorted(roles) != sorted(token_roles) {
                    return Err(unverified(
                        Check::Roles,
                        format!(
                            "the event's roles {roles:?} differ from the token's {token_roles:?}: leave `roles` out, or send the token's"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(token_traits) = &verified.traits {
        if event.traits == Traits::default() {
            event.traits = token_traits.clone();
        } else if event.traits != *token_traits {
            return Err(unverified(
                Check::Traits,
                "the event's traits differ from the token's: leave `traits` out, or send the token's (each trait under both `internal` and `external`)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(origin_cluster: Option<&str>) -> VerifiedIdentity {
        VerifiedIdentity {
            issuer: "teleport.example.com".into(),
            subject: None,
            token_id: None,
            user: "alice".into(),
            roles: None,
            traits: None,
            session_id: None,
            origin_cluster: origin_cluster.map(str::to_string),
        }
    }

    fn session_event(origin_cluster: Option<&str>) -> SessionEvent {
        let mut event = serde_json::json!({"session_id": "s1", "user": "alice", "database": "main", "db_name": "app"});
        if let Some(cluster) = origin_cluster {
            event["origin_cluster"] = serde_json::json!(cluster);
        }
        SessionEvent::from_value(event).unwrap()
    }

    /// `remote-alice-leaf` is another person's role than `alice`'s: only the token may name the
    /// cluster.
    #[test]
    fn the_origin_cluster_is_the_tokens_or_none() {
        let mut event = session_event(Some("leaf"));
        let err = bind(&mut event, &verified(None), Purpose::Start).unwrap_err();
        assert_eq!(err.check, Check::OriginCluster, "{err:?}");
        let mut event = session_event(Some("leaf"));
        let err = bind(&mut event, &verified(Some("root")), Purpose::End).unwrap_err();
        assert_eq!(err.check, Check::OriginCluster, "{err:?}");
        let mut event = session_event(None);
        bind(&mut event, &verified(Some("leaf")), Purpose::Start).unwrap();
        assert_eq!(event.origin_cluster.as_deref(), Some("leaf"), "taken from the token");
        let mut event = session_event(Some("leaf"));
        bind(&mut event, &verified(Some("leaf")), Purpose::Start).unwrap();
        let mut event = session_event(None);
        bind(&mut event, &verified(None), Purpose::Start).unwrap();
        assert_eq!(event.origin_cluster, None);
    }

    fn raw(yaml: &str) -> RawIdentity {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_uri_must_be_https() {
        let err = raw("issuers: [{issuer: a, audience: b, jwks_uri: 'http://idp/jwks.json'}]")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(err.0, "identity.issuers[0].jwks_uri");
        assert!(err.1.contains("HTTPS"), "{err:?}");
    }

    #[test]
    fn an_issuer_has_exactly_one_key_source() {
        let none = raw("issuers: [{issuer: a, audience: b}]").validate(Path::new(".")).unwrap_err();
        assert!(none.1.contains("needs the issuer's public keys"), "{none:?}");
        let two = raw("issuers: [{issuer: a, audience: b, jwks_uri: 'https://x', jwks_ssm_parameter: /k}]")
            .validate(Path::new("."))
            .unwrap_err();
        assert!(two.1.contains("not several"), "{two:?}");
        let s3 = raw("issuers: [{issuer: a, audience: b, jwks_s3_uri: 's3://bucket'}]")
            .validate(Path::new("."))
            .unwrap_err();
        assert_eq!(s3.0, "identity.issuers[0].jwks_s3_uri");
        let ok =
            raw("issuers: [{issuer: a, audience: b, jwks_s3_uri: 's3://bucket/jwks.json'}]").validate(Path::new("."));
        assert!(matches!(ok.unwrap().issuers[0].keys, KeySource::S3Object(_)));
    }

    #[test]
    fn presets_fill_claims_and_the_config_overrides_them() {
        let identity = raw("issuers: [{preset: teleport, issuer: t, audience: a, jwks_uri: 'https://t/jwks'},
                       {issuer: o, audience: a, jwks_uri: 'https://o/jwks', claims: {user: email}}]")
        .validate(Path::new("."))
        .unwrap();
        assert_eq!(identity.issuers[0].claims, Preset::Teleport.claims());
        assert_eq!(identity.issuers[0].algorithms, DEFAULT_ALGORITHMS);
        assert_eq!(identity.issuers[1].preset, Preset::Oidc);
        assert_eq!(identity.issuers[1].claims.user, "email");
        assert_eq!(identity.issuers[1].claims.roles.as_deref(), Some("groups"));
    }

    #[test]
    fn hmac_and_none_are_not_algorithms_the_config_accepts() {
        for alg in ["HS256", "none"] {
            let yaml = format!("issuers: [{{issuer: a, audience: b, jwks_uri: 'https://x', algorithms: [{alg}]}}]");
            assert!(serde_yaml_ng::from_str::<RawIdentity>(&yaml).is_err(), "{alg} accepted");
        }
    }

    #[test]
    fn symmetric_keys_are_refused_in_a_jwks() {
        let err = parse_jwks(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap_err();
        assert!(err.contains("symmetric"), "{err}");
    }

    #[test]
    fn alg_none_is_refused_before_any_key() {
        let identity =
            raw("issuers: [{issuer: a, audience: b, jwks_uri: 'https://x'}]").validate(Path::new(".")).unwrap();
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"iss":"a","sub":"x"}"#));
        assert_eq!(identity.issuer_of(&token).unwrap_err().check, Check::Algorithm);
        assert_eq!(identity.issuer_of("abc").unwrap_err().check, Check::Malformed);
    }
}
