//! Hashing of input files: contents hashed in parallel (rayon), with a stat cache (relative path,
//! size, mtime, ctime, inode -> digest, like git's index) so an unchanged tree is re-keyed without
//! reading file contents, and `touch` alone never changes a digest.
//!
//! The stat cache is an optimisation only: a wrong or missing entry costs a re-hash, never a wrong
//! digest. Entries whose mtime is too close to the moment they were recorded are not trusted
//! (a write in the same timestamp tick would be invisible: git's "racy clean" problem).
//!
//! This module must not put anything it learns from the file system other than relative paths,
//! modes and content digests into an [`InputEntry`]: mtimes, inodes and the absolute root live in
//! the stat cache only, which is never part of a key.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::key::InputEntry;
use crate::Digest;

/// Read buffer of [`hash_file`]: large enough that syscalls do not dominate, small enough that
/// many files hashed in parallel stay cheap.
const BUF_SIZE: usize = 64 * 1024;

/// The mode an [`InputEntry`] gives every symlink, whatever `lstat` says.
pub const SYMLINK_MODE: u32 = 0o120777;

/// An entry whose mtime is this close to (or after) the moment it is recorded is not recorded:
/// the file may still be written within the same timestamp tick without its stat changing.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Version of the stat cache file; another version is ignored (the tree is simply re-hashed).
/// 2: postcard (binary) instead of JSON: a 100,000-file tree's stat cache loads several times
/// faster, and loading it is on the path of every no-op re-run.
const STAT_FILE_VERSION: u32 = 2;

/// SHA-256 of a file's content (streamed, not read whole into memory). A symlink is followed,
/// but only a regular file is read: a FIFO, socket or device is an error, never a hang.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    hash_open(crate::safe::open_regular(path, true)?)
}

/// [`hash_file`] for the input `root/<rel>`, following no symlink below `root` (a symlink input
/// is hashed as its target text, so one swapped in after `lstat`, as the file or as a folder on
/// the way, must not be read through).
pub fn hash_input_file(root: &Path, rel: &str) -> io::Result<Digest> {
    hash_open(crate::safe::open_regular_beneath(root, rel)?)
}

fn hash_open(mut file: File) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Digest::from_bytes(hasher.finalize().into()))
}

/// What the stat cache remembers of one file: the stat fields that change whenever its content
/// can have changed, and the digest they vouch for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    /// As in the [`InputEntry`]: permission bits, or [`SYMLINK_MODE`].
    mode: u32,
    /// Raw bytes here (hex is for people; this file is for the machine).
    #[serde(with = "raw_digest")]
    digest: Digest,
}

mod raw_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Digest;

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(d.as_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        <[u8; 32]>::deserialize(d).map(Digest::from_bytes)
    }
}

impl StatEntry {
    fn same_stat(&self, other: &StatEntry) -> bool {
        (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.mode)
            == (other.size, other.mtime_ns, other.ctime_ns, other.inode, other.mode)
    }
}

/// The stat cache file as written (borrowing, so saving does not clone the cache).
#[derive(Serialize)]
struct StatFileRef<'a> {
    version: u32,
    entries: BTreeMap<&'a String, &'a StatEntry>,
}

/// The stat cache file as read.
#[derive(Deserialize)]
struct StatFile {
    version: u32,
    entries: BTreeMap<String, StatEntry>,
}

/// The stat cache of one source tree, persisted as a file in the cache directory.
pub struct StatCache {
    /// `<cache_dir>/v1/stat/<sha256 of the absolute root>.bin`.
    file: PathBuf,
    /// `<cache_dir>/v1/tmp`, for the atomic save (same file system as `file`).
    tmp_dir: PathBuf,
    /// The tree the relative paths are relative to, to prune vanished files on save.
    root: PathBuf,
    /// By relative path. Entries not asked for by the last call are kept: steps share a tree.
    entries: BTreeMap<String, StatEntry>,
    /// Whether `entries` changed since loading, so a no-op re-key does not rewrite the file.
    dirty: bool,
    /// Paths the last `hash_inputs` call just stat'ed: they exist, so `save` need not stat them
    /// again (a no-op re-key of a large tree would otherwise stat every file twice).
    /// Sorted: `save` walks it alongside the (sorted) entries.
    seen: Vec<String>,
    files_read: usize,
}

