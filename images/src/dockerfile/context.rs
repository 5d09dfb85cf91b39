//! The build context, exactly as the docker CLI sends it (`archive.TarWithOptions` with the
//! `.dockerignore` patterns and owner 0:0): the folder walked in name order without following
//! links, entries excluded as moby's pattern matcher says (an excluded folder is skipped unless
//! an exception names a path below it), the Dockerfile and `.dockerignore` always sent, modes
//! as on disk (setuid, setgid, sticky included), mtimes kept (whole seconds), symlinks as
//! symlinks, a second name of a regular file as a hard link to the first, names as bytes (not
//! necessarily UTF-8). A Dockerfile outside the context is added as `.dockerfile.<hex>` and
//! named in `.dockerignore` (so the daemon drops it from the context, as the CLI arranges).
//!
//! Never sent: sockets, FIFOs and devices (the CLI sends FIFO and device headers; the engine
//! never opens such a file and leaves them out).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::ignore::{self, MatchInfo, Matcher};

/// The most entries a context may have.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// One entry of the context as it is sent (after `.dockerignore`).
pub(crate) struct Entry {
    /// Relative to the context root, `/`-separated, as bytes.
    pub rel: Vec<u8>,
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Seconds since the epoch (0 for earlier times).
    pub mtime: u64,
    /// For a file the key covers, the SHA-256 of its content when the key was computed: sending
    /// other content fails the build rather than label the image with a key it does not match.
    pub digest: Option<[u8; 32]>,
}

pub(crate) enum Kind {
    File,
    Dir,
    /// The link's target, never followed.
    Symlink(PathBuf),
    /// A further name of a regular file sent earlier under this name.
    HardLink(Vec<u8>),
}

/// What is sent to the daemon.
pub(crate) struct Context {
    /// The Dockerfile's name in the tar.
    pub dockerfile_name: String,
    /// The Dockerfile's content.
    pub dockerfile: Vec<u8>,
    /// When the Dockerfile lies outside the context: added under `dockerfile_name`, and
    /// `.dockerignore`'s new content (the original with that name appended).
    pub outside: Option<Outside>,
    pub entries: Vec<Entry>,
    /// The context folder the entries are below.
    pub root: PathBuf,
}

/// Open a regular file of the context for reading: never a FIFO or device, and never through a
/// symlink below `root` (a folder swapped for a symlink after the walk leads nowhere).
pub(crate) fn open_entry(root: &Path, e: &Entry) -> io::Result<std::fs::File> {
    match std::str::from_utf8(&e.rel) {
        Ok(rel) => cache::safe::open_regular_beneath(root, rel),
        // Not UTF-8: the final component is still never followed.
        Err(_) => cache::safe::open_regular(&e.path, false),
    }
}

/// The additions for a Dockerfile outside the context.
pub(crate) struct Outside {
    pub dockerignore: Vec<u8>,
    /// The Dockerfile's mtime, given to both additions (the CLI uses the current time).
    pub mtime: u64,
}

/// Why the context cannot be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContextError {
    /// The walk could not read a folder or an entry.
    #[error("cannot read the context at `{path}`")]
    Walk {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: walkdir::Error,
    },
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `.dockerignore` is refused.
    #[error(transparent)]
    Ignore(#[from] ignore::IgnoreError),
    /// Too many entries.
    #[error("the context has more than {MAX_ENTRIES} entries")]
    TooLarge,
}

