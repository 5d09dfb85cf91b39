//! Engine-built images shared through a registry, the daemon doing the transfer (like
//! BuildKit's cache import and export): before building an image whose key has no local image,
//! the image is pulled from `reference(key)` when the remote reads; after building one, it is
//! tagged and pushed there in the background when the remote writes ([`ImageRemote::finish`]
//! waits for those pushes). A pulled image carries the labels it was pushed with (they are in
//! its config), so it is found by key exactly as a built one; it is tagged with the engine's own
//! name and the registry tag is removed again. Any failure only means building as without a
//! remote: one warning per image, never an error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use docker::{ImageId, RegistryAuth, TransferError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::split_reference;
use crate::key::StageKey;
use crate::{Builder, LogFn, LABEL_IMAGE, LABEL_IMAGE_KEY};

/// Where engine-built images are shared. Cheap to clone; one per run, handed to every build.
#[derive(Clone)]
pub struct ImageRemote {
    inner: Arc<Inner>,
}

struct Inner {
    reference: Box<dyn Fn(&cache::Digest) -> String + Send + Sync>,
    auth: Option<RegistryAuth>,
    reads: bool,
    writes: bool,
    timeout: Duration,
    pushes: TaskTracker,
    report: Mutex<ImageRemoteReport>,
}

/// What the remote did for images so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRemoteReport {
    /// Images pulled instead of built: `(image name, key)`.
    pub pulled: Vec<(String, StageKey)>,
    /// Images pushed after being built: `(image name, key)`.
    pub pushed: Vec<(String, StageKey)>,
    /// Pulls that failed for another reason than a missing image, and pushes that failed: one
    /// sentence each (never a credential).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for ImageRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRemote").field("reads", &self.inner.reads).field("writes", &self.inner.writes).finish_non_exhaustive()
    }
}

impl ImageRemote {
    /// A remote whose image of key `k` is `reference(k)` (`HOST[:PORT]/REPO:TAG`), reached with
    /// `auth` (anonymous when `None`); `reads`: pull before building, `writes`: push after
    /// building; each push or pull bounded by `timeout`.
    pub fn new(
        reference: impl Fn(&cache::Digest) -> String + Send + Sync + 'static,
        auth: Option<RegistryAuth>,
        reads: bool,
        writes: bool,
        timeout: Duration,
    ) -> ImageRemote {
        let inner =
            Inner { reference: Box::new(reference), auth, reads, writes, timeout, pushes: TaskTracker::new(), report: Mutex::default() };
        ImageRemote { inner: Arc::new(inner) }
    }

    /// Whether images are pulled before building.
    pub fn reads(&self) -> bool {
        self.inner.reads
    }

    /// Whether built images are pushed.
    pub fn writes(&self) -> bool {
        self.inner.writes
    }

    /// The registry reference of the image of `key`.
    pub fn reference(&self, key: &StageKey) -> String {
        (self.inner.reference)(&key.digest())
    }

    /// Wait for every push started so far (and any started meanwhile), then say what was done.
    pub async fn finish(&self) -> ImageRemoteReport {
        self.inner.pushes.close();
        self.inner.pushes.wait().await;
        self.inner.pushes.reopen();
        self.report()
    }

