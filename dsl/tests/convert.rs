//! `engine convert`: YAML → DSL and DSL → YAML give text that loads to the same IR.

mod common;

use common::{fixture, ir};

use std::path::Path;

fn convert(path: &Path, text: &str) -> String {
    dsl::convert_str_with(path, text, &common::loader(path))
        .unwrap_or_else(|e| panic!("{} should convert:\n{}", path.display(), common::render(&e)))
}

/// Converts `text` (read as `path`) and checks the result loads (as `other`) to the same IR.
/// `other` is the extension to load the output with, in the same directory (inputs are relative).
fn round_trip(path: &Path, text: &str, other: &str) -> String {
    let other = path.with_extension(other);
    let other = other.as_path();
    let before = common::load(&path.display().to_string(), text);
    let out = convert(path, text);
    let after = dsl::load_str(other, &out).unwrap_or_else(|e| panic!("converted text should load:\n{out}\n{}", common::render(&e)));
    assert_eq!(ir(&before), ir(&after), "converted text:\n{out}");
    out
}

const YAML: &str = r#"
version: 1
name: odd-strings
env: { LANG: C.UTF-8, PAT: 'a "quoted" \ back', EMPTY: "" }
defaults:
  image: local/busybox:1
  network: none
steps:
  build:
    run: |
      echo "${HOME}" $USER \
        && echo 'done'
    inputs: ["src/**"]
    outputs: [out]
    secrets: [API_TOKEN]
    caches:
      - { name: cargo, path: /home/user/.cargo }
      - { name: npm, path: /home/user/.npm }
    limits: { timeout: 5m, memory: 1g }
  "t2":
    needs: [build]
    command: ["/bin/echo", "tab\there", "$x"]
    cache: false
    env: { "A_B": "1" }
"#;

const WF: &str = r#"
version 1
env { PATHX "\$HOME/bin:\${PATH}" }
defaults { image "local/busybox:1" }
image tools {
  stage build from "local/debian:bookworm" {
    run "a", "b"
    copy "x/**" to "/x/"
  }
  stage final from "local/busybox:1" { copy from build "/usr/bin/gcc" to "/usr/bin/gcc" }
}
template unit(target) {
  inputs "src/**"
  run "make test-${target} && echo \$HOME"
  needs compile
  limits { timeout 5m }
}
step compile { image tools  run "make"  outputs "build/app"  caches { name "c" path "/c" } caches { name "d" path "/d" } }
step test[target in ["x86", "arm"]] = unit(target) { env { T "${target}" }  secrets API_TOKEN }
step other = unit("riscv") { needs test[x86], test[arm]  cache false }
step grid[os in [linux, mac], cpu in ["x86", "arm"]] { run "echo ${os}-${cpu}" }
"#;

#[test]
fn spec_example_converts_both_ways() {
    let yml = std::fs::read_to_string(fixture("spec.yml")).expect("fixture");
    let to_wf = round_trip(&fixture("spec.yml"), &yml, "wf");
    insta::assert_snapshot!("spec_yaml_to_wf", to_wf);
    let wf = std::fs::read_to_string(fixture("spec.wf")).expect("fixture");
    let to_yaml = round_trip(&fixture("spec.wf"), &wf, "yml");
    insta::assert_snapshot!("spec_wf_to_yaml", to_yaml);
    // And back again: the converted text converts to the same IR once more.
    round_trip(Path::new("spec.wf"), &to_wf, "yml");
    round_trip(Path::new("spec.yml"), &to_yaml, "wf");
}

