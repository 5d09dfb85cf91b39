//! The on-disk store: round trips, digests, corruption, concurrency (threads and processes), gc,
//! verify, list order, last-run records, path safety. Temp folders only, no Docker.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex};

use cache::store::{sanitise, Manifest, OutputEntry, StoreError};
use cache::{ActionKey, Digest, KeyComponents, Store};
use tempfile::TempDir;

use common::{key, set_mtime, store, write};

/// Serialises the tests that read or change environment variables.
static ENV: Mutex<()> = Mutex::new(());

const CHILD_DIR: &str = "ENGINE_STORE_TEST_CHILD_DIR";
const CHILD_ID: &str = "ENGINE_STORE_TEST_CHILD_ID";

/// A folder of outputs: modes 0o644 and 0o755, nested folders, an empty folder, a relative link.
fn sample_outputs(root: &Path, tag: &str) {
    write(&root.join("bin/tool"), format!("#!/bin/sh\necho {tag}\n").as_bytes(), 0o755);
    write(&root.join("share/doc/readme.txt"), format!("readme {tag}").as_bytes(), 0o644);
    write(&root.join("a.txt"), b"a", 0o600);
    fs::create_dir_all(root.join("empty")).unwrap();
    symlink("../share/doc/readme.txt", root.join("bin/readme")).unwrap();
}

/// Every path under `root` with its kind, permission bits and content or link target.
fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let v = if meta.file_type().is_symlink() {
            ('l', 0, fs::read_link(e.path()).unwrap().into_os_string().into_encoded_bytes())
        } else if meta.is_dir() {
            ('d', mode, vec![])
        } else {
            ('f', mode, fs::read(e.path()).unwrap())
        };
        out.insert(rel, v);
    }
    out
}

fn put(store: &Store, k: ActionKey, outputs: &Path) -> Manifest {
    store.put(k, "wf", "build", outputs, 0, b"log line\n", 12, None).unwrap()
}

fn file_digest(m: &Manifest, path: &str) -> Digest {
    m.entries
        .iter()
        .find_map(|e| match e {
            OutputEntry::File { path: p, digest, .. } if p == path => Some(*digest),
            _ => None,
        })
        .unwrap()
}

