//! Removal of everything one step created (containers, volumes, temp folders), whatever happens:
//! `release` on the normal path, and a spawned removal when the step's future is dropped midway.
//!
//! Owns only what was registered with it; must not remove anything by label or of other steps.

use bollard::query_parameters::{RemoveContainerOptions, RemoveVolumeOptions};
use bollard::Docker;
use tempfile::TempDir;

pub struct Resources {
    docker: Docker,
    containers: Vec<String>,
    volumes: Vec<String>,
    temp: Vec<TempDir>,
    released: bool,
}

impl Resources {
    pub fn new(docker: Docker) -> Self {
        Resources { docker, containers: Vec::new(), volumes: Vec::new(), temp: Vec::new(), released: false }
    }

    pub fn container(&mut self, id: String) {
        self.containers.push(id);
    }

    /// Forget a container already removed (the short-lived upload container).
    pub fn forget_container(&mut self, id: &str) {
        self.containers.retain(|c| c != id);
    }

    pub fn volume(&mut self, name: String) {
        self.volumes.push(name);
    }

    pub fn temp_dir(&mut self, dir: TempDir) {
        self.temp.push(dir);
    }

    /// Remove everything now and wait for it.
    pub async fn release(mut self) {
        self.released = true;
        let containers = std::mem::take(&mut self.containers);
        let volumes = std::mem::take(&mut self.volumes);
        remove_all(&self.docker, containers, volumes).await;
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let containers = std::mem::take(&mut self.containers);
        let volumes = std::mem::take(&mut self.volumes);
        if containers.is_empty() && volumes.is_empty() {
            return;
        }
        // Dropped mid-way (the caller gave up on the future): removal cannot be awaited here, so
        // it runs on its own task. Without a runtime nothing can talk to Docker; the next
        // `remove_stale` picks the leftovers up by their owner labels.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            handle.spawn(async move { remove_all(&docker, containers, volumes).await });
        }
    }
}

/// Force-remove containers (with their anonymous volumes), then the named volumes. Errors are
/// ignored on purpose: "already gone" is success, and anything else is left for `remove_stale`.
pub async fn remove_all(docker: &Docker, containers: Vec<String>, volumes: Vec<String>) {
    for id in containers {
        let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        let _ = docker.remove_container(&id, Some(opts)).await;
    }
    for name in volumes {
        let _ = docker.remove_volume(&name, Some(RemoveVolumeOptions { force: true })).await;
    }
}
