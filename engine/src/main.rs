//! The `engine` binary: parses the command line, dispatches to the library, and is the one place
//! where errors are turned into exit codes (their text, like all text, is `engine::output`'s) (0 ok, 1 step failed, 2 invalid workflow
//! or command line, 3 environment failure, 130 interrupted).

use std::path::{Path, PathBuf};

use clap::Parser;
use engine::cli::{CacheCommand, Cli, Command, GraphFormat, ImagesCommand, OutputFormat, PolicyArg, RunsCommand};
use engine::error::exit;
use engine::error::EnvironmentError;
use engine::events::RunStatus;
use engine::output::notes;
use engine::output::{self, OutputMode};
use engine::run::{self, RunConfig, StartError};
use tokio_util::sync::CancellationToken;

fn main() {
    // A bug must never show a user a panic message with a backtrace or a debug dump.
    std::panic::set_hook(Box::new(|info| {
        notes::internal_error(info.location().map(|l| (l.file(), l.line())));
    }));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Seconds since the start: what a profile of one run needs.
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();

    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            notes::no_runtime(&e);
            std::process::exit(exit::ENVIRONMENT);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Do not wait for blocked background tasks (a hung daemon call) once the outcome is known.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => run_command(args).await,
        Command::Check(args) => check(args.file, &args.policy),
        Command::Plan(args) => plan_command(args).await,
        Command::Graph(args) => graph(args.file, args.format),
        Command::Clean => clean().await,
        Command::Cache(cmd) => cache_command(cmd).await,
        Command::Images(cmd) => images_command(cmd).await,
        Command::Lock { file } => lock_command(file).await,
        Command::Convert { file } => engine::front::convert(&file).map_err(StartError::from).map(|text| {
            output::commands::converted(&text);
            exit::OK
        }),
        Command::Fmt { file, check } => fmt_command(&file, check),
        Command::Runs { command, dir, output } => runs_command(command, &dir.dir, output),
        Command::Replay(args) => replay_command(args).await,
        Command::Provenance { id, dir, cache } => provenance_command(&id, &dir.dir, &cache.resolve()),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            e.exit_code()
        }
    };
    // What the daemon failed to remove (it stopped answering) is named, never silently left.
    if let Some(left) = leftovers(false) {
        notes::left_behind(&left);
    }
    code
}

async fn run_command(args: engine::cli::RunArgs) -> Result<i32, StartError> {
    let (file, targets) = args.target.split();
    let file = workflow_file(file)?;
    let policy = load_policy(&args.policy)?;
    let remote = engine::remote_settings::open(&args.remote, &policy)?;
    let mode = match args.output {
        OutputFormat::Plain => OutputMode::Plain,
        OutputFormat::Json => OutputMode::Json,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone(), mode));
    let cfg = RunConfig {
        file,
        targets,
        jobs: args.jobs,
        keep_going: args.keep_going,
        out: args.out,
        output: mode,
        color: output::stdout_has_colour(),
        policy,
        no_cache: args.no_cache,
        cache_dir: args.cache.resolve(),
        remote,
    };
    let status = run::run(cfg, cancel).await?;
    Ok(match status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Failed => exit::STEP_FAILED,
        RunStatus::EnvironmentFailed => exit::ENVIRONMENT,
        RunStatus::Cancelled => exit::INTERRUPTED,
    })
}

/// How long an interrupted engine waits for its cleanup (the stop ladder of every running
/// container, then their removal) before it exits 130 anyway, naming what may be left behind.
const CLEANUP_BOUND: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a second interrupt spends on force-removing the run's containers before exiting.
const KILL_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGINT or SIGTERM cancels the run: the scheduler stops dispatching and every running
/// container is stopped (stop signal, grace period, SIGKILL) and removed before the engine exits
/// 130. If that has not finished within CLEANUP_BOUND (a hung daemon), or on a second SIGINT or
/// SIGTERM (after a bounded force-removal, SIGKILL without grace, of the run's containers), the engine exits 130 at once and
/// names what may be left behind for `engine clean`.
async fn cancel_on_signal(cancel: CancellationToken, mode: OutputMode) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    if mode == OutputMode::Plain {
        notes::interrupted();
    }
    cancel.cancel();
    tokio::select! {
        _ = int.recv() => {
            notes::interrupted_again(false);
            engine::docker::kill_all_now(KILL_BOUND).await;
        }
        _ = term.recv() => {
            notes::interrupted_again(true);
            engine::docker::kill_all_now(KILL_BOUND).await;
        }
        _ = tokio::time::sleep(CLEANUP_BOUND) => notes::cleanup_timed_out(CLEANUP_BOUND.as_secs()),
    }
    // Destructors do not run on this exit: the secrets' folders go now, whatever the daemon does.
    engine::docker::remove_temp_now();
    if let Some(left) = leftovers(true) {
        notes::left_behind(&left);
    }
    std::process::exit(exit::INTERRUPTED);
}

