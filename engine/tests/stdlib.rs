//! The stdlib-workflows modules, each run on its example project in `examples/` exactly as
//! docs/stdlib.md says (`engine run` in the example's folder), and on real projects nobody here
//! wrote (a crate from crates.io, an sdist from PyPI), on the real daemon.
//!
//! The toolchain images are made without a registry: `local/debian:bookworm` by
//! `scripts/import-debian.sh`, `local/rust:current` and `local/python:current` from this machine's
//! own Rust and Python by `scripts/import-rust.sh` and `scripts/import-python.sh` (each imported
//! here when missing). Making them, and the fetch steps, need the network from containers
//! (Debian's mirror, crates.io, PyPI); the real projects are downloaded on the host. Where the
//! network is truly absent these tests are skipped with the reason printed, unless
//! `ENGINE_REQUIRE_NETWORK=1` (set by `.ci/run`) turns that into a failure.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

const DEBIAN: &str = "local/debian:bookworm";
const RUST: &str = "local/rust:current";
const PYTHON: &str = "local/python:current";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

/// Whether the toolchain tests can run: the network reaches Debian's mirror from a container,
/// and the toolchain images exist (each imported once if missing). Prints why not.
fn network_ready(test: &str) -> bool {
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
        for (tag, make) in [(DEBIAN, "import-debian.sh"), (RUST, "import-rust.sh"), (PYTHON, "import-python.sh")] {
            let have = Command::new("docker").args(["image", "inspect", tag]).output().unwrap();
            if !have.status.success() {
                let st = Command::new("bash").arg(script(make)).status().unwrap();
                assert!(st.success(), "could not make {tag} with scripts/{make}");
            }
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

/// Runs a host command that downloads a real project; it must succeed.
fn host(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}{}", text(&o.stdout), text(&o.stderr));
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
    // The code's failure is the step's, allowed: the run succeeds, the summary says how it ended.
    assert_eq!(rc, 0, "{out}");
    assert!(summary_row(&out, "try").is_some_and(|r| r.contains("failed (allowed)") && r.contains(" 3  exited with code 3")), "{out}");
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

    // Code that runs too long is killed at the time limit; what it printed before is kept. Code
    // that runs out of memory is killed by the kernel, and the summary says so.
    p.write(
        "workflow.wf",
        "version 1\nimport \"stdlib/sandbox.wf\" as sandbox\ndefaults { image \"local/busybox:1\" }\n\
         step slow = sandbox.run_for(\"echo started; echo warming up >&2; sleep 30\", \"2s\")\n\
         step hog = sandbox.run(\"echo before; a=x; while true; do a=$a$a; done\") { limits { memory \"32m\" } }\n\
         step fine = sandbox.run(\"echo ok\")\n",
    );
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(summary_row(&out, "slow").is_some_and(|r| r.contains("failed (allowed)") && r.contains("timed out after 2s")), "{out}");
    assert_eq!(read(&p, ".engine/out/slow/result/stdout"), "started\n");
    assert_eq!(read(&p, ".engine/out/slow/result/stderr"), "warming up\n");
    assert!(!p.path().join(".engine/out/slow/result/exit-code").exists());
    let hog = summary_row(&out, "hog").unwrap_or_else(|| panic!("{out}"));
    assert!(hog.contains("failed (allowed)") && hog.contains("137") && hog.contains("out of memory"), "{out}");
    assert_eq!(read(&p, ".engine/out/hog/result/stdout"), "before\n");
    assert_eq!(read(&p, ".engine/out/hog/result/exit-code"), "137\n");
    assert!(summary_row(&out, "fine").is_some_and(|r| r.contains("succeeded")), "{out}");
    assert!(out.contains("1 succeeded, 2 failed (allowed)"), "{out}");
    // Failures are never cached: the next run runs them again.
    let (rc, out) = run(&p, &["--output", "json"]);
    assert_eq!(rc, 0, "{out}");
    let events: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let st = statuses(&events);
    assert_eq!((st["slow"].as_str(), st["hog"].as_str(), st["fine"].as_str()), ("failed", "failed", "cached"), "{out}");
}

/// The summary table's row of `step` in a run's output.
fn summary_row<'a>(out: &'a str, step: &str) -> Option<&'a str> {
    out.lines().find(|l| l.split_whitespace().next() == Some(step) && !l.contains(" | "))
}

