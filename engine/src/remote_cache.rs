//! The remote cache during one run ([`RemoteCache`]): lookups after a local miss, uploads in the
//! background after a step ran, and the run's counts for the summary.
//!
//! A registry fault never fails a run: the first one (unreachable, refused, 5xx, timeout) is
//! warned about once, and the rest of the run makes no more remote calls (fail fast: a registry
//! that is down costs one timeout, not one per step). Uploads run on their own tasks, at most
//! [`UPLOADS_AT_ONCE`] at a time, and never delay a downstream step; [`RemoteCache::finish`]
//! waits for them (bounded) at the end of the run and names the steps whose results were not
//! shared. An aborted upload leaves nothing trusted: the remote crate pushes the manifest last.
//!
//! Lookups can start before a step has a job slot: [`RemoteCache::prefetch`] looks up, at most
//! [`LOOKUPS_AT_ONCE`] at a time, the keys known at the start of the run (the steps without
//! needs, see `crate::prefetch`). Each key is looked up once: the caching layer's
//! [`RemoteCache::fetch`] of a key being prefetched awaits that lookup's answer (or makes it
//! itself, if the prefetch has not started yet), so hits and bytes are counted once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache::{ActionKey, Manifest, Store};
use remote::{Fetched, Remote, RemoteError};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::RemoteSummary;

/// Uploads running at once.
pub const UPLOADS_AT_ONCE: usize = 4;
/// Lookups a prefetch runs at once.
pub const LOOKUPS_AT_ONCE: usize = 16;
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
    /// Lookups, one per key: the answer of the first (a prefetch's or the caching layer's) is
    /// the answer of all.
    lookups: Mutex<HashMap<ActionKey, Arc<Lookup>>>,
    prefetches: Mutex<JoinSet<()>>,
    notes: Box<dyn RemoteNotes>,
}

