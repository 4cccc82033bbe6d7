//! Signed identity (`identity:`) on the CLI: tokens made by PyJWT, keys by the `openssl`
//! command line (`scratch_login::IdentityFixtures`). A valid token of each algorithm and
//! preset starts a session; each refusal names its check and reaches no database.

use scratch_login::IdentityFixtures;
use serde_json::json;

use super::{autouser, setup, stderr, stdout_json, write, write_config};

/// A config trusting the fixtures' two issuers (teleport and oidc presets) over the role
/// `devs` of [`setup`], and the fixtures for `<ns>_alice` with roles `devs`.
async fn identity_setup(ns: &str, required_for_end: bool) -> (tempfile::TempDir, String, IdentityFixtures) {
    let (dir, config) = setup(ns).await;
    let fixtures = IdentityFixtures::make(&dir.path().join("idp"), &format!("{ns}_alice"), &["devs"]);
    let text = std::fs::read_to_string(&config).unwrap() + &fixtures.identity_yaml(true, required_for_end);
    let config = write_config(dir.path(), "identity.yaml", &text);
    (dir, config, fixtures)
}

fn event(session_id: &str, token: Option<&str>, extra: serde_json::Value) -> String {
    let mut event = json!({"session_id": session_id, "database": "main", "db_name": "postgres"});
    if let Some(token) = token {
        event["identity_token"] = json!(token);
    }
    for (key, value) in extra.as_object().unwrap() {
        event[key] = value.clone();
    }
    event.to_string()
}

async fn role_exists(name: &str) -> bool {
    let client = scratch_login::superuser(super::cluster(), "postgres").await;
    client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.unwrap().is_some()
}

#[tokio::test]
async fn a_valid_token_of_each_algorithm_and_preset_starts_a_session_as_the_tokens_person() {
    let ns = "cli_idok";
    let (_dir, config, fixtures) = identity_setup(ns, false).await;
    for preset in ["teleport", "oidc"] {
        for alg in ["RS256", "ES256", "EdDSA"] {
            let name = format!("{preset}_{alg}");
            // No `user` nor `roles` in the event: both come from the token.
            let start = event(&name, Some(&fixtures.token(&name)), json!({}));
            let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&start)));
            assert_eq!(started["status"], "active", "{name}");
            assert_eq!(started["db_user"], format!("{ns}_alice"), "{name}");
            assert_eq!(started["db_roles"], json!([format!("{ns}_reader")]), "{name}");
            // The event may name the person and roles too, when they are the token's.
            let same = event(
                &format!("{name}-named"),
                Some(&fixtures.token(&name)),
                json!({"user": format!("{ns}_alice"), "roles": ["devs"]}),
            );
            let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&same)));
            assert_eq!(started["status"], "active", "{name}");
            // Ends are accepted unsigned by default (`required_for_end: false`).
            for session in [name.clone(), format!("{name}-named")] {
                let end = event(&session, None, json!({"user": format!("{ns}_alice")}));
                let ended = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&end)));
                assert!(ended["status"] == "dropped" || ended["status"] == "in_use", "{name}: {ended}");
            }
        }
    }
    assert!(!role_exists(&format!("{ns}_alice")).await, "the last end dropped the user");
}