#[test]
fn debian_packages_image_serves_a_step() {
    if !network_ready("debian_packages_image_serves_a_step") {
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
fn python_lint_test_sarif_scan_and_package() {
    if !network_ready("python_lint_test_sarif_scan_and_package") {
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
    // The library's release: an sdist and a wheel.
    let mut dist: Vec<String> = std::fs::read_dir(p.path().join(".engine/out/dist/dist"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dist.sort();
    assert_eq!(dist, ["calc-0.1.0-py3-none-any.whl", "calc-0.1.0.tar.gz"]);

    // flake8 reads the project's setup.cfg (max-line-length = 100): a 95-character line passes.
    p.write("src/calc/extra.py", &format!("LONG = \"{}\"\n", "x".repeat(86)));
    let (rc, out) = run(&p, &["lint"]);
    assert_eq!(rc, 0, "{out}");
    // A style problem fails lint, naming the file, line and column.
    p.write("src/calc/extra.py", "import os\n");
    let (rc, out) = run(&p, &["lint"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("./src/calc/extra.py:1:1: F401"), "{out}");
    // Arguments reach flake8: ignoring F401 passes.
    p.write("workflow.wf", &read(&p, "workflow.wf").replace("python.lint()", "python.lint(\"--extend-ignore F401\")"));
    let (rc, out) = run(&p, &["lint"]);
    assert_eq!(rc, 0, "{out}");
    // The scan reads only its folder: a file outside `src` is not an input (the scan is cached).
    let (rc, out) = run(&p, &["scan"]);
    assert_eq!(rc, 0, "{out}");
    p.write("tools/danger.py", "import subprocess\nsubprocess.call('ls', shell=True)\n");
    let (rc, out) = run(&p, &["scan", "--output", "json"]);
    assert_eq!(rc, 0, "{out}");
    let events: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(statuses(&events).get("scan").map(String::as_str), Some("cached"), "{out}");
}

/// A real package nobody here wrote: more-itertools' sdist from PyPI, with a build backend
/// (flit_core) added to the toolchain image; its own test suite passes and it packages.
#[test]
fn python_builds_a_real_sdist_from_pypi() {
    if !network_ready("python_builds_a_real_sdist_from_pypi") {
        return;
    }
    let download = tempfile::tempdir().unwrap();
    host(
        Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "more-itertools==10.5.0", "-d"])
            .arg(download.path()),
    );
    let sdist =
        std::fs::read_dir(download.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with(".tar.gz")).unwrap();
    host(Command::new("tar").arg("-C").arg(download.path()).arg("-xzf").arg(&sdist));
    let p = Project::copy_of(&download.path().join("more-itertools-10.5.0"));
    p.write(
        "workflow.wf",
        "version 1\nimport \"stdlib/python.wf\" as python\n\
         image py = python.toolchain(\"local/python:current\", \"pytest flake8 bandit build flit_core~=3.9\")\n\
         defaults { image py }\nstep lint = python.lint(\"--max-line-length 100\")\nstep test = python.test()\n\
         step scan = python.scan(\"more_itertools\")\nstep dist = python.package() { needs test }\n",
    );
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.lines().any(|l| l.contains(" passed") && l.contains("subtests passed")), "{out}");
    for f in ["more_itertools-10.5.0-py3-none-any.whl", "more_itertools-10.5.0.tar.gz"] {
        assert!(p.path().join(".engine/out/dist/dist").join(f).is_file(), "{f}: {out}");
    }
}

#[test]
fn rust_fetch_fmt_clippy_doctests_release_and_package_with_a_current_toolchain() {
    if !network_ready("rust_fetch_fmt_clippy_doctests_release_and_package_with_a_current_toolchain") {
        return;
    }
    let p = Project::example("rust");
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    // The dependency came from crates.io's sparse index; unit and doc tests ran (/tmp is exec).
    assert!(out.contains("Downloaded itoa"), "{out}");
    assert!(out.contains("test tests::greets_by_name ... ok"), "{out}");
    assert!(out.contains("test src/lib.rs - greeting (line 6) ... ok"), "{out}");
    // The release binary is an output; the image's glibc is this host's (Debian 12) or older.
    let bin = p.path().join(".engine/out/build/target/release/hello");
    let o = Command::new(&bin).arg("engine").output().unwrap();
    assert_eq!(text(&o.stdout), "hello #1, engine\n");
    assert!(p.path().join(".engine/out/package/package/hello-0.1.0.crate").is_file(), "{out}");

    // Badly formatted code fails the fmt check (and only that step runs: it is named).
    p.write("src/main.rs", &read(&p, "src/main.rs").replace("fn main() {", "fn   main( ) {"));
    let (rc, out) = run(&p, &["fmt"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("Diff in"), "{out}");
    // rustfmt.toml is an input and is read: with hard tabs, the 4-space file is not formatted.
    p.write("src/main.rs", &read(&p, "src/main.rs").replace("fn   main( ) {", "fn main() {"));
    let (rc, out) = run(&p, &["fmt"]);
    assert_eq!(rc, 0, "{out}");
    p.write("rustfmt.toml", "hard_tabs = true\n");
    let (rc, out) = run(&p, &["fmt"]);
    assert_eq!(rc, 1, "{out}");
    std::fs::remove_file(p.path().join("rustfmt.toml")).unwrap();
    // A clippy warning is an error by default; with arguments that do not deny it, it is not.
    p.write("src/main.rs", &read(&p, "src/main.rs").replace("fn main() {", "fn main() {\n    let v = vec![1];\n    let _ = v.len() == 0;"));
    let (rc, out) = run(&p, &["clippy"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("clippy::len_zero") || out.contains("length comparison to zero"), "{out}");
    p.write("workflow.wf", &read(&p, "workflow.wf").replace("rust.clippy()", "rust.clippy(\"--all-targets\")"));
    let (rc, out) = run(&p, &["clippy"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("length comparison to zero"), "{out}");
}

/// Vendored dependencies (`cargo vendor` and `.cargo/config.toml`): no fetch step, and a fresh
/// cargo cache, so the build can only have used the vendored sources (steps have no network).
#[test]
fn rust_builds_from_vendored_sources_without_network() {
    if !network_ready("rust_builds_from_vendored_sources_without_network") {
        return;
    }
    let p = Project::example("rust");
    let home = tempfile::tempdir().unwrap();
    let vendored =
        Command::new("cargo").args(["vendor", "--locked", "vendor"]).current_dir(p.path()).env("CARGO_HOME", home.path()).output().unwrap();
    assert!(vendored.status.success(), "cargo vendor: {}", text(&vendored.stderr));
    let config = text(&vendored.stdout);
    assert!(config.contains("vendored-sources"), "{config}");
    p.write(".cargo/config.toml", &config);
    let cache = unique("cargo-vendored");
    let wf = read(&p, "workflow.wf").replace("step fetch = rust.fetch()\n", "").replace(" { needs fetch }", "");
    let wf = wf.replace("rust.test()", &format!("rust.test() {{ caches {{ name \"{cache}\"  path \"/cargo\" }} }}"));
    p.write("workflow.wf", &wf);
    let (rc, out) = run(&p, &["test"]);
    assert_eq!(rc, 0, "{out}");
    assert!(!out.contains("Downloaded"), "{out}");
    assert!(out.contains("test src/lib.rs - greeting (line 6) ... ok"), "{out}");
}

/// A real crate nobody here wrote: semver from crates.io (no Cargo.lock, a build script, tests/,
/// doctests, a bench that needs nightly): its tests and doctests pass and it packages.
#[test]
fn rust_tests_and_packages_a_real_crate_from_crates_io() {
    if !network_ready("rust_tests_and_packages_a_real_crate_from_crates_io") {
        return;
    }
    let download = tempfile::tempdir().unwrap();
    let crate_file = download.path().join("semver.crate");
    host(Command::new("curl").args(["-sSfL", "-o"]).arg(&crate_file).arg("https://static.crates.io/crates/semver/semver-1.0.23.crate"));
    host(Command::new("tar").arg("-C").arg(download.path()).arg("-xzf").arg(&crate_file));
    let p = Project::copy_of(&download.path().join("semver-1.0.23"));
    p.write(
        "workflow.wf",
        "version 1\nimport \"stdlib/rust.wf\" as rust\nimage rust = rust.toolchain(\"local/rust:current\")\n\
         defaults { image rust }\nstep fetch = rust.fetch()\nstep test = rust.test() { needs fetch }\n\
         step clippy = rust.clippy(\"--lib --tests\") { needs fetch }\nstep package = rust.package() { needs test }\n",
    );
    let (rc, out) = run(&p, &[]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("Doc-tests semver"), "{out}");
    assert!(p.path().join(".engine/out/package/package/semver-1.0.23.crate").is_file(), "{out}");
}

#[test]
fn fuzz_run_keeps_the_crash_as_an_output() {
    if !network_ready("fuzz_run_keeps_the_crash_as_an_output") {
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
