//! Images and registries: what an image reference resolves to (its ID and its repo digests, the
//! identity a pulled image has on every machine), and the daemon's own push and pull of an image
//! (the engine's remote cache moves engine-built images this way, like BuildKit's cache import).
//! Credentials go to the daemon in its `X-Registry-Auth` header and nowhere else: never in an
//! error, a progress line or `Debug` output.

use std::fmt;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptionsBuilder, PushImageOptions};
use futures_util::StreamExt;

use crate::error::{call, ordinary, DaemonError};
use crate::{Daemon, ImageId, LookupError};

/// An image reference resolved on the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Its local ID.
    pub id: ImageId,
    /// Its repo digests, `name@sha256:<hex>`, as the daemon lists them (empty for an image that
    /// was never pushed or pulled: imported, or built here).
    pub repo_digests: Vec<String>,
}

impl ResolvedImage {
    /// The registry digest (`sha256:<hex>`) of the image as `reference` names it: the repo digest
    /// of the reference's own repository when there is one, else the smallest of the others (so
    /// every machine holding the same digests picks the same). `None` when it has no valid one.
    pub fn repo_digest(&self, reference: &str) -> Option<String> {
        let repository = repository_of(reference);
        let valid: Vec<(&str, &str)> = self
            .repo_digests
            .iter()
            .filter_map(|entry| entry.rsplit_once('@'))
            .filter(|(_, digest)| ImageId::parse(digest).is_ok())
            .collect();
        let same = valid.iter().filter(|(name, _)| same_repository(name, repository)).map(|(_, d)| *d).min();
        same.or_else(|| valid.iter().map(|(_, d)| *d).min()).map(str::to_string)
    }

    /// What the image enters keys as: its [`repo_digest`](ResolvedImage::repo_digest) when it has
    /// one (the same on every machine that pulled it), else its local ID.
    pub fn identity(&self, reference: &str) -> String {
        self.repo_digest(reference).unwrap_or_else(|| self.id.to_string())
    }
}

/// `reference` without its tag or digest.
fn repository_of(reference: &str) -> &str {
    let without_digest = reference.split_once('@').map_or(reference, |(name, _)| name);
    match without_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => without_digest,
    }
}

/// Whether two repository names are the same one, Docker Hub's short forms included
/// (`busybox`, `library/busybox`, `docker.io/library/busybox`).
fn same_repository(a: &str, b: &str) -> bool {
    fn normal(name: &str) -> String {
        let name = name.strip_prefix("docker.io/").or_else(|| name.strip_prefix("index.docker.io/")).unwrap_or(name);
        let first = name.split('/').next().unwrap_or("");
        let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
        if !has_registry && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        }
    }
    normal(a) == normal(b)
}

/// Credentials for one registry, sent to the daemon for a push or pull. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    /// User name (empty with an identity token).
    pub username: String,
    /// Password, or empty.
    pub password: String,
    /// An identity (refresh) token, or empty.
    pub identity_token: String,
    /// `HOST[:PORT]`.
    pub server: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth").field("server", &self.server).field("username", &self.username).finish_non_exhaustive()
    }
}

impl RegistryAuth {
    fn credentials(&self) -> DockerCredentials {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        DockerCredentials {
            username: some(&self.username),
            password: some(&self.password),
            identitytoken: some(&self.identity_token),
            serveraddress: some(&self.server),
            ..Default::default()
        }
    }
}

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The reference is not `[HOST[:PORT]/]REPO:TAG`.
    #[error("`{0}` is not an image reference with a tag")]
    BadReference(String),
    /// The registry or the daemon refused or failed (the daemon's words).
    #[error("cannot {action} `{reference}`: {reason}")]
    Failed {
        /// `push` or `pull`.
        action: &'static str,
        /// The reference.
        reference: String,
        /// The daemon's words.
        reason: String,
        /// The daemon's error.
        #[source]
        source: Box<DaemonError>,
    },
    /// It did not finish within its bound.
    #[error("cannot {action} `{reference}`: not finished within {}", crate::error::format_duration(*after))]
    TimedOut {
        /// `push` or `pull`.
        action: &'static str,
        /// The reference.
        reference: String,
        /// The bound.
        after: Duration,
    },
}

/// `[HOST[:PORT]/]REPO:TAG` split into repository and tag.
fn split_tagged(reference: &str) -> Result<(&str, &str), TransferError> {
    let bad = || TransferError::BadReference(reference.to_string());
    if reference.contains('@') {
        return Err(bad());
    }
    let (repo, tag) = reference.rsplit_once(':').ok_or_else(bad)?;
    if repo.is_empty() || tag.is_empty() || tag.contains('/') {
        return Err(bad());
    }
    Ok((repo, tag))
}

/// Most progress lines kept per transfer (for the caller's log); more are counted, not kept.
const MAX_PROGRESS_LINES: usize = 10_000;

