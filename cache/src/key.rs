//! Action keys: everything that can change a step's outputs, in one canonical, versioned,
//! unambiguous encoding, hashed with SHA-256. Also the explanation of a miss: the difference
//! between two sets of key components, as [`Reason`]s a person can read.
//!
//! Never a secret value, never an mtime, never an absolute host path: the same workflow checked
//! out in another folder gets the same keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The key of one step execution.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ActionKey(pub Digest);

impl fmt::Display for ActionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One input file as it enters a key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InputEntry {
    /// Relative to the workflow directory, `/`-separated.
    pub path: String,
    /// Unix permission bits (e.g. 0o644, 0o755); symlinks 0o120000 | 0o777.
    pub mode: u32,
    /// Content digest; for a symlink, the digest of its target text.
    pub digest: Digest,
}

/// The outputs of one directly needed step, by the digest of its output manifest.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UpstreamEntry {
    pub step: String,
    pub outputs: Digest,
}

/// Everything a key covers, as stored in the last-run record (`engine plan`, `cache explain`).
/// Limits are deliberately absent: they decide whether a step succeeds, not what a successful
/// step outputs, and failures are never cached.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyComponents {
    /// [`crate::CACHE_FORMAT_VERSION`].
    pub format: u32,
    /// The resolved image ID (`sha256:...`), not the reference: a retagged image changes the key.
    pub image_id: String,
    /// The argv the container runs.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// `uid:gid`.
    pub user: String,
    /// `none` or `bridge`.
    pub network: String,
    /// Declared output paths, as written.
    pub outputs: Vec<String>,
    /// Secret NAMES (a secret added or removed changes the key; its value never enters).
    pub secrets: Vec<String>,
    /// Sorted by path.
    pub inputs: Vec<InputEntry>,
    /// Sorted by step name.
    pub upstream: Vec<UpstreamEntry>,
}

impl KeyComponents {
    /// The canonical encoding: every field tagged and length-prefixed, lists counted, maps in key
    /// order, so no two different component sets share an encoding (`A=1,B=2` vs `A=1B=2`).
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }

    pub fn key(&self) -> ActionKey {
        ActionKey(Digest::of(&self.encode()))
    }

    /// Why `self` differs from `previous` (the last run of the same step), in a stable order:
    /// format, image, command, env (per variable), workdir, user, network, outputs, secrets,
    /// inputs (per file: added, removed, changed), upstream (per step). Empty if equal.
    pub fn diff(&self, _previous: &KeyComponents) -> Vec<Reason> {
        todo!()
    }
}

/// Why a step will run (or ran) instead of coming from the cache.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// No record of an earlier run of this step.
    NeverRun,
    /// `cache: false` on the step.
    CacheDisabled,
    /// `--no-cache` on the command line.
    NoCacheFlag,
    /// The key is unchanged but its entry is gone or corrupt (GC, verify, a damaged blob).
    EntryMissing,
    /// A step it needs will run, so its key is not known yet.
    UpstreamWillRun { step: String },
    FormatChanged { old: u32, new: u32 },
    ImageChanged { old: String, new: String },
    CommandChanged,
    /// `old`/`new` are None when the variable was absent. Values are shown: env is not secret.
    EnvChanged { name: String, old: Option<String>, new: Option<String> },
    WorkdirChanged { old: String, new: String },
    UserChanged { old: String, new: String },
    NetworkChanged { old: String, new: String },
    OutputsChanged,
    SecretsChanged,
    InputAdded { path: String },
    InputRemoved { path: String },
    /// Content or mode changed.
    InputChanged { path: String },
    UpstreamChanged { step: String },
}

impl fmt::Display for Reason {
    /// One short sentence: "input `src/main.c` changed", "env `CC` changed (gcc -> clang)",
    /// "never run", "image changed (sha256:ab12.. -> sha256:cd34..)", "`build` will run".
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}
