//! `engine run`, end to end: load, plan, check the environment, then hand the plan to the
//! scheduler with the engine's real [`Executor`] (stage the workspace, run the container through
//! the Docker executor, export the outputs), and turn the result into a run status.
//!
//! This module wires the parts together; it owns no policy of its own beyond the order of the
//! checks that happen before any container starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cache::{Digest, Store, UpstreamEntry};
use tokio_util::sync::CancellationToken;

use crate::caching::{self, Decision};

use crate::docker::{cleanup, DockerExecutor};
use crate::error::EnvironmentError;
use crate::events::{Event, EventSink, RunStatus};
use crate::executor::{CacheMountJob, Executor, StepContext, StepFailure, StepJob, StepOutcome};
use crate::output::{self, OutputMode};
use crate::plan::{self, HostBudget, Plan};
use crate::record::{self, Recorder, RunRecord, StepRecord, StepState};
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
    /// An image could not be built (exit 1, like a failed step).
    #[error("{0}")]
    ImageFailed(String),
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Environment(_) => crate::error::exit::ENVIRONMENT,
            StartError::Record(crate::record::RecordError::Unreadable { .. }) => crate::error::exit::ENVIRONMENT,
            StartError::ImageFailed(_) => crate::error::exit::STEP_FAILED,
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
    /// `--no-cache`: execute every step (results are still stored).
    pub no_cache: bool,
    pub cache_dir: PathBuf,
}

