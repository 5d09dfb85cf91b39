//! Run records: what `engine run` leaves in `.engine/runs/<run id>/` beside the workflow, for
//! `engine runs`, `engine replay` and `engine provenance` (schema: docs/records.md).
//!
//! This module owns the record's schema, its atomic writing and its lookup. It never talks to
//! Docker and never sees a secret value: steps carry secret *names*, logs are captured after
//! masking, and the key components hold no values of secrets.
//!
//! A record is rewritten as a whole (temp file + fsync + rename) at the start of the run, after
//! every step and at the end, so a reader always sees a complete JSON document; an engine killed
//! mid-run leaves one whose `status` is `incomplete`, listing the steps finished so far.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use cache::{InputEntry, KeyComponents, OutputEntry};
use serde::{Deserialize, Serialize};

use crate::events::{RunStatus, StepStatus};

/// The `schema` field of every record this engine writes. A reader refuses other values.
pub const SCHEMA: &str = "engine.run-record/v1";

/// Steps with more inputs than this keep their input manifest in the store only: a no-op run of
/// a step over 100,000 files must not write megabytes of JSON into every record.
pub const INLINE_INPUTS: usize = 10_000;

/// `<workflow dir>/.engine/runs`.
pub fn runs_dir(workflow_dir: &Path) -> PathBuf {
    workflow_dir.join(".engine").join("runs")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: String,
    pub run_id: String,
    /// `incomplete` until the run ends; then how it ended.
    pub status: RecordStatus,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub engine: EngineInfo,
    pub host: HostInfo,
    pub workflow: WorkflowInfo,
    pub invocation: Invocation,
    /// In plan order (every step before the steps that need it).
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// The run has not ended (yet): the engine is running, or died.
    Incomplete,
    Succeeded,
    Failed,
    EnvironmentFailed,
    Cancelled,
}

