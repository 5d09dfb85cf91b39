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

use docker::image::{BuildContainer, BuildContainerSpec, BuildRunEnd, DownloadError, Hardening, ImageConfig};
use docker::ImageId;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::key::{stage_key, CopyKey, StageKey, StageKeyInput};
use crate::Builder;
use crate::{BuildContext, BuildError, BuiltImage, LogFn, LABEL_IMAGE, LABEL_IMAGE_KEY, LABEL_RUN, LABEL_STAGE_KEY};

/// What a stage starts from.
enum Base {
    /// An image reference, resolved to its ID.
    Image(ImageId),
    /// An earlier stage of the same image (its index).
    Stage(usize),
}

enum PlannedCopy {
    Context { files: Vec<copy::Matched> },
    Stage { stage: usize, name: String, src: String, dst: String },
}

/// A needed stage, keyed.
pub(crate) struct Plan {
    pub(crate) key: StageKey,
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
    let key = plans[last].as_ref().map(|p| p.key).ok_or_else(|| invalid("final stage was not planned".into()))?;

    // The final image from the remote cache, when it has it and no local image does.
    let repo = docker::labels::repository(ctx.workflow, name);
    let mut pulled = false;
    if !ctx.no_cache && find(builder, name, &key, true).await?.is_none() {
        pulled = crate::remote::pull(builder, name, &key, &format!("{repo}:{}", key.short()), log, cancel).await;
    }

