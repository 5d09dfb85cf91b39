//! Getting the workspace, the secrets and the cache mounts to the container, for both
//! transfers: preparing the host folders for a bind mount (ownership, modes), and building the
//! tar uploaded into the volumes for the archive transfer.
//!
//! Works on the engine's own prepared folders (and its persistent cache folders) only; must not
//! touch anything else on the host and does not talk to Docker.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dsl::User;
use tempfile::TempDir;

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Make the bind-mounted workspace writable by the step: chown it to the step user when we can
/// (root), otherwise open its modes up, since an unprivileged engine cannot give files away.
pub fn prepare_bind_workspace(dir: &Path, user: User) -> io::Result<()> {
    let root = running_as_root();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let meta = entry.path().symlink_metadata()?;
        if root {
            std::os::unix::fs::lchown(entry.path(), Some(user.uid), Some(user.gid))?;
        } else if !meta.file_type().is_symlink() {
            let extra = if meta.is_dir() { 0o777 } else { 0o666 };
            fs::set_permissions(entry.path(), fs::Permissions::from_mode((meta.mode() & 0o7777) | extra))?;
        }
    }
    Ok(())
}

/// The persistent folder of a cache mount, created if missing, resolved (the daemon wants no
/// symlink in a bind source), and writable by the step: its root is given to the step user when
/// we are root, otherwise opened up as for the workspace. Only the root: what the steps wrote
/// inside is theirs already, and a large cache is not walked on every step.
pub fn prepare_cache_dir(dir: &Path, user: User) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    if running_as_root() {
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))?;
    } else {
        let mode = fs::metadata(&dir)?.mode() & 0o7777;
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o777))?;
    }
    Ok(dir)
}

/// A 0700 folder holding one 0400 file per secret, owned by the step user (when we are root;
/// otherwise readable by all, the best an unprivileged engine can do), for a read-only bind.
pub fn secrets_dir(secrets: &[(String, String)], user: User) -> io::Result<TempDir> {
    let dir = tempfile::Builder::new().prefix("engine-secrets-").tempdir()?;
    let root = running_as_root();
    for (name, value) in secrets {
        let path = dir.path().join(name);
        fs::write(&path, value)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(if root { 0o400 } else { 0o444 }))?;
        if root {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))?;
        }
    }
    if root {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500))?;
    } else {
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// The tar uploaded at `/` of a (never started) helper container that has the workspace volume
/// at /workspace, the secrets volume at /run/secrets and the cache volumes at `cache_paths`.
/// Extracting at `/` rather than at `/workspace` is what makes the volume roots themselves owned
/// by the step user: the daemon skips the metadata of a `.` entry, but applies that of
/// `workspace/`. A cache volume gets only its root entry, which leaves its contents alone.
pub fn upload_tar(workspace: &Path, secrets: &[(String, String)], cache_paths: &[String], user: User) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    append_dir(&mut tar, "workspace/", 0o755, user)?;
    for entry in walkdir::WalkDir::new(workspace).follow_links(false).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(workspace).map_err(io::Error::other)?;
        let name = Path::new("workspace").join(rel);
        let meta = entry.path().symlink_metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_uid(user.uid.into());
        header.set_gid(user.gid.into());
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, &name, io::empty())?;
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())?;
            header.set_size(0);
            tar.append_link(&mut header, &name, &target)?;
        } else if ft.is_file() {
            let file = fs::File::open(entry.path())?;
            tar.append_data(&mut header, &name, file)?;
        }
        // Sockets, fifos and devices are never part of a workspace: skipped.
    }
    if !secrets.is_empty() {
        append_dir(&mut tar, "run/secrets/", 0o500, user)?;
        for (name, value) in secrets {
            let mut header = file_header(0o400, user, value.len() as u64);
            tar.append_data(&mut header, format!("run/secrets/{name}"), value.as_bytes())?;
        }
    }
    for path in cache_paths {
        append_dir(&mut tar, &format!("{}/", path.trim_matches('/')), 0o755, user)?;
    }
    tar.into_inner()
}

fn file_header(mode: u32, user: User, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_uid(user.uid.into());
    header.set_gid(user.gid.into());
    header.set_size(size);
    header.set_mtime(0);
    header
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, user: User) -> io::Result<()> {
    let mut header = file_header(mode, user, 0);
    header.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut header, name, io::empty())
}
