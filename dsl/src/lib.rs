//! Workflow front ends. Each syntax (YAML, and the `.wf` DSL in [`wf`] which desugars to the same
//! YAML-shaped tree) is parsed into the single
//! IR in [`ir`]; validation of the graph and the values happens here, before any container starts,
//! and every problem is reported as a spanned [`Diagnostic`].
//!
//! This crate must not talk to Docker, touch the network or run anything.

pub mod bounds;
mod convert;
pub mod diagnostic;
pub mod ir;
pub mod policy;
mod suggest;
pub mod units;
mod validate;
mod wf;
mod yaml;

use std::path::Path;

pub use convert::{convert_file, convert_str};
pub use diagnostic::{Diagnostic, LoadError};
pub use ir::*;
pub use policy::Policy;

/// Load and validate a workflow file. The syntax is chosen by extension (`.wf` is the DSL,
/// anything else YAML).
pub fn load_file(path: &Path) -> Result<Workflow, LoadError> {
    load_file_with(path, &Policy::default())
}

/// Load and validate workflow text as if it were read from `path` (used for messages, the
/// default name, and as the base directory of relative inputs).
pub fn load_str(path: &Path, text: &str) -> Result<Workflow, LoadError> {
    load_str_with(path, text, &Policy::default())
}

/// Canonical formatting of `.wf` text read from `path` (used in messages): one top-level item
/// per block separated by a blank line, two-space indentation, one key per line. Works on the
/// parse tree (templates, matrices and imports are kept); comments are dropped. Idempotent, and
/// the result loads to the same IR. A syntax error is returned as the usual [`LoadError`].
pub fn format_wf(path: &Path, text: &str) -> Result<String, LoadError> {
    check_size(path, text)?;
    wf::format(path, text)
}

/// [`load_file`], also checking what the workflow asks for against an operator's `policy`.
pub fn load_file_with(path: &Path, policy: &Policy) -> Result<Workflow, LoadError> {
    let text = read_workflow(path)?;
    load_str_with(path, &text, policy)
}

/// The text of a workflow file: a regular file (never a FIFO or device, which could block or
/// never end) of at most [`bounds::MAX_FILE_BYTES`]. Every command that reads a workflow uses it.
pub fn read_workflow(path: &Path) -> Result<String, LoadError> {
    bounds::read_regular(path, bounds::MAX_FILE_BYTES, false).map_err(|e| LoadError::Io { path: path.to_path_buf(), source: e.into() })
}

/// [`load_str`], also checking what the workflow asks for against an operator's `policy`.
pub fn load_str_with(path: &Path, text: &str, policy: &Policy) -> Result<Workflow, LoadError> {
    check_size(path, text)?;
    if path.extension().is_some_and(|e| e == "wf") {
        wf::load(path, text, policy)
    } else {
        yaml::load(path, text, policy)
    }
}

/// Text handed over directly (not read through [`read_workflow`]) gets the same size bound.
pub(crate) fn check_size(path: &Path, text: &str) -> Result<(), LoadError> {
    if text.len() as u64 > bounds::MAX_FILE_BYTES {
        return Err(LoadError::Io { path: path.to_path_buf(), source: bounds::ReadError::TooLarge(bounds::MAX_FILE_BYTES).into() });
    }
    Ok(())
}
