//! The engine's only door to the Docker API (the only crate that depends on bollard).
//!
//! - [`Daemon`]: the connection (DOCKER_HOST, version negotiation, a bounded handshake), and the
//!   deadline every call runs under (`ENGINE_DOCKER_TIMEOUT`, see [`error`]).
//! - [`error`]: one error enum for daemon calls ([`DaemonError`]) whose `Display` is the sentence
//!   users see; the settings read from the environment.
//! - [`labels`]: the labels and names put on everything the engine creates; [`owner`]: which
//!   engine process created it.
//! - [`guard`]: removal of what a run or build created, whatever happens; what is still live for
//!   an interrupted engine, and the second Ctrl-C ([`kill_all_now`]).
//! - [`lines`]: container output as masked lines of at most 64 KiB.
//! - [`cleanup`]: leftovers of engines that died.
//! - [`run`]: one container run to completion from a [`run::ContainerSpec`].
//! - [`body`]: request bodies written on a blocking thread and streamed in bounded chunks (the
//!   archive transfer's upload, a Dockerfile build's context).
//! - [`image`]: the image operations of image builds (inspect, pull, import, build containers,
//!   commit, tag, list, remove, Dockerfile builds).
//! - [`registry`]: what a reference resolves to (ID and repo digests), and the daemon's push and
//!   pull of an image with credentials.
//!
//! Knows nothing of workflows, steps, records or the cache's keys: callers translate their own
//! types into this crate's specs, and its results back.

#![warn(missing_docs)]

pub mod body;
pub mod cleanup;
pub mod error;
pub mod guard;
mod ids;
pub mod image;
pub mod labels;
pub mod lines;
pub mod owner;
pub mod registry;
pub mod run;

pub use error::{
    DaemonError, SettingError, CALL_TIMEOUT_VAR, CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT, DEFAULT_DOCKER_HOST, DEFAULT_STOP_GRACE,
    STOP_GRACE_VAR,
};
pub use guard::{kill_all_now, live, remove_temp_now, Live};
pub use ids::{BadImageId, ContainerId, ImageId};
pub use registry::{RegistryAuth, ResolvedImage, TransferError};

use std::time::Duration;

use error::{call, ordinary, short_reason};

/// How the workspace reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Upload/download tar archives through the API: works on every daemon, remote and proxied.
    Archive,
    /// Bind-mount the prepared host folder at /workspace: fast path for a local daemon.
    Bind,
}

/// Why connecting to the daemon failed. `Display` is the sentence users see.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting read from the environment is broken.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// `ENGINE_TRANSFER` is neither `archive` nor `bind`.
    #[error("ENGINE_TRANSFER must be `archive` or `bind`, not `{0}`")]
    Transfer(String),
    /// The daemon could not be reached or refused the handshake.
    #[error(
        "cannot reach the Docker daemon at {host}: {reason}. Start it (e.g. `sudo systemctl start docker`) \
         or point DOCKER_HOST at a running daemon"
    )]
    Unreachable {
        /// The daemon's address.
        host: String,
        /// The innermost cause.
        reason: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The daemon accepted the connection but did not answer the handshake in time.
    #[error(
        "the Docker daemon at {host} did not answer within {}; check that it is running and responsive, \
         or point DOCKER_HOST at a daemon that is",
        error::format_duration(CONNECT_TIMEOUT)
    )]
    Silent {
        /// The daemon's address.
        host: String,
    },
}

/// Why an image reference could not be resolved to its ID.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The image is not on the Docker host; the sentence says how to get it.
    #[error("{}", missing_image_sentence(reference))]
    Missing {
        /// The reference asked for.
        reference: String,
    },
    /// The daemon's answer had no (or no valid) ID.
    #[error("the Docker daemon reported no valid ID for image `{reference}`")]
    NoId {
        /// The reference asked for.
        reference: String,
        /// What the daemon said instead.
        #[source]
        source: Option<BadImageId>,
    },
    /// The daemon failed or did not answer.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The CPUs and memory of the daemon's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    /// Number of CPUs (at least 1).
    pub cpus: u64,
    /// Memory in bytes; `u64::MAX` when the daemon does not say.
    pub memory: u64,
}

/// A connection to one Docker daemon, and how workspaces reach its containers.
#[derive(Clone)]
pub struct Daemon {
    pub(crate) docker: bollard::Docker,
    transfer: Transfer,
    /// Removals of finished steps' containers still under way (see
    /// [`Daemon::run_releasing_later`]); shared by every clone.
    releases: Releases,
}

/// Removals of finished steps' containers under way, and the turn of [`Daemon::settle`]'s
/// callers.
#[derive(Clone, Default)]
struct Releases {
    tracker: tokio_util::task::TaskTracker,
    settling: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("host", &error::daemon()).field("transfer", &self.transfer).finish()
    }
}

