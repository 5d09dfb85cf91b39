//! YAML's `uses:`/`with:`: a library template instantiated from YAML gives the same IR as the
//! DSL's call, messages point into the YAML file, and `engine convert` writes it as an import and
//! a call with named arguments that loads to the same IR.

mod common;

use common::ir;
use std::path::Path;

const YAML: &str = r#"version: 1
name: uses
images:
  py:
    uses: stdlib/python.wf#toolchain
    with: { from: "local/python:current", tools: "pytest flake8" }
defaults: { image: py }
steps:
  lint:
    uses: stdlib/python.wf#lint
    with:
      args: --max-line-length 100
    env: { EXTRA: "1", PYTHONDONTWRITEBYTECODE: "0" }
  test:
    uses: stdlib/python.wf#test
    needs: [lint]
  scan:
    uses: stdlib/python.wf#scan
    with: { src: lib }
    inputs: ["lib", "pyproject.toml"]
  plain: { image: "local/busybox:1", run: "true" }
"#;

const WF: &str = r#"version 1
name "uses"
import "stdlib/python.wf" as python
image py = python.toolchain("local/python:current", "pytest flake8")
defaults { image py }
step lint = python.lint(args = "--max-line-length 100") { env { EXTRA "1"  PYTHONDONTWRITEBYTECODE "0" } }
step test = python.test() { needs lint }
step scan = python.scan("lib") { inputs "lib", "pyproject.toml" }
step plain { image "local/busybox:1"  run "true" }
"#;

#[test]
fn uses_with_gives_the_same_ir_as_the_dsl_call() {
    let yaml = common::load("w.yml", YAML);
    let wf = common::load("w.wf", WF);
    assert_eq!(ir(&yaml), ir(&wf));
    let lint = yaml.step("lint").unwrap();
    assert_eq!(lint.command, dsl::Command::Shell("flake8 --jobs 1 --max-line-length 100 .".into()));
    // env merged, the instance winning per variable.
    assert_eq!(lint.env.get("PYTHONDONTWRITEBYTECODE").map(String::as_str), Some("0"));
    assert_eq!(lint.env.get("EXTRA").map(String::as_str), Some("1"));
    assert_eq!(yaml.step("scan").unwrap().inputs, ["lib", "pyproject.toml"]);
    assert_eq!(yaml.step("test").unwrap().needs, ["lint"]);
}

#[test]
fn convert_writes_uses_as_an_import_and_a_call() {
    let loader = common::loader(Path::new("w.yml"));
    let text = dsl::convert_str_with(Path::new("w.yml"), YAML, &loader).unwrap_or_else(|e| panic!("{}", common::render(&e)));
    insta::assert_snapshot!(text);
    let back = common::load("w.wf", &text);
    assert_eq!(ir(&back), ir(&common::load("w.yml", YAML)));
}

#[test]
fn uses_errors_point_into_the_yaml_file() {
    insta::assert_snapshot!(common::errors(
        "w.yml",
        "version: 1\nsteps:\n  a:\n    uses: stdlib/python.wf\n  b:\n    uses: stdlib/pyton.wf#test\n  c:\n    uses: stdlib/python.wf#tset\n  d:\n    uses: stdlib/python.wf#lint\n    with: { argz: x }\n  e:\n    uses: stdlib/python.wf#scan\n    image: i\n  f:\n    uses: stdlib/python.wf#toolchain\n    with: { from: x }\n"
    ));
}
