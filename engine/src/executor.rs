//! The boundary between deciding and doing: the scheduler hands one [`Job`] at a time to an
//! [`Executor`] and gets an [`Outcome`] back. Executors stack as layers (the `layers` module): the
//! run record, the image a step uses, the cache, staging, and the container runner at the
//! bottom; `engine plan` uses a dry-run executor and `engine replay` a stager that reads the
//! store. An executor runs exactly one step and never looks at the graph: what the steps it
//! needs produced comes in the job ([`Job::upstream`]), handed over by the scheduler.
//!
//! The container runner's own interface ([`StepJob`] in, [`StepOutcome`] out) stays below the
//! layers: it is what `docker::DockerExecutor::run_step` takes and returns.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cache::{ActionKey, Digest, KeyComponents, OutputEntry};
use tokio_util::sync::CancellationToken;

use crate::events::{EventSink, LogSink};

/// One step to execute, as the scheduler hands it over; the layers fill in the rest on the way
/// down (each field below `upstream` is set by the layer that owns it, `None` until then).
#[derive(Clone)]
pub(crate) struct Job {
    pub step: Arc<dsl::Step>,
    /// One entry per `needs` of the step, in its order: what each produced in this run.
    pub upstream: Vec<Upstream>,
    /// The image the container is created from (set by the image layer, or a replay's stager).
    pub image: Option<StepImage>,
    /// The step's action key (set by the caching layer).
    pub key: Option<ActionKey>,
    /// The host side of the container: workspace, collect folder, mounts (set by a stager).
    pub staged: Option<Staged>,
    /// Where the step's log is kept, when a layer above keeps it (the run record).
    pub logs: Option<Arc<dyn StepLogs>>,
    /// Told what the layers below learn on their way down (the run record listens).
    pub notes: Notes,
}

impl Job {
    /// A job for `step` with what its needs produced; nothing else decided yet.
    pub fn new(step: Arc<dsl::Step>, upstream: Vec<Upstream>) -> Job {
        Job { step, upstream, image: None, key: None, staged: None, logs: None, notes: Notes::default() }
    }
}

/// What one step this job needs produced.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub step: String,
    /// `None` only in a dry run, for a need that will run (its outputs are not known yet).
    pub outputs: Option<Outputs>,
}

/// The outputs of a step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outputs {
    /// The digest over `entries` (what the dependents' keys cover); `None` when nobody hashed
    /// them (a replay, which runs without the caching layer, compares entries instead).
    pub digest: Option<Digest>,
    /// Where the collected files are on the host (the dependents' workspaces are staged from
    /// here); `None` when nothing was collected (a dry run) or they were moved to the output
    /// folder because no step needs them.
    pub dir: Option<PathBuf>,
    /// Every file, folder and symlink, with content digests (empty when not hashed).
    pub entries: Vec<OutputEntry>,
}

impl Outputs {
    /// Files collected in `dir`, not hashed yet.
    pub fn collected(dir: PathBuf) -> Outputs {
        Outputs { digest: None, dir: Some(dir), entries: Vec::new() }
    }
}

/// The image a step runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepImage {
    /// What the container is created from (the image ID for built images).
    pub run: String,
    /// The image ID (`sha256:...`), for the record.
    pub id: cache::ImageId,
    /// What enters the key: the stage key of an engine-built image, the registry digest of a
    /// pulled one, else the ID.
    pub identity: cache::ImageIdentity,
    /// As the record names it: the reference, or `images.<name>` for an engine-built image.
    pub reference: String,
    /// For an engine-built image: the images it was built from (reference, ID).
    pub bases: Vec<(String, cache::ImageId)>,
}

/// The host side of one container, prepared by a stager.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    /// The step as the container sees it (`SOURCE_DATE_EPOCH` added).
    pub step: Arc<dsl::Step>,
    pub workspace: PathBuf,
    pub collect_to: PathBuf,
    pub secrets: Vec<(String, String)>,
    pub caches: Vec<CacheMountJob>,
}

