//! File primitives for hostile trees: open only regular files (never a FIFO, socket or device,
//! never blocking on one), read with a size bound, refuse symlinks where the engine keeps its own
//! state, pin a folder by its descriptor so that a symlink swapped in for its path later cannot
//! redirect writes, and the lexical containment rule for symlink targets.
//!
//! Shared by the store (blobs, manifests, stat caches), input hashing and staging, exports and
//! output collection.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// The most the store reads of a manifest, input manifest, last-run record, stat cache or log
/// blob: everything read from the cache directory is bounded (a larger file is a miss).
pub const MAX_META_BYTES: u64 = 256 << 20;

/// An error saying that `path` is not a regular file (what it is instead), never opened.
pub fn not_regular(path: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}, not a regular file", path.display()))
}

/// What a file type is, in words, for messages.
pub fn describe(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn describe_raw(ft: FileType) -> &'static str {
    match ft {
        FileType::Symlink => "a symlink",
        FileType::Directory => "a folder",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::BlockDevice | FileType::CharacterDevice => "a device",
        FileType::RegularFile => "a regular file",
        _ => "not a regular file",
    }
}

/// Open `path` for reading only if it is a regular file. With `follow == false` a symlink (as the
/// last component) is refused rather than followed. Never blocks: a FIFO is opened non-blocking
/// and refused after `fstat`, a device is refused before it is opened (`lstat`/`stat` first) and
/// again after (`fstat`, in case it was swapped in meanwhile).
pub fn open_regular(path: &Path, follow: bool) -> io::Result<File> {
    let meta = if follow { fs::metadata(path)? } else { fs::symlink_metadata(path)? };
    if !meta.file_type().is_file() {
        return Err(not_regular(path, describe(&meta.file_type())));
    }
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP && !follow {
            not_regular(path, "a symlink")
        } else {
            io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display()))
        }
    })?;
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(path, describe_raw(ft)));
    }
    // O_NONBLOCK is left set: regular files ignore it.
    Ok(File::from(fd))
}

/// Open `root/<rel>` for reading only if it is a regular file, without following a symlink in
/// any component below `root` (`openat2` with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`): a folder of
/// the tree swapped for a symlink after it was walked cannot lead the read out of `root`. `root`
/// itself is the user's and may be reached through symlinks. On kernels without `openat2`, every
/// component of `rel` is checked with `lstat` first (racy, but still never a FIFO or device).
pub fn open_regular_beneath(root: &Path, rel: &str) -> io::Result<File> {
    use rustix::fs::ResolveFlags;
    let full = root.join(rel);
    let meta = fs::symlink_metadata(&full)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(&full, describe(&meta.file_type())));
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NOFOLLOW;
    let opened = with_root_fd(root, |root_fd| {
        rustix::fs::openat2(root_fd, rel, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS)
    })?;
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
            let mut at = root.to_path_buf();
            for c in Path::new(rel).components() {
                at.push(c);
                if fs::symlink_metadata(&at)?.file_type().is_symlink() {
                    return Err(not_regular(&at, "a symlink"));
                }
            }
            return open_regular(&full, false);
        }
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::XDEV) => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: a symlink on the way, not followed", full.display())))
        }
        Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", full.display()))),
    };
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(&full, describe_raw(ft)));
    }
    // O_NONBLOCK is left set: regular files ignore it.
    Ok(File::from(fd))
}

/// Run `f` with a descriptor (`O_PATH`) of the folder `root`, kept per thread while the same
/// root is asked for again: hashing and staging open thousands of files beneath one root.
fn with_root_fd<T>(root: &Path, f: impl FnOnce(&OwnedFd) -> T) -> io::Result<T> {
    thread_local! {
        static ROOT: std::cell::RefCell<Option<(PathBuf, OwnedFd)>> = const { std::cell::RefCell::new(None) };
    }
    ROOT.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().is_none_or(|(path, _)| path != root) {
            let fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            *cached = Some((root.to_path_buf(), fd));
        }
        let (_, fd) = cached.as_ref().expect("set above");
        Ok(f(fd))
    })
}

/// The content of the regular file `path` (symlinks not followed), refusing more than `max`
/// bytes: everything the engine reads back from its own folders is bounded.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path, false)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(too_large(path, max));
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(data)
}

fn too_large(path: &Path, max: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is larger than {max} bytes", path.display()))
}

/// Why one of the engine's own folders cannot be used.
pub fn symlinked_dir(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is a symlink; the engine never follows symlinks in its own folders (remove it)", path.display()),
    )
}

/// Create the folder `path` unless it exists, and check that it is a real folder, not a symlink
/// (to a folder or anything else) nor another kind of file. Its parent must exist.
pub fn ensure_own_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))),
    }
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(symlinked_dir(path));
    }
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} exists and is not a folder", path.display())));
    }
    Ok(())
}

/// [`ensure_own_dir`] for `base/<components...>`, one component at a time: `base` is the user's
/// (it may be reached through symlinks), every component below it is the engine's.
pub fn ensure_own_dirs(base: &Path, components: &[&str]) -> io::Result<PathBuf> {
    let mut path = base.to_path_buf();
    for c in components {
        path.push(c);
        ensure_own_dir(&path)?;
    }
    Ok(path)
}

/// A folder held open by its descriptor: [`PinnedDir::at`] names it through `/proc/self/fd`, so
/// a symlink put in place of its path after it was opened cannot redirect what is written or
/// deleted under it. Opened with `O_NOFOLLOW`: a symlink at `path` is refused.
#[derive(Debug)]
pub struct PinnedDir {
    path: PathBuf,
    fd: OwnedFd,
    via_proc: Option<PathBuf>,
}

