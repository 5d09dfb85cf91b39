//! The on-disk store. Layout under the cache directory (`--cache-dir`, `ENGINE_CACHE_DIR`, or the
//! user's cache directory + `/engine`):
//!
//! ```text
//! v1/blobs/<aa>/<digest>        file contents, by their own SHA-256, read-only
//! v1/actions/<aa>/<key>.json    one Manifest per action key
//! v1/inputs/<aa>/<digest>.json  input manifests (path, mode, digest of each input file), by the
//!                               digest of their JSON, each once; entries name theirs (for replay)
//! v1/last/<workflow>/<step>.json  KeyComponents of the step's last run (explains misses)
//! v1/stat/<root digest>.bin     stat caches (see `hash`)
//! v1/mounts/<name>/             persistent cache mounts (`caches:` on a step; not in any key)
//! v1/tmp/                       temp files, renamed into place (same filesystem)
//! ```
//!
//! Every write is a temp file + rename, so two engines sharing one directory both succeed and no
//! reader ever sees a half-written entry. A blob whose content no longer matches its digest is a
//! miss (it is deleted, and the next successful run stores it again), never restored. Restore
//! uses a reflink where the filesystem allows and a copy otherwise; never a hard link, since
//! editing an exported output would then silently corrupt the cache.

mod fsio;
mod import;
mod inputs;
mod maint;
mod restore;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use walkdir::WalkDir;

use crate::key::{ActionKey, KeyComponents};
use crate::Digest;
use fsio::at;
pub use fsio::sanitise;
pub use import::BlobImport;
pub use maint::Usage;

/// The folders under `v1/`.
const LAYOUT: [&str; 7] = ["blobs", "actions", "inputs", "last", "stat", "mounts", "tmp"];
/// Permission bits kept for outputs (including setuid/setgid/sticky), not the file type.
const MODE_BITS: u32 = 0o7777;
pub use crate::safe::MAX_META_BYTES;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entry of `key` could not be used (`what` says why); it was removed, so it is a miss.
    #[error("cache entry {key} is damaged ({what}); it was removed and the step will run")]
    Corrupt {
        /// The action key of the damaged entry.
        key: ActionKey,
        /// What was wrong with it.
        what: String,
    },
    /// A file or folder of the cache directory could not be read or written.
    #[error("cache directory {}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// One output path of a cached step.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputEntry {
    /// A regular file, its contents stored as a blob.
    File {
        /// Relative, `/`-separated path.
        path: String,
        /// Permission bits (including setuid/setgid/sticky).
        mode: u32,
        /// SHA-256 of the contents: the blob's name.
        digest: Digest,
        /// Length of the contents in bytes.
        size: u64,
    },
    /// A symbolic link, kept as a link (never followed).
    Symlink {
        /// Relative, `/`-separated path.
        path: String,
        /// The link's target, as written in the link.
        target: String,
    },
    /// A folder (listed so empty folders and their modes are restored).
    Dir {
        /// Relative, `/`-separated path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
}

impl OutputEntry {
    /// Relative, `/`-separated path of the entry.
    pub fn path(&self) -> &str {
        match self {
            OutputEntry::File { path, .. } | OutputEntry::Symlink { path, .. } | OutputEntry::Dir { path, .. } => path,
        }
    }
}

/// Length-prefixed bytes, so that no two different sequences of fields share an encoding.
fn put_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// What a successful step produced, stored under its action key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The action key the entry is stored under.
    pub key: ActionKey,
    /// Name of the workflow whose step produced it (for `engine cache ls`).
    pub workflow: String,
    /// Name of the step that produced it.
    pub step: String,
    /// Every file, symlink and directory under the collected outputs, sorted by path.
    pub entries: Vec<OutputEntry>,
    /// The step's exit code (0: only successful steps are stored).
    pub exit_code: i64,
    /// Digest of the step's log (stdout and stderr lines as shown, secrets already masked).
    pub log: Digest,
    /// Unix seconds.
    pub created: u64,
    /// How long the step ran, in milliseconds.
    pub duration_ms: u64,
    /// The input manifest of the execution (see [`Store::put_input_manifest`]); gc keeps it, and
    /// the contents of the files it lists, as long as the entry lives. `None` for entries
    /// written before input manifests were kept by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Digest>,
}

