//! Input manifests and the input contents kept for replay: stored once by digest, named by the
//! entries of the executions that used them, kept and collected by gc with those entries.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cache::store::{Manifest, OutputEntry};
use cache::{ActionKey, Digest, InputEntry, Store};
use tempfile::TempDir;

use common::{key, set_mtime, store, write};

/// An entry for `k` whose outputs are one file, executed with `inputs`.
fn put(store: &Store, k: ActionKey, inputs: Option<&[InputEntry]>) -> Manifest {
    let outputs = TempDir::new().unwrap();
    write(&outputs.path().join("o"), format!("out of {k}").as_bytes(), 0o644);
    store.put(k, "wf", "s", outputs.path(), 0, b"log", 1, inputs).unwrap()
}

/// Input entries for files named `names`, each holding its own name.
fn entries(names: &[&str]) -> Vec<InputEntry> {
    names.iter().map(|n| InputEntry { path: n.to_string(), mode: 0o644, digest: Digest::of(n.as_bytes()) }).collect()
}

/// The input manifest files in the store.
fn manifest_files(d: &TempDir) -> usize {
    walkdir::WalkDir::new(d.path().join("v1/inputs")).into_iter().flatten().filter(|e| e.file_type().is_file()).count()
}

#[test]
fn inputs_kept_for_replay_live_and_die_with_their_entry() {
    let (_d, store) = store();
    let tree = TempDir::new().unwrap();
    write(&tree.path().join("src/a.c"), b"int a;", 0o644);
    write(&tree.path().join("run.sh"), b"#!/bin/sh\n", 0o755);
    let inputs: Vec<InputEntry> = [("run.sh", 0o755, &b"#!/bin/sh\n"[..]), ("src/a.c", 0o644, &b"int a;"[..])]
        .into_iter()
        .map(|(path, mode, content)| InputEntry { path: path.into(), mode, digest: Digest::of(content) })
        .collect();
    assert!(store.store_inputs(tree.path(), &inputs).unwrap().is_empty());
    let m = put(&store, key("a"), Some(&inputs));
    let named = m.inputs.expect("the entry names its input manifest");
    assert_eq!(store.input_manifest(&named).unwrap(), inputs);
    assert_eq!(store.get(&key("a")).unwrap().inputs, Some(named));
    for i in &inputs {
        set_mtime(&store.blob_path(&i.digest), 600);
    }
    set_mtime(&store.input_manifest_path(&named), 600);

    // Referenced by the entry's input manifest: gc keeps them, however old.
    store.gc(u64::MAX).unwrap();
    assert!(inputs.iter().all(|i| store.has_blob(&i.digest)));
    assert!(store.input_manifest(&named).is_some());
    // They re-create the inputs byte for byte, modes included.
    let files: Vec<OutputEntry> =
        inputs.iter().map(|i| OutputEntry::File { path: i.path.clone(), mode: i.mode, digest: i.digest, size: 0 }).collect();
    let again = TempDir::new().unwrap();
    store.materialise(&files, again.path()).unwrap();
    assert_eq!(fs::metadata(again.path().join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(again.path().join("src/a.c")).unwrap(), b"int a;");
    // A missing blob is named, and nothing is written.
    fs::remove_file(store.blob_path(&inputs[1].digest)).unwrap();
    let empty = TempDir::new().unwrap();
    let err = store.materialise(&files, empty.path()).unwrap_err();
    assert!(matches!(err, cache::store::MaterialiseError::MissingBlob(d) if d == inputs[1].digest));
    assert_eq!(fs::read_dir(empty.path()).unwrap().count(), 0);

    // An input edited after it was hashed is reported (its new content is what gets stored).
    write(&tree.path().join("src/a.c"), b"int b;", 0o644);
    assert_eq!(store.store_inputs(tree.path(), &inputs).unwrap(), vec!["src/a.c".to_string()]);

    // The entry goes: its input manifest and the blobs only it named go too.
    let report = store.gc(0).unwrap();
    assert_eq!(report.removed_input_manifests, 1);
    assert!(store.input_manifest(&named).is_none());
    assert!(!store.has_blob(&inputs[0].digest));
}

#[test]
fn identical_manifests_are_stored_once_and_kept_while_an_entry_names_them() {
    let (d, store) = store();
    let shared = entries(&["a", "b", "c"]);
    let own = entries(&["z"]);
    // Three executions over the same files, one over others.
    let m1 = put(&store, key("1"), Some(&shared));
    let m2 = put(&store, key("2"), Some(&shared));
    let m3 = put(&store, key("3"), Some(&shared));
    let m4 = put(&store, key("4"), Some(&own));
    assert_eq!(store.put_input_manifest(&shared).unwrap(), m1.inputs.unwrap(), "the digest names the list");
    assert_eq!((m2.inputs, m3.inputs), (m1.inputs, m1.inputs));
    assert_ne!(m4.inputs, m1.inputs);
    assert_eq!(manifest_files(&d), 2, "one file per distinct list");
    let (shared_d, own_d) = (m1.inputs.unwrap(), m4.inputs.unwrap());
    for name in [&shared_d, &own_d] {
        set_mtime(&store.input_manifest_path(name), 600);
    }
    // A damaged manifest is none (its content no longer matches its name).
    let path = store.input_manifest_path(&own_d);
    let saved = fs::read(&path).unwrap();
    fs::write(&path, b"[]").unwrap();
    assert!(store.input_manifest(&own_d).is_none());
    fs::write(&path, &saved).unwrap();
    set_mtime(&path, 600);

    // Entries go least recently used first: the shared manifest stays while one of its entries
    // does; the other goes with its only entry.
    for (i, k) in ["1", "2", "4", "3"].iter().enumerate() {
        set_mtime(&store.manifest_path(&key(k)), 1000 - i as u64 * 100);
    }
    let entry_bytes = fs::metadata(store.manifest_path(&key("3"))).unwrap().len();
    let blobs_of_3: u64 = [
        m3.log,
        match &m3.entries[0] {
            OutputEntry::File { digest, .. } => *digest,
            other => panic!("{other:?}"),
        },
    ]
    .iter()
    .map(|b| fs::metadata(store.blob_path(b)).unwrap().len())
    .sum();
    let shared_bytes = fs::metadata(store.input_manifest_path(&shared_d)).unwrap().len();
    let report = store.gc(entry_bytes + blobs_of_3 + shared_bytes).unwrap();
    assert_eq!(report.removed_entries, 3, "{report:?}");
    assert!(store.get(&key("3")).is_some());
    assert_eq!(report.removed_input_manifests, 1, "{report:?}");
    assert!(store.input_manifest(&shared_d).is_some());
    assert!(store.input_manifest(&own_d).is_none());
    assert_eq!(report.remaining_bytes, entry_bytes + blobs_of_3 + shared_bytes);

    // The last entry goes: so does the manifest.
    store.gc(0).unwrap();
    assert_eq!(manifest_files(&d), 0);
}

#[test]
fn a_young_manifest_no_entry_names_yet_is_kept() {
    let (d, store) = store();
    // Written by a put in progress: its entry comes next.
    let named = store.put_input_manifest(&entries(&["a"])).unwrap();
    assert_eq!(store.gc(0).unwrap().removed_input_manifests, 0);
    assert!(store.input_manifest(&named).is_some());
    set_mtime(&store.input_manifest_path(&named), 600);
    assert_eq!(store.gc(0).unwrap().removed_input_manifests, 1);
    assert_eq!(manifest_files(&d), 0);
}

/// Entries written before input manifests were shared kept one per key, under the key's name:
/// gc keeps it with its entry, and the entry's next hit moves it over.
#[test]
fn an_entry_of_the_previous_layout_is_moved_over_on_its_next_hit() {
    let (d, store) = store();
    let inputs = entries(&["a", "b"]);
    let m = put(&store, key("old"), None);
    let legacy = store.input_manifest_path(&key("old").digest());
    write(&legacy, &serde_json::to_vec(&inputs).unwrap(), 0o644);
    set_mtime(&legacy, 600);
    store.gc(u64::MAX).unwrap();
    assert!(legacy.is_file(), "kept with its entry");
    assert_eq!(m.inputs, None);

    let hit = store.get(&key("old")).unwrap();
    let named = hit.inputs.expect("named after the hit");
    assert_eq!(store.input_manifest(&named).unwrap(), inputs);
    assert!(!legacy.exists());
    assert_eq!(store.get(&key("old")).unwrap().inputs, Some(named), "written into the entry");
    assert_eq!(manifest_files(&d), 1);
}

#[test]
fn usage_counts_outputs_inputs_and_unreferenced_blobs_each_once() {
    let (d, store) = store();
    let tree = TempDir::new().unwrap();
    write(&tree.path().join("a"), b"a", 0o644);
    write(&tree.path().join("b"), b"b", 0o644);
    write(&tree.path().join("lost"), b"lost input", 0o644);
    let inputs = entries(&["a", "b"]);
    store.store_inputs(tree.path(), &inputs).unwrap();
    // The input of an execution that failed: stored, named by no entry.
    store.store_inputs(tree.path(), &[InputEntry { path: "lost".into(), mode: 0o644, digest: Digest::of(b"lost input") }]).unwrap();
    let m = put(&store, key("a"), Some(&inputs));
    let u = store.usage().unwrap();
    assert_eq!((u.entries, u.output_blobs, u.input_blobs, u.input_manifests, u.unreferenced_blobs), (1, 2, 2, 1, 1), "{u:?}");
    assert_eq!(u.input_bytes, 2);
    assert_eq!(u.unreferenced_bytes, "lost input".len() as u64);
    assert_eq!(u.output_bytes, format!("out of {}", key("a")).len() as u64 + 3, "the output and the log");
    let on_disk: u64 = walkdir::WalkDir::new(d.path().join("v1"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.path().starts_with(d.path().join("v1/last")))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(u.total_bytes(), on_disk);

    // gc removes the unreferenced blob once it is past the grace, and nothing the entry names.
    set_mtime(&store.blob_path(&Digest::of(b"lost input")), 600);
    let report = store.gc(u64::MAX).unwrap();
    assert_eq!(report.removed_blobs, 1);
    let after = store.usage().unwrap();
    assert_eq!((after.output_blobs, after.input_blobs, after.unreferenced_blobs), (2, 2, 0));
    assert!(store.input_manifest(&m.inputs.unwrap()).is_some());
}
