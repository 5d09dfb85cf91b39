//! Typed identities of what the daemon names: [`ImageId`] (`sha256:` and 64 lowercase hex, defined
//! in `cache` because it enters every action key) and [`ContainerId`]. One serde form each: the
//! string.

use std::fmt;

pub use cache::{BadImageId, ImageId};

/// A container as the daemon knows it: its ID, or the name the engine gave it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ContainerId(String);

impl ContainerId {
    /// A container ID or name as the daemon reported or the engine chose it.
    pub fn new(id: impl Into<String>) -> ContainerId {
        ContainerId(id.into())
    }

    /// The ID or name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
