//! Copying declared outputs out of /workspace into `collect_to`, for both transfers: from the
//! bind-mounted host folder, or from a tar downloaded through the archive API.
//!
//! Everything is checked before anything is written: an output that is, or contains, a symlink
//! leading outside /workspace is rejected. Writing never follows a symlink and never leaves
//! `collect_to` (files are created with O_EXCL, parents are checked to be real directories).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::executor::StepFailure;

/// One thing to write, at a path relative to /workspace.
enum Item {
    Dir { mode: u32 },
    File { data: FileData, mode: u32 },
    Symlink { target: PathBuf },
}

enum FileData {
    Host(PathBuf),
    Bytes(Vec<u8>),
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

/// Bind transfer: collect `outputs` from the host folder that was /workspace.
pub fn from_host(workspace: &Path, outputs: &[String], collect_to: &Path) -> Result<(), StepFailure> {
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
        let mut items = Vec::new();
        for entry in walkdir::WalkDir::new(&src).follow_links(false).follow_root_links(false).sort_by_file_name() {
            let entry = entry.map_err(|e| io_failure(output, &io::Error::other(e)))?;
            let meta = entry.path().symlink_metadata().map_err(|e| io_failure(output, &e))?;
            let sub = entry.path().strip_prefix(workspace).map_err(|e| io_failure(output, &io::Error::other(e)))?;
            let ft = meta.file_type();
            let item = if ft.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(|e| io_failure(output, &e))?;
                Item::Symlink { target: check_link(output, sub, &target)? }
            } else if ft.is_dir() {
                Item::Dir { mode: meta.permissions().mode() & 0o777 }
            } else if ft.is_file() {
                Item::File { data: FileData::Host(entry.path().to_path_buf()), mode: meta.permissions().mode() & 0o777 }
            } else {
                continue;
            };
            items.push((sub.to_path_buf(), item));
        }
        write_items(output, collect_to, items)?;
    }
    Ok(())
}

/// Archive transfer: collect one output from the tar the daemon returned for
/// `/workspace/<output>` (entries named from the output's last component).
pub fn from_tar(output: &str, tar_bytes: &[u8], collect_to: &Path) -> Result<(), StepFailure> {
    let rel = check_output_path(output)?;
    let base = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut archive = tar::Archive::new(tar_bytes);
    let mut items = Vec::new();
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
        let item = match entry.header().entry_type() {
            tar::EntryType::Directory => Item::Dir { mode },
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| io_failure(output, &e))?.unwrap_or_default().into_owned();
                Item::Symlink { target: check_link(output, &sub, &target)? }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| io_failure(output, &e))?;
                Item::File { data: FileData::Bytes(data), mode }
            }
            tar::EntryType::Link => {
                // A hard link to a file earlier in the same archive: copy that file's content.
                let target = entry.link_name().map_err(|e| io_failure(output, &e))?.unwrap_or_default().into_owned();
                let target = base.join(check_output_path(&target.to_string_lossy())?);
                let data = items.iter().find_map(|(p, i): &(PathBuf, Item)| match i {
                    Item::File { data: FileData::Bytes(b), .. } if *p == target => Some(b.clone()),
                    _ => None,
                });
                let Some(data) = data else {
                    return Err(unsafe_output(output, "a hard link leads outside the output"));
                };
                Item::File { data: FileData::Bytes(data), mode }
            }
            _ => continue,
        };
        items.push((sub, item));
    }
    write_items(output, collect_to, items)
}

fn io_failure(output: &str, err: &io::Error) -> StepFailure {
    StepFailure::Environment(format!("cannot collect output `{output}`: {err}"))
}

fn write_items(output: &str, collect_to: &Path, items: Vec<(PathBuf, Item)>) -> Result<(), StepFailure> {
    for (rel, item) in items {
        write_item(collect_to, &rel, item).map_err(|e| io_failure(output, &e))?;
    }
    Ok(())
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
        Item::File { data, mode } => {
            let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(&dest)?;
            match data {
                FileData::Bytes(b) => io::Write::write_all(&mut out, &b),
                FileData::Host(src) => {
                    let mut input = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(src)?;
                    io::copy(&mut input, &mut out).map(|_| ())
                }
            }
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