/// One key's lookup: the downloaded entry, or `None` (miss, damaged, fault).
type Lookup = OnceCell<Option<Manifest>>;

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
            lookups: Mutex::new(HashMap::new()),
            prefetches: Mutex::new(JoinSet::new()),
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

    /// Start looking up `wanted` (key, step), the keys the local store lacks, in the background:
    /// at most [`LOOKUPS_AT_ONCE`] at a time, none after the first fault, all stopped when
    /// `cancel` is cancelled (Ctrl-C) or at [`RemoteCache::finish`]. A hit is downloaded into
    /// `store`; the step's [`RemoteCache::fetch`] then gets it without asking the registry.
    pub fn prefetch(self: &Arc<Self>, store: &Arc<Store>, wanted: Vec<(ActionKey, String)>, cancel: &CancellationToken) {
        if !self.reads() || wanted.is_empty() {
            return;
        }
        let permits = Arc::new(Semaphore::new(LOOKUPS_AT_ONCE));
        let mut set = self.prefetches.lock().unwrap_or_else(|e| e.into_inner());
        for (key, step) in wanted {
            let lookup = self.lookup_of(&key);
            let (this, store, permits, cancel) = (self.clone(), store.clone(), permits.clone(), cancel.clone());
            set.spawn(async move {
                let work = async {
                    let Ok(_permit) = permits.acquire_owned().await else { return };
                    lookup.get_or_init(|| this.ask(&store, &key, &step)).await;
                };
                tokio::select! {
                    _ = work => {}
                    _ = cancel.cancelled() => {}
                }
            });
        }
    }

    /// The lookup of `key`, shared.
    fn lookup_of(&self, key: &ActionKey) -> Arc<Lookup> {
        self.lookups.lock().unwrap_or_else(|e| e.into_inner()).entry(*key).or_default().clone()
    }

    /// Whether this run downloaded the entry of `key` (a prefetch that ended before its step
    /// looked in the local store: the step's source is still the remote cache).
    pub fn downloaded(&self, key: &ActionKey) -> bool {
        let lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        lookups.get(key).is_some_and(|l| matches!(l.get(), Some(Some(_))))
    }

    /// Look `key` up after a local miss of `step`. `Some` when the entry was downloaded into
    /// `store` (every blob checked): the step is a hit. `None`: the step runs (a miss, a damaged
    /// entry, a fault, or the remote cache does not read). A key prefetched (or being prefetched)
    /// is not asked for again: its answer is awaited.
    pub async fn fetch(&self, store: &Arc<Store>, key: &ActionKey, step: &str) -> Option<Manifest> {
        let lookup = self.lookups.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        match lookup {
            Some(lookup) => lookup.get_or_init(|| self.ask(store, key, step)).await.clone(),
            None => self.ask(store, key, step).await,
        }
    }

    /// One lookup in the registry, counted.
    async fn ask(&self, store: &Arc<Store>, key: &ActionKey, step: &str) -> Option<Manifest> {
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
        // Lookups nobody awaits any more (a run that stopped early) are stopped.
        let mut prefetches = std::mem::take(&mut *self.prefetches.lock().unwrap_or_else(|e| e.into_inner()));
        prefetches.shutdown().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counted {
        unavailable: AtomicUsize,
    }

    struct Notes(Arc<Counted>);

    impl RemoteNotes for Notes {
        fn unavailable(&self, _url: &str, _why: &str) {
            self.0.unavailable.fetch_add(1, Ordering::SeqCst);
        }
        fn damaged(&self, _url: &str, _step: &str, _why: &str) {}
    }

    fn remote(port: u16, mode: remote::Mode) -> Remote {
        let url = format!("oci://127.0.0.1:{port}/cache").parse().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let config = remote::RemoteConfig {
            url,
            mode,
            insecure: false,
            docker_config: Some(empty.path().to_path_buf()),
            timeout: Duration::from_secs(20),
        };
        Remote::new(config).unwrap()
    }

    fn store_with_entry(dir: &std::path::Path) -> (Arc<Store>, Manifest) {
        let store = Arc::new(Store::open(&dir.join("cache")).unwrap());
        let collected = dir.join("out");
        std::fs::create_dir_all(&collected).unwrap();
        std::fs::write(collected.join("f"), b"data").unwrap();
        let key = ActionKey::from_digest(cache::Digest::of(b"key"));
        let manifest = store.put(key, "wf", "s", &collected, 0, b"log", 1, None).unwrap();
        (store, manifest)
    }

    /// A port nobody listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn the_first_fault_warns_once_and_ends_the_remote_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (store, manifest) = store_with_entry(dir.path());
        let counted = Arc::new(Counted::default());
        let rc = RemoteCache::new(remote(closed_port(), remote::Mode::ReadWrite), Box::new(Notes(counted.clone())));
        let key = ActionKey::from_digest(cache::Digest::of(b"other"));
        assert!(rc.fetch(&store, &key, "a").await.is_none());
        assert!(rc.is_down() && !rc.reads());
        assert!(rc.fetch(&store, &key, "b").await.is_none());
        rc.upload("c", store.clone(), manifest);
        let summary = rc.finish(Duration::from_secs(5), &CancellationToken::new()).await;
        assert_eq!(counted.unavailable.load(Ordering::SeqCst), 1);
        assert_eq!(summary.not_shared, ["c"]);
        assert!(summary.unavailable.is_some());
        assert_eq!((summary.hits, summary.misses, summary.uploads), (0, 0, 0));
    }

    #[tokio::test]
    async fn unfinished_uploads_are_bounded_and_aborted_and_named() {
        // A registry that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (store, manifest) = store_with_entry(dir.path());
        let rc = RemoteCache::new(remote(port, remote::Mode::ReadWrite), Box::new(Notes(Arc::default())));
        rc.upload("slow", store.clone(), manifest.clone());
        let started = std::time::Instant::now();
        let summary = rc.finish(Duration::from_millis(300), &CancellationToken::new()).await;
        assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed());
        assert_eq!(summary.not_shared, ["slow"]);
        assert_eq!(summary.uploads, 0);

        // Cancelled (Ctrl-C): no wait at all.
        let rc = RemoteCache::new(remote(port, remote::Mode::ReadWrite), Box::new(Notes(Arc::default())));
        rc.upload("interrupted", store, manifest);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = std::time::Instant::now();
        let summary = rc.finish(Duration::from_secs(60), &cancel).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(summary.not_shared, ["interrupted"]);
        held.abort();
    }

    #[tokio::test]
    async fn a_prefetched_key_is_fetched_once_and_counted_once() {
        let Some(reg) = remote::testing::TestRegistry::start() else { return };
        let port = reg.registry().rsplit(':').next().unwrap().parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, manifest) = store_with_entry(dir.path());
        let rc = RemoteCache::new(remote(port, remote::Mode::ReadWrite), Box::new(Notes(Arc::default())));
        rc.upload("s", store, manifest.clone());
        assert_eq!(rc.finish(Duration::from_secs(30), &CancellationToken::new()).await.uploads, 1);

        // Another machine: an empty store.
        let other = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&other.path().join("cache")).unwrap());
        let rc = RemoteCache::new(remote(port, remote::Mode::ReadWrite), Box::new(Notes(Arc::default())));
        let gets = || reg.count_requests("GET", "/manifests/action-");
        let before = gets();
        rc.prefetch(&store, vec![(manifest.key, "s".into())], &CancellationToken::new());
        // The caching layer's lookup, while the prefetch runs (or after it): one answer.
        let (a, b) = tokio::join!(rc.fetch(&store, &manifest.key, "s"), rc.fetch(&store, &manifest.key, "s"));
        assert_eq!(a.map(|m| m.key), Some(manifest.key));
        assert_eq!(b.map(|m| m.key), Some(manifest.key));
        assert!(store.get(&manifest.key).is_some(), "downloaded into the store");
        assert!(rc.downloaded(&manifest.key));
        let summary = rc.finish(Duration::from_secs(5), &CancellationToken::new()).await;
        assert_eq!(gets() - before, 1);
        assert_eq!(summary.hits, 1);
    }

    #[tokio::test]
    async fn a_prefetch_fault_warns_once_and_a_cancelled_prefetch_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_entry(dir.path());
        let counted = Arc::new(Counted::default());
        let rc = RemoteCache::new(remote(closed_port(), remote::Mode::ReadWrite), Box::new(Notes(counted.clone())));
        let keys: Vec<(ActionKey, String)> =
            (0..40u8).map(|i| (ActionKey::from_digest(cache::Digest::of(&[i])), format!("s{i}"))).collect();
        rc.prefetch(&store, keys.clone(), &CancellationToken::new());
        assert!(rc.fetch(&store, &keys[39].0, "s39").await.is_none());
        let summary = rc.finish(Duration::from_secs(5), &CancellationToken::new()).await;
        assert_eq!(counted.unavailable.load(Ordering::SeqCst), 1);
        assert_eq!((summary.hits, summary.misses), (0, 0));

        // A registry that never answers: Ctrl-C (the token) ends the prefetch, and the step's own
        // lookup is then made by the caching layer (bounded by the timeout; not awaited here).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let rc = RemoteCache::new(remote(port, remote::Mode::ReadWrite), Box::new(Notes(Arc::default())));
        let cancel = CancellationToken::new();
        rc.prefetch(&store, keys, &cancel);
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        let started = std::time::Instant::now();
        rc.finish(Duration::from_secs(60), &cancel).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        held.abort();
    }

    #[tokio::test]
    async fn read_mode_uploads_nothing_and_lists_nothing_as_unshared() {
        let dir = tempfile::tempdir().unwrap();
        let (store, manifest) = store_with_entry(dir.path());
        let rc = RemoteCache::new(remote(closed_port(), remote::Mode::Read), Box::new(Notes(Arc::default())));
        assert!(!rc.writes());
        rc.upload("a", store, manifest);
        let summary = rc.finish(Duration::from_secs(1), &CancellationToken::new()).await;
        assert!(summary.not_shared.is_empty());
        assert_eq!(summary.mode, "read");
    }
}
