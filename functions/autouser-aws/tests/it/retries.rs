//! Throttling and server errors from AWS are retried by the SDK's retry configuration, and
//! when they persist they surface as a transient error (so Lambda or SQS retries later).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use autouser_aws::AwsContext;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use scratch_aws::Moto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::{config, create_admin, current_user};

const THROTTLED: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\n\
    Content-Length: 60\r\n\r\n{\"__type\":\"ThrottlingException\",\"message\":\"Rate exceeded\"}  ";
const UNAVAILABLE: &str =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: close\r\n\
    Content-Length: 65\r\n\r\n{\"__type\":\"ServiceUnavailable\",\"message\":\"try again later\"}      ";

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

async fn context_through(url: &str) -> AwsContext {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(scratch_aws::REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        // The SDK's standard retry mode (3 attempts), with short waits for the test.
        .retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(10)))
        .load()
        .await;
    AwsContext::new(sdk)
}

async fn secret_for(admin: &str, password: &str) -> String {
    create_admin(admin, Some(password)).await;
    Moto::global().create_password_secret(&format!("{admin}-secret"), admin, password).await
}

#[tokio::test]
async fn throttling_and_503_are_retried_by_the_sdk() {
    let arn = secret_for("rt_ok_admin", "retry-pw-1").await;
    let (url, seen) = flaky_proxy(2).await;
    let aws = context_through(&url).await;
    let config = config("rt_ok_admin", &format!("{{method: password, secret_arn: {arn:?}}}"));
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    let client = aws.connect_admin(&db, "postgres").await.expect("the third attempt reaches the emulator");
    assert_eq!(current_user(&client).await, "rt_ok_admin");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "two failed attempts, then one that worked");
}

#[tokio::test]
async fn persistent_throttling_is_a_transient_error() {
    let arn = secret_for("rt_fail_admin", "retry-pw-2").await;
    let (url, seen) = flaky_proxy(usize::MAX).await;
    let aws = context_through(&url).await;
    let config = config("rt_fail_admin", &format!("{{method: password, secret_arn: {arn:?}}}"));
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    let err = aws.connect_admin(&db, "postgres").await.unwrap_err();
    assert_eq!(err.kind(), "DependencyUnavailable", "{err}");
    assert!(err.is_transient(), "{err}");
    // The last answer was parsed as what it is, not as a broken response.
    assert!(err.to_string().contains("ThrottlingException: Rate exceeded"), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "the SDK made exactly its configured attempts");
}
