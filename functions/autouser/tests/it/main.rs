//! The `autouser` binary's external contract: arguments, stdout JSON, stderr messages, exit
//! codes. Runs the real binary against a throwaway cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod identity;
mod plan;
mod rds;
mod status;
mod teleport_roles;

pub(crate) use scratch_login::test_cluster as cluster;

/// Runs SQL as the superuser.
pub(crate) async fn superuser_sql(sql: &str) {
    scratch_login::superuser_sql(cluster(), sql).await;
}

/// A config file for admin `admin` (created with CREATEROLE and ADMIN OPTION on `reader`),
/// in a fresh directory.
async fn setup(ns: &str) -> (tempfile::TempDir, PathBuf) {
    setup_with_mode(ns, "best_effort_drop").await
}

/// [`setup`] with the role's `create_db_user_mode` `mode`.
pub(crate) async fn setup_with_mode(ns: &str, mode: &str) -> (tempfile::TempDir, PathBuf) {
    let cluster = cluster();
    let admin = format!("{ns}_admin");
    let reader = format!("{ns}_reader");
    let mut sql = format!("CREATE ROLE \"{admin}\" LOGIN CREATEROLE; CREATE ROLE \"{reader}\";");
    if cluster.major() >= 16 {
        sql.push_str(&format!("GRANT \"{reader}\" TO \"{admin}\" WITH ADMIN OPTION;"));
    }
    superuser_sql(&sql).await;
    let main = scratch_login::database_yaml(cluster, cluster.port(), "main", &admin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = scratch_login::one_role_config_yaml(
        &format!("{ns}_grp"),
        &main,
        "devs",
        mode,
        &format!("db_roles: [{reader}]"),
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, scratch_login::schema_checked(&config)).unwrap();
    (dir, path)
}

pub(crate) fn autouser(args: &[&str], stdin: Option<&str>) -> Output {
    autouser_with_env(args, stdin, &[])
}

pub(crate) fn autouser_with_env(args: &[&str], stdin: Option<&str>, env: &[(&str, String)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_autouser"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("autouser runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// [`write`] for a config the test expects to load: it must validate against the config's
/// JSON Schema first.
pub(crate) fn write_config(dir: &Path, name: &str, text: &str) -> String {
    write(dir, name, scratch_login::schema_checked(text))
}

pub(crate) fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "exit {:?}, stderr: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "exactly one line of JSON: {text}");
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn start_and_end_print_the_contract_json() {
    let (dir, config) = setup("cli_ok").await;
    let config = config.display().to_string();
    let event =
        r#"{"session_id": "s1", "user": "cli_ok_alice", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    let event_file = write(dir.path(), "start.json", event);
    let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", &event_file], None));
    assert_eq!(started["status"], "active");
    assert_eq!(started["db_user"], "cli_ok_alice");
    assert_eq!(started["db_roles"], serde_json::json!(["cli_ok_reader"]));

    // The same event from standard input is a duplicate: still active, nothing changed.
    let again = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(event)));
    assert_eq!(again["status"], "active");
    assert_eq!(again["already_active"], true);

    let ended = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(event)));
    assert_eq!(ended["status"], "dropped");
    assert_eq!(ended["db_user"], "cli_ok_alice");
    let again = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(event)));
    assert_eq!(again["status"], "noop");
}

