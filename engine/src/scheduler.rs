//! The scheduler: runs a [`Plan`] through an [`Executor`], starting every step whose needs have
//! succeeded, in parallel, bounded by `jobs` and by the CPU/memory [`HostBudget`] (a step reserves
//! its `limits.cpus` and `limits.memory` while it runs). Fail-fast by default: after a failure no
//! new step starts and the run ends once running steps finish; `keep_going` runs every step whose
//! needs succeeded. Cancellation stops dispatch and cancels running steps.
//!
//! The scheduler never talks to Docker or the filesystem: it only orders work.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::events::{EventSink, RunStatus, StepSummary};
use crate::executor::Executor;
use crate::plan::{HostBudget, Plan};

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub jobs: usize,
    pub budget: HostBudget,
    pub keep_going: bool,
}

/// What the scheduler reports when every step has ended or been skipped.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub status: RunStatus,
    /// One row per planned step, in plan order.
    pub steps: Vec<StepSummary>,
}

/// Emits `StepStarted`, `StepFinished`, `StepFailed` and `StepSkipped` events (not `RunStarted` /
/// `RunFinished`: those belong to the caller).
pub async fn run<E: Executor>(
    _plan: &Plan,
    _executor: Arc<E>,
    _config: SchedulerConfig,
    _events: EventSink,
    _cancel: CancellationToken,
) -> RunReport {
    todo!("scheduler")
}
