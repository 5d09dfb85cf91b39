//! The record's schema (docs/records.md): what `record.json` holds.

use std::time::SystemTime;

use cache::{ActionKey, Digest, ImageId, KeyComponents, OutputEntry};
use serde::{Deserialize, Serialize};

use crate::definition::StepDefinition;

/// The `schema` field of every record this engine writes.
pub const SCHEMA: &str = "engine.run-record/v2";
/// The schema of records written by older engines: listed and shown, not replayed or attested
/// (their input files are inline, not in the store).
pub const SCHEMA_V1: &str = "engine.run-record/v1";

/// One run: `.engine/runs/<run id>/record.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`SCHEMA`] (or [`SCHEMA_V1`] for a record read from an older engine).
    pub schema: String,
    /// The run's id: hex seconds of its start, then 6 hex digits.
    pub run_id: String,
    /// `incomplete` until the run ends; then how it ended.
    pub status: RecordStatus,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC; `None` while incomplete.
    pub finished_at: Option<String>,
    /// Wall time of the run.
    pub duration_ms: Option<u64>,
    /// The engine that ran it.
    pub engine: EngineInfo,
    /// The host and daemon it ran on.
    pub host: HostInfo,
    /// The workflow file.
    pub workflow: WorkflowInfo,
    /// The command line.
    pub invocation: Invocation,
    /// In plan order (every step before the steps that need it).
    pub steps: Vec<StepRecord>,
}

impl RunRecord {
    /// Written by this engine's schema (not an older one's).
    pub fn is_current(&self) -> bool {
        self.schema == SCHEMA
    }

    /// Steps whose container ran to an end (succeeded or failed), not restored from the cache.
    pub fn steps_run(&self) -> usize {
        self.steps.iter().filter(|s| s.executed()).count()
    }

    /// Steps whose outputs were restored from the cache.
    pub fn steps_cached(&self) -> usize {
        self.steps.iter().filter(|s| s.status == StepState::Cached).count()
    }

    /// What `engine runs --output json` says about the run.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.run_id.clone(),
            started_at: self.started_at.clone(),
            workflow: self.workflow.name.clone(),
            status: self.status,
            steps_run: self.steps_run(),
            steps_cached: self.steps_cached(),
            steps_total: self.steps.len(),
            schema: self.schema.clone(),
        }
    }
}

/// One line of `engine runs`: a run in brief.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run id.
    pub id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// The workflow's name.
    pub workflow: String,
    /// How the run ended (or `incomplete`).
    pub status: RecordStatus,
    /// Steps whose container ran to an end.
    pub steps_run: usize,
    /// Steps restored from the cache.
    pub steps_cached: usize,
    /// Every planned step.
    pub steps_total: usize,
    /// The record's schema.
    pub schema: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// The run has not ended (yet): the engine is running, or died.
    Incomplete,
    /// Every step succeeded.
    Succeeded,
    /// A step failed.
    Failed,
    /// The environment failed (Docker, disk, ...).
    EnvironmentFailed,
    /// Interrupted.
    Cancelled,
}

impl RecordStatus {
    /// The status as the record spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordStatus::Incomplete => "incomplete",
            RecordStatus::Succeeded => "succeeded",
            RecordStatus::Failed => "failed",
            RecordStatus::EnvironmentFailed => "environment_failed",
            RecordStatus::Cancelled => "cancelled",
        }
    }
}

/// The engine that ran a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `engine`.
    pub name: String,
    /// Its version.
    pub version: String,
}

