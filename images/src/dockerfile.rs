//! `dockerfile:` images: built by the daemon's builder from a tar of the context (honouring
//! `.dockerignore`), keyed by the Dockerfile and the context files' digests.
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate (not by `stages`/`key`).
//! The key is ours, not the daemon's: an image labelled `engine.image.key=<key>` is reused
//! without sending the context at all, so a no-op run costs one walk of the context.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use docker::body::{Chunks, PackError};
use docker::image::{BuildMessage, DockerfileBuild};
use docker::ImageId;
use futures_util::StreamExt;
use globset::{GlobBuilder, GlobMatcher};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::Builder;
use crate::{BuildContext, BuildError, BuiltImage, LogFn, LABEL_IMAGE, LABEL_IMAGE_KEY};

/// Bumped when the key's encoding changes (old images then simply stop matching).
const DOCKERFILE_KEY_VERSION: u32 = 1;

/// The name a Dockerfile from outside the context gets in the tar. A context file of that name
/// is left out, so the two cannot collide.
const RESERVED_DOCKERFILE: &str = ".engine-dockerfile";

/// The stage name used in logs and `StageFailed`: the daemon's builder is one opaque stage to us.
const STAGE: &str = "dockerfile";

/// One entry of the context as it is sent (after `.dockerignore`).
struct Entry {
    /// Relative to the context root, `/`-separated.
    rel: String,
    path: PathBuf,
    kind: Kind,
    mode: u32,
}

enum Kind {
    File(cache::Digest),
    Dir,
    /// The link's target, never followed.
    Symlink(PathBuf),
}

