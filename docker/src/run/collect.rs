//! Copying declared outputs out of /workspace into `collect_to`, for both transfers: from the
//! bind-mounted host folder (files are moved, since that folder is discarded after the step), or
//! from a tar streamed from the archive API (each entry written to its file as it is read; the
//! tar is never held in memory).
//!
//! An output that is, or contains, a symlink whose target — followed hop by hop through the
//! workspace tree itself, through further symlinks, at most [`MAX_HOPS`] hops — leaves /workspace
//! or loops is rejected; no symlink is created before every one is checked. The declared outputs
//! of a step may hold at most `limits.outputs` bytes of file content: counted while collecting,
//! and collection stops before writing more. Writing never follows a symlink and never leaves
//! `collect_to` (files are created with O_EXCL, parents are checked to be real directories).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::Failure as StepFailure;

/// Most symlinks followed while resolving one link target (the kernel's limit, too).
pub const MAX_HOPS: usize = 40;

/// What a path relative to /workspace is, as seen without following it.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A folder.
    Dir,
    /// Anything else that exists and is not a link (a regular file, or a special file).
    File,
    /// A symbolic link, with its target as written.
    Symlink(PathBuf),
    /// Nothing there (or a path through something that is not a folder).
    Missing,
}

/// The bytes of output files collected so far for one step, against `limits.outputs`.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }

    /// Count `n` more bytes, or fail the step if that would pass the limit.
    fn take(&mut self, n: u64) -> Result<(), StepFailure> {
        match self.used.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(StepFailure::OutputsLimit { limit: self.limit }),
        }
    }
}

/// A checked output path: relative, normal components only.
pub fn check_output_path(path: &str) -> Result<PathBuf, StepFailure> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(p.components().filter(|c| matches!(c, Component::Normal(_))).collect())
    } else {
        Err(unsafe_output(path, "an output must be a relative path inside /workspace without `..`"))
    }
}

/// The folders an output is reached through (`a`, `a/b` for `a/b/c`). Each must be a real
/// directory: a symlink there would make the copy read from wherever it points (on the host,
/// for the bind transfer).
pub fn parents(rel: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).collect();
    out.reverse();
    out
}

pub fn symlinked_parent(output: &str, parent: &Path) -> StepFailure {
    let reason = format!("`{}` is a symlink; outputs are collected only through real directories", parent.display());
    unsafe_output(output, &reason)
}

fn unsafe_output(path: &str, reason: &str) -> StepFailure {
    StepFailure::UnsafeOutput { path: path.to_string(), reason: reason.to_string() }
}

pub use cache::safe::contained_link_target;

fn check_link(output: &str, link: &Path, target: &Path) -> Result<PathBuf, StepFailure> {
    contained_link_target(link, target).ok_or_else(|| {
        let reason = format!("`{}` is a symlink to `{}`, outside /workspace", link.display(), target.display());
        unsafe_output(output, &reason)
    })
}

