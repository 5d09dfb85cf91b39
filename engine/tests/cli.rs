//! End-to-end tests of the `engine` binary against the real Docker daemon: exit codes, outputs,
//! JSON events, interrupts and recovery after SIGKILL. A missing daemon fails these tests loudly.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn quick_start_runs_and_passes_outputs_downstream() {
    let p = Project::new(&format!(
        r#"version: 1
defaults: {{ image: {IMAGE} }}
steps:
  greet:
    inputs: ["name.txt"]
    run: mkdir -p out && echo "hello, $(cat name.txt)" > out/greeting.txt
    outputs: ["out/greeting.txt"]
  shout:
    needs: [greet]
    run: tr a-z A-Z < out/greeting.txt > loud.txt && cat loud.txt
    outputs: ["loud.txt"]
"#
    ));
    p.write("name.txt", "world\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/shout/loud.txt")).unwrap(), "HELLO, WORLD\n");
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/greet/out/greeting.txt")).unwrap(), "hello, world\n");
    // Log lines are prefixed with their step; the summary names every step.
    let stdout = text(&o.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("shout") && l.ends_with("HELLO, WORLD")), "{stdout}");
    let stderr = text(&o.stderr);
    assert!(stderr.contains("greet") && stderr.contains("succeeded"), "{stderr}");
}

#[test]
fn a_workspace_holds_only_its_inputs_and_its_direct_needs_outputs() {
    let p = Project::new(&format!(
        r#"version: 1
defaults: {{ image: {IMAGE} }}
steps:
  a: {{ inputs: [in.txt], run: cp in.txt a.txt, outputs: [a.txt] }}
  b: {{ needs: [a], run: test -f a.txt && echo b > b.txt, outputs: [b.txt] }}
  c:
    needs: [b]
    run: ls -A /workspace; test -f b.txt && test ! -e a.txt && test ! -e in.txt && test ! -e private.txt
"#
    ));
    p.write("in.txt", "input\n");
    p.write("private.txt", "not an input of anyone\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    let listing: Vec<String> = text(&o.stdout).lines().filter(|l| l.starts_with('c')).map(str::to_string).collect();
    assert_eq!(listing.len(), 1, "c's /workspace holds b.txt only: {listing:?}");
    assert!(listing[0].ends_with("b.txt"), "{listing:?}");
}

#[test]
fn failing_step_exits_1_and_fail_fast_skips_dependents() {
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  bad: {{ run: exit 7 }}\n  after: {{ needs: [bad], run: echo never }}\n"
    ));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 1);
    let stderr = text(&o.stderr);
    assert!(stderr.contains("exited with code 7"), "{stderr}");
    assert!(stderr.contains("skipped"), "{stderr}");
    assert!(!text(&o.stdout).contains("never"));
}

const LINT_SCAN_REPORT: &str = r#"version: 1
defaults: { image: IMAGE }
steps:
  lint:
    continue_on_error: ALLOWED
    run: echo "E501 line too long" > lint.txt; exit 1
    outputs: [lint.txt, never.txt]
  scan: { run: echo sarif > scan.sarif, outputs: [scan.sarif] }
  report:
    needs: [lint, scan]
    run: cat lint.txt scan.sarif > report.txt
    outputs: [report.txt]
"#;

