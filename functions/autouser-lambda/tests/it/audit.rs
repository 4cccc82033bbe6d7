//! Audit events reach an EventBridge bus in the local AWS emulator: a rule forwards the bus's
//! events to an SQS queue, which the test reads.

use autouser_lambda::audit::{self, Auditor};
use autouser_lambda::{Function, State};
use scratch_aws::Moto;
use serde_json::{json, Value};

use crate::{can_login, cluster, config_yaml_on_port, eventbridge, invoke, parse_config, session, state, superuser};

/// A bus `<name>` whose events with source `<name>.audit` land in the queue `<name>`; the queue's URL.
pub async fn bus_into_queue(name: &str) -> String {
    let sdk = Moto::global().sdk_config(None).await;
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    events.create_event_bus().name(name).send().await.unwrap();
    let queue_url = sqs.create_queue().queue_name(name).send().await.unwrap().queue_url.unwrap();
    let queue_arn = format!("arn:aws:sqs:{}:123456789012:{name}", scratch_aws::REGION);
    events
        .put_rule()
        .name(format!("{name}-all"))
        .event_bus_name(name)
        .event_pattern(json!({"source": [format!("{name}.audit")]}).to_string())
        .send()
        .await
        .unwrap();
    let target = aws_sdk_eventbridge::types::Target::builder().id("queue").arn(queue_arn).build().unwrap();
    events.put_targets().rule(format!("{name}-all")).event_bus_name(name).targets(target).send().await.unwrap();
    queue_url
}

/// Every event in the queue, in arrival order.
pub async fn drain(queue_url: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(&Moto::global().sdk_config(None).await);
    let mut events = Vec::new();
    loop {
        let output = sqs.receive_message().queue_url(queue_url).max_number_of_messages(10).send().await.unwrap();
        if output.messages().is_empty() {
            return events;
        }
        for message in output.messages() {
            events.push(serde_json::from_str(message.body().unwrap()).unwrap());
        }
    }
}

async fn audited_state(ns: &str, bus: &str) -> State {
    let sdk = Moto::global().sdk_config(None).await;
    state(ns).await.with_auditor(Auditor::to_bus(&sdk, bus.to_string(), format!("{bus}.audit")))
}

#[tokio::test]
async fn every_outcome_puts_its_audit_event_on_the_bus() {
    let queue = bus_into_queue("audit-outcomes").await;
    let state = audited_state("la", "audit-outcomes").await;
    superuser().await.batch_execute("CREATE ROLE la_mallory LOGIN").await.unwrap();

    let alice = session("la", "s1", "alice");
    invoke(&state, Function::SessionStart, eventbridge("Database Session Started", alice.clone())).await.unwrap();
    invoke(&state, Function::SessionEnd, eventbridge("Database Session Ended", alice)).await.unwrap();
    // A name conflict and an event that is not a session event: refusals, not retried.
    invoke(&state, Function::SessionStart, eventbridge("Database Session Started", session("la", "s2", "mallory")))
        .await
        .unwrap();
    invoke(&state, Function::SessionStart, json!({"session_id": "s3", "user": "la_nobody"})).await.unwrap_err();

    let events = drain(&queue).await;
    let types: Vec<&str> = events.iter().map(|e| e["detail-type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "Database User Activated",
            "Database User Deactivated",
            "Database Session Refused",
            "Database Session Refused"
        ]
    );
    assert!(events.iter().all(|e| e["source"] == "audit-outcomes.audit"), "{events:#?}");

    let activated = &events[0]["detail"];
    assert_eq!(activated["user"], "la_alice");
    assert_eq!(activated["db_user"], "la_alice");
    assert_eq!(activated["database"], "main");
    assert_eq!(activated["db_name"], "postgres");
    assert_eq!(activated["session_id"], "s1");
    assert_eq!(activated["roles"], json!(["la_reader"]));
    assert_eq!(activated["access_roles"], json!(["devs"]));
    assert_eq!(activated["mode"], "keep");
    assert_eq!(events[1]["detail"]["db_user"], "la_alice");
    assert_eq!(events[1]["detail"]["roles"], json!([]));

    let conflict = &events[2]["detail"];
    assert_eq!(conflict["kind"], "UserConflict");
    assert_eq!(conflict["user"], "la_mallory");
    assert!(conflict["reason"].as_str().unwrap().contains("la_mallory"), "{conflict}");
    let malformed = &events[3]["detail"];
    assert_eq!(malformed["kind"], "EventInvalid");
    assert_eq!(malformed["user"], "la_nobody");
    assert_eq!(malformed["session_id"], "s3");
}

