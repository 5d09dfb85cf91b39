//! The owner of a container as Docker labels (see [`docker::labels`]).

pub use docker::labels::{owner_is_dead, owner_labels};
