//! The registry connection: `oci-client` for authentication (anonymous, basic, bearer token
//! exchange), blob HEAD, blob upload (streamed) and download (streamed), and manifest upload;
//! `reqwest` directly (same TLS, the token oci-client obtained) for the reads oci-client would
//! buffer without a bound: manifests and tag lists. Every request is bounded in time; every
//! failure is mapped to a [`RemoteError`] that names no credential.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::auth::Credentials;
use crate::{RemoteConfig, RemoteError};

pub(crate) struct Client {
    oci: oci_client::Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    registry: String,
    repo: String,
    /// `http(s)://HOST[:PORT]`.
    root: String,
    /// `<root>/v2/<repo>`.
    base: String,
    pub(crate) timeout: Duration,
    /// The `Authorization` value for direct requests, per operation, once known.
    header_pull: Mutex<Option<Option<HeaderValue>>>,
    header_push: Mutex<Option<Option<HeaderValue>>>,
    /// Whether requests need authentication (found once: anonymous access to a registry that
    /// asks for none costs no token round trip per request).
    needs_auth: tokio::sync::OnceCell<bool>,
    /// Blobs this client saw in the repository (answered a HEAD or uploaded), so a blob many
    /// entries share costs one HEAD per run, not one per entry. Bounded by [`MAX_KNOWN`].
    known: std::sync::Mutex<std::collections::HashSet<cache::Digest>>,
}

/// Bound on [`Client`]'s set of known blobs (past it, blobs are asked for again).
const MAX_KNOWN: usize = 1 << 16;

/// A status and a body read with a bound.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    pub(crate) link: Option<String>,
}

