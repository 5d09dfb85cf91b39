//! ARCHITECTURE.md's invariants that a test can check, checked. Each test names the invariant it
//! guards as ARCHITECTURE.md words it; when one fails, either the code or the document is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The workspace's member crates: (directory, package name).
fn members() -> Vec<(PathBuf, String)> {
    let manifest: toml::Table = read_toml(&root().join("Cargo.toml"));
    let members = manifest["workspace"]["members"].as_array().expect("workspace.members");
    members
        .iter()
        .map(|m| {
            let dir = root().join(m.as_str().expect("member path"));
            let package: toml::Table = read_toml(&dir.join("Cargo.toml"));
            let name = package["package"]["name"].as_str().expect("package.name").to_string();
            (dir, name)
        })
        .collect()
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every dependency a crate declares (normal, dev and build).
fn dependencies(dir: &Path) -> BTreeSet<String> {
    let manifest = read_toml(&dir.join("Cargo.toml"));
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section).and_then(|s| s.as_table()))
        .flat_map(|table| table.keys().cloned())
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn only_the_docker_crate_talks_to_the_docker_api() {
    let users: Vec<String> = members().into_iter().filter(|(dir, _)| dependencies(dir).contains("bollard")).map(|(_, name)| name).collect();
    assert_eq!(users, ["docker"], "crates depending on bollard");
}

#[test]
fn one_crate_per_external_api_registries_and_nats_too() {
    for (client, owner) in [("oci-client", "remote"), ("async-nats", "cluster")] {
        let users: Vec<String> =
            members().into_iter().filter(|(dir, _)| dependencies(dir).contains(client)).map(|(_, name)| name).collect();
        assert_eq!(users, [owner], "crates depending on {client}");
    }
}

#[test]
fn lower_crates_know_nothing_of_the_layers_above() {
    // Who may depend on whom, bottom up: cache < docker, records < images < engine; dsl beside.
    let forbidden: &[(&str, &[&str])] = &[
        ("cache", &["dsl", "docker", "images", "records", "engine", "bollard"]),
        ("dsl", &["cache", "docker", "images", "records", "engine", "bollard"]),
        ("docker", &["dsl", "images", "records", "engine"]),
        ("records", &["dsl", "docker", "images", "engine", "bollard"]),
        ("images", &["engine", "records"]),
        ("cluster", &["cache", "docker", "images", "records", "remote", "engine", "bollard"]),
    ];
    let crates: BTreeMap<String, PathBuf> = members().into_iter().map(|(dir, name)| (name, dir)).collect();
    for (name, banned) in forbidden {
        let dir = crates.get(*name).unwrap_or_else(|| panic!("crate `{name}` is missing from the workspace"));
        let deps = dependencies(dir);
        for b in *banned {
            assert!(!deps.contains(*b), "`{name}` depends on `{b}`");
        }
    }
}

#[test]
fn the_planner_and_the_scheduler_never_touch_docker() {
    let mut files = vec![root().join("engine/src/plan.rs")];
    files.extend(rust_files(&root().join("engine/src/scheduler")));
    assert!(files.len() > 1, "engine/src/scheduler/ has no sources");
    for path in files {
        let file = path.display();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        for banned in ["crate::docker", "docker::", "bollard", "std::fs", "tokio::fs"] {
            assert!(!text.contains(banned), "{file} mentions `{banned}`");
        }
    }
}

#[test]
fn no_source_file_exceeds_600_lines() {
    let mut long = Vec::new();
    for (dir, _) in members() {
        for file in rust_files(&dir.join("src")) {
            let lines = std::fs::read_to_string(&file).expect("readable").lines().count();
            if lines > 600 {
                long.push(format!("{} ({lines} lines)", file.strip_prefix(root()).unwrap_or(&file).display()));
            }
        }
    }
    assert!(long.is_empty(), "source files over 600 lines: {long:#?}");
}

