//! The admin's TCP connection: a pooled connection to a host that vanished must fail in
//! seconds, not hang until Lambda ends the invocation.

use std::process::Command;

use crate::fixture::Fixture;

/// The kernel's view of the client side of a connection, by its local port (`ss -o`).
fn socket_timers(client_port: i32) -> String {
    let output = Command::new("ss")
        .args(["-tnoH", "state", "established", &format!("( sport = :{client_port} )")])
        .output()
        .expect("ss (iproute2) runs");
    assert!(output.status.success(), "ss: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Keepalives are on, with a first probe after 5 s of silence (`pg::KEEPALIVES_IDLE`): the
/// kernel shows a keepalive timer of at most that on the idle admin connection.
#[tokio::test]
async fn admin_connections_probe_an_idle_server_with_keepalives() {
    let fx = Fixture::new("cn_keepalive").await;
    let connection = fx.admin_client(&fx.config(), &fx.db).await.unwrap();
    let client_port: i32 = connection.query_one("SELECT inet_client_port()", &[]).await.unwrap().get(0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let line = socket_timers(client_port);
    let timer = line
        .split_whitespace()
        .find(|field| field.starts_with("timer:(keepalive,"))
        .unwrap_or_else(|| panic!("no keepalive timer on the admin's socket: {line}"));
    // timer:(keepalive,4.7sec,0)
    let remaining = timer.trim_start_matches("timer:(keepalive,").split(',').next().unwrap_or_default();
    let seconds = [("ms", 0.001), ("sec", 1.0), ("min", 60.0)]
        .iter()
        .find_map(|(unit, factor)| remaining.strip_suffix(unit).and_then(|n| n.parse::<f64>().ok()).map(|n| n * factor))
        .unwrap_or_else(|| panic!("unexpected timer {timer}"));
    assert!(seconds <= 5.0, "the first keepalive probe comes after more than 5 s of silence: {timer}");
}

/// An encrypted key file (libpq's `sslkey` with `sslpassword`) is read with the passphrase in
/// the environment variable `auth.key_password_env` names; without it, the error says so.
#[tokio::test]
async fn an_encrypted_key_file_is_read_with_the_passphrase_key_password_env_names() {
    use autouser_policy::config::AuthConfig;
    let fx = Fixture::new("cn_enc").await;
    let cert = crate::fixture::cluster().client_cert(&fx.admin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    let output = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:cn enc phrase", "-in"])
        .arg(&cert.key_path)
        .arg("-out")
        .arg(&key_file)
        .output()
        .expect("the openssl command line (scripts/install-deps)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Set once, read by this test only: no other test names this variable.
    std::env::set_var("CN_ENC_KEY_PASSWORD", "cn enc phrase");
    let mut config = fx.config();
    config.databases[0].auth = AuthConfig::CertFiles {
        cert_file: cert.cert_path.clone(),
        key_file: key_file.clone(),
        key_password_env: Some("CN_ENC_KEY_PASSWORD".into()),
    };
    let connection = fx.admin_client(&config, &fx.db).await.expect("the encrypted key logs in");
    let who: String = connection.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, fx.admin);

    config.databases[0].auth =
        AuthConfig::CertFiles { cert_file: cert.cert_path.clone(), key_file, key_password_env: None };
    let err = fx.admin_client(&config, &fx.db).await.expect_err("no passphrase");
    assert_eq!(err.kind(), "CredentialsInvalid", "{err}");
    assert!(err.to_string().contains("auth.key_password_env"), "{err}");
}
