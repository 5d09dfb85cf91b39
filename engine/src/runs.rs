//! `engine runs`, `engine runs show` and `engine runs prune`: what they report, read from (or
//! done by) the `records` crate; `output::runs` renders it as text or JSON.

use std::path::{Path, PathBuf};

use crate::record::{self, PrunePolicy, PruneReport, RecordError, RunRecord};

/// The runs recorded under a folder, oldest first.
#[derive(Debug)]
pub struct RunList {
    /// `<dir>/.engine/runs`.
    pub runs_dir: PathBuf,
    /// Never empty.
    pub runs: Vec<RunRecord>,
}

/// The runs recorded under `<dir>/.engine/runs`, oldest first; none is an error naming the folder.
pub fn list(dir: &Path) -> Result<RunList, RecordError> {
    let runs_dir = record::runs_dir(dir);
    let runs = record::list(dir);
    if runs.is_empty() {
        return Err(RecordError::NoRuns(runs_dir));
    }
    Ok(RunList { runs_dir, runs })
}

/// What `engine runs prune` did in a folder.
#[derive(Debug)]
pub struct RunsPruned {
    /// `<dir>/.engine/runs`.
    pub runs_dir: PathBuf,
    /// Removed, kept, live and failed runs.
    pub report: PruneReport,
}

/// `engine runs prune`: remove the records `policy` does not keep (never a run whose engine still
/// lives).
pub fn prune(dir: &Path, policy: PrunePolicy) -> Result<RunsPruned, RecordError> {
    let report = record::prune(dir, policy, std::time::SystemTime::now(), None)?;
    Ok(RunsPruned { runs_dir: record::runs_dir(dir), report })
}
