//! Removal of everything one step created (containers, volumes, temp folders), whatever happens:
//! `release` on the normal path, and a spawned removal when the step's future is dropped midway
//! (including midway through `release` itself). Every removal runs under a deadline
//! (`errors::call`): a hung daemon delays a step's end by at most one deadline per item.
//!
//! Also the process-wide list of what the engine created and has not seen removed yet ([`live`]),
//! which is what an interrupted engine reports as possibly left behind and what a second Ctrl-C
//! kills ([`kill_all_now`]).
//!
//! Owns only what was registered with it; must not remove anything by label or of other steps.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions, RemoveVolumeOptions};
use bollard::Docker;
use tempfile::TempDir;

use crate::error::{call, ordinary};
use crate::labels::{container_name, LABEL_HOST, LABEL_PID};

/// What one container run (or image build) created and must remove, whatever happens.
pub(crate) struct Resources {
    docker: Docker,
    /// Still to remove (names or IDs); an entry leaves only once the daemon confirmed its removal.
    containers: Vec<String>,
    volumes: Vec<String>,
    temp: Vec<TempDir>,
}

impl Resources {
    pub(crate) fn new(docker: Docker) -> Self {
        remember_client(&docker);
        Resources { docker, containers: Vec::new(), volumes: Vec::new(), temp: Vec::new() }
    }

    pub(crate) fn container(&mut self, id: String) {
        with_live(|l| l.containers.insert(id.clone()));
        self.containers.push(id);
    }

    /// Forget a container already removed (the short-lived upload container).
    pub(crate) fn forget_container(&mut self, id: &str) {
        with_live(|l| l.containers.remove(id));
        self.containers.retain(|c| c != id);
    }

    pub(crate) fn volume(&mut self, name: String) {
        with_live(|l| l.volumes.insert(name.clone()));
        self.volumes.push(name);
    }

    pub(crate) fn temp_dir(&mut self, dir: TempDir) {
        with_live(|l| l.temp.insert(dir.path().to_path_buf()));
        self.temp.push(dir);
    }

    /// Remove the temporary folders (a step's secrets) now, synchronously: they must not wait
    /// for the daemon.
    pub(crate) fn drop_temp_dirs(&mut self) {
        for dir in std::mem::take(&mut self.temp) {
            with_live(|l| l.temp.remove(dir.path()));
            drop(dir);
        }
    }

    /// Remove everything now and wait for it (each removal under its deadline). What the daemon
    /// failed to remove is left for `cleanup::remove_stale` (it carries the owner labels).
    pub(crate) async fn release(mut self) {
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
        for dir in &self.temp {
            with_live(|l| l.temp.remove(dir.path()));
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
pub(crate) async fn remove_all(docker: &Docker, containers: Vec<String>, volumes: Vec<String>) -> (Vec<String>, Vec<String>) {
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
    let gone = match call("remove a container", ordinary(), docker.remove_container(id, Some(opts))).await {
        Ok(()) => true,
        Err(e) => e.is_not_found(),
    };
    if gone {
        forget(id);
    }
    gone
}

async fn remove_volume(docker: &Docker, name: &str) -> bool {
    let gone = match call("remove a volume", ordinary(), docker.remove_volume(name, Some(RemoveVolumeOptions { force: true }))).await {
        Ok(()) => true,
        Err(e) => e.is_not_found(),
    };
    if gone {
        with_live(|l| l.volumes.remove(name));
    }
    gone
}

/// What this process created on the daemon and in the temp dir and has not seen removed yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Live {
    /// Container names (or IDs) of steps, upload helpers and build containers.
    pub containers: BTreeSet<String>,
    /// Volume names (archive transfer).
    pub volumes: BTreeSet<String>,
    /// Temporary folders of steps (secrets).
    pub temp: BTreeSet<PathBuf>,
    /// Runs this process executed steps of (`engine.run` label values).
    pub runs: BTreeSet<String>,
}

impl Live {
    /// Nothing on the daemon nor in the temp dir.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.volumes.is_empty() && self.temp.is_empty()
    }
}

static LIVE: Mutex<Live> =
    Mutex::new(Live { containers: BTreeSet::new(), volumes: BTreeSet::new(), temp: BTreeSet::new(), runs: BTreeSet::new() });
static CLIENT: Mutex<Option<Docker>> = Mutex::new(None);

fn with_live<R>(f: impl FnOnce(&mut Live) -> R) -> R {
    let mut live = LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut live)
}

