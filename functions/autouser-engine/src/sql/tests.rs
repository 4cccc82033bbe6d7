//! Checks over the sources, of this folder and of the crates that run in production: no code
//! but `quote.rs` quotes a name or a value by hand, and SQL text is ASCII.

/// No code but `quote.rs` puts a name or a value into SQL by hand: no call of the escape
/// functions, and outside `sql/` no format string that wraps an interpolation in double quotes
/// (an identifier) or single quotes (a literal). Covers every crate that runs in production.
#[test]
fn no_other_code_quotes_names_or_values() {
    fn rust_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    /// `"{x}"` or `'{x}'` inside a string: an opening quote right before an interpolation
    /// (`{{` is a literal brace, not an interpolation).
    fn wraps_an_interpolation(line: &str) -> bool {
        ["\\\"{", "'{"]
            .iter()
            .any(|quote| line.match_indices(quote).any(|(at, q)| !line[at + q.len()..].starts_with('{')))
    }
    let functions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the functions directory");
    let mut files = Vec::new();
    for krate in [
        "autouser-policy",
        "autouser-engine",
        "autouser-aws",
        "autouser-lambda",
        "autouser",
        "session-start",
        "session-end",
        "discovery",
    ] {
        rust_files(&functions.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "found the sources: {files:?}");
    // The quoting itself, and this check, which names what it looks for. The other files of
    // `sql/` are checked for the escape functions only: their SQL text has literals such as
    // `'{}'` (an empty array), and their tests spell out quoted SQL.
    let sql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sql");
    let quoting = [sql.join("quote.rs"), sql.join("tests.rs")];
    let mut offences = Vec::new();
    for file in files.iter().filter(|f| !quoting.contains(f)) {
        let sql_text = file.starts_with(&sql);
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("escape_identifier")
                || line.contains("escape_literal")
                || (!sql_text && wraps_an_interpolation(line))
            {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "quote names with sql::quote_ident and values with sql::quote_literal:\n{}",
        offences.join("\n")
    );
    // The check itself catches both forms.
    assert!(wraps_an_interpolation(r#"format!("GRANT x TO \"{user}\"")"#));
    assert!(wraps_an_interpolation("format!(\"PASSWORD '{password}'\")"));
    assert!(!wraps_an_interpolation(r#"role("{allow: {db_roles: [\"{{internal.a}}\"]}}")"#));
}

/// The string literals of a Rust source: `"..."` with its escapes and `r#"..."#`; comments
/// and character literals skipped. Enough for this crate's sources, which the test reads.
fn string_literals(source: &str) -> Vec<(usize, String)> {
    let bytes = source.as_bytes();
    let (mut found, mut at, mut line) = (Vec::new(), 0, 1);
    while at < bytes.len() {
        match bytes[at] {
            b'\n' => line += 1,
            b'/' if bytes.get(at + 1) == Some(&b'/') => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            b'\'' if bytes.get(at + 2) == Some(&b'\'') || bytes.get(at + 1) == Some(&b'\\') => {
                // A character literal ('x', '\n', '\''): skip to its closing quote.
                at += if bytes[at + 1] == b'\\' { 3 } else { 2 };
                while at < bytes.len() && bytes[at] != b'\'' {
                    at += 1;
                }
            }
            b'r' if bytes.get(at + 1) == Some(&b'#') || bytes.get(at + 1) == Some(&b'"') => {
                let hashes = bytes[at + 1..].iter().take_while(|b| **b == b'#').count();
                if bytes.get(at + 1 + hashes) == Some(&b'"') && !bytes[at - 1].is_ascii_alphanumeric() {
                    let start = at + 2 + hashes;
                    let close = format!("\"{}", "#".repeat(hashes));
                    let end = start + source[start..].find(&close).expect("a closed raw string");
                    found.push((line, source[start..end].to_string()));
                    line += source[start..end].matches('\n').count();
                    at = end + close.len();
                    continue;
                }
            }
            b'"' => {
                let start = at + 1;
                at += 1;
                while bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
                found.push((line, source[start..at].to_string()));
                line += source[start..at].matches('\n').count();
            }
            _ => {}
        }
        at += 1;
    }
    found
}

/// SQL text stays ASCII: a database whose encoding cannot hold a character (`LATIN1` and
/// `...`, say) refuses the whole statement, comments included. Every string literal of the
/// engine's sources that the server could receive (one that reads like SQL) is checked.
#[test]
fn sql_text_is_ascii() {
    let sql_words = ["SELECT ", "ALTER ", "GRANT ", "REVOKE ", "CREATE ", "DROP ", "COMMENT ", "DO ", "BEGIN"];
    // Every file of the crate's sources, folder modules (`engine/`) included.
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|path| path.ends_with("engine/mod.rs")), "read the folder modules: {files:?}");
    let mut offences = Vec::new();
    let mut checked = 0;
    for path in files {
        for (line, literal) in string_literals(&std::fs::read_to_string(&path).unwrap()) {
            if sql_words.iter().any(|word| literal.contains(word)) {
                checked += 1;
                if !literal.is_ascii() {
                    offences.push(format!("{}:{line}: {}", path.display(), literal.trim()));
                }
            }
        }
    }
    assert!(checked > 50, "found the SQL literals ({checked})");
    assert!(offences.is_empty(), "SQL text must be ASCII:\n{}", offences.join("\n"));
    // The reader finds what the test relies on.
    let sample =
        "let a = 'x'; // \"not a string\"\nconst Q: &str = \"SELECT 1 -- \\\" \u{2026}\";\nr#\"DO $$ \"x\" $$\"#";
    let literals = string_literals(sample);
    assert_eq!(literals.len(), 2, "{literals:?}");
    assert!(!literals[0].1.is_ascii() && literals[0].0 == 2);
    assert_eq!(literals[1], (3, "DO $$ \"x\" $$".to_string()));
}