impl PinnedDir {
    /// Open `path` as a folder without following a symlink at its last component.
    pub fn open(path: &Path) -> io::Result<PinnedDir> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                rustix::io::Errno::LOOP => symlinked_dir(path),
                rustix::io::Errno::NOTDIR if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => symlinked_dir(path),
                e => io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display())),
            },
        )?;
        let proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // Where /proc is not mounted the path itself is used (checked again before each use).
        let via_proc = fs::metadata(&proc).is_ok_and(|m| m.is_dir()).then_some(proc);
        Ok(PinnedDir { path: path.to_path_buf(), fd, via_proc })
    }

    /// The path it was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open descriptor of the folder.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A path that reaches the opened folder itself, whatever happened to [`PinnedDir::path`].
    /// Without /proc, the original path after checking it is still no symlink.
    pub fn at(&self) -> io::Result<PathBuf> {
        match &self.via_proc {
            Some(p) => Ok(p.clone()),
            None => {
                if fs::symlink_metadata(&self.path)?.file_type().is_symlink() {
                    return Err(symlinked_dir(&self.path));
                }
                Ok(self.path.clone())
            }
        }
    }
}

/// Where a symlink at `link` (relative to a root, such as /workspace or an output folder)
/// pointing at `target` lands. Returns the target to write (absolute targets inside /workspace
/// become relative), or `None` when the link leads outside the root. Lexical on purpose: nothing
/// is resolved on the host.
pub fn contained_link_target(link: &Path, target: &Path) -> Option<PathBuf> {
    let parent: Vec<_> = link.parent().map(|p| p.components().collect()).unwrap_or_default();
    let (mut stack, rest): (Vec<Component>, Vec<Component>) = if target.is_absolute() {
        let mut comps = target.components().skip(1);
        match comps.next() {
            Some(Component::Normal(first)) if first == "workspace" => (Vec::new(), comps.collect()),
            _ => return None,
        }
    } else {
        (parent.clone(), target.components().collect())
    };
    for c in rest {
        match c {
            Component::Normal(_) => stack.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                stack.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if !target.is_absolute() {
        return Some(target.to_path_buf());
    }
    // Rewrite /workspace/<stack> relative to the link's folder.
    let mut rel = PathBuf::new();
    for _ in &parent {
        rel.push("..");
    }
    for c in stack {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    Some(rel)
}

/// A relative link target that stays inside the root the link is in (no absolute target at all).
pub fn relative_link_stays_inside(link: &Path, target: &Path) -> bool {
    !target.as_os_str().is_empty() && !target.is_absolute() && contained_link_target(link, target).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_regular_refuses_fifos_devices_and_links_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let err = open_regular(&fifo, false).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        assert!(open_regular(Path::new("/dev/zero"), true).unwrap_err().to_string().contains("device"));
        fs::write(d.path().join("f"), "x").unwrap();
        symlink(d.path().join("f"), d.path().join("l")).unwrap();
        assert!(open_regular(&d.path().join("l"), false).unwrap_err().to_string().contains("symlink"));
        assert!(open_regular(&d.path().join("l"), true).is_ok());
        // Beneath a root: a folder on the way that is a symlink is not followed.
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), "y").unwrap();
        assert!(open_regular_beneath(d.path(), "sub/f").is_ok());
        symlink(d.path().join("sub"), d.path().join("via")).unwrap();
        assert!(open_regular_beneath(d.path(), "via/f").is_err());
        assert!(open_regular_beneath(d.path(), "fifo").unwrap_err().to_string().contains("FIFO"));
        assert_eq!(read_bounded(&d.path().join("f"), 1).unwrap(), b"x");
        assert!(read_bounded(&d.path().join("f"), 0).is_err());
    }

    #[test]
    fn own_dirs_refuse_symlinks_and_pinned_dirs_survive_a_swap() {
        let d = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        symlink(victim.path(), d.path().join("out")).unwrap();
        let err = ensure_own_dirs(d.path(), &["out"]).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        assert!(PinnedDir::open(&d.path().join("out")).unwrap_err().to_string().contains("is a symlink"));

        let real = ensure_own_dirs(d.path(), &["real", "sub"]).unwrap();
        let pinned = PinnedDir::open(&real).unwrap();
        fs::rename(d.path().join("real"), d.path().join("moved")).unwrap();
        fs::create_dir(d.path().join("real")).unwrap();
        symlink(victim.path(), d.path().join("real/sub")).unwrap();
        fs::write(pinned.at().unwrap().join("x"), "y").unwrap();
        assert!(d.path().join("moved/sub/x").is_file());
        assert!(!victim.path().join("x").exists());
    }

    #[test]
    fn link_targets() {
        let t = |link: &str, target: &str| contained_link_target(Path::new(link), Path::new(target)).map(|p| p.display().to_string());
        assert_eq!(t("out", "/etc/passwd"), None);
        assert_eq!(t("out", "../../etc"), None);
        assert_eq!(t("d/x", ".."), Some("..".into()));
        assert_eq!(t("d/x", "../.."), None);
        assert_eq!(t("d/x", "/workspace/d/y"), Some("../d/y".into()));
        assert!(relative_link_stays_inside(Path::new("d/x"), Path::new("../y")));
        assert!(!relative_link_stays_inside(Path::new("d/x"), Path::new("/workspace/y")));
        assert!(!relative_link_stays_inside(Path::new("x"), Path::new("/")));
    }
}
