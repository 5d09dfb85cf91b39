//! The remote cache during one run ([`RemoteCache`]): lookups after a local miss, uploads in the
//! background after a step ran, and the run's counts for the summary.
//!
//! A registry fault never fails a run: the first one (unreachable, refused, 5xx, timeout) is
//! warned about once, and the rest of the run makes no more remote calls (fail fast: a registry
//! that is down costs one timeout, not one per step). Uploads run on their own tasks, at most
//! [`UPLOADS_AT_ONCE`] at a time, and never delay a downstream step; [`RemoteCache::finish`]
//! waits for them (bounded) at the end of the run and names the steps whose results were not
//! shared. An aborted upload leaves nothing trusted: the remote crate pushes the manifest last.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache::{ActionKey, Manifest, Store};
use remote::{Fetched, Remote, RemoteError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::RemoteSummary;

/// Uploads running at once.
pub const UPLOADS_AT_ONCE: usize = 4;
/// How long the end of a run waits for unfinished uploads.
pub const FINISH_BOUND: Duration = Duration::from_secs(60);

/// How the run tells the user about the remote cache (stderr notes; tests collect them).
pub trait RemoteNotes: Send + Sync {
    /// The first fault: the remote cache is given up for the rest of the run.
    fn unavailable(&self, url: &str, why: &str);
    /// An entry of `step` was found damaged in the registry; the step runs.
    fn damaged(&self, url: &str, step: &str, why: &str);
}

/// The remote cache of one run. Shared by the caching layer's tasks (`Arc`).
pub struct RemoteCache {
    remote: Remote,
    down: AtomicBool,
    state: Mutex<State>,
    uploads: Mutex<JoinSet<()>>,
    permits: Arc<Semaphore>,
    notes: Box<dyn RemoteNotes>,
}

#[derive(Default)]
struct State {
    summary: RemoteSummary,
    /// Steps whose upload is queued or running.
    pending: BTreeSet<String>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache").field("remote", &self.remote).finish_non_exhaustive()
    }
}

impl RemoteCache {
    /// The remote cache of a run, through `remote`, telling the user through `notes`.
    pub fn new(remote: Remote, notes: Box<dyn RemoteNotes>) -> Arc<RemoteCache> {
        let summary = RemoteSummary { url: remote.url().to_string(), mode: remote.mode().as_str().to_string(), ..RemoteSummary::default() };
        Arc::new(RemoteCache {
            remote,
            down: AtomicBool::new(false),
            state: Mutex::new(State { summary, pending: BTreeSet::new() }),
            uploads: Mutex::new(JoinSet::new()),
            permits: Arc::new(Semaphore::new(UPLOADS_AT_ONCE)),
            notes,
        })
    }

    /// The connection.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Whether lookups are allowed and the registry has not failed yet.
    pub fn reads(&self) -> bool {
        self.remote.mode().reads() && !self.is_down()
    }

    /// Whether uploads are allowed (whatever the registry's health).
    pub fn writes(&self) -> bool {
        self.remote.mode().writes()
    }

    /// Whether a fault gave the remote cache up for this run.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A registry fault: the first one is warned about and ends the remote calls of the run.
    fn fault(&self, err: &RemoteError) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        let why = err.to_string();
        self.notes.unavailable(&self.remote.url().to_string(), &why);
        self.state().summary.unavailable = Some(why);
    }

    /// Look `key` up after a local miss of `step`. `Some` when the entry was downloaded into
    /// `store` (every blob checked): the step is a hit. `None`: the step runs (a miss, a damaged
    /// entry, a fault, or the remote cache does not read).
    pub async fn fetch(&self, store: &Arc<Store>, key: &ActionKey, step: &str) -> Option<Manifest> {
        if !self.reads() {
            return None;
        }
        match self.remote.fetch_action(store, key).await {
            Ok(Fetched::Hit { manifest, transfer }) => {
                let mut st = self.state();
                st.summary.hits += 1;
                st.summary.bytes_down += transfer.bytes;
                Some(*manifest)
            }
            Ok(Fetched::Miss) => {
                self.state().summary.misses += 1;
                None
            }
            Ok(Fetched::Damaged(why)) => {
                self.damaged(step, &why);
                None
            }
            Err(RemoteError::Invalid { message, .. }) => {
                self.damaged(step, &message);
                None
            }
            Err(RemoteError::Store(e)) => {
                tracing::warn!(step, error = %e, "cannot store a remote cache entry locally; the step runs");
                self.state().summary.misses += 1;
                None
            }
            Err(e) => {
                self.fault(&e);
                None
            }
        }
    }

    fn damaged(&self, step: &str, why: &str) {
        self.state().summary.damaged += 1;
        self.notes.damaged(&self.remote.url().to_string(), step, why);
    }

    /// Upload the entry `manifest` of `step` in the background (when the remote cache writes).
    /// Returns at once.
    pub fn upload(self: &Arc<Self>, step: &str, store: Arc<Store>, manifest: Manifest) {
        if !self.writes() {
            return;
        }
        if self.is_down() {
            self.state().summary.not_shared.push(step.to_string());
            return;
        }
        self.state().pending.insert(step.to_string());
        let (this, step) = (self.clone(), step.to_string());
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.spawn(async move {
            let shared = match this.permits.clone().acquire_owned().await {
                Ok(_permit) if !this.is_down() => match this.remote.push_action(&store, &manifest).await {
                    Ok(transfer) => {
                        let mut st = this.state();
                        st.summary.uploads += 1;
                        st.summary.bytes_up += transfer.bytes;
                        st.summary.blobs_up += transfer.blobs;
                        st.summary.blobs_skipped += transfer.skipped;
                        true
                    }
                    Err(RemoteError::Store(e)) => {
                        tracing::warn!(step = %step, error = %e, "cannot read a cache entry to upload it");
                        false
                    }
                    Err(e) => {
                        this.fault(&e);
                        false
                    }
                },
                _ => false,
            };
            let mut st = this.state();
            st.pending.remove(&step);
            if !shared {
                st.summary.not_shared.push(step);
            }
        });
    }

    /// The end of the run: wait for the uploads still running, at most `bound` (none when
    /// `cancel` is cancelled: Ctrl-C aborts them), then the run's counts. Steps whose upload did
    /// not finish are named in `not_shared`.
    pub async fn finish(&self, bound: Duration, cancel: &CancellationToken) -> RemoteSummary {
        let mut set = std::mem::take(&mut *self.uploads.lock().unwrap_or_else(|e| e.into_inner()));
        let until = tokio::time::Instant::now() + bound;
        loop {
            tokio::select! {
                next = set.join_next() => if next.is_none() { break },
                _ = tokio::time::sleep_until(until) => break,
                _ = cancel.cancelled() => break,
            }
        }
        set.shutdown().await;
        let mut st = self.state();
        let unfinished: Vec<String> = std::mem::take(&mut st.pending).into_iter().collect();
        st.summary.not_shared.extend(unfinished);
        st.summary.clone()
    }

    /// The counts so far.
    pub fn summary(&self) -> RemoteSummary {
        self.state().summary.clone()
    }
}
