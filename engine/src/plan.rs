//! The planner: turns a validated [`dsl::Workflow`] and the user's target steps into a [`Plan`]:
//! which steps run, in which dependency order, with which resolved settings. It checks what only
//! the host can tell (a step larger than the whole CPU/memory budget is an error now, not a
//! deadlock later).
//!
//! The planner never talks to Docker and never touches the filesystem.

use std::sync::Arc;

/// What the host offers the scheduler: the sum of what running steps may reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostBudget {
    pub millicpus: u64,
    pub memory: u64,
}

/// One step of a plan.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub step: Arc<dsl::Step>,
    /// Indexes into [`Plan::steps`] of this step's direct `needs`.
    pub needs: Vec<usize>,
}

/// The selected steps in a topological order (ties broken by file order).
#[derive(Debug, Clone)]
pub struct Plan {
    pub workflow: Arc<dsl::Workflow>,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    #[error("no step named `{name}` in the workflow")]
    #[diagnostic(help("{help}"))]
    UnknownTarget { name: String, help: String },
    /// A step asks for more CPU or memory than the host has; it could never be scheduled.
    #[error(transparent)]
    #[diagnostic(transparent)]
    TooLarge(Box<dsl::Diagnostic>),
}

/// Plan `targets` (all steps if empty) and everything they need.
pub fn plan(_workflow: Arc<dsl::Workflow>, _targets: &[String], _budget: HostBudget) -> Result<Plan, PlanError> {
    todo!("planner")
}