#[test]
fn fail_fast_names_what_it_did_not_start_and_continue_on_error_lets_the_run_go_on() {
    // Fail-fast (one job, so `scan` has not started when `lint` fails): the summary says which
    // steps were not started and how to run them.
    let p = Project::new(&LINT_SCAN_REPORT.replace("IMAGE", IMAGE).replace("ALLOWED", "false"));
    let o = p.run(&["run", "--jobs", "1"]);
    assert_eq!(code(&o), 1);
    let stderr = text(&o.stderr);
    assert!(stderr.contains("not started: the run stopped after `lint` failed (fail-fast; --keep-going runs it)"), "{stderr}");
    assert!(stderr.contains("1 step was not started after the failure (fail-fast): `scan`; `--keep-going` runs it"), "{stderr}");

    // Allowed to fail: the run succeeds, the independent step runs, and the step that needs the
    // failed one runs with what it wrote before failing (exported too, never cached).
    let p = Project::new(&LINT_SCAN_REPORT.replace("IMAGE", IMAGE).replace("ALLOWED", "true"));
    let o = p.run(&["run", "--jobs", "1", "--output", "json"]);
    let stdout = text(&o.stdout);
    assert_eq!(code(&o), 0, "{stdout}{}", text(&o.stderr));
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(events.iter().any(|e| e["event"] == "step_failed" && e["step"] == "lint" && e["allowed"] == true && e["exit_code"] == 1));
    let st = statuses(&events);
    assert_eq!((st["lint"].as_str(), st["scan"].as_str(), st["report"].as_str()), ("failed", "succeeded", "succeeded"));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/report/report.txt")).unwrap(), "E501 line too long\nsarif\n");
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/lint/lint.txt")).unwrap(), "E501 line too long\n");
    let o = p.run(&["run", "--jobs", "1"]);
    assert_eq!(code(&o), 0);
    let stderr = text(&o.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("lint ") && l.contains("failed (allowed)") && l.contains("exited with code 1")),
        "{stderr}"
    );
    // `lint` runs again (a failure is never cached); it wrote the same, so `report` is restored.
    assert!(stderr.contains("2 cached, 1 failed (allowed) in"), "{stderr}");
}

#[test]
fn naming_a_step_runs_it_and_what_it_needs_only() {
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a: {{ run: echo ran-a }}\n  b: {{ needs: [a], run: echo ran-b }}\n  c: {{ run: echo ran-c }}\n"
    ));
    let o = p.run(&["run", "workflow.yml", "b"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("ran-a") && out.contains("ran-b") && !out.contains("ran-c"), "{out}");
    // Without the file name too: the first word is a step when no such file exists.
    let o = p.run(&["run", "c"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ran-c") && !text(&o.stdout).contains("ran-a"));
    let o = p.run(&["run", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("no step named `nope`"), "{}", text(&o.stderr));
}

#[test]
fn json_output_is_one_event_per_line() {
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a: {{ run: echo hi }}\n  b: {{ needs: [a], run: exit 3 }}\n"
    ));
    let o = p.run(&["run", "--output", "json"]);
    assert_eq!(code(&o), 1);
    let events: Vec<serde_json::Value> =
        text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert!(events.iter().any(|e| e["event"] == "log" && e["step"] == "a" && e["line"] == "hi"));
    assert!(events.iter().any(|e| e["event"] == "step_finished" && e["step"] == "a"));
    assert!(events.iter().any(|e| e["event"] == "step_failed" && e["step"] == "b" && e["exit_code"] == 3));
    assert_eq!(events.last().unwrap()["status"], "failed");
}

#[test]
fn invalid_workflow_exits_2_with_file_line_col_and_caret() {
    let p = Project::new(&format!("version: 1\nsteps:\n  a:\n    image: {IMAGE}\n    run: echo\n    limits: {{ memory: 12q }}\n"));
    for cmd in [&["check"][..], &["run"][..]] {
        let o = p.run(cmd);
        assert_eq!(code(&o), 2, "{cmd:?}");
        let err = text(&o.stderr);
        assert!(err.contains("workflow.yml:6:"), "{err}");
        assert!(err.contains("12q") && err.contains('^'), "{err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    }
}

#[test]
fn environment_failures_exit_3_with_a_sentence() {
    let p = Project::new("version: 1\nsteps:\n  a: { image: local/does-not-exist:1, run: echo }\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("local/does-not-exist:1"), "{}", text(&o.stderr));

    let p = Project::new(&format!("version: 1\nsteps:\n  a: {{ image: {IMAGE}, run: echo }}\n"));
    let o = p.cmd(&["run"]).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("Docker daemon") && !err.contains("Error {"), "{err}");
}

#[test]
fn no_workflow_file_is_a_usage_error() {
    ensure_docker();
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_engine")).arg("run").current_dir(dir.path()).output().unwrap();
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("workflow.yml"));
    let o = Command::new(env!("CARGO_BIN_EXE_engine")).args(["run", "--jobs", "0"]).output().unwrap();
    assert_eq!(code(&o), 2);
}

#[test]
fn sigint_kills_and_removes_every_container_and_exits_130() {
    let step = unique("slow");
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  {step}: {{ run: sleep 300 }}\n  other-{step}: {{ run: sleep 300 }}\n"
    ));
    let child = p.spawn(&["run", "--jobs", "2"]);
    let label = format!("engine.step={step}");
    wait_for("the step's container", Duration::from_secs(30), || !containers(&label).is_empty());
    let started = Instant::now();
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", text(&o.stderr));
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(text(&o.stderr).contains("cancelled"), "{}", text(&o.stderr));
    assert!(containers(&label).is_empty());
    assert!(containers(&format!("engine.step=other-{step}")).is_empty());
}

