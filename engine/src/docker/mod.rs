//! The Docker executor: runs one step's container through the Docker API (bollard) with the
//! spec's isolation defaults, moves the workspace in and the outputs out, streams logs (secrets
//! masked), enforces the hard timeout, detects OOM kills, and always removes the container.
//!
//! It must not decide what runs or when (that is the scheduler's), and must never mount anything
//! from the host except the engine's own prepared folders: the workspace, the secrets and the
//! persistent cache folders of `caches:` (bind transfer).

pub mod cleanup;
mod collect;
mod errors;
mod guard;
mod logs;
mod monitor;
pub mod owner;
mod transfer;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, ContainerArchiveInfoOptions, CreateContainerOptions, DownloadFromContainerOptions, InspectContainerOptions,
    KillContainerOptions, RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::error::EnvironmentError;
use crate::events::Stream;
use crate::executor::{StepContext, StepFailure, StepJob, StepOutcome};
use crate::plan::HostBudget;
use errors::{call, is_not_found, ordinary, short_reason, DaemonError};
pub use errors::{CALL_TIMEOUT_VAR, CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT};
use guard::Resources;
pub use guard::{kill_all_now, live, remove_temp_now, Live};

/// Labels every container, volume and network the engine creates carries.
pub const LABEL_RUN: &str = "engine.run";
pub const LABEL_STEP: &str = "engine.step";
/// Owner of the run (pid, process start time, hostname), so that a later run can tell whether
/// the engine that created a container is still alive.
pub const LABEL_PID: &str = "engine.pid";
pub const LABEL_PID_START: &str = "engine.pid.start";
pub const LABEL_HOST: &str = "engine.host";
/// Label of the persistent volume behind a `caches:` name (archive transfer). Deliberately not
/// `engine.run`: the volume outlives every run, so run cleanup must never see it.
pub const LABEL_CACHE: &str = "engine.cache";

/// The daemon address used when DOCKER_HOST is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How long a step's container has, after its stop signal (SIGTERM, or the image's `StopSignal`),
/// to exit before it is killed with SIGKILL, on timeout and on interrupt. `ENGINE_STOP_GRACE`
/// overrides it (`0` kills at once).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);
pub const STOP_GRACE_VAR: &str = "ENGINE_STOP_GRACE";

/// The grace period of the stop ladder (see [`DEFAULT_STOP_GRACE`]); `Err` with a sentence when
/// `ENGINE_STOP_GRACE` is not a duration.
pub fn stop_grace() -> Result<Duration, String> {
    static PARSED: std::sync::OnceLock<Result<Duration, String>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| match std::env::var(STOP_GRACE_VAR) {
            Err(_) => Ok(DEFAULT_STOP_GRACE),
            Ok(text) => dsl::units::parse_duration(text.trim())
                .filter(|d| d.as_secs() <= 3600)
                .ok_or_else(|| format!("{STOP_GRACE_VAR} must be a duration of at most 1h such as `5s`, not `{text}`")),
        })
        .clone()
}

/// How the workspace reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Upload/download tar archives through the API: works on every daemon, remote and proxied.
    Archive,
    /// Bind-mount the prepared host folder at /workspace: fast path for a local daemon.
    Bind,
}

pub struct DockerExecutor {
    docker: bollard::Docker,
    transfer: Transfer,
}

