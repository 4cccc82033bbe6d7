//! The admin's TCP connection: a pooled connection to a host that vanished must fail in
//! seconds, not hang until Lambda ends the invocation; a login refused for want of a
//! connection slot is retried, then fails as a transient error.

use std::process::Command;

use crate::fixture::{q, Fixture};

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

/// A TCP relay, run by `python3` (from the machine) on each side of the vanishing link.
const RELAY: &str = r#"
import socket, sys, threading
listen_host, listen_port, target_host, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def pump(a, b):
    try:
        while (data := a.recv(65536)):
            b.sendall(data)
    except OSError:
        pass
server = socket.create_server((listen_host, listen_port))
print("listening", flush=True)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection((target_host, target_port))
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
"#;

/// A host behind a veth link into a network namespace of its own, relaying to the test
/// cluster: `10.213.<n>.2:15432` in the namespace, through `10.213.<n>.1:15433` on this side,
/// to the cluster on loopback. [`VanishingHost::vanish`] takes the link down, so that nothing
/// sent to the host is ever answered or acknowledged, as when a failover takes the old
/// writer's address away. Needs root (`ip netns`, from iproute2).
struct VanishingHost {
    name: String,
    address: std::net::Ipv4Addr,
    relays: Vec<std::process::Child>,
}

impl VanishingHost {
    const PORT: u16 = 15432;

    fn start(upstream_port: u16) -> VanishingHost {
        let n = (std::process::id() % 200 + 20) as u8;
        let name = format!("pgau-vanish-{n}");
        let (outside, inside) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        let (veth_out, veth_in) = (format!("pgau-vo{n}"), format!("pgau-vi{n}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = Command::new("ip").args(["link", "del", &veth_out]).status();
        let ip = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().expect("ip (iproute2, scripts/install-deps) runs");
            assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &veth_out, "type", "veth", "peer", "name", &veth_in]);
        ip(&["link", "set", &veth_in, "netns", &name]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &veth_out]);
        ip(&["link", "set", &veth_out, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &veth_in]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &veth_in, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        let relay = |prefix: &[&str], listen: &str, listen_port: u16, target: &str, target_port: u16| {
            let mut child = Command::new(prefix[0])
                .args(&prefix[1..])
                .args(["python3", "-c", RELAY, listen, &listen_port.to_string(), target, &target_port.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 runs");
            let mut ready = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut ready)
                .unwrap();
            assert_eq!(ready.trim(), "listening", "the relay on {listen}:{listen_port} did not start");
            child
        };
        let host_side = relay(&["env"], &outside, Self::PORT + 1, "127.0.0.1", upstream_port);
        let namespace_side = relay(&["ip", "netns", "exec", &name], &inside, Self::PORT, &outside, Self::PORT + 1);
        VanishingHost { name, address: inside.parse().unwrap(), relays: vec![host_side, namespace_side] }
    }

    fn vanish(&self) {
        let veth_out = self.name.replace("pgau-vanish-", "pgau-vo");
        let status = Command::new("ip").args(["link", "set", &veth_out, "down"]).status().unwrap();
        assert!(status.success(), "ip link set {veth_out} down");
    }
}

impl Drop for VanishingHost {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.name.replace("pgau-vanish-", "pgau-vo")]).status();
    }
}

/// A query on a connection to a host that vanished (no answer, no acknowledgement, no reset)
/// fails once the request has gone unacknowledged for `pg::TCP_USER_TIMEOUT` (10 s), instead
/// of waiting for TCP's retransmissions to give up (about 15 minutes) while Lambda ends the
/// invocation at its timeout.
#[tokio::test]
async fn a_query_to_a_host_that_vanished_fails_within_the_tcp_user_timeout() {
    let fx = Fixture::new("cn_vanish").await;
    let host = VanishingHost::start(crate::fixture::cluster().port());
    let mut db = fx.config().databases[0].resolve_static().unwrap();
    db.port = VanishingHost::PORT;
    db.hostaddr = Some(host.address.into());
    let credentials = autouser_engine::pg::AdminCredentials::from_local_config(&db.auth).unwrap();
    let tls = autouser_engine::pg::TlsSettings::from_config(&db.tls).unwrap();
    let params = autouser_engine::pg::ConnectParams::admin_of(&db, &fx.db, &tls, &credentials);
    let connection = autouser_engine::pg::connect_admin(&params).await.expect("the admin logs in through the link");
    connection.client().simple_query("SELECT 1").await.expect("the host answers");

    host.vanish();
    let began = std::time::Instant::now();
    let query = connection.client().simple_query("SELECT 1");
    let result = tokio::time::timeout(std::time::Duration::from_secs(60), query)
        .await
        .expect("the query hung for a minute after the host vanished: no TCP user timeout");
    let waited = began.elapsed();
    assert!(result.is_err(), "a host that vanished answered");
    assert!(connection.client().is_closed(), "the connection is given up");
    assert!(
        waited >= autouser_engine::pg::TCP_USER_TIMEOUT - std::time::Duration::from_secs(1),
        "it failed after {waited:?}, before the user timeout: something else ended it"
    );
}

/// A burst of cold containers finds no connection slot (SQLSTATE 53300, here the admin's own
/// CONNECTION LIMIT 1 taken by a connection held open): the login is retried with backoff
/// (`pg::LOGIN_ATTEMPTS`), then the start fails as `TooManyConnections`, a transient error that
/// quotes the server and says what to do. A slot that frees during the backoff is taken.
#[tokio::test]
async fn a_login_refused_for_want_of_a_slot_is_retried_then_fails_as_transient() {
    use autouser_engine::{pg, Error};
    let fx = Fixture::new("cn_slots").await;
    fx.sql(&format!("ALTER ROLE {} CONNECTION LIMIT 1", q(&fx.admin))).await;
    let held = fx.admin_client(&fx.config(), &fx.db).await.expect("the admin's one slot");
    let alice = fx.user("alice");

    let retried_before = pg::login_retries();
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.expect_err("no slot for a second connection");
    assert_eq!(err.kind(), "TooManyConnections", "{err}");
    assert!(err.is_transient(), "{err}");
    let Error::TooManyConnections { attempts, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*attempts, pg::LOGIN_ATTEMPTS, "{err}");
    // Other tests of this process may retry logins too, never fewer.
    let retried = pg::login_retries() - retried_before;
    assert!(retried >= u64::from(pg::LOGIN_ATTEMPTS - 1), "{retried} retries counted");
    let message = err.to_string();
    assert!(message.contains("too many connections for role"), "the server's word is quoted: {message}");
    for advice in ["max_connections", "SessionFunctionConcurrency", "CONNECTION LIMIT"] {
        assert!(message.contains(advice), "no {advice} in {message}");
    }
    assert_eq!(fx.state(&alice).await, None, "nothing was done");

    // The held connection is closed once the next start has been refused (it is then waiting
    // out its backoff): a later attempt gets the slot.
    let retried_before = pg::login_retries();
    let release = tokio::spawn(async move {
        while pg::login_retries() == retried_before {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(held);
    });
    let started = fx.start(fx.event("s1", &alice, &["keep"])).await.expect("the start takes the freed slot");
    assert!(started.created_user, "{started:?}");
    release.await.unwrap();
    assert!(pg::login_retries() > retried_before, "the start was refused first, then retried");
    assert!(fx.state(&alice).await.is_some_and(|state| state.login));
}
