//! The scheduler: runs a [`Plan`] through an [`Executor`], starting every step whose needs have
//! succeeded, in parallel, bounded by `jobs` and by the CPU/memory [`HostBudget`] (a step reserves
//! its `limits.cpus` and `limits.memory` while it runs). Fail-fast by default: after a failure no
//! new step starts and the run ends once running steps finish; `keep_going` runs every step whose
//! needs succeeded. A step with `continue_on_error` that fails does neither: the run goes on, its
//! failure does not fail the run, and the steps that need it run with the outputs it kept.
//! Cancellation stops dispatch and cancels running steps.
//!
//! The scheduler never talks to Docker or the filesystem: it only orders work. All decisions are
//! made by one loop that owns the run's state; executor tasks only report back their outcome, so
//! there are no locks and no races between "a step finished" and "start the next one". The
//! outcomes carry the steps' outputs: a step's job gets those of its needs from here (no shared
//! map between executors). `engine run`, `engine plan` (a dry-run executor) and `engine replay`
//! all go through [`run`].

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::budget::HostBudget;
use crate::events::{CacheSource, Event, EventSink, RunStatus, StepStatus, StepSummary};
use crate::executor::{Executor, Job, Outcome, StepContext, StepFailure, Upstream, Would};
use crate::plan::Plan;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub jobs: usize,
    pub budget: HostBudget,
    pub keep_going: bool,
}

/// What the scheduler reports when every step has ended or been skipped.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub status: RunStatus,
    /// One row per planned step, in plan order.
    pub steps: Vec<StepSummary>,
    /// Each planned step's outcome, in plan order (`None`: it never started).
    pub outcomes: Vec<Option<Outcome>>,
}

/// Why dispatch stopped; the first reason wins, except that an interrupt overrides the others
/// (the user asked to stop, exit 130).
#[derive(Debug, Clone)]
enum Stop {
    Failed(String),
    Environment(String),
    Cancelled,
}

/// How a running step ended, as the scheduler classifies it.
enum Ended {
    Succeeded,
    /// Outputs restored from the cache: a success for the steps that need it.
    Cached(CacheSource),
    Cancelled,
    Failed(String),
    Environment(String),
}

enum State {
    Pending,
    Running(CancellationToken),
    Done(StepSummary),
}

impl State {
    fn status(&self) -> Option<StepStatus> {
        match self {
            State::Done(summary) => Some(summary.status),
            _ => None,
        }
    }
}

/// What the run's loop tracks: step states (indexed like `plan.steps`) and current reservations.
struct Run<'a> {
    plan: &'a Plan,
    config: SchedulerConfig,
    events: EventSink,
    states: Vec<State>,
    running: usize,
    millicpus: u64,
    memory: u64,
    stop: Option<Stop>,
    /// Any step failed (in keep-going mode the run continues but still ends Failed).
    failed: bool,
    /// The outcome of every step that ended (what its dependents' jobs get).
    outcomes: Vec<Option<Outcome>>,
}

