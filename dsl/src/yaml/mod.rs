//! The YAML reader (version 1 of the workflow format). Owns the YAML layer (marked-yaml, which
//! keeps a span on every node) so that only it and the resolver see YAML nodes: [`parse`] reads
//! text into a node tree (syntax errors, nesting and anchors refused as diagnostics), and
//! [`reader::Reader`] gives typed, spanned access to a tree for the resolver and the policy
//! file.
//!
//! This module must not know what a workflow means; the resolver (`resolve`) does.

pub(crate) mod reader;

use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;

use crate::diagnostic::{finish, no_tree};
use crate::ir::SourceFile;
use crate::LoadError;

use reader::Reader;

/// The YAML node tree of `text`, parsed once; syntax errors as diagnostics.
pub(crate) fn parse(path: &Path, text: &str) -> Result<(Arc<SourceFile>, Node), LoadError> {
    let src = Arc::new(SourceFile { path: path.to_path_buf(), text: text.to_string() });
    let mut r = Reader::new(&src);
    match r.parse() {
        Some(root) => Ok((src, root)),
        None => finish(path, r.diags, ()).and_then(|()| Err(no_tree(path))),
    }
}
