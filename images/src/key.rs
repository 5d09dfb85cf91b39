//! Stage keys: SHA-256 over a canonical, versioned, length-prefixed encoding of everything a stage
//! produces its filesystem from. Pure: no Docker, no filesystem.

/// Bumped when the encoding changes.
pub const IMAGE_KEY_VERSION: u32 = 1;
