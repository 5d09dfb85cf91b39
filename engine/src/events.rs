//! What happens during a run, as a stream of events. The scheduler and executors emit them; the
//! renderers in `output` turn them into prefixed log lines, a summary table, or JSON lines.
//!
//! Events carry no secret values: executors mask secrets before a log line becomes an event, so
//! the terminal, JSON events, the cache's log digest and the run record's log files all get the
//! masked text (the record's log is what [`LogCapture`] collected from these events). A `Log`
//! line is at most 64 KiB plus a `[… N bytes cut]` note (`docker::logs`). Events carry text as
//! the step wrote it, control characters included: renderers neutralise them
//! (`output::neutralise`).

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a step ended, as shown in the summary and in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    /// Outputs restored from the cache, no container created (cache issue).
    Cached,
    /// Not started: an upstream step failed, or fail-fast stopped the run.
    Skipped,
    /// Killed by an interrupt.
    Cancelled,
}

impl StepStatus {
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

/// One row of the final summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    pub step: String,
    pub status: StepStatus,
    /// Wall time of the step (container start to end), milliseconds; 0 when not run.
    pub duration_ms: u64,
    pub exit_code: Option<i64>,
    /// Human reason for a failure or skip ("timed out after 2s", "needs `build`, which failed").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The run's overall result, mapped to the process exit code by the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    /// A step failed (exit 1).
    Failed,
    /// The environment failed: daemon gone, image missing (exit 3).
    EnvironmentFailed,
    /// Interrupted by SIGINT/SIGTERM (exit 130).
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted { run_id: String, workflow: String, steps: Vec<String> },
    StepStarted { step: String },
    Log { step: String, stream: Stream, line: String },
    /// The step succeeded (or came from the cache: see `status`).
    StepFinished { step: String, status: StepStatus, duration_ms: u64, exit_code: Option<i64> },
    /// The step failed, timed out, was killed, or was cancelled.
    StepFailed { step: String, status: StepStatus, duration_ms: u64, exit_code: Option<i64>, reason: String },
    StepSkipped { step: String, reason: String },
    RunFinished { run_id: String, status: RunStatus, duration_ms: u64, steps: Vec<StepSummary> },
}

/// Where events go. Cloneable, never blocks; a closed receiver drops events silently.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    /// When set, every `Log` event emitted through this sink is also appended here (the cache
    /// records the digest of a step's log).
    capture: Option<LogCapture>,
}

/// The log lines of one step, as `<stream> <line>\n`, collected while it runs: in memory
/// ([`EventSink::capturing_logs`], for short logs such as a replay's), or handed line by line to
/// a [`LogSink`] ([`EventSink::capturing_logs_into`], the run record's streamed log). Lines are
/// captured after secret masking, exactly as they were shown.
#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    sink: Option<Arc<dyn LogSink>>,
}

/// Where captured log lines go when they are not kept in memory.
pub trait LogSink: Send + Sync {
    fn append(&self, line: Vec<u8>);
}

impl std::fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCapture").field("streamed", &self.sink.is_some()).finish()
    }
}

impl LogCapture {
    /// The lines captured in memory (nothing when they went to a sink).
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx, capture: None }, rx)
    }

    /// A sink that forwards to this one and also captures log lines.
    pub fn capturing_logs(&self) -> (EventSink, LogCapture) {
        let capture = LogCapture::default();
        (EventSink { tx: self.tx.clone(), capture: Some(capture.clone()) }, capture)
    }

    /// A sink that forwards to this one and hands every log line to `sink` as it comes.
    pub fn capturing_logs_into(&self, sink: Arc<dyn LogSink>) -> EventSink {
        let capture = LogCapture { buf: Arc::default(), sink: Some(sink) };
        EventSink { tx: self.tx.clone(), capture: Some(capture) }
    }

    pub fn emit(&self, event: Event) {
        if let (Some(capture), Event::Log { stream, line, .. }) = (&self.capture, &event) {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            match &capture.sink {
                Some(sink) => sink.append(format!("{stream} {line}\n").into_bytes()),
                None => {
                    let mut buf = capture.buf.lock().unwrap_or_else(|e| e.into_inner());
                    buf.extend_from_slice(format!("{stream} {line}\n").as_bytes());
                }
            }
        }
        let _ = self.tx.send(event);
    }

    /// A sink that discards everything (tests, `plan`).
    pub fn null() -> EventSink {
        let (tx, _rx) = mpsc::unbounded_channel();
        EventSink { tx, capture: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_logs_are_forwarded_too() {
        let (sink, mut rx) = EventSink::channel();
        let (tee, capture) = sink.capturing_logs();
        tee.emit(Event::Log { step: "s".into(), stream: Stream::Stdout, line: "hello".into() });
        tee.emit(Event::StepStarted { step: "s".into() });
        sink.emit(Event::Log { step: "other".into(), stream: Stream::Stderr, line: "not captured".into() });
        assert_eq!(capture.take(), b"stdout hello\n");
        assert!(matches!(rx.try_recv(), Ok(Event::Log { .. })));
        assert!(matches!(rx.try_recv(), Ok(Event::StepStarted { .. })));
        assert!(matches!(rx.try_recv(), Ok(Event::Log { .. })));
    }
}
