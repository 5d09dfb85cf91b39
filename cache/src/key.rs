//! Action keys: everything that can change a step's outputs, in one canonical, versioned,
//! unambiguous encoding, hashed with SHA-256. Also the explanation of a miss: the difference
//! between two sets of key components, as [`Reason`]s a person can read.
//!
//! Never a secret value, never an mtime, never an absolute host path: the same workflow checked
//! out in another folder gets the same keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Digest, ImageIdentity};

/// The key of one step execution.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ActionKey(Digest);

impl ActionKey {
    /// The key with this digest (as read back from a manifest or a record).
    pub const fn from_digest(digest: Digest) -> ActionKey {
        ActionKey(digest)
    }

    /// The digest of the key encoding.
    pub const fn digest(&self) -> Digest {
        self.0
    }
}

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
    /// The needed step's name.
    pub step: String,
    /// The digest of its output manifest.
    pub outputs: Digest,
}

/// Everything a key covers, as stored in the last-run record (`engine plan`, `cache explain`).
/// Limits are deliberately absent: they decide whether a step succeeds, not what a successful
/// step outputs, and failures are never cached.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyComponents {
    /// [`crate::CACHE_FORMAT_VERSION`].
    pub format: u32,
    /// The image's machine-independent identity (its stage key, its registry digest, or, for an
    /// image with neither, its local ID), not the reference: a retagged image changes the key.
    /// Records written before identities hold `image_id`, a bare ID: read back as `local`.
    #[serde(alias = "image_id")]
    pub image: ImageIdentity,
    /// The argv the container runs.
    pub command: Vec<String>,
    /// The environment of the container (names and values; secrets are never here).
    pub env: BTreeMap<String, String>,
    /// The working directory in the container.
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
    ///
    /// Layout (all integers big-endian, `len` and `count` are u64):
    ///
    /// ```text
    /// "engine-action-key\0"                       magic: this is an action key encoding
    /// field*                                      in tag order, every tag exactly once
    ///
    /// field    = tag:u8 len payload[len]
    /// str      = len bytes[len]                     (UTF-8)
    /// tag 0  format     u32
    /// tag 1  image      bytes: `built|registry|local sha256:<hex>` (ImageIdentity's Display)
    /// tag 2  command    count str*
    /// tag 3  env        count (str key, str value)*  in key order
    /// tag 4  workdir    bytes
    /// tag 5  user       bytes
    /// tag 6  network    bytes
    /// tag 7  outputs    count str*                   as written
    /// tag 8  secrets    count str*                   names only, as given
    /// tag 9  inputs     count (str path, mode:u32, digest:[u8;32])*  in path order
    /// tag 10 upstream   count (str step, digest:[u8;32])*            in step order
    /// ```
    ///
    /// `inputs` and `upstream` are documented as sorted; they are sorted again here so a caller
    /// that forgets cannot produce two keys for one set of files. Changing anything in this layout
    /// requires bumping [`crate::CACHE_FORMAT_VERSION`] (and the pinned key in the tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut enc = Encoder::default();
        enc.buf.extend_from_slice(MAGIC);
        enc.field(TAG_FORMAT, |e| e.u32(self.format));
        enc.field(TAG_IMAGE, |e| e.raw(self.image.to_string().as_bytes()));
        enc.field(TAG_COMMAND, |e| e.strs(&self.command));
        enc.field(TAG_ENV, |e| {
            e.count(self.env.len());
            for (k, v) in &self.env {
                e.str(k);
                e.str(v);
            }
        });
        enc.field(TAG_WORKDIR, |e| e.raw(self.workdir.as_bytes()));
        enc.field(TAG_USER, |e| e.raw(self.user.as_bytes()));
        enc.field(TAG_NETWORK, |e| e.raw(self.network.as_bytes()));
        enc.field(TAG_OUTPUTS, |e| e.strs(&self.outputs));
        enc.field(TAG_SECRETS, |e| e.strs(&self.secrets));
        enc.field(TAG_INPUTS, |e| {
            let mut inputs: Vec<&InputEntry> = self.inputs.iter().collect();
            inputs.sort_by(|a, b| (&a.path, a.mode, a.digest).cmp(&(&b.path, b.mode, b.digest)));
            e.count(inputs.len());
            for i in inputs {
                e.str(&i.path);
                e.u32(i.mode);
                e.raw(i.digest.as_bytes());
            }
        });
        enc.field(TAG_UPSTREAM, |e| {
            let mut upstream: Vec<&UpstreamEntry> = self.upstream.iter().collect();
            upstream.sort_by(|a, b| (&a.step, a.outputs).cmp(&(&b.step, b.outputs)));
            e.count(upstream.len());
            for u in upstream {
                e.str(&u.step);
                e.raw(u.outputs.as_bytes());
            }
        });
        enc.buf
    }

    /// The action key: the digest of the canonical encoding.
    pub fn key(&self) -> ActionKey {
        ActionKey(Digest::of(&self.encode()))
    }

    /// Everything but the input files, without copying them (which can be 100,000 entries).
    pub fn without_inputs(&self) -> KeyComponents {
        KeyComponents {
            format: self.format,
            image: self.image.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            network: self.network.clone(),
            outputs: self.outputs.clone(),
            secrets: self.secrets.clone(),
            inputs: Vec::new(),
            upstream: self.upstream.clone(),
        }
    }

    /// Why `self` differs from `previous` (the last run of the same step), in a stable order:
    /// format, image, command, env (per variable), workdir, user, network, outputs, secrets,
    /// inputs (per file: added, removed, changed), upstream (per step). Empty if equal.
    ///
    /// Env variables are listed in name order, input files in path order (each file gives one
    /// reason: added, removed or changed), upstream steps in name order (a step newly needed or
    /// no longer needed counts as its output changing).
    pub fn diff(&self, previous: &KeyComponents) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if self.format != previous.format {
            reasons.push(Reason::FormatChanged { old: previous.format, new: self.format });
        }
        if self.image != previous.image {
            reasons.push(Reason::ImageChanged { old: previous.image.clone(), new: self.image.clone() });
        }
        if self.command != previous.command {
            reasons.push(Reason::CommandChanged);
        }
        for (name, old, new) in merge(previous.env.iter().map(|(k, v)| (k.as_str(), v)), self.env.iter().map(|(k, v)| (k.as_str(), v))) {
            if old != new {
                reasons.push(Reason::EnvChanged { name: name.to_string(), old: old.cloned(), new: new.cloned() });
            }
        }
        if self.workdir != previous.workdir {
            reasons.push(Reason::WorkdirChanged { old: previous.workdir.clone(), new: self.workdir.clone() });
        }
        if self.user != previous.user {
            reasons.push(Reason::UserChanged { old: previous.user.clone(), new: self.user.clone() });
        }
        if self.network != previous.network {
            reasons.push(Reason::NetworkChanged { old: previous.network.clone(), new: self.network.clone() });
        }
        if self.outputs != previous.outputs {
            reasons.push(Reason::OutputsChanged);
        }
        if self.secrets != previous.secrets {
            reasons.push(Reason::SecretsChanged);
        }
        for (path, old, new) in
            merge(previous.inputs.iter().map(|i| (i.path.as_str(), i)), self.inputs.iter().map(|i| (i.path.as_str(), i)))
        {
            let path = path.to_string();
            match (old, new) {
                (None, Some(_)) => reasons.push(Reason::InputAdded { path }),
                (Some(_), None) => reasons.push(Reason::InputRemoved { path }),
                (Some(o), Some(n)) if (o.mode, o.digest) != (n.mode, n.digest) => reasons.push(Reason::InputChanged { path }),
                _ => {}
            }
        }
        for (step, old, new) in merge(
            previous.upstream.iter().map(|u| (u.step.as_str(), &u.outputs)),
            self.upstream.iter().map(|u| (u.step.as_str(), &u.outputs)),
        ) {
            if old != new {
                reasons.push(Reason::UpstreamChanged { step: step.to_string() });
            }
        }
        reasons
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
    UpstreamWillRun {
        /// The step that will run first.
        step: String,
    },
    /// The cache format changed between engine versions.
    FormatChanged {
        /// The format of the last run.
        old: u32,
        /// The format now.
        new: u32,
    },
    /// The image changed (rebuilt from another definition, retagged or pulled again).
    ImageChanged {
        /// The image's identity in the last run.
        old: ImageIdentity,
        /// Its identity now.
        new: ImageIdentity,
    },
    /// The argv changed.
    CommandChanged,
    /// `old`/`new` are None when the variable was absent. Values are shown: env is not secret.
    EnvChanged {
        /// The variable.
        name: String,
        /// Its value last time.
        old: Option<String>,
        /// Its value now.
        new: Option<String>,
    },
    /// The working directory changed.
    WorkdirChanged {
        /// Last time.
        old: String,
        /// Now.
        new: String,
    },
    /// The user changed.
    UserChanged {
        /// Last time.
        old: String,
        /// Now.
        new: String,
    },
    /// The network changed.
    NetworkChanged {
        /// Last time.
        old: String,
        /// Now.
        new: String,
    },
    /// The declared outputs changed.
    OutputsChanged,
    /// The secret names changed (values never take part).
    SecretsChanged,
    /// An input file is new.
    InputAdded {
        /// Its path, relative to the workflow folder.
        path: String,
    },
    /// An input file is gone.
    InputRemoved {
        /// Its path, relative to the workflow folder.
        path: String,
    },
    /// Content or mode changed.
    InputChanged {
        /// Its path, relative to the workflow folder.
        path: String,
    },
    /// A needed step's outputs changed.
    UpstreamChanged {
        /// The needed step.
        step: String,
    },
}