#[test]
fn yaml_with_odd_strings_converts_to_dsl() {
    let out = round_trip(Path::new("w.yml"), YAML, "wf");
    assert!(out.contains(r#"\${HOME}"#), "{out}");
    round_trip(Path::new("w.wf"), &out, "yml");
}

#[test]
fn dsl_with_templates_matrix_images_converts_to_yaml() {
    let out = round_trip(Path::new("w.wf"), WF, "yml");
    assert!(out.contains("test[x86]"), "{out}");
    round_trip(Path::new("w.yml"), &out, "wf");
}

#[test]
fn dsl_with_imports_converts_to_yaml() {
    let path = fixture("wf/main.wf");
    let text = std::fs::read_to_string(&path).expect("fixture");
    round_trip(&path, &text, "yml");
}

#[test]
fn broken_files_give_their_usual_errors() {
    let e = dsl::convert_str(Path::new("w.yml"), "version: 2\n").expect_err("invalid");
    assert!(common::render(&e).contains("version"));
    let e = dsl::convert_str(Path::new("w.wf"), "step {").expect_err("invalid");
    assert!(common::render(&e).contains("w.wf"));
    assert!(dsl::convert_file(Path::new("/nonexistent/x.yml")).is_err());
}

/// Formats `text` (as `path`): idempotent, and the formatted file loads to the same IR.
fn check_format(path: &Path, text: &str) -> String {
    let once = dsl::format_wf(path, text).unwrap_or_else(|e| panic!("{} should format:\n{}", path.display(), common::render(&e)));
    let twice = dsl::format_wf(path, &once).expect("formatted text formats");
    assert_eq!(once, twice, "format is idempotent");
    let before = dsl::load_str(path, text).map(|w| ir(&w));
    let after = dsl::load_str(path, &once).map(|w| ir(&w));
    match (before, after) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "formatted:\n{once}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("load differs after formatting: {:?} vs {:?}\n{once}", a.is_ok(), b.is_ok()),
    }
    once
}

#[test]
fn format_is_idempotent_and_keeps_the_ir() {
    for name in ["spec.wf", "wf/main.wf", "wf/lib/common.wf"] {
        let path = fixture(name);
        let text = std::fs::read_to_string(&path).expect("fixture");
        check_format(&path, &text);
    }
    let out = check_format(Path::new("w.wf"), WF);
    assert!(out.contains("step test[target in [\"x86\", \"arm\"]] = unit(target) {"), "{out}");
    // The DSL printed by convert is already canonical except for grouping.
    let yml = std::fs::read_to_string(fixture("spec.yml")).expect("fixture");
    let wf = convert(&fixture("spec.yml"), &yml);
    check_format(Path::new("spec.wf"), &wf);
    let odd = "version 1 # c\nstep a{run \"x\\$y\tz $w\" needs [ ] }\ntemplate image t ( a,b ) { stage s from \"${a}\" { copy from s \"${b}\" to \"/\" } }";
    let out = check_format(Path::new("o.wf"), odd);
    insta::assert_snapshot!("format_odd", out);
}

const COMMENTED: &str = r#"# A workflow with comments everywhere.
version 1   # the format
name "demo"

# Imports
import "stdlib/make.wf" as make

# The image.
image tools {
  # first stage
  stage build from "local/busybox:1" {
    run "echo #not-a-comment"  # trailing
  }
  # dangling at the end of a block
}

step a { run "x" }  # after a one-line step

step b {   # on the opening line
  needs a
  # before inputs
  inputs "a.txt",   # inside a list of values
    "b.txt"
}
step e { }  # empty
# the end
"#;

/// Every comment survives formatting, in place: own-line comments before what follows them,
/// at its indentation; trailing ones at the end of their line. A `#` in a string is not one.
#[test]
fn format_keeps_every_comment() {
    let out = check_format(Path::new("c.wf"), COMMENTED);
    let comments = |t: &str| t.lines().filter_map(|l| l.find("# ").map(|i| l[i..].to_string())).collect::<Vec<_>>();
    assert_eq!(comments(&out), comments(COMMENTED), "{out}");
    assert!(out.contains("run \"echo #not-a-comment\"  # trailing"), "{out}");
    insta::assert_snapshot!("format_comments", out);
    // The shipped library is commented throughout: formatting it loses none of that.
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib-workflows");
    for entry in std::fs::read_dir(lib).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let out = check_format(&entry.path(), &text);
        assert_eq!(comments(&out), comments(&text), "{}", entry.path().display());
    }
}

#[test]
fn format_reports_syntax_errors() {
    let e = dsl::format_wf(Path::new("w.wf"), "step {").expect_err("syntax error");
    assert!(common::render(&e).contains("w.wf:1"));
}

