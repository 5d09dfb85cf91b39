//! The `.wf` DSL: same IR as YAML, desugaring (templates, matrix, interpolation, imports), and
//! rendered diagnostics pointing into the `.wf` text.

mod common;

use common::{fixture, ir};

use std::path::Path;

use proptest::prelude::*;

fn load_file(path: &Path) -> dsl::Workflow {
    dsl::load_file(path).unwrap_or_else(|e| panic!("{} should load:\n{}", path.display(), common::render(&e)))
}

fn wf_errors(text: &str) -> String {
    common::errors("w.wf", text)
}

#[test]
fn spec_example_in_both_syntaxes_gives_the_same_ir() {
    let yaml = load_file(&fixture("spec.yml"));
    let wf = load_file(&fixture("spec.wf"));
    assert_eq!(ir(&yaml), ir(&wf));
    assert_eq!(wf.steps.len(), 3);
}

const TEMPLATES: &str = r#"
version 1
defaults { image "local/busybox:1" }
template unit(target) {
  inputs "src/**"
  run "make test-${target}"
  needs compile
  limits { timeout 5m }
}
step compile { run "make"  outputs "build/app" }
step test[target in ["x86", "arm"]] = unit(target) { env { T "${target}" } }
step other = unit("riscv") { needs test[x86], test[arm]  limits { timeout 1m } }
step grid[os in [linux, mac], cpu in ["x86", "arm"]] { run "echo ${os}-${cpu}" }
step argv { command ["/bin/echo", "hi \"there\"\n"] }
"#;

#[test]
fn templates_matrix_interpolation_and_overrides() {
    let wf = common::load("w.wf", TEMPLATES);
    let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["compile", "test[x86]", "test[arm]", "other", "grid[linux,x86]", "grid[linux,arm]", "grid[mac,x86]", "grid[mac,arm]", "argv"]
    );
    let arm = wf.step("test[arm]").unwrap();
    assert_eq!(arm.command, dsl::Command::Shell("make test-arm".into()));
    assert_eq!(arm.env.get("T").map(String::as_str), Some("arm"));
    assert_eq!(arm.needs, ["compile"]);
    assert_eq!(arm.inputs, ["src/**"]);
    assert_eq!(arm.limits.timeout.as_secs(), 300);
    let other = wf.step("other").unwrap();
    assert_eq!(other.command, dsl::Command::Shell("make test-riscv".into()));
    // The instance's `needs` replaces the template's; its `limits` are merged, the instance winning.
    assert_eq!(other.needs, ["test[x86]", "test[arm]"]);
    assert_eq!(other.limits.timeout.as_secs(), 60);
    let grid = wf.step("grid[mac,arm]").unwrap();
    assert_eq!(grid.command, dsl::Command::Shell("echo mac-arm".into()));
    let argv = wf.step("argv").unwrap();
    assert_eq!(argv.command, dsl::Command::Argv(vec!["/bin/echo".into(), "hi \"there\"\n".into()]));
}

#[test]
fn instance_env_and_limits_merge_with_the_template_and_defaults_fill_left_out_arguments() {
    let wf = common::load(
        "w.wf",
        r#"version 1
defaults { image "local/busybox:1" }
template lint(args = "-D warnings", path = "src") {
  inputs "${path}"
  env { CARGO_HOME "/cargo"  MODE "strict" }
  limits { cpus 2  timeout 5m }
  run "lint ${args} ${path}"
}
step plain = lint()
step one = lint("--all") { env { MODE "lax"  EXTRA "1" }  limits { memory 1g } }
step both = lint("", "lib")
step named = lint(path = "lib")
"#,
    );
    let plain = wf.step("plain").unwrap();
    assert_eq!(plain.command, dsl::Command::Shell("lint -D warnings src".into()));
    let one = wf.step("one").unwrap();
    assert_eq!(one.command, dsl::Command::Shell("lint --all src".into()));
    let env: Vec<(&str, &str)> = one.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("CARGO_HOME", "/cargo"), ("EXTRA", "1"), ("MODE", "lax")]);
    assert_eq!(one.limits.timeout.as_secs(), 300);
    assert_eq!(one.limits.memory, 1 << 30);
    let both = wf.step("both").unwrap();
    assert_eq!(both.command, dsl::Command::Shell("lint  lib".into()));
    assert_eq!(both.inputs, ["lib"]);
    let named = wf.step("named").unwrap();
    assert_eq!(named.command, dsl::Command::Shell("lint -D warnings lib".into()));
}

