//! The engine's side of the run records (the `records` crate owns the schema, writing, lookup,
//! pruning and provenance): converting steps between the IR and the record's own types, the log
//! limit from the environment, and the glue to the engine's events. Everything of `records` is
//! re-exported, so `crate::record::X` names it.

use std::path::Path;

pub use records::*;

use crate::events::{LogSink, RunStatus, StepStatus};

/// The record of a step of the IR: its resolved definition in the record's own types.
pub(crate) fn definition(step: &dsl::Step) -> StepDefinition {
    let l = &step.limits;
    StepDefinition {
        name: step.name.clone(),
        span: Span { offset: step.span.offset, len: step.span.len, line: step.span.line, col: step.span.col },
        image: match &step.image {
            dsl::ImageRef::Reference(r) => ImageRef::Reference(r.clone()),
            dsl::ImageRef::Built(n) => ImageRef::Built(n.clone()),
        },
        command: match &step.command {
            dsl::Command::Shell(s) => Command::Shell(s.clone()),
            dsl::Command::Argv(v) => Command::Argv(v.clone()),
        },
        inputs: step.inputs.clone(),
        outputs: step.outputs.clone(),
        needs: step.needs.clone(),
        env: step.env.clone(),
        secrets: step.secrets.clone(),
        cache: step.cache,
        continue_on_error: step.continue_on_error,
        caches: step.caches.iter().map(|c| CacheMount { name: c.name.clone(), path: c.path.clone() }).collect(),
        workdir: step.workdir.clone(),
        profile: step.profile.clone(),
        isolation: Isolation {
            network: Some(match step.isolation.network {
                dsl::Network::None => Network::None,
                dsl::Network::Bridge => Network::Bridge,
            }),
            user: Some(User { uid: step.isolation.user.uid, gid: step.isolation.user.gid }),
        },
        limits: Limits {
            millicpus: Some(l.millicpus),
            memory: Some(l.memory),
            pids: Some(l.pids),
            timeout: Some(l.timeout),
            tmpfs: Some(l.tmpfs),
            workspace: Some(l.workspace),
            outputs: Some(l.outputs),
        },
    }
}

/// A recorded definition as a step of the IR. Limits and isolation the record leaves out get the
/// built-in defaults, as a workflow step that does not set them would: never "unlimited".
pub(crate) fn to_step(d: &StepDefinition) -> dsl::Step {
    let (limits, isolation) = (dsl::Limits::default(), dsl::Isolation::default());
    let l = &d.limits;
    dsl::Step {
        name: d.name.clone(),
        span: dsl::Span { offset: d.span.offset, len: d.span.len, line: d.span.line, col: d.span.col },
        image: match &d.image {
            ImageRef::Reference(r) => dsl::ImageRef::Reference(r.clone()),
            ImageRef::Built(n) => dsl::ImageRef::Built(n.clone()),
        },
        command: match &d.command {
            Command::Shell(s) => dsl::Command::Shell(s.clone()),
            Command::Argv(v) => dsl::Command::Argv(v.clone()),
        },
        inputs: d.inputs.clone(),
        outputs: d.outputs.clone(),
        needs: d.needs.clone(),
        env: d.env.clone(),
        secrets: d.secrets.clone(),
        cache: d.cache,
        continue_on_error: d.continue_on_error,
        caches: d.caches.iter().map(|c| dsl::CacheMount { name: c.name.clone(), path: c.path.clone() }).collect(),
        // A replay runs on the auditor's machine: worker labels choose nothing there.
        runs_on: Vec::new(),
        workdir: d.workdir.clone(),
        profile: d.profile.clone(),
        isolation: dsl::Isolation {
            network: match d.isolation.network {
                Some(Network::None) => dsl::Network::None,
                Some(Network::Bridge) => dsl::Network::Bridge,
                None => isolation.network,
            },
            user: d.isolation.user.map_or(isolation.user, |u| dsl::User { uid: u.uid, gid: u.gid }),
        },
        limits: dsl::Limits {
            millicpus: l.millicpus.unwrap_or(limits.millicpus),
            memory: l.memory.unwrap_or(limits.memory),
            pids: l.pids.unwrap_or(limits.pids),
            timeout: l.timeout.unwrap_or(limits.timeout),
            tmpfs: l.tmpfs.unwrap_or(limits.tmpfs),
            workspace: l.workspace.unwrap_or(limits.workspace),
            outputs: l.outputs.unwrap_or(limits.outputs),
        },
    }
}