impl Daemon {
    /// Connect to the daemon named by DOCKER_HOST (or the default socket), negotiate the API
    /// version (daemons as old as API 1.41 must work), and pick the transfer automatically
    /// (`ENGINE_TRANSFER=archive|bind` overrides).
    pub async fn connect() -> Result<Daemon, ConnectError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_DOCKER_HOST.to_string());
        let mut daemon = Self::connect_to(&host).await?;
        match std::env::var("ENGINE_TRANSFER").as_deref() {
            Ok("archive") => daemon.transfer = Transfer::Archive,
            Ok("bind") => daemon.transfer = Transfer::Bind,
            Ok(other) => return Err(ConnectError::Transfer(other.to_string())),
            Err(_) => {}
        }
        Ok(daemon)
    }

    /// Connect to the daemon at `host` (`unix:///path`, `tcp://host:port`, ...), ignoring
    /// DOCKER_HOST and ENGINE_TRANSFER. Bind transfer for a unix socket, archive otherwise.
    pub async fn connect_to(host: &str) -> Result<Daemon, ConnectError> {
        let unreachable =
            |source: bollard::errors::Error| ConnectError::Unreachable { host: host.to_string(), reason: short_reason(&source), source };
        error::set_daemon(host);
        let call_timeout = error::call_timeout()?;
        let grace = error::stop_grace()?;
        let docker = bollard::Docker::connect_with_host(host).map_err(unreachable)?;
        // bollard's own deadline (on response headers) stays out of the way of ours: a stop waits
        // for the grace period before the daemon answers.
        let docker = docker.with_timeout((call_timeout + grace + Duration::from_secs(5)).max(Duration::from_secs(120)));
        // A socket that accepts and never answers must not hang every command: version
        // negotiation and ping together get CONNECT_TIMEOUT.
        let handshake = async {
            let docker = docker.negotiate_version().await.map_err(unreachable)?;
            docker.ping().await.map_err(unreachable)?;
            Ok::<_, ConnectError>(docker)
        };
        let docker =
            tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|_| ConnectError::Silent { host: host.to_string() })??;
        guard::remember_client(&docker);
        let transfer = if host.starts_with("unix://") { Transfer::Bind } else { Transfer::Archive };
        Ok(Daemon { docker, transfer, releases: Releases::default() })
    }

    /// The same daemon with another transfer.
    pub fn with_transfer(mut self, transfer: Transfer) -> Daemon {
        self.transfer = transfer;
        self
    }

    /// How workspaces reach containers.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// CPUs and memory of the daemon's host.
    pub async fn host_info(&self) -> Result<HostInfo, DaemonError> {
        let info = call("describe its host", ordinary(), self.docker.info()).await?;
        let cpus = info.ncpu.unwrap_or(1).max(1) as u64;
        // A daemon that does not say how much memory it has gets no memory budget rather than
        // a zero one (which would make every step "too large").
        let memory = info.mem_total.filter(|m| *m > 0).map_or(u64::MAX, |m| m as u64);
        Ok(HostInfo { cpus, memory })
    }

    /// The image ID `reference` resolves to now; a missing image is [`LookupError::Missing`],
    /// whose sentence says how to get it.
    pub async fn image_id(&self, reference: &str) -> Result<ImageId, LookupError> {
        match call(&format!("look up image `{reference}`"), ordinary(), self.docker.inspect_image(reference)).await {
            Ok(image) => {
                let id = image.id.ok_or_else(|| LookupError::NoId { reference: reference.to_string(), source: None })?;
                ImageId::parse(&id).map_err(|e| LookupError::NoId { reference: reference.to_string(), source: Some(e) })
            }
            Err(e) if e.is_not_found() => Err(LookupError::Missing { reference: reference.to_string() }),
            Err(e) => Err(e.into()),
        }
    }

    /// The daemon's version and API version, for run records ("unknown" if it does not say).
    pub async fn version(&self) -> (String, String) {
        match call("tell its version", ordinary(), self.docker.version()).await {
            Ok(v) => (v.version.unwrap_or_else(|| "unknown".into()), v.api_version.unwrap_or_else(|| "unknown".into())),
            Err(_) => ("unknown".into(), "unknown".into()),
        }
    }
}

/// What to do about a missing image, as a sentence.
fn missing_image_sentence(reference: &str) -> String {
    let offline = if reference == "local/busybox:1" {
        "run `scripts/import-busybox.sh`".to_string()
    } else {
        format!("load it with `docker load -i <file>` or `docker import <rootfs.tar> {reference}`")
    };
    format!("image `{reference}` is not present on the Docker host: offline, {offline}; online, `docker pull {reference}`")
}
