//! The documentation holds together:
//! - every relative link and `#anchor` in README.md, SECURITY.md, ARCHITECTURE.md,
//!   BENCHMARKS.md and `docs/**/*.md` resolves: the file exists, and the anchor is the
//!   GitHub slug of one of the target's headings;
//! - every error kind the code returns (`Error::kind()` in the engine's `error.rs`) has an
//!   entry in `docs/errors.md` with its CLI exit code (as `From<Error> for Failure` in the
//!   CLI's `commands.rs` maps it), whether it is transient (as `Error::is_transient` says), and
//!   what to do.
//!
//! Both read source and Markdown as text, so they build without the engine's dependencies.
//! `scripts/test` runs it: `cargo test -p autouser-policy --test docs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

/// A regular expression compiled once.
macro_rules! regex {
    ($pattern:expr) => {{
        static RE: LazyLock<Regex> = LazyLock::new(|| Regex::new($pattern).unwrap());
        &*RE
    }};
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Files a link may name before they exist: chapters another change is writing. Once the file
/// exists its links and anchors are checked like any other; remove it from here then.
const RESERVED: &[&str] = &["docs/identity.md"];

/// The Markdown files whose links are checked, relative to the repository.
fn documents() -> Vec<String> {
    fn walk(dir: &Path, relative: &str, found: &mut Vec<String>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                walk(&path, &format!("{relative}{name}/"), found);
            } else if name.ends_with(".md") {
                found.push(format!("{relative}{name}"));
            }
        }
    }
    let mut found: Vec<String> =
        ["README.md", "SECURITY.md", "ARCHITECTURE.md", "BENCHMARKS.md"].iter().map(|f| f.to_string()).collect();
    walk(&repository().join("docs"), "docs/", &mut found);
    found
}

/// A Markdown text with fenced code blocks blanked out (their lines kept, empty), so that
/// what remains is prose and headings with their line numbers.
fn prose(text: &str) -> Vec<String> {
    let mut fence: Option<String> = None;
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match &fence {
                Some(marker) => {
                    if trimmed.starts_with(marker.as_str()) {
                        fence = None;
                    }
                    String::new()
                }
                None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                    fence = Some(trimmed[..3].to_string());
                    String::new()
                }
                None => line.to_string(),
            }
        })
        .collect()
}

/// A line with its code spans removed (`` `[x](y)` `` is not a link).
fn without_code(line: &str) -> String {
    regex!(r"(`+)[^`]*?(`+)").replace_all(line, "").into_owned()
}