/// Load, validate and plan `file` against the given budget. Shared by `run`, `plan` and `check`.
pub fn load_and_plan(file: &Path, targets: &[String], policy: &dsl::policy::Policy, budget: HostBudget) -> Result<Plan, StartError> {
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
    let log_limit = record::log_limit().map_err(EnvironmentError)?;
    tracing::debug!(elapsed = ?started.elapsed(), "connected to the daemon");
    // For the run record; asked now so that the answer is there when the record starts.
    let daemon_version = {
        let client = docker.client().clone();
        tokio::spawn(async move { crate::docker::daemon_version(&client).await })
    };
    // Leftovers of engines that died (SIGKILL, power loss) go before we add our own.
    let stale = cleanup::remove_stale(docker.client()).await?;
    let stale_dirs = workspace::remove_stale_run_dirs();
    if !stale.containers.is_empty() || !stale_dirs.is_empty() {
        tracing::info!(containers = stale.containers.len(), dirs = stale_dirs.len(), "removed leftovers of dead runs");
    }
    tracing::debug!(elapsed = ?started.elapsed(), "removed leftovers");
    let budget = docker.host_budget().await?;
    let plan = plan::plan(workflow.clone(), &cfg.targets, budget)?;
    tracing::debug!(elapsed = ?started.elapsed(), "planned");

    // The output folder is checked (and created) before anything is written anywhere.
    let out_path = cfg.out.clone().unwrap_or_else(|| workflow.dir.join(".engine").join("out"));
    let out_dir = workspace::open_out_dir(&workflow.dir, cfg.out.as_deref())
        .map_err(|e| EnvironmentError(format!("cannot use the output folder {}: {e}", out_path.display())))?;

    let store = open_store(&cfg.cache_dir)?;
    let prepared = prepare(&docker, &store, &plan).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "prepared");

    // Secrets are read from the environment before anything starts; only their names go further
    // than the executor.
    let mut secrets = HashMap::new();
    for planned in &plan.steps {
        let step = &planned.step;
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

    // One run at a time per output folder: a second one waits here (Ctrl-C still ends it).
    let Some(_out_lock) = lock_out_dir(&out_dir, &cancel).await? else {
        return Ok(RunStatus::Cancelled);
    };
    let out_dir = Arc::new(out_dir);
    let run_id = new_run_id();
    let run_dir = RunDir::create(&run_id).map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the run: {e}")))?;
    let jobs = cfg.jobs.map(|j| j as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let daemon_version = daemon_version.await.unwrap_or_else(|_| ("unknown".into(), "unknown".into()));
    let recorder = Arc::new(start_record(&cfg, daemon_version, &workflow, &plan, &run_id, out_dir.path(), jobs)?);
    let flusher = recorder.spawn_flusher();
    tracing::debug!(elapsed = ?started.elapsed(), "started the run record");

    let (events, rx) = EventSink::bounded();
    let renderer = output::spawn(cfg.output, cfg.color, rx);
    events.emit(Event::RunStarted {
        run_id: run_id.clone(),
        workflow: workflow.name.clone(),
        steps: plan.steps.iter().map(|p| p.step.name.clone()).collect(),
    });

    // Images build in the background from now on; a step waits only for the image it uses.
    let builds_cancel = cancel.child_token();
    let image_builds = start_image_builds(&docker, &workflow, &prepared, &run_id, &events, &builds_cancel);

    let executor = Arc::new(EngineExecutor {
        docker,
        run_id: run_id.clone(),
        run_dir,
        source_dir: workflow.dir.clone(),
        out_dir,
        prepared,
        secrets,
        store: Arc::new(store),
        workflow: workflow.name.clone(),
        no_cache: cfg.no_cache,
        outputs: Mutex::new(HashMap::new()),
        image_builds: image_builds.clone(),
        recorder: recorder.clone(),
        log_limit,
        needed: plan.steps.iter().flat_map(|p| p.step.needs.iter().cloned()).collect(),
    });
    let config = SchedulerConfig { jobs, budget, keep_going: cfg.keep_going };
    tracing::debug!(elapsed = ?started.elapsed(), "prepared; starting the scheduler");
    let report = scheduler::run(&plan, executor.clone(), config, events.clone(), cancel).await;
    tracing::debug!(elapsed = ?started.elapsed(), "scheduler done");
    // Builds nobody waits for any more (fail-fast stopped the run) are stopped and awaited, so
    // that their containers are gone before the run ends.
    builds_cancel.cancel();
    for build in image_builds.values() {
        let _ = build.clone().await;
    }

    // Safety net: every executor removes its own containers; this catches anything a bug or a
    // dropped future left behind, so `docker ps --filter label=engine.run` shows nothing of us.
    let _ = cleanup::remove_run(executor.docker.client(), &run_id).await;
    tracing::debug!(elapsed = ?started.elapsed(), "removed the run's containers");

    // The final record: how the run and every step ended (skips and cancellations included).
    let finished = record::timestamp(std::time::SystemTime::now());
    flusher.abort();
    let written = recorder.finish(|r| {
        r.status = report.status.into();
        r.finished_at = Some(finished);
        r.duration_ms = Some(started.elapsed().as_millis() as u64);
        for summary in &report.steps {
            if let Some(s) = r.steps.iter_mut().find(|s| s.name == summary.step) {
                s.status = summary.status.into();
                s.reason = summary.reason.clone();
                if s.exit_code.is_none() {
                    s.exit_code = summary.exit_code;
                }
            }
        }
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write the run record");
    }
    // Old records go (by count and age; never this run, nor a live engine's).
    let (records_dir, this_run) = (workflow.dir.clone(), run_id.clone());
    let _ = tokio::task::spawn_blocking(move || record::prune_after_run(&records_dir, &this_run)).await;

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

/// Take the exclusive lock on the output folder; while another engine holds it, say so once on
/// stderr and poll, so that Ctrl-C (`cancel`) ends the wait at once. `None` when cancelled.
async fn lock_out_dir(out: &cache::safe::PinnedDir, cancel: &CancellationToken) -> Result<Option<workspace::OutLock>, EnvironmentError> {
    let mut told = false;
    loop {
        match workspace::try_lock_out(out) {
            Ok(Ok(lock)) => return Ok(Some(lock)),
            Ok(Err(holder)) => {
                if !told {
                    let pid = holder.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
                    eprintln!("waiting for another engine run using {} ({pid})…", out.path().display());
                    told = true;
                }
            }
            Err(e) => return Err(EnvironmentError(format!("cannot lock the output folder {}: {e}", out.path().display()))),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

/// Write the first version of the run's record: every planned step `pending`.
fn start_record(
    cfg: &RunConfig,
    (docker_version, docker_api_version): (String, String),
    workflow: &dsl::Workflow,
    plan: &Plan,
    run_id: &str,
    out_dir: &Path,
    jobs: usize,
) -> Result<Recorder, EnvironmentError> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let record = RunRecord {
        schema: record::SCHEMA.to_string(),
        run_id: run_id.to_string(),
        status: record::RecordStatus::Incomplete,
        started_at: record::timestamp(std::time::SystemTime::now()),
        finished_at: None,
        duration_ms: None,
        engine: record::EngineInfo::current(),
        host: record::HostInfo {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            docker_version,
            docker_api_version,
        },
        workflow: record::WorkflowInfo {
            name: workflow.name.clone(),
            file: cfg.file.display().to_string(),
            dir: absolute(&workflow.dir),
            // The text the workflow was loaded from: the file is not read a second time.
            digest: record::sha256(workflow.source.text.as_bytes()),
        },
        invocation: record::Invocation {
            targets: cfg.targets.clone(),
            jobs,
            keep_going: cfg.keep_going,
            no_cache: cfg.no_cache,
            out_dir: absolute(out_dir),
        },
        steps: plan.steps.iter().map(|p| record::pending(&p.step)).collect(),
    };
    Recorder::create(&workflow.dir, record)
        .map_err(|e| EnvironmentError(format!("cannot write the run record under {}: {e}", record::runs_dir(&workflow.dir).display())))
}

/// What `run`, `plan` and `cache explain` need to know about each planned step before deciding:
/// its selected input files, hashed, and its image reference and ID.
pub struct Prepared {
    pub inputs: HashMap<String, Vec<String>>,
    pub hashed: HashMap<String, Vec<cache::InputEntry>>,
    pub images: HashMap<String, String>,
    pub image_ids: HashMap<String, String>,
    /// Names under `images:` the planned steps use; built by `start_image_builds`.
    pub built: std::collections::BTreeSet<String>,
}

pub fn open_store(dir: &Path) -> Result<Store, EnvironmentError> {
    Store::open(dir).map_err(|e| EnvironmentError(format!("cannot use the cache directory {}: {e}", dir.display())))
}

/// Select and hash every step's inputs (one walk, one parallel hashing pass over the union, with
/// the stat cache), and resolve every image to its ID. Errors here stop the run before any
/// container starts.
pub async fn prepare(docker: &DockerExecutor, store: &Store, plan: &Plan) -> Result<Prepared, StartError> {
    let workflow = &plan.workflow;
    let t = Instant::now();
    // The stat cache (large for a large tree) loads while the tree is walked.
    let (root, cache_dir) = (workflow.dir.clone(), store.dir().to_path_buf());
    let stat = tokio::task::spawn_blocking(move || cache::hash::StatCache::load(&cache_dir, &root));
    let tree = SourceTree::scan(&workflow.dir)?;
    tracing::debug!(elapsed = ?t.elapsed(), "scanned the workflow folder");
    let mut inputs = HashMap::new();
    let mut images = HashMap::new();
    let mut image_ids = HashMap::new();
    let mut resolved: HashMap<String, String> = HashMap::new();
    let mut built = std::collections::BTreeSet::new();
    for planned in &plan.steps {
        let step = &planned.step;
        inputs.insert(step.name.clone(), tree.select(&step.name, &step.inputs)?);
        match &step.image {
            dsl::ImageRef::Reference(image) => {
                if !resolved.contains_key(image) {
                    // Found locally, or pulled from its registry (progress on stderr, so that
                    // `--output json` on stdout stays one event per line).
                    let builder = images::Builder::new(docker.client().clone());
                    let progress = |reference: &str, _: &str, line: &str| eprintln!("pull {reference} | {line}");
                    let id = builder.ensure_base(image, &progress).await.map_err(|e| match e {
                        images::BuildError::Environment(m) => StartError::Environment(EnvironmentError(m)),
                        other => StartError::Environment(EnvironmentError(other.to_string())),
                    })?;
                    resolved.insert(image.clone(), id);
                }
                image_ids.insert(step.name.clone(), resolved[image].clone());
                images.insert(step.name.clone(), image.clone());
            }
            // Built by `start_image_builds` once the run has started (its output is part of it).
            dsl::ImageRef::Built(name) => {
                built.insert(name.clone());
            }
        }
    }

    tracing::debug!(elapsed = ?t.elapsed(), "selected inputs and resolved images");
    // The union of every step's selection, hashed once. Selections are sorted, so sorting and
    // deduplicating references is cheap even for 100,000 files.
    let mut union: Vec<&String> = inputs.values().flatten().collect();
    union.sort_unstable();
    union.dedup();
    let all: Vec<String> = union.into_iter().cloned().collect();
    check_lock(docker, workflow).await?;
    let mut stat = stat.await.map_err(|e| EnvironmentError(format!("cannot load the stat cache: {e}")))?;
    tracing::debug!(elapsed = ?t.elapsed(), "loaded the stat cache");
    let root = workflow.dir.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let entries = cache::hash::hash_inputs(&root, &all, &mut stat)?;
        tracing::debug!(elapsed = ?t.elapsed(), files_read = cache::hash::files_read(&stat), "hashed the inputs");
        // A stat cache that cannot be saved only costs a re-hash next time.
        let _ = stat.save();
        tracing::debug!(elapsed = ?t.elapsed(), "saved the stat cache");
        // Freeing 100,000 entries takes longer than using them did: not on the critical path.
        std::thread::spawn(move || drop(stat));
        Ok::<_, std::io::Error>(entries)
    })
    .await
    .map_err(|e| EnvironmentError(format!("cannot hash the inputs: {e}")))?
    .map_err(|e| EnvironmentError(format!("cannot read the inputs under {}: {e}", workflow.dir.display())))?;
    let hashed = inputs.iter().map(|(step, sel)| (step.clone(), caching::step_inputs(sel, &entries))).collect();
    tracing::debug!(elapsed = ?t.elapsed(), "picked each step's inputs");
    std::thread::spawn(move || drop((tree, entries)));
    Ok(Prepared { inputs, hashed, images, image_ids, built })
}

/// The outcome of one image build as the steps see it: the image ID, or why there is none.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    Built(String),
    Failed(StepFailure),
}

type ImageBuild = futures_util::future::Shared<futures_util::future::BoxFuture<'static, ImageOutcome>>;

/// Start building every image the planned steps use, each on its own task; build output goes to
/// `events` as log lines of `image <name>/<stage>`. Returns one shared future per image name.
fn start_image_builds(
    docker: &DockerExecutor,
    workflow: &Arc<dsl::Workflow>,
    prepared: &Prepared,
    run_id: &str,
    events: &EventSink,
    cancel: &CancellationToken,
) -> HashMap<String, ImageBuild> {
    use futures_util::FutureExt;
    let mut builds = HashMap::new();
    for name in &prepared.built {
        let (client, workflow, run_id) = (docker.client().clone(), workflow.clone(), run_id.to_string());
        let (events, cancel, name_owned) = (events.clone(), cancel.clone(), name.clone());
        let task = tokio::spawn(async move {
            let Some(def) = workflow.images.get(&name_owned) else {
                return ImageOutcome::Failed(StepFailure::ImageFailed(format!("image `{name_owned}` is not defined under `images:`")));
            };
            let builder = images::Builder::new(client);
            let owner = crate::docker::owner::owner_labels();
            let ctx = images::BuildContext {
                workflow: &workflow.name,
                dir: &workflow.dir,
                run_id: &run_id,
                no_cache: false,
                container_labels: &owner,
            };
            let log = |image: &str, stage: &str, line: &str| {
                events.emit(Event::Log {
                    step: format!("image {image}/{stage}"),
                    stream: crate::events::Stream::Stdout,
                    line: line.to_string(),
                });
            };
            match builder.build(&ctx, &name_owned, def, &log, &cancel).await {
                Ok(image) => ImageOutcome::Built(image.id),
                Err(images::BuildError::Environment(m)) => ImageOutcome::Failed(StepFailure::Environment(m)),
                Err(images::BuildError::Cancelled(_)) => ImageOutcome::Failed(StepFailure::Cancelled),
                Err(e) => ImageOutcome::Failed(StepFailure::ImageFailed(e.to_string())),
            }
        });
        let build = async move {
            task.await.unwrap_or_else(|e| ImageOutcome::Failed(StepFailure::ImageFailed(format!("the image build stopped: {e}"))))
        }
        .boxed()
        .shared();
        builds.insert(name.clone(), build);
    }
    builds
}

/// With an `engine.lock` beside the workflow, every base reference must resolve to its pinned ID.
async fn check_lock(docker: &DockerExecutor, workflow: &dsl::Workflow) -> Result<(), StartError> {
    let Some(lock) = crate::lock::read(&workflow.dir)? else { return Ok(()) };
    let resolved = resolve_bases(docker, workflow).await?;
    crate::lock::check(&lock, &resolved)?;
    Ok(())
}

/// Every base reference of the workflow and the image ID it resolves to now.
pub async fn resolve_bases(
    docker: &DockerExecutor,
    workflow: &dsl::Workflow,
) -> Result<std::collections::BTreeMap<String, String>, EnvironmentError> {
    let mut resolved = std::collections::BTreeMap::new();
    for reference in crate::lock::base_references(workflow) {
        let id = docker.image_id(&reference).await?;
        resolved.insert(reference, id);
    }
    Ok(resolved)
}

/// The real executor: the cache check, host-side staging and export around one container run.
struct EngineExecutor {
    docker: DockerExecutor,
    run_id: String,
    run_dir: RunDir,
    source_dir: PathBuf,
    /// The output folder, held open (exports go through it, never through its path again).
    out_dir: Arc<cache::safe::PinnedDir>,
    prepared: Prepared,
    secrets: HashMap<String, String>,
    store: Arc<Store>,
    workflow: String,
    no_cache: bool,
    /// Output digest of every step that succeeded or was restored: the upstream part of the keys
    /// of the steps that need it.
    outputs: Mutex<HashMap<String, Digest>>,
    /// Images of `images:` being built; a step using one waits for it (and only for it).
    image_builds: HashMap<String, ImageBuild>,
    recorder: Arc<Recorder>,
    /// Most bytes of a step's log kept in the record (and the cache).
    log_limit: u64,
    /// Steps some planned step needs: their collected outputs stay for staging. The others'
    /// are moved to the output folder rather than copied.
    needed: std::collections::HashSet<String>,
}

impl EngineExecutor {
    /// Record one step's progress; a record that cannot be written costs the audit, not the run.
    fn record(&self, step: &str, f: impl FnOnce(&mut StepRecord)) {
        if let Err(e) = self.recorder.update_step(step, f) {
            tracing::warn!(step, error = %e, "cannot write the run record");
        }
    }

    /// Keep a step's log beside the record.
    fn record_log(&self, step: &str, log: &[u8]) -> Option<record::LogRecord> {
        self.recorder.write_log(step, log).map_err(|e| tracing::warn!(step, error = %e, "cannot write the step log")).ok()
    }

    fn upstream(&self, step: &dsl::Step) -> Result<Vec<UpstreamEntry>, StepFailure> {
        let outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        step.needs
            .iter()
            .map(|n| match outputs.get(n) {
                Some(d) => Ok(UpstreamEntry { step: n.clone(), outputs: *d }),
                // The scheduler starts a step only after its needs succeeded.
                None => Err(StepFailure::Environment(format!("internal: `{n}` has no recorded outputs"))),
            })
            .collect()
    }

    /// Restore a cache hit into the step's collect folder and export it. `None` when the entry
    /// turned out damaged (it is removed; the step runs instead).
    async fn restore(&self, step: &dsl::Step, manifest: cache::Manifest) -> Option<Result<(), StepFailure>> {
        let collect = self.run_dir.collected(&step.name);
        let store = self.store.clone();
        let (out_dir, name) = (self.out_dir.clone(), step.name.clone());
        let needed = self.needed.contains(&name);
        let restored = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&collect);
            std::fs::create_dir_all(&collect).map_err(|e| e.to_string())?;
            match store.restore(&manifest, &collect) {
                Ok(()) => {}
                Err(cache::store::StoreError::Corrupt { .. }) => return Ok(false),
                Err(e) => return Err(e.to_string()),
            }
            let export = if needed { workspace::export } else { workspace::export_by_move };
            export(&collect, &out_dir, &name).map_err(|e| format!("cannot export the outputs to {}: {e}", out_dir.path().display()))?;
            Ok(true)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match restored {
            Ok(true) => Some(Ok(())),
            Ok(false) => {
                tracing::warn!(step = %step.name, "cache entry damaged; it was removed and the step runs");
                None
            }
            Err(e) => Some(Err(StepFailure::Environment(format!("cannot restore step `{}` from the cache: {e}", step.name)))),
        }
    }
}

impl Executor for EngineExecutor {
    async fn execute(&self, step: Arc<dsl::Step>, ctx: StepContext) -> StepOutcome {
        let name = step.name.clone();
        let upstream = match self.upstream(&step) {
            Ok(u) => u,
            Err(f) => return failure(f),
        };
        let (image, image_id) = match &step.image {
            dsl::ImageRef::Built(image_name) => match self.image_builds.get(image_name) {
                // Containers are created from the ID: what ran is exactly what the key names.
                Some(build) => match build.clone().await {
                    ImageOutcome::Built(id) => (id.clone(), id),
                    ImageOutcome::Failed(f) => return failure(f),
                },
                None => return failure(StepFailure::ImageFailed(format!("image `{image_name}` was not built"))),
            },
            dsl::ImageRef::Reference(_) => (
                self.prepared.images.get(&name).cloned().unwrap_or_default(),
                self.prepared.image_ids.get(&name).cloned().unwrap_or_default(),
            ),
        };
        let inputs = self.prepared.hashed.get(&name).cloned().unwrap_or_default();
        let t = Instant::now();
        let components = caching::components(&step, &image_id, inputs, upstream);
        let key = components.key();
        tracing::debug!(step = %name, elapsed = ?t.elapsed(), "computed the key");
        let (run_step, source_date_epoch) = with_source_date_epoch(&step, &key);
        let image_record = record::ImageRecord {
            reference: match &step.image {
                dsl::ImageRef::Reference(r) => r.clone(),
                dsl::ImageRef::Built(n) => format!("images.{n}"),
            },
            id: image_id.clone(),
        };
        self.record(&name, |r| {
            r.inputs_count = components.inputs.len();
            r.key = Some(key.to_string());
            // The input files are not in the record: their manifest is in the store, by digest.
            r.key_components = Some(components.without_inputs());
            r.image = Some(image_record);
            r.source_date_epoch = source_date_epoch;
            r.started_at = Some(record::timestamp(std::time::SystemTime::now()));
        });

        if let Decision::Cached(manifest) = caching::decide(&self.store, &self.workflow, &step, &components, self.no_cache) {
            let (exit_code, digest) = (manifest.exit_code, manifest.outputs_digest());
            let (entries, log_digest, inputs_manifest) = (manifest.entries.clone(), manifest.log, manifest.inputs);
            if let Some(result) = self.restore(&step, *manifest).await {
                if result.is_ok() {
                    self.outputs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), digest);
                    tracing::debug!(step = %name, elapsed = ?t.elapsed(), "restored from the cache");
                    let _ = self.store.record_last(&self.workflow, &name, &components);
                    tracing::debug!(step = %name, elapsed = ?t.elapsed(), "recorded the last run");
                    let log = self.store.read_blob(&log_digest).and_then(|bytes| self.record_log(&name, &bytes));
                    self.record(&name, |r| {
                        r.status = StepState::Cached;
                        r.cached = true;
                        r.outputs = entries;
                        r.outputs_digest = Some(digest.to_string());
                        r.inputs_manifest = inputs_manifest;
                        r.exit_code = Some(exit_code);
                        r.duration_ms = Some(0);
                        r.log = log;
                    });
                }
                return StepOutcome { result, duration: Default::default(), exit_code: Some(exit_code), cached: true };
            }
        }

        let workspace = self.run_dir.workspace(&name);
        let collect_to = self.run_dir.collected(&name);
        let upstream_dirs: Vec<PathBuf> = step.needs.iter().map(|n| self.run_dir.collected(n)).collect();
        let selected = self.prepared.inputs.get(&name).cloned().unwrap_or_default();
        let (source, ws, collect) = (self.source_dir.clone(), workspace.clone(), collect_to.clone());
        let input_manifest = Arc::new(components.inputs.clone());
        let (store, hashed) = (self.store.clone(), input_manifest.clone());
        let staged = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&collect);
            workspace::stage(&source, &selected, &upstream_dirs, &ws)?;
            // The inputs' contents go to the store too (once per content): `engine replay`
            // re-creates this workspace from there, whatever happens to the working tree later.
            let changed = store.store_inputs(&source, &hashed).map_err(std::io::Error::other)?;
            if !changed.is_empty() {
                tracing::warn!(files = ?changed, "inputs changed while the run started; a replay will miss them");
            }
            std::fs::create_dir_all(&collect)
        })
        .await;
        if let Err(e) = flatten(staged) {
            return failure(StepFailure::Environment(format!("cannot prepare the workspace of step `{name}`: {e}")));
        }
        let mut caches = Vec::new();
        for mount in &step.caches {
            match self.store.mount_dir(&mount.name) {
                Ok(host_dir) => caches.push(CacheMountJob { name: mount.name.clone(), path: mount.path.clone(), host_dir }),
                Err(e) => return failure(StepFailure::Environment(format!("cannot prepare cache mount `{}`: {e}", mount.name))),
            }
        }

        // The log goes to the record's folder line by line as the step runs (capped, see
        // `record::StepLog`); never gathered in memory. If it cannot be written, the run goes on
        // without it.
        let step_log = self
            .recorder
            .step_log(&name, self.log_limit)
            .map_err(|e| tracing::warn!(step = %name, error = %e, "cannot write the step log"))
            .ok();
        let events = match &step_log {
            Some(log) => ctx.events.capturing_logs_into(log.clone()),
            None => ctx.events.clone(),
        };
        let job = StepJob {
            run_id: self.run_id.clone(),
            image,
            workspace: workspace.clone(),
            collect_to: collect_to.clone(),
            secrets: step.secrets.iter().filter_map(|s| self.secrets.get(s).map(|v| (s.clone(), v.clone()))).collect(),
            caches,
            step: run_step,
        };
        let mut outcome = self.docker.run_step(job, StepContext { events, cancel: ctx.cancel }).await;

        let succeeded = outcome.result.is_ok();
        let duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX);
        let (store, out_dir, wf, step_name) = (self.store.clone(), self.out_dir.clone(), self.workflow.clone(), name.clone());
        let log_writer = step_log.clone();
        let needed = self.needed.contains(&name);
        let finished = tokio::task::spawn_blocking(move || -> Result<Option<cache::Manifest>, String> {
            // The workspace is no longer needed; its space is freed as soon as the step ends.
            let _ = std::fs::remove_dir_all(&workspace);
            if !succeeded {
                // A failed step is never cached, and what it collected (up to a limit) goes now.
                let _ = std::fs::remove_dir_all(&collect_to);
                return Ok(None);
            }
            // The kept log (at most the log limit) is what the cache entry's log digest covers.
            let log = match &log_writer {
                Some(w) => {
                    w.finish().map_err(|e| format!("cannot write the step log: {e}"))?;
                    std::fs::read(w.path()).map_err(|e| format!("cannot read the step log back: {e}"))?
                }
                None => Vec::new(),
            };
            let manifest = store
                .put(key, &wf, &step_name, &collect_to, 0, &log, duration_ms, Some(input_manifest.as_slice()))
                .map_err(|e| format!("cannot store the outputs in the cache: {e}"))?;
            let export = if needed { workspace::export } else { workspace::export_by_move };
            export(&collect_to, &out_dir, &step_name)
                .map_err(|e| format!("cannot export the outputs to {}: {e}", out_dir.path().display()))?;
            Ok(Some(manifest))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        // Finished above for a success (`finish` answers the same again); here otherwise.
        let log_record = match step_log {
            Some(log) => match tokio::task::spawn_blocking(move || log.finish()).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    tracing::warn!(step = %name, error = %e, "cannot write the step log");
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let mut recorded_outputs = None;
        match finished {
            Ok(Some(manifest)) => {
                let digest = manifest.outputs_digest();
                self.outputs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), digest);
                let _ = self.store.record_last(&self.workflow, &name, &components);
                recorded_outputs = Some((manifest.entries, digest, manifest.inputs));
            }
            Ok(None) => {}
            Err(e) => outcome.result = Err(StepFailure::Environment(format!("step `{name}`: {e}"))),
        }
        let (result, exit_code) = (outcome.result.clone(), outcome.exit_code);
        self.record(&name, |r| {
            r.status = match &result {
                Ok(()) => StepState::Succeeded,
                Err(StepFailure::Cancelled) => StepState::Cancelled,
                Err(_) => StepState::Failed,
            };
            r.reason = result.err().map(|f| f.to_string());
            r.exit_code = exit_code;
            r.duration_ms = Some(duration_ms);
            r.log = log_record;
            if let Some((entries, digest, inputs_manifest)) = recorded_outputs {
                r.outputs = entries;
                r.outputs_digest = Some(digest.to_string());
                r.inputs_manifest = inputs_manifest;
            }
        });
        outcome
    }
}

