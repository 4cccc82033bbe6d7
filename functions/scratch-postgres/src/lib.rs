//! Throwaway PostgreSQL clusters with TLS and X.509 client-certificate authentication, for
//! tests and the demo.
//!
//! A [`Cluster`] is a fresh `initdb` in a temporary directory, listening on a free loopback
//! port, with its own CA. Every TCP login needs TLS and a client certificate whose CN is the
//! role name ([`Cluster::client_cert`] mints one), except members of [`PASSWORD_LOGIN_GROUP`],
//! who log in with a SCRAM password. PostgreSQL refuses to run as root, so when the caller is
//! root the server runs as the OS user `postgres`.
//!
//! Dropping a cluster stops its server and removes its directory. Test fixtures keep clusters
//! in `static`s, which are never dropped: for those, the server dies with the process
//! ([`spawn_tied_to_this_process`]) and an exit handler removes the directory (`leftovers`).

mod leftovers;
mod round_trips;

pub use leftovers::process_running;
pub use round_trips::{Cut, RoundTripCounter};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// Removes the cluster directories in the temp directory that processes killed by a signal
/// left behind, and returns them. The first cluster of every process does this itself.
pub fn remove_stale_directories() -> Vec<PathBuf> {
    leftovers::remove_stale(&std::env::temp_dir())
}

/// Members of this role log in with a password (SCRAM) instead of a certificate.
pub const PASSWORD_LOGIN_GROUP: &str = "password_login";
const SUPERUSER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no PostgreSQL found: set AUTOUSER_PG_BIN to a directory holding initdb and postgres, \
         or run scripts/install-deps"
    )]
    NotFound,
    #[error("{dir} has no {binary}: point AUTOUSER_PG_BIN at the bin directory of a PostgreSQL installation")]
    MissingBinary { dir: PathBuf, binary: &'static str },
    #[error(
        "running as root needs the OS user postgres, because PostgreSQL refuses to run as root: \
         apt-get install postgresql-common, or useradd postgres"
    )]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("PostgreSQL did not start: {detail}\n--- last lines of {log} ---\n{tail}")]
    Start { detail: String, log: PathBuf, tail: String },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A PostgreSQL installation: a directory with `initdb` and `postgres`.
#[derive(Debug, Clone)]
pub struct PgInstall {
    bin_dir: PathBuf,
    major: u32,
}

impl PgInstall {
    /// `AUTOUSER_PG_BIN` if set; otherwise the newest `/usr/lib/postgresql/<N>/bin`.
    /// Never a silent skip: no installation is an error.
    pub fn from_env() -> Result<PgInstall, Error> {
        if let Some(dir) = std::env::var_os("AUTOUSER_PG_BIN") {
            return PgInstall::at(dir);
        }
        let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| Error::NotFound)?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("postgres").exists().then_some((major, bin))
            })
            .collect();
        candidates.sort();
        let (_, bin) = candidates.pop().ok_or(Error::NotFound)?;
        PgInstall::at(bin)
    }

    pub fn at(bin_dir: impl Into<PathBuf>) -> Result<PgInstall, Error> {
        let bin_dir = bin_dir.into();
        for binary in ["initdb", "postgres"] {
            if !bin_dir.join(binary).is_file() {
                return Err(Error::MissingBinary { dir: bin_dir, binary });
            }
        }
        let output = Command::new(bin_dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(io(format!("running {}/postgres --version", bin_dir.display())))?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "postgres (PostgreSQL) 16.4"
        let major = text
            .split_whitespace()
            .last()
            .and_then(|version| version.split('.').next())
            .and_then(|major| major.parse().ok())
            .ok_or_else(|| Error::Command { what: "postgres --version".into(), detail: text.to_string() })?;
        Ok(PgInstall { bin_dir, major })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn major(&self) -> u32 {
        self.major
    }
}

/// A client certificate and key, as PEM text and as files in the cluster's directory.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub user: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running throwaway cluster; dropping it stops the server and removes its directory.
pub struct Cluster {
    install: PgInstall,
    dir: tempfile::TempDir,
    port: u16,
    ca_cert_pem: String,
    ca_cert_path: PathBuf,
    ca_issuer: std::sync::Arc<Issuer<'static, KeyPair>>,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    client_certs: Mutex<HashMap<String, ClientCert>>,
    durability: Durability,
}

/// Whether a cluster's commits wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`: only the process may crash in tests, never the machine. Commits still
    /// reach the OS before they are acknowledged, so a killed server keeps them.
    Test,
    /// PostgreSQL's defaults (`fsync=on`, `full_page_writes=on`), as on a production server:
    /// every commit waits for its WAL to reach the disk. For benchmarks.
    Production,
}