/// Follow the symlink at `link` (relative to /workspace) pointing at `target` through the
/// workspace as `lookup` sees it (`lookup` is given paths relative to /workspace whose every
/// folder was already found to be a real directory), hop by hop, the way the kernel would: a
/// further symlink on the way is followed too (at most [`MAX_HOPS`]), and each hop must stay in
/// /workspace. Returns the target to write (see [`contained_link_target`]) or why the link is
/// refused. `a -> b/../..` with `b -> /` is caught here, where the lexical check alone passes it.
pub fn resolve_link(link: &Path, target: &Path, lookup: &mut dyn FnMut(&Path) -> io::Result<Node>) -> Result<PathBuf, String> {
    let (l, t) = (link.display(), target.display());
    let rewritten = contained_link_target(link, target).ok_or_else(|| format!("`{l}` is a symlink to `{t}`, outside /workspace"))?;
    let mut stack: Vec<std::ffi::OsString> =
        link.parent().map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect()).unwrap_or_default();
    let mut pending = std::collections::VecDeque::new();
    let escapes =
        |via: &Path| format!("`{l}` is a symlink to `{t}`, which leads outside /workspace through the symlink `{}`", via.display());
    push_target(target, &mut stack, &mut pending).map_err(|()| escapes(link))?;
    let (mut hops, mut missing) = (0usize, false);
    while let Some(c) = pending.pop_front() {
        let Some(name) = c else {
            // `..`: every folder on the stack was checked to be a real directory (or is missing,
            // which leaves nothing to follow), so going up is lexical.
            if stack.pop().is_none() {
                return Err(format!("`{l}` is a symlink to `{t}`, which leads outside /workspace"));
            }
            continue;
        };
        stack.push(name);
        if missing {
            continue;
        }
        let here: PathBuf = stack.iter().collect();
        match lookup(&here).map_err(|e| format!("`{l}` is a symlink to `{t}` that cannot be resolved: {e}"))? {
            Node::Dir | Node::File => {}
            Node::Missing => missing = true,
            Node::Symlink(next) => {
                stack.pop();
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(format!("`{l}` is a symlink to `{t}` that does not resolve: more than {MAX_HOPS} symlinks (a loop)"));
                }
                push_target(&next, &mut stack, &mut pending).map_err(|()| escapes(&here))?;
            }
        }
    }
    Ok(rewritten)
}

/// Put the components of a symlink target in front of `pending` (`None` for `..`); an absolute
/// target restarts from /workspace, and one not under /workspace is an error.
fn push_target(
    target: &Path,
    stack: &mut Vec<std::ffi::OsString>,
    pending: &mut std::collections::VecDeque<Option<std::ffi::OsString>>,
) -> Result<(), ()> {
    let mut comps = target.components().peekable();
    if target.is_absolute() {
        comps.next();
        match comps.next() {
            Some(Component::Normal(first)) if first == "workspace" => stack.clear(),
            _ => return Err(()),
        }
    }
    let mut front = Vec::new();
    for c in comps {
        match c {
            Component::Normal(n) => front.push(Some(n.to_owned())),
            Component::ParentDir => front.push(None),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(()),
        }
    }
    for c in front.into_iter().rev() {
        pending.push_front(c);
    }
    Ok(())
}

fn check_chain(
    output: &str,
    link: &Path,
    target: &Path,
    lookup: &mut dyn FnMut(&Path) -> io::Result<Node>,
) -> Result<PathBuf, StepFailure> {
    resolve_link(link, target, lookup).map_err(|reason| unsafe_output(output, &reason))
}

/// What `rel` (relative to the folder `root`) is, never following a symlink: callers only ask
/// for paths whose folders are real directories.
fn lstat_node(root: &Path, rel: &Path) -> io::Result<Node> {
    match root.join(rel).symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => Ok(Node::Symlink(fs::read_link(root.join(rel))?)),
        Ok(m) if m.is_dir() => Ok(Node::Dir),
        Ok(_) => Ok(Node::File),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(Node::Missing),
        Err(e) => Err(e),
    }
}

/// One thing to write, at a path relative to /workspace (bind transfer).
enum Item {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32 },
    Symlink { target: PathBuf },
}

