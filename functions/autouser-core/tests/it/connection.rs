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
