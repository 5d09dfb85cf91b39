//! Staging: the host side of a step's container. The workspace is made from the source tree
//! (the step's selected inputs) and the collected outputs of its needs (handed over in the job);
//! the cache mounts, secrets and `SOURCE_DATE_EPOCH` are added; then the inner executor (the
//! container runner) runs it. After it: the workspace goes, and a failed step's collect folder.
//!
//! The helpers below ([`with_source_date_epoch`], [`cache_mounts`], [`secrets_for`],
//! [`read_secrets`]) are shared with `engine replay`'s stager.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cache::Store;

use crate::executor::{CacheMountJob, Executor, Job, Outcome, Staged, StepContext, StepFailure};
use crate::workspace::{self, RunDir};

/// Stages from the workflow's folder.
pub struct Staging<E> {
    pub inner: E,
    pub run_dir: Arc<RunDir>,
    pub source_dir: PathBuf,
    /// Each step's selected input files (relative paths, sorted).
    pub inputs: Arc<HashMap<String, Arc<Vec<String>>>>,
    pub store: Arc<Store>,
    /// Secret values by name, read before the run started.
    pub secrets: Arc<HashMap<String, String>>,
    /// When the run started (Unix seconds): no `SOURCE_DATE_EPOCH` is later.
    pub run_started: u64,
}

impl<E: Executor> Executor for Staging<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        let step = job.step.clone();
        let name = step.name.clone();
        let workspace = self.run_dir.workspace(&name);
        let collect_to = self.run_dir.collected(&name);
        let mut upstream_dirs = Vec::new();
        for up in &job.upstream {
            match up.outputs.as_ref().and_then(|o| o.dir.clone()) {
                Some(dir) => upstream_dirs.push(dir),
                // The scheduler starts a step only after its needs succeeded with outputs.
                None => return Outcome::failed(StepFailure::Environment(format!("internal: `{}` has no collected outputs", up.step))),
            }
        }
        let selected = self.inputs.get(&name).cloned().unwrap_or_default();
        let (source, ws, collect) = (self.source_dir.clone(), workspace.clone(), collect_to.clone());
        let staged = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&collect);
            workspace::stage(&source, &selected, &upstream_dirs, &ws)?;
            std::fs::create_dir_all(&collect)
        })
        .await;
        if let Err(e) = staged.map_err(std::io::Error::other).and_then(|r| r) {
            return Outcome::failed(StepFailure::Environment(format!("cannot prepare the workspace of step `{name}`: {e}")));
        }
        let caches = match cache_mounts(&self.store, &step) {
            Ok(c) => c,
            Err(f) => return Outcome::failed(f),
        };
        let epoch = job.key.as_ref().map(|key| crate::record::source_date_epoch(key, self.run_started));
        job.staged = Some(Staged {
            step: with_source_date_epoch(&step, epoch),
            workspace: workspace.clone(),
            collect_to: collect_to.clone(),
            secrets: secrets_for(&step, &self.secrets),
            caches,
        });
        let outcome = self.inner.execute(job, ctx).await;
        // A success, or a step allowed to fail that kept what it wrote: the collect folder stays.
        let executed = outcome.outputs().is_some();
        let _ = tokio::task::spawn_blocking(move || {
            // The workspace is no longer needed; its space is freed as soon as the step ends.
            let _ = std::fs::remove_dir_all(&workspace);
            if !executed {
                // A failed step is never cached, and what it collected (up to a limit) goes now,
                // unless it was allowed to fail and keeps its partial outputs.
                let _ = std::fs::remove_dir_all(&collect_to);
            }
        })
        .await;
        outcome
    }
}

/// The step as its container sees it: with `SOURCE_DATE_EPOCH=epoch` unless the step (or the
/// workflow's `env`) sets it.
pub fn with_source_date_epoch(step: &Arc<dsl::Step>, epoch: Option<u64>) -> Arc<dsl::Step> {
    match epoch {
        Some(epoch) if !step.env.contains_key("SOURCE_DATE_EPOCH") => {
            let mut with = (**step).clone();
            with.env.insert("SOURCE_DATE_EPOCH".to_string(), epoch.to_string());
            Arc::new(with)
        }
        _ => step.clone(),
    }
}

/// The step's persistent cache mounts (`caches:`), each with the folder the store keeps for it.
pub fn cache_mounts(store: &Store, step: &dsl::Step) -> Result<Vec<CacheMountJob>, StepFailure> {
    step.caches
        .iter()
        .map(|mount| match store.mount_dir(&mount.name) {
            Ok(host_dir) => Ok(CacheMountJob { name: mount.name.clone(), path: mount.path.clone(), host_dir }),
            Err(e) => Err(StepFailure::Environment(format!("cannot prepare cache mount `{}`: {e}", mount.name))),
        })
        .collect()
}

/// The values of the secrets the step names (read by [`read_secrets`]).
pub fn secrets_for(step: &dsl::Step, secrets: &HashMap<String, String>) -> Vec<(String, String)> {
    step.secrets.iter().filter_map(|s| secrets.get(s).map(|v| (s.clone(), v.clone()))).collect()
}

/// Read the secrets `steps` name from the environment, before anything starts. Returns the
/// values and, for each one that is not set, `(step, secret)`.
pub fn read_secrets<'a>(steps: impl IntoIterator<Item = (&'a str, &'a [String])>) -> (HashMap<String, String>, Vec<(String, String)>) {
    let mut values = HashMap::new();
    let mut missing = Vec::new();
    for (step, secrets) in steps {
        for name in secrets {
            match std::env::var(name) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(_) => missing.push((step.to_string(), name.clone())),
            }
        }
    }
    (values, missing)
}
