//! `dockerfile:` images: built by the daemon's builder from the context exactly as `docker
//! build` sends it (`context`), keyed by what the build reads (`key`: the Dockerfile, build
//! arguments, target, the IDs of its base images, the context files its `COPY`/`ADD` lines
//! match, as `parse` finds them), with `.dockerignore` read as the docker CLI reads it (`ignore`).
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate (not by `stages`/`key`).
//! The key is ours, not the daemon's: an image labelled `engine.image.key=<key>` is reused
//! without sending the context at all, so a no-op run costs one walk of the context and the
//! hashing of the files the build reads.

mod context;
mod ignore;
mod key;
mod parse;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use docker::body::{Chunks, PackError};
use docker::image::{BuildMessage, DockerfileBuild};
use docker::ImageId;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::base::split_reference;
use crate::Builder;
use crate::{BuildContext, BuildError, BuiltImage, LogFn, LABEL_IMAGE, LABEL_IMAGE_KEY};
use context::Context;

/// The stage name used in logs and `StageFailed`: the daemon's builder is one opaque stage to us.
const STAGE: &str = "dockerfile";

/// A `dockerfile:` image as the workflow defines it.
#[derive(Clone, Copy)]
pub(crate) struct Spec<'a> {
    pub dockerfile: &'a str,
    pub context: &'a str,
    pub network: dsl::Network,
    pub args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
}

/// The context, read and keyed: what a build sends, and the key it is labelled with.
pub(crate) struct Prepared {
    context: Context,
    key: crate::key::StageKey,
}

/// Read the Dockerfile and walk the context (blocking work, on a worker thread), resolve the
/// base images to IDs (pulled when missing, as a build would), and compute the key.
pub(crate) async fn prepare(
    builder: &Builder,
    ctx: &BuildContext<'_>,
    name: &str,
    spec: Spec<'_>,
    log: LogFn<'_>,
) -> Result<Prepared, BuildError> {
    let invalid = |message: String| BuildError::Invalid { image: name.to_string(), message };
    let (dir, dockerfile, context_rel) = (ctx.dir.to_path_buf(), spec.dockerfile.to_string(), spec.context.to_string());
    let args = spec.args.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let (context_dir, dockerfile_path) = confine(&dir, &context_rel, &dockerfile)?;
        let context = scan(&context_dir, &dockerfile_path)?;
        let reads = parse::reads(&String::from_utf8_lossy(&context.dockerfile), &args);
        Ok::<_, String>((context, reads))
    })
    .await
    .map_err(|e| BuildError::host(format!("image `{name}`: reading the context failed"), e))?;
    let (context, reads) = scanned.map_err(invalid)?;

    let mut bases = Vec::new();
    let mut reads = reads;
    for reference in &reads.bases {
        let resolved = builder.resolve_base(reference, log).await?;
        // `ONBUILD COPY`/`ADD` of a base reads context files the Dockerfile does not name: key
        // the whole context then.
        let details = builder.docker.inspect_image(resolved.id.as_str()).await;
        let details = details.map_err(|e| BuildError::daemon(format!("cannot inspect image `{reference}`"), e))?;
        if details.is_some_and(|d| !d.on_build.is_empty()) {
            reads.sources = parse::Sources::All;
        }
        // The registry digest when the base has one (the same on every machine), else its ID.
        bases.push((reference.clone(), resolved.identity(reference)));
    }

    let (args, target, network) = (spec.args.clone(), spec.target.map(str::to_string), spec.network);
    let keyed = tokio::task::spawn_blocking(move || {
        let input = key::KeyInput {
            dockerfile: &context.dockerfile,
            args: &args,
            target: target.as_deref(),
            network: network.as_str(),
            bases: &bases,
            entries: &context.entries,
            root: &context.root,
            sources: &reads.sources,
        };
        let (key, digests) = key::key(&input).map_err(|e| format!("cannot read the context: {e}"))?;
        let mut context = context;
        for (i, digest) in digests {
            context.entries[i].digest = Some(digest);
        }
        Ok(Prepared { key, context })
    })
    .await
    .map_err(|e| BuildError::host(format!("image `{name}`: hashing the context failed"), e))?;
    keyed.map_err(invalid)
}

impl Prepared {
    /// The image's key.
    pub(crate) fn key(&self) -> crate::key::StageKey {
        self.key
    }
}

