//! A local AWS emulator (`moto_server`) for tests and demos, one per process, on a free
//! loopback port, killed when the process exits. Never a silent skip: a missing `moto_server` is a panic that says how to
//! install it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// The region every emulated resource lives in.
pub const REGION: &str = "us-east-1";
/// The emulator accepts any credentials; these are the ones tests use.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const SESSION_TOKEN: &str = "session-token";

pub struct Moto {
    url: String,
    child: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

impl Moto {
    /// The process's emulator, started on first use.
    pub fn global() -> &'static Moto {
        MOTO.get_or_init(Moto::start)
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SDK configuration pointing at the emulator with the test credentials; `time` pins the
    /// SDK's clock.
    pub async fn sdk_config(&self, time: Option<SystemTime>) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                Some(SESSION_TOKEN.into()),
                None,
                "scratch-aws",
            ));
        if let Some(time) = time {
            loader = loader.time_source(aws_smithy_async::time::StaticTimeSource::new(time));
        }
        loader.load().await
    }

    /// An RDS PostgreSQL instance `id` in `region`, with IAM authentication on or off, the
    /// `port` RDS reports (the local cluster's, for tests that log in through `hostaddr`) and
    /// `tags`. A create that the SDK retried after the emulator had made the instance fails
    /// on its second attempt (the automated snapshot exists): that counts as made.
    pub async fn create_postgres_instance(
        &self,
        region: &str,
        id: &str,
        iam: bool,
        port: Option<u16>,
        tags: &[(&str, &str)],
    ) {
        let sdk = self.sdk_config(None).await;
        let client = aws_sdk_rds::Client::from_conf(
            aws_sdk_rds::config::Builder::from(&sdk).region(Region::new(region.to_string())).build(),
        );
        let tags = tags.iter().map(|(key, value)| aws_sdk_rds::types::Tag::builder().key(*key).value(*value).build());
        let created = client
            .create_db_instance()
            .db_instance_identifier(id)
            .db_instance_class("db.t4g.micro")
            .engine("postgres")
            .allocated_storage(20)
            .master_username("master")
            .master_user_password("master-password")
            .enable_iam_database_authentication(iam)
            .set_port(port.map(i32::from))
            .set_tags(Some(tags.collect()))
            .send()
            .await;
        if let Err(error) = created {
            client.describe_db_instances().db_instance_identifier(id).send().await.map_err(|_| error).unwrap();
        }
    }

    /// A Secrets Manager secret `name` in [`REGION`] holding an admin's login as RDS writes
    /// it (`{"username": …, "password": …}`); its ARN.
    pub async fn create_password_secret(&self, name: &str, username: &str, password: &str) -> String {
        let secret = serde_json::json!({"username": username, "password": password}).to_string();
        aws_sdk_secretsmanager::Client::new(&self.sdk_config(None).await)
            .create_secret()
            .name(name)
            .secret_string(secret)
            .send()
            .await
            .unwrap()
            .arn
            .expect("a created secret has an ARN")
    }

    /// Environment variables that point an AWS SDK (in a child process) at the emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN.into()),
            ("AWS_REGION", REGION.into()),
        ]
    }

    fn start() -> Moto {
        let path = server_path();
        assert!(path.exists(), "{} is missing: run scripts/install-deps", path.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(&path);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = scratch_postgres::spawn_tied_to_this_process(command)
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { url: format!("http://127.0.0.1:{port}"), child: Mutex::new(child) }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("moto child lock");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `AUTOUSER_MOTO_SERVER`, or the one `scripts/install-deps` puts in `.deps/venv`.
fn server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("AUTOUSER_MOTO_SERVER") {
        return path.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/venv/bin/moto_server")
}
