//! The config kept in an SSM parameter (a SecureString) or an S3 object, in the local AWS
//! emulator: read at the container's start, read again once `AUTOUSER_CONFIG_TTL` has passed,
//! and a bad new version ignored (the last good one stays in use).

use std::collections::HashMap;
use std::time::Duration;

use autouser_aws::AwsContext;
use autouser_lambda::{Function, State};
use scratch_aws::Moto;

use crate::{config_yaml, invoke, session, superuser};

async fn state_from(vars: &[(&str, &str)]) -> Result<State, autouser_lambda::InitError> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let aws = AwsContext::new(Moto::global().sdk_config(None).await);
    State::from_vars(|name| vars.get(name).cloned(), aws, "session-start").await
}

/// The roles a start of `person` gets under the config in use.
async fn roles_of_a_start(state: &State, ns: &str, session_id: &str, person: &str) -> serde_json::Value {
    let started = invoke(state, Function::SessionStart, session(ns, session_id, person)).await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    started["db_roles"].clone()
}

/// A second role `<ns>_writer` the admin may grant, and the config that grants it too.
async fn with_writer(ns: &str, yaml: &str) -> String {
    let mut sql = format!("CREATE ROLE {ns}_writer;");
    if scratch_login::test_cluster().major() >= 16 {
        sql.push_str(&format!("GRANT {ns}_writer TO {ns}_admin WITH ADMIN OPTION;"));
    }
    superuser().await.batch_execute(&sql).await.unwrap();
    yaml.replace(&format!("db_roles: [{ns}_reader]"), &format!("db_roles: [{ns}_reader, {ns}_writer]"))
}

#[tokio::test]
async fn a_config_in_an_ssm_secure_string_is_reloaded_after_its_ttl_and_a_bad_version_ignored() {
    let ssm = aws_sdk_ssm::Client::new(&Moto::global().sdk_config(None).await);
    let put = |value: String| {
        let ssm = ssm.clone();
        async move {
            ssm.put_parameter()
                .name("/lv/config")
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .value(value)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        }
    };
    let first = config_yaml("lv").await;
    put(first.clone()).await;
    let state =
        state_from(&[("AUTOUSER_CONFIG_SSM_PARAMETER", "/lv/config"), ("AUTOUSER_CONFIG_TTL", "1s")]).await.unwrap();
    assert_eq!(roles_of_a_start(&state, "lv", "s1", "ann").await, serde_json::json!(["lv_reader"]));

    // An edit that does not load: logged, counted, and the last good config stays in use.
    put("databases: 7\n".to_string()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(roles_of_a_start(&state, "lv", "s2", "ben").await, serde_json::json!(["lv_reader"]));

    // A good edit is picked up once the TTL has passed, with no rebuild and no restart.
    put(with_writer("lv", &first).await).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(roles_of_a_start(&state, "lv", "s3", "cat").await, serde_json::json!(["lv_reader", "lv_writer"]));
}

#[tokio::test]
async fn a_config_in_an_s3_object_is_reloaded_when_it_changes() {
    let sdk = Moto::global().sdk_config(None).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket("lu-configs").send().await.unwrap();
    let put = |body: String| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("lu-configs")
                .key("pg-autouser/config.yaml")
                .body(body.into_bytes().into())
                .send()
                .await
                .unwrap();
        }
    };
    let first = config_yaml("lu").await;
    put(first.clone()).await;
    let state = state_from(&[
        ("AUTOUSER_CONFIG_S3_URI", "s3://lu-configs/pg-autouser/config.yaml"),
        ("AUTOUSER_CONFIG_TTL", "1s"),
    ])
    .await
    .unwrap();
    assert_eq!(roles_of_a_start(&state, "lu", "s1", "ann").await, serde_json::json!(["lu_reader"]));
    put(with_writer("lu", &first).await).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(roles_of_a_start(&state, "lu", "s2", "ben").await, serde_json::json!(["lu_reader", "lu_writer"]));
}

#[tokio::test]
async fn a_container_never_starts_without_a_config() {
    let missing = state_from(&[("AUTOUSER_CONFIG_SSM_PARAMETER", "/lv/no-such-parameter")]).await.err().unwrap();
    let message = missing.to_string();
    assert!(message.contains("/lv/no-such-parameter") && message.contains("ParameterNotFound"), "{message}");
    let ssm = aws_sdk_ssm::Client::new(&Moto::global().sdk_config(None).await);
    ssm.put_parameter()
        .name("/lv/invalid")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .value("databases: 7")
        .send()
        .await
        .unwrap();
    let invalid = state_from(&[("AUTOUSER_CONFIG_SSM_PARAMETER", "/lv/invalid")]).await.err().unwrap().to_string();
    assert!(invalid.contains("/lv/invalid") && invalid.contains("databases"), "{invalid}");
}
