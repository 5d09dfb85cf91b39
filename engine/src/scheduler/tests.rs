//! The scheduler's tests: a Docker-free fake executor in virtual time.
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
    /// On failure, the outputs it kept (a step with `continue_on_error`).
    partial: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { duration: Duration::from_secs(1), result: Ok(()), exit_code: Some(0), panic: false, cached: false, partial: false }
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
            Ok(()) if b.cached => Outcome::Restored {
                outputs: outputs_of(&step.name),
                exit_code: b.exit_code.unwrap_or(0),
                source: crate::events::CacheSource::Local,
            },
            Ok(()) => Outcome::Executed { outputs: outputs_of(&step.name), duration, exit_code: b.exit_code.unwrap_or(0) },
            Err(reason) => Outcome::Failed { reason, duration, exit_code: b.exit_code, partial: b.partial.then(|| outputs_of(&step.name)) },
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
    while let Some(event) = rx.try_recv() {
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
    assert!(events.contains(&Event::StepFinished {
        step: "a".into(),
        status: StepStatus::Cached,
        duration_ms: 0,
        exit_code: Some(0),
        source: Some(crate::events::CacheSource::Local)
    }));
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
        Event::StepFinished { step: "a".into(), status: StepStatus::Succeeded, duration_ms: 1000, exit_code: Some(0), source: None }
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
            ("c".to_string(), "not started: the run stopped after `a` failed (fail-fast; --keep-going runs it)".to_string()),
        ]
    );
    assert!(events.contains(&Event::StepFailed {
        step: "a".into(),
        status: StepStatus::Failed,
        duration_ms: 1000,
        exit_code: Some(2),
        reason: "exited with code 2".into(),
        allowed: false,
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
        reason: "cancelled".into(),
        allowed: false,
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

/// `a` (allowed to fail) fails after 1 s; `b` is independent and starts after `a` failed (one
/// job); `d` needs `a`, `e` needs `d`.
fn allowed_failure(partial: bool) -> (Plan, Arc<Fake>) {
    let mut a = step("a");
    a.continue_on_error = true;
    let wf = workflow("w").with(a).step("b", &[]).step("d", &["a"]).step("e", &["d"]).build();
    let fake = Fake::new().with("a", |b| {
        b.result = Err(StepFailure::OutOfMemory { limit: GIB });
        b.exit_code = Some(137);
        b.partial = partial;
    });
    (plan(wf, &[], BIG).unwrap(), Arc::new(fake))
}

#[tokio::test(start_paused = true)]
async fn an_allowed_failure_neither_fails_nor_stops_the_run_and_its_dependents_get_what_it_kept() {
    let (p, fake) = allowed_failure(true);
    let (report, events) = go(&p, &fake, config(1), CancellationToken::new()).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(statuses(&report), "a=failed b=succeeded d=succeeded e=succeeded");
    let a = &report.steps[0];
    assert!(a.allowed && !a.not_started);
    assert_eq!((a.exit_code, reason(&report, "a")), (Some(137), "killed: out of memory (limit 1g)"));
    assert!(events.iter().any(|e| matches!(e, Event::StepFailed { step, allowed: true, .. } if step == "a")));
    let upstream = fake.record.lock().unwrap().upstream["d"].clone();
    assert_eq!(upstream, [("a".to_string(), Some(outputs_of("a")))]);
}

#[tokio::test(start_paused = true)]
async fn an_allowed_failure_that_kept_nothing_skips_its_dependents_only() {
    let (p, fake) = allowed_failure(false);
    let (report, _) = go(&p, &fake, config(1), CancellationToken::new()).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(statuses(&report), "a=failed b=succeeded d=skipped e=skipped");
    assert_eq!(reason(&report, "d"), "needs `a`, which failed and kept no outputs");
    assert!(report.steps.iter().all(|s| !s.not_started));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_marks_what_keep_going_would_have_run() {
    let (p, fake) = failing();
    let (report, _) = go(&p, &fake, config(2), CancellationToken::new()).await;
    let not_started: Vec<&str> = report.steps.iter().filter(|s| s.not_started).map(|s| s.step.as_str()).collect();
    // `c` was never started because of fail-fast; `d` and `e` need the failed `a` and would not
    // run with `--keep-going` either.
    assert_eq!(not_started, ["c"]);
}
