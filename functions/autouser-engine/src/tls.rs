//! TLS for the admin's PostgreSQL connections, with OpenSSL, as libpq does.
//!
//! `tls.mode` means what libpq's `sslmode` means, with the same files: `tls.ca_file` is
//! `sslrootcert`, the admin's certificate and key are `sslcert` and `sslkey`, and the key's
//! passphrase is `sslpassword`. Path validation, X.509 parsing and host name matching are
//! OpenSSL's, the library libpq itself uses, so X.509 v1 certificates, self-signed servers and
//! chains are judged as psql judges them. What this module adds to OpenSSL's defaults is
//! libpq's own choices:
//!
//! - only the roots in `tls.ca_file` are trusted, never the system's store;
//! - `require` with a `tls.ca_file` verifies the chain, as `verify-ca` does (libpq: "if a root
//!   CA file exists, the behavior of sslmode=require will be the same as that of verify-ca");
//! - `verify-full` checks the host against the certificate's subjectAltNames of the host's
//!   kind (DNS name or IP address), and against its CN only when it has none of that kind;
//! - TLS 1.2 at least (libpq's `ssl_min_protocol_version` default).
//!
//! A verification failure is recorded with the certificate it concerns, so that the error
//! says what is wrong with which certificate and what the certificate does name.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509StoreContextRef, X509VerifyResult, X509};
use postgres_openssl::MakeTlsConnector;

use crate::Error;
use autouser_policy::config::TlsMode;

/// The admin's client certificate chain (leaf first) and private key, PEM, and the key's
/// passphrase if it is encrypted. No `Debug`: it holds the key and the passphrase.
#[derive(Clone, Copy)]
pub(crate) struct ClientIdentity<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub key_password: Option<&'a str>,
}

/// What the server's certificate failed, as OpenSSL's verification reported it.
#[derive(Debug, Clone)]
pub(crate) struct VerifyFailure {
    reason: X509VerifyResult,
    depth: u32,
    subject: String,
    issuer: String,
    not_after: String,
    names: Vec<String>,
}

/// Where the verify callback leaves the first failure of a handshake.
pub(crate) type FailureSlot = Arc<Mutex<Option<VerifyFailure>>>;

