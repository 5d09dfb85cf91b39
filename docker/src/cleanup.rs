//! Removal of what dead runs left behind: containers and volumes labelled `engine.run` whose
//! owning engine process (labels `engine.pid`, `engine.pid.start`, `engine.host`) is gone, and
//! the host folders holding their secrets (bind transfer), found by their `owner` file.
//! Never touches resources of a live run, nor a folder another user owns.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions};

use crate::error::{call, ordinary, DaemonError};
use crate::guard::{forget_run, remove_all};
use crate::labels::{owner_is_dead, LABEL_RUN};
use crate::run::transfer::{secrets_bases, OWNER_FILE, SECRETS_PREFIX};
use crate::Daemon;

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Container IDs.
    pub containers: Vec<String>,
    /// Volume names.
    pub volumes: Vec<String>,
}

/// Remove containers and volumes of runs whose engine process is gone.
pub async fn remove_stale(daemon: &Daemon) -> Result<CleanupReport, DaemonError> {
    let docker = &daemon.docker;
    let (containers, volumes) = list(docker, LABEL_RUN.to_string()).await?;
    let containers = containers.into_iter().filter(|(_, l)| owner_is_dead(l)).map(|(id, _)| id).collect();
    let volumes = volumes.into_iter().filter(|(_, l)| owner_is_dead(l)).map(|(id, _)| id).collect();
    remove(docker, containers, volumes).await
}

/// Remove the secrets folders (`engine-secrets-<run>-*`, see `transfer::secrets_dir`) of engines
/// that are gone, from every place they may be. Only folders owned by this user whose `owner`
/// file names a dead engine on this host; a live engine's folder, or one without a readable
/// owner, is left alone. Returns the removed paths.
pub fn remove_stale_secret_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for base in secrets_bases() {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(SECRETS_PREFIX) {
                continue;
            }
            let path = entry.path();
            if dead_owner(&path, OWNER_FILE) && std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// Whether `dir` is a real folder of ours whose owner file (`owner_file`, a regular file of ours,
/// read without following a symlink or blocking on a FIFO) names an engine that is gone.
pub fn dead_owner(dir: &Path, owner_file: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // Shared places (/dev/shm, /tmp) let anyone create a folder with our prefix.
    if !dir.symlink_metadata().is_ok_and(|m| m.is_dir() && m.uid() == me) {
        return false;
    }
    let file = dir.join(owner_file);
    // A regular file only (never a FIFO or device, never through a symlink), and small.
    if !file.symlink_metadata().is_ok_and(|m| m.is_file() && m.uid() == me) {
        return false;
    }
    let Ok(text) = cache::safe::read_bounded(&file, 256) else { return false };
    crate::owner::Owner::parse(&String::from_utf8_lossy(&text)).is_some_and(|o| !o.is_alive())
}

/// Force-remove every container and volume of `run_id` (used on interrupt and at the end of a run).
pub async fn remove_run(daemon: &Daemon, run_id: &str) -> Result<CleanupReport, DaemonError> {
    // Removals of finished steps still under way end first (see `Daemon::run_releasing_later`).
    daemon.settle().await;
    let docker = &daemon.docker;
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
async fn list(docker: &bollard::Docker, filter: String) -> Result<(Labelled, Labelled), DaemonError> {
    let filters = HashMap::from([("label".to_string(), vec![filter])]);
    let opts = ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() };
    let containers = call("list the engine's containers", ordinary(), docker.list_containers(Some(opts)))
        .await?
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .collect();
    let volumes = call("list the engine's volumes", ordinary(), docker.list_volumes(Some(ListVolumesOptions { filters: Some(filters) })))
        .await?
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name, v.labels))
        .collect();
    Ok((containers, volumes))
}

/// Containers first: a volume still used by a container cannot be removed.
async fn remove(docker: &bollard::Docker, containers: Vec<String>, volumes: Vec<String>) -> Result<CleanupReport, DaemonError> {
    let (containers, volumes) = remove_all(docker, containers, volumes).await;
    Ok(CleanupReport { containers, volumes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(owner: &str) -> tempfile::TempDir {
        let base = secrets_bases().remove(0);
        let dir = tempfile::Builder::new().prefix(&format!("{SECRETS_PREFIX}unit-")).tempdir_in(base).unwrap();
        std::fs::write(dir.path().join(OWNER_FILE), owner).unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/KEY"), "v").unwrap();
        dir
    }

    #[test]
    fn a_dead_engines_secrets_folder_is_removed_and_a_live_ones_kept() {
        let me = crate::owner::Owner::current();
        let dead = folder(&crate::owner::Owner { start: me.start + 1, ..me.clone() }.to_string());
        let live = folder(&me.to_string());
        let unowned = folder("not an owner");
        let removed = remove_stale_secret_dirs();
        assert!(removed.contains(&dead.path().to_path_buf()), "{removed:?}");
        assert!(!dead.path().exists());
        assert!(live.path().join("s/KEY").exists());
        assert!(unowned.path().join("s/KEY").exists());
    }

    #[test]
    fn an_owner_fifo_is_not_read() {
        let dir = folder("");
        std::fs::remove_file(dir.path().join(OWNER_FILE)).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join(OWNER_FILE).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(!dead_owner(dir.path(), OWNER_FILE));
    }
}
