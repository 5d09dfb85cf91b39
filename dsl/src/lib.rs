//! Workflow front ends. Each syntax (YAML now, the `.wf` DSL later) is parsed into the single
//! IR in [`ir`]; validation of the graph and the values happens here, before any container starts,
//! and every problem is reported as a spanned [`Diagnostic`].
//!
//! This crate must not talk to Docker, touch the network or run anything.

pub mod diagnostic;
pub mod ir;
mod yaml;

use std::path::Path;

pub use diagnostic::{Diagnostic, LoadError};
pub use ir::*;

/// Load and validate a workflow file. The syntax is chosen by extension (`.wf` is the DSL,
/// anything else YAML).
pub fn load_file(path: &Path) -> Result<Workflow, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    load_str(path, &text)
}

/// Load and validate workflow text as if it were read from `path` (used for messages, the
/// default name, and as the base directory of relative inputs).
pub fn load_str(path: &Path, text: &str) -> Result<Workflow, LoadError> {
    yaml::load(path, text)
}
