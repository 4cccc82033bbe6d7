//! Signed identity (`identity:`) on the session functions: tokens made by PyJWT, keys by the
//! `openssl` command line (`scratch_login::IdentityFixtures`), delivered directly, through
//! EventBridge and through SQS. The audit names the issuer and the token's `sub` and `jti`;
//! neither the audit nor the logs, at any level, hold the token.

use autouser_lambda::audit::Auditor;
use autouser_lambda::{Function, State};
use scratch_aws::Moto;
use scratch_login::IdentityFixtures;
use serde_json::{json, Value};

use crate::audit::{bus_into_queue, drain, LogBuffer};
use crate::{can_login, config_yaml, eventbridge, invoke, sqs, state_of};

/// A state trusting the fixtures' issuers (`required: true`), and fixtures for `<ns>_alice`
/// with roles `devs`.
async fn identity_state(ns: &str, dir: &std::path::Path) -> (State, IdentityFixtures) {
    let fixtures = IdentityFixtures::make(dir, &format!("{ns}_alice"), &["devs"]);
    let config = config_yaml(ns).await + &fixtures.identity_yaml(true, false);
    (state_of(&config), fixtures)
}

fn event(session_id: &str, token: Option<&str>, extra: Value) -> Value {
    let mut event = json!({"session_id": session_id, "database": "main", "db_name": "postgres"});
    if let Some(token) = token {
        event["identity_token"] = json!(token);
    }
    for (key, value) in extra.as_object().unwrap() {
        event[key] = value.clone();
    }
    event
}

#[tokio::test]
async fn a_valid_token_of_each_algorithm_and_preset_starts_a_session_however_delivered() {
    let ns = "lid";
    let dir = tempfile::tempdir().unwrap();
    let (state, fixtures) = identity_state(ns, dir.path()).await;
    let alice = format!("{ns}_alice");
    for preset in ["teleport", "oidc"] {
        for alg in ["RS256", "ES256", "EdDSA"] {
            let name = format!("{preset}_{alg}");
            let start = event(&name, Some(&fixtures.token(&name)), json!({}));
            let started = invoke(&state, Function::SessionStart, start).await.unwrap();
            assert_eq!(started["status"], "active", "{name}: {started}");
            assert_eq!(started["db_user"], alice, "{name}");
        }
    }
    let through_bus =
        eventbridge("Database Session Started", event("eb", Some(&fixtures.token("teleport_ES256")), json!({})));
    assert_eq!(invoke(&state, Function::SessionStart, through_bus).await.unwrap()["status"], "active");
    let record = event("sqs", Some(&fixtures.token("oidc_EdDSA")), json!({"user": alice.clone()}));
    let response = invoke(&state, Function::SessionStart, sqs(&[("m1", record.to_string())])).await.unwrap();
    assert_eq!(response, json!({"batchItemFailures": []}));
    assert_eq!(can_login(&alice).await, Some(true));
}

