//! Putting events on an EventBridge bus: audit events and discovery reports.

use autouser_aws::SdkConfig;
use serde_json::Value;

/// `PutEvents` takes at most this many entries per call.
const MAX_ENTRIES_PER_CALL: usize = 10;

/// A bus (name or ARN) and the `source` of the events put on it.
pub struct EventBus {
    client: aws_sdk_eventbridge::Client,
    name: String,
    source: String,
}

impl EventBus {
    pub fn new(sdk: &SdkConfig, name: String, source: String) -> EventBus {
        EventBus { client: aws_sdk_eventbridge::Client::new(sdk), name, source }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts `events` (detail-type, detail), ten per call. Returns, for each event that was not
    /// accepted, its index and why.
    pub async fn put(&self, events: &[(&str, Value)]) -> Vec<(usize, String)> {
        let mut rejected = Vec::new();
        for (chunk_index, chunk) in events.chunks(MAX_ENTRIES_PER_CALL).enumerate() {
            let offset = chunk_index * MAX_ENTRIES_PER_CALL;
            let entries = chunk.iter().map(|(detail_type, detail)| {
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .event_bus_name(&self.name)
                    .source(&self.source)
                    .detail_type(*detail_type)
                    .detail(detail.to_string())
                    .build()
            });
            match self.client.put_events().set_entries(Some(entries.collect())).send().await {
                Err(e) => {
                    let reason = aws_sdk_eventbridge::error::DisplayErrorContext(e).to_string();
                    rejected.extend((0..chunk.len()).map(|i| (offset + i, reason.clone())));
                }
                Ok(output) => {
                    for (i, result) in output.entries().iter().enumerate() {
                        if let Some(code) = result.error_code() {
                            let message = result.error_message().unwrap_or_default();
                            rejected.push((offset + i, format!("{code}: {message}")));
                        }
                    }
                    if output.failed_entry_count() > 0 && output.entries().is_empty() {
                        rejected.extend((0..chunk.len()).map(|i| (offset + i, "rejected by EventBridge".to_string())));
                    }
                }
            }
        }
        rejected
    }
}
