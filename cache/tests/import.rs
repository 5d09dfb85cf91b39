//! Entries arriving from elsewhere: a downloaded blob gets its name only when it matches it, and
//! a downloaded manifest is written only when `get` would accept it.

// Only `key` and `store` of the shared helpers are used here.
#[allow(dead_code)]
mod common;

use std::io::Write;

use cache::store::{OutputEntry, StoreError};
use cache::{Digest, Manifest};
use common::{key, store};

fn manifest(k: cache::ActionKey, file: Digest, log: Digest, path: &str) -> Manifest {
    Manifest {
        key: k,
        workflow: "wf".into(),
        step: "s".into(),
        entries: vec![OutputEntry::File { path: path.into(), mode: 0o644, digest: file, size: 5 }],
        exit_code: 0,
        log,
        created: 1,
        duration_ms: 2,
        inputs: None,
    }
}

fn import(store: &cache::Store, bytes: &[u8], digest: &Digest, size: u64) -> Result<(), StoreError> {
    let mut tmp = store.blob_import().unwrap();
    tmp.file().write_all(bytes).unwrap();
    store.import_blob(tmp, digest, size)
}

#[test]
fn a_downloaded_blob_is_stored_only_when_it_matches_its_digest_and_size() {
    let (_dir, store) = store();
    let good = Digest::of(b"hello");
    let err = import(&store, b"hellO", &good, 5).unwrap_err();
    assert!(matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData), "{err}");
    assert!(!store.has_blob(&good));
    assert!(import(&store, b"hello", &good, 4).is_err(), "a wrong size is refused");
    import(&store, b"hello", &good, 5).unwrap();
    assert_eq!(store.read_blob(&good).unwrap(), b"hello");
    // Again: the blob already there is kept.
    import(&store, b"hello", &good, 5).unwrap();
    let leftovers = std::fs::read_dir(store.dir().join("v1/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no temp file is left behind");
}

#[test]
fn received_bytes_are_stored_only_when_they_match_their_digest() {
    let (_dir, store) = store();
    let good = Digest::of(b"hello");
    let err = store.import_bytes(b"hellO", &good).unwrap_err();
    assert!(matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData), "{err}");
    assert!(!store.has_blob(&good));
    store.import_bytes(b"hello", &good).unwrap();
    assert_eq!(store.read_blob(&good).unwrap(), b"hello");
    store.import_bytes(b"hello", &good).unwrap();
    let leftovers = std::fs::read_dir(store.dir().join("v1/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no temp file is left behind");
}

#[test]
fn a_downloaded_manifest_is_written_only_when_complete_and_safe() {
    let (_dir, store) = store();
    let file = Digest::of(b"hello");
    let log = Digest::of(b"log");
    let k = key("k");
    let m = manifest(k, file, log, "out/f");
    assert!(store.put_manifest(&m).is_err(), "blobs missing");
    assert!(store.get(&k).is_none());
    import(&store, b"hello", &file, 5).unwrap();
    assert!(store.put_manifest(&m).is_err(), "the log is missing");
    import(&store, b"log", &log, 3).unwrap();
    store.put_manifest(&m).unwrap();
    assert_eq!(store.get(&k), Some(m));

    let bad = manifest(key("bad"), file, log, "../escape");
    let err = store.put_manifest(&bad).unwrap_err();
    assert!(err.to_string().contains("unsafe"), "{err}");
    assert!(store.get(&key("bad")).is_none());
    let mut with_inputs = manifest(key("inputs"), file, log, "f");
    with_inputs.inputs = Some(Digest::of(b"nowhere"));
    assert!(store.put_manifest(&with_inputs).is_err(), "an input manifest it names must be there");
}