/// A planned step, not started yet.
pub(crate) fn pending(step: &dsl::Step) -> StepRecord {
    StepRecord::pending(definition(step))
}

/// The per-step log limit: `ENGINE_LOG_LIMIT` (a size: `16m`, `1g`) or [`DEFAULT_LOG_LIMIT`].
pub(crate) fn log_limit() -> Result<u64, String> {
    match std::env::var("ENGINE_LOG_LIMIT") {
        Err(_) => Ok(DEFAULT_LOG_LIMIT),
        Ok(text) => match dsl::units::parse_size(&text) {
            Some(n) if n >= MIN_LOG_LIMIT => Ok(n),
            _ => Err(format!(
                "ENGINE_LOG_LIMIT must be a size of at least {} (like `16m`), not `{text}`",
                dsl::units::format_size(MIN_LOG_LIMIT)
            )),
        },
    }
}

/// After a run: keep the newest [`DEFAULT_KEEP`] records and drop those older than
/// [`DEFAULT_MAX_AGE`] (never `run_id`, never a run whose engine still lives). Best effort: a
/// failure costs old records their removal, not the run. Blocking (call it off the async workers).
pub(crate) fn prune_after_run(workflow_dir: &Path, run_id: &str) {
    match records::prune(workflow_dir, PrunePolicy::default(), std::time::SystemTime::now(), Some(run_id)) {
        Ok(report) => {
            if !report.removed.is_empty() {
                tracing::debug!(removed = report.removed.len(), kept = report.kept, "pruned old run records");
            }
            for (id, why) in &report.failed {
                tracing::warn!(run = %id, error = %why, "cannot remove an old run record");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot prune old run records"),
    }
}

impl LogSink for StepLog {
    fn append(&self, line: Vec<u8>) {
        // The writer thread is behind (a slow disk): wait for it off the async workers' hands.
        if let Err(line) = self.try_append(line) {
            crate::events::blocking(|| StepLog::append(self, line));
        }
    }
}

impl From<RunStatus> for RecordStatus {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Succeeded => RecordStatus::Succeeded,
            RunStatus::Failed => RecordStatus::Failed,
            RunStatus::EnvironmentFailed => RecordStatus::EnvironmentFailed,
            RunStatus::Cancelled => RecordStatus::Cancelled,
        }
    }
}

impl From<StepStatus> for StepState {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Succeeded => StepState::Succeeded,
            StepStatus::Cached => StepState::Cached,
            StepStatus::Failed => StepState::Failed,
            StepStatus::Skipped => StepState::Skipped,
            StepStatus::Cancelled => StepState::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_definition_survives_the_record() {
        let mut step = dsl::Step::new("a", dsl::ImageRef::Built("tools".into()), dsl::Command::Argv(vec!["x".into()]));
        step.limits = dsl::Limits::sandbox();
        step.limits.timeout = std::time::Duration::from_millis(61_500);
        step.env.insert("A".into(), "1".into());
        step.caches = vec![dsl::CacheMount { name: "cargo".into(), path: "/c".into() }];
        step.isolation = dsl::Isolation { network: dsl::Network::Bridge, user: dsl::User { uid: 1, gid: 2 } };
        step.span = dsl::Span { offset: 3, len: 4, line: 5, col: 6 };
        step.profile = Some("sandbox".into());
        let json = serde_json::to_string(&pending(&step)).unwrap();
        let back: StepRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(to_step(&back.definition), step);
        // The record's JSON is the IR's (what `engine.run-record/v1` embedded).
        assert_eq!(serde_json::to_value(&back.definition).unwrap(), serde_json::to_value(&step).unwrap());
    }

    #[test]
    fn a_definition_without_limits_or_isolation_gets_the_built_in_defaults() {
        let step = dsl::Step::new("a", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("true".into()));
        let mut v = serde_json::to_value(definition(&step)).unwrap();
        v.as_object_mut().unwrap().remove("limits");
        v["isolation"].as_object_mut().unwrap().remove("user");
        let back = to_step(&serde_json::from_value(v).unwrap());
        assert_eq!(back.limits, dsl::Limits::default());
        assert_eq!(back.isolation, dsl::Isolation::default());
    }
}
