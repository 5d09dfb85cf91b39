//! Getting the workspace, the secrets and the cache mounts to the container, for both
//! transfers: preparing the host folders for a bind mount (ownership, modes), and building the
//! tar uploaded into the volumes for the archive transfer.
//!
//! Works on the engine's own prepared folders (and its persistent cache folders) only; must not
//! touch anything else on the host and does not talk to Docker.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::User;
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

/// Prefix of a run's secrets folder: `<base>/engine-secrets-<run id>-<random>/`.
pub const SECRETS_PREFIX: &str = "engine-secrets-";
/// The file in a secrets folder naming the engine that owns it (as in the run's temp folder).
pub const OWNER_FILE: &str = "owner";
/// The folder inside a secrets folder that is bind-mounted at /run/secrets.
const MOUNTED: &str = "s";
/// `statfs` type of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where secrets folders may live, best first: `/dev/shm` when it is a tmpfs, then
/// `$XDG_RUNTIME_DIR` (a per-user tmpfs on systemd hosts) when it is a folder owned by us, then
/// the temp dir (on disk: the last resort, see the README). Stale folders are looked for in all.
pub fn secrets_bases() -> Vec<PathBuf> {
    let mut bases = Vec::new();
    let shm = Path::new("/dev/shm");
    if is_tmpfs(shm) && shm.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        bases.push(shm.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if dir.is_absolute() && dir.symlink_metadata().is_ok_and(|m| m.is_dir() && m.uid() == me) {
            bases.push(dir);
        }
    }
    bases.push(std::env::temp_dir());
    bases.dedup();
    bases
}

pub fn is_tmpfs(path: &Path) -> bool {
    // `f_type`'s integer type differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == TMPFS_MAGIC)
}

/// A step's secrets on the host, for a read-only bind mount at /run/secrets: a 0700 folder owned
/// by the engine's user, named after the run and holding an `owner` file (so that the next run
/// or `engine clean` removes it if this engine dies), on a tmpfs when the host has one (see
/// [`secrets_bases`]). Inside it, the mounted folder with one file per secret, given to the step
/// user (0500 folder, 0400 files) when we are root; otherwise readable by all, which only the
/// container can reach: no other host user can traverse the 0700 parent, whatever its uid.
/// The folder is removed when the returned `TempDir` is dropped; the path is the mount source.
pub fn secrets_dir(run_id: &str, secrets: &[(String, String)], user: User) -> io::Result<(TempDir, PathBuf)> {
    let mut last = None;
    for base in secrets_bases() {
        match tempfile::Builder::new()
            .prefix(&format!("{SECRETS_PREFIX}{run_id}-"))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
        {
            Ok(dir) => {
                if !is_tmpfs(&base) {
                    tracing::warn!(folder = %base.display(), "no tmpfs for secrets (neither /dev/shm nor XDG_RUNTIME_DIR): they are written to disk while the step runs");
                }
                let mounted = fill_secrets_dir(dir.path(), secrets, user)?;
                return Ok((dir, mounted));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no folder for secrets")))
}

fn fill_secrets_dir(dir: &Path, secrets: &[(String, String)], user: User) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    // Before anything secret is written: whatever happens next, a later run can clean it up.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    fs::write(dir.join(OWNER_FILE), crate::owner::Owner::current().to_string())?;
    let root = running_as_root();
    let mounted = dir.join(MOUNTED);
    fs::create_dir(&mounted)?;
    for (name, value) in secrets {
        let path = mounted.join(name);
        // Created with its final mode: never readable by anyone else, even for an instant.
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(if root { 0o400 } else { 0o444 }).open(&path)?;
        file.write_all(value.as_bytes())?;
        if root {
            std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))?;
        } else {
            // The mode given at creation is narrowed by the umask.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
        }
    }
    if root {
        std::os::unix::fs::chown(&mounted, Some(user.uid), Some(user.gid))?;
        fs::set_permissions(&mounted, fs::Permissions::from_mode(0o500))?;
    } else {
        fs::set_permissions(&mounted, fs::Permissions::from_mode(0o755))?;
    }
    Ok(mounted)
}

/// Write the tar uploaded at `/` of a (never started) helper container that has the workspace
/// volume at /workspace, the secrets volume at /run/secrets and the cache volumes at
/// `cache_paths` to `out` (streamed to the upload: a file's contents pass through a small
/// buffer, never held whole). Extracting at `/` rather than at `/workspace` is what makes the
/// volume roots themselves owned by the step user: the daemon skips the metadata of a `.`
/// entry, but applies that of `workspace/`. A cache volume gets only its root entry, which
/// leaves its contents alone. Secrets are written from memory: they never touch the disk.
pub fn upload_tar<W: Write>(out: W, workspace: &Path, secrets: &[(String, String)], cache_paths: &[String], user: User) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
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
    tar.into_inner()?;
    Ok(())
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

fn append_dir(tar: &mut tar::Builder<impl Write>, name: &str, mode: u32, user: User) -> io::Result<()> {
    let mut header = file_header(mode, user, 0);
    header.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut header, name, io::empty())
}
