//! The shapes of admin secrets in Secrets Manager, parsed without I/O.
//!
//! Errors name the field and the secret's ARN, never the secret's content.

use serde::Deserialize;

/// An RDS-style secret, as RDS and Secrets Manager rotation write it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PasswordSecret {
    pub username: String,
    pub password: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

impl std::fmt::Debug for PasswordSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordSecret").field("username", &self.username).finish_non_exhaustive()
    }
}

/// A client certificate (and chain) and its key, PEM, and the key's passphrase if encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct CertSecret {
    pub cert_pem: String,
    pub key_pem: String,
    pub key_password: Option<String>,
}

impl std::fmt::Debug for CertSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertSecret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {arn} {problem}")]
pub struct SecretShapeError {
    pub arn: String,
    pub problem: String,
}

pub fn parse_password_secret(arn: &str, text: &str) -> Result<PasswordSecret, SecretShapeError> {
    let shape = |problem: String| SecretShapeError { arn: arn.to_string(), problem };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| shape("is not JSON: store an RDS-style secret {\"username\": …, \"password\": …}".into()))?;
    for field in ["username", "password"] {
        match value.get(field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(shape(format!("has a `{field}` that is not a non-empty string"))),
            None => return Err(shape(format!("has no `{field}` field: store an RDS-style secret"))),
        }
    }
    let mut value = value;
    // RDS writes the port as a number; some tools write a string.
    if let Some(port) = value.get("port").and_then(|p| p.as_str()) {
        let port: u16 = port.parse().map_err(|_| shape("has a `port` that is not a port number".into()))?;
        value["port"] = port.into();
    }
    serde_json::from_value(value).map_err(|e| shape(format!("has a field of the wrong type ({})", classify(&e))))
}

/// Accepts `{"certificate": PEM, "private_key": PEM}` with an optional
/// `"private_key_password"` for an encrypted key (libpq's `sslpassword`), or one PEM text
/// holding both.
pub fn parse_cert_secret(arn: &str, text: &str) -> Result<CertSecret, SecretShapeError> {
    let shape = |problem: &str| SecretShapeError { arn: arn.to_string(), problem: problem.to_string() };
    let (cert_pem, key_pem, key_password) = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => {
            let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
            let key_password = match value.get("private_key_password") {
                None => None,
                Some(serde_json::Value::String(password)) if !password.is_empty() => Some(password.clone()),
                Some(_) => return Err(shape("has a `private_key_password` that is not a non-empty string")),
            };
            match (field("certificate"), field("private_key")) {
                (Some(cert), Some(key)) => (cert, key, key_password),
                _ => return Err(shape("needs string fields `certificate` and `private_key` (PEM)")),
            }
        }
        Err(_) => (text.to_string(), text.to_string(), None),
    };
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(shape("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(shape("holds no PEM private key (-----BEGIN … PRIVATE KEY-----)"));
    }
    Ok(CertSecret { cert_pem, key_pem, key_password })
}

/// The kind of a JSON error, without the input text it may quote.
fn classify(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Data => "unexpected type",
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "malformed",
        serde_json::error::Category::Io => "unreadable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:admin-AbCdEf";

    #[test]
    fn rds_style_secret_parses_with_numeric_or_string_port() {
        let s = parse_password_secret(
            ARN,
            r#"{"username":"teleport-admin","password":"p@ss","engine":"postgres","host":"h","port":5432}"#,
        )
        .unwrap();
        assert_eq!((s.username.as_str(), s.port), ("teleport-admin", Some(5432)));
        let s = parse_password_secret(ARN, r#"{"username":"a","password":"b","port":"6432"}"#).unwrap();
        assert_eq!(s.port, Some(6432));
    }

    #[test]
    fn wrong_shapes_name_the_field_but_not_the_secret() {
        let cases = [
            ("hunter2", "is not JSON"),
            (r#"{"password":"hunter2"}"#, "`username`"),
            (r#"{"username":"a"}"#, "`password`"),
            (r#"{"username":"a","password":7}"#, "`password`"),
            (r#"{"username":"a","password":"hunter2","port":"x"}"#, "`port`"),
            (r#"{"username":"a","password":"hunter2","host":5}"#, "wrong type"),
        ];
        for (text, expected) in cases {
            let err = parse_password_secret(ARN, text).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains(ARN), "{text}: {err}");
            assert!(!err.contains("hunter2"), "the error echoes the secret: {err}");
        }
    }

    #[test]
    fn cert_secret_accepts_json_or_a_pem_bundle() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        let json = serde_json::json!({"certificate": cert, "private_key": key}).to_string();
        assert_eq!(
            parse_cert_secret(ARN, &json).unwrap(),
            CertSecret { cert_pem: cert.into(), key_pem: key.into(), key_password: None }
        );
        let encrypted = serde_json::json!({"certificate": cert, "private_key": key, "private_key_password": "pw"});
        assert_eq!(parse_cert_secret(ARN, &encrypted.to_string()).unwrap().key_password.as_deref(), Some("pw"));
        let wrong = serde_json::json!({"certificate": cert, "private_key": key, "private_key_password": 424242});
        let err = parse_cert_secret(ARN, &wrong.to_string()).unwrap_err().to_string();
        assert!(err.contains("private_key_password") && !err.contains("424242"), "{err}");
        let bundle = format!("{cert}{key}");
        assert!(parse_cert_secret(ARN, &bundle).is_ok());
        assert!(parse_cert_secret(ARN, cert).unwrap_err().to_string().contains("private key"));
        assert!(parse_cert_secret(ARN, r#"{"cert": "x"}"#).unwrap_err().to_string().contains("`certificate`"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = parse_password_secret(ARN, r#"{"username":"a","password":"hunter2"}"#).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