pub(crate) async fn build(
    builder: &Builder,
    ctx: &BuildContext<'_>,
    name: &str,
    spec: Spec<'_>,
    log: LogFn<'_>,
    cancel: &CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let prepared = prepare(builder, ctx, name, spec, log).await?;
    let key = prepared.key;
    let tag = format!("{}/{}:{}", ctx.workflow, name, key.short());

    if !ctx.no_cache {
        let mut found = find_by_key(builder, &key).await?;
        let pulled = found.is_none() && crate::remote::pull(builder, name, &key, &tag, log, cancel).await;
        if pulled {
            found = find_by_key(builder, &key).await?;
        }
        if let Some(id) = found {
            // The image may have lost its tag (`docker rmi` of the tag only): give it back.
            let (repo, short) = split_reference(&tag);
            if let Err(e) = builder.docker.tag_image(id.as_str(), repo, short).await {
                return Err(BuildError::daemon(format!("cannot tag image `{id}` as `{tag}`"), e));
            }
            return Ok(BuiltImage { name: name.to_string(), id, tag, key, stages_built: 0, pulled });
        }
    }

    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled(name.to_string()));
    }
    let scanned = prepared.context;
    let dockerfile_name = scanned.dockerfile_name.clone();
    // The context is streamed: packed on a blocking thread in bounded chunks while it is sent.
    let (packer, tar) = docker::body::pack(move |out| context::write_tar(&scanned, out));
    let limits = dsl::Limits::stage();

    let labels = HashMap::from([(LABEL_IMAGE.to_string(), name.to_string()), (LABEL_IMAGE_KEY.to_string(), key.hex())]);
    let request = DockerfileBuild {
        dockerfile: dockerfile_name,
        tag: tag.clone(),
        labels,
        no_cache: ctx.no_cache,
        // `none` unless the image says `network: bridge` (checked against the policy at load).
        network: spec.network.as_str().to_string(),
        // The stage defaults: memory without swap, one CPU; the timeout is ours, below.
        memory: limits.memory,
        millicpus: limits.millicpus,
        build_args: spec.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        target: spec.target.unwrap_or("").to_string(),
    };
    let mut steps = Vec::new();
    let build = run_build(builder, name, &tag, &request, tar, log, cancel, &mut steps);
    let result = match tokio::time::timeout(limits.timeout, build).await {
        Ok(r) => r,
        // Dropping the request stops the classic builder; forcerm removes its container.
        Err(_) => Err(BuildError::StageFailed {
            image: name.to_string(),
            stage: STAGE.into(),
            message: format!("timed out after {}", dsl::units::format_duration(limits.timeout)),
        }),
    };
    // A context that could not be packed is the reason, whatever the daemon said about it.
    let result = match packer.finish().await {
        Err(PackError::Failed(e)) if result.is_err() => {
            Err(BuildError::Invalid { image: name.to_string(), message: format!("cannot pack the context: {e}") })
        }
        _ => result,
    };
    remove_intermediates(builder, &steps, result.as_ref().ok()).await;
    let id = result?;
    crate::remote::push(builder, name, &id, &key);
    Ok(BuiltImage { name: name.to_string(), id, tag, key, stages_built: 1, pulled: false })
}

/// Send the context, stream the builder's output, and return the built image's ID. `steps`
/// collects the IDs of the images the builder produced along the way.
#[allow(clippy::too_many_arguments)]
async fn run_build(
    builder: &Builder,
    name: &str,
    tag: &str,
    request: &DockerfileBuild,
    tar: Chunks,
    log: LogFn<'_>,
    cancel: &CancellationToken,
    steps: &mut Vec<String>,
) -> Result<ImageId, BuildError> {
    let mut stream = builder.docker.build_dockerfile(request, tar);
    loop {
        let item = tokio::select! {
            // Dropping the stream closes the request: the classic builder then stops, and
            // forcerm removes its container.
            _ = cancel.cancelled() => return Err(BuildError::Cancelled(name.to_string())),
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        match item {
            Ok(message) => handle_line(name, &message, log, steps)?,
            Err(e) => {
                return Err(BuildError::daemon(format!("image `{name}`: the build failed"), e));
            }
        }
    }
    match builder.docker.inspect_image(tag).await {
        Ok(Some(inspect)) => Ok(inspect.id),
        Ok(None) => Err(BuildError::Environment(format!("image `{name}`: the daemon reports no ID for `{tag}`"))),
        Err(e) => Err(BuildError::daemon(format!("image `{name}`: built but `{tag}` cannot be inspected"), e)),
    }
}

/// The classic builder keeps an image per step. Those of the final stage are the built image's
/// parents (the daemon refuses to remove them, rightly), but those of earlier stages and of a
/// failed build would stay behind as unlabelled dangling images. Our own key replaces the
/// builder's cache, so they are removed; tagged images (the bases) are never touched.
async fn remove_intermediates(builder: &Builder, steps: &[String], built: Option<&ImageId>) {
    for step in steps.iter().rev() {
        let Ok(Some(image)) = builder.docker.inspect_image(step).await else { continue };
        if !image.repo_tags.is_empty() || Some(&image.id) == built {
            continue;
        }
        // A refusal (a child image, a container using it) means it is still needed: keep it.
        let _ = builder.docker.remove_image(step).await;
    }
}

/// Forward the builder's output; an error in the stream is the Dockerfile's failure.
fn handle_line(name: &str, message: &BuildMessage, log: LogFn<'_>, steps: &mut Vec<String>) -> Result<(), BuildError> {
    let text = match message {
        BuildMessage::Failed(message) => {
            return Err(BuildError::StageFailed { image: name.to_string(), stage: STAGE.into(), message: message.clone() });
        }
        BuildMessage::Output(text) => text,
    };
    {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // ` ---> 3adcc2b090a5`: the image a step produced (or reused).
            if let Some(id) = line.trim().strip_prefix("---> ") {
                if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    steps.push(id.to_string());
                }
            }
            log(name, STAGE, line);
        }
    }
    Ok(())
}

