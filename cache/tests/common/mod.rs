//! Helpers shared by the store's tests: keys, a store in a temp folder, files with modes and
//! ages.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cache::{ActionKey, Digest, Store};
use filetime::FileTime;
use tempfile::TempDir;

/// The key named `s` (the digest of its text).
pub fn key(s: &str) -> ActionKey {
    ActionKey::from_digest(Digest::of(s.as_bytes()))
}

/// A new store in a temp folder, which lives as long as the returned `TempDir`.
pub fn store() -> (TempDir, Store) {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Write `content` at `path` (its folders created) with permission bits `mode`.
pub fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Make `path` last modified `secs_ago` seconds ago.
pub fn set_mtime(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    filetime::set_file_mtime(path, FileTime::from_system_time(t)).unwrap();
}
