//! Stage images: each stage built from its base by running its instructions in containers and
//! committing, keyed so that an unchanged stage is found instead of rebuilt. Owned by the stages
//! work (keys in `key`, file and tar handling in `stages::copy`).
//!
//! Order of work: every stage the final stage needs is keyed first (keys need only base image
//! IDs, context file digests and the keys of earlier stages, never a build); then, walking back
//! from the final stage, a stage whose image exists (labels `engine.stage.key` and `engine.image`)
//! is taken as is and what it needs is not even looked at (like BuildKit); the rest is built, each
//! stage starting as soon as the stages it uses (`from`, `copy.from`) have images, so independent
//! stages build concurrently. Stages the final stage does not need are neither keyed nor built.
//!
//! Per-instruction images are the stage image's parent chain: they cannot be removed while the
//! stage image exists (the daemon refuses to delete an image with children) and go away with it,
//! so they are kept (visible only with `docker images -a`). The daemon merges a container's labels
//! into the image committed from it unless the commit sets them, so every commit blanks the run
//! and owner labels (`engine.run` and the owner labels are empty on built images).

mod copy;

use std::collections::{BTreeSet, HashMap};

use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CommitContainerOptions, CreateContainerOptions, DownloadFromContainerOptions, ListImagesOptions,
    RemoveContainerOptions, StopContainerOptions, TagImageOptions, UploadToContainerOptions,
};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::build::Builder;
use crate::key::{stage_key, CopyKey, StageKeyInput};
use crate::{BuildContext, BuildError, BuiltImage, LogFn, LABEL_IMAGE, LABEL_IMAGE_KEY, LABEL_RUN, LABEL_STAGE_KEY};

/// What a stage starts from.
enum Base {
    /// An image reference, resolved to its ID.
    Image(String),
    /// An earlier stage of the same image (its index).
    Stage(usize),
}

enum PlannedCopy {
    Context { files: Vec<copy::Matched> },
    Stage { stage: usize, name: String, src: String, dst: String },
}

/// A needed stage, keyed.
pub(crate) struct Plan {
    pub(crate) key: String,
    base: Base,
    copies: Vec<PlannedCopy>,
    /// Indices of the stages it uses (`from`, `copy.from`).
    deps: BTreeSet<usize>,
}

/// Everything one stage build needs that is shared by all stages of the image.
#[derive(Clone, Copy)]
struct Env<'a> {
    builder: &'a Builder,
    ctx: &'a BuildContext<'a>,
    image: &'a str,
    log: LogFn<'a>,
    cancel: &'a CancellationToken,
}