impl Manifest {
    /// Digest of the outputs alone (paths, modes, contents, link targets; not the key, log or
    /// times): what a downstream step's key depends on.
    pub fn outputs_digest(&self) -> Digest {
        outputs_digest(&self.entries)
    }

    /// Total bytes of the output files (folders and symlinks count nothing).
    pub fn size(&self) -> u64 {
        self.entries.iter().map(|e| if let OutputEntry::File { size, .. } = e { *size } else { 0 }).sum()
    }
}

/// Digest of output entries (see [`Manifest::outputs_digest`]), for outputs that are not stored
/// (the partial outputs of a failed step allowed to fail).
pub fn outputs_digest(entries: &[OutputEntry]) -> Digest {
    let mut h = Sha256::new();
    put_field(&mut h, b"engine-outputs-v1");
    // Sorted here too, so a hand-built manifest in another order has the same digest.
    let mut entries: Vec<&OutputEntry> = entries.iter().collect();
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    h.update((entries.len() as u64).to_le_bytes());
    for e in entries {
        match e {
            OutputEntry::File { path, mode, digest, size } => {
                h.update(b"F");
                put_field(&mut h, path.as_bytes());
                h.update(mode.to_le_bytes());
                h.update(digest.as_bytes());
                h.update(size.to_le_bytes());
            }
            OutputEntry::Symlink { path, target } => {
                h.update(b"L");
                put_field(&mut h, path.as_bytes());
                put_field(&mut h, target.as_bytes());
            }
            OutputEntry::Dir { path, mode } => {
                h.update(b"D");
                put_field(&mut h, path.as_bytes());
                h.update(mode.to_le_bytes());
            }
        }
    }
    Digest::from_bytes(h.finalize().into())
}

/// One line of `engine cache ls`.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    /// The entry's action key.
    pub key: ActionKey,
    /// Workflow of the step that produced it.
    pub workflow: String,
    /// The step that produced it.
    pub step: String,
    /// Total bytes of its output files.
    pub size: u64,
    /// Unix seconds of the store.
    pub created: u64,
    /// Unix seconds of the last hit or store.
    pub last_used: u64,
}

/// What [`Store::gc`] removed and what is left.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Entries (manifests) removed: damaged ones, then least recently used.
    pub removed_entries: usize,
    /// Blobs removed because no entry referenced them any more.
    pub removed_blobs: usize,
    /// Input manifests no entry names any more.
    pub removed_input_manifests: usize,
    /// Bytes of everything removed.
    pub freed_bytes: u64,
    /// Bytes the entries, blobs and input manifests take after the collection.
    pub remaining_bytes: u64,
}

/// What [`Store::verify`] checked and removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// How many blobs were re-hashed.
    pub blobs_checked: usize,
    /// Blobs whose content did not match their digest; removed.
    pub corrupt_blobs: Vec<Digest>,
    /// Manifests that referenced a missing or corrupt blob, or did not parse; removed.
    pub dropped_entries: Vec<ActionKey>,
}

