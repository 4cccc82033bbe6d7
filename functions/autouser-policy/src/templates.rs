//! Teleport's trait templates, as in `db_roles: ["{{internal.db_roles}}"]`: a value with one
//! `{{expression}}`, optionally between a literal prefix and suffix.
//!
//! The expressions Teleport accepts in role values:
//! - `internal.x`, `external.x`, `internal["x"]`, `external["x"]`: the person's trait values;
//! - `email.local(e)`: the local part of each address (`alice` of `alice@example.com`);
//! - `regexp.replace(e, "pattern", "replacement")`: each value the pattern matches, with every
//!   match replaced (`$1`, `${name}`); values it does not match are dropped.
//!
//! Expansion follows Teleport (`ApplyValueTraits`): a trait the person does not have, an
//! `internal` trait Teleport does not define, or an `email.local` argument that is not an
//! address make the whole value expand to nothing; empty results are dropped. Templates are
//! parsed, and their regular expressions compiled, once at load.

use std::collections::BTreeMap;

use crate::label_match::{compile_regex, PatternError};

/// The `internal` traits Teleport defines; others never expand.
pub const INTERNAL_TRAITS: &[&str] = &[
    "logins",
    "windows_logins",
    "kubernetes_groups",
    "kubernetes_users",
    "db_names",
    "db_users",
    "db_roles",
    "aws_role_arns",
    "azure_identities",
    "gcp_service_accounts",
    "jwt",
    "github_orgs",
];

const MAX_NESTING: usize = 8;

/// A role value: written literally, or a template.
#[derive(Debug, Clone)]
pub enum Value {
    Literal(String),
    Template(Template),
}

#[derive(Debug, Clone)]
pub struct Template {
    prefix: String,
    expression: Expression,
    suffix: String,
}

#[derive(Debug, Clone)]
enum Expression {
    Trait { namespace: Namespace, name: String },
    Literal(String),
    EmailLocal(Box<Expression>),
    RegexpReplace { source: Box<Expression>, pattern: regex::Regex, replacement: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Internal,
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TemplateError {
    pub reason: String,
}

fn error<T>(reason: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError { reason: reason.into() })
}

impl Value {
    /// Parses a value; text with `{{` or `}}` that is not one well-formed template is an error.
    pub fn parse(text: &str) -> Result<Value, TemplateError> {
        let Some(open) = text.find("{{") else {
            if text.contains("}}") {
                return error("`}}` without `{{`: write {{expression}}");
            }
            return Ok(Value::Literal(text.to_string()));
        };
        let Some(close) = text[open..].find("}}").map(|at| open + at) else {
            return error("`{{` without `}}`: write {{expression}}");
        };
        let (prefix, inner, suffix) = (&text[..open], &text[open + 2..close], &text[close + 2..]);
        if [prefix, inner, suffix].iter().any(|part| part.contains(|c| "{}".contains(c))) {
            return error("a value holds one {{expression}}, with no other braces around it");
        }
        let mut parser = Parser { text: inner, at: 0 };
        let expression = parser.expression(0)?;
        parser.skip_spaces();
        if parser.at != inner.len() {
            return error(format!("unexpected {:?} in the expression", &inner[parser.at..]));
        }
        if matches!(expression, Expression::Literal(_)) {
            return error("the expression is a bare string: write the value without {{ }}");
        }
        Ok(Value::Template(Template {
            prefix: prefix.trim_start().to_string(),
            expression,
            suffix: suffix.trim_end().to_string(),
        }))
    }

