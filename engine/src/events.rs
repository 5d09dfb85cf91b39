//! What happens during a run, as a stream of events. The scheduler and executors emit them; the
//! renderers in `output` turn them into prefixed log lines, a summary table, or JSON lines.
//!
//! Events carry no secret values: executors mask secrets before a log line becomes an event, so
//! the terminal, JSON events, the cache's log digest and the run record's log files all get the
//! masked text (the record's log is what [`LogCapture`] collected from these events). A `Log`
//! line is at most 64 KiB plus a `[… N bytes cut]` note (`docker::logs`). Events carry text as
//! the step wrote it, control characters included: renderers neutralise them
//! (`output::neutralise`).

use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;

/// Which output stream of a step's container a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a step ended, as shown in the summary and in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The container exited 0 and its outputs were collected.
    Succeeded,
    /// The step failed: non-zero exit, timeout, missing output, or an environment failure.
    Failed,
    /// Outputs restored from the cache, no container created (cache issue).
    Cached,
    /// Not started: an upstream step failed, or fail-fast stopped the run.
    Skipped,
    /// Killed by an interrupt.
    Cancelled,
}

impl StepStatus {
    /// The status as written in summaries and JSON (`succeeded`, `cached`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Cached => "cached",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a cached step's outputs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSource {
    /// This machine's cache store.
    Local,
    /// The remote cache (`--remote-cache`): downloaded into the local store first.
    Remote,
}

impl CacheSource {
    /// `local` or `remote`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSource::Local => "local",
            CacheSource::Remote => "remote",
        }
    }
}

/// What the remote cache did during a run (the `remote_cache` event, just before
/// `run_finished`; the summary's `remote cache …` line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteSummary {
    /// `oci://HOST[:PORT]/REPO` (never a credential).
    pub url: String,
    /// `read`, `write` or `readwrite`.
    pub mode: String,
    /// Steps restored from the remote cache.
    pub hits: u64,
    /// Lookups that found no entry.
    pub misses: u64,
    /// Entries found damaged (a blob missing or not matching its digest): the step ran.
    pub damaged: u64,
    /// Entries uploaded.
    pub uploads: u64,
    /// Bytes downloaded (blobs of the hits).
    pub bytes_down: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Blobs uploaded.
    pub blobs_up: u64,
    /// Blobs not uploaded because the registry had them already.
    pub blobs_skipped: u64,
    /// Steps whose results were not uploaded (the upload failed, was not finished, or the
    /// registry was unavailable by then), in the order they finished.
    pub not_shared: Vec<String>,
    /// Images under `images:` pulled from the remote cache instead of built (their names).
    pub images_pulled: Vec<String>,
    /// Images under `images:` built by this run and pushed to the remote cache (their names).
    pub images_pushed: Vec<String>,
    /// Why the remote cache was given up for the rest of the run (the first fault), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// One row of the final summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    /// The step's name.
    pub step: String,
    /// How it ended.
    pub status: StepStatus,
    /// Wall time of the step (container start to end), milliseconds; 0 when not run.
    pub duration_ms: u64,
    /// The container's exit code, when a container ran and exited.
    pub exit_code: Option<i64>,
    /// Human reason for a failure or skip ("timed out after 2s", "needs `build`, which failed").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A failure of a step with `continue_on_error`: it did not fail the run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allowed: bool,
    /// Skipped only because fail-fast stopped the run after another step failed: `--keep-going`
    /// would have run it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_started: bool,
    /// For a `cached` step: `local` or `remote`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<CacheSource>,
}

impl StepSummary {
    /// A step that ended (not skipped).
    pub fn ended(step: String, status: StepStatus, duration_ms: u64, exit_code: Option<i64>, reason: Option<String>) -> StepSummary {
        StepSummary { step, status, duration_ms, exit_code, reason, allowed: false, not_started: false, source: None }
    }

    /// A step that was not started, and why.
    pub fn skipped(step: String, reason: Option<String>) -> StepSummary {
        StepSummary::ended(step, StepStatus::Skipped, 0, None, reason)
    }
}

/// The run's overall result, mapped to the process exit code by the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step succeeded or came from the cache (exit 0).
    Succeeded,
    /// A step failed (exit 1).
    Failed,
    /// The environment failed: daemon gone, image missing (exit 3).
    EnvironmentFailed,
    /// Interrupted by SIGINT/SIGTERM (exit 130).
    Cancelled,
}

