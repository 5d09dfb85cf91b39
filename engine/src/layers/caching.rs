//! The caching layer: the step's key (from its definition, image, input files and the outputs of
//! its needs), then the decision of `crate::caching::decide`. A hit calls no inner executor: its
//! entry is checked (every blob re-hashed) and, when a later step of the run stages from its
//! outputs, restored into the step's collect folder; otherwise the outputs stay in the store and
//! the export layer takes them from there (or finds them exported already). A miss stores the
//! inputs' contents (for `engine replay`), calls the inner executor, and puts what an executed
//! step produced into the store. With a remote cache, a local miss is looked up there (a hit is
//! downloaded into the store, then restored like a local one), and what an executed step stored
//! is uploaded in the background.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cache::{InputEntry, Store, UpstreamEntry};

use crate::caching::{self, Decision};
use crate::events::CacheSource;
use crate::executor::{Executor, Job, Note, Outcome, Outputs, StepContext, StepFailure};
use crate::remote_cache::RemoteCache;
use crate::workspace::RunDir;

pub struct Caching<E> {
    pub inner: E,
    pub store: Arc<Store>,
    /// The workflow's name (the store's "last run" of a step is kept per workflow and step).
    pub workflow: String,
    /// `--no-cache`: execute every step (results are still stored).
    pub no_cache: bool,
    /// Each step's hashed input files (sorted by path).
    pub inputs: Arc<HashMap<String, Arc<Vec<InputEntry>>>>,
    pub run_dir: Arc<RunDir>,
    /// The workflow's folder, where the input files are read from.
    pub source_dir: std::path::PathBuf,
    /// Steps some planned step needs: a hit of one of them is restored into its collect folder,
    /// which the needing steps' workspaces are staged from.
    pub needed: Arc<HashSet<String>>,
    /// `--remote-cache`: looked up after a local miss; executed steps are uploaded to it.
    pub remote: Option<Arc<RemoteCache>>,
}

