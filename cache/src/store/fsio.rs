//! Low-level file operations of the store: atomic writes (a temp file in `v1/tmp`, synced, then
//! renamed into place), blobs written while their digest is computed, streaming SHA-256 and
//! name sanitising. Knows nothing of what a manifest means; never follows a symlink it did not
//! get as an explicit source path.

use std::fs::{self, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use filetime::FileTime;
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::StoreError;
use crate::safe::open_regular;
use crate::Digest;

/// Blobs are never written in place: read-only makes an accidental edit fail loudly.
const BLOB_MODE: u32 = 0o444;
const META_MODE: u32 = 0o644;
const CHUNK: usize = 64 * 1024;

/// An `Io` error naming `path`.
pub(super) fn at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// SHA-256 and length of everything `r` yields, streamed; each chunk also goes to `sink`.
fn hash_stream(mut r: impl Read, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), size))
}

/// SHA-256 of a file's content, streamed.
/// Only a regular file is read (never a symlink, FIFO or device: a blob or output that is one
/// is an error, never a hang).
pub(super) fn hash_file_sized(path: &Path) -> io::Result<(Digest, u64)> {
    hash_stream(open_regular(path, false)?, |_| Ok(()))
}

pub(super) fn hash_file(path: &Path) -> io::Result<Digest> {
    Ok(hash_file_sized(path)?.0)
}

/// Mark `path` as recently used. Best effort: a vanished file is simply not marked.
pub(super) fn touch(path: &Path) {
    // Never through a symlink: a planted link must not make the engine touch what it names.
    let now = FileTime::now();
    let _ = filetime::set_symlink_file_times(path, now, now);
}

pub(super) fn new_temp(tmp_dir: &Path) -> Result<NamedTempFile, StoreError> {
    NamedTempFile::new_in(tmp_dir).map_err(at(tmp_dir))
}

/// Sync `tmp`, give it `mode` and rename it to `dest` (creating the fan-out folder). A rename is
/// atomic, so a reader sees the old file, no file, or the whole new one.
fn persist(tmp: NamedTempFile, dest: &Path, mode: u32) -> Result<(), StoreError> {
    persist_with(tmp, dest, mode, true)
}

fn persist_with(tmp: NamedTempFile, dest: &Path, mode: u32, sync: bool) -> Result<(), StoreError> {
    let path = tmp.path().to_path_buf();
    tmp.as_file().set_permissions(Permissions::from_mode(mode)).map_err(at(&path))?;
    if sync {
        tmp.as_file().sync_all().map_err(at(&path))?;
    }
    if let Some(parent) = dest.parent() {
        // create_dir_all tolerates a concurrent creator of the same folder.
        fs::create_dir_all(parent).map_err(at(parent))?;
        // A fan-out folder replaced by a symlink would move the write out of the cache.
        if fs::symlink_metadata(parent).map_err(at(parent))?.file_type().is_symlink() {
            return Err(StoreError::Io { path: parent.to_path_buf(), source: crate::safe::symlinked_dir(parent) });
        }
    }
    tmp.persist(dest).map_err(|e| StoreError::Io { path: dest.to_path_buf(), source: e.error })?;
    Ok(())
}

/// Write `bytes` to `dest` atomically (manifests, last-run records).
pub(super) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_with(tmp_dir, dest, bytes, true)
}

/// [`write_atomic`], synced to disk first only when `sync`.
pub(super) fn write_atomic_with(tmp_dir: &Path, dest: &Path, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
    let mut tmp = new_temp(tmp_dir)?;
    tmp.write_all(bytes).map_err(at(dest))?;
    persist_with(tmp, dest, META_MODE, sync)
}

/// An existing blob is never rewritten (its name is its content). Its mtime is refreshed so that
/// `gc` sees it as young while the manifest that will reference it is being written. Something
/// else in its place (a symlink, a FIFO) is no blob: the rename of the new one replaces it.
pub(super) fn reuse_existing(dest: &Path) -> bool {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_file()) {
        touch(dest);
        true
    } else {
        false
    }
}

/// Store the content of the regular file `src` as a blob; `blob_path` names a blob by digest.
/// The content is hashed while it is copied, so the blob always matches its name even if `src`
/// changes meanwhile.
pub(super) fn store_file_blob(
    tmp_dir: &Path,
    src: &Path,
    blob_path: impl Fn(&Digest) -> std::path::PathBuf,
) -> Result<(Digest, u64), StoreError> {
    store_file_blob_with(tmp_dir, src, blob_path, true)
}

