//! The shared cache in an OCI registry (`--remote-cache oci://HOST[:PORT]/REPO`): the one crate
//! that talks to registries. A step's cache entry is an OCI artifact (see `docs/remote-cache.md`):
//! one image manifest per action key, tagged `action-<key hex>`, whose config is the entry's
//! [`cache::Manifest`] and whose layers are the blobs it names (file contents and the log), each
//! content-addressed so identical files are uploaded once across steps and runs. Engine-built
//! images are pushed and pulled by the daemon under `image-<stage key hex>`.
//!
//! Faults never fail a caller's run: every operation returns a [`RemoteError`], and the caller
//! decides (the engine warns once and carries on locally). Every downloaded blob is checked
//! against its digest before it enters the store; a manifest is pushed only after every blob
//! it names, so an interrupted upload leaves nothing a later run would trust.

#![warn(missing_docs)]

mod auth;
mod client;
pub mod format;
mod transfer;
mod url;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cache::{ActionKey, Digest, Manifest, Store};

/// `oci://HOST[:PORT]/REPO`, parsed and checked (no credentials, no query, a valid repository).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RemoteUrl {
    host: String,
    port: Option<u16>,
    repo: String,
}

impl RemoteUrl {
    /// `HOST[:PORT]`, as Docker names a registry (the key of `config.json`'s `auths`).
    pub fn registry(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The repository path under the registry (`team/cache`).
    pub fn repository(&self) -> &str {
        &self.repo
    }

    /// Whether the host is a loopback address (127.0.0.0/8, `::1`, `localhost`): plain HTTP is
    /// allowed there, as Docker allows it.
    pub fn is_loopback(&self) -> bool {
        url::is_loopback(&self.host)
    }
}

/// Why a `--remote-cache` value is not an `oci://` URL we accept.
#[derive(Debug, thiserror::Error)]
#[error("invalid remote cache `{text}`: {why} (expected oci://HOST[:PORT]/REPO)")]
pub struct BadRemoteUrl {
    /// The value as given, with any `user:password@` part removed.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for RemoteUrl {
    type Err = BadRemoteUrl;
    fn from_str(text: &str) -> Result<RemoteUrl, BadRemoteUrl> {
        url::parse(text)
    }
}

impl fmt::Display for RemoteUrl {
    /// `oci://HOST[:PORT]/REPO` (never a credential: the URL cannot hold one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry(), self.repo)
    }
}

/// `--remote-cache-mode`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Look entries up, never upload (what an untrusted pull-request job gets).
    Read,
    /// Upload, never look up.
    Write,
    /// Both (the default).
    #[default]
    ReadWrite,
}

impl Mode {
    /// Lookups allowed.
    pub fn reads(self) -> bool {
        matches!(self, Mode::Read | Mode::ReadWrite)
    }
    /// Uploads allowed.
    pub fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::ReadWrite)
    }
    /// `read`, `write`, `readwrite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::ReadWrite => "readwrite",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "read" => Ok(Mode::Read),
            "write" => Ok(Mode::Write),
            "readwrite" => Ok(Mode::ReadWrite),
            other => Err(format!("invalid remote cache mode `{other}` (expected read, write or readwrite)")),
        }
    }
}

/// How to reach the registry.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Where.
    pub url: RemoteUrl,
    /// What the run may do there.
    pub mode: Mode,
    /// `--remote-cache-insecure`: plain HTTP to a host that is not loopback.
    pub insecure: bool,
    /// Docker's config folder (`$DOCKER_CONFIG`, else `~/.docker`): `config.json` holds the
    /// credentials (`auths`, `credsStore`, `credHelpers`).
    pub docker_config: Option<std::path::PathBuf>,
    /// Bound on each request (connect and whole exchange of one small request; blob transfers
    /// are bounded by this per MiB on top).
    pub timeout: std::time::Duration,
}

/// A registry error. Its `Display` never contains a credential.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The registry could not be reached, timed out, or answered 5xx / 429.
    #[error("registry {registry} is unavailable: {message}")]
    Unavailable {
        /// `HOST[:PORT]`.
        registry: String,
        /// What happened.
        message: String,
    },
    /// The registry refused our credentials (401/403 after authenticating).
    #[error("registry {registry} refused access: {message}")]
    Denied {
        /// `HOST[:PORT]`.
        registry: String,
        /// What happened.
        message: String,
    },
    /// The registry answered something that is not a valid entry of ours (bad JSON, wrong key,
    /// too large, a blob not matching its digest).
    #[error("registry {registry}: {message}")]
    Invalid {
        /// `HOST[:PORT]`.
        registry: String,
        /// What was wrong.
        message: String,
    },
    /// The local store could not be read or written.
    #[error(transparent)]
    Store(#[from] cache::store::StoreError),
}

/// Bytes and blobs moved by one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    /// Blobs (file contents, logs, configs) sent or received as requests of their own (content
    /// embedded in a fetched manifest is not counted here).
    pub blobs: u64,
    /// Bytes moved: those blobs', and on a fetch the manifest's (with its embedded content).
    pub bytes: u64,
    /// Blobs not sent because the registry had them already (one HEAD each), or not received
    /// because the local store had them.
    pub skipped: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Fetched {
    /// The entry was downloaded (every blob checked against its digest) into the local store;
    /// the manifest is the one now stored locally under the key.
    Hit {
        /// The entry, as `Store::get` now returns it.
        manifest: Box<Manifest>,
        /// What was downloaded.
        transfer: Transfer,
    },
    /// No entry for this key.
    Miss,
    /// An entry exists but is damaged (a blob missing or not matching its digest, a config that
    /// is not our manifest): nothing was stored locally; the step must run.
    Damaged(String),
}

