//! The `engine` binary: parses the command line, dispatches to the library, and is the one place
//! where errors are rendered and turned into exit codes (0 ok, 1 step failed, 2 invalid workflow
//! or command line, 3 environment failure, 130 interrupted).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Parser;
use engine::cli::{CacheCommand, Cli, Command, GraphFormat, ImagesCommand, OutputFormat, PolicyArg, RunsCommand};
use engine::error::exit;
use engine::error::EnvironmentError;
use engine::events::RunStatus;
use engine::output::OutputMode;
use engine::run::{self, RunConfig, StartError};
use tokio_util::sync::CancellationToken;

fn main() {
    // A bug must never show a user a panic message with a backtrace or a debug dump.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("engine: internal error{at}; this is a bug, please report it with the command you ran");
    }));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .without_time()
        .init();

    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("engine: cannot start the async runtime: {e}");
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
            print!("{text}");
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
        eprintln!("engine: {left}");
    }
    code
}

async fn run_command(args: engine::cli::RunArgs) -> Result<i32, StartError> {
    let (file, targets) = args.target.split();
    let file = workflow_file(file)?;
    let policy = load_policy(&args.policy)?;
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
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        policy,
        no_cache: args.no_cache,
        cache_dir: args.cache.resolve(),
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
        eprintln!("engine: interrupted; stopping and removing the running containers (interrupt again to kill them at once)");
    }
    cancel.cancel();
    let why = tokio::select! {
        _ = int.recv() => {
            eprintln!("engine: interrupted again; killing the run's containers without waiting");
            engine::docker::kill_all_now(KILL_BOUND).await;
            None
        }
        _ = term.recv() => {
            eprintln!("engine: terminated again; killing the run's containers without waiting");
            engine::docker::kill_all_now(KILL_BOUND).await;
            None
        }
        _ = tokio::time::sleep(CLEANUP_BOUND) => Some(format!(
            "the cleanup did not finish within {}s (the Docker daemon may be hung); exiting without it",
            CLEANUP_BOUND.as_secs()
        )),
    };
    if let Some(why) = why {
        eprintln!("engine: {why}");
    }
    // Destructors do not run on this exit: the secrets' folders go now, whatever the daemon does.
    engine::docker::remove_temp_now();
    if let Some(left) = leftovers(true) {
        eprintln!("engine: {left}");
    }
    std::process::exit(exit::INTERRUPTED);
}