impl fmt::Display for Reason {
    /// One short sentence: "input `src/main.c` changed", "env `CC` changed (gcc -> clang)",
    /// "never run", "image changed (local sha256:ab12.. -> built sha256:cd34..)", "`build` will run".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => f.write_str("never run"),
            Reason::CacheDisabled => f.write_str("cache: false on the step"),
            Reason::NoCacheFlag => f.write_str("--no-cache"),
            Reason::EntryMissing => f.write_str("cache entry missing or damaged"),
            Reason::UpstreamWillRun { step } => write!(f, "needs `{step}`, which will run"),
            Reason::FormatChanged { old, new } => write!(f, "cache format changed ({old} -> {new})"),
            Reason::ImageChanged { old, new } => {
                write!(f, "image changed ({} -> {})", old.short(), new.short())
            }
            Reason::CommandChanged => f.write_str("command changed"),
            Reason::EnvChanged { name, old, new } => match (old, new) {
                (None, Some(new)) => write!(f, "env `{name}` added (= {new})"),
                (Some(_), None) => write!(f, "env `{name}` removed"),
                (Some(old), Some(new)) => write!(f, "env `{name}` changed ({old} -> {new})"),
                (None, None) => write!(f, "env `{name}` changed"),
            },
            Reason::WorkdirChanged { old, new } => write!(f, "workdir changed ({old} -> {new})"),
            Reason::UserChanged { .. } => f.write_str("user changed"),
            Reason::NetworkChanged { old, new } => write!(f, "network changed ({old} -> {new})"),
            Reason::OutputsChanged => f.write_str("outputs changed"),
            Reason::SecretsChanged => f.write_str("secrets changed"),
            Reason::InputAdded { path } => write!(f, "input `{path}` added"),
            Reason::InputRemoved { path } => write!(f, "input `{path}` removed"),
            Reason::InputChanged { path } => write!(f, "input `{path}` changed"),
            Reason::UpstreamChanged { step } => write!(f, "output of `{step}` changed"),
        }
    }
}

