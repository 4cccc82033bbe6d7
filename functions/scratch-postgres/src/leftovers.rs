//! The directories (and servers) of the clusters of this process that were not dropped,
//! removed when the process exits. A cluster's directory holds its data, WAL included: up to
//! 1 GB after the load tests, left in the temp directory by every test binary that keeps its
//! cluster in a `static` (a `static` is never dropped).
//!
//! An `atexit` handler does it: the Rust runtime calls `exit` when `main` returns and in
//! `std::process::exit`, which a test harness uses for its status. The handler kills each
//! tracked server's process group, reaps the server, then removes the directory. Only servers
//! not yet waited for are tracked, so their pids cannot have been reused.
//!
//! A process killed by a signal runs no exit handler. Its servers die with it
//! (`PR_SET_PDEATHSIG`), but its directories stay; each directory therefore names its owner
//! (an `owner` file), and the first cluster of every later process removes the directories
//! whose owner is gone ([`remove_stale`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

struct Tracked {
    dir: PathBuf,
    /// The server's pid, which is also its process group.
    server: Option<u32>,
}

static TRACKED: Mutex<Vec<Tracked>> = Mutex::new(Vec::new());

fn tracked() -> MutexGuard<'static, Vec<Tracked>> {
    TRACKED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The file in a cluster's directory that names the process owning it.
const OWNER_FILE: &str = "owner";
/// The prefixes of the cluster directories in the temp directory.
const DIR_PREFIXES: [&str; 2] = ["scratch-postgres-", "scratch-standby-"];

/// From now on, `dir` is removed at exit unless [`untrack`] is called first. The first call
/// of a process also removes the directories that killed processes left ([`remove_stale`]).
pub fn track(dir: &Path) -> std::io::Result<()> {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: registers a function that takes no arguments and does not unwind.
        unsafe { libc::atexit(remove_at_exit) };
        let root = dir.parent().unwrap_or(Path::new("/"));
        remove_stale(root);
    });
    let owner = process_identity(std::process::id())
        .ok_or_else(|| std::io::Error::other("cannot read /proc/self/stat to name the cluster's owner"))?;
    std::fs::write(dir.join(OWNER_FILE), owner)?;
    tracked().push(Tracked { dir: dir.to_path_buf(), server: None });
    Ok(())
}

/// Removes the cluster directories in `root` whose owner has exited without removing them,
/// and returns them. A directory with no owner file (one being created, or one from an older
/// harness) or whose server still runs is left alone.
pub fn remove_stale(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !DIR_PREFIXES.iter().any(|prefix| name.to_string_lossy().starts_with(prefix)) {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else { continue };
        let Some(pid) = owner.split_whitespace().next().and_then(|pid| pid.parse().ok()) else { continue };
        if process_identity(pid).as_deref() == Some(owner.trim()) || server_running(&dir) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// The fields of `/proc/<pid>/stat` from field 3 (the state) on; `None` when there is no such
/// process. The command name (field 2) may hold spaces and parentheses: they come after it.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().map(str::to_string).collect())
}

/// A running process as `pid start-time`: its start time (clock ticks since boot) tells it
/// apart from a later process given the same pid. `None` when there is no such process, or
/// only its zombie.
fn process_identity(pid: u32) -> Option<String> {
    let fields = stat_fields(pid)?;
    if matches!(fields.first()?.as_str(), "Z" | "X") {
        return None;
    }
    let start_time = fields.get(19)?; // field 22
    Some(format!("{pid} {start_time}"))
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_running(pid: u32) -> bool {
    process_identity(pid).is_some()
}

/// Whether the server of the cluster in `dir` runs (its `postmaster.pid` names a live process).
fn server_running(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("data").join("postmaster.pid")) else { return false };
    text.lines().next().and_then(|line| line.trim().parse().ok()).is_some_and(process_running)
}

pub fn server_started(dir: &Path, pid: u32) {
    if let Some(entry) = tracked().iter_mut().find(|t| t.dir == dir) {
        entry.server = Some(pid);
    }
}

pub fn server_stopped(dir: &Path) {
    if let Some(entry) = tracked().iter_mut().find(|t| t.dir == dir) {
        entry.server = None;
    }
}

/// The cluster is being dropped, which stops its server and removes `dir` itself.
pub fn untrack(dir: &Path) {
    tracked().retain(|t| t.dir != dir);
}

extern "C" fn remove_at_exit() {
    for entry in tracked().drain(..) {
        if let Some(pid) = entry.server {
            kill_server(pid);
            // SAFETY: reaps the server, a child of this process that nothing has waited for
            // (so the pid is still ours).
            unsafe {
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&entry.dir);
    }
}

/// Kills the server `pid` (the postmaster, a child of this process not yet waited for) and
/// every process it started, as a crash would: at once, so that no backend runs on after
/// another died. PostgreSQL puts each backend in a session of its own (`setsid`), so
/// signalling the postmaster's process group reaches the postmaster alone, and its backends
/// would run until they noticed its death: long enough to commit. The postmaster is stopped
/// first, so that it starts no process while its children are listed and killed.
pub fn kill_server(pid: u32) {
    let postmaster = pid as libc::pid_t;
    // SAFETY: signals to a process of ours (the postmaster) and to its children.
    unsafe {
        libc::kill(postmaster, libc::SIGSTOP);
        for child in children_of(pid) {
            libc::kill(child as libc::pid_t, libc::SIGKILL);
        }
        libc::kill(-postmaster, libc::SIGKILL);
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| parent_of(*candidate) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok() // field 4
}
