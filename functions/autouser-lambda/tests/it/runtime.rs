//! End to end through the real Lambda runtime API: `cargo lambda watch --only-lambda-apis`
//! emulates the Lambda control plane, the four function binaries of the workspace build poll
//! it as Lambda runs them (`AWS_LAMBDA_RUNTIME_API`), with AWS emulated by `moto_server`, and
//! each of the four is invoked with `cargo lambda invoke`; the test looks at their answers,
//! the database and the discovery function's reports on the bus.
//!
//! The binaries are those `cargo build --workspace --all-targets` put beside this test
//! (scripts/test builds so); the test refuses binaries older than the sources they are built
//! from instead of testing stale code. Every wait has a deadline: an invoke that gets no answer
//! fails with the functions' logs instead of hanging the run.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use scratch_aws::Moto;
use serde_json::{json, Value};

use crate::audit::{bus_into_queue, drain};
use crate::{can_login, cluster, config_yaml, eventbridge, session, superuser};

/// The functions this test runs, as the template names their binaries.
const FUNCTIONS: [&str; 4] = ["session-start", "session-end", "discovery", "reaper"];

/// The crates a function binary is built from: a source newer than the binary means a stale
/// build.
const FUNCTION_CRATES: [&str; 8] = [
    "session-start",
    "session-end",
    "discovery",
    "reaper",
    "autouser-lambda",
    "autouser-aws",
    "autouser-engine",
    "autouser-policy",
];

/// How long the emulator waits for a function's answer before failing the invoke.
const INVOKE_TIMEOUT_SECS: u64 = 60;

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

/// The newest modification time of the files under `dir`.
fn newest_file_under(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let modified = if entry.file_type().unwrap().is_dir() {
            newest_file_under(&entry.path())
        } else {
            entry.metadata().unwrap().modified().unwrap()
        };
        newest = newest.max(modified);
    }
    newest
}

/// The newest modification time of the sources a function binary is built from.
fn newest_function_source() -> SystemTime {
    let root = workspace_root();
    let lock = std::fs::metadata(root.join("Cargo.lock")).unwrap().modified().unwrap();
    FUNCTION_CRATES
        .iter()
        .map(|c| newest_file_under(&root.join("functions").join(c).join("src")))
        .fold(lock, SystemTime::max)
}

/// A function's binary in this test's target directory (`target/debug`), built after
/// `newest_source`, the newest of the sources it is built from.
fn function_binary(name: &str, newest_source: SystemTime) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    // target/debug/deps/it-<hash> → target/debug
    let profile_dir = test_binary.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join(name);
    let rebuild = "build the functions first: cargo build --workspace --all-targets";
    let built = std::fs::metadata(&path)
        .and_then(|metadata| metadata.modified())
        .unwrap_or_else(|e| panic!("{}: {e}; {rebuild}", path.display()));
    assert!(built >= newest_source, "{} is older than its sources: {rebuild}", path.display());
    path
}

