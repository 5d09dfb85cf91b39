//! The Docker executor: runs one step's container through the Docker API (bollard) with the
//! spec's isolation defaults, moves the workspace in and the outputs out, streams logs (secrets
//! masked), enforces the hard timeout, detects OOM kills, and always removes the container.
//!
//! It must not decide what runs or when (that is the scheduler's), and must never mount anything
//! from the host except the engine's own prepared workspace folder (bind transfer).

pub mod cleanup;

use crate::error::EnvironmentError;
use crate::executor::{StepContext, StepJob, StepOutcome};
use crate::plan::HostBudget;

/// Labels every container, volume and network the engine creates carries.
pub const LABEL_RUN: &str = "engine.run";
pub const LABEL_STEP: &str = "engine.step";
/// Owner of the run (pid, process start time, hostname), so that a later run can tell whether
/// the engine that created a container is still alive.
pub const LABEL_PID: &str = "engine.pid";
pub const LABEL_PID_START: &str = "engine.pid.start";
pub const LABEL_HOST: &str = "engine.host";

/// How the workspace reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Upload/download tar archives through the API: works on every daemon, remote and proxied.
    Archive,
    /// Bind-mount the prepared host folder at /workspace: fast path for a local daemon.
    Bind,
}

pub struct DockerExecutor {
    docker: bollard::Docker,
    transfer: Transfer,
}

impl DockerExecutor {
    /// Connect to the daemon named by DOCKER_HOST (or the default socket), negotiate the API
    /// version (daemons as old as API 1.41 must work), and pick the transfer automatically
    /// (`ENGINE_TRANSFER=archive|bind` overrides).
    pub async fn connect() -> Result<Self, EnvironmentError> {
        todo!()
    }

    pub fn with_transfer(mut self, transfer: Transfer) -> Self {
        self.transfer = transfer;
        self
    }

    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    pub fn client(&self) -> &bollard::Docker {
        &self.docker
    }

    /// CPUs and memory of the daemon's host.
    pub async fn host_budget(&self) -> Result<HostBudget, EnvironmentError> {
        todo!()
    }

    /// Error (exit 3) if `reference` is not present locally, with a sentence saying how to get it.
    pub async fn check_image(&self, _reference: &str) -> Result<(), EnvironmentError> {
        todo!()
    }

    /// Run one step's container to the end and remove it.
    pub async fn run_step(&self, _job: StepJob, _ctx: StepContext) -> StepOutcome {
        todo!()
    }
}
