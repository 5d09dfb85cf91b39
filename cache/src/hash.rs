//! Hashing of input files: contents hashed in parallel (rayon), with a stat cache (relative path,
//! size, mtime, ctime, inode -> digest, like git's index) so an unchanged tree is re-keyed without
//! reading file contents, and `touch` alone never changes a digest.
//!
//! The stat cache is an optimisation only: a wrong or missing entry costs a re-hash, never a wrong
//! digest. Entries whose mtime is too close to the moment they were recorded are not trusted
//! (a write in the same timestamp tick would be invisible: git's "racy clean" problem).

use std::io;
use std::path::{Path, PathBuf};

use crate::key::InputEntry;
use crate::Digest;

/// SHA-256 of a file's content (streamed, not read whole into memory).
pub fn hash_file(_path: &Path) -> io::Result<Digest> {
    todo!()
}

/// The stat cache of one source tree, persisted as a file in the cache directory.
pub struct StatCache {
    _file: PathBuf,
}

impl StatCache {
    /// Load the stat cache for the tree at `root` from `cache_dir` (missing or unreadable: empty).
    /// The file is chosen by a digest of `root`'s absolute path; that path never enters a key.
    pub fn load(_cache_dir: &Path, _root: &Path) -> StatCache {
        todo!()
    }

    /// Write it back atomically (temp file + rename); concurrent engines may race, last wins.
    pub fn save(&self) -> io::Result<()> {
        todo!()
    }
}

/// Digest every file of `paths` (relative to `root`, `/`-separated), in parallel for the ones the
/// stat cache cannot vouch for, updating the stat cache. Result sorted by path. Symlinks are not
/// followed: their digest is the digest of the link target text, their mode 0o120777.
pub fn hash_inputs(_root: &Path, _paths: &[String], _stat: &mut StatCache) -> io::Result<Vec<InputEntry>> {
    todo!()
}

/// How many files the last `hash_inputs` call read (0 for a fully stat-cached tree). For tests
/// and benchmarks.
pub fn files_read(_stat: &StatCache) -> usize {
    todo!()
}