/// `cargo lambda watch --only-lambda-apis` on a free loopback port, and the four function
/// binaries polling it; every process (with its process group) is killed on drop. Each function
/// reads `config_yaml`, but discovery reads `discovery_config_yaml` and has `discovery_vars`
/// too.
struct Watch {
    emulator: Child,
    functions: Vec<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

impl Watch {
    fn start(config_yaml: &str, discovery_config_yaml: &str, discovery_vars: &[(&str, String)]) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("autouser.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let discovery_config = dir.path().join("discovery.yaml");
        std::fs::write(&discovery_config, discovery_config_yaml).unwrap();
        let logs_dir = dir.path().to_path_buf();
        let log = move |name: &str| std::fs::File::create(logs_dir.join(format!("{name}.log"))).unwrap();
        let port = free_port();
        let mut command = Command::new(cargo_lambda());
        command
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string(), "--timeout", &INVOKE_TIMEOUT_SECS.to_string()])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log("emulator"))
            .stderr(log("emulator"))
            .process_group(0);
        let emulator = scratch_postgres::spawn_tied_to_this_process(command).expect("cargo lambda watch starts");
        let mut watch = Watch { emulator, functions: Vec::new(), port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "cargo lambda watch did not listen:\n{}", watch.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        let newest_source = newest_function_source();
        for name in FUNCTIONS {
            // The environment Lambda gives a function (credentials and region: the
            // emulator's), and the config; nothing of this process's own environment (AWS
            // profiles, proxies) reaches it.
            let mut command = Command::new(function_binary(name, newest_source));
            command
                .env_clear()
                .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt/{name}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .envs(Moto::global().env())
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AUTOUSER_CONFIG_FILE", &config)
                .stdin(Stdio::null())
                .stdout(log(name))
                .stderr(log(name))
                .process_group(0);
            if name == "discovery" {
                command.env("AUTOUSER_CONFIG_FILE", &discovery_config).envs(discovery_vars.iter().cloned());
            }
            let child = scratch_postgres::spawn_tied_to_this_process(command)
                .unwrap_or_else(|e| panic!("{name} starts: {e}\n{}", watch.logs()));
            watch.functions.push(child);
        }
        watch
    }

    /// What the emulator and each function printed.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for name in std::iter::once("emulator").chain(FUNCTIONS) {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            logs.push_str(&format!("--- {name}\n{text}"));
        }
        logs
    }

    /// `cargo lambda invoke function`: the response, or the error line cargo-lambda prints
    /// (`Error: <errorType>` and the message).
    fn invoke(&self, function: &str, payload: &Value) -> Result<Value, String> {
        let output_dir = tempfile::tempdir().unwrap();
        let stdout_path = output_dir.path().join("stdout");
        let stderr_path = output_dir.path().join("stderr");
        let mut child = Command::new(cargo_lambda())
            .args(["lambda", "invoke", function, "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.port.to_string(), "--output-format", "json"])
            .arg("--data-ascii")
            .arg(payload.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        // The emulator answers an invoke with an error after INVOKE_TIMEOUT_SECS; this bound
        // is for an emulator that answers nothing at all.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(INVOKE_TIMEOUT_SECS + 30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cargo lambda invoke {function} did not return; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&stdout_path).unwrap();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        if status.success() {
            Ok(serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{function} answered {stdout:?} ({e}); logs:\n{}", self.logs())))
        } else if started.elapsed() >= Duration::from_secs(INVOKE_TIMEOUT_SECS) {
            panic!(
                "{function} gave no answer within {INVOKE_TIMEOUT_SECS} s ({stdout}{stderr}); logs:\n{}",
                self.logs()
            )
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for child in self.functions.iter_mut().chain(std::iter::once(&mut self.emulator)) {
            // SAFETY: signals the process group this fixture created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// The region of the emulator where discovery finds its database, used by no other test.
const DISCOVERY_REGION: &str = "sa-east-1";

#[tokio::test(flavor = "multi_thread")]
async fn functions_run_under_the_lambda_runtime_api() {
    let config = config_yaml("lt").await;
    superuser().await.batch_execute("CREATE ROLE lt_mallory LOGIN").await.unwrap();
    // Discovery's world: an RDS instance tagged with the admin `lt_admin`, reporting the local
    // cluster's port, and its entry in discovery's config (reached through `hostaddr`, the
    // admin's client certificate); the cluster has RDS's `rds_iam`, which the admin can grant.
    superuser()
        .await
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT rds_iam TO lt_admin WITH ADMIN OPTION;",
        )
        .await
        .unwrap();
    let tags = [("teleport.dev/db-admin", "lt_admin")];
    Moto::global().create_postgres_instance(DISCOVERY_REGION, "lt-disc", false, Some(cluster().port()), &tags).await;
    let cert = cluster().client_cert("lt_admin").unwrap();
    let rds_entry = format!(
        "  - name: lt-rds\n    rds: {{instance_id: lt-disc, region: {DISCOVERY_REGION}, hostaddr: 127.0.0.1}}\n    \
         auth: {{method: cert, cert_file: {:?}, key_file: {:?}}}\n    tls: {{mode: verify-ca, ca_file: {:?}}}\n",
        cert.cert_path.display().to_string(),
        cert.key_path.display().to_string(),
        cluster().ca_cert_path().display().to_string(),
    );
    let discovery_config = config.replacen("\nroles:", &format!("\n{rds_entry}roles:"), 1);
    assert_ne!(discovery_config, config);
    let reports = bus_into_queue("lt-discovery-reports").await;
    let discovery_vars = [
        ("AUTOUSER_DISCOVERY_REGIONS", DISCOVERY_REGION.to_string()),
        ("AUTOUSER_AUDIT_EVENT_BUS", "lt-discovery-reports".to_string()),
        ("AUTOUSER_AUDIT_SOURCE", "lt-discovery-reports.audit".to_string()),
    ];
    let watch =
        tokio::task::spawn_blocking(move || Watch::start(&config, &discovery_config, &discovery_vars)).await.unwrap();
    let invoke = |function: &'static str, payload: Value| {
        let watch = &watch;
        tokio::task::block_in_place(move || watch.invoke(function, &payload))
    };

    // Discovery, as its schedule invokes it, finds the tagged instance, logs in to it as its
    // admin, checks it and creates the managed group, which nothing had made yet.
    assert_eq!(can_login("lt_grp").await, None);
    let schedule = json!({"version": "0", "id": "d1", "detail-type": "Scheduled Event", "source": "aws.events",
                          "account": "123456789012", "time": "2026-11-29T04:00:00Z", "region": "us-east-1",
                          "resources": ["arn:aws:events:us-east-1:123456789012:rule/discovery"], "detail": {}});
    let discovered = invoke("discovery", schedule).unwrap_or_else(|e| panic!("{e}\n{}", watch.logs()));
    assert_eq!(
        discovered,
        json!({"ready": 1, "needs_attention": 0, "skipped": 0, "not_managed": 0, "failed_regions": [],
               "events_rejected": 0}),
        "{}",
        watch.logs()
    );
    assert_eq!(can_login("lt_grp").await, Some(false), "discovery bootstrapped the managed group");
    let events = drain(&reports).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["detail-type"], "Database Ready", "{events:#?}");
    let report = &events[0]["detail"];
    assert_eq!(report["database"], "lt-rds", "{report}");
    assert_eq!(report["resource"], format!("RDS instance lt-disc in {DISCOVERY_REGION}"), "{report}");
    let bootstrapped = report["bootstrapped"].as_array().unwrap();
    assert_eq!(bootstrapped[0], json!("CREATE ROLE \"lt_grp\" NOLOGIN"), "{report}");
    crate::discovery::assert_bootstrapped_creators(&bootstrapped[1..], "lt_grp");
    assert_eq!(report["preflight"]["ready"], true, "{report}");

    // A direct invoke answers with the CLI's result.
    let started =
        invoke("session-start", session("lt", "s1", "kim")).unwrap_or_else(|e| panic!("{e}\n{}", watch.logs()));
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
    assert_eq!(admin_connections, 2, "{}", watch.logs());

    // The reaper, as its schedule invokes it, locks a managed user left able to log in with no
    // session (ended, then `ALTER ROLE … LOGIN`), and leaves kim (five open sessions) alone;
    // `down` cannot be reached.
    assert_eq!(invoke("session-start", session("lt", "i1", "idle")).unwrap()["status"], "active");
    assert_eq!(invoke("session-end", session("lt", "i1", "idle")).unwrap()["status"], "deactivated");
    superuser().await.batch_execute("ALTER ROLE lt_idle LOGIN").await.unwrap();
    let scheduled = json!({"version": "0", "id": "5e1f", "detail-type": "Scheduled Event", "source": "aws.events",
                           "account": "123456789012", "time": "2026-11-29T10:00:00Z", "region": "us-east-1",
                           "resources": ["arn:aws:events:us-east-1:123456789012:rule/reaper"], "detail": {}});
    let reaped = invoke("reaper", scheduled).unwrap_or_else(|e| panic!("{e}\n{}", watch.logs()));
    assert_eq!(reaped["databases"][0]["locked"], json!(["lt_idle"]), "{reaped}\n{}", watch.logs());
    assert_eq!((&reaped["closed"], &reaped["failed"]), (&json!(0), &json!(1)), "{reaped}");
    assert_eq!(can_login("lt_idle").await, Some(false));
    assert_eq!(can_login("lt_kim").await, Some(true));
}