/// A session whose end is lost is closed by `reap` once older than `max_session_duration`.
#[tokio::test]
async fn reap_closes_a_session_whose_end_was_lost() {
    let (_dir, config) = setup("cli_reap").await;
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_session_duration: 1s\n");
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let event = r#"{"session_id": "s1", "user": "cli_reap_alice", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(event)));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let reports = stdout_json(&autouser(&["reap", "--config", &config], None));
    assert_eq!(reports[0]["database"], "main", "{reports}");
    assert_eq!(reports[0]["closed"][0]["db_user"], "cli_reap_alice", "{reports}");
    assert_eq!(reports[0]["closed"][0]["status"], "dropped", "{reports}");
    let again = stdout_json(&autouser(&["reap", "--config", &config, "--database", "main"], None));
    assert_eq!(again[0]["closed"], serde_json::json!([]), "{again}");
    let unknown = autouser(&["reap", "--config", &config, "--database", "nope"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("UnknownDatabase"), "{}", stderr(&unknown));
}

/// No delivery order re-opens an ended session: a start redelivered after its end dropped
/// the user, and a start whose end came first, are refused and create nothing.
#[tokio::test]
async fn a_start_after_its_end_is_refused_whatever_the_order_of_delivery() {
    let (_dir, config) = setup("cli_order").await;
    let config = config.display().to_string();
    let run = |command: &str, event: &str| autouser(&[command, "--config", &config, "--event", "-"], Some(event));
    let exists = |user: &'static str| async move {
        let client = scratch_login::connect(cluster(), "postgres", "postgres").await.unwrap();
        !client.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user]).await.unwrap().is_empty()
    };
    let alice = r#"{"session_id": "s1", "user": "cli_order_alice", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    stdout_json(&run("session-start", alice));
    assert_eq!(stdout_json(&run("session-end", alice))["status"], "dropped");
    let redelivered = run("session-start", alice);
    assert_eq!(redelivered.status.code(), Some(1));
    assert!(stderr(&redelivered).contains("[SessionAlreadyEnded]"), "{}", stderr(&redelivered));
    assert!(redelivered.stdout.is_empty());
    assert!(!exists("cli_order_alice").await, "the dropped user is not re-created");

    let bob = r#"{"session_id": "s2", "user": "cli_order_bob", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    assert_eq!(stdout_json(&run("session-end", bob))["status"], "noop");
    let late = run("session-start", bob);
    assert_eq!(late.status.code(), Some(1));
    assert!(stderr(&late).contains("[SessionAlreadyEnded]"), "{}", stderr(&late));
    assert!(!exists("cli_order_bob").await, "no user with an orphan session");
}

