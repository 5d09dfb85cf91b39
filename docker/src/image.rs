//! The image operations of image builds: inspect, pull, import, list, tag, remove, Dockerfile
//! builds through the daemon's builder, and build containers ([`BuildContainer`]) to upload
//! files into, copy files out of, run an instruction in (with the same line splitter and
//! termination ladder as a step), and commit.
//!
//! Build containers are labelled by the caller (run and owner labels) and registered with the
//! cleanup guard: removed by [`BuildContainer::remove`] or, if dropped before, by a spawned
//! removal; listed in [`crate::live`] meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptionsBuilder, CommitContainerOptions, CreateContainerOptions, CreateImageOptionsBuilder,
    DownloadFromContainerOptions, ListImagesOptions, RemoveImageOptionsBuilder, TagImageOptions, UploadToContainerOptions,
};
use futures_util::{Stream as FutStream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::{call, is_not_found, ordinary, DaemonError};
use crate::guard::Resources;
use crate::lines::{LineSplitter, Stream};
use crate::{Daemon, ImageId};

/// The parts of an image's (or a commit's) configuration that builds read and write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Option<Vec<String>>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User (`uid[:gid]` or a name).
    pub user: Option<String>,
    /// Default arguments.
    pub cmd: Option<Vec<String>>,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Labels.
    pub labels: Option<HashMap<String, String>>,
}

/// One image as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDetails {
    /// Its ID.
    pub id: ImageId,
    /// Its `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// Its `name@sha256:<hex>` repo digests (empty when never pushed or pulled).
    pub repo_digests: Vec<String>,
    /// Its configuration.
    pub config: ImageConfig,
    /// Its `ONBUILD` triggers: instructions a Dockerfile build `FROM` it runs first.
    pub on_build: Vec<String>,
}

/// One image as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// Its ID.
    pub id: ImageId,
    /// Its `repo:tag` names (`<none>:<none>` left out).
    pub repo_tags: Vec<String>,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Size in bytes.
    pub size: u64,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// The limits and hardening of a build container that runs an instruction: never privileged,
/// every capability dropped but `caps_add`, `no-new-privileges`, memory without swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// Docker network mode.
    pub network: String,
    /// Capabilities kept.
    pub caps_add: Vec<String>,
    /// Memory in bytes (swap disabled).
    pub memory: u64,
    /// CPU quota in thousandths of a CPU.
    pub millicpus: u64,
    /// Most processes at once.
    pub pids: u64,
}

impl Hardening {
    fn host_config(&self) -> HostConfig {
        let memory = i64::try_from(self.memory).unwrap_or(i64::MAX);
        HostConfig {
            network_mode: Some(self.network.clone()),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(self.caps_add.clone()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(i64::try_from(self.millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            pids_limit: Some(i64::try_from(self.pids).unwrap_or(i64::MAX)),
            ..Default::default()
        }
    }
}

/// A build container to create: from `image`, with `config` (labels are the caller's), and
/// `hardening` when it runs an instruction (containers only uploaded into, copied from or
/// committed are never started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildContainerSpec {
    /// Image reference or ID.
    pub image: String,
    /// Configuration; `labels` are put on the container.
    pub config: ImageConfig,
    /// Limits for a container that runs.
    pub hardening: Option<Hardening>,
}

/// How an instruction's container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildRunEnd {
    /// It exited by itself.
    Exited {
        /// Its exit code.
        code: i64,
        /// Killed by the kernel for passing its memory limit.
        oom: bool,
    },
    /// The timeout passed; it was stopped (stop signal, grace, SIGKILL).
    TimedOut,
    /// Cancelled; the caller removes it.
    Cancelled,
}

/// A request to the daemon's builder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerfileBuild {
    /// The Dockerfile's name in the context tar.
    pub dockerfile: String,
    /// The tag of the result.
    pub tag: String,
    /// Labels of the result.
    pub labels: HashMap<String, String>,
    /// Ignore the builder's cache.
    pub no_cache: bool,
    /// Network mode of the build.
    pub network: String,
    /// Memory in bytes (swap disabled).
    pub memory: u64,
    /// CPU quota in thousandths of a CPU.
    pub millicpus: u64,
    /// Build arguments (`--build-arg`).
    pub build_args: HashMap<String, String>,
    /// The stage to build (`--target`); the last one when empty.
    pub target: String,
}