/// Overwrite a (read-only) blob in place, as a disk error or a careless person would.
fn tamper(blob: &Path, content: &[u8]) {
    fs::set_permissions(blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(blob, content).unwrap();
}

/// A fresh store holding the sample outputs under `k`, with the source folder.
fn stored_sample(tag: &str, k: ActionKey) -> (TempDir, Store, TempDir, Manifest) {
    let (dir, store) = store();
    let src = TempDir::new().unwrap();
    sample_outputs(src.path(), tag);
    let m = put(&store, k, src.path());
    (dir, store, src, m)
}

fn manifest(entries: Vec<OutputEntry>) -> Manifest {
    Manifest {
        key: key("k"),
        workflow: "wf".into(),
        step: "s".into(),
        entries,
        exit_code: 0,
        log: Digest::of(b"log"),
        inputs: None,
        created: 1,
        duration_ms: 2,
    }
}

#[test]
fn open_creates_the_layout() {
    let (dir, _store) = store();
    for sub in ["blobs", "actions", "inputs", "last", "stat", "mounts", "tmp"] {
        assert!(dir.path().join("v1").join(sub).is_dir(), "{sub}");
    }
}

#[test]
fn round_trip_is_byte_identical_with_modes() {
    let (_d, store, src, m) = stored_sample("one", key("a"));

    let paths: Vec<&str> = m.entries.iter().map(|e| e.path()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(paths.contains(&"empty") && paths.contains(&"bin/readme"));
    assert!(m.entries.contains(&OutputEntry::Symlink { path: "bin/readme".into(), target: "../share/doc/readme.txt".into() }));
    assert_eq!(fs::read(store.blob_path(&m.log)).unwrap(), b"log line\n");
    let blob = store.blob_path(&file_digest(&m, "bin/tool"));
    assert_eq!(fs::metadata(&blob).unwrap().permissions().mode() & 0o777, 0o444);

    let got = store.get(&key("a")).unwrap();
    assert_eq!(got, m);
    let dest = TempDir::new().unwrap();
    store.restore(&got, dest.path()).unwrap();
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
    // A copy or reflink, never a hard link to the blob.
    assert_eq!(fs::metadata(dest.path().join("bin/tool")).unwrap().nlink(), 1);
}

#[test]
fn read_only_folders_are_restored_with_their_mode() {
    let (_d, store) = store();
    let src = TempDir::new().unwrap();
    write(&src.path().join("ro/f"), b"x", 0o644);
    fs::set_permissions(src.path().join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let m = put(&store, key("ro"), src.path());
    let dest = TempDir::new().unwrap();
    store.restore(&m, dest.path()).unwrap();
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
    for d in [src.path(), dest.path()] {
        fs::set_permissions(d.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn an_existing_blob_is_not_rewritten() {
    let (_d, store, src, m1) = stored_sample("same", key("1"));
    let blob = store.blob_path(&file_digest(&m1, "a.txt"));
    let ino = fs::metadata(&blob).unwrap().ino();
    let m2 = put(&store, key("2"), src.path());
    assert_eq!(m1.entries, m2.entries);
    assert_eq!(fs::metadata(&blob).unwrap().ino(), ino);
    assert_eq!(fs::read_dir(store.dir().join("v1/tmp")).unwrap().count(), 0, "no temp files left");
}

#[test]
fn outputs_digest_is_stable_and_sensitive() {
    let file = |path: &str, mode: u32, content: &[u8]| OutputEntry::File {
        path: path.into(),
        mode,
        digest: Digest::of(content),
        size: content.len() as u64,
    };
    let link = |path: &str, target: &str| OutputEntry::Symlink { path: path.into(), target: target.into() };
    let dir = |path: &str, mode: u32| OutputEntry::Dir { path: path.into(), mode };
    let base = manifest(vec![dir("d", 0o755), file("d/f", 0o644, b"x"), link("l", "d/f")]);
    let d = base.outputs_digest();
    assert_eq!(d, base.clone().outputs_digest());

    // Not the key, the log or the times.
    let mut other = base.clone();
    other.key = key("other");
    other.log = Digest::of(b"other");
    other.created = 99;
    other.duration_ms = 99;
    other.step = "x".into();
    assert_eq!(other.outputs_digest(), d);

    for changed in [
        vec![dir("d", 0o755), file("d/f", 0o644, b"y"), link("l", "d/f")],
        vec![dir("d", 0o755), file("d/f", 0o755, b"x"), link("l", "d/f")],
        vec![dir("d", 0o755), file("d/g", 0o644, b"x"), link("l", "d/f")],
        vec![dir("d", 0o755), file("d/f", 0o644, b"x"), link("l", "d/g")],
        vec![dir("d", 0o700), file("d/f", 0o644, b"x"), link("l", "d/f")],
        vec![dir("d", 0o755), file("d/f", 0o644, b"x")],
        vec![dir("d", 0o755), file("d/f", 0o644, b"x"), file("l", 0o644, b"d/f")],
    ] {
        assert_ne!(manifest(changed.clone()).outputs_digest(), d, "{changed:?}");
    }
    // Path/target boundaries are unambiguous.
    assert_ne!(manifest(vec![link("ab", "c")]).outputs_digest(), manifest(vec![link("a", "bc")]).outputs_digest());

    // Same outputs put twice (different keys, logs and times): same digest.
    let (_d, store) = store();
    let src = TempDir::new().unwrap();
    sample_outputs(src.path(), "z");
    let m1 = store.put(key("1"), "wf", "a", src.path(), 0, b"one", 1, None).unwrap();
    let m2 = store.put(key("2"), "wf", "b", src.path(), 0, b"two", 2, None).unwrap();
    assert_eq!(m1.outputs_digest(), m2.outputs_digest());
}

#[test]
fn corrupt_blob_is_a_miss_and_the_next_put_repairs_it() {
    let (_d, store, src, m) = stored_sample("c", key("c"));
    let blob = store.blob_path(&file_digest(&m, "share/doc/readme.txt"));
    tamper(&blob, b"tampered");

    let dest = TempDir::new().unwrap();
    let got = store.get(&key("c")).unwrap();
    match store.restore(&got, dest.path()) {
        Err(StoreError::Corrupt { key: k, .. }) => assert_eq!(k, key("c")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!blob.exists());
    assert!(!store.manifest_path(&key("c")).exists());
    assert!(store.get(&key("c")).is_none());
    assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0, "no partial files");

    put(&store, key("c"), src.path());
    let got = store.get(&key("c")).unwrap();
    store.restore(&got, dest.path()).unwrap();
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
}

#[test]
fn missing_blob_or_damaged_manifest_is_a_miss() {
    let (_d, store, src, m) = stored_sample("m", key("m"));
    fs::remove_file(store.blob_path(&file_digest(&m, "a.txt"))).unwrap();
    assert!(store.get(&key("m")).is_none());

    put(&store, key("m"), src.path());
    assert!(store.get(&key("m")).is_some());
    fs::write(store.manifest_path(&key("m")), b"{\"key\": trunc").unwrap();
    assert!(store.get(&key("m")).is_none());
    assert!(!store.manifest_path(&key("m")).exists());
    assert!(store.get(&key("never")).is_none());
}

#[test]
fn restore_never_writes_outside_dest() {
    let (_d, store) = store();
    let src = TempDir::new().unwrap();
    write(&src.path().join("f"), b"payload", 0o644);
    let good = put(&store, key("p"), src.path());
    let d = file_digest(&good, "f");
    let outside = TempDir::new().unwrap();
    let abs = outside.path().join("abs");
    let file = |path: &str| OutputEntry::File { path: path.into(), mode: 0o644, digest: d, size: 7 };

    for entries in [
        vec![file("../x")],
        vec![file("a/../../x")],
        vec![file(abs.to_str().unwrap())],
        vec![file("./f")],
        vec![file("")],
        vec![OutputEntry::Dir { path: "../d".into(), mode: 0o755 }],
        vec![OutputEntry::Symlink { path: "../l".into(), target: "f".into() }],
        // Links leading out of the outputs: never restored, whatever else the entry holds.
        vec![file("f"), OutputEntry::Symlink { path: "passwd".into(), target: "/etc/passwd".into() }],
        vec![OutputEntry::Symlink { path: "d/up".into(), target: "../../x".into() }],
        vec![OutputEntry::Symlink { path: "ws".into(), target: "/workspace/f".into() }],
        // A link of the entry pointing outside, then a file below it.
        vec![OutputEntry::Symlink { path: "l".into(), target: outside.path().to_str().unwrap().into() }, file("l/evil")],
        vec![file("f"), file("f")],
    ] {
        // Hand-edited on disk: it still parses, and get returns it.
        let mut m = good.clone();
        m.entries = entries.clone();
        fs::write(store.manifest_path(&key("p")), serde_json::to_vec(&m).unwrap()).unwrap();
        let m = store.get(&key("p")).unwrap();
        let parent = TempDir::new().unwrap();
        let dest = parent.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let r = store.restore(&m, &dest);
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{entries:?}: {r:?}");
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "{entries:?}");
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1, "{entries:?}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "{entries:?}");
        assert!(!store.manifest_path(&key("p")).exists(), "a damaged manifest is removed");
        assert!(store.blob_path(&d).exists(), "its blobs are fine");
    }
}

#[test]
fn concurrent_threads_all_succeed_and_readers_never_see_partial_entries() {
    let (_d, store) = store();
    let store = Arc::new(store);
    let src = TempDir::new().unwrap();
    sample_outputs(src.path(), "shared");
    write(&src.path().join("big.bin"), &vec![7u8; 512 * 1024], 0o644);
    let expected = snapshot(src.path());
    let src = Arc::new(src.path().to_path_buf());
    let barrier = Arc::new(Barrier::new(9));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let reader = {
        let (store, done, expected, barrier) = (store.clone(), done.clone(), expected.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let mut hits = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                if let Some(m) = store.get(&key("same")) {
                    let dest = TempDir::new().unwrap();
                    store.restore(&m, dest.path()).unwrap();
                    assert_eq!(snapshot(dest.path()), expected);
                    hits += 1;
                }
                if finished {
                    return hits;
                }
            }
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (store, src, barrier) = (store.clone(), src.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..5 {
                    store.put(key("same"), "wf", "s", &src, 0, b"log", 1, None).unwrap();
                    let own = TempDir::new().unwrap();
                    write(&own.path().join("f"), format!("{i}-{round}").as_bytes(), 0o644);
                    store.put(key(&format!("own-{i}-{round}")), "wf", "s", own.path(), 0, b"log", 1, None).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() >= 1);
    assert_eq!(store.list().len(), 1 + 8 * 5);
    let report = store.verify().unwrap();
    assert!(report.corrupt_blobs.is_empty() && report.dropped_entries.is_empty());
}

/// Worker for `two_processes_share_one_store`: does nothing unless started by it.
#[test]
fn child_process_worker() {
    let (dir, id) = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        (std::env::var_os(CHILD_DIR), std::env::var(CHILD_ID).unwrap_or_default())
    };
    let Some(dir) = dir else { return };
    let store = Store::open(Path::new(&dir)).unwrap();
    let src = TempDir::new().unwrap();
    sample_outputs(src.path(), "shared");
    for round in 0..20 {
        store.put(key("same"), "wf", "s", src.path(), 0, b"log", 1, None).unwrap();
        let own = TempDir::new().unwrap();
        write(&own.path().join("f"), format!("{id}-{round}").as_bytes(), 0o644);
        store.put(key(&format!("proc-{id}-{round}")), "wf", "s", own.path(), 0, b"log", 1, None).unwrap();
        if let Some(m) = store.get(&key("same")) {
            let dest = TempDir::new().unwrap();
            store.restore(&m, dest.path()).unwrap();
        }
    }
}

#[test]
fn two_processes_share_one_store() {
    let (dir, store) = store();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|id| {
            Command::new(&exe)
                .args(["child_process_worker", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_ID, id.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "the worker ran");
    }
    assert_eq!(store.list().len(), 1 + 2 * 20);
    for k in ["same", "proc-0-19", "proc-1-0"] {
        let m = store.get(&key(k)).unwrap();
        store.restore(&m, TempDir::new().unwrap().path()).unwrap();
    }
    let report = store.verify().unwrap();
    assert!(report.corrupt_blobs.is_empty() && report.dropped_entries.is_empty());
}

/// Blob bytes (each once) plus manifest bytes, as gc counts them.
fn entry_bytes(store: &Store, m: &Manifest) -> u64 {
    let log = fs::metadata(store.blob_path(&m.log)).unwrap().len();
    m.size() + log + fs::metadata(store.manifest_path(&m.key)).unwrap().len()
}

#[test]
fn gc_keeps_recent_entries_within_size_and_drops_unreferenced_blobs() {
    let (_d, store) = store();
    let mut ms = vec![];
    for (i, name) in ["old", "mid", "new"].into_iter().enumerate() {
        let src = TempDir::new().unwrap();
        write(&src.path().join("f"), &vec![i as u8; 10_000], 0o644);
        let m = store.put(key(name), "wf", name, src.path(), 0, name.as_bytes(), 1, None).unwrap();
        set_mtime(&store.manifest_path(&m.key), 300 - 100 * i as u64);
        ms.push(m);
    }
    // Unreferenced blobs: an old one (garbage) and a young one (a put in progress).
    let stray = |content: &[u8], age: u64| {
        let d = Digest::of(content);
        let p = store.blob_path(&d);
        write(&p, content, 0o444);
        set_mtime(&p, age);
        p
    };
    let old_stray = stray(b"old stray", 120);
    let young_stray = stray(b"young stray", 0);

    let keep = entry_bytes(&store, &ms[1]) + entry_bytes(&store, &ms[2]);
    let report = store.gc(keep + 100).unwrap();
    assert_eq!(report.removed_entries, 1);
    assert!(report.remaining_bytes <= keep + 100);
    assert_eq!(report.remaining_bytes, keep);
    assert!(store.get(&key("old")).is_none());
    assert!(store.get(&key("mid")).is_some() && store.get(&key("new")).is_some());
    assert!(!store.blob_path(&file_digest(&ms[0], "f")).exists());
    assert!(!store.blob_path(&ms[0].log).exists());
    assert!(!old_stray.exists());
    assert!(young_stray.exists());
    assert_eq!(report.removed_blobs, 3);

    // Everything fits: nothing more goes.
    let again = store.gc(u64::MAX).unwrap();
    assert_eq!((again.removed_entries, again.removed_blobs), (0, 0));
    // Nothing fits: every entry goes.
    store.gc(0).unwrap();
    assert!(store.list().is_empty());
}

#[test]
fn verify_removes_corrupt_blobs_and_their_manifests() {
    let (_d, store) = store();
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    write(&a.path().join("f"), b"aaa", 0o644);
    write(&b.path().join("f"), b"bbb", 0o644);
    let ma = put(&store, key("a"), a.path());
    put(&store, key("b"), b.path());
    let blob = store.blob_path(&file_digest(&ma, "f"));
    tamper(&blob, b"aab");
    fs::create_dir_all(store.manifest_path(&key("junk")).parent().unwrap()).unwrap();
    fs::write(store.manifest_path(&key("junk")), b"not json").unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.blobs_checked, 3, "two files and the shared log");
    assert_eq!(report.corrupt_blobs, vec![file_digest(&ma, "f")]);
    let mut dropped = report.dropped_entries.clone();
    dropped.sort_by_key(|k| k.digest());
    let mut want = vec![key("a"), key("junk")];
    want.sort_by_key(|k| k.digest());
    assert_eq!(dropped, want);
    assert!(!blob.exists());
    assert!(store.get(&key("a")).is_none());
    assert!(store.get(&key("b")).is_some());
    let clean = store.verify().unwrap();
    assert!(clean.corrupt_blobs.is_empty() && clean.dropped_entries.is_empty());
}

#[test]
fn list_is_most_recently_used_first() {
    let (_d, store) = store();
    let src = TempDir::new().unwrap();
    write(&src.path().join("f"), b"12345", 0o644);
    for (i, name) in ["x", "y", "z"].into_iter().enumerate() {
        store.put(key(name), "wf", name, src.path(), 0, b"", 1, None).unwrap();
        set_mtime(&store.manifest_path(&key(name)), 100 - 10 * i as u64);
    }
    let steps = |s: &Store| s.list().into_iter().map(|e| e.step).collect::<Vec<_>>();
    assert_eq!(steps(&store), ["z", "y", "x"]);
    let l = store.list();
    assert_eq!((l[0].size, l[0].workflow.as_str(), l[0].key), (5, "wf", key("z")));
    assert!(l[0].last_used > l[2].last_used);

    // A hit marks the entry used.
    let m = store.get(&key("x")).unwrap();
    store.restore(&m, TempDir::new().unwrap().path()).unwrap();
    assert_eq!(steps(&store), ["x", "z", "y"]);
}

#[test]
fn last_run_records_round_trip() {
    let (_d, store) = store();
    let c = KeyComponents {
        format: 1,
        image: cache::ImageIdentity::Local { id: cache::ImageId::from_digest(&Digest::of(b"image")) },
        command: vec!["sh".into(), "-c".into(), "make".into()],
        env: BTreeMap::from([("CC".into(), "gcc".into())]),
        workdir: "/src".into(),
        user: "1000:1000".into(),
        network: "none".into(),
        outputs: vec!["out/".into()],
        secrets: vec!["TOKEN".into()],
        inputs: vec![cache::InputEntry { path: "a.c".into(), mode: 0o644, digest: Digest::of(b"a") }],
        upstream: vec![cache::UpstreamEntry { step: "gen".into(), outputs: Digest::of(b"o") }],
    };
    assert!(store.last("wf", "build").is_none());
    store.record_last("wf", "build", &c.key(), &c).unwrap();
    assert_eq!(store.last("wf", "build"), Some(c.clone()));
    let mut c2 = c.clone();
    c2.workdir = "/other".into();
    store.record_last("wf", "build", &c2.key(), &c2).unwrap();
    assert_eq!(store.last("wf", "build"), Some(c2));

    // Names are not paths.
    store.record_last("../../evil", "a/b", &c.key(), &c).unwrap();
    assert_eq!(store.last("../../evil", "a/b"), Some(c.clone()));
    store.record_last("..", "..", &c.key(), &c).unwrap();
    assert_eq!(store.last("..", ".."), Some(c));
    let files: Vec<_> = walkdir::WalkDir::new(store.dir()).into_iter().map(|e| e.unwrap().into_path()).collect();
    assert!(files.iter().all(|p| p.starts_with(store.dir())));
    assert!(!store.dir().join("evil").exists() && !store.dir().join("v1/evil").exists());
    assert!(store.dir().join("v1/last/.._.._evil/a_b.json").is_file());
}

#[test]
fn names_are_sanitised_and_mounts_created() {
    assert_eq!(sanitise("ok-Name_1.2"), "ok-Name_1.2");
    assert_eq!(sanitise("a/b c"), "a_b_c");
    for bad in ["", ".", ".."] {
        let s = sanitise(bad);
        assert!(!s.is_empty() && s.chars().any(|c| c != '.'), "{bad:?} -> {s:?}");
    }
    let (_d, store) = store();
    let m = store.mount_dir("npm/../cache").unwrap();
    assert!(m.is_dir());
    assert_eq!(m, store.dir().join("v1/mounts/npm_.._cache"));
    assert_eq!(store.mount_dir("npm/../cache").unwrap(), m);
}

#[test]
fn default_dir_honours_engine_cache_dir() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::env::var_os("ENGINE_CACHE_DIR");
    std::env::set_var("ENGINE_CACHE_DIR", "/some/where");
    assert_eq!(Store::default_dir(), PathBuf::from("/some/where"));
    std::env::remove_var("ENGINE_CACHE_DIR");
    let d = Store::default_dir();
    assert!(d.ends_with("engine"), "{d:?}");
    assert!(d.is_absolute() || dirs::home_dir().is_none(), "{d:?}");
    if let Some(v) = before {
        std::env::set_var("ENGINE_CACHE_DIR", v);
    }
}

fn mkfifo(path: &Path) {
    use rustix::fs::{FileType, Mode, CWD};
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
}

#[test]
fn a_blob_or_manifest_that_is_not_a_regular_file_is_a_miss_never_opened() {
    let (_d, store, src, m) = stored_sample("fifo", key("f"));
    let blob = store.blob_path(&file_digest(&m, "bin/tool"));
    fs::remove_file(&blob).unwrap();
    mkfifo(&blob);
    // `get` sees no blob (a FIFO is none); a restore through a stale manifest value refuses it.
    assert!(store.get(&key("f")).is_none());
    let dest = TempDir::new().unwrap();
    assert!(matches!(store.restore(&m, dest.path()), Err(StoreError::Corrupt { .. })));
    assert!(fs::symlink_metadata(&blob).is_err(), "the FIFO is removed");
    // The next put stores the blob again (a non-file in its place is not taken for it).
    put(&store, key("f"), src.path());
    let m = store.get(&key("f")).unwrap();
    assert!(fs::symlink_metadata(&blob).unwrap().is_file());
    let blob2 = store.blob_path(&file_digest(&m, "a.txt"));
    fs::remove_file(&blob2).unwrap();
    symlink("/etc/passwd", &blob2).unwrap();
    assert!(store.get(&key("f")).is_none());
    assert!(matches!(store.restore(&m, TempDir::new().unwrap().path()), Err(StoreError::Corrupt { .. })));

    // A manifest that is a FIFO: a miss, removed.
    put(&store, key("f"), src.path());
    let path = store.manifest_path(&key("f"));
    fs::remove_file(&path).unwrap();
    mkfifo(&path);
    assert!(store.get(&key("f")).is_none());
    assert!(fs::symlink_metadata(&path).is_err());
}

#[test]
fn a_symlink_among_the_store_folders_is_refused() {
    let d = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    fs::create_dir_all(d.path().join("v1")).unwrap();
    symlink(elsewhere.path(), d.path().join("v1/actions")).unwrap();
    let err = Store::open(d.path()).err().unwrap().to_string();
    assert!(err.contains("v1/actions is a symlink"), "{err}");
    let link = d.path().join("link");
    symlink(elsewhere.path(), &link).unwrap();
    let err = Store::open(&link).err().unwrap().to_string();
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn a_symlink_input_is_kept_as_its_target_text_never_what_it_points_to() {
    let (d, store) = store();
    let tree = TempDir::new().unwrap();
    let host = TempDir::new().unwrap();
    write(&host.path().join("secret"), b"HOST SECRET", 0o600);
    symlink(host.path().join("secret"), tree.path().join("link")).unwrap();
    let target = host.path().join("secret").into_os_string().into_encoded_bytes();
    let input = cache::InputEntry { path: "link".into(), mode: cache::hash::SYMLINK_MODE, digest: Digest::of(&target) };
    assert!(store.store_inputs(tree.path(), std::slice::from_ref(&input)).unwrap().is_empty());
    assert_eq!(store.read_blob(&input.digest).unwrap(), target);
    let leaked = walkdir::WalkDir::new(d.path())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .any(|e| fs::read(e.path()).unwrap().windows(11).any(|w| w == b"HOST SECRET"));
    assert!(!leaked);
}
