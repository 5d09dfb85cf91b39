//! `engine cache push` and `engine cache pull`: moving entries between the local store and the
//! remote cache explicitly (e.g. pre-warming a cache from a trusted branch). Up to
//! [`AT_ONCE`] entries move at once; the first registry fault (unreachable, refused) stops the
//! command (exit 3), an entry missing or damaged is counted and the rest go on (exit 1).

use std::sync::Arc;

use cache::{ActionKey, Digest, Store};
use futures_util::stream::{self, StreamExt};
use remote::{Fetched, Remote, RemoteError, Transfer};

use crate::error::EnvironmentError;
use crate::session::StartError;

/// Entries moved at once.
pub const AT_ONCE: usize = 4;

/// What a push or pull did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Entries uploaded, or downloaded.
    pub moved: u64,
    /// Entries already there (pull: in the local store), not moved.
    pub already: u64,
    /// Blobs and bytes moved, blobs skipped.
    pub transfer: Transfer,
    /// Entries that could not be moved, each with why (`KEY: reason`).
    pub failed: Vec<String>,
}

/// `KEY` as the user wrote it: 64 hex digits, `sha256:` optional.
pub fn parse_key(text: &str) -> Result<ActionKey, StartError> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown: String = text.chars().take(80).collect();
        return Err(StartError::Invalid(format!("`{}` is not an action key (64 hex digits, `sha256:` optional)", shown.escape_debug())));
    }
    let digest: Digest = hex.to_ascii_lowercase().parse().map_err(StartError::Invalid)?;
    Ok(ActionKey::from_digest(digest))
}

fn fault(remote: &Remote, e: RemoteError) -> StartError {
    StartError::Environment(EnvironmentError(format!("remote cache {}: {e}", remote.url())))
}

fn add(total: &mut Transfer, t: Transfer) {
    total.blobs += t.blobs;
    total.bytes += t.bytes;
    total.skipped += t.skipped;
}

/// Upload `keys` (none: every local entry).
pub async fn push(remote: &Remote, store: Arc<Store>, keys: Vec<ActionKey>) -> Result<TransferReport, StartError> {
    if !remote.mode().writes() {
        return Err(StartError::Invalid(format!("remote cache {}: mode {} does not allow uploads", remote.url(), remote.mode().as_str())));
    }
    let keys = if keys.is_empty() {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.list().into_iter().map(|e| e.key).collect::<Vec<_>>())
            .await
            .map_err(|e| EnvironmentError(e.to_string()))?
    } else {
        keys
    };
    let mut report = TransferReport::default();
    let mut results = stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let s = store.clone();
                let manifest = tokio::task::spawn_blocking(move || s.get(&key)).await.ok().flatten();
                match manifest {
                    None => (key, Err(None)),
                    Some(manifest) => (key, remote.push_action(&store, &manifest).await.map_err(Some)),
                }
            }
        })
        .buffer_unordered(AT_ONCE);
    while let Some((key, result)) = results.next().await {
        match result {
            Ok(t) => {
                report.moved += 1;
                add(&mut report.transfer, t);
            }
            Err(None) => report.failed.push(format!("{key}: no such entry in the local store")),
            Err(Some(RemoteError::Store(e))) => report.failed.push(format!("{key}: {e}")),
            Err(Some(RemoteError::Invalid { message, .. })) => report.failed.push(format!("{key}: {message}")),
            Err(Some(e)) => return Err(fault(remote, e)),
        }
    }
    Ok(report)
}

/// Download `keys` (none: every entry the remote cache lists) into `store`.
pub async fn pull(remote: &Remote, store: Arc<Store>, keys: Vec<ActionKey>) -> Result<TransferReport, StartError> {
    if !remote.mode().reads() {
        return Err(StartError::Invalid(format!("remote cache {}: mode {} does not allow lookups", remote.url(), remote.mode().as_str())));
    }
    let keys = if keys.is_empty() { remote.list_actions().await.map_err(|e| fault(remote, e))? } else { keys };
    let mut report = TransferReport::default();
    let mut results = stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let s = store.clone();
                let local = tokio::task::spawn_blocking(move || s.get(&key).is_some()).await.unwrap_or(false);
                if local {
                    return (key, Ok(None));
                }
                (key, remote.fetch_action(&store, &key).await.map(Some))
            }
        })
        .buffer_unordered(AT_ONCE);
    while let Some((key, result)) = results.next().await {
        match result {
            Ok(None) => report.already += 1,
            Ok(Some(Fetched::Hit { transfer, .. })) => {
                report.moved += 1;
                add(&mut report.transfer, transfer);
            }
            Ok(Some(Fetched::Miss)) => report.failed.push(format!("{key}: not in the remote cache")),
            Ok(Some(Fetched::Damaged(why))) => report.failed.push(format!("{key}: damaged ({why})")),
            Err(RemoteError::Store(e)) => report.failed.push(format!("{key}: {e}")),
            Err(RemoteError::Invalid { message, .. }) => report.failed.push(format!("{key}: damaged ({message})")),
            Err(e) => return Err(fault(remote, e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_digits_with_an_optional_prefix() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_key(&hex).unwrap(), parse_key(&format!("sha256:{hex}")).unwrap());
        assert_eq!(parse_key(&hex.to_uppercase()).unwrap(), parse_key(&hex).unwrap());
        for bad in ["", "abc", "sha256:", &"g".repeat(64), &"a".repeat(65)] {
            assert!(matches!(parse_key(bad), Err(StartError::Invalid(_))), "{bad}");
        }
    }
}