#[test]
fn leftovers_of_a_sigkilled_engine_are_removed_by_clean_but_a_live_run_is_untouched() {
    let dead_step = unique("dead");
    let live_step = unique("live");
    let dead = Project::new(&format!("version: 1\nsteps:\n  {dead_step}: {{ image: {IMAGE}, run: sleep 300 }}\n"));
    let live = Project::new(&format!("version: 1\nsteps:\n  {live_step}: {{ image: {IMAGE}, run: sleep 300 }}\n"));
    let dead_label = format!("engine.step={dead_step}");
    let live_label = format!("engine.step={live_step}");

    let mut victim = dead.spawn(&["run", "--output", "json"]);
    let run_id = first_event_run_id(&mut victim);
    wait_for("the victim's container", Duration::from_secs(30), || !containers(&dead_label).is_empty());
    signal(&victim, libc::SIGKILL);
    victim.wait().unwrap();
    assert_eq!(containers(&dead_label).len(), 1, "SIGKILL leaves the container behind");
    assert_eq!(run_dirs(&run_id).len(), 1, "and its temporary folder");

    let survivor = live.spawn(&["run"]);
    wait_for("the live run's container", Duration::from_secs(30), || !containers(&live_label).is_empty());

    let o = dead.run(&["clean"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&dead_label).is_empty(), "clean removes the dead run's container");
    assert!(run_dirs(&run_id).is_empty(), "clean removes the dead run's temporary folder");
    assert_eq!(containers(&live_label).len(), 1, "clean leaves a live run alone");

    signal(&survivor, libc::SIGTERM);
    let o = survivor.wait_with_output().unwrap();
    assert_eq!(code(&o), 130);
    assert!(containers(&live_label).is_empty());
}

#[test]
fn the_next_run_removes_leftovers_of_a_sigkilled_engine() {
    let step = unique("orphan");
    let p = Project::new(&format!(
        "version: 1\nsteps:\n  {step}: {{ image: {IMAGE}, run: sleep 300 }}\n  quick: {{ image: {IMAGE}, run: 'true' }}\n"
    ));
    let label = format!("engine.step={step}");
    let mut victim = p.spawn(&["run", step.as_str()]);
    wait_for("the container", Duration::from_secs(30), || !containers(&label).is_empty());
    signal(&victim, libc::SIGKILL);
    victim.wait().unwrap();
    let o = p.run(&["run", "quick"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&label).is_empty());
}

#[test]
fn timeout_and_symlink_escape_fail_the_step_with_a_sentence_and_write_nothing_outside_out() {
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  slow: {{ run: sleep 60, limits: {{ timeout: 1s }} }}\n  sneaky: {{ run: ln -s /etc/passwd leak, outputs: [leak] }}\n"
    ));
    let out: PathBuf = p.path().join("custom-out");
    let started = Instant::now();
    let o = p.run(&["run", "--keep-going", "--out", out.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = text(&o.stderr);
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(err.contains("leak"), "{err}");
    assert!(!out.join("sneaky/leak").exists() && std::fs::symlink_metadata(out.join("sneaky/leak")).is_err());
}

#[test]
fn engine_lock_pins_base_images_and_a_changed_pin_stops_the_run() {
    let p = Project::new(&format!("version: 1\nsteps:\n  a: {{ image: {IMAGE}, run: echo locked }}\n"));
    let o = p.run(&["lock"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let lock: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.path().join("engine.lock")).unwrap()).unwrap();
    let pinned = lock["images"][IMAGE].as_str().unwrap().to_string();
    assert!(pinned.starts_with("sha256:"), "{lock}");
    assert_eq!(code(&p.run(&["run"])), 0);

    let tampered = std::fs::read_to_string(p.path().join("engine.lock")).unwrap().replace(&pinned, "sha256:0000");
    std::fs::write(p.path().join("engine.lock"), tampered).unwrap();
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 3);
    let err = text(&o.stderr);
    assert!(err.contains(IMAGE) && err.contains("sha256:0000") && err.contains("engine lock"), "{err}");
}