    // Walk back from the final stage: found stages end the walk.
    let mut ids: Vec<Option<ImageId>> = vec![None; stages.len()];
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
    let start = |i: usize, ready: Vec<Option<ImageId>>| {
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
    let short = key.short();
    builder.docker.tag_image(id.as_str(), &repo, &short).await.map_err(|e| daemon(&format!("tag image `{name}`"), e))?;
    if !to_build.is_empty() {
        crate::remote::push(builder, name, &id, key);
    }
    let stages_built = to_build.len();
    Ok(BuiltImage { name: name.to_string(), id, tag: format!("{repo}:{short}"), key: *key, stages_built, pulled })
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
        let key_of = |d: usize| plans.get(d).and_then(|p: &Option<Plan>| p.as_ref()).map(|p| p.key);
        let (base, base_key) = match index(i, &s.from)? {
            Some(d) => (Base::Stage(d), key_of(d).ok_or_else(|| invalid(format!("stage `{}` has no key", stages[d].name)))?.hex()),
            None => {
                // The registry digest when the base has one: stage keys are the same on every
                // machine (a local ID differs between two pulls of one image).
                let resolved = builder.resolve_base(&s.from, log).await?;
                let key = resolved.identity(&s.from);
                (Base::Image(resolved.id), key)
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
                        .map_err(|e| BuildError::host(format!("hashing the copy sources of image `{name}` failed"), e))?
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
pub(crate) async fn find(builder: &Builder, image: &str, key: &StageKey, last: bool) -> Result<Option<ImageId>, BuildError> {
    let mut labels = vec![format!("{LABEL_STAGE_KEY}={key}"), format!("{LABEL_IMAGE}={image}")];
    if last {
        labels.push(format!("{LABEL_IMAGE_KEY}={key}"));
    }
    // `all`: a stage image that a later stage was built from has children and no tag, and is
    // hidden from the default listing.
    let found = builder.docker.list_images(labels, true).await.map_err(|e| daemon("list images", e))?;
    // After `--no-cache` several images share a key: the newest is the one built last.
    Ok(found.into_iter().max_by_key(|i| i.created).map(|i| i.id))
}

/// Build one stage; its needed stages are in `ready`. Returns the stage image's ID.
async fn build_stage(
    env: Env<'_>,
    stage: &dsl::Stage,
    plan: Option<&Plan>,
    ready: &[Option<ImageId>],
    last: bool,
    image_key: &StageKey,
) -> Result<ImageId, BuildError> {
    let failed = |message: String| BuildError::StageFailed { image: env.image.into(), stage: stage.name.clone(), message };
    let plan = plan.ok_or_else(|| failed("stage was not planned".into()))?;
    let ready_id = |d: usize| ready.get(d).cloned().flatten().ok_or_else(|| failed("a stage it uses has no image".into()));
    let mut current = match &plan.base {
        Base::Image(id) => id.clone(),
        Base::Stage(d) => ready_id(*d)?,
    };
    let base = env.builder.docker.inspect_image(current.as_str()).await.map_err(|e| daemon("inspect the base image", e))?;
    let base_config = base.ok_or_else(|| failed(format!("its base image {current} is gone")))?.config;

    for c in &plan.copies {
        let tar = match c {
            PlannedCopy::Context { files } => {
                let (dir, files) = (env.ctx.dir.to_path_buf(), files.clone());
                tokio::task::spawn_blocking(move || copy::context_tar(&dir, &files))
                    .await
                    .map_err(|e| BuildError::host("packing copy sources failed", e))?
                    .map_err(|e| failed(format!("cannot pack the copy sources: {e}")))?
            }
            PlannedCopy::Stage { stage: d, name, src, dst } => {
                let from = ready_id(*d)?;
                let archive = download(env, &from, src).await.map_err(|e| match e {
                    Error::Build(b) => b,
                    Error::NotFound => failed(format!("cannot copy `{src}` from stage `{name}`: no such file or folder")),
                })?;
                let (src, dst) = (src.clone(), dst.clone());
                tokio::task::spawn_blocking(move || copy::reroot(&archive, &src, &dst))
                    .await
                    .map_err(|e| BuildError::host("re-rooting a copy failed", e))?
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
    let mut labels = HashMap::from([(LABEL_STAGE_KEY.to_string(), plan.key.hex()), (LABEL_IMAGE.to_string(), env.image.to_string())]);
    if last {
        labels.insert(LABEL_IMAGE_KEY.to_string(), image_key.hex());
    }
    let config = ImageConfig {
        env: Some(environment),
        working_dir: stage.workdir.clone().or(base_config.working_dir.clone()),
        user: stage.user.clone().or(base_config.user.clone()),
        cmd: base_config.cmd.clone(),
        entrypoint: base_config.entrypoint.clone(),
        labels: Some(labels),
    };
    let spec = BuildContainerSpec {
        image: current.to_string(),
        config: ImageConfig {
            env: config.env.clone(),
            working_dir: config.working_dir.clone(),
            user: config.user.clone(),
            // Never started. The base's Entrypoint and Cmd, not those of the last instruction's
            // image (an empty Entrypoint resets it); a placeholder command only when the base has
            // neither, as the daemon refuses to create a container without one.
            entrypoint: Some(config.entrypoint.clone().unwrap_or_default()),
            cmd: match (&config.entrypoint, &config.cmd) {
                (Some(e), _) if !e.is_empty() => config.cmd.clone(),
                (_, Some(c)) if !c.is_empty() => config.cmd.clone(),
                _ => Some(vec!["/bin/sh".into()]),
            },
            labels: None,
        },
        hardening: None,
    };
    let container = create(env, spec).await?;
    let result = commit(env, &container, config).await;
    container.remove().await;
    result
}

/// A container made from `image` that is never started (files go in or come out).
fn idle(image: &ImageId) -> BuildContainerSpec {
    let config = ImageConfig { entrypoint: Some(vec!["/bin/sh".into()]), ..Default::default() };
    BuildContainerSpec { image: image.to_string(), config, hardening: None }
}

/// Upload a tar at `/` of a container made from `image`, and commit it.
async fn upload_and_commit(env: Env<'_>, image: &ImageId, tar: Vec<u8>) -> Result<ImageId, BuildError> {
    check_cancel(env)?;
    let container = create(env, idle(image)).await?;
    let result = async {
        container.upload(tar).await.map_err(|e| daemon("copy files into a build container", e))?;
        commit(env, &container, ImageConfig::default()).await
    }
    .await;
    container.remove().await;
    result
}

enum Error {
    Build(BuildError),
    NotFound,
}

/// The tar of `path` in `image` (through a container that is never started).
async fn download(env: Env<'_>, image: &ImageId, path: &str) -> Result<Vec<u8>, Error> {
    check_cancel(env).map_err(Error::Build)?;
    let container = create(env, idle(image)).await.map_err(Error::Build)?;
    let result = match container.download(path).await {
        Ok(out) => Ok(out),
        Err(DownloadError::NotFound) => Err(Error::NotFound),
        Err(DownloadError::Daemon(e)) => Err(Error::Build(daemon("copy files out of a build container", e))),
    };
    container.remove().await;
    result
}

/// The capabilities a stage running as root keeps (everything else is dropped): what package
/// managers need to chown, chmod and switch to their unprivileged users. Non-root stages keep none.
pub const ROOT_BUILD_CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID"];

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
fn hardened(stage: &dsl::Stage) -> Hardening {
    let limits = &stage.limits;
    let caps_add =
        if runs_as_root(stage.user.as_deref()) { ROOT_BUILD_CAPABILITIES.iter().map(|c| c.to_string()).collect() } else { Vec::new() };
    Hardening {
        network: stage.network.as_str().to_string(),
        caps_add,
        memory: limits.memory,
        millicpus: limits.millicpus,
        pids: limits.pids,
    }
}

/// Run `cmd` with `/bin/sh -c` in a container made from `image`, with the stage's environment,
/// limits and hard timeout, and commit it.
async fn run(env: Env<'_>, stage: &dsl::Stage, image: &ImageId, cmd: &str) -> Result<ImageId, BuildError> {
    check_cancel(env)?;
    let failed = |message: String| BuildError::StageFailed { image: env.image.into(), stage: stage.name.clone(), message };
    let spec = BuildContainerSpec {
        image: image.to_string(),
        config: ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![cmd.to_string()]),
            env: Some(stage.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: stage.workdir.clone(),
            // Build instructions install things: root unless the stage says otherwise.
            user: Some(stage.user.clone().unwrap_or_else(|| "0:0".into())),
            labels: None,
        },
        hardening: Some(hardened(stage)),
    };
    let container = create(env, spec).await?;
    let result = async {
        let timeout = stage.limits.timeout;
        let mut log = |_, line: String| (env.log)(env.image, &stage.name, &line);
        let ended = container.run(timeout, env.cancel, &mut log).await.map_err(|e| daemon("run a build container", e))?;
        match ended {
            BuildRunEnd::Cancelled => Err(BuildError::Cancelled(env.image.to_string())),
            BuildRunEnd::TimedOut => Err(failed(format!("`{cmd}` timed out after {}", dsl::units::format_duration(timeout)))),
            BuildRunEnd::Exited { oom: true, .. } => {
                let limit = dsl::units::format_size(stage.limits.memory);
                Err(failed(format!("`{cmd}` was killed: out of memory (limit {limit})")))
            }
            BuildRunEnd::Exited { code, .. } if code != 0 => Err(failed(format!("`{cmd}` failed with exit code {code}"))),
            BuildRunEnd::Exited { .. } => commit(env, &container, ImageConfig::default()).await,
        }
    }
    .await;
    container.remove().await;
    result
}

async fn commit(env: Env<'_>, container: &BuildContainer, mut config: ImageConfig) -> Result<ImageId, BuildError> {
    // The daemon copies the container's labels into the image unless the commit names them: the
    // run id and owner of this build are blanked, so that containers other tools create from the
    // image are not taken for this run's (an empty owner counts as alive, never as dead).
    let labels = config.labels.get_or_insert_with(HashMap::new);
    for key in env.ctx.container_labels.keys().map(String::as_str).chain([LABEL_RUN]) {
        labels.entry(key.to_string()).or_default();
    }
    container.commit(config).await.map_err(|e| daemon("commit a build container", e))
}

fn check_cancel(env: Env<'_>) -> Result<(), BuildError> {
    if env.cancel.is_cancelled() {
        return Err(BuildError::Cancelled(env.image.to_string()));
    }
    Ok(())
}

fn daemon(action: &str, e: docker::DaemonError) -> BuildError {
    BuildError::daemon(format!("cannot {action}"), e)
}

/// A build container labelled with the run, the owner and the image; removed by
/// `BuildContainer::remove` or, if the build future is dropped before, by the cleanup guard.
async fn create(env: Env<'_>, mut spec: BuildContainerSpec) -> Result<BuildContainer, BuildError> {
    let mut labels = env.ctx.container_labels.clone();
    labels.insert(LABEL_RUN.to_string(), env.ctx.run_id.to_string());
    labels.insert(LABEL_IMAGE.to_string(), env.image.to_string());
    spec.config.labels = Some(labels);
    env.builder
        .docker
        .create_build_container(spec)
        .await
        .map_err(|e| daemon(&format!("create a build container for image `{}`", env.image), e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Dropping every other capability, no-new-privileges, no privileged and no swap are the
        // docker crate's for every `Hardening` (its unit test `instruction_containers_are_hardened`).
        let root = hardened(&stage);
        assert_eq!(root.caps_add.len(), ROOT_BUILD_CAPABILITIES.len());
        assert_eq!((root.memory, root.pids, root.millicpus), (64 << 20, 32, 500));
        assert_eq!(root.network, "none");
        stage.user = Some("1000:1000".into());
        assert!(hardened(&stage).caps_add.is_empty());
    }
}
