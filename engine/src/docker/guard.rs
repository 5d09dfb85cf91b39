//! Removal of everything one step created (containers, volumes, temp folders), whatever happens:
//! `release` on the normal path, and a spawned removal when the step's future is dropped midway
//! (including midway through `release` itself).
//!
//! Owns only what was registered with it; must not remove anything by label or of other steps.

use bollard::query_parameters::{RemoveContainerOptions, RemoveVolumeOptions};
use bollard::Docker;
use tempfile::TempDir;

use super::errors::is_not_found;

pub struct Resources {
    docker: Docker,
    /// Still to remove (names or IDs); an entry leaves only once the daemon confirmed its removal.
    containers: Vec<String>,
    volumes: Vec<String>,
    temp: Vec<TempDir>,
}

impl Resources {
    pub fn new(docker: Docker) -> Self {
        Resources { docker, containers: Vec::new(), volumes: Vec::new(), temp: Vec::new() }
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

    /// Remove everything now and wait for it. What the daemon failed to remove is left for
    /// `cleanup::remove_stale` (it carries the owner labels).
    pub async fn release(mut self) {
        while let Some(id) = self.containers.last() {
            remove_container(&self.docker, id).await;
            self.containers.pop();
        }
        while let Some(name) = self.volumes.last() {
            remove_volume(&self.docker, name).await;
            self.volumes.pop();
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
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
            handle.spawn(async move {
                // A create may still have been in flight when the future was dropped: the daemon
                // can complete it after a first removal found nothing. Removing by name again a
                // few times over the next seconds closes that window (a removal of what is
                // already gone is a no-op).
                for delay_ms in [0, 250, 750, 2000] {
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                    remove_all(&docker, containers.clone(), volumes.clone()).await;
                }
            });
        }
    }
}

/// Force-remove containers (with their anonymous volumes), then the named volumes, and return
/// what is gone ("already gone" counts). Other errors leave the item for a later cleanup.
pub async fn remove_all(docker: &Docker, containers: Vec<String>, volumes: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut gone = (Vec::new(), Vec::new());
    for id in containers {
        if remove_container(docker, &id).await {
            gone.0.push(id);
        }
    }
    for name in volumes {
        if remove_volume(docker, &name).await {
            gone.1.push(name);
        }
    }
    gone
}

async fn remove_container(docker: &Docker, id: &str) -> bool {
    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => true,
        Err(e) => is_not_found(&e),
    }
}

async fn remove_volume(docker: &Docker, name: &str) -> bool {
    match docker.remove_volume(name, Some(RemoveVolumeOptions { force: true })).await {
        Ok(()) => true,
        Err(e) => is_not_found(&e),
    }
}