impl Run<'_> {
    /// Whether the steps that need step `i` can run: it succeeded, or it failed, was allowed to,
    /// and kept its outputs.
    fn usable(&self, i: usize) -> bool {
        match &self.states[i] {
            State::Done(s) => {
                matches!(s.status, StepStatus::Succeeded | StepStatus::Cached)
                    || s.allowed && self.outcomes[i].as_ref().and_then(Outcome::outputs).is_some()
            }
            _ => false,
        }
    }

    /// Why a pending step can never run because of its needs, if so.
    fn blocked_by(&self, i: usize) -> Option<String> {
        self.plan.steps[i].needs.iter().find_map(|&n| {
            let what = match self.states[n].status()? {
                StepStatus::Succeeded | StepStatus::Cached => return None,
                StepStatus::Failed if self.usable(n) => return None,
                StepStatus::Failed if self.plan.steps[n].step.continue_on_error => "failed and kept no outputs",
                StepStatus::Failed => "failed",
                StepStatus::Skipped => "was skipped",
                StepStatus::Cancelled => "was cancelled",
            };
            Some(format!("needs `{}`, which {what}", self.plan.steps[n].step.name))
        })
    }

    fn skip(&mut self, i: usize, reason: String, not_started: bool) {
        let step = self.plan.steps[i].step.name.clone();
        self.events.emit(Event::StepSkipped { step: step.clone(), reason: reason.clone() });
        self.states[i] = State::Done(StepSummary { not_started, ..StepSummary::skipped(step, Some(reason)) });
    }

    /// Skip pending steps whose needs failed or were skipped. Plan order is topological, so one
    /// pass also covers dependents of steps skipped earlier in the same pass.
    fn skip_blocked(&mut self) {
        for i in 0..self.states.len() {
            if matches!(self.states[i], State::Pending) {
                if let Some(reason) = self.blocked_by(i) {
                    self.skip(i, reason, false);
                }
            }
        }
    }

    /// A step fits if the jobs limit and the budget allow it. A step larger than the whole budget
    /// (the planner rejects those, but the scheduler must not deadlock on one) runs alone.
    fn fits(&self, limits: &dsl::Limits) -> bool {
        if self.running >= self.config.jobs.max(1) {
            return false;
        }
        if self.running == 0 {
            return true;
        }
        let budget = self.config.budget;
        self.millicpus.saturating_add(limits.millicpus) <= budget.millicpus && self.memory.saturating_add(limits.memory) <= budget.memory
    }

    fn finish(&mut self, i: usize, outcome: Outcome) {
        let duration_ms = u64::try_from(outcome.duration().as_millis()).unwrap_or(u64::MAX);
        let ended = match &outcome {
            Outcome::Restored { source, .. } => Ended::Cached(*source),
            Outcome::Planned(p) if matches!(p.would, Would::Restore(_)) => Ended::Cached(CacheSource::Local),
            Outcome::Planned(p) if matches!(p.would, Would::Remote) => Ended::Cached(CacheSource::Remote),
            Outcome::Executed { .. } | Outcome::Planned(_) => Ended::Succeeded,
            Outcome::Cancelled { .. } => Ended::Cancelled,
            Outcome::Failed { reason, .. } if reason.is_environment() => Ended::Environment(reason.to_string()),
            Outcome::Failed { .. } | Outcome::TimedOut { .. } => {
                Ended::Failed(outcome.failure().map(|f| f.to_string()).unwrap_or_default())
            }
        };
        let exit_code = outcome.exit_code();
        self.outcomes[i] = Some(outcome);
        self.record(i, ended, duration_ms, exit_code);
    }

    /// What the needs of step `i` produced, for its job.
    fn upstream(&self, i: usize) -> Vec<Upstream> {
        self.plan.steps[i]
            .needs
            .iter()
            .map(|&n| Upstream {
                step: self.plan.steps[n].step.name.clone(),
                outputs: self.outcomes[n].as_ref().and_then(Outcome::outputs).cloned(),
            })
            .collect()
    }

    /// Release the step's reservation, update why the run stops, emit the step's last event.
    fn record(&mut self, i: usize, ended: Ended, duration_ms: u64, exit_code: Option<i64>) {
        let step = &self.plan.steps[i].step;
        self.running -= 1;
        self.millicpus -= step.limits.millicpus;
        self.memory -= step.limits.memory;
        let name = step.name.clone();
        let mut allowed = false;
        let source = match ended {
            Ended::Cached(source) => Some(source),
            _ => None,
        };
        let (status, reason) = match ended {
            Ended::Succeeded => (StepStatus::Succeeded, None),
            Ended::Cached(_) => (StepStatus::Cached, None),
            Ended::Environment(reason) => {
                if !matches!(self.stop, Some(Stop::Environment(_) | Stop::Cancelled)) {
                    self.stop = Some(Stop::Environment(name.clone()));
                }
                (StepStatus::Failed, Some(reason))
            }
            // Cancelled because the run was interrupted: not a failure of the step.
            Ended::Cancelled if matches!(self.stop, Some(Stop::Cancelled)) => {
                (StepStatus::Cancelled, Some(StepFailure::Cancelled.to_string()))
            }
            // A step that stops by itself, saying "cancelled" although nobody asked, failed.
            Ended::Cancelled => {
                self.step_failed(&name);
                (StepStatus::Cancelled, Some(StepFailure::Cancelled.to_string()))
            }
            // Allowed to fail: neither the run's result nor fail-fast hears of it.
            Ended::Failed(reason) if step.continue_on_error => {
                allowed = true;
                (StepStatus::Failed, Some(reason))
            }
            Ended::Failed(reason) => {
                self.step_failed(&name);
                (StepStatus::Failed, Some(reason))
            }
        };
        let summary = StepSummary { allowed, source, ..StepSummary::ended(name.clone(), status, duration_ms, exit_code, reason.clone()) };
        self.events.emit(match reason {
            None => Event::StepFinished { step: name, status, duration_ms, exit_code, source },
            Some(reason) => Event::StepFailed { step: name, status, duration_ms, exit_code, reason, allowed },
        });
        self.states[i] = State::Done(summary);
    }

    fn step_failed(&mut self, name: &str) {
        self.failed = true;
        if !self.config.keep_going && self.stop.is_none() {
            self.stop = Some(Stop::Failed(name.to_string()));
        }
    }

    fn cancel_running(&mut self) {
        self.stop = Some(Stop::Cancelled);
        for state in &self.states {
            if let State::Running(token) = state {
                token.cancel();
            }
        }
    }

    /// The reason given to steps that never started because dispatch stopped, and whether
    /// `--keep-going` would have run them.
    fn not_started_reason(&self) -> (String, bool) {
        let reason = match &self.stop {
            Some(Stop::Failed(step)) => {
                return (format!("not started: the run stopped after `{step}` failed (fail-fast; --keep-going runs it)"), true)
            }
            Some(Stop::Environment(step)) => {
                format!("not started: the run stopped after `{step}` failed because of the environment")
            }
            Some(Stop::Cancelled) | None => "not started: the run was cancelled".into(),
        };
        (reason, false)
    }

    fn status(&self) -> RunStatus {
        match self.stop {
            Some(Stop::Cancelled) => RunStatus::Cancelled,
            Some(Stop::Environment(_)) => RunStatus::EnvironmentFailed,
            _ if self.failed => RunStatus::Failed,
            _ => RunStatus::Succeeded,
        }
    }
}

