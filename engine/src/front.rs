//! The one way the engine loads a workflow: the `dsl` front end with the engine's import
//! [`dsl::Loader`]. `dsl` itself never looks at the environment or the executable; this module
//! says where the workflow library (`stdlib/NAME` imports) is, in this order:
//!
//! 1. `$ENGINE_STDLIB`,
//! 2. `<directory of the engine executable>/../share/engine/stdlib-workflows`,
//! 3. the repository's `stdlib-workflows/` (for development builds; compiled in).
//!
//! Every command that reads a workflow (`run`, `plan`, `check`, `graph`, `lock`, `images
//! build`, `convert`, `replay`'s admission) goes through here, so they all find the same files.

use std::path::{Path, PathBuf};

use dsl::policy::Policy;
use dsl::{FsLoader, LoadError, Workflow};

/// Where `stdlib/` modules are looked up, in order (folders that do not exist are skipped).
pub(crate) fn library_folders() -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if let Some(dir) = std::env::var_os("ENGINE_STDLIB") {
        folders.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
        folders.push(exe_dir.join("../share/engine/stdlib-workflows"));
    }
    folders.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib-workflows"));
    folders
}

/// The engine's loader for the workflow at `path`: imports relative to the importing file
/// inside the workflow's folder, and `stdlib/NAME` in [`library_folders`].
pub(crate) fn loader(path: &Path) -> FsLoader {
    FsLoader::for_workflow(path).with_library(library_folders())
}

/// Loads and validates the workflow file at `path` under `policy`.
pub fn load(path: &Path, policy: &Policy) -> Result<Workflow, LoadError> {
    dsl::load_file_with(path, policy, &loader(path))
}

/// [`load`] on text as if read from `path`.
pub(crate) fn load_str(path: &Path, text: &str, policy: &Policy) -> Result<Workflow, LoadError> {
    dsl::load_str_with(path, text, policy, &loader(path))
}

/// `engine convert`: the workflow at `path` in the other syntax.
pub fn convert(path: &Path) -> Result<String, LoadError> {
    dsl::convert_file_with(path, &loader(path))
}