impl RecordStatus {
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

impl From<RunStatus> for RecordStatus {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Succeeded => RecordStatus::Succeeded,
            RunStatus::Failed => RecordStatus::Failed,
            RunStatus::EnvironmentFailed => RecordStatus::EnvironmentFailed,
            RunStatus::Cancelled => RecordStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineInfo {
    pub name: String,
    pub version: String,
}

impl EngineInfo {
    pub fn current() -> EngineInfo {
        EngineInfo { name: "engine".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    /// `linux`, as Rust names it.
    pub os: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// The daemon's version and API version (`20.10.24`, `1.41`).
    pub docker_version: String,
    pub docker_api_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowInfo {
    pub name: String,
    /// The workflow file as given on the command line.
    pub file: String,
    /// The folder it lives in (inputs are relative to it), absolute.
    pub dir: String,
    /// `sha256:<hex>` of the workflow file's bytes.
    pub digest: String,
}

/// The command line that started the run (nothing from the environment but what it names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invocation {
    pub targets: Vec<String>,
    pub jobs: usize,
    pub keep_going: bool,
    pub no_cache: bool,
    /// Where outputs were exported, absolute.
    pub out_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not finished when the record was written (still running, or the engine died).
    Pending,
    Succeeded,
    Cached,
    Failed,
    Skipped,
    Cancelled,
}

impl From<StepStatus> for StepState {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Succeeded => StepState::Succeeded,
            StepStatus::Cached => StepState::Cached,
            StepStatus::Failed => StepState::Failed,
            StepStatus::Skipped => StepState::Skipped,
            StepStatus::Cancelled => StepState::Cancelled,
        }
    }
}

impl StepState {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepState,
    /// Outputs restored from the cache; no container ran.
    pub cached: bool,
    /// The step as resolved from the workflow (defaults and profile applied): image, command,
    /// env, workdir, user, network, limits, caches, secret names, outputs, needs.
    pub definition: dsl::Step,
    /// The image the container was (or would have been) created from.
    pub image: Option<ImageRecord>,
    /// The action key (hex), once computed.
    pub key: Option<String>,
    /// What the key was computed from, except the input files (see `inputs`).
    pub key_components: Option<KeyComponents>,
    /// The input files: path, mode, content digest, for steps with at most [`INLINE_INPUTS`]
    /// inputs. Their contents are kept in the cache store for as long as the step's cache entry
    /// lives.
    pub inputs: Vec<InputEntry>,
    pub inputs_count: usize,
    /// The step had more than [`INLINE_INPUTS`] inputs: the manifest is not repeated in every
    /// record but kept once in the cache store under the key (`v1/inputs/<aa>/<key>.json`).
    #[serde(default)]
    pub inputs_in_store: bool,
    /// `SOURCE_DATE_EPOCH` as the step saw it (unless the step set it itself).
    pub source_date_epoch: Option<u64>,
    /// Every file, folder and symlink of the outputs, with content digests.
    pub outputs: Vec<OutputEntry>,
    pub outputs_digest: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub log: Option<LogRecord>,
}

impl StepRecord {
    pub fn pending(step: &dsl::Step) -> StepRecord {
        StepRecord {
            name: step.name.clone(),
            status: StepState::Pending,
            cached: false,
            definition: step.clone(),
            image: None,
            key: None,
            key_components: None,
            inputs: Vec::new(),
            inputs_count: 0,
            inputs_in_store: false,
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

    /// The input files, from the record or, for a step with many, from the store.
    pub fn input_entries(&self, store: &cache::Store) -> Option<Vec<InputEntry>> {
        if !self.inputs_in_store {
            return Some(self.inputs.clone());
        }
        let key = cache::ActionKey(self.key.as_ref()?.parse().ok()?);
        store.inputs_manifest(&key)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference as written (`local/busybox:1`), or `images.<name>` for an engine-built one.
    pub reference: String,
    /// The image ID (`sha256:...`).
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// Relative to the run's folder: `logs/<n>-<step>.log`.
    pub path: String,
    /// `sha256:<hex>` of the log's bytes as kept (lines as shown, secrets masked, and the line
    /// saying what was cut, if anything was).
    pub digest: String,
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

/// `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", cache::Digest::of(bytes).hex())
}

/// Updates closer together than this are written out together (see [`Recorder::update`]).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The record of a run being written.
///
/// Each write replaces `record.json` as a whole (temp file + rename: never half a file). Writes
/// are coalesced: an update writes at once unless the last write was less than [`FLUSH_EVERY`]
/// ago, and [`Recorder::spawn_flusher`] writes pending updates within that time, so a run of many
/// quick (cached) steps does not rewrite a growing file once per step, and a killed engine loses at
/// most that much of its record. [`Recorder::finish`] writes and syncs to disk.
pub struct Recorder {
    dir: PathBuf,
    /// Holds the run's folder open; `dir` names it through the descriptor (see `create`).
    _pinned: cache::safe::PinnedDir,
    state: Mutex<State>,
}

struct State {
    record: RunRecord,
    dirty: bool,
    written: Option<Instant>,
}

impl Recorder {
    /// Create `<workflow dir>/.engine/runs/<run id>/` and write the first version of the record.
    /// `.engine`, `runs` and the run's folders must be real folders: a symlink among them is
    /// refused, never followed. The run's folder is then held open and written through its
    /// descriptor, so a symlink swapped in for any of them during the run redirects nothing.
    pub fn create(workflow_dir: &Path, record: RunRecord) -> io::Result<Recorder> {
        let dir = cache::safe::ensure_own_dirs(workflow_dir, &[".engine", "runs", &record.run_id])?;
        cache::safe::ensure_own_dir(&dir.join("logs"))?;
        let pinned = cache::safe::PinnedDir::open(&dir)?;
        let dir = pinned.at()?;
        let recorder = Recorder { dir, _pinned: pinned, state: Mutex::new(State { record, dirty: true, written: None }) };
        recorder.flush(false)?;
        Ok(recorder)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Change the record; it is written now, or with the next flush if it was written less than
    /// [`FLUSH_EVERY`] ago.
    pub fn update(&self, f: impl FnOnce(&mut RunRecord)) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state.record);
        state.dirty = true;
        if state.written.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
            return Ok(());
        }
        self.write(&mut state, false)
    }

    /// Write pending changes (and with `sync`, make them durable even when nothing is pending).
    pub fn flush(&self, sync: bool) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.dirty || sync {
            self.write(&mut state, sync)?;
        }
        Ok(())
    }

