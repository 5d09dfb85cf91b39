//! Rendered diagnostics for each class of load error (insta snapshots under tests/snapshots/).
mod common;

use std::path::Path;

use common::{errors, errors_with};
use insta::assert_snapshot;

#[test]
fn yaml_syntax_error() {
    assert_snapshot!(errors("syntax.yml", "version: 1\nsteps:\n  a: [unclosed\n"));
}

#[test]
fn unsupported_version() {
    assert_snapshot!(errors("v2.yml", "version: 2\nsteps:\n  a: { image: alpine, run: 'true' }\n"));
}

#[test]
fn missing_version() {
    assert_snapshot!(errors("nov.yml", "steps:\n  a: { image: alpine, run: 'true' }\n"));
}

#[test]
fn unknown_keys_with_suggestions() {
    assert_snapshot!(errors(
        "keys.yml",
        "version: 1\nstep:\n  x: 1\nsteps:\n  a:\n    image: alpine\n    run: make\n    ouputs: [build]\n    limits: { memroy: 1g }\n"
    ));
}

#[test]
fn wrong_types() {
    assert_snapshot!(errors(
        "types.yml",
        "version: 1\nenv: [A]\nsteps:\n  a:\n    image: alpine\n    run: make\n    inputs: src\n    needs: [{ x: 1 }]\n    cache: maybe\n    env: { X: [1] }\n"
    ));
}

#[test]
fn run_and_command() {
    assert_snapshot!(errors(
        "cmd.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  both:\n    run: make\n    command: [make]\n  neither:\n    inputs: [a]\n"
    ));
}

#[test]
fn missing_image() {
    assert_snapshot!(errors("img.yml", "version: 1\nsteps:\n  a:\n    run: make\n"));
}

#[test]
fn unknown_needs_and_self() {
    assert_snapshot!(errors(
        "needs.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  compile:\n    run: make\n  test:\n    needs: [complie, test]\n    run: make test\n"
    ));
}

#[test]
fn duplicate_step() {
    assert_snapshot!(errors("dup.yml", "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: one\n  a:\n    run: two\n"));
}

#[test]
fn cycle_names_every_step() {
    assert_snapshot!(errors(
        "cycle.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    needs: [c]\n    run: x\n  b:\n    needs: [a]\n    run: x\n  c:\n    needs: [b]\n    run: x\n  d:\n    needs: [a]\n    run: x\n"
    ));
}

#[test]
fn bad_units() {
    assert_snapshot!(errors(
        "units.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: x\n    limits:\n      memory: 12q\n      tmpfs: 1m\n      cpus: 0\n      pids: -3\n      timeout: 0s\n"
    ));
}

#[test]
fn bad_outputs_and_inputs() {
    assert_snapshot!(errors(
        "paths.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: x\n    inputs: [/etc/passwd, ../secret]\n    outputs: ['', /abs, a/../../b]\n"
    ));
}

#[test]
fn output_collisions() {
    assert_snapshot!(errors(
        "collide.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  one:\n    run: x\n    outputs: [build]\n  two:\n    run: x\n    outputs: [build/app]\n  join:\n    needs: [one, two]\n    run: x\n  over:\n    needs: [one]\n    run: x\n    outputs: [build/]\n"
    ));
}

#[test]
fn network_user_profile_secrets_workdir_names() {
    assert_snapshot!(errors(
        "iso.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: x\n    network: host\n    user: root\n  b:\n    run: x\n    network: brige\n    user: \"0:0\"\n    profile: sandbx\n    secrets: [API_TOKEN, 1BAD]\n    workdir: src\n  -bad:\n    run: x\n"
    ));
}

#[test]
fn images_validation() {
    assert_snapshot!(errors(
        "images.yml",
        r#"version: 1
images:
  t:
    stages:
      - name: build
        from: final
        copy:
          - { from: nowhere, src: a, dst: /a }
          - { src: ../x, dst: /x }
      - name: final
        from: local/busybox:1
        colour: red
  both:
    stages: []
    dockerfile: Dockerfile
steps:
  a: { image: t, run: x }
"#
    ));
}

#[test]
fn non_ascii_comment_keeps_columns() {
    // Markers count characters; spans are bytes. The caret must still sit under `12q`.
    assert_snapshot!(errors(
        "utf8.yml",
        "version: 1 # Größe: ünïcödé ✓✓✓\ndefaults: { image: alpine } # ✓\nsteps:\n  a: { run: x, limits: { memory: 12q } } # 日本\n"
    ));
}

const POLICY: &str =
    "version: 1\nmax_limits:\n  memory: 2g\n  timeout: 5m\nnetworks: [none]\nimage_prefixes: [\"local/\"]\nallow_root: false\n";

#[test]
fn policy_violations() {
    let policy = dsl::Policy::load_str(Path::new("/etc/engine/policy.yml"), POLICY).unwrap_or_else(|e| panic!("{}", common::render(&e)));
    assert_snapshot!(errors_with(
        "pol.yml",
        r#"version: 1
defaults:
  image: docker.io/evil:latest
steps:
  a:
    run: x
    network: bridge
    user: "0"
    limits: { memory: 4g }
  b:
    image: local/ok:1
    run: x
"#,
        &policy
    ));
}

#[test]
fn policy_file_errors() {
    let err = dsl::Policy::load_str(
        Path::new("policy.yml"),
        "version: 1\nmax_limit: {}\nmax_limits: { memory: lots }\nnetworks: [host]\nallow_root: yes\n",
    )
    .expect_err("policy should not load");
    assert_snapshot!(common::render(&err));
}

#[test]
fn policy_violation_in_defaults_is_reported_once() {
    let policy = dsl::Policy::load_str(Path::new("policy.yml"), "max_limits: { memory: 1g }\nnetworks: [bridge]\n")
        .unwrap_or_else(|e| panic!("{}", common::render(&e)));
    assert_snapshot!(errors_with(
        "once.yml",
        "version: 1\ndefaults:\n  image: local/x\n  network: bridge\n  limits: { memory: 2g }\nsteps:\n  a: { run: x }\n  b: { run: x }\n  c: { run: x, network: none }\n",
        &policy
    ));
}

#[test]
fn caches_validation() {
    assert_snapshot!(errors(
        "caches.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: x\n    caches:\n      - { name: cargo, path: /home/user/.cargo }\n      - { name: cargo2, path: /home/user/.cargo/ }\n      - { name: -bad, path: relative/dir }\n      - { name: ws, path: /workspace/target }\n      - { name: run, path: /run }\n      - { name: t, path: /tmp }\n      - { name: up, path: /home/../etc }\n      - { nmae: x, path: /x }\n      - { path: /y }\n      - just-a-name\n  b:\n    run: x\n    cachs: []\n  c:\n    run: x\n    caches: { name: x, path: /x }\n"
    ));
}

#[test]
fn worker_label_validation() {
    let many: Vec<String> = (0..20).map(|i| format!("l{i}")).collect();
    assert_snapshot!(errors(
        "labels.yml",
        &format!(
            "version: 1\ndefaults: {{ image: alpine }}\nsteps:\n  a:\n    run: x\n    runs_on: [gpu, GPU, -x, \"a b\", {long}]\n  b:\n    run: x\n    runs_on: [{many}]\n  c:\n    run: x\n    runs_on: gpu\n",
            long = "l".repeat(65),
            many = many.join(", ")
        )
    ));
}
