//! [`ImageId`]: an image's content-addressed ID (`sha256:` and 64 lowercase hex), checked on the
//! way in, so a key never holds an empty or malformed one. One serde form: the string. The
//! `docker` crate re-exports it; it lives here because it enters every action key.

use std::fmt;

/// An image's content-addressed ID, `sha256:<64 lowercase hex>`, as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(String);

/// A string that is not an image ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an image ID (`sha256:` and 64 lowercase hex digits)")]
pub struct BadImageId(pub String);

impl ImageId {
    /// The image ID `sha256:<hex>` of a digest.
    pub fn from_digest(digest: &crate::Digest) -> ImageId {
        ImageId(format!("sha256:{}", digest.hex()))
    }

    /// Check `text` is `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<ImageId, BadImageId> {
        let ok =
            text.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if ok {
            Ok(ImageId(text.to_string()))
        } else {
            Err(BadImageId(text.to_string()))
        }
    }

    /// The ID as the daemon writes it (what enters cache keys and records).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl TryFrom<String> for ImageId {
    type Error = BadImageId;
    fn try_from(text: String) -> Result<ImageId, BadImageId> {
        ImageId::parse(&text)
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> String {
        id.0
    }
}

impl std::str::FromStr for ImageId {
    type Err = BadImageId;
    fn from_str(text: &str) -> Result<ImageId, BadImageId> {
        ImageId::parse(text)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ImageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_and_64_lowercase_hex_is_an_image_id() {
        let good = format!("sha256:{}", "ab".repeat(32));
        let id = ImageId::parse(&good).unwrap();
        assert_eq!(id.as_str(), good);
        assert_eq!(id.short(), "abababababab");
        for bad in ["", "sha256:", "sha256:ffff", &good.to_uppercase(), &good[7..], &format!("{good}0")] {
            assert!(ImageId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_serde_form_is_the_string() {
        let good = format!("sha256:{}", "0f".repeat(32));
        let id = ImageId::parse(&good).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{good}\""));
        assert_eq!(serde_json::from_str::<ImageId>(&format!("\"{good}\"")).unwrap(), id);
        assert!(serde_json::from_str::<ImageId>("\"\"").is_err());
    }
}
