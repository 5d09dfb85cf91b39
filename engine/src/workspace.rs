//! Host-side files of a run: expanding `inputs` globs, staging a step's workspace folder (its
//! inputs plus the outputs of the steps it directly needs), and exporting collected outputs to
//! `<out>/<step>/<path>`. Also finds the temporary folders of runs whose engine died.
//!
//! Everything is copied, never hard-linked: a step may write to its /workspace, and that must not
//! reach the user's tree, another step's workspace, or the exported outputs. Nothing here writes
//! outside the run's temporary folder and the output folder, and no symlink is ever followed when
//! writing.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

/// Folder names never taken as inputs: the engine's own state and VCS metadata.
const SKIPPED_DIRS: &[&str] = &[".engine", ".git"];
const RUN_DIR_PREFIX: &str = "engine-run-";
const OWNER_FILE: &str = "owner";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("step `{step}`: input pattern `{pattern}` matches no file under {}", dir.display())]
    NoMatch { step: String, pattern: String, dir: PathBuf },
    #[error("step `{step}`: input pattern `{pattern}` is not a valid glob: {reason}")]
    BadPattern { step: String, pattern: String, reason: String },
    #[error("cannot read the workflow directory {}: {source}", dir.display())]
    Walk { dir: PathBuf, source: io::Error },
}

/// All files (and symlinks) under the workflow directory, relative, `/`-separated, sorted.
/// Walked once per run and matched against every step's patterns.
pub struct SourceTree {
    dir: PathBuf,
    files: Vec<String>,
}

impl SourceTree {
    pub fn scan(dir: &Path) -> Result<SourceTree, InputError> {
        let mut files = Vec::new();
        // Unsorted: `select` sorts what it keeps, and sorting every folder of a large tree costs.
        let walker = WalkDir::new(dir).follow_links(false).into_iter();
        let walker = walker.filter_entry(|e| {
            !(e.depth() == 1 && e.file_type().is_dir() && SKIPPED_DIRS.iter().any(|s| e.file_name() == *s))
        });
        for entry in walker {
            let entry = entry.map_err(|e| InputError::Walk {
                dir: dir.to_path_buf(),
                source: e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")),
            })?;
            if entry.file_type().is_dir() {
                continue;
            }
            if let Ok(rel) = entry.path().strip_prefix(dir) {
                files.push(slash_path(rel));
            }
        }
        // Sorted once here (byte order, as `select` promises), not folder by folder during the walk.
        files.sort_unstable();
        Ok(SourceTree { dir: dir.to_path_buf(), files })
    }

    /// The files a step's `inputs` select. A pattern that names a directory selects everything
    /// under it (`src` is `src/**`). A pattern that selects nothing is an error: it is almost
    /// always a typo, and silently running without the file would be worse.
    pub fn select(&self, step: &str, patterns: &[String]) -> Result<Vec<String>, InputError> {
        let sets = patterns.iter().map(|p| compile(step, p)).collect::<Result<Vec<_>, _>>()?;
        let mut matched = vec![false; sets.len()];
        // One pass over the (sorted) tree: the selection comes out sorted and without duplicates.
        let mut selected = Vec::new();
        for f in &self.files {
            let mut any = false;
            for (k, set) in sets.iter().enumerate() {
                if set.is_match(f) {
                    matched[k] = true;
                    any = true;
                }
            }
            if any {
                selected.push(f.clone());
            }
        }
        if let Some(k) = matched.iter().position(|m| !m) {
            return Err(InputError::NoMatch { step: step.to_string(), pattern: patterns[k].clone(), dir: self.dir.clone() });
        }
        Ok(selected)
    }
}

fn compile(step: &str, pattern: &str) -> Result<GlobSet, InputError> {
    let bad = |e: globset::Error| InputError::BadPattern {
        step: step.to_string(),
        pattern: pattern.to_string(),
        reason: e.kind().to_string(),
    };
    let trimmed = pattern.trim_end_matches('/');
    let mut set = GlobSetBuilder::new();
    // The pattern itself, and everything under it when it names a directory. `*` does not cross
    // `/`, as in .gitignore and GitHub Actions paths; `**` does.
    for p in [trimmed.to_string(), format!("{trimmed}/**")] {
        set.add(globset::GlobBuilder::new(&p).literal_separator(true).build().map_err(bad)?);
    }
    set.build().map_err(bad)
}