impl DockerExecutor {
    /// Connect to the daemon named by DOCKER_HOST (or the default socket), negotiate the API
    /// version (daemons as old as API 1.41 must work), and pick the transfer automatically
    /// (`ENGINE_TRANSFER=archive|bind` overrides).
    pub async fn connect() -> Result<Self, EnvironmentError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_DOCKER_HOST.to_string());
        let mut executor = Self::connect_to(&host).await?;
        match std::env::var("ENGINE_TRANSFER").as_deref() {
            Ok("archive") => executor.transfer = Transfer::Archive,
            Ok("bind") => executor.transfer = Transfer::Bind,
            Ok(other) => return Err(EnvironmentError(format!("ENGINE_TRANSFER must be `archive` or `bind`, not `{other}`"))),
            Err(_) => {}
        }
        Ok(executor)
    }

    /// Connect to the daemon at `host` (`unix:///path`, `tcp://host:port`, ...), ignoring
    /// DOCKER_HOST and ENGINE_TRANSFER. Bind transfer for a unix socket, archive otherwise.
    pub async fn connect_to(host: &str) -> Result<Self, EnvironmentError> {
        let unreachable = |reason: String| {
            EnvironmentError(format!(
                "cannot reach the Docker daemon at {host}: {reason}. Start it (e.g. `sudo systemctl start docker`) \
                 or point DOCKER_HOST at a running daemon"
            ))
        };
        errors::set_daemon(host);
        let call_timeout = errors::call_timeout().map_err(EnvironmentError)?;
        let grace = stop_grace().map_err(EnvironmentError)?;
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable(short_reason(&e)))?;
        // bollard's own deadline (on response headers) stays out of the way of ours: a stop waits
        // for the grace period before the daemon answers.
        let docker = docker.with_timeout((call_timeout + grace + Duration::from_secs(5)).max(Duration::from_secs(120)));
        // A socket that accepts and never answers must not hang every command: version
        // negotiation and ping together get CONNECT_TIMEOUT.
        let silent = || {
            EnvironmentError(format!(
                "the Docker daemon at {host} did not answer within {}; check that it is running and responsive, \
                 or point DOCKER_HOST at a daemon that is",
                dsl::units::format_duration(CONNECT_TIMEOUT)
            ))
        };
        let handshake = async {
            let docker = docker.negotiate_version().await.map_err(|e| unreachable(short_reason(&e)))?;
            docker.ping().await.map_err(|e| unreachable(short_reason(&e)))?;
            Ok::<_, EnvironmentError>(docker)
        };
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|_| silent())??;
        guard::remember_client(&docker);
        let transfer = if host.starts_with("unix://") { Transfer::Bind } else { Transfer::Archive };
        Ok(DockerExecutor { docker, transfer })
    }

    pub fn with_transfer(mut self, transfer: Transfer) -> Self {
        self.transfer = transfer;
        self
    }

    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    pub fn client(&self) -> &bollard::Docker {
        &self.docker
    }

    /// CPUs and memory of the daemon's host.
    pub async fn host_budget(&self) -> Result<HostBudget, EnvironmentError> {
        let info = call("describe its host", ordinary(), self.docker.info()).await.map_err(|e| EnvironmentError(e.to_string()))?;
        let cpus = info.ncpu.unwrap_or(1).max(1) as u64;
        // A daemon that does not say how much memory it has gets no memory budget rather than
        // a zero one (which would make every step "too large").
        let memory = info.mem_total.filter(|m| *m > 0).map_or(u64::MAX, |m| m as u64);
        Ok(HostBudget { millicpus: cpus * 1000, memory })
    }

    /// Error (exit 3) if `reference` is not present locally, with a sentence saying how to get it.
    pub async fn check_image(&self, reference: &str) -> Result<(), EnvironmentError> {
        self.image_id(reference).await.map(|_| ())
    }

    /// The image ID (`sha256:...`) `reference` resolves to now; a missing image is an error (exit
    /// 3) with the same sentence as [`Self::check_image`]. Step keys use the ID, not the tag, so a
    /// re-tagged image changes them.
    pub async fn image_id(&self, reference: &str) -> Result<String, EnvironmentError> {
        match call(&format!("look up image `{reference}`"), ordinary(), self.docker.inspect_image(reference)).await {
            Ok(image) => image.id.ok_or_else(|| EnvironmentError(format!("the Docker daemon reported no ID for image `{reference}`"))),
            Err(e) if e.is_not_found() => Err(EnvironmentError(missing_image_sentence(reference))),
            Err(e) => Err(EnvironmentError(e.to_string())),
        }
    }

    /// Run one step's container to the end and remove it.
    pub async fn run_step(&self, job: StepJob, ctx: StepContext) -> StepOutcome {
        let mut resources = Resources::new(self.docker.clone());
        guard::note_run(&job.run_id);
        let outcome = match self.run_inner(&job, &ctx, &mut resources).await {
            Ok(outcome) => outcome,
            Err(failure) => StepOutcome { result: Err(failure), duration: Duration::ZERO, exit_code: None, cached: false },
        };
        resources.release().await;
        outcome
    }

    /// Everything up to the end of the step; `Err` only for failures before the container ran.
    async fn run_inner(&self, job: &StepJob, ctx: &StepContext, res: &mut Resources) -> Result<StepOutcome, StepFailure> {
        if ctx.cancel.is_cancelled() {
            return Err(StepFailure::Cancelled);
        }
        let step = &job.step;
        let user = step.isolation.user;
        let labels = labels(job);
        let mounts = match self.transfer {
            Transfer::Bind => {
                // The daemon wants an absolute source, and a resolved one: no symlink in the way.
                let workspace = job.workspace.canonicalize().map_err(|e| host_failure("find the workspace", &e))?;
                transfer::prepare_bind_workspace(&workspace, user).map_err(|e| host_failure("prepare the workspace", &e))?;
                let mut mounts = vec![bind_mount(&workspace, "/workspace", false)];
                if !job.secrets.is_empty() {
                    let (dir, source) =
                        transfer::secrets_dir(&job.run_id, &job.secrets, user).map_err(|e| host_failure("write the secrets", &e))?;
                    // Registered first: removed on every path from here on.
                    res.temp_dir(dir);
                    mounts.push(bind_mount(&source, "/run/secrets", true));
                }
                for cache in &job.caches {
                    let dir = transfer::prepare_cache_dir(&cache.host_dir, user)
                        .map_err(|e| host_failure(&format!("prepare the folder of cache `{}`", cache.name), &e))?;
                    mounts.push(bind_mount(&dir, &cache.path, false));
                }
                mounts
            }
            Transfer::Archive => self.archive_volumes(job, &labels, res).await?,
        };
        let body = container_body(job, labels, mounts);
        if self.transfer == Transfer::Archive {
            self.upload(job, &body, res).await?;
        }
        let name = container_name(&job.run_id, &step.name);
        // Registered by name BEFORE the daemon is asked: if this future is dropped while the
        // create is in flight, the guard still knows what to remove.
        res.container(name.clone());
        let id = self.create(job, "create the step's container", body, Some(name)).await?;
        if ctx.cancel.is_cancelled() {
            return Err(StepFailure::Cancelled);
        }
        // Attached before start, like `docker run`: the attach stream carries everything the
        // step writes and ends only after its stdio closed, whereas following the log driver
        // right after exit can miss a last line that has not been flushed to the log yet.
        let opts = AttachContainerOptions { stream: true, stdout: true, stderr: true, ..Default::default() };
        let output = call("attach to the step's container", ordinary(), self.docker.attach_container(&id, Some(opts)))
            .await
            .map_err(daemon_failure)?
            .output;
        call("start the step's container", ordinary(), self.docker.start_container(&id, None)).await.map_err(daemon_failure)?;
        let started = Instant::now();
        let ended = self.follow(job, ctx, &id, output, started).await;
        let duration = started.elapsed();
        let outcome = |result, exit_code| Ok(StepOutcome { result, duration, exit_code, cached: false });
        let code = match ended {
            Ended::Exited => self.exit_code(&id).await,
            // The container was stopped (stop signal, grace, SIGKILL) inside `follow`.
            Ended::TimedOut(Ok(())) => return outcome(Err(StepFailure::TimedOut(step.limits.timeout)), None),
            // A daemon that does not stop the container is the environment failing, not the step.
            Ended::TimedOut(Err(e)) => {
                let limit = dsl::units::format_duration(step.limits.timeout);
                return outcome(Err(StepFailure::Environment(format!("the step timed out after {limit}, then {e}"))), None);
            }
            Ended::Cancelled(stopped) => {
                if let Err(e) = stopped {
                    tracing::debug!(error = %e, "the cancelled step's container was not stopped");
                }
                return outcome(Err(StepFailure::Cancelled), None);
            }
            Ended::Failed(f) => return outcome(Err(f), None),
        };
        let (code, oom) = match code {
            Ok(c) => c,
            Err(f) => return outcome(Err(f), None),
        };
        if code != 0 {
            let failure = if oom { StepFailure::OutOfMemory { limit: step.limits.memory } } else { StepFailure::Exit(code) };
            return outcome(Err(failure), Some(code));
        }
        // Collection streams archives (archive transfer) or copies files: bounded like the step.
        let limit = self.stream_limit(job);
        let collected = match tokio::time::timeout(limit, self.collect(job, &id)).await {
            Ok(result) => result,
            Err(_) => Err(StepFailure::Environment(format!(
                "collecting the outputs of the step took longer than {} (the Docker daemon at {} may be hung)",
                dsl::units::format_duration(limit),
                errors::daemon()
            ))),
        };
        outcome(collected, Some(code))
    }

    fn grace(&self) -> Duration {
        stop_grace().unwrap_or(DEFAULT_STOP_GRACE)
    }

    /// The deadline of moving a step's files (upload, collection): the step's timeout plus the
    /// grace period, and never less than one ordinary call's.
    fn stream_limit(&self, job: &StepJob) -> Duration {
        let ordinary_limit = errors::call_timeout().unwrap_or(DEFAULT_CALL_TIMEOUT);
        errors::deadline((job.step.limits.timeout + self.grace()).max(ordinary_limit))
    }

    /// Archive transfer: the volumes for /workspace (and /run/secrets), removed with the step, and
    /// the persistent volume of each cache, which is not.
    async fn archive_volumes(
        &self,
        job: &StepJob,
        labels: &HashMap<String, String>,
        res: &mut Resources,
    ) -> Result<Vec<Mount>, StepFailure> {
        let mut targets = vec!["/workspace"];
        if !job.secrets.is_empty() {
            targets.push("/run/secrets");
        }
        let mut mounts = Vec::new();
        for (n, target) in targets.into_iter().enumerate() {
            // Named by us and registered before creation, like the container (see `run_inner`).
            let name = format!("{}-v{n}", container_name(&job.run_id, &job.step.name));
            res.volume(name.clone());
            let req = VolumeCreateRequest { name: Some(name.clone()), labels: Some(labels.clone()), ..Default::default() };
            call("create a volume", ordinary(), self.docker.create_volume(req)).await.map_err(daemon_failure)?;
            mounts.push(volume_mount(name, target));
        }
        for cache in &job.caches {
            // Creating a volume that exists is a no-op returning it, so steps of parallel runs
            // sharing a cache need no coordination. Not registered with `res`: it must survive.
            let name = cache_volume_name(&cache.name);
            let labels = HashMap::from([(LABEL_CACHE.to_string(), cache.name.clone())]);
            let req = VolumeCreateRequest { name: Some(name.clone()), labels: Some(labels), ..Default::default() };
            call(&format!("create the volume of cache `{}`", cache.name), ordinary(), self.docker.create_volume(req))
                .await
                .map_err(daemon_failure)?;
            mounts.push(volume_mount(name, &cache.path));
        }
        Ok(mounts)
    }

    /// Archive transfer: fill the volumes through a helper container that is created with the
    /// same mounts but a writable root and never started (the daemon refuses uploads onto a
    /// read-only root, and only an upload at `/` can set the owner of the volume roots).
    async fn upload(&self, job: &StepJob, body: &ContainerCreateBody, res: &mut Resources) -> Result<(), StepFailure> {
        let mut helper = body.clone();
        if let Some(hc) = helper.host_config.as_mut() {
            hc.readonly_rootfs = Some(false);
        }
        let name = format!("{}-upload", container_name(&job.run_id, &job.step.name));
        res.container(name.clone());
        let id = self.create(job, "create the upload container", helper, Some(name.clone())).await?;
        let (workspace, secrets, user) = (job.workspace.clone(), job.secrets.clone(), job.step.isolation.user);
        let caches: Vec<String> = job.caches.iter().map(|c| c.path.clone()).collect();
        let tar = tokio::task::spawn_blocking(move || transfer::upload_tar(&workspace, &secrets, &caches, user))
            .await
            .map_err(|e| StepFailure::Environment(format!("cannot pack the workspace: {e}")))?
            .map_err(|e| host_failure("pack the workspace", &e))?;
        let opts = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        // A streaming call: bounded like the step itself (its timeout plus the grace).
        let limit = self.stream_limit(job);
        call("upload the workspace", limit, self.docker.upload_to_container(&id, Some(opts), bollard::body_full(tar.into())))
            .await
            .map_err(daemon_failure)?;
        let remove = RemoveContainerOptions { force: true, ..Default::default() };
        call("remove the upload container", ordinary(), self.docker.remove_container(&id, Some(remove))).await.map_err(daemon_failure)?;
        res.forget_container(&name);
        Ok(())
    }

    async fn create(&self, job: &StepJob, action: &str, body: ContainerCreateBody, name: Option<String>) -> Result<String, StepFailure> {
        let opts = CreateContainerOptions { name, ..Default::default() };
        match call(action, ordinary(), self.docker.create_container(Some(opts), body)).await {
            Ok(created) => Ok(created.id),
            // 404 on create: the image is missing (no registry here, so nothing is pulled).
            Err(e) if e.is_not_found() => Err(StepFailure::Environment(missing_image_sentence(&job.image))),
            Err(e) => Err(daemon_failure(e)),
        }
    }

    /// Stream the logs until the container stops, the timeout expires, or the step is cancelled.
    async fn follow(&self, job: &StepJob, ctx: &StepContext, id: &str, mut stream: OutputStream, started: Instant) -> Ended {
        let mut lines = logs::LineSplitter::new(job.step.name.clone(), ctx.events.clone(), &job.secrets);
        let run = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => lines.push(Stream::Stderr, &message),
                    Ok(out) => lines.push(Stream::Stdout, &out.into_bytes()),
                    Err(e) => return Ended::Failed(env_failure("read the step's logs", &e)),
                }
            }
            // The output stream ends when the container stops; wait makes sure the state is final.
            let opts = WaitContainerOptions { condition: "not-running".into() };
            let mut wait = self.docker.wait_container(id, Some(opts));
            match wait.next().await {
                Some(Err(e)) if !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. }) => {
                    Ended::Failed(env_failure("wait for the step's container", &e))
                }
                _ => Ended::Exited,
            }
        };
        // Bind transfer: the workspace is a host folder, measured every `monitor::INTERVAL` on a
        // blocking thread; past `limits.workspace` the container is killed. (The archive
        // transfer's volume cannot be measured from here: its outputs limit applies at collection.)
        let watch = async {
            if self.transfer != Transfer::Bind {
                return std::future::pending().await;
            }
            let limit = job.step.limits.workspace;
            let mut pause = monitor::INTERVAL;
            loop {
                tokio::time::sleep(pause).await;
                let dir = job.workspace.clone();
                let walked = Instant::now();
                let used = tokio::task::spawn_blocking(move || monitor::usage(&dir, limit)).await;
                pause = monitor::pause_after(walked.elapsed());
                match used {
                    Ok(Ok(used)) if used > limit => return StepFailure::WorkspaceLimit { limit },
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return StepFailure::Environment(format!("cannot measure the workspace of the step: {e}")),
                    Err(e) => return StepFailure::Environment(format!("cannot measure the workspace of the step: {e}")),
                }
            }
        };
        let deadline = tokio::time::Instant::from_std(started + job.step.limits.timeout);
        let ended = {
            tokio::pin!(run);
            let ended = tokio::select! {
                ended = &mut run => ended,
                _ = tokio::time::sleep_until(deadline) => Ended::TimedOut(Ok(())),
                _ = ctx.cancel.cancelled() => Ended::Cancelled(Ok(())),
                // Over its workspace limit: killed at once, no grace (it would only write more).
                failure = watch => {
                    let kill = KillContainerOptions { signal: "SIGKILL".into() };
                    let _ = call("kill the step's container", ordinary(), self.docker.kill_container(id, Some(kill))).await;
                    Ended::Failed(failure)
                }
            };
            match ended {
                Ended::TimedOut(_) => Ended::TimedOut(self.stop_following(id, run.as_mut()).await),
                Ended::Cancelled(_) => Ended::Cancelled(self.stop_following(id, run.as_mut()).await),
                other => other,
            }
        };
        lines.flush();
        ended
    }

    /// Run the termination ladder while the output keeps flowing (a step that traps the stop
    /// signal may log on its way out); once the container stopped, the last bytes get a second.
    async fn stop_following(
        &self,
        id: &str,
        mut output: std::pin::Pin<&mut impl std::future::Future<Output = Ended>>,
    ) -> Result<(), DaemonError> {
        let stop = self.stop(id);
        tokio::pin!(stop);
        tokio::select! {
            stopped = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_secs(1), output.as_mut()).await;
                stopped
            }
            // The output ended (the container exited on the stop signal): the stop call finishes.
            _ = output.as_mut() => stop.await,
        }
    }

    async fn exit_code(&self, id: &str) -> Result<(i64, bool), StepFailure> {
        // The daemon records the kernel's OOM event and the exit separately; under load the exit
        // (137, SIGKILL) can be visible before the OOM flag, and the exit can even reset a flag
        // set just before it. A SIGKILL we did not send is worth another look: the flag again,
        // and the daemon's event log, which keeps the `oom` event whatever the flag says.
        let mut started = None;
        for delay_ms in [0, 100, 250, 500, 1000, 1500] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let info = call("inspect the step's container", ordinary(), self.docker.inspect_container(id, None::<InspectContainerOptions>))
                .await
                .map_err(daemon_failure)?;
            let state = info.state.unwrap_or_default();
            let (code, oom) = (state.exit_code.unwrap_or(-1), state.oom_killed.unwrap_or(false));
            if oom || code != 137 {
                return Ok((code, oom));
            }
            started = started.or(info.created);
            if self.oom_event(id, started.as_deref()).await {
                return Ok((137, true));
            }
        }
        Ok((137, false))
    }

    /// Whether the daemon's event log holds an `oom` event of this container (since `since`, its
    /// creation time as the daemon wrote it). Any failure to ask counts as no.
    async fn oom_event(&self, id: &str, since: Option<&str>) -> bool {
        let since = since
            .and_then(|t| humantime::parse_rfc3339_weak(t.split('.').next().unwrap_or(t).trim_end_matches('Z')).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs().saturating_sub(1));
        let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() + 1);
        let filters = HashMap::from([("container", vec![id]), ("event", vec!["oom"]), ("type", vec!["container"])]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .since(&since.to_string())
            .until(&until.to_string())
            .filters(&filters)
            .build();
        let events = self.docker.events(Some(options)).take(1).collect::<Vec<_>>();
        matches!(tokio::time::timeout(ordinary(), events).await, Ok(found) if found.iter().any(|e| e.is_ok()))
    }

    /// The termination ladder: the daemon sends the container's stop signal (SIGTERM unless the
    /// image says otherwise), waits the grace period, then SIGKILLs it; the call returns once the
    /// container stopped. `Err` only when the daemon did not do it in time. A container that
    /// exited meanwhile (304, 404) counts as stopped.
    async fn stop(&self, id: &str) -> Result<(), DaemonError> {
        let grace = self.grace();
        let opts = StopContainerOptions { t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)), signal: None };
        let limit = errors::deadline(grace + ordinary());
        match call("stop the step's container", limit, self.docker.stop_container(id, Some(opts))).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if e.timed_out() => {
                // Best effort, in case the daemon only lost the stop: the removal forces it anyway.
                let kill = KillContainerOptions { signal: "SIGKILL".into() };
                let _ = call("kill the step's container", ordinary(), self.docker.kill_container(id, Some(kill))).await;
                Err(e)
            }
            Err(e) => {
                let kill = KillContainerOptions { signal: "SIGKILL".into() };
                match call("kill the step's container", ordinary(), self.docker.kill_container(id, Some(kill))).await {
                    Err(k) if k.timed_out() => Err(k),
                    _ => {
                        tracing::debug!(error = %e, "stop failed; killed");
                        Ok(())
                    }
                }
            }
        }
    }

    async fn collect(&self, job: &StepJob, id: &str) -> Result<(), StepFailure> {
        let limits = job.step.limits;
        let joined = |e: tokio::task::JoinError| StepFailure::Environment(format!("cannot collect the outputs: {e}"));
        if self.transfer == Transfer::Bind {
            let (ws, outs, to) = (job.workspace.clone(), job.step.outputs.clone(), job.collect_to.clone());
            return tokio::task::spawn_blocking(move || {
                // A last measurement: the step may have filled its workspace and exited between
                // two of `follow`'s.
                match monitor::usage(&ws, limits.workspace) {
                    Ok(used) if used > limits.workspace => return Err(StepFailure::WorkspaceLimit { limit: limits.workspace }),
                    Ok(_) => {}
                    Err(e) => return Err(StepFailure::Environment(format!("cannot measure the workspace of the step: {e}"))),
                }
                collect::from_host(&ws, &outs, &to, limits.outputs)
            })
            .await
            .map_err(joined)?;
        }
        let collected = self.collect_archive(job, id).await;
        if collected.is_err() {
            // Files are written as they stream in: a rejected step leaves none of them behind.
            let to = job.collect_to.clone();
            let _ = tokio::task::spawn_blocking(move || collect::empty_folder(&to)).await;
        }
        collected
    }

    /// Archive transfer: stream each output's tar into `collect_to`, then check and create the
    /// symlinks.
    async fn collect_archive(&self, job: &StepJob, id: &str) -> Result<(), StepFailure> {
        let joined = |e: tokio::task::JoinError| StepFailure::Environment(format!("cannot collect the outputs: {e}"));
        let mut budget = collect::Budget::new(job.step.limits.outputs);
        let mut links = Vec::new();
        for output in &job.step.outputs {
            let rel = collect::check_output_path(output)?;
            for parent in collect::parents(&rel) {
                let path = Path::new("/workspace").join(&parent).display().to_string();
                match self.docker.get_container_archive_info(id, Some(ContainerArchiveInfoOptions { path })).await {
                    Ok(stat) if !stat.link_target.is_empty() => return Err(collect::symlinked_parent(output, &parent)),
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => return Err(StepFailure::MissingOutput(output.clone())),
                    Err(e) => return Err(env_failure(&format!("look up output `{output}`"), &e)),
                }
            }
            // The download streams into the tar reader on a blocking thread through a small
            // bounded channel: memory stays a few chunks, whatever the output's size. When the
            // reader stops (limit passed, bad entry), the channel closes and the download is
            // dropped.
            let path = Path::new("/workspace").join(rel).display().to_string();
            let mut stream = self.docker.download_from_container(id, Some(DownloadFromContainerOptions { path }));
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (out, to) = (output.clone(), job.collect_to.clone());
            let reader = tokio::task::spawn_blocking(move || {
                let result = collect::from_tar(&out, ChannelReader { rx, chunk: Vec::new(), pos: 0 }, &to, &mut budget, &mut links);
                (result, budget, links)
            });
            let (mut first, mut missing, mut failed) = (true, false, None);
            while let Some(chunk) = stream.next().await {
                let item = match chunk {
                    Ok(bytes) => Ok(bytes.to_vec()),
                    Err(e) if first && is_not_found(&e) => {
                        missing = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(env_failure(&format!("download output `{output}`"), &e));
                        Err(std::io::Error::other("the download failed"))
                    }
                };
                first = false;
                if tx.send(item).await.is_err() || failed.is_some() {
                    break;
                }
            }
            drop(tx);
            drop(stream);
            let (result, b, l) = reader.await.map_err(joined)?;
            (budget, links) = (b, l);
            if missing {
                return Err(StepFailure::MissingOutput(output.clone()));
            }
            match (result, failed) {
                (Err(f @ (StepFailure::OutputsLimit { .. } | StepFailure::UnsafeOutput { .. })), _) => return Err(f),
                (_, Some(f)) => return Err(f),
                (result, None) => result?,
            }
        }
        // Symlinks last, once everything they may lead through is known: inside the outputs from
        // the collected files, elsewhere in /workspace from the stopped container.
        let (docker, id, handle) = (self.docker.clone(), id.to_string(), tokio::runtime::Handle::current());
        let (outs, to) = (job.step.outputs.clone(), job.collect_to.clone());
        tokio::task::spawn_blocking(move || {
            let mut outside = |rel: &Path| -> std::io::Result<collect::Node> {
                let path = Path::new("/workspace").join(rel).display().to_string();
                match handle.block_on(docker.get_container_archive_info(&id, Some(ContainerArchiveInfoOptions { path }))) {
                    // The daemon reports a symlink's target resolved within the container.
                    Ok(stat) if !stat.link_target.is_empty() => Ok(collect::Node::Symlink(stat.link_target.into())),
                    // Go's os.ModeDir.
                    Ok(stat) if stat.file_mode & (1 << 31) != 0 => Ok(collect::Node::Dir),
                    Ok(_) => Ok(collect::Node::File),
                    Err(e) if is_not_found(&e) => Ok(collect::Node::Missing),
                    Err(e) => Err(std::io::Error::other(short_reason(&e))),
                }
            };
            collect::finish_links(&to, &outs, links, &mut outside)
        })
        .await
        .map_err(joined)?
    }
}

