//! The builder's public face. Stage images are built in `stages`, Dockerfile images in
//! `dockerfile`; base images are found (or pulled) and root folders imported in `base`; what the
//! engine built is listed and pruned in `manage`.

use tokio_util::sync::CancellationToken;

use crate::{BuildContext, BuildError, BuiltImage, LogFn};

/// One image the engine built, for `engine images ls`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// The image's ID.
    pub id: docker::ImageId,
    /// Its `repository:tag` references (none if it lost its tags).
    pub tags: Vec<String>,
    /// The `images:` entry it was built for (label `engine.image`).
    pub name: String,
    /// The image's key (label `engine.image.key`), when it carries a valid one.
    pub key: Option<crate::key::StageKey>,
    /// Size in bytes, as the daemon reports it.
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
}

/// Builds, finds, lists and prunes the engine's images on one daemon.
pub struct Builder {
    pub(crate) docker: docker::Daemon,
    /// Where built images are shared, if anywhere.
    pub(crate) remote: Option<crate::ImageRemote>,
}

impl Builder {
    /// A builder on `daemon`.
    pub fn new(daemon: docker::Daemon) -> Builder {
        Builder { docker: daemon, remote: None }
    }

    /// The same builder sharing images through `remote`: an image whose key has no local image
    /// is pulled from it (when it reads) before building, and a built image pushed to it (when
    /// it writes) in the background.
    pub fn with_remote(mut self, remote: Option<crate::ImageRemote>) -> Builder {
        self.remote = remote;
        self
    }

    /// Build image `name` of the workflow (or find it: every stage whose key exists as an image
    /// is reused), tag it `<workflow>/<name>:<short key>` and label it `engine.image=<name>`,
    /// `engine.image.key=<key>`. Stages without a dependency between them build concurrently.
    pub async fn build(
        &self,
        ctx: &BuildContext<'_>,
        name: &str,
        def: &dsl::ImageDef,
        log: LogFn<'_>,
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        match def {
            dsl::ImageDef::Stages(stages) => crate::stages::build(self, ctx, name, stages, log, cancel).await,
            dsl::ImageDef::Dockerfile { dockerfile, context, network, args, target } => {
                let spec = crate::dockerfile::Spec { dockerfile, context, network: *network, args, target: target.as_deref() };
                crate::dockerfile::build(self, ctx, name, spec, log, cancel).await
            }
        }
    }

    /// The ID of `reference`, pulling it from its registry (with progress on `log`) when it is not
    /// present locally. A failed pull is `Environment`, naming the image.
    pub async fn ensure_base(&self, reference: &str, log: LogFn<'_>) -> Result<docker::ImageId, BuildError> {
        Ok(crate::base::ensure(self, reference, log).await?.id)
    }

    /// As [`Builder::ensure_base`], with the image's repo digests (a pulled image's identity on
    /// every machine, see [`docker::ResolvedImage::repo_digest`]).
    pub async fn resolve_base(&self, reference: &str, log: LogFn<'_>) -> Result<docker::ResolvedImage, BuildError> {
        crate::base::ensure(self, reference, log).await
    }

    /// Turn a root folder into an image tagged `reference` (the offline path: debootstrap or
    /// busybox-static roots). Returns its ID.
    pub async fn import_rootfs(&self, dir: &std::path::Path, reference: &str) -> Result<docker::ImageId, BuildError> {
        crate::base::import_rootfs(self, dir, reference).await
    }

    /// Every image labelled `engine.image`, newest first.
    pub async fn list(&self) -> Result<Vec<ImageInfo>, BuildError> {
        crate::manage::list(self).await
    }

    /// Remove engine-built images (final and stage images) whose ID is not in `keep`. Returns
    /// the removed IDs.
    pub async fn prune(&self, keep: &[docker::ImageId]) -> Result<Vec<docker::ImageId>, BuildError> {
        crate::manage::prune(self, keep).await
    }

    /// Remove workflow `workflow`'s tags (`<workflow>/<image>:<key>`) from the engine-built
    /// images; an image is deleted with its last tag, so an image another workflow also tags
    /// stays, and no other workflow's image is touched.
    pub async fn prune_workflow(&self, workflow: &str) -> Result<crate::manage::WorkflowPrune, BuildError> {
        crate::manage::prune_workflow(self, workflow).await
    }
}
