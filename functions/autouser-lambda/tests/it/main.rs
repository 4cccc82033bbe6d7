//! The handler, called directly with real payloads, against a throwaway PostgreSQL.

mod audit;
mod batches;
mod config_source;
mod discovery;
mod identity;
mod reaper;
mod replica;
mod runtime;

use autouser_aws::{AwsContext, SdkConfig};
use autouser_engine::tokio_postgres::Client;
use autouser_lambda::{handle, Function, State};
use autouser_policy::config::Config;
use lambda_runtime::{Context, LambdaEvent};

use serde_json::{json, Value};

use scratch_login::test_cluster as cluster;

async fn superuser() -> Client {
    scratch_login::superuser(cluster(), "postgres").await
}

/// A connection as `user`, with its client certificate.
async fn connect_as(user: &str) -> Result<Client, autouser_engine::Error> {
    scratch_login::connect(cluster(), user, "postgres").await
}

/// A container's state for a test; see [`config_yaml`].
async fn state(ns: &str) -> State {
    state_of(&config_yaml(ns).await)
}

fn state_of(config_yaml: &str) -> State {
    State::new(parse_config(config_yaml), no_aws(), "autouser".into())
}

fn parse_config(config_yaml: &str) -> Config {
    Config::parse(scratch_login::schema_checked(config_yaml), std::path::Path::new("/")).unwrap()
}

/// No AWS is called for the test databases; the SDK configuration is empty.
fn no_aws() -> AwsContext {
    AwsContext::new(SdkConfig::builder().behavior_version(autouser_aws::BehaviorVersion::latest()).build())
}

/// The config of a test, whose objects it creates: admin `<ns>_admin` (cert), group
/// `<ns>_grp`, role `<ns>_reader`, database `main`; and `down`, a database nobody listens for.
async fn config_yaml(ns: &str) -> String {
    config_yaml_on_port(ns, cluster().port()).await
}

/// [`config_yaml`] with the `main` database reached on `port` (a proxy in front of the cluster).
async fn config_yaml_on_port(ns: &str, port: u16) -> String {
    let admin = format!("{ns}_admin");
    let mut sql = format!("CREATE ROLE {admin} LOGIN CREATEROLE; CREATE ROLE {ns}_reader;");
    if cluster().major() >= 16 {
        sql.push_str(&format!("GRANT {ns}_reader TO {admin} WITH ADMIN OPTION;"));
    }
    superuser().await.batch_execute(&sql).await.unwrap();
    let main = scratch_login::database_yaml(cluster(), port, "main", &admin).unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = scratch_login::database_yaml(cluster(), closed_port, "down", &admin).unwrap();
    format!(
        r#"managed_group: {ns}_grp
databases:
{main}{down}roles:
  - kind: role
    version: v7
    metadata: {{name: devs}}
    spec:
      options: {{create_db_user_mode: keep}}
      allow: {{db_labels: {{"*": "*"}}, db_names: ["*"], db_roles: [{ns}_reader]}}
"#
    )
}

fn session(ns: &str, session: &str, user: &str) -> Value {
    json!({"session_id": session, "user": format!("{ns}_{user}"), "roles": ["devs"],
           "database": "main", "db_name": "postgres"})
}

fn eventbridge(detail_type: &str, detail: Value) -> Value {
    json!({"version": "0", "id": "9d2c", "detail-type": detail_type, "source": "autouser",
           "account": "123456789012", "time": "2026-11-24T10:00:00Z", "region": "us-east-1",
           "resources": [], "detail": detail})
}

fn sqs(records: &[(&str, String)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| {
            json!({"messageId": id, "receiptHandle": "h", "body": body, "attributes": {},
                   "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                   "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sessions", "awsRegion": "us-east-1"})
        })
        .collect();
    json!({"Records": records})
}

async fn invoke(state: &State, function: Function, payload: Value) -> Result<Value, autouser_lambda::FunctionError> {
    handle(state, function, LambdaEvent::new(payload, Context::default())).await
}

async fn can_login(user: &str) -> Option<bool> {
    let rows = superuser().await.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&user]).await.unwrap();
    rows.first().map(|r| r.get(0))
}

#[tokio::test]
async fn direct_invoke_answers_with_the_cli_result() {
    let state = state("ld").await;
    let started = invoke(&state, Function::SessionStart, session("ld", "s1", "alice")).await.unwrap();
    assert_eq!(started["status"], "active");
    assert_eq!(started["db_user"], "ld_alice");
    assert_eq!(can_login("ld_alice").await, Some(true));
    let ended = invoke(&state, Function::SessionEnd, session("ld", "s1", "alice")).await.unwrap();
    assert_eq!(ended["status"], "deactivated");
    assert_eq!(can_login("ld_alice").await, Some(false));
}

