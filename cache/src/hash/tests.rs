use super::*;
use std::os::unix::fs::PermissionsExt;

use filetime::FileTime;

/// Moves a file's mtime `secs` into the past, out of the racy window (also changes its ctime).
fn age(path: &Path, secs: i64) {
    let now = FileTime::now();
    let t = FileTime::from_unix_time(now.unix_seconds() - secs, now.nanoseconds());
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

fn write_old(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    age(&path, 60);
}

fn paths(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

struct Tree {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        Tree { root: tempfile::tempdir().unwrap(), cache: tempfile::tempdir().unwrap() }
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn stat(&self) -> StatCache {
        StatCache::load(self.cache.path(), self.root.path())
    }
}

/// A tree of old files, all hashed once (so stat-cached) and saved.
fn hashed(files: &[(&str, &[u8])]) -> (Tree, StatCache) {
    let t = Tree::new();
    for (rel, content) in files {
        write_old(t.root(), rel, content);
    }
    let mut stat = t.stat();
    let all: Vec<String> = files.iter().map(|(rel, _)| rel.to_string()).collect();
    hash_inputs(t.root(), &all, &mut stat).unwrap();
    stat.save().unwrap();
    (t, stat)
}

#[test]
fn hash_file_streams_large_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(3 * BUF_SIZE + 17)).map(|i| (i % 251) as u8).collect();
    fs::write(dir.path().join("big"), &big).unwrap();
    fs::write(dir.path().join("empty"), b"").unwrap();
    assert_eq!(hash_file(&dir.path().join("big")).unwrap(), Digest::of(&big));
    assert_eq!(hash_file(&dir.path().join("empty")).unwrap(), Digest::of(b""));
    assert!(hash_file(&dir.path().join("nope")).is_err());
}

#[test]
fn stat_cache_is_reused_across_loads() {
    let t = Tree::new();
    write_old(t.root(), "src/a.c", b"int a;");
    write_old(t.root(), "src/b.c", b"int b;");
    write_old(t.root(), "run.sh", b"#!/bin/sh\n");
    fs::set_permissions(t.root().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    age(&t.root().join("run.sh"), 60);
    let want = paths(&["src/b.c", "run.sh", "src/a.c"]);

    let mut stat = t.stat();
    let first = hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert_eq!(files_read(&stat), 3);
    stat.save().unwrap();
    assert_eq!(
        first,
        vec![
            InputEntry { path: "run.sh".into(), mode: 0o755, digest: Digest::of(b"#!/bin/sh\n") },
            InputEntry { path: "src/a.c".into(), mode: 0o644 & !umask_bits(), digest: Digest::of(b"int a;") },
            InputEntry { path: "src/b.c".into(), mode: 0o644 & !umask_bits(), digest: Digest::of(b"int b;") },
        ]
    );

    let mut stat = t.stat();
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap(), first);
    assert_eq!(files_read(&stat), 0);
}

/// The mode files get from `fs::write` depends on the umask; tests compare against it.
fn umask_bits() -> u32 {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"").unwrap();
    0o666 & !(fs::metadata(dir.path().join("f")).unwrap().mode() & 0o7777)
}

#[test]
fn stat_file_lives_under_the_digest_of_the_root_and_is_saved_atomically() {
    let (t, _) = hashed(&[("a", b"a")]);
    let root = fs::canonicalize(t.root()).unwrap();
    let name = format!("{}.bin", Digest::of(root.as_os_str().as_bytes()).hex());
    let file = t.cache.path().join("v1/stat").join(name);
    assert!(file.is_file());
    assert!(t.cache.path().join("v1/tmp").is_dir());
    assert_eq!(fs::read_dir(t.cache.path().join("v1/tmp")).unwrap().count(), 0);
    let bytes = fs::read(&file).unwrap();
    let root_bytes = root.as_os_str().as_bytes();
    assert!(!bytes.windows(root_bytes.len()).any(|w| w == root_bytes), "the root path is in the file name only");
}

