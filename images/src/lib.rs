//! Images built by the engine: the `images:` section of a workflow, multi-stage, with the same
//! content-hash discipline as steps. Each stage has a key (its base image ID, its instructions,
//! the digests of the context files it copies, the keys of stages it copies from); a stage whose
//! key exists as a local image (label `engine.stage.key`) is not rebuilt. Stages are built through
//! the Docker API by running each instruction in a container and committing it; `dockerfile:`
//! images go through the daemon's builder with our own key over the Dockerfile and its context.
//!
//! This crate knows nothing of steps, the scheduler or the step cache; it must label every
//! container it creates (`engine.run`, `engine.image`) and remove it, whatever happens.

#![warn(missing_docs)]

mod base;
pub mod build;
mod dockerfile;
pub mod key;
mod lookup;
mod manage;
mod stages;

pub use build::{Builder, ImageInfo};
pub use key::StageKey;

use std::path::Path;

/// Labels on what this crate creates (defined with every other label in `docker::labels`);
/// `engine.run` is also on build containers, so that `engine clean` and the leftover checks see them.
pub use docker::labels::{LABEL_IMAGE, LABEL_IMAGE_KEY, LABEL_RUN, LABEL_STAGE_KEY};
pub use docker::ImageId;

/// Where and for whom an image is built.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The workflow's name: images are tagged `<workflow>/<image>:<short key>`.
    pub workflow: &'a str,
    /// The workflow's directory: `copy` sources without `from:` are relative to it.
    pub dir: &'a Path,
    /// The run id put on build containers (`engine.run`), so cleanup finds them.
    pub run_id: &'a str,
    /// Rebuild every stage, ignoring existing stage images (`engine images build --no-cache`).
    pub no_cache: bool,
    /// More labels for build containers: the engine's owner labels, so that a later run can remove
    /// the build containers of an engine that died. Never left on the images (see `stages`).
    pub container_labels: &'a std::collections::HashMap<String, String>,
}

/// The result of building (or finding) one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image's name in the workflow's `images:` section.
    pub name: String,
    /// What enters the keys of the steps that use the image.
    pub id: ImageId,
    /// `<workflow>/<image>:<first 12 hex of the key>`.
    pub tag: String,
    /// The image's key: its final stage's key, or for a `dockerfile:` image the key over the
    /// Dockerfile and its context.
    pub key: crate::key::StageKey,
    /// How many stages were actually built (0: everything came from existing stage images).
    pub stages_built: usize,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The definition cannot be built as written (exit 2): a copy source matching nothing...
    #[error("image `{image}`: {message}")]
    Invalid {
        /// The image's name.
        image: String,
        /// What is wrong with its definition.
        message: String,
    },
    /// An instruction failed (exit 1): names the image, the stage and the instruction.
    #[error("image `{image}`, stage `{stage}`: {message}")]
    StageFailed {
        /// The image's name.
        image: String,
        /// The stage whose instruction failed.
        stage: String,
        /// Which instruction failed, and how.
        message: String,
    },
    /// The environment failed (exit 3): daemon unreachable, base image missing and not pullable.
    #[error("{0}")]
    Environment(String),
    /// The build was cancelled before it finished; names the image.
    #[error("image `{0}`: build cancelled")]
    Cancelled(String),
}

/// Build output: `(image, stage, line)` for each line an instruction prints.
pub type LogFn<'a> = &'a (dyn Fn(&str, &str, &str) + Send + Sync);