#[test]
fn every_library_documents_its_public_items() {
    for (dir, name) in members() {
        let lib = dir.join("src/lib.rs");
        if name == "integration" || !lib.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&lib).expect("lib.rs");
        // With CI's `clippy -- -D warnings`, a missing doc comment fails the build.
        assert!(
            text.contains("#![warn(missing_docs)]") || text.contains("#![deny(missing_docs)]"),
            "{name}/src/lib.rs does not require documentation of public items"
        );
    }
}

/// The macros that put text on a user's terminal.
const PRINTS: [&str; 5] = ["print!", "println!", "eprint!", "eprintln!", "dbg!"];

/// The lines of `text` (1-based) outside comments and its tests (a `tests.rs` file is skipped
/// by the callers; here, everything from a `#[cfg(test)]` line on) that use one of `words` as
/// a whole word (`eprint!` is not `print!`).
fn used_outside_tests(text: &str, words: &[&str]) -> Vec<(usize, String)> {
    let mut hits = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for word in words {
            let whole = line.match_indices(word).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if whole {
                hits.push((n + 1, word.to_string()));
            }
        }
    }
    hits
}

/// Every use of `words` in the sources under `dir` except tests, as `path:line: word`; `skip`
/// says which files may.
fn offenders(dir: &Path, words: &[&str], skip: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        let inside = file.strip_prefix(dir).unwrap_or(&file);
        if skip(&file) || inside.components().any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable");
        for (line, word) in used_outside_tests(&text, words) {
            found.push(format!("{}:{line}: {word}", file.strip_prefix(root()).unwrap_or(&file).display()));
        }
    }
    found
}

#[test]
fn text_reaches_users_only_through_the_engines_output_module() {
    // The engine: no print macro, no `writeln!` of report lines and no handle on stdout or stderr
    // outside `engine/src/output/` (main.rs included: it hands errors to `output::notes`).
    let engine = root().join("engine/src");
    let output = engine.join("output");
    let mut words: Vec<&str> = PRINTS.to_vec();
    words.extend(["writeln!", "io::stdout()", "io::stderr()"]);
    let found = offenders(&engine, &words, |f| f.starts_with(&output));
    assert!(found.is_empty(), "the engine prints outside engine/src/output/: {found:#?}");
    // The library crates return reports and errors; they never print.
    for (dir, name) in members() {
        if name == "engine" || name == "integration" {
            continue;
        }
        let found = offenders(&dir.join("src"), &PRINTS, |_| false);
        assert!(found.is_empty(), "the library `{name}` prints: {found:#?}");
    }
}

#[test]
fn the_print_finder_finds_prints() {
    let text = "fn a() {\n    eprintln!(\"x\");\n    // println!(\"a comment\")\n    my_print!(1);\n    print!(\"y\");\n}\n#[cfg(test)]\nmod tests { fn t() { println!(); } }\n";
    let hits = used_outside_tests(text, &PRINTS);
    assert_eq!(hits, [(2, "eprintln!".to_string()), (5, "print!".to_string())]);
}

/// The top-level modules of a crate and, for each, the top-level modules it refers to through
/// `crate::` paths.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("inside src");
        let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable");
        let uses = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            // `$crate::` belongs to macros; skip it.
            if i > 0 && text.as_bytes()[i - 1] == b'$' {
                continue;
            }
            let rest = &text[i + "crate::".len()..];
            let target: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `crate::{a, b}` groups: every name in the braces.
            if target.is_empty() && rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(1)];
                for part in group.split(',') {
                    let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != module {
                        uses.insert(name);
                    }
                }
            } else if !target.is_empty() && target != module {
                uses.insert(target);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

/// A cycle in the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn module_imports_point_one_way() {
    for (dir, name) in members() {
        let graph = module_graph(&dir.join("src"));
        if let Some(cycle) = find_cycle(&graph) {
            panic!("modules of `{name}` import each other in a circle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_string(), BTreeSet::from(["b".to_string()])), ("b".to_string(), BTreeSet::new())].into();
    assert_eq!(find_cycle(&acyclic), None);
}
