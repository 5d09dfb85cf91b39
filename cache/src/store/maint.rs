//! Scanning the whole store, for `list`, `gc` and `verify`. Owns the rules for what may be deleted
//! while other engines use the same directory: fan-out folders are never removed (a concurrent
//! `put` may be renaming into one), and an unreferenced blob or input manifest younger than
//! [`BLOB_GRACE`] is kept (the entry naming it may not be written yet).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;

use super::fsio::{at, hash_file};
use super::{EntryInfo, GcReport, Manifest, OutputEntry, Store, StoreError, VerifyReport};
use crate::key::ActionKey;
use crate::Digest;

/// How long an unreferenced blob is presumed to belong to a `put` in progress.
pub(super) const BLOB_GRACE: Duration = Duration::from_secs(60);
/// Temp files older than this were left by a killed engine.
const TMP_GRACE: Duration = Duration::from_secs(3600);

/// One manifest file as found on disk.
pub(super) struct Found {
    pub path: PathBuf,
    /// From the file name; None if the name is not a digest.
    pub key: Option<ActionKey>,
    /// None if it did not parse (or vanished meanwhile).
    pub manifest: Option<Manifest>,
    pub mtime: SystemTime,
    pub bytes: u64,
}

/// One blob file as found on disk.
struct Blob {
    digest: Digest,
    path: PathBuf,
    bytes: u64,
    mtime: SystemTime,
}

/// The files two levels below `dir` (`<aa>/<name>`). A missing `dir` is an error; files that
/// vanish during the scan (another engine's gc) are skipped.
fn fan_out_files(dir: &Path) -> Result<Vec<(PathBuf, fs::Metadata)>, StoreError> {
    let mut out = Vec::new();
    for sub in fs::read_dir(dir).map_err(at(dir))?.flatten() {
        // A fan-out folder replaced by a symlink is not walked (nor anything deleted through it).
        if !sub.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = fs::read_dir(sub.path()) else { continue };
        for f in files.flatten() {
            if let Ok(meta) = f.metadata() {
                if meta.is_file() {
                    out.push((f.path(), meta));
                }
            }
        }
    }
    Ok(out)
}

fn name_digest(path: &Path, suffix: &str) -> Option<Digest> {
    path.file_name()?.to_str()?.strip_suffix(suffix)?.parse().ok()
}

/// Every manifest file, parsed where possible.
pub(super) fn manifests(store: &Store) -> Result<Vec<Found>, StoreError> {
    let files = fan_out_files(&store.v1("actions"))?;
    Ok(files
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "json"))
        .map(|(path, meta)| {
            let manifest =
                crate::safe::read_bounded(&path, super::MAX_META_BYTES).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
            Found {
                key: name_digest(&path, ".json").map(ActionKey::from_digest),
                manifest,
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                bytes: meta.len(),
                path,
            }
        })
        .collect())
}

/// Every input manifest file (`<aa>/<digest>.json`), named by its digest.
fn input_files(store: &Store) -> Result<Vec<Blob>, StoreError> {
    let files = fan_out_files(&store.v1("inputs"))?;
    Ok(files
        .into_iter()
        .filter_map(|(path, meta)| {
            Some(Blob {
                digest: name_digest(&path, ".json")?,
                bytes: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            })
        })
        .collect())
}

fn blobs(store: &Store) -> Result<Vec<Blob>, StoreError> {
    let files = fan_out_files(&store.v1("blobs"))?;
    Ok(files
        .into_iter()
        .filter_map(|(path, meta)| {
            Some(Blob {
                digest: name_digest(&path, "")?,
                bytes: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            })
        })
        .collect())
}

/// The input manifest file an entry keeps alive: the one it names, or for an entry of the
/// previous layout, the one filed under its key.
fn inputs_file(m: &Manifest) -> Digest {
    m.inputs.unwrap_or(m.key.digest())
}

/// The input manifests read during one gc, by the name of their file (many entries share one).
#[derive(Default)]
struct InputFiles(HashMap<Digest, Vec<Digest>>);

impl InputFiles {
    /// The blobs of the input files an entry's input manifest lists (none if it has none).
    fn blobs(&mut self, store: &Store, m: &Manifest) -> &[Digest] {
        let name = inputs_file(m);
        self.0.entry(name).or_insert_with(|| {
            let listed = match m.inputs {
                Some(d) => store.input_manifest(&d),
                None => crate::safe::read_bounded(&store.input_manifest_path(&name), super::MAX_META_BYTES)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok()),
            };
            listed.unwrap_or_default().into_iter().map(|i: crate::InputEntry| i.digest).collect()
        })
    }
}

