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

use cache::safe::PinnedDir;
use globset::{GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

/// Folder names never taken as inputs: the engine's own state and VCS metadata.
const SKIPPED_DIRS: &[&str] = &[".engine", ".git"];
const RUN_DIR_PREFIX: &str = "engine-run-";
const OWNER_FILE: &str = "owner";

/// Why a step's inputs could not be selected from the workflow folder.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// An input pattern matches no file.
    #[error("step `{step}`: input pattern `{pattern}` matches no file under {}", dir.display())]
    NoMatch {
        /// The step.
        step: String,
        /// The pattern, as written.
        pattern: String,
        /// The workflow folder searched.
        dir: PathBuf,
    },
    /// An input pattern is not a valid glob.
    #[error("step `{step}`: input pattern `{pattern}` is not a valid glob: {reason}")]
    BadPattern {
        /// The step.
        step: String,
        /// The pattern, as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The workflow folder could not be walked.
    #[error("cannot read the workflow directory {}: {source}", dir.display())]
    Walk {
        /// The folder.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A matched path is neither a regular file nor a symlink (a FIFO, a socket, a device...);
    /// it was not read.
    #[error(
        "step `{step}`: input `{path}` (pattern `{pattern}`) is {what}; only regular files and symlinks can be inputs (it was not read)"
    )]
    NotAFile {
        /// The step.
        step: String,
        /// The pattern that matched it.
        pattern: String,
        /// The path, relative to the workflow folder.
        path: String,
        /// What it is instead, in words ("a FIFO (named pipe)", "a device", ...).
        what: &'static str,
    },
    /// A matched symlink leads outside the workflow folder.
    #[error(
        "step `{step}`: input `{path}` (pattern `{pattern}`) is a symlink to `{target}`, outside the workflow folder; symlinks are copied as symlinks, never followed, so copy the file into the folder or leave the link out"
    )]
    LinkOutside {
        /// The step.
        step: String,
        /// The pattern that matched it.
        pattern: String,
        /// The link's path, relative to the workflow folder.
        path: String,
        /// The link's target, as written.
        target: String,
    },
}

/// What the scan saw at a path (by `lstat`: symlinks are not followed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Symlink,
    /// A FIFO, socket or device: never an input, never opened.
    Other(&'static str),
}

/// All files (and symlinks) under the workflow directory, relative, `/`-separated, sorted.
/// Walked once per run and matched against every step's patterns.
pub(crate) struct SourceTree {
    dir: PathBuf,
    files: Vec<(String, Kind)>,
}

impl SourceTree {
    pub fn scan(dir: &Path) -> Result<SourceTree, InputError> {
        let mut files = Vec::new();
        // Unsorted: `select` sorts what it keeps, and sorting every folder of a large tree costs.
        let walker = WalkDir::new(dir).follow_links(false).into_iter();
        let walker =
            walker.filter_entry(|e| !(e.depth() == 1 && e.file_type().is_dir() && SKIPPED_DIRS.iter().any(|s| e.file_name() == *s)));
        for entry in walker {
            let entry = entry.map_err(|e| InputError::Walk {
                dir: dir.to_path_buf(),
                source: e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")),
            })?;
            if entry.file_type().is_dir() {
                continue;
            }
            let ft = entry.file_type();
            let kind = if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                Kind::Other(cache::safe::describe(&ft))
            };
            if let Ok(rel) = entry.path().strip_prefix(dir) {
                files.push((slash_path(rel), kind));
            }
        }
        // Sorted once here (byte order, as `select` promises), not folder by folder during the walk.
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
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
        for (f, kind) in &self.files {
            let mut first = None;
            for (k, set) in sets.iter().enumerate() {
                if set.is_match(f) {
                    matched[k] = true;
                    first.get_or_insert(k);
                }
            }
            if let Some(k) = first {
                self.check_selected(step, &patterns[k], f, *kind)?;
                selected.push(f.clone());
            }
        }
        if let Some(k) = matched.iter().position(|m| !m) {
            return Err(InputError::NoMatch { step: step.to_string(), pattern: patterns[k].clone(), dir: self.dir.clone() });
        }
        Ok(selected)
    }
}

