//! Refusals and troubleshooting cases: each is a typed error whose message says what to run,
//! and none of them leaves anything behind.

use autouser_engine::Error;
use serde_json::json;

use crate::fixture::{major, q, set, Fixture};

#[tokio::test]
async fn existing_unmanaged_role_is_refused_and_untouched() {
    let fx = Fixture::new("er_conflict").await;
    let alice = fx.user("alice");
    fx.sql(&format!(
        "CREATE ROLE {a} LOGIN; COMMENT ON ROLE {a} IS 'a real person'; GRANT {w} TO {a}",
        a = q(&alice),
        w = q(&fx.writer())
    ))
    .await;
    let before = fx.state(&alice).await.unwrap();
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert!(matches!(err, Error::UserConflict { .. }), "{err}");
    assert!(err.to_string().contains(&alice), "the message names the user: {err}");
    assert_eq!(fx.state(&alice).await.unwrap(), before, "nothing about the role changed");
    // Its end is not ours either.
    let out = fx.end(fx.event("s1", &alice, &["keep"])).await.unwrap();
    assert_eq!(out.status, autouser_policy::outcome::EndStatus::Noop);
    assert_eq!(fx.state(&alice).await.unwrap(), before);
}

#[tokio::test]
async fn unknown_database_role_fails_before_anything_is_created() {
    let fx = Fixture::new("er_unknown").await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": ["er_unknown_ghost"]}});
    let err = fx.start(event).await.unwrap_err();
    assert!(matches!(err, Error::UnknownDbRole { ref role, .. } if role == "er_unknown_ghost"), "{err}");
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn unknown_teleport_role_and_no_matching_role_are_refused() {
    let fx = Fixture::new("er_policy").await;
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["nosuchrole"])).await.unwrap_err();
    assert_eq!(err.kind(), "PolicyDenied");
    assert!(err.to_string().contains("nosuchrole"), "{err}");
    let fx = fx.with_roles(
        r#"
  - kind: role
    version: v7
    metadata: {name: off}
    spec:
      options: {create_db_user_mode: "off"}
      allow: {db_labels: {"*": "*"}, db_names: ["*"]}
  - kind: role
    version: v7
    metadata: {name: prod-only}
    spec:
      options: {create_db_user_mode: keep}
      allow: {db_labels: {env: prod}, db_names: ["*"]}
"#,
    );
    assert_eq!(fx.start(fx.event("s1", &alice, &["off"])).await.unwrap_err().kind(), "PolicyDenied");
    assert_eq!(fx.start(fx.event("s1", &alice, &["prod-only"])).await.unwrap_err().kind(), "PolicyDenied");
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn reserved_and_overlong_names_are_refused() {
    let fx = Fixture::new("er_names").await;
    for user in ["postgres", "pg_monitor", "rds_superuser", "rdsadmin", fx.admin.as_str(), fx.group.as_str()] {
        let err = fx.start(fx.event("s1", user, &["keep"])).await.unwrap_err();
        assert_eq!(err.kind(), "InvalidUserName", "{user}: {err}");
    }
    let long = format!("{}{}", fx.ns, "x".repeat(64 - fx.ns.len()));
    assert_eq!(long.len(), 64);
    let err = fx.start(fx.event("s1", &long, &["keep"])).await.unwrap_err();
    assert!(err.to_string().contains("truncate"), "{err}");
    assert!(fx.state(&long[..63]).await.is_none());
    let fits = &long[..63];
    fx.start(fx.event("s2", fits, &["keep"])).await.unwrap();
    assert!(fx.state(fits).await.unwrap().login);
}

#[tokio::test]
async fn missing_admin_option_is_typed_and_fixed_by_the_quoted_grant() {
    let fx = Fixture::new("er_adminopt").await;
    let extra = format!("{}_extra", fx.ns);
    fx.sql(&format!("CREATE ROLE {}", q(&extra))).await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [extra]}});
    let result = fx.start(event.clone()).await;
    if major() < 16 {
        // Before PostgreSQL 16, CREATEROLE alone may grant any non-superuser role.
        result.unwrap();
        return;
    }
    let err = result.unwrap_err();
    assert!(matches!(err, Error::MissingAdminOption { ref role, .. } if *role == extra), "{err}");
    let fix = format!("GRANT {} TO {} WITH ADMIN OPTION", q(&extra), q(&fx.admin));
    assert!(err.to_string().contains(&fix), "{err}");
    assert!(fx.state(&alice).await.is_none(), "the failed start left no user behind");
    fx.sql(&fix).await;
    fx.start(event).await.unwrap();
    assert_eq!(fx.state(&alice).await.unwrap().member_of, set(&[&fx.group, &fx.reader(), &extra]));
}