fn slash_path(p: &Path) -> String {
    // Fast path: a relative Unix path is already `/`-separated (the scan of a large tree spends
    // its time here).
    if let Some(s) = p.to_str() {
        if !s.starts_with('/') && !s.split('/').any(|c| c == "." || c == ".." || c.is_empty()) {
            return s.to_owned();
        }
    }
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The temporary folder of one run: `<tmp>/engine-run-<id>/`, holding per-step workspaces and
/// collected outputs. Removed when dropped; a folder left by a killed engine is found by
/// [`remove_stale_run_dirs`] through its `owner` file.
pub struct RunDir {
    root: tempfile::TempDir,
}

impl RunDir {
    pub fn create(run_id: &str) -> io::Result<RunDir> {
        let root = tempfile::Builder::new().prefix(&format!("{RUN_DIR_PREFIX}{run_id}-")).tempdir()?;
        fs::write(root.path().join(OWNER_FILE), crate::owner::Owner::current().to_string())?;
        Ok(RunDir { root })
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Where step `step`'s /workspace is prepared.
    pub fn workspace(&self, step: &str) -> PathBuf {
        self.root.path().join("ws").join(step)
    }

    /// Where the executor collects step `step`'s outputs; downstream workspaces copy from here.
    pub fn collected(&self, step: &str) -> PathBuf {
        self.root.path().join("out").join(step)
    }
}

/// Prepare `dest` as a step's workspace: the selected input files from `source_dir`, then the
/// collected outputs of each direct upstream step (at the same relative paths).
pub fn stage(source_dir: &Path, inputs: &[String], upstream: &[PathBuf], dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for rel in inputs {
        copy_entry(&source_dir.join(rel), &dest.join(rel))?;
    }
    for up in upstream {
        copy_tree(up, dest)?;
    }
    Ok(())
}

/// Replace `<out>/<step>` with the collected outputs of `step`.
///
/// Files are reflinked where the filesystem shares extents (no disk space used) and copied
/// otherwise; never hard-linked, since editing an exported file must not change the collected
/// outputs or the cache.
pub fn export(collected: &Path, out_dir: &Path, step: &str) -> io::Result<()> {
    let dest = out_dir.join(step);
    match fs::symlink_metadata(&dest) {
        // remove_dir_all does not follow symlinks; a symlink itself is just unlinked.
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dest)?,
        Ok(_) => fs::remove_file(&dest)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(&dest)?;
    if collected.exists() {
        export_tree(collected, &dest)?;
    }
    Ok(())
}

/// [`export`] for outputs no later step of the run needs: the collected folder itself is moved
/// (renamed) to `<out>/<step>` when both are on one filesystem, so the export costs no disk;
/// otherwise it is exported as by [`export`]. `collected` is gone afterwards.
pub fn export_by_move(collected: &Path, out_dir: &Path, step: &str) -> io::Result<()> {
    let dest = out_dir.join(step);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dest)?,
        Ok(_) => fs::remove_file(&dest)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    ensure_real_dir(out_dir)?;
    match fs::symlink_metadata(collected) {
        Ok(m) if m.is_dir() && fs::rename(collected, &dest).is_ok() => Ok(()),
        _ => export(collected, out_dir, step),
    }
}

/// [`copy_tree`], with each file reflinked where the filesystem allows.
fn export_tree(src: &Path, dest: &Path) -> io::Result<()> {
    for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")))?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let target = dest.join(rel);
        if entry.file_type().is_dir() {
            ensure_real_dir(&target)?;
        } else if entry.file_type().is_file() {
            if let Some(parent) = target.parent() {
                ensure_real_dir(parent)?;
            }
            if fs::symlink_metadata(&target).is_ok() {
                fs::remove_file(&target)?;
            }
            reflink_copy::reflink_or_copy(entry.path(), &target)?;
            // A reflink does not carry the mode as a copy does.
            fs::set_permissions(&target, entry.metadata().map_err(io::Error::other)?.permissions())?;
        } else {
            copy_entry(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Copy the content of `src` into `dest` (merging), without following symlinks.
fn copy_tree(src: &Path, dest: &Path) -> io::Result<()> {
    for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")))?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let target = dest.join(rel);
        if entry.file_type().is_dir() {
            ensure_real_dir(&target)?;
        } else {
            copy_entry(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Copy one file or symlink (as a symlink, never its target), creating parent folders.
fn copy_entry(src: &Path, dest: &Path) -> io::Result<()> {
    if let Some(parent) = dest.parent() {
        ensure_real_dir(parent)?;
    }
    let meta = fs::symlink_metadata(src)?;
    // An entry already there (an input overwritten by an upstream output) is replaced, not
    // written through: it could be a symlink.
    if fs::symlink_metadata(dest).is_ok() {
        fs::remove_file(dest)?;
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dest)?;
    } else {
        fs::copy(src, dest)?;
    }
    Ok(())
}

/// Create `dir` and its parents as real directories; refuse to descend through a symlink.
fn ensure_real_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::other(format!("{} exists and is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                ensure_real_dir(parent)?;
            }
            fs::create_dir(dir).or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
        }
        Err(e) => Err(e),
    }
}

/// Remove the temporary folders of runs whose engine process is gone. Returns their paths.
pub fn remove_stale_run_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(RUN_DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(owner) = fs::read_to_string(path.join(OWNER_FILE)) else { continue };
        let Some(owner) = crate::owner::Owner::parse(&owner) else { continue };
        if !owner.is_alive() && fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
        d
    }

    #[test]
    fn globs_select_files_and_directories() {
        let d = tree(&["src/a.c", "src/lib/b.c", "Makefile", "docs/x.md", ".engine/out/y", ".git/HEAD"]);
        let t = SourceTree::scan(d.path()).unwrap();
        assert_eq!(t.select("s", &["src/**".into()]).unwrap(), vec!["src/a.c", "src/lib/b.c"]);
        assert_eq!(t.select("s", &["src/*.c".into()]).unwrap(), vec!["src/a.c"]);
        assert_eq!(t.select("s", &["src".into(), "Makefile".into()]).unwrap(), vec!["Makefile", "src/a.c", "src/lib/b.c"]);
        assert_eq!(t.select("s", &["**".into()]).unwrap(), vec!["Makefile", "docs/x.md", "src/a.c", "src/lib/b.c"]);
    }

    #[test]
    fn a_pattern_matching_nothing_is_an_error_naming_step_and_pattern() {
        let d = tree(&["src/a.c"]);
        let t = SourceTree::scan(d.path()).unwrap();
        let err = t.select("compile", &["src/**".into(), "Makefle".into()]).unwrap_err().to_string();
        assert!(err.contains("step `compile`") && err.contains("`Makefle`"), "{err}");
    }

    #[test]
    fn stage_copies_inputs_and_upstream_outputs_and_export_replaces_old_outputs() {
        let src = tree(&["src/a.c", "Makefile"]);
        let up = tree(&["build/app"]);
        let run = tempfile::tempdir().unwrap();
        let ws = run.path().join("ws");
        stage(src.path(), &["src/a.c".into(), "Makefile".into()], &[up.path().to_path_buf()], &ws).unwrap();
        assert_eq!(fs::read_to_string(ws.join("src/a.c")).unwrap(), "src/a.c");
        assert_eq!(fs::read_to_string(ws.join("build/app")).unwrap(), "build/app");
        // Copies, not links: writing the workspace leaves the source alone.
        fs::write(ws.join("src/a.c"), "changed").unwrap();
        assert_eq!(fs::read_to_string(src.path().join("src/a.c")).unwrap(), "src/a.c");

        let out = run.path().join("out");
        fs::create_dir_all(out.join("compile/stale")).unwrap();
        export(up.path(), &out, "compile").unwrap();
        assert!(!out.join("compile/stale").exists());
        assert_eq!(fs::read_to_string(out.join("compile/build/app")).unwrap(), "build/app");
    }

    #[test]
    fn export_never_writes_through_a_symlink_in_the_out_folder() {
        let up = tree(&["f"]);
        let victim = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), out.path().join("step")).unwrap();
        export(up.path(), out.path(), "step").unwrap();
        assert!(!victim.path().join("f").exists());
        assert!(out.path().join("step/f").is_file());
    }
}
