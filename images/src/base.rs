//! Base images: found locally, or pulled from their registry; root folders imported as images.
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::build::Builder;
use crate::dockerfile::split_reference;
use crate::{BuildError, LogFn};

/// The daemon's own words when it answered, else the innermost cause (not bollard's wrapping).
pub(crate) fn daemon_reason(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.trim().to_string(),
        bollard::errors::Error::DockerStreamError { error } => error.trim().to_string(),
        other => {
            let mut cur: &(dyn std::error::Error + 'static) = other;
            while let Some(next) = cur.source() {
                cur = next;
            }
            cur.to_string()
        }
    }
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(err, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

async fn image_id(builder: &Builder, reference: &str) -> Result<Option<String>, BuildError> {
    match builder.docker.inspect_image(reference).await {
        Ok(image) => image.id.map(Some).ok_or_else(|| BuildError::Environment(format!("the daemon reports no ID for image `{reference}`"))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(BuildError::Environment(format!("cannot inspect image `{reference}`: {}", daemon_reason(&e)))),
    }
}

pub(crate) async fn ensure(builder: &Builder, reference: &str, log: LogFn<'_>) -> Result<String, BuildError> {
    if let Some(id) = image_id(builder, reference).await? {
        return Ok(id);
    }
    let failed = |reason: &str| {
        BuildError::Environment(format!(
            "cannot pull base image `{reference}`: {reason}; offline: import it with \
             `engine images import ROOTFS_DIR {reference}` or `docker load`"
        ))
    };
    let (repo, tag) = split_reference(reference);
    // A digest reference (`repo@sha256:...`) is pulled by digest: from_image carries it whole.
    let options = if reference.contains('@') {
        CreateImageOptionsBuilder::default().from_image(reference).build()
    } else {
        CreateImageOptionsBuilder::default().from_image(repo).tag(tag).build()
    };
    let mut stream = builder.docker.create_image(Some(options), None, None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| failed(&daemon_reason(&e)))?;
        let mut line = String::new();
        if let Some(id) = &info.id {
            line.push_str(id);
            line.push_str(": ");
        }
        if let Some(status) = &info.status {
            line.push_str(status);
        }
        if let Some(p) = &info.progress_detail {
            if let (Some(current), Some(total)) = (p.current, p.total) {
                line.push_str(&format!(" {current}/{total}"));
            }
        }
        if !line.is_empty() {
            log(reference, "pull", &line);
        }
    }
    image_id(builder, reference).await?.ok_or_else(|| failed("the pull ended but the image is not there"))
}

pub(crate) async fn import_rootfs(builder: &Builder, dir: &std::path::Path, reference: &str) -> Result<String, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::Invalid {
            image: reference.to_string(),
            message: format!("`{}` is not a folder to import", dir.display()),
        });
    }
    let root = dir.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || rootfs_tar(&root))
        .await
        .map_err(|e| BuildError::Environment(format!("packing `{}` failed: {e}", dir.display())))?
        .map_err(|e| BuildError::Invalid { image: reference.to_string(), message: format!("cannot pack `{}`: {e}", dir.display()) })?;
    let (repo, tag) = split_reference(reference);
    let options = CreateImageOptionsBuilder::default().from_src("-").repo(repo).tag(tag).build();
    let mut stream = builder.docker.create_image(Some(options), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| BuildError::Environment(format!("cannot import `{}` as `{reference}`: {}", dir.display(), daemon_reason(&e))))?;
    }
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