/// What happened to one step. Exactly one of these; the outputs travel with the successes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The container ran and exited 0; its outputs were collected.
    Executed { outputs: Outputs, duration: Duration, exit_code: i64 },
    /// The outputs came from the cache (`source`: the local store, or the remote cache through
    /// it); no container was created.
    Restored { outputs: Outputs, exit_code: i64, source: crate::events::CacheSource },
    /// The step failed (`reason` is never `Cancelled` or `TimedOut`: those have their own cases).
    /// `partial`: the declared outputs that existed when it ended, collected for a step with
    /// `continue_on_error` (never cached; exported, and staged for the steps that need it).
    Failed { reason: StepFailure, duration: Duration, exit_code: Option<i64>, partial: Option<Outputs> },
    /// The step ran longer than its `limits.timeout` and was stopped (`partial` as for `Failed`).
    TimedOut { limit: Duration, duration: Duration, exit_code: Option<i64>, partial: Option<Outputs> },
    /// The run was interrupted while the step ran (or before it started).
    Cancelled { duration: Duration },
    /// A dry run: what would happen.
    Planned(Box<Prediction>),
}

impl Outcome {
    /// A failure before any container existed.
    pub fn failed(reason: StepFailure) -> Outcome {
        match reason {
            StepFailure::Cancelled => Outcome::Cancelled { duration: Duration::ZERO },
            StepFailure::TimedOut(limit) => Outcome::TimedOut { limit, duration: Duration::ZERO, exit_code: None, partial: None },
            reason => Outcome::Failed { reason, duration: Duration::ZERO, exit_code: None, partial: None },
        }
    }

    /// The outputs the steps that need this one get (for a failure, the partial outputs kept
    /// for a step with `continue_on_error`, if any).
    pub fn outputs(&self) -> Option<&Outputs> {
        match self {
            Outcome::Executed { outputs, .. } | Outcome::Restored { outputs, .. } => Some(outputs),
            Outcome::Failed { partial, .. } | Outcome::TimedOut { partial, .. } => partial.as_ref(),
            Outcome::Planned(prediction) => match &prediction.would {
                Would::Restore(outputs) => Some(outputs),
                Would::Remote | Would::Run(_) => None,
            },
            _ => None,
        }
    }

    /// Why the step did not succeed, as a failure (`None` for a success or a prediction).
    pub fn failure(&self) -> Option<StepFailure> {
        match self {
            Outcome::Failed { reason, .. } => Some(reason.clone()),
            Outcome::TimedOut { limit, .. } => Some(StepFailure::TimedOut(*limit)),
            Outcome::Cancelled { .. } => Some(StepFailure::Cancelled),
            _ => None,
        }
    }

    /// Wall time of the container (zero if none ran).
    pub fn duration(&self) -> Duration {
        match self {
            Outcome::Executed { duration, .. }
            | Outcome::Failed { duration, .. }
            | Outcome::TimedOut { duration, .. }
            | Outcome::Cancelled { duration } => *duration,
            Outcome::Restored { .. } | Outcome::Planned(_) => Duration::ZERO,
        }
    }

    /// The exit code of the container, or of the run that filled the cache entry.
    pub fn exit_code(&self) -> Option<i64> {
        match self {
            Outcome::Executed { exit_code, .. } | Outcome::Restored { exit_code, .. } => Some(*exit_code),
            Outcome::Failed { exit_code, .. } | Outcome::TimedOut { exit_code, .. } => *exit_code,
            Outcome::Cancelled { .. } | Outcome::Planned(_) => None,
        }
    }

    /// The same failure with its partial outputs dropped: what the steps that need it get when
    /// they cannot be used (the export failed).
    pub fn without_partial(self) -> Outcome {
        match self {
            Outcome::Failed { reason, duration, exit_code, .. } => Outcome::Failed { reason, duration, exit_code, partial: None },
            Outcome::TimedOut { limit, duration, exit_code, .. } => Outcome::TimedOut { limit, duration, exit_code, partial: None },
            other => other,
        }
    }

    /// The partial outputs of a failure, to fill in (hash, export).
    pub fn partial_mut(&mut self) -> Option<&mut Outputs> {
        match self {
            Outcome::Failed { partial, .. } | Outcome::TimedOut { partial, .. } => partial.as_mut(),
            _ => None,
        }
    }

