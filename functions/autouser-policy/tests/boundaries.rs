//! The crate boundaries that ARCHITECTURE.md promises, checked:
//! - the policy crate is pure: its normal dependencies, transitively (`cargo tree`), hold no
//!   tokio, PostgreSQL, OpenSSL, rustls, hyper or AWS crate; the engine's hold no AWS crate;
//! - inside the policy, engine and Lambda crates, no module imports one that imports it back
//!   (`crate::<module>` references in the library code of `src/<module>.rs` and of every file of
//!   a folder module `src/<module>/`, tests left out).
//!
//! It lives here, beside the pure crate, so that it builds without the engine's dependencies.
//! `scripts/test` runs it: `cargo test -p autouser-policy --test boundaries`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crate names (or prefixes, ending in `-`) the policy crate must not depend on.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "tokio-",
    "postgres",
    "postgres-",
    "openssl",
    "openssl-",
    "rustls",
    "rustls-",
    "aws-",
    "hyper",
    "hyper-",
];

fn functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the functions directory").to_path_buf()
}

#[test]
fn the_policy_crate_depends_on_no_io_tls_or_aws_crate() {
    let crates = normal_dependencies("autouser-policy");
    assert!(crates.contains("serde"), "read the tree: {crates:?}");
    let forbidden: Vec<&String> = crates.iter().filter(|name| is_one_of(name, FORBIDDEN)).collect();
    assert!(forbidden.is_empty(), "autouser-policy must stay pure, but depends on {forbidden:?}");
}

#[test]
fn the_engine_crate_depends_on_no_aws_crate() {
    let crates = normal_dependencies("autouser-engine");
    assert!(crates.contains("tokio-postgres") && crates.contains("autouser-policy"), "read the tree: {crates:?}");
    let aws: Vec<&String> = crates.iter().filter(|name| is_one_of(name, &["aws-"])).collect();
    assert!(aws.is_empty(), "autouser-engine never calls AWS, but depends on {aws:?}");
}

/// The crates `package` depends on when built as a library, transitively (`cargo tree`).
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "-p", package, "-e", "normal", "--prefix", "none"])
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: BTreeSet<String> =
        tree.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect();
    assert!(crates.contains(package), "read the tree of {package}: {crates:?}");
    crates
}

/// Whether `name` is one of `names`, or starts with one of them that ends in `-`.
fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| if n.ends_with('-') { name.starts_with(n) } else { name == *n })
}

#[test]
fn no_module_of_the_policy_crate_imports_one_that_imports_it_back() {
    assert_no_cycles(&functions_dir().join("autouser-policy/src"));
}

#[test]
fn no_module_of_the_engine_crate_imports_one_that_imports_it_back() {
    assert_no_cycles(&functions_dir().join("autouser-engine/src"));
}

#[test]
fn no_module_of_the_lambda_crate_imports_one_that_imports_it_back() {
    assert_no_cycles(&functions_dir().join("autouser-lambda/src"));
}

#[test]
fn the_cycle_check_sees_grouped_imports_and_re_exports() {
    let lib = "pub mod a;\npub mod b;\n#[cfg(test)]\nmod t;\npub use a::Thing;\n";
    let modules = library_modules(lib);
    assert_eq!(modules.keys().collect::<Vec<_>>(), ["a", "b"]);
    let graph = BTreeMap::from([
        ("a".to_string(), references("use crate::{b::X, Thing};\n/// [`crate::b`] in a doc\n", "a", &modules)),
        (
            "b".to_string(),
            references("fn f() { crate::Thing::new(); }\n#[cfg(test)]\nmod tests { use crate::t; }", "b", &modules),
        ),
    ]);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]), "`Thing` is a's own re-export");
    assert_eq!(graph["b"], BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&graph), Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}

#[test]
fn the_cycle_check_reads_every_file_of_a_folder_module() {
    let src = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boundaries-folder-module/src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("b/deep")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::b::Thing;\n");
    write("b/mod.rs", "mod deep;\nuse crate::c::Other;\n#[cfg(test)]\nmod tests { use crate::a; }\n");
    write("b/deep/inner.rs", "fn f() { crate::b::g(); }\n");
    write("c.rs", "");
    let graph = module_graph(&src);
    assert_eq!(graph["b"], BTreeSet::from(["c".to_string()]), "tests and self-references are left out");
    assert_eq!(find_cycle(&graph), None);
    // A file deep in the folder imports `a`, which imports `b`: a circle.
    write("b/deep/inner.rs", "fn f() { crate::a::h(); }\n");
    let graph = module_graph(&src);
    assert_eq!(find_cycle(&graph), Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}

fn assert_no_cycles(src: &Path) {
    let graph = module_graph(src);
    let modules: Vec<&String> = graph.keys().collect();
    assert!(modules.len() >= 5, "read the modules of {}: {modules:?}", src.display());
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules of {} import each other in a circle: {}; move what they share into a module of its own",
            src.display(),
            cycle.join(" -> ")
        );
    }
}

/// Each library module of the crate at `src` with the modules it imports: the references of
/// `src/<module>.rs` and of every `.rs` file under `src/<module>/` (a folder module, one module
/// with all its files).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules = library_modules(&lib);
    modules
        .keys()
        .map(|module| {
            let mut files = Vec::new();
            let file = src.join(format!("{module}.rs"));
            if file.is_file() {
                files.push(file);
            }
            rust_files(&src.join(module), &mut files);
            assert!(!files.is_empty(), "found the source of module {module} in {}", src.display());
            let imported = files
                .iter()
                .flat_map(|file| references(&std::fs::read_to_string(file).unwrap(), module, &modules))
                .collect();
            (module.clone(), imported)
        })
        .collect()
}

/// The `.rs` files under `dir`, at any depth (none when there is no such folder).
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The library's modules (`pub mod x;`, `mod x;`, not under `#[cfg(test)]`), each with the
/// names lib.rs re-exports from it (`pub use x::Name;`), so `crate::Name` counts as `x`.
fn library_modules(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    let mut test_only = false;
    for line in lib.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            test_only = true;
            continue;
        }
        let declared = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod "));
        if let Some(name) = declared.and_then(|rest| rest.strip_suffix(';')) {
            if !test_only {
                modules.insert(name.to_string(), BTreeSet::new());
            }
        } else if let Some(path) = line.strip_prefix("pub use ").and_then(|rest| rest.strip_suffix(';')) {
            if let Some((module, name)) = path.split_once("::") {
                if let Some(names) = modules.get_mut(module) {
                    names.insert(name.to_string());
                }
            }
        }
        test_only = false;
    }
    modules
}

/// The modules a file's library code names as `crate::<module>` or `crate::{<module>, …}`,
/// or through a name lib.rs re-exports, other than `own`. Comments and everything from `#[cfg(test)]` on are
/// left out: doc links and tests are not imports of the library.
fn references(text: &str, own: &str, modules: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .take_while(|line| !line.trim_start().starts_with("#[cfg(test)]"))
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `autouser_crate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            names.extend(group[..end].split(',').map(|item| first_ident(item.trim())));
        } else {
            names.push(first_ident(rest));
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            if modules.contains_key(name) {
                return Some(name.to_string());
            }
            modules.iter().find(|(_, exported)| exported.contains(name)).map(|(module, _)| module.clone())
        })
        .filter(|module| module != own)
        .collect()
}

fn first_ident(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// A circle of imports, as the modules along it with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
