//! Recreating a manifest's outputs under a destination folder. Owns the path safety of restore:
//! a manifest is data from disk (possibly hand-edited or damaged), so no entry may name a path
//! outside the destination, pass through a symlink it created, or appear twice. Never hard-links
//! (an edit of an exported output would change the blob) and never follows a symlink it writes.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path};

use super::fsio::at;
use super::{OutputEntry, StoreError};
use crate::Digest;

/// Why the entries of a manifest cannot be restored safely, if they cannot.
pub(super) fn unsafe_entries(entries: &[OutputEntry]) -> Option<String> {
    let links: HashSet<&str> = entries
        .iter()
        .filter_map(|e| match e {
            OutputEntry::Symlink { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    let mut seen = HashSet::new();
    for entry in entries {
        let path = entry.path();
        let p = Path::new(path);
        if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Some(format!("unsafe output path `{path}`"));
        }
        if !seen.insert(path) {
            return Some(format!("output path `{path}` listed twice"));
        }
        // The same rule as at collection: a link may only lead to somewhere inside the outputs.
        if let OutputEntry::Symlink { target, .. } = entry {
            if !crate::safe::relative_link_stays_inside(p, Path::new(target)) {
                return Some(format!("output `{path}` is a symlink to `{target}`, outside the outputs"));
            }
        }
        // Writing below a symlink of the entry itself would write wherever it points.
        if p.ancestors().skip(1).any(|a| a.to_str().is_some_and(|a| links.contains(a))) {
            return Some(format!("output path `{path}` is below a symlink"));
        }
    }
    None
}

/// The first path component of every entry: what restore creates directly in `dest`.
fn top_level(entries: &[OutputEntry]) -> Vec<&str> {
    let mut tops: Vec<&str> = entries.iter().map(|e| e.path().split('/').next().unwrap_or("")).collect();
    tops.sort_unstable();
    tops.dedup();
    tops
}

/// Write `entries` (already checked by [`unsafe_entries`], blobs already verified) under `dest`.
/// On failure everything this call created in `dest` is removed again.
pub(super) fn materialise(
    entries: &[OutputEntry],
    dest: &Path,
    blob_path: impl Fn(&Digest) -> std::path::PathBuf,
) -> Result<(), StoreError> {
    let tops = top_level(entries);
    // Restore never replaces something it did not create: clean-up must not remove it later.
    if let Some(t) = tops.iter().find(|t| fs::symlink_metadata(dest.join(t)).is_ok()) {
        let path = dest.join(t);
        return Err(StoreError::Io { path, source: std::io::Error::from(std::io::ErrorKind::AlreadyExists) });
    }
    let result = write_entries(entries, dest, blob_path);
    if result.is_err() {
        for t in tops {
            let p = dest.join(t);
            let _ = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(_) => Ok(()),
            };
        }
    }
    result
}

fn write_entries(entries: &[OutputEntry], dest: &Path, blob_path: impl Fn(&Digest) -> std::path::PathBuf) -> Result<(), StoreError> {
    for entry in entries {
        let target = dest.join(entry.path());
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(at(parent))?;
        }
        match entry {
            // Created writable; the recorded mode is applied last (a 0o555 folder would refuse
            // its own children).
            OutputEntry::Dir { .. } => fs::create_dir_all(&target).map_err(at(&target))?,
            OutputEntry::File { mode, digest, .. } => {
                let blob = blob_path(digest);
                // Reflink where the filesystem allows, else a copy: never a hard link.
                reflink_copy::reflink_or_copy(&blob, &target).map_err(at(&target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(*mode & super::MODE_BITS)).map_err(at(&target))?;
            }
            OutputEntry::Symlink { target: to, .. } => symlink(to, &target).map_err(at(&target))?,
        }
    }
    // Deepest first, so a read-only parent is set after its children.
    let mut dirs: Vec<(&str, u32)> = entries
        .iter()
        .filter_map(|e| match e {
            OutputEntry::Dir { path, mode } => Some((path.as_str(), *mode & super::MODE_BITS)),
            _ => None,
        })
        .collect();
    dirs.sort_by(|a, b| b.0.cmp(a.0));
    for (path, mode) in dirs {
        let target = dest.join(path);
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(at(&target))?;
    }
    Ok(())
}
