//! The images the planned steps run in. References were resolved by [`super::prepare`]; images
//! under `images:` are built in the background once a run has started ([`StepImages::start`]),
//! and a step waits only for its own. A dry run computes their keys instead ([`lookup`]): the
//! steps using an image are keyed by its key, built or not, so nothing is built.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::future::{BoxFuture, Shared};
use tokio_util::sync::CancellationToken;

use super::{Prepared, StartError};
use crate::docker::{DockerExecutor, ImageId};
use crate::error::EnvironmentError;
use crate::events::{Event, EventSink};
use crate::executor::{StepFailure, StepImage};

/// The outcome of one image build as the steps see it: the image ID, or why there is none.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    /// Its ID, its key (what the steps using it are keyed by), and the images it was built from
    /// with their IDs (see [`bases`]).
    Built(ImageId, cache::Digest, Arc<Vec<(String, ImageId)>>),
    Failed(StepFailure),
}

type ImageBuild = Shared<BoxFuture<'static, ImageOutcome>>;

/// Where each planned step's image comes from.
pub struct StepImages {
    /// Step name -> (reference, image ID, identity), for steps using an image reference.
    references: HashMap<String, (String, ImageId, cache::ImageIdentity)>,
    /// Image name under `images:` -> its build.
    builds: HashMap<String, ImageBuild>,
    /// Where built images are shared, if anywhere (its pushes are awaited by [`StepImages::wait`]).
    remote: Option<images::ImageRemote>,
}

/// The image side of a remote cache: engine-built images pulled from and pushed to
/// `remote.image_reference(key)` by the daemon, with the credentials of Docker's `config.json`
/// (anonymous without), as the remote's mode allows; each transfer bounded by `timeout`.
pub fn image_remote(remote: &remote::Remote, timeout: std::time::Duration) -> images::ImageRemote {
    let auth = remote.daemon_auth().map(|a| docker::RegistryAuth {
        username: a.username,
        password: a.password,
        identity_token: a.identity_token,
        server: a.server,
    });
    let (reads, writes) = (remote.mode().reads(), remote.mode().writes());
    let remote = remote.clone();
    images::ImageRemote::new(move |key| remote.image_reference(key), auth, reads, writes, timeout)
}

impl StepImages {
    /// Start building every image under `images:` the planned steps use, each on its own task;
    /// build output goes to `events` as log lines of `image <name>/<stage>`. With `remote` (see
    /// [`image_remote`]), an image is pulled from the remote cache instead of built when it has
    /// it, and a built one is pushed there in the background.
    pub fn start(
        docker: &DockerExecutor,
        workflow: &Arc<dsl::Workflow>,
        prepared: &Prepared,
        run_id: &str,
        events: &EventSink,
        cancel: &CancellationToken,
        remote: Option<images::ImageRemote>,
    ) -> StepImages {
        use futures_util::FutureExt;
        let mut builds = HashMap::new();
        for name in &prepared.built {
            let (client, workflow, run_id) = (docker.daemon().clone(), workflow.clone(), run_id.to_string());
            let (events, cancel, name_owned, remote) = (events.clone(), cancel.clone(), name.clone(), remote.clone());
            let task = tokio::spawn(async move {
                let Some(def) = workflow.images.get(&name_owned) else {
                    return ImageOutcome::Failed(StepFailure::ImageFailed(format!("image `{name_owned}` is not defined under `images:`")));
                };
                let builder = images::Builder::new(client.clone()).with_remote(remote);
                let owner = crate::docker::owner::owner_labels();
                let ctx = images::BuildContext {
                    workflow: &workflow.name,
                    dir: &workflow.dir,
                    run_id: &run_id,
                    no_cache: false,
                    container_labels: &owner,
                };
                let log = |image: &str, stage: &str, line: &str| {
                    events.emit(Event::Log {
                        step: format!("image {image}/{stage}"),
                        stream: crate::events::Stream::Stdout,
                        line: line.to_string(),
                    });
                };
                match builder.build(&ctx, &name_owned, def, &log, &cancel).await {
                    Ok(image) => ImageOutcome::Built(image.id, image.key.digest(), Arc::new(bases(&client, &workflow, def).await)),
                    Err(e) => ImageOutcome::Failed(e.into()),
                }
            });
            let build = async move {
                task.await.unwrap_or_else(|e| ImageOutcome::Failed(StepFailure::ImageFailed(format!("the image build stopped: {e}"))))
            }
            .boxed()
            .shared();
            builds.insert(name.clone(), build);
        }
        let references = prepared
            .images
            .iter()
            .filter_map(|(step, reference)| {
                let (id, identity) = (prepared.image_ids.get(step)?.clone(), prepared.image_identities.get(step)?.clone());
                Some((step.clone(), (reference.clone(), id, identity)))
            })
            .collect();
        StepImages { references, builds, remote }
    }

