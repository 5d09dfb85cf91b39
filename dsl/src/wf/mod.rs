//! The `.wf` DSL front end, in stages like a compiler's:
//!
//! 1. [`parse`]: text to our own syntax tree ([`ast`]), with the pest grammar ([`grammar`]) and
//!    syntax errors worded by [`syntax`];
//! 2. [`imports`]: every `import` through the caller's [`Loader`], parsed in turn;
//! 3. [`expand`]: templates, matrices and `${param}`, charged against the expansion bound;
//! 4. [`lower`]: the YAML-shaped `marked_yaml::Node` tree the YAML format would give, with every
//!    marker pointing into the `.wf` text, handed to [`crate::resolve::resolve`].
//!
//! [`format`] prints the concrete parse tree canonically (`engine fmt`).
//!
//! These modules must not resolve or validate workflow semantics themselves (no defaults, no
//! graph checks, no key lists): that belongs to the shared resolver, so both syntaxes give the
//! same IR and the same messages. They only report what the resolver cannot see: syntax errors,
//! unknown parameters, template calls and imports.

mod ast;
mod expand;
mod format;
mod grammar;
mod imports;
mod lower;
mod parse;
mod syntax;
mod uses;

pub(crate) use format::format;
pub(crate) use uses::expand_uses;

use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;

use crate::diagnostic::{finish, no_tree};
use crate::ir::SourceFile;
use crate::loader::{self, Loader};
use crate::policy::Policy;
use crate::{resolve, LoadError, Workflow};

/// The lowered YAML-shaped tree of `text` (imports, templates and matrices expanded); syntax,
/// import and expansion errors as diagnostics.
fn front(path: &Path, text: &str, loader: &dyn Loader) -> Result<(Arc<SourceFile>, Node), LoadError> {
    let src = Arc::new(SourceFile { path: path.to_path_buf(), text: text.to_string() });
    let mut diags = Vec::new();
    let mut chain = imports::Imports::new(loader, loader::identity(path));
    let Some(unit) = imports::unit(src.clone(), &mut chain, &mut diags) else {
        return finish(path, diags, ()).and_then(|()| Err(no_tree(path)));
    };
    let expanded = expand::expand(&unit, &mut diags);
    // The syntax trees are not needed past expansion: free them before the node tree is built.
    drop(unit);
    let root = lower::lower(&src, expanded, &mut diags);
    finish(path, diags, (src, root))
}

/// Loads a `.wf` workflow: the stages above, then the shared resolver.
pub(crate) fn load(path: &Path, text: &str, policy: &Policy, loader: &dyn Loader) -> Result<Workflow, LoadError> {
    let (src, root) = front(path, text, loader)?;
    resolve::resolve(path, src, root, policy)
}

/// The lowered YAML-shaped tree of a `.wf` file, after checking that the file loads.
pub(crate) fn tree(path: &Path, text: &str, loader: &dyn Loader) -> Result<Node, LoadError> {
    let (src, root) = front(path, text, loader)?;
    resolve::resolve(path, src, root.clone(), &Policy::default())?;
    Ok(root)
}
