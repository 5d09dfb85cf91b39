//! Listing and pruning what the engine built.
//!
//! Owned by the Dockerfile/base/manage part of the `images` crate. `list` shows final images
//! only (those with `engine.image.key`): stage images are an implementation detail of the
//! cache. `prune` removes both.

use std::collections::HashMap;

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};

use crate::base::daemon_reason;
use crate::build::{Builder, ImageInfo};
use crate::{BuildError, LABEL_IMAGE, LABEL_IMAGE_KEY};

async fn labelled(builder: &Builder, label: &str) -> Result<Vec<bollard::models::ImageSummary>, BuildError> {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    // `all`: stage images may be untagged, and then the default listing hides them.
    let options = ListImagesOptionsBuilder::default().all(true).filters(&filters).build();
    builder
        .docker
        .list_images(Some(options))
        .await
        .map_err(|e| BuildError::Environment(format!("cannot list images: {}", daemon_reason(&e))))
}

pub(crate) async fn list(builder: &Builder) -> Result<Vec<ImageInfo>, BuildError> {
    let mut images: Vec<ImageInfo> = labelled(builder, LABEL_IMAGE_KEY)
        .await?
        .into_iter()
        .map(|i| ImageInfo {
            name: i.labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
            key: i.labels.get(LABEL_IMAGE_KEY).cloned().unwrap_or_default(),
            tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
            size: u64::try_from(i.size).unwrap_or(0),
            created: i.created,
            id: i.id,
        })
        .collect();
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    Ok(images)
}

pub(crate) async fn prune(builder: &Builder, keep: &[String]) -> Result<Vec<String>, BuildError> {
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
        let names: Vec<String> = if image.repo_tags.iter().any(|t| t != "<none>:<none>") {
            image.repo_tags.iter().filter(|t| *t != "<none>:<none>").cloned().collect()
        } else {
            vec![image.id.clone()]
        };
        let mut gone = false;
        for name in names {
            let options = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
            match builder.docker.remove_image(&name, Some(options), None).await {
                Ok(items) => gone |= items.iter().any(|i| i.deleted.as_deref() == Some(image.id.as_str())),
                // In use by a container, or a parent of a kept image, or already gone: keep going.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. }) => {}
                Err(e) => return Err(BuildError::Environment(format!("cannot remove image `{}`: {}", image.id, daemon_reason(&e)))),
            }
        }
        if gone {
            removed.push(image.id);
        }
    }
    Ok(removed)
}
