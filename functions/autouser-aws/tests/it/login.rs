//! The token is what goes on the wire: the test cluster holds a token (made with a pinned
//! clock) as the admin's password, and the admin logs in with a freshly generated one.

use autouser_aws::rds_token::{generate, TokenRequest};
use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
use autouser_engine::sql::{quote_ident, quote_literal};
use autouser_policy::config::TlsMode;
use aws_credential_types::Credentials;
use scratch_postgres::{Cluster, PgInstall, PASSWORD_LOGIN_GROUP};

use crate::golden::fixed_time;
use scratch_aws::Moto;

#[tokio::test]
async fn admin_logs_in_over_tls_with_an_iam_token_as_password() {
    let cluster = Cluster::start(&PgInstall::from_env().unwrap()).unwrap();
    let tls = TlsSettings { mode: TlsMode::VerifyFull, ca_pem: Some(cluster.ca_cert_pem().to_string()) };
    let superuser = scratch_login::connect(&cluster, "postgres", "postgres").await.unwrap();

    let admin = "teleport-admin";
    let credentials = Credentials::new("AKIDEXAMPLE", "secret/key+value", Some("session/token=".into()), None, "test");
    let request = TokenRequest { host: cluster.host(), port: cluster.port(), region: "us-east-1", user: admin };
    let expected = generate(&request, &credentials, fixed_time()).unwrap();
    assert!(expected.expose().contains("X-Amz-Security-Token="), "temporary credentials carry their session token");
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {group}; CREATE ROLE {admin} LOGIN CREATEROLE IN ROLE {group} PASSWORD {password}",
            group = quote_ident(PASSWORD_LOGIN_GROUP),
            admin = quote_ident(admin),
            password = quote_literal(expected.expose()),
        ))
        .await
        .unwrap();

    let token = generate(&request, &credentials, fixed_time()).unwrap();
    let client = login(&cluster, &tls, admin, token.expose()).await.expect("the token logs in");
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
/// the clock from the SDK configuration, and the token it makes is the admin's password.
#[tokio::test]
async fn iam_admin_logs_in_through_the_aws_context() {
    use autouser_aws::AwsContext;

    use crate::cluster::{cluster, config, create_admin, current_user};

    let admin = "iam_ctx_admin";
    let credentials = Credentials::new("testing", "testing", Some("session-token".into()), None, "test");
    let expected = generate(
        &TokenRequest { host: "localhost", port: cluster().port(), region: "eu-west-1", user: admin },
        &credentials,
        fixed_time(),
    )
    .unwrap();
    create_admin(admin, Some(expected.expose())).await;

    let aws = AwsContext::new(Moto::global().sdk_config(Some(fixed_time())).await);
    let config = config(admin, "{method: iam, region: eu-west-1}");
    let db = aws.resolve_database(&config, &config.databases[0]).await.unwrap();
    let client = aws.connect_admin(&db, "postgres").await.expect("the IAM token logs in");
    assert_eq!(current_user(&client).await, admin);
}