impl Daemon {
    /// The ID and repo digests `reference` resolves to now; a missing image is
    /// [`LookupError::Missing`].
    pub async fn resolve_image(&self, reference: &str) -> Result<ResolvedImage, LookupError> {
        match call(&format!("look up image `{reference}`"), ordinary(), self.docker.inspect_image(reference)).await {
            Ok(image) => {
                let id = image.id.ok_or_else(|| LookupError::NoId { reference: reference.to_string(), source: None })?;
                let id = ImageId::parse(&id).map_err(|e| LookupError::NoId { reference: reference.to_string(), source: Some(e) })?;
                Ok(ResolvedImage { id, repo_digests: image.repo_digests.unwrap_or_default() })
            }
            Err(e) if e.is_not_found() => Err(LookupError::Missing { reference: reference.to_string() }),
            Err(e) => Err(e.into()),
        }
    }

    /// The daemon pushes `reference` (`HOST[:PORT]/REPO:TAG`, a local tag) to its registry, with
    /// `auth` (anonymous when `None`), within `limit`; each progress line goes to `progress`.
    pub async fn push_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        limit: Duration,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), TransferError> {
        let (repo, tag) = split_tagged(reference)?;
        let options = PushImageOptions { tag: Some(tag.to_string()), ..Default::default() };
        let stream = self.docker.push_image(repo, Some(options), Some(auth.map(RegistryAuth::credentials).unwrap_or_default()));
        let lines = stream.map(|item| item.map(|info| (None, info.status)));
        drain("push", reference, limit, lines, progress).await
    }

    /// The daemon pulls `reference` (`HOST[:PORT]/REPO:TAG`) from its registry, with `auth`
    /// (anonymous when `None`), within `limit`; each progress line goes to `progress`.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        limit: Duration,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), TransferError> {
        let (repo, tag) = split_tagged(reference)?;
        let options = CreateImageOptionsBuilder::default().from_image(repo).tag(tag).build();
        let stream = self.docker.create_image(Some(options), None, auth.map(RegistryAuth::credentials));
        let lines = stream.map(|item| item.map(|info| (info.id, info.status)));
        drain("pull", reference, limit, lines, progress).await
    }
}

/// Read a push's or pull's progress to its end (an error item ends it) within `limit`.
async fn drain(
    action: &'static str,
    reference: &str,
    limit: Duration,
    mut lines: impl futures_util::Stream<Item = Result<(Option<String>, Option<String>), bollard::errors::Error>> + Unpin,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<(), TransferError> {
    let failed = |source: bollard::errors::Error| {
        let source = DaemonError::Failed { action: format!("{action} `{reference}`"), source };
        TransferError::Failed { action, reference: reference.to_string(), reason: source.reason(), source: Box::new(source) }
    };
    let mut kept = 0usize;
    let read = async {
        while let Some(item) = lines.next().await {
            let (id, status) = item.map_err(failed)?;
            let line = match (id, status) {
                (Some(id), Some(status)) => format!("{id}: {status}"),
                (None, Some(status)) => status,
                _ => continue,
            };
            if kept < MAX_PROGRESS_LINES {
                kept += 1;
                progress(line);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result,
        Err(_) => Err(TransferError::TimedOut { action, reference: reference.to_string(), after: limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(digests: &[&str]) -> ResolvedImage {
        ResolvedImage { id: ImageId::from_digest(&cache::Digest::of(b"id")), repo_digests: digests.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn the_repo_digest_of_the_reference_s_repository_wins_else_the_smallest() {
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let image = resolved(&[&format!("mirror.example/busybox@{a}"), &format!("busybox@{b}")]);
        assert_eq!(image.repo_digest("busybox:1").as_deref(), Some(b.as_str()));
        assert_eq!(image.repo_digest("docker.io/library/busybox:1").as_deref(), Some(b.as_str()));
        assert_eq!(image.repo_digest("other:1").as_deref(), Some(a.as_str()));
        assert_eq!(image.repo_digest("127.0.0.1:5000/x/y:1").as_deref(), Some(a.as_str()));
        assert_eq!(resolved(&[]).repo_digest("busybox:1"), None);
        assert_eq!(resolved(&["busybox@sha256:bad", "garbage"]).repo_digest("busybox:1"), None);
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_tagged("127.0.0.1:5000/cache:image-ab").unwrap(), ("127.0.0.1:5000/cache", "image-ab"));
        assert!(split_tagged("127.0.0.1:5000/cache").is_err());
        assert!(split_tagged("repo@sha256:ab").is_err());
        assert_eq!(repository_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("b@sha256:ff"), "b");
    }

    #[test]
    fn debug_shows_no_secret() {
        let auth = RegistryAuth { username: "u".into(), password: "hunter2".into(), identity_token: "tok".into(), server: "r".into() };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok\""), "{shown}");
    }
}