/// Every blob gc must keep for an entry: what it restores, and the inputs `engine replay` needs
/// (from the entry's input manifest, if there is one).
fn kept(store: &Store, inputs: &mut InputFiles, f: &Found) -> HashSet<Digest> {
    let Some(m) = &f.manifest else { return HashSet::new() };
    referenced(m).chain(inputs.blobs(store, m).iter().copied()).collect()
}

/// Every blob a manifest references: its files and its log.
pub(super) fn referenced(m: &Manifest) -> impl Iterator<Item = Digest> + '_ {
    m.entries
        .iter()
        .filter_map(|e| match e {
            OutputEntry::File { digest, .. } => Some(*digest),
            _ => None,
        })
        .chain(std::iter::once(m.log))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn list(store: &Store) -> Vec<EntryInfo> {
    let mut found: Vec<(SystemTime, EntryInfo)> = manifests(store)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| {
            let m = f.manifest?;
            let info = EntryInfo {
                key: m.key,
                size: m.size(),
                workflow: m.workflow,
                step: m.step,
                created: m.created,
                last_used: unix_secs(f.mtime),
            };
            Some((f.mtime, info))
        })
        .collect();
    // Full mtime precision first; the key breaks ties so the order is stable.
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.digest().cmp(&b.1.key.digest())));
    found.into_iter().map(|(_, i)| i).collect()
}

/// What the store holds, by kind: the totals of `engine cache ls`. Each blob is counted once,
/// under the first kind that names it: output (a file or log an entry restores), input (kept
/// for `engine replay` and `engine provenance` through an entry's input manifest), or
/// unreferenced (no entry names it: left by a step that failed after its inputs were stored, or
/// by entries gc removed; `engine cache gc` deletes it once it is a minute old).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Entries (action manifests) and the bytes of their manifest files.
    pub entries: usize,
    /// Bytes of the manifest files.
    pub entry_bytes: u64,
    /// Blobs of entries' outputs and logs.
    pub output_blobs: usize,
    /// Their bytes.
    pub output_bytes: u64,
    /// Blobs of input files only (not also an output), named by entries' input manifests.
    pub input_blobs: usize,
    /// Their bytes.
    pub input_bytes: u64,
    /// Input manifest files (`v1/inputs`).
    pub input_manifests: usize,
    /// Their bytes.
    pub input_manifest_bytes: u64,
    /// Blobs no entry names.
    pub unreferenced_blobs: usize,
    /// Their bytes.
    pub unreferenced_bytes: u64,
}

impl Usage {
    /// Every byte counted.
    pub fn total_bytes(&self) -> u64 {
        self.entry_bytes + self.output_bytes + self.input_bytes + self.input_manifest_bytes + self.unreferenced_bytes
    }
}

pub(super) fn usage(store: &Store) -> Result<Usage, StoreError> {
    let mut u = Usage::default();
    let found = manifests(store)?;
    let mut outputs: HashSet<Digest> = HashSet::new();
    let mut inputs: HashSet<Digest> = HashSet::new();
    let mut manifest_files = InputFiles::default();
    for f in &found {
        u.entries += 1;
        u.entry_bytes += f.bytes;
        if let Some(m) = &f.manifest {
            outputs.extend(referenced(m));
            inputs.extend(manifest_files.blobs(store, m).iter().copied());
        }
    }
    for b in blobs(store)? {
        let (count, bytes) = if outputs.contains(&b.digest) {
            (&mut u.output_blobs, &mut u.output_bytes)
        } else if inputs.contains(&b.digest) {
            (&mut u.input_blobs, &mut u.input_bytes)
        } else {
            (&mut u.unreferenced_blobs, &mut u.unreferenced_bytes)
        };
        *count += 1;
        *bytes += b.bytes;
    }
    for f in input_files(store)? {
        u.input_manifests += 1;
        u.input_manifest_bytes += f.bytes;
    }
    Ok(u)
}

fn remove(path: &Path) -> bool {
    fs::remove_file(path).is_ok()
}

