//! One place opens a session for `engine run`, `engine plan` and `engine replay`: the workflow
//! loaded and planned (or, for a replay, the record admitted), the daemon connected and its
//! size asked, the cache store opened, every step's inputs selected and hashed, and the images
//! resolved ([`prepare`]) or, for a dry run, looked up without building ([`images`]).

pub mod images;
pub mod inputs;
pub mod prepare;

use std::path::Path;
use std::sync::Arc;

use cache::Store;

use crate::budget::HostBudget;
use crate::docker::DockerExecutor;
use crate::error::EnvironmentError;
use crate::plan::{self, Plan};
use crate::workspace;

pub use images::StepImages;
pub use prepare::{prepare, resolve_bases, Prepared};

/// Why a command could not start (its exit code is 2 or 3); a run that started ends in a
/// [`crate::events::RunStatus`].
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StartError {
    /// The workflow could not be loaded or is invalid (exit 2).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Load(#[from] dsl::LoadError),
    /// The steps could not be planned (exit 2).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] plan::PlanError),
    /// A step's inputs could not be selected from the workflow folder (exit 2).
    #[error(transparent)]
    Input(#[from] workspace::InputError),
    /// Another invalid request, in a sentence (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// An image could not be built (exit 1, like a failed step).
    #[error("{0}")]
    ImageFailed(String),
    /// The environment failed (exit 3).
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    /// A run record could not be found or read (exit 3 when unreadable, else 2).
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
}

impl StartError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Environment(_) => crate::error::exit::ENVIRONMENT,
            StartError::Record(crate::record::RecordError::Unreadable { .. }) => crate::error::exit::ENVIRONMENT,
            StartError::ImageFailed(_) => crate::error::exit::STEP_FAILED,
            _ => crate::error::exit::INVALID,
        }
    }
}

/// A workflow loaded and planned against a connected daemon.
pub struct Session {
    pub workflow: Arc<dsl::Workflow>,
    pub docker: Arc<DockerExecutor>,
    /// The daemon host's CPUs and memory.
    pub budget: HostBudget,
    pub plan: Plan,
}

impl Session {
    /// Load and validate `file` (a broken workflow is reported even when Docker is down), connect
    /// to the daemon, and plan `targets` against its size. `after_connect` runs between the
    /// connection and the plan (a run removes the leftovers of dead engines there).
    pub async fn open<F, Fut>(
        file: &Path,
        targets: &[String],
        policy: &dsl::policy::Policy,
        after_connect: F,
    ) -> Result<Session, StartError>
    where
        F: FnOnce(Arc<DockerExecutor>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StartError>>,
    {
        let workflow = Arc::new(crate::front::load(file, policy)?);
        let docker = Arc::new(connect().await?);
        after_connect(docker.clone()).await?;
        let budget = docker.host_budget().await?;
        let plan = plan::plan(workflow.clone(), targets, budget)?;
        Ok(Session { workflow, docker, budget, plan })
    }

    /// Select and hash every step's inputs and resolve its image (see [`prepare`]).
    pub async fn prepare(&self, store: &Store, progress: ::images::LogFn<'_>) -> Result<Prepared, StartError> {
        prepare(&self.docker, store, &self.plan, progress).await
    }
}

/// The daemon, connected.
pub async fn connect() -> Result<DockerExecutor, EnvironmentError> {
    DockerExecutor::connect().await
}

/// Load, validate and plan `file` against the given budget, without a daemon (`check`, `graph`).
pub fn load_and_plan(file: &Path, targets: &[String], policy: &dsl::policy::Policy, budget: HostBudget) -> Result<Plan, StartError> {
    let workflow = crate::front::load(file, policy)?;
    Ok(plan::plan(Arc::new(workflow), targets, budget)?)
}

/// Open the cache store in `dir`; a failure is an environment error naming the directory.
pub fn open_store(dir: &Path) -> Result<Store, EnvironmentError> {
    Store::open(dir).map_err(|e| EnvironmentError(format!("cannot use the cache directory {}: {e}", dir.display())))
}

/// A run id: sortable by start time, unique across concurrent engines on one host.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mix = (now.subsec_nanos() as u64) ^ ((std::process::id() as u64) << 20);
    format!("{:x}{:06x}", now.as_secs(), mix & 0xff_ffff)
}