#[tokio::test]
async fn direct_invoke_refusal_is_a_typed_error() {
    let state = state("lr").await;
    superuser().await.batch_execute("CREATE ROLE lr_bob LOGIN").await.unwrap();
    let err = invoke(&state, Function::SessionStart, session("lr", "s1", "bob")).await.unwrap_err();
    assert_eq!(err.kind, "UserConflict");
    assert!(err.message.contains("lr_bob"), "{}", err.message);
    let diagnostic = lambda_runtime::Diagnostic::from(err);
    assert_eq!(diagnostic.error_type, "UserConflict");
}

#[tokio::test]
async fn eventbridge_events_are_applied_and_permanent_refusals_are_not_retried() {
    let state = state("le").await;
    let start = eventbridge("Database Session Started", session("le", "s1", "carol"));
    assert_eq!(invoke(&state, Function::SessionStart, start).await.unwrap()["status"], "active");
    // A refusal would fail the same way on every retry: it is answered, not raised.
    superuser().await.batch_execute("CREATE ROLE le_dan LOGIN").await.unwrap();
    let refused =
        invoke(&state, Function::SessionStart, eventbridge("Database Session Started", session("le", "s2", "dan")))
            .await
            .unwrap();
    assert_eq!(refused["status"], "refused");
    assert_eq!(refused["kind"], "UserConflict");
    // An event for the other function is a misrouted rule.
    let misrouted =
        invoke(&state, Function::SessionEnd, eventbridge("Database Session Started", session("le", "s1", "carol")))
            .await;
    assert_eq!(misrouted.unwrap_err().kind, "EventInvalid");
    // A transient failure fails the invocation, so that Lambda retries it.
    let mut down = session("le", "s3", "erin");
    down["database"] = json!("down");
    let err = invoke(&state, Function::SessionStart, eventbridge("Database Session Started", down)).await.unwrap_err();
    assert_eq!(err.kind, "DatabaseUnreachable");
}

#[tokio::test]
async fn sqs_batch_reports_only_retryable_records() {
    let state = state("ls").await;
    let mut down = session("ls", "s3", "gus");
    down["database"] = json!("down");
    let batch = sqs(&[
        ("m-good", eventbridge("Database Session Started", session("ls", "s1", "fay")).to_string()),
        ("m-garbage", "{not json".to_string()),
        ("m-malformed", json!({"session_id": "s2", "user": "x", "roles": ["devs"], "database": "main"}).to_string()),
        ("m-down", down.to_string()),
    ]);
    let response = invoke(&state, Function::SessionStart, batch).await.unwrap();
    assert_eq!(response, json!({"batchItemFailures": [{"itemIdentifier": "m-down"}]}));
    assert_eq!(can_login("ls_fay").await, Some(true));
}

/// At-least-once delivery, in any order: an end before its start, duplicates, a start
/// redelivered after its end. Nobody is left able to log in, and nothing is retried.
#[tokio::test]
async fn duplicated_and_reordered_deliveries_converge() {
    let state = state("lo").await;
    let start = || eventbridge("Database Session Started", session("lo", "s1", "hal"));
    let end = || eventbridge("Database Session Ended", session("lo", "s1", "hal"));
    assert_eq!(invoke(&state, Function::SessionEnd, end()).await.unwrap()["status"], "noop");
    assert_eq!(can_login("lo_hal").await, None, "an early end creates nothing");
    // The end was recorded: its start, arriving after it, opens no session (no orphan).
    for _ in 0..2 {
        let early = invoke(&state, Function::SessionStart, start()).await.unwrap();
        assert_eq!(early["kind"], "SessionAlreadyEnded", "{early}");
        assert_eq!(can_login("lo_hal").await, None, "the start after its end creates nothing");
    }
    assert_eq!(invoke(&state, Function::SessionEnd, end()).await.unwrap()["status"], "noop");
    // The next session, in order, with duplicates.
    let start = || eventbridge("Database Session Started", session("lo", "s2", "hal"));
    let end = || eventbridge("Database Session Ended", session("lo", "s2", "hal"));
    assert_eq!(invoke(&state, Function::SessionStart, start()).await.unwrap()["status"], "active");
    assert_eq!(invoke(&state, Function::SessionStart, start()).await.unwrap()["already_active"], true);
    assert_eq!(invoke(&state, Function::SessionEnd, end()).await.unwrap()["status"], "deactivated");
    assert_eq!(invoke(&state, Function::SessionEnd, end()).await.unwrap()["status"], "noop");
    let late = invoke(&state, Function::SessionStart, start()).await.unwrap();
    assert_eq!(late["kind"], "SessionAlreadyEnded");
    assert_eq!(can_login("lo_hal").await, Some(false));
}