pub(crate) async fn build(
    builder: &Builder,
    ctx: &BuildContext<'_>,
    name: &str,
    stages: &[dsl::Stage],
    log: LogFn<'_>,
    cancel: &CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let invalid = |message: String| BuildError::Invalid { image: name.to_string(), message };
    let last = stages.len().checked_sub(1).ok_or_else(|| invalid("has no stages".into()))?;
    let plans = plan(builder, ctx, name, stages, last, log).await?;
    let key = plans[last].as_ref().map(|p| p.key.clone()).ok_or_else(|| invalid("final stage was not planned".into()))?;

    // Walk back from the final stage: found stages end the walk.
    let mut ids: Vec<Option<String>> = vec![None; stages.len()];
    let mut to_build = BTreeSet::new();
    let mut todo = vec![last];
    while let Some(i) = todo.pop() {
        if ids[i].is_some() || to_build.contains(&i) {
            continue;
        }
        let Some(p) = plans[i].as_ref() else { continue };
        let found = if ctx.no_cache { None } else { find(builder, name, &p.key, i == last).await? };
        match found {
            Some(id) => ids[i] = Some(id),
            None => {
                to_build.insert(i);
                todo.extend(p.deps.iter().copied());
            }
        }
    }

    // Each stage starts as soon as the stages it uses have images; a failing stage cancels the
    // others, which then clean up their containers before the failure is returned (dropping them
    // would leave that to detached tasks).
    let cancel = cancel.child_token();
    let env = Env { builder, ctx, image: name, log, cancel: &cancel };
    let (plans, key) = (&plans, &key);
    let start = |i: usize, ready: Vec<Option<String>>| {
        let cancel = &cancel;
        async move {
            let r = build_stage(env, &stages[i], plans[i].as_ref(), &ready, i == last, key).await;
            if r.is_err() {
                cancel.cancel();
            }
            (i, r)
        }
    };
    let mut running = FuturesUnordered::new();
    let mut started = BTreeSet::new();
    let mut failure: Option<BuildError> = None;
    loop {
        if failure.is_none() {
            for &i in &to_build {
                let ready = plans[i].as_ref().is_some_and(|p| p.deps.iter().all(|&d| ids[d].is_some()));
                if ready && started.insert(i) {
                    running.push(start(i, ids.clone()));
                }
            }
        }
        match running.next().await {
            None => break,
            Some((i, Ok(id))) => ids[i] = Some(id),
            // The first real failure wins over the cancellations it caused.
            Some((_, Err(e))) => {
                if failure.is_none() || matches!(failure, Some(BuildError::Cancelled(_))) {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let id = ids[last].clone().ok_or_else(|| invalid("final stage has no image".into()))?;
    let repo = repository(ctx.workflow, name);
    let short = &key[..12.min(key.len())];
    let opts = TagImageOptions { repo: Some(repo.clone()), tag: Some(short.to_string()) };
    builder.docker.tag_image(&id, Some(opts)).await.map_err(|e| daemon(&format!("tag image `{name}`"), &e))?;
    Ok(BuiltImage { name: name.to_string(), id, tag: format!("{repo}:{short}"), key: key.clone(), stages_built: to_build.len() })
}

/// Key every stage the final stage needs (others get `None`).
pub(crate) async fn plan(
    builder: &Builder,
    ctx: &BuildContext<'_>,
    name: &str,
    stages: &[dsl::Stage],
    last: usize,
    log: LogFn<'_>,
) -> Result<Vec<Option<Plan>>, BuildError> {
    let invalid = |message: String| BuildError::Invalid { image: name.to_string(), message };
    let index = |stage: usize, other: &str| -> Result<Option<usize>, BuildError> {
        match stages[..stage].iter().position(|s| s.name == other) {
            Some(i) => Ok(Some(i)),
            None if stages.iter().any(|s| s.name == other) => {
                Err(invalid(format!("stage `{}` uses stage `{other}`, which is not an earlier stage", stages[stage].name)))
            }
            None => Ok(None),
        }
    };
    // Which stages are needed: the final one and, transitively, what it uses.
    let mut needed = vec![false; stages.len()];
    let mut deps = vec![BTreeSet::new(); stages.len()];
    for (i, s) in stages.iter().enumerate() {
        if let Some(d) = index(i, &s.from)? {
            deps[i].insert(d);
        }
        for c in &s.copy {
            if let Some(from) = &c.from {
                let d = index(i, from)?.ok_or_else(|| invalid(format!("stage `{}` copies from unknown stage `{from}`", s.name)))?;
                deps[i].insert(d);
            }
        }
    }
    needed[last] = true;
    for i in (0..=last).rev() {
        if needed[i] {
            for &d in &deps[i] {
                needed[d] = true;
            }
        }
    }

    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(stages.len());
    for (i, s) in stages.iter().enumerate() {
        if !needed[i] {
            plans.push(None);
            continue;
        }
        let key_of = |d: usize| plans.get(d).and_then(|p: &Option<Plan>| p.as_ref()).map(|p| p.key.clone());
        let (base, base_key) = match index(i, &s.from)? {
            Some(d) => (Base::Stage(d), key_of(d).ok_or_else(|| invalid(format!("stage `{}` has no key", stages[d].name)))?),
            None => {
                let id = builder.ensure_base(&s.from, log).await?;
                (Base::Image(id.clone()), id)
            }
        };
        let mut copies = Vec::new();
        let mut copy_keys = Vec::new();
        for c in &s.copy {
            match &c.from {
                Some(from) => {
                    let d = index(i, from)?.ok_or_else(|| invalid(format!("unknown stage `{from}`")))?;
                    let stage_key = key_of(d).ok_or_else(|| invalid(format!("stage `{from}` has no key")))?;
                    copy_keys.push(CopyKey::Stage { stage_key, src: c.src.clone(), dst: c.dst.clone() });
                    copies.push(PlannedCopy::Stage { stage: d, name: from.clone(), src: c.src.clone(), dst: c.dst.clone() });
                }
                None => {
                    let (dir, src, dst) = (ctx.dir.to_path_buf(), c.src.clone(), c.dst.clone());
                    // Hashing reads files: off the async threads.
                    let files = tokio::task::spawn_blocking(move || copy::match_context(&dir, &src, &dst))
                        .await
                        .map_err(|e| BuildError::Environment(format!("hashing the copy sources of image `{name}` failed: {e}")))?
                        .map_err(|m| invalid(format!("stage `{}`: {m}", s.name)))?;
                    copy_keys.push(CopyKey::Context {
                        src: c.src.clone(),
                        dst: c.dst.clone(),
                        files: files.iter().map(|m| m.file.clone()).collect(),
                    });
                    copies.push(PlannedCopy::Context { files });
                }
            }
        }
        let key = stage_key(&StageKeyInput {
            base: &base_key,
            env: &s.env,
            workdir: s.workdir.as_deref(),
            user: s.user.as_deref(),
            network: s.network.as_str(),
            copies: &copy_keys,
            run: &s.run,
        });
        plans.push(Some(Plan { key, base, copies, deps: deps[i].clone() }));
    }
    Ok(plans)
}

/// An existing image of this stage of this image (the final stage must also carry the image key).
pub(crate) async fn find(builder: &Builder, image: &str, key: &str, last: bool) -> Result<Option<String>, BuildError> {
    let mut labels = vec![format!("{LABEL_STAGE_KEY}={key}"), format!("{LABEL_IMAGE}={image}")];
    if last {
        labels.push(format!("{LABEL_IMAGE_KEY}={key}"));
    }
    // `all`: a stage image that a later stage was built from has children and no tag, and is
    // hidden from the default listing.
    let opts = ListImagesOptions { all: true, filters: Some(HashMap::from([("label".to_string(), labels)])), ..Default::default() };
    let found = builder.docker.list_images(Some(opts)).await.map_err(|e| daemon("list images", &e))?;
    // After `--no-cache` several images share a key: the newest is the one built last.
    Ok(found.into_iter().max_by_key(|i| i.created).map(|i| i.id))
}

/// Build one stage; its needed stages are in `ready`. Returns the stage image's ID.
async fn build_stage(
    env: Env<'_>,
    stage: &dsl::Stage,
    plan: Option<&Plan>,
    ready: &[Option<String>],
    last: bool,
    image_key: &str,
) -> Result<String, BuildError> {
    let failed = |message: String| BuildError::StageFailed { image: env.image.into(), stage: stage.name.clone(), message };
    let plan = plan.ok_or_else(|| failed("stage was not planned".into()))?;
    let ready_id = |d: usize| ready.get(d).cloned().flatten().ok_or_else(|| failed("a stage it uses has no image".into()));
    let mut current = match &plan.base {
        Base::Image(id) => id.clone(),
        Base::Stage(d) => ready_id(*d)?,
    };
    let base = env.builder.docker.inspect_image(&current).await.map_err(|e| daemon("inspect the base image", &e))?;
    let base_config = base.config.unwrap_or_default();

    for c in &plan.copies {
        let tar = match c {
            PlannedCopy::Context { files } => {
                let (dir, files) = (env.ctx.dir.to_path_buf(), files.clone());
                tokio::task::spawn_blocking(move || copy::context_tar(&dir, &files))
                    .await
                    .map_err(|e| BuildError::Environment(format!("packing copy sources failed: {e}")))?
                    .map_err(|e| failed(format!("cannot pack the copy sources: {e}")))?
            }
            PlannedCopy::Stage { stage: d, name, src, dst } => {
                let from = ready_id(*d)?;
                let archive = download(env, &from, src).await.map_err(|e| match e {
                    Error::Build(b) => b,
                    Error::Message(m) => failed(format!("cannot copy `{src}` from stage `{name}`: {m}")),
                })?;
                let (src, dst) = (src.clone(), dst.clone());
                tokio::task::spawn_blocking(move || copy::reroot(&archive, &src, &dst))
                    .await
                    .map_err(|e| BuildError::Environment(format!("re-rooting a copy failed: {e}")))?
                    .map_err(|e| failed(format!("cannot read the archive copied from another stage: {e}")))?
            }
        };
        current = upload_and_commit(env, &current, tar).await?;
    }
    for cmd in &stage.run {
        current = run(env, stage, &current, cmd).await?;
    }

    // The stage image: the stage's config over the base's, Cmd and Entrypoint kept.
    let mut environment: Vec<String> = base_config
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|kv| !stage.env.contains_key(kv.split('=').next().unwrap_or("")))
        .collect();
    environment.extend(stage.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut labels = HashMap::from([(LABEL_STAGE_KEY.to_string(), plan.key.clone()), (LABEL_IMAGE.to_string(), env.image.to_string())]);
    if last {
        labels.insert(LABEL_IMAGE_KEY.to_string(), image_key.to_string());
    }
    let config = ContainerConfig {
        env: Some(environment),
        working_dir: stage.workdir.clone().or(base_config.working_dir.clone()),
        user: stage.user.clone().or(base_config.user.clone()),
        cmd: base_config.cmd.clone(),
        entrypoint: base_config.entrypoint.clone(),
        labels: Some(labels),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(current.clone()),
        env: config.env.clone(),
        working_dir: config.working_dir.clone(),
        user: config.user.clone(),
        // Never started. The base's Entrypoint and Cmd, not those of the last instruction's image
        // (an empty Entrypoint resets it); a placeholder command only when the base has neither,
        // as the daemon refuses to create a container without one.
        entrypoint: Some(config.entrypoint.clone().unwrap_or_default()),
        cmd: match (&config.entrypoint, &config.cmd) {
            (Some(e), _) if !e.is_empty() => config.cmd.clone(),
            (_, Some(c)) if !c.is_empty() => config.cmd.clone(),
            _ => Some(vec!["/bin/sh".into()]),
        },
        ..Default::default()
    };
    let container = Container::create(env, body).await?;
    let result = commit(env, &container.id, config).await;
    container.remove().await;
    result
}

/// Upload a tar at `/` of a container made from `image`, and commit it.
async fn upload_and_commit(env: Env<'_>, image: &str, tar: Vec<u8>) -> Result<String, BuildError> {
    check_cancel(env)?;
    let body = ContainerCreateBody { image: Some(image.to_string()), entrypoint: Some(vec!["/bin/sh".into()]), ..Default::default() };
    let container = Container::create(env, body).await?;
    let result = async {
        let opts = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        env.builder
            .docker
            .upload_to_container(&container.id, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| daemon("copy files into a build container", &e))?;
        commit(env, &container.id, ContainerConfig::default()).await
    }
    .await;
    container.remove().await;
    result
}

enum Error {
    Build(BuildError),
    Message(String),
}

/// The tar of `path` in `image` (through a container that is never started).
async fn download(env: Env<'_>, image: &str, path: &str) -> Result<Vec<u8>, Error> {
    check_cancel(env).map_err(Error::Build)?;
    let body = ContainerCreateBody { image: Some(image.to_string()), entrypoint: Some(vec!["/bin/sh".into()]), ..Default::default() };
    let container = Container::create(env, body).await.map_err(Error::Build)?;
    let result = async {
        let opts = DownloadFromContainerOptions { path: path.to_string() };
        let mut stream = env.builder.docker.download_from_container(&container.id, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) if errors_not_found(&e) => return Err(Error::Message("no such file or folder".into())),
                Err(e) => return Err(Error::Build(daemon("copy files out of a build container", &e))),
            }
        }
        Ok(out)
    }
    .await;
    container.remove().await;
    result
}

fn errors_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// The capabilities a stage running as root keeps (everything else is dropped): what package
/// managers need to chown, chmod and switch to their unprivileged users. Non-root stages keep none.
pub const ROOT_BUILD_CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID"];

/// How long a timed-out build container gets between the stop signal and the kill.
const STOP_GRACE_SECS: i32 = 2;

/// Whether a stage's `user:` is uid 0 (no `user:` is root: Docker's build semantics).
fn runs_as_root(user: Option<&str>) -> bool {
    match user {
        None => true,
        Some(u) => u.split(':').next().is_none_or(|uid| uid.trim().parse::<u32>().is_ok_and(|n| n == 0) || uid.trim() == "root"),
    }
}

/// A build container's host settings: hardened like a step's where a build allows (no
/// privileged, all capabilities dropped but the package-manager set for root stages,
/// `no-new-privileges`, memory without swap, CPU and pids limits), on the stage's network.
fn hardened(stage: &dsl::Stage) -> HostConfig {
    let limits = &stage.limits;
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    let caps =
        if runs_as_root(stage.user.as_deref()) { ROOT_BUILD_CAPABILITIES.iter().map(|c| c.to_string()).collect() } else { Vec::new() };
    HostConfig {
        network_mode: Some(stage.network.as_str().to_string()),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(caps),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(i64::try_from(limits.millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        pids_limit: Some(i64::try_from(limits.pids).unwrap_or(i64::MAX)),
        ..Default::default()
    }
}

/// How a `run` container ended.
enum Ended {
    Exited,
    TimedOut,
}

/// Run `cmd` with `/bin/sh -c` in a container made from `image`, with the stage's environment,
/// limits and hard timeout, and commit it.
async fn run(env: Env<'_>, stage: &dsl::Stage, image: &str, cmd: &str) -> Result<String, BuildError> {
    check_cancel(env)?;
    let failed = |message: String| BuildError::StageFailed { image: env.image.into(), stage: stage.name.clone(), message };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![cmd.to_string()]),
        env: Some(stage.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: stage.workdir.clone(),
        // Build instructions install things: root unless the stage says otherwise.
        user: Some(stage.user.clone().unwrap_or_else(|| "0:0".into())),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(hardened(stage)),
        ..Default::default()
    };
    let container = Container::create(env, body).await?;
    let result = async {
        let docker = &env.builder.docker;
        let opts = AttachContainerOptions { stream: true, stdout: true, stderr: true, ..Default::default() };
        let mut output =
            docker.attach_container(&container.id, Some(opts)).await.map_err(|e| daemon("attach to a build container", &e))?.output;
        docker.start_container(&container.id, None).await.map_err(|e| daemon("start a build container", &e))?;
        let mut lines = Lines::default();
        let follow = async {
            while let Some(item) = output.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        lines.push(1, &message, |l| (env.log)(env.image, &stage.name, l))
                    }
                    Ok(out) => lines.push(0, &out.into_bytes(), |l| (env.log)(env.image, &stage.name, l)),
                    Err(e) => return Err(daemon("read a build container's output", &e)),
                }
            }
            Ok(())
        };
        // The timeout runs from the start, like a step's.
        let timeout = stage.limits.timeout;
        let followed = tokio::select! {
            r = follow => r.map(|()| Ended::Exited),
            _ = tokio::time::sleep(timeout) => Ok(Ended::TimedOut),
            _ = env.cancel.cancelled() => Err(BuildError::Cancelled(env.image.to_string())),
        };
        lines.flush(|l| (env.log)(env.image, &stage.name, l));
        if let Ok(Ended::TimedOut) = followed {
            // The stop signal, a short grace, then the kill; the container is removed below.
            let opts = StopContainerOptions { t: Some(STOP_GRACE_SECS), ..Default::default() };
            if let Err(e) = docker.stop_container(&container.id, Some(opts)).await {
                tracing::warn!("cannot stop timed-out build container {}: {e}", container.id);
            }
            return Err(failed(format!("`{cmd}` timed out after {}", dsl::units::format_duration(timeout))));
        }
        followed?;
        // The output stream ends when the container stops; wait makes the exit code final.
        let mut wait = docker.wait_container(&container.id, None);
        let _ = wait.next().await;
        let info = docker.inspect_container(&container.id, None).await.map_err(|e| daemon("inspect a build container", &e))?;
        let state = info.state.unwrap_or_default();
        if state.oom_killed == Some(true) {
            let limit = dsl::units::format_size(stage.limits.memory);
            return Err(failed(format!("`{cmd}` was killed: out of memory (limit {limit})")));
        }
        let code = state.exit_code.unwrap_or(-1);
        if code != 0 {
            return Err(failed(format!("`{cmd}` failed with exit code {code}")));
        }
        commit(env, &container.id, ContainerConfig::default()).await
    }
    .await;
    container.remove().await;
    result
}

