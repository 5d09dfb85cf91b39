//! The filesystem side of `copy`: matching context globs (never outside the workflow directory),
//! packing the matched files as a tar placed at their destination, and re-rooting a tar
//! downloaded from another stage at its destination. Owned by the stages work; pure file and tar
//! handling, no Docker.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use globset::GlobBuilder;

use crate::key::ContextFile;

/// One context file a copy places into the image.
#[derive(Debug, Clone)]
pub(crate) struct Matched {
    pub file: ContextFile,
    /// Absolute path in the image.
    pub target: String,
}

/// Top-level folders of the workflow directory never copied by a glob or a folder: the engine's
/// own state and VCS metadata (as for step inputs).
const SKIPPED_DIRS: &[&str] = &[".engine", ".git"];

fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '[', '{'])
}

/// The files of the workflow directory `dir` that `src` matches, each with its digest and its
/// place under `dst`, sorted by path. `dst` ending in `/`, a glob or a folder as `src` make `dst`
/// a folder, in which files keep their path relative to the glob's literal prefix (like Docker
/// `COPY`); a single literal file copied to a `dst` without `/` lands at `dst` itself. Only
/// regular files are copied: symlinks are skipped, so that nothing outside `dir` is ever read.
/// An `Err` is a sentence about the definition (`Invalid`), or an I/O failure.
pub(crate) fn match_context(dir: &Path, src: &str, dst: &str) -> Result<Vec<Matched>, String> {
    let rel = Path::new(src);
    if src.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("copy source `{src}` must be a relative path inside the workflow directory"));
    }
    let components: Vec<&str> = src.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let literal: Vec<&str> = components.iter().take_while(|c| !is_glob(c)).copied().collect();
    let prefix = literal.join("/");
    let glob = literal.len() < components.len();
    let root = dir.join(&prefix);
    let meta = match std::fs::symlink_metadata(&root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("copy source `{src}` matches no file")),
        Err(e) => return Err(format!("cannot read `{}`: {e}", root.display())),
    };
    // `lstat` follows symlinks in the folders above the last component, and a walk follows a
    // root that is a symlink: the real path must be inside the workflow directory.
    let inside = match (dir.canonicalize(), root.canonicalize()) {
        (Ok(top), Ok(real)) => real.starts_with(&top),
        _ => false,
    };
    if !inside || meta.file_type().is_symlink() {
        return Err(format!("copy source `{src}` leads outside the workflow directory through a symlink (symlinks are never followed)"));
    }
    let matcher = if glob {
        let pattern = components.join("/");
        let g = GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("copy source `{src}` is not a valid glob: {e}"))?;
        Some(g.compile_matcher())
    } else {
        None
    };
    // A literal file is the whole match; its "prefix" is its folder, so it keeps its own name.
    let single_file = !glob && meta.is_file();
    let base = if single_file { literal[..literal.len() - 1].join("/") } else { prefix.clone() };
    let mut paths = Vec::new();
    if single_file {
        paths.push(prefix.clone());
    } else if meta.is_dir() {
        let skipped = |e: &walkdir::DirEntry| {
            e.file_type().is_dir()
                && e.path().strip_prefix(dir).is_ok_and(|r| r.components().count() == 1)
                && SKIPPED_DIRS.iter().any(|s| e.file_name() == *s)
        };
        let walker = walkdir::WalkDir::new(&root).follow_links(false).sort_by_file_name().into_iter();
        for entry in walker.filter_entry(|e| !skipped(e)) {
            let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(inner) = entry.path().strip_prefix(dir) else { continue };
            let Some(path) = slash_path(inner) else { continue };
            if matcher.as_ref().is_none_or(|m| m.is_match(&path)) {
                paths.push(path);
            }
        }
    }
    if paths.is_empty() {
        return Err(format!("copy source `{src}` matches no file"));
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let abs = dir.join(&path);
        let meta = std::fs::symlink_metadata(&abs).map_err(|e| format!("cannot read `{}`: {e}", abs.display()))?;
        let digest = cache::hash::hash_file(&abs).map_err(|e| format!("cannot read `{}`: {e}", abs.display()))?;
        let target = if single_file && !dst.ends_with('/') {
            dst.to_string()
        } else {
            let below = path.strip_prefix(&base).unwrap_or(&path).trim_start_matches('/');
            format!("{}/{below}", dst.trim_end_matches('/'))
        };
        out.push(Matched { file: ContextFile { path, mode: meta.permissions().mode() & 0o7777, digest }, target });
    }
    Ok(out)
}

