//! The OCI form of a cache entry (documented in `docs/remote-cache.md`, "Format"): an image
//! manifest with our artifact type, the entry's [`cache::Manifest`] (without its inputs) as the
//! config, and one layer per distinct blob it names, sorted by digest.

use std::collections::BTreeMap;

use cache::store::OutputEntry;
use cache::{Digest, Manifest};
use serde::{Deserialize, Serialize};

/// The manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The artifact type of a step cache entry.
pub const ARTIFACT_TYPE: &str = "application/vnd.engine.step.v1";
/// The config's media type: the entry's manifest as JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.engine.step.config.v1+json";
/// The media type of each blob (file contents, the log).
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.engine.blob.v1";
/// Bound on a downloaded OCI manifest.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Bound on a downloaded config (the entry's manifest).
pub const MAX_CONFIG: u64 = 64 << 20;
/// A config of at most this many bytes travels inline in the manifest too (the descriptor's
/// `data`, OCI image-spec 1.1), so a reader needs no request for it.
pub const INLINE_CONFIG: u64 = 16 << 10;
/// A blob of at most this many bytes travels inline too...
pub const INLINE_BLOB: u64 = 1 << 10;
/// ...while the inline blobs of one manifest total at most this many bytes.
pub const INLINE_TOTAL: u64 = 64 << 10;

/// An OCI descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The content itself, base64 (OCI image-spec 1.1 "embedded content"), for small blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    fn new(media_type: &str, digest: Digest, size: u64, content: Option<&[u8]>) -> Descriptor {
        use base64::Engine as _;
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.prefixed(),
            size,
            annotations: None,
            data: content.map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
        }
    }

    /// The embedded content, checked against the descriptor's size and digest; `None` when
    /// there is none. Content that does not match is an error (the entry is damaged).
    pub fn inline(&self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        let Some(data) = &self.data else { return Ok(None) };
        let digest = Digest::parse_prefixed(&self.digest)?;
        // Base64 of `size` bytes is 4 * ceil(size / 3) characters: anything longer is refused
        // before it is decoded.
        if data.len() as u64 != self.size.div_ceil(3) * 4 {
            return Err(format!("the inline data of {} is not {} bytes of base64", digest.short(), self.size));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("the inline data of {} is not base64: {e}", digest.short()))?;
        if bytes.len() as u64 != self.size || Digest::of(&bytes) != digest {
            return Err(format!("the inline data of {} does not match its digest", digest.short()));
        }
        Ok(Some(bytes))
    }
}

/// An OCI image manifest (the fields we write and read).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// [`ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The entry's manifest.
    pub config: Descriptor,
    /// The blobs.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The config of `manifest`: its JSON without the input manifest (inputs stay on the machine).
pub fn config_bytes(manifest: &Manifest) -> Vec<u8> {
    let mut m = manifest.clone();
    m.inputs = None;
    serde_json::to_vec(&m).expect("a manifest always serialises")
}

/// Every distinct blob `manifest` names with its size when known (files; the log's size is
/// found in the store), sorted by digest.
pub fn blobs(manifest: &Manifest) -> BTreeMap<Digest, Option<u64>> {
    let mut out = BTreeMap::new();
    for e in &manifest.entries {
        if let OutputEntry::File { digest, size, .. } = e {
            out.insert(*digest, Some(*size));
        }
    }
    out.entry(manifest.log).or_insert(None);
    out
}

/// A layer of [`image_manifest`]: its digest, its size and, for a small blob, its content.
pub type Layer = (Digest, u64, Option<Vec<u8>>);

/// The OCI manifest for an entry whose config is `config` and whose blobs are `layers`,
/// already sorted. The config (up to [`INLINE_CONFIG`]) and the layers given with content
/// are embedded in their descriptors as well.
pub fn image_manifest(config: &[u8], layers: &[Layer], key: &cache::ActionKey) -> ImageManifest {
    let mut annotations = BTreeMap::new();
    annotations.insert("org.engine.action-key".to_string(), key.digest().hex());
    ImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        config: Descriptor::new(
            CONFIG_MEDIA_TYPE,
            Digest::of(config),
            config.len() as u64,
            (config.len() as u64 <= INLINE_CONFIG).then_some(config),
        ),
        layers: layers.iter().map(|(d, size, content)| Descriptor::new(BLOB_MEDIA_TYPE, *d, *size, content.as_deref())).collect(),
        annotations: Some(annotations),
    }
}

/// A checked entry from the registry: the manifest to store and the blobs it needs.
#[derive(Debug)]
pub struct Checked {
    /// The entry's manifest (inputs `None`).
    pub manifest: Manifest,
    /// Each distinct blob it names, with its size from the layer descriptor.
    pub blobs: Vec<(Digest, u64)>,
}

/// Parse an OCI manifest of ours: schema 2, our config media type, well-formed layers.
pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, String> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not an OCI image manifest: {e}"))?;
    if m.schema_version != 2 {
        return Err(format!("schemaVersion {} (expected 2)", m.schema_version));
    }
    if m.media_type.as_deref().is_some_and(|t| t != MANIFEST_MEDIA_TYPE) {
        return Err(format!("media type `{}` (expected {MANIFEST_MEDIA_TYPE})", crate::client::cut(m.media_type.as_deref().unwrap_or(""))));
    }
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!("config media type `{}` (expected {CONFIG_MEDIA_TYPE})", crate::client::cut(&m.config.media_type)));
    }
    if m.config.size > MAX_CONFIG {
        return Err(format!("config of {} bytes (at most {MAX_CONFIG})", m.config.size));
    }
    Digest::parse_prefixed(&m.config.digest)?;
    for l in &m.layers {
        Digest::parse_prefixed(&l.digest)?;
    }
    Ok(m)
}

/// Check the config `bytes` (already matching its descriptor) against `key` and `oci`'s layers.
pub fn check_config(bytes: &[u8], key: &cache::ActionKey, oci: &ImageManifest) -> Result<Checked, String> {
    let mut manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("the config is not an entry manifest: {e}"))?;
    if manifest.key != *key {
        return Err(format!("the config is the entry of key {}, not {}", manifest.key.digest().short(), key.digest().short()));
    }
    manifest.inputs = None;
    let mut layers: BTreeMap<Digest, u64> = BTreeMap::new();
    for l in &oci.layers {
        let d = Digest::parse_prefixed(&l.digest)?;
        if layers.insert(d, l.size).is_some_and(|s| s != l.size) {
            return Err(format!("layer {} is listed twice with different sizes", d.short()));
        }
    }
    let mut blobs = Vec::new();
    for (digest, size) in self::blobs(&manifest) {
        let Some(&layer_size) = layers.get(&digest) else {
            return Err(format!("blob {} is not among the layers", digest.short()));
        };
        if size.is_some_and(|s| s != layer_size) {
            return Err(format!("layer {} has {layer_size} bytes, the entry says {}", digest.short(), size.unwrap_or(0)));
        }
        blobs.push((digest, layer_size));
    }
    Ok(Checked { manifest, blobs })
}