/// Walks two lists sorted by name in step, yielding each name once with its value on each side.
/// Both sides are sorted by the [`KeyComponents`] contract; if a caller breaks it the walk still
/// terminates, it only reports more changes than there are.
fn merge<'a, T: 'a>(
    old: impl Iterator<Item = (&'a str, T)>,
    new: impl Iterator<Item = (&'a str, T)>,
) -> Vec<(&'a str, Option<T>, Option<T>)> {
    let mut old = old.peekable();
    let mut new = new.peekable();
    let mut out = Vec::new();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((o, _)), Some((n, _))) => o.cmp(n),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((name, v)) = old.next() {
                    out.push((name, Some(v), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((name, v)) = new.next() {
                    out.push((name, None, Some(v)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((name, o)), Some((_, n))) = (old.next(), new.next()) {
                    out.push((name, Some(o), Some(n)));
                }
            }
        }
    }
    out
}

/// Identifies the byte string as an action key encoding (see [`KeyComponents::encode`]).
const MAGIC: &[u8] = b"engine-action-key\0";
const TAG_FORMAT: u8 = 0;
const TAG_IMAGE: u8 = 1;
const TAG_COMMAND: u8 = 2;
const TAG_ENV: u8 = 3;
const TAG_WORKDIR: u8 = 4;
const TAG_USER: u8 = 5;
const TAG_NETWORK: u8 = 6;
const TAG_OUTPUTS: u8 = 7;
const TAG_SECRETS: u8 = 8;
const TAG_INPUTS: u8 = 9;
const TAG_UPSTREAM: u8 = 10;

/// Builds the canonical encoding; the helpers are the only way bytes enter it, so every variable
/// length part is length-prefixed by construction.
#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// Tag, then the payload's length (patched in once the payload is written), then the payload.
    fn field(&mut self, tag: u8, payload: impl FnOnce(&mut Encoder)) {
        self.buf.push(tag);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        payload(self);
        let len = (self.buf.len() - len_at - 8) as u64;
        self.buf[len_at..len_at + 8].copy_from_slice(&len.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn count(&mut self, n: usize) {
        self.buf.extend_from_slice(&(n as u64).to_be_bytes());
    }

    /// Bytes whose length is already known from the enclosing field or their fixed size.
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn str(&mut self, s: &str) {
        self.count(s.len());
        self.raw(s.as_bytes());
    }

    fn strs(&mut self, list: &[String]) {
        self.count(list.len());
        for s in list {
            self.str(s);
        }
    }
}

#[cfg(test)]
mod tests;