impl SourceTree {
    /// The file whose path is closest to `pattern` (a plausible typo of it), among the first
    /// `max` files; none for a pattern with glob characters.
    pub fn closest(&self, pattern: &str, max: usize) -> Option<&str> {
        if pattern.contains(['*', '?', '[', '{']) {
            return None;
        }
        self.files
            .iter()
            .take(max)
            .map(|(f, _)| (strsim::jaro_winkler(pattern, f), f.as_str()))
            .filter(|(score, _)| *score >= 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, f)| f)
    }

    /// A selected path must be a regular file, or a symlink whose target (read, never followed)
    /// stays inside the workflow folder; anything else is refused before anything is read.
    fn check_selected(&self, step: &str, pattern: &str, rel: &str, kind: Kind) -> Result<(), InputError> {
        let fail_kind = |what| InputError::NotAFile { step: step.into(), pattern: pattern.into(), path: rel.into(), what };
        match kind {
            Kind::File => Ok(()),
            Kind::Other(what) => Err(fail_kind(what)),
            Kind::Symlink => {
                let target = fs::read_link(self.dir.join(rel)).map_err(|source| InputError::Walk { dir: self.dir.clone(), source })?;
                if cache::safe::relative_link_stays_inside(Path::new(rel), &target) {
                    Ok(())
                } else {
                    Err(InputError::LinkOutside {
                        step: step.into(),
                        pattern: pattern.into(),
                        path: rel.into(),
                        target: target.display().to_string(),
                    })
                }
            }
        }
    }
}

fn compile(step: &str, pattern: &str) -> Result<GlobSet, InputError> {
    let bad =
        |e: globset::Error| InputError::BadPattern { step: step.to_string(), pattern: pattern.to_string(), reason: e.kind().to_string() };
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
pub(crate) struct RunDir {
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
pub(crate) fn stage(source_dir: &Path, inputs: &[String], upstream: &[PathBuf], dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    let reflink = Reflink::default();
    for rel in inputs {
        // Read without following a symlink anywhere below the workflow folder.
        copy_entry_with(&source_dir.join(rel), &dest.join(rel), &reflink, || cache::safe::open_regular_beneath(source_dir, rel))?;
    }
    for up in upstream {
        copy_tree(up, dest, &reflink)?;
    }
    Ok(())
}

/// The output folder of a run (`<workflow dir>/.engine/out`, or `--out DIR`), created if missing
/// and held open: `.engine` and `out` (or `DIR` itself) must be real folders, never symlinks
/// (the folders above `DIR` are the user's). Exports go through the open folder, so a symlink put
/// in its place during the run redirects nothing.
pub(crate) fn open_out_dir(workflow_dir: &Path, out: Option<&Path>) -> io::Result<PinnedDir> {
    let path = match out {
        None => cache::safe::ensure_own_dirs(workflow_dir, &[".engine", "out"])?,
        Some(dir) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", parent.display())))?;
            }
            cache::safe::ensure_own_dir(dir)?;
            dir.to_path_buf()
        }
    };
    PinnedDir::open(&path)
}

/// An exclusive lock on an output folder, held until dropped (`flock` on the folder itself: no
/// file is added to it).
pub(crate) struct OutLock {
    _fd: std::os::fd::OwnedFd,
}

/// Take the lock on `out` without waiting: `Err(holder)` when another process holds it, with
/// that process's id when the kernel says (`/proc/locks`).
pub(crate) fn try_lock_out(out: &PinnedDir) -> io::Result<Result<OutLock, Option<u32>>> {
    use rustix::fs::FlockOperation;
    use rustix::fs::{Mode, OFlags};
    // An open file of its own (not a dup, which would share the lock with the pinned folder): the
    // lock belongs to it and is released when it is dropped.
    let fd = rustix::fs::open(out.at()?, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Ok(OutLock { _fd: fd })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(Err(lock_holder(&fd))),
        Err(e) => Err(io::Error::new(io::Error::from(e).kind(), format!("cannot lock {}: {e}", out.path().display()))),
    }
}

/// The pid holding a `flock` on the file behind `fd`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`).
fn lock_holder(fd: &std::os::fd::OwnedFd) -> Option<u32> {
    let inode = rustix::fs::fstat(fd).ok()?.st_ino;
    let locks = cache::safe::read_bounded(Path::new("/proc/locks"), 16 << 20).ok()?;
    String::from_utf8_lossy(&locks).lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, dev) = (f.get(1)?, f.get(4)?, f.get(5)?);
        let ino: u64 = dev.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && ino == inode as u64).then(|| pid.parse().ok()).flatten()
    })
}