    /// The last change of the run: written and synced to disk.
    pub fn finish(&self, f: impl FnOnce(&mut RunRecord)) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state.record);
        self.write(&mut state, true)
    }

    /// Write pending changes every [`FLUSH_EVERY`] until the recorder is dropped.
    pub fn spawn_flusher(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(recorder) = weak.upgrade() else { break };
                if let Err(e) = recorder.flush(false) {
                    tracing::warn!(error = %e, "cannot write the run record");
                }
            }
        })
    }

    fn write(&self, state: &mut State, sync: bool) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&state.record).map_err(io::Error::other)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&json)?;
        if sync {
            tmp.as_file().sync_all()?;
        }
        tmp.persist(self.dir.join("record.json")).map_err(|e| e.error)?;
        state.dirty = false;
        state.written = Some(Instant::now());
        Ok(())
    }

    /// Change one step's entry and write the record out.
    pub fn update_step(&self, step: &str, f: impl FnOnce(&mut StepRecord)) -> io::Result<()> {
        self.update(|r| {
            if let Some(s) = r.steps.iter_mut().find(|s| s.name == step) {
                f(s)
            }
        })
    }

    /// Write a step's log beside the record; returns what the record says about it.
    pub fn write_log(&self, step: &str, log: &[u8]) -> io::Result<LogRecord> {
        let index = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.record.steps.iter().position(|s| s.name == step).unwrap_or(state.record.steps.len())
        };
        // Numbered in plan order: unique even where two step names sanitise alike.
        let rel = format!("logs/{index:02}-{}.log", cache::store::sanitise(step));
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("logs"))?;
        tmp.write_all(log)?;
        tmp.persist(self.dir.join(&rel)).map_err(|e| e.error)?;
        Ok(LogRecord { path: rel, digest: sha256(log), bytes: log.len() as u64, cut: 0 })
    }

    /// Start writing a step's log beside the record while the step runs: lines are appended on
    /// a writer thread (through a small bounded channel), never gathered in memory, and at most
    /// `limit` bytes are kept (see [`StepLog`]).
    pub fn step_log(&self, step: &str, limit: u64) -> io::Result<std::sync::Arc<StepLog>> {
        let index = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.record.steps.iter().position(|s| s.name == step).unwrap_or(state.record.steps.len())
        };
        let rel = format!("logs/{index:02}-{}.log", cache::store::sanitise(step));
        StepLog::start(self.dir.join("logs"), rel, limit)
    }
}

/// Default most bytes of one step's log kept in its run record (`ENGINE_LOG_LIMIT` overrides).
pub const DEFAULT_LOG_LIMIT: u64 = 16 << 20;
/// The smallest log limit accepted: room for a head, a tail and the line saying what was cut.
pub const MIN_LOG_LIMIT: u64 = 64 << 10;

/// The per-step log limit: `ENGINE_LOG_LIMIT` (a size: `16m`, `1g`) or [`DEFAULT_LOG_LIMIT`].
pub fn log_limit() -> Result<u64, String> {
    match std::env::var("ENGINE_LOG_LIMIT") {
        Err(_) => Ok(DEFAULT_LOG_LIMIT),
        Ok(text) => match dsl::units::parse_size(&text) {
            Some(n) if n >= MIN_LOG_LIMIT => Ok(n),
            _ => Err(format!(
                "ENGINE_LOG_LIMIT must be a size of at least {} (like `16m`), not `{text}`",
                dsl::units::format_size(MIN_LOG_LIMIT)
            )),
        },
    }
}

/// One step's log being written: `logs/<n>-<step>.log` keeps the first 1/16 of the limit (the
/// head, at most 1 MiB) and the last lines (the tail, in a rotating pair of files each half of
/// the rest), with one line between them saying how many bytes were cut. Lines arrive through
/// a bounded channel to a writer thread; a slow disk slows the step's log reader, it never
/// grows the engine's memory.
pub struct StepLog {
    tx: Mutex<Option<std::sync::mpsc::SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<io::Result<LogRecord>>>>,
    /// What the writer ended with (a second `finish` returns it again).
    done: Mutex<Option<Result<LogRecord, String>>>,
    path: PathBuf,
}