    /// What was done so far (pushes still running are not in it).
    pub fn report(&self) -> ImageRemoteReport {
        self.inner.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn note(&self, f: impl FnOnce(&mut ImageRemoteReport)) {
        if let Ok(mut report) = self.inner.report.lock() {
            f(&mut report);
        }
    }

    fn warn(&self, image: &str, log: Option<LogFn<'_>>, message: String) {
        tracing::warn!(image, "{message}");
        if let Some(log) = log {
            log(image, "remote", &format!("warning: {message}"));
        }
        self.note(|r| r.warnings.push(format!("image `{image}`: {message}")));
    }
}

/// Whether a failed pull only says the registry has no such image (a miss, not a fault).
fn is_missing(e: &TransferError) -> bool {
    let TransferError::Failed { reason, .. } = e else { return false };
    let reason = reason.to_ascii_lowercase();
    reason.contains("manifest unknown") || reason.contains("not found") || reason.contains("does not exist")
}

/// Before building image `name` of key `key`: pull it from the remote when it reads, and make it
/// the image a build would have made (tagged `tag`). True when the image is now there; false
/// (build it) on a miss, a failure, or `cancel` (the build then stops by itself).
pub(crate) async fn pull(builder: &Builder, name: &str, key: &StageKey, tag: &str, log: LogFn<'_>, cancel: &CancellationToken) -> bool {
    let Some(remote) = builder.remote.as_ref().filter(|r| r.reads()) else { return false };
    let reference = remote.reference(key);
    let mut progress = |line: String| log(name, "remote", &line);
    let pulling = builder.docker.pull_image(&reference, remote.inner.auth.as_ref(), remote.inner.timeout, &mut progress);
    let pulled = tokio::select! {
        _ = cancel.cancelled() => return false,
        pulled = pulling => pulled,
    };
    if let Err(e) = pulled {
        if !is_missing(&e) {
            remote.warn(name, Some(log), format!("not pulled from the remote cache, building it: {e}"));
        }
        return false;
    }
    // What the registry holds under the tag must be the image of this key, built for this name.
    let untag = || async {
        let _ = builder.docker.remove_image(&reference).await;
    };
    let pulled = match builder.docker.inspect_image(&reference).await {
        Ok(Some(image)) => image,
        Ok(None) | Err(_) => {
            remote.warn(name, Some(log), format!("pulled `{reference}` but cannot inspect it, building it"));
            return false;
        }
    };
    let labels = pulled.config.labels.unwrap_or_default();
    let (key_label, name_label) = (labels.get(LABEL_IMAGE_KEY), labels.get(LABEL_IMAGE));
    if key_label.map(String::as_str) != Some(key.hex().as_str()) || name_label.map(String::as_str) != Some(name) {
        untag().await;
        remote.warn(name, Some(log), format!("`{reference}` in the remote cache is not the image of key {key} for `{name}`, building it"));
        return false;
    }
    let (repo, short) = split_reference(tag);
    if let Err(e) = builder.docker.tag_image(pulled.id.as_str(), repo, short).await {
        untag().await;
        remote.warn(name, Some(log), format!("cannot tag the pulled image as `{tag}`, building it: {}", e.reason()));
        return false;
    }
    untag().await;
    log(name, "remote", &format!("pulled from the remote cache ({reference})"));
    remote.note(|r| r.pulled.push((name.to_string(), *key)));
    true
}

/// After building image `name` (ID `id`, key `key`): tag and push it in the background when the
/// remote writes; [`ImageRemote::finish`] waits for it.
pub(crate) fn push(builder: &Builder, name: &str, id: &ImageId, key: &StageKey) {
    let Some(remote) = builder.remote.clone().filter(|r| r.writes()) else { return };
    let (docker, name, id, key) = (builder.docker.clone(), name.to_string(), id.clone(), *key);
    let tracker = remote.inner.pushes.clone();
    tracker.spawn(async move {
        let reference = remote.reference(&key);
        let (repo, tag) = split_reference(&reference);
        if let Err(e) = docker.tag_image(id.as_str(), repo, tag).await {
            remote.warn(&name, None, format!("not pushed to the remote cache: cannot tag it as `{reference}`: {}", e.reason()));
            return;
        }
        let mut quiet = |_: String| {};
        let pushed = docker.push_image(&reference, remote.inner.auth.as_ref(), remote.inner.timeout, &mut quiet).await;
        let _ = docker.remove_image(&reference).await;
        match pushed {
            Ok(()) => remote.note(|r| r.pushed.push((name, key))),
            Err(e) => remote.warn(&name, None, format!("not pushed to the remote cache: {e}")),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_manifest_is_a_quiet_miss() {
        let timed_out = TransferError::TimedOut { action: "pull", reference: "r:t".into(), after: Duration::from_secs(1) };
        assert!(!is_missing(&timed_out));
        assert!(!is_missing(&TransferError::BadReference("r".into())));
    }

    #[test]
    fn debug_and_reports_show_no_credential() {
        let auth = RegistryAuth { username: "u".into(), password: "hunter2".into(), identity_token: String::new(), server: "r".into() };
        let remote = ImageRemote::new(|k| format!("r/c:image-{}", k.hex()), Some(auth), true, true, Duration::from_secs(1));
        assert!(!format!("{remote:?}").contains("hunter2"));
        assert_eq!(remote.report(), ImageRemoteReport::default());
    }
}