/// The blocking end of the download channel of [`DockerExecutor::collect`], as a `Read`.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => (self.chunk, self.pos) = (chunk, 0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

type OutputStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>>;

enum Ended {
    Exited,
    /// Stopped by the termination ladder; `Err` if the daemon did not stop it in time.
    TimedOut(Result<(), DaemonError>),
    Cancelled(Result<(), DaemonError>),
    Failed(StepFailure),
}

fn env_failure(action: &str, err: &bollard::errors::Error) -> StepFailure {
    StepFailure::Environment(errors::daemon_sentence(action, err))
}

fn daemon_failure(err: DaemonError) -> StepFailure {
    StepFailure::Environment(err.to_string())
}

fn host_failure(action: &str, err: &std::io::Error) -> StepFailure {
    StepFailure::Environment(format!("cannot {action} on this host: {err}"))
}

fn missing_image_sentence(reference: &str) -> String {
    let offline = if reference == "local/busybox:1" {
        "run `scripts/import-busybox.sh`".to_string()
    } else {
        format!("load it with `docker load -i <file>` or `docker import <rootfs.tar> {reference}`")
    };
    format!("image `{reference}` is not present on the Docker host: offline, {offline}; online, `docker pull {reference}`")
}

fn labels(job: &StepJob) -> HashMap<String, String> {
    let mut labels = owner::owner_labels();
    labels.insert(LABEL_RUN.into(), job.run_id.clone());
    labels.insert(LABEL_STEP.into(), job.step.name.clone());
    labels
}