#[tokio::test]
async fn missing_admin_option_on_rds_iam_names_the_seed_fix() {
    let mut fx = Fixture::new("er_rdsiam").await;
    fx.db_type = "rds";
    fx.sql("DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
        .await;
    let alice = fx.user("alice");
    let result = fx.start(fx.event("s1", &alice, &["keep"])).await;
    if major() < 16 {
        result.unwrap();
        return;
    }
    let err = result.unwrap_err();
    let fix = format!("GRANT {} TO {} WITH ADMIN OPTION", q("rds_iam"), q(&fx.admin));
    assert!(err.to_string().contains(&fix), "{err}");
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn missing_connect_privilege_quotes_the_grant() {
    let fx = Fixture::new("er_connect").await;
    fx.sql(&format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&fx.db))).await;
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    let fix = format!("GRANT CONNECT ON DATABASE {} TO {}", q(&fx.db), q(&fx.admin));
    assert!(matches!(err, Error::MissingConnect { .. }), "{err}");
    assert!(err.to_string().contains(&fix), "{err}");
    fx.sql(&fix).await;
    fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap();
}

#[tokio::test]
async fn admin_default_database_is_where_the_admin_connects() {
    let mut fx = Fixture::new("er_defaultdb").await;
    fx.sql("CREATE DATABASE er_defaultdb_admin").await;
    fx.sql("REVOKE CONNECT ON DATABASE er_defaultdb_admin FROM PUBLIC").await;
    fx.default_database = Some("er_defaultdb_admin".into());
    let err = fx.start(fx.event("s1", &fx.user("alice"), &["keep"])).await.unwrap_err();
    assert!(matches!(err, Error::MissingConnect { ref db_name, .. } if db_name == "er_defaultdb_admin"), "{err}");
}

#[tokio::test]
async fn admin_without_createrole_is_told_so() {
    let fx = Fixture::new("er_createrole").await;
    fx.sql(&format!("ALTER ROLE {} NOCREATEROLE", q(&fx.admin))).await;
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert!(matches!(err, Error::MissingCreateRole { .. }), "{err}");
    assert!(err.to_string().contains("CREATEROLE"), "{err}");
}

#[tokio::test]
async fn read_only_endpoint_is_refused_with_the_writer_hint() {
    let fx = Fixture::new("er_readonly").await;
    fx.sql(&format!("ALTER DATABASE {} SET default_transaction_read_only = on", q(&fx.db))).await;
    let alice = fx.user("alice");
    let err = fx.start(fx.event("s1", &alice, &["keep"])).await.unwrap_err();
    assert!(matches!(err, Error::ReadOnlyEndpoint { .. }), "{err}");
    assert!(err.to_string().contains("writer"), "{err}");
    assert!(fx.state(&alice).await.is_none());
}

#[tokio::test]
async fn superuser_roles_are_never_granted() {
    assert_superuser_role_refused(&Fixture::new("er_super").await).await;
}

#[tokio::test]
async fn a_superuser_admin_still_never_grants_superuser_roles() {
    // PostgreSQL itself refuses a superuser role to any other admin; a superuser admin could
    // grant it, so the refusal must come from the plan, whichever path a start takes.
    let fx = Fixture::new("er_super_admin").await;
    fx.sql(&format!("ALTER ROLE {} SUPERUSER", q(&fx.admin))).await;
    assert_superuser_role_refused(&fx).await;
}

/// An admin made a superuser after its connection logged in (a pooled connection) still never
/// grants a superuser role: the check does not trust what the server reported at login.
#[tokio::test]
async fn an_admin_promoted_to_superuser_on_a_live_connection_never_grants_superuser_roles() {
    use autouser_engine::engine;
    use autouser_policy::event::SessionEvent;
    use autouser_policy::request;
    let fx = Fixture::new("er_promoted").await;
    let config = fx.config();
    let connection = fx.admin_client(&config, &fx.db).await.unwrap();
    assert_eq!(connection.admin_is_superuser(), Some(false), "not a superuser at login");
    // A first session on the connection: the group exists from now on.
    let bob_event = SessionEvent::from_value(fx.event("s0", &fx.user("bob"), &["keep"])).unwrap();
    let db = request::database(&config, &bob_event).unwrap().resolve_static().unwrap();
    engine::session_start(&connection, &request::prepare_start(&config, &db, &bob_event).unwrap()).await.unwrap();
    let powerful = format!("{}_powerful", fx.ns);
    fx.sql(&format!("CREATE ROLE {} SUPERUSER NOLOGIN; ALTER ROLE {} SUPERUSER", q(&powerful), q(&fx.admin))).await;
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": [powerful]}});
    let event = SessionEvent::from_value(event).unwrap();
    let req = request::prepare_start(&config, &db, &event).unwrap();
    let result = engine::session_start(&connection, &req).await;
    let state = fx.state(&alice).await;
    assert!(matches!(result, Err(Error::RefusedDbRole { .. })), "{result:?}, then {state:?}");
    assert!(state.is_none(), "{state:?}");
}