/// A session-end whose COMMIT lands but whose reply is lost (the network fails at that
/// moment): the connection is dead, so the end runs again on a new one, finds the session
/// ended, and answers and audits what the first run did, not a `noop`.
#[tokio::test]
async fn an_end_whose_commit_reply_is_lost_is_still_audited() {
    let queue = bus_into_queue("audit-lost-reply").await;
    let proxy = scratch_postgres::RoundTripCounter::start(([127, 0, 0, 1], cluster().port()).into()).unwrap();
    let sdk = Moto::global().sdk_config(None).await;
    let state =
        State::new(parse_config(&config_yaml_on_port("lc", proxy.port()).await), crate::no_aws(), "autouser".into())
            .with_auditor(Auditor::to_bus(&sdk, "audit-lost-reply".into(), "audit-lost-reply.audit".into()));
    let alice = session("lc", "s1", "alice");
    let started = invoke(&state, Function::SessionStart, alice.clone()).await.unwrap();
    assert_eq!(started["status"], "active");

    // A warm end takes two round trips: the read, then the changes with their COMMIT.
    proxy.lose_the_reply_to_burst(2);
    let ended = invoke(&state, Function::SessionEnd, eventbridge("Database Session Ended", alice)).await.unwrap();
    assert_eq!(proxy.replies_lost(), 1, "the COMMIT's reply was lost");
    assert_eq!(state.connections_opened(), 2, "the end ran again on a new connection");
    assert_eq!(ended["status"], "deactivated", "{ended}");
    assert_eq!(can_login("lc_alice").await, Some(false));

    let events = drain(&queue).await;
    let types: Vec<&str> = events.iter().map(|e| e["detail-type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Database User Activated", "Database User Deactivated"], "{events:#?}");
    assert_eq!(events[1]["detail"]["session_id"], "s1");
    assert_eq!(events[1]["detail"]["mode"], "keep");
    let reason = events[1]["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("COMMIT reply was lost"), "{events:#?}");
}

/// A bus that cannot be reached loses no session: the change is made and the audit event is
/// in the log, with what to check.
#[tokio::test]
async fn a_missing_bus_does_not_fail_the_session() {
    let state = audited_state("lm", "no-such-bus").await;
    let log = LogBuffer::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt().json().with_writer(log.clone()).with_max_level(tracing::Level::INFO).finish(),
    );
    let started = invoke(&state, Function::SessionStart, session("lm", "s1", "nina")).await.unwrap();
    assert_eq!(started["status"], "active");
    let log = log.text();
    let failure = log
        .lines()
        .find(|line| line.contains("could not put the audit event"))
        .unwrap_or_else(|| panic!("no audit failure logged in:\n{log}"));
    assert!(failure.contains("Database User Activated") && failure.contains("lm_nina"), "{failure}");
    assert!(failure.contains("events:PutEvents"), "{failure}");
}

/// Many events recorded at once (a reaper run) go ten per `PutEvents` call: all of them
/// arrive; when the bus is missing, each one is logged as lost with its own detail.
#[tokio::test]
async fn many_events_recorded_at_once_all_arrive_or_are_each_logged_as_lost() {
    let users: Vec<String> = (0..23).map(|n| format!("batch_user_{n:02}")).collect();
    let events = || users.iter().map(|user| audit::of_locked_user("main", user)).collect::<Vec<_>>();
    let sdk = Moto::global().sdk_config(None).await;

    let queue = bus_into_queue("audit-batch").await;
    Auditor::to_bus(&sdk, "audit-batch".into(), "audit-batch.audit".into()).record_all("reaper", events()).await;
    let mut arrived: Vec<String> =
        drain(&queue).await.iter().map(|e| e["detail"]["db_user"].as_str().unwrap().to_string()).collect();
    arrived.sort();
    assert_eq!(arrived, users);

    let log = LogBuffer::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt().json().with_writer(log.clone()).with_max_level(tracing::Level::INFO).finish(),
    );
    Auditor::to_bus(&sdk, "no-such-batch-bus".into(), "x.audit".into()).record_all("reaper", events()).await;
    let log = log.text();
    let lost: Vec<&str> = log.lines().filter(|line| line.contains("could not put the audit event")).collect();
    assert_eq!(lost.len(), users.len(), "{log}");
    for (line, user) in lost.iter().zip(&users) {
        assert!(line.contains(user.as_str()), "{user} not in {line}");
    }
}

/// Log output captured in memory (the test runs on one thread, so a thread-local subscriber
/// sees all of it).
#[derive(Clone, Default)]
pub(crate) struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}