#[test]
fn fstatat_and_lstat_see_the_same_entry() {
    let t = Tree::new();
    write_old(t.root(), "d/f", b"content");
    std::os::unix::fs::symlink("f", t.root().join("d/link")).unwrap();
    for rel in ["d/f", "d/link"] {
        let via_lstat = stat_of(&fs::symlink_metadata(t.root().join(rel)).unwrap(), rel).unwrap();
        let via_fstatat = stat_all(t.root(), &[rel]).pop().unwrap().unwrap();
        assert_eq!(via_lstat, via_fstatat, "{rel}");
    }
    let missing = stat_all(t.root(), &["d/nope", "gone/x"]);
    assert!(missing.iter().all(|r| r.as_ref().is_err_and(|e| e.to_string().contains("nope") || e.to_string().contains("gone/x"))));
}

#[test]
fn damaged_stat_file_is_an_empty_cache() {
    let (t, stat) = hashed(&[("a", b"a")]);
    fs::write(&stat.file, b"\xff\xff not postcard").unwrap();
    let mut stat = t.stat();
    assert_eq!(hash_inputs(t.root(), &paths(&["a"]), &mut stat).unwrap()[0].digest, Digest::of(b"a"));
    assert_eq!(files_read(&stat), 1);
}

#[test]
fn touch_keeps_the_digest_and_is_cached_again_after_one_rehash() {
    let (t, mut stat) = hashed(&[("a.c", b"same")]);
    let want = paths(&["a.c"]);
    let before = hash_inputs(t.root(), &want, &mut stat).unwrap();

    age(&t.root().join("a.c"), 30); // a touch, to a time outside the racy window
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap(), before);
    assert_eq!(files_read(&stat), 1);
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap(), before);
    assert_eq!(files_read(&stat), 0);
}

#[test]
fn same_size_rewrite_with_restored_mtime_is_caught_by_ctime() {
    let t = Tree::new();
    let path = t.root().join("a.c");
    write_old(t.root(), "a.c", b"aaaa");
    let mtime = FileTime::from_last_modification_time(&fs::metadata(&path).unwrap());
    let want = paths(&["a.c"]);
    let mut stat = t.stat();
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap()[0].digest, Digest::of(b"aaaa"));

    std::thread::sleep(Duration::from_millis(20)); // let the clock move on for ctime
    fs::write(&path, b"bbbb").unwrap();
    filetime::set_file_mtime(&path, mtime).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.size(), FileTime::from_last_modification_time(&meta)), (4, mtime));

    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap()[0].digest, Digest::of(b"bbbb"));
    assert_eq!(files_read(&stat), 1);
}

#[test]
fn replaced_file_is_caught_by_inode() {
    let (t, mut stat) = hashed(&[("a", b"1111")]);
    let mut entry = stat.entries["a"];
    write_old(t.root(), "b", b"2222");
    fs::rename(t.root().join("b"), t.root().join("a")).unwrap();
    // Pretend every other stat field matched: only the inode tells the files apart.
    let meta = fs::symlink_metadata(t.root().join("a")).unwrap();
    let seen = stat_of(&meta, "a").unwrap();
    entry.mtime_ns = seen.mtime_ns;
    entry.ctime_ns = seen.ctime_ns;
    stat.entries.insert("a".into(), entry);
    assert_eq!(hash_inputs(t.root(), &paths(&["a"]), &mut stat).unwrap()[0].digest, Digest::of(b"2222"));
}

