//! Throttling and server errors from AWS are retried as the product's own SDK configuration
//! says (`AwsContext::from_env`, `autouser_aws::retry_config`), and when they persist they
//! surface as a transient error (so Lambda or SQS retries later).
//!
//! `from_env` reads the process's environment, which a test cannot change while other tests
//! run; so each test runs `from_env` in a child: this test executable again, running only
//! that test, with only the environment a Lambda function has (credentials, region, and
//! `AWS_ENDPOINT_URL` pointing at a proxy in front of the emulator that throttles). The
//! child prints what `admin_credentials` answered and how long it took; the parent counts
//! the attempts that reached the proxy.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autouser_aws::AwsContext;
use autouser_engine::pg::AdminCredentials;
use autouser_policy::config::{AdminUser, AuthConfig, DatabaseType, ResolvedDatabase, TlsConfig, TlsMode};
use scratch_aws::Moto;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const THROTTLED: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\n\
    Content-Length: 60\r\n\r\n{\"__type\":\"ThrottlingException\",\"message\":\"Rate exceeded\"}  ";
const UNAVAILABLE: &str =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\n\
    Content-Length: 65\r\n\r\n{\"__type\":\"ServiceUnavailable\",\"message\":\"try again later\"}      ";

/// Set in the child: the secret's ARN and the admin's name, separated by a space.
const CHILD_VAR: &str = "AUTOUSER_TEST_FROM_ENV_CHILD";
/// The line the child prints its answer on.
const ANSWER_PREFIX: &str = "from_env answered: ";

/// A proxy to the emulator that answers the first `failures` connections with a throttling
/// error, then a 503, alternately, and forwards the others.
async fn flaky_proxy(failures: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = Moto::global().url().trim_start_matches("http://").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if n < failures {
                    let mut request = vec![0u8; 64 * 1024];
                    let _ = client.read(&mut request).await;
                    let answer = if n.is_multiple_of(2) { THROTTLED } else { UNAVAILABLE };
                    let _ = client.write_all(answer.as_bytes()).await;
                    let _ = client.shutdown().await;
                } else if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (url, seen)
}

/// The child's part: `AwsContext::from_env` asked for a password secret's credentials, the
/// answer printed on one line.
async fn child(spec: &str) {
    let (arn, admin) = spec.split_once(' ').expect("CHILD_VAR is '<arn> <admin>'");
    let db = ResolvedDatabase {
        name: "local".into(),
        db_type: DatabaseType::SelfHosted,
        host: "localhost".into(),
        port: 5432,
        hostaddr: None,
        labels: Default::default(),
        admin_user: AdminUser { name: admin.into(), default_database: None },
        auth: AuthConfig::PasswordSecret { secret_arn: arn.into() },
        tls: TlsConfig { mode: TlsMode::VerifyFull, ca_file: None },
        writer: None,
        replica_wait: autouser_policy::config::DEFAULT_REPLICA_WAIT,
        reader_instances: None,
    };
    let aws = AwsContext::from_env().await;
    let started = Instant::now();
    let mut answer = match aws.admin_credentials(&db).await {
        Ok(AdminCredentials::Password(password)) => json!({"password": password}),
        Ok(_) => json!({"error": "not a password"}),
        Err(e) => json!({"kind": e.kind(), "transient": e.is_transient(), "error": e.to_string()}),
    };
    answer["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    println!("{ANSWER_PREFIX}{answer}");
}

/// Runs `test` (the caller) again in a child whose environment is a Lambda function's, AWS at
/// `endpoint`, and `AWS_MAX_ATTEMPTS=1`: a setting the product's own retry configuration
/// overrides. Returns what the child printed.
async fn from_env_in_child(test: &str, endpoint: &str, arn: &str, admin: &str) -> Value {
    let missing = std::env::temp_dir().join(format!("autouser-no-aws-profile-{}", std::process::id()));
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(CHILD_VAR, format!("{arn} {admin}"))
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", scratch_aws::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", scratch_aws::SECRET_ACCESS_KEY)
        .env("AWS_SESSION_TOKEN", scratch_aws::SESSION_TOKEN)
        .env("AWS_REGION", scratch_aws::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", missing.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", missing.join("credentials"))
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the child answers within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed:\n{stdout}\n{stderr}");
    let answer = stdout
        .lines()
        .find_map(|line| line.split_once(ANSWER_PREFIX).map(|(_, answer)| answer))
        .unwrap_or_else(|| panic!("the child ran no test {test}:\n{stdout}\n{stderr}"));
    serde_json::from_str(answer).unwrap()
}

async fn secret_for(admin: &str, password: &str) -> String {
    Moto::global().create_password_secret(&format!("{admin}-secret"), admin, password).await
}

/// The AWS share of a session function's 30 s: what its own bounds (connect 11 s, lock wait
/// 10 s) leave.
const AWS_BUDGET: Duration = Duration::from_secs(9);

#[tokio::test]
async fn throttling_and_503_are_retried_by_the_products_sdk_config() {
    const TEST: &str = "retries::throttling_and_503_are_retried_by_the_products_sdk_config";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return child(&spec).await;
    }
    let arn = secret_for("rt_ok_admin", "retry-pw-1").await;
    let (url, seen) = flaky_proxy(2).await;
    let answer = from_env_in_child(TEST, &url, &arn, "rt_ok_admin").await;
    assert_eq!(answer["password"], "retry-pw-1", "the third attempt reaches the emulator: {answer}");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "two failed attempts, then one that worked: {answer}");
    assert!(answer["elapsed_ms"].as_u64().unwrap() < AWS_BUDGET.as_millis() as u64, "{answer}");
}

#[tokio::test]
async fn persistent_throttling_is_a_transient_error() {
    const TEST: &str = "retries::persistent_throttling_is_a_transient_error";
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return child(&spec).await;
    }
    let arn = secret_for("rt_fail_admin", "retry-pw-2").await;
    let (url, seen) = flaky_proxy(usize::MAX).await;
    let answer = from_env_in_child(TEST, &url, &arn, "rt_fail_admin").await;
    assert_eq!(answer["kind"], "DependencyUnavailable", "{answer}");
    assert_eq!(answer["transient"], true, "{answer}");
    // The last answer was parsed as what it is, not as a broken response.
    assert!(answer["error"].as_str().unwrap().contains("ThrottlingException: Rate exceeded"), "{answer}");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "the product's 3 attempts, not the environment's 1: {answer}");
    assert!(answer["elapsed_ms"].as_u64().unwrap() < AWS_BUDGET.as_millis() as u64, "{answer}");
}
