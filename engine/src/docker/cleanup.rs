//! Removal of what dead runs left behind: containers and volumes labelled `engine.run` whose
//! owning engine process (labels `engine.pid`, `engine.pid.start`, `engine.host`) is gone.
//! Never touches resources of a live run.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions};

use super::errors::{call, ordinary};
use super::guard::{forget_run, remove_all};
use super::owner::owner_is_dead;
use super::LABEL_RUN;
use crate::error::EnvironmentError;

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

/// Remove containers and volumes of runs whose engine process is gone.
pub async fn remove_stale(docker: &bollard::Docker) -> Result<CleanupReport, crate::error::EnvironmentError> {
    let (containers, volumes) = list(docker, LABEL_RUN.to_string()).await?;
    let containers = containers.into_iter().filter(|(_, l)| owner_is_dead(l)).map(|(id, _)| id).collect();
    let volumes = volumes.into_iter().filter(|(_, l)| owner_is_dead(l)).map(|(id, _)| id).collect();
    remove(docker, containers, volumes).await
}

/// Force-remove every container and volume of `run_id` (used on interrupt and at the end of a run).
pub async fn remove_run(docker: &bollard::Docker, run_id: &str) -> Result<CleanupReport, crate::error::EnvironmentError> {
    let (containers, volumes) = list(docker, format!("{LABEL_RUN}={run_id}")).await?;
    let listed = (containers.len(), volumes.len());
    let report =
        remove(docker, containers.into_iter().map(|(id, _)| id).collect(), volumes.into_iter().map(|(id, _)| id).collect()).await?;
    // Everything the daemon listed is gone: what a step's guard could not remove earlier (a slow
    // daemon) is not left behind after all.
    if (report.containers.len(), report.volumes.len()) == listed {
        forget_run(run_id);
    }
    Ok(report)
}

type Labelled = Vec<(String, HashMap<String, String>)>;

/// Containers (all states) and volumes matching a label filter, with their labels.
async fn list(docker: &bollard::Docker, filter: String) -> Result<(Labelled, Labelled), EnvironmentError> {
    let filters = HashMap::from([("label".to_string(), vec![filter])]);
    let opts = ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() };
    let containers = call("list the engine's containers", ordinary(), docker.list_containers(Some(opts)))
        .await
        .map_err(|e| EnvironmentError(e.to_string()))?
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .collect();
    let volumes = call("list the engine's volumes", ordinary(), docker.list_volumes(Some(ListVolumesOptions { filters: Some(filters) })))
        .await
        .map_err(|e| EnvironmentError(e.to_string()))?
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name, v.labels))
        .collect();
    Ok((containers, volumes))
}

/// Containers first: a volume still used by a container cannot be removed.
async fn remove(docker: &bollard::Docker, containers: Vec<String>, volumes: Vec<String>) -> Result<CleanupReport, EnvironmentError> {
    let (containers, volumes) = remove_all(docker, containers, volumes).await;
    Ok(CleanupReport { containers, volumes })
}
