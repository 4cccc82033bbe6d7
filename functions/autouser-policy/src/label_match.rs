//! How Teleport reads a value that selects things (`db_labels` values, `db_names`, deny
//! `db_roles`): `*` is everything, a value written `^…$` is a regular expression, anything else
//! is a glob whose only wildcard is `*`.
//!
//! Regular expressions use the `regex` crate, which runs in linear time like Go's RE2 that
//! Teleport uses. Patterns are bounded ([`MAX_PATTERN_BYTES`], [`REGEX_SIZE_LIMIT`]) so that a
//! role file cannot make the compiled program large. Both are compiled once, at load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Bound on the compiled size of one regular expression (bytes of the compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 18;
const REGEX_NEST_LIMIT: u32 = 32;

/// A compiled selector value.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// `*`.
    Any,
    /// A literal, or a glob with `*`.
    Glob(String),
    /// `^…$`, kept with the text it was written as.
    Regex(regex::Regex),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{value:?} is {bytes} bytes long; patterns are limited to {MAX_PATTERN_BYTES} bytes")]
    TooLong { value: String, bytes: usize },
    #[error("{value:?} is not a valid regular expression ({reason}); values written ^…$ are regular expressions, anything else is a glob with *")]
    InvalidRegex { value: String, reason: String },
}

impl Matcher {
    pub fn parse(value: &str) -> Result<Matcher, PatternError> {
        if value.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong { value: value.to_string(), bytes: value.len() });
        }
        if value == "*" {
            return Ok(Matcher::Any);
        }
        if is_regex(value) {
            return compile_regex(value).map(Matcher::Regex);
        }
        Ok(Matcher::Glob(value.to_string()))
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Glob(glob) => glob_match(glob, text),
            Matcher::Regex(regex) => regex.is_match(text),
        }
    }
}

/// Whether Teleport reads `value` as a regular expression.
pub fn is_regex(value: &str) -> bool {
    value.len() >= 2 && value.starts_with('^') && value.ends_with('$')
}

/// Compiles a regular expression with the size bounds of this module.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, PatternError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(PatternError::TooLong { value: pattern.to_string(), bytes: pattern.len() });
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|e| PatternError::InvalidRegex { value: pattern.to_string(), reason: one_line(&e.to_string()) })
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A label selector value: one value or a list of values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    pub fn globs(&self) -> &[String] {
        match self {
            LabelValues::One(value) => std::slice::from_ref(value),
            LabelValues::Many(values) => values,
        }
    }
}

/// Label matching for `db_permissions` rules: every key of the selector on the target with a
/// value matching one of the key's globs; key `*` matches anything.
pub fn labels_match(selector: &BTreeMap<String, LabelValues>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, values)| {
        if key == "*" {
            return true;
        }
        labels.get(key).is_some_and(|value| values.globs().iter().any(|g| glob_match(g, value)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Matcher::parse(pattern).unwrap().matches(text)
    }

    #[test]
    fn globs_match_whole_strings() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*.prod", "db.prod"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn a_value_written_caret_dollar_is_a_regular_expression() {
        assert!(matches("^(dev|staging)$", "dev"));
        assert!(matches("^(dev|staging)$", "staging"));
        assert!(!matches("^(dev|staging)$", "prod"));
        assert!(!matches("^(dev|staging)$", "development"));
        // As in Go, an alternation without a group binds looser than the anchors.
        assert!(matches("^us-west-1|eu-central-1$", "us-west-1b"));
        assert!(matches("^app_[0-9]+$", "app_42"));
    }

    #[test]
    fn other_values_are_globs_with_regex_characters_taken_literally() {
        assert!(matches("app.(x)", "app.(x)"));
        assert!(!matches("app.(x)", "appZ(x)"));
        assert!(matches("^app*", "^app-1"));
        assert!(matches("*", "anything"));
        assert!(matches("us-*", "us-east-1"));
    }

    #[test]
    fn invalid_and_oversized_patterns_are_refused() {
        let err = Matcher::parse("^(unclosed$").unwrap_err();
        assert!(matches!(err, PatternError::InvalidRegex { .. }), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        let long = format!("^{}$", "a".repeat(MAX_PATTERN_BYTES));
        assert!(matches!(Matcher::parse(&long), Err(PatternError::TooLong { .. })));
        // Small to write, large to compile: refused by the size limit.
        let err = Matcher::parse("^(\\w{100}){100}$").unwrap_err();
        assert!(matches!(err, PatternError::InvalidRegex { .. }), "{err}");
    }
}
