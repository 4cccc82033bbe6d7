//! TLS interop: certificates made with the `openssl` command line, as the PostgreSQL manual
//! ("Creating Certificates") and its users make them, judged by our connector and by psql
//! (libpq) with the same files and mode. psql is the oracle: every case must agree with it,
//! and with the outcome the case expects, so that a broken setup cannot pass by failing both.
//!
//! One cluster of its own: its server certificate, key and `ssl_ca_file` are replaced per
//! group of cases, and the server reloads them (SIGHUP).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
use autouser_policy::config::TlsMode;
use scratch_postgres::{Cluster, PgInstall};

const ADMIN: &str = "teleport-admin";
const HOST: &str = "db.example.test";
const KEY_PASSWORD: &str = "correct horse";

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `name`.key and `name`.csr for `cn`, as the manual makes them (`req -new -nodes`).
fn make_key_and_request(dir: &Path, name: &str, cn: &str) {
    let subject = format!("/CN={cn}");
    let (csr, key) = (format!("{name}.csr"), format!("{name}.key"));
    openssl(dir, &["req", "-new", "-nodes", "-text", "-out", &csr, "-keyout", &key, "-subj", &subject]);
}

/// A CA made as the manual makes its root: a request, then `x509 -req -signkey` with the
/// `v3_ca` extensions of the system's openssl.cnf.
fn make_root(dir: &Path, name: &str, cn: &str) {
    make_key_and_request(dir, name, cn);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-text",
            "-days",
            "3650",
            "-extfile",
            "/etc/ssl/openssl.cnf",
            "-extensions",
            "v3_ca",
            "-signkey",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A key and request for `cn`, signed by `ca` for `days` days, with the extensions in
/// `extensions` (none: an X.509 v1 certificate, as `x509 -req` makes under OpenSSL 3).
fn make_signed(dir: &Path, name: &str, cn: &str, ca: &str, days: &str, extensions: Option<&str>) {
    make_key_and_request(dir, name, cn);
    let mut args = vec![
        "x509".to_string(),
        "-req".into(),
        "-in".into(),
        format!("{name}.csr"),
        "-text".into(),
        "-days".into(),
        days.into(),
        "-CA".into(),
        format!("{ca}.crt"),
        "-CAkey".into(),
        format!("{ca}.key"),
        "-CAcreateserial".into(),
        "-out".into(),
        format!("{name}.crt"),
    ];
    if let Some(extensions) = extensions {
        write(dir, &format!("{name}.ext"), extensions);
        args.extend(["-extfile".to_string(), format!("{name}.ext")]);
    }
    openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Everything the cases use, made once.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn make() -> Files {
        let dir = tempfile::Builder::new().prefix("tls-interop-").tempdir().unwrap();
        let d = dir.path();
        make_root(d, "root", "root.example.test");
        make_root(d, "other", "other.example.test");
        // Server certificates.
        make_signed(d, "server_v1", HOST, "root", "365", None);
        make_signed(
            d,
            "server_san",
            "ignored.example.test",
            "root",
            "365",
            Some(
                "basicConstraints=CA:FALSE\nsubjectAltName=DNS:db.example.test,DNS:*.wild.example.test,IP:127.0.0.1\n",
            ),
        );
        make_signed(
            d,
            "server_cn_only_v3",
            HOST,
            "root",
            "365",
            Some("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"),
        );
        make_signed(d, "server_ip_only", "not-a-host", "root", "365", Some("subjectAltName=IP:127.0.0.1\n"));
        make_signed(d, "server_ip_cn", "127.0.0.1", "root", "365", None);
        make_signed(d, "server_expired", HOST, "root", "-1", None);
        // The manual's quick self-signed server certificate, given to clients as the root.
        openssl(
            d,
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "365",
                "-nodes",
                "-text",
                "-out",
                "server_self.crt",
                "-keyout",
                "server_self.key",
                "-subj",
                "/CN=db.example.test",
            ],
        );
        // Client certificates of the admin: the manual's recipe (v1), and v3.
        make_signed(d, "client_v1", ADMIN, "root", "365", None);
        make_signed(
            d,
            "client_v3",
            ADMIN,
            "root",
            "365",
            Some("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
        );
        // A chain: root -> intermediate CA -> client, the file holding the client and the intermediate.
        make_signed(
            d,
            "intermediate",
            "intermediate.example.test",
            "root",
            "365",
            Some("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"),
        );
        make_signed(d, "client_leaf", ADMIN, "intermediate", "365", None);
        let chain = read(d, "client_leaf.crt") + &read(d, "intermediate.crt");
        write(d, "client_chain.crt", &chain);
        // Key formats: `req -nodes` writes PKCS#8; PKCS#1 with `rsa -traditional`; EC in SEC1 and PKCS#8.
        openssl(d, &["rsa", "-in", "client_v1.key", "-traditional", "-out", "client_v1_pkcs1.key"]);
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "client_ec_sec1.key"]);
        openssl(
            d,
            &["req", "-new", "-key", "client_ec_sec1.key", "-out", "client_ec.csr", "-subj", "/CN=teleport-admin"],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "client_ec.csr",
                "-days",
                "365",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-out",
                "client_ec.crt",
            ],
        );
        openssl(d, &["pkcs8", "-topk8", "-nocrypt", "-in", "client_ec_sec1.key", "-out", "client_ec_pkcs8.key"]);
        // An encrypted PKCS#8 key (libpq's sslpassword).
        let passout = format!("pass:{KEY_PASSWORD}");
        openssl(
            d,
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-in",
                "client_v1.key",
                "-out",
                "client_v1_encrypted.key",
                "-passout",
                &passout,
            ],
        );
        // CA files.
        write(d, "both_roots.crt", &(read(d, "other.crt") + &read(d, "root.crt")));
        // libpq refuses a key file that others can read.
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// The cluster, serving `server` (name of a `.crt`/`.key` pair) and trusting `root.crt` for
/// client certificates.
struct Server {
    cluster: Cluster,
    serving: Option<String>,
}

