//! The directories (and servers) of the clusters of this process that were not dropped,
//! removed when the process exits. A cluster's directory holds its data, WAL included: up to
//! 1 GB after the load tests, left in the temp directory by every test binary that keeps its
//! cluster in a `static` (a `static` is never dropped).
//!
//! An `atexit` handler does it: the Rust runtime calls `exit` when `main` returns and in
//! `std::process::exit`, which a test harness uses for its status. The handler kills each
//! tracked server's process group, reaps the server, then removes the directory. Only servers
//! not yet waited for are tracked, so their pids cannot have been reused.

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

/// From now on, `dir` is removed at exit unless [`untrack`] is called first.
pub fn track(dir: &Path) {
    static HANDLER: Once = Once::new();
    // SAFETY: registers a function that takes no arguments and does not unwind.
    HANDLER.call_once(|| unsafe {
        libc::atexit(remove_at_exit);
    });
    tracked().push(Tracked { dir: dir.to_path_buf(), server: None });
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
            // SAFETY: signals the server's own process group, then reaps the server, a child
            // of this process that nothing has waited for (so the pid is still ours).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&entry.dir);
    }
}
