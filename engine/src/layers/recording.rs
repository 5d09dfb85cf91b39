//! The recording layer: fills the run record's entry of a step around the inner outcome. What
//! the step is keyed by (key, components, image, `SOURCE_DATE_EPOCH`) is written as soon as the
//! caching layer knows it ([`Note::Keyed`]), how it ended when the inner executor returns. The
//! step's log is kept beside the record ([`RecordLog`]): streamed there while the container
//! runs, or the restored cache entry's log.

use std::sync::{Arc, Mutex};

use crate::events::LogSink;
use crate::executor::{Executor, Job, Note, Notes, Outcome, StepContext, StepLogs};
use crate::record::{self, LogRecord, Recorder, StepLog, StepRecord, StepState};

pub struct Recording<E> {
    pub inner: E,
    pub recorder: Arc<Recorder>,
    /// Most bytes of a step's log kept in the record (and the cache).
    pub log_limit: u64,
    /// When the run started (Unix seconds): no `SOURCE_DATE_EPOCH` is later.
    pub run_started: u64,
}

impl<E: Executor> Executor for Recording<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        let name = job.step.name.clone();
        let log =
            Arc::new(RecordLog { recorder: self.recorder.clone(), step: name.clone(), limit: self.log_limit, state: Mutex::default() });
        job.logs = Some(log.clone());
        let (recorder, step, run_started) = (self.recorder.clone(), job.step.clone(), self.run_started);
        job.notes = Notes::to(move |note| match note {
            Note::Keyed { key, components, image } => update(&recorder, &step.name, |r| {
                r.inputs_count = components.inputs.len();
                r.key = Some(key);
                // The input files are not in the record: their manifest is in the store, by digest.
                r.key_components = Some(components.without_inputs());
                r.image = Some(record::ImageRecord {
                    reference: image.reference,
                    id: image.id,
                    bases: image.bases.into_iter().map(|(reference, id)| record::BaseImage { reference, id }).collect(),
                });
                r.source_date_epoch = (!step.env.contains_key("SOURCE_DATE_EPOCH")).then(|| record::source_date_epoch(&key, run_started));
                r.started_at = Some(record::timestamp(std::time::SystemTime::now()));
            }),
            Note::InputManifest(digest) => update(&recorder, &step.name, |r| r.inputs_manifest = Some(digest)),
        });

        let outcome = self.inner.execute(job, ctx).await;

        let kept = tokio::task::spawn_blocking(move || log.record()).await.ok().flatten();
        let duration_ms = u64::try_from(outcome.duration().as_millis()).unwrap_or(u64::MAX);
        let (failure, exit_code) = (outcome.failure(), outcome.exit_code());
        update(&self.recorder, &name, |r| {
            r.status = match &outcome {
                Outcome::Executed { .. } | Outcome::Planned(_) => StepState::Succeeded,
                Outcome::Restored { .. } => StepState::Cached,
                Outcome::Cancelled { .. } => StepState::Cancelled,
                Outcome::Failed { .. } | Outcome::TimedOut { .. } => StepState::Failed,
            };
            r.cached = matches!(outcome, Outcome::Restored { .. });
            r.reason = failure.map(|f| f.to_string());
            r.exit_code = exit_code;
            r.duration_ms = Some(duration_ms);
            r.log = kept;
            if let Some(outputs) = outcome.outputs() {
                r.outputs = outputs.entries.clone();
                r.outputs_digest = outputs.digest;
            }
        });
        outcome
    }
}

/// Record one step's progress; a record that cannot be written costs the audit, not the run.
fn update(recorder: &Recorder, step: &str, f: impl FnOnce(&mut StepRecord)) {
    // The write (at most every `FLUSH_EVERY`, else the flusher's) is file I/O: off the workers.
    if let Err(e) = crate::events::blocking(|| recorder.update_step(step, f)) {
        tracing::warn!(step, error = %e, "cannot write the run record");
    }
}

/// One step's log in the record's folder: opened only when a container starts (a restored step
/// gets its cache entry's log instead).
pub struct RecordLog {
    recorder: Arc<Recorder>,
    step: String,
    limit: u64,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    streamed: Option<Arc<StepLog>>,
    kept: Option<LogRecord>,
}

impl RecordLog {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the record says about the log, once the step ended. Blocks.
    fn record(&self) -> Option<LogRecord> {
        let (streamed, kept) = {
            let state = self.state();
            (state.streamed.clone(), state.kept.clone())
        };
        if kept.is_some() {
            return kept;
        }
        match streamed?.finish() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(step = %self.step, error = %e, "cannot write the step log");
                None
            }
        }
    }
}

impl StepLogs for RecordLog {
    fn open(&self) -> Option<Arc<dyn LogSink>> {
        // The log goes to the record's folder line by line as the step runs (capped, see
        // `record::StepLog`); never gathered in memory. If it cannot be written, the run goes on
        // without it.
        match crate::events::blocking(|| self.recorder.step_log(&self.step, self.limit)) {
            Ok(log) => {
                self.state().streamed = Some(log.clone());
                Some(log)
            }
            Err(e) => {
                tracing::warn!(step = %self.step, error = %e, "cannot write the step log");
                None
            }
        }
    }

    fn finish(&self) -> std::io::Result<Vec<u8>> {
        let Some(log) = self.state().streamed.clone() else { return Ok(Vec::new()) };
        log.finish()?;
        std::fs::read(log.path()).map_err(|e| std::io::Error::new(e.kind(), format!("cannot read the step log back: {e}")))
    }

    fn keep(&self, blob: &std::path::Path, digest: cache::Digest) {
        match self.recorder.link_log(&self.step, blob, digest, self.limit) {
            Ok(r) => self.state().kept = Some(r),
            Err(e) => tracing::warn!(step = %self.step, error = %e, "cannot write the step log"),
        }
    }
}