/// A connector for one connection to `host`, and the slot its verification reports into.
pub(crate) fn connector(
    mode: TlsMode,
    ca_pem: Option<&str>,
    client: Option<ClientIdentity<'_>>,
    host: &str,
) -> Result<(MakeTlsConnector, FailureSlot), Error> {
    let setup =
        |what: &str, e: openssl::error::ErrorStack| Error::Credentials(format!("TLS setup failed ({what}): {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| setup("context", e))?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(|e| setup("protocol version", e))?;

    let verify_chain = match mode {
        TlsMode::VerifyFull | TlsMode::VerifyCa => {
            if ca_pem.is_none() {
                return Err(Error::Credentials(
                    "tls.ca_file is required to verify the server certificate (libpq's sslrootcert)".into(),
                ));
            }
            true
        }
        TlsMode::Require => ca_pem.is_some(),
        TlsMode::Disable => false,
    };
    // Only the configured roots: `SslConnector::builder` also loads the system's store.
    let mut store = X509StoreBuilder::new().map_err(|e| setup("certificate store", e))?;
    if let Some(pem) = ca_pem {
        for root in ca_certificates(pem)? {
            store.add_cert(root).map_err(|e| setup("tls.ca_file", e))?;
        }
    }
    builder.set_cert_store(store.build());
    builder.set_verify(if verify_chain { SslVerifyMode::PEER } else { SslVerifyMode::NONE });

    if let Some(identity) = client {
        use_client_identity(&mut builder, identity)?;
    }

    let failure: FailureSlot = Arc::new(Mutex::new(None));
    let mut make = MakeTlsConnector::new(builder.build());
    let verify_host = mode == TlsMode::VerifyFull;
    let host_is_ip = host.parse::<IpAddr>().is_ok();
    let host = host.to_string();
    let slot = failure.clone();
    make.set_callback(move |config, _domain| {
        config.set_verify_hostname(verify_host);
        if verify_chain {
            let slot = slot.clone();
            let host = host.clone();
            config.set_verify_callback(SslVerifyMode::PEER, move |preverified, context| {
                if preverified {
                    return true;
                }
                if host_is_ip && ip_host_matches_common_name(context, &host) {
                    return true;
                }
                record_failure(&slot, context);
                false
            });
        }
        Ok(())
    });
    Ok((make, failure))
}

/// The certificates of a CA file, in order.
fn ca_certificates(pem: &str) -> Result<Vec<X509>, Error> {
    let roots = X509::stack_from_pem(pem.as_bytes())
        .map_err(|e| Error::Credentials(format!("tls.ca_file is not a PEM certificate bundle: {e}")))?;
    if roots.is_empty() {
        return Err(Error::Credentials("tls.ca_file holds no certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(roots)
}

fn use_client_identity(
    builder: &mut openssl::ssl::SslConnectorBuilder,
    identity: ClientIdentity<'_>,
) -> Result<(), Error> {
    let invalid = |detail: String| Error::Credentials(detail);
    let chain = X509::stack_from_pem(identity.cert_pem.as_bytes())
        .map_err(|e| invalid(format!("the admin's client certificate is not PEM: {e}")))?;
    let mut chain = chain.into_iter();
    let leaf = chain.next().ok_or_else(|| {
        invalid("the admin's client certificate file holds no certificate (-----BEGIN CERTIFICATE-----)".into())
    })?;
    let key = private_key(identity.key_pem, identity.key_password)?;
    builder
        .set_certificate(&leaf)
        .map_err(|e| invalid(format!("the admin's client certificate cannot be used: {e}")))?;
    // The rest of the file is the chain up to the CA the server trusts, as libpq sends it.
    for intermediate in chain {
        builder
            .add_extra_chain_cert(intermediate)
            .map_err(|e| invalid(format!("the admin's certificate chain cannot be used: {e}")))?;
    }
    builder.set_private_key(&key).map_err(|e| invalid(format!("the admin's private key cannot be used: {e}")))?;
    if builder.check_private_key().is_err() {
        return Err(invalid(format!(
            "the admin's private key does not belong to its certificate ({}): use the key the \
             certificate's request was made with",
            distinguished_name(leaf.subject_name())
        )));
    }
    Ok(())
}

/// A PEM private key: PKCS#1 or PKCS#8 RSA, SEC1 or PKCS#8 EC, Ed25519, encrypted PKCS#8 or
/// legacy encrypted PEM with a passphrase.
fn private_key(pem: &str, password: Option<&str>) -> Result<PKey<Private>, Error> {
    let encrypted = pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || pem.contains("Proc-Type: 4,ENCRYPTED");
    match (encrypted, password) {
        (true, None) => Err(Error::Credentials(
            "the admin's private key is encrypted and no passphrase is given: name the environment \
             variable holding it in auth.key_password_env (libpq's sslpassword), or add \
             `private_key_password` to the secret"
                .into(),
        )),
        (true, Some(password)) => {
            PKey::private_key_from_pem_passphrase(pem.as_bytes(), password.as_bytes()).map_err(|_| {
                Error::Credentials(
                    "the admin's private key could not be decrypted with the passphrase given \
                     (auth.key_password_env or the secret's private_key_password): check the passphrase"
                        .into(),
                )
            })
        }
        (false, _) => PKey::private_key_from_pem(pem.as_bytes()).map_err(|e| {
            Error::Credentials(format!(
                "the admin's private key is not a PEM private key (PKCS#1, PKCS#8 or SEC1): {e}"
            ))
        }),
    }
}

/// libpq compares an IP host with the certificate's CN when the certificate has no IP
/// subjectAltName; OpenSSL's IP check never looks at the CN.
fn ip_host_matches_common_name(context: &X509StoreContextRef, host: &str) -> bool {
    if context.error().as_raw() != openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH {
        return false;
    }
    let Some(cert) = context.current_cert() else { return false };
    let has_ip_name = cert.subject_alt_names().is_some_and(|names| names.iter().any(|name| name.ipaddress().is_some()));
    !has_ip_name && common_names(cert).iter().any(|cn| cn.eq_ignore_ascii_case(host))
}

fn record_failure(slot: &FailureSlot, context: &X509StoreContextRef) {
    let Ok(mut slot) = slot.lock() else { return };
    if slot.is_some() {
        return;
    }
    let Some(cert) = context.current_cert() else { return };
    *slot = Some(VerifyFailure {
        reason: context.error(),
        depth: context.error_depth(),
        subject: distinguished_name(cert.subject_name()),
        issuer: distinguished_name(cert.issuer_name()),
        not_after: cert.not_after().to_string(),
        names: names_of(cert),
    });
}

/// The host names and addresses a certificate holds: its subjectAltNames, and its CN.
fn names_of(cert: &X509Ref) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(alt_names) = cert.subject_alt_names() {
        for name in alt_names.iter() {
            if let Some(dns) = name.dnsname() {
                names.push(format!("DNS:{dns}"));
            } else if let Some(ip) = name.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(ip).map(IpAddr::from).ok(),
                    _ => None,
                };
                names.extend(ip.map(|ip| format!("IP:{ip}")));
            }
        }
    }
    names.extend(common_names(cert).into_iter().map(|cn| format!("CN={cn}")));
    names
}

fn common_names(cert: &X509Ref) -> Vec<String> {
    cert.subject_name().entries_by_nid(Nid::COMMONNAME).filter_map(|entry| entry.data().to_string().ok()).collect()
}

fn distinguished_name(name: &openssl::x509::X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty subject)".into()
    } else {
        parts.join(", ")
    }
}

impl VerifyFailure {
    /// What failed and what to do, for an operator.
    pub(crate) fn explain(&self, host: &str) -> String {
        use openssl_sys as ffi;
        let reason = self.reason.as_raw();
        let what = if self.depth == 0 { "the server certificate" } else { "a CA certificate of the server's chain" };
        match reason {
            ffi::X509_V_ERR_HOSTNAME_MISMATCH | ffi::X509_V_ERR_IP_ADDRESS_MISMATCH => {
                let names =
                    if self.names.is_empty() { "no host name at all".to_string() } else { self.names.join(", ") };
                format!(
                    "the server certificate ({}) is not valid for host {host:?}: it names {names}; connect \
                     with one of those names, or reissue the certificate with {host:?} in its subjectAltName \
                     (tls.mode verify-ca does not check the host)",
                    self.subject
                )
            }
            ffi::X509_V_ERR_CERT_HAS_EXPIRED => {
                format!("{what} ({}) expired on {}: renew it", self.subject, self.not_after)
            }
            ffi::X509_V_ERR_CERT_NOT_YET_VALID => {
                format!("{what} ({}) is not valid yet: check the server's and this machine's clocks", self.subject)
            }
            ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            | ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            | ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
            | ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN => format!(
                "{what} ({}, issued by {}) does not lead to a CA in tls.ca_file: put the CA that issued the \
                 server's certificate in tls.ca_file ({})",
                self.subject,
                self.issuer,
                self.reason.error_string()
            ),
            _ => format!("{what} ({}) failed verification: {}", self.subject, self.reason.error_string()),
        }
    }
}