impl EngineInfo {
    /// This engine (the workspace's version: records and engine are versioned together).
    pub fn current() -> EngineInfo {
        EngineInfo { name: "engine".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

/// The host a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    /// `linux`, as Rust names it.
    pub os: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// The daemon's version (`20.10.24`).
    pub docker_version: String,
    /// The daemon's API version (`1.41`).
    pub docker_api_version: String,
}

/// The workflow file of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowInfo {
    /// The workflow's name.
    pub name: String,
    /// The workflow file as given on the command line.
    pub file: String,
    /// The folder it lives in (inputs are relative to it), absolute.
    pub dir: String,
    /// The digest of the workflow file's bytes; written `sha256:<hex>`.
    #[serde(with = "cache::digest::prefixed")]
    pub digest: Digest,
    /// Every `.wf` module it imported (directly or not), each once, with the digest of the text
    /// that was loaded. Absent from records of engines that did not keep them.
    #[serde(default)]
    pub modules: Vec<ModuleInfo>,
}

/// One imported `.wf` module of a run's workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its path relative to the workflow's folder, or `stdlib/<path>` for a module of the
    /// workflow library.
    pub name: String,
    /// The digest of its text as loaded; written `sha256:<hex>`.
    #[serde(with = "cache::digest::prefixed")]
    pub digest: Digest,
}

/// The command line that started the run (nothing from the environment but what it names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invocation {
    /// Steps named on the command line (empty: all).
    pub targets: Vec<String>,
    /// `--jobs`.
    pub jobs: usize,
    /// `--keep-going`.
    pub keep_going: bool,
    /// `--no-cache`.
    pub no_cache: bool,
    /// Where outputs were exported, absolute.
    pub out_dir: String,
    /// The remote cache of the run (`--remote-cache` or the policy's), if it had one: its URL
    /// (never a credential) and mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cache: Option<RemoteCacheInfo>,
}

/// The remote cache a run used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCacheInfo {
    /// `oci://HOST[:PORT]/REPO`.
    pub url: String,
    /// `read`, `write` or `readwrite`.
    pub mode: String,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not finished when the record was written (still running, or the engine died).
    Pending,
    /// Its container ran and succeeded.
    Succeeded,
    /// Its outputs were restored from the cache.
    Cached,
    /// It failed.
    Failed,
    /// Not run (a step it needs failed, or the run stopped first).
    Skipped,
    /// Interrupted.
    Cancelled,
}

impl StepState {
    /// The state as the record spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Succeeded => "succeeded",
            StepState::Cached => "cached",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// The step has outputs in the record (and the store): it can be replayed and attested.
    pub fn has_outputs(&self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Cached)
    }
}

/// One step of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// How it ended.
    pub status: StepState,
    /// Outputs restored from the cache; no container ran.
    pub cached: bool,
    /// The step as resolved from the workflow (defaults and profile applied): image, command,
    /// env, workdir, user, network, limits, caches, secret names, outputs, needs.
    pub definition: StepDefinition,
    /// The image the container was (or would have been) created from.
    pub image: Option<ImageRecord>,
    /// The action key, once computed; written as 64 hex digits.
    pub key: Option<ActionKey>,
    /// What the key was computed from, except the input files (see `inputs_manifest`).
    pub key_components: Option<KeyComponents>,
    /// The digest of the step's input manifest (every input file's path, mode and content
    /// digest), kept once in the cache store (`v1/inputs/<aa>/<digest>.json`) however many steps
    /// and runs share it. Set for steps that succeeded or came from the cache.
    #[serde(default)]
    pub inputs_manifest: Option<Digest>,
    /// The number of input files.
    pub inputs_count: usize,
    /// `SOURCE_DATE_EPOCH` as the step saw it (unless the step set it itself).
    pub source_date_epoch: Option<u64>,
    /// Every file, folder and symlink of the outputs, with content digests.
    pub outputs: Vec<OutputEntry>,
    /// The digest of all outputs, which downstream keys use; written as 64 hex digits.
    pub outputs_digest: Option<Digest>,
    /// The container's exit code.
    pub exit_code: Option<i64>,
    /// Why it failed, was skipped or cancelled.
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    /// How long its container ran (0 when cached).
    pub duration_ms: Option<u64>,
    /// Its log beside the record.
    pub log: Option<LogRecord>,
}