/// What this engine created and has not seen removed, or None.
/// `exiting_early`: the engine exits without its destructors, so its runs' folders stay too.
fn leftovers(exiting_early: bool) -> Option<notes::LeftBehind> {
    let live = engine::docker::live();
    let mut left = notes::LeftBehind {
        containers: live.containers.iter().cloned().collect(),
        volumes: live.volumes.iter().cloned().collect(),
        // The run's temporary folder (`RunDir`, `<tmp>/engine-run-<id>-*`) outlives an engine
        // that exits without its destructors.
        folders: live.temp.iter().map(|p| p.display().to_string()).collect(),
        runs: live.runs.iter().cloned().collect(),
    };
    if !exiting_early && left.is_empty() {
        return None;
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.runs.iter().any(|id| name.starts_with(&format!("engine-run-{id}-"))) {
                left.folders.push(entry.path().display().to_string());
            }
        }
    }
    (!left.is_empty()).then_some(left)
}

fn check(file: Option<PathBuf>, policy: &PolicyArg) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let policy = load_policy(policy)?;
    let plan = run::load_and_plan(&file, &[], &policy, run::local_budget())?;
    run::check_inputs(&plan.workflow)?;
    output::commands::valid(&file, &plan.workflow.name, plan.steps.len());
    Ok(exit::OK)
}

async fn plan_command(args: engine::cli::PlanArgs) -> Result<i32, StartError> {
    let (file, targets) = args.target.split();
    let file = workflow_file(file)?;
    let policy = load_policy(&args.policy)?;
    let remote = engine::remote_settings::open(&args.remote, &policy)?;
    let (plan, forecasts) = run::forecast(&file, &targets, &policy, &args.cache.resolve(), args.no_cache, remote).await?;
    let views: Vec<_> = forecasts.iter().map(engine::explain::Forecast::view).collect();
    output::plan::print(&plan, &views, args.output);
    Ok(exit::OK)
}

fn graph(file: Option<PathBuf>, format: GraphFormat) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let plan = run::load_and_plan(&file, &[], &dsl::policy::Policy::default(), run::local_budget())?;
    output::plan::print_graph(&plan, format);
    Ok(exit::OK)
}

async fn clean() -> Result<i32, StartError> {
    let docker = engine::docker::DockerExecutor::connect().await?;
    let report = engine::docker::cleanup::remove_stale(docker.daemon()).await?;
    let dirs = engine::workspace::remove_stale_run_dirs();
    output::commands::cleaned(report.containers.len(), report.volumes.len(), dirs.len());
    Ok(exit::OK)
}

