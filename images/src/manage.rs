//! Listing and pruning what the engine built.
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate. `list` shows final images
//! only (those with `engine.image.key`): stage images are an implementation detail of the
//! cache. `prune` removes both, of every workflow; `prune_workflow` only one workflow's.

use docker::image::ImageSummary;
use docker::ImageId;

use crate::{BuildError, LABEL_IMAGE, LABEL_IMAGE_KEY};
use crate::{Builder, ImageInfo};

async fn labelled(builder: &Builder, label: &str) -> Result<Vec<ImageSummary>, BuildError> {
    // `all`: stage images may be untagged, and then the default listing hides them.
    builder.docker.list_images(vec![label.to_string()], true).await.map_err(|e| BuildError::daemon("cannot list images", e))
}

pub(crate) async fn list(builder: &Builder) -> Result<Vec<ImageInfo>, BuildError> {
    let mut images: Vec<ImageInfo> = labelled(builder, LABEL_IMAGE_KEY)
        .await?
        .into_iter()
        .map(|i| ImageInfo {
            name: i.labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
            key: i.labels.get(LABEL_IMAGE_KEY).and_then(|k| k.parse().ok()),
            tags: i.repo_tags,
            size: i.size,
            created: i.created,
            id: i.id,
        })
        .collect();
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    Ok(images)
}

pub(crate) async fn prune(builder: &Builder, keep: &[ImageId]) -> Result<Vec<ImageId>, BuildError> {
    let mut images = labelled(builder, LABEL_IMAGE).await?;
    // Newest first: a child image goes before the stage image it was built on, which the
    // daemon would otherwise refuse to remove ("image has dependent child images").
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let mut removed = Vec::new();
    for image in images {
        if keep.contains(&image.id) {
            continue;
        }
        // Tagged images are removed tag by tag; the last removal deletes the image.
        let names: Vec<String> = if image.repo_tags.is_empty() { vec![image.id.to_string()] } else { image.repo_tags.clone() };
        let mut gone = false;
        for name in names {
            match builder.docker.remove_image(&name).await {
                Ok(deleted) => gone |= deleted.iter().any(|d| d == image.id.as_str()),
                // In use by a container, or a parent of a kept image, or already gone: keep going.
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(BuildError::daemon(format!("cannot remove image `{}`", image.id), e)),
            }
        }
        if gone {
            removed.push(image.id);
        }
    }
    Ok(removed)
}

/// What [`crate::Builder::prune_workflow`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowPrune {
    /// The workflow's tags removed (`<workflow>/<image>:<key>`).
    pub untagged: Vec<String>,
    /// The images deleted: those whose last tag was one of the workflow's, and the untagged stage
    /// images under them that no other image was built on.
    pub removed: Vec<ImageId>,
    /// Images that lost the workflow's tags but stay, with the tags they keep (another workflow
    /// tags the same image), or none (a container still uses it).
    pub kept: Vec<(ImageId, Vec<String>)>,
}

pub(crate) async fn prune_workflow(builder: &Builder, workflow: &str) -> Result<WorkflowPrune, BuildError> {
    let prefix = docker::labels::repository_prefix(workflow);
    let mut images = labelled(builder, LABEL_IMAGE).await?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let mut report = WorkflowPrune::default();
    for image in images {
        let (ours, others): (Vec<String>, Vec<String>) = image.repo_tags.iter().cloned().partition(|t| t.starts_with(&prefix));
        if ours.is_empty() {
            continue;
        }
        let mut gone = false;
        for tag in ours {
            // Without force: the tag goes, and the image with it only when it was the last one.
            match builder.docker.remove_image(&tag).await {
                Ok(deleted) => {
                    report.untagged.push(tag);
                    for id in deleted {
                        gone |= id == image.id.as_str();
                        if let Ok(id) = id.parse::<ImageId>() {
                            if !report.removed.contains(&id) {
                                report.removed.push(id);
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(BuildError::daemon(format!("cannot remove image `{tag}`"), e)),
            }
        }
        if !gone {
            report.kept.push((image.id, others));
        }
    }
    Ok(report)
}
