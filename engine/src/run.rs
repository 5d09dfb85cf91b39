//! `engine run`, end to end: load, plan, check the environment, then hand the plan to the
//! scheduler with the engine's real [`Executor`] (stage the workspace, run the container through
//! the Docker executor, export the outputs), and turn the result into a run status.
//!
//! This module wires the parts together; it owns no policy of its own beyond the order of the
//! checks that happen before any container starts.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::docker::{cleanup, DockerExecutor};
use crate::error::EnvironmentError;
use crate::events::{Event, EventSink, RunStatus};
use crate::executor::{Executor, StepContext, StepFailure, StepJob, StepOutcome};
use crate::output::{self, OutputMode};
use crate::plan::{self, HostBudget, Plan};
use crate::scheduler::{self, SchedulerConfig};
use crate::workspace::{self, RunDir, SourceTree};

/// Why a run could not start (its exit code is 2 or 3); a run that started ends in a [`RunStatus`].
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StartError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Load(#[from] dsl::LoadError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Input(#[from] workspace::InputError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Environment(_) => crate::error::exit::ENVIRONMENT,
            _ => crate::error::exit::INVALID,
        }
    }
}

pub struct RunConfig {
    pub file: PathBuf,
    pub targets: Vec<String>,
    pub jobs: Option<u32>,
    pub keep_going: bool,
    pub out: Option<PathBuf>,
    pub output: OutputMode,
    pub color: bool,
    pub policy: dsl::policy::Policy,
}

/// Load, validate and plan `file` against the given budget. Shared by `run`, `plan` and `check`.
pub fn load_and_plan(
    file: &Path,
    targets: &[String],
    policy: &dsl::policy::Policy,
    budget: HostBudget,
) -> Result<Plan, StartError> {
    let workflow = dsl::load_file_with(file, policy)?;
    Ok(plan::plan(Arc::new(workflow), targets, budget)?)
}

/// The CPUs and memory of this machine, for commands that do not talk to the daemon.
pub fn local_budget() -> HostBudget {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(u64::MAX);
    HostBudget { millicpus: cpus * 1000, memory }
}

/// A run id: sortable by start time, unique across concurrent engines on one host.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mix = (now.subsec_nanos() as u64) ^ ((std::process::id() as u64) << 20);
    format!("{:x}{:06x}", now.as_secs(), mix & 0xff_ffff)
}

/// Run a workflow. `Err` when it could not start; otherwise the status of the run.
pub async fn run(cfg: RunConfig, cancel: CancellationToken) -> Result<RunStatus, StartError> {
    let started = Instant::now();
    // Validate first: a broken workflow is reported even when Docker is down.
    let workflow = Arc::new(dsl::load_file_with(&cfg.file, &cfg.policy)?);
    let docker = DockerExecutor::connect().await?;
    // Leftovers of engines that died (SIGKILL, power loss) go before we add our own.
    let stale = cleanup::remove_stale(docker.client()).await?;
    let stale_dirs = workspace::remove_stale_run_dirs();
    if !stale.containers.is_empty() || !stale_dirs.is_empty() {
        tracing::info!(containers = stale.containers.len(), dirs = stale_dirs.len(), "removed leftovers of dead runs");
    }
    let budget = docker.host_budget().await?;
    let plan = plan::plan(workflow.clone(), &cfg.targets, budget)?;

    // Everything a step needs from the host is checked before the first container starts.
    let tree = SourceTree::scan(&workflow.dir)?;
    let mut inputs = HashMap::new();
    let mut images = HashMap::new();
    let mut secrets = HashMap::new();
    let mut checked = BTreeSet::new();
    for planned in &plan.steps {
        let step = &planned.step;
        inputs.insert(step.name.clone(), tree.select(&step.name, &step.inputs)?);
        let image = match &step.image {
            dsl::ImageRef::Reference(r) => r.clone(),
            dsl::ImageRef::Built(name) => {
                return Err(StartError::Invalid(format!(
                    "step `{}` uses image `{name}` from `images:`; building images is not supported by this version yet (use an image reference such as local/busybox:1)",
                    step.name
                )))
            }
        };
        if checked.insert(image.clone()) {
            docker.check_image(&image).await?;
        }
        images.insert(step.name.clone(), image);
        for name in &step.secrets {
            let value = std::env::var(name).map_err(|_| {
                EnvironmentError(format!(
                    "step `{}` needs the secret `{name}`, which is not set: export {name} in the environment of `engine run`",
                    step.name
                ))
            })?;
            secrets.insert(name.clone(), value);
        }
    }

    let out_dir = cfg.out.clone().unwrap_or_else(|| workflow.dir.join(".engine").join("out"));
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        EnvironmentError(format!("cannot create the output folder {}: {e}", out_dir.display()))
    })?;
    let run_id = new_run_id();
    let run_dir = RunDir::create(&run_id)
        .map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the run: {e}")))?;

    let (events, rx) = EventSink::channel();
    let renderer = output::spawn(cfg.output, cfg.color, rx);
    events.emit(Event::RunStarted {
        run_id: run_id.clone(),
        workflow: workflow.name.clone(),
        steps: plan.steps.iter().map(|p| p.step.name.clone()).collect(),
    });

    let executor = Arc::new(EngineExecutor {
        docker,
        run_id: run_id.clone(),
        run_dir,
        source_dir: workflow.dir.clone(),
        out_dir,
        inputs,
        images,
        secrets,
    });
    let jobs = cfg.jobs.map(|j| j as usize).unwrap_or_else(|| {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    });
    let config = SchedulerConfig { jobs, budget, keep_going: cfg.keep_going };
    let report = scheduler::run(&plan, executor.clone(), config, events.clone(), cancel).await;

    // Safety net: every executor removes its own containers; this catches anything a bug or a
    // dropped future left behind, so `docker ps --filter label=engine.run` shows nothing of us.
    let _ = cleanup::remove_run(executor.docker.client(), &run_id).await;

    events.emit(Event::RunFinished {
        run_id,
        status: report.status,
        duration_ms: started.elapsed().as_millis() as u64,
        steps: report.steps,
    });
    drop(events);
    drop(executor);
    let _ = renderer.await;
    Ok(report.status)
}