/// Credentials for the daemon's own push and pull of an image (`X-Registry-Auth`), as read from
/// Docker's `config.json`. `Debug` shows no secret.
#[derive(Clone)]
pub struct DaemonAuth {
    /// User name (empty with an identity token).
    pub username: String,
    /// Password, or empty.
    pub password: String,
    /// An identity (refresh) token, or empty.
    pub identity_token: String,
    /// `HOST[:PORT]`.
    pub server: String,
}

impl fmt::Debug for DaemonAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonAuth").field("server", &self.server).field("username", &self.username).finish_non_exhaustive()
    }
}

/// A connection to one remote cache. Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

struct Inner {
    config: RemoteConfig,
    credentials: Option<auth::Credentials>,
    client: client::Client,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.inner.config.url.to_string()).field("mode", &self.inner.config.mode).finish()
    }
}

impl Remote {
    /// A client for `config` (no request is made yet). Fails when plain HTTP would be needed
    /// to a host that is not loopback without `insecure`, or `config.json` cannot be read.
    /// Reads `config.json` (and runs a credential helper it names) now, so call it once per run.
    pub fn new(config: RemoteConfig) -> Result<Remote, RemoteError> {
        let registry = config.url.registry();
        let dir = auth::config_dir(config.docker_config.as_deref());
        let credentials = auth::lookup(dir.as_deref(), &registry)
            .map_err(|message| RemoteError::Invalid { registry: registry.clone(), message: format!("credentials: {message}") })?;
        let client = client::Client::new(&config, credentials.as_ref())?;
        Ok(Remote { inner: Arc::new(Inner { config, credentials, client }) })
    }

    /// Whether requests go over plain HTTP (a loopback registry, or `insecure`); HTTPS otherwise.
    pub fn plain_http(&self) -> bool {
        self.inner.config.url.is_loopback() || self.inner.config.insecure
    }

    /// Whether credentials were found for the registry (never which).
    pub fn has_credentials(&self) -> bool {
        self.inner.credentials.is_some()
    }

    /// The URL.
    pub fn url(&self) -> &RemoteUrl {
        &self.inner.config.url
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.inner.config.mode
    }

    /// Whether an entry for `key` exists (one HEAD of its tag). For `engine plan`.
    pub async fn has_action(&self, key: &ActionKey) -> Result<bool, RemoteError> {
        transfer::has(&self.inner.client, key).await
    }

    /// Download the entry of `key` into `store`: its manifest, its config (our [`Manifest`],
    /// whose key must be `key`), then every blob the store lacks, each streamed to a temp file in
    /// the store, checked against its digest and only then moved into place; the local manifest
    /// is written last.
    pub async fn fetch_action(&self, store: &Arc<Store>, key: &ActionKey) -> Result<Fetched, RemoteError> {
        transfer::fetch(&self.inner.client, store, key).await
    }

    /// Upload the entry `manifest` of `store`: each distinct blob it names that the registry
    /// lacks (HEAD first), streamed from the store; then the config; then the manifest under its
    /// tag, last. The entry's input manifest is not uploaded (inputs stay on the machine).
    /// In read-only mode ([`Mode::Read`]) nothing is sent: `Denied`.
    pub async fn push_action(&self, store: &Arc<Store>, manifest: &Manifest) -> Result<Transfer, RemoteError> {
        if !self.mode().writes() {
            let message = "the remote cache is read-only (--remote-cache-mode read)".to_string();
            return Err(RemoteError::Denied { registry: self.inner.config.url.registry(), message });
        }
        transfer::push(&self.inner.client, store, manifest).await
    }

    /// Every action key with an entry in the repository (the tags list, paged), for
    /// `engine cache pull` with no keys.
    pub async fn list_actions(&self) -> Result<Vec<ActionKey>, RemoteError> {
        transfer::list(&self.inner.client).await
    }

    /// The reference the daemon pushes and pulls the engine-built image of `key` under:
    /// `HOST[:PORT]/REPO:image-<key hex>`.
    pub fn image_reference(&self, key: &Digest) -> String {
        format!("{}/{}:image-{}", self.inner.config.url.registry(), self.inner.config.url.repo, key.hex())
    }

    /// Credentials for the daemon's push and pull (from `config.json`), if there are any.
    pub fn daemon_auth(&self) -> Option<DaemonAuth> {
        let server = self.inner.config.url.registry();
        self.inner.credentials.as_ref().map(|c| match c {
            auth::Credentials::Basic { username, password } => {
                DaemonAuth { username: username.clone(), password: password.clone(), identity_token: String::new(), server }
            }
            auth::Credentials::IdentityToken { username, token } => {
                DaemonAuth { username: username.clone(), password: String::new(), identity_token: token.clone(), server }
            }
        })
    }
}

/// The tag of an action key's entry: `action-<64 hex>`.
pub fn action_tag(key: &ActionKey) -> String {
    format!("action-{}", key.digest().hex())
}

#[cfg(feature = "testing")]
pub mod testing;
