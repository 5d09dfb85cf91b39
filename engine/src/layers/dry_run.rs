//! The dry run of `engine plan` and `engine cache explain`: for each step, what the caching
//! layer would decide (through the same `crate::caching::decide`), without building an image or
//! creating a container. A step whose need will run cannot know its key yet; a step on an image
//! under `images:` is keyed by the image's key, built or not (its build is not predicted here).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cache::{InputEntry, Reason, Store, UpstreamEntry};

use crate::caching::{self, Decision};
use crate::executor::{Executor, Job, Outcome, Outputs, Prediction, RunReason, StepContext, Would};

pub struct DryRun {
    pub store: Arc<Store>,
    pub workflow: String,
    pub no_cache: bool,
    /// Each step's hashed input files.
    pub inputs: HashMap<String, std::sync::Arc<Vec<InputEntry>>>,
    /// Step name -> image identity, for steps using an image reference.
    pub image_identities: HashMap<String, cache::ImageIdentity>,
    /// Image name under `images:` -> its identity (its key), when it could be computed.
    pub built: BTreeMap<String, Option<cache::ImageIdentity>>,
}

impl DryRun {
    fn predict(&self, job: &Job) -> Prediction {
        let step = &job.step;
        let run = |reason: RunReason| Prediction { components: None, would: Would::Run(vec![reason]) };
        let mut upstream = Vec::new();
        for up in &job.upstream {
            match up.outputs.as_ref().and_then(|o| o.digest) {
                Some(outputs) => upstream.push(UpstreamEntry { step: up.step.clone(), outputs }),
                None => return run(RunReason::Cache(Reason::UpstreamWillRun { step: up.step.clone() })),
            }
        }
        let image = match &step.image {
            dsl::ImageRef::Built(name) => match self.built.get(name).cloned().flatten() {
                Some(id) => id,
                None => return run(RunReason::ImageNotBuilt(name.clone())),
            },
            dsl::ImageRef::Reference(reference) => match self.image_identities.get(&step.name) {
                Some(id) => id.clone(),
                // `prepare` resolved every reference; a missing one cannot be keyed.
                None => return run(RunReason::ImageNotBuilt(reference.clone())),
            },
        };
        let inputs = self.inputs.get(&step.name).map(|i| i.as_ref().clone()).unwrap_or_default();
        let components = caching::components(step, &image, inputs, upstream);
        let would = match caching::decide(&self.store, &self.workflow, step, &components, &components.key(), self.no_cache) {
            Decision::Cached(manifest) => {
                Would::Restore(Outputs { digest: Some(manifest.outputs_digest()), dir: None, entries: manifest.entries })
            }
            Decision::Run(reasons) => Would::Run(reasons.into_iter().map(RunReason::Cache).collect()),
        };
        Prediction { components: Some(components), would }
    }
}

impl Executor for DryRun {
    async fn execute(&self, job: Job, _ctx: StepContext) -> Outcome {
        Outcome::Planned(Box::new(self.predict(&job)))
    }
}