fn bind_mount(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// A named volume mounted at `target`, without copy-up from the image: copy-up would reset the
/// owner of an empty volume's root to the image's (root), undoing the upload's directory entry.
fn volume_mount(source: String, target: &str) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions { no_copy: Some(true), ..Default::default() }),
        ..Default::default()
    }
}

/// `engine-<run>-<step>`, with anything Docker refuses in a name replaced by `-`.
pub fn container_name(run_id: &str, step: &str) -> String {
    let name = docker_name(&format!("engine-{run_id}-{step}"));
    if name.ends_with(step) {
        return name;
    }
    // The step name had characters Docker refuses (a matrix step `test[x86]`): the replaced form
    // could equal another step's name (`test-x86-`), so the original name's digest keeps it unique.
    format!("{name}{}", &cache::Digest::of(step.as_bytes()).hex()[..8])
}

/// The daemon's version and API version, for run records ("unknown" if it does not say).
pub async fn daemon_version(docker: &bollard::Docker) -> (String, String) {
    match call("tell its version", ordinary(), docker.version()).await {
        Ok(v) => (v.version.unwrap_or_else(|| "unknown".into()), v.api_version.unwrap_or_else(|| "unknown".into())),
        Err(_) => ("unknown".into(), "unknown".into()),
    }
}

