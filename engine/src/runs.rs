//! `engine runs` and `engine runs show`: run records as text or JSON. Reads records only.

use std::path::Path;

use crate::cli::OutputFormat;
use crate::record::{RecordError, RunRecord};

/// The runs recorded under `<dir>/.engine/runs`, oldest first: id, start time, workflow, result,
/// steps run / cached.
pub fn list(dir: &Path, output: OutputFormat) -> Result<String, RecordError> {
    let _ = (dir, output);
    todo!("helper")
}

/// One run in detail. `run_dir` is the run's folder (logs are relative to it).
pub fn show(run_dir: &Path, record: &RunRecord, output: OutputFormat) -> Result<String, RecordError> {
    let _ = (run_dir, record, output);
    todo!("helper")
}
