//! The harness itself: TLS, certificate authentication, parallel clusters, crash and restart.

use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::tokio_postgres::Client;
use autouser_policy::config::TlsMode;
use scratch_postgres::{process_running, Cluster, PgInstall, PASSWORD_LOGIN_GROUP};

fn install() -> PgInstall {
    PgInstall::from_env().expect("a PostgreSQL installation (see scripts/install-deps)")
}

async fn connect(
    cluster: &Cluster,
    user: &str,
    credentials: AdminCredentials,
) -> Result<Client, autouser_engine::Error> {
    let tls = TlsSettings { mode: TlsMode::VerifyFull, ca_pem: Some(cluster.ca_cert_pem().to_string()) };
    let params = ConnectParams {
        host: cluster.host(),
        port: cluster.port(),
        hostaddr: None,
        dbname: "postgres",
        user,
        tls: &tls,
        credentials: &credentials,
    };
    pg::connect(&params).await
}

fn cert_of(cluster: &Cluster, user: &str) -> AdminCredentials {
    let cert = cluster.client_cert(user).unwrap();
    AdminCredentials::ClientCert { cert_pem: cert.cert_pem, key_pem: cert.key_pem, key_password: None }
}

#[tokio::test]
async fn superuser_logs_in_over_tls_with_its_certificate() {
    let install = install();
    let cluster = Cluster::start(&install).unwrap();
    let client = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) / 10000, install.major() as i32);
    assert!(row.get::<_, bool>(1), "the connection uses TLS");
    assert_eq!(cluster.major(), install.major());
}

#[tokio::test]
async fn certificate_of_another_name_or_a_password_is_refused() {
    let cluster = Cluster::start(&install()).unwrap();
    let err = connect(&cluster, "postgres", cert_of(&cluster, "mallory")).await.unwrap_err();
    assert_eq!(err.kind(), "AdminAuthFailed", "{err}");
    let err = connect(&cluster, "postgres", AdminCredentials::Password("x".into())).await.unwrap_err();
    assert_eq!(err.kind(), "AdminAuthFailed", "{err}");
}

#[tokio::test]
async fn two_clusters_run_side_by_side() {
    let (a, b) = (Cluster::start(&install()).unwrap(), Cluster::start(&install()).unwrap());
    assert_ne!(a.port(), b.port());
    let client_a = connect(&a, "postgres", cert_of(&a, "postgres")).await.unwrap();
    client_a.batch_execute("CREATE ROLE only_in_a").await.unwrap();
    let client_b = connect(&b, "postgres", cert_of(&b, "postgres")).await.unwrap();
    let rows = client_b.query("SELECT 1 FROM pg_roles WHERE rolname = 'only_in_a'", &[]).await.unwrap();
    assert!(rows.is_empty());
}

/// `kill` is a crash of the whole server, not of the postmaster alone. PostgreSQL puts each
/// backend in a session of its own, and a backend notices its postmaster's death only when it
/// next waits: one busy in a loop would run on (and could commit) after the "crash".
#[tokio::test]
async fn kill_takes_down_a_busy_backend_with_the_postmaster() {
    let mut cluster = Cluster::start(&install()).unwrap();
    let busy = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    let pid: i32 = busy.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let looping = tokio::spawn(async move { busy.batch_execute("DO $$ BEGIN LOOP END LOOP; END $$").await });
    let observer = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    let query = "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE 'DO%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while observer.query(query, &[&pid]).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the loop never started");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    cluster.kill().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut outlived = false;
    while process_running(pid as u32) {
        if std::time::Instant::now() > deadline {
            outlived = true;
            // SAFETY: ends the orphaned backend that this failure leaves spinning.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!outlived, "backend {pid} was still running 10 s after the server was killed");
    assert!(looping.await.unwrap().is_err(), "the loop's connection broke");
}

#[tokio::test]
async fn killed_cluster_restarts_with_its_data() {
    let mut cluster = Cluster::start(&install()).unwrap();
    let client = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    client.batch_execute("CREATE ROLE survivor").await.unwrap();
    cluster.kill().unwrap();
    assert!(client.query("SELECT 1", &[]).await.is_err(), "the old connection is gone");
    cluster.restart().unwrap();
    let client = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    let rows = client.query("SELECT 1 FROM pg_roles WHERE rolname = 'survivor'", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn password_login_group_members_use_scram() {
    let cluster = Cluster::start(&install()).unwrap();
    let client = connect(&cluster, "postgres", cert_of(&cluster, "postgres")).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE ROLE {PASSWORD_LOGIN_GROUP}; CREATE ROLE pw LOGIN PASSWORD 'secret' IN ROLE {PASSWORD_LOGIN_GROUP}"
        ))
        .await
        .unwrap();
    let pw = connect(&cluster, "pw", AdminCredentials::Password("secret".into())).await.unwrap();
    let who: String = pw.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "pw");
    let err = connect(&cluster, "pw", AdminCredentials::Password("wrong".into())).await.unwrap_err();
    assert_eq!(err.kind(), "AdminAuthFailed", "{err}");
}

