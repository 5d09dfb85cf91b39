//! The dry run of `engine plan` and `engine cache explain`: for each step, what the caching
//! layer would decide (through the same `crate::caching::decide`), without building an image or
//! creating a container. A step whose need will run cannot know its key yet; a step on an image
//! under `images:` is keyed by the image's key, built or not (its build is not predicted here).
//! With a remote cache that reads, a step the local store lacks is asked for there (one HEAD): a
//! step it has would be downloaded, and the steps that need it cannot be keyed before that
//! download.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
    /// The remote cache, asked (one HEAD) for the steps the local store lacks, when it reads.
    pub remote: Option<remote::Remote>,
    /// What the remote cache said so far: the steps it has, and its first fault (then it is
    /// asked no more).
    pub remote_state: Mutex<RemoteState>,
}

/// The dry run's view of the remote cache.
#[derive(Debug, Default)]
pub struct RemoteState {
    /// Steps predicted to come from the remote cache.
    pub hits: HashSet<String>,
    /// The first fault.
    pub down: Option<String>,
}

impl DryRun {
    fn remote_state(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.remote_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A local miss: does the remote cache have `key`?
    async fn ask_remote(&self, step: &dsl::Step, key: &cache::ActionKey, reasons: Vec<Reason>) -> Would {
        let mut reasons: Vec<RunReason> = reasons.into_iter().map(RunReason::Cache).collect();
        let Some(remote) = self.remote.as_ref().filter(|r| r.mode().reads() && caching::remote_may_hit(step, self.no_cache)) else {
            return Would::Run(reasons);
        };
        if let Some(why) = self.remote_state().down.clone() {
            reasons.push(RunReason::RemoteUnavailable(why));
            return Would::Run(reasons);
        }
        match remote.has_action(key).await {
            Ok(true) => {
                self.remote_state().hits.insert(step.name.clone());
                Would::Remote
            }
            Ok(false) => Would::Run(reasons),
            Err(e) => {
                let why = e.to_string();
                self.remote_state().down.get_or_insert(why.clone());
                reasons.push(RunReason::RemoteUnavailable(why));
                Would::Run(reasons)
            }
        }
    }

    async fn predict(&self, job: &Job) -> Prediction {
        let step = &job.step;
        let run = |reason: RunReason| Prediction { components: None, would: Would::Run(vec![reason]) };
        let mut upstream = Vec::new();
        for up in &job.upstream {
            match up.outputs.as_ref().and_then(|o| o.digest) {
                Some(outputs) => upstream.push(UpstreamEntry { step: up.step.clone(), outputs }),
                None if self.remote_state().hits.contains(&up.step) => return run(RunReason::UpstreamRemote(up.step.clone())),
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
        let key = components.key();
        let would = match caching::decide(&self.store, &self.workflow, step, &components, &key, self.no_cache) {
            Decision::Cached(manifest) => {
                Would::Restore(Outputs { digest: Some(manifest.outputs_digest()), dir: None, entries: manifest.entries })
            }
            Decision::Run(reasons) => self.ask_remote(step, &key, reasons).await,
        };
        Prediction { components: Some(components), would }
    }
}

impl Executor for DryRun {
    async fn execute(&self, job: Job, _ctx: StepContext) -> Outcome {
        Outcome::Planned(Box::new(self.predict(&job).await))
    }
}
