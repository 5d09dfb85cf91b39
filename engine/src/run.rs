//! `engine run` and `engine plan`, wired: open the session (load, plan, connect, prepare), then
//! hand the plan to the scheduler with the engine's executor stack (`crate::layers`): recording,
//! export, image, caching and staging over the container runner for a run; the dry run for a
//! plan. This module wires the parts together; it owns no policy of its own beyond the order of
//! the checks that happen before any container starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::budget::HostBudget;
use crate::docker::cleanup;
use crate::error::EnvironmentError;
use crate::events::{Event, EventSink, RunStatus};
use crate::executor::{Outcome, RunReason};
use crate::explain::Forecast;
use crate::layers::{caching::Caching, container::Container, dry_run::DryRun, export::Export, image::Image, recording::Recording, staging};
use crate::output::{self, OutputMode};
use crate::plan::Plan;
use crate::record::{self, Recorder, RunRecord};
use crate::remote_cache::RemoteCache;
use crate::scheduler::{self, SchedulerConfig};
use crate::session::{self, Session, StepImages};
use crate::workspace::{self, RunDir};

pub use crate::budget::local_budget;
pub use crate::session::inputs::check_inputs;
pub use crate::session::{load_and_plan, new_run_id, open_store, resolve_bases, StartError};

/// What `engine run` was asked to do.
pub struct RunConfig {
    /// The workflow file.
    pub file: PathBuf,
    /// Steps to run with what they need; empty: every step.
    pub targets: Vec<String>,
    /// `--jobs`: most steps running at once; default: the number of CPUs.
    pub jobs: Option<u32>,
    /// `--keep-going`: after a failure, still run every step whose needs succeeded.
    pub keep_going: bool,
    /// `--out`: where outputs are exported; default: `.engine/out` beside the workflow.
    pub out: Option<PathBuf>,
    /// How progress is printed.
    pub output: OutputMode,
    /// Colour step names in plain output.
    pub color: bool,
    /// The operator policy every step must pass.
    pub policy: dsl::policy::Policy,
    /// `--no-cache`: execute every step (results are still stored).
    pub no_cache: bool,
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// `--remote-cache` (or the policy's `remote_cache:`), connected.
    pub remote: Option<remote::Remote>,
}

/// How long the daemon's push or pull of one engine-built image to or from the remote cache may
/// take.
const IMAGE_TRANSFER_BOUND: std::time::Duration = std::time::Duration::from_secs(600);

