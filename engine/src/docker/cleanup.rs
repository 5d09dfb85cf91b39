//! Removal of what runs left behind (see [`docker::cleanup`]), with daemon failures as the
//! engine's environment errors.

pub use docker::cleanup::{dead_owner, remove_stale_secret_dirs, CleanupReport};

use super::{environment, Daemon};
use crate::error::EnvironmentError;

/// Remove containers and volumes of runs whose engine process is gone.
pub async fn remove_stale(daemon: &Daemon) -> Result<CleanupReport, EnvironmentError> {
    docker::cleanup::remove_stale(daemon).await.map_err(environment)
}

/// Force-remove every container and volume of `run_id` (used on interrupt and at the end of a run).
pub async fn remove_run(daemon: &Daemon, run_id: &str) -> Result<CleanupReport, EnvironmentError> {
    docker::cleanup::remove_run(daemon, run_id).await.map_err(environment)
}