/// An open cache directory (see the module documentation for its layout).
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) the store in `dir`. The folders above `dir` are the user's;
    /// `dir` itself, `v1` and every folder of the layout must be real folders: a symlink among
    /// them is refused (`Io`, naming it), never followed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let store = Store { root: dir.to_path_buf() };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(at(parent))?;
        }
        crate::safe::ensure_own_dir(dir).map_err(at(dir))?;
        let v1 = dir.join("v1");
        crate::safe::ensure_own_dir(&v1).map_err(at(&v1))?;
        for sub in LAYOUT {
            let p = store.v1(sub);
            crate::safe::ensure_own_dir(&p).map_err(at(&p))?;
        }
        Ok(store)
    }

    /// `ENGINE_CACHE_DIR`, else the user's cache directory + `/engine` (`~/.cache/engine`).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("ENGINE_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        dirs::cache_dir().or_else(|| dirs::home_dir().map(|h| h.join(".cache"))).unwrap_or_else(|| PathBuf::from(".cache")).join("engine")
    }

    /// The cache directory the store was opened in.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn v1(&self, sub: &str) -> PathBuf {
        self.root.join("v1").join(sub)
    }

    /// Where the blob with `digest` lives (`v1/blobs/<aa>/<hex>`), whether or not it exists.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v1("blobs").join(&hex[..2]).join(hex)
    }

    /// Where the manifest of `key` lives (`v1/actions/<aa>/<hex>.json`), whether or not it exists.
    pub fn manifest_path(&self, key: &ActionKey) -> PathBuf {
        let hex = key.digest().hex();
        self.v1("actions").join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The manifest stored under `key`, if there is one and every blob it names exists. Contents
    /// are checked by `restore`.
    pub fn get(&self, key: &ActionKey) -> Option<Manifest> {
        let path = self.manifest_path(key);
        let bytes = match crate::safe::read_bounded(&path, MAX_META_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            // Not a regular file (a FIFO, a symlink), or too large: a miss, and removed.
            Err(_) => {
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(mut m) if m.key == *key => {
                let complete = maint::referenced(&m).all(|d| self.has_blob(&d));
                if complete && m.inputs.is_none() {
                    self.adopt_legacy_inputs(&mut m);
                }
                complete.then_some(m)
            }
            // Damaged (or filed under the wrong key): useless, and it would only fail again.
            _ => {
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Remove `manifest` (and `blob`, if given) and say why.
    fn corrupt(&self, manifest: &Manifest, blob: Option<&Digest>, what: String) -> StoreError {
        if let Some(d) = blob {
            let _ = fs::remove_file(self.blob_path(d));
        }
        let _ = fs::remove_file(self.manifest_path(&manifest.key));
        StoreError::Corrupt { key: manifest.key, what }
    }

    /// Recreate the outputs of `manifest` under `dest` (which exists and is empty). Every blob is
    /// re-hashed first; a mismatch removes the blob and the manifest and returns `Corrupt`, with
    /// nothing written under `dest` that the caller must keep (it re-runs the step). Marks the entry
    /// used (LRU).
    pub fn restore(&self, manifest: &Manifest, dest: &Path) -> Result<(), StoreError> {
        // Checked before anything is written, so a damaged entry leaves `dest` untouched.
        self.check(manifest)?;
        restore::materialise(&manifest.entries, dest, |d| self.blob_path(d))?;
        Ok(())
    }

    /// Whether the entry of `manifest` can be restored, writing nothing outside the store: its
    /// paths are safe and every blob it names (outputs and log) is there and re-hashes to its
    /// name. A damaged entry is removed (with the bad blob) and `Corrupt` says why. Marks the
    /// entry used (LRU). A hit whose outputs are already where they are needed is decided with
    /// this alone (no copy); [`Store::restore`] and [`Store::materialise`] write them out.
    pub fn check(&self, manifest: &Manifest) -> Result<(), StoreError> {
        if let Some(what) = restore::unsafe_entries(&manifest.entries) {
            return Err(self.corrupt(manifest, None, what));
        }
        if let Some(d) = self.first_bad_blob(maint::referenced(manifest)) {
            return Err(self.corrupt(manifest, Some(&d), format!("blob {} is missing or does not match", d.short())));
        }
        fsio::touch(&self.manifest_path(&manifest.key));
        Ok(())
    }

    /// A blob among `digests` that is missing or whose content no longer matches its name, if
    /// any (each distinct blob re-hashed once, in parallel).
    fn first_bad_blob(&self, digests: impl Iterator<Item = Digest>) -> Option<Digest> {
        let mut digests: Vec<Digest> = digests.collect();
        digests.sort_unstable();
        digests.dedup();
        digests.into_par_iter().find_any(|d| !fsio::hash_file(&self.blob_path(d)).is_ok_and(|h| h == *d))
    }

    /// Store everything under `collected` (the step's collected outputs) as blobs, keep `inputs`
    /// as the execution's input manifest (once per distinct list, see
    /// [`Store::put_input_manifest`]), and write the manifest for `key`, naming both. Only called
    /// for successful steps.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        key: ActionKey,
        workflow: &str,
        step: &str,
        collected: &Path,
        exit_code: i64,
        log: &[u8],
        duration_ms: u64,
        inputs: Option<&[crate::InputEntry]>,
    ) -> Result<Manifest, StoreError> {
        let tmp = self.v1("tmp");
        let inputs = inputs.map(|i| self.put_input_manifest(i)).transpose()?;
        let reflink = std::cell::Cell::new(true);
        let entries = walk_outputs(collected, |src| fsio::store_output_blob(&tmp, src, |d| self.blob_path(d), &reflink))?;
        let log_digest = Digest::of(log);
        fsio::store_bytes_blob(&tmp, log, &self.blob_path(&log_digest))?;
        let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let manifest = Manifest {
            key,
            workflow: workflow.to_string(),
            step: step.to_string(),
            entries,
            exit_code,
            log: log_digest,
            created,
            duration_ms,
            inputs,
        };
        let dest = self.manifest_path(&key);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Io { path: dest.clone(), source: e.into() })?;
        // Every blob was synced before its rename, so the manifest never names unwritten data.
        fsio::write_atomic(&tmp, &dest, &json)?;
        Ok(manifest)
    }

    fn last_path(&self, workflow: &str, step: &str) -> PathBuf {
        self.v1("last").join(sanitise(workflow)).join(format!("{}.json", sanitise(step)))
    }

    /// Remember the components of the latest run of `step` of `workflow`, for explanations.
    ///
    /// A no-op re-run records the same components again; a small `<step>.key` beside the record
    /// holds the key it was written for, so an unchanged record (megabytes for a step with many
    /// inputs) is not rewritten. The key file is written last: after a crash between the two
    /// writes it does not match, and the record is simply written again next time.
    /// `key` is `components`' key (the caller has it; computing it again costs a hash of every
    /// input entry).
    pub fn record_last(&self, workflow: &str, step: &str, key: &ActionKey, components: &KeyComponents) -> Result<(), StoreError> {
        let dest = self.last_path(workflow, step);
        let key_file = dest.with_extension("key");
        let key = key.to_string();
        if crate::safe::read_bounded(&key_file, 1024).is_ok_and(|k| k == key.as_bytes()) && self.has_file(&dest) {
            return Ok(());
        }
        let json = serde_json::to_vec(components).map_err(|e| StoreError::Io { path: dest.clone(), source: e.into() })?;
        fsio::write_atomic(&self.v1("tmp"), &dest, &json)?;
        fsio::write_atomic(&self.v1("tmp"), &key_file, key.as_bytes())
    }

    /// The key components remembered for the latest run of `step` of `workflow`
    /// (see [`Store::record_last`]); `None` if there are none or they do not parse.
    pub fn last(&self, workflow: &str, step: &str) -> Option<KeyComponents> {
        let bytes = crate::safe::read_bounded(&self.last_path(workflow, step), MAX_META_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every entry, most recently used first.
    pub fn list(&self) -> Vec<EntryInfo> {
        maint::list(self)
    }

    /// What the store holds, by kind (entries, output, input and unreferenced blobs, input
    /// manifests): the totals of `engine cache ls`.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        maint::usage(self)
    }

    /// Remove least-recently-used entries until entries + blobs take at most `max_size` bytes,
    /// then blobs no manifest references.
    pub fn gc(&self, max_size: u64) -> Result<GcReport, StoreError> {
        maint::gc(self, max_size)
    }

    /// Re-hash every blob; remove corrupt blobs and the manifests that reference them.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        maint::verify(self)
    }

    /// Keep the content of each input file (`root/<path>`) as a blob, for `engine replay`. A
    /// blob that exists is not written again (one `stat`). Returns the inputs whose content no
    /// longer matches the digest they were hashed with (edited meanwhile); those are stored under
    /// their new digest and the caller should not name the old one.
    pub fn store_inputs(&self, root: &Path, inputs: &[crate::InputEntry]) -> Result<Vec<String>, StoreError> {
        let tmp = self.v1("tmp");
        let changed: Result<Vec<Option<String>>, StoreError> = inputs
            .par_iter()
            .map(|input| {
                if self.has_blob(&input.digest) {
                    return Ok(None);
                }
                let src = root.join(&input.path);
                // A symlink input is kept as what it is hashed as: its target text. What it
                // points to is never read.
                if input.mode == crate::hash::SYMLINK_MODE {
                    let target = fs::read_link(&src).map_err(at(&src))?;
                    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
                    let digest = Digest::of(bytes);
                    fsio::store_bytes_blob(&tmp, bytes, &self.blob_path(&digest))?;
                    return Ok((digest != input.digest).then(|| input.path.clone()));
                }
                // Not synced one by one (100,000 fsyncs take minutes): these blobs serve replays
                // only, which re-hash them before use.
                // Opened without following any symlink below `root`: not even a folder on the way.
                let file = crate::safe::open_regular_beneath(root, &input.path).map_err(at(&src))?;
                let (digest, _) = fsio::store_open_blob(&tmp, file, &src, |d| self.blob_path(d), false)?;
                Ok((digest != input.digest).then(|| input.path.clone()))
            })
            .collect();
        Ok(changed?.into_iter().flatten().collect())
    }

    /// Whether the blob exists as a regular file (a symlink or FIFO in its place is no blob).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.has_file(&self.blob_path(digest))
    }

    fn has_file(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
    }

    /// Re-create `entries` (files by digest from the store, folders, symlinks) under `dest`, as a
    /// restore does: paths are checked, every blob is re-hashed first, and a blob that is missing
    /// or damaged is reported (`Err(Some(digest))`) with nothing written.
    pub fn materialise(&self, entries: &[OutputEntry], dest: &Path) -> Result<(), MaterialiseError> {
        if let Some(what) = restore::unsafe_entries(entries) {
            return Err(MaterialiseError::Unsafe(what));
        }
        let files = entries.iter().filter_map(|e| match e {
            OutputEntry::File { digest, .. } => Some(*digest),
            _ => None,
        });
        if let Some(d) = self.first_bad_blob(files) {
            return Err(MaterialiseError::MissingBlob(d));
        }
        restore::materialise(entries, dest, |d| self.blob_path(d)).map_err(MaterialiseError::Store)
    }

    /// The content of one blob, if the store has it.
    pub fn read_blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        crate::safe::read_bounded(&self.blob_path(digest), MAX_META_BYTES).ok()
    }

    /// The persistent folder of cache mount `name` (created on demand).
    pub fn mount_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.v1("mounts").join(sanitise(name));
        crate::safe::ensure_own_dir(&dir).map_err(at(&dir))?;
        Ok(dir)
    }
}

