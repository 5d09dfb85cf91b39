//! Pushing an entry (blobs the registry lacks, streamed from the store; the config; the
//! manifest under its tag, last) and fetching one (manifest, config, every blob the store
//! lacks, each streamed into a temp file of the store, hashed, bounded and checked before it is
//! moved into place; the local manifest last).

use std::sync::Arc;
use std::time::Duration;

use cache::{ActionKey, Digest, Manifest, Store};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::RegistryOperation;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::format::{self, MANIFEST_MEDIA_TYPE, MAX_MANIFEST};
use crate::{action_tag, Fetched, RemoteError, Transfer};

/// Blobs moved at once.
const PARALLEL: usize = 8;

/// A transfer of `size` bytes is bounded by the request timeout plus that much per MiB.
fn blob_limit(timeout: Duration, size: u64) -> Duration {
    timeout.saturating_mul(1 + (size >> 20).min(u32::MAX as u64) as u32)
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::BlobUnknown | OciErrorCode::ManifestUnknown | OciErrorCode::NotFound)),
        OciDistributionError::RequestError(r) => r.status() == Some(StatusCode::NOT_FOUND),
        _ => false,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking store task panicked")
}

pub(crate) async fn push(c: &Client, store: &Arc<Store>, manifest: &Manifest) -> Result<Transfer, RemoteError> {
    c.warm(RegistryOperation::Pull).await?;
    c.warm(RegistryOperation::Push).await?;
    let tag = action_tag(&manifest.key);
    let reference = c.tagged(&tag);
    let mut layers: Vec<format::Layer> = Vec::new();
    let mut inline_budget = format::INLINE_TOTAL;
    for (digest, size) in format::blobs(manifest) {
        let path = store.blob_path(&digest);
        let meta =
            tokio::fs::symlink_metadata(&path).await.map_err(|source| cache::store::StoreError::Io { path: path.clone(), source })?;
        let corrupt = || {
            let what = format!("blob {} is not in the store as its entry says", digest.short());
            RemoteError::from(cache::store::StoreError::Corrupt { key: manifest.key, what })
        };
        if !meta.file_type().is_file() || size.is_some_and(|s| s != meta.len()) {
            return Err(corrupt());
        }
        let size = size.unwrap_or(meta.len());
        // A small blob is read now: it goes into the manifest as well as into the registry.
        let content = if size <= format::INLINE_BLOB && size <= inline_budget {
            inline_budget -= size;
            let bytes = blocking(move || read_small(&path, size)).await?;
            if Digest::of(&bytes) != digest {
                return Err(corrupt());
            }
            Some(bytes)
        } else {
            None
        };
        layers.push((digest, size, content));
    }
    let config = format::config_bytes(manifest);
    // Made now (it names the config's digest and size); pushed last.
    let oci = format::image_manifest(&config, &layers, &manifest.key);
    let sent: Vec<Option<u64>> = futures_util::stream::iter(layers)
        .map(|(digest, size, content)| {
            let reference = &reference;
            async move {
                if c.known_blob(&digest) {
                    return Ok(None);
                }
                let digest_text = digest.prefixed();
                let exists = c
                    .bounded(c.timeout, "blob HEAD", async {
                        c.oci().blob_exists(reference, &digest_text).await.map_err(|e| c.map("blob HEAD", e))
                    })
                    .await?;
                if exists {
                    c.remember_blob(digest);
                    return Ok(None);
                }
                // oci-client refuses an empty `Bytes` upload; the stream path takes it.
                if let Some(content) = content.filter(|c| !c.is_empty()) {
                    c.bounded(c.timeout, "blob upload", async {
                        c.oci().push_blob(reference, content, &digest_text).await.map_err(|e| c.map("blob upload", e))
                    })
                    .await?;
                } else {
                    let path = store.blob_path(&digest);
                    let file = blocking(move || {
                        cache::safe::open_regular(&path, false).map_err(|source| cache::store::StoreError::Io { path, source })
                    })
                    .await?;
                    let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10)
                        .map_err(OciDistributionError::IoError);
                    c.bounded(blob_limit(c.timeout, size), "blob upload", async {
                        c.oci().push_blob_stream(reference, stream, &digest_text, Some(size)).await.map_err(|e| c.map("blob upload", e))
                    })
                    .await?;
                }
                c.remember_blob(digest);
                Ok::<_, RemoteError>(Some(size))
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    let mut transfer = Transfer::default();
    for s in sent {
        match s {
            Some(size) => {
                transfer.blobs += 1;
                transfer.bytes += size;
            }
            None => transfer.skipped += 1,
        }
    }
    // No HEAD for the config: it names the key, so the registry has it only if this very entry
    // was pushed before (by this run: known; by another: the upload is a few hundred bytes).
    let config_digest = Digest::of(&config);
    if c.known_blob(&config_digest) {
        transfer.skipped += 1;
    } else {
        let config_text = oci.config.digest.clone();
        let size = config.len() as u64;
        c.bounded(blob_limit(c.timeout, size), "config upload", async {
            c.oci().push_blob(&reference, config, &config_text).await.map_err(|e| c.map("config upload", e))
        })
        .await?;
        c.remember_blob(config_digest);
        transfer.blobs += 1;
        transfer.bytes += size;
    }
    let body = serde_json::to_vec(&oci).expect("a manifest always serialises");
    // Last: only now does the entry exist for a reader.
    c.put_manifest(&tag, body, MANIFEST_MEDIA_TYPE).await?;
    Ok(transfer)
}

/// The `size` bytes of the small store blob at `path` (no more are read).
fn read_small(path: &std::path::Path, size: u64) -> Result<Vec<u8>, RemoteError> {
    use std::io::Read as _;
    let io = |source| RemoteError::from(cache::store::StoreError::Io { path: path.to_path_buf(), source });
    let file = cache::safe::open_regular(path, false).map_err(io)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 != size {
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidData, "the blob changed size")));
    }
    Ok(bytes)
}

