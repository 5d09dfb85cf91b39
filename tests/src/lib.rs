//! Shared helpers for the integration tests. Every test here needs a Docker daemon and the test
//! images (`scripts/test-images.sh`); a missing daemon is a loud failure, never a skip.
//!
//! Each test builds its own run id and temp folders, so tests can run in parallel against one
//! daemon; `assert_clean` checks that nothing labelled with the run id is left behind.
//!
//! What the tests observe on the daemon (listings, inspections) they ask the `docker` CLI, an
//! independent witness: only the `docker` crate talks to the Docker API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dsl::{CacheMount, Command, ImageRef, Limits, Step};
use engine::docker::{DockerExecutor, Transfer, LABEL_RUN};
use engine::events::{Event, EventSink, Stream};
use engine::executor::{CacheMountJob, StepContext, StepJob, StepOutcome};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const BUSYBOX: &str = "local/busybox:1";

/// Connect to the real daemon or panic with a message that says what is missing. The test image
/// is imported (offline, `scripts/import-busybox.sh`) the first time it is found missing.
pub async fn executor(transfer: Transfer) -> DockerExecutor {
    match DockerExecutor::connect().await {
        Ok(exec) => {
            if exec.check_image(BUSYBOX).await.is_err() {
                import_test_image();
            }
            if let Err(e) = exec.check_image(BUSYBOX).await {
                panic!("integration tests need the test image: {e}");
            }
            exec.with_transfer(transfer)
        }
        Err(e) => panic!("integration tests need a running Docker daemon: {e}"),
    }
}

fn import_test_image() {
    static IMPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = IMPORT.lock().unwrap_or_else(|e| e.into_inner());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/import-busybox.sh");
    let status = std::process::Command::new("bash").arg(script).arg(BUSYBOX).status();
    assert!(matches!(status, Ok(s) if s.success()), "could not import {BUSYBOX} with scripts/import-busybox.sh");
}