#[tokio::test]
async fn each_refused_token_names_its_check_and_changes_nothing() {
    let ns = "cli_idno";
    let (dir, config, fixtures) = identity_setup(ns, false).await;
    let alice = format!("{ns}_alice");
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", event("s", Some(&fixtures.token("expired")), json!({})), "expired"),
        ("not yet valid", event("s", Some(&fixtures.token("not_yet_valid")), json!({})), "not_yet_valid"),
        ("wrong iss", event("s", Some(&fixtures.token("wrong_iss")), json!({})), "issuer"),
        ("wrong aud", event("s", Some(&fixtures.token("wrong_aud")), json!({})), "audience"),
        ("unknown kid", event("s", Some(&fixtures.token("unknown_kid")), json!({})), "unknown_key"),
        ("unknown issuer", event("s", Some(&fixtures.token("unknown_issuer")), json!({})), "issuer"),
        ("tampered payload", event("s", Some(&fixtures.token("tampered_payload")), json!({})), "signature"),
        ("tampered signature", event("s", Some(&fixtures.token("tampered_signature")), json!({})), "signature"),
        ("alg none", event("s", Some(&fixtures.token("alg_none")), json!({})), "algorithm"),
        ("HS256 with the public key", event("s", Some(&fixtures.token("hs256_public_key")), json!({})), "algorithm"),
        ("no token", event("s", None, json!({"user": alice, "roles": ["devs"]})), "missing"),
        (
            "another user in the event",
            event("s", Some(&fixtures.token("teleport_RS256")), json!({"user": format!("{ns}_mallory")})),
            "user",
        ),
        (
            "other roles in the event",
            event("s", Some(&fixtures.token("oidc_ES256")), json!({"roles": ["devs", "admins"]})),
            "roles",
        ),
        (
            "an origin cluster the token does not name",
            event("s", Some(&fixtures.token("teleport_ES256")), json!({"origin_cluster": "leaf"})),
            "origin_cluster",
        ),
        (
            "other traits in the event",
            event(
                "s",
                Some(&fixtures.token("teleport_EdDSA")),
                json!({"traits": {"internal": {"db_roles": ["postgres"]}}}),
            ),
            "traits",
        ),
    ];
    // The server logs every statement of the admin: a refused start must leave none (it is
    // refused before the function logs in).
    let admin = format!("{ns}_admin");
    super::superuser_sql(&format!("ALTER ROLE \"{admin}\" SET log_statement = 'all'")).await;
    let log = super::cluster().log_path();
    let log_before = std::fs::metadata(&log).unwrap().len();
    for (case, start, check) in &cases {
        for command in ["session-start", "plan session-start"] {
            let mut args: Vec<&str> = command.split(' ').collect();
            args.extend(["--config", &config, "--event", "-"]);
            let output = autouser(&args, Some(start));
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(1), "{case}, {command}: {message}");
            assert!(message.contains("[IdentityUnverified]"), "{case}, {command}: {message}");
            assert!(message.contains(&format!("check `{check}`")), "{case}, {command}: {message}");
            // The token is never repeated back.
            let token = serde_json::from_str::<serde_json::Value>(start).unwrap()["identity_token"].clone();
            if let Some(token) = token.as_str() {
                let signature = token.rsplit('.').next().unwrap();
                let payload = token.split('.').nth(1).unwrap();
                assert!(!message.contains(payload), "{case}: the message quotes the token: {message}");
                assert!(signature.is_empty() || !message.contains(signature), "{case}: {message}");
            }
        }
    }
    assert!(!role_exists(&alice).await, "a refused start created the user");
    assert!(!role_exists(&format!("{ns}_mallory")).await, "a refused start created the user");
    let admin_lines = |from: u64| {
        let text = std::fs::read(&log).unwrap();
        let text = String::from_utf8_lossy(&text[from as usize..]).to_string();
        text.lines().filter(|line| line.contains(&format!("{admin}@"))).map(str::to_string).collect::<Vec<_>>()
    };
    let seen = admin_lines(log_before);
    assert!(seen.is_empty(), "a refused start reached the database: {seen:#?}");
    // The log does show the admin when a start is let through.
    let log_before = std::fs::metadata(&log).unwrap().len();
    let valid = event("logged", Some(&fixtures.token("teleport_RS256")), json!({}));
    let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&valid)));
    assert_eq!(started["status"], "active");
    let seen = admin_lines(log_before);
    assert!(seen.iter().any(|line| line.contains("statement:")), "the server logs the admin's statements: {seen:#?}");
    let end = event("logged", None, json!({"user": alice}));
    stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&end)));

    // A token whose JWKS is not the issuer's: another JWKS file, same kid, other keys.
    let other = IdentityFixtures::make(&dir.path().join("other-idp"), &alice, &["devs"]);
    let forged = event("s", Some(&other.token("teleport_RS256")), json!({}));
    let output = autouser(&["session-start", "--config", &config, "--event", "-"], Some(&forged));
    assert!(stderr(&output).contains("check `signature`"), "{}", stderr(&output));
    assert!(!role_exists(&alice).await);
}

#[tokio::test]
async fn required_for_end_refuses_an_unsigned_or_foreign_end() {
    let ns = "cli_idend";
    let (dir, config, fixtures) = identity_setup(ns, true).await;
    let alice = format!("{ns}_alice");
    let start = event("s1", Some(&fixtures.token("teleport_ES256")), json!({}));
    let started = stdout_json(&autouser(&["session-start", "--config", &config, "--event", "-"], Some(&start)));
    assert_eq!(started["status"], "active");

    let unsigned = event("s1", None, json!({"user": alice}));
    let output = autouser(&["session-end", "--config", &config, "--event", "-"], Some(&unsigned));
    assert!(stderr(&output).contains("[IdentityUnverified]"), "{}", stderr(&output));
    assert!(stderr(&output).contains("check `missing`"), "{}", stderr(&output));
    // Another person's valid token cannot end alice's session.
    let foreign = event("s1", Some(&fixtures.token("other_user")), json!({"user": alice}));
    let output = autouser(&["session-end", "--config", &config, "--event", "-"], Some(&foreign));
    assert!(stderr(&output).contains("check `user`"), "{}", stderr(&output));
    assert!(role_exists(&alice).await, "a refused end changed nothing");

    let end = event("s1", Some(&fixtures.token("oidc_EdDSA")), json!({}));
    let ended = stdout_json(&autouser(&["session-end", "--config", &config, "--event", "-"], Some(&end)));
    assert_eq!(ended["status"], "dropped");
    assert!(!role_exists(&alice).await);
    drop(dir);
}

