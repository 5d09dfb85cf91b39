//! The image a step runs in: a reference resolved before the run started, or an image under
//! `images:` being built in the background (a step waits for its own image only).

use std::sync::Arc;

use crate::executor::{Executor, Job, Outcome, StepContext};
use crate::session::StepImages;

pub struct Image<E> {
    pub inner: E,
    pub images: Arc<StepImages>,
}

impl<E: Executor> Executor for Image<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        match self.images.resolve(&job.step).await {
            Ok(image) => {
                job.image = Some(image);
                self.inner.execute(job, ctx).await
            }
            Err(failure) => Outcome::failed(failure),
        }
    }
}