impl StepLog {
    fn start(logs: PathBuf, rel: String, limit: u64) -> io::Result<std::sync::Arc<StepLog>> {
        let path = logs.parent().unwrap_or(&logs).join(&rel);
        let mut capped = CappedLog::new(&logs, limit)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
        let dest = path.clone();
        let writer = std::thread::Builder::new().name("engine-log".into()).spawn(move || {
            let mut failed = None;
            for line in rx {
                if failed.is_none() {
                    failed = capped.write(&line).err();
                }
            }
            match failed {
                Some(e) => Err(e),
                None => capped.finish(&dest, rel),
            }
        })?;
        Ok(std::sync::Arc::new(StepLog { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), done: Mutex::new(None), path }))
    }

    /// The log file (complete once [`StepLog::finish`] returned).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No more lines: write the kept log out and say what the record says about it. Blocks
    /// until the writer is done (call it off the async workers). Calling it again returns the
    /// same answer.
    pub fn finish(&self) -> io::Result<LogRecord> {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.is_none() {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            *done = Some(match writer {
                Some(w) => match w.join() {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the log writer stopped".to_string()),
                },
                None => Err("the log writer stopped".to_string()),
            });
        }
        done.clone().unwrap_or_else(|| Err(String::new())).map_err(io::Error::other)
    }
}

impl crate::events::LogSink for StepLog {
    /// Append one line (with its newline). Lines after [`StepLog::finish`] are dropped.
    fn append(&self, line: Vec<u8>) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let _ = tx.send(line);
        }
    }
}

/// The files behind a [`StepLog`]: the head (the log file to be), and the tail's two segments.
struct CappedLog {
    head: tempfile::NamedTempFile,
    head_len: u64,
    head_limit: u64,
    /// Set once a line did not fit in the head: everything after goes to the tail.
    head_full: bool,
    /// The older and the current tail segment, with their lengths.
    segments: [Option<(tempfile::NamedTempFile, u64)>; 2],
    segment_limit: u64,
    logs: PathBuf,
    limit: u64,
    total: u64,
}

impl CappedLog {
    fn new(logs: &Path, limit: u64) -> io::Result<CappedLog> {
        let head_limit = (limit / 16).min(1 << 20);
        // The rest, less room for the line saying what was cut.
        let segment_limit = (limit - head_limit - 256) / 2;
        Ok(CappedLog {
            head: tempfile::NamedTempFile::new_in(logs)?,
            head_len: 0,
            head_limit,
            head_full: false,
            segments: [None, None],
            segment_limit,
            logs: logs.to_path_buf(),
            limit,
            total: 0,
        })
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        self.total += line.len() as u64;
        if !self.head_full && self.head_len + line.len() as u64 <= self.head_limit {
            self.head.write_all(line)?;
            self.head_len += line.len() as u64;
            return Ok(());
        }
        self.head_full = true;
        // A line longer than a segment keeps its end only.
        let line = &line[line.len().saturating_sub(self.segment_limit as usize)..];
        let current_full = self.segments[1].as_ref().is_none_or(|(_, len)| len + line.len() as u64 > self.segment_limit);
        if current_full {
            // Rotate: the older segment goes, the current one becomes the older.
            self.segments[0] = self.segments[1].take();
            self.segments[1] = Some((tempfile::NamedTempFile::new_in(&self.logs)?, 0));
        }
        if let Some((file, len)) = self.segments[1].as_mut() {
            file.write_all(line)?;
            *len += line.len() as u64;
        }
        Ok(())
    }