proptest::proptest! {
    #[test]
    fn any_string_survives_yaml_to_dsl_and_back(run in "\\PC{0,40}", val in "[ -~\\t\\n]{0,20}") {
        let yaml = format!(
            "version: 1\ndefaults: {{ image: local/busybox:1 }}\nenv: {{ V: {} }}\nsteps:\n  s:\n    run: {}\n",
            serde_json::to_string(&val).expect("json"),
            serde_json::to_string(&format!("x{run}")).expect("json"),
        );
        if dsl::load_str(Path::new("p.yml"), &yaml).is_ok() {
            let wf = round_trip(Path::new("p.yml"), &yaml, "wf");
            round_trip(Path::new("p.wf"), &wf, "yml");
            let formatted = dsl::format_wf(Path::new("p.wf"), &wf).expect("formats");
            let a = dsl::load_str(Path::new("p.wf"), &formatted).expect("loads");
            proptest::prop_assert_eq!(ir(&a), ir(&dsl::load_str(Path::new("p.wf"), &wf).expect("loads")));
        }
    }
}

proptest::proptest! {
    #[test]
    fn any_string_survives_dsl_to_yaml_and_back(run in "\\PC{0,40}", val in "[ -~\\t\u{85}\u{2028}é]{0,20}") {
        let q = |s: &str| {
            let mut o = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    '$' => o.push_str("\\$"),
                    '\n' => o.push_str("\\n"),
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        };
        let wf = format!(
            "version 1\ndefaults {{ image \"local/busybox:1\" }}\nenv {{ V {} }}\nstep s {{ run {} }}\n",
            q(&val),
            q(&format!("x{run}")),
        );
        if dsl::load_str(Path::new("p.wf"), &wf).is_ok() {
            let yaml = round_trip(Path::new("p.wf"), &wf, "yml");
            round_trip(Path::new("p.yml"), &yaml, "wf");
        }
    }
}

/// Every YAML example written in the test files (the DSL's and the engine's end-to-end tests; raw
/// or plain string literals, `format!` templates filled in) that loads converts to DSL and back
/// with the same IR, hence the same cache keys.
#[test]
fn every_loadable_yaml_example_in_the_tests_converts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = ["load.rs", "errors.rs", "wf.rs"].iter().map(|f| root.join("dsl/tests").join(f)).collect();
    // The engine's end-to-end tests write their workflows with `format!`.
    for dir in ["engine/tests", "tests/tests"] {
        let mut rs: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("test folder")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        rs.sort();
        files.extend(rs);
    }
    let mut converted = 0;
    for file in &files {
        let src = std::fs::read_to_string(file).expect("test source");
        let raw = src.split("r#\"").skip(1).filter_map(|c| c.split_once("\"#").map(|(t, _)| t.to_string()));
        // Plain literals such as "version: 1\nsteps: ...", with the Rust escapes undone.
        let plain = src.split("\"version: 1").skip(1).map(|c| {
            let mut text = String::from("version: 1");
            let mut cs = c.chars();
            while let Some(ch) = cs.next() {
                match ch {
                    '"' => break,
                    '\\' => match cs.next() {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('x') => {
                            let hex: String = cs.by_ref().take(2).collect();
                            text.push(u8::from_str_radix(&hex, 16).map(char::from).unwrap_or('?'));
                        }
                        // A line continuation: the newline and the next line's indentation go.
                        Some('\n') => {
                            let rest: String = cs.clone().collect();
                            let skip = rest.len() - rest.trim_start().len();
                            for _ in 0..rest[..skip].chars().count() {
                                cs.next();
                            }
                        }
                        Some(o) => text.push(o),
                        None => break,
                    },
                    ch => text.push(ch),
                }
            }
            text
        });
        for text in raw.chain(plain) {
            let text = unformat(&text);
            let text = text.as_str();
            let yml = Path::new("/nonexistent-dir/ex.yml");
            if let Err(e) = dsl::load_str(yml, text) {
                if std::env::var("SHOW_SKIPPED").is_ok() {
                    eprintln!("SKIP {}:\n{text}\n{}", file.display(), common::render(&e));
                }
                continue;
            }
            let wf = round_trip(yml, text, "wf");
            round_trip(Path::new("/nonexistent-dir/ex.wf"), &wf, "yml");
            check_format(Path::new("/nonexistent-dir/ex.wf"), &wf);
            converted += 1;
        }
    }
    // Literals that are pieces of a workflow (built up with push_str), scripts, or invalid on
    // purpose do not load and are skipped; `SHOW_SKIPPED=1` lists them.
    assert!(converted >= 35, "only {converted} examples loaded");
}

