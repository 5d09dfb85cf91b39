//! The boundary between deciding and doing: the scheduler hands one step at a time to an
//! [`Executor`] and gets a [`StepOutcome`] back. The Docker implementation lives in `docker`;
//! scheduler tests use a fake. An executor runs exactly one step and never looks at the graph.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::EventSink;

/// Everything the Docker executor needs to run one step's container.
#[derive(Debug, Clone)]
pub struct StepJob {
    pub run_id: String,
    pub step: Arc<dsl::Step>,
    /// The image reference to create the container from (built images already resolved).
    pub image: String,
    /// A host directory prepared by the engine: the step's inputs and its direct upstream outputs,
    /// at their relative paths. Its content becomes `/workspace`.
    pub workspace: PathBuf,
    /// An empty host directory; after exit 0 the executor copies each declared output here at its
    /// relative path (never following a symlink out of /workspace).
    pub collect_to: PathBuf,
    /// Secret name and value, mounted as /run/secrets/<name>; values are masked in logs.
    pub secrets: Vec<(String, String)>,
    /// Persistent cache mounts (`caches:`): the step's mounts with the host folder the engine
    /// keeps for each name (`Store::mount_dir`), used by the bind transfer; the archive transfer
    /// uses a named volume per cache name instead.
    pub caches: Vec<CacheMountJob>,
}

#[derive(Debug, Clone)]
pub struct CacheMountJob {
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    /// The engine's persistent folder for this cache name.
    pub host_dir: PathBuf,
}

/// Per-step plumbing: where logs go and how to tell the step to stop.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub events: EventSink,
    /// Cancelled on SIGINT/SIGTERM; the executor kills and removes its container. (Fail-fast does
    /// not cancel: running steps finish, only new starts stop.)
    pub cancel: CancellationToken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub result: Result<(), StepFailure>,
    /// Wall time of the container (start to exit); zero if it never started.
    pub duration: Duration,
    /// The container's exit code, when it exited by itself.
    pub exit_code: Option<i64>,
    /// The outputs came from the cache; no container was created.
    pub cached: bool,
}

/// Why a step failed. `Display` is the sentence shown to users.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepFailure {
    #[error("exited with code {0}")]
    Exit(i64),
    #[error("timed out after {}", dsl::units::format_duration(*.0))]
    TimedOut(Duration),
    #[error("killed: out of memory (limit {})", dsl::units::format_size(*.limit))]
    OutOfMemory { limit: u64 },
    #[error("declared output `{0}` does not exist after the step exited 0")]
    MissingOutput(String),
    #[error("output `{path}` rejected: {reason}")]
    UnsafeOutput { path: String, reason: String },
    /// The step's /workspace grew past `limits.workspace` while it ran; it was killed.
    #[error("wrote more than the workspace limit of {}", dsl::units::format_size(*.limit))]
    WorkspaceLimit { limit: u64 },
    /// The declared outputs hold more than `limits.outputs` bytes; collection stopped there.
    #[error("outputs exceed the limit of {}", dsl::units::format_size(*.limit))]
    OutputsLimit { limit: u64 },
    #[error("cancelled")]
    Cancelled,
    /// The image the step uses could not be built (names the image, stage and instruction).
    #[error("{0}")]
    ImageFailed(String),
    /// The environment, not the step, failed (daemon unreachable, image missing, disk full).
    /// The sentence says what to do. Makes the run exit 3.
    #[error("{0}")]
    Environment(String),
}

impl StepFailure {
    pub fn is_environment(&self) -> bool {
        matches!(self, StepFailure::Environment(_))
    }
}

/// Runs one step: the scheduler's only view of "doing". The engine's implementation stages the
/// workspace, runs the container through `docker::DockerExecutor` and exports the outputs; scheduler
/// tests use a fake. Implementations must remove every container they create, whatever happens
/// (success, failure, timeout, cancellation).
pub trait Executor: Send + Sync + 'static {
    fn execute(&self, step: Arc<dsl::Step>, ctx: StepContext) -> impl Future<Output = StepOutcome> + Send;
}