/// Bind transfer: collect `outputs` from the host folder that was /workspace, at most `limit`
/// bytes of file content. Everything is checked first (paths, symlink chains, the size); then
/// files are moved (renamed) into `collect_to` — the workspace is discarded after the step, so
/// this costs no disk — or copied where a rename is not possible.
pub fn from_host(workspace: &Path, outputs: &[String], collect_to: &Path, limit: u64) -> Result<(), StepFailure> {
    let mut budget = Budget::new(limit);
    let mut lookup = |rel: &Path| lstat_node(workspace, rel);
    let mut planned = Vec::new();
    for output in outputs {
        let rel = check_output_path(output)?;
        for parent in parents(&rel) {
            match workspace.join(&parent).symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => return Err(symlinked_parent(output, &parent)),
                Ok(_) => {}
                Err(_) => return Err(StepFailure::MissingOutput(output.clone())),
            }
        }
        let src = workspace.join(&rel);
        if src.symlink_metadata().is_err() {
            return Err(StepFailure::MissingOutput(output.clone()));
        }
        for entry in walkdir::WalkDir::new(&src).follow_links(false).follow_root_links(false).sort_by_file_name() {
            let entry = entry.map_err(|e| io_failure(output, &io::Error::other(e)))?;
            let meta = entry.path().symlink_metadata().map_err(|e| io_failure(output, &e))?;
            let sub = entry.path().strip_prefix(workspace).map_err(|e| io_failure(output, &io::Error::other(e)))?;
            let ft = meta.file_type();
            let item = if ft.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(|e| io_failure(output, &e))?;
                Item::Symlink { target: check_chain(output, sub, &target, &mut lookup)? }
            } else if ft.is_dir() {
                Item::Dir { mode: meta.permissions().mode() & 0o777 }
            } else if ft.is_file() {
                budget.take(meta.len())?;
                Item::File { src: entry.path().to_path_buf(), mode: meta.permissions().mode() & 0o777 }
            } else {
                continue;
            };
            planned.push((output, sub.to_path_buf(), item));
        }
    }
    for (output, rel, item) in planned {
        write_item(collect_to, &rel, item).map_err(|e| io_failure(output, &e))?;
    }
    Ok(())
}

/// A symlink read from an archive, created once every output is in and its chain was checked.
pub struct PendingLink {
    output: String,
    rel: PathBuf,
    target: PathBuf,
}

