//! What the runner is asked to run ([`ContainerSpec`]) and what it answers ([`Finished`]): the
//! runner's own types, so that the `docker` crate knows nothing of workflows or steps.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::format_duration;

/// The numeric user and group a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The resource limits of one container run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU quota in thousandths of a CPU.
    pub millicpus: u64,
    /// Memory in bytes; swap is disabled (memory-swap = memory).
    pub memory: u64,
    /// Most processes at once.
    pub pids: u64,
    /// Size of the /tmp tmpfs in bytes.
    pub tmpfs: u64,
    /// Wall-time limit from the start; then the termination ladder stops the container.
    pub timeout: Duration,
    /// Most bytes of disk /workspace may take while the container runs (bind transfer).
    pub workspace: u64,
    /// Most bytes of file content the collected outputs may hold.
    pub outputs: u64,
}

/// A persistent cache mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    /// The cache's name: the archive transfer keeps it in volume `engine-cache-<name>`.
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    /// The host folder behind it (bind transfer).
    pub host_dir: PathBuf,
}

/// One container to run to completion: hardened (read-only root, no capabilities, no new
/// privileges, no swap), with the engine's prepared folders as its only mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The run it belongs to (label `engine.run`, container name).
    pub run_id: String,
    /// The step's name (label `engine.step`, container name).
    pub step: String,
    /// The image reference or ID to create the container from.
    pub image: String,
    /// The command: the first word becomes the entrypoint, the rest its arguments.
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` is /workspace.
    pub workdir: Option<String>,
    /// The user the command runs as.
    pub user: User,
    /// Docker network mode (`none`, `bridge`).
    pub network: String,
    /// Resource limits and the timeout.
    pub limits: Limits,
    /// Secret name and value, mounted as /run/secrets/<name>; values are masked in the log.
    pub secrets: Vec<(String, String)>,
    /// Persistent cache mounts.
    pub caches: Vec<CacheMount>,
    /// A host folder prepared by the caller: its content becomes /workspace.
    pub workspace: PathBuf,
    /// An empty host folder; after exit 0 each declared output is collected here at its relative
    /// path (never following a symlink out of /workspace).
    pub collect_to: PathBuf,
    /// Paths relative to /workspace to collect after exit 0.
    pub outputs: Vec<String>,
    /// Whether programs may be executed from /tmp (compilers, test runners and package builds
    /// do); `false` mounts it `noexec` (the `sandbox` profile). Always `nosuid,nodev`.
    pub tmp_exec: bool,
    /// Also collect the outputs after a non-zero exit, out of memory or a timeout: those that
    /// exist, checked and bounded as after success (what a failing step had written, for a
    /// `continue_on_error` step such as the sandbox's).
    pub partial_outputs: bool,
}

/// How a container run ended, and for how long it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// `Ok` when the container exited 0 and every output was collected.
    pub result: Result<(), Failure>,
    /// Wall time from start to exit; zero if it never started.
    pub duration: Duration,
    /// The container's exit code, when it exited by itself.
    pub exit_code: Option<i64>,
    /// After a failure with [`ContainerSpec::partial_outputs`]: the outputs that existed were
    /// collected into `collect_to` (possibly none of them); `false` otherwise.
    pub partial: bool,
}

/// Why a container run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The command exited with a non-zero code.
    #[error("exited with code {0}")]
    Exit(i64),
    /// The timeout passed; the container was stopped.
    #[error("timed out after {}", format_duration(*.0))]
    TimedOut(Duration),
    /// The kernel killed it for passing its memory limit.
    #[error("killed: out of memory (limit {limit} bytes)")]
    OutOfMemory {
        /// The memory limit in bytes.
        limit: u64,
    },
    /// A declared output does not exist after exit 0.
    #[error("declared output `{0}` does not exist after the step exited 0")]
    MissingOutput(String),
    /// An output leads outside /workspace (or through a symlinked folder).
    #[error("output `{path}` rejected: {reason}")]
    UnsafeOutput {
        /// The declared output.
        path: String,
        /// Why, as a sentence.
        reason: String,
    },
    /// /workspace grew past its limit while the container ran; it was killed.
    #[error("wrote more than the workspace limit of {limit} bytes")]
    WorkspaceLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The declared outputs hold more than their limit; collection stopped there.
    #[error("outputs exceed the limit of {limit} bytes")]
    OutputsLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// Cancelled by the caller; the container was stopped.
    #[error("cancelled")]
    Cancelled,
    /// The environment, not the command, failed (daemon, host files); the sentence says what.
    #[error("{0}")]
    Environment(String),
}
