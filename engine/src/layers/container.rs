//! The bottom layer: one container through the Docker executor, from the job as the stager left
//! it (image, workspace, collect folder, mounts, secrets).

use std::sync::Arc;

use crate::docker::DockerExecutor;
use crate::executor::{Executor, Job, Outcome, StepContext, StepFailure, StepJob};

/// Runs a staged job's container; the step's log lines also go where [`Job::logs`] keeps them.
pub struct Container {
    pub docker: Arc<DockerExecutor>,
    /// Put on every container (`engine.run`): what cleanup finds them by.
    pub run_id: String,
}

impl Executor for Container {
    async fn execute(&self, job: Job, ctx: StepContext) -> Outcome {
        let (Some(staged), Some(image)) = (job.staged, job.image) else {
            return Outcome::failed(StepFailure::Environment(format!("internal: step `{}` reached the container unstaged", job.step.name)));
        };
        let events = match job.logs.as_ref().and_then(|logs| logs.open()) {
            Some(sink) => ctx.events.capturing_logs_into(sink),
            None => ctx.events.clone(),
        };
        let collect_to = staged.collect_to.clone();
        let step_job = StepJob {
            run_id: self.run_id.clone(),
            step: staged.step,
            image: image.run,
            workspace: staged.workspace,
            collect_to: staged.collect_to,
            secrets: staged.secrets,
            caches: staged.caches,
        };
        let outcome = self.docker.run_step(step_job, StepContext { events, cancel: ctx.cancel }).await;
        Outcome::from_container(outcome, collect_to)
    }
}