/// Archive transfer: collect one output from the tar the daemon streams for
/// `/workspace/<output>` (entries named from the output's last component), reading `tar` as it
/// arrives: each file is written as its entry is read, its bytes counted against `budget` (the
/// step fails before writing past it). Symlinks are only noted in `links`: [`finish_links`]
/// checks and creates them.
pub fn from_tar(
    output: &str,
    tar: impl Read,
    collect_to: &Path,
    budget: &mut Budget,
    links: &mut Vec<PendingLink>,
) -> Result<(), StepFailure> {
    let rel = check_output_path(output)?;
    let base = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut archive = tar::Archive::new(tar);
    let mut files = HashSet::new();
    let entries = archive.entries().map_err(|e| io_failure(output, &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_failure(output, &e))?;
        let name = entry.path().map_err(|e| io_failure(output, &e))?.into_owned();
        let name = check_output_path(&name.to_string_lossy())?;
        let sub = base.join(&name);
        if !sub.starts_with(&rel) {
            return Err(unsafe_output(output, "the daemon returned an entry outside the output"));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                let dir = ensure_dirs(collect_to, &sub).map_err(|e| io_failure(output, &e))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700)).map_err(|e| io_failure(output, &e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| io_failure(output, &e))?.unwrap_or_default().into_owned();
                // Lexically outside: refused before anything else is read.
                check_link(output, &sub, &target)?;
                links.push(PendingLink { output: output.to_string(), rel: sub, target });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                budget.take(size)?;
                let mut out = create_file(collect_to, &sub, mode).map_err(|e| io_failure(output, &e))?;
                copy_exact(&mut entry, &mut out, size).map_err(|e| io_failure(output, &e))?;
                files.insert(sub);
            }
            tar::EntryType::Link => {
                // A hard link to a file earlier in the same archive: copy that file, already
                // written, rather than keep any content in memory.
                let target = entry.link_name().map_err(|e| io_failure(output, &e))?.unwrap_or_default().into_owned();
                let target = base.join(check_output_path(&target.to_string_lossy())?);
                if !files.contains(&target) {
                    return Err(unsafe_output(output, "a hard link leads outside the output"));
                }
                let copied = (|| {
                    let input = cache::safe::open_regular(&collect_to.join(&target), false)?;
                    let len = input.metadata()?.len();
                    Ok::<_, io::Error>((Read::take(input, len), len))
                })();
                let (mut input, len) = copied.map_err(|e| io_failure(output, &e))?;
                budget.take(len)?;
                let mut out = create_file(collect_to, &sub, mode).map_err(|e| io_failure(output, &e))?;
                io::copy(&mut input, &mut out).map_err(|e| io_failure(output, &e))?;
                files.insert(sub);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copy exactly `len` bytes (what the entry's header announced and the budget counted).
fn copy_exact(input: &mut impl Read, out: &mut fs::File, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut input.take(len), out)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ended inside a file"));
    }
    out.flush()
}

/// Archive transfer, after every output's tar was read: check each symlink's chain — through the
/// collected files for paths inside the outputs, through `outside` (the stopped container) for
/// the rest of /workspace — and create it. Nothing is created before all are checked.
pub fn finish_links(
    collect_to: &Path,
    outputs: &[String],
    links: Vec<PendingLink>,
    outside: &mut dyn FnMut(&Path) -> io::Result<Node>,
) -> Result<(), StepFailure> {
    let roots: Vec<PathBuf> = outputs.iter().filter_map(|o| check_output_path(o).ok()).collect();
    let pending: HashMap<PathBuf, PathBuf> = links.iter().map(|l| (l.rel.clone(), l.target.clone())).collect();
    let mut lookup = |rel: &Path| -> io::Result<Node> {
        if let Some(target) = pending.get(rel) {
            return Ok(Node::Symlink(target.clone()));
        }
        if roots.iter().any(|r| rel.starts_with(r)) {
            lstat_node(collect_to, rel)
        } else {
            outside(rel)
        }
    };
    let mut checked = Vec::new();
    for link in &links {
        checked.push(check_chain(&link.output, &link.rel, &link.target, &mut lookup)?);
    }
    for (link, target) in links.iter().zip(checked) {
        write_item(collect_to, &link.rel, Item::Symlink { target }).map_err(|e| io_failure(&link.output, &e))?;
    }
    Ok(())
}

/// Remove everything inside `dir` (not following symlinks), keeping `dir`.
pub fn empty_folder(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn io_failure(output: &str, err: &io::Error) -> StepFailure {
    StepFailure::Environment(format!("cannot collect output `{output}`: {err}"))
}

/// Create the real directories leading to `rel` under `root`, refusing anything that is not a
/// plain directory (a symlink planted there must not redirect the write).
fn ensure_dirs(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match cur.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::other(format!("`{}` exists and is not a directory", cur.display()))),
            Err(_) => fs::create_dir(&cur)?,
        }
    }
    Ok(cur)
}

/// A new file at `rel` under `root` (O_EXCL: never through an existing entry).
fn create_file(root: &Path, rel: &Path, mode: u32) -> io::Result<fs::File> {
    let parent = ensure_dirs(root, rel.parent().unwrap_or(Path::new("")))?;
    let name = rel.file_name().ok_or_else(|| io::Error::other("empty output path"))?;
    fs::OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(parent.join(name))
}