pub(super) fn gc(store: &Store, max_size: u64) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let mut found = manifests(store)?;
    // Damaged manifests are no entries at all.
    found.retain(|f| {
        if f.manifest.is_some() {
            return true;
        }
        if remove(&f.path) {
            report.removed_entries += 1;
            report.freed_bytes += f.bytes;
        }
        false
    });
    let blobs = blobs(store)?;
    let sizes: HashMap<Digest, u64> = blobs.iter().map(|b| (b.digest, b.bytes)).collect();
    let input_files = input_files(store)?;
    let input_sizes: HashMap<Digest, u64> = input_files.iter().map(|b| (b.digest, b.bytes)).collect();
    let mut inputs = InputFiles::default();
    let mut refs: HashMap<Digest, usize> = HashMap::new();
    // Input manifest files, by name, and how many entries keep each.
    let mut input_refs: HashMap<Digest, usize> = HashMap::new();
    for f in &found {
        let unique = kept(store, &mut inputs, f);
        for d in unique {
            *refs.entry(d).or_default() += 1;
        }
        if let Some(m) = &f.manifest {
            *input_refs.entry(inputs_file(m)).or_default() += 1;
        }
    }
    let referenced_at_start: HashSet<Digest> = refs.keys().copied().collect();
    let inputs_at_start: HashSet<Digest> = input_refs.keys().copied().collect();
    let mut total: u64 = found.iter().map(|f| f.bytes).sum::<u64>()
        + refs.keys().filter_map(|d| sizes.get(d)).sum::<u64>()
        + input_refs.keys().filter_map(|d| input_sizes.get(d)).sum::<u64>();

    // Least recently used first.
    found.sort_by_key(|f| f.mtime);
    for f in &found {
        if total <= max_size {
            break;
        }
        if !remove(&f.path) {
            continue;
        }
        report.removed_entries += 1;
        report.freed_bytes += f.bytes;
        total -= f.bytes;
        let unique = kept(store, &mut inputs, f);
        if let Some(m) = &f.manifest {
            let name = inputs_file(m);
            if let Some(n) = input_refs.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    input_refs.remove(&name);
                    total -= input_sizes.get(&name).copied().unwrap_or(0);
                }
            }
        }
        for d in unique {
            if let Some(n) = refs.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    refs.remove(&d);
                    total -= sizes.get(&d).copied().unwrap_or(0);
                }
            }
        }
    }

    let now = SystemTime::now();
    for b in &blobs {
        if refs.contains_key(&b.digest) {
            continue;
        }
        // Never referenced and young: a concurrent put may be about to write its manifest.
        let young = now.duration_since(b.mtime).map(|age| age < BLOB_GRACE).unwrap_or(true);
        if young && !referenced_at_start.contains(&b.digest) {
            continue;
        }
        // Touched since the scan: a concurrent put reused it for a manifest of its own.
        if fs::metadata(&b.path).and_then(|m| m.modified()).is_ok_and(|t| t > b.mtime) {
            continue;
        }
        if remove(&b.path) {
            report.removed_blobs += 1;
            report.freed_bytes += b.bytes;
        }
    }
    for b in &input_files {
        if input_refs.contains_key(&b.digest) {
            continue;
        }
        // Never named by an entry and young: a concurrent put may be about to write its entry.
        let young = now.duration_since(b.mtime).map(|age| age < BLOB_GRACE).unwrap_or(true);
        if young && !inputs_at_start.contains(&b.digest) {
            continue;
        }
        if fs::metadata(&b.path).and_then(|m| m.modified()).is_ok_and(|t| t > b.mtime) {
            continue;
        }
        if remove(&b.path) {
            report.removed_input_manifests += 1;
            report.freed_bytes += b.bytes;
        }
    }
    clean_tmp(store, now);
    report.remaining_bytes = total;
    Ok(report)
}

/// Temp files a killed engine left behind.
fn clean_tmp(store: &Store, now: SystemTime) {
    let Ok(dir) = fs::read_dir(store.v1("tmp")) else { return };
    for f in dir.flatten() {
        let old = f.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > TMP_GRACE);
        if old {
            let _ = fs::remove_file(f.path());
        }
    }
}

pub(super) fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let blobs = blobs(store)?;
    report.blobs_checked = blobs.len();
    let corrupt: Vec<&Blob> = blobs
        .par_iter()
        // A blob that vanished meanwhile (another gc) is not corrupt; manifests needing it are
        // caught below.
        .filter(|b| hash_file(&b.path).is_ok_and(|d| d != b.digest))
        .collect();
    for b in corrupt {
        remove(&b.path);
        report.corrupt_blobs.push(b.digest);
    }
    report.corrupt_blobs.sort();
    for f in manifests(store)? {
        let broken = match &f.manifest {
            None => true,
            Some(m) => referenced(m).any(|d| !store.has_blob(&d)),
        };
        if broken && remove(&f.path) {
            if let Some(key) = f.manifest.as_ref().map(|m| m.key).or(f.key) {
                report.dropped_entries.push(key);
            }
        }
    }
    Ok(report)
}