/// A `format!` template as the workflow it gives: `{IMAGE}` is the test image, any other
/// `{name}` a value of its own, `{{`/`}}` braces. A literal without `{{` is left alone (in YAML
/// a lone `{` is a flow mapping, which a format string would have to escape).
fn unformat(text: &str) -> String {
    if !text.contains("{{") && !text.contains("{IMAGE}") {
        return text.to_string();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(end) = tail.find('}').filter(|_| tail.starts_with('{')) {
            let name = &tail[1..end];
            out.push_str(if name == "IMAGE" { "local/busybox:1" } else { "placeholder" });
            rest = &tail[end + 1..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Shell text is left alone: a `$` of the shell stays `$` (never `\$`), escapes stay as written.
#[test]
fn format_leaves_shell_text_alone() {
    let text = "version 1\n\nstep s {\n  run \"echo $? $HOME $$ \\$x ${p} \\\"q\\\"\"\n}\n";
    let text = text.replace("${p}", "$ {p}");
    let out = check_format(Path::new("s.wf"), &text);
    assert_eq!(out, text);
}

/// A block written on one line stays on one line when it fits; one too long is expanded.
/// One-line declarations on consecutive lines stay together.
#[test]
fn format_keeps_one_line_blocks_and_groups() {
    let text = "version 1\ndefaults { image \"i\" }\n\nstep a { run \"x\"  limits { cpus 2  memory 2g } }\nstep b = t() { needs a }\n\nstep c {\n  run \"y\"\n}\n\ntemplate t() { run \"z\" }\n";
    let out = check_format(Path::new("o.wf"), text);
    assert_eq!(out, text);
    let long = format!("version 1\nstep a {{ run \"{}\"  needs b }}\nstep b {{ run \"x\" }}\n", "x".repeat(90));
    let out = check_format(Path::new("l.wf"), &long);
    assert!(out.contains(&format!("step a {{\n  run \"{}\"\n  needs b\n}}\n\nstep b {{ run \"x\" }}\n", "x".repeat(90))), "{out}");
}

/// The shipped library and the examples are formatted (`engine fmt --check` passes on each), so
/// that CI keeps them so; formatting them keeps what they mean and is idempotent.
#[test]
fn library_and_examples_are_fmt_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("stdlib-workflows")).unwrap().flatten().map(|e| e.path()).collect();
    files.extend(std::fs::read_dir(root.join("examples")).unwrap().flatten().map(|e| e.path().join("workflow.wf")).filter(|p| p.is_file()));
    files.sort();
    assert!(files.len() >= 11, "{files:?}");
    let mut unformatted = Vec::new();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "wf")) {
        let text = std::fs::read_to_string(path).unwrap();
        let once = dsl::format_wf(path, &text).unwrap_or_else(|e| panic!("{}:\n{}", path.display(), common::render(&e)));
        assert_eq!(dsl::format_wf(path, &once).expect("formats"), once, "{}: format is idempotent", path.display());
        if once != text {
            unformatted.push(path.display().to_string());
        }
    }
    assert!(unformatted.is_empty(), "not fmt-clean (run `engine fmt` on each): {unformatted:?}");
}

/// A step named as a matrix instance (`pack[gzip]`, e.g. a one-element matrix) is written by
/// its name, as `needs` writes it, and reads back to the same workflow.
#[test]
fn matrix_instance_names_convert_as_written() {
    let wf = "version 1\ndefaults { image \"local/busybox:1\" }\nstep pack[c in [\"gzip\"]] { run \"echo ${c}\" }\nstep grid[os in [linux], cpu in [x86]] { run \"x\" }\nstep use { needs pack[gzip], grid[linux,x86]  run \"x\" }\n";
    let yml = convert(Path::new("m.wf"), wf);
    let back = convert(Path::new("m.yml"), &yml);
    assert!(back.contains("step pack[gzip] {"), "{back}");
    assert!(back.contains("step grid[linux,x86] {"), "{back}");
    assert!(!back.contains("m0"), "{back}");
    let a = dsl::load_str(Path::new("m.wf"), wf).expect("loads");
    let b = dsl::load_str(Path::new("m.wf"), &back).expect("loads");
    assert_eq!(ir(&a), ir(&b));
    check_format(Path::new("m.wf"), &back);
}