impl Cluster {
    /// `initdb`, certificates, and a server on a free loopback port (retrying on another
    /// port if the chosen one was taken meanwhile).
    pub fn start(install: &PgInstall) -> Result<Cluster, Error> {
        Cluster::start_with(install, Durability::Test)
    }

    /// [`Cluster::start`] with the given durability.
    pub fn start_with(install: &PgInstall, durability: Durability) -> Result<Cluster, Error> {
        let owner = server_owner()?;
        let dir = tempfile::Builder::new().prefix("scratch-postgres-").tempdir().map_err(io("creating a temp dir"))?;
        leftovers::track(dir.path()).map_err(io("naming the owner of the cluster's directory"))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "scratch-postgres CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_cert_pem = ca_cert.pem();
        let ca_issuer = std::sync::Arc::new(Issuer::new(ca_params, ca_key));

        let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
        server_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("an IP")));
        server_params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca_issuer)?;

        let ca_cert_path = dir.path().join("ca.crt");
        write_file(&ca_cert_path, &ca_cert_pem, 0o644, owner)?;
        write_file(&dir.path().join("server.crt"), &server_cert.pem(), 0o644, owner)?;
        write_file(&dir.path().join("server.key"), &server_key.serialize_pem(), 0o600, owner)?;
        chown(dir.path(), owner)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(io("chmod temp dir"))?;

        let data = dir.path().join("data");
        let mut initdb = Command::new(install.bin_dir.join("initdb"));
        initdb
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "-N", "-D"])
            .arg(&data)
            .stdin(Stdio::null());
        let output = as_owner(&mut initdb, owner).output().map_err(io("running initdb"))?;
        if !output.status.success() {
            return Err(Error::Command {
                what: "initdb".into(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let hba = format!(
            "local   all  all                          trust\n\
             local   replication  all                  trust\n\
             hostssl all  +{PASSWORD_LOGIN_GROUP}  127.0.0.1/32  scram-sha-256\n\
             hostssl all  all              127.0.0.1/32  cert\n"
        );
        write_file(&data.join("pg_hba.conf"), &hba, 0o600, owner)?;

        let mut cluster = Cluster {
            install: install.clone(),
            dir,
            port: 0,
            ca_cert_pem,
            ca_cert_path,
            ca_issuer,
            owner,
            child: None,
            client_certs: Mutex::new(HashMap::new()),
            durability,
        };
        cluster.launch_on_a_free_port()?;
        Ok(cluster)
    }

    /// A hot standby of this cluster: a server in recovery streaming from this one, on its own
    /// free port, with the same CA and server certificate (client certificates of either
    /// cluster work on both). Its base is `pg_basebackup -R` over the local socket where the
    /// installation has it (Debian's packages); the npm embedded builds have no client
    /// programs, so there it is a copy of this cluster's data directory taken while the server
    /// is stopped cleanly, with what `-R` writes (`standby.signal`, `primary_conninfo`).
    pub fn start_standby(&mut self) -> Result<Cluster, Error> {
        let basebackup = self.install.bin_dir.join("pg_basebackup");
        let owner = self.owner;
        let dir = tempfile::Builder::new().prefix("scratch-standby-").tempdir().map_err(io("creating a temp dir"))?;
        leftovers::track(dir.path()).map_err(io("naming the owner of the standby's directory"))?;
        let ca_cert_path = dir.path().join("ca.crt");
        write_file(&ca_cert_path, &self.ca_cert_pem, 0o644, owner)?;
        for (name, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
            let text =
                std::fs::read_to_string(self.dir.path().join(name)).map_err(io("reading the server certificate"))?;
            write_file(&dir.path().join(name), &text, mode, owner)?;
        }
        chown(dir.path(), owner)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(io("chmod temp dir"))?;
        if basebackup.is_file() {
            let mut command = Command::new(basebackup);
            command
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-X", "stream", "-R", "--no-sync", "-D"])
                .arg(dir.path().join("data"))
                .stdin(Stdio::null());
            run_as_owner(&mut command, owner, "pg_basebackup")?;
        } else {
            self.copy_data_while_stopped(&dir.path().join("data"))?;
        }
        let mut standby = Cluster {
            install: self.install.clone(),
            dir,
            port: 0,
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_cert_path,
            ca_issuer: self.ca_issuer.clone(),
            owner,
            child: None,
            client_certs: Mutex::new(HashMap::new()),
            durability: self.durability,
        };
        standby.launch_on_a_free_port()?;
        Ok(standby)
    }

    fn launch_on_a_free_port(&mut self) -> Result<(), Error> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(error @ Error::Start { .. }) if self.port_was_taken() => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn major(&self) -> u32 {
        self.install.major
    }

    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The bootstrap superuser's name.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A client certificate with CN `user`, signed by the cluster's CA. Cached per user.
    pub fn client_cert(&self, user: &str) -> Result<ClientCert, Error> {
        let mut certs = self.client_certs.lock().expect("cert cache lock");
        if let Some(cert) = certs.get(user) {
            return Ok(cert.clone());
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca_issuer)?;
        let index = certs.len();
        let cert_path = self.dir.path().join(format!("client-{index}.crt"));
        let key_path = self.dir.path().join(format!("client-{index}.key"));
        let cert = ClientCert {
            user: user.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
        };
        write_file(&cert.cert_path, &cert.cert_pem, 0o644, None)?;
        write_file(&cert.key_path, &cert.key_pem, 0o600, None)?;
        certs.insert(user.to_string(), cert.clone());
        Ok(cert)
    }

    /// Kills the server at once, postmaster and every backend (SIGKILL to each), as a crash
    /// would; keeps the data. Open connections break.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            leftovers::kill_server(child.id());
            let _ = child.wait();
            leftovers::server_stopped(self.dir.path());
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server cleanly (a fast shutdown, which ends with a checkpoint), copies its
    /// data directory to `to` as a standby's (`standby.signal`, and `primary_conninfo` naming
    /// this server's socket), and starts the server again on its port.
    fn copy_data_while_stopped(&mut self, to: &Path) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to the postmaster of ours.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            child.wait().map_err(io("waiting for the server to stop"))?;
            leftovers::server_stopped(self.dir.path());
        }
        let data = self.dir.path().join("data");
        let copied = run_as_owner(Command::new("cp").arg("-a").arg(&data).arg(to), self.owner, "cp -a");
        self.launch()?;
        copied?;
        write_file(&to.join("standby.signal"), "", 0o600, self.owner)?;
        let auto_conf = to.join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&auto_conf).unwrap_or_default();
        settings.push_str(&format!(
            "primary_conninfo = 'host=''{}'' port={} user={SUPERUSER}'\n",
            self.dir.path().display(),
            self.port
        ));
        write_file(&auto_conf, &settings, 0o600, self.owner)
    }

    /// Starts the server again on the same port after [`Cluster::kill`].
    pub fn restart(&mut self) -> Result<(), Error> {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // Orphaned backends may still hold shared memory for a moment.
                Err(_) if Instant::now() < deadline => {
                    let _ = std::fs::remove_file(&pid_file);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn launch(&mut self) -> Result<(), Error> {
        let data = self.dir.path().join("data");
        let log_path = self.log_path();
        let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io("opening the log"))?;
        chown(&log_path, self.owner)?;
        let dir = self.dir.path();
        let settings = [
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={}", self.port),
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            format!("ssl_key_file={}", dir.join("server.key").display()),
            format!("ssl_ca_file={}", self.ca_cert_path.display()),
            format!("unix_socket_directories={}", dir.display()),
            match self.durability {
                Durability::Test => "fsync=off",
                Durability::Production => "fsync=on",
            }
            .to_string(),
            match self.durability {
                Durability::Test => "full_page_writes=off",
                Durability::Production => "full_page_writes=on",
            }
            .to_string(),
            "max_connections=300".to_string(),
            "shared_buffers=32MB".to_string(),
            "password_encryption=scram-sha-256".to_string(),
            "log_min_messages=warning".to_string(),
            "log_line_prefix=%m [%p] %q%u@%d ".to_string(),
        ];
        let mut command = Command::new(self.install.bin_dir.join("postgres"));
        command.arg("-D").arg(&data);
        for setting in &settings {
            command.arg("-c").arg(setting);
        }
        command.stdin(Stdio::null()).stdout(log.try_clone().map_err(io("log"))?).stderr(log);
        // Its own process group, so that `kill` takes the backends down with the postmaster.
        command.process_group(0);
        as_owner(&mut command, self.owner);
        let mut child = spawn_tied_to_this_process(command).map_err(io("spawning postgres"))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(io("waiting for postgres"))? {
                return Err(self.start_error(format!("postgres exited with {status}"), log_start));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                // "ready to accept connections", or "… read-only connections" for a standby.
                && self.log_since(log_start).contains("ready to accept")
            {
                leftovers::server_started(self.dir.path(), child.id());
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.start_error("timed out waiting for the server".into(), log_start));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    fn start_error(&self, detail: String, log_start: u64) -> Error {
        let log = self.log_since(log_start);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Error::Start { detail, log: self.log_path(), tail }
    }

    fn port_was_taken(&self) -> bool {
        let log = std::fs::File::open(self.log_path()).map(BufReader::new);
        log.map(|r| r.lines().map_while(Result::ok).any(|l| l.contains("could not bind") || l.contains("in use")))
            .unwrap_or(false)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stopped below, and the directory removed with `dir`.
        leftovers::untrack(self.dir.path());
        if let Some(mut child) = self.child.take() {
            // Fast shutdown: roll back open transactions, close connections, exit.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `command` so that it is killed when this process exits, even if nothing drops its
/// handle (test fixtures live in `static`s).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and test threads
/// exit early, so every child is spawned from one long-lived thread that exists only for that.
pub fn spawn_tied_to_this_process(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    // SAFETY: prctl is async-signal-safe and touches only the forked child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let keeper = KEEPER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("scratch-postgres-keeper".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the keeper thread starts");
        Mutex::new(sender)
    });
    let (reply, response) = mpsc::channel();
    keeper.lock().expect("keeper lock").send((command, reply)).expect("the keeper thread is alive");
    response.recv().expect("the keeper thread answers")
}

/// The uid/gid the server runs as: `postgres` when we are root, ourselves otherwise.
fn server_owner() -> Result<Option<(u32, u32)>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy out at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(Error::NoPostgresUser);
    }
    // SAFETY: non-null, points to a valid passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// Runs `command` as the server's owner; a failure carries what it printed.
fn run_as_owner(command: &mut Command, owner: Option<(u32, u32)>, what: &str) -> Result<(), Error> {
    let output = as_owner(command.stdin(Stdio::null()), owner).output().map_err(io("running a command"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        what: what.into(),
        detail: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    })
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
        // Root's HOME is not readable by the server's user.
        command.env("HOME", "/tmp").current_dir("/tmp");
    }
    command
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    chown(path, owner)
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener.local_addr().map_err(io("finding a free port"))?.port())
}
