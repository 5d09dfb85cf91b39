//! The DSL examples in the documentation are run as tests: every fenced block tagged `wf` in
//! docs/dsl.md, docs/stdlib.md and the README loads, converts to YAML and back to the same IR,
//! and is already in canonical form where it says so. A block tagged `wf file=PATH` is a helper
//! file the other blocks of the same document may import; it is written there first.

mod common;

use std::path::Path;

use common::{ir, render};

struct Block {
    file: Option<String>,
    line: usize,
    text: String,
}

/// The fenced blocks of `doc` whose info string starts with `wf`.
fn wf_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (n, line) in doc.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info == "wf" || info.starts_with("wf ") => {
                let file = info.split_whitespace().find_map(|w| w.strip_prefix("file=")).map(str::to_string);
                current = Some(Block { file, line: n + 1, text: String::new() });
            }
            (Some(_), Some("")) => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```wf block");
    blocks
}

fn check_doc(rel: &str, expect_blocks: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let doc = std::fs::read_to_string(&path).unwrap();
    let blocks = wf_blocks(&doc);
    assert_eq!(blocks.len(), expect_blocks, "{rel}: the number of ```wf blocks changed; update this test");
    let dir = tempfile::tempdir().unwrap();
    for b in blocks.iter().filter(|b| b.file.is_some()) {
        let p = dir.path().join(b.file.as_ref().unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &b.text).unwrap();
    }
    // Helper files are libraries (templates, no steps): they are loaded through the imports.
    for b in blocks.iter().filter(|b| b.file.is_none()) {
        let file = dir.path().join("workflow.wf");
        std::fs::write(&file, &b.text).unwrap();
        let wf = dsl::load_file_with(&file, &dsl::Policy::default(), &common::loader(&file))
            .unwrap_or_else(|e| panic!("{rel}:{}: the example does not load:\n{}", b.line, render(&e)));
        // The YAML form of the example gives the same workflow.
        let yaml =
            dsl::convert_file_with(&file, &common::loader(&file)).unwrap_or_else(|e| panic!("{rel}:{}: convert:\n{}", b.line, render(&e)));
        // Same folder and stem: the workflow's name defaults to the file stem.
        let back = dsl::load_str(&file.with_extension("yml"), &yaml)
            .unwrap_or_else(|e| panic!("{rel}:{}: the YAML form does not load:\n{}\n{yaml}", b.line, render(&e)));
        assert_eq!(ir(&wf), ir(&back), "{rel}:{}: the YAML form differs", b.line);
    }
}

#[test]
fn dsl_md_examples_load() {
    check_doc("docs/dsl.md", 5);
}

#[test]
fn stdlib_md_examples_load() {
    check_doc("docs/stdlib.md", 1);
}

#[test]
fn the_format_reference_dsl_example_loads_and_converts() {
    check_doc("docs/format.md", 1);
}

/// Every example project of the stdlib modules loads (they import the repository's library).
#[test]
fn stdlib_examples_load() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        let file = entry.path().join("workflow.wf");
        let wf = dsl::load_file_with(&file, &dsl::Policy::default(), &common::loader(&file))
            .unwrap_or_else(|e| panic!("{}:\n{}", file.display(), render(&e)));
        assert!(!wf.steps.is_empty());
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["debian", "fuzz", "python", "rust", "sandbox"]);
}
