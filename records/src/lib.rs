#![warn(missing_docs)]

//! Run records: what `engine run` leaves in `.engine/runs/<run id>/` beside the workflow, for
//! `engine runs`, `engine replay` and `engine provenance` (schema: docs/records.md).
//!
//! This crate owns the record's schema (its own serde types: the record format does not change
//! when the engine's IR does), its atomic writing ([`Recorder`], [`StepLog`]), its lookup and
//! listing ([`find`], [`list`]), pruning ([`prune`]) and the provenance statement
//! ([`provenance::statement`]). It never talks to Docker, renders no text for people, and never
//! sees a secret value: steps carry secret *names*, logs are captured after masking, and the key
//! components hold no values of secrets.
//!
//! A record is rewritten as a whole (temp file + rename) at the start of the run, as steps
//! finish and at the end, so a reader always sees a complete JSON document; an engine killed
//! mid-run leaves one whose `status` is `incomplete`, listing the steps finished so far. Input
//! manifests are not in the record: each is kept once in the cache store, by digest.

mod definition;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod log;
pub mod provenance;
mod prune;
mod read;
mod recorder;
mod schema;

pub use definition::{CacheMount, Command, ImageRef, Isolation, Limits, Network, Span, StepDefinition, User};
pub use log::{StepLog, DEFAULT_LOG_LIMIT, MIN_LOG_LIMIT};
pub use prune::{prune, run_started, run_started_secs, PrunePolicy, PruneReason, PruneReport, Pruned, DEFAULT_KEEP, DEFAULT_MAX_AGE};
pub use read::{find, find_current, list, read, read_regular, runs_dir, ReadRefused, RecordError, MAX_RECORD_BYTES};
pub use recorder::{Recorder, FLUSH_EVERY};
pub use schema::{
    source_date_epoch, source_date_epoch_unclamped, timestamp, BaseImage, EngineInfo, HostInfo, ImageRecord, Invocation, LogRecord,
    ModuleInfo, RecordStatus, RemoteCacheInfo, RunRecord, RunSummary, StepRecord, StepState, WorkflowInfo, SCHEMA, SCHEMA_V1,
};