#[test]
fn mode_change_changes_the_entry() {
    let (t, mut stat) = hashed(&[("x.sh", b"echo")]);
    let before = hash_inputs(t.root(), &paths(&["x.sh"]), &mut stat).unwrap();
    fs::set_permissions(t.root().join("x.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    let after = hash_inputs(t.root(), &paths(&["x.sh"]), &mut stat).unwrap();
    assert_eq!(after[0].mode, 0o750);
    assert_eq!(after[0].digest, before[0].digest);
    assert_ne!(after, before);
}

#[test]
fn symlinks_are_not_followed() {
    let t = Tree::new();
    write_old(t.root(), "real", b"content");
    let link = t.root().join("link");
    std::os::unix::fs::symlink("real", &link).unwrap();
    std::os::unix::fs::symlink("../outside/nowhere", t.root().join("dangling")).unwrap();
    age(&link, 60);
    let want = paths(&["link", "dangling"]);
    let mut stat = t.stat();
    let got = hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert_eq!(
        got,
        vec![
            InputEntry { path: "dangling".into(), mode: SYMLINK_MODE, digest: Digest::of(b"../outside/nowhere") },
            InputEntry { path: "link".into(), mode: SYMLINK_MODE, digest: Digest::of(b"real") },
        ]
    );
    // A changed target changes the digest.
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("other", &link).unwrap();
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap()[1].digest, Digest::of(b"other"));
}

#[test]
fn parallel_hashing_matches_sequential() {
    let t = Tree::new();
    let mut want = Vec::new();
    for i in 0..400 {
        let rel = format!("d{}/f{i}.txt", i % 7);
        write_old(t.root(), &rel, format!("file {i}\n").repeat(i % 50).as_bytes());
        want.push(rel);
    }
    let mut stat = t.stat();
    let got = hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert_eq!(files_read(&stat), 400);
    let mut sequential: Vec<(String, Digest)> = want.iter().map(|rel| (rel.clone(), hash_file(&t.root().join(rel)).unwrap())).collect();
    sequential.sort();
    let got: Vec<(String, Digest)> = got.into_iter().map(|e| (e.path, e.digest)).collect();
    assert_eq!(got, sequential);
}

#[test]
fn racy_clean_files_are_rehashed_until_they_are_old_enough() {
    let t = Tree::new();
    fs::write(t.root().join("fresh"), b"v1").unwrap(); // mtime: now
    let want = paths(&["fresh"]);
    let mut stat = t.stat();
    hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert!(!stat.entries.contains_key("fresh"), "a racy entry is not recorded");

    // Same tick, same size: its stat alone could not tell; the re-hash does.
    fs::write(t.root().join("fresh"), b"v2").unwrap();
    assert_eq!(hash_inputs(t.root(), &want, &mut stat).unwrap()[0].digest, Digest::of(b"v2"));
    assert_eq!(files_read(&stat), 1);

    age(&t.root().join("fresh"), 3);
    hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert_eq!(files_read(&stat), 1);
    hash_inputs(t.root(), &want, &mut stat).unwrap();
    assert_eq!(files_read(&stat), 0);
}

#[test]
fn entries_of_other_steps_are_kept_and_vanished_files_dropped_on_save() {
    let (t, mut stat) = hashed(&[("a", b"a"), ("b", b"b"), ("c", b"c")]);
    hash_inputs(t.root(), &paths(&["a"]), &mut stat).unwrap();
    assert_eq!(stat.entries.len(), 3, "other steps' entries are kept");
    fs::remove_file(t.root().join("c")).unwrap();
    stat.save().unwrap();

    let mut stat = t.stat();
    assert_eq!(stat.entries.keys().collect::<Vec<_>>(), ["a", "b"]);
    hash_inputs(t.root(), &paths(&["b"]), &mut stat).unwrap();
    assert_eq!(files_read(&stat), 0);
}

#[test]
fn missing_or_escaping_inputs_are_errors_naming_the_path() {
    let t = Tree::new();
    fs::create_dir(t.root().join("dir")).unwrap();
    let mut stat = t.stat();
    for (rel, kind) in [
        ("src/missing.c", io::ErrorKind::NotFound),
        ("/etc/passwd", io::ErrorKind::InvalidInput),
        ("../x", io::ErrorKind::InvalidInput),
        ("", io::ErrorKind::InvalidInput),
        ("dir", io::ErrorKind::InvalidInput),
    ] {
        let err = hash_inputs(t.root(), &paths(&[rel]), &mut stat).unwrap_err();
        assert_eq!(err.kind(), kind, "{rel}: {err}");
        assert!(err.to_string().contains(&format!("`{rel}`")), "{err}");
    }
}

#[test]
fn moving_the_tree_keeps_the_entries_but_not_the_stat_cache() {
    // The same files in another folder give the same entries (no absolute path in a key).
    let a = Tree::new();
    let b = Tree::new();
    for t in [&a, &b] {
        write_old(t.root(), "src/x", b"x");
    }
    let want = paths(&["src/x"]);
    let ea = hash_inputs(a.root(), &want, &mut a.stat()).unwrap();
    let eb = hash_inputs(b.root(), &want, &mut b.stat()).unwrap();
    assert_eq!(ea, eb);
    assert_ne!(a.stat().file.file_name(), StatCache::load(a.cache.path(), b.root()).file.file_name());
}