#[tokio::test]
async fn each_refused_token_names_its_check_reaches_no_database_and_is_not_retried() {
    let ns = "lidno";
    let dir = tempfile::tempdir().unwrap();
    let (state, fixtures) = identity_state(ns, dir.path()).await;
    let alice = format!("{ns}_alice");
    let cases = [
        ("expired", None, "expired"),
        ("not_yet_valid", None, "not_yet_valid"),
        ("wrong_iss", None, "issuer"),
        ("wrong_aud", None, "audience"),
        ("unknown_kid", None, "unknown_key"),
        ("unknown_issuer", None, "issuer"),
        ("tampered_payload", None, "signature"),
        ("tampered_signature", None, "signature"),
        ("alg_none", None, "algorithm"),
        ("hs256_public_key", None, "algorithm"),
        ("teleport_RS256", Some(json!({"user": format!("{ns}_mallory")})), "user"),
        ("oidc_RS256", Some(json!({"roles": ["devs", "admins"]})), "roles"),
        // The token names no cluster: the event may not make alice a remote person.
        ("teleport_ES256", Some(json!({"origin_cluster": "leaf"})), "origin_cluster"),
    ];
    for (token, extra, check) in cases {
        let start = event("s1", Some(&fixtures.token(token)), extra.unwrap_or_else(|| json!({})));
        let err = invoke(&state, Function::SessionStart, start.clone()).await.unwrap_err();
        assert_eq!(err.kind, "IdentityUnverified", "{token}: {}", err.message);
        assert!(err.message.contains(&format!("check `{check}`")), "{token}: {}", err.message);
        // Through EventBridge it is answered as refused, not raised for a retry.
        let refused = invoke(&state, Function::SessionStart, eventbridge("Database Session Started", start.clone()))
            .await
            .unwrap();
        assert_eq!(refused["kind"], "IdentityUnverified", "{token}: {refused}");
        // From SQS it is not reported as a failure to retry.
        let response = invoke(&state, Function::SessionStart, sqs(&[("m1", start.to_string())])).await.unwrap();
        assert_eq!(response, json!({"batchItemFailures": []}), "{token}");
    }
    let err = invoke(&state, Function::SessionStart, event("s1", None, json!({"user": alice, "roles": ["devs"]})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, "IdentityUnverified");
    assert!(err.message.contains("check `missing`"), "{}", err.message);
    assert_eq!(can_login(&alice).await, None, "a refused start created the user");
    assert_eq!(can_login(&format!("{ns}_mallory")).await, None, "a refused start created the user");
    assert_eq!(state.connections_opened(), 0, "a refused start opened a database connection");
}

#[tokio::test]
async fn the_audit_names_the_issuer_and_token_ids_and_no_log_holds_the_token() {
    let ns = "lidau";
    let dir = tempfile::tempdir().unwrap();
    let queue = bus_into_queue("audit-identity").await;
    let sdk = Moto::global().sdk_config(None).await;
    let (state, fixtures) = identity_state(ns, dir.path()).await;
    let state = state.with_auditor(Auditor::to_bus(&sdk, "audit-identity".into(), "audit-identity.audit".into()));
    let log = LogBuffer::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt().json().with_writer(log.clone()).with_max_level(tracing::Level::TRACE).finish(),
    );
    let good = fixtures.token("teleport_RS256");
    let expired = fixtures.token("expired");
    invoke(&state, Function::SessionStart, event("s1", Some(&good), json!({}))).await.unwrap();
    invoke(&state, Function::SessionStart, event("s2", Some(&expired), json!({}))).await.unwrap_err();

    let events = drain(&queue).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let activated = &events[0]["detail"];
    assert_eq!(events[0]["detail-type"], "Database User Activated");
    assert_eq!(activated["user"], format!("{ns}_alice"));
    assert_eq!(activated["access_roles"], json!(["devs"]));
    assert_eq!(
        activated["identity"],
        json!({"issuer": fixtures.teleport_issuer, "sub": format!("{ns}_alice"), "jti": "teleport-rsa"})
    );
    assert_eq!(events[1]["detail"]["kind"], "IdentityUnverified");
    assert!(events[1]["detail"]["reason"].as_str().unwrap().contains("check `expired`"));
    let logs = log.text();
    assert!(logs.contains("IdentityUnverified"), "the refusal is logged: {logs}");
    for token in [&good, &expired] {
        // Any of its parts: the payload alone would show the claims, the signature alone the token.
        for part in token.split('.') {
            let text = serde_json::to_string(&events).unwrap();
            assert!(!text.contains(part), "the audit holds the token: {text}");
            assert!(!logs.contains(part), "a log line holds the token: {logs}");
        }
    }
}

