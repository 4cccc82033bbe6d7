//! SQS batches: a user's records stay in order behind its first transient failure, and no
//! record starts that could not finish before the invocation's deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use autouser_lambda::{handle, Function, RECORD_TIME_BUDGET};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};

use crate::{can_login, config_yaml, eventbridge, invoke, session, sqs, state, state_of, superuser};

/// A context whose deadline is `remaining` from now, as Lambda's runtime API sets it.
fn context_with(remaining: Duration) -> Context {
    let deadline = SystemTime::now() + remaining;
    let mut context = Context::default();
    context.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    context
}

fn started(ns: &str, session_id: &str, user: &str, database: &str) -> String {
    let mut event = session(ns, session_id, user);
    event["database"] = json!(database);
    eventbridge("Database Session Started", event).to_string()
}

fn failures(response: &Value) -> Vec<&str> {
    response["batchItemFailures"].as_array().unwrap().iter().map(|f| f["itemIdentifier"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_users_later_records_wait_behind_its_first_transient_failure() {
    let state = state("lb").await;
    let batch = sqs(&[
        ("m-kim-down", started("lb", "s1", "kim", "down")),
        ("m-kim-main", started("lb", "s2", "kim", "main")),
        ("m-lee-main", started("lb", "s3", "lee", "main")),
    ]);
    let response =
        handle(&state, Function::SessionStart, LambdaEvent::new(batch, context_with(Duration::from_secs(600))))
            .await
            .unwrap();
    // kim's second record would succeed, but it must not overtake the first: both come back.
    assert_eq!(failures(&response), ["m-kim-down", "m-kim-main"]);
    assert_eq!(can_login("lb_kim").await, None, "kim's later record was not applied");
    assert_eq!(can_login("lb_lee").await, Some(true), "another user's record goes on");
}

#[tokio::test]
async fn records_that_could_not_finish_before_the_deadline_are_not_started() {
    let state = state("lk").await;
    let batch = || sqs(&[("m-mo", started("lk", "s1", "mo", "main")), ("m-ned", started("lk", "s2", "ned", "main"))]);
    let near = context_with(RECORD_TIME_BUDGET - Duration::from_secs(1));
    let response = handle(&state, Function::SessionStart, LambdaEvent::new(batch(), near)).await.unwrap();
    assert_eq!(failures(&response), ["m-mo", "m-ned"]);
    assert_eq!(can_login("lk_mo").await, None, "no record started");
    assert_eq!(can_login("lk_ned").await, None, "no record started");
    let ample = context_with(RECORD_TIME_BUDGET + Duration::from_secs(60));
    let response = handle(&state, Function::SessionStart, LambdaEvent::new(batch(), ample)).await.unwrap();
    assert_eq!(failures(&response), Vec::<&str>::new());
    assert_eq!(can_login("lk_mo").await, Some(true));
    assert_eq!(can_login("lk_ned").await, Some(true));
}

/// An end is what locks a user: a cause that is not the event's own (here the admin cannot log
/// in, as when RDS IAM authentication is throttled) is retried, not dropped, until it passes.
/// A start refused so is not retried: the proxy gave up on it.
#[tokio::test]
async fn an_end_is_retried_for_any_cause_that_is_not_its_own() {
    let yaml = config_yaml("lg").await;
    let ended = |session_id: &str| eventbridge("Database Session Ended", session("lg", session_id, "pat")).to_string();
    let started = |session_id: &str, user: &str| {
        eventbridge("Database Session Started", session("lg", session_id, user)).to_string()
    };
    let first = state_of(&yaml);
    let response = invoke(&first, Function::SessionStart, sqs(&[("m-start", started("s1", "pat"))])).await.unwrap();
    assert_eq!(failures(&response), Vec::<&str>::new());
    superuser().await.batch_execute("ALTER ROLE lg_admin NOLOGIN").await.unwrap();
    // A new container: its admin login is refused (AdminAuthFailed).
    let refused = state_of(&yaml);
    let response = invoke(&refused, Function::SessionEnd, sqs(&[("m-end", ended("s1"))])).await.unwrap();
    assert_eq!(failures(&response), ["m-end"], "the end comes back");
    let direct =
        invoke(&refused, Function::SessionEnd, eventbridge("Database Session Ended", session("lg", "s1", "pat")))
            .await
            .unwrap_err();
    assert_eq!(direct.kind, "AdminAuthFailed", "an EventBridge invoke fails, so that it is retried");
    let response =
        invoke(&refused, Function::SessionStart, sqs(&[("m-start-2", started("s2", "quin"))])).await.unwrap();
    assert_eq!(failures(&response), Vec::<&str>::new(), "a refused start is not retried");
    assert_eq!(can_login("lg_pat").await, Some(true));
    // The admin can log in again: the retried end locks the user.
    superuser().await.batch_execute("ALTER ROLE lg_admin LOGIN").await.unwrap();
    let response = invoke(&refused, Function::SessionEnd, sqs(&[("m-end", ended("s1"))])).await.unwrap();
    assert_eq!(failures(&response), Vec::<&str>::new());
    assert_eq!(can_login("lg_pat").await, Some(false));
}