impl StatCache {
    /// Load the stat cache for the tree at `root` from `cache_dir` (missing or unreadable: empty).
    /// The file is chosen by a digest of `root`'s absolute path; that path never enters a key.
    pub fn load(cache_dir: &Path, root: &Path) -> StatCache {
        // Canonical when possible, so the same tree reached through a symlink shares its cache.
        let root = fs::canonicalize(root).or_else(|_| std::path::absolute(root)).unwrap_or_else(|_| root.to_path_buf());
        let name = format!("{}.bin", Digest::of(root.as_os_str().as_bytes()).hex());
        let file = cache_dir.join("v1").join("stat").join(name);
        let entries = crate::safe::read_bounded(&file, crate::safe::MAX_META_BYTES)
            .ok()
            .and_then(|bytes| postcard::from_bytes::<StatFile>(&bytes).ok())
            .filter(|f| f.version == STAT_FILE_VERSION)
            .map(|f| f.entries)
            .unwrap_or_default();
        StatCache { file, tmp_dir: cache_dir.join("v1").join("tmp"), root, entries, dirty: false, seen: Default::default(), files_read: 0 }
    }

    /// Write it back atomically (temp file + rename); concurrent engines may race, last wins.
    /// Entries of files that no longer exist are left out. Nothing is written when nothing changed.
    pub fn save(&self) -> io::Result<()> {
        // Both sorted: one merge pass finds which entries were just seen.
        let mut seen = self.seen.iter().peekable();
        let entries: BTreeMap<&String, &StatEntry> = self
            .entries
            .iter()
            .filter(|(path, _)| {
                while seen.next_if(|s| s < path).is_some() {}
                seen.peek() == Some(path) || fs::symlink_metadata(self.root.join(path)).is_ok()
            })
            .collect();
        if !self.dirty && entries.len() == self.entries.len() && self.file.exists() {
            return Ok(());
        }
        let at = |what: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", what.display()));
        let stat_dir = self.file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(stat_dir).map_err(|e| at(stat_dir, e))?;
        fs::create_dir_all(&self.tmp_dir).map_err(|e| at(&self.tmp_dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.tmp_dir).map_err(|e| at(&self.tmp_dir, e))?;
        let mut out = io::BufWriter::new(tmp.as_file_mut());
        postcard::to_io(&StatFileRef { version: STAT_FILE_VERSION, entries }, &mut out)
            .map(|_| ())
            .map_err(io::Error::other)
            .and_then(|()| out.flush())
            .map_err(|e| at(&self.file, e))?;
        drop(out);
        tmp.persist(&self.file).map_err(|e| at(&self.file, e.error))?;
        Ok(())
    }
}

/// Digest every file of `paths` (relative to `root`, `/`-separated), in parallel for the ones the
/// stat cache cannot vouch for, updating the stat cache. Result sorted by path. Symlinks are not
/// followed: their digest is the digest of the link target text, their mode 0o120777.
///
/// A missing or unreadable input, a directory, or a path that is absolute or climbs out of
/// `root` is an error naming the path.
pub fn hash_inputs(root: &Path, paths: &[String], stat: &mut StatCache) -> io::Result<Vec<InputEntry>> {
    let mut paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    paths.sort_unstable();
    paths.dedup();

    let stats = stat_all(root, &paths);
    stat.seen = paths.iter().map(|p| p.to_string()).collect();
    let mut entries: Vec<Option<InputEntry>> = Vec::with_capacity(paths.len());
    // (index into `entries`, relative path, stat as seen before reading)
    let mut misses: Vec<(usize, &str, StatEntry)> = Vec::new();
    // Paths and stat entries are both sorted: a merge pass, not a tree lookup per file.
    let mut known = stat.entries.iter().peekable();
    for (i, (rel, seen)) in paths.iter().zip(stats).enumerate() {
        let seen = seen?;
        while known.next_if(|(p, _)| p.as_str() < *rel).is_some() {}
        let cached = known.peek().filter(|(p, _)| p.as_str() == *rel).map(|(_, e)| **e);
        match cached {
            Some(cached) if cached.same_stat(&seen) => {
                entries.push(Some(InputEntry { path: rel.to_string(), mode: seen.mode, digest: cached.digest }));
            }
            _ => {
                entries.push(None);
                misses.push((i, rel, seen));
            }
        }
    }

    let hashed: Vec<io::Result<(usize, StatEntry)>> = misses
        .par_iter()
        .map(|&(i, rel, seen)| {
            let full = root.join(rel);
            let digest = if seen.mode == SYMLINK_MODE {
                fs::read_link(&full).map(|target| Digest::of(target.as_os_str().as_bytes()))
            } else {
                hash_input_file(root, rel)
            };
            digest.map(|digest| (i, StatEntry { digest, ..seen })).map_err(|e| named(rel, e))
        })
        .collect();
    stat.files_read = misses.len();

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let racy_after = i128::try_from(now.saturating_sub(RACY_WINDOW).as_nanos()).unwrap_or(i128::MAX);
    for result in hashed {
        let (i, entry) = result?;
        let rel = paths[i];
        entries[i] = Some(InputEntry { path: rel.to_string(), mode: entry.mode, digest: entry.digest });
        // Racy clean: a file modified in the last moments may change again within the same
        // timestamp tick, unseen by its stat; it is re-hashed next time instead of trusted.
        if i128::from(entry.mtime_ns) >= racy_after {
            if stat.entries.remove(rel).is_some() {
                stat.dirty = true;
            }
        } else if stat.entries.insert(rel.to_string(), entry) != Some(entry) {
            stat.dirty = true;
        }
    }
    Ok(entries.into_iter().flatten().collect())
}

/// How many files the last `hash_inputs` call read (0 for a fully stat-cached tree). For tests
/// and benchmarks.
pub fn files_read(stat: &StatCache) -> usize {
    stat.files_read
}

/// `root` joined with a relative, `/`-separated input path that stays inside it.
fn input_path(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let relative = Path::new(rel);
    let inside = !rel.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("input `{rel}`: not a relative path inside the workflow directory"),
        ));
    }
    Ok(root.join(relative))
}