async fn commit(env: Env<'_>, container: &str, mut config: ContainerConfig) -> Result<String, BuildError> {
    // The daemon copies the container's labels into the image unless the commit names them: the
    // run id and owner of this build are blanked, so that containers other tools create from the
    // image are not taken for this run's (an empty owner counts as alive, never as dead).
    let labels = config.labels.get_or_insert_with(HashMap::new);
    for key in env.ctx.container_labels.keys().map(String::as_str).chain([LABEL_RUN]) {
        labels.entry(key.to_string()).or_default();
    }
    let opts = CommitContainerOptions { container: Some(container.to_string()), pause: false, ..Default::default() };
    let id = env.builder.docker.commit_container(opts, config).await.map_err(|e| daemon("commit a build container", &e))?;
    Ok(id.id)
}

fn check_cancel(env: Env<'_>) -> Result<(), BuildError> {
    if env.cancel.is_cancelled() {
        return Err(BuildError::Cancelled(env.image.to_string()));
    }
    Ok(())
}

fn daemon(action: &str, e: &bollard::errors::Error) -> BuildError {
    BuildError::Environment(format!("cannot {action}: {e}"))
}

/// A build container, labelled, removed by `remove` or, if the build future is dropped before,
/// by a task spawned on drop.
struct Container {
    docker: bollard::Docker,
    id: String,
    removed: bool,
}