impl Server {
    async fn start() -> Server {
        let install = PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)");
        let cluster = Cluster::start(&install).expect("the interop cluster starts");
        let superuser = scratch_login::connect(&cluster, cluster.superuser(), "postgres").await.unwrap();
        superuser
            .batch_execute(&format!("CREATE ROLE {} LOGIN", autouser_engine::sql::quote_ident(ADMIN)))
            .await
            .unwrap();
        Server { cluster, serving: None }
    }

    /// Makes the server present `name`.crt, then waits until it does.
    fn serve(&mut self, files: &Files, name: &str) {
        if self.serving.as_deref() == Some(name) {
            return;
        }
        let dir = self.cluster.dir();
        let owner = std::fs::metadata(dir.join("data")).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for (from, to, mode) in [
            (format!("{name}.crt"), "server.crt", 0o644),
            (format!("{name}.key"), "server.key", 0o600),
            ("root.crt".to_string(), "ca.crt", 0o644),
        ] {
            let target = dir.join(to);
            std::fs::copy(files.path(&from), &target).unwrap();
            std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let pid = read(&dir.join("data"), "postmaster.pid");
        let pid = pid.lines().next().unwrap();
        assert!(Command::new("kill").args(["-HUP", pid]).status().unwrap().success());
        let expected = fingerprint(&std::fs::read(files.path(&format!("{name}.crt"))).unwrap());
        let deadline = Instant::now() + Duration::from_secs(15);
        while served_fingerprint(self.cluster.port()).as_deref() != Some(expected.as_str()) {
            assert!(Instant::now() < deadline, "the server did not switch to {name}.crt");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.serving = Some(name.to_string());
    }
}

fn fingerprint(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// The fingerprint of the certificate the server presents now (`s_client -starttls postgres`).
fn served_fingerprint(port: u16) -> Option<String> {
    let output = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &format!("127.0.0.1:{port}"), "-showcerts"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[begin..].find("-----END CERTIFICATE-----")? + begin + "-----END CERTIFICATE-----".len();
    Some(fingerprint(text[begin..end].as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Refuse,
}

struct Case {
    what: &'static str,
    server: &'static str,
    mode: TlsMode,
    ca_file: Option<&'static str>,
    host: &'static str,
    cert: &'static str,
    key: &'static str,
    key_password: Option<&'static str>,
    expect: Expect,
    /// Words our error must hold when the case is refused.
    error_says: &'static [&'static str],
}

const fn case(what: &'static str, server: &'static str, mode: TlsMode, host: &'static str, expect: Expect) -> Case {
    Case {
        what,
        server,
        mode,
        ca_file: Some("root.crt"),
        host,
        cert: "client_v1.crt",
        key: "client_v1.key",
        key_password: None,
        expect,
        error_says: &[],
    }
}

fn sslmode(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::VerifyFull => "verify-full",
        TlsMode::VerifyCa => "verify-ca",
        TlsMode::Require => "require",
        TlsMode::Disable => "disable",
    }
}

/// psql's verdict on the case, and what it said.
fn psql(files: &Files, port: u16, case: &Case) -> (Expect, String) {
    let psql = std::env::var("AUTOUSER_PG_BIN")
        .map(|bin| PathBuf::from(bin).join("psql"))
        .ok()
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/psql"));
    let home = tempfile::tempdir().unwrap();
    let mut conninfo = format!(
        "host={} hostaddr=127.0.0.1 port={port} dbname=postgres user={ADMIN} sslmode={} sslcert={} sslkey={} connect_timeout=10",
        case.host,
        sslmode(case.mode),
        files.path(case.cert).display(),
        files.path(case.key).display(),
    );
    // Without sslrootcert, libpq looks for ~/.postgresql/root.crt: HOME is empty.
    match case.ca_file {
        Some(ca) => conninfo.push_str(&format!(" sslrootcert={}", files.path(ca).display())),
        None => conninfo.push_str(&format!(" sslrootcert={}", home.path().join("none.crt").display())),
    }
    if let Some(password) = case.key_password {
        conninfo.push_str(&format!(" sslpassword='{password}'"));
    }
    // setsid: no controlling terminal, so OpenSSL cannot prompt for a passphrase.
    let output = Command::new("setsid")
        .arg("-w")
        .arg(psql)
        .args(["-X", "-A", "-t", "-c", "select 1", &conninfo])
        .env("HOME", home.path())
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    let verdict = if output.status.success() { Expect::Accept } else { Expect::Refuse };
    (verdict, String::from_utf8_lossy(&output.stderr).trim().to_string())
}

/// Our verdict on the case, and our error.
async fn ours(files: &Files, port: u16, case: &Case) -> (Expect, String) {
    let tls = TlsSettings { mode: case.mode, ca_pem: case.ca_file.map(|ca| read(files.dir.path(), ca)) };
    let credentials = AdminCredentials::ClientCert {
        cert_pem: read(files.dir.path(), case.cert),
        key_pem: read(files.dir.path(), case.key),
        key_password: case.key_password.map(str::to_string),
    };
    let params = ConnectParams {
        host: case.host,
        port,
        hostaddr: Some("127.0.0.1".parse().unwrap()),
        dbname: "postgres",
        user: ADMIN,
        tls: &tls,
        credentials: &credentials,
    };
    match pg::connect(&params).await {
        Ok(client) => {
            let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
            (Expect::Accept, String::new())
        }
        Err(error) => (Expect::Refuse, format!("{error} [{}]", error.kind())),
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use TlsMode::*;
    vec![
        // Server certificates as the manual makes them.
        case("v1 server certificate, host in its CN", "server_v1", VerifyFull, HOST, Accept),
        case("v1 server certificate under verify-ca", "server_v1", VerifyCa, "elsewhere.example.test", Accept),
        Case {
            error_says: &["not valid for host \"elsewhere.example.test\"", "CN=db.example.test"],
            ..case("v1 server certificate, another host", "server_v1", VerifyFull, "elsewhere.example.test", Refuse)
        },
        case("v3 server certificate naming the host only in its CN", "server_cn_only_v3", VerifyFull, HOST, Accept),
        case("subjectAltName DNS name", "server_san", VerifyFull, HOST, Accept),
        case("subjectAltName wildcard", "server_san", VerifyFull, "a.wild.example.test", Accept),
        case("a wildcard covers one label only", "server_san", VerifyFull, "a.b.wild.example.test", Refuse),
        Case {
            error_says: &["DNS:db.example.test", "IP:127.0.0.1"],
            ..case(
                "the CN is ignored when DNS subjectAltNames exist",
                "server_san",
                VerifyFull,
                "ignored.example.test",
                Refuse,
            )
        },
        case("an IP host, checked against the IP subjectAltName", "server_san", VerifyFull, "127.0.0.1", Accept),
        case(
            "an IP host and a certificate with only an IP subjectAltName",
            "server_ip_only",
            VerifyFull,
            "127.0.0.1",
            Accept,
        ),
        case(
            "a DNS host and a certificate with only an IP subjectAltName: the CN is checked",
            "server_ip_only",
            VerifyFull,
            HOST,
            Refuse,
        ),
        case(
            "an IP host and no IP subjectAltName: libpq checks the CN",
            "server_ip_cn",
            VerifyFull,
            "127.0.0.1",
            Accept,
        ),
        Case {
            error_says: &["not valid for host \"localhost\""],
            ..case("a host mismatch under verify-full", "server_ip_cn", VerifyFull, "localhost", Refuse)
        },
        Case {
            ca_file: Some("server_self.crt"),
            ..case(
                "the manual's self-signed server certificate as its own root",
                "server_self",
                VerifyFull,
                HOST,
                Accept,
            )
        },
        Case {
            ca_file: Some("root.crt"),
            ..case("a self-signed server certificate the CA file does not hold", "server_self", VerifyCa, HOST, Refuse)
        },
        // Roots.
        Case {
            ca_file: Some("other.crt"),
            error_says: &["does not lead to a CA in tls.ca_file", "CN=root.example.test"],
            ..case("a wrong root", "server_v1", VerifyFull, HOST, Refuse)
        },
        Case {
            ca_file: Some("other.crt"),
            ..case("a wrong root under verify-ca", "server_v1", VerifyCa, HOST, Refuse)
        },
        Case {
            ca_file: Some("other.crt"),
            ..case("require with a CA file verifies the chain, as libpq does", "server_v1", Require, HOST, Refuse)
        },
        Case {
            ca_file: None,
            ..case(
                "require without a CA file trusts any certificate",
                "server_self",
                Require,
                "elsewhere.example.test",
                Accept,
            )
        },
        Case {
            ca_file: Some("root.crt"),
            ..case(
                "require with the right CA does not check the host",
                "server_v1",
                Require,
                "elsewhere.example.test",
                Accept,
            )
        },
        Case {
            ca_file: Some("both_roots.crt"),
            ..case("a CA file holding several roots", "server_v1", VerifyFull, HOST, Accept)
        },
        Case {
            error_says: &["expired on"],
            ..case("an expired server certificate", "server_expired", VerifyFull, HOST, Refuse)
        },
        // Client certificates and keys.
        Case {
            cert: "client_v3.crt",
            key: "client_v3.key",
            ..case("a v3 client certificate", "server_v1", VerifyFull, HOST, Accept)
        },
        Case { key: "client_v1_pkcs1.key", ..case("an RSA key in PKCS#1", "server_v1", VerifyFull, HOST, Accept) },
        Case {
            cert: "client_ec.crt",
            key: "client_ec_sec1.key",
            ..case("an EC key in SEC1", "server_v1", VerifyFull, HOST, Accept)
        },
        Case {
            cert: "client_ec.crt",
            key: "client_ec_pkcs8.key",
            ..case("an EC key in PKCS#8", "server_v1", VerifyFull, HOST, Accept)
        },
        Case {
            cert: "client_chain.crt",
            key: "client_leaf.key",
            ..case("a client chain through an intermediate", "server_v1", VerifyFull, HOST, Accept)
        },
        Case {
            cert: "client_leaf.crt",
            key: "client_leaf.key",
            ..case("a client certificate without the intermediate its CA needs", "server_v1", VerifyFull, HOST, Refuse)
        },
        Case {
            cert: "client_v1.crt",
            key: "client_ec_sec1.key",
            error_says: &["does not belong to its certificate", "CredentialsInvalid"],
            ..case("a key that does not belong to the certificate", "server_v1", VerifyFull, HOST, Refuse)
        },
        Case {
            key: "client_v1_encrypted.key",
            key_password: Some(KEY_PASSWORD),
            ..case("an encrypted PKCS#8 key with its passphrase", "server_v1", VerifyFull, HOST, Accept)
        },
        Case {
            key: "client_v1_encrypted.key",
            key_password: Some("wrong"),
            error_says: &["could not be decrypted"],
            ..case("an encrypted key with a wrong passphrase", "server_v1", VerifyFull, HOST, Refuse)
        },
        Case {
            key: "client_v1_encrypted.key",
            error_says: &["auth.key_password_env"],
            ..case("an encrypted key without a passphrase", "server_v1", VerifyFull, HOST, Refuse)
        },
    ]
}

#[tokio::test]
async fn certificates_made_with_openssl_are_judged_as_psql_judges_them() {
    let files = tokio::task::spawn_blocking(Files::make).await.unwrap();
    let mut server = Server::start().await;
    let port = server.cluster.port();
    let mut cases = cases();
    // Few reloads: the cases of one server certificate together, in their order.
    cases.sort_by_key(|case| case.server);
    let mut wrong = Vec::new();
    for case in &cases {
        server.serve(&files, case.server);
        let (psql_verdict, psql_said) = psql(&files, port, case);
        let (our_verdict, our_error) = ours(&files, port, case).await;
        if psql_verdict != case.expect || our_verdict != case.expect {
            wrong.push(format!(
                "{}: expected {:?}, psql {psql_verdict:?} ({psql_said}), ours {our_verdict:?} ({our_error})",
                case.what, case.expect
            ));
            continue;
        }
        for words in case.error_says {
            if !our_error.contains(words) {
                wrong.push(format!("{}: our error does not say {words:?}: {our_error}", case.what));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}
