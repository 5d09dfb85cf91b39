//! The stager of `engine replay`, over the container runner: [`FromStore`] stages a recorded
//! step's workspace from the cache store (its recorded input files and the recorded outputs of
//! its needs, never the working tree) and runs it in its recorded image, with its recorded
//! `SOURCE_DATE_EPOCH`. Above it, `super::compare` judges the outputs. No caching layer, no
//! record.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cache::{InputEntry, OutputEntry, Store};

use super::staging::{cache_mounts, secrets_for, with_source_date_epoch};
use crate::executor::{Executor, Job, Outcome, Staged, StepContext, StepFailure, StepImage};
use crate::record::RunRecord;
use crate::workspace::{self, RunDir};

/// Stages a recorded step from the store and runs it in its recorded image.
pub struct FromStore<E> {
    pub inner: E,
    pub store: Arc<Store>,
    pub record: Arc<RunRecord>,
    /// Each replayed step's verified input files.
    pub inputs: Arc<HashMap<String, Arc<Vec<InputEntry>>>>,
    pub run_dir: Arc<RunDir>,
    pub secrets: Arc<HashMap<String, String>>,
}

impl<E: Executor> Executor for FromStore<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        let name = job.step.name.clone();
        let Some(recorded) = self.record.steps.iter().find(|s| s.name == name) else {
            return Outcome::failed(StepFailure::Environment("not in the record".into()));
        };
        let workspace = self.run_dir.workspace(&name);
        let collect = self.run_dir.collected(&name);
        let inputs = self.inputs.get(&name).cloned().unwrap_or_default();
        let (store, record, run_dir, step_name) = (self.store.clone(), self.record.clone(), self.run_dir.clone(), name.clone());
        let (ws, col) = (workspace.clone(), collect.clone());
        let staged = tokio::task::spawn_blocking(move || stage_from_store(&store, &record, &step_name, &inputs, &run_dir, &ws, &col))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = staged {
            return Outcome::failed(StepFailure::Environment(format!("cannot prepare the workspace from the store: {e}")));
        }
        // The admitted definition (today's policy and defaults applied), not the recorded one;
        // with the recorded needs and `SOURCE_DATE_EPOCH`.
        let mut definition = (*job.step).clone();
        definition.needs = recorded.definition.needs.clone();
        let step = with_source_date_epoch(&Arc::new(definition), recorded.source_date_epoch);
        let caches = match cache_mounts(&self.store, &step) {
            Ok(c) => c,
            Err(f) => return Outcome::failed(f),
        };
        // Verified before the replay started: the record names an image (its ID is valid by type).
        let Some(image) = recorded.image.as_ref().map(|i| i.id.clone()) else {
            return Outcome::failed(StepFailure::Environment(format!("the record names no valid image ID for step `{}`", job.step.name)));
        };
        // The identity the step was keyed by (records before identities: its local ID).
        let identity =
            recorded.key_components.as_ref().map_or_else(|| cache::ImageIdentity::Local { id: image.clone() }, |c| c.image.clone());
        job.image = Some(StepImage { run: image.to_string(), id: image, identity, reference: String::new(), bases: Vec::new() });
        let secrets = secrets_for(&step, &self.secrets);
        job.staged = Some(Staged { step, workspace: workspace.clone(), collect_to: collect, secrets, caches });
        let outcome = self.inner.execute(job, ctx).await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&workspace)).await;
        outcome
    }
}

/// The step's workspace: its recorded inputs and its needs' recorded outputs, from the store.
pub fn stage_from_store(
    store: &Store,
    record: &RunRecord,
    name: &str,
    inputs: &[InputEntry],
    run_dir: &RunDir,
    workspace: &Path,
    collect: &Path,
) -> Result<(), String> {
    let step = record.steps.iter().find(|s| s.name == name).ok_or("not in the record")?;
    let safe = cache::store::sanitise(name);
    // The inputs, as a source tree of their own (only the recorded files, at their paths).
    let source = run_dir.path().join("replay-inputs").join(&safe);
    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
    // A symlink input is kept as its target text (that is what its digest covers): staged as a
    // link again, never as a file holding the text.
    let files: Vec<OutputEntry> = inputs
        .iter()
        .map(|i| {
            if i.mode != cache::hash::SYMLINK_MODE {
                return Ok(OutputEntry::File { path: i.path.clone(), mode: i.mode & 0o7777, digest: i.digest, size: 0 });
            }
            let target = store
                .read_blob(&i.digest)
                .filter(|t| cache::Digest::of(t) == i.digest)
                .ok_or_else(|| format!("the target of symlink input `{}` is not in the store (or damaged)", i.path))?;
            let target = String::from_utf8(target).map_err(|_| format!("the target of symlink input `{}` is not UTF-8", i.path))?;
            Ok(OutputEntry::Symlink { path: i.path.clone(), target })
        })
        .collect::<Result<_, String>>()?;
    store.materialise(&files, &source).map_err(|e| e.to_string())?;
    let mut upstream = Vec::new();
    for need in &step.definition.needs {
        let up = record.steps.iter().find(|s| &s.name == need).ok_or_else(|| format!("no step `{need}` in the record"))?;
        let dir = run_dir.path().join("replay-upstream").join(&safe).join(cache::store::sanitise(need));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        store.materialise(&up.outputs, &dir).map_err(|e| format!("outputs of `{need}`: {e}"))?;
        upstream.push(dir);
    }
    let paths: Vec<String> = inputs.iter().map(|i| i.path.clone()).collect();
    workspace::stage(&source, &paths, &upstream, workspace).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(collect).map_err(|e| e.to_string())
}