/// GitHub's anchor for a heading: the text as rendered (code spans, links and emphasis
/// reduced to their text), lowercased, without punctuation but `-` and `_`, spaces as `-`.
fn slug(heading: &str) -> String {
    let text = regex!(r"!?\[([^\]]*)\]\([^)]*\)").replace_all(heading, "$1");
    let text = regex!(r"<[^>]*>").replace_all(&text, "");
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file: its headings' slugs (a repeated one gets `-1`, `-2`, …, as
/// on GitHub) and explicit `<a id="…">` / `<a name="…">` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let heading = regex!(r"^#{1,6}\s+(.*?)\s*#*\s*$");
    let explicit = regex!(r#"<a\s+(?:id|name)="([^"]+)""#);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = BTreeSet::new();
    for line in prose(text) {
        if let Some(captures) = heading.captures(&line) {
            let base = slug(&captures[1]);
            let count = seen.entry(base.clone()).or_insert(0);
            found.insert(if *count == 0 { base.clone() } else { format!("{base}-{count}") });
            *count += 1;
        }
        for captures in explicit.captures_iter(&line) {
            found.insert(captures[1].to_string());
        }
    }
    found
}

/// The link targets of a Markdown file with the line each is on: inline links and images
/// (`[text](target)`, the text may span lines) and reference definitions (`[name]: target`).
fn links(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<String> = prose(text).iter().map(|line| without_code(line)).collect();
    let joined = lines.join("\n");
    let inline = Regex::new(r#"\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)"#).unwrap();
    let definition = Regex::new(r"(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)").unwrap();
    let line_of = |offset: usize| joined[..offset].matches('\n').count() + 1;
    let mut found: Vec<(usize, String)> = inline
        .captures_iter(&joined)
        .chain(definition.captures_iter(&joined))
        .map(|c| {
            let target = c.get(1).unwrap();
            (line_of(target.start()), target.as_str().to_string())
        })
        .collect();
    found.sort();
    found
}

/// Why the link `target` in `file` (whose text is `own`) does not resolve, or `None` when it
/// does. External links (`https:`, `mailto:`, …) are not followed.
fn broken(file: &str, own: &str, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if regex!(r"^[a-zA-Z][a-zA-Z0-9+.-]*:").is_match(target) {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let base = Path::new(file).parent().unwrap();
    let relative = if path.is_empty() { PathBuf::from(file) } else { normalise(&base.join(path)) };
    let name = relative.to_str().unwrap().to_string();
    let on_disk = repository().join(&relative);
    if !on_disk.exists() {
        if RESERVED.contains(&name.as_str()) && anchor.is_none() {
            return None;
        }
        return Some(format!("{name} does not exist"));
    }
    let anchor = anchor?;
    if !name.ends_with(".md") {
        return Some(format!("an anchor into {name}, which is not Markdown"));
    }
    let text = if path.is_empty() { own.to_string() } else { std::fs::read_to_string(&on_disk).unwrap() };
    let known = anchors(&text);
    (!known.contains(anchor)).then(|| format!("{name} has no heading whose anchor is #{anchor}"))
}

/// `a/b/../c` as `a/c`, without touching the file system; a path leaving the repository
/// keeps its `..` and so does not exist.
fn normalise(path: &Path) -> PathBuf {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if parts.last().is_some_and(|p| p != "..") => {
                parts.pop();
            }
            other => parts.push(other.as_os_str().to_str().unwrap().to_string()),
        }
    }
    parts.iter().collect()
}

/// Every broken link of `file` (whose text is `text`), as `file line N: target: why`.
fn broken_links(file: &str, text: &str) -> Vec<String> {
    links(text)
        .into_iter()
        .filter_map(|(line, target)| {
            broken(file, text, &target).map(|why| format!("{file} line {line}: {target}: {why}"))
        })
        .collect()
}

#[test]
fn every_relative_link_and_anchor_of_the_docs_resolves() {
    let files = documents();
    assert!(files.iter().any(|f| f == "docs/README.md"), "the manual's contents: {files:?}");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(repository().join(file)).unwrap();
        checked += links(&text).len();
        failures.extend(broken_links(file, &text));
    }
    assert!(checked >= 50, "read the links: {checked}");
    assert!(failures.is_empty(), "broken links:\n{}", failures.join("\n"));
}

#[test]
fn the_link_check_finds_what_is_broken() {
    // Against the real README, so that a file or a heading that resolves here must exist.
    let text = "# A title\n\n## Quick start, with `code` (fresh)\n\nSee [the start](#quick-start-with-code-fresh), \
                [a chapter](docs/errors.md), [security](SECURITY.md#nothing-like-this),\n[a missing file](docs/nope.md), \
                [a missing anchor](#no-such-heading), [the web](https://example.com/x#y),\n[a link across\nlines](docs/gone.md) \
                and `[code](not-a-link.md)`.\n\n```sh\n[in a block](nor-this.md)\n```\n";
    let failures = broken_links("README.md", text);
    let targets: Vec<&str> = failures.iter().map(|f| f.split(": ").nth(1).unwrap()).collect();
    assert_eq!(
        targets,
        ["SECURITY.md#nothing-like-this", "#no-such-heading", "docs/nope.md", "docs/gone.md"],
        "{failures:#?}"
    );
    assert!(failures[3].starts_with("README.md line 8: "), "{failures:#?}");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Thousands of users on PostgreSQL 16+ (`creator_roles`)"),
        "thousands-of-users-on-postgresql-16-creator_roles"
    );
    assert_eq!(slug("Errors: permanent or transient"), "errors-permanent-or-transient");
    assert_eq!(slug("`UserConflict`"), "userconflict");
    assert_eq!(slug("[Linked](x.md) heading"), "linked-heading");
    let repeated = anchors("# Notes\n## Notes\n```\n# not a heading\n```\n## Notes\n");
    assert_eq!(repeated, ["notes", "notes-1", "notes-2"].iter().map(|s| s.to_string()).collect());
}