impl Container {
    async fn create(env: Env<'_>, mut body: ContainerCreateBody) -> Result<Container, BuildError> {
        let mut labels = env.ctx.container_labels.clone();
        labels.insert(LABEL_RUN.to_string(), env.ctx.run_id.to_string());
        labels.insert(LABEL_IMAGE.to_string(), env.image.to_string());
        body.labels = Some(labels);
        let created = env
            .builder
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| daemon(&format!("create a build container for image `{}`", env.image), &e))?;
        Ok(Container { docker: env.builder.docker.clone(), id: created.id, removed: false })
    }

    async fn remove(mut self) {
        self.removed = true;
        remove(&self.docker, &self.id).await;
    }
}

/// How long the removal of a build container may wait for the daemon. A hung daemon must not
/// hang a cancelled build: what is not removed in time carries the run and owner labels, so the
/// next run or `engine clean` removes it once this engine has exited.
const REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn remove(docker: &bollard::Docker, id: &str) {
    let opts = RemoveContainerOptions { force: true, ..Default::default() };
    match tokio::time::timeout(REMOVE_TIMEOUT, docker.remove_container(id, Some(opts))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot remove build container {id}: {e}"),
        Err(_) => tracing::warn!("cannot remove build container {id}: the Docker daemon did not answer within 30s"),
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (docker, id) = (self.docker.clone(), self.id.clone());
            handle.spawn(async move { remove(&docker, &id).await });
        }
    }
}

