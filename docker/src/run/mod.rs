//! Running one container to completion ([`Daemon::run`]): the spec's isolation defaults, the
//! workspace moved in and the outputs out (bind mount or archive transfer), logs streamed as
//! masked, capped lines, the hard timeout and the termination ladder, OOM detection, and the
//! container always removed.
//!
//! It must not decide what runs or when (that is the caller's), and must never mount anything
//! from the host except the caller's prepared folders: the workspace, the secrets and the
//! persistent cache folders (bind transfer).

mod collect;
mod monitor;
mod outputs;
mod spec;
pub(crate) mod transfer;

pub use collect::{contained_link_target, resolve_link, Node, MAX_HOPS};
pub use spec::{CacheMount, ContainerSpec, Failure, Finished, Limits, User};
pub use transfer::{OWNER_FILE, SECRETS_PREFIX};

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, ContainerArchiveInfoOptions, CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
    RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::body::{self, PackError};
use crate::error::{self, call, deadline, format_duration, grace, ordinary, DaemonError, DEFAULT_CALL_TIMEOUT};
use crate::guard::{self, Resources};
use crate::labels::{cache_volume_name, container_name, owner_labels, LABEL_CACHE, LABEL_RUN, LABEL_STEP};
use crate::lines::{LineSplitter, Stream};
use crate::{Daemon, Transfer};

impl Daemon {
    /// Run one container to the end and remove it (and its volumes and temp folders), whatever
    /// happens. Lines it prints go to `log`, secrets masked. On `cancel` or when the timeout
    /// passes, the termination ladder stops it: its stop signal, the grace period
    /// (`ENGINE_STOP_GRACE`), then SIGKILL.
    pub async fn run(&self, spec: &ContainerSpec, cancel: &CancellationToken, log: &mut (dyn FnMut(Stream, String) + Send)) -> Finished {
        let (finished, resources) = self.run_to_exit(spec, cancel, log).await;
        resources.release().await;
        finished
    }

    /// [`Daemon::run`], except that the finished container (and its volumes) is removed on a
    /// task of its own, off the step's critical path: the next step of a chain starts while the
    /// daemon removes this one. The secrets folder goes at once, before this returns. Every such
    /// removal is awaited by [`Daemon::settle`] (which the run's final sweep,
    /// `cleanup::remove_run`, calls first); a removal that fails is left, as with `run`, for
    /// that sweep or `cleanup::remove_stale`.
    pub async fn run_releasing_later(
        &self,
        spec: &ContainerSpec,
        cancel: &CancellationToken,
        log: &mut (dyn FnMut(Stream, String) + Send),
    ) -> Finished {
        let (finished, mut resources) = self.run_to_exit(spec, cancel, log).await;
        resources.drop_temp_dirs();
        self.releases.tracker.spawn(resources.release());
        finished
    }

    /// Wait until every removal started by [`Daemon::run_releasing_later`] (on this daemon or a
    /// clone) has ended. Callers take turns: one's reopening cannot strand another's wait.
    pub async fn settle(&self) {
        let _turn = self.releases.settling.lock().await;
        self.releases.tracker.close();
        self.releases.tracker.wait().await;
        self.releases.tracker.reopen();
    }

    /// The step's run up to its end, and what it holds on the daemon (not yet removed).
    async fn run_to_exit(
        &self,
        spec: &ContainerSpec,
        cancel: &CancellationToken,
        log: &mut (dyn FnMut(Stream, String) + Send),
    ) -> (Finished, Resources) {
        let mut resources = Resources::new(self.docker.clone());
        guard::note_run(&spec.run_id);
        let finished = match self.run_inner(spec, cancel, log, &mut resources).await {
            Ok(finished) => finished,
            Err(failure) => Finished { result: Err(failure), duration: Duration::ZERO, exit_code: None, partial: false },
        };
        (finished, resources)
    }