    fn finish(mut self, dest: &Path, rel: String) -> io::Result<LogRecord> {
        let kept_tail: u64 = self.segments.iter().flatten().map(|(_, len)| len).sum();
        let cut = self.total - self.head_len - kept_tail;
        if cut > 0 {
            let line = format!(
                "engine [{cut} bytes of this log cut here: at most {} of a step's log is kept (ENGINE_LOG_LIMIT)]\n",
                dsl::units::format_size(self.limit)
            );
            self.head.write_all(line.as_bytes())?;
        }
        for (segment, _) in self.segments.iter_mut().flatten() {
            use std::io::Seek;
            let file = segment.as_file_mut();
            file.seek(io::SeekFrom::Start(0))?;
            io::copy(file, self.head.as_file_mut())?;
        }
        self.head.flush()?;
        let file = self.head.persist(dest).map_err(|e| e.error)?;
        let bytes = file.metadata()?.len();
        let digest = format!("sha256:{}", cache::hash::hash_file(dest)?.hex());
        Ok(LogRecord { path: rel, digest, bytes, cut })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no run records in {}: `engine run` writes one per run", .0.display())]
    NoRuns(PathBuf),
    #[error("no run `{id}` in {}; `engine runs` lists them", dir.display())]
    NotFound { id: String, dir: PathBuf },
    #[error("run id `{id}` is ambiguous: it starts {n} runs in {}", dir.display())]
    Ambiguous { id: String, n: usize, dir: PathBuf },
    /// The file could not be read (permissions, I/O): the environment's problem.
    #[error("cannot read the run record {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The file is not a record this engine accepts (not a regular file, too large, not JSON,
    /// another schema, inconsistent): a record is untrusted input.
    #[error("refusing the run record {}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
}

/// The largest record (or store manifest) read: 64 MiB. Records with more inputs than
/// [`INLINE_INPUTS`] keep them in the store, so an honest record stays far below this.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum ReadRefused {
    /// Not there.
    Missing,
    /// A symlink, a FIFO, a device, a folder, or larger than the cap: never read.
    Refused(String),
    /// An I/O error other than those.
    Io(io::Error),
}

/// The bytes of the regular file `path`, at most `cap` of them. A symlink is not followed (the
/// open fails), and a FIFO or device is opened without blocking and refused before any read, so a
/// planted FIFO cannot hang the engine and a planted device cannot feed it forever.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadRefused> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(
        |e| match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => ReadRefused::Missing,
            Some(libc::ELOOP) => ReadRefused::Refused("it is a symlink, which is never followed".into()),
            _ => ReadRefused::Io(e),
        },
    )?;
    let meta = file.metadata().map_err(ReadRefused::Io)?;
    if !meta.file_type().is_file() {
        return Err(ReadRefused::Refused("it is not a regular file".into()));
    }
    if meta.len() > cap {
        return Err(ReadRefused::Refused(format!("it is {} bytes, more than the {} bytes allowed", meta.len(), cap)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never read more than the cap.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadRefused::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadRefused::Refused(format!("it is more than the {cap} bytes allowed")));
    }
    Ok(bytes)
}

/// `.engine/runs` and what leads to it must be real folders: run records are never read
/// through a symlink (it could point anywhere).
fn check_runs_dir(workflow_dir: &Path) -> Result<(), RecordError> {
    for dir in [workflow_dir.join(".engine"), runs_dir(workflow_dir)] {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            if !meta.file_type().is_dir() {
                return Err(RecordError::Refused {
                    path: dir,
                    reason: "it is not a folder (a symlink is never followed); run records are read from a real `.engine/runs` folder only"
                        .into(),
                });
            }
        }
    }
    Ok(())
}