/// The `lstat` of every path (sorted), which is the whole cost of a no-op re-key. Paths are grouped
/// by folder; each folder is opened once and its files are stat'ed relative to it (`fstatat`), so
/// the kernel does not walk the full path again for every file, and folders are spread over the
/// cores. Results are in the order of `paths`.
fn stat_all(root: &Path, paths: &[&str]) -> Vec<io::Result<StatEntry>> {
    let mut groups: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    for (i, rel) in paths.iter().enumerate() {
        let parent = rel.rfind('/').map_or("", |slash| &rel[..slash]);
        match groups.last_mut() {
            Some((p, range)) if *p == parent => range.end = i + 1,
            _ => groups.push((parent, i..i + 1)),
        }
    }
    groups
        .par_iter()
        .flat_map_iter(|(parent, range)| {
            use rustix::fs::{AtFlags, Mode, OFlags};
            let dir = rustix::fs::open(root.join(parent), OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty());
            range.clone().map(move |i| {
                let rel = paths[i];
                let full = input_path(root, rel)?;
                let name = if parent.is_empty() { rel } else { &rel[parent.len() + 1..] };
                match &dir {
                    Ok(fd) => match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => stat_of_raw(&st, rel),
                        Err(e) => Err(named(rel, e.into())),
                    },
                    // The folder cannot be opened: the per-file call gives the precise error.
                    Err(_) => fs::symlink_metadata(&full).map_err(|e| named(rel, e)).and_then(|m| stat_of(&m, rel)),
                }
            })
        })
        .collect()
}

/// [`stat_of`] for a raw `stat` result; the same fields, so both vouch for the same entries.
// The casts are no-ops on x86_64 Linux but not on every target (field widths vary).
#[allow(clippy::unnecessary_cast)]
fn stat_of_raw(st: &rustix::fs::Stat, rel: &str) -> io::Result<StatEntry> {
    use rustix::fs::FileType;
    let raw_mode = st.st_mode as u32;
    let mode = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::Symlink => SYMLINK_MODE,
        FileType::RegularFile => raw_mode & 0o7777,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("input `{rel}`: not a regular file or symlink"))),
    };
    let ns = |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
    Ok(StatEntry {
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        inode: st.st_ino as u64,
        mode,
        digest: Digest::from_bytes([0; 32]),
    })
}

/// The stat fields of a regular file or symlink (digest not known yet: zero).
fn stat_of(meta: &Metadata, rel: &str) -> io::Result<StatEntry> {
    let kind = meta.file_type();
    let mode = if kind.is_symlink() {
        SYMLINK_MODE
    } else if kind.is_file() {
        meta.mode() & 0o7777
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("input `{rel}`: not a regular file or symlink")));
    };
    let ns = |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
    Ok(StatEntry {
        size: meta.size(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        mode,
        digest: Digest::from_bytes([0; 32]),
    })
}

/// The same error, with the input path it concerns in front.
fn named(rel: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("input `{rel}`: {e}"))
}

#[cfg(test)]
mod tests;
