//! A `moto_server` (local AWS emulator) per test process, on a free loopback port.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

pub struct Moto {
    pub url: String,
    _child: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// `AUTOUSER_MOTO_SERVER`, or the one scripts/install-deps puts in `.deps/venv`. Missing is a
/// failure, never a skip.
fn moto_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("AUTOUSER_MOTO_SERVER") {
        return path.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/venv/bin/moto_server")
}

pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| {
        let path = moto_server_path();
        assert!(path.exists(), "{} is missing: run scripts/install-deps", path.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { url: format!("http://127.0.0.1:{port}"), _child: Mutex::new(child) }
    })
}

/// SDK configuration pointing at the emulator, with fixed test credentials.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_at(None).await
}

/// The same, with the SDK's clock pinned.
pub async fn sdk_config_at(time: Option<std::time::SystemTime>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&moto().url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", Some("session-token".into()), None, "test"));
    if let Some(time) = time {
        loader = loader.time_source(aws_smithy_async::time::StaticTimeSource::new(time));
    }
    loader.load().await
}