/// The error kinds `Error::kind()` returns, each with the `Error` variants that return it.
fn error_kinds(source: &str) -> BTreeMap<String, Vec<String>> {
    let body = function_body(source, "pub fn kind(&self)");
    let arm = Regex::new(r#"((?:\|?\s*Error::\w+\s*(?:\([^)]*\)|\{[^}]*\})?\s*)+)=>\s*"(\w+)""#).unwrap();
    let variant = Regex::new(r"Error::(\w+)").unwrap();
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for captures in arm.captures_iter(body) {
        let variants = variant.captures_iter(&captures[1]).map(|v| v[1].to_string());
        kinds.entry(captures[2].to_string()).or_default().extend(variants);
    }
    kinds
}

/// The text of the method whose signature starts with `signature`, up to its closing brace.
fn function_body<'a>(source: &'a str, signature: &str) -> &'a str {
    let start = source.find(signature).unwrap_or_else(|| panic!("no `{signature}` in the source"));
    let rest = &source[start + signature.len()..];
    &rest[..rest.find("\n    }\n").unwrap_or_else(|| panic!("no end of `{signature}`"))]
}

/// Whether a variant is transient: `Some(true)` or `Some(false)` when `is_transient` says so
/// for every value, `None` when it depends on the value (a driver error's SQLSTATE).
fn transience(source: &str) -> impl Fn(&str) -> Option<bool> {
    let body = function_body(source, "pub fn is_transient(&self)").to_string();
    let arm = Regex::new(r"((?:\|?\s*Error::\w+\s*(?:\([^)]*\)|\{[^}]*\})?\s*)+)=>\s*([^,\n]+)").unwrap();
    let variant = Regex::new(r"Error::(\w+)").unwrap();
    let mut arms: BTreeMap<String, Option<bool>> = BTreeMap::new();
    for captures in arm.captures_iter(&body) {
        let value = match captures[2].trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        for v in variant.captures_iter(&captures[1]) {
            arms.insert(v[1].to_string(), value);
        }
    }
    assert!(arms.values().any(|v| *v == Some(true)), "read is_transient: {arms:?}");
    move |name: &str| arms.get(name).copied().unwrap_or(Some(false))
}

/// The CLI's exit code of a variant, as `From<Error> for Failure` maps it: `(code, None)`
/// for a fixed code, or the codes of a transient and a permanent error.
struct ExitCodes {
    by_variant: BTreeMap<String, u8>,
    transient: u8,
    otherwise: u8,
}

fn exit_codes(source: &str) -> ExitCodes {
    let start = source.find("impl From<Error> for Failure").expect("the CLI maps errors to exit codes");
    let block = &source[start..];
    let block = &block[..block.find("\n}\n").unwrap()];
    let arm = Regex::new(r"Error::(\w+)\s*(?:\([^)]*\)|\{[^}]*\})?\s*=>\s*(\d+)").unwrap();
    let by_variant = arm.captures_iter(block).map(|c| (c[1].to_string(), c[2].parse().unwrap())).collect();
    let code = |pattern: &str| -> u8 {
        let re = Regex::new(pattern).unwrap();
        re.captures(block).unwrap_or_else(|| panic!("no arm {pattern} in the CLI's exit codes"))[1].parse().unwrap()
    };
    ExitCodes { by_variant, transient: code(r"is_transient\(\)\s*=>\s*(\d+)"), otherwise: code(r"_\s*=>\s*(\d+)") }
}

/// The entries of `docs/errors.md`: each `### \`Kind\`` heading with its text.
fn error_entries(text: &str) -> BTreeMap<String, String> {
    let heading = Regex::new(r"^###\s+`(\w+)`\s*$").unwrap();
    let mut entries = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            entries.extend(current.take());
            if let Some(captures) = heading.captures(line) {
                current = Some((captures[1].to_string(), String::new()));
            }
        } else if let Some((_, body)) = &mut current {
            body.push_str(line);
            body.push('\n');
        }
    }
    entries.extend(current);
    entries
}

