//! The content-addressed step cache: canonical, versioned action keys ([`key`]), input hashing
//! with a stat cache ([`hash`]), and the on-disk store of blobs and manifests ([`store`]).
//!
//! This crate knows nothing about Docker, workflows or the scheduler: the engine hands it plain
//! values (argv, env, paths, digests) and folders of files. It never stores a secret value: the
//! engine passes secret NAMES only.

#![warn(missing_docs)]

pub mod digest;
pub mod hash;
pub mod image_id;
pub mod image_identity;
pub mod key;
pub mod safe;
pub mod store;

pub use digest::Digest;
pub use image_id::{BadImageId, ImageId};
pub use image_identity::{BadImageIdentity, ImageIdentity};
pub use key::{ActionKey, InputEntry, KeyComponents, Reason, UpstreamEntry};
pub use store::{Manifest, OutputEntry, Store};

/// Bumped whenever the key encoding or the store layout changes: old entries simply stop matching.
/// 2: a step's image enters its key as its machine-independent identity ([`ImageIdentity`]),
/// not its local ID.
pub const CACHE_FORMAT_VERSION: u32 = 2;