/// `remote-<user>-<cluster>` can name two people; the second is refused, and told who owns it.
#[tokio::test]
async fn a_second_identity_on_one_role_is_refused_naming_both() {
    let (_dir, config) = setup("cli_ident").await;
    let config = config.display().to_string();
    let run = |event: &str| autouser(&["session-start", "--config", &config, "--event", "-"], Some(event));
    let remote = r#"{"session_id": "s1", "user": "cli_ident_alice", "origin_cluster": "root", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    assert_eq!(stdout_json(&run(remote))["db_user"], "remote-cli_ident_alice-root");
    let local = r#"{"session_id": "s2", "user": "remote-cli_ident_alice-root", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    let output = run(local);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("[IdentityConflict]"), "{message}");
    assert!(message.contains(r#"user "cli_ident_alice" of cluster "root""#), "{message}");
    assert!(message.contains(r#"local user "remote-cli_ident_alice-root""#), "{message}");
}

#[tokio::test]
async fn malformed_event_names_the_field() {
    let (_dir, config) = setup("cli_bad").await;
    let config = config.display().to_string();
    let output = autouser(
        &["session-start", "--config", &config, "--event", "-"],
        Some(r#"{"session_id": "s1", "user": "x", "roles": ["devs"], "database": "main"}"#),
    );
    assert_eq!(output.status.code(), Some(65));
    assert!(stderr(&output).contains("db_name"), "{}", stderr(&output));
    let output = autouser(&["session-start", "--config", &config, "--event", "-"], Some("{not json"));
    assert_eq!(output.status.code(), Some(65));
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn refusal_names_the_user_and_exits_nonzero() {
    let (_dir, config) = setup("cli_conflict").await;
    superuser_sql("CREATE ROLE cli_conflict_bob LOGIN").await;
    let event = r#"{"session_id": "s1", "user": "cli_conflict_bob", "roles": ["devs"], "database": "main", "db_name": "postgres"}"#;
    let output = autouser(&["session-start", "--config", &config.display().to_string(), "--event", "-"], Some(event));
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("cli_conflict_bob") && message.contains("[UserConflict]"), "{message}");
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn unknown_database_and_role_are_named() {
    let (_dir, config) = setup("cli_names").await;
    let config = config.display().to_string();
    let event = r#"{"session_id": "s1", "user": "u", "roles": ["devs"], "database": "nope", "db_name": "postgres"}"#;
    let output = autouser(&["session-start", "--config", &config, "--event", "-"], Some(event));
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("[UnknownDatabase]") && message.contains("database \"nope\" is not in the config"),
        "{message}"
    );
    let event = r#"{"session_id": "s1", "user": "u", "roles": ["ops"], "database": "main", "db_name": "postgres"}"#;
    let output = autouser(&["session-start", "--config", &config, "--event", "-"], Some(event));
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("[PolicyDenied]") && message.contains("role \"ops\" is not in the policy"), "{message}");
}

#[tokio::test]
async fn invalid_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.yaml", "databases:\n  - name: x\n    type: oracle\n");
    let event = write(dir.path(), "e.json", r#"{"session_id":"s","user":"u","database":"x","db_name":"d"}"#);
    let output = autouser(&["session-end", "--config", &config, "--event", &event], None);
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr(&output).contains("databases[0].type"), "{}", stderr(&output));
}

#[tokio::test]
async fn unreachable_database_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_config(
        dir.path(),
        "c.yaml",
        &format!(
            "databases:\n  - name: x\n    type: self-hosted\n    uri: 127.0.0.1:{port}\n    admin_user: {{name: a}}\n    \
             auth: {{method: password, password_env: HOME}}\n    tls: {{mode: require}}\n"
        ),
    );
    let event = write(dir.path(), "e.json", r#"{"session_id":"s","user":"u","database":"x","db_name":"d"}"#);
    let output = autouser(&["session-end", "--config", &config, "--event", &event], None);
    assert_eq!(output.status.code(), Some(75), "{}", stderr(&output));
    assert!(stderr(&output).contains(&port.to_string()), "{}", stderr(&output));
}

#[test]
fn demo_walks_through_keep_and_drop() {
    // The demo starts its own cluster from AUTOUSER_PG_BIN.
    let output = autouser(&["demo"], None);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("[alice after her first session started] LOGIN, member of: auditor, reader, teleport-auto-user"),
        "{text}"
    );
    assert!(text.contains("[alice after her first session ended (the second is still open)] LOGIN"), "{text}");
    assert!(
        text.contains(
            "[alice after her last session ended: locked, roles stripped] NOLOGIN, member of: teleport-auto-user"
        ),
        "{text}"
    );
    assert!(text.contains("[bob after his session ended] no such database user"), "{text}");
    // The person's own login, as their client makes it: working during the session, refused after.
    assert!(
        text.contains("[alice logs in during her session] logged in as alice; SELECT count(*) FROM public.orders: 0"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"[alice logs in after her last session ended] refused: role "alice" is not permitted to log in"#
        ),
        "{text}"
    );
    assert!(text.contains("[bob logs in during his session] logged in as bob"), "{text}");
    assert!(text.contains(r#"[bob logs in after his session ended] refused: role "bob" does not exist"#), "{text}");
    assert!(text.contains("[UserConflict]"), "{text}");
    assert!(text.contains("[carol unchanged] LOGIN, member of: (none)"), "{text}");
}

#[test]
fn demo_with_rds_resolves_the_instance_through_the_emulator() {
    let output = autouser(&["demo", "--rds"], None);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("[dave during his session: rds_iam added because the database is RDS] LOGIN, member of: rds_iam, reader, teleport-auto-user"),
        "{text}"
    );
    assert!(text.contains("[dave after his session ended] NOLOGIN, member of: teleport-auto-user"), "{text}");
    assert!(!text.contains("demo-rds-admin-password"), "the demo printed the secret");
}

#[tokio::test]
async fn preflight_prints_the_fix_and_exits_1_until_it_is_applied() {
    let (_dir, config) = setup("cli_pf").await;
    let config = config.display().to_string();
    superuser_sql("ALTER ROLE cli_pf_admin NOCREATEROLE").await;

    let failed = autouser(&["preflight", "--config", &config, "--database", "main"], None);
    assert_eq!(failed.status.code(), Some(1), "stderr: {}", stderr(&failed));
    let text = String::from_utf8(failed.stdout.clone()).unwrap();
    assert!(text.contains("NEEDS ATTENTION"), "{text}");
    assert!(text.contains("FAIL createrole"), "{text}");
    assert!(text.contains("fix: ALTER ROLE \"cli_pf_admin\" CREATEROLE;"), "{text}");
    assert!(stderr(&failed).contains("preflight check(s) failed"), "{}", stderr(&failed));

    let json = autouser(&["preflight", "--config", &config, "--database", "main", "--json"], None);
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ready"], false);
    let createrole = report["findings"].as_array().unwrap().iter().find(|f| f["check"] == "createrole").unwrap();
    assert_eq!(createrole["status"], "fail");

    superuser_sql(createrole["fix"].as_str().unwrap()).await;
    let passed = autouser(&["preflight", "--config", &config, "--database", "main"], None);
    assert!(passed.status.success(), "{}{}", String::from_utf8_lossy(&passed.stdout), stderr(&passed));
    assert!(String::from_utf8_lossy(&passed.stdout).contains(": ready"));

    let unknown = autouser(&["preflight", "--config", &config, "--database", "nope"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("\"nope\" is not in the config"), "{}", stderr(&unknown));
}
