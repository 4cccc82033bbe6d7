//! The Lambda footprint of the release binaries: zip sizes, init time (process start to the
//! first `GET /runtime/invocation/next`), and peak RSS over warm invocations. The binaries run
//! against a local implementation of the Lambda runtime API, so no network is involved.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the runtime API server saw.
#[derive(Default)]
struct Shared {
    /// Events not handed out yet.
    pending: VecDeque<String>,
    /// When the function first asked for an event.
    first_next: Option<Instant>,
    responses: usize,
    errors: Vec<String>,
    /// The function asked for an event after the last one was answered.
    idle: bool,
}

/// A minimal Lambda runtime API (`/2018-06-01/runtime/...`) over HTTP/1.1 with keep-alive.
pub struct RuntimeApi {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
}

impl RuntimeApi {
    pub async fn start(events: Vec<String>) -> std::io::Result<RuntimeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared { pending: events.into(), ..Shared::default() }));
        let changed = Arc::new(Notify::new());
        let (state, notify) = (shared.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, state.clone(), notify.clone()));
            }
        });
        Ok(RuntimeApi { port, shared, changed })
    }

    /// Waits until the function has answered every event and asked for the next one.
    async fn wait_idle(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let shared = self.shared.lock().expect("runtime API state");
                if shared.idle {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let shared = self.shared.lock().expect("runtime API state");
                return Err(format!(
                    "the function did not finish within {timeout:?}: {} answered, {} errors {:?}",
                    shared.responses,
                    shared.errors.len(),
                    shared.errors.first()
                ));
            }
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

async fn serve(stream: TcpStream, shared: Arc<Mutex<Shared>>, changed: Arc<Notify>) {
    let mut stream = BufReader::new(stream);
    loop {
        let Some((method, path, body)) = read_request(&mut stream).await else { return };
        let reply: Option<Reply> = if method == "GET" && path.ends_with("/invocation/next") {
            let event = {
                let mut shared = shared.lock().expect("runtime API state");
                shared.first_next.get_or_insert_with(Instant::now);
                let event = shared.pending.pop_front();
                if event.is_none() {
                    shared.idle = true;
                }
                event
            };
            changed.notify_waiters();
            event.map(|event| {
                let id = request_id();
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() + 30_000)
                    .unwrap_or(0);
                let headers = vec![
                    ("Lambda-Runtime-Aws-Request-Id", id),
                    ("Lambda-Runtime-Deadline-Ms", deadline.to_string()),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:bench".to_string(),
                    ),
                    ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000".to_string()),
                    ("Content-Type", "application/json".to_string()),
                ];
                Reply { status: 200, headers, body: event }
            })
        } else {
            {
                let mut shared = shared.lock().expect("runtime API state");
                if path.ends_with("/response") {
                    shared.responses += 1;
                } else {
                    shared.errors.push(format!("{path}: {body}"));
                }
            }
            changed.notify_waiters();
            Some(Reply { status: 202, headers: Vec::new(), body: "{}".to_string() })
        };
        // No event left: keep the function waiting in `next`, as Lambda does between invokes.
        let Some(Reply { status, headers, body }) = reply else { return std::future::pending().await };
        let mut head = format!("HTTP/1.1 {status} OK\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = stream.get_mut();
        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One HTTP/1.1 request: method, path, body (`content-length` or chunked).
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, String, String)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            stream.read_line(&mut size).await.ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        stream.read_exact(&mut body).await.ok()?;
    }
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
}

/// A function binary, run as Lambda would run it.
pub struct Function {
    pub name: &'static str,
    pub bootstrap: PathBuf,
}

/// The environment Lambda gives a function, plus ours.
fn spawn(function: &Function, api_port: u16, config_yaml: &str) -> std::io::Result<Child> {
    let mut command = Command::new(&function.bootstrap);
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{api_port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", function.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", function.name))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AUTOUSER_CONFIG", config_yaml)
        .env("AUTOUSER_DISCOVERY_REGIONS", "us-east-1")
        .env("LAMBDA_TASK_ROOT", function.bootstrap.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command.spawn()
}

/// Process start to the first request for an event, `runs` times.
pub async fn init_times(function: &Function, config_yaml: &str, runs: usize) -> Result<crate::stats::Samples, String> {
    let mut samples = crate::stats::Samples::default();
    for _ in 0..runs {
        let api = RuntimeApi::start(Vec::new()).await.map_err(|e| e.to_string())?;
        let began = Instant::now();
        let mut child = spawn(function, api.port, config_yaml).map_err(|e| format!("{}: {e}", function.name))?;
        let ready = api.wait_idle(Duration::from_secs(10)).await;
        let first_next = api.shared.lock().expect("runtime API state").first_next;
        let _ = child.kill();
        let _ = child.wait();
        ready.map_err(|e| format!("{}: {e}", function.name))?;
        samples.push(first_next.expect("idle implies a next request") - began);
    }
    Ok(samples)
}

/// Peak RSS of one container after answering `events` (every answer must be a success).
pub struct Footprint {
    pub peak_rss_kib: u64,
    /// CPU time (user + system) of the whole run, init included.
    pub cpu: Duration,
    pub invocations: usize,
    pub elapsed: Duration,
}

pub async fn warm_footprint(function: &Function, config_yaml: &str, events: Vec<String>) -> Result<Footprint, String> {
    let invocations = events.len();
    let api = RuntimeApi::start(events).await.map_err(|e| e.to_string())?;
    let began = Instant::now();
    let mut child = spawn(function, api.port, config_yaml).map_err(|e| format!("{}: {e}", function.name))?;
    let finished = api.wait_idle(Duration::from_secs(600)).await;
    let elapsed = began.elapsed();
    let peak = peak_rss_kib(child.id());
    let cpu = cpu_time(child.id());
    let _ = child.kill();
    let _ = child.wait();
    finished?;
    let shared = api.shared.lock().expect("runtime API state");
    if !shared.errors.is_empty() || shared.responses != invocations {
        return Err(format!(
            "{}: {} of {invocations} succeeded; first error: {:?}",
            function.name,
            shared.responses,
            shared.errors.first()
        ));
    }
    Ok(Footprint { peak_rss_kib: peak?, cpu: cpu?, invocations, elapsed })
}

/// User plus system CPU time of a process (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(format!("unexpected /proc/{pid}/stat: {stat}"));
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros((user + system) * 1_000_000 / per_second))
}

/// `VmHWM` of a process: its peak resident set size.
fn peak_rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/<pid>/status".to_string())
}