/// Walk `context_dir` as the docker CLI does. `dockerfile_rel` is the Dockerfile's path
/// relative to the context (`None`: outside it); `patterns` are `.dockerignore`'s.
pub(crate) fn walk(context_dir: &Path, dockerfile_rel: Option<&str>, patterns: &[String]) -> Result<Vec<Entry>, ContextError> {
    let mut patterns = patterns.to_vec();
    // The CLI's `TrimBuildFilesFromExcludes`: the Dockerfile and `.dockerignore` are always sent.
    let plain = Matcher::new(&patterns)?;
    if plain.matches_or_parent_matches(b".dockerignore") {
        patterns.push("!.dockerignore".into());
    }
    if let Some(rel) = dockerfile_rel {
        if plain.matches_or_parent_matches(rel.as_bytes()) {
            patterns.push(format!("!{rel}"));
        }
    }
    let matcher = Matcher::new(&patterns)?;

    let mut entries = Vec::new();
    let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // The folders above the current entry and what they matched.
    let mut parents: Vec<(Vec<u8>, MatchInfo)> = Vec::new();
    let mut it = walkdir::WalkDir::new(context_dir).follow_links(false).sort_by_file_name().min_depth(1).into_iter();
    while let Some(item) = it.next() {
        let item = item.map_err(|source| ContextError::Walk { path: context_dir.to_path_buf(), source })?;
        let rel_path = item.path().strip_prefix(context_dir).unwrap_or(item.path());
        let rel = rel_path.as_os_str().as_bytes().to_vec();
        let is_dir = item.file_type().is_dir();
        while let Some((dir, _)) = parents.last() {
            if rel.starts_with(dir) && rel.get(dir.len()) == Some(&b'/') {
                break;
            }
            parents.pop();
        }
        let (skip, info) = matcher.matches_using_parent(&rel, parents.last().map(|(_, i)| i));
        if is_dir {
            parents.push((rel.clone(), info));
        }
        if skip {
            if is_dir && !(matcher.has_exclusions() && matcher.exception_below(&rel)) {
                it.skip_current_dir();
                parents.pop();
            }
            continue;
        }
        let meta = item.metadata().map_err(|source| ContextError::Walk { path: item.path().to_path_buf(), source })?;
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            let target =
                std::fs::read_link(item.path()).map_err(|source| ContextError::Read { path: item.path().to_path_buf(), source })?;
            Kind::Symlink(target)
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                match seen.get(&(meta.dev(), meta.ino())) {
                    Some(first) => Kind::HardLink(first.clone()),
                    None => {
                        seen.insert((meta.dev(), meta.ino()), rel.clone());
                        Kind::File
                    }
                }
            } else {
                Kind::File
            }
        } else {
            continue;
        };
        if entries.len() >= MAX_ENTRIES {
            return Err(ContextError::TooLarge);
        }
        let mode = if matches!(kind, Kind::Symlink(_)) { 0o777 } else { meta.mode() & 0o7777 };
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        entries.push(Entry { rel, path: item.into_path(), kind, mode, mtime, digest: None });
    }
    Ok(entries)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The name a Dockerfile from outside the context gets (the CLI's is random; this one is
/// derived from the content, so that the same Dockerfile is sent alike).
pub(crate) fn outside_name(dockerfile: &[u8]) -> String {
    let digest = cache::Digest::of(dockerfile);
    format!(".dockerfile.{}", &digest.hex()[..20])
}

/// The tar the daemon's builder reads, written to `out`. Owners are 0:0, as the CLI sends them.
/// Files are opened without following a symlink and must still be regular files (never a FIFO
/// or a device); exactly the size seen is sent, even if a file grows meanwhile.
pub(crate) fn write_tar(ctx: &Context, out: &mut impl io::Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let header_for = |mode: u32, mtime: u64, kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(kind);
        h.set_size(0);
        h
    };
    let dockerignore = ctx.outside.as_ref().map(|o| (&o.dockerignore, o.mtime));
    let mut dockerignore_sent = false;
    for e in &ctx.entries {
        let name = Path::new(OsStr::from_bytes(&e.rel));
        match &e.kind {
            Kind::Dir => {
                let mut h = header_for(e.mode, e.mtime, tar::EntryType::Directory);
                tar.append_data(&mut h, name, io::empty())?;
            }
            Kind::Symlink(target) => {
                let mut h = header_for(e.mode, e.mtime, tar::EntryType::Symlink);
                tar.append_link(&mut h, name, target)?;
            }
            Kind::HardLink(first) => {
                let mut h = header_for(e.mode, e.mtime, tar::EntryType::Link);
                tar.append_link(&mut h, name, Path::new(OsStr::from_bytes(first)))?;
            }
            Kind::File if e.rel == b".dockerignore" && dockerignore.is_some() => {
                let content: &[u8] = dockerignore.map_or(&[], |(c, _)| c.as_slice());
                let mut h = header_for(e.mode, e.mtime, tar::EntryType::Regular);
                h.set_size(content.len() as u64);
                tar.append_data(&mut h, name, content)?;
                dockerignore_sent = true;
            }
            Kind::File => {
                let f = open_entry(&ctx.root, e)?;
                let size = f.metadata()?.len();
                let mut h = header_for(e.mode, e.mtime, tar::EntryType::Regular);
                h.set_size(size);
                let mut reader = Hashing { inner: io::Read::take(f, size), hash: Sha256::new() };
                tar.append_data(&mut h, name, &mut reader)?;
                if let Some(expected) = e.digest {
                    if <[u8; 32]>::from(reader.hash.finalize()) != expected {
                        let what = String::from_utf8_lossy(&e.rel).into_owned();
                        return Err(io::Error::other(format!("`{what}` changed after it was hashed for the image's key; build again")));
                    }
                }
            }
        }
    }
    if let Some((content, mtime)) = dockerignore {
        if !dockerignore_sent {
            let mut h = header_for(0o600, mtime, tar::EntryType::Regular);
            h.set_size(content.len() as u64);
            tar.append_data(&mut h, ".dockerignore", content.as_slice())?;
        }
        let mut h = header_for(0o600, mtime, tar::EntryType::Regular);
        h.set_size(ctx.dockerfile.len() as u64);
        tar.append_data(&mut h, &ctx.dockerfile_name, ctx.dockerfile.as_slice())?;
    }
    tar.into_inner()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &Path, patterns: &[String]) -> Context {
        let entries = walk(dir, Some("Dockerfile"), patterns).unwrap();
        Context { dockerfile_name: "Dockerfile".into(), dockerfile: Vec::new(), outside: None, entries, root: dir.to_path_buf() }
    }

    fn names(tar: &[u8]) -> Vec<(String, u32, u64)> {
        let mut archive = tar::Archive::new(tar);
        let entries = archive.entries().unwrap();
        entries
            .map(|e| e.unwrap())
            .map(|e| (e.path().unwrap().display().to_string(), e.header().mode().unwrap(), e.header().uid().unwrap()))
            .collect()
    }

    #[test]
    fn the_walk_keeps_modes_and_forces_the_build_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "*\n").unwrap();
        std::fs::write(dir.path().join("key"), "k").unwrap();
        for (name, mode) in [("Dockerfile", 0o644), (".dockerignore", 0o644), ("key", 0o600)] {
            std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let all = context(dir.path(), &[]);
        let mut tar = Vec::new();
        write_tar(&all, &mut tar).unwrap();
        assert_eq!(names(&tar), [(".dockerignore".into(), 0o644, 0), ("Dockerfile".into(), 0o644, 0), ("key".into(), 0o600, 0)]);
        let ignored = context(dir.path(), &["*".to_string()]);
        let sent: Vec<String> = ignored.entries.iter().map(|e| String::from_utf8_lossy(&e.rel).into_owned()).collect();
        assert_eq!(sent, [".dockerignore", "Dockerfile"], "the Dockerfile and .dockerignore are always sent");
    }

    #[test]
    fn a_file_changed_after_it_was_keyed_fails_the_sending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
        let mut ctx = context(dir.path(), &[]);
        ctx.entries[0].digest = Some([0; 32]);
        let err = write_tar(&ctx, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("changed after it was hashed"), "{err}");
        ctx.entries[0].digest = Some(Sha256::digest(b"FROM x\n").into());
        write_tar(&ctx, &mut Vec::new()).unwrap();
    }
}