/// A run id unique across parallel tests and repeated runs.
pub fn run_id(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("t-{test}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A busybox step running `script` with the spec's defaults and a 60 s timeout.
pub fn step(name: &str, script: &str) -> Step {
    Step {
        limits: Limits { timeout: Duration::from_secs(60), ..Limits::default() },
        ..Step::new(name, ImageRef::Reference(BUSYBOX.into()), Command::Shell(script.into()))
    }
}

/// One step's job with its own temp workspace and collect folder.
pub struct Fixture {
    pub run_id: String,
    pub workspace: TempDir,
    pub collect: TempDir,
}

impl Fixture {
    pub fn new(test: &str) -> Fixture {
        Fixture {
            run_id: run_id(test),
            workspace: tempfile::tempdir().expect("temp workspace"),
            collect: tempfile::tempdir().expect("temp collect folder"),
        }
    }

    /// Put a file into the workspace (the step's inputs).
    pub fn input(&self, rel: &str, content: &str) {
        let path = self.workspace.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create input folder");
        }
        std::fs::write(path, content).expect("write input");
    }

    pub fn job(&self, step: Step, secrets: &[(&str, &str)]) -> StepJob {
        StepJob {
            run_id: self.run_id.clone(),
            image: match &step.image {
                ImageRef::Reference(r) | ImageRef::Built(r) => r.clone(),
            },
            step: Arc::new(step),
            workspace: self.workspace.path().to_path_buf(),
            collect_to: self.collect.path().to_path_buf(),
            secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            caches: Vec::new(),
        }
    }

    /// `job` with cache mounts: each `(name, path)` is backed by `cache_root/<name>` (bind
    /// transfer) and is written into the step's IR too, as the planner would.
    pub fn job_with_caches(&self, mut step: Step, caches: &[(&str, &str)], cache_root: &Path) -> StepJob {
        step.caches = caches.iter().map(|(name, path)| CacheMount { name: name.to_string(), path: path.to_string() }).collect();
        let mut job = self.job(step, &[]);
        job.caches = caches
            .iter()
            .map(|(name, path)| CacheMountJob { name: name.to_string(), path: path.to_string(), host_dir: cache_root.join(name) })
            .collect();
        job
    }

    pub fn collected(&self, rel: &str) -> String {
        std::fs::read_to_string(self.collect.path().join(rel)).unwrap_or_else(|e| panic!("collected `{rel}`: {e}"))
    }
}

/// What a step printed, and how it ended.
pub struct Ran {
    pub outcome: StepOutcome,
    pub events: Vec<Event>,
    pub elapsed: Duration,
}

impl Ran {
    pub fn stdout(&self) -> Vec<String> {
        self.lines(Stream::Stdout)
    }

    pub fn lines(&self, want: Stream) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log { stream, line, .. } if *stream == want => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    /// `key=value` lines of stdout as a map.
    pub fn values(&self) -> HashMap<String, String> {
        self.stdout().iter().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

pub async fn run(exec: &DockerExecutor, job: StepJob) -> Ran {
    run_with(exec, job, CancellationToken::new()).await
}

pub async fn run_with(exec: &DockerExecutor, job: StepJob, cancel: CancellationToken) -> Ran {
    let (events, mut rx) = EventSink::channel();
    // The sink is bounded: receive while the step runs.
    let collector = tokio::spawn(async move {
        let mut collected = Vec::new();
        while let Some(e) = rx.recv().await {
            collected.push(e);
        }
        collected
    });
    let started = Instant::now();
    let outcome = exec.run_step(job, StepContext { events, cancel }).await;
    let elapsed = started.elapsed();
    // The step's container is removed off its critical path; as a run does at its end, wait for
    // that, so that what a test sees afterwards is what a finished run leaves.
    exec.daemon().settle().await;
    let collected = collector.await.expect("the event collector");
    Ran { outcome, events: collected, elapsed }
}

/// Run the `docker` CLI with `args`; its stdout, or `Err` with its stderr when it failed.
pub async fn docker_cli(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker").args(args).output().await.map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The non-empty lines `docker <args>` prints; panics if it fails.
pub async fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = docker_cli(args).await.unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")));
    out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// `docker inspect` (or `docker volume inspect`, per `args`) of one object as JSON; `Err` with
/// the CLI's words when there is no such object.
pub async fn docker_inspect(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = docker_cli(args).await?;
    let list: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    list.get(0).cloned().ok_or_else(|| format!("docker {}: nothing", args.join(" ")))
}

/// Containers (all states, full IDs) and volumes (names) labelled with `run_id`.
pub async fn leftovers(_exec: &DockerExecutor, run_id: &str) -> (Vec<String>, Vec<String>) {
    let filter = format!("label={LABEL_RUN}={run_id}");
    let containers = docker_lines(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]).await;
    let volumes = docker_lines(&["volume", "ls", "-q", "--filter", &filter]).await;
    (containers, volumes)
}

/// Nothing of `run_id` remains on the daemon once the removals the executor started have ended
/// (a step's container is removed off its critical path; a run waits for that at its end).
pub async fn assert_clean(exec: &DockerExecutor, run_id: &str) {
    exec.daemon().settle().await;
    let (containers, volumes) = leftovers(exec, run_id).await;
    assert!(containers.is_empty() && volumes.is_empty(), "left behind by {run_id}: containers {containers:?}, volumes {volumes:?}");
}

/// Remove the persistent volume of each cache in `names` (archive transfer), if there is one:
/// caches outlive runs by design, so tests clean up their own.
pub async fn remove_cache_volumes(_exec: &DockerExecutor, names: &[&str]) {
    for name in names {
        let volume = engine::docker::cache_volume_name(name);
        if docker_inspect(&["volume", "inspect", &volume]).await.is_ok() {
            docker_lines(&["volume", "rm", "-f", &volume]).await;
        }
    }
}

/// Poll `probe` until it returns `Some`, or panic after `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