    /// The outputs to export: a success's, or a failure's partial outputs.
    pub fn outputs_mut(&mut self) -> Option<&mut Outputs> {
        match self {
            Outcome::Executed { outputs, .. } | Outcome::Restored { outputs, .. } => Some(outputs),
            other => other.partial_mut(),
        }
    }

    /// The container runner's result as an outcome; a success carries the collect folder, and so
    /// does a failure whose partial outputs were collected.
    pub fn from_container(outcome: StepOutcome, collect_to: PathBuf) -> Outcome {
        let StepOutcome { result, duration, exit_code, partial, .. } = outcome;
        let partial = partial.then(|| Outputs::collected(collect_to.clone()));
        match result {
            Ok(()) => Outcome::Executed { outputs: Outputs::collected(collect_to), duration, exit_code: exit_code.unwrap_or(0) },
            Err(StepFailure::Cancelled) => Outcome::Cancelled { duration },
            Err(StepFailure::TimedOut(limit)) => Outcome::TimedOut { limit, duration, exit_code, partial },
            Err(reason) => Outcome::Failed { reason, duration, exit_code, partial },
        }
    }
}

/// What a dry run predicts for one step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prediction {
    /// The key's components; `None` when they cannot be known yet (a need or the image first).
    pub components: Option<KeyComponents>,
    pub would: Would,
}

/// Restore or run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Would {
    /// Its key has a cache entry: restored, no container (the entry's outputs, not collected).
    Restore(Outputs),
    /// The local store lacks its entry and the remote cache has one (a HEAD said so): a run
    /// downloads it and creates no container. Its outputs are not known without the download.
    Remote,
    /// It runs, for these reasons (never empty).
    Run(Vec<RunReason>),
}

/// Why a step would run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunReason {
    /// What the cache says (never run, changed inputs, a need that will run, ...).
    Cache(cache::Reason),
    /// The image under `images:` it uses has no image for its current definition yet.
    ImageNotBuilt(String),
    /// The newest run record of the workflow in which the step ran says it failed (run id).
    FailedLastRun(String),
    /// A step it needs comes from the remote cache: its key is known once those outputs are
    /// downloaded (the run may find this step in a cache too).
    UpstreamRemote(String),
    /// The remote cache could not be asked (`engine plan` says so and predicts a run).
    RemoteUnavailable(String),
}

impl std::fmt::Display for RunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunReason::Cache(reason) => reason.fmt(f),
            RunReason::ImageNotBuilt(name) => write!(f, "image `{name}` is not built yet"),
            RunReason::FailedLastRun(run) => write!(f, "failed in the last run ({run})"),
            RunReason::UpstreamRemote(step) => {
                write!(f, "needs `{step}`, whose outputs come from the remote cache (key known after the download)")
            }
            RunReason::RemoteUnavailable(why) => write!(f, "remote cache not asked: {why}"),
        }
    }
}

/// Where a step's log is kept (the run record's log file), for the layers below the one that
/// keeps it: the container runner streams lines into it; the caching layer stores the same bytes
/// with the cache entry, or keeps a restored entry's log instead.
pub(crate) trait StepLogs: Send + Sync {
    /// The container is about to start: where its log lines go (`None`: the log cannot be kept;
    /// the step runs without it).
    fn open(&self) -> Option<Arc<dyn LogSink>>;
    /// No more lines: the bytes kept (at most the log limit). Blocks (call it off the async
    /// workers).
    fn finish(&self) -> std::io::Result<Vec<u8>>;
    /// The step did not run: keep the restored cache entry's log (the store's blob at `blob`,
    /// checked to hold `digest`) as its log. Blocks.
    fn keep(&self, blob: &std::path::Path, digest: cache::Digest);
}

/// What a layer learns about a step on its way down, for the layers above.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    /// The caching layer computed the step's key from these components, for this image.
    Keyed { key: cache::ActionKey, components: Arc<KeyComponents>, image: StepImage },
    /// The step's input manifest is in the store under this digest (stored by this run, or by
    /// the run that made the restored entry); the record refers to it.
    InputManifest(cache::Digest),
}