#[test]
fn a_wf_workflow_with_a_template_and_a_matrix_runs_and_its_instances_are_addressable() {
    ensure_docker();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("workflow.wf"),
        format!(
            r#"version 1
defaults {{ image "{IMAGE}" }}
template greet(who) {{
  run "echo hello-${{who}} > out.txt && cat out.txt"
  outputs "out.txt"
}}
step prep {{ run "echo prep" }}
step hi[who in ["x86", "arm"]] = greet(who) {{ needs prep }}
"#
        ),
    )
    .unwrap();
    let engine = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env("ENGINE_CACHE_DIR", dir.path().join(".engine/test-cache"))
            .output()
            .unwrap()
    };
    let o = engine(&["run"]);
    assert_eq!(code(&o), 0, "{}\n{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("hello-x86") && out.contains("hello-arm"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.path().join(".engine/out/hi[arm]/out.txt")).unwrap(), "hello-arm\n");

    let o = engine(&["run", "--no-cache", "hi[arm]"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("hello-arm") && !out.contains("hello-x86") && out.contains("prep"), "{out}");

    std::fs::write(dir.path().join("workflow.wf"), "version 1\nstep broken { run \"echo\" image }\n").unwrap();
    let o = engine(&["check"]);
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    assert!(err.contains("workflow.wf:2:") && err.contains('^'), "{err}");
}

#[test]
fn a_converted_workflow_has_the_same_plan_and_cache_keys_both_ways() {
    let p = Project::new(&format!(
        r#"version: 1
name: demo
env: {{ LANG: C.UTF-8 }}
defaults: {{ image: {IMAGE}, limits: {{ memory: 256m }} }}
steps:
  build:
    inputs: ["src/**"]
    run: mkdir -p out && cat src/* > out/all && echo "${{HOME:-none}}"
    outputs: [out/all]
    env: {{ MODE: fast }}
  test:
    needs: [build]
    command: ["/bin/sh", "-c", "cat out/all"]
    secrets: [TOKEN]
    profile: sandbox
"#
    ));
    p.write("src/a.txt", "a\n");
    let plan_keys = |file: &str| -> Vec<(String, String)> {
        let o = p.run(&["plan", file, "--output", "json"]);
        assert_eq!(code(&o), 0, "{file}: {}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap().to_string(), s["key"].as_str().unwrap_or("-").to_string()))
            .collect()
    };
    let o = p.run(&["convert", "workflow.yml"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    std::fs::write(p.path().join("converted.wf"), &o.stdout).unwrap();
    let o = p.run(&["convert", "converted.wf"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    std::fs::write(p.path().join("back.yml"), &o.stdout).unwrap();
    // Run once so that every step's key is known (a step's key includes its needs' outputs).
    let o = p.cmd(&["run"]).env("TOKEN", "t0ken").output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let original = plan_keys("workflow.yml");
    assert_eq!(original.len(), 2);
    assert!(original.iter().all(|(_, k)| k.len() == 64), "{original:?}");
    assert_eq!(plan_keys("converted.wf"), original);
    assert_eq!(plan_keys("back.yml"), original);

    // fmt is idempotent and leaves a formatted file alone.
    assert_eq!(code(&p.run(&["fmt", "converted.wf"])), 0);
    let once = std::fs::read_to_string(p.path().join("converted.wf")).unwrap();
    assert_eq!(code(&p.run(&["fmt", "--check", "converted.wf"])), 0);
    assert_eq!(std::fs::read_to_string(p.path().join("converted.wf")).unwrap(), once);
    assert_eq!(plan_keys("converted.wf"), original);
}

#[test]
fn fmt_check_prints_a_unified_diff_and_exits_1_and_keeps_shell_text() {
    let p = Project::new(&format!("version: 1\nsteps:\n  a: {{ image: {IMAGE}, run: echo }}\n"));
    let messy = "version 1\nstep a {\n    image \"local/busybox:1\"\n  run \"echo $? > x\"\n}\n";
    p.write("w.wf", messy);
    let o = p.run(&["fmt", "--check", "w.wf"]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("--- w.wf\n+++ w.wf (formatted)\n@@ "), "{out}");
    assert!(out.contains("\n-    image \"local/busybox:1\"\n+  image \"local/busybox:1\"\n"), "{out}");
    assert!(out.contains("\n+\n"), "the blank line after `version` is added:\n{out}");
    assert!(text(&o.stderr).contains("w.wf is not formatted: run `engine fmt w.wf`"), "{}", text(&o.stderr));
    // --check writes nothing.
    assert_eq!(std::fs::read_to_string(p.path().join("w.wf")).unwrap(), messy);
    let o = p.run(&["fmt", "w.wf"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let formatted = std::fs::read_to_string(p.path().join("w.wf")).unwrap();
    assert!(formatted.contains("run \"echo $? > x\""), "{formatted}");
    let o = p.run(&["fmt", "--check", "w.wf"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
}

#[test]
fn a_dsl_error_has_one_header() {
    let p = Project::new(&format!("version: 1\nsteps:\n  a: {{ image: {IMAGE}, run: echo }}\n"));
    p.write("w.wf", "version 1\nstep a {\n  image \"local/busybox:1\"\n  run \"x\"\n\nstep b { run \"y\" }\n");
    let o = p.run(&["check", "w.wf"]);
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    assert!(err.starts_with("engine: error: w.wf:2:8: invalid workflow syntax: the `{` on line 2 is never closed"), "{err}");
    assert_eq!(err.matches("error").count(), 1, "{err}");
    assert!(!err.contains("Error:"), "{err}");
}

/// `check` selects inputs as a run does: a pattern matching no file is an error at the pattern
/// (file:line:col, a caret, a hint), in YAML and in the DSL, and `run` says the same.
#[test]
fn check_reports_an_input_pattern_matching_no_file_at_the_pattern() {
    let p = Project::new(&format!(
        "version: 1\nsteps:\n  a:\n    image: {IMAGE}\n    inputs: [\"src/main.c\", \"docs/*.md\"]\n    run: cat src/main.c\n"
    ));
    p.write("src/main.c", "int main;\n");
    let o = p.run(&["check"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.starts_with("engine: error: workflow.yml:5:28: step `a`: input pattern `docs/*.md` matches no file"), "{err}");
    assert!(err.contains("^^^^^^^^^^^") && err.contains("matches no file"), "{err}");
    assert!(flat(&err).contains("patterns are relative to the workflow folder"), "{err}");
    assert!(!text(&o.stdout).contains("valid"), "{}", text(&o.stdout));
    // `run` stops with the same diagnostic before any container starts.
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).starts_with("engine: error: workflow.yml:5:28: step `a`"), "{}", text(&o.stderr));
    p.write("docs/a.md", "a\n");
    let o = p.run(&["check"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // The DSL: the pattern is pointed at in the `.wf` file, with a
    // suggestion when it is a typo of a file's path.
    p.write("w.wf", &format!("version 1\ndefaults {{ image \"{IMAGE}\" }}\n\nstep b {{\n  inputs \"src/mian.c\"\n  run \"true\"\n}}\n"));
    let o = p.run(&["check", "w.wf"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.starts_with("engine: error: w.wf:5:10: step `b`: input pattern `src/mian.c` matches no file"), "{err}");
    assert!(flat(&err).contains("did you mean `src/main.c`?"), "{err}");
}

fn flat(s: &str) -> String {
    s.split_whitespace().filter(|w| *w != "|").collect::<Vec<_>>().join(" ")
}