fn slash_path(p: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = p.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// A tar (to be extracted at `/`) holding the matched files at their targets, owned by root,
/// with their modes, and a fixed mtime so that the same files give the same layer content.
pub(crate) fn context_tar(dir: &Path, files: &[Matched]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for m in files {
        let mut f = cache::safe::open_regular(&dir.join(&m.file.path), false)?;
        let size = f.metadata()?.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(m.file.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, m.target.trim_start_matches('/'), &mut f)?;
    }
    tar.into_inner()
}

/// Re-root a tar downloaded from another stage (`GET /archive?path=src`: its entries start with
/// the last component of `src`) at `dst`: a folder's content goes into `dst`; a file goes to
/// `dst`, or into it when `dst` ends in `/`. Hard-link targets are re-rooted too.
pub(crate) fn reroot(archive: &[u8], src: &str, dst: &str) -> io::Result<Vec<u8>> {
    let name = Path::new(src.trim_end_matches('/')).file_name().map(PathBuf::from).unwrap_or_default();
    let dst_dir = PathBuf::from(dst.trim_start_matches('/'));
    let place = |path: &Path, is_dir: bool| -> PathBuf {
        let rel = path.strip_prefix(&name).unwrap_or(path);
        if rel.as_os_str().is_empty() {
            if !is_dir && dst.ends_with('/') {
                dst_dir.join(&name)
            } else {
                dst_dir.clone()
            }
        } else {
            dst_dir.join(rel)
        }
    };
    let mut out = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(archive);
    for entry in input.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        let target = place(&path, kind.is_dir());
        if target.as_os_str().is_empty() {
            // `dst` is `/` and this is the copied folder itself: `/` exists already.
            continue;
        }
        if kind.is_hard_link() || kind.is_symlink() {
            let link = entry.link_name()?.map(|l| l.into_owned()).unwrap_or_default();
            let link = if kind.is_hard_link() { place(&link, false) } else { link };
            out.append_link(&mut header, &target, &link)?;
        } else {
            out.append_data(&mut header, &target, &mut entry)?;
        }
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(archive);
        a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn globs_keep_paths_below_the_literal_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tools/sub")).unwrap();
        std::fs::write(dir.path().join("tools/a.sh"), "a").unwrap();
        std::fs::write(dir.path().join("tools/sub/b.sh"), "b").unwrap();
        let star = match_context(dir.path(), "tools/*", "/src/").unwrap();
        assert_eq!(star.iter().map(|m| m.target.as_str()).collect::<Vec<_>>(), ["/src/a.sh"]);
        let all = match_context(dir.path(), "tools/**", "/src/").unwrap();
        assert_eq!(all.iter().map(|m| m.target.as_str()).collect::<Vec<_>>(), ["/src/a.sh", "/src/sub/b.sh"]);
        let one = match_context(dir.path(), "tools/a.sh", "/bin/a").unwrap();
        assert_eq!(one[0].target, "/bin/a");
        assert_eq!(one[0].file.path, "tools/a.sh");
        let into = match_context(dir.path(), "tools/a.sh", "/bin/").unwrap();
        assert_eq!(into[0].target, "/bin/a.sh");
        std::fs::create_dir_all(dir.path().join(".engine/out")).unwrap();
        std::fs::write(dir.path().join(".engine/out/x.sh"), "x").unwrap();
        assert_eq!(match_context(dir.path(), "**/*.sh", "/s/").unwrap().len(), 2, "the engine's own folder is never copied");
        assert!(match_context(dir.path(), "nothing/*", "/x/").unwrap_err().contains("matches no file"));
        assert!(match_context(dir.path(), "../x", "/x/").is_err());
        assert!(match_context(dir.path(), "/etc/passwd", "/x/").is_err());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(match_context(dir.path(), "link/secret", "/x").unwrap_err().contains("outside"), "a folder symlink is not followed");
        assert!(match_context(dir.path(), "link", "/x/").unwrap_err().contains("outside"), "a symlinked root is not walked");
        assert_eq!(match_context(dir.path(), "**", "/x/").unwrap().len(), 2, "symlinks met in a walk are skipped");
        let tar = context_tar(dir.path(), &all).unwrap();
        assert_eq!(names(&tar), ["src/a.sh", "src/sub/b.sh"]);
    }

    #[test]
    fn reroot_places_files_and_folders() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o755);
        b.append_data(&mut h, "tool", &b"x"[..]).unwrap();
        let file = b.into_inner().unwrap();
        assert_eq!(names(&reroot(&file, "/out/tool", "/usr/bin/tool").unwrap()), ["usr/bin/tool"]);
        assert_eq!(names(&reroot(&file, "/out/tool", "/usr/bin/").unwrap()), ["usr/bin/tool"]);

        let mut b = tar::Builder::new(Vec::new());
        let mut d = tar::Header::new_gnu();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_size(0);
        d.set_mode(0o755);
        b.append_data(&mut d, "out/", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "out/f", &b"x"[..]).unwrap();
        let folder = b.into_inner().unwrap();
        assert_eq!(names(&reroot(&folder, "/out", "/opt/o").unwrap()), ["opt/o", "opt/o/f"]);
    }
}