/// Where [`Note`]s go: nowhere by default; the recording layer listens.
#[derive(Clone, Default)]
pub(crate) struct Notes(Option<Arc<dyn Fn(Note) + Send + Sync>>);

impl Notes {
    pub fn to(f: impl Fn(Note) + Send + Sync + 'static) -> Notes {
        Notes(Some(Arc::new(f)))
    }

    pub fn tell(&self, note: Note) {
        if let Some(f) = &self.0 {
            f(note)
        }
    }
}

/// Runs one step: the scheduler's only view of "doing". Implementations must remove every
/// container they create, whatever happens (success, failure, timeout, cancellation).
pub(crate) trait Executor: Send + Sync + 'static {
    fn execute(&self, job: Job, ctx: StepContext) -> impl Future<Output = Outcome> + Send;
}

impl<E: Executor> Executor for Arc<E> {
    fn execute(&self, job: Job, ctx: StepContext) -> impl Future<Output = Outcome> + Send {
        (**self).execute(job, ctx)
    }
}

// ---- The container runner's interface (what `docker::DockerExecutor::run_step` speaks). ----

/// Everything the Docker executor needs to run one step's container.
#[derive(Debug, Clone)]
pub struct StepJob {
    /// The run's id, put on the container as a label (cleanup finds it by this).
    pub run_id: String,
    /// The step as the workflow defines it (command, env, limits, isolation, outputs).
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

/// One persistent cache mount (`caches:`) of a step.
#[derive(Debug, Clone)]
pub struct CacheMountJob {
    /// The cache's name (steps naming the same cache share it).
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    /// The engine's persistent folder for this cache name.
    pub host_dir: PathBuf,
}

/// Per-step plumbing: where logs go and how to tell the step to stop.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Where the step's log lines (masked) and events go.
    pub events: EventSink,
    /// Cancelled on SIGINT/SIGTERM; the executor kills and removes its container. (Fail-fast does
    /// not cancel: running steps finish, only new starts stop.)
    pub cancel: CancellationToken,
}

/// The container runner's raw result (see [`Outcome::from_container`] for what the layers make
/// of it). `cached` is never set by the runner; it goes when the Docker crate has a result type
/// of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// `Ok` when the container exited 0 and its outputs were collected.
    pub result: Result<(), StepFailure>,
    /// Wall time of the container (start to exit); zero if it never started.
    pub duration: Duration,
    /// The container's exit code, when it exited by itself.
    pub exit_code: Option<i64>,
    /// Unused by the container runner (always false).
    pub cached: bool,
    /// After a failure: the declared outputs that existed were collected (only for a step with
    /// `continue_on_error`).
    pub partial: bool,
}

/// Why a step failed. `Display` is the sentence shown to users.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepFailure {
    /// The command exited with this non-zero code.
    #[error("exited with code {0}")]
    Exit(i64),
    /// The step ran past its timeout (the limit given) and was stopped.
    #[error("timed out after {}", dsl::units::format_duration(*.0))]
    TimedOut(Duration),
    /// The kernel killed the container for exceeding its memory limit.
    #[error("killed: out of memory (limit {})", dsl::units::format_size(*.limit))]
    OutOfMemory {
        /// The step's memory limit in bytes.
        limit: u64,
    },
    /// A declared output path does not exist after exit 0; names it.
    #[error("declared output `{0}` does not exist after the step exited 0")]
    MissingOutput(String),
    /// An output was refused at collection (a symlink leading out of /workspace, a special file...).
    #[error("output `{path}` rejected: {reason}")]
    UnsafeOutput {
        /// The output path, relative to /workspace.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The step's /workspace grew past `limits.workspace` while it ran; it was killed.
    #[error("wrote more than the workspace limit of {}", dsl::units::format_size(*.limit))]
    WorkspaceLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The declared outputs hold more than `limits.outputs` bytes; collection stopped there.
    #[error("outputs exceed the limit of {}", dsl::units::format_size(*.limit))]
    OutputsLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The step was stopped because the run was cancelled (or it stopped saying so itself).
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
    pub(crate) fn is_environment(&self) -> bool {
        matches!(self, StepFailure::Environment(_))
    }
}
