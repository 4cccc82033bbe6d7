//! `autouser status`: who has access now, read as the admin, changing nothing.

use serde_json::{json, Value};

use crate::{autouser, autouser_with_env, cluster, setup_with_mode, stderr, stdout_json, superuser_sql, write_config};

fn event(ns: &str, user: &str, session: &str) -> String {
    format!(
        r#"{{"session_id": "{session}", "user": "{ns}_{user}", "roles": ["devs"], "database": "main", "db_name": "postgres"}}"#
    )
}

fn start(config: &str, event: &str) -> Value {
    stdout_json(&autouser(&["session-start", "--config", config, "--event", "-"], Some(event)))
}

fn status_json(config: &str) -> Value {
    stdout_json(&autouser(&["status", "--config", config, "--json"], None))
}

fn user<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["databases"][0]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .find(|u| u["db_user"] == name)
        .unwrap_or_else(|| panic!("no user {name} in {status}"))
}

#[tokio::test]
async fn status_shows_the_open_sessions_with_when_the_reaper_closes_them() {
    let ns = "st_open";
    let (_dir, config) = setup_with_mode(ns, "keep").await;
    let config = config.display().to_string();
    start(&config, &event(ns, "alice", "s1"));
    start(&config, &event(ns, "alice", "s2"));
    start(&config, &event(ns, "bob", "s3"));
    let status = status_json(&config);
    let databases = status["databases"].as_array().unwrap();
    assert_eq!(databases.len(), 1, "{status}");
    assert_eq!(databases[0]["database"], "main");
    assert_eq!(databases[0]["users"].as_array().unwrap().len(), 2, "{status}");
    let alice = user(&status, "st_open_alice");
    assert_eq!(alice["can_login"], true);
    assert_eq!(alice["roles"], json!(["st_open_reader"]));
    assert_eq!(alice["drift"], json!([]), "{status}");
    let sessions = alice["open_sessions"].as_array().unwrap();
    assert_eq!(sessions.iter().map(|s| s["session_id"].as_str().unwrap()).collect::<Vec<_>>(), ["s1", "s2"]);
    for session in sessions {
        assert_eq!(session["mode"], "keep");
        let started_at = session["started_at"].as_u64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(started_at <= now && now - started_at < 600, "{session}");
        // The default max_session_duration: 12 hours.
        assert_eq!(session["expires_at"].as_u64().unwrap(), started_at + 12 * 3600, "{session}");
    }
    assert_eq!(user(&status, "st_open_bob")["open_sessions"][0]["session_id"], "s3");

    // The end locks alice: no login, no role, no session, and that is no drift.
    stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&event(ns, "alice", "s1"))));
    stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&event(ns, "alice", "s2"))));
    let status = status_json(&config);
    let alice = user(&status, "st_open_alice");
    assert_eq!(alice["can_login"], false, "{status}");
    assert_eq!(alice["roles"], json!([]), "{status}");
    assert_eq!(alice["open_sessions"], json!([]), "{status}");
    assert_eq!(alice["drift"], json!([]), "{status}");
}

#[tokio::test]
async fn a_login_given_by_a_superuser_without_a_session_is_drift() {
    let ns = "st_login";
    let (_dir, config) = setup_with_mode(ns, "keep").await;
    let config = config.display().to_string();
    start(&config, &event(ns, "alice", "s1"));
    stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&event(ns, "alice", "s1"))));
    superuser_sql("ALTER ROLE st_login_alice LOGIN").await;
    let status = status_json(&config);
    let alice = user(&status, "st_login_alice");
    assert_eq!(alice["can_login"], true);
    assert_eq!(alice["open_sessions"], json!([]));
    assert_eq!(alice["drift"], json!([{"kind": "login_without_session"}]), "{status}");
}

#[tokio::test]
async fn a_grant_by_someone_else_is_drift_naming_the_grantor() {
    let ns = "st_foreign";
    let (_dir, config) = setup_with_mode(ns, "keep").await;
    let config = config.display().to_string();
    start(&config, &event(ns, "alice", "s1"));
    superuser_sql("CREATE ROLE st_foreign_extra; GRANT st_foreign_extra TO st_foreign_alice").await;
    let status = status_json(&config);
    let alice = user(&status, "st_foreign_alice");
    assert_eq!(alice["roles"], json!(["st_foreign_extra", "st_foreign_reader"]), "{status}");
    let drift = alice["drift"].as_array().unwrap();
    assert!(
        drift.contains(&json!({"kind": "foreign_grant", "role": "st_foreign_extra", "grantor": cluster().superuser()})),
        "{status}"
    );
    assert!(
        drift.contains(&json!({"kind": "roles_differ_from_ledger", "missing": [], "unexpected": ["st_foreign_extra"]})),
        "{status}"
    );
}

