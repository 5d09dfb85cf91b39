//! Helpers shared by the end-to-end tests of the `engine` binary: a throw-away project folder
//! with its own cache directory, the binary, and polling of the daemon's state.
#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "local/busybox:1";

pub fn ensure_docker() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            matches!(ok, Ok(s) if s.success()),
            "these tests need a running Docker daemon (`docker info` failed); start one, e.g. `dockerd &`"
        );
        let have = Command::new("docker").args(["image", "inspect", IMAGE]).output().unwrap();
        if !have.status.success() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/import-busybox.sh");
            let st = Command::new("bash").arg(script).arg(IMAGE).status().unwrap();
            assert!(st.success(), "could not import {IMAGE}");
        }
    });
}

pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new(workflow: &str) -> Project {
        ensure_docker();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("workflow.yml"), workflow).unwrap();
        Project { dir }
    }

    /// A copy of the example project `examples/<name>` (its own `.engine/` left out), so that a
    /// test runs it exactly as its docs say without writing into the repository.
    pub fn example(name: &str) -> Project {
        ensure_docker();
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        copy_tree(&src, dir.path());
        Project { dir }
    }

    /// A copy of any project folder (a crate or package downloaded by a test).
    pub fn copy_of(src: &Path) -> Project {
        ensure_docker();
        let dir = tempfile::tempdir().unwrap();
        copy_tree(src, dir.path());
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Inside `.engine/`, which is never an input.
    pub fn cache_dir(&self) -> PathBuf {
        self.path().join(".engine/test-cache")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
        // Each project has its own cache: tests must not see each other's (or the user's) entries.
        c.args(args).current_dir(self.path()).env_remove("ENGINE_POLICY").env("NO_COLOR", "1").env("ENGINE_CACHE_DIR", self.cache_dir());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run the engine and measure the CPU time (user + system) it used: a bound on work done that
    /// does not depend on how loaded the machine is (tests run in parallel on 2 cores).
    // `wait4` below reaps the child; clippy cannot see that.
    #[allow(clippy::zombie_processes)]
    pub fn run_cpu_timed(&self, args: &[&str]) -> (Output, Duration) {
        use std::io::Read;
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.spawn(args);
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            bytes
        });
        let mut stdout = Vec::new();
        let _ = out.read_to_end(&mut stdout);
        let stderr = reader.join().unwrap();
        let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
        // SAFETY: plain wait4 on our own child's pid with valid out-pointers; std's `Child` is
        // not waited on afterwards.
        let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        assert!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
        (Output { status: std::process::ExitStatus::from_raw(status), stdout, stderr }, cpu)
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.unwrap();
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != ".engine" {
                std::fs::create_dir_all(&to).unwrap();
                copy_tree(&from, &to);
            }
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

/// The latest run record of `p` (run ids sort by time): its folder and `record.json`, parsed.
pub fn latest_record(p: &Project) -> (PathBuf, serde_json::Value) {
    let runs = p.path().join(".engine/runs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).collect();
    dirs.sort();
    let dir = dirs.pop().expect("a run record");
    let record = serde_json::from_slice(&std::fs::read(dir.join("record.json")).unwrap()).unwrap();
    (dir, record)
}

/// Every path under `dir` but the folders (symlinks not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir).into_iter().map(Result::unwrap).filter(|e| !e.file_type().is_dir()).map(|e| e.into_path()).collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Container ids carrying `label` (e.g. `engine.step=slow-abc`), stopped ones included.
pub fn containers(label: &str) -> Vec<String> {
    let o = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output().unwrap();
    text(&o.stdout).lines().map(str::to_string).collect()
}

/// Poll until `f` holds; panics with `what` after the deadline. No fixed sleeps: state, not time.
pub fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{n:x}", std::process::id())
}

/// The run id from the `run_started` event of an engine started with `--output json`.
pub fn first_event_run_id(child: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(event["event"], "run_started", "{line}");
    event["run_id"].as_str().unwrap().to_string()
}

/// Temporary folders of run `run_id` (`<tmp>/engine-run-<id>-*`).
pub fn run_dirs(run_id: &str) -> Vec<PathBuf> {
    let prefix = format!("engine-run-{run_id}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

pub fn signal(child: &Child, sig: i32) {
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// step -> status from the `run_finished` summary of a JSON event stream.
pub fn statuses(events: &[serde_json::Value]) -> std::collections::BTreeMap<String, String> {
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    last["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s["status"].as_str().unwrap().to_string()))
        .collect()
}

/// Containers created for run `run_id` between `since` and `until`, as the daemon recorded them.
pub fn containers_created(run_id: &str, since: f64, until: f64) -> usize {
    let o = Command::new("docker")
        .args(["events", "--since", &format!("{since:.3}"), "--until", &format!("{until:.3}")])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("label=engine.run={run_id}"), "--format", "{{.ID}}"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).lines().count()
}

/// Removes a test's images when dropped (or by [`Images::remove`]): every image tagged under the
/// workflow name `prefix` (`<prefix>/*`) and every image labelled with one of the test's unique
/// image names (`<prefix>-tool`, `<prefix>-legacy`), intermediate stages included.
pub struct Images(pub String);

impl Images {
    pub fn remove(&self) {
        for filter in [
            format!("reference={}/*", self.0),
            format!("label=engine.image={}-tool", self.0),
            format!("label=engine.image={}-legacy", self.0),
        ] {
            let o = Command::new("docker").args(["images", "-a", "-q", "--filter", &filter]).output().unwrap();
            for id in text(&o.stdout).lines() {
                let _ = Command::new("docker").args(["rmi", "-f", id]).output();
            }
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        self.remove();
    }
}