/// Key rotation through a `jwks_uri` served over HTTPS by a local server with its own CA: a
/// new key id is picked up without a restart, the old key works until it leaves the JWKS, and
/// unknown key ids refetch at most once per interval.
#[tokio::test]
async fn a_rotated_key_is_picked_up_from_the_jwks_uri_without_a_restart() {
    let ns = "lidrot";
    let dir = tempfile::tempdir().unwrap();
    let fixtures = IdentityFixtures::make(dir.path(), &format!("{ns}_alice"), &["devs"]);
    let server = scratch_login::JwksServer::start(dir.path());
    let config = config_yaml(ns).await
        + &format!(
            "identity:\n  required: true\n  issuers:\n    - {{preset: teleport, issuer: {}, audience: {}, jwks_uri: \"{}\"}}\n",
            fixtures.teleport_issuer,
            fixtures.audience,
            server.url("jwks.json")
        );
    let jwks = autouser_aws::jwks::JwksCache::with_ca_file(&server.ca_file).unwrap();
    // Refetched on every unknown key id; a set kept 2 seconds at most.
    let jwks = jwks.with_timing(std::time::Duration::ZERO, std::time::Duration::from_secs(2));
    let state = state_of(&config).with_jwks(jwks.clone());
    let start = |session: &str, token: &str| event(session, Some(&fixtures.token(token)), json!({}));

    assert_eq!(
        invoke(&state, Function::SessionStart, start("s1", "teleport_RS256")).await.unwrap()["status"],
        "active"
    );
    assert_eq!(jwks.fetches(), 1);
    assert_eq!(
        invoke(&state, Function::SessionStart, start("s2", "teleport_ES256")).await.unwrap()["status"],
        "active"
    );
    assert_eq!(jwks.fetches(), 1, "a known key id is served from the cache");
    let err = invoke(&state, Function::SessionStart, start("s3", "unknown_kid")).await.unwrap_err();
    assert!(err.message.contains("check `unknown_key`"), "{}", err.message);
    assert_eq!(jwks.fetches(), 2, "an unknown key id refetched the JWKS once");

    // The issuer adds a key: its tokens are accepted, the old key still is.
    std::fs::copy(dir.path().join("jwks_rotated.json"), dir.path().join("jwks.json")).unwrap();
    assert_eq!(invoke(&state, Function::SessionStart, start("s4", "unknown_kid")).await.unwrap()["status"], "active");
    assert_eq!(
        invoke(&state, Function::SessionStart, start("s5", "teleport_RS256")).await.unwrap()["status"],
        "active"
    );
    // The old keys leave the JWKS: their tokens are refused once the cached set is too old.
    std::fs::copy(dir.path().join("jwks_rotated_only.json"), dir.path().join("jwks.json")).unwrap();
    assert_eq!(
        invoke(&state, Function::SessionStart, start("s6", "teleport_ES256")).await.unwrap()["status"],
        "active"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let err = invoke(&state, Function::SessionStart, start("s6b", "teleport_EdDSA")).await.unwrap_err();
    assert!(err.message.contains("check `unknown_key`"), "{}", err.message);

    // With the default interval (a minute), unknown key ids do not refetch within the minute.
    let slow = autouser_aws::jwks::JwksCache::with_ca_file(&server.ca_file).unwrap();
    let state = state_of(&config).with_jwks(slow.clone());
    assert_eq!(invoke(&state, Function::SessionStart, start("s7", "unknown_kid")).await.unwrap()["status"], "active");
    for session in ["s8", "s9", "s10"] {
        let err = invoke(&state, Function::SessionStart, start(session, "teleport_RS256")).await.unwrap_err();
        assert!(err.message.contains("check `unknown_key`"), "{}", err.message);
    }
    assert_eq!(slow.fetches(), 1, "unknown key ids within a minute of a fetch do not refetch");
}

/// Keys kept where the config can be kept: an SSM parameter and an S3 object, in the local
/// AWS emulator.
#[tokio::test]
async fn keys_in_an_ssm_parameter_or_an_s3_object_verify_tokens() {
    let ns = "lidaws";
    let dir = tempfile::tempdir().unwrap();
    let fixtures = IdentityFixtures::make(dir.path(), &format!("{ns}_alice"), &["devs"]);
    let jwks = std::fs::read_to_string(&fixtures.jwks_file).unwrap();
    let sdk = Moto::global().sdk_config(None).await;
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name("/lidaws/jwks")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .value(&jwks)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let s3 = aws_sdk_s3::Client::new(&sdk);
    s3.create_bucket().bucket("lidaws-keys").send().await.unwrap();
    s3.put_object().bucket("lidaws-keys").key("jwks.json").body(jwks.into_bytes().into()).send().await.unwrap();
    let config = config_yaml(ns).await
        + &format!(
            "identity:\n  required: true\n  issuers:\n    \
             - {{preset: teleport, issuer: {}, audience: {}, jwks_ssm_parameter: /lidaws/jwks}}\n    \
             - {{preset: oidc, issuer: \"{}\", audience: {}, jwks_s3_uri: \"s3://lidaws-keys/jwks.json\"}}\n",
            fixtures.teleport_issuer, fixtures.audience, fixtures.oidc_issuer, fixtures.audience
        );
    let state = State::new(crate::parse_config(&config), autouser_aws::AwsContext::new(sdk), "autouser".into());
    for token in ["teleport_RS256", "oidc_ES256"] {
        let started = invoke(&state, Function::SessionStart, event(token, Some(&fixtures.token(token)), json!({})))
            .await
            .unwrap();
        assert_eq!(started["status"], "active", "{token}: {started}");
    }
    let err =
        invoke(&state, Function::SessionStart, event("s", Some(&fixtures.token("tampered_signature")), json!({})))
            .await
            .unwrap_err();
    assert!(err.message.contains("check `signature`"), "{}", err.message);
}

/// Records that leave `user` out for the token's stay in order too: the person the token
/// names is held behind their first transient failure, and another person's record goes on.
#[tokio::test]
async fn a_batch_holds_a_tokens_person_behind_their_first_transient_failure() {
    let ns = "lidb";
    let dir = tempfile::tempdir().unwrap();
    let (state, fixtures) = identity_state(ns, dir.path()).await;
    let token = fixtures.token("teleport_RS256");
    // `down` is a configured database nobody listens for: a transient failure.
    let on_down = event("s1", Some(&token), json!({"database": "down"}));
    let on_main = event("s2", Some(&token), json!({}));
    let other = event("s3", Some(&fixtures.token("other_user")), json!({}));
    let batch =
        sqs(&[("m-down", on_down.to_string()), ("m-main", on_main.to_string()), ("m-other", other.to_string())]);
    let response = invoke(&state, Function::SessionStart, batch).await.unwrap();
    assert_eq!(response, json!({"batchItemFailures": [{"itemIdentifier": "m-down"}, {"itemIdentifier": "m-main"}]}));
    assert_eq!(can_login(&format!("{ns}_alice")).await, None, "alice's later record was not applied");
    assert_eq!(can_login(&format!("{ns}_alice_other")).await, Some(true), "another person's record goes on");
}