pub(crate) async fn has(c: &Client, key: &ActionKey) -> Result<bool, RemoteError> {
    let answer = c.get(&format!("manifests/{}", action_tag(key)), MANIFEST_MEDIA_TYPE, MAX_MANIFEST, true).await?;
    Ok(answer.status.is_success())
}

/// Why a fetched entry is unusable (`Damaged`), or a registry fault.
enum Failure {
    Damaged(String),
    Remote(RemoteError),
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Failure {
        Failure::Remote(e)
    }
}

pub(crate) async fn fetch(c: &Client, store: &Arc<Store>, key: &ActionKey) -> Result<Fetched, RemoteError> {
    c.warm(RegistryOperation::Pull).await?;
    let tag = action_tag(key);
    let answer = c.get(&format!("manifests/{tag}"), MANIFEST_MEDIA_TYPE, MAX_MANIFEST, false).await;
    let answer = match answer {
        Ok(a) if a.status == StatusCode::NOT_FOUND => return Ok(Fetched::Miss),
        Ok(a) => a,
        // Larger than the bound: an entry no writer of ours made.
        Err(RemoteError::Invalid { message, .. }) => return Ok(Fetched::Damaged(message)),
        Err(e) => return Err(e),
    };
    match fetch_entry(c, store, key, &tag, &answer.body).await {
        Ok((manifest, transfer)) => Ok(Fetched::Hit { manifest: Box::new(manifest), transfer }),
        Err(Failure::Damaged(why)) => Ok(Fetched::Damaged(why)),
        Err(Failure::Remote(e)) => Err(e),
    }
}