fn write_item(root: &Path, rel: &Path, item: Item) -> io::Result<()> {
    let parent = ensure_dirs(root, rel.parent().unwrap_or(Path::new("")))?;
    let name = rel.file_name().ok_or_else(|| io::Error::other("empty output path"))?;
    let dest = parent.join(name);
    match item {
        Item::Dir { mode } => {
            ensure_dirs(root, rel)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
        }
        Item::Symlink { target } => std::os::unix::fs::symlink(target, &dest),
        Item::File { src, mode } => {
            if dest.symlink_metadata().is_ok() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("`{}` exists", dest.display())));
            }
            // A move where possible: the workspace is discarded after the step anyway. The
            // file keeps only its permission bits (no set-id), like a copy would.
            if fs::rename(&src, &dest).is_ok() {
                if fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o600)).is_ok() {
                    return Ok(());
                }
                // Not ours to chmod: put it back and copy it instead.
                fs::rename(&dest, &src)?;
            }
            let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(&dest)?;
            let mut input = cache::safe::open_regular(&src, false)?;
            io::copy(&mut input, &mut out).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(link: &str, target: &str) -> Option<String> {
        contained_link_target(Path::new(link), Path::new(target)).map(|p| p.display().to_string())
    }

    #[test]
    fn link_targets() {
        assert_eq!(t("out", "/etc/passwd"), None);
        assert_eq!(t("out", "../../etc"), None);
        assert_eq!(t("d/x", "/etc"), None);
        assert_eq!(t("d/x", ".."), Some("..".into()));
        assert_eq!(t("d/x", "../.."), None);
        assert_eq!(t("d/x", "/workspace/d/y"), Some("../d/y".into()));
        assert_eq!(t("x", "/workspace/../etc"), None);
        assert_eq!(t("d/x", "y"), Some("y".into()));
    }

    #[test]
    fn symlink_chains_are_followed_through_the_tree() {
        let ws = tempfile::tempdir().unwrap();
        let w = ws.path();
        fs::create_dir_all(w.join("o/d")).unwrap();
        std::os::unix::fs::symlink("/", w.join("b")).unwrap();
        std::os::unix::fs::symlink("/workspace/o/d", w.join("abs")).unwrap();
        std::os::unix::fs::symlink("l2", w.join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", w.join("l2")).unwrap();
        let r = |link: &str, target: &str| resolve_link(Path::new(link), Path::new(target), &mut |rel| lstat_node(w, rel));
        // Lexically inside, but through `b -> /`.
        let e = r("o/a", "../b/..").unwrap_err();
        assert!(e.contains("through the symlink `b`"), "{e}");
        assert!(r("o/a", "../b").is_err());
        assert!(r("o/a", "../b/etc/passwd").is_err());
        // A loop.
        assert!(r("o/a", "../l1").unwrap_err().contains("more than 40"));
        // Inside all the way, through an absolute /workspace link; dangling inside is fine.
        assert_eq!(r("o/a", "../abs/x").unwrap(), PathBuf::from("../abs/x"));
        assert_eq!(r("o/a", "d/../missing/x").unwrap(), PathBuf::from("d/../missing/x"));
        assert!(r("o/a", "missing/../../..").is_err());
    }

    #[test]
    fn outputs_over_the_limit_are_refused_before_anything_is_moved() {
        let ws = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::create_dir(ws.path().join("o")).unwrap();
        fs::write(ws.path().join("o/a"), vec![0u8; 600]).unwrap();
        fs::write(ws.path().join("o/b"), vec![0u8; 600]).unwrap();
        let e = from_host(ws.path(), &["o".into()], to.path(), 1000).unwrap_err();
        assert_eq!(e, StepFailure::OutputsLimit { limit: 1000 });
        assert!(ws.path().join("o/a").exists() && !to.path().join("o/a").exists());
        from_host(ws.path(), &["o".into()], to.path(), 1200).unwrap();
        assert_eq!(fs::read(to.path().join("o/b")).unwrap().len(), 600);
        assert!(!ws.path().join("o/a").exists(), "moved, not copied");
    }

    #[test]
    fn parent_folders() {
        assert_eq!(parents(Path::new("a/b/c")), vec![PathBuf::from("a"), PathBuf::from("a/b")]);
        assert!(parents(Path::new("c")).is_empty());
    }

    #[test]
    fn output_paths() {
        assert!(check_output_path("/etc").is_err());
        assert!(check_output_path("a/../../b").is_err());
        assert_eq!(check_output_path("./a/b").ok(), Some(PathBuf::from("a/b")));
    }
}
