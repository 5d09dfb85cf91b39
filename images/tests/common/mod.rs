//! Helpers shared by the image tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The offline busybox base (`scripts/import-busybox.sh`).
pub const BASE: &str = "local/busybox:1";

/// A name no other test (or earlier run) uses: image and workflow names are per test.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("docker CLI");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new("docker").args(args))).trim().to_string()
}

/// `docker ARGS` for cleanup: whatever happens.
pub fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// Writes `text` at `path`, creating its folders.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Builds `dockerfile` (its context an empty folder) with the classic builder as `tag`: a base
/// image for a test to build on, or to re-tag.
pub fn classic_build(tag: &str, dockerfile: &str) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("Dockerfile"), dockerfile);
    run(Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "--network", "none", "-t", tag]).arg(dir.path()));
}
