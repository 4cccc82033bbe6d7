//! The quoting of identifiers and literals: the only code that puts a name or a value into
//! SQL text (`tests.rs` checks that no other code does it by hand).

/// Quotes a role or object name as a PostgreSQL identifier. The caller must have refused
/// names with NUL bytes ([`autouser_policy::naming::validate_identifier`]).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Quotes a value as a PostgreSQL string literal.
pub fn quote_literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

/// `names` as identifiers, separated by commas.
pub(super) fn quote_idents(names: &[String]) -> String {
    names.iter().map(|name| quote_ident(name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::{cases, Reach};
    use crate::sql::render;
    use autouser_policy::plan::Step;
    use proptest::prelude::*;

    #[test]
    fn identifiers_double_their_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident("Robert'); DROP TABLE x;--"), r#""Robert'); DROP TABLE x;--""#);
    }

    #[test]
    fn literals_with_backslashes_use_the_escape_form() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r" E'a\\b'");
    }

    /// Reads a quoted identifier back the way PostgreSQL's scanner does.
    fn unquote_ident(quoted: &str) -> Option<String> {
        let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                // A lone quote would end the identifier early: that would be an injection.
                if chars.next() != Some('"') {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    /// Reads a string literal back the way PostgreSQL's scanner does (both forms).
    fn unquote_literal(quoted: &str) -> Option<String> {
        let (escape_form, inner) = match quoted.strip_prefix(" E'") {
            Some(rest) => (true, rest.strip_suffix('\'')?),
            None => (false, quoted.strip_prefix('\'')?.strip_suffix('\'')?),
        };
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.next() != Some('\'') => return None,
                '\\' if escape_form => out.push(chars.next()?),
                _ => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn quoted_identifiers_read_back_to_the_name() {
        let reach = Reach::new("quoted_identifiers_read_back_to_the_name");
        proptest!(cases(), |(name in "[^\\x00]{0,64}")| {
            reach.case();
            let read_back = unquote_ident(&quote_ident(&name));
            reach.reached();
            prop_assert_eq!(read_back, Some(name));
        });
        reach.check();
    }

    #[test]
    fn quoted_literals_read_back_to_the_value() {
        let reach = Reach::new("quoted_literals_read_back_to_the_value");
        proptest!(cases(), |(value in "[^\\x00]{0,64}")| {
            reach.case();
            let read_back = unquote_literal(&quote_literal(&value));
            reach.reached();
            prop_assert_eq!(read_back, Some(value));
        });
        reach.check();
    }

    #[test]
    fn hostile_names_stay_inside_one_identifier() {
        let reach = Reach::new("hostile_names_stay_inside_one_identifier");
        proptest!(cases(), |(
            name in proptest::collection::vec(prop_oneof![
                Just("\"".to_string()), Just("'".to_string()), Just(";".to_string()),
                Just("\\".to_string()), Just("$$".to_string()), Just("--".to_string()),
                "\\PC{1,3}",
            ], 0..12).prop_map(|parts| parts.concat())
        )| {
            reach.case();
            let sql = render(&Step::RevokeRoles { roles: vec![name.clone()], user: "u".into() });
            let quoted = sql.strip_prefix("REVOKE ").unwrap().strip_suffix(" FROM \"u\"").unwrap();
            reach.reached();
            prop_assert_eq!(unquote_ident(quoted), Some(name));
        });
        reach.check();
    }
}