/// Run a workflow. `Err` when it could not start; otherwise the status of the run.
pub async fn run(cfg: RunConfig, cancel: CancellationToken) -> Result<RunStatus, StartError> {
    let started = Instant::now();
    let mut log_limit = None;
    let mut daemon_version = None;
    let session = Session::open(&cfg.file, &cfg.targets, &cfg.policy, |docker| {
        let (log_limit, daemon_version) = (&mut log_limit, &mut daemon_version);
        async move {
            *log_limit = Some(record::log_limit().map_err(EnvironmentError)?);
            tracing::debug!(elapsed = ?started.elapsed(), "connected to the daemon");
            // For the run record; asked now so that the answer is there when the record starts.
            let client = docker.daemon().clone();
            *daemon_version = Some(tokio::spawn(async move { crate::docker::daemon_version(&client).await }));
            // Leftovers of engines that died (SIGKILL, power loss) go before we add our own.
            let stale = cleanup::remove_stale(docker.daemon()).await?;
            let stale_dirs = workspace::remove_stale_run_dirs();
            if !stale.containers.is_empty() || !stale_dirs.is_empty() {
                tracing::info!(containers = stale.containers.len(), dirs = stale_dirs.len(), "removed leftovers of dead runs");
            }
            Ok(())
        }
    })
    .await?;
    let log_limit = log_limit.unwrap_or(record::DEFAULT_LOG_LIMIT);
    tracing::debug!(elapsed = ?started.elapsed(), "planned");
    let Session { workflow, docker, budget, plan } = session;

    // The output folder is checked (and created) before anything is written anywhere.
    let out_path = cfg.out.clone().unwrap_or_else(|| workflow.dir.join(".engine").join("out"));
    let out_dir = workspace::open_out_dir(&workflow.dir, cfg.out.as_deref())
        .map_err(|e| EnvironmentError(format!("cannot use the output folder {}: {e}", out_path.display())))?;

    let store = Arc::new(open_store(&cfg.cache_dir)?);
    let prepared = session::prepare(&docker, &store, &plan, &output::notes::pull_line).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "prepared");

    // Secrets are read from the environment before anything starts; only their names go further
    // than the stager.
    let (secrets, unset) = staging::read_secrets(plan.steps.iter().map(|p| (p.step.name.as_str(), p.step.secrets.as_slice())));
    if let Some((step, name)) = unset.first() {
        return Err(EnvironmentError(format!(
            "step `{step}` needs the secret `{name}`, which is not set: export {name} in the environment of `engine run`"
        ))
        .into());
    }

    // One run at a time per output folder: a second one waits here (Ctrl-C still ends it).
    let Some(_out_lock) = lock_out_dir(&out_dir, &cancel).await? else {
        return Ok(RunStatus::Cancelled);
    };
    let out_dir = Arc::new(out_dir);
    let run_id = new_run_id();
    let run_dir =
        Arc::new(RunDir::create(&run_id).map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the run: {e}")))?);
    let jobs = cfg.jobs.map(|j| j as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let daemon_version = match daemon_version {
        Some(v) => v.await.unwrap_or_else(|_| ("unknown".into(), "unknown".into())),
        None => ("unknown".into(), "unknown".into()),
    };
    // Creates the record's folder and writes the record: file I/O, off the async workers.
    let recorder =
        Arc::new(crate::events::blocking(|| start_record(&cfg, daemon_version, &workflow, &plan, &run_id, out_dir.path(), jobs))?);
    let flusher = recorder.spawn_flusher();
    tracing::debug!(elapsed = ?started.elapsed(), "started the run record");

    let (events, rx) = EventSink::channel();
    let renderer = output::spawn(cfg.output, cfg.color, rx);
    events.emit(Event::RunStarted {
        run_id: run_id.clone(),
        workflow: workflow.name.clone(),
        steps: plan.steps.iter().map(|p| p.step.name.clone()).collect(),
    });

    // Images build in the background from now on; a step waits only for the image it uses.
    let builds_cancel = cancel.child_token();
    // The remote cache's image side: engine-built images pulled instead of built, pushed once built.
    let image_remote = cfg.remote.as_ref().map(|r| session::images::image_remote(r, IMAGE_TRANSFER_BOUND));
    let images = Arc::new(StepImages::start(&docker, &workflow, &prepared, &run_id, &events, &builds_cancel, image_remote));

    // The remote cache's first fault is told once, and the run goes on locally.
    let remote_cache = cfg.remote.clone().map(|r| RemoteCache::new(r, Box::new(output::notes::RemoteWarnings)));
    // Lookups of the keys known now (steps without needs) start at once, at most
    // `LOOKUPS_AT_ONCE` at a time, instead of each waiting for its step's job slot.
    if let Some(remote) = remote_cache.as_ref().filter(|r| r.reads()) {
        let (p, identities, hashed, s, no_cache) =
            (plan.clone(), prepared.image_identities.clone(), prepared.hashed.clone(), store.clone(), cfg.no_cache);
        let wanted =
            tokio::task::spawn_blocking(move || crate::prefetch::wanted(&p, &identities, &hashed, &s, no_cache)).await.unwrap_or_default();
        tracing::debug!(elapsed = ?started.elapsed(), keys = wanted.len(), "remote prefetch started");
        remote.prefetch(&store, wanted, &cancel);
    }

    // The layers, outermost first: record, export, image, cache, stage, container.
    let container = Container { docker: docker.clone(), run_id: run_id.clone() };
    let staging = staging::Staging {
        inner: container,
        run_dir: run_dir.clone(),
        source_dir: workflow.dir.clone(),
        inputs: Arc::new(prepared.inputs),
        store: store.clone(),
        secrets: Arc::new(secrets),
        run_started: record::run_started_secs(&run_id),
    };
    // Steps some planned step needs: their outputs are written to their collect folders (staged
    // from there) and exported by copy; the others' are moved, or left in the store on a hit.
    let needed: Arc<HashSet<String>> = Arc::new(plan.steps.iter().flat_map(|p| p.step.needs.iter().cloned()).collect());
    let caching = Caching {
        inner: staging,
        store: store.clone(),
        workflow: workflow.name.clone(),
        no_cache: cfg.no_cache,
        inputs: Arc::new(prepared.hashed),
        run_dir: run_dir.clone(),
        source_dir: workflow.dir.clone(),
        needed: needed.clone(),
        remote: remote_cache.clone(),
    };
    let image = Image { inner: caching, images: images.clone() };
    let export = Export { inner: image, out_dir, needed, store: store.clone() };
    let executor =
        Arc::new(Recording { inner: export, recorder: recorder.clone(), log_limit, run_started: record::run_started_secs(&run_id) });

    let config = SchedulerConfig { jobs, budget, keep_going: cfg.keep_going };
    tracing::debug!(elapsed = ?started.elapsed(), "prepared; starting the scheduler");
    let report = scheduler::run(&plan, executor.clone(), config, events.clone(), cancel.clone()).await;
    tracing::debug!(elapsed = ?started.elapsed(), "scheduler done");
    // Builds nobody waits for any more (fail-fast stopped the run) are stopped and awaited, so
    // that their containers are gone before the run ends.
    builds_cancel.cancel();
    images.wait().await;

    // Safety net: every executor removes its own containers; this catches anything a bug or a
    // dropped future left behind, so `docker ps --filter label=engine.run` shows nothing of us.
    let _ = cleanup::remove_run(docker.daemon(), &run_id).await;
    tracing::debug!(elapsed = ?started.elapsed(), "removed the run's containers");

    // Uploads still running are waited for (bounded; none after Ctrl-C: an aborted upload has
    // not pushed its manifest, so nothing half-written is trusted later).
    let remote_summary = match &remote_cache {
        Some(remote) => {
            let mut summary = remote.finish(crate::remote_cache::FINISH_BOUND, &cancel).await;
            if let Some(report) = images.remote_report() {
                summary.images_pulled = report.pulled.into_iter().map(|(name, _)| name).collect();
                summary.images_pushed = report.pushed.into_iter().map(|(name, _)| name).collect();
            }
            Some(summary)
        }
        None => None,
    };

    // The final record: how the run and every step ended (skips and cancellations included).
    let finished = record::timestamp(std::time::SystemTime::now());
    flusher.abort();
    // Written and synced (fsync): off the async workers.
    let written = crate::events::blocking(|| {
        recorder.finish(|r| {
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
        })
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write the run record");
    }
    // Old records go (by count and age; never this run, nor a live engine's).
    let (records_dir, this_run) = (workflow.dir.clone(), run_id.clone());
    let _ = tokio::task::spawn_blocking(move || record::prune_after_run(&records_dir, &this_run)).await;

    if let Some(summary) = remote_summary {
        events.emit(Event::RemoteCache(summary));
    }
    events.emit(Event::RunFinished {
        run_id,
        status: report.status,
        duration_ms: started.elapsed().as_millis() as u64,
        steps: report.steps,
    });
    drop(events);
    drop(executor);
    drop(run_dir);
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
                    output::notes::waiting_for_out_dir(out.path(), holder);
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
            digest: cache::Digest::of(workflow.source.text.as_bytes()),
            modules: workflow
                .modules
                .iter()
                .map(|m| record::ModuleInfo { name: m.name.clone(), digest: cache::Digest::of(m.text.as_bytes()) })
                .collect(),
        },
        invocation: record::Invocation {
            targets: cfg.targets.clone(),
            jobs,
            keep_going: cfg.keep_going,
            no_cache: cfg.no_cache,
            out_dir: absolute(out_dir),
            remote_cache: cfg
                .remote
                .as_ref()
                .map(|r| record::RemoteCacheInfo { url: r.url().to_string(), mode: r.mode().as_str().to_string() }),
        },
        steps: plan.steps.iter().map(|p| record::pending(&p.step)).collect(),
    };
    Recorder::create(&workflow.dir, record)
        .map_err(|e| EnvironmentError(format!("cannot write the run record under {}: {e}", record::runs_dir(&workflow.dir).display())))
}

