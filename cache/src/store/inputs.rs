//! Input manifests: the input files (path, mode, content digest) of a step execution, for
//! `engine replay` and `engine provenance`. Each distinct list is kept once, named by the SHA-256
//! of its JSON (`v1/inputs/<aa>/<digest>.json`): fifty steps over the same 2,000 files, run after
//! run, share one file. A cache entry names its input manifest ([`Manifest::inputs`]); gc keeps a
//! manifest while an entry names it. Entries written before input manifests were shared kept one
//! per action key under the key's name; [`Store::get`] moves such an entry over on its next hit.

use std::fs;
use std::path::PathBuf;

use super::fsio;
use super::{Manifest, Store, StoreError, MAX_META_BYTES};
use crate::{Digest, InputEntry};

impl Store {
    /// Where the input manifest with `digest` lives (`v1/inputs/<aa>/<hex>.json`), whether or not
    /// it exists.
    pub fn input_manifest_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v1("inputs").join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// Keep `inputs` (as given: the engine gives them sorted by path) as an input manifest, once:
    /// an identical list already stored is not written again. Returns its digest, which names it.
    /// The contents of the files are blobs (see [`Store::store_inputs`]).
    pub fn put_input_manifest(&self, inputs: &[InputEntry]) -> Result<Digest, StoreError> {
        let json = serde_json::to_vec(inputs).map_err(|e| StoreError::Io { path: self.v1("inputs"), source: e.into() })?;
        let digest = Digest::of(&json);
        let dest = self.input_manifest_path(&digest);
        // An existing one is touched, so a concurrent gc sees it young until the entry naming it
        // is written.
        if !fsio::reuse_existing(&dest) {
            fsio::write_atomic(&self.v1("tmp"), &dest, &json)?;
        }
        Ok(digest)
    }

    /// The input manifest with `digest`, if the store has it and its content still matches its
    /// name (a damaged one is no manifest).
    pub fn input_manifest(&self, digest: &Digest) -> Option<Vec<InputEntry>> {
        let bytes = crate::safe::read_bounded(&self.input_manifest_path(digest), MAX_META_BYTES).ok()?;
        if Digest::of(&bytes) != *digest {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }

    /// An entry of the previous layout (its input manifest under its key's name, not its own):
    /// keep the manifest by its digest, name it in the entry, and drop the old file. Best effort:
    /// on any failure the entry stays as it was (and still restores).
    pub(super) fn adopt_legacy_inputs(&self, m: &mut Manifest) {
        let legacy = self.input_manifest_path(&m.key.digest());
        let Ok(bytes) = crate::safe::read_bounded(&legacy, MAX_META_BYTES) else { return };
        let Ok(inputs) = serde_json::from_slice::<Vec<InputEntry>>(&bytes) else { return };
        let Ok(digest) = self.put_input_manifest(&inputs) else { return };
        let mut adopted = m.clone();
        adopted.inputs = Some(digest);
        let dest = self.manifest_path(&m.key);
        let Ok(json) = serde_json::to_vec_pretty(&adopted) else { return };
        if fsio::write_atomic(&self.v1("tmp"), &dest, &json).is_ok() {
            *m = adopted;
            // (A key equal to the list's own digest would name the new file itself.)
            if digest != m.key.digest() {
                let _ = fs::remove_file(&legacy);
            }
        }
    }
}
