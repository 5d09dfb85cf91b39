//! Where `.wf` imports come from. The front end never looks a file up by itself: it asks the
//! [`Loader`] its caller supplies, so which folders hold the library (environment variables,
//! the executable's location, an install prefix) is the program's business, not this crate's.
//!
//! [`FsLoader`] is the file-system loader: imports relative to the importing file, `stdlib/NAME`
//! in the library folders it is given, each import confined (symlinks resolved) to the
//! workflow's folder or a library folder, read as a bounded regular file. The front end itself
//! keeps the bounds that need no file system (only `.wf`, depth, count, cycles).
//!
//! This module must not read environment variables or find files any way but through the
//! folders it is given.

use std::path::{Path, PathBuf};

use crate::bounds::{self, ReadError};

/// An imported file, as a [`Loader`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path shown in messages about the file, and the base of its own relative imports.
    pub path: PathBuf,
    /// The file's identity (a canonical path for files on disk): two imports of the same
    /// identity are the same file, which is how import cycles are found.
    pub id: PathBuf,
    /// The file's text.
    pub text: String,
}

/// Why an import was refused or could not be read. The front end turns it into a diagnostic at
/// the `import` line of the importing file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A `stdlib/NAME` import, and no library folder holds `NAME`.
    #[error("{}", not_in_library(import, modules))]
    NotInLibrary {
        /// The import as written.
        import: String,
        /// The `.wf` modules the library folders do hold (sorted; empty when the loader was
        /// given no library folder, or none of them exists).
        modules: Vec<String>,
    },
    /// The file's real path is outside every folder imports may come from.
    #[error("cannot import `{import}`: it leaves the workflow's folder")]
    Outside {
        /// The import as written.
        import: String,
    },
    /// The file does not exist, is not a regular file, is too large or not text.
    #[error("cannot read imported file `{import}`: {source}")]
    Unreadable {
        /// The import as written.
        import: String,
        /// What reading it found.
        #[source]
        source: ReadError,
    },
}

fn not_in_library(import: &str, modules: &[String]) -> String {
    match modules.is_empty() {
        true => format!("cannot find the standard library for `{import}`"),
        false => format!("no module `{}` in the standard library", import.trim_start_matches("stdlib/")),
    }
}

/// Modules listed from a library folder at most: a hostile folder may hold millions of files.
const MAX_LISTED_MODULES: usize = 1000;

/// The `.wf` file names of the library folders, sorted, without duplicates.
fn library_modules(folders: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = folders
        .iter()
        .filter_map(|f| std::fs::read_dir(f).ok())
        .flat_map(|dir| dir.take(MAX_LISTED_MODULES))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wf"))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Supplies the text of imported files. Implemented by [`FsLoader`]; tests and embedders may
/// supply their own (an in-memory map, a sandboxed store).
pub trait Loader {
    /// The file `import` (as written in the `import` line, e.g. `"lib/common.wf"` or
    /// `"stdlib/make.wf"`) names when imported from the file at `from` (the importing file's
    /// [`Source::path`], or the workflow's own path).
    fn load(&self, import: &str, from: &Path) -> Result<Source, ImportError>;
}

/// Imports from the file system, for one workflow: a relative import is relative to the
/// importing file, `stdlib/NAME` is looked up in the library folders in order. Every file's real
/// path must be inside the workflow's folder or a library folder, and it is read with
/// [`bounds::read_regular`] (a regular file of at most [`bounds::MAX_IMPORT_BYTES`], never
/// through a symlink swapped in after the check).
#[derive(Debug, Clone)]
pub struct FsLoader {
    /// Library folders, in lookup order, as given (`stdlib/NAME` is `<folder>/NAME`).
    library: Vec<PathBuf>,
    /// Real folders imports must stay in: the workflow's folder and the library folders.
    roots: Vec<PathBuf>,
}

impl FsLoader {
    /// A loader for the workflow at `workflow` (its folder is where relative imports may come
    /// from), with no library: a `stdlib/` import is not found.
    pub fn for_workflow(workflow: &Path) -> FsLoader {
        let dir = workflow.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        FsLoader { library: Vec::new(), roots: std::fs::canonicalize(dir).into_iter().collect() }
    }

    /// The same loader, looking `stdlib/NAME` up in `folders` (in order; missing ones are
    /// skipped). Files there may be imported too.
    pub fn with_library(mut self, folders: impl IntoIterator<Item = PathBuf>) -> FsLoader {
        for folder in folders {
            self.roots.extend(std::fs::canonicalize(&folder));
            self.library.push(folder);
        }
        self
    }
}

impl Loader for FsLoader {
    fn load(&self, import: &str, from: &Path) -> Result<Source, ImportError> {
        let path = match import.strip_prefix("stdlib/") {
            Some(name) => match self.library.iter().map(|r| r.join(name)).find(|p| p.is_file()) {
                Some(p) => p,
                None => return Err(ImportError::NotInLibrary { import: import.to_string(), modules: library_modules(&self.library) }),
            },
            None => from.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(import),
        };
        let unreadable = |source| ImportError::Unreadable { import: import.to_string(), source };
        let id = std::fs::canonicalize(&path).map_err(|e| unreadable(ReadError::Io(e)))?;
        if !self.roots.iter().any(|root| id.starts_with(root)) {
            return Err(ImportError::Outside { import: import.to_string() });
        }
        // The real path, without following a symlink swapped in since: what was checked is read.
        let text = bounds::read_regular(&id, bounds::MAX_IMPORT_BYTES, true).map_err(unreadable)?;
        Ok(Source { path, id, text })
    }
}

/// The identity of the workflow file itself, for cycle detection: its canonical path when it
/// exists on disk, else the path as given (text handed over directly).
pub(crate) fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_library_imports_are_confined() {
        let dir = tempfile::tempdir().unwrap();
        let (project, lib, outside) = (dir.path().join("p"), dir.path().join("lib"), dir.path().join("o"));
        for d in [&project, &lib, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(project.join("a.wf"), "a").unwrap();
        std::fs::write(lib.join("m.wf"), "m").unwrap();
        std::fs::write(outside.join("x.wf"), "x").unwrap();
        let wf = project.join("workflow.wf");
        let loader = FsLoader::for_workflow(&wf).with_library([dir.path().join("missing"), lib.clone()]);
        assert_eq!(loader.load("a.wf", &wf).unwrap().text, "a");
        let m = loader.load("stdlib/m.wf", &wf).unwrap();
        assert_eq!((m.path, m.text.as_str()), (lib.join("m.wf"), "m"));
        assert!(matches!(loader.load("../o/x.wf", &wf), Err(ImportError::Outside { .. })));
        assert!(matches!(loader.load("stdlib/none.wf", &wf), Err(ImportError::NotInLibrary { .. })));
        assert!(matches!(loader.load("none.wf", &wf), Err(ImportError::Unreadable { source: ReadError::Io(_), .. })));
        // Without a library, `stdlib/` is not found even when the folder exists.
        assert!(matches!(FsLoader::for_workflow(&wf).load("stdlib/m.wf", &wf), Err(ImportError::NotInLibrary { .. })));
    }
}