/// Replace `<out>/<step>` with the collected outputs of `step`. Works inside the pinned folder:
/// a previous export is removed without following any symlink (a symlink at `<out>/<step>` is
/// unlinked, never entered), and nothing is written through a symlink.
///
/// Files are reflinked where the filesystem shares extents (no disk space used) and copied
/// otherwise; never hard-linked, since editing an exported file must not change the collected
/// outputs or the cache.
pub(crate) fn export(collected: &Path, out: &PinnedDir, step: &str) -> io::Result<()> {
    let dest = clear_export(out, step)?;
    fs::create_dir_all(&dest)?;
    if collected.exists() {
        copy_tree(collected, &dest, &Reflink::default())?;
    }
    Ok(())
}

/// `<out>/<step>`, with a previous export removed without following any symlink (a symlink there
/// is unlinked, never entered; `remove_dir_all` does not follow symlinks).
fn clear_export(out: &PinnedDir, step: &str) -> io::Result<PathBuf> {
    let dest = out.at()?.join(step);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dest)?,
        Ok(_) => fs::remove_file(&dest)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(dest)
}

/// [`export`] for outputs no later step of the run needs: the collected folder itself is moved
/// (renamed) to `<out>/<step>` when both are on one filesystem, so the export costs no disk;
/// otherwise it is exported as by [`export`]. `collected` is gone afterwards.
pub(crate) fn export_by_move(collected: &Path, out: &PinnedDir, step: &str) -> io::Result<()> {
    let dest = clear_export(out, step)?;
    match fs::symlink_metadata(collected) {
        Ok(m) if m.is_dir() && fs::rename(collected, &dest).is_ok() => Ok(()),
        _ => export(collected, out, step),
    }
}

/// [`export`] for a cache hit whose outputs were not written out of the store (no later step of
/// the run stages from them): `<out>/<step>` is replaced by the entries, materialised from the
/// store (every blob re-hashed first).
pub(crate) fn export_from_store(store: &cache::Store, entries: &[cache::OutputEntry], out: &PinnedDir, step: &str) -> io::Result<()> {
    let dest = clear_export(out, step)?;
    fs::create_dir_all(&dest)?;
    store.materialise(entries, &dest).map_err(io::Error::other)
}

/// Whether `<out>/<step>` is a real folder (not a symlink) holding exactly `entries`: the same
/// paths, kinds, modes and link targets, and files whose contents re-hash to the same digests.
/// A hit whose export is intact is left alone: a no-op re-run writes nothing there.
pub(crate) fn export_matches(out: &PinnedDir, step: &str, entries: &[cache::OutputEntry]) -> bool {
    let Ok(dest) = out.at().map(|at| at.join(step)) else { return false };
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => {}
        _ => return false,
    }
    // The scan hashes regular files only and never follows a link; sorted by path, as entries are.
    cache::store::scan_outputs(&dest).is_ok_and(|found| found == entries)
}

/// Copy the content of `src` into `dest` (merging), without following symlinks.
fn copy_tree(src: &Path, dest: &Path, reflink: &Reflink) -> io::Result<()> {
    for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop")))?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let target = dest.join(rel);
        if entry.file_type().is_dir() {
            ensure_real_dir(&target)?;
        } else {
            copy_entry(entry.path(), &target, reflink)?;
        }
    }
    Ok(())
}

/// Whether file copies still try a reflink (sharing the source's extents, no disk used; btrfs,
/// XFS): the first refusal turns it off for the rest of the copy, so a filesystem without
/// reflinks costs one attempt, not one per file.
struct Reflink(std::cell::Cell<bool>);

impl Default for Reflink {
    fn default() -> Self {
        Reflink(std::cell::Cell::new(true))
    }
}

/// Copy one file or symlink (as a symlink, never its target), creating parent folders. Only a
/// regular file is read (a FIFO or device swapped in is refused, never opened blocking), and the
/// copy is created new (`O_EXCL|O_NOFOLLOW`): never written through something already there.
fn copy_entry(src: &Path, dest: &Path, reflink: &Reflink) -> io::Result<()> {
    copy_entry_with(src, dest, reflink, || cache::safe::open_regular(src, false))
}

