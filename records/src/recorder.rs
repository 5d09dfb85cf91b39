//! Writing a record: [`Recorder`] keeps the run's record in memory and rewrites `record.json` as a
//! whole (temp file + rename), coalescing updates that come close together.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::log::StepLog;
use crate::schema::{LogRecord, RunRecord, StepRecord};

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
    /// Holds the run's folder open (`dir` names it through the descriptor, see `create`) and
    /// locked (`flock`): while this engine lives, pruning leaves the run alone.
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
    /// The folder stays locked (`flock`) for as long as the recorder lives: [`crate::prune`] never
    /// removes the run of a live engine.
    pub fn create(workflow_dir: &Path, record: RunRecord) -> io::Result<Recorder> {
        let dir = cache::safe::ensure_own_dirs(workflow_dir, &[".engine", "runs", &record.run_id])?;
        cache::safe::ensure_own_dir(&dir.join("logs"))?;
        let pinned = cache::safe::PinnedDir::open(&dir)?;
        // A new folder nobody else has reason to lock; should the lock fail, the run goes on
        // (only its protection from a concurrent prune is lost, and a new run is never pruned).
        if let Err(e) = rustix::fs::flock(pinned.fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            tracing::warn!(error = %e, "cannot lock the run's record folder");
        }
        let dir = pinned.at()?;
        let recorder = Recorder { dir, _pinned: pinned, state: Mutex::new(State { record, dirty: true, written: None }) };
        recorder.flush(false)?;
        Ok(recorder)
    }

    /// The run's folder (a path through its descriptor where /proc allows).
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

    /// Write pending changes every [`FLUSH_EVERY`] until the recorder is dropped (the writes on
    /// tokio's blocking threads, not its workers).
    pub fn spawn_flusher(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(recorder) = weak.upgrade() else { break };
                let written = tokio::task::spawn_blocking(move || recorder.flush(false)).await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %e, "cannot write the run record");
                }
            }
        })
    }

    fn write(&self, state: &mut State, sync: bool) -> io::Result<()> {
        // Compact: a machine format (`engine runs show --output json` pretty-prints it for people).
        let json = serde_json::to_vec(&state.record).map_err(io::Error::other)?;
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
        let rel = self.log_path(step);
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("logs"))?;
        tmp.write_all(log)?;
        tmp.persist(self.dir.join(&rel)).map_err(|e| e.error)?;
        Ok(LogRecord { path: rel, digest: cache::Digest::of(log), bytes: log.len() as u64, cut: 0 })
    }

    /// Keep a log that is already a file elsewhere (a restored cache entry's log blob, whose
    /// contents were checked against `digest`) as a step's log: hard-linked when both are on one
    /// filesystem (a no-op re-run of many steps creates no file per step), copied otherwise.
    /// The blob is read-only, so the link cannot be used to change it. Only a regular file is
    /// linked or read (never through a symlink); the copy reads at most `limit` bytes.
    pub fn link_log(&self, step: &str, blob: &Path, digest: cache::Digest, limit: u64) -> io::Result<LogRecord> {
        let rel = self.log_path(step);
        let dest = self.dir.join(&rel);
        let meta = std::fs::symlink_metadata(blob)?;
        if !meta.file_type().is_file() {
            return Err(cache::safe::not_regular(blob, cache::safe::describe(&meta.file_type())));
        }
        let _ = std::fs::remove_file(&dest);
        // `link` (no AT_SYMLINK_FOLLOW) never follows `blob`; the result is checked once more.
        if std::fs::hard_link(blob, &dest).is_ok() {
            match std::fs::symlink_metadata(&dest) {
                Ok(m) if m.file_type().is_file() && m.len() == meta.len() => {
                    return Ok(LogRecord { path: rel, digest, bytes: meta.len(), cut: 0 });
                }
                _ => std::fs::remove_file(&dest)?,
            }
        }
        let bytes = cache::safe::read_bounded(blob, limit)?;
        self.write_log(step, &bytes)
    }

    /// `logs/<n>-<step>.log`: numbered in plan order, unique even where two step names sanitise
    /// alike.
    fn log_path(&self, step: &str) -> String {
        let index = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.record.steps.iter().position(|s| s.name == step).unwrap_or(state.record.steps.len())
        };
        format!("logs/{index:02}-{}.log", cache::store::sanitise(step))
    }

    /// Start writing a step's log beside the record while the step runs: lines are appended on
    /// a writer thread (through a small bounded channel), never gathered in memory, and at most
    /// `limit` bytes are kept (see [`StepLog`]).
    pub fn step_log(&self, step: &str, limit: u64) -> io::Result<std::sync::Arc<StepLog>> {
        let rel = self.log_path(step);
        StepLog::start(self.dir.join("logs"), rel, limit)
    }
}
