//! SHA-256 digests, shown and stored as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
/// A SHA-256 digest: of a file, a manifest, a key encoding.
pub struct Digest([u8; 32]);

impl Digest {
    /// A digest from its 32 bytes (as read from a canonical encoding).
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 bytes of the digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// `sha256:<64 lowercase hex>`, the form of [`prefixed`].
    pub fn prefixed(&self) -> String {
        format!("sha256:{}", self.hex())
    }

    /// Parses the form of [`prefixed`](Digest::prefixed): exactly `sha256:` and 64 lowercase hex
    /// digits (the text is untrusted, so nothing else is accepted).
    pub fn parse_prefixed(text: &str) -> Result<Digest, String> {
        let shown = || text.chars().take(80).collect::<String>().escape_debug().to_string();
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(format!("`{}` is not a digest (`sha256:` and 64 lowercase hex digits)", shown()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("`{}` is not a digest (`sha256:` and 64 lowercase hex digits)", shown()));
        }
        hex.parse()
    }
}

/// The serde form `sha256:<64 lowercase hex>` of a [`Digest`] (the bare form, 64 hex digits, is
/// its own `Serialize`): for fields written that way, `#[serde(with = "cache::digest::prefixed")]`.
/// Deserialising anything else is an error, never a panic.
pub mod prefixed {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Digest;

    /// Writes `sha256:<hex>`.
    pub fn serialize<S: Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&digest.prefixed())
    }

    /// Reads exactly `sha256:` and 64 lowercase hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse_prefixed(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Digest, String> {
        let bytes = hex::decode(s).map_err(|e| format!("not a sha256 digest: {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| "not a sha256 digest: wrong length".to_string())?;
        Ok(Digest(arr))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Prefixed(#[serde(with = "prefixed")] Digest);

    #[test]
    fn the_prefixed_form_is_sha256_and_lowercase_hex_only() {
        let d = Digest::of(b"x");
        let text = format!("\"sha256:{}\"", d.hex());
        assert_eq!(serde_json::to_string(&Prefixed(d)).unwrap(), text);
        assert_eq!(serde_json::from_str::<Prefixed>(&text).unwrap().0, d);
        for bad in
            [d.hex(), format!("sha256:{}", d.hex().to_uppercase()), format!("sha256:{}", &d.hex()[1..]), "sha256:".into(), "md5:00".into()]
        {
            let err = serde_json::from_str::<Prefixed>(&format!("\"{bad}\"")).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains("is not a digest"), "{err}");
        }
    }
}
