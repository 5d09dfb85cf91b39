//! Stage keys: SHA-256 over a canonical, versioned, length-prefixed encoding of everything a stage
//! produces its filesystem from. Pure: no Docker, no filesystem. Owned by the stages work
//! (`stages.rs` gathers the inputs; this module only encodes them).
//!
//! Every variable-length field is written as its byte length (u64, big endian) followed by its
//! bytes, and every list as its element count first, so that no two different inputs can encode
//! to the same bytes (`A=1,B=2` is not `A=1B=2`). Each field is preceded by a one-byte tag, so a
//! field moved from one place to another changes the encoding too.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

/// Bumped when the encoding changes.
pub const IMAGE_KEY_VERSION: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
/// The key of a stage (or of a Dockerfile image): the digest of everything its result depends on.
pub struct StageKey(cache::Digest);

impl StageKey {
    pub(crate) fn from_digest(digest: cache::Digest) -> StageKey {
        StageKey(digest)
    }

    /// The 64 lowercase hex digits, as labels and tags carry them.
    pub fn hex(&self) -> String {
        self.0.hex()
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.0.short()
    }

    /// The key as a digest (what enters the keys of the steps using the image).
    pub fn digest(&self) -> cache::Digest {
        self.0
    }
}

impl std::fmt::Display for StageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for StageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StageKey({})", self.0.short())
    }
}

impl std::str::FromStr for StageKey {
    type Err = String;
    fn from_str(s: &str) -> Result<StageKey, String> {
        s.parse().map(StageKey)
    }
}

/// One file copied from the workflow directory, as it enters a stage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Relative to the workflow directory, `/`-separated.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 of its contents.
    pub digest: cache::Digest,
}

/// One `copy` of a stage, as it enters the stage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyKey {
    /// From the workflow directory: every matched file, sorted by path.
    Context {
        /// The source pattern, as written.
        src: String,
        /// The destination in the stage's filesystem.
        dst: String,
        /// The files the pattern matched.
        files: Vec<ContextFile>,
    },
    /// From another stage: that stage's key (which covers its whole filesystem).
    Stage {
        /// The key of the stage copied from.
        stage_key: StageKey,
        /// The path copied, in that stage's filesystem.
        src: String,
        /// The destination in this stage's filesystem.
        dst: String,
    },
}

/// Everything a stage's filesystem and config are produced from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKeyInput<'a> {
    /// The base image ID, or the key of the earlier stage named by `from`.
    pub base: &'a str,
    /// The stage's environment variables.
    pub env: &'a BTreeMap<String, String>,
    /// The working directory, if set.
    pub workdir: Option<&'a str>,
    /// The user the instructions run as, if set.
    pub user: Option<&'a str>,
    /// `none` or `bridge`.
    pub network: &'a str,
    /// Copies, in the order written (they are applied before the runs).
    pub copies: &'a [CopyKey],
    /// The `run` commands, in order.
    pub run: &'a [String],
}

/// The stage key: lowercase hex SHA-256 of the canonical encoding.
pub fn stage_key(input: &StageKeyInput<'_>) -> StageKey {
    let mut h = Sha256::new();
    h.update(encode(input));
    StageKey(cache::Digest::from_bytes(h.finalize().into()))
}

