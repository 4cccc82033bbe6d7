//! The token is what goes on the wire: the test cluster holds a token made by boto3
//! (`generate_db_auth_token`, with the clock of `tests/gen_rds_auth_token_vectors.py` pinned)
//! as the admin's password, and the admin logs in with a token of ours. PostgreSQL compares
//! the password it is sent with the one it holds, so a login is evidence that our token is
//! boto3's, byte for byte.

use autouser_aws::rds_token::{generate, TokenRequest};
use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::sql::{quote_ident, quote_literal};
use autouser_policy::config::TlsMode;
use aws_credential_types::Credentials;
use scratch_postgres::{Cluster, PgInstall, PASSWORD_LOGIN_GROUP};

use crate::golden::fixed_time;
use scratch_aws::Moto;

/// The token boto3 makes for `request` with these credentials at `fixed_time()`: the
/// generator of the golden vectors (`tests/gen_rds_auth_token_vectors.py`, whose clock is
/// that time), run by the project's Python; never a skip.
fn boto3_token(request: &TokenRequest, access_key: &str, secret_key: &str, session_token: Option<&str>) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let python = root.join(".deps/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/install-deps", python.display());
    const SCRIPT: &str = "import json, sys
sys.path.insert(0, sys.argv[1])
import gen_rds_auth_token_vectors as g
host, port, region, user, access_key, secret_key, session_token = json.loads(sys.argv[2])
assert g.FIXED_TIME.timestamp() == int(sys.argv[3]), 'the script pins another clock'
g.ACCESS_KEY, g.SECRET_KEY = access_key, secret_key
print(g.generate(host, port, region, user, session_token))
";
    let args = serde_json::json!([
        request.host,
        request.port,
        request.region,
        request.user,
        access_key,
        secret_key,
        session_token
    ]);
    let clock = fixed_time().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let output = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(root.join("tests"))
        .arg(args.to_string())
        .arg(clock.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "boto3: {}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim_end().to_string();
    assert!(token.starts_with(&format!("{}:{}/?", request.host, request.port)), "boto3 made {token:?}");
    token
}

#[tokio::test]
async fn admin_logs_in_over_tls_with_an_iam_token_as_password() {
    let cluster = Cluster::start(&PgInstall::from_env().unwrap()).unwrap();
    let tls = TlsSettings { mode: TlsMode::VerifyFull, ca_pem: Some(cluster.ca_cert_pem().to_string()) };
    let superuser = scratch_login::connect(&cluster, "postgres", "postgres").await.unwrap();

    let admin = "teleport-admin";
    let (access_key, secret_key, session_token) = ("AKIDEXAMPLE", "secret/key+value", "session/token=");
    let credentials = Credentials::new(access_key, secret_key, Some(session_token.into()), None, "test");
    let request = TokenRequest { host: cluster.host(), port: cluster.port(), region: "us-east-1", user: admin };
    let expected = boto3_token(&request, access_key, secret_key, Some(session_token));
    assert!(expected.contains("X-Amz-Security-Token="), "temporary credentials carry their session token");
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {group}; CREATE ROLE {admin} LOGIN CREATEROLE IN ROLE {group} PASSWORD {password}",
            group = quote_ident(PASSWORD_LOGIN_GROUP),
            admin = quote_ident(admin),
            password = quote_literal(&expected),
        ))
        .await
        .unwrap();

    let token = generate(&request, &credentials, fixed_time()).unwrap();
    let client = login(&cluster, &tls, admin, token.expose())
        .await
        .unwrap_or_else(|e| panic!("our token is not boto3's: {e}\n ours:  {}\n boto3: {expected}", token.expose()));
    let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, admin);
    // A token from another minute is another password.
    let later = generate(&request, &credentials, fixed_time() + std::time::Duration::from_secs(60)).unwrap();
    assert!(login(&cluster, &tls, admin, later.expose()).await.is_err());
}

async fn login(
    cluster: &Cluster,
    tls: &TlsSettings,
    user: &str,
    password: &str,
) -> Result<autouser_engine::tokio_postgres::Client, autouser_engine::Error> {
    let credentials = AdminCredentials::Password(password.to_string());
    pg::connect(&ConnectParams {
        host: cluster.host(),
        port: cluster.port(),
        hostaddr: None,
        dbname: "postgres",
        user,
        tls,
        credentials: &credentials,
    })
    .await
}

/// `auth: {method: iam}` end to end: the context takes credentials (with a session token) and
/// the clock from the SDK configuration, and the token it makes is the admin's password, made
/// by boto3 with the emulator's credentials.
#[tokio::test]
async fn iam_admin_logs_in_through_the_aws_context() {
    use autouser_aws::AwsContext;

    use crate::cluster::{cluster, config, create_admin, current_user};

    let admin = "iam_ctx_admin";
    let expected = boto3_token(
        &TokenRequest { host: "localhost", port: cluster().port(), region: "eu-west-1", user: admin },
        scratch_aws::ACCESS_KEY_ID,
        scratch_aws::SECRET_ACCESS_KEY,
        Some(scratch_aws::SESSION_TOKEN),
    );
    create_admin(admin, Some(&expected)).await;

    let aws = AwsContext::new(Moto::global().sdk_config(Some(fixed_time())).await);
    let config = config(admin, "{method: iam, region: eu-west-1}");
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    let client = aws.connect_admin(&db, "postgres").await.expect("the IAM token logs in");
    assert_eq!(current_user(&client).await, admin);
}
