//! The stdlib-workflows modules, each run on its example project in `examples/` exactly as
//! docs/stdlib.md says (`engine run` in the example's folder), on the real daemon.
//!
//! The toolchain images are built from the Debian base `local/debian:bookworm`
//! (`scripts/import-debian.sh`, imported here when missing) with Debian's packages, so these
//! tests need the network inside image-build containers. Where it is truly absent they are
//! skipped with the reason printed, unless `ENGINE_REQUIRE_NETWORK=1` (set by `.ci/run`) turns
//! that into a failure.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

const DEBIAN: &str = "local/debian:bookworm";

/// Whether the toolchain tests can run: the network reaches Debian's mirror from a container,
/// and the Debian base exists (imported once if missing). Prints why not.
fn debian_ready(test: &str) -> bool {
    static STATE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    ensure_docker();
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let result = state.get_or_insert_with(|| {
        let probe = Command::new("docker")
            .args(["run", "--rm", "--network", "bridge", IMAGE, "wget", "-q", "-O", "/dev/null"])
            .arg("http://deb.debian.org/debian/dists/bookworm/Release")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if !probe.success() {
            return Err("no network from containers to http://deb.debian.org (image builds install Debian packages)".into());
        }
        let have = Command::new("docker").args(["image", "inspect", DEBIAN]).output().unwrap();
        if !have.status.success() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/import-debian.sh");
            let st = Command::new("bash").arg(script).status().unwrap();
            assert!(st.success(), "could not import {DEBIAN} with scripts/import-debian.sh");
        }
        Ok(())
    });
    match result {
        Ok(()) => true,
        Err(why) => {
            assert!(std::env::var("ENGINE_REQUIRE_NETWORK").as_deref() != Ok("1"), "{test}: {why}, and ENGINE_REQUIRE_NETWORK=1");
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

fn read(p: &Project, rel: &str) -> String {
    std::fs::read_to_string(p.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs `engine run ARGS` in the project and returns (exit code, stdout + stderr).
fn run(p: &Project, args: &[&str]) -> (i32, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let o = p.run(&all);
    (code(&o), format!("{}{}", text(&o.stdout), text(&o.stderr)))
}

#[test]
fn sandbox_keeps_stdout_stderr_and_exit_code_of_untrusted_code() {
    let p = Project::example("sandbox");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    let stdout = read(&p, ".engine/out/try/result/stdout");
    for line in [
        "running as 1000:1000",
        "network: unreachable",
        "root filesystem: read-only",
        "capabilities: CapEff:0000000000000000",
        "processes: limited (fork failed)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing `{line}` in:\n{stdout}");
    }
    assert_eq!(read(&p, ".engine/out/try/result/stderr"), "something for stderr\n");
    assert_eq!(read(&p, ".engine/out/try/result/exit-code"), "3\n");

    // Code that runs too long is killed at the time limit and fails the step.
    p.write(
        "workflow.wf",
        "version 1\nimport \"stdlib/sandbox.wf\" as sandbox\ndefaults { image \"local/busybox:1\" }\n\
         step slow = sandbox.run_for(\"sleep 30\", \"1s\")\n",
    );
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("timed out after 1s"), "{out}");
}

#[test]
fn debian_packages_image_serves_a_step() {
    if !debian_ready("debian_packages_image_serves_a_step") {
        return;
    }
    let p = Project::example("debian");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(read(&p, ".engine/out/failing/failing.txt"), "audit\n");
    // The image is the engine's: a second run builds nothing and takes the step from the cache.
    let (rc, out) = run(&p, &["--output", "json"]);
    assert_eq!(rc, 0, "{out}");
    let events: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(statuses(&events).get("failing").map(String::as_str), Some("cached"), "{out}");
}

#[test]
fn python_lint_test_and_sarif_scan() {
    if !debian_ready("python_lint_test_and_sarif_scan") {
        return;
    }
    let p = Project::example("python");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("2 passed"), "{out}");
    let sarif: serde_json::Value = serde_json::from_str(&read(&p, ".engine/out/scan/security.sarif")).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{sarif:#}");
    assert_eq!(results[0]["ruleId"], "B307");
    let location = &results[0]["locations"][0]["physicalLocation"];
    assert_eq!(location["artifactLocation"]["uri"], "src/calc/__init__.py");
    assert_eq!(location["region"]["startLine"], 13);
    assert_eq!(sarif["runs"][0]["tool"]["driver"]["rules"][0]["id"], "B307");

    // A style problem fails lint, naming the file, line and column.
    p.write("src/calc/extra.py", "import os\n");
    let (rc, out) = run(&p, &["lint"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("./src/calc/extra.py:1:1: F401"), "{out}");
}

#[test]
fn rust_fmt_clippy_test_and_release_build() {
    if !debian_ready("rust_fmt_clippy_test_and_release_build") {
        return;
    }
    let p = Project::example("rust");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("test tests::greets_by_name ... ok"), "{out}");
    // The release binary is an output; Debian built it for this host's glibc or older.
    let bin = p.path().join(".engine/out/build/target/release/hello");
    let o = Command::new(&bin).arg("engine").output().unwrap();
    assert_eq!(text(&o.stdout), "hello, engine\n");

    // Badly formatted code fails the fmt check (and only that step runs: it is named).
    p.write("src/main.rs", &read(&p, "src/main.rs").replace("fn main() {", "fn   main( ) {"));
    let (rc, out) = run(&p, &["fmt"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("Diff in"), "{out}");
    // A clippy warning is an error.
    p.write("src/main.rs", &read(&p, "src/main.rs").replace("fn   main( ) {", "fn main() {\n    let x = 1;\n    let _ = x == x;"));
    let (rc, out) = run(&p, &["clippy"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("clippy::eq_op") || out.contains("equal expressions"), "{out}");
}

#[test]
fn fuzz_run_keeps_the_crash_as_an_output() {
    if !debian_ready("fuzz_run_keeps_the_crash_as_an_output") {
        return;
    }
    let p = Project::example("fuzz");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    let crashes: Vec<_> = std::fs::read_dir(p.path().join(".engine/out/fuzz/crashes")).unwrap().flatten().collect();
    assert_eq!(crashes.len(), 1, "{out}");
    let name = crashes[0].file_name().to_string_lossy().into_owned();
    assert!(name.starts_with("crash-"), "{name}");
    // The crashing input is the planted bug: tag `X`, then `!`, with a length past the end.
    let input = std::fs::read(crashes[0].path()).unwrap();
    assert!(input.len() >= 3 && input[0] == b'X' && input[2] == b'!', "{input:?}");
    assert!((input[1] as usize) + 2 > input.len(), "{input:?}");
    assert!(out.contains("heap-buffer-overflow"), "{out}");

    // The gate fails the run when the fuzzing step left a crash, naming it.
    p.write("workflow.wf", &format!("{}step gate = fuzz.check(\"fuzz\")\n", read(&p, "workflow.wf")));
    let (rc, out) = run(&p, &["gate"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("crashes found by fuzz:") && out.contains(&name), "{out}");
}