/// What is sent to the daemon: the Dockerfile's name in the tar, its content, and the entries.
pub(crate) struct Context {
    dockerfile_name: String,
    /// Set when the Dockerfile lies outside the context and must be added under the reserved name.
    extra_dockerfile: Option<Vec<u8>>,
    dockerfile: Vec<u8>,
    entries: Vec<Entry>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn build(
    builder: &Builder,
    ctx: &BuildContext<'_>,
    name: &str,
    dockerfile: &str,
    context: &str,
    network: dsl::Network,
    log: LogFn<'_>,
    cancel: &CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let (dir, dockerfile, context) = (ctx.dir.to_path_buf(), dockerfile.to_string(), context.to_string());
    let image = name.to_string();
    // Walking and hashing is blocking file work: keep it off the async workers.
    let scanned = tokio::task::spawn_blocking(move || {
        let (context_dir, dockerfile_path) = confine(&dir, &context, &dockerfile)?;
        scan(&context_dir, &dockerfile_path).map(|c| (c, context_dir))
    })
    .await
    .map_err(|e| BuildError::host(format!("image `{image}`: reading the context failed"), e))?;
    let (scanned, context_dir) = scanned.map_err(|message| BuildError::Invalid { image: name.to_string(), message })?;
    let key = key_of(&scanned);
    let tag = format!("{}/{}:{}", ctx.workflow, name, key.short());

    if !ctx.no_cache {
        if let Some(id) = find_by_key(builder, &key).await? {
            // The image may have lost its tag (`docker rmi` of the tag only): give it back.
            let (repo, short) = split_reference(&tag);
            if let Err(e) = builder.docker.tag_image(id.as_str(), repo, short).await {
                return Err(BuildError::daemon(format!("cannot tag image `{id}` as `{tag}`"), e));
            }
            return Ok(BuiltImage { name: name.to_string(), id, tag, key, stages_built: 0 });
        }
    }

    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled(name.to_string()));
    }
    let dockerfile_name = scanned.dockerfile_name.clone();
    // The context is streamed: packed on a blocking thread in bounded chunks while it is sent.
    let (packer, tar) = docker::body::pack(move |out| make_tar(&scanned, &context_dir, out));
    let limits = dsl::Limits::stage();

    let labels = HashMap::from([(LABEL_IMAGE.to_string(), name.to_string()), (LABEL_IMAGE_KEY.to_string(), key.hex())]);
    let request = DockerfileBuild {
        dockerfile: dockerfile_name,
        tag: tag.clone(),
        labels,
        no_cache: ctx.no_cache,
        // `none` unless the image says `network: bridge` (checked against the policy at load).
        network: network.as_str().to_string(),
        // The stage defaults: memory without swap, one CPU; the timeout is ours, below.
        memory: limits.memory,
        millicpus: limits.millicpus,
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
    Ok(BuiltImage { name: name.to_string(), id, tag, key, stages_built: 1 })
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

/// `repo:tag` split at the tag's colon (not a registry port's).
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
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

/// Read the Dockerfile and walk the context, applying `.dockerignore`.
pub(crate) fn scan(context_dir: &Path, dockerfile_path: &Path) -> Result<Context, String> {
    if !context_dir.is_dir() {
        return Err(format!("the context `{}` is not a folder", context_dir.display()));
    }
    let dockerfile = read_small(dockerfile_path, "the Dockerfile")?
        .ok_or_else(|| format!("cannot read the Dockerfile `{}`: it does not exist", dockerfile_path.display()))?;
    let ignore = match read_small(&context_dir.join(".dockerignore"), "`.dockerignore`")? {
        Some(bytes) => Ignore::parse(&String::from_utf8_lossy(&bytes))?,
        None => Ignore::default(),
    };
    // Canonical paths decide whether the Dockerfile is inside the context (`..` or symlinks).
    let canon_ctx = context_dir.canonicalize().map_err(|e| format!("cannot resolve `{}`: {e}", context_dir.display()))?;
    let canon_df = dockerfile_path.canonicalize().map_err(|e| format!("cannot resolve `{}`: {e}", dockerfile_path.display()))?;
    let inside = canon_df.strip_prefix(&canon_ctx).ok().and_then(|p| p.to_str()).map(str::to_string);
    let (dockerfile_name, extra_dockerfile) = match inside {
        Some(rel) if rel != RESERVED_DOCKERFILE => (rel, None),
        _ => (RESERVED_DOCKERFILE.to_string(), Some(dockerfile.clone())),
    };

    let mut entries = Vec::new();
    let walk = walkdir::WalkDir::new(context_dir).follow_links(false).sort_by_file_name().min_depth(1);
    for item in walk {
        let item = item.map_err(|e| format!("cannot read the context: {e}"))?;
        let rel = item
            .path()
            .strip_prefix(context_dir)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| format!("`{}` is not a UTF-8 path", item.path().display()))?
            .to_string();
        if rel == RESERVED_DOCKERFILE {
            continue;
        }
        // The Dockerfile and .dockerignore are always sent, as the docker CLI does.
        let forced = rel == ".dockerignore" || rel == dockerfile_name;
        if !forced && ignore.excludes(&rel) {
            continue;
        }
        let meta = item.metadata().map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        let ft = meta.file_type();
        let (kind, mode) = if ft.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(|e| format!("cannot read the link `{rel}`: {e}"))?;
            (Kind::Symlink(target), cache::hash::SYMLINK_MODE)
        } else if ft.is_dir() {
            (Kind::Dir, meta.mode())
        } else if ft.is_file() {
            let digest = cache::hash::hash_file(item.path()).map_err(|e| format!("cannot read `{rel}`: {e}"))?;
            (Kind::File(digest), meta.mode())
        } else {
            // Sockets, fifos, devices: the docker CLI cannot send them meaningfully either.
            continue;
        };
        entries.push(Entry { rel, path: item.into_path(), kind, mode });
    }
    Ok(Context { dockerfile_name, extra_dockerfile, dockerfile, entries })
}