/// The final image built with `key`, if any.
pub(crate) async fn find_by_key(builder: &Builder, key: &crate::key::StageKey) -> Result<Option<ImageId>, BuildError> {
    let images = builder
        .docker
        .list_images(vec![format!("{LABEL_IMAGE_KEY}={key}")], false)
        .await
        .map_err(|e| BuildError::daemon("cannot list images", e))?;
    Ok(images.into_iter().max_by_key(|i| i.created).map(|i| i.id))
}

/// The real paths of the context and the Dockerfile, both inside the workflow's folder `dir`:
/// relative, without `..`, and not reached through a symlink leading out (the load-time check,
/// again at build time, for whatever builds without loading).
pub(crate) fn confine(dir: &Path, context: &str, dockerfile: &str) -> Result<(PathBuf, PathBuf), String> {
    let top = dir.canonicalize().map_err(|e| format!("cannot resolve the workflow's folder: {e}"))?;
    let mut out = Vec::new();
    for (key, rel) in [("context", context), ("dockerfile", dockerfile)] {
        let p = Path::new(rel);
        if rel.is_empty() || p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("`{key}` `{rel}` must be a relative path inside the workflow's folder, without `..`"));
        }
        let real = dir.join(p).canonicalize().map_err(|e| format!("cannot resolve `{key}` `{rel}`: {e}"))?;
        if !real.starts_with(&top) {
            return Err(format!("`{key}` `{rel}` leads outside the workflow's folder through a symlink"));
        }
        out.push(real);
    }
    let dockerfile = out.pop().unwrap_or_default();
    let context = out.pop().unwrap_or_default();
    Ok((context, dockerfile))
}

/// A file of the context the engine itself reads (the Dockerfile, `.dockerignore`): a regular
/// file (never a FIFO or device, never through a final symlink), at most [`MAX_READ`] bytes.
/// `Ok(None)`: it does not exist.
fn read_small(path: &Path, what: &str) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let f = match cache::safe::open_regular(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {what} `{}`: {e}", path.display())),
    };
    let mut data = Vec::new();
    f.take(MAX_READ + 1).read_to_end(&mut data).map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))?;
    if data.len() as u64 > MAX_READ {
        return Err(format!("{what} `{}` is larger than 1 MiB", path.display()));
    }
    Ok(Some(data))
}

/// The largest Dockerfile or `.dockerignore` read.
const MAX_READ: u64 = 1 << 20;

/// Read the Dockerfile and `.dockerignore` and walk the context as the docker CLI does.
fn scan(context_dir: &Path, dockerfile_path: &Path) -> Result<Context, String> {
    if !context_dir.is_dir() {
        return Err(format!("the context `{}` is not a folder", context_dir.display()));
    }
    let dockerfile = read_small(dockerfile_path, "the Dockerfile")?
        .ok_or_else(|| format!("cannot read the Dockerfile `{}`: it does not exist", dockerfile_path.display()))?;
    let ignore_file = read_small(&context_dir.join(".dockerignore"), "`.dockerignore`")?;
    let patterns = match &ignore_file {
        Some(bytes) => ignore::read_all(bytes).map_err(|e| error_text(&e))?,
        None => Vec::new(),
    };
    // Canonical paths decide whether the Dockerfile is inside the context (`..` or symlinks).
    let canon_ctx = context_dir.canonicalize().map_err(|e| format!("cannot resolve `{}`: {e}", context_dir.display()))?;
    let canon_df = dockerfile_path.canonicalize().map_err(|e| format!("cannot resolve `{}`: {e}", dockerfile_path.display()))?;
    let inside = canon_df.strip_prefix(&canon_ctx).ok().and_then(|p| p.to_str()).map(str::to_string);
    let mut entries = context::walk(context_dir, inside.as_deref(), &patterns).map_err(|e| error_text(&e))?;
    let (dockerfile_name, outside) = match inside {
        Some(rel) => (rel, None),
        None => {
            // As the CLI does: the Dockerfile under a name of its own, which `.dockerignore`
            // names, so that the daemon drops both from what `COPY` sees.
            let name = context::outside_name(&dockerfile);
            entries.retain(|e| e.rel != name.as_bytes());
            let mut dockerignore = ignore_file.unwrap_or_default();
            dockerignore.extend_from_slice(format!("\n{name}\n").as_bytes());
            let mtime = std::fs::metadata(dockerfile_path).map(|m| m.modified().ok()).ok().flatten();
            let mtime = mtime.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            (name, Some(context::Outside { dockerignore, mtime }))
        }
    };
    Ok(Context { dockerfile_name, dockerfile, outside, entries, root: context_dir.to_path_buf() })
}

/// An error and its causes, in one line.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