/// The value of a `- **Label:** value` line of an entry.
fn field<'a>(entry: &'a str, label: &str) -> Option<&'a str> {
    let prefix = format!("- **{label}:**");
    entry.lines().find_map(|line| line.strip_prefix(prefix.as_str())).map(str::trim).filter(|v| !v.is_empty())
}

#[test]
fn every_error_kind_has_an_entry_with_its_exit_code_and_what_to_do() {
    let repository = repository();
    let error_rs = std::fs::read_to_string(repository.join("functions/autouser-engine/src/error.rs")).unwrap();
    let commands_rs = std::fs::read_to_string(repository.join("functions/autouser/src/commands.rs")).unwrap();
    let errors_md = std::fs::read_to_string(repository.join("docs/errors.md")).unwrap();
    let kinds = error_kinds(&error_rs);
    assert!(kinds.len() >= 30 && kinds.contains_key("UserConflict"), "read Error::kind(): {kinds:?}");
    let is_transient = transience(&error_rs);
    let codes = exit_codes(&commands_rs);
    let entries = error_entries(&errors_md);
    let numbers = Regex::new(r"\b\d+\b").unwrap();

    let mut problems = Vec::new();
    for (kind, variants) in &kinds {
        let Some(entry) = entries.get(kind) else {
            problems.push(format!("{kind}: no entry (a `### `{kind}`` heading in docs/errors.md)"));
            continue;
        };
        // The exit codes and transience of the kind's variants.
        let mut expected: BTreeSet<u8> = BTreeSet::new();
        let mut transient: BTreeSet<Option<bool>> = BTreeSet::new();
        for variant in variants {
            let t = is_transient(variant);
            transient.insert(t);
            match (codes.by_variant.get(variant), t) {
                (Some(code), _) => drop(expected.insert(*code)),
                (None, Some(true)) => drop(expected.insert(codes.transient)),
                (None, Some(false)) => drop(expected.insert(codes.otherwise)),
                (None, None) => expected.extend([codes.transient, codes.otherwise]),
            }
        }
        match field(entry, "Exit code") {
            None => problems.push(format!("{kind}: no `- **Exit code:**` line")),
            Some(line) => {
                let written: BTreeSet<u8> = numbers.find_iter(line).filter_map(|n| n.as_str().parse().ok()).collect();
                if written != expected {
                    problems.push(format!("{kind}: exit code {written:?} written, the CLI exits {expected:?}"));
                }
            }
        }
        let want = match (transient.contains(&Some(true)), transient.contains(&Some(false)), transient.contains(&None))
        {
            (true, false, false) => "yes",
            (false, true, false) => "no",
            _ => "depends",
        };
        match field(entry, "Transient") {
            Some(line) if line.starts_with(want) => {}
            Some(line) => problems.push(format!("{kind}: transient is \"{line}\", the code says {want}")),
            None => problems.push(format!("{kind}: no `- **Transient:**` line")),
        }
        if field(entry, "What to do").is_none() {
            problems.push(format!("{kind}: no `- **What to do:**` line"));
        }
    }
    assert!(problems.is_empty(), "docs/errors.md is out of step with the code:\n{}", problems.join("\n"));
}

#[test]
fn the_error_kinds_are_read_from_the_source() {
    let source = r#"
impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigInvalid",
            Error::Unreachable { .. } | Error::EndUnconfirmed { .. } => "DatabaseUnreachable",
            Error::Postgres { .. } => "DatabaseError",
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::EndUnconfirmed { .. } => true,
            Error::Postgres { source, .. } => is_transient(source),
            _ => false,
        }
    }
}
"#;
    let kinds = error_kinds(source);
    assert_eq!(kinds["DatabaseUnreachable"], ["Unreachable", "EndUnconfirmed"]);
    assert_eq!(kinds.len(), 3);
    let transient = transience(source);
    assert_eq!([transient("Unreachable"), transient("Postgres"), transient("Config")], [Some(true), None, Some(false)]);
    let entries = error_entries("## Kinds\n\n### `A`\n\n- **Exit code:** 1\n- **What to do:** x\n\n## Other\n\ntext\n");
    assert_eq!(field(&entries["A"], "Exit code"), Some("1"));
    assert_eq!(field(&entries["A"], "Transient"), None);
    assert!(!entries["A"].contains("text"));
}