    pub fn is_template(&self) -> bool {
        matches!(self, Value::Template(_))
    }
}

impl Template {
    /// The values this template stands for, given the person's traits.
    pub fn expand(
        &self,
        internal: &BTreeMap<String, Vec<String>>,
        external: &BTreeMap<String, Vec<String>>,
    ) -> Vec<String> {
        match self.expression.evaluate(internal, external) {
            Some(values) => values
                .into_iter()
                .filter(|value| !value.is_empty())
                .map(|value| format!("{}{value}{}", self.prefix, self.suffix))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The trait the template reads, for messages: `internal.db_roles`.
    pub fn trait_name(&self) -> String {
        let mut expression = &self.expression;
        loop {
            match expression {
                Expression::Trait { namespace: Namespace::Internal, name } => return format!("internal.{name}"),
                Expression::Trait { namespace: Namespace::External, name } => return format!("external.{name}"),
                Expression::Literal(text) => return format!("{text:?}"),
                Expression::EmailLocal(inner) => expression = inner,
                Expression::RegexpReplace { source, .. } => expression = source,
            }
        }
    }
}

impl Expression {
    /// `None` when Teleport's interpolation fails, which drops the whole value.
    fn evaluate(
        &self,
        internal: &BTreeMap<String, Vec<String>>,
        external: &BTreeMap<String, Vec<String>>,
    ) -> Option<Vec<String>> {
        match self {
            Expression::Trait { namespace: Namespace::Internal, name } => {
                INTERNAL_TRAITS.contains(&name.as_str()).then_some(())?;
                internal.get(name).cloned()
            }
            Expression::Trait { namespace: Namespace::External, name } => external.get(name).cloned(),
            Expression::Literal(text) => Some(vec![text.clone()]),
            Expression::EmailLocal(inner) => {
                inner.evaluate(internal, external)?.iter().map(|address| email_local(address)).collect()
            }
            Expression::RegexpReplace { source, pattern, replacement } => Some(
                source
                    .evaluate(internal, external)?
                    .into_iter()
                    .map(|value| {
                        if pattern.is_match(&value) {
                            pattern.replace_all(&value, replacement.as_str()).into_owned()
                        } else {
                            String::new()
                        }
                    })
                    .collect(),
            ),
        }
    }
}

/// The local part of `alice@example.com` or `Alice <alice@example.com>`; `None` for anything
/// that is not a plain address.
fn email_local(text: &str) -> Option<String> {
    let text = text.trim();
    let address = match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(without_close)) => &without_close[open + 1..],
        (None, None) => text,
        _ => return None,
    };
    let (local, domain) = address.split_once('@')?;
    let plain = |part: &str| {
        !part.is_empty() && !part.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"(),;:\\[]@".contains(c))
    };
    (plain(local) && plain(domain)).then(|| local.to_string())
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: char) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.at += token.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: char) -> Result<(), TemplateError> {
        if self.eat(token) {
            Ok(())
        } else {
            error(format!("expected `{token}` at {:?}", self.rest()))
        }
    }

    fn identifier(&mut self) -> Result<&'a str, TemplateError> {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return error(format!("expected a name at {rest:?}"));
        }
        let start = self.at;
        self.at += len;
        Ok(&self.text[start..self.at])
    }

    /// A Go string literal: "…" with \\ \" \n \t \r escapes, or `…` taken as written.
    fn string(&mut self) -> Result<String, TemplateError> {
        self.skip_spaces();
        let rest = self.rest();
        if let Some(raw) = rest.strip_prefix('`') {
            let end = raw.find('`').map_or_else(|| error("unterminated `string`"), Ok)?;
            self.at += end + 2;
            return Ok(raw[..end].to_string());
        }
        let Some(quoted) = rest.strip_prefix('"') else {
            return error(format!("expected a \"string\" at {rest:?}"));
        };
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += 1 + index + 1;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => out.push('\\'),
                    Some('"') => out.push('"'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    other => {
                        return error(format!(
                            "unknown escape \\{} in a string: write \\\\ for a backslash",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                },
                c => out.push(c),
            }
        }
        error("unterminated \"string\"")
    }

    fn argument(&mut self, depth: usize) -> Result<Expression, TemplateError> {
        self.skip_spaces();
        if self.rest().starts_with(['"', '`']) {
            return self.string().map(Expression::Literal);
        }
        self.expression(depth + 1)
    }

    fn expression(&mut self, depth: usize) -> Result<Expression, TemplateError> {
        if depth > MAX_NESTING {
            return error("the expression nests too deeply");
        }
        self.skip_spaces();
        if self.rest().starts_with(['"', '`']) {
            return self.string().map(Expression::Literal);
        }
        let namespace = self.identifier()?.to_string();
        if self.eat('[') {
            let name = self.string()?;
            self.expect(']')?;
            return trait_expression(&namespace, name);
        }
        self.expect('.')?;
        let name = self.identifier()?.to_string();
        if !self.eat('(') {
            return trait_expression(&namespace, name);
        }
        let mut arguments = vec![self.argument(depth)?];
        while self.eat(',') {
            arguments.push(self.argument(depth)?);
        }
        self.expect(')')?;
        match (namespace.as_str(), name.as_str(), arguments.as_mut_slice()) {
            ("email", "local", [email]) => {
                Ok(Expression::EmailLocal(Box::new(std::mem::replace(email, Expression::Literal(String::new())))))
            }
            ("regexp", "replace", [source, Expression::Literal(pattern), Expression::Literal(replacement)]) => {
                let pattern = compile_regex(pattern).map_err(|e| TemplateError {
                    reason: match e {
                        PatternError::InvalidRegex { reason, .. } => {
                            format!("regexp.replace pattern {pattern:?} is not a valid regular expression: {reason}")
                        }
                        other => other.to_string(),
                    },
                })?;
                let source = std::mem::replace(source, Expression::Literal(String::new()));
                Ok(Expression::RegexpReplace {
                    source: Box::new(source),
                    pattern,
                    replacement: std::mem::take(replacement),
                })
            }
            ("email", "local", _) => error("email.local takes one argument"),
            ("regexp", "replace", _) => {
                error("regexp.replace takes an expression, a \"pattern\" string and a \"replacement\" string")
            }
            ("regexp", "match" | "not_match", _) => {
                error(format!("regexp.{name} is a matcher, not a value: it cannot name roles or databases"))
            }
            _ => error(format!("unknown function {namespace}.{name}: use email.local or regexp.replace")),
        }
    }
}