/// What this engine created and has not seen removed ("may be left behind: ..."), or None.
/// `exiting_early`: the engine exits without its destructors, so its runs' folders stay too.
fn leftovers(exiting_early: bool) -> Option<String> {
    let live = engine::docker::live();
    let mut parts = Vec::new();
    if !live.containers.is_empty() {
        parts.push(format!("containers {}", live.containers.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    if !live.volumes.is_empty() {
        parts.push(format!("volumes {}", live.volumes.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    // The run's temporary folder (`RunDir`, `<tmp>/engine-run-<id>-*`) outlives an engine that
    // exits without its destructors.
    let mut folders: Vec<String> = live.temp.iter().map(|p| p.display().to_string()).collect();
    if !exiting_early && parts.is_empty() && folders.is_empty() {
        return None;
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.runs.iter().any(|id| name.starts_with(&format!("engine-run-{id}-"))) {
                folders.push(entry.path().display().to_string());
            }
        }
    }
    if !folders.is_empty() {
        parts.push(format!("temporary folders {}", folders.join(", ")));
    }
    if parts.is_empty() {
        return None;
    }
    let runs: Vec<String> = live.runs.iter().map(|id| format!("engine.run={id}")).collect();
    let labelled = if runs.is_empty() { String::new() } else { format!(" (all labelled {})", runs.join(", ")) };
    Some(format!("these may be left behind{labelled}: {}; `engine clean` removes them once this engine has exited", parts.join("; ")))
}

fn check(file: Option<PathBuf>, policy: &PolicyArg) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let policy = load_policy(policy)?;
    let plan = run::load_and_plan(&file, &[], &policy, run::local_budget())?;
    let n = plan.steps.len();
    println!("{}: workflow `{}` is valid ({n} step{})", file.display(), plan.workflow.name, if n == 1 { "" } else { "s" });
    Ok(exit::OK)
}

async fn plan_command(args: engine::cli::PlanArgs) -> Result<i32, StartError> {
    let (file, targets) = args.target.split();
    let file = workflow_file(file)?;
    let policy = load_policy(&args.policy)?;
    let (plan, forecasts) = run::forecast(&file, &targets, &policy, &args.cache.resolve(), args.no_cache).await?;
    let views: Vec<_> = forecasts.iter().map(engine::explain::Forecast::view).collect();
    match args.output {
        OutputFormat::Plain => print!("{}", engine::output::plan::render_text(&plan, &views)),
        OutputFormat::Json => println!("{}", engine::output::plan::to_json(&plan, &views)),
    }
    Ok(exit::OK)
}

fn graph(file: Option<PathBuf>, format: GraphFormat) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let plan = run::load_and_plan(&file, &[], &dsl::policy::Policy::default(), run::local_budget())?;
    match format {
        GraphFormat::Dot => print!("{}", engine::output::plan::to_dot(&plan)),
        GraphFormat::Mermaid => print!("{}", engine::output::plan::to_mermaid(&plan)),
    }
    Ok(exit::OK)
}

async fn clean() -> Result<i32, StartError> {
    let docker = engine::docker::DockerExecutor::connect().await?;
    let report = engine::docker::cleanup::remove_stale(docker.daemon()).await?;
    let dirs = engine::workspace::remove_stale_run_dirs();
    println!(
        "removed {} containers, {} volumes and {} temporary folders left by dead runs",
        report.containers.len(),
        report.volumes.len(),
        dirs.len()
    );
    Ok(exit::OK)
}

async fn cache_command(cmd: CacheCommand) -> Result<i32, StartError> {
    use engine::explain::fmt_age;
    use engine::output::fmt_size;
    match cmd {
        CacheCommand::Ls(dir) => {
            let store = run::open_store(&dir.resolve())?;
            let entries = store.list();
            println!("{:<14} {:<20} {:<20} {:>9}  last used", "key", "workflow", "step", "size");
            for e in &entries {
                println!(
                    "{:<14} {:<20} {:<20} {:>9}  {}",
                    e.key.digest().short(),
                    e.workflow,
                    e.step,
                    fmt_size(e.size),
                    fmt_age(e.last_used)
                );
            }
            let total: u64 = entries.iter().map(|e| e.size).sum();
            println!("{} entries, {} in {}", entries.len(), fmt_size(total), store.dir().display());
        }
        CacheCommand::Gc { max_size, dir } => {
            let store = run::open_store(&dir.resolve())?;
            let report = store.gc(max_size).map_err(|e| EnvironmentError(e.to_string()))?;
            println!(
                "removed {} entries and {} blobs, freed {}; {} remain",
                report.removed_entries,
                report.removed_blobs,
                fmt_size(report.freed_bytes),
                fmt_size(report.remaining_bytes)
            );
        }
        CacheCommand::Verify(dir) => {
            let store = run::open_store(&dir.resolve())?;
            let report = store.verify().map_err(|e| EnvironmentError(e.to_string()))?;
            for blob in &report.corrupt_blobs {
                println!("corrupt blob {blob} removed");
            }
            for key in &report.dropped_entries {
                println!("entry {key} dropped");
            }
            println!(
                "checked {} blobs: {} corrupt, {} entries dropped",
                report.blobs_checked,
                report.corrupt_blobs.len(),
                report.dropped_entries.len()
            );
            if !report.corrupt_blobs.is_empty() || !report.dropped_entries.is_empty() {
                return Ok(exit::STEP_FAILED);
            }
        }
        CacheCommand::Explain { words, dir } => {
            let (file, step) = match words.as_slice() {
                [step] => (workflow_file(None)?, step.clone()),
                [file, step] => (PathBuf::from(file), step.clone()),
                _ => return Err(StartError::Invalid("usage: engine cache explain [FILE] STEP".into())),
            };
            let policy = dsl::policy::Policy::default();
            let (plan, forecasts) = run::forecast(&file, std::slice::from_ref(&step), &policy, &dir.resolve(), false).await?;
            let pos = plan.steps.iter().position(|p| p.step.name == step).unwrap_or(plan.steps.len() - 1);
            print!("{}", engine::explain::explain(&step, &forecasts[pos]));
        }
    }
    Ok(exit::OK)
}

fn fmt_command(file: &Path, check: bool) -> Result<i32, StartError> {
    let text = dsl::read_workflow(file)?;
    let formatted = dsl::format_wf(file, &text)?;
    if formatted == text {
        return Ok(exit::OK);
    }
    if check {
        eprintln!("{} is not formatted: run `engine fmt {}`", file.display(), file.display());
        return Ok(exit::STEP_FAILED);
    }
    std::fs::write(file, formatted).map_err(|e| StartError::Invalid(format!("cannot write {}: {e}", file.display())))?;
    println!("formatted {}", file.display());
    Ok(exit::OK)
}

async fn lock_command(file: Option<PathBuf>) -> Result<i32, StartError> {
    let file = workflow_file(file)?;
    let workflow = engine::front::load(&file, &dsl::policy::Policy::default())?;
    let docker = engine::docker::DockerExecutor::connect().await?;
    let resolved = run::resolve_bases(&docker, &workflow).await?;
    let path = engine::lock::write(&workflow.dir, resolved.iter().map(|(reference, id)| (reference.clone(), id.to_string())).collect())?;
    for (reference, id) in &resolved {
        println!("{reference} -> {id}");
    }
    println!("pinned {} images in {}", resolved.len(), path.display());
    Ok(exit::OK)
}

async fn images_command(cmd: ImagesCommand) -> Result<i32, StartError> {
    let docker = engine::docker::DockerExecutor::connect().await?;
    let builder = images::Builder::new(docker.daemon().clone());
    let failed = |e: images::BuildError| match e {
        images::BuildError::Environment(m) => StartError::Environment(EnvironmentError(m)),
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
            let log = |image: &str, stage: &str, line: &str| println!("{image}/{stage} | {line}");
            for name in &names {
                let def = workflow
                    .images
                    .get(name)
                    .ok_or_else(|| StartError::Invalid(format!("no image named `{name}` under `images:` in {}", file.display())))?;
                let built = builder.build(&ctx, name, def, &log, &CancellationToken::new()).await.map_err(failed)?;
                let what = if built.stages_built == 0 { "up to date".to_string() } else { format!("{} stages built", built.stages_built) };
                eprintln!("{name}: {} ({}), {what}", built.tag, &built.id);
            }
        }
        ImagesCommand::Ls => {
            let list = builder.list().await.map_err(failed)?;
            println!("{:<20} {:<40} {:<14} {:>9}", "image", "tag", "key", "size");
            for i in &list {
                println!(
                    "{:<20} {:<40} {:<14} {:>9}",
                    i.name,
                    i.tags.first().map(String::as_str).unwrap_or("-"),
                    i.key.map(|k| k.short()).as_deref().unwrap_or("-"),
                    engine::output::fmt_size(i.size)
                );
            }
            println!("{} images", list.len());
        }
        ImagesCommand::Prune => {
            let removed = builder.prune(&[]).await.map_err(failed)?;
            println!("removed {} images", removed.len());
        }
        ImagesCommand::Import { rootfs, reference } => {
            let id = builder.import_rootfs(&rootfs, &reference).await.map_err(failed)?;
            println!("imported {} as {reference} ({id})", rootfs.display());
        }
    }
    Ok(exit::OK)
}

fn runs_command(command: Option<RunsCommand>, dir: &Path, output: OutputFormat) -> Result<i32, StartError> {
    match command {
        None => print!("{}", engine::runs::list(dir, output)?),
        Some(RunsCommand::Show { id }) => {
            let (run_dir, record) = engine::record::find(dir, &id)?;
            print!("{}", engine::runs::show(&run_dir, &record, output)?);
        }
        Some(RunsCommand::Prune { keep, older_than }) => {
            let policy = engine::record::PrunePolicy { keep, max_age: older_than.into() };
            print!("{}", engine::runs::prune(dir, policy, output)?);
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
    print!("{}", engine::provenance::command(id, dir, cache_dir)?);
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

/// The one place errors reach the user: `engine: <message>` plus, for workflow files, every
/// diagnostic with its file:line:col, the source line and a caret.
fn report(err: &StartError) {
    // Sentences without a place in a file are printed as they are: wrapping them would split
    // digests and paths that users copy.
    if !matches!(err, StartError::Load(_) | StartError::Plan(_)) {
        eprintln!("engine: error: {err}");
        return;
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let out = dsl::diagnostic::render(err, color);
    eprintln!("engine: {}", out.trim_start().trim_end());
}
