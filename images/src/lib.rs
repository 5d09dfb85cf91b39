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
mod remote;
mod stages;

pub use build::{Builder, ImageInfo};
pub use key::StageKey;
pub use manage::WorkflowPrune;
pub use remote::{ImageRemote, ImageRemoteReport};

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
    /// How many stages were actually built (0: everything came from existing stage images, or
    /// the image was pulled from the remote cache).
    pub stages_built: usize,
    /// The image was pulled from the remote cache instead of built.
    pub pulled: bool,
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
    /// The environment failed (exit 3), said in one sentence with no underlying error: a base
    /// image missing and not pullable, a daemon that reports no ID for what it built.
    #[error("{0}")]
    Environment(String),
    /// A call to the Docker daemon failed (exit 3): `action` says what was asked.
    #[error("{action}: {}", source.reason())]
    Daemon {
        /// What the engine asked, in words (`cannot list images`).
        action: String,
        /// The daemon's error.
        #[source]
        source: docker::DaemonError,
    },
    /// Work on this host (reading, hashing or packing files on a worker thread) could not end
    /// (exit 3).
    #[error("{action}: {source}")]
    Host {
        /// What was being done, in words.
        action: String,
        /// Why it ended.
        #[source]
        source: std::io::Error,
    },
    /// The build was cancelled before it finished; names the image.
    #[error("image `{0}`: build cancelled")]
    Cancelled(String),
}

impl BuildError {
    /// Whether the environment failed (the daemon or the host), not the image or the build: the
    /// binary's exit 3.
    pub fn is_environment(&self) -> bool {
        matches!(self, BuildError::Environment(_) | BuildError::Daemon { .. } | BuildError::Host { .. })
    }

    /// A daemon call that failed while doing `action`.
    pub(crate) fn daemon(action: impl Into<String>, source: docker::DaemonError) -> BuildError {
        BuildError::Daemon { action: action.into(), source }
    }

    /// Blocking host work that could not end (a worker thread that panicked or was cancelled).
    pub(crate) fn host(action: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BuildError {
        BuildError::Host { action: action.into(), source: std::io::Error::other(source) }
    }
}

/// Build output: `(image, stage, line)` for each line an instruction prints.
pub type LogFn<'a> = &'a (dyn Fn(&str, &str, &str) + Send + Sync);

#[cfg(test)]
mod error_tests {
    use super::BuildError;

    #[test]
    fn host_and_daemon_failures_keep_their_cause_and_count_as_the_environment() {
        let e = BuildError::host("packing copy sources failed", "worker thread panicked");
        assert_eq!(e.to_string(), "packing copy sources failed: worker thread panicked");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept as the source");
        assert!(e.is_environment());
        assert!(BuildError::Environment("no ID".into()).is_environment());
        assert!(!BuildError::Cancelled("img".into()).is_environment());
        assert!(!BuildError::Invalid { image: "img".into(), message: "m".into() }.is_environment());
    }
}
