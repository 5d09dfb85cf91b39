//! [`ImageIdentity`]: what a step's image contributes to its action key, machine-independent
//! where the image allows it. An engine-built image is named by its stage key (the same on every
//! machine that builds it from the same definition and sources), a pulled image by its registry
//! digest (the manifest digest every machine pulling it sees); only an image that has neither (a
//! `docker import`, an image built by something else) is named by its local ID.
//!
//! One serde form and one key encoding: the [`Display`](fmt::Display) string, `built sha256:<hex>`,
//! `registry sha256:<hex>` or `local sha256:<hex>`. A bare `sha256:<hex>` (what key components
//! held before identities, as `image_id`) reads back as `local`.

use std::fmt;

use crate::{Digest, ImageId};

/// The identity of the image a step runs in, as it enters the step's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ImageIdentity {
    /// An image the engine built (`images:`): its final stage's key (or a Dockerfile image's key).
    Built {
        /// The stage key.
        key: Digest,
    },
    /// An image pulled from a registry: its repo digest (`name@sha256:…` in `RepoDigests`).
    Registry {
        /// The manifest digest.
        digest: Digest,
    },
    /// An image with no repo digest (imported, or built locally by other tools): its local ID.
    Local {
        /// The image ID.
        id: ImageId,
    },
}

/// A string that is not an image identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an image identity (`built`, `registry` or `local`, a space, then `sha256:` and 64 lowercase hex digits)")]
pub struct BadImageIdentity(pub String);

impl ImageIdentity {
    /// `built`, `registry` or `local`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageIdentity::Built { .. } => "built",
            ImageIdentity::Registry { .. } => "registry",
            ImageIdentity::Local { .. } => "local",
        }
    }

    /// The 64 hex digits of the key, digest or ID.
    pub fn hex(&self) -> String {
        match self {
            ImageIdentity::Built { key } => key.hex(),
            ImageIdentity::Registry { digest } => digest.hex(),
            ImageIdentity::Local { id } => id.hex().to_string(),
        }
    }

    /// `<kind> sha256:<first 12 hex>`, for people.
    pub fn short(&self) -> String {
        format!("{} sha256:{}", self.kind(), &self.hex()[..12])
    }

    /// Parse the [`Display`](fmt::Display) form; a bare `sha256:<hex>` is a local ID (the form
    /// of records written before identities).
    pub fn parse(text: &str) -> Result<ImageIdentity, BadImageIdentity> {
        let bad = || BadImageIdentity(text.to_string());
        let (kind, rest) = text.split_once(' ').unwrap_or(("local", text));
        let id = ImageId::parse(rest).map_err(|_| bad())?;
        let digest = || Digest::parse_prefixed(id.as_str()).map_err(|_| bad());
        match kind {
            "built" => Ok(ImageIdentity::Built { key: digest()? }),
            "registry" => Ok(ImageIdentity::Registry { digest: digest()? }),
            "local" => Ok(ImageIdentity::Local { id }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ImageIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sha256:{}", self.kind(), self.hex())
    }
}

impl TryFrom<String> for ImageIdentity {
    type Error = BadImageIdentity;
    fn try_from(text: String) -> Result<ImageIdentity, BadImageIdentity> {
        ImageIdentity::parse(&text)
    }
}

impl From<ImageIdentity> for String {
    fn from(identity: ImageIdentity) -> String {
        identity.to_string()
    }
}

impl std::str::FromStr for ImageIdentity {
    type Err = BadImageIdentity;
    fn from_str(text: &str) -> Result<ImageIdentity, BadImageIdentity> {
        ImageIdentity::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_and_serde_round_trip() {
        let hex = "ab".repeat(32);
        for text in [format!("built sha256:{hex}"), format!("registry sha256:{hex}"), format!("local sha256:{hex}")] {
            let identity = ImageIdentity::parse(&text).unwrap();
            assert_eq!(identity.to_string(), text);
            assert_eq!(identity.short(), format!("{} sha256:abababababab", identity.kind()));
            let json = serde_json::to_string(&identity).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ImageIdentity>(&json).unwrap(), identity);
        }
    }

    #[test]
    fn a_bare_image_id_is_local_and_garbage_is_refused() {
        let hex = "0f".repeat(32);
        let old = ImageIdentity::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(old, ImageIdentity::Local { id: ImageId::parse(&format!("sha256:{hex}")).unwrap() });
        for bad in [
            "",
            "built",
            "built ",
            "built sha256:ff",
            &format!("other sha256:{hex}"),
            &format!("built  sha256:{hex}"),
            &format!("built sha256:{}", hex.to_uppercase()),
        ] {
            assert!(ImageIdentity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_with_the_same_digest_differ() {
        let d = Digest::from_bytes([7; 32]);
        let (b, r, l) =
            (ImageIdentity::Built { key: d }, ImageIdentity::Registry { digest: d }, ImageIdentity::Local { id: ImageId::from_digest(&d) });
        assert_ne!(b.to_string(), r.to_string());
        assert_ne!(r.to_string(), l.to_string());
        assert_ne!(b.to_string(), l.to_string());
    }
}