impl Client {
    pub(crate) fn new(config: &RemoteConfig, credentials: Option<&Credentials>) -> Result<Client, RemoteError> {
        let registry = config.url.registry();
        let plain = config.url.is_loopback() || config.insecure;
        let protocol = if plain { ClientProtocol::HttpsExcept(vec![registry.clone()]) } else { ClientProtocol::Https };
        let oci_config = ClientConfig {
            protocol,
            use_monolithic_push: true,
            read_timeout: Some(config.timeout),
            connect_timeout: Some(config.timeout),
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let unavailable = |e: &dyn std::fmt::Display| RemoteError::Unavailable {
            registry: registry.clone(),
            message: format!("cannot set up the HTTP client: {e}"),
        };
        let oci = oci_client::Client::try_from(oci_config).map_err(|e| unavailable(&e))?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| unavailable(&e))?;
        let auth = match credentials {
            None => RegistryAuth::Anonymous,
            Some(Credentials::Basic { username, password }) => RegistryAuth::Basic(username.clone(), password.clone()),
            // An identity token is a password to the token service (as ACR and ECR take it).
            Some(Credentials::IdentityToken { username, token }) => {
                let user = if username.is_empty() { "<token>".to_string() } else { username.clone() };
                RegistryAuth::Basic(user, token.clone())
            }
        };
        let scheme = if plain { "http" } else { "https" };
        let root = format!("{scheme}://{registry}");
        let base = format!("{root}/v2/{}", config.url.repository());
        Ok(Client {
            oci,
            http,
            auth,
            repo: config.url.repository().to_string(),
            registry,
            root,
            base,
            timeout: config.timeout,
            header_pull: Mutex::new(None),
            header_push: Mutex::new(None),
            needs_auth: tokio::sync::OnceCell::new(),
            known: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub(crate) fn tagged(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repo.clone(), tag.to_string())
    }

    pub(crate) fn invalid(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Invalid { registry: self.registry.clone(), message: message.into() }
    }

    pub(crate) fn unavailable(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Unavailable { registry: self.registry.clone(), message: message.into() }
    }

    /// `fut` bounded by `limit`.
    pub(crate) async fn bounded<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(format!("{what} timed out after {:.1}s", limit.as_secs_f64()))),
        }
    }

    /// The oci-client error `e` of `what` as a [`RemoteError`].
    pub(crate) fn map(&self, what: &str, e: OciDistributionError) -> RemoteError {
        let by_status = |code: u16, message: String| -> RemoteError {
            match code {
                401 | 403 => RemoteError::Denied { registry: self.registry.clone(), message },
                429 | 500..=599 => self.unavailable(message),
                _ => self.invalid(message),
            }
        };
        match e {
            OciDistributionError::RequestError(re) => {
                let message = format!("{what}: {}", describe_reqwest(&re));
                match re.status() {
                    Some(s) => by_status(s.as_u16(), message),
                    None if re.is_decode() || re.is_body() => self.invalid(message),
                    None => self.unavailable(message),
                }
            }
            OciDistributionError::ServerError { code, message, .. } => by_status(code, format!("{what}: HTTP {code} {}", cut(&message))),
            OciDistributionError::UnauthorizedError { .. } => by_status(401, format!("{what}: unauthorized")),
            OciDistributionError::AuthenticationFailure(m) => by_status(401, format!("{what}: authentication failed: {}", cut(&m))),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = format!(
                    "{what}: {}",
                    cut(&envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>().join("; "))
                );
                if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    by_status(401, message)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Toomanyrequests)) {
                    by_status(429, message)
                } else {
                    self.invalid(message)
                }
            }
            OciDistributionError::IoError(io) => self.unavailable(format!("{what}: {io}")),
            other => self.invalid(format!("{what}: {}", cut(&other.to_string()))),
        }
    }

    /// Make oci-client use our credentials for the registry (its blob calls take none). With
    /// no credentials, `GET /v2/` first tells whether the registry wants any authentication (an
    /// anonymous token) at all: oci-client would otherwise ask before every request.
    pub(crate) async fn ensure_auth(&self) -> Result<bool, RemoteError> {
        let needs = self
            .needs_auth
            .get_or_try_init(|| async {
                let needs = match self.auth {
                    RegistryAuth::Anonymous => {
                        let url = format!("{}/v2/", self.root);
                        let res = self
                            .bounded(self.timeout, "GET /v2/", async {
                                self.http
                                    .get(&url)
                                    .send()
                                    .await
                                    .map_err(|e| self.unavailable(format!("GET /v2/: {}", describe_reqwest(&e))))
                            })
                            .await?;
                        match res.status().as_u16() {
                            401 => true,
                            429 | 500..=599 => return Err(self.unavailable(format!("GET /v2/: HTTP {}", res.status()))),
                            _ => false,
                        }
                    }
                    _ => true,
                };
                if needs {
                    self.oci.store_auth_if_needed(&self.registry, &self.auth).await;
                }
                Ok(needs)
            })
            .await?;
        Ok(*needs)
    }

    /// Whether the blob `digest` is known to be in the repository.
    pub(crate) fn known_blob(&self, digest: &cache::Digest) -> bool {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).contains(digest)
    }

    /// Note that the blob `digest` is in the repository.
    pub(crate) fn remember_blob(&self, digest: cache::Digest) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_KNOWN {
            known.insert(digest);
        }
    }

    pub(crate) fn oci(&self) -> &oci_client::Client {
        &self.oci
    }

    /// Authenticate for `op` once, before requests run in parallel (oci-client keeps the token
    /// for the repository; without this, each parallel first request would fetch its own).
    pub(crate) async fn warm(&self, op: RegistryOperation) -> Result<(), RemoteError> {
        self.header(op, false).await.map(|_| ())
    }

    /// The `Authorization` header for a direct request of `op` (a bearer token from the token
    /// service, basic credentials, or none), found once and then reused; `refresh` finds it again.
    async fn header(&self, op: RegistryOperation, refresh: bool) -> Result<Option<HeaderValue>, RemoteError> {
        let slot = match op {
            RegistryOperation::Pull => &self.header_pull,
            RegistryOperation::Push => &self.header_push,
        };
        if !self.ensure_auth().await? {
            return Ok(None);
        }
        let mut slot = slot.lock().await;
        if let (Some(h), false) = (slot.as_ref(), refresh) {
            return Ok(h.clone());
        }
        let reference = self.tagged("x");
        let token = self
            .bounded(self.timeout, "authentication", async {
                self.oci.auth(&reference, &self.auth, op).await.map_err(|e| self.map("authentication", e))
            })
            .await?;
        let value = match (token, &self.auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
            }
            _ => None,
        };
        let mut header = value
            .map(|v| HeaderValue::from_str(&v).map_err(|_| self.invalid("the registry's token is not a valid header value")))
            .transpose()?;
        if let Some(h) = header.as_mut() {
            h.set_sensitive(true);
        }
        *slot = Some(header.clone());
        Ok(header)
    }

    /// `GET` (or `HEAD`) of `path` under the repository, the body read up to `max` bytes
    /// (more is `Invalid`). Authenticates when the registry asks to, once.
    pub(crate) async fn get(&self, path: &str, accept: &str, max: u64, head: bool) -> Result<Answer, RemoteError> {
        let url = format!("{}/{path}", self.base);
        let what = if head { "HEAD" } else { "GET" };
        let mut refresh = false;
        loop {
            let header = self.header(RegistryOperation::Pull, refresh).await?;
            let answer = self
                .bounded(self.timeout, what, async {
                    let mut req = if head { self.http.head(&url) } else { self.http.get(&url) };
                    req = req.header(ACCEPT, accept);
                    if let Some(h) = &header {
                        req = req.header(AUTHORIZATION, h.clone());
                    }
                    let res = req.send().await.map_err(|e| self.unavailable(format!("{what} {path}: {}", describe_reqwest(&e))))?;
                    let status = res.status();
                    let link = res.headers().get("link").and_then(|l| l.to_str().ok()).map(str::to_string);
                    if res.content_length().is_some_and(|l| l > max) {
                        return Err(self.invalid(format!("{what} {path}: the answer is larger than {max} bytes")));
                    }
                    let mut body = Vec::new();
                    let mut stream = res.bytes_stream();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(|e| self.unavailable(format!("{what} {path}: {}", describe_reqwest(&e))))?;
                        if body.len() as u64 + chunk.len() as u64 > max {
                            return Err(self.invalid(format!("{what} {path}: the answer is larger than {max} bytes")));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(Answer { status, body, link })
                })
                .await?;
            match answer.status {
                StatusCode::UNAUTHORIZED if !refresh => refresh = true,
                s if s.is_success() || s == StatusCode::NOT_FOUND => return Ok(answer),
                s => {
                    let message = format!("{what} {path}: HTTP {s}");
                    return Err(match s.as_u16() {
                        401 | 403 => RemoteError::Denied { registry: self.registry.clone(), message },
                        429 | 500..=599 => self.unavailable(message),
                        _ => self.invalid(message),
                    });
                }
            }
        }
    }

    /// `PUT` of a manifest under `tag`.
    pub(crate) async fn put_manifest(&self, tag: &str, body: Vec<u8>, media_type: &str) -> Result<(), RemoteError> {
        let reference = self.tagged(tag);
        let content_type = HeaderValue::from_str(media_type).map_err(|_| self.invalid("bad media type"))?;
        self.bounded(self.timeout, "manifest upload", async {
            self.oci.push_manifest_raw(&reference, body, content_type).await.map(|_| ()).map_err(|e| self.map("manifest upload", e))
        })
        .await
    }
}

/// A reqwest error in words, with its causes (connection refused, timed out), never a header.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
        depth += 1;
        if depth > 4 {
            break;
        }
    }
    cut(&text)
}

/// At most 300 characters of a registry's text.
pub(crate) fn cut(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    t.escape_debug().to_string()
}