#[test]
fn missing_binaries_are_an_error_not_a_skip() {
    let err = PgInstall::at("/nonexistent").unwrap_err();
    assert!(err.to_string().contains("AUTOUSER_PG_BIN"), "{err}");
}

/// A cluster kept in a `static` (never dropped, as the test fixtures keep theirs) leaves
/// neither its server nor its directory behind when the process exits. The test runs itself
/// again as that process: with `SCRATCH_POSTGRES_EXIT_PROBE` set, it starts such a cluster,
/// prints its directory and server pid, and exits.
#[test]
fn a_cluster_never_dropped_is_removed_when_the_process_exits() {
    static KEPT: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    const PROBE: &str = "SCRATCH_POSTGRES_EXIT_PROBE";
    if std::env::var_os(PROBE).is_some() {
        print_probe(KEPT.get_or_init(|| Cluster::start(&install()).unwrap()));
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_cluster_never_dropped_is_removed_when_the_process_exits", "--nocapture"])
        .env(PROBE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let (dir, pid) = probe_fields(&stdout).unwrap_or_else(|| panic!("no probe fields in:\n{stdout}"));
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!process_running(pid), "the server (pid {pid}) outlived the process");
}

/// A process killed by a signal runs no exit handler: its server dies with it, its directory
/// stays, and the next sweep (which the first cluster of every process runs) removes it. The
/// test runs itself again as that process (`SCRATCH_POSTGRES_KILL_PROBE`), which starts a
/// cluster, prints it and waits to be killed.
#[test]
fn a_directory_left_by_a_killed_process_is_removed_by_the_next_sweep() {
    use std::io::BufRead;
    const PROBE: &str = "SCRATCH_POSTGRES_KILL_PROBE";
    if std::env::var_os(PROBE).is_some() {
        let cluster = Cluster::start(&install()).unwrap();
        print_probe(&cluster);
        std::thread::sleep(std::time::Duration::from_secs(120));
        panic!("the probe was not killed");
    }
    let mut probe = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_directory_left_by_a_killed_process_is_removed_by_the_next_sweep", "--nocapture"])
        .env(PROBE, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut lines = std::io::BufReader::new(probe.stdout.take().unwrap()).lines();
    let (dir, pid) = loop {
        match lines.next() {
            Some(line) => stdout.push_str(&(line.unwrap() + "\n")),
            None => panic!("the probe ended before printing its cluster:\n{stdout}"),
        }
        if let Some(fields) = probe_fields(&stdout) {
            break fields;
        }
    };
    probe.kill().unwrap();
    probe.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while process_running(pid) {
        assert!(std::time::Instant::now() < deadline, "the server (pid {pid}) outlived its killed owner");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(dir.exists(), "the killed probe removed {} after all: this test shows nothing", dir.display());

    let removed = scratch_postgres::remove_stale_directories();
    assert!(removed.contains(&dir), "{} was not swept: {removed:?}", dir.display());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    // The sweep leaves the directories of live processes alone: this one's, for instance.
    let live = Cluster::start(&install()).unwrap();
    assert!(!scratch_postgres::remove_stale_directories().contains(&live.dir().to_path_buf()));
    assert!(live.dir().exists());
}

/// Prints what the probe tests read: the cluster's directory and its server's pid.
fn print_probe(cluster: &Cluster) {
    let pid = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid")).unwrap();
    println!("probe-dir={}", cluster.dir().display());
    println!("probe-pid={}", pid.lines().next().unwrap());
}

fn probe_fields(stdout: &str) -> Option<(std::path::PathBuf, u32)> {
    let field = |name: &str| stdout.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
    Some((field("probe-dir=")?.into(), field("probe-pid=")?.parse().ok()?))
}