/// Warm invocations reuse the admin connection: 100 in a row open one.
#[tokio::test]
async fn one_hundred_warm_invocations_open_one_admin_connection() {
    let state = state("lw").await;
    for i in 0..50 {
        let event = session("lw", &format!("s{i}"), "ivy");
        assert_eq!(invoke(&state, Function::SessionStart, event.clone()).await.unwrap()["status"], "active");
        assert_eq!(invoke(&state, Function::SessionEnd, event).await.unwrap()["status"], "deactivated");
    }
    assert_eq!(state.connections_opened(), 1);
    let open: i64 = superuser()
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'lw_admin'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "one admin connection stays open for the next invocation");
}

/// A connection that died while the container was idle is replaced, and the invocation works.
#[tokio::test]
async fn dead_pooled_connection_is_replaced() {
    let state = state("lx").await;
    let event = session("lx", "s1", "jo");
    invoke(&state, Function::SessionStart, event.clone()).await.unwrap();
    superuser()
        .await
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'lx_admin'")
        .await
        .unwrap();
    let ended = invoke(&state, Function::SessionEnd, event).await.unwrap();
    assert_eq!(ended["status"], "deactivated");
    assert_eq!(state.connections_opened(), 2);
}

/// A container serving sessions in many databases (the admin logs in to each session's own
/// database) keeps at most `MAX_POOLED_CONNECTIONS` admin connections open, not one per
/// database name.
#[tokio::test]
async fn the_pool_keeps_a_bounded_number_of_connections() {
    use autouser_lambda::pool::MAX_POOLED_CONNECTIONS;
    let databases = MAX_POOLED_CONNECTIONS + 4;
    let yaml = config_yaml("lpool").await.replace("default_database: postgres", "");
    let state = state_of(&yaml);
    let superuser = superuser().await;
    for i in 0..databases {
        superuser.batch_execute(&format!("CREATE DATABASE lpool_db{i}")).await.unwrap();
    }
    for i in 0..databases {
        let mut event = session("lpool", &format!("s{i}"), &format!("u{i}"));
        event["db_name"] = json!(format!("lpool_db{i}"));
        invoke(&state, Function::SessionStart, event).await.unwrap();
    }
    assert_eq!(state.connections_opened(), databases);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open: i64 = superuser
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'lpool_admin'", &[])
            .await
            .unwrap()
            .get(0);
        if open as usize <= MAX_POOLED_CONNECTIONS {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{open} admin connections stay open");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `best_effort_reassign_and_drop` through the handler: the end hands over what the user made
/// in a second database on a connection there that the pool keeps, so two such ends open two
/// admin connections in all (the session's database and the second), not one per end.
#[tokio::test]
async fn a_hand_over_reaches_another_database_through_the_pool() {
    let yaml = config_yaml("ly")
        .await
        .replace("create_db_user_mode: keep", "create_db_user_mode: best_effort_reassign_and_drop")
        .replace("managed_group: ly_grp", "managed_group: ly_grp\nobject_inheritor: ly_heir");
    let state = state_of(&yaml);
    superuser().await.batch_execute("CREATE DATABASE ly_b").await.unwrap();
    scratch_login::superuser(cluster(), "ly_b")
        .await
        .batch_execute("GRANT USAGE, CREATE ON SCHEMA public TO ly_reader")
        .await
        .unwrap();
    for person in ["ann", "ben"] {
        let event = session("ly", "s1", person);
        assert_eq!(invoke(&state, Function::SessionStart, event.clone()).await.unwrap()["status"], "active");
        let user = format!("ly_{person}");
        let there = scratch_login::connect(cluster(), &user, "ly_b").await.unwrap();
        there
            .batch_execute(&format!(
                "CREATE TABLE public.{person}_notes (body text); INSERT INTO public.{person}_notes VALUES ('x')"
            ))
            .await
            .unwrap();
        drop(there);
        let ended = invoke(&state, Function::SessionEnd, event).await.unwrap();
        assert_eq!(ended["status"], "dropped", "{ended}");
        assert_eq!(can_login(&user).await, None, "dropped");
    }
    assert_eq!(state.connections_opened(), 2, "the second database's connection was kept for the second end");
    let owners: Vec<String> = scratch_login::superuser(cluster(), "ly_b")
        .await
        .query(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname LIKE '%_notes' ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(owners, ["ly_heir", "ly_heir"]);
}
