//! The one workflow IR. Every front end (YAML today, the `.wf` DSL later) produces these types,
//! fully resolved: defaults, profiles and workflow-level `env` are already applied to each step,
//! so nothing downstream needs to know which syntax a workflow came from or how it was written.
//!
//! This module owns plain data only: no parsing, no I/O, no Docker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The text of a workflow file, kept so that later stages (planner, policy) can point at lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFile {
    /// The path as the user named it (used in messages).
    pub path: PathBuf,
    #[serde(skip)]
    pub text: String,
}

/// A location in a source file. `offset`/`len` are bytes; `line`/`col` are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    /// `name:` or the file stem.
    pub name: String,
    #[serde(skip)]
    pub source: Arc<SourceFile>,
    /// Directory the workflow file lives in; `inputs` globs and image `copy` sources are relative to it.
    pub dir: PathBuf,
    /// Images built by the engine (issue: images). Parsed and validated, not built yet.
    pub images: BTreeMap<String, ImageDef>,
    /// Steps in file order, each fully resolved.
    pub steps: Vec<Step>,
}

impl Workflow {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Where the step is defined (its key in `steps:`), for messages about the step as a whole.
    pub span: Span,
    pub image: ImageRef,
    pub command: Command,
    /// Glob patterns relative to the workflow directory; matched files appear at /workspace/<path>.
    pub inputs: Vec<String>,
    /// Relative paths under /workspace kept after success.
    pub outputs: Vec<String>,
    /// Direct dependencies, in the order written.
    pub needs: Vec<String>,
    /// Workflow `env` overlaid with the step's own `env` (the step wins).
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables exposed as files under /run/secrets/.
    pub secrets: Vec<String>,
    /// `cache: false` turns reuse off for this step.
    pub cache: bool,
    /// Persistent folders shared across runs (package-manager caches). Not part of the cache key.
    pub caches: Vec<CacheMount>,
    /// Working directory inside the container; `/workspace` unless set.
    pub workdir: String,
    /// The profile the step asked for, if any (already applied to `isolation`/`limits`).
    pub profile: Option<String>,
    pub isolation: Isolation,
    pub limits: Limits,
}

impl Step {
    /// A step with the spec's defaults for everything but its name, image and command: what a
    /// workflow gets when it sets only those (no inputs, outputs, needs, env or secrets; cache
    /// on; workdir /workspace; default isolation and limits).
    pub fn new(name: impl Into<String>, image: ImageRef, command: Command) -> Step {
        Step {
            name: name.into(),
            span: Span::default(),
            image,
            command,
            inputs: Vec::new(),
            outputs: Vec::new(),
            needs: Vec::new(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            cache: true,
            caches: Vec::new(),
            workdir: "/workspace".into(),
            profile: None,
            isolation: Isolation::default(),
            limits: Limits::default(),
        }
    }
}

/// `caches: [{ path: /home/user/.cargo/registry, name: cargo }]` on a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// Shared by every step (of any workflow) that names it.
    pub name: String,
    /// Absolute path inside the container.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ImageRef {
    /// A plain image reference (`local/busybox:1`), used as is.
    Reference(String),
    /// The name of an entry under `images:`.
    Built(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `run:`: executed as `/bin/sh -c <script>`.
    Shell(String),
    /// `command:`: executed as this argv, no shell.
    Argv(Vec<String>),
}

impl Command {
    /// The argv the container runs.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    None,
    Bridge,
}

impl Network {
    pub fn as_str(&self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub network: Network,
    pub user: User,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation { network: Network::None, user: User { uid: 1000, gid: 1000 } }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota in thousandths of a CPU (`cpus: 1.5` is 1500).
    pub millicpus: u64,
    /// Memory limit in bytes; swap is disabled (memory-swap = memory).
    pub memory: u64,
    pub pids: u64,
    /// Wall time from container start.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    /// Size of the tmpfs mounted at /tmp, in bytes.
    pub tmpfs: u64,
    /// Most bytes the step's /workspace may hold while it runs (inputs, needs' outputs and what
    /// the step writes); over it the step fails. `limits.workspace`.
    #[serde(default = "default_workspace")]
    pub workspace: u64,
    /// Most bytes of declared outputs collected after a successful step. `limits.outputs`.
    #[serde(default = "default_outputs")]
    pub outputs: u64,
}

/// Default of `limits.workspace`: 10 GiB.
pub const DEFAULT_WORKSPACE: u64 = 10 << 30;
/// Default of `limits.outputs`: 4 GiB.
pub const DEFAULT_OUTPUTS: u64 = 4 << 30;

fn default_workspace() -> u64 {
    DEFAULT_WORKSPACE
}

fn default_outputs() -> u64 {
    DEFAULT_OUTPUTS
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            millicpus: 1000,
            memory: 1 << 30,
            pids: 256,
            timeout: Duration::from_secs(600),
            tmpfs: 64 << 20,
            workspace: DEFAULT_WORKSPACE,
            outputs: DEFAULT_OUTPUTS,
        }
    }
}

impl Limits {
    /// What a build stage gets without `limits:`: the step defaults with a 30 minute timeout.
    pub fn stage() -> Self {
        Limits { timeout: Duration::from_secs(30 * 60), ..Limits::default() }
    }

    /// The `sandbox` profile of the spec: untrusted code.
    pub fn sandbox() -> Self {
        Limits {
            millicpus: 2000,
            memory: 512 << 20,
            pids: 32,
            timeout: Duration::from_secs(30),
            tmpfs: 50 << 20,
            workspace: 1 << 30,
            outputs: 256 << 20,
        }
    }
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let secs = <f64 as serde::Deserialize>::deserialize(d)?;
        std::time::Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageDef {
    Stages(Vec<Stage>),
    /// `network`: what the daemon's builder gives `RUN` instructions (`none` unless the image
    /// says `network: bridge`).
    Dockerfile {
        dockerfile: String,
        context: String,
        network: Network,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub name: String,
    pub span: Span,
    /// An image reference, or the name of an earlier stage of the same image.
    pub from: String,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub copy: Vec<CopySpec>,
    pub run: Vec<String>,
    pub network: Network,
    /// Limits of every build container of the stage: the step defaults except a 30 minute
    /// timeout ([`Limits::stage`]), overridden by the stage's `limits:`. `tmpfs`, `workspace` and
    /// `outputs` have no effect on stages.
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopySpec {
    /// `None`: from the workflow directory (glob); `Some(stage)`: from that stage's filesystem.
    pub from: Option<String>,
    pub src: String,
    pub dst: String,
}