/// Emits `StepStarted`, `StepFinished`, `StepFailed` and `StepSkipped` events (not `RunStarted` /
/// `RunFinished`: those belong to the caller).
pub async fn run<E: Executor>(
    plan: &Plan,
    executor: Arc<E>,
    config: SchedulerConfig,
    events: EventSink,
    cancel: CancellationToken,
) -> RunReport {
    let mut run = Run {
        plan,
        config,
        events: events.clone(),
        states: plan.steps.iter().map(|_| State::Pending).collect(),
        running: 0,
        millicpus: 0,
        memory: 0,
        stop: None,
        failed: false,
        outcomes: vec![None; plan.steps.len()],
    };
    let mut tasks: JoinSet<(usize, Outcome)> = JoinSet::new();
    // A panicking task reports only its task id; this maps it back to the step.
    let mut task_step: HashMap<tokio::task::Id, usize> = HashMap::new();

    loop {
        if cancel.is_cancelled() && !matches!(run.stop, Some(Stop::Cancelled)) {
            run.cancel_running();
        }
        run.skip_blocked();
        if run.stop.is_none() {
            for i in 0..plan.steps.len() {
                let step = &plan.steps[i].step;
                let ready = matches!(run.states[i], State::Pending) && plan.steps[i].needs.iter().all(|&n| run.usable(n));
                if !ready || !run.fits(&step.limits) {
                    continue;
                }
                run.running += 1;
                run.millicpus += step.limits.millicpus;
                run.memory += step.limits.memory;
                let token = cancel.child_token();
                run.states[i] = State::Running(token.clone());
                events.emit(Event::StepStarted { step: step.name.clone() });
                let ctx = StepContext { events: events.clone(), cancel: token };
                let job = Job::new(step.clone(), run.upstream(i));
                let executor = executor.clone();
                let handle = tasks.spawn(async move { (i, executor.execute(job, ctx).await) });
                task_step.insert(handle.id(), i);
            }
        }
        if run.running == 0 {
            break;
        }
        tokio::select! {
            // Only polled until the interrupt has been seen once; then we just wait for the steps.
            _ = cancel.cancelled(), if !matches!(run.stop, Some(Stop::Cancelled)) => run.cancel_running(),
            Some(joined) = tasks.join_next_with_id() => match joined {
                Ok((_, (i, outcome))) => run.finish(i, outcome),
                Err(error) => {
                    // The executor itself broke (a panic is an engine bug): the run must still
                    // end, and the step counts as failed so that nothing hangs on it.
                    if let Some(&i) = task_step.get(&error.id()) {
                        let reason = if error.is_panic() {
                            "the engine crashed while running this step (a bug; please report it)"
                        } else {
                            "the engine stopped this step unexpectedly"
                        };
                        run.record(i, Ended::Failed(reason.into()), 0, None);
                    }
                }
            },
        }
    }

    let (reason, keep_going_would_run) = run.not_started_reason();
    for i in 0..plan.steps.len() {
        if matches!(run.states[i], State::Pending) {
            match run.blocked_by(i) {
                // Behind a step fail-fast did not start: `--keep-going` would have got here too.
                Some(blocked) => {
                    let after = plan.steps[i].needs.iter().any(|&n| matches!(&run.states[n], State::Done(s) if s.not_started));
                    run.skip(i, blocked, after)
                }
                None => run.skip(i, reason.clone(), keep_going_would_run),
            }
        }
    }
    let status = run.status();
    let outcomes = std::mem::take(&mut run.outcomes);
    let steps = run
        .states
        .into_iter()
        .zip(&plan.steps)
        .map(|(state, planned)| match state {
            State::Done(summary) => summary,
            // Unreachable: the loop ends only when nothing runs and every pending step is skipped.
            State::Pending | State::Running(_) => StepSummary::skipped(planned.step.name.clone(), None),
        })
        .collect();
    RunReport { status, steps, outcomes }
}

#[cfg(test)]
mod tests;
