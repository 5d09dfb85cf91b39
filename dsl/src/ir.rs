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
    /// The whole text (never serialised).
    #[serde(skip)]
    pub text: String,
}

/// A location in a source file. `offset`/`len` are bytes; `line`/`col` are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Span {
    /// Byte offset of the start.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Line of the start, from 1.
    pub line: usize,
    /// Column of the start in characters, from 1.
    pub col: usize,
}

/// A loaded, validated workflow: every step fully resolved, whatever the syntax.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    /// `name:` or the file stem.
    pub name: String,
    /// The file it was loaded from (for messages; never serialised).
    #[serde(skip)]
    pub source: Arc<SourceFile>,
    /// Directory the workflow file lives in; `inputs` globs and image `copy` sources are relative to it.
    pub dir: PathBuf,
    /// Images built by the engine (issue: images). Parsed and validated, not built yet.
    pub images: BTreeMap<String, ImageDef>,
    /// Steps in file order, each fully resolved.
    pub steps: Vec<Step>,
    /// Where each step's input patterns are written, by step name, parallel to its `inputs`
    /// (for messages about an input: a pattern that matches no file; never serialised).
    #[serde(skip)]
    pub input_spans: BTreeMap<String, Vec<Span>>,
    /// The `.wf` modules it imported (directly or through other modules), each once, in the order
    /// they were first read. Filled in by whoever supplied the loader (the engine's front end,
    /// for the run record and provenance); `dsl` leaves it empty. Never serialised.
    #[serde(skip)]
    pub modules: Vec<Module>,
}

/// One imported `.wf` module as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name: the path relative to the workflow's folder (`lib/common.wf`), or for a module
    /// of the workflow library `stdlib/<path in the library folder>` (`stdlib/python.wf`).
    pub name: String,
    /// The file's text, exactly as read (so that a digest of it is what was loaded).
    pub text: String,
}

impl Workflow {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// One step: a command in a container, with everything it reads, writes and may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Its name (matrix suffix included, e.g. `test[x86]`).
    pub name: String,
    /// Where the step is defined (its key in `steps:`), for messages about the step as a whole.
    pub span: Span,
    /// The image the container runs.
    pub image: ImageRef,
    /// What it runs.
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
    /// `continue_on_error: true`: the step's own failure (an exit, out of memory, a timeout) does
    /// not fail the run or stop it; the declared outputs that exist are kept and exported, and the
    /// steps that need it run with them. Not part of the cache key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Persistent folders shared across runs (package-manager caches). Not part of the cache key.
    pub caches: Vec<CacheMount>,
    /// `runs_on`: worker labels; on a cluster, only a worker started with every one of them
    /// takes the step. A local run ignores them. Not part of the cache key (they choose the
    /// machine, not the result). Sorted, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs_on: Vec<String>,
    /// Working directory inside the container; `/workspace` unless set.
    pub workdir: String,
    /// The profile the step asked for, if any (already applied to `isolation`/`limits`).
    pub profile: Option<String>,
    /// Network and user, resolved.
    pub isolation: Isolation,
    /// Resource limits, resolved.
    pub limits: Limits,
}

/// Whether `s` is a worker label (`runs_on`, `engine worker --label`): 1 to
/// [`MAX_LABEL_CHARS`](crate::bounds::MAX_LABEL_CHARS) lowercase ASCII letters, digits, `.`, `_`
/// or `-`, starting with a letter or digit.
pub fn is_label(s: &str) -> bool {
    s.len() <= crate::bounds::MAX_LABEL_CHARS
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

impl Step {
    /// Whether programs may be executed from the step's `/tmp`: always, except under the
    /// `sandbox` profile (compilers, rustdoc, pip builds and test runners execute from there).
    pub fn tmp_exec(&self) -> bool {
        self.profile.as_deref() != Some("sandbox")
    }

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
            continue_on_error: false,
            caches: Vec::new(),
            runs_on: Vec::new(),
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
/// The image of a step.
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ImageRef {
    /// A plain image reference (`local/busybox:1`), used as is.
    Reference(String),
    /// The name of an entry under `images:`.
    Built(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// What a step runs.
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
/// A container's network.
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (the default).
    None,
    /// Docker's default bridge network.
    Bridge,
}

impl Network {
    /// The name as written in workflows and given to Docker.
    pub fn as_str(&self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }
}

/// The numeric user a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// How a step's container is isolated beyond the fixed defaults (read-only root, no
/// capabilities...): its network and its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// `network:`.
    pub network: Network,
    /// `user:`.
    pub user: User,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation { network: Network::None, user: User { uid: 1000, gid: 1000 } }
    }
}

/// A container's resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota in thousandths of a CPU (`cpus: 1.5` is 1500).
    pub millicpus: u64,
    /// Memory limit in bytes; swap is disabled (memory-swap = memory).
    pub memory: u64,
    /// Most processes and threads.
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
/// An entry under `images:`.
#[serde(rename_all = "snake_case")]
pub enum ImageDef {
    /// Built by the engine, stage by stage.
    Stages(Vec<Stage>),
    /// `network`: what the daemon's builder gives `RUN` instructions (`none` unless the image
    /// says `network: bridge`).
    Dockerfile {
        /// The Dockerfile, relative to the workflow's folder.
        dockerfile: String,
        /// The build context folder, relative to the workflow's folder.
        context: String,
        /// The network of `RUN` instructions.
        network: Network,
        /// Build arguments (`args:`, the builder's `--build-arg`); part of the image's key.
        args: BTreeMap<String, String>,
        /// The stage to build (`target:`, the builder's `--target`); the last stage when `None`.
        target: Option<String>,
    },
}

/// One stage of an image built by the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// Its name (`stage-N` when not named).
    pub name: String,
    /// Where it is written.
    pub span: Span,
    /// An image reference, or the name of an earlier stage of the same image.
    pub from: String,
    /// `env:` of the stage's containers and the image.
    pub env: BTreeMap<String, String>,
    /// `workdir:`.
    pub workdir: Option<String>,
    /// `user:` as written (`None`: root).
    pub user: Option<String>,
    /// Files copied in, in order.
    pub copy: Vec<CopySpec>,
    /// Shell commands run in order, one container (and layer) each.
    pub run: Vec<String>,
    /// The network of its containers.
    pub network: Network,
    /// Limits of every build container of the stage: the step defaults except a 30 minute
    /// timeout ([`Limits::stage`]), overridden by the stage's `limits:`. `tmpfs`, `workspace` and
    /// `outputs` have no effect on stages.
    pub limits: Limits,
}

/// A `copy:` entry of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopySpec {
    /// `None`: from the workflow directory (glob); `Some(stage)`: from that stage's filesystem.
    pub from: Option<String>,
    /// Source path or glob.
    pub src: String,
    /// Absolute destination in the image.
    pub dst: String,
}