/// The longest log line of a build container; longer output is split.
const MAX_LINE: usize = 64 << 10;

/// Splits a container's output into lines, per stream (0 stdout, 1 stderr).
#[derive(Default)]
struct Lines {
    partial: [Vec<u8>; 2],
}

impl Lines {
    /// Linear in the bytes pushed: each byte is looked at once, and a line is never moved within
    /// the buffer. Output without newlines is cut into bounded lines: never an unbounded buffer.
    fn push(&mut self, stream: usize, bytes: &[u8], mut emit: impl FnMut(&str)) {
        let buf = &mut self.partial[stream];
        let mut segments = bytes.split(|&b| b == b'\n').peekable();
        while let Some(mut segment) = segments.next() {
            while buf.len() + segment.len() >= MAX_LINE {
                let take = MAX_LINE - buf.len();
                buf.extend_from_slice(&segment[..take]);
                emit(&String::from_utf8_lossy(buf));
                buf.clear();
                segment = &segment[take..];
            }
            buf.extend_from_slice(segment);
            // Every segment but the last was followed by a newline.
            if segments.peek().is_some() {
                emit(String::from_utf8_lossy(buf).trim_end_matches('\r'));
                buf.clear();
            }
        }
    }

    fn flush(&mut self, mut emit: impl FnMut(&str)) {
        for buf in &mut self.partial {
            if !buf.is_empty() {
                emit(String::from_utf8_lossy(buf).trim_end_matches('\r'));
                buf.clear();
            }
        }
    }
}

