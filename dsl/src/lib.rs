//! Workflow front ends. Each syntax (YAML, and the `.wf` DSL which lowers to the same
//! YAML-shaped tree) is parsed into the single IR in [`ir`]; validation of the graph and the
//! values happens here, before any container starts, and every problem is reported as a spanned
//! [`Diagnostic`].
//!
//! The stages, in dependency order: [`yaml`](crate) reads YAML text into a node tree; the `.wf`
//! front end parses, follows imports through the caller's [`Loader`], expands templates and
//! matrices and lowers to the same kind of tree; the resolver turns either tree into a
//! [`Workflow`] and checks it against the operator's [`Policy`].
//!
//! This crate must not talk to Docker, touch the network, run anything, or read environment
//! variables: where imported libraries live is told to it through a [`Loader`].

#![warn(missing_docs)]

pub mod bounds;
mod convert;
pub mod diagnostic;
pub mod ir;
pub mod loader;
pub mod policy;
mod policy_file;
mod resolve;
mod suggest;
pub mod units;
mod validate;
mod wf;
mod yaml;

use std::path::Path;

pub use diagnostic::{Diagnostic, LoadError};
pub use ir::*;
pub use loader::{FsLoader, ImportError, Loader, Source};
pub use policy::Policy;
pub use resolve::image_checks::dockerfile_images;

/// Load and validate a workflow file with the default policy. The syntax is chosen by extension
/// (`.wf` is the DSL, anything else YAML). Imports are relative to the workflow's folder only
/// ([`FsLoader::for_workflow`], no library); use [`load_file_with`] to supply a [`Loader`].
pub fn load_file(path: &Path) -> Result<Workflow, LoadError> {
    load_file_with(path, &Policy::default(), &FsLoader::for_workflow(path))
}

/// Load and validate workflow text as if it were read from `path` (used for messages, the
/// default name, and as the base directory of relative inputs and imports), with the default
/// policy and [`FsLoader::for_workflow`].
pub fn load_str(path: &Path, text: &str) -> Result<Workflow, LoadError> {
    load_str_with(path, text, &Policy::default(), &FsLoader::for_workflow(path))
}

/// Canonical formatting of `.wf` text read from `path` (used in messages): one top-level item
/// per block separated by a blank line, two-space indentation, one key per line. Works on the
/// parse tree (templates, matrices and imports are kept, not followed); comments are kept in
/// place. Idempotent, and the result loads to the same IR. A syntax error is returned as the
/// usual [`LoadError`].
pub fn format_wf(path: &Path, text: &str) -> Result<String, LoadError> {
    check_size(path, text)?;
    wf::format(path, text)
}

/// [`load_file`], checking what the workflow asks for against an operator's `policy`, and
/// importing through `loader`.
pub fn load_file_with(path: &Path, policy: &Policy, loader: &dyn Loader) -> Result<Workflow, LoadError> {
    let text = read_workflow(path)?;
    load_str_with(path, &text, policy, loader)
}

/// The text of a workflow file: a regular file (never a FIFO or device, which could block or
/// never end) of at most [`bounds::MAX_FILE_BYTES`]. Every command that reads a workflow uses it.
pub fn read_workflow(path: &Path) -> Result<String, LoadError> {
    bounds::read_regular(path, bounds::MAX_FILE_BYTES, false).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })
}

/// [`load_str`], checking what the workflow asks for against an operator's `policy`, and
/// importing through `loader`.
pub fn load_str_with(path: &Path, text: &str, policy: &Policy, loader: &dyn Loader) -> Result<Workflow, LoadError> {
    check_size(path, text)?;
    if is_wf(path) {
        wf::load(path, text, policy, loader)
    } else {
        let (src, root) = yaml::parse(path, text)?;
        let root = wf::expand_uses(&src, root, loader)?;
        resolve::resolve(path, src, root, policy)
    }
}

/// Reads `path` and returns the other syntax (`engine convert`): a `.wf` file becomes YAML (its
/// imports, templates and matrices expanded), anything else `.wf`. The input is loaded by the
/// normal front end first, so a broken file gives its usual [`LoadError`]. Imports are relative
/// to the workflow's folder only; see [`convert_file_with`].
pub fn convert_file(path: &Path) -> Result<String, LoadError> {
    convert_file_with(path, &FsLoader::for_workflow(path))
}

/// [`convert_file`] on text read from `path` (the extension chooses the direction).
pub fn convert_str(path: &Path, text: &str) -> Result<String, LoadError> {
    convert_str_with(path, text, &FsLoader::for_workflow(path))
}

/// [`convert_file`], importing through `loader`.
pub fn convert_file_with(path: &Path, loader: &dyn Loader) -> Result<String, LoadError> {
    let text = read_workflow(path)?;
    convert_str_with(path, &text, loader)
}

/// [`convert_str`], importing through `loader`.
pub fn convert_str_with(path: &Path, text: &str, loader: &dyn Loader) -> Result<String, LoadError> {
    check_size(path, text)?;
    if is_wf(path) {
        convert::wf_to_yaml(&wf::tree(path, text, loader)?)
    } else {
        let (src, root) = yaml::parse(path, text)?;
        let expanded = wf::expand_uses(&src, root.clone(), loader)?;
        resolve::resolve(path, src, expanded, &Policy::default())?;
        convert::yaml_to_wf(path, text, &root)
    }
}

fn is_wf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wf")
}

/// Text handed over directly (not read through [`read_workflow`]) gets the same size bound.
fn check_size(path: &Path, text: &str) -> Result<(), LoadError> {
    if text.len() as u64 > bounds::MAX_FILE_BYTES {
        return Err(LoadError::Io { path: path.to_path_buf(), source: bounds::ReadError::TooLarge(bounds::MAX_FILE_BYTES) });
    }
    Ok(())
}
