//! Admin credentials from Secrets Manager (moto), used to log in to a real PostgreSQL.

use autouser_aws::AwsContext;

use crate::cluster::{cluster, config, create_admin, current_user, set_password};
use scratch_aws::Moto;

async fn put_secret(name: &str, text: &str) -> String {
    let client = aws_sdk_secretsmanager::Client::new(&Moto::global().sdk_config(None).await);
    client.create_secret().name(name).secret_string(text).send().await.unwrap().arn().unwrap().to_string()
}

async fn connect(admin: &str, auth_yaml: &str) -> Result<String, autouser_engine::Error> {
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config(admin, auth_yaml);
    let db = aws.resolve_database(&config, &config.databases[0]).await?;
    let client = aws.connect_admin(&db, "postgres").await?;
    Ok(current_user(&client).await)
}

#[tokio::test]
async fn password_admin_from_an_rds_style_secret_logs_in() {
    create_admin("sm_pw_admin", Some("first-Passw0rd")).await;
    let arn = put_secret(
        "sm-pw-admin",
        r#"{"username": "sm_pw_admin", "password": "first-Passw0rd", "engine": "postgres", "port": 5432}"#,
    )
    .await;
    let who = connect("sm_pw_admin", &format!("{{method: password, secret_arn: {arn:?}}}")).await.unwrap();
    assert_eq!(who, "sm_pw_admin");
}

#[tokio::test]
async fn rotated_secret_is_fetched_again_after_a_refused_login() {
    create_admin("sm_rot_admin", Some("before-rotation")).await;
    let arn = put_secret("sm-rot-admin", r#"{"username": "sm_rot_admin", "password": "before-rotation"}"#).await;
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    let config = config("sm_rot_admin", &format!("{{method: password, secret_arn: {arn:?}}}"));
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    aws.connect_admin(&db, "postgres").await.expect("the first secret works");

    // Rotation: the password changes in the database and in the secret.
    set_password("sm_rot_admin", "after-rotation").await;
    let secrets = aws_sdk_secretsmanager::Client::new(&Moto::global().sdk_config(None).await);
    secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"username": "sm_rot_admin", "password": "after-rotation"}"#)
        .send()
        .await
        .unwrap();
    let client = aws.connect_admin(&db, "postgres").await.expect("the cached secret is refreshed");
    assert_eq!(current_user(&client).await, "sm_rot_admin");
}

#[tokio::test]
async fn cert_admin_from_a_secret_logs_in() {
    create_admin("sm_cert_admin", None).await;
    let cert = cluster().client_cert("sm_cert_admin").unwrap();
    let text = serde_json::json!({"certificate": cert.cert_pem, "private_key": cert.key_pem}).to_string();
    let arn = put_secret("sm-cert-admin", &text).await;
    let who = connect("sm_cert_admin", &format!("{{method: cert, secret_arn: {arn:?}}}")).await.unwrap();
    assert_eq!(who, "sm_cert_admin");
}

#[tokio::test]
async fn wrong_secrets_are_refused_naming_the_arn_but_not_the_content() {
    create_admin("sm_bad_admin", Some("hunter2-pw")).await;
    let not_json = put_secret("sm-bad-1", "hunter2-pw").await;
    let other_user = put_secret("sm-bad-2", r#"{"username": "someone_else", "password": "hunter2-pw"}"#).await;
    for (arn, expected) in [(&not_json, "is not JSON"), (&other_user, "someone_else")] {
        let err = connect("sm_bad_admin", &format!("{{method: password, secret_arn: {arn:?}}}")).await.unwrap_err();
        let message = err.to_string();
        assert_eq!(err.kind(), "CredentialsInvalid", "{message}");
        assert!(message.contains(arn.as_str()) && message.contains(expected), "{message}");
        assert!(!message.contains("hunter2"), "the secret leaked into {message}");
    }
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:does-not-exist-AbCdEf";
    let err = connect("sm_bad_admin", &format!("{{method: password, secret_arn: {missing:?}}}")).await.unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    assert!(!err.is_transient(), "a missing secret needs a person: {err}");
}

/// The admin's key encrypted (PKCS#8, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it), its
/// passphrase in the secret's `private_key_password` (libpq's `sslpassword`).
#[tokio::test]
async fn cert_admin_with_an_encrypted_key_from_a_secret_logs_in() {
    create_admin("sm_enc_admin", None).await;
    let cert = cluster().client_cert("sm_enc_admin").unwrap();
    let encrypted = encrypt_key(&cert.key_pem, "s3cret phrase");
    assert!(encrypted.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{encrypted}");
    let with_password = serde_json::json!({
        "certificate": cert.cert_pem, "private_key": encrypted, "private_key_password": "s3cret phrase"
    });
    let arn = put_secret("sm-enc-admin", &with_password.to_string()).await;
    let who = connect("sm_enc_admin", &format!("{{method: cert, secret_arn: {arn:?}}}")).await.unwrap();
    assert_eq!(who, "sm_enc_admin");

    let without_password = serde_json::json!({"certificate": cert.cert_pem, "private_key": encrypted});
    let arn = put_secret("sm-enc-admin-nopw", &without_password.to_string()).await;
    let err = connect("sm_enc_admin", &format!("{{method: cert, secret_arn: {arn:?}}}")).await.unwrap_err();
    assert_eq!(err.kind(), "CredentialsInvalid", "{err}");
    assert!(err.to_string().contains("private_key_password"), "{err}");
}

/// `key_pem` encrypted with `passphrase` by the openssl command line.
fn encrypt_key(key_pem: &str, passphrase: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", &format!("pass:{passphrase}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command line (scripts/install-deps)");
    child.stdin.take().unwrap().write_all(key_pem.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}
