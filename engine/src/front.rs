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
use std::sync::Mutex;

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

/// Loads and validates the workflow file at `path` under `policy`; [`Workflow::modules`] names
/// every module it imported.
pub fn load(path: &Path, policy: &Policy) -> Result<Workflow, LoadError> {
    let text = dsl::read_workflow(path)?;
    load_str(path, &text, policy)
}

/// [`load`] on text as if read from `path`.
pub(crate) fn load_str(path: &Path, text: &str, policy: &Policy) -> Result<Workflow, LoadError> {
    let recording = Recording { inner: loader(path), seen: Mutex::default() };
    let mut workflow = dsl::load_str_with(path, text, policy, &recording)?;
    let workflow_dir = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d });
    let roots: Vec<(Option<&str>, PathBuf)> = workflow_dir
        .into_iter()
        .map(|d| (None, d.to_path_buf()))
        .chain(library_folders().into_iter().map(|d| (Some("stdlib"), d)))
        .filter_map(|(prefix, d)| Some((prefix, std::fs::canonicalize(d).ok()?)))
        .collect();
    let seen = recording.seen.into_inner().unwrap_or_else(|e| e.into_inner());
    workflow.modules = seen
        .into_iter()
        .map(|source| {
            let name = roots
                .iter()
                .find_map(|(prefix, root)| {
                    let rel = source.id.strip_prefix(root).ok()?.to_string_lossy().into_owned();
                    Some(match prefix {
                        Some(prefix) => format!("{prefix}/{rel}"),
                        None => rel,
                    })
                })
                .unwrap_or_else(|| source.path.to_string_lossy().into_owned());
            dsl::Module { name, text: source.text }
        })
        .collect();
    Ok(workflow)
}

/// The engine's loader, remembering every file it gave out (each once, by identity).
struct Recording {
    inner: FsLoader,
    seen: Mutex<Vec<dsl::Source>>,
}

impl dsl::Loader for Recording {
    fn load(&self, import: &str, from: &Path) -> Result<dsl::Source, dsl::ImportError> {
        let source = self.inner.load(import, from)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.iter().any(|s| s.id == source.id) {
            seen.push(source.clone());
        }
        Ok(source)
    }
}

/// `engine convert`: the workflow at `path` in the other syntax.
pub fn convert(path: &Path) -> Result<String, LoadError> {
    dsl::convert_file_with(path, &loader(path))
}