/// One message of the daemon's builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildMessage {
    /// Output text (may hold several lines).
    Output(String),
    /// The build failed, in the builder's words.
    Failed(String),
}

/// Why copying files out of a build container failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No such file or folder in the container.
    #[error("no such file or folder")]
    NotFound,
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

fn to_config(c: bollard::models::ImageConfig) -> ImageConfig {
    ImageConfig { env: c.env, working_dir: c.working_dir, user: c.user, cmd: c.cmd, entrypoint: c.entrypoint, labels: c.labels }
}

impl Daemon {
    /// `reference` inspected, or `None` when the daemon has no such image.
    pub async fn inspect_image(&self, reference: &str) -> Result<Option<ImageDetails>, DaemonError> {
        let image = match call(&format!("inspect image `{reference}`"), ordinary(), self.docker.inspect_image(reference)).await {
            Ok(image) => image,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = image.id.as_deref().and_then(|id| ImageId::parse(id).ok());
        let Some(id) = id else { return Err(DaemonError::NoImageId { reference: reference.to_string() }) };
        let on_build = image.config.as_ref().and_then(|c| c.on_build.clone()).unwrap_or_default();
        let config = image.config.map(to_config).unwrap_or_default();
        Ok(Some(ImageDetails {
            id,
            repo_tags: image.repo_tags.unwrap_or_default(),
            repo_digests: image.repo_digests.unwrap_or_default(),
            config,
            on_build,
        }))
    }

    /// Pull `from_image` (a repository, or a whole `repo@digest` reference) at `tag`, handing
    /// each progress line to `progress`. Not under a deadline: a pull takes what it takes.
    pub async fn pull(&self, from_image: &str, tag: Option<&str>, progress: &mut (dyn FnMut(String) + Send)) -> Result<(), DaemonError> {
        let mut options = CreateImageOptionsBuilder::default().from_image(from_image);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let mut stream = self.docker.create_image(Some(options.build()), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|source| DaemonError::Failed { action: format!("pull `{from_image}`"), source })?;
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
                progress(line);
            }
        }
        Ok(())
    }

    /// Import the root filesystem `tar` as image `repo:tag`.
    pub async fn import(&self, tar: Vec<u8>, repo: &str, tag: &str) -> Result<(), DaemonError> {
        let options = CreateImageOptionsBuilder::default().from_src("-").repo(repo).tag(tag).build();
        let mut stream = self.docker.create_image(Some(options), Some(bollard::body_full(tar.into())), None);
        while let Some(item) = stream.next().await {
            item.map_err(|source| DaemonError::Failed { action: format!("import `{repo}:{tag}`"), source })?;
        }
        Ok(())
    }

    /// Images carrying every label filter in `labels` (`key=value` or `key`); `all` includes
    /// untagged intermediate images.
    pub async fn list_images(&self, labels: Vec<String>, all: bool) -> Result<Vec<ImageSummary>, DaemonError> {
        let opts = ListImagesOptions { all, filters: Some(HashMap::from([("label".to_string(), labels)])), ..Default::default() };
        let found = call("list images", ordinary(), self.docker.list_images(Some(opts))).await?;
        Ok(found
            .into_iter()
            .filter_map(|i| {
                Some(ImageSummary {
                    id: ImageId::parse(&i.id).ok()?,
                    repo_tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
                    labels: i.labels,
                    size: u64::try_from(i.size).unwrap_or(0),
                    created: i.created,
                })
            })
            .collect())
    }

    /// Tag image `id` as `repo:tag`.
    pub async fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<(), DaemonError> {
        let opts = TagImageOptions { repo: Some(repo.to_string()), tag: Some(tag.to_string()) };
        call(&format!("tag image `{id}` as `{repo}:{tag}`"), ordinary(), self.docker.tag_image(id, Some(opts))).await
    }

    /// Remove the image (or tag) `name`, without force; returns the IDs of the images deleted.
    /// A 404 or 409 (in use, has children) is an error the caller may check with
    /// [`DaemonError::is_not_found`] / [`DaemonError::is_conflict`].
    pub async fn remove_image(&self, name: &str) -> Result<Vec<String>, DaemonError> {
        let options = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
        let items = call(&format!("remove image `{name}`"), ordinary(), self.docker.remove_image(name, Some(options), None)).await?;
        Ok(items.into_iter().filter_map(|i| i.deleted).collect())
    }

    /// Build with the daemon's builder from the context tar streamed by `context`. Dropping the
    /// returned stream closes the request, which stops the classic builder.
    pub fn build_dockerfile(
        &self,
        request: &DockerfileBuild,
        context: impl FutStream<Item = std::io::Result<Vec<u8>>> + Send + Unpin + 'static,
    ) -> impl FutStream<Item = Result<BuildMessage, DaemonError>> + Send + Unpin + '_ {
        let memory = i32::try_from(request.memory).unwrap_or(i32::MAX);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&request.dockerfile)
            .t(&request.tag)
            .labels(&request.labels)
            // Intermediate containers are the daemon's, not labelled by us: remove them even on failure.
            .rm(true)
            .forcerm(true)
            .nocache(request.no_cache)
            .networkmode(&request.network)
            .memory(memory)
            .memswap(memory)
            .cpuperiod(100_000)
            .cpuquota(i32::try_from(request.millicpus.saturating_mul(100)).unwrap_or(i32::MAX))
            .buildargs(&request.build_args)
            .target(&request.target)
            .build();
        let body = context.map(|chunk| chunk.map(Into::into));
        self.docker.build_image(options, None, Some(bollard::body_try_stream(body))).filter_map(|item| {
            std::future::ready(match item {
                Ok(info) => match (info.error_detail, info.stream) {
                    (Some(detail), _) => Some(Ok(BuildMessage::Failed(detail.message.unwrap_or_else(|| "the build failed".into())))),
                    (None, Some(text)) => Some(Ok(BuildMessage::Output(text))),
                    (None, None) => None,
                },
                Err(bollard::errors::Error::DockerStreamError { error }) => Some(Ok(BuildMessage::Failed(error))),
                Err(source) => Some(Err(DaemonError::Failed { action: "build the image".into(), source })),
            })
        })
    }

    /// Create a build container (never started until [`BuildContainer::run`]).
    pub async fn create_build_container(&self, spec: BuildContainerSpec) -> Result<BuildContainer, DaemonError> {
        let BuildContainerSpec { image, config, hardening } = spec;
        let runs = hardening.is_some();
        let body = ContainerCreateBody {
            image: Some(image),
            env: config.env,
            working_dir: config.working_dir,
            user: config.user,
            entrypoint: config.entrypoint,
            cmd: config.cmd,
            labels: config.labels,
            attach_stdout: runs.then_some(true),
            attach_stderr: runs.then_some(true),
            host_config: hardening.as_ref().map(Hardening::host_config),
            ..Default::default()
        };
        let mut guard = Resources::new(self.docker.clone());
        // Like a step's container: a create still in flight when the caller is dropped (the
        // build cancelled) removes what it created.
        let created = crate::guard::create_container(&self.docker, "create a build container", CreateContainerOptions::default(), body)
            .await
            .map_err(|e| DaemonError::Failed {
                action: "create a build container".into(),
                source: bollard::errors::Error::IOError { err: std::io::Error::other(e.to_string()) },
            })??;
        guard.container(created.id.clone());
        Ok(BuildContainer { daemon: self.clone(), id: created.id, guard })
    }
}