async fn cache_command(cmd: CacheCommand) -> Result<i32, StartError> {
    match cmd {
        CacheCommand::Ls(dir) => {
            let store = run::open_store(&dir.resolve())?;
            let usage = store.usage().map_err(|e| EnvironmentError(e.to_string()))?;
            output::cache::print_ls(&store.list(), &usage, store.dir());
        }
        CacheCommand::Gc { max_size, dir } => {
            let store = run::open_store(&dir.resolve())?;
            let report = store.gc(max_size).map_err(|e| EnvironmentError(e.to_string()))?;
            let usage = store.usage().map_err(|e| EnvironmentError(e.to_string()))?;
            output::cache::print_gc(&report, &usage);
        }
        CacheCommand::Verify(dir) => {
            let store = run::open_store(&dir.resolve())?;
            let report = store.verify().map_err(|e| EnvironmentError(e.to_string()))?;
            output::cache::print_verify(&report);
            if !report.corrupt_blobs.is_empty() || !report.dropped_entries.is_empty() {
                return Ok(exit::STEP_FAILED);
            }
        }
        CacheCommand::Explain { words, dir, policy, remote } => {
            let (file, step) = match words.as_slice() {
                [step] => (workflow_file(None)?, step.clone()),
                [file, step] => (PathBuf::from(file), step.clone()),
                _ => return Err(StartError::Invalid("usage: engine cache explain [FILE] STEP".into())),
            };
            let policy = load_policy(&policy)?;
            let remote = engine::remote_settings::open(&remote, &policy)?;
            let (plan, forecasts) = run::forecast(&file, std::slice::from_ref(&step), &policy, &dir.resolve(), false, remote).await?;
            let pos = plan.steps.iter().position(|p| p.step.name == step).unwrap_or(plan.steps.len() - 1);
            output::cache::print_explain(&step, &forecasts[pos]);
        }
        CacheCommand::Push(args) => return cache_transfer(args, true).await,
        CacheCommand::Pull(args) => return cache_transfer(args, false).await,
    }
    Ok(exit::OK)
}

/// `engine cache push` (`push`) or `engine cache pull`.
async fn cache_transfer(args: engine::cli::CacheTransferArgs, push: bool) -> Result<i32, StartError> {
    use engine::cache_transfer;
    let keys = args.keys.iter().map(|k| cache_transfer::parse_key(k)).collect::<Result<Vec<_>, _>>()?;
    let policy = load_policy(&args.policy)?;
    let Some(remote) = engine::remote_settings::open(&args.remote, &policy)? else {
        return Err(StartError::Invalid(
            "no remote cache: name one with --remote-cache oci://HOST[:PORT]/REPO (or ENGINE_REMOTE_CACHE)".into(),
        ));
    };
    let store = std::sync::Arc::new(run::open_store(&args.dir.resolve())?);
    let report = if push { cache_transfer::push(&remote, store, keys).await? } else { cache_transfer::pull(&remote, store, keys).await? };
    output::cache::print_transfer(&remote.url().to_string(), push, &report);
    Ok(if report.failed.is_empty() { exit::OK } else { exit::STEP_FAILED })
}

fn fmt_command(file: &Path, check: bool) -> Result<i32, StartError> {
    let text = dsl::read_workflow(file)?;
    let formatted = dsl::format_wf(file, &text)?;
    if formatted == text {
        return Ok(exit::OK);
    }
    if check {
        output::commands::not_formatted(file, &text, &formatted);
        return Ok(exit::STEP_FAILED);
    }
    std::fs::write(file, formatted).map_err(|e| StartError::Invalid(format!("cannot write {}: {e}", file.display())))?;
    output::commands::formatted(file);
    Ok(exit::OK)
}

async fn lock_command(file: Option<PathBuf>) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let workflow = engine::front::load(&file, &dsl::policy::Policy::default())?;
    let docker = engine::docker::DockerExecutor::connect().await?;
    let resolved = run::resolve_bases(&docker, &workflow).await?;
    let path = engine::lock::write(&workflow.dir, resolved.iter().map(|(reference, id)| (reference.clone(), id.to_string())).collect())?;
    output::commands::locked(&resolved, &path);
    Ok(exit::OK)
}