/// The client a second Ctrl-C uses ([`kill_all_now`]): the first one this process connected.
pub(crate) fn remember_client(docker: &Docker) {
    let mut client = CLIENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if client.is_none() {
        *client = Some(docker.clone());
    }
}

/// A snapshot of what this process may still leave behind.
pub fn live() -> Live {
    with_live(|l| l.clone())
}

/// Note that this process runs steps of `run_id` (for the report of an interrupted engine).
pub(crate) fn note_run(run_id: &str) {
    with_live(|l| l.runs.insert(run_id.to_string()));
}

fn forget(name: &str) {
    with_live(|l| l.containers.remove(name));
}

/// Forget every container and volume of `run_id`: the end-of-run safety net removed them all.
pub(crate) fn forget_run(run_id: &str) {
    let prefix = container_name(run_id, "");
    with_live(|l| {
        l.containers.retain(|c| !c.starts_with(&prefix));
        l.volumes.retain(|v| !v.starts_with(&prefix));
    });
}

/// Remove the step temp folders (secrets) of this process now, synchronously: used just before an
/// interrupted engine exits without running destructors, so that no secret outlives it.
pub fn remove_temp_now() {
    for dir in with_live(|l| std::mem::take(&mut l.temp)) {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The second Ctrl-C: force-remove (SIGKILL, no grace) at once and concurrently every container
/// this process registered and every container carrying its owner labels (image builds), all
/// within `bound`. Best effort: with a hung daemon nothing may be removed; `engine clean` removes
/// what is left.
pub async fn kill_all_now(bound: Duration) {
    let Some(docker) = CLIENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() else { return };
    let work = async {
        let mut targets: BTreeSet<String> = live().containers;
        let me = crate::owner::Owner::current();
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_PID}={}", me.pid), format!("{LABEL_HOST}={}", me.host)],
        )]);
        let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        if let Ok(list) = call("list the engine's containers", bound, docker.list_containers(Some(opts))).await {
            targets.extend(list.into_iter().filter_map(|c| c.id));
        }
        let kills = targets.iter().map(|id| {
            let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let docker = &docker;
            async move {
                match call("remove a container", bound, docker.remove_container(id, Some(opts))).await {
                    Err(e) if !e.is_not_found() => {}
                    _ => forget(id),
                }
            }
        });
        futures_util::future::join_all(kills).await;
    };
    let _ = tokio::time::timeout(bound, work).await;
}

/// Create a container on a task of its own, so that the daemon's answer is seen even when the
/// caller's future is dropped while the daemon is still creating it (under load that can take
/// longer than the removals by name of a dropped [`Resources`] keep trying): a container nobody
/// waits for any more is removed there. `Err` only if that task itself failed.
pub(crate) async fn create_container(
    docker: &Docker,
    action: &str,
    opts: bollard::query_parameters::CreateContainerOptions,
    body: bollard::models::ContainerCreateBody,
) -> Result<Result<bollard::models::ContainerCreateResponse, crate::error::DaemonError>, tokio::task::JoinError> {
    let waiting = Waiting { gone: Default::default(), done: false };
    let (docker, gone, what) = (docker.clone(), waiting.gone.clone(), action.to_string());
    let task = tokio::spawn(async move {
        let created = call(&what, ordinary(), docker.create_container(Some(opts), body)).await;
        if let Ok(c) = &created {
            if gone.load(std::sync::atomic::Ordering::SeqCst) {
                remove_all(&docker, vec![c.id.clone()], Vec::new()).await;
            }
        }
        created
    });
    let created = task.await;
    waiting.done();
    created
}

/// Set when the future waiting for a spawned daemon call is dropped before the call ended.
struct Waiting {
    gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: bool,
}

impl Waiting {
    /// The answer was received: dropping no longer means abandoning it.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
