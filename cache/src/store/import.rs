//! Entries arriving from elsewhere (the remote cache): a blob is streamed into a temp file of the
//! store (same filesystem), checked against its digest and only then renamed into place; a
//! manifest is written only when it is one `Store::get` would accept, every blob it names
//! already present. The caller (the `remote` crate) checks as it downloads; these checks are the
//! store's own, so nothing unverified ever gets a blob's name.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use tempfile::NamedTempFile;

use super::fsio::{self, at};
use super::{maint, restore, Manifest, Store, StoreError};
use crate::Digest;

/// A blob being downloaded: a temp file in the store's `v1/tmp`, removed on drop unless
/// [`Store::import_blob`] moves it into place.
pub struct BlobImport {
    tmp: NamedTempFile,
}

impl BlobImport {
    /// The open temp file, to write the downloaded bytes to.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Its path (for messages).
    pub fn path(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }
}

impl Store {
    /// A temp file in the store for a blob about to be downloaded.
    pub fn blob_import(&self) -> Result<BlobImport, StoreError> {
        Ok(BlobImport { tmp: fsio::new_temp(&self.v1("tmp"))? })
    }

    /// Move the downloaded blob into place under `digest`, after re-hashing it: content that does
    /// not match (or has another `size`) is refused (an `Io` error of kind `InvalidData`) and deleted. A blob already there is kept (its name is its content).
    pub fn import_blob(&self, import: BlobImport, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let BlobImport { tmp } = import;
        let path = tmp.path().to_path_buf();
        let (found, len) = fsio::hash_file_sized(&path).map_err(at(&path))?;
        if found != *digest || len != size {
            let what = format!("downloaded blob is {} ({len} bytes), expected {} ({size} bytes)", found.short(), digest.short());
            return Err(StoreError::Io { path, source: io::Error::new(io::ErrorKind::InvalidData, what) });
        }
        // Not synced (nor is the manifest below): a blob a crash leaves torn is re-hashed
        // before any use and a torn manifest does not parse, so the worst a crash does to an
        // imported entry is a miss (it is downloaded again). One fsync per blob would be most
        // of the cost of a hit on small entries.
        fsio::persist_blob(tmp, &self.blob_path(digest), false)
    }

    /// Store `bytes` (received from elsewhere) as the blob `digest`, after hashing them: bytes
    /// that do not match are refused (an `Io` error of kind `InvalidData`). Not synced, as
    /// [`Store::import_blob`].
    pub fn import_bytes(&self, bytes: &[u8], digest: &Digest) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if Digest::of(bytes) != *digest {
            let what = format!("received bytes are {}, expected {}", Digest::of(bytes).short(), digest.short());
            return Err(StoreError::Io { path: dest, source: io::Error::new(io::ErrorKind::InvalidData, what) });
        }
        fsio::store_bytes_blob_with(&self.v1("tmp"), bytes, &dest, false)
    }

    /// Write `manifest` (an entry downloaded from elsewhere) under its key, atomically, once
    /// every blob it names is in the store and its paths are safe to restore: afterwards
    /// [`Store::get`] returns it. Blob contents are re-hashed at restore, as for every entry.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let dest = self.manifest_path(&manifest.key);
        let invalid = |what: String| StoreError::Io { path: dest.clone(), source: io::Error::new(io::ErrorKind::InvalidData, what) };
        if let Some(what) = restore::unsafe_entries(&manifest.entries) {
            return Err(invalid(what));
        }
        if let Some(d) = maint::referenced(manifest).find(|d| !self.has_blob(d)) {
            return Err(invalid(format!("blob {} is not in the store", d.short())));
        }
        if let Some(d) = manifest.inputs.filter(|d| !self.input_manifest_path(d).is_file()) {
            return Err(invalid(format!("input manifest {} is not in the store", d.short())));
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Io { path: dest.clone(), source: e.into() })?;
        if json.len() as u64 > super::MAX_META_BYTES {
            return Err(invalid("manifest too large".into()));
        }
        fsio::write_atomic_with(&self.v1("tmp"), &dest, &json, false)
    }
}