/// Why [`Store::materialise`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    /// A file's blob is missing from the store or no longer matches its digest.
    #[error("blob {0} is missing from the cache or damaged")]
    MissingBlob(Digest),
    /// The entries cannot be restored safely (a path that is not plain and relative, a path
    /// listed twice, a link leading out); says which.
    #[error("{0}")]
    Unsafe(String),
    /// Writing the entries failed.
    #[error(transparent)]
    Store(StoreError),
}

/// Every file, symlink and directory under `dir`, sorted by path; `file` hashes (and may store)
/// each regular file and returns its digest and size. Sockets, fifos and devices cannot be
/// restored as content, so they are not outputs.
fn walk_outputs(dir: &Path, file: impl Fn(&Path) -> Result<(Digest, u64), StoreError>) -> Result<Vec<OutputEntry>, StoreError> {
    let mut entries = Vec::new();
    for item in WalkDir::new(dir).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e.into() })?;
        let src = item.path();
        let path = relative(dir, src)?;
        let ft = item.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(at(src))?;
            let target = target.to_str().ok_or_else(|| not_utf8(src))?.to_string();
            entries.push(OutputEntry::Symlink { path, target });
        } else if ft.is_dir() {
            let meta = item.metadata().map_err(|e| StoreError::Io { path: src.to_path_buf(), source: e.into() })?;
            entries.push(OutputEntry::Dir { path, mode: meta.permissions().mode() & MODE_BITS });
        } else if ft.is_file() {
            let meta = item.metadata().map_err(|e| StoreError::Io { path: src.to_path_buf(), source: e.into() })?;
            let (digest, size) = file(src)?;
            entries.push(OutputEntry::File { path, mode: meta.permissions().mode() & MODE_BITS, digest, size });
        }
    }
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(entries)
}

/// The entries of the outputs collected in `dir`, hashed but not stored: what `put` would record,
/// for comparing a re-execution with a stored manifest (`engine replay`).
pub fn scan_outputs(dir: &Path) -> Result<Vec<OutputEntry>, StoreError> {
    walk_outputs(dir, |src| fsio::hash_file_sized(src).map_err(at(src)))
}

/// `path` relative to `root`, `/`-separated, as UTF-8 (manifests are JSON text).
fn relative(root: &Path, path: &Path) -> Result<String, StoreError> {
    // WalkDir only yields paths below its root; this is a guard, not an expected error.
    let rel = path.strip_prefix(root).map_err(|_| StoreError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not below the collected outputs"),
    })?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Ok(parts.ok_or_else(|| not_utf8(path))?.join("/"))
}

fn not_utf8(path: &Path) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "output path or link target is not UTF-8"),
    }
}