async fn images_command(cmd: ImagesCommand) -> Result<i32, StartError> {
    let docker = engine::docker::DockerExecutor::connect().await?;
    let builder = images::Builder::new(docker.daemon().clone());
    let failed = |e: images::BuildError| match e {
        e if e.is_environment() => StartError::Environment(EnvironmentError(e.to_string())),
        images::BuildError::Invalid { .. } => StartError::Invalid(e.to_string()),
        other => StartError::ImageFailed(other.to_string()),
    };
    match cmd {
        ImagesCommand::Build { words, no_cache, policy } => {
            let target = engine::cli::Target { words };
            let (file, names) = target.split();
            let file = workflow_file(file)?;
            let policy = load_policy(&policy)?;
            let workflow = engine::front::load(&file, &policy)?;
            let names: Vec<String> = if names.is_empty() { workflow.images.keys().cloned().collect() } else { names };
            let run_id = run::new_run_id();
            let owner = engine::docker::owner::owner_labels();
            let ctx =
                images::BuildContext { workflow: &workflow.name, dir: &workflow.dir, run_id: &run_id, no_cache, container_labels: &owner };
            let log = output::commands::build_line;
            for name in &names {
                let def = workflow
                    .images
                    .get(name)
                    .ok_or_else(|| StartError::Invalid(format!("no image named `{name}` under `images:` in {}", file.display())))?;
                let built = builder.build(&ctx, name, def, &log, &CancellationToken::new()).await.map_err(failed)?;
                output::commands::built(name, &built);
            }
        }
        ImagesCommand::Ls => {
            let list = builder.list().await.map_err(failed)?;
            output::commands::images(&list);
        }
        ImagesCommand::Prune { file, all: true } => {
            debug_assert!(file.is_none());
            let removed = builder.prune(&[]).await.map_err(failed)?;
            output::commands::images_pruned(removed.len());
        }
        ImagesCommand::Prune { file, all: false } => {
            let file = workflow_file(file)?;
            let workflow = engine::front::load(&file, &dsl::policy::Policy::default())?;
            let report = builder.prune_workflow(&workflow.name).await.map_err(failed)?;
            output::commands::workflow_images_pruned(&workflow.name, &report);
        }
        ImagesCommand::Import { rootfs, reference } => {
            let id = builder.import_rootfs(&rootfs, &reference).await.map_err(failed)?;
            output::commands::imported(&rootfs, &reference, &id);
        }
    }
    Ok(exit::OK)
}

fn runs_command(command: Option<RunsCommand>, dir: &Path, output: OutputFormat) -> Result<i32, StartError> {
    match command {
        None => output::runs::print_list(&engine::runs::list(dir)?, output),
        Some(RunsCommand::Show { id }) => {
            let (run_dir, record) = engine::record::find(dir, &id)?;
            output::runs::print_show(&run_dir, &record, output)?;
        }
        Some(RunsCommand::Prune { keep, older_than }) => {
            let policy = engine::record::PrunePolicy { keep, max_age: older_than.into() };
            output::runs::print_prune(&engine::runs::prune(dir, policy)?, output);
        }
    }
    Ok(exit::OK)
}

async fn replay_command(args: engine::cli::ReplayArgs) -> Result<i32, StartError> {
    let cache_dir = args.cache.resolve();
    let policy = load_policy(&args.policy)?;
    let cfg = engine::replay::ReplayConfig {
        dir: args.dir.dir,
        id: args.id,
        steps: args.steps,
        jobs: args.jobs.map(|j| j as usize),
        cache_dir,
        policy,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone(), OutputMode::Plain));
    engine::replay::replay(cfg, cancel).await
}

fn provenance_command(id: &str, dir: &Path, cache_dir: &Path) -> Result<i32, StartError> {
    output::provenance::print(&engine::provenance::command(id, dir, cache_dir)?);
    Ok(exit::OK)
}

/// FILE, or ./workflow.yml, then ./workflow.wf.
fn workflow_file(file: Option<PathBuf>) -> Result<PathBuf, StartError> {
    if let Some(f) = file {
        return Ok(f);
    }
    for candidate in ["workflow.yml", "workflow.wf"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(StartError::Invalid(
        "no workflow.yml or workflow.wf in the current directory: name the workflow file, e.g. `engine run ci.yml`".into(),
    ))
}

fn load_policy(arg: &PolicyArg) -> Result<dsl::policy::Policy, StartError> {
    match &arg.policy {
        Some(path) => Ok(dsl::policy::Policy::load(path)?),
        None => Ok(dsl::policy::Policy::default()),
    }
}

/// The one place errors reach the user (in the words of `output::notes`): `engine: error:
/// <message>`, or for workflow files every diagnostic with its file:line:col, the source line and
/// a caret.
fn report(err: &StartError) {
    if matches!(err, StartError::Load(_) | StartError::Plan(_)) {
        notes::diagnostic(err);
    } else {
        notes::error(err);
    }
}