/// One thing that happened during a run (one JSON line with `--output json`, tagged `event`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began: emitted once, first.
    RunStarted {
        /// The run's id (also the name of its record folder).
        run_id: String,
        /// The workflow's name.
        workflow: String,
        /// The planned steps, in plan order.
        steps: Vec<String>,
    },
    /// The scheduler started the step (its needs are met and it fits the budget).
    StepStarted {
        /// The step's name.
        step: String,
    },
    /// One line a step printed, secrets already masked.
    Log {
        /// The step's name.
        step: String,
        /// Which stream it came from.
        stream: Stream,
        /// The line, without its newline.
        line: String,
    },
    /// The step succeeded (or came from the cache: see `status`).
    StepFinished {
        /// The step's name.
        step: String,
        /// `succeeded` or `cached`.
        status: StepStatus,
        /// Wall time of the step in milliseconds.
        duration_ms: u64,
        /// The container's exit code, if one is known.
        exit_code: Option<i64>,
        /// For `cached`: where the outputs came from, `local` or `remote` (absent otherwise).
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<CacheSource>,
    },
    /// The step failed, timed out, was killed, or was cancelled.
    StepFailed {
        /// The step's name.
        step: String,
        /// `failed` or `cancelled`.
        status: StepStatus,
        /// Wall time of the step in milliseconds.
        duration_ms: u64,
        /// The container's exit code, if it exited.
        exit_code: Option<i64>,
        /// What went wrong, in a sentence ("exit code 2", "timed out after 2s").
        reason: String,
        /// The step has `continue_on_error`: the failure does not fail the run.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        allowed: bool,
    },
    /// The step was not started.
    StepSkipped {
        /// The step's name.
        step: String,
        /// Why ("needs `build`, which failed").
        reason: String,
    },
    /// What the remote cache did (only with `--remote-cache`): emitted once, just before
    /// `run_finished`.
    RemoteCache(RemoteSummary),
    /// The run ended: emitted once, last.
    RunFinished {
        /// The run's id.
        run_id: String,
        /// The overall result.
        status: RunStatus,
        /// Wall time of the whole run in milliseconds.
        duration_ms: u64,
        /// One row per planned step, in plan order.
        steps: Vec<StepSummary>,
    },
}

/// Where events go. Cloneable; a closed receiver drops events silently. Every sink that has a
/// receiver is bounded ([`EventSink::channel`]): an emitter waits while its receiver is [`BOUND`]
/// events or [`BOUND_BYTES`] bytes of log text behind, so a step printing faster than its consumer
/// takes the lines is slowed down (backpressure, no line lost) and the engine's memory is not
/// spent on the backlog. Once the receiver is gone nobody waits. The wait happens off the async
/// workers' hands (`block_in_place` on a multi-thread runtime).
#[derive(Debug, Clone)]
pub struct EventSink {
    /// None for [`EventSink::null`].
    tx: Option<mpsc::UnboundedSender<Event>>,
    /// When set, every `Log` event emitted through this sink is also appended here (the cache
    /// records the digest of a step's log).
    capture: Option<LogCapture>,
    gate: Option<Arc<Gate>>,
}

/// How many events a receiver may be behind before emitters wait.
pub const BOUND: usize = 4096;
/// How many bytes of log lines a receiver may be behind before emitters wait (a log line is at
/// most 64 KiB and a note: [`BOUND`] of them would be 256 MiB).
pub const BOUND_BYTES: usize = 4 << 20;

/// The count of events (and their log bytes) sent and not yet received.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    room: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: usize,
    bytes: usize,
    /// The receiver is gone: nobody will make room any more, so nobody waits.
    closed: bool,
}

impl GateState {
    /// Whether an event of `size` bytes must wait: the backlog is full (one event always passes
    /// an empty backlog, whatever its size).
    fn full(&self, size: usize) -> bool {
        !self.closed && self.in_flight > 0 && (self.in_flight >= BOUND || self.bytes + size > BOUND_BYTES)
    }
}

impl Gate {
    fn enter(&self, size: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.full(size) {
            drop(state);
            state = blocking(|| {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.room.wait_while(state, |s| s.full(size)).unwrap_or_else(|e| e.into_inner())
            });
        }
        state.in_flight += 1;
        state.bytes += size;
    }

    fn leave(&self, size: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight = state.in_flight.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(size);
        self.room.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.room.notify_all();
    }
}

/// Run `wait`, which blocks (for a consumer or a writer thread to catch up), from wherever: on a
/// multi-thread runtime's worker, this worker's other tasks are handed to another thread first
/// (`block_in_place`); elsewhere it just runs.
pub fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// The bytes an event counts for against [`BOUND_BYTES`]: a log line's text.
fn weight(event: &Event) -> usize {
    match event {
        Event::Log { line, .. } => line.len(),
        _ => 0,
    }
}

/// The receiving end of [`EventSink::channel`]: each event received makes room for one more.
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<Event>,
    gate: Arc<Gate>,
}

impl EventReceiver {
    /// The next event, waiting for it (call it from a thread of its own, not an async task);
    /// `None` once every sink is gone.
    pub fn blocking_recv(&mut self) -> Option<Event> {
        let event = self.rx.blocking_recv()?;
        self.gate.leave(weight(&event));
        Some(event)
    }

    /// The next event, waiting for it; `None` once every sink is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        self.gate.leave(weight(&event));
        Some(event)
    }

    /// The next event if one is waiting right now.
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok()?;
        self.gate.leave(weight(&event));
        Some(event)
    }

    /// Whether no event is waiting right now.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.gate.close();
    }
}

