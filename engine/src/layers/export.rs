//! Export: a step's outputs (executed or restored, or the partial outputs of a step allowed to
//! fail) go to the output folder, at `<out>/<step>/...`. Outputs a later step needs are copied
//! (its workspace is staged from the collect folder); the others are moved. A hit left in the store (no collect folder) is
//! materialised from it, unless `<out>/<step>` holds exactly its outputs already.

use std::collections::HashSet;
use std::sync::Arc;

use crate::executor::{Executor, Job, Outcome, StepContext, StepFailure};
use crate::workspace;

pub struct Export<E> {
    pub inner: E,
    /// The output folder, held open (exports go through it, never through its path again).
    pub out_dir: Arc<cache::safe::PinnedDir>,
    /// Steps some planned step needs: their collected outputs stay for staging.
    pub needed: Arc<HashSet<String>>,
    /// Where a hit's outputs are when they have no collect folder.
    pub store: Arc<cache::Store>,
}

impl<E: Executor> Executor for Export<E> {
    async fn execute(&self, job: Job, ctx: StepContext) -> Outcome {
        let name = job.step.name.clone();
        let mut outcome = self.inner.execute(job, ctx).await;
        let restored = matches!(outcome, Outcome::Restored { .. });
        // A failure allowed to fail exports what it wrote before it failed.
        let Some(outputs) = outcome.outputs_mut() else { return outcome };
        let collected = outputs.dir.clone();
        let needed = self.needed.contains(&name);
        let (out_dir, step, store) = (self.out_dir.clone(), name.clone(), self.store.clone());
        let entries = if restored { outputs.entries.clone() } else { Vec::new() };
        let exported = tokio::task::spawn_blocking(move || {
            let done = match &collected {
                // A hit: an export that holds exactly its outputs already is left alone.
                _ if restored && workspace::export_matches(&out_dir, &step, &entries) => Ok(()),
                Some(collected) if needed => workspace::export(collected, &out_dir, &step),
                Some(collected) => workspace::export_by_move(collected, &out_dir, &step),
                None => workspace::export_from_store(&store, &entries, &out_dir, &step),
            };
            done.map_err(|e| format!("cannot export the outputs to {}: {e}", out_dir.path().display()))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match exported {
            Ok(()) => {
                if !needed {
                    // Moved away: nobody stages from it.
                    outputs.dir = None;
                }
                outcome
            }
            Err(e) => {
                let (duration, exit_code) = (outcome.duration(), outcome.exit_code());
                Outcome::Failed { reason: StepFailure::Environment(format!("step `{name}`: {e}")), duration, exit_code, partial: None }
            }
        }
    }
}