/// `engine-cache-<name>`: the persistent volume behind cache `name` (archive transfer), shared by
/// every step and run naming it. Anything Docker refuses in a name is replaced by `-`.
pub fn cache_volume_name(name: &str) -> String {
    docker_name(&format!("engine-cache-{name}"))
}

fn docker_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' }).collect()
}

/// The step's container: the spec's isolation defaults, applied from the step's resolved IR.
fn container_body(job: &StepJob, labels: HashMap<String, String>, mounts: Vec<Mount>) -> ContainerCreateBody {
    let step = &job.step;
    let limits = step.limits;
    let argv = step.command.argv();
    let (entrypoint, cmd) = match argv.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let workdir = if step.workdir.is_empty() { "/workspace".to_string() } else { step.workdir.clone() };
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        network_mode: Some(step.isolation.network.as_str().to_string()),
        readonly_rootfs: Some(true),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(memory),
        // Equal to memory: no swap at all.
        memory_swap: Some(memory),
        nano_cpus: Some(i64::try_from(limits.millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        pids_limit: Some(i64::try_from(limits.pids).unwrap_or(i64::MAX)),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), format!("rw,nosuid,nodev,size={},mode=1777", limits.tmpfs))])),
        mounts: Some(mounts),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(job.image.clone()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        env: Some(step.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(workdir),
        user: Some(step.isolation.user.to_string()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod name_tests {
    use super::container_name;

    #[test]
    fn matrix_step_names_stay_distinct_from_their_sanitised_twins() {
        assert_eq!(container_name("r1", "build"), "engine-r1-build");
        let matrix = container_name("r1", "test[x86]");
        assert!(matrix.starts_with("engine-r1-test-x86-"), "{matrix}");
        assert_ne!(matrix, container_name("r1", "test-x86-"));
        assert!(matrix.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    }
}