async fn fetch_entry(c: &Client, store: &Arc<Store>, key: &ActionKey, tag: &str, body: &[u8]) -> Result<(Manifest, Transfer), Failure> {
    let oci = format::parse_manifest(body).map_err(Failure::Damaged)?;
    let reference = c.tagged(tag);
    let config_digest = Digest::parse_prefixed(&oci.config.digest).map_err(Failure::Damaged)?;
    // The manifest is moved too (with the content embedded in it).
    let mut transfer = Transfer { bytes: body.len() as u64, ..Transfer::default() };
    let config = match oci.config.inline().map_err(Failure::Damaged)? {
        Some(config) => config,
        None => {
            let config = download(c, &reference, config_digest, oci.config.size, Sink::Memory(Vec::new())).await?.into_memory();
            transfer.blobs += 1;
            transfer.bytes += config.len() as u64;
            config
        }
    };
    let checked = format::check_config(&config, key, &oci).map_err(Failure::Damaged)?;
    // Blobs embedded in the manifest are taken from it (checked first: damage is damage even
    // for a blob the store has); the others are downloaded when the store lacks them.
    let mut embedded = Vec::new();
    let mut remote_only = Vec::new();
    for &(digest, size) in &checked.blobs {
        let layer = oci.layers.iter().find(|l| l.digest == digest.prefixed() && l.size == size);
        match layer.map(format::Descriptor::inline).transpose().map_err(Failure::Damaged)?.flatten() {
            Some(bytes) => embedded.push((digest, bytes)),
            None => remote_only.push((digest, size)),
        }
    }
    // One stat per blob: off the async workers.
    let s = store.clone();
    let missing: Vec<(Digest, u64)> = if remote_only.is_empty() {
        Vec::new()
    } else {
        let wanted = remote_only.clone();
        blocking(move || wanted.into_iter().filter(|(d, _)| !s.has_blob(d)).collect()).await
    };
    transfer.skipped += (remote_only.len() - missing.len()) as u64;
    let got: Vec<u64> = futures_util::stream::iter(missing)
        .map(|(digest, size)| {
            let reference = &reference;
            async move {
                let s = store.clone();
                let import = blocking(move || s.blob_import()).await.map_err(RemoteError::from)?;
                let sink = download(c, reference, digest, size, Sink::File(import)).await?;
                let Sink::File(import) = sink else { unreachable!("a file sink stays a file sink") };
                let s = store.clone();
                blocking(move || s.import_blob(import, &digest, size))
                    .await
                    .map_err(|e| refused(e, &format!("blob {}", digest.short())))?;
                Ok::<_, Failure>(size)
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    transfer.blobs += got.len() as u64;
    transfer.bytes += got.iter().sum::<u64>();
    // The embedded blobs and then the manifest, in one trip off the async workers.
    let (s, manifest, key) = (store.clone(), checked.manifest, *key);
    let (had, stored_manifest) = blocking(move || {
        let mut had = 0u64;
        for (digest, bytes) in &embedded {
            if s.has_blob(digest) {
                had += 1;
            } else {
                s.import_bytes(bytes, digest).map_err(|e| refused(e, &format!("blob {}", digest.short())))?;
            }
        }
        s.put_manifest(&manifest).map_err(|e| refused(e, "the entry cannot be stored"))?;
        let stored_manifest = s.get(&key).unwrap_or(manifest);
        Ok::<_, Failure>((had, stored_manifest))
    })
    .await?;
    transfer.skipped += had;
    Ok((stored_manifest, transfer))
}

/// A failure of the store to take `what`: content it refuses (`InvalidData`: a digest that does
/// not match, an unsafe path) is damage; anything else is a fault.
fn refused(e: cache::store::StoreError, what: &str) -> Failure {
    match e {
        cache::store::StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Damaged(format!("{what}: {source}"))
        }
        e => Failure::Remote(e.into()),
    }
}

/// Where a download goes.
enum Sink {
    Memory(Vec<u8>),
    File(cache::store::BlobImport),
}

impl Sink {
    fn into_memory(self) -> Vec<u8> {
        match self {
            Sink::Memory(v) => v,
            Sink::File(_) => Vec::new(),
        }
    }
}

/// Stream the blob `digest` of `size` bytes into `sink`, hashing it; more bytes than `size`, a
/// different digest, or a blob the registry lacks is `Damaged`.
async fn download(c: &Client, reference: &oci_client::Reference, digest: Digest, size: u64, mut sink: Sink) -> Result<Sink, Failure> {
    let digest_text = digest.prefixed();
    let short = digest.short();
    let mut file = match &mut sink {
        Sink::File(import) => {
            let path = import.path();
            let f = import.file().try_clone().map_err(|source| RemoteError::from(cache::store::StoreError::Io { path, source }))?;
            Some(tokio::fs::File::from_std(f))
        }
        Sink::Memory(_) => None,
    };
    let limit = blob_limit(c.timeout, size);
    let work = async {
        let stream = match c.oci().pull_blob_stream(reference, digest_text.as_str()).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Err(Failure::Damaged(format!("blob {short} is missing from the registry"))),
            Err(e) => return Err(Failure::Remote(c.map("blob download", e))),
        };
        if stream.content_length.is_some_and(|l| l > size) {
            return Err(Failure::Damaged(format!("blob {short} is larger than its descriptor says ({size} bytes)")));
        }
        let mut stream = stream.stream;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client's own check failed at the end: the same finding as ours below.
                Err(_) if received == size && Digest::from_bytes(hasher.clone().finalize().into()) != digest => break,
                Err(e) => return Err(Failure::Remote(c.unavailable(format!("blob {short} download: {e}")))),
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(Failure::Damaged(format!("blob {short} is larger than its descriptor says ({size} bytes)")));
            }
            hasher.update(&chunk);
            match (&mut sink, file.as_mut()) {
                (Sink::Memory(v), _) => v.extend_from_slice(&chunk),
                (Sink::File(_), Some(f)) => f.write_all(&chunk).await.map_err(|e| c.unavailable(format!("writing blob {short}: {e}")))?,
                (Sink::File(_), None) => unreachable!("a file sink has a file"),
            }
        }
        if received != size {
            return Err(Failure::Damaged(format!("blob {short} has {received} bytes, its descriptor says {size}")));
        }
        if Digest::from_bytes(hasher.finalize().into()) != digest {
            return Err(Failure::Damaged(format!("blob {short} does not match its digest")));
        }
        if let Some(f) = file.as_mut() {
            f.flush().await.map_err(|e| c.unavailable(format!("writing blob {short}: {e}")))?;
        }
        Ok(())
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r?,
        Err(_) => return Err(Failure::Remote(c.unavailable(format!("blob {short} download timed out after {:.1}s", limit.as_secs_f64())))),
    }
    Ok(sink)
}

