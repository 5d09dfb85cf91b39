//! The on-disk store. Layout under the cache directory (`--cache-dir`, `ENGINE_CACHE_DIR`, or the
//! user's cache directory + `/engine`):
//!
//! ```text
//! v1/blobs/<aa>/<digest>        file contents, by their own SHA-256, read-only
//! v1/actions/<aa>/<key>.json    one Manifest per action key
//! v1/last/<workflow>/<step>.json  KeyComponents of the step's last run (explains misses)
//! v1/stat/<root digest>.json    stat caches (see `hash`)
//! v1/mounts/<name>/             persistent cache mounts (`caches:` on a step; not in any key)
//! v1/tmp/                       temp files, renamed into place (same filesystem)
//! ```
//!
//! Every write is a temp file + rename, so two engines sharing one directory both succeed and no
//! reader ever sees a half-written entry. A blob whose content no longer matches its digest is a
//! miss (it is deleted, and the next successful run stores it again), never restored. Restore
//! uses a reflink where the filesystem allows and a copy otherwise; never a hard link, since
//! editing an exported output would then silently corrupt the cache.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::{ActionKey, KeyComponents};
use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache entry {key} is damaged ({what}); it was removed and the step will run")]
    Corrupt { key: ActionKey, what: String },
    #[error("cache directory {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// One output path of a cached step.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputEntry {
    File { path: String, mode: u32, digest: Digest, size: u64 },
    Symlink { path: String, target: String },
    Dir { path: String, mode: u32 },
}

/// What a successful step produced, stored under its action key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub key: ActionKey,
    pub workflow: String,
    pub step: String,
    /// Every file, symlink and directory under the collected outputs, sorted by path.
    pub entries: Vec<OutputEntry>,
    pub exit_code: i64,
    /// Digest of the step's log (stdout and stderr lines as shown, secrets already masked).
    pub log: Digest,
    /// Unix seconds.
    pub created: u64,
    pub duration_ms: u64,
}

impl Manifest {
    /// Digest of the outputs alone (paths, modes, contents, link targets; not the key, log or
    /// times): what a downstream step's key depends on.
    pub fn outputs_digest(&self) -> Digest {
        todo!()
    }

    pub fn size(&self) -> u64 {
        self.entries.iter().map(|e| if let OutputEntry::File { size, .. } = e { *size } else { 0 }).sum()
    }
}

/// One line of `engine cache ls`.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    pub key: ActionKey,
    pub workflow: String,
    pub step: String,
    pub size: u64,
    pub created: u64,
    /// Unix seconds of the last hit or store.
    pub last_used: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub removed_entries: usize,
    pub removed_blobs: usize,
    pub freed_bytes: u64,
    pub remaining_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    /// Blobs whose content did not match their digest; removed.
    pub corrupt_blobs: Vec<Digest>,
    /// Manifests that referenced a missing or corrupt blob, or did not parse; removed.
    pub dropped_entries: Vec<ActionKey>,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(_dir: &Path) -> Result<Store, StoreError> {
        todo!()
    }

    /// `ENGINE_CACHE_DIR`, else the user's cache directory + `/engine` (`~/.cache/engine`).
    pub fn default_dir() -> PathBuf {
        todo!()
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The manifest stored under `key`, if there is one and every blob it names exists. Contents
    /// are checked by `restore`.
    pub fn get(&self, _key: &ActionKey) -> Option<Manifest> {
        todo!()
    }

    /// Recreate the outputs of `manifest` under `dest` (which exists and is empty). Every blob is
    /// re-hashed first; a mismatch removes the blob and the manifest and returns `Corrupt`, with
    /// nothing written under `dest` that the caller must keep (it re-runs the step). Marks the entry
    /// used (LRU).
    pub fn restore(&self, _manifest: &Manifest, _dest: &Path) -> Result<(), StoreError> {
        todo!()
    }

    /// Store everything under `collected` (the step's collected outputs) as blobs and write the
    /// manifest for `key`. Only called for successful steps.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        _key: ActionKey,
        _workflow: &str,
        _step: &str,
        _collected: &Path,
        _exit_code: i64,
        _log: &[u8],
        _duration_ms: u64,
    ) -> Result<Manifest, StoreError> {
        todo!()
    }

    /// Remember the components of the latest run of `step` of `workflow`, for explanations.
    pub fn record_last(&self, _workflow: &str, _step: &str, _components: &KeyComponents) -> Result<(), StoreError> {
        todo!()
    }

    pub fn last(&self, _workflow: &str, _step: &str) -> Option<KeyComponents> {
        todo!()
    }

    /// Every entry, most recently used first.
    pub fn list(&self) -> Vec<EntryInfo> {
        todo!()
    }

    /// Remove least-recently-used entries until entries + blobs take at most `max_size` bytes,
    /// then blobs no manifest references.
    pub fn gc(&self, _max_size: u64) -> Result<GcReport, StoreError> {
        todo!()
    }

    /// Re-hash every blob; remove corrupt blobs and the manifests that reference them.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        todo!()
    }

    /// The persistent folder of cache mount `name` (created on demand).
    pub fn mount_dir(&self, _name: &str) -> Result<PathBuf, StoreError> {
        todo!()
    }
}