/// The run folders under `<workflow dir>/.engine/runs` (real folders only, never symlinks), by
/// name.
fn run_folders(workflow_dir: &Path) -> Result<Vec<(String, PathBuf)>, RecordError> {
    check_runs_dir(workflow_dir)?;
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(runs_dir(workflow_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    Ok(out)
}

/// Every readable record under `<workflow dir>/.engine/runs`, oldest first. Folders without a
/// readable record (a run killed before its first write, or a record refused by [`read`]) are
/// skipped; so are symlinks.
pub fn list(workflow_dir: &Path) -> Vec<RunRecord> {
    let mut runs: Vec<RunRecord> =
        run_folders(workflow_dir).unwrap_or_default().into_iter().filter_map(|(_, dir)| read_run(&dir).ok()).collect();
    // Run ids start with the start time in hex seconds; the timestamp breaks no ties better.
    runs.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
    runs
}

/// The record in the run folder `dir`, which must name the run after the folder.
fn read_run(dir: &Path) -> Result<RunRecord, RecordError> {
    let path = dir.join("record.json");
    let record = read(&path)?;
    if dir.file_name().and_then(|n| n.to_str()) != Some(record.run_id.as_str()) {
        return Err(RecordError::Refused {
            path,
            reason: format!("its run id `{}` is not the name of its folder", record.run_id.escape_debug()),
        });
    }
    Ok(record)
}

/// Read and parse one record, treating it as untrusted: a regular file (symlinks not followed),
/// at most [`MAX_RECORD_BYTES`], JSON of schema [`SCHEMA`]. A step definition without `limits` (or
/// missing some) gets the built-in defaults, never "unlimited".
pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
    let refused = |reason: String| RecordError::Refused { path: path.to_path_buf(), reason };
    let bytes = match read_regular(path, MAX_RECORD_BYTES) {
        Ok(b) => b,
        Err(ReadRefused::Missing) => {
            return Err(RecordError::Unreadable { path: path.to_path_buf(), reason: "there is no such file".into() })
        }
        Err(ReadRefused::Refused(why)) => return Err(refused(why)),
        Err(ReadRefused::Io(e)) => return Err(RecordError::Unreadable { path: path.to_path_buf(), reason: e.to_string() }),
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| refused(format!("it is not valid JSON ({e})")))?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        Some(other) => return Err(refused(format!("schema `{}` is not `{SCHEMA}`", other.escape_debug()))),
        None => return Err(refused(format!("it has no `schema` (expected `{SCHEMA}`)"))),
    }
    fill_default_settings(&mut value);
    serde_json::from_value(value).map_err(|e| refused(format!("it does not follow the schema `{SCHEMA}` ({e})")))
}

/// Step definitions that lack `limits` or `isolation` (or some of their fields) get the built-in
/// defaults, as a workflow step that does not set them would.
fn fill_default_settings(record: &mut serde_json::Value) {
    let defaults =
        [("limits", serde_json::to_value(dsl::Limits::default())), ("isolation", serde_json::to_value(dsl::Isolation::default()))];
    let Some(steps) = record.get_mut("steps").and_then(|s| s.as_array_mut()) else { return };
    for step in steps {
        let Some(def) = step.get_mut("definition").and_then(|d| d.as_object_mut()) else { continue };
        for (key, default) in &defaults {
            let Ok(serde_json::Value::Object(default)) = default else { continue };
            let slot = def.entry(key.to_string()).or_insert(serde_json::Value::Null);
            if slot.is_null() {
                *slot = serde_json::Value::Object(serde_json::Map::new());
            }
            if let Some(fields) = slot.as_object_mut() {
                for (field, value) in default {
                    let v = fields.entry(field.clone()).or_insert(serde_json::Value::Null);
                    if v.is_null() {
                        *v = value.clone();
                    }
                }
            }
        }
    }
}

