//! The engine's side of the Docker boundary: adapters from the engine's types to the `docker`
//! crate's (a step's IR becomes a [`docker::run::ContainerSpec`], a container's
//! [`docker::run::Finished`] becomes a [`StepOutcome`], daemon errors become
//! [`EnvironmentError`]s), under the names the rest of the engine has always used. No Docker API
//! here: everything that talks to the daemon lives in the `docker` crate.

pub mod cleanup;
pub mod owner;

use crate::budget::HostBudget;
use crate::error::EnvironmentError;
use crate::events::{Event, Stream};
use crate::executor::{StepContext, StepFailure, StepJob, StepOutcome};

pub use docker::labels::{cache_volume_name, container_name, LABEL_CACHE, LABEL_HOST, LABEL_PID, LABEL_PID_START, LABEL_RUN, LABEL_STEP};
pub use docker::{
    kill_all_now, live, remove_temp_now, Daemon, ImageId, Live, Transfer, CALL_TIMEOUT_VAR, CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT,
    DEFAULT_DOCKER_HOST, DEFAULT_STOP_GRACE, STOP_GRACE_VAR,
};

/// The grace period of the stop ladder (see [`DEFAULT_STOP_GRACE`]); `Err` with a sentence when
/// `ENGINE_STOP_GRACE` is not a duration.
pub fn stop_grace() -> Result<std::time::Duration, String> {
    docker::error::stop_grace().map_err(|e| e.to_string())
}

/// Runs steps' containers on one daemon.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    daemon: Daemon,
}

impl DockerExecutor {
    /// Connect to the daemon named by DOCKER_HOST (see [`Daemon::connect`]).
    pub async fn connect() -> Result<Self, EnvironmentError> {
        Ok(DockerExecutor { daemon: Daemon::connect().await.map_err(environment)? })
    }

    /// Connect to the daemon at `host`, ignoring DOCKER_HOST and ENGINE_TRANSFER.
    pub async fn connect_to(host: &str) -> Result<Self, EnvironmentError> {
        Ok(DockerExecutor { daemon: Daemon::connect_to(host).await.map_err(environment)? })
    }

    /// The same executor with another transfer.
    pub fn with_transfer(self, transfer: Transfer) -> Self {
        DockerExecutor { daemon: self.daemon.with_transfer(transfer) }
    }

    /// How workspaces reach containers.
    pub fn transfer(&self) -> Transfer {
        self.daemon.transfer()
    }

    /// The daemon connection (for image builds, cleanup, image inspection).
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// CPUs and memory of the daemon's host.
    pub async fn host_budget(&self) -> Result<HostBudget, EnvironmentError> {
        let info = self.daemon.host_info().await.map_err(environment)?;
        Ok(HostBudget { millicpus: info.cpus * 1000, memory: info.memory })
    }

    /// Error (exit 3) if `reference` is not present locally, with a sentence saying how to get it.
    pub async fn check_image(&self, reference: &str) -> Result<(), EnvironmentError> {
        self.image_id(reference).await.map(|_| ())
    }

    /// The image ID `reference` resolves to now; a missing image is an error (exit 3) with the
    /// same sentence as [`Self::check_image`]. Step keys use the ID, not the tag, so a re-tagged
    /// image changes them.
    pub async fn image_id(&self, reference: &str) -> Result<ImageId, EnvironmentError> {
        self.daemon.image_id(reference).await.map_err(environment)
    }

    /// Run one step's container to the end; its removal is started, and awaited by the run's
    /// final sweep.
    pub async fn run_step(&self, job: StepJob, ctx: StepContext) -> StepOutcome {
        let spec = container_spec(&job);
        let (events, step) = (ctx.events.clone(), job.step.name.clone());
        let mut log = |stream: docker::lines::Stream, line: String| {
            let stream = match stream {
                docker::lines::Stream::Stdout => Stream::Stdout,
                docker::lines::Stream::Stderr => Stream::Stderr,
            };
            events.emit(Event::Log { step: step.clone(), stream, line });
        };
        // Removed off the critical path; the run's final sweep (`cleanup::remove_run`) waits for it.
        let finished = self.daemon.run_releasing_later(&spec, &ctx.cancel, &mut log).await;
        StepOutcome {
            result: finished.result.map_err(StepFailure::from),
            duration: finished.duration,
            exit_code: finished.exit_code,
            cached: false,
            partial: finished.partial,
        }
    }
}

/// The daemon's version and API version, for run records ("unknown" if it does not say).
pub(crate) async fn daemon_version(daemon: &Daemon) -> (String, String) {
    daemon.version().await
}

/// A `docker` crate error as the engine's environment failure (exit 3): its sentence.
pub fn environment(err: impl std::error::Error) -> EnvironmentError {
    EnvironmentError(err.to_string())
}

/// The container a step runs in: the step's resolved IR with the spec's isolation defaults.
fn container_spec(job: &StepJob) -> docker::run::ContainerSpec {
    let step = &job.step;
    let l = step.limits;
    docker::run::ContainerSpec {
        run_id: job.run_id.clone(),
        step: step.name.clone(),
        image: job.image.clone(),
        argv: step.command.argv(),
        env: step.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        workdir: Some(step.workdir.clone()).filter(|w| !w.is_empty()),
        user: docker::run::User { uid: step.isolation.user.uid, gid: step.isolation.user.gid },
        network: step.isolation.network.as_str().to_string(),
        limits: docker::run::Limits {
            millicpus: l.millicpus,
            memory: l.memory,
            pids: l.pids,
            tmpfs: l.tmpfs,
            timeout: l.timeout,
            workspace: l.workspace,
            outputs: l.outputs,
        },
        secrets: job.secrets.clone(),
        caches: job
            .caches
            .iter()
            .map(|c| docker::run::CacheMount { name: c.name.clone(), path: c.path.clone(), host_dir: c.host_dir.clone() })
            .collect(),
        workspace: job.workspace.clone(),
        collect_to: job.collect_to.clone(),
        outputs: step.outputs.clone(),
        // Docker mounts a tmpfs `noexec` unless told otherwise; only the sandbox keeps that.
        tmp_exec: step.tmp_exec(),
        // A step allowed to fail keeps what it wrote before it failed (an analyst wants the
        // partial stdout of a program that timed out).
        partial_outputs: step.continue_on_error,
    }
}

impl From<docker::run::Failure> for StepFailure {
    fn from(f: docker::run::Failure) -> StepFailure {
        use docker::run::Failure as F;
        match f {
            F::Exit(code) => StepFailure::Exit(code),
            F::TimedOut(after) => StepFailure::TimedOut(after),
            F::OutOfMemory { limit } => StepFailure::OutOfMemory { limit },
            F::MissingOutput(path) => StepFailure::MissingOutput(path),
            F::UnsafeOutput { path, reason } => StepFailure::UnsafeOutput { path, reason },
            F::WorkspaceLimit { limit } => StepFailure::WorkspaceLimit { limit },
            F::OutputsLimit { limit } => StepFailure::OutputsLimit { limit },
            F::Cancelled => StepFailure::Cancelled,
            F::Environment(sentence) => StepFailure::Environment(sentence),
        }
    }
}

/// The one conversion of an image build's failure into a step's: the environment failing is
/// exit 3, a cancelled build is a cancellation, anything else is the image failing (exit 1).
impl From<images::BuildError> for StepFailure {
    fn from(e: images::BuildError) -> StepFailure {
        match e {
            images::BuildError::Cancelled(_) => StepFailure::Cancelled,
            e if e.is_environment() => StepFailure::Environment(e.to_string()),
            other => StepFailure::ImageFailed(other.to_string()),
        }
    }
}
