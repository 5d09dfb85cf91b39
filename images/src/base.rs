//! Base images: found locally, or pulled from their registry; root folders imported as images.
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate.

use docker::{ImageId, ResolvedImage};

use crate::Builder;
use crate::{BuildError, LogFn};

async fn resolve(builder: &Builder, reference: &str) -> Result<Option<ResolvedImage>, BuildError> {
    match builder.docker.inspect_image(reference).await {
        Ok(image) => Ok(image.map(|i| ResolvedImage { id: i.id, repo_digests: i.repo_digests })),
        Err(e) => Err(BuildError::daemon(format!("cannot inspect image `{reference}`"), e)),
    }
}

async fn image_id(builder: &Builder, reference: &str) -> Result<Option<ImageId>, BuildError> {
    Ok(resolve(builder, reference).await?.map(|r| r.id))
}

pub(crate) async fn ensure(builder: &Builder, reference: &str, log: LogFn<'_>) -> Result<ResolvedImage, BuildError> {
    if let Some(resolved) = resolve(builder, reference).await? {
        return Ok(resolved);
    }
    let failed = |reason: &str| {
        BuildError::Environment(format!(
            "cannot pull base image `{reference}`: {reason}; offline: import it with \
             `engine images import ROOTFS_DIR {reference}` or `docker load`"
        ))
    };
    let (repo, tag) = split_reference(reference);
    // A digest reference (`repo@sha256:...`) is pulled by digest: from_image carries it whole.
    let (from, tag) = if reference.contains('@') { (reference, None) } else { (repo, Some(tag)) };
    let mut progress = |line: String| log(reference, "pull", &line);
    builder.docker.pull(from, tag, &mut progress).await.map_err(|e| failed(&e.reason()))?;
    resolve(builder, reference).await?.ok_or_else(|| failed("the pull ended but the image is not there"))
}

pub(crate) async fn import_rootfs(builder: &Builder, dir: &std::path::Path, reference: &str) -> Result<ImageId, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::Invalid {
            image: reference.to_string(),
            message: format!("`{}` is not a folder to import", dir.display()),
        });
    }
    let root = dir.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || rootfs_tar(&root))
        .await
        .map_err(|e| BuildError::host(format!("packing `{}` failed", dir.display()), e))?
        .map_err(|e| BuildError::Invalid { image: reference.to_string(), message: format!("cannot pack `{}`: {e}", dir.display()) })?;
    let (repo, tag) = split_reference(reference);
    builder
        .docker
        .import(tar, repo, tag)
        .await
        .map_err(|e| BuildError::daemon(format!("cannot import `{}` as `{reference}`", dir.display()), e))?;
    image_id(builder, reference)
        .await?
        .ok_or_else(|| BuildError::Environment(format!("the import of `{}` ended but `{reference}` is not there", dir.display())))
}

/// The folder as a tar: numeric owners and modes kept (a root filesystem needs them), symlinks
/// stored as links (following them would copy the host's files).
fn rootfs_tar(root: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    for item in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().min_depth(1) {
        let item = item?;
        let rel = item.path().strip_prefix(root).map_err(std::io::Error::other)?;
        tar.append_path_with_name(item.path(), rel)?;
    }
    tar.into_inner()
}

/// `repo:tag` split at the tag's colon (not a registry port's).
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_reference("a/b:1"), ("a/b", "1"));
        assert_eq!(split_reference("127.0.0.1:5000/x/y"), ("127.0.0.1:5000/x/y", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/x/y:t"), ("127.0.0.1:5000/x/y", "t"));
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
    }
}