#[tokio::test]
async fn unmanaged_logins_are_listed_and_the_text_form_has_the_users() {
    let ns = "st_text";
    let (dir, config) = setup_with_mode(ns, "keep").await;
    // A second database entry: status reads both, and with stderr piped draws no progress bar.
    let admin = format!("{ns}_admin");
    let second = scratch_login::database_yaml(cluster(), cluster().port(), "second", &admin).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replacen("roles:\n", &format!("{second}roles:\n"), 1);
    let config = write_config(dir.path(), "two.yaml", &text);
    superuser_sql("CREATE ROLE st_text_app LOGIN").await;
    start(&config, &event(ns, "alice", "s1"));

    let output = autouser(&["status", "--config", &config, "--json"], None);
    assert_eq!(stderr(&output), "", "nothing but the report when stderr is not a terminal");
    let status = stdout_json(&output);
    let databases = status["databases"].as_array().unwrap();
    assert_eq!(databases.iter().map(|d| d["database"].as_str().unwrap()).collect::<Vec<_>>(), ["main", "second"]);
    for database in databases {
        let unmanaged = database["unmanaged_logins"].as_array().unwrap();
        assert!(unmanaged.contains(&json!("st_text_app")), "{database}");
        assert!(!unmanaged.contains(&json!("st_text_alice")), "managed users are not unmanaged: {database}");
        assert!(!unmanaged.contains(&json!(admin)), "the admin is not listed: {database}");
    }
    let reaped = autouser(&["reap", "--config", &config], None);
    assert!(reaped.status.success(), "{}", stderr(&reaped));
    assert_eq!(stderr(&reaped), "", "reap over two databases draws no progress bar into a pipe");
    let one = stdout_json(&autouser(&["status", "--config", &config, "--json", "--database", "second"], None));
    assert_eq!(one["databases"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["databases"][0]["database"], "second");

    let output = autouser(&["status", "--config", &config], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("database main: 1 managed user(s), 1 able to log in, 0 with drift"), "{text}");
    let row = text.lines().find(|l| l.trim_start().starts_with("st_text_alice")).unwrap_or_else(|| panic!("{text}"));
    for cell in ["yes", "st_text_reader", "s1", "keep"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert!(text.contains("USER") && text.contains("REAPER CLOSES"), "{text}");
    assert!(text.contains("unmanaged logins:") && text.contains("st_text_app"), "{text}");

    let unknown = autouser(&["status", "--config", &config, "--database", "nope"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("[UnknownDatabase]"), "{}", stderr(&unknown));
}

/// Reading a database costs the same round trips whatever the number of its users: one query.
#[tokio::test]
async fn status_reads_a_database_in_the_same_round_trips_whatever_the_number_of_users() {
    let ns = "st_trips";
    let (dir, config) = setup_with_mode(ns, "keep").await;
    let counter = scratch_postgres::RoundTripCounter::start(([127, 0, 0, 1], cluster().port()).into()).unwrap();
    let admin = format!("{ns}_admin");
    let proxied = scratch_login::database_yaml(cluster(), counter.port(), "main", &admin).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let direct_entry_start = text.find("  - name: \"main\"").unwrap_or_else(|| panic!("{text}"));
    let direct_entry_end = text.find("roles:\n").unwrap();
    let text = format!("{}{proxied}{}", &text[..direct_entry_start], &text[direct_entry_end..]);
    let proxied_config = write_config(dir.path(), "proxied.yaml", &text);
    let config = config.display().to_string();

    let round_trips_of_status = || {
        let before = counter.round_trips();
        let status = stdout_json(&autouser(&["status", "--config", &proxied_config, "--json"], None));
        (counter.round_trips() - before, status["databases"][0]["users"].as_array().unwrap().len())
    };
    start(&config, &event(ns, "u0", "s0"));
    let (one_user, users) = round_trips_of_status();
    assert_eq!(users, 1);
    assert!(one_user > 0, "status went through the counting proxy");
    for n in 1..8 {
        start(&config, &event(ns, &format!("u{n}"), &format!("s{n}")));
    }
    let (eight_users, users) = round_trips_of_status();
    assert_eq!(users, 8);
    assert_eq!(eight_users, one_user, "status read 8 users in more round trips than 1");
}

/// On a terminal (a pseudo-terminal from util-linux `script`), `status` and `reap` over two
/// databases draw a progress bar on stderr; piped, they print only their errors.
#[test]
fn progress_bars_are_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    // Ports nothing listens on: each database fails fast, after the bar moved on.
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let entries: String = ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            format!(
                "  - name: db{n}\n    type: self-hosted\n    uri: 127.0.0.1:{port}\n    admin_user: {{name: a}}\n    \
                 auth: {{method: password, password_env: HOME}}\n    tls: {{mode: require}}\n"
            )
        })
        .collect();
    let config = write_config(dir.path(), "c.yaml", &format!("databases:\n{entries}"));
    for (command, verb) in [("status", "reading"), ("reap", "reaping")] {
        let line = format!("{} {command} --config {config}", env!("CARGO_BIN_EXE_autouser"));
        let on_terminal = std::process::Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("RUST_LOG", "error")
            .output()
            .expect("util-linux `script` runs");
        let drawn = String::from_utf8_lossy(&on_terminal.stdout);
        assert!(drawn.contains(&format!("{verb} [")) && drawn.contains("2/2 databases"), "{drawn}");
        let piped = autouser_with_env(&[command, "--config", &config], None, &[("RUST_LOG", "error".into())]);
        assert_eq!(piped.status.code(), on_terminal.status.code(), "{drawn}");
        let log = stderr(&piped);
        assert!(!log.contains(&format!("{verb} [")) && !log.contains('\r') && !log.contains('\u{1b}'), "{log}");
        assert!(log.starts_with("autouser: "), "only the error: {log}");
    }
}