pub(crate) async fn list(c: &Client) -> Result<Vec<ActionKey>, RemoteError> {
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    const PAGE: usize = 1000;
    const MAX_PAGES: usize = 1000;
    let mut keys = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let path = match &last {
            Some(l) => format!("tags/list?n={PAGE}&last={l}"),
            None => format!("tags/list?n={PAGE}"),
        };
        let answer = c.get(&path, "application/json", MAX_MANIFEST, false).await?;
        if answer.status == StatusCode::NOT_FOUND {
            break;
        }
        let page: Tags = serde_json::from_slice(&answer.body).map_err(|e| c.invalid(format!("the tag list is not JSON: {e}")))?;
        let tags = page.tags.unwrap_or_default();
        for t in &tags {
            if let Some(hex) =
                t.strip_prefix("action-").filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            {
                if let Ok(d) = hex.parse::<Digest>() {
                    keys.push(ActionKey::from_digest(d));
                }
            }
        }
        let next = tags.last().cloned();
        // Only valid tag text goes back into the query, and only forward: no loop.
        let more = (answer.link.is_some() || tags.len() >= PAGE)
            && next.as_ref().is_some_and(|n| {
                last.as_ref().is_none_or(|l| n > l) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !more {
            break;
        }
        last = next;
    }
    keys.sort_by_key(|k| k.digest());
    keys.dedup();
    Ok(keys)
}