fn trait_expression(namespace: &str, name: String) -> Result<Expression, TemplateError> {
    let namespace = match namespace {
        "internal" => Namespace::Internal,
        "external" => Namespace::External,
        other => return error(format!("unknown trait namespace {other:?}: use internal or external")),
    };
    if name.is_empty() {
        return error("the trait name is empty");
    }
    Ok(Expression::Trait { namespace, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    }

    fn expand(text: &str, internal: &[(&str, &[&str])], external: &[(&str, &[&str])]) -> Vec<String> {
        match Value::parse(text).unwrap() {
            Value::Template(t) => t.expand(&traits(internal), &traits(external)),
            Value::Literal(l) => vec![l],
        }
    }

    #[test]
    fn trait_forms_expand_to_each_value() {
        let external: &[(&str, &[&str])] = &[("db-roles", &["a", "b"]), ("team", &["pay"])];
        assert_eq!(expand("{{internal.db_roles}}", &[("db_roles", &["x", "y"])], &[]), ["x", "y"]);
        assert_eq!(expand("{{ external.team }}", &[], external), ["pay"]);
        assert_eq!(expand(r#"{{external["db-roles"]}}"#, &[], external), ["a", "b"]);
        assert_eq!(expand("  app_{{external.team}}_ro  ", &[], external), ["app_pay_ro"]);
        assert_eq!(expand("plain", &[], &[]), ["plain"]);
    }

    #[test]
    fn missing_and_undefined_internal_traits_expand_to_nothing() {
        assert!(expand("{{external.nope}}", &[], &[]).is_empty());
        // Teleport defines no internal trait "team", even when the person carries one.
        assert!(expand("{{internal.team}}", &[("team", &["x"])], &[]).is_empty());
        // Empty values are dropped.
        assert_eq!(expand("{{external.t}}", &[], &[("t", &["", "a"])]), ["a"]);
    }

    #[test]
    fn email_local_takes_the_local_part() {
        let external: &[(&str, &[&str])] = &[("email", &["alice@example.com", "Bob <bob@example.com>"])];
        assert_eq!(expand("{{email.local(external.email)}}", &[], external), ["alice", "bob"]);
        // Teleport drops the whole value when one address does not parse.
        let bad: &[(&str, &[&str])] = &[("email", &["alice@example.com", "not-an-address"])];
        assert!(expand("{{email.local(external.email)}}", &[], bad).is_empty());
    }

    #[test]
    fn regexp_replace_maps_matching_values_and_drops_the_rest() {
        let external: &[(&str, &[&str])] = &[("groups", &["db-reader", "devs", "db-writer"])];
        assert_eq!(
            expand(r#"{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}"#, &[], external),
            ["reader", "writer"]
        );
        assert_eq!(
            expand(r#"{{regexp.replace(external.groups, "-", "_")}}"#, &[], external),
            ["db_reader", "db_writer"]
        );
        // Nested: the local part of the addresses, then a rewrite.
        let email: &[(&str, &[&str])] = &[("email", &["alice.smith@example.com"])];
        assert_eq!(
            expand(r#"{{regexp.replace(email.local(external.email), "\\.", "_")}}"#, &[], email),
            ["alice_smith"]
        );
    }

    #[test]
    fn malformed_templates_are_refused_with_the_reason() {
        for (text, reason) in [
            ("{{internal.a}}{{internal.b}}", "one {{expression}}"),
            ("{{internal.a", "without `}}`"),
            ("x}}", "without `{{`"),
            ("{{user.name}}", "namespace"),
            ("{{internal}}", "expected `.`"),
            ("{{internal.a.b}}", "unexpected"),
            ("{{email.local(external.a, external.b)}}", "one argument"),
            (r#"{{regexp.replace(external.g, "(", "x")}}"#, "not a valid regular expression"),
            (r#"{{regexp.replace(external.g, external.h, "x")}}"#, "pattern"),
            (r#"{{regexp.match("^a$")}}"#, "matcher"),
            ("{{strings.upper(external.a)}}", "unknown function"),
            (r#"{{regexp.replace(external.g, "\d", "x")}}"#, "unknown escape"),
            (r#"{{"literal"}}"#, "bare string"),
        ] {
            let err = Value::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