    /// Everything up to the end of the step; `Err` only for failures before the container ran.
    async fn run_inner(
        &self,
        spec: &ContainerSpec,
        cancel: &CancellationToken,
        log: &mut (dyn FnMut(Stream, String) + Send),
        res: &mut Resources,
    ) -> Result<Finished, Failure> {
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        let user = spec.user;
        let labels = labels(spec);
        let mounts = match self.transfer {
            Transfer::Bind => {
                // The daemon wants an absolute source, and a resolved one: no symlink in the way.
                let workspace = spec.workspace.canonicalize().map_err(|e| host_failure("find the workspace", &e))?;
                transfer::prepare_bind_workspace(&workspace, user).map_err(|e| host_failure("prepare the workspace", &e))?;
                let mut mounts = vec![bind_mount(&workspace, "/workspace", false)];
                if !spec.secrets.is_empty() {
                    let (dir, source) =
                        transfer::secrets_dir(&spec.run_id, &spec.secrets, user).map_err(|e| host_failure("write the secrets", &e))?;
                    // Registered first: removed on every path from here on.
                    res.temp_dir(dir);
                    mounts.push(bind_mount(&source, "/run/secrets", true));
                }
                for cache in &spec.caches {
                    let dir = transfer::prepare_cache_dir(&cache.host_dir, user)
                        .map_err(|e| host_failure(&format!("prepare the folder of cache `{}`", cache.name), &e))?;
                    mounts.push(bind_mount(&dir, &cache.path, false));
                }
                mounts
            }
            Transfer::Archive => self.archive_volumes(spec, &labels, res).await?,
        };
        let body = container_body(spec, labels, mounts);
        if self.transfer == Transfer::Archive {
            self.upload(spec, &body, res).await?;
        }
        let name = container_name(&spec.run_id, &spec.step);
        // Registered by name BEFORE the daemon is asked: if this future is dropped while the
        // create is in flight, the guard still knows what to remove.
        res.container(name.clone());
        let id = self.create(spec, "create the step's container", body, Some(name)).await?;
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
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
        let ended = self.follow(spec, cancel, log, &id, output, started).await;
        let duration = started.elapsed();
        let outcome = |result, exit_code| Ok(Finished { result, duration, exit_code, partial: false });
        let code = match ended {
            Ended::Exited => self.exit_code(&id).await,
            // The container was stopped (stop signal, grace, SIGKILL) inside `follow`.
            Ended::TimedOut(Ok(())) => {
                let partial = spec.partial_outputs && self.collect_partial(spec, &id).await;
                return Ok(Finished { result: Err(Failure::TimedOut(spec.limits.timeout)), duration, exit_code: None, partial });
            }
            // A daemon that does not stop the container is the environment failing, not the step.
            Ended::TimedOut(Err(e)) => {
                let limit = format_duration(spec.limits.timeout);
                return outcome(Err(Failure::Environment(format!("the step timed out after {limit}, then {e}"))), None);
            }
            Ended::Cancelled(stopped) => {
                if let Err(e) = stopped {
                    tracing::debug!(error = %e, "the cancelled step's container was not stopped");
                }
                return outcome(Err(Failure::Cancelled), None);
            }
            Ended::Failed(f) => return outcome(Err(f), None),
        };
        let (code, oom) = match code {
            Ok(c) => c,
            Err(f) => return outcome(Err(f), None),
        };
        if code != 0 {
            let failure = if oom { Failure::OutOfMemory { limit: spec.limits.memory } } else { Failure::Exit(code) };
            let partial = spec.partial_outputs && self.collect_partial(spec, &id).await;
            return Ok(Finished { result: Err(failure), duration, exit_code: Some(code), partial });
        }
        // Collection streams archives (archive transfer) or copies files: bounded like the step.
        let limit = self.stream_limit(spec);
        let collected = match tokio::time::timeout(limit, self.collect(spec, &id)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Environment(format!(
                "collecting the outputs of the step took longer than {} (the Docker daemon at {} may be hung)",
                format_duration(limit),
                error::daemon()
            ))),
        };
        outcome(collected, Some(code))
    }

    /// After a failure: collect the declared outputs that exist (a missing one is skipped, not a
    /// failure), with the same checks, bounds and deadline as after success. `false` when the
    /// collection was refused (nothing is kept then).
    async fn collect_partial(&self, spec: &ContainerSpec, id: &str) -> bool {
        let mut present = Vec::new();
        for output in &spec.outputs {
            let Ok(rel) = collect::check_output_path(output) else { continue };
            let exists = match self.transfer {
                Transfer::Bind => spec.workspace.join(&rel).symlink_metadata().is_ok(),
                Transfer::Archive => {
                    let path = Path::new("/workspace").join(&rel).display().to_string();
                    let info = self.docker.get_container_archive_info(id, Some(ContainerArchiveInfoOptions { path }));
                    call("look up an output", ordinary(), info).await.is_ok()
                }
            };
            if exists {
                present.push(output.clone());
            }
        }
        let partial = ContainerSpec { outputs: present, ..spec.clone() };
        let limit = self.stream_limit(spec);
        match tokio::time::timeout(limit, self.collect(&partial, id)).await {
            Ok(Ok(())) => true,
            Ok(Err(f)) => {
                tracing::debug!(failure = %f, "the outputs of the failed step were not kept");
                false
            }
            Err(_) => false,
        }
    }

    /// The deadline of moving a step's files (upload, collection): the step's timeout plus the
    /// grace period, and never less than one ordinary call's.
    fn stream_limit(&self, spec: &ContainerSpec) -> Duration {
        let ordinary_limit = error::call_timeout().unwrap_or(DEFAULT_CALL_TIMEOUT);
        deadline((spec.limits.timeout + grace()).max(ordinary_limit))
    }

    /// Archive transfer: the volumes for /workspace (and /run/secrets), removed with the step, and
    /// the persistent volume of each cache, which is not.
    async fn archive_volumes(
        &self,
        spec: &ContainerSpec,
        labels: &HashMap<String, String>,
        res: &mut Resources,
    ) -> Result<Vec<Mount>, Failure> {
        let mut targets = vec!["/workspace"];
        if !spec.secrets.is_empty() {
            targets.push("/run/secrets");
        }
        let mut mounts = Vec::new();
        for (n, target) in targets.into_iter().enumerate() {
            // Named by us and registered before creation, like the container (see `run_inner`).
            let name = format!("{}-v{n}", container_name(&spec.run_id, &spec.step));
            res.volume(name.clone());
            let req = VolumeCreateRequest { name: Some(name.clone()), labels: Some(labels.clone()), ..Default::default() };
            call("create a volume", ordinary(), self.docker.create_volume(req)).await.map_err(daemon_failure)?;
            mounts.push(volume_mount(name, target));
        }
        for cache in &spec.caches {
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
    async fn upload(&self, spec: &ContainerSpec, body: &ContainerCreateBody, res: &mut Resources) -> Result<(), Failure> {
        let mut helper = body.clone();
        if let Some(hc) = helper.host_config.as_mut() {
            hc.readonly_rootfs = Some(false);
        }
        let name = format!("{}-upload", container_name(&spec.run_id, &spec.step));
        res.container(name.clone());
        let id = self.create(spec, "create the upload container", helper, Some(name.clone())).await?;
        let (workspace, secrets, user) = (spec.workspace.clone(), spec.secrets.clone(), spec.user);
        let caches: Vec<String> = spec.caches.iter().map(|c| c.path.clone()).collect();
        // Streamed: the tar is written on a blocking thread while it is sent, a few chunks in
        // memory whatever the workspace's size.
        let (packer, chunks) = body::pack(move |out| transfer::upload_tar(out, &workspace, &secrets, &caches, user));
        let body = bollard::body_try_stream(chunks.map(|chunk| chunk.map(Into::into)));
        let opts = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        // A streaming call: bounded like the step itself (its timeout plus the grace).
        let limit = self.stream_limit(spec);
        let uploaded = call("upload the workspace", limit, self.docker.upload_to_container(&id, Some(opts), body)).await;
        // The request has ended: `finish` stops the packer if it has not finished (and so does
        // dropping it, should this future be dropped). A tar that could not be written is the
        // cause, whatever the daemon said.
        match (packer.finish().await, uploaded) {
            (Err(PackError::Failed(e)), _) => return Err(host_failure("pack the workspace", &e)),
            (Err(PackError::Join(e)), _) => return Err(Failure::Environment(format!("cannot pack the workspace: {e}"))),
            (_, Err(e)) => return Err(daemon_failure(e)),
            (Err(PackError::Stopped), Ok(())) => {
                return Err(Failure::Environment("the daemon ended the upload of the workspace before it was sent".into()))
            }
            (Ok(()), Ok(())) => {}
        }
        let remove = RemoveContainerOptions { force: true, ..Default::default() };
        call("remove the upload container", ordinary(), self.docker.remove_container(&id, Some(remove))).await.map_err(daemon_failure)?;
        res.forget_container(&name);
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec, action: &str, body: ContainerCreateBody, name: Option<String>) -> Result<String, Failure> {
        let opts = CreateContainerOptions { name, ..Default::default() };
        let created = guard::create_container(&self.docker, action, opts, body).await;
        let created = created.map_err(|e| Failure::Environment(format!("cannot {action}: {e}")))?;
        match created {
            Ok(created) => Ok(created.id),
            // 404 on create: the image is missing (no registry here, so nothing is pulled).
            Err(e) if e.is_not_found() => Err(Failure::Environment(crate::missing_image_sentence(&spec.image))),
            Err(e) => Err(daemon_failure(e)),
        }
    }

    /// Stream the logs until the container stops, the timeout expires, or the step is cancelled.
    async fn follow(
        &self,
        spec: &ContainerSpec,
        cancel: &CancellationToken,
        log: &mut (dyn FnMut(Stream, String) + Send),
        id: &str,
        mut stream: OutputStream,
        started: Instant,
    ) -> Ended {
        let mut lines = LineSplitter::new(&spec.secrets, log);
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
            let limit = spec.limits.workspace;
            let mut pause = monitor::INTERVAL;
            loop {
                tokio::time::sleep(pause).await;
                let dir = spec.workspace.clone();
                let walked = Instant::now();
                let used = tokio::task::spawn_blocking(move || monitor::usage(&dir, limit)).await;
                pause = monitor::pause_after(walked.elapsed());
                match used {
                    Ok(Ok(used)) if used > limit => return Failure::WorkspaceLimit { limit },
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Failure::Environment(format!("cannot measure the workspace of the step: {e}")),
                    Err(e) => return Failure::Environment(format!("cannot measure the workspace of the step: {e}")),
                }
            }
        };
        let deadline = tokio::time::Instant::from_std(started + spec.limits.timeout);
        let ended = {
            tokio::pin!(run);
            let ended = tokio::select! {
                ended = &mut run => ended,
                _ = tokio::time::sleep_until(deadline) => Ended::TimedOut(Ok(())),
                _ = cancel.cancelled() => Ended::Cancelled(Ok(())),
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

    async fn exit_code(&self, id: &str) -> Result<(i64, bool), Failure> {
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
    pub(crate) async fn stop(&self, id: &str) -> Result<(), DaemonError> {
        let grace = grace();
        let opts = StopContainerOptions { t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)), signal: None };
        let limit = deadline(grace + ordinary());
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
}

type OutputStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>>;

enum Ended {
    Exited,
    /// Stopped by the termination ladder; `Err` if the daemon did not stop it in time.
    TimedOut(Result<(), DaemonError>),
    Cancelled(Result<(), DaemonError>),
    Failed(Failure),
}

fn env_failure(action: &str, err: &bollard::errors::Error) -> Failure {
    Failure::Environment(error::daemon_sentence(action, err))
}

fn daemon_failure(err: DaemonError) -> Failure {
    Failure::Environment(err.to_string())
}

fn host_failure(action: &str, err: &std::io::Error) -> Failure {
    Failure::Environment(format!("cannot {action} on this host: {err}"))
}

fn labels(spec: &ContainerSpec) -> HashMap<String, String> {
    let mut labels = owner_labels();
    labels.insert(LABEL_RUN.into(), spec.run_id.clone());
    labels.insert(LABEL_STEP.into(), spec.step.clone());
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

/// The step's container: the spec's isolation defaults, applied from the step's resolved IR.
fn container_body(spec: &ContainerSpec, labels: HashMap<String, String>, mounts: Vec<Mount>) -> ContainerCreateBody {
    let limits = spec.limits;
    let argv = &spec.argv;
    let (entrypoint, cmd) = match argv.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let workdir = spec.workdir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/workspace".to_string());
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        network_mode: Some(spec.network.clone()),
        readonly_rootfs: Some(true),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(memory),
        // Equal to memory: no swap at all.
        memory_swap: Some(memory),
        nano_cpus: Some(i64::try_from(limits.millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        pids_limit: Some(i64::try_from(limits.pids).unwrap_or(i64::MAX)),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            format!("rw,{},nosuid,nodev,size={},mode=1777", if spec.tmp_exec { "exec" } else { "noexec" }, limits.tmpfs),
        )])),
        mounts: Some(mounts),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(workdir),
        user: Some(spec.user.to_string()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(host_config),
        ..Default::default()
    }
}
