//! Shared helpers of the registry tests: configs, stores and entries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cache::{ActionKey, Digest, Manifest, Store};
use remote::{Mode, Remote, RemoteConfig, RemoteUrl};

/// A config for `url`, credentials from `docker_config` (an empty folder when `None`, so the
/// user's own `~/.docker` is never read).
pub fn config(url: RemoteUrl, docker_config: Option<PathBuf>, empty: &Path) -> RemoteConfig {
    RemoteConfig {
        url,
        mode: Mode::ReadWrite,
        insecure: false,
        docker_config: Some(docker_config.unwrap_or_else(|| empty.to_path_buf())),
        timeout: Duration::from_secs(10),
    }
}

pub fn remote(url: RemoteUrl, tmp: &Path) -> Remote {
    Remote::new(config(url, None, tmp)).expect("a remote")
}

pub fn store(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(dir).expect("store"))
}

pub fn key(name: &str) -> ActionKey {
    ActionKey::from_digest(Digest::of(name.as_bytes()))
}

/// Store an entry under `key(name)` whose outputs are `files` (path, content) and whose log is
/// `log`.
pub fn put(store: &Store, name: &str, files: &[(&str, &[u8])], log: &[u8]) -> Manifest {
    let collected = tempfile::tempdir().expect("temp dir");
    for (path, content) in files {
        let p = collected.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("dirs");
        std::fs::write(&p, content).expect("write");
    }
    store.put(key(name), "wf", name, collected.path(), 0, log, 12, None).expect("put")
}

/// The manifest as the remote carries it: without its input manifest.
pub fn without_inputs(m: &Manifest) -> Manifest {
    let mut m = m.clone();
    m.inputs = None;
    m
}

/// Blob PUTs the registry's access log shows (monolithic uploads end in one PUT each).
pub fn blob_puts(reg: &remote::testing::TestRegistry) -> usize {
    reg.count_requests("PUT", "/blobs/uploads/")
}

/// Wait (with a deadline) until the access log shows `n` blob PUTs: it is written just after
/// each answer.
pub fn wait_blob_puts(reg: &remote::testing::TestRegistry, n: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = blob_puts(reg);
        if got >= n || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
