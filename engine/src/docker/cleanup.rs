//! Removal of what dead runs left behind: containers and volumes labelled `engine.run` whose
//! owning engine process (labels `engine.pid`, `engine.pid.start`, `engine.host`) is gone.
//! Never touches resources of a live run.

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

/// Remove containers and volumes of runs whose engine process is gone.
pub async fn remove_stale(_docker: &bollard::Docker) -> Result<CleanupReport, crate::error::EnvironmentError> {
    todo!()
}

/// Force-remove every container and volume of `run_id` (used on interrupt and at the end of a run).
pub async fn remove_run(_docker: &bollard::Docker, _run_id: &str) -> Result<CleanupReport, crate::error::EnvironmentError> {
    todo!()
}