/// The real executor: host-side staging and export around one container run.
struct EngineExecutor {
    docker: DockerExecutor,
    run_id: String,
    run_dir: RunDir,
    source_dir: PathBuf,
    out_dir: PathBuf,
    inputs: HashMap<String, Vec<String>>,
    images: HashMap<String, String>,
    secrets: HashMap<String, String>,
}

impl Executor for EngineExecutor {
    async fn execute(&self, step: Arc<dsl::Step>, ctx: StepContext) -> StepOutcome {
        let name = step.name.clone();
        let workspace = self.run_dir.workspace(&name);
        let collect_to = self.run_dir.collected(&name);
        let upstream: Vec<PathBuf> = step.needs.iter().map(|n| self.run_dir.collected(n)).collect();
        let inputs = self.inputs.get(&name).cloned().unwrap_or_default();
        let (source, ws, collect) = (self.source_dir.clone(), workspace.clone(), collect_to.clone());
        let staged = tokio::task::spawn_blocking(move || {
            workspace::stage(&source, &inputs, &upstream, &ws)?;
            std::fs::create_dir_all(&collect)
        })
        .await;
        if let Err(e) = flatten(staged) {
            return environment_failure(format!("cannot prepare the workspace of step `{name}`: {e}"));
        }

        let job = StepJob {
            run_id: self.run_id.clone(),
            image: self.images.get(&name).cloned().unwrap_or_default(),
            workspace: workspace.clone(),
            collect_to: collect_to.clone(),
            secrets: step
                .secrets
                .iter()
                .filter_map(|s| self.secrets.get(s).map(|v| (s.clone(), v.clone())))
                .collect(),
            caches: Vec::new(),
            step,
        };
        let mut outcome = self.docker.run_step(job, ctx).await;

        let out_dir = self.out_dir.clone();
        let succeeded = outcome.result.is_ok();
        let step_name = name.clone();
        let exported = tokio::task::spawn_blocking(move || {
            // The workspace is no longer needed; its space is freed as soon as the step ends.
            let _ = std::fs::remove_dir_all(&workspace);
            if succeeded {
                workspace::export(&collect_to, &out_dir, &step_name)
            } else {
                Ok(())
            }
        })
        .await;
        if let Err(e) = flatten(exported) {
            outcome.result = Err(StepFailure::Environment(format!(
                "cannot export the outputs of step `{name}` to {}: {e}",
                self.out_dir.display()
            )));
        }
        outcome
    }
}

fn flatten(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    r.map_err(std::io::Error::other)?
}

fn environment_failure(message: String) -> StepOutcome {
    StepOutcome { result: Err(StepFailure::Environment(message)), duration: Default::default(), exit_code: None, cached: false }
}
