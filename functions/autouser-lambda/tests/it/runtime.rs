//! End to end through the real Lambda runtime API: the function binaries run under
//! `cargo lambda watch` (which builds them and emulates the Lambda control plane) and are
//! invoked with `cargo lambda invoke`; the test looks at the database.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{can_login, config_yaml, eventbridge, session, superuser};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `cargo-lambda`, from `CARGO_LAMBDA` or the project's virtualenv; never a skip.
fn cargo_lambda() -> PathBuf {
    let path = std::env::var_os("CARGO_LAMBDA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".deps/venv/bin/cargo-lambda"));
    assert!(
        path.is_file(),
        "cargo-lambda is not at {}: run scripts/install-deps (or set CARGO_LAMBDA)",
        path.display()
    );
    path
}

/// `cargo lambda watch` on a free loopback port, with its whole process group (the functions
/// it starts) killed on drop.
struct Watch {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Watch {
    fn start(config_yaml: &str) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("autouser.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let log = dir.path().join("watch.log");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let mut command = Command::new(cargo_lambda());
        command
            .args(["lambda", "watch", "--ignore-changes", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()])
            .arg("--env-var")
            .arg(format!("AUTOUSER_CONFIG_FILE={}", config.display()))
            .args(["--env-var", "AWS_REGION=us-east-1", "--env-var", "AWS_EC2_METADATA_DISABLED=true"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0);
        let child = scratch_postgres::spawn_tied_to_this_process(command).expect("cargo lambda watch starts");
        let watch = Watch { child, port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "cargo lambda watch did not listen:\n{}", watch.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        watch
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `cargo lambda invoke function`: the response, or the error line cargo-lambda prints
    /// (`Error: <errorType>` and the message).
    fn invoke(&self, function: &str, payload: &Value) -> Result<Value, String> {
        let output = Command::new(cargo_lambda())
            .args(["lambda", "invoke", function, "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.port.to_string(), "--output-format", "json"])
            .arg("--data-ascii")
            .arg(payload.to_string())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            Ok(serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{function} answered {stdout:?} ({e}); log:\n{}", self.log())))
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: signals the process group this fixture created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_run_under_the_lambda_runtime_api() {
    let config = config_yaml("lt").await;
    superuser().await.batch_execute("CREATE ROLE lt_mallory LOGIN").await.unwrap();
    let watch = tokio::task::spawn_blocking(move || Watch::start(&config)).await.unwrap();
    let invoke = |function: &'static str, payload: Value| {
        let watch = &watch;
        tokio::task::block_in_place(move || watch.invoke(function, &payload))
    };

    // A direct invoke answers with the CLI's result.
    let started =
        invoke("session-start", session("lt", "s1", "kim")).unwrap_or_else(|e| panic!("{e}\n{}", watch.log()));
    assert_eq!(started["status"], "active", "{started}");
    assert_eq!(started["db_user"], "lt_kim");
    assert_eq!(can_login("lt_kim").await, Some(true));

    // A permanent refusal of a direct invoke is a typed error.
    let refused = invoke("session-start", session("lt", "s2", "mallory")).unwrap_err();
    assert!(refused.contains("UserConflict"), "{refused}");
    assert_eq!(can_login("lt_mallory").await, Some(true), "a user that is not ours is untouched");

    // An EventBridge event ends the session.
    let ended = invoke("session-end", eventbridge("Database Session Ended", session("lt", "s1", "kim"))).unwrap();
    assert_eq!(ended["status"], "deactivated", "{ended}");
    assert_eq!(can_login("lt_kim").await, Some(false));

    // Warm invocations of one container share its admin connection.
    for i in 0..5 {
        let event = json!({"session_id": format!("w{i}"), "user": "lt_kim", "roles": ["devs"],
                           "database": "main", "db_name": "postgres"});
        assert_eq!(invoke("session-start", event).unwrap()["status"], "active");
    }
    let admin_connections: i64 = superuser()
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'lt_admin'", &[])
        .await
        .unwrap()
        .get(0);
    // One per function container: session-start's and session-end's.
    assert_eq!(admin_connections, 2, "{}", watch.log());

    // The reaper, as its schedule invokes it, locks a managed user left able to log in with no
    // session (ended, then `ALTER ROLE … LOGIN`), and leaves kim (five open sessions) alone;
    // `down` cannot be reached.
    assert_eq!(invoke("session-start", session("lt", "i1", "idle")).unwrap()["status"], "active");
    assert_eq!(invoke("session-end", session("lt", "i1", "idle")).unwrap()["status"], "deactivated");
    superuser().await.batch_execute("ALTER ROLE lt_idle LOGIN").await.unwrap();
    let scheduled = json!({"version": "0", "id": "5e1f", "detail-type": "Scheduled Event", "source": "aws.events",
                           "account": "123456789012", "time": "2026-11-29T10:00:00Z", "region": "us-east-1",
                           "resources": ["arn:aws:events:us-east-1:123456789012:rule/reaper"], "detail": {}});
    let reaped = invoke("reaper", scheduled).unwrap_or_else(|e| panic!("{e}\n{}", watch.log()));
    assert_eq!(reaped["databases"][0]["locked"], json!(["lt_idle"]), "{reaped}\n{}", watch.log());
    assert_eq!((&reaped["closed"], &reaped["failed"]), (&json!(0), &json!(1)), "{reaped}");
    assert_eq!(can_login("lt_idle").await, Some(false));
    assert_eq!(can_login("lt_kim").await, Some(true));
}