/// `<workflow>/<image>` as a valid repository name: lowercase, each component of `[a-z0-9]`
/// runs joined by single `.`, `_` or `-`.
fn repository(workflow: &str, image: &str) -> String {
    let component = |s: &str| {
        let mut out = String::new();
        for c in s.chars().flat_map(char::to_lowercase) {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') { c } else { '-' };
            let sep = matches!(c, '.' | '_' | '-');
            if sep && (out.is_empty() || out.ends_with(['.', '_', '-'])) {
                continue;
            }
            out.push(c);
        }
        let out = out.trim_end_matches(['.', '_', '-']).to_string();
        if out.is_empty() {
            "image".to_string()
        } else {
            out
        }
    };
    format!("{}/{}", component(workflow), component(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_are_valid() {
        assert_eq!(repository("My Flow", "tool_chain"), "my-flow/tool_chain");
        assert_eq!(repository("--", "A..b"), "image/a.b");
    }

    #[test]
    fn build_containers_are_hardened_and_only_root_stages_keep_the_build_capabilities() {
        assert!(runs_as_root(None));
        assert!(runs_as_root(Some("0")));
        assert!(runs_as_root(Some("00:1000")));
        assert!(!runs_as_root(Some("1000:0")));
        let mut stage = dsl::Stage {
            name: "s".into(),
            span: Default::default(),
            from: "local/busybox:1".into(),
            env: Default::default(),
            workdir: None,
            user: None,
            copy: Vec::new(),
            run: Vec::new(),
            network: dsl::Network::None,
            limits: dsl::Limits { memory: 64 << 20, pids: 32, millicpus: 500, ..dsl::Limits::stage() },
        };
        let root = hardened(&stage);
        assert_eq!(root.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(root.cap_add.as_deref().map(<[String]>::len), Some(ROOT_BUILD_CAPABILITIES.len()));
        assert_eq!(root.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(root.privileged, Some(false));
        assert_eq!((root.memory, root.memory_swap), (Some(64 << 20), Some(64 << 20)));
        assert_eq!((root.pids_limit, root.nano_cpus), (Some(32), Some(500_000_000)));
        assert_eq!(root.network_mode.as_deref(), Some("none"));
        stage.user = Some("1000:1000".into());
        assert_eq!(hardened(&stage).cap_add, Some(Vec::new()));
    }

    #[test]
    fn long_output_without_newlines_is_cut_into_bounded_lines() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        l.push(0, &vec![b'x'; MAX_LINE * 2 + 5], |s| got.push(s.len()));
        assert_eq!(got, [MAX_LINE, MAX_LINE]);
        l.flush(|s| got.push(s.len()));
        assert_eq!(got[2], 5);
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        l.push(0, b"a\nb", |s| got.push(s.to_string()));
        l.push(1, b"e\r\n", |s| got.push(s.to_string()));
        l.push(0, b"c\n", |s| got.push(s.to_string()));
        l.flush(|s| got.push(s.to_string()));
        assert_eq!(got, ["a", "e", "bc"]);
    }

    #[test]
    fn long_output_without_newlines_is_cut_in_linear_time() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        let chunk = vec![b'x'; 1000];
        let started = std::time::Instant::now();
        for _ in 0..32_000 {
            l.push(0, &chunk, |s| got.push(s.len()));
        }
        l.flush(|s| got.push(s.len()));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(got.iter().all(|&n| n <= MAX_LINE));
        assert_eq!(got.iter().sum::<usize>(), 32_000_000);
    }
}