impl<E: Executor> Executor for Caching<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        let step = job.step.clone();
        let name = step.name.clone();
        let mut upstream = Vec::new();
        for up in &job.upstream {
            match up.outputs.as_ref().and_then(|o| o.digest) {
                Some(outputs) => upstream.push(UpstreamEntry { step: up.step.clone(), outputs }),
                // The scheduler starts a step only after its needs succeeded.
                None => return Outcome::failed(StepFailure::Environment(format!("internal: `{}` has no recorded outputs", up.step))),
            }
        }
        let Some(image) = job.image.clone() else {
            return Outcome::failed(StepFailure::Environment(format!("internal: step `{name}` has no image")));
        };
        let inputs = self.inputs.get(&name).map(|i| i.as_ref().clone()).unwrap_or_default();
        let components = Arc::new(caching::components(&step, &image.identity, inputs, upstream));
        let key = components.key();
        job.key = Some(key);
        job.notes.tell(Note::Keyed { key, components: components.clone(), image });

        let hit = match caching::decide(&self.store, &self.workflow, &step, &components, &key, self.no_cache) {
            // A prefetch of this run may have put it there: then it came from the remote cache.
            Decision::Cached(manifest) => {
                let prefetched = self.remote.as_ref().is_some_and(|r| r.downloaded(&key));
                Some((*manifest, if prefetched { CacheSource::Remote } else { CacheSource::Local }))
            }
            // A local miss: the remote cache may have it (downloaded into the store, checked).
            Decision::Run(_) => match &self.remote {
                Some(remote) if caching::remote_may_hit(&step, self.no_cache) => {
                    remote.fetch(&self.store, &key, &name).await.map(|m| (m, CacheSource::Remote))
                }
                _ => None,
            },
        };
        if let Some((manifest, source)) = hit {
            if let Some(outcome) = self.restore(&job, manifest, source).await {
                if matches!(outcome, Outcome::Restored { .. }) {
                    let _ = self.store.record_last(&self.workflow, &name, &key, &components);
                }
                return outcome;
            }
        }

        // The inputs' contents go to the store (once per content): `engine replay` re-creates
        // the workspace from there, whatever happens to the working tree later.
        let (store, source, hashed) = (self.store.clone(), self.source_dir.clone(), components.inputs.clone());
        let stored = tokio::task::spawn_blocking(move || store.store_inputs(&source, &hashed)).await;
        match stored {
            Ok(Ok(changed)) if !changed.is_empty() => {
                tracing::warn!(files = ?changed, "inputs changed while the run started; a replay will miss them");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Outcome::failed(StepFailure::Environment(format!("cannot prepare the workspace of step `{name}`: {e}"))),
            Err(e) => return Outcome::failed(StepFailure::Environment(format!("cannot prepare the workspace of step `{name}`: {e}"))),
        }

        let (logs, notes) = (job.logs.clone(), job.notes.clone());
        let mut outcome = self.inner.execute(job, ctx).await;
        if let Some(partial) = outcome.partial_mut() {
            // A failure allowed to fail: its partial outputs are hashed for the steps that need
            // it, never stored under its key (the next run runs it again).
            let Some(dir) = partial.dir.clone() else { return outcome };
            match tokio::task::spawn_blocking(move || cache::store::scan_outputs(&dir)).await {
                Ok(Ok(entries)) => {
                    partial.digest = Some(cache::store::outputs_digest(&entries));
                    partial.entries = entries;
                }
                _ => return outcome.without_partial(),
            }
            return outcome;
        }
        let Outcome::Executed { outputs: Outputs { dir: Some(dir), .. }, duration, exit_code } = outcome else { return outcome };
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let (store, wf, step_name, collected) = (self.store.clone(), self.workflow.clone(), name.clone(), dir.clone());
        let manifest = tokio::task::spawn_blocking(move || -> Result<cache::Manifest, String> {
            // The kept log (at most the log limit) is what the cache entry's log digest covers.
            let log = match &logs {
                Some(logs) => logs.finish().map_err(|e| format!("cannot write the step log: {e}"))?,
                None => Vec::new(),
            };
            let manifest = store
                .put(key, &wf, &step_name, &collected, 0, &log, duration_ms, Some(components.inputs.as_slice()))
                .map_err(|e| format!("cannot store the outputs in the cache: {e}"))?;
            let _ = store.record_last(&wf, &step_name, &key, &components);
            Ok(manifest)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match manifest {
            Ok(manifest) => {
                // Shared in the background: a downstream step never waits for an upload.
                if let Some(remote) = &self.remote {
                    remote.upload(&name, self.store.clone(), manifest.clone());
                }
                if let Some(inputs) = manifest.inputs {
                    notes.tell(Note::InputManifest(inputs));
                }
                let outputs = Outputs { digest: Some(manifest.outputs_digest()), dir: Some(dir), entries: manifest.entries };
                Outcome::Executed { outputs, duration, exit_code }
            }
            Err(e) => {
                let reason = StepFailure::Environment(format!("step `{name}`: {e}"));
                Outcome::Failed { reason, duration, exit_code: Some(exit_code), partial: None }
            }
        }
    }
}

impl<E> Caching<E> {
    /// Restore a hit into the step's collect folder. `None` when the entry turned out damaged (it
    /// is removed; the step runs instead).
    async fn restore(&self, job: &Job, manifest: cache::Manifest, source: CacheSource) -> Option<Outcome> {
        let name = job.step.name.clone();
        // Written out only when a later step stages from it; otherwise checked in place.
        let collect = self.needed.contains(&name).then(|| self.run_dir.collected(&name));
        let (store, dest, logs) = (self.store.clone(), collect.clone(), job.logs.clone());
        let restored = tokio::task::spawn_blocking(move || {
            let checked = match &dest {
                Some(dest) => {
                    let _ = std::fs::remove_dir_all(dest);
                    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
                    store.restore(&manifest, dest)
                }
                None => store.check(&manifest),
            };
            match checked {
                Ok(()) => {}
                Err(cache::store::StoreError::Corrupt { .. }) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
            // The entry's log becomes the step's log in this run's record.
            if let Some(logs) = &logs {
                logs.keep(&store.blob_path(&manifest.log), manifest.log);
            }
            Ok(Some(manifest))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match restored {
            Ok(Some(manifest)) => {
                if let Some(inputs) = manifest.inputs {
                    job.notes.tell(Note::InputManifest(inputs));
                }
                let outputs = Outputs { digest: Some(manifest.outputs_digest()), dir: collect, entries: manifest.entries };
                Some(Outcome::Restored { outputs, exit_code: manifest.exit_code, source })
            }
            Ok(None) => {
                tracing::warn!(step = %name, "cache entry damaged; it was removed and the step runs");
                None
            }
            Err(e) => Some(Outcome::failed(StepFailure::Environment(format!("cannot restore step `{name}` from the cache: {e}")))),
        }
    }
}