/// Load, plan and predict, for `engine plan` and `engine cache explain`: the same session as a
/// run, with the dry-run executor through the same scheduler. Each step's key and whether it
/// would be restored or run, and why, by the same decision as `run`. Builds no image and creates
/// no container.
pub async fn forecast(
    file: &Path,
    targets: &[String],
    policy: &dsl::policy::Policy,
    cache_dir: &Path,
    no_cache: bool,
    remote: Option<remote::Remote>,
) -> Result<(Plan, Vec<Forecast>), StartError> {
    let session = Session::open(file, targets, policy, |_| async { Ok(()) }).await?;
    let store = Arc::new(open_store(cache_dir)?);
    let prepared = session.prepare(&store, &output::notes::pull_line).await?;
    let built = session::images::lookup(&session.docker, &session.workflow, &prepared).await?;
    let executor = Arc::new(DryRun {
        store,
        workflow: session.workflow.name.clone(),
        no_cache,
        inputs: prepared.hashed,
        image_identities: prepared.image_identities,
        built,
        remote,
        remote_state: Default::default(),
    });
    let config = SchedulerConfig { jobs: session.plan.steps.len().max(1), budget: HostBudget::UNLIMITED, keep_going: true };
    let report = scheduler::run(&session.plan, executor, config, EventSink::null(), CancellationToken::new()).await;
    let records = record::list(&session.workflow.dir);
    let forecasts = report
        .outcomes
        .into_iter()
        .zip(&session.plan.steps)
        .map(|(outcome, planned)| {
            let mut forecast = match outcome {
                Some(Outcome::Planned(prediction)) => Forecast::of(*prediction),
                // The dry run predicts every step; anything else is a bug, said as a reason.
                _ => Forecast {
                    components: None,
                    cached: false,
                    source: crate::events::CacheSource::Local,
                    reasons: vec![RunReason::Cache(cache::Reason::EntryMissing)],
                },
            };
            forecast.note_last_run(&session.workflow.name, &planned.step.name, &records);
            forecast
        })
        .collect();
    Ok((session.plan, forecasts))
}
