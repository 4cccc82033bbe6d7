//! The three shapes a function is invoked with, told apart without I/O:
//! 1. a direct invoke: the session event itself (as `autouser --event`);
//! 2. an EventBridge event whose `detail` is the session event;
//! 3. an SQS batch whose records' bodies are either of the above (EventBridge → SQS → Lambda),
//!    or the invocation record of a failed asynchronous invoke of either, which Lambda's
//!    on-failure destination put in the queue (its `requestPayload` is what was invoked).

use serde_json::Value;

/// Which function is running; it decides the expected EventBridge `detail-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    SessionStart,
    SessionEnd,
}

impl Function {
    /// The function's name, as in logs, metrics and audit events.
    pub fn name(self) -> &'static str {
        match self {
            Function::SessionStart => "session-start",
            Function::SessionEnd => "session-end",
        }
    }

    pub fn detail_type(self) -> &'static str {
        match self {
            Function::SessionStart => "Database Session Started",
            Function::SessionEnd => "Database Session Ended",
        }
    }
}

/// One invocation's payload, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// The session event; the caller waits for the outcome.
    Direct(Value),
    EventBridge(Value),
    Sqs(Vec<SqsRecord>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqsRecord {
    pub message_id: String,
    /// The session event, or why the record cannot be one.
    pub event: Result<Value, InputError>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(
        "EventBridge event has source {found:?}, expected {expected:?}: set AUTOUSER_EVENT_SOURCE or fix the rule"
    )]
    WrongSource { found: String, expected: String },
    #[error("EventBridge event has detail-type {found:?}; this function handles {expected:?}: fix the rule")]
    WrongDetailType { found: String, expected: &'static str },
    #[error("EventBridge event has no object `detail`")]
    MissingDetail,
    #[error("SQS record {message_id} is not JSON: {reason}")]
    SqsBodyNotJson { message_id: String, reason: String },
    #[error("payload is not a JSON object: send the session event, an EventBridge event or an SQS batch")]
    NotAnObject,
}

/// Classifies a payload. EventBridge events must come from `source` with this function's
/// detail type; anything else is refused rather than guessed at.
pub fn classify(payload: Value, function: Function, source: &str) -> Result<Invocation, InputError> {
    if !payload.is_object() {
        return Err(InputError::NotAnObject);
    }
    if let Some(records) = payload.get("Records").and_then(Value::as_array) {
        if records.iter().all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs")) {
            let records = records.iter().map(|record| sqs_record(record, function, source)).collect();
            return Ok(Invocation::Sqs(records));
        }
    }
    if payload.get("detail-type").is_some() && payload.get("source").is_some() {
        return eventbridge_detail(&payload, function, source).map(Invocation::EventBridge);
    }
    Ok(Invocation::Direct(payload))
}

fn eventbridge_detail(envelope: &Value, function: Function, source: &str) -> Result<Value, InputError> {
    let found_source = envelope.get("source").and_then(Value::as_str).unwrap_or_default();
    if found_source != source {
        return Err(InputError::WrongSource { found: found_source.to_string(), expected: source.to_string() });
    }
    let detail_type = envelope.get("detail-type").and_then(Value::as_str).unwrap_or_default();
    if detail_type != function.detail_type() {
        return Err(InputError::WrongDetailType { found: detail_type.to_string(), expected: function.detail_type() });
    }
    match envelope.get("detail") {
        Some(detail) if detail.is_object() => Ok(detail.clone()),
        _ => Err(InputError::MissingDetail),
    }
}