    /// The image `step` runs in, waiting for its build if it is one of `images:`.
    pub async fn resolve(&self, step: &dsl::Step) -> Result<StepImage, StepFailure> {
        match &step.image {
            dsl::ImageRef::Built(name) => match self.builds.get(name) {
                // Containers are created from the ID: what ran is exactly what the key names.
                Some(build) => match build.clone().await {
                    ImageOutcome::Built(id, key, bases) => Ok(StepImage {
                        run: id.to_string(),
                        id,
                        identity: cache::ImageIdentity::Built { key },
                        reference: format!("images.{name}"),
                        bases: bases.to_vec(),
                    }),
                    ImageOutcome::Failed(f) => Err(f),
                },
                None => Err(StepFailure::ImageFailed(format!("image `{name}` was not built"))),
            },
            dsl::ImageRef::Reference(reference) => {
                let Some((run, id, identity)) = self.references.get(&step.name).cloned() else {
                    return Err(StepFailure::Environment(format!("the image of step `{}` was not resolved to an ID", step.name)));
                };
                Ok(StepImage { run, id, identity, reference: reference.clone(), bases: Vec::new() })
            }
        }
    }

    /// Wait for every build (stopped by the cancel token given to [`StepImages::start`]), so
    /// that their containers are gone.
    /// Also waits for the pushes of built images to the remote cache.
    pub async fn wait(&self) {
        for build in self.builds.values() {
            let _ = build.clone().await;
        }
        if let Some(remote) = &self.remote {
            remote.finish().await;
        }
    }

    /// What the remote cache did for images (pulls, pushes, warnings), if there is one.
    pub fn remote_report(&self) -> Option<images::ImageRemoteReport> {
        self.remote.as_ref().map(images::ImageRemote::report)
    }
}

/// For a dry run: the identity (its key) of each image under `images:` the planned steps use,
/// built or not: the steps using it are keyed by it either way. Builds nothing, creates no
/// container.
pub async fn lookup(
    docker: &DockerExecutor,
    workflow: &dsl::Workflow,
    prepared: &Prepared,
) -> Result<BTreeMap<String, Option<cache::ImageIdentity>>, StartError> {
    let builder = images::Builder::new(docker.daemon().clone());
    let owner = crate::docker::owner::owner_labels();
    let ctx = images::BuildContext { workflow: &workflow.name, dir: &workflow.dir, run_id: "", no_cache: false, container_labels: &owner };
    let mut found = BTreeMap::new();
    for name in &prepared.built {
        let Some(def) = workflow.images.get(name) else {
            return Err(StartError::ImageFailed(format!("image `{name}` is not defined under `images:`")));
        };
        let key = builder.image_key(&ctx, name, def).await.map_err(|e| match StepFailure::from(e) {
            StepFailure::Environment(m) => StartError::Environment(EnvironmentError(m)),
            other => StartError::ImageFailed(other.to_string()),
        })?;
        found.insert(name.clone(), Some(cache::ImageIdentity::Built { key: key.digest() }));
    }
    Ok(found)
}

/// The images an image under `images:` was built from, with their IDs as the daemon has them
/// now, for the run record and provenance: each stage's `from` that is no stage of the image,
/// or the images its Dockerfile reads ([`dsl::dockerfile_images`]). One that cannot be looked up
/// (a Dockerfile that cannot be read again, a tag removed meanwhile) is left out.
async fn bases(daemon: &docker::Daemon, workflow: &dsl::Workflow, def: &dsl::ImageDef) -> Vec<(String, ImageId)> {
    let references: Vec<String> = match def {
        dsl::ImageDef::Stages(stages) => {
            let mut refs: Vec<String> = Vec::new();
            for stage in stages {
                if !stages.iter().any(|s| s.name == stage.from) && !refs.contains(&stage.from) {
                    refs.push(stage.from.clone());
                }
            }
            refs
        }
        dsl::ImageDef::Dockerfile { dockerfile, .. } => {
            let path = workflow.dir.join(dockerfile);
            match dsl::bounds::read_regular(&path, dsl::bounds::MAX_FILE_BYTES, true) {
                Ok(text) => dsl::dockerfile_images(&text),
                Err(_) => Vec::new(),
            }
        }
    };
    let mut out = Vec::new();
    for reference in references {
        if let Ok(id) = daemon.image_id(&reference).await {
            out.push((reference, id));
        }
    }
    out
}

#[cfg(test)]
mod tests;