#[tokio::test]
async fn a_config_refuses_an_http_jwks_uri_and_an_hmac_key() {
    let (dir, config) = setup("cli_idcfg").await;
    let base = std::fs::read_to_string(&config).unwrap();
    let http = base.clone()
        + "identity:\n  issuers:\n    - {issuer: idp, audience: pg, jwks_uri: \"http://idp.example.com/jwks.json\"}\n";
    let event_file = write(dir.path(), "e.json", &event("s", None, json!({"user": "x", "roles": ["devs"]})));
    let path = write(dir.path(), "http.yaml", &http);
    let output = autouser(&["session-start", "--config", &path, "--event", &event_file], None);
    assert_eq!(output.status.code(), Some(78), "{}", stderr(&output));
    assert!(stderr(&output).contains("identity.issuers[0].jwks_uri"), "{}", stderr(&output));

    let jwks = write(dir.path(), "hmac.json", r#"{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}"#);
    let hmac = base + &format!("identity:\n  issuers:\n    - {{issuer: idp, audience: pg, jwks_file: {jwks}}}\n");
    let path = write(dir.path(), "hmac.yaml", &hmac);
    let output = autouser(&["session-start", "--config", &path, "--event", &event_file], None);
    assert_eq!(output.status.code(), Some(78), "{}", stderr(&output));
    assert!(stderr(&output).contains("symmetric"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_jwks_uri_is_fetched_over_https_trusting_only_known_roots() {
    let ns = "cli_iduri";
    let (dir, config) = setup(ns).await;
    let fixtures = IdentityFixtures::make(&dir.path().join("idp"), &format!("{ns}_alice"), &["devs"]);
    let server = scratch_login::JwksServer::start(&fixtures.dir);
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "identity:\n  required: true\n  issuers:\n    - {{preset: teleport, issuer: {}, audience: {}, jwks_uri: \"{}\"}}\n",
            fixtures.teleport_issuer,
            fixtures.audience,
            server.url("jwks.json")
        );
    let config = write_config(dir.path(), "uri.yaml", &text);
    let trust_ca = [("SSL_CERT_FILE", server.ca_file.display().to_string())];
    let start = event("s1", Some(&fixtures.token("teleport_EdDSA")), json!({}));
    let args = ["session-start", "--config", &config, "--event", "-"];

    // The server's CA is not among the system's roots: no keys, nothing started.
    let output = autouser(&args, Some(&start));
    assert!(stderr(&output).contains("check `keys`"), "{}", stderr(&output));
    assert!(!role_exists(&format!("{ns}_alice")).await);

    let started = stdout_json(&super::autouser_with_env(&args, Some(&start), &trust_ca));
    assert_eq!(started["status"], "active");
    assert_eq!(started["db_user"], format!("{ns}_alice"));
    let output =
        super::autouser_with_env(&args, Some(&event("s2", Some(&fixtures.token("unknown_kid")), json!({}))), &trust_ca);
    assert!(stderr(&output).contains("check `unknown_key`"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_session_id_bound_to_the_token_must_be_the_events() {
    let ns = "cli_idsid";
    let (dir, config) = setup(ns).await;
    let fixtures = IdentityFixtures::make(&dir.path().join("idp"), &format!("{ns}_alice"), &["devs"]);
    // The OIDC tokens carry `"nonce": "n-1"`: the session they were issued for.
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "identity:\n  required: true\n  issuers:\n    - {{preset: oidc, issuer: \"{}\", audience: {}, jwks_file: {}, claims: {{session_id: nonce}}}}\n",
            fixtures.oidc_issuer,
            fixtures.audience,
            fixtures.jwks_file.display()
        );
    let config = write_config(dir.path(), "sid.yaml", &text);
    let args = ["session-start", "--config", &config, "--event", "-"];
    let other = event("s-other", Some(&fixtures.token("oidc_RS256")), json!({}));
    let output = autouser(&args, Some(&other));
    assert!(stderr(&output).contains("check `session_id`"), "{}", stderr(&output));
    assert!(!role_exists(&format!("{ns}_alice")).await);
    let bound = event("n-1", Some(&fixtures.token("oidc_RS256")), json!({}));
    assert_eq!(stdout_json(&autouser(&args, Some(&bound)))["status"], "active");
}