impl StepRecord {
    /// A step not started yet.
    pub fn pending(definition: StepDefinition) -> StepRecord {
        StepRecord {
            name: definition.name.clone(),
            status: StepState::Pending,
            cached: false,
            definition,
            image: None,
            key: None,
            key_components: None,
            inputs_manifest: None,
            inputs_count: 0,
            source_date_epoch: None,
            outputs: Vec::new(),
            outputs_digest: None,
            exit_code: None,
            reason: None,
            started_at: None,
            duration_ms: None,
            log: None,
        }
    }

    /// Its container ran to an end (succeeded or failed); it was not restored from the cache.
    pub fn executed(&self) -> bool {
        matches!(self.status, StepState::Succeeded | StepState::Failed) && !self.cached
    }
}

/// The image a step's container was created from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference as written (`local/busybox:1`), or `images.<name>` for an engine-built one.
    pub reference: String,
    /// The image ID (`sha256:<hex>`).
    pub id: ImageId,
    /// For an image the engine built (`images.<name>`): the images it was built from (each
    /// stage's base, or what its Dockerfile's `FROM` and `--from` name), with their IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<BaseImage>,
}

/// An image an engine-built image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The reference as written in the workflow or Dockerfile.
    pub reference: String,
    /// Its image ID when the image was built (`sha256:<hex>`).
    pub id: ImageId,
}

/// A step's log beside the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// Relative to the run's folder: `logs/<n>-<step>.log`.
    pub path: String,
    /// The digest of the log's bytes as kept (lines as shown, secrets masked, and the line
    /// saying what was cut, if anything was); written `sha256:<hex>`.
    #[serde(with = "cache::digest::prefixed")]
    pub digest: Digest,
    /// The size of the kept log.
    pub bytes: u64,
    /// Bytes of the step's log cut out of the middle to keep it within the log limit (0: none).
    #[serde(default)]
    pub cut: u64,
}

/// RFC 3339 UTC time, millisecond precision (runs started in the same second still sort).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `SOURCE_DATE_EPOCH` for a step that does not set it: a function of the step's action key, so
/// that the same inputs always see the same time and the variable never changes a key by itself
/// (it is not part of the key; the key decides it). Falls between 2001-09-09 and 2017-07-14, so
/// it is in the past; and it is never after `run_started` (the run's start in Unix seconds, see
/// [`crate::run_started_secs`]), which only a host clock set before 2017 can make matter.
pub fn source_date_epoch(key: &cache::ActionKey, run_started: u64) -> u64 {
    (1_000_000_000 + key_bits(key) % 500_000_000).min(run_started)
}

/// The value engines before the clamp derived (between 2001 and 2033, so possibly in the future):
/// what a record they wrote holds, accepted by `engine replay` for such records.
pub fn source_date_epoch_unclamped(key: &cache::ActionKey) -> u64 {
    1_000_000_000 + key_bits(key) % 1_000_000_000
}

fn key_bits(key: &cache::ActionKey) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.digest().as_bytes()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_is_a_past_time_fixed_by_the_key_and_never_after_the_run() {
        let k = cache::ActionKey::from_digest(cache::Digest::of(b"x"));
        let now = 0x6a1e2f00;
        assert_eq!(source_date_epoch(&k, now), source_date_epoch(&k, now));
        assert!((1_000_000_000..1_500_000_000).contains(&source_date_epoch(&k, now)));
        assert_ne!(source_date_epoch(&k, now), source_date_epoch(&cache::ActionKey::from_digest(cache::Digest::of(b"y")), now));
        // Every key, whatever its bits: never after the run's start.
        for i in 0..1000u32 {
            let k = cache::ActionKey::from_digest(cache::Digest::of(&i.to_be_bytes()));
            assert!(source_date_epoch(&k, u64::MAX) < 1_500_000_000);
            assert_eq!(source_date_epoch(&k, 1_200_000_000), source_date_epoch(&k, u64::MAX).min(1_200_000_000));
        }
    }
}