/// [`store_file_blob`], optionally without syncing the blob to disk first. Only for blobs no
/// manifest depends on for a restore (the inputs kept for replay): after a power loss such a blob
/// may be empty, which every reader notices, since blobs are re-hashed before use.
pub(super) fn store_file_blob_with(
    tmp_dir: &Path,
    src: &Path,
    blob_path: impl Fn(&Digest) -> std::path::PathBuf,
    sync: bool,
) -> Result<(Digest, u64), StoreError> {
    let file = open_regular(src, false).map_err(at(src))?;
    store_open_blob(tmp_dir, file, src, blob_path, sync)
}

/// [`store_file_blob_with`] for a file already opened (and checked to be a regular file);
/// `src` names it in errors.
pub(super) fn store_open_blob(
    tmp_dir: &Path,
    file: std::fs::File,
    src: &Path,
    blob_path: impl Fn(&Digest) -> std::path::PathBuf,
    sync: bool,
) -> Result<(Digest, u64), StoreError> {
    let mut tmp = new_temp(tmp_dir)?;
    let (digest, size) = {
        let out = tmp.as_file_mut();
        hash_stream(file, |chunk| out.write_all(chunk)).map_err(at(src))?
    };
    let dest = blob_path(&digest);
    if !reuse_existing(&dest) {
        persist_with(tmp, &dest, BLOB_MODE, sync)?;
    }
    Ok((digest, size))
}

/// [`store_file_blob`] for outputs being stored: where the filesystem shares extents (btrfs,
/// XFS, bcachefs) the blob is a reflink of `src`, which costs no disk space, and is hashed from
/// the blob's own bytes so it still matches its name. `*try_reflink` is cleared after a refusal,
/// so that a filesystem without reflinks costs one attempt per store, not one per file; then the
/// content is copied while it is hashed, as by [`store_file_blob`].
pub(super) fn store_output_blob(
    tmp_dir: &Path,
    src: &Path,
    blob_path: impl Fn(&Digest) -> std::path::PathBuf,
    try_reflink: &std::cell::Cell<bool>,
) -> Result<(Digest, u64), StoreError> {
    if try_reflink.get() {
        let tmp = new_temp(tmp_dir)?;
        let file = open_regular(src, false).map_err(at(src))?;
        if reflink_copy::reflink_file(&file, tmp.as_file()).is_ok() {
            let (digest, size) = hash_file_sized(tmp.path()).map_err(at(tmp.path()))?;
            let dest = blob_path(&digest);
            if !reuse_existing(&dest) {
                persist(tmp, &dest, BLOB_MODE)?;
            }
            return Ok((digest, size));
        }
        try_reflink.set(false);
    }
    store_file_blob(tmp_dir, src, blob_path)
}

/// Move a checked temp file into place as the blob `dest` (kept as it is when present).
pub(super) fn persist_blob(tmp: NamedTempFile, dest: &Path, sync: bool) -> Result<(), StoreError> {
    if reuse_existing(dest) {
        return Ok(());
    }
    persist_with(tmp, dest, BLOB_MODE, sync)
}

/// Store `bytes` as a blob.
pub(super) fn store_bytes_blob(tmp_dir: &Path, bytes: &[u8], dest: &Path) -> Result<(), StoreError> {
    store_bytes_blob_with(tmp_dir, bytes, dest, true)
}

/// [`store_bytes_blob`], synced to disk first only when `sync`.
pub(super) fn store_bytes_blob_with(tmp_dir: &Path, bytes: &[u8], dest: &Path, sync: bool) -> Result<(), StoreError> {
    if reuse_existing(dest) {
        return Ok(());
    }
    let mut tmp = new_temp(tmp_dir)?;
    tmp.write_all(bytes).map_err(at(dest))?;
    persist_with(tmp, dest, BLOB_MODE, sync)
}

/// A workflow, step or mount name as one safe file name: anything outside `[A-Za-z0-9._-]`
/// becomes `_`, and names made only of dots (`.`, `..`) or empty are replaced, since they would
/// otherwise name a folder other than their own.
pub fn sanitise(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if s.chars().all(|c| c == '.') {
        format!("_{}", s.replace('.', "_"))
    } else {
        s
    }
}