/// A start whose policy names the superuser `postgres` is refused and creates nothing.
async fn assert_superuser_role_refused(fx: &Fixture) {
    let alice = fx.user("alice");
    let mut event = fx.event("s1", &alice, &["keep"]);
    event["traits"] = json!({"internal": {"db_roles": ["postgres"]}});
    let err = fx.start(event).await.unwrap_err();
    assert!(matches!(err, Error::RefusedDbRole { .. }), "{err}");
    assert!(fx.state(&alice).await.is_none());
}

/// A `tls.ca_file` holding a real CA, but not the one that issued the server's certificate:
/// the chain cannot be verified, as psql (`sslmode=verify-full`) refuses it with "certificate
/// verify failed", and the error says which certificate did not lead to the configured CA.
#[tokio::test]
async fn wrong_ca_fails_the_tls_handshake() {
    let fx = Fixture::new("er_tls").await;
    fx.admin_client(&fx.config(), &fx.db).await.expect("the cluster's own CA verifies the server");
    let mut config = fx.config();
    let dir = tempfile::tempdir().unwrap();
    other_ca(dir.path(), "another scratch-postgres CA");
    config.databases[0].tls.ca_file = Some(dir.path().join("other_ca.pem"));
    let err = fx.admin_client(&config, &fx.db).await.expect_err("the handshake fails");
    let message = err.to_string();
    // The server sends its chain up to its CA, which is self-signed and not the file's.
    for says in [
        "TLS handshake failed",
        "(CN=scratch-postgres CA, issued by CN=scratch-postgres CA) does not lead to a CA in tls.ca_file",
        "(self-signed certificate in certificate chain)",
    ] {
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
    assert!(!err.is_transient(), "a wrong CA does not fix itself: {err}");
}

/// A server that answers the TLS request with "N" (no TLS) is never talked to in plain text:
/// in every mode but `disable`, the connection fails before a startup message or a password
/// is sent.
#[tokio::test]
async fn a_server_refusing_tls_is_never_used_in_plain_text() {
    use autouser_engine::pg::{self, AdminCredentials, ConnectParams, TlsSettings};
    use autouser_policy::config::TlsMode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa, TlsMode::Require] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut ssl_request = [0u8; 8];
            socket.read_exact(&mut ssl_request).await.unwrap();
            // Length 8, then the SSLRequest code 80877103.
            assert_eq!(ssl_request, [0, 0, 0, 8, 4, 210, 22, 47], "the client asks for TLS first");
            socket.write_all(b"N").await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), socket.read_to_end(&mut rest)).await;
            rest
        });
        let tls = TlsSettings { mode, ca_pem: Some(crate::fixture::cluster().ca_cert_pem().to_string()) };
        let credentials = AdminCredentials::Password("the-password".into());
        let params = ConnectParams {
            host: "localhost",
            port,
            hostaddr: None,
            dbname: "postgres",
            user: "admin",
            tls: &tls,
            credentials: &credentials,
        };
        let err = pg::connect(&params).await.expect_err("no TLS, no connection");
        let after_refusal = server.await.unwrap();
        assert!(after_refusal.is_empty(), "{mode:?}: {} bytes sent in plain text", after_refusal.len());
        assert!(err.to_string().to_lowercase().contains("tls") || err.to_string().contains("SSL"), "{mode:?}: {err}");
    }
}

/// A self-signed CA named `cn`, made with the `openssl` command line as an operator makes one
/// (the PostgreSQL manual's recipe, with an EC key), in `dir`: it issued nothing the server has.
fn other_ca(dir: &std::path::Path, cn: &str) -> String {
    let output = std::process::Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "365", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-keyout", "other_ca.key", "-out", "other_ca.pem"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "basicConstraints=critical,CA:TRUE"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command line (scripts/install-deps installs it)");
    assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read_to_string(dir.join("other_ca.pem")).unwrap()
}