/// A build container, removed by [`BuildContainer::remove`] or, when dropped, by the guard.
pub struct BuildContainer {
    daemon: Daemon,
    id: String,
    guard: Resources,
}

impl BuildContainer {
    /// The container's ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Extract `tar` at `/` of the container.
    pub async fn upload(&self, tar: Vec<u8>) -> Result<(), DaemonError> {
        let opts = UploadToContainerOptions { path: "/".into(), ..Default::default() };
        let docker = &self.daemon.docker;
        call(
            "copy files into a build container",
            ordinary(),
            docker.upload_to_container(&self.id, Some(opts), bollard::body_full(tar.into())),
        )
        .await
    }

    /// The tar of `path` in the container.
    pub async fn download(&self, path: &str) -> Result<Vec<u8>, DownloadError> {
        let opts = DownloadFromContainerOptions { path: path.to_string() };
        let mut stream = self.daemon.docker.download_from_container(&self.id, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) if is_not_found(&e) => return Err(DownloadError::NotFound),
                Err(source) => return Err(DaemonError::Failed { action: "copy files out of a build container".into(), source }.into()),
            }
        }
        Ok(out)
    }

    /// Start it and follow its output (lines to `log`) until it exits, `timeout` passes (then the
    /// termination ladder stops it) or `cancel` fires.
    pub async fn run(
        &self,
        timeout: Duration,
        cancel: &CancellationToken,
        log: &mut (dyn FnMut(Stream, String) + Send),
    ) -> Result<BuildRunEnd, DaemonError> {
        let docker = &self.daemon.docker;
        let opts = AttachContainerOptions { stream: true, stdout: true, stderr: true, ..Default::default() };
        let mut output = call("attach to a build container", ordinary(), docker.attach_container(&self.id, Some(opts))).await?.output;
        call("start a build container", ordinary(), docker.start_container(&self.id, None)).await?;
        let mut lines = LineSplitter::new(&[], log);
        let follow = async {
            while let Some(item) = output.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => lines.push(Stream::Stderr, &message),
                    Ok(out) => lines.push(Stream::Stdout, &out.into_bytes()),
                    Err(source) => return Err(DaemonError::Failed { action: "read a build container's output".into(), source }),
                }
            }
            Ok(())
        };
        // The timeout runs from the start, like a step's.
        let ended = tokio::select! {
            r = follow => r.map(|()| None),
            _ = tokio::time::sleep(timeout) => Ok(Some(BuildRunEnd::TimedOut)),
            _ = cancel.cancelled() => Ok(Some(BuildRunEnd::Cancelled)),
        };
        lines.flush();
        match ended? {
            Some(BuildRunEnd::TimedOut) => {
                if let Err(e) = self.daemon.stop(&self.id).await {
                    tracing::warn!("cannot stop timed-out build container {}: {e}", self.id);
                }
                return Ok(BuildRunEnd::TimedOut);
            }
            Some(end) => return Ok(end),
            None => {}
        }
        // The output stream ends when the container stops; wait makes the exit code final.
        let mut wait = docker.wait_container(&self.id, None);
        let _ = wait.next().await;
        let info = call("inspect a build container", ordinary(), docker.inspect_container(&self.id, None)).await?;
        let state = info.state.unwrap_or_default();
        Ok(BuildRunEnd::Exited { code: state.exit_code.unwrap_or(-1), oom: state.oom_killed == Some(true) })
    }

    /// Commit the container as an image with `config`.
    pub async fn commit(&self, config: ImageConfig) -> Result<ImageId, DaemonError> {
        let config = ContainerConfig {
            env: config.env,
            working_dir: config.working_dir,
            user: config.user,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            labels: config.labels,
            ..Default::default()
        };
        let opts = CommitContainerOptions { container: Some(self.id.clone()), pause: false, ..Default::default() };
        let id = call("commit a build container", ordinary(), self.daemon.docker.commit_container(opts, config)).await?;
        ImageId::parse(&id.id).map_err(|_| DaemonError::NoImageId { reference: self.id.clone() })
    }

    /// Remove it (force) and wait for the daemon, under a deadline: what is not removed in time
    /// carries the run and owner labels, so the next run or `engine clean` removes it.
    pub async fn remove(self) {
        self.guard.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_containers_are_hardened() {
        let h = Hardening { network: "none".into(), caps_add: vec!["CHOWN".into()], memory: 64 << 20, millicpus: 500, pids: 32 };
        let host = h.host_config();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, Some(vec!["CHOWN".to_string()]));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(host.privileged, Some(false));
        assert_eq!((host.memory, host.memory_swap), (Some(64 << 20), Some(64 << 20)));
        assert_eq!((host.pids_limit, host.nano_cpus), (Some(32), Some(500_000_000)));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
    }
}