/// The record of run `id` (`latest`, a full id, or an unambiguous prefix) and its folder. A run
/// named by id whose record is refused is an error (never silently another run); `latest` is the
/// newest readable record.
pub fn find(workflow_dir: &Path, id: &str) -> Result<(PathBuf, RunRecord), RecordError> {
    let dir = runs_dir(workflow_dir);
    let folders = run_folders(workflow_dir)?;
    if id == "latest" {
        let mut runs: Vec<(PathBuf, RunRecord)> = folders.into_iter().filter_map(|(_, d)| read_run(&d).ok().map(|r| (d, r))).collect();
        runs.sort_by(|(_, a), (_, b)| a.started_at.cmp(&b.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
        return runs.pop().ok_or(RecordError::NoRuns(dir));
    }
    // A folder without a record (a run killed before its first write) is no run.
    let mut matching: Vec<(String, PathBuf)> =
        folders.into_iter().filter(|(name, d)| name.starts_with(id) && fs::symlink_metadata(d.join("record.json")).is_ok()).collect();
    let (_, folder) = if let Some(exact) = matching.iter().position(|(name, _)| name == id) {
        matching.swap_remove(exact)
    } else {
        match matching.len() {
            0 => return Err(RecordError::NotFound { id: id.to_string(), dir }),
            1 => matching.remove(0),
            n => return Err(RecordError::Ambiguous { id: id.to_string(), n, dir }),
        }
    };
    let record = read_run(&folder)?;
    Ok((folder, record))
}

/// `SOURCE_DATE_EPOCH` for a step that does not set it: a function of the step's action key, so
/// that the same inputs always see the same time and the variable never changes a key by itself
/// (it is not part of the key; the key decides it). Falls between 2001 and 2033.
pub fn source_date_epoch(key: &cache::ActionKey) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.0 .0[..8]);
    1_000_000_000 + u64::from_be_bytes(first) % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, started: &str) -> RunRecord {
        RunRecord {
            schema: SCHEMA.into(),
            run_id: id.into(),
            status: RecordStatus::Incomplete,
            started_at: started.into(),
            finished_at: None,
            duration_ms: None,
            engine: EngineInfo::current(),
            host: HostInfo { os: "linux".into(), arch: "x86_64".into(), docker_version: "x".into(), docker_api_version: "y".into() },
            workflow: WorkflowInfo { name: "w".into(), file: "workflow.yml".into(), dir: "/w".into(), digest: sha256(b"") },
            invocation: Invocation::default(),
            steps: vec![StepRecord::pending(&dsl::Step::new(
                "a",
                dsl::ImageRef::Reference("i".into()),
                dsl::Command::Shell("true".into()),
            ))],
        }
    }

    #[test]
    fn records_are_written_whole_and_found_by_id_prefix_or_latest() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = Recorder::create(dir.path(), record("6a0001", "2026-01-01T00:00:00Z")).unwrap();
        let r2 = Recorder::create(dir.path(), record("6a0002", "2026-01-01T00:00:05Z")).unwrap();
        r1.update_step("a", |s| s.status = StepState::Succeeded).unwrap();
        r1.flush(false).unwrap();
        let log = r2.write_log("a", b"stdout hi\n").unwrap();
        assert_eq!(log.path, "logs/00-a.log");
        assert_eq!(fs::read(r2.dir().join(&log.path)).unwrap(), b"stdout hi\n");
        // No temp files left beside the records.
        let names: Vec<String> = fs::read_dir(r1.dir()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");

        assert_eq!(find(dir.path(), "latest").unwrap().1.run_id, "6a0002");
        assert_eq!(find(dir.path(), "6a0001").unwrap().1.steps[0].status, StepState::Succeeded);
        assert!(matches!(find(dir.path(), "6a"), Err(RecordError::Ambiguous { n: 2, .. })));
        assert!(matches!(find(dir.path(), "7"), Err(RecordError::NotFound { .. })));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(find(empty.path(), "latest"), Err(RecordError::NoRuns(_))));
    }

    #[test]
    fn a_long_step_log_keeps_its_head_and_tail_and_says_what_was_cut() {
        use crate::events::LogSink;
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0004", "t")).unwrap();
        let log = r.step_log("a", MIN_LOG_LIMIT).unwrap();
        let mut total = 0;
        for n in 0..100_000 {
            let line = format!("stdout line {n}\n").into_bytes();
            total += line.len() as u64;
            log.append(line);
        }
        let rec = log.finish().unwrap();
        assert_eq!(rec.path, "logs/00-a.log");
        let kept = fs::read(log.path()).unwrap();
        assert_eq!(rec.bytes, kept.len() as u64);
        assert!(rec.bytes <= MIN_LOG_LIMIT, "{} bytes kept", rec.bytes);
        assert_eq!(rec.digest, sha256(&kept));
        let text = String::from_utf8(kept).unwrap();
        assert!(text.starts_with("stdout line 0\n"));
        assert!(text.ends_with("stdout line 99999\n"));
        let said = format!("engine [{} bytes of this log cut here", rec.cut);
        assert!(text.contains(&said), "no cut line");
        let cut_line = text.lines().find(|l| l.starts_with("engine [")).unwrap().len() as u64 + 1;
        assert_eq!(rec.bytes - cut_line + rec.cut, total);
        // Every line kept whole, in order.
        let numbers: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix("stdout line ")?.parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[1] > w[0]));
        // A short log is kept whole, nothing said.
        let short = r.step_log("b", DEFAULT_LOG_LIMIT).unwrap();
        short.append(b"stdout hi\n".to_vec());
        let rec = short.finish().unwrap();
        assert_eq!((rec.bytes, rec.cut), (10, 0));
        assert_eq!(short.finish().unwrap().digest, rec.digest, "finish answers again");
        // No temp files left beside the logs.
        assert_eq!(fs::read_dir(r.dir().join("logs")).unwrap().count(), 2);
    }

    #[test]
    fn updates_close_together_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0003", "t")).unwrap();
        let on_disk = || find(dir.path(), "6a0003").unwrap().1.steps[0].status;
        r.update_step("a", |s| s.status = StepState::Succeeded).unwrap();
        assert_eq!(on_disk(), StepState::Pending, "written less than FLUSH_EVERY ago");
        r.flush(false).unwrap();
        assert_eq!(on_disk(), StepState::Succeeded);
        r.finish(|rec| rec.status = RecordStatus::Failed).unwrap();
        assert_eq!(find(dir.path(), "6a0003").unwrap().1.status, RecordStatus::Failed);
    }

    #[test]
    fn a_step_definition_survives_the_record() {
        let mut step = dsl::Step::new("a", dsl::ImageRef::Built("tools".into()), dsl::Command::Argv(vec!["x".into()]));
        step.limits = dsl::Limits::sandbox();
        step.env.insert("A".into(), "1".into());
        let json = serde_json::to_string(&StepRecord::pending(&step)).unwrap();
        let back: StepRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.definition, step);
    }

    #[test]
    fn a_record_is_read_as_untrusted_input() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0004", "t")).unwrap();
        let path = r.dir().join("record.json");
        // Limits and isolation dropped from a definition: the built-in defaults, not zero.
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let def = v["steps"][0]["definition"].as_object_mut().unwrap();
        def.remove("limits");
        def["isolation"].as_object_mut().unwrap().remove("user");
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.steps[0].definition.limits, dsl::Limits::default());
        assert_eq!(back.steps[0].definition.isolation, dsl::Isolation::default());

        let refused = |p: &Path| match read(p) {
            Err(RecordError::Refused { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        v["schema"] = "engine.run-record/v2".into();
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(refused(&path), "schema `engine.run-record/v2` is not `engine.run-record/v1`");
        fs::write(&path, b"{").unwrap();
        assert!(refused(&path).starts_with("it is not valid JSON"));
        fs::File::create(&path).unwrap().set_len(MAX_RECORD_BYTES + 1).unwrap();
        assert!(refused(&path).contains("more than the 67108864 bytes allowed"));
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(refused(&path), "it is not a regular file");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert_eq!(refused(&path), "it is a symlink, which is never followed");
        assert!(matches!(find(dir.path(), "6a0004"), Err(RecordError::Refused { .. })));
        // A symlinked runs folder is not followed.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join(".engine")).unwrap();
        std::os::unix::fs::symlink(runs_dir(dir.path()), runs_dir(other.path())).unwrap();
        assert!(matches!(find(other.path(), "latest"), Err(RecordError::Refused { .. })));
        assert!(list(other.path()).is_empty());
    }

    #[test]
    fn source_date_epoch_is_a_plausible_time_fixed_by_the_key() {
        let k = cache::ActionKey(cache::Digest::of(b"x"));
        assert_eq!(source_date_epoch(&k), source_date_epoch(&k));
        assert!((1_000_000_000..2_000_000_000).contains(&source_date_epoch(&k)));
        assert_ne!(source_date_epoch(&k), source_date_epoch(&cache::ActionKey(cache::Digest::of(b"y"))));
    }
}
