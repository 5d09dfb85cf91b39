//! The hostile-input harness: a stand-in for "the rest of the host" beside a test project, and one
//! check that nothing a hostile workflow did escaped its run. Every `hostile_*.rs` test file runs
//! its cases through it:
//!
//! ```ignore
//! let host = Host::new();
//! let p = Project::new(&workflow_using(host.secret_path()));
//! let o = p.run(&["run"]);
//! assert_eq!(code(&o), 2, "{}", text(&o.stderr));
//! assert!(text(&o.stderr).contains("outside the workflow folder"));
//! assert_nothing_escaped(&p, &host, &[]);
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{text, Project};

/// What a host file outside every workflow folder holds; must never be found in a cache, a
/// record, an export or a log.
pub const HOST_MARKER: &str = "HOST-FILE-MARKER-7d41c9e2";

/// A folder outside the project standing for the rest of the host: a 0600 file holding
/// [`HOST_MARKER`] and a `victim/` folder with a file in it (something a hostile workflow would
/// like to delete or overwrite).
pub struct Host {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, Vec<u8>>,
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::Builder::new().prefix("engine-test-host-").tempdir().unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, format!("{HOST_MARKER}\nsecond line\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("victim")).unwrap();
        std::fs::write(dir.path().join("victim/keep.txt"), "keep me\n").unwrap();
        let before = snapshot(dir.path());
        Host { dir, before }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The 0600 file holding [`HOST_MARKER`].
    pub fn secret_path(&self) -> PathBuf {
        self.path().join("secret.txt")
    }

    /// A folder a hostile workflow might try to delete or write into.
    pub fn victim(&self) -> PathBuf {
        self.path().join("victim")
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

/// Every regular file under `root` (symlinks not followed) with its content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        if entry.file_type().is_file() {
            out.insert(entry.path().strip_prefix(root).unwrap().to_path_buf(), std::fs::read(entry.path()).unwrap_or_default());
        } else if !entry.file_type().is_dir() {
            out.insert(entry.path().strip_prefix(root).unwrap().to_path_buf(), b"<not a regular file>".to_vec());
        }
    }
    out
}

/// Regular files under `root` (symlinks not followed, at most 256 MiB read from each) whose
/// content contains `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if needle.is_empty() {
        return found;
    }
    for entry in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else { continue };
        let mut data = Vec::new();
        if file.take(256 << 20).read_to_end(&mut data).is_err() {
            continue;
        }
        if memchr::memmem::find(&data, needle).is_some() {
            found.push(entry.path().to_path_buf());
        }
    }
    found
}

/// Symlinks under `root` whose target is absolute or climbs out of `root`.
pub fn escaping_links(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        if !entry.path_is_symlink() {
            continue;
        }
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let mut depth: i64 = entry.path().strip_prefix(root).map(|r| r.components().count() as i64 - 1).unwrap_or(0);
        let mut escapes = target.is_absolute();
        for c in target.components() {
            match c {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            escapes |= depth < 0;
        }
        if escapes {
            found.push((entry.path().to_path_buf(), target));
        }
    }
    found
}

/// The run ids recorded under the project's `.engine/runs`.
pub fn run_ids(p: &Project) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(p.path().join(".engine/runs")) else { return Vec::new() };
    entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Containers, volumes and networks that still carry `engine.run=<id>` for one of `ids`.
pub fn left_behind(ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for id in ids {
        let label = format!("label=engine.run={id}");
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ] {
            let o = Command::new("docker").args(&args).output().unwrap();
            left.extend(text(&o.stdout).lines().filter(|l| !l.is_empty()).map(|l| format!("{kind} {l} (run {id})")));
        }
    }
    left
}

/// The check every hostile case ends with: the host folder is exactly as it was; no host file's
/// content, and none of `secrets`, is anywhere in the project's `.engine` (cache, records, logs,
/// exports) or in the engine's temp folders; nothing in the cache or the exports is a symlink
/// leading out of them; no container, volume or network of the project's runs remains; and no
/// folder of those runs is left in the temp dir.
pub fn assert_nothing_escaped(p: &Project, host: &Host, secrets: &[&str]) {
    let now = snapshot(host.path());
    assert_eq!(now, host.before, "the host folder {} changed", host.path().display());
    let engine_dir = p.path().join(".engine");
    let mut needles: Vec<&[u8]> = vec![HOST_MARKER.as_bytes()];
    needles.extend(secrets.iter().map(|s| s.as_bytes()));
    for needle in &needles {
        let found = files_containing(&engine_dir, needle);
        assert!(found.is_empty(), "`{}` was written to {found:?}", String::from_utf8_lossy(needle));
        for extra in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            let Ok(entries) = std::fs::read_dir(&extra) else { continue };
            for e in entries.flatten() {
                // Every test's stand-in host folder holds the marker by design: only the engine's own.
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("engine-") && !name.starts_with("engine-test-host-") {
                    let found = files_containing(&e.path(), needle);
                    assert!(found.is_empty(), "`{}` was left in {found:?}", String::from_utf8_lossy(needle));
                }
            }
        }
    }
    for root in [engine_dir.join("out"), p.cache_dir()] {
        let links = escaping_links(&root);
        assert!(links.is_empty(), "symlinks leading out of {}: {links:?}", root.display());
    }
    let ids = run_ids(p);
    let left = left_behind(&ids);
    assert!(left.is_empty(), "left behind: {left:?}");
    for id in &ids {
        let dirs = super::run_dirs(id);
        assert!(dirs.is_empty(), "temp folders of run {id} left: {dirs:?}");
    }
}