/// The step as its container sees it: with `SOURCE_DATE_EPOCH` set from the key unless the step
/// (or the workflow's `env`) sets it. Returns the value the engine added, if it added one.
pub fn with_source_date_epoch(step: &Arc<dsl::Step>, key: &cache::ActionKey) -> (Arc<dsl::Step>, Option<u64>) {
    if step.env.contains_key("SOURCE_DATE_EPOCH") {
        return (step.clone(), None);
    }
    let epoch = record::source_date_epoch(key);
    let mut with = (**step).clone();
    with.env.insert("SOURCE_DATE_EPOCH".to_string(), epoch.to_string());
    (Arc::new(with), Some(epoch))
}

fn failure(f: StepFailure) -> StepOutcome {
    StepOutcome { result: Err(f), duration: Default::default(), exit_code: None, cached: false }
}

fn flatten(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    r.map_err(std::io::Error::other)?
}

/// What the cache will do with one planned step, predicted without running anything.
#[derive(Debug, Clone)]
pub struct Forecast {
    /// Known unless a step it needs will run first (its outputs, hence this key, are unknown).
    pub components: Option<cache::KeyComponents>,
    pub cached: bool,
    /// Why it will run; empty when cached.
    pub reasons: Vec<cache::Reason>,
}

impl Forecast {
    pub fn view(&self) -> plan::CacheView {
        plan::CacheView {
            status: if self.cached { "cached" } else { "run" },
            key: self.components.as_ref().map(|c| c.key().to_string()),
            reasons: self.reasons.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Load, plan and predict, for `engine plan` and `engine cache explain`: each step's key and
/// whether it would be restored or run, and why. Uses the same decision as `run`.
pub async fn forecast(
    file: &Path,
    targets: &[String],
    policy: &dsl::policy::Policy,
    cache_dir: &Path,
    no_cache: bool,
) -> Result<(Plan, Vec<Forecast>), StartError> {
    let workflow = Arc::new(dsl::load_file_with(file, policy)?);
    let docker = DockerExecutor::connect().await?;
    let budget = docker.host_budget().await?;
    let plan = plan::plan(workflow.clone(), targets, budget)?;
    let store = open_store(cache_dir)?;
    let mut prepared = prepare(&docker, &store, &plan).await?;
    // Keys need the image IDs: images are built (usually found, by their stage keys) first.
    let builds = start_image_builds(&docker, &workflow, &prepared, &new_run_id(), &EventSink::null(), &CancellationToken::new());
    for planned in &plan.steps {
        if let dsl::ImageRef::Built(name) = &planned.step.image {
            match builds.get(name).cloned() {
                Some(build) => match build.await {
                    ImageOutcome::Built(id) => {
                        prepared.image_ids.insert(planned.step.name.clone(), id);
                    }
                    ImageOutcome::Failed(StepFailure::Environment(m)) => return Err(EnvironmentError(m).into()),
                    ImageOutcome::Failed(f) => return Err(StartError::ImageFailed(f.to_string())),
                },
                None => return Err(StartError::ImageFailed(format!("image `{name}` was not built"))),
            }
        }
    }
    let mut digests: HashMap<String, Digest> = HashMap::new();
    let mut forecasts = Vec::new();
    for planned in &plan.steps {
        let step = &planned.step;
        if let Some(pending) = step.needs.iter().find(|n| !digests.contains_key(*n)) {
            forecasts.push(Forecast {
                components: None,
                cached: false,
                reasons: vec![cache::Reason::UpstreamWillRun { step: pending.clone() }],
            });
            continue;
        }
        let upstream = step.needs.iter().map(|n| UpstreamEntry { step: n.clone(), outputs: digests[n] }).collect();
        let components = caching::components(
            step,
            prepared.image_ids.get(&step.name).map(String::as_str).unwrap_or_default(),
            prepared.hashed.get(&step.name).cloned().unwrap_or_default(),
            upstream,
        );
        let forecast = match caching::decide(&store, &workflow.name, step, &components, no_cache) {
            Decision::Cached(manifest) => {
                digests.insert(step.name.clone(), manifest.outputs_digest());
                Forecast { components: Some(components), cached: true, reasons: Vec::new() }
            }
            Decision::Run(reasons) => Forecast { components: Some(components), cached: false, reasons },
        };
        forecasts.push(forecast);
    }
    Ok((plan, forecasts))
}
