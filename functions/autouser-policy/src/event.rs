//! Session events: what a proxy (or EventBridge) tells us when a person's database session
//! starts or ends. Both use one JSON shape; the start needs `roles`, the end ignores the
//! policy fields.
//!
//! Unknown fields are errors: a misspelt `db_role` must not silently widen a grant.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::policy::Traits;

/// Longest accepted session id, in bytes; ids are stored in the ledger.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// A session start or end, as a proxy sends it (the `detail` of an EventBridge event).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pg-autouser session event")]
#[schemars(extend("anyOf" = [{"required": ["user"]}, {"required": ["identity_token"]}]))]
pub struct SessionEvent {
    /// At most 256 bytes.
    #[schemars(length(min = 1, max = MAX_SESSION_ID_BYTES))]
    pub session_id: String,
    /// The person's name. May be left out when `identity_token` is sent: the token's is used.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub user: String,
    /// Cluster the person logged in to; differs from ours for people from a remote cluster.
    #[schemars(length(min = 1))]
    pub origin_cluster: Option<String>,
    /// The person's Teleport roles; required to start a session.
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub traits: Traits,
    /// Database name in the config.
    #[schemars(length(min = 1))]
    pub database: String,
    /// Database (catalog) inside the server the session uses.
    #[schemars(length(min = 1))]
    pub db_name: String,
    /// A subset of the allowed database roles the person asked for.
    pub db_roles: Option<Vec<String>>,
    /// A JWT the identity provider signed for the person (`identity:` in the config). The
    /// event's `user`, `roles` and `traits` must equal its claims, or be left out and are
    /// taken from it. Never logged nor audited.
    pub identity_token: Option<IdentityToken>,
}

/// A JWT (`header.payload.signature`, base64url) signed by a configured identity provider.
// Its `Debug` never shows the token, so that no log line can hold it.
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct IdentityToken(#[schemars(length(min = 1))] pub String);

impl std::fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityToken(<{} bytes, not shown>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is not valid JSON at `{path}`: {message}")]
    Malformed { path: String, message: String },
    #[error("event field `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl SessionEvent {
    /// The JSON Schema (draft 2020-12) of a session event: `schemas/event.schema.json`.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(SessionEvent)
    }

    pub fn from_json(text: &str) -> Result<SessionEvent, EventError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let event: SessionEvent = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| EventError::Malformed { path: e.path().to_string(), message: e.inner().to_string() })?;
        deserializer.end().map_err(|e| EventError::Malformed { path: ".".into(), message: e.to_string() })?;
        event.validate()?;
        Ok(event)
    }

    pub fn from_value(value: serde_json::Value) -> Result<SessionEvent, EventError> {
        let event: SessionEvent = serde_path_to_error::deserialize(value)
            .map_err(|e| EventError::Malformed { path: e.path().to_string(), message: e.inner().to_string() })?;
        event.validate()?;
        Ok(event)
    }

    /// The person's roles, required for a session start.
    pub fn start_roles(&self) -> Result<&[String], EventError> {
        self.roles.as_deref().ok_or(EventError::Invalid {
            field: "roles",
            problem: "is missing: a session start must list the person's roles".into(),
        })
    }

    fn validate(&self) -> Result<(), EventError> {
        let invalid = |field, problem: &str| Err(EventError::Invalid { field, problem: problem.into() });
        if self.user.is_empty() && self.identity_token.is_none() {
            return invalid("user", "is missing: name the person, or send their identity_token");
        }
        if self.identity_token.as_ref().is_some_and(|token| token.0.is_empty()) {
            return invalid("identity_token", "is empty: send the token, or leave the field out");
        }
        let user = (!self.user.is_empty()).then_some(("user", &self.user));
        for (field, value) in
            [("session_id", &self.session_id), ("database", &self.database), ("db_name", &self.db_name)]
                .into_iter()
                .chain(user)
        {
            if value.is_empty() {
                return invalid(field, "is empty");
            }
            if value.contains('\0') {
                return invalid(field, "contains a NUL byte");
            }
        }
        if self.session_id.len() > MAX_SESSION_ID_BYTES {
            return invalid("session_id", &format!("is longer than {MAX_SESSION_ID_BYTES} bytes"));
        }
        if let Some(origin) = &self.origin_cluster {
            if origin.is_empty() {
                return invalid("origin_cluster", "is empty: omit it for local users");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"session_id": "9f1c", "user": "alice", "origin_cluster": "root",
        "roles": ["auto-db-users"],
        "traits": {"internal": {"db_roles": ["auditor"]}, "external": {}},
        "database": "orders", "db_name": "app", "db_roles": ["reader"]}"#;
    const END: &str = r#"{"session_id": "9f1c", "user": "alice", "origin_cluster": "root",
        "database": "orders", "db_name": "app"}"#;

    #[test]
    fn documented_events_parse() {
        let start = SessionEvent::from_json(START).unwrap();
        assert_eq!(start.start_roles().unwrap(), ["auto-db-users"]);
        assert_eq!(start.traits.internal["db_roles"], ["auditor"]);
        assert_eq!(start.db_roles.as_deref(), Some(&["reader".to_string()][..]));
        let end = SessionEvent::from_json(END).unwrap();
        assert!(end.start_roles().is_err());
    }

    #[test]
    fn missing_field_is_named() {
        let err = SessionEvent::from_json(r#"{"session_id":"s","user":"a","database":"d"}"#).unwrap_err();
        assert!(err.to_string().contains("db_name"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let err = SessionEvent::from_json(&START.replace(r#"["auditor"]"#, "[5]")).unwrap_err();
        assert!(err.to_string().contains("traits.internal.db_roles[0]"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let err =
            SessionEvent::from_json(&START.replace("\"db_roles\": [\"reader\"]", "\"db_role\": [\"x\"]")).unwrap_err();
        assert!(err.to_string().contains("db_role"), "{err}");
    }

    #[test]
    fn empty_values_are_refused() {
        let err = SessionEvent::from_json(&END.replace("\"alice\"", "\"\"")).unwrap_err();
        assert!(err.to_string().contains("`user`"), "{err}");
        let err = SessionEvent::from_json(&END.replace("\"root\"", "\"\"")).unwrap_err();
        assert!(err.to_string().contains("origin_cluster"), "{err}");
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(SessionEvent::from_json("{").is_err());
        assert!(SessionEvent::from_json(&format!("{END} trailing")).is_err());
    }
}
