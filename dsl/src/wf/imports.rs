//! Stage 2 of the `.wf` front end: imports. Every `import "path" as name` of a file is handed
//! to the caller's [`Loader`]; the imported file is parsed (its own imports too, to find
//! cycles) and its templates are kept under the alias. Its steps and images are not part of
//! the importing workflow.
//!
//! Imports are hostile paths. Here: only `.wf` files, at most [`bounds::MAX_IMPORTS`] of them and
//! [`bounds::MAX_IMPORT_DEPTH`] levels deep, no cycles; the loader confines and reads the file
//! (see [`crate::loader::FsLoader`]). A refused import is a diagnostic at its `import` line.
//!
//! This module must not find or read files itself: only the loader does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::ast::{Template, Unit};
use super::{expand, parse};
use crate::bounds;
use crate::diagnostic::{push, Diagnostic};
use crate::ir::SourceFile;
use crate::loader::{ImportError, Loader};

/// The import chain (to find cycles) and how many files were imported.
pub(super) struct Imports<'a> {
    loader: &'a dyn Loader,
    /// Identities of the files on the current import chain, the workflow file first.
    stack: Vec<PathBuf>,
    /// Files imported so far, all levels together.
    count: usize,
}

impl<'a> Imports<'a> {
    /// For the workflow whose identity is `root`.
    pub fn new(loader: &'a dyn Loader, root: PathBuf) -> Imports<'a> {
        Imports { loader, stack: vec![root], count: 0 }
    }
}

const WHERE: &str =
    "imports are `.wf` files inside the workflow's folder (relative to the importing file) or `stdlib/...` modules of the shipped library";

/// Parses `src` and, recursively, what it imports; `None` after a syntax error (reported).
pub(super) fn unit(src: Arc<SourceFile>, imports: &mut Imports, diags: &mut Vec<Diagnostic>) -> Option<Unit> {
    let file = match parse::parse(&src) {
        Ok(file) => file,
        Err(d) => {
            push(diags, *d);
            return None;
        }
    };
    let mut unit = Unit { src: src.clone(), top: file.top, decls: file.decls, templates: HashMap::new(), imports: HashMap::new() };
    for t in file.templates {
        if unit.templates.contains_key(&t.name) {
            push(
                diags,
                Diagnostic::new(&src, t.name_at.span, format!("duplicate template `{}`", t.name), "defined again")
                    .with_help("template names must be unique within a file"),
            );
        }
        let template = Template { kind: t.kind, params: t.params, body: t.body, src: src.clone(), imported: false };
        unit.templates.insert(t.name, template);
    }
    for import in file.imports {
        if let Some(templates) = import_one(&src, &import, imports, diags) {
            unit.imports.insert(import.alias, templates);
        }
    }
    expand::check_templates(&unit, diags);
    Some(unit)
}

/// One `import` line: the templates of the imported file, marked as imported.
pub(super) fn import_one(
    src: &Arc<SourceFile>,
    import: &super::ast::Import,
    imports: &mut Imports,
    diags: &mut Vec<Diagnostic>,
) -> Option<HashMap<String, Template>> {
    let (rel, at) = (&import.path, import.at);
    let refuse = |diags: &mut Vec<Diagnostic>, message: String, help: &str| {
        push(diags, Diagnostic::new(src, at.span, message, "cannot import").with_help(help.to_string()));
    };
    if !rel.ends_with(".wf") {
        refuse(diags, format!("cannot import `{rel}`: only `.wf` files can be imported"), WHERE);
        return None;
    }
    if imports.stack.len() > bounds::MAX_IMPORT_DEPTH {
        let message = format!("cannot import `{rel}`: imports nested deeper than {} levels", bounds::MAX_IMPORT_DEPTH);
        refuse(diags, message, "flatten the chain of imports");
        return None;
    }
    if imports.count >= bounds::MAX_IMPORTS {
        refuse(diags, format!("cannot import `{rel}`: more than {} imported files", bounds::MAX_IMPORTS), "import fewer files");
        return None;
    }
    let lib = match imports.loader.load(rel, &src.path) {
        Ok(lib) => lib,
        Err(e) => {
            push(diags, refused(src, at.span, &e));
            return None;
        }
    };
    if imports.stack.contains(&lib.id) {
        push(
            diags,
            Diagnostic::new(src, at.span, format!("import cycle: `{rel}` imports this file again"), "cycle")
                .with_help("a library may not import, directly or not, a file that imports it"),
        );
        return None;
    }
    imports.count += 1;
    imports.stack.push(lib.id);
    let lib_src = Arc::new(SourceFile { path: lib.path, text: lib.text });
    let before = diags.len();
    let lib = unit(lib_src, imports, diags);
    imports.stack.pop();
    if diags.len() > before {
        // Point at the import too, so the user sees which import brought the problem in.
        push(
            diags,
            Diagnostic::new(src, at.span, format!("the import of `{rel}` has errors"), "imported here")
                .with_help("fix the errors reported in the imported file"),
        );
    }
    let templates = lib?.templates.into_iter().map(|(k, mut t)| {
        t.imported = true;
        (k, t)
    });
    Some(templates.collect())
}

/// A loader's refusal as a diagnostic at the `import` line.
fn refused(src: &SourceFile, span: crate::ir::Span, e: &ImportError) -> Diagnostic {
    match e {
        ImportError::NotInLibrary { import, modules } if !modules.is_empty() => {
            let name = import.trim_start_matches("stdlib/");
            let closest = crate::suggest::did_you_mean(name, modules.iter().map(String::as_str))
                .map(|m| format!("did you mean `stdlib/{m}`? "))
                .unwrap_or_default();
            Diagnostic::new(src, span, e.to_string(), "no such module")
                .with_help(format!("{closest}the standard library has {}; see docs/stdlib.md", modules.join(", ")))
        }
        ImportError::NotInLibrary { .. } => Diagnostic::new(src, span, e.to_string(), "not found")
            .with_help("the program loading this workflow was given no library folder holding it; see docs/stdlib.md"),
        ImportError::Outside { .. } | ImportError::Unreadable { .. } => {
            Diagnostic::new(src, span, e.to_string(), "cannot import").with_help(WHERE)
        }
    }
}