/// The canonical encoding (exposed for tests and for debugging a surprising key).
pub fn encode(input: &StageKeyInput<'_>) -> Vec<u8> {
    let mut e = Encoder(Vec::new());
    e.0.extend_from_slice(b"engine-stage-key");
    e.0.extend_from_slice(&IMAGE_KEY_VERSION.to_be_bytes());
    e.field(b'b', input.base.as_bytes());
    e.count(b'e', input.env.len());
    for (k, v) in input.env {
        e.bytes(k.as_bytes());
        e.bytes(v.as_bytes());
    }
    e.option(b'w', input.workdir);
    e.option(b'u', input.user);
    e.field(b'n', input.network.as_bytes());
    e.count(b'c', input.copies.len());
    for copy in input.copies {
        match copy {
            CopyKey::Context { src, dst, files } => {
                e.field(b'x', src.as_bytes());
                e.bytes(dst.as_bytes());
                e.count(b'f', files.len());
                for f in files {
                    e.bytes(f.path.as_bytes());
                    e.0.extend_from_slice(&f.mode.to_be_bytes());
                    e.0.extend_from_slice(f.digest.as_bytes());
                }
            }
            CopyKey::Stage { stage_key, src, dst } => {
                e.field(b's', stage_key.hex().as_bytes());
                e.bytes(src.as_bytes());
                e.bytes(dst.as_bytes());
            }
        }
    }
    e.count(b'r', input.run.len());
    for cmd in input.run {
        e.bytes(cmd.as_bytes());
    }
    e.0
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
    }

    fn field(&mut self, tag: u8, b: &[u8]) {
        self.0.push(tag);
        self.bytes(b);
    }

    fn count(&mut self, tag: u8, n: usize) {
        self.0.push(tag);
        self.0.extend_from_slice(&(n as u64).to_be_bytes());
    }

    /// Absent and empty are different values (`workdir: ""` is not "inherit the base's").
    fn option(&mut self, tag: u8, v: Option<&str>) {
        self.0.push(tag);
        match v {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.bytes(s.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(path: &str, mode: u32, byte: u8) -> ContextFile {
        ContextFile { path: path.into(), mode, digest: cache::Digest::from_bytes([byte; 32]) }
    }

    /// A key for `base`, varied by `f`.
    fn key_with(f: impl FnOnce(&mut StageKeyInput<'_>)) -> String {
        key_input_with(f).hex()
    }

    fn sk(byte: u8) -> StageKey {
        StageKey(cache::Digest::from_bytes([byte; 32]))
    }

    fn key_input_with(f: impl FnOnce(&mut StageKeyInput<'_>)) -> StageKey {
        let env = env(&[("A", "1")]);
        let copies = vec![
            CopyKey::Context { src: "tools/*".into(), dst: "/src/".into(), files: vec![file("tools/a.sh", 0o755, 1)] },
            CopyKey::Stage { stage_key: sk(1), src: "/out".into(), dst: "/in".into() },
        ];
        let run = vec!["make".to_string()];
        let mut input = StageKeyInput {
            base: "sha256:base",
            env: &env,
            workdir: Some("/src"),
            user: None,
            network: "none",
            copies: &copies,
            run: &run,
        };
        f(&mut input);
        stage_key(&input)
    }

    #[test]
    fn deterministic_and_hex() {
        let a = key_with(|_| {});
        assert_eq!(a, key_with(|_| {}));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn env_encoding_is_unambiguous() {
        let two = env(&[("A", "1"), ("B", "2")]);
        let one = env(&[("A", "1B=2")]);
        let one_b = env(&[("A", "1,B=2")]);
        let k = |e: &BTreeMap<String, String>| key_with(|i| i.env = leak(e));
        assert_ne!(k(&two), k(&one));
        assert_ne!(k(&two), k(&one_b));
        assert_ne!(k(&one), k(&one_b));
    }

    /// Test inputs live for the whole test process: simpler than threading lifetimes through `key_with`.
    fn leak(e: &BTreeMap<String, String>) -> &'static BTreeMap<String, String> {
        Box::leak(Box::new(e.clone()))
    }

    #[test]
    fn run_commands_are_unambiguous_and_ordered() {
        let ab: &'static [String] = Box::leak(Box::new(vec!["a".to_string(), "b".to_string()]));
        let ba: &'static [String] = Box::leak(Box::new(vec!["b".to_string(), "a".to_string()]));
        let joined: &'static [String] = Box::leak(Box::new(vec!["ab".to_string()]));
        let (k1, k2, k3) = (key_with(|i| i.run = ab), key_with(|i| i.run = ba), key_with(|i| i.run = joined));
        assert_ne!(k1, k2);
        assert_ne!(k1, k3);
    }

    fn context_copy(path: &str, mode: u32, byte: u8) -> &'static [CopyKey] {
        Box::leak(Box::new(vec![CopyKey::Context { src: "tools/*".into(), dst: "/src/".into(), files: vec![file(path, mode, byte)] }]))
    }

    #[test]
    fn sensitive_to_each_field() {
        let base = key_with(|_| {});
        let copies_mode = context_copy("tools/a.sh", 0o644, 1);
        let copies_digest = context_copy("tools/a.sh", 0o755, 2);
        let copies_path = context_copy("tools/b.sh", 0o755, 1);
        let copies_stage: &'static [CopyKey] =
            Box::leak(Box::new(vec![CopyKey::Stage { stage_key: sk(2), src: "/out".into(), dst: "/in".into() }]));
        let env2 = leak(&env(&[("A", "2")]));
        let variants = [
            key_with(|i| i.base = "sha256:other"),
            key_with(|i| i.env = env2),
            key_with(|i| i.workdir = None),
            key_with(|i| i.workdir = Some("")),
            key_with(|i| i.workdir = Some("/other")),
            key_with(|i| i.user = Some("1000:1000")),
            key_with(|i| i.network = "bridge"),
            key_with(|i| i.run = &[]),
            key_with(|i| i.copies = &[]),
            key_with(|i| i.copies = copies_mode),
            key_with(|i| i.copies = copies_digest),
            key_with(|i| i.copies = copies_path),
            key_with(|i| i.copies = copies_stage),
        ];
        let mut all: Vec<&String> = variants.iter().collect();
        all.push(&base);
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every field change gives a distinct key");
    }
}
