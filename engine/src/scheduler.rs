//! The scheduler: runs a [`Plan`] through an [`Executor`], starting every step whose needs have
//! succeeded, in parallel, bounded by `jobs` and by the CPU/memory [`HostBudget`] (a step reserves
//! its `limits.cpus` and `limits.memory` while it runs). Fail-fast by default: after a failure no
//! new step starts and the run ends once running steps finish; `keep_going` runs every step whose
//! needs succeeded. Cancellation stops dispatch and cancels running steps.
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
use crate::events::{Event, EventSink, RunStatus, StepStatus, StepSummary};
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
    Cached,
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
    fn succeeded(&self, i: usize) -> bool {
        matches!(self.states[i].status(), Some(StepStatus::Succeeded | StepStatus::Cached))
    }

    /// Why a pending step can never run because of its needs, if so.
    fn blocked_by(&self, i: usize) -> Option<String> {
        self.plan.steps[i].needs.iter().find_map(|&n| {
            let what = match self.states[n].status()? {
                StepStatus::Succeeded | StepStatus::Cached => return None,
                StepStatus::Failed => "failed",
                StepStatus::Skipped => "was skipped",
                StepStatus::Cancelled => "was cancelled",
            };
            Some(format!("needs `{}`, which {what}", self.plan.steps[n].step.name))
        })
    }

    fn skip(&mut self, i: usize, reason: String) {
        let step = self.plan.steps[i].step.name.clone();
        self.events.emit(Event::StepSkipped { step: step.clone(), reason: reason.clone() });
        self.states[i] =
            State::Done(StepSummary { step, status: StepStatus::Skipped, duration_ms: 0, exit_code: None, reason: Some(reason) });
    }

    /// Skip pending steps whose needs failed or were skipped. Plan order is topological, so one
    /// pass also covers dependents of steps skipped earlier in the same pass.
    fn skip_blocked(&mut self) {
        for i in 0..self.states.len() {
            if matches!(self.states[i], State::Pending) {
                if let Some(reason) = self.blocked_by(i) {
                    self.skip(i, reason);
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
            Outcome::Restored { .. } => Ended::Cached,
            Outcome::Planned(p) if matches!(p.would, Would::Restore(_)) => Ended::Cached,
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
        let (status, reason) = match ended {
            Ended::Succeeded => (StepStatus::Succeeded, None),
            Ended::Cached => (StepStatus::Cached, None),
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
            Ended::Failed(reason) => {
                self.step_failed(&name);
                (StepStatus::Failed, Some(reason))
            }
        };
        let summary = StepSummary { step: name.clone(), status, duration_ms, exit_code, reason: reason.clone() };
        self.events.emit(match reason {
            None => Event::StepFinished { step: name, status, duration_ms, exit_code },
            Some(reason) => Event::StepFailed { step: name, status, duration_ms, exit_code, reason },
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

    /// The reason given to steps that never started because dispatch stopped.
    fn not_started_reason(&self) -> String {
        match &self.stop {
            Some(Stop::Failed(step)) => format!("not started: the run stopped after `{step}` failed"),
            Some(Stop::Environment(step)) => {
                format!("not started: the run stopped after `{step}` failed because of the environment")
            }
            Some(Stop::Cancelled) | None => "not started: the run was cancelled".into(),
        }
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
                let ready = matches!(run.states[i], State::Pending) && plan.steps[i].needs.iter().all(|&n| run.succeeded(n));
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

    let reason = run.not_started_reason();
    for i in 0..plan.steps.len() {
        if matches!(run.states[i], State::Pending) {
            let reason = run.blocked_by(i).unwrap_or_else(|| reason.clone());
            run.skip(i, reason);
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
            State::Pending | State::Running(_) => {
                StepSummary { step: planned.step.name.clone(), status: StepStatus::Skipped, duration_ms: 0, exit_code: None, reason: None }
            }
        })
        .collect();
    RunReport { status, steps, outcomes }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::plan::test_support::{step, workflow};
    use crate::plan::{plan, PlannedStep};

    const GIB: u64 = 1 << 30;
    const BIG: HostBudget = HostBudget { millicpus: 64_000, memory: 256 * GIB };

    /// What the fake does for one step.
    #[derive(Clone)]
    struct Behaviour {
        duration: Duration,
        result: Result<(), StepFailure>,
        exit_code: Option<i64>,
        panic: bool,
        cached: bool,
    }

    impl Default for Behaviour {
        fn default() -> Self {
            Behaviour { duration: Duration::from_secs(1), result: Ok(()), exit_code: Some(0), panic: false, cached: false }
        }
    }

    #[derive(Default)]
    struct Record {
        running: usize,
        millicpus: u64,
        memory: u64,
        max_running: usize,
        max_millicpus: u64,
        max_memory: u64,
        /// Step name -> (start, end) in seconds since the run started (virtual time).
        spans: HashMap<String, (f64, f64)>,
        saw_cancel: Vec<String>,
        /// Step name -> the upstream its job carried (need, outputs).
        upstream: HashMap<String, Vec<(String, Option<crate::executor::Outputs>)>>,
    }

    /// A Docker-free executor: sleeps (virtual time) for the configured duration, or until its
    /// cancel token fires, and records concurrency and reservations.
    struct Fake {
        behaviours: HashMap<String, Behaviour>,
        record: Mutex<Record>,
        t0: Instant,
    }

    impl Fake {
        fn new() -> Self {
            Fake { behaviours: HashMap::new(), record: Mutex::new(Record::default()), t0: Instant::now() }
        }

        fn with(mut self, name: &str, f: impl FnOnce(&mut Behaviour)) -> Self {
            f(self.behaviours.entry(name.into()).or_default());
            self
        }

        fn span(&self, name: &str) -> (f64, f64) {
            self.record.lock().unwrap().spans[name]
        }

        fn started(&self, name: &str) -> bool {
            self.record.lock().unwrap().spans.contains_key(name)
        }
    }

    /// The outputs the fake "produces" for a step: a digest of its name.
    fn outputs_of(name: &str) -> crate::executor::Outputs {
        crate::executor::Outputs { digest: Some(cache::Digest::of(name.as_bytes())), dir: None, entries: Vec::new() }
    }

    impl Executor for Fake {
        async fn execute(&self, job: Job, ctx: StepContext) -> Outcome {
            let step = job.step.clone();
            let b = self.behaviours.get(&step.name).cloned().unwrap_or_default();
            let start = Instant::now();
            {
                let mut r = self.record.lock().unwrap();
                r.running += 1;
                r.millicpus += step.limits.millicpus;
                r.memory += step.limits.memory;
                r.max_running = r.max_running.max(r.running);
                r.max_millicpus = r.max_millicpus.max(r.millicpus);
                r.max_memory = r.max_memory.max(r.memory);
                r.upstream.insert(step.name.clone(), job.upstream.iter().map(|u| (u.step.clone(), u.outputs.clone())).collect());
            }
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(b.duration) => false,
                _ = ctx.cancel.cancelled() => true,
            };
            {
                let mut r = self.record.lock().unwrap();
                r.running -= 1;
                r.millicpus -= step.limits.millicpus;
                r.memory -= step.limits.memory;
                let secs = |t: Instant| (t - self.t0).as_secs_f64();
                r.spans.insert(step.name.clone(), (secs(start), secs(Instant::now())));
                if cancelled {
                    r.saw_cancel.push(step.name.clone());
                }
            }
            if b.panic {
                panic!("fake executor panics on purpose");
            }
            let duration = start.elapsed();
            if cancelled {
                return Outcome::Cancelled { duration };
            }
            match b.result {
                Ok(()) if b.cached => Outcome::Restored { outputs: outputs_of(&step.name), exit_code: b.exit_code.unwrap_or(0) },
                Ok(()) => Outcome::Executed { outputs: outputs_of(&step.name), duration, exit_code: b.exit_code.unwrap_or(0) },
                Err(reason) => Outcome::Failed { reason, duration, exit_code: b.exit_code },
            }
        }
    }

    fn config(jobs: usize) -> SchedulerConfig {
        SchedulerConfig { jobs, budget: BIG, keep_going: false }
    }

    async fn go(plan: &Plan, fake: &Arc<Fake>, config: SchedulerConfig, cancel: CancellationToken) -> (RunReport, Vec<Event>) {
        let (sink, mut rx) = EventSink::channel();
        let report = run(plan, fake.clone(), config, sink, cancel).await;
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        (report, events)
    }

    /// `a=failed b=succeeded`: every step's status, in plan order.
    fn statuses(report: &RunReport) -> String {
        let rows: Vec<String> = report.steps.iter().map(|s| format!("{}={}", s.step, s.status.as_str())).collect();
        rows.join(" ")
    }

    fn reason<'a>(report: &'a RunReport, step: &str) -> &'a str {
        let summary = report.steps.iter().find(|s| s.step == step).unwrap();
        summary.reason.as_deref().unwrap_or("")
    }

    fn skipped_events(events: &[Event]) -> Vec<(String, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::StepSkipped { step, reason } => Some((step.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn independent(n: usize) -> Plan {
        let mut wf = workflow("w");
        for i in 0..n {
            wf = wf.step(&format!("s{i}"), &[]);
        }
        plan(wf.build(), &[], BIG).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_step_counts_as_success_for_its_dependents() {
        let wf = workflow("w").step("a", &[]).step("b", &["a"]).build();
        let p = plan(wf, &[], BIG).unwrap();
        let fake = Arc::new(Fake::new().with("a", |b| {
            b.cached = true;
            b.duration = Duration::ZERO;
        }));
        let (report, events) = go(&p, &fake, config(4), CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Succeeded);
        assert_eq!(statuses(&report), "a=cached b=succeeded");
        assert!(events.contains(&Event::StepFinished { step: "a".into(), status: StepStatus::Cached, duration_ms: 0, exit_code: Some(0) }));
    }

    #[tokio::test(start_paused = true)]
    async fn each_job_carries_the_outputs_of_its_needs() {
        let wf = workflow("w").step("a", &[]).step("b", &["a"]).step("c", &["a"]).step("d", &["c", "b"]).build();
        let p = plan(wf, &[], BIG).unwrap();
        let fake = Arc::new(Fake::new().with("b", |b| b.cached = true));
        let (report, _) = go(&p, &fake, config(4), CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Succeeded);
        let r = fake.record.lock().unwrap();
        assert!(r.upstream["a"].is_empty());
        assert_eq!(r.upstream["b"], [("a".to_string(), Some(outputs_of("a")))]);
        // In the order of `needs`, restored outputs like executed ones.
        assert_eq!(r.upstream["d"], [("c".to_string(), Some(outputs_of("c"))), ("b".to_string(), Some(outputs_of("b")))]);
        assert!(matches!(report.outcomes[1], Some(Outcome::Restored { .. })));
        assert!(matches!(report.outcomes[3], Some(Outcome::Executed { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn diamond_respects_needs_and_runs_branches_in_parallel() {
        let wf = workflow("w").step("a", &[]).step("b", &["a"]).step("c", &["a"]).step("d", &["b", "c"]).build();
        let p = plan(wf, &[], BIG).unwrap();
        let fake = Arc::new(Fake::new().with("c", |b| b.duration = Duration::from_secs(2)));
        let (report, events) = go(&p, &fake, config(4), CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Succeeded);
        assert_eq!(statuses(&report), "a=succeeded b=succeeded c=succeeded d=succeeded");
        assert_eq!(fake.span("a"), (0.0, 1.0));
        assert_eq!(fake.span("b"), (1.0, 2.0));
        assert_eq!(fake.span("c"), (1.0, 3.0));
        assert_eq!(fake.span("d"), (3.0, 4.0));
        assert_eq!(report.steps[2].duration_ms, 2000);
        assert_eq!(report.steps[2].exit_code, Some(0));
        assert_eq!(events[0], Event::StepStarted { step: "a".into() });
        assert_eq!(
            events[1],
            Event::StepFinished { step: "a".into(), status: StepStatus::Succeeded, duration_ms: 1000, exit_code: Some(0) }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn independent_steps_overlap_up_to_jobs() {
        let p = independent(5);
        let fake = Arc::new(Fake::new());
        go(&p, &fake, config(8), CancellationToken::new()).await;
        assert_eq!(fake.record.lock().unwrap().max_running, 5);
        assert!((0..5).all(|i| fake.span(&format!("s{i}")) == (0.0, 1.0)));

        let fake = Arc::new(Fake::new());
        go(&p, &fake, config(1), CancellationToken::new()).await;
        assert_eq!(fake.record.lock().unwrap().max_running, 1);
        // Serialised in plan order.
        assert!((0..5).all(|i| fake.span(&format!("s{i}")) == (i as f64, i as f64 + 1.0)));

        let fake = Arc::new(Fake::new());
        let (report, _) = go(&p, &fake, config(2), CancellationToken::new()).await;
        assert_eq!(fake.record.lock().unwrap().max_running, 2);
        assert_eq!(fake.span("s4"), (2.0, 3.0));
        assert_eq!(report.status, RunStatus::Succeeded);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_budget_serialises_steps_that_do_not_fit_together() {
        let p = independent(2);
        let fake = Arc::new(Fake::new());
        let budget = HostBudget { millicpus: 64_000, memory: GIB + GIB / 2 };
        go(&p, &fake, SchedulerConfig { jobs: 4, budget, keep_going: false }, CancellationToken::new()).await;
        let r = fake.record.lock().unwrap();
        assert_eq!((r.max_running, r.max_memory), (1, GIB));
        assert_eq!(r.spans["s1"], (1.0, 2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn cpu_budget_serialises_steps_that_do_not_fit_together() {
        let p = independent(3);
        let fake = Arc::new(Fake::new());
        let budget = HostBudget { millicpus: 2500, memory: 256 * GIB };
        go(&p, &fake, SchedulerConfig { jobs: 4, budget, keep_going: false }, CancellationToken::new()).await;
        let r = fake.record.lock().unwrap();
        assert_eq!((r.max_running, r.max_millicpus), (2, 2000));
        assert_eq!(r.spans["s2"], (1.0, 2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_larger_than_the_budget_runs_alone_instead_of_deadlocking() {
        // The planner rejects such a step; build the plan by hand to get one past it.
        let mut huge = step("huge");
        huge.limits.memory = 8 * GIB;
        let wf = workflow("w").step("small", &[]).with(huge).step("after", &[]).build();
        let steps = wf.steps.iter().map(|s| PlannedStep { step: Arc::new(s.clone()), needs: vec![] }).collect();
        let p = Plan { workflow: wf, steps };
        let fake = Arc::new(Fake::new());
        let budget = HostBudget { millicpus: 64_000, memory: 2 * GIB };
        let (report, _) = go(&p, &fake, SchedulerConfig { jobs: 4, budget, keep_going: false }, CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Succeeded);
        assert_eq!(fake.span("small"), (0.0, 1.0));
        assert_eq!(fake.span("huge"), (1.0, 2.0));
        // Steps behind it in plan order may fill the budget meanwhile; here `after` ran first.
        assert_eq!(fake.span("after"), (0.0, 1.0));
    }

    /// a fails at 1s; b (independent, 3s) is running then; c waits for a free job; d needs a.
    fn failing() -> (Plan, Arc<Fake>) {
        let wf = workflow("w").step("a", &[]).step("b", &[]).step("c", &[]).step("d", &["a"]).step("e", &["d"]).build();
        let fake = Fake::new()
            .with("a", |b| {
                b.result = Err(StepFailure::Exit(2));
                b.exit_code = Some(2);
            })
            .with("b", |b| b.duration = Duration::from_secs(3));
        (plan(wf, &[], BIG).unwrap(), Arc::new(fake))
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_starts_nothing_new_and_lets_running_steps_finish() {
        let (p, fake) = failing();
        let (report, events) = go(&p, &fake, config(2), CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Failed);
        assert_eq!(statuses(&report), "a=failed b=succeeded c=skipped d=skipped e=skipped");
        assert_eq!(fake.span("b"), (0.0, 3.0));
        assert!(!fake.started("c"));
        assert_eq!(reason(&report, "a"), "exited with code 2");
        assert_eq!(report.steps[0].exit_code, Some(2));
        assert_eq!(
            skipped_events(&events),
            [
                ("d".to_string(), "needs `a`, which failed".to_string()),
                ("e".to_string(), "needs `d`, which was skipped".to_string()),
                ("c".to_string(), "not started: the run stopped after `a` failed".to_string()),
            ]
        );
        assert!(events.contains(&Event::StepFailed {
            step: "a".into(),
            status: StepStatus::Failed,
            duration_ms: 1000,
            exit_code: Some(2),
            reason: "exited with code 2".into()
        }));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_going_runs_everything_whose_needs_succeeded() {
        let (p, fake) = failing();
        let (report, _) = go(&p, &fake, SchedulerConfig { keep_going: true, ..config(2) }, CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Failed);
        assert_eq!(statuses(&report), "a=failed b=succeeded c=succeeded d=skipped e=skipped");
        assert_eq!(fake.span("c"), (1.0, 2.0));
        assert_eq!(reason(&report, "d"), "needs `a`, which failed");
    }

    #[tokio::test(start_paused = true)]
    async fn environment_failure_stops_dispatch_even_when_keeping_going() {
        let (p, _) = failing();
        let fake = Arc::new(
            Fake::new()
                .with("a", |b| {
                    b.result = Err(StepFailure::Environment("the Docker daemon is not reachable".into()));
                    b.exit_code = None;
                })
                .with("b", |b| b.duration = Duration::from_secs(3)),
        );
        let (report, _) = go(&p, &fake, SchedulerConfig { keep_going: true, ..config(2) }, CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::EnvironmentFailed);
        assert!(!fake.started("c"));
        assert_eq!(statuses(&report), "a=failed b=succeeded c=skipped d=skipped e=skipped");
        assert_eq!(reason(&report, "a"), "the Docker daemon is not reachable");
        assert_eq!(reason(&report, "c"), "not started: the run stopped after `a` failed because of the environment");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_cancels_running_steps_and_starts_nothing_new() {
        let wf = workflow("w").step("a", &[]).step("b", &[]).step("c", &["a"]).step("d", &[]).build();
        let p = plan(wf, &[], BIG).unwrap();
        let long = |b: &mut Behaviour| b.duration = Duration::from_secs(100);
        let fake = Arc::new(Fake::new().with("a", long).with("b", long));
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.cancel();
        });
        let (report, events) = go(&p, &fake, config(2), cancel).await;
        assert_eq!(report.status, RunStatus::Cancelled);
        assert_eq!(statuses(&report), "a=cancelled b=cancelled c=skipped d=skipped");
        let mut r = fake.record.lock().unwrap();
        r.saw_cancel.sort();
        assert_eq!(r.saw_cancel, ["a", "b"]);
        assert_eq!(r.spans["a"], (0.0, 5.0));
        assert!(!r.spans.contains_key("d"));
        assert_eq!(reason(&report, "c"), "needs `a`, which was cancelled");
        assert_eq!(reason(&report, "d"), "not started: the run was cancelled");
        assert!(events.contains(&Event::StepFailed {
            step: "a".into(),
            status: StepStatus::Cancelled,
            duration_ms: 5000,
            exit_code: None,
            reason: "cancelled".into()
        }));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_before_the_start_runs_nothing() {
        let p = independent(2);
        let fake = Arc::new(Fake::new());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (report, _) = go(&p, &fake, config(2), cancel).await;
        assert_eq!(report.status, RunStatus::Cancelled);
        assert_eq!(statuses(&report), "s0=skipped s1=skipped");
        assert!(fake.record.lock().unwrap().spans.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_executor_fails_its_step_and_the_run_ends() {
        let wf = workflow("w").step("a", &[]).step("b", &["a"]).step("c", &[]).build();
        let p = plan(wf, &[], BIG).unwrap();
        let fake = Arc::new(Fake::new().with("a", |b| b.panic = true));
        let (report, _) = go(&p, &fake, SchedulerConfig { keep_going: true, ..config(2) }, CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Failed);
        assert_eq!(statuses(&report), "a=failed b=skipped c=succeeded");
        assert_eq!(reason(&report, "a"), "the engine crashed while running this step (a bug; please report it)");
        assert_eq!(reason(&report, "b"), "needs `a`, which failed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_plan_succeeds() {
        let p = independent(0);
        let (report, events) = go(&p, &Arc::new(Fake::new()), config(2), CancellationToken::new()).await;
        assert_eq!(report.status, RunStatus::Succeeded);
        assert!(report.steps.is_empty() && events.is_empty());
    }
}