/// SHA-256 over a versioned, length-prefixed encoding: no two contexts encode alike.
pub(crate) fn key_of(ctx: &Context) -> crate::key::StageKey {
    fn bytes(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let mut h = Sha256::new();
    bytes(&mut h, b"engine-dockerfile-image");
    h.update(DOCKERFILE_KEY_VERSION.to_le_bytes());
    bytes(&mut h, &ctx.dockerfile);
    bytes(&mut h, ctx.dockerfile_name.as_bytes());
    h.update((ctx.entries.len() as u64).to_le_bytes());
    for e in &ctx.entries {
        bytes(&mut h, e.rel.as_bytes());
        h.update(e.mode.to_le_bytes());
        match &e.kind {
            Kind::File(d) => {
                h.update([b'f']);
                h.update(d.as_bytes());
            }
            Kind::Dir => h.update([b'd']),
            Kind::Symlink(t) => {
                h.update([b'l']);
                bytes(&mut h, t.as_os_str().as_encoded_bytes());
            }
        }
    }
    crate::key::StageKey::from_digest(cache::Digest::from_bytes(h.finalize().into()))
}

/// The tar the daemon's builder reads, written to `out`. Deterministic headers: owners and
/// times are not part of the key, so they must not reach the image either. Symlinks are sent as
/// symlinks (as `docker build` does), never followed; files are opened without following a
/// symlink and must still be regular files (never a FIFO or a device).
fn make_tar(ctx: &Context, context_dir: &Path, out: &mut impl io::Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for e in &ctx.entries {
        debug_assert!(e.path.starts_with(context_dir));
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match &e.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &e.rel, io::empty())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &e.rel, target)?;
            }
            Kind::File(_) => {
                let f = cache::safe::open_regular(&e.path, false)?;
                header.set_entry_type(tar::EntryType::Regular);
                let size = f.metadata()?.len();
                header.set_size(size);
                // Exactly the size in the header, even if the file grows meanwhile.
                tar.append_data(&mut header, &e.rel, std::io::Read::take(f, size))?;
            }
        }
    }
    if let Some(content) = &ctx.extra_dockerfile {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, RESERVED_DOCKERFILE, content.as_slice())?;
    }
    tar.into_inner()?;
    Ok(())
}

/// `.dockerignore` patterns, in order: the last one matching a path decides.
#[derive(Default)]
struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            // Docker cleans patterns: no leading `/` or `./`, no trailing `/`.
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("`.dockerignore`: bad pattern `{line}`: {e}"))?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(Ignore { rules })
    }

    /// Whether `rel` is left out. As in Docker, a pattern matching a parent folder matches
    /// everything below it.
    fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.rules {
            let matched = glob.is_match(rel) || parents(rel).any(|p| glob.is_match(p));
            if matched {
                excluded = !negated;
            }
        }
        excluded
    }
}

fn clean(pattern: &str) -> String {
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut out: Vec<&str> = Vec::new();
    for p in parts {
        if p == ".." {
            out.pop();
        } else {
            out.push(p);
        }
    }
    out.join("/")
}

fn parents(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse("# comment\n\n*.log\n/build/\n**/tmp\n!keep.log\ndocs/?.md\n").unwrap();
        assert!(ig.excludes("a.log"));
        assert!(!ig.excludes("keep.log"));
        assert!(!ig.excludes("sub/a.log"), "`*` does not cross folders");
        assert!(ig.excludes("build"));
        assert!(ig.excludes("build/x/y"));
        assert!(ig.excludes("tmp/x"));
        assert!(ig.excludes("a/b/tmp"));
        assert!(ig.excludes("docs/a.md"));
        assert!(!ig.excludes("docs/ab.md"));
        assert!(!ig.excludes("src/main.rs"));
    }

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_reference("a/b:1"), ("a/b", "1"));
        assert_eq!(split_reference("127.0.0.1:5000/x/y"), ("127.0.0.1:5000/x/y", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/x/y:t"), ("127.0.0.1:5000/x/y", "t"));
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
    }
}