/// [`copy_entry`], opening a regular file's source with `open`. A file is reflinked where the
/// filesystem allows and copied otherwise; never hard-linked (editing a copy must not change its
/// source: the cache, or another step's outputs).
fn copy_entry_with(src: &Path, dest: &Path, reflink: &Reflink, open: impl FnOnce() -> io::Result<fs::File>) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
        let mut from = open()?;
        let mode = from.metadata()?.permissions().mode() & 0o7777;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(dest)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dest.display())))?;
        let shared = reflink.0.get() && reflink_copy::reflink_file(&from, &to).is_ok();
        if !shared {
            reflink.0.set(false);
            io::copy(&mut from, &mut to)?;
        }
        // As `fs::copy` does: the source's permission bits (not limited by the umask).
        to.set_permissions(fs::Permissions::from_mode(mode))?;
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

/// Remove the temporary folders (and secrets folders) of runs whose engine process is gone.
/// Returns their paths.
pub fn remove_stale_run_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(RUN_DIR_PREFIX) {
            continue;
        }
        // Anyone can create files in the temp dir: only a real folder (not a symlink) is
        // considered, and its owner file only if it is a small regular file (never a FIFO).
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        // Ours only, and the owner file read safely: /tmp is shared, and a planted FIFO named
        // `owner` must not hang the run.
        if crate::docker::cleanup::dead_owner(&path, OWNER_FILE) && fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    // And the secrets folders of those runs (bind transfer), which live on a tmpfs.
    removed.extend(crate::docker::cleanup::remove_stale_secret_dirs());
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
        export(up.path(), &PinnedDir::open(&out).unwrap(), "compile").unwrap();
        assert!(!out.join("compile/stale").exists());
        assert_eq!(fs::read_to_string(out.join("compile/build/app")).unwrap(), "build/app");
    }

    #[test]
    fn export_never_writes_through_a_symlink_in_the_out_folder() {
        let up = tree(&["f"]);
        let victim = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), out.path().join("step")).unwrap();
        export(up.path(), &PinnedDir::open(out.path()).unwrap(), "step").unwrap();
        assert!(!victim.path().join("f").exists());
        assert!(out.path().join("step/f").is_file());
    }

    #[test]
    fn inputs_that_are_fifos_or_links_leaving_the_folder_are_refused_links_inside_are_kept() {
        let d = tree(&["src/a.c"]);
        std::os::unix::fs::symlink("a.c", d.path().join("src/inside")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", d.path().join("src/up")).unwrap();
        std::os::unix::fs::symlink("/", d.path().join("root")).unwrap();
        let fifo = d.path().join("pipe");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        let t = SourceTree::scan(d.path()).unwrap();
        assert_eq!(t.select("s", &["src/*.c".into(), "src/inside".into()]).unwrap(), vec!["src/a.c", "src/inside"]);
        let err = t.select("s", &["src".into()]).unwrap_err().to_string();
        assert!(err.contains("`src/up` (pattern `src`) is a symlink to `../../etc/passwd`, outside"), "{err}");
        let err = t.select("s", &["root".into()]).unwrap_err().to_string();
        assert!(err.contains("`root` (pattern `root`) is a symlink to `/`"), "{err}");
        let err = t.select("s", &["pipe".into()]).unwrap_err().to_string();
        assert!(err.contains("`pipe` (pattern `pipe`) is a FIFO"), "{err}");
    }

    #[test]
    fn the_output_folder_refuses_symlinks_and_is_locked_once() {
        let wf = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        fs::create_dir(wf.path().join(".engine")).unwrap();
        std::os::unix::fs::symlink(victim.path(), wf.path().join(".engine/out")).unwrap();
        let err = open_out_dir(wf.path(), None).unwrap_err().to_string();
        assert!(err.contains(".engine/out is a symlink"), "{err}");
        fs::remove_file(wf.path().join(".engine/out")).unwrap();
        let out = open_out_dir(wf.path(), None).unwrap();
        let again = open_out_dir(wf.path(), None).unwrap();
        let lock = try_lock_out(&out).unwrap().ok().unwrap();
        assert_eq!(try_lock_out(&again).unwrap().err(), Some(Some(std::process::id())));
        drop(lock);
        assert!(try_lock_out(&again).unwrap().is_ok());
    }
}