/// The log lines of one step, as `<stream> <line>\n`, handed line by line to a [`LogSink`]
/// while it runs ([`EventSink::capturing_logs_into`]: the run record's streamed log, a replay's
/// bounded tail); never gathered whole in memory. Lines are captured after secret masking, exactly
/// as they were shown.
#[derive(Clone)]
pub struct LogCapture {
    sink: Arc<dyn LogSink>,
}

/// Where captured log lines go.
pub trait LogSink: Send + Sync {
    /// Take one line (`<stream> <line>\n`); may wait while the sink's writer is behind.
    fn append(&self, line: Vec<u8>);
}

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture").finish_non_exhaustive()
    }
}

impl EventSink {
    /// A bounded sink and its receiver. Its emitters wait while the receiver is far behind (see
    /// [`EventSink`]): the consumer must keep receiving while they emit (a thread or task of its
    /// own, as the run's renderer), or be known to receive fewer than [`BOUND`] events.
    pub fn channel() -> (EventSink, EventReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate::default());
        (EventSink { tx: Some(tx), capture: None, gate: Some(gate.clone()) }, EventReceiver { rx, gate })
    }

    /// A sink that forwards to this one and hands every log line to `sink` as it comes.
    pub fn capturing_logs_into(&self, sink: Arc<dyn LogSink>) -> EventSink {
        EventSink { tx: self.tx.clone(), capture: Some(LogCapture { sink }), gate: self.gate.clone() }
    }

    /// Send `event` to the receiver (and, for a `Log` event, to the capture if there is one).
    pub fn emit(&self, event: Event) {
        if let (Some(capture), Event::Log { stream, line, .. }) = (&self.capture, &event) {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            capture.sink.append(format!("{stream} {line}\n").into_bytes());
        }
        let Some(tx) = &self.tx else { return };
        let size = weight(&event);
        if let Some(gate) = &self.gate {
            // Waits only while the consumer, on its own thread, is far behind.
            gate.enter(size);
        }
        if tx.send(event).is_err() {
            if let Some(gate) = &self.gate {
                gate.leave(size);
            }
        }
    }

    /// A sink that discards everything (tests, `plan`).
    pub fn null() -> EventSink {
        EventSink { tx: None, capture: None, gate: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_sink_waits_for_its_receiver_and_never_once_it_is_gone() {
        let (sink, mut rx) = EventSink::channel();
        let emitter = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for _ in 0..BOUND * 3 {
                    sink.emit(Event::StepStarted { step: "x".into() });
                }
            })
        };
        // The emitter gets at most BOUND ahead of the receiver.
        let mut received = 0;
        while received < BOUND * 3 {
            assert!(sink.gate.as_ref().unwrap().state.lock().unwrap().in_flight <= BOUND);
            if rx.blocking_recv().is_some() {
                received += 1;
            }
        }
        emitter.join().unwrap();
        drop(rx);
        for _ in 0..BOUND * 2 {
            sink.emit(Event::StepStarted { step: "y".into() });
        }
    }

    #[test]
    fn long_log_lines_are_bounded_by_their_bytes() {
        let (sink, mut rx) = EventSink::channel();
        let line = "x".repeat(64 << 10);
        let emitter = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for _ in 0..BOUND {
                    sink.emit(Event::Log { step: "s".into(), stream: Stream::Stdout, line: line.clone() });
                }
            })
        };
        let mut received = 0;
        while received < BOUND {
            let state = sink.gate.as_ref().unwrap().state.lock().unwrap();
            assert!(state.bytes <= BOUND_BYTES, "{} bytes in flight", state.bytes);
            drop(state);
            if rx.blocking_recv().is_some() {
                received += 1;
            }
        }
        emitter.join().unwrap();
    }

    #[test]
    fn captured_logs_are_forwarded_too() {
        let (sink, mut rx) = EventSink::channel();
        #[derive(Default)]
        struct Lines(Mutex<Vec<u8>>);
        impl LogSink for Lines {
            fn append(&self, line: Vec<u8>) {
                self.0.lock().unwrap().extend(line);
            }
        }
        let lines = Arc::new(Lines::default());
        let tee = sink.capturing_logs_into(lines.clone());
        tee.emit(Event::Log { step: "s".into(), stream: Stream::Stdout, line: "hello".into() });
        tee.emit(Event::StepStarted { step: "s".into() });
        sink.emit(Event::Log { step: "other".into(), stream: Stream::Stderr, line: "not captured".into() });
        assert_eq!(*lines.0.lock().unwrap(), b"stdout hello\n");
        assert!(matches!(rx.try_recv(), Some(Event::Log { .. })));
        assert!(matches!(rx.try_recv(), Some(Event::StepStarted { .. })));
        assert!(matches!(rx.try_recv(), Some(Event::Log { .. })));
    }
}
