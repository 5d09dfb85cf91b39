//! The [`Forecast`] of a step (what the dry run predicted) that `engine cache explain` and
//! `engine plan` show, and its [`CacheView`]: data only; the decisions come from `caching`, the
//! text from `output`.

use crate::events::CacheSource;
use crate::executor::{Prediction, RunReason, Would};

/// What the cache will do with one planned step, predicted without running anything.
#[derive(Debug, Clone)]
pub struct Forecast {
    /// Known unless a step it needs will run first (or its image's key cannot be computed).
    pub(crate) components: Option<cache::KeyComponents>,
    pub(crate) cached: bool,
    /// Where a cached step comes from (`Local` unless the remote cache has it and the local
    /// store does not).
    pub(crate) source: crate::events::CacheSource,
    /// Why it will run; empty when cached.
    pub(crate) reasons: Vec<RunReason>,
}

impl Forecast {
    /// What a dry run predicted.
    pub(crate) fn of(prediction: Prediction) -> Forecast {
        match prediction.would {
            Would::Restore(_) => {
                Forecast { components: prediction.components, cached: true, source: CacheSource::Local, reasons: Vec::new() }
            }
            Would::Remote => Forecast { components: prediction.components, cached: true, source: CacheSource::Remote, reasons: Vec::new() },
            Would::Run(reasons) => Forecast { components: prediction.components, cached: false, source: CacheSource::Local, reasons },
        }
    }

    /// Whether the plan predicts a restore or a run.
    pub fn status(&self) -> CacheStatus {
        if self.cached {
            CacheStatus::Cached
        } else {
            CacheStatus::Run
        }
    }

    /// Say so when the step failed the last time it ran (the newest record of `workflow` in
    /// `records` where it succeeded, came from the cache or failed): a failure stores nothing in
    /// the cache, so without this the step would look as if it had never run.
    pub(crate) fn note_last_run(&mut self, workflow: &str, step: &str, records: &[crate::record::RunRecord]) {
        if self.cached {
            return;
        }
        use crate::record::StepState;
        let last = records.iter().rev().filter(|r| r.workflow.name == workflow).find_map(|r| {
            let s = r.steps.iter().find(|s| s.name == step)?;
            matches!(s.status, StepState::Succeeded | StepState::Cached | StepState::Failed).then_some((r, s))
        });
        if let Some((record, s)) = last {
            if s.status == StepState::Failed {
                self.reasons.retain(|r| *r != RunReason::Cache(cache::Reason::NeverRun));
                self.reasons.insert(0, RunReason::FailedLastRun(record.run_id.clone()));
            }
        }
    }

    /// For a cached step: from the local store or the remote cache; `None` when it runs.
    pub fn source(&self) -> Option<CacheSource> {
        self.cached.then_some(self.source)
    }

    /// The forecast as `engine plan` shows it: `cached` or `run`, the key, the reasons.
    pub fn view(&self) -> CacheView {
        CacheView {
            status: self.status(),
            source: self.source(),
            key: self.components.as_ref().map(|c| c.key()),
            reasons: self.reasons.iter().map(ToString::to_string).collect(),
        }
    }
}

/// What the cache says about one planned step (same order as `Plan::steps`), computed by the
/// engine before rendering: the planner itself never looks at the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheView {
    /// Restored or run.
    pub status: CacheStatus,
    /// For a cached step: `local` (the local store) or `remote` (the remote cache has it).
    pub source: Option<CacheSource>,
    /// The action key, when it can be known now (not when a needed step will run first).
    pub key: Option<cache::ActionKey>,
    /// Why it runs, one sentence each; empty when cached.
    pub reasons: Vec<String>,
}

/// What a run would do with a planned step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Restored from the cache, no container.
    Cached,
    /// Executed.
    Run,
}

impl CacheStatus {
    /// `cached` or `run`, as the plan shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Cached => "cached",
            CacheStatus::Run => "run",
        }
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