fn sqs_record(record: &Value, function: Function, source: &str) -> SqsRecord {
    let message_id = record.get("messageId").and_then(Value::as_str).unwrap_or_default().to_string();
    let body = record.get("body").and_then(Value::as_str).unwrap_or_default();
    let event = serde_json::from_str::<Value>(body)
        .map_err(|e| InputError::SqsBodyNotJson { message_id: message_id.clone(), reason: e.to_string() })
        .map(|body| match body {
            Value::Object(mut record)
                if record.contains_key("requestContext") && record.contains_key("requestPayload") =>
            {
                record.remove("requestPayload").expect("checked above")
            }
            body => body,
        })
        .and_then(|body| {
            if body.get("detail-type").is_some() && body.get("source").is_some() {
                eventbridge_detail(&body, function, source)
            } else {
                Ok(body)
            }
        });
    SqsRecord { message_id, event }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"session_id": "s1", "user": "alice", "database": "orders", "db_name": "app", "roles": ["r"]})
    }

    fn envelope(source: &str, detail_type: &str) -> Value {
        json!({"version": "0", "id": "e1", "source": source, "detail-type": detail_type,
               "account": "123456789012", "region": "us-east-1", "time": "2026-11-24T00:00:00Z",
               "resources": [], "detail": event()})
    }

    #[test]
    fn a_session_event_is_a_direct_invoke() {
        assert_eq!(classify(event(), Function::SessionStart, "autouser").unwrap(), Invocation::Direct(event()));
    }

    #[test]
    fn eventbridge_detail_is_the_session_event() {
        let invocation = classify(envelope("autouser", "Database Session Started"), Function::SessionStart, "autouser");
        assert_eq!(invocation.unwrap(), Invocation::EventBridge(event()));
    }

    #[test]
    fn eventbridge_from_another_source_or_of_another_type_is_refused() {
        let wrong_source = classify(envelope("other", "Database Session Started"), Function::SessionStart, "autouser");
        assert!(matches!(wrong_source, Err(InputError::WrongSource { .. })));
        let wrong_type = classify(envelope("autouser", "Database Session Started"), Function::SessionEnd, "autouser");
        assert!(matches!(wrong_type, Err(InputError::WrongDetailType { .. })));
    }

    #[test]
    fn sqs_records_carry_eventbridge_envelopes_or_events() {
        let batch = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": envelope("autouser", "Database Session Ended").to_string()},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": event().to_string()},
            {"messageId": "m3", "eventSource": "aws:sqs", "body": "{not json"},
        ]});
        let Invocation::Sqs(records) = classify(batch, Function::SessionEnd, "autouser").unwrap() else {
            panic!("an SQS batch")
        };
        assert_eq!(records[0].event, Ok(event()));
        assert_eq!(records[1].event, Ok(event()));
        assert!(matches!(records[2].event, Err(InputError::SqsBodyNotJson { .. })));
        assert_eq!(records[2].message_id, "m3");
    }

    /// What Lambda's on-failure destination puts in the queue for a failed asynchronous
    /// invoke: the invocation record, whose `requestPayload` is what the function was sent.
    fn invocation_record(payload: Value) -> String {
        json!({"version": "1.0", "timestamp": "2026-11-24T10:00:00.000Z",
               "requestContext": {"requestId": "r1", "condition": "RetriesExhausted", "approximateInvokeCount": 1,
                                  "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:session-end:$LATEST"},
               "requestPayload": payload,
               "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
               "responsePayload": {"errorType": "DatabaseUnreachable", "errorMessage": "x"}})
        .to_string()
    }

    #[test]
    fn sqs_records_of_failed_asynchronous_invokes_carry_what_was_invoked() {
        let batch = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": invocation_record(event())},
            {"messageId": "m2", "eventSource": "aws:sqs",
             "body": invocation_record(envelope("autouser", "Database Session Ended"))},
            {"messageId": "m3", "eventSource": "aws:sqs",
             "body": invocation_record(envelope("autouser", "Database Session Started"))},
        ]});
        let Invocation::Sqs(records) = classify(batch, Function::SessionEnd, "autouser").unwrap() else {
            panic!("an SQS batch")
        };
        assert_eq!(records[0].event, Ok(event()));
        assert_eq!(records[1].event, Ok(event()));
        assert!(matches!(records[2].event, Err(InputError::WrongDetailType { .. })));
    }

    #[test]
    fn non_objects_are_refused() {
        assert_eq!(classify(json!([1]), Function::SessionStart, "autouser"), Err(InputError::NotAnObject));
    }
}