#[test]
fn template_parameter_defaults_are_checked() {
    insta::assert_snapshot!(wf_errors(
        "version 1\ntemplate t(a = \"x\", b) { image \"i\" run \"${a}${b}\" }\ntemplate u(a, c = \"${a}\", a) { image \"i\" run \"${a}\" }\nstep s = t(\"1\", \"2\", \"3\")\n"
    ));
    insta::assert_snapshot!(wf_errors(
        "version 1\ntemplate t(a, b = \"x\") { image \"i\" run \"${a}${b}\" }\nstep s = t(\"1\", c = \"2\")\nstep u = t(\"1\", a = \"2\")\nstep v = t(b = \"2\")\n"
    ));
}

#[test]
fn image_templates() {
    let wf = common::load(
        "w.wf",
        r#"version 1
template image base(from) { stage only from "${from}" { run "true" } }
image small = base("local/busybox:1")
step s { image small  run "true" }
"#,
    );
    assert!(matches!(wf.step("s").unwrap().image, dsl::ImageRef::Built(ref n) if n == "small"));
    match wf.images.get("small") {
        Some(dsl::ImageDef::Stages(stages)) => assert_eq!(stages[0].from, "local/busybox:1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn imports_make_templates_available_but_not_steps() {
    let wf = load_file(&fixture("wf/main.wf"));
    let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["compile", "lint"]);
    let lint = wf.step("lint").unwrap();
    assert_eq!(lint.inputs, ["src/**"]);
    assert_eq!(lint.command, dsl::Command::Shell("lint src".into()));
}

/// Relative paths (cargo runs tests in the crate directory) keep the rendered layout, which wraps
/// at a fixed width, independent of where the repository is checked out.
fn file_errors(path: &Path) -> String {
    match dsl::load_file(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => common::render(&e),
    }
}

#[test]
fn import_cycle_is_an_error_at_the_import_line() {
    insta::assert_snapshot!(file_errors(Path::new("tests/fixtures/wf/cycle_a.wf")));
}

#[test]
fn missing_import_is_an_error_at_the_import_line() {
    let out = file_errors(Path::new("tests/fixtures/wf/missing.wf"));
    assert!(out.contains("missing.wf:2:1"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn unknown_parameter_points_at_it() {
    insta::assert_snapshot!(wf_errors("version 1\ntemplate t(target) { image \"i\" run \"make ${targte}\" }\nstep s = t(\"x\")\n"));
}

#[test]
fn wrong_argument_count_points_at_the_call() {
    insta::assert_snapshot!(wf_errors("version 1\ntemplate t(a, b) { image \"i\" run \"${a}${b}\" }\nstep s = t(\"x\") { }\n"));
}

#[test]
fn broken_line_is_a_syntax_error_with_a_caret() {
    let err = dsl::load_str(Path::new("w.wf"), "version 1\nstep s {\n  run make\"\n}\n").unwrap_err();
    assert!(matches!(err, dsl::LoadError::Invalid { .. }));
    insta::assert_snapshot!(common::render(&err));
}

#[test]
fn syntax_errors_say_what_was_expected_in_words() {
    insta::assert_snapshot!(wf_errors("version 1\nstep s {\n  run \"make\"\n"));
    insta::assert_snapshot!(wf_errors("version 1\nstep s run \"make\"\n"));
    insta::assert_snapshot!(wf_errors("version 1\nimage i {\n  stage a from \"x\" { copy \"src\" }\n}\n"));
}

#[test]
fn resolver_errors_point_into_the_wf_file() {
    // Unknown keys, missing images and unknown needs come from the shared resolver.
    insta::assert_snapshot!(wf_errors("version 1\nstep s {\n  image \"local/busybox:1\"\n  rnu \"make\"\n  needs nope\n}\n"));
}

#[test]
fn duplicate_steps_and_keys() {
    insta::assert_snapshot!(wf_errors("version 1\ndefaults { image \"i\" }\nstep s { run \"a\" run \"b\" }\nstep s { run \"c\" }\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_panic_on_random_input(text in "\\PC{0,200}") {
        let _ = dsl::load_str(Path::new("w.wf"), &text);
        let _ = dsl::load_str(Path::new("w.yml"), &text);
    }

    #[test]
    fn no_panic_on_mutated_examples(cut in 0usize..2000, insert in "[ {}\\[\\]\"$,=()a-z0-9\\n#]{0,4}", which in 0usize..2) {
        let text = if which == 0 { TEMPLATES.to_string() } else {
            std::fs::read_to_string(fixture("spec.wf")).unwrap_or_default()
        };
        let mut at = cut.min(text.len());
        while !text.is_char_boundary(at) { at -= 1; }
        let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
        let _ = dsl::load_str(Path::new("w.wf"), &mutated);
        let _ = dsl::load_str(Path::new("w.yml"), &mutated);
        let truncated = &text[..at];
        let _ = dsl::load_str(Path::new("w.wf"), truncated);
    }
}

#[test]
fn stdlib_imports_resolve_to_the_shipped_library() {
    let wf = common::load(
        "w.wf",
        "version 1\nimport \"stdlib/make.wf\" as make\nstep t = make.target(\"test\") { image \"local/busybox:1\" }\n",
    );
    assert_eq!(wf.step("t").unwrap().command, dsl::Command::Shell("make test".into()));
}

#[test]
fn matrix_suffix_is_a_valid_step_name_in_yaml_too() {
    let wf = common::load("w.yml", "version: 1\nsteps:\n  t[a,b]: { image: i, run: x }\n");
    assert_eq!(wf.steps[0].name, "t[a,b]");
    let out = common::errors("w.yml", "version: 1\nsteps:\n  t[a,]: { image: i, run: x }\n");
    assert!(out.contains("invalid step name `t[a,]`"), "{out}");
}

#[test]
fn empty_file_is_reported_as_empty() {
    let out = wf_errors("# nothing here\n");
    assert!(out.contains("the workflow file is empty"), "{out}");
}

#[test]
fn repeated_caches_and_equivalent_yaml() {
    let wf = common::load(
        "w.wf",
        r#"version 1
step s {
  image "i"
  run "cargo build"
  caches { name cargo  path "/home/user/.cargo" }
  caches { name target path "/home/user/target" }
  user "1000:1000"
  workdir "/workspace/sub"
  network bridge
}
"#,
    );
    let yaml = common::load(
        "w.yml",
        "version: 1\nsteps:\n  s:\n    image: i\n    run: cargo build\n    caches:\n      - { name: cargo, path: /home/user/.cargo }\n      - { name: target, path: /home/user/target }\n    user: \"1000:1000\"\n    workdir: /workspace/sub\n    network: bridge\n",
    );
    assert_eq!(ir(&wf), ir(&yaml));
}

#[test]
fn non_ascii_text_keeps_columns() {
    let out = wf_errors("version 1 # ✓ é\nstep s { image \"ü\" run \"✓\" rnu \"x\" }\n");
    assert!(out.contains("w.wf:2:28: unknown key `rnu`"), "{out}");
}

#[test]
fn unknown_parameter_in_an_unused_template_is_reported_once() {
    let out = wf_errors("version 1\ntemplate t(a) { run \"${b}\" }\nstep s = t(\"x\") { image \"i\" }\n");
    assert_eq!(out.matches("unknown parameter `b`").count(), 1, "{out}");
    let out = wf_errors("version 1\ntemplate t(a) { run \"${b}\" }\nstep s { image \"i\" run \"x\" }\n");
    assert!(out.contains("w.wf:2:22: unknown parameter `b`"), "{out}");
}

#[test]
fn missing_closing_brace_names_the_unclosed_one() {
    // The parser notices it at the next declaration, lines later: the message names the `{`.
    let out = wf_errors("version 1\n\nstep a {\n  image \"local/busybox:1\"\n  run \"echo hi\"\n\nstep b {\n  run \"x\"\n}\n");
    assert!(out.contains("w.wf:3:8"), "{out}");
    assert!(out.contains("the `{` on line 3 is never closed"), "{out}");
    assert!(out.contains("`step` on line 7"), "{out}");
    insta::assert_snapshot!(out);
    // At the end of the file.
    insta::assert_snapshot!(wf_errors("version 1\nstep s {\n  env {\n    A \"1\"\n  run \"make\"\n}\n"));
}

#[test]
fn missing_opening_brace_names_the_word_found() {
    let out = wf_errors("version 1\nstep a\n  image \"x\"\n}\n");
    assert!(out.contains("found `image`"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn misspelled_module_names_it_and_suggests_the_closest() {
    let out = wf_errors("import \"stdlib/pythn.wf\" as py\nversion 1\n");
    assert!(out.contains("no module `pythn.wf` in the standard library"), "{out}");
    assert!(out.contains("did you mean `stdlib/python.wf`?"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn an_error_has_one_header() {
    let out = wf_errors("version 1\nstep s {\n  run \"make\"\n");
    assert_eq!(out.matches("error").count(), 1, "{out}");
    assert!(!out.contains("Error:"), "{out}");
}
