//! Dockerfile parity: each case is built twice on the same daemon, by `docker build` (the CLI's
//! classic builder path, which sends the context as a tar the way the engine does) and by the
//! engine, and the two images must agree: their config, and for every file its path, type,
//! mode, owner, content digest or link target, and (below the copy destination `/c`) mtime.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use images::{BuildContext, Builder};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use common::*;

fn write(root: &Path, rel: &str, text: &str, mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// One case: a workflow folder, the Dockerfile and context as the engine takes them.
struct Case {
    dir: tempfile::TempDir,
    dockerfile: &'static str,
    context: &'static str,
    args: BTreeMap<String, String>,
    target: Option<&'static str>,
    /// Paths whose content differs between two `docker build`s of the same case.
    random_content: &'static [&'static str],
}

impl Case {
    fn new(dockerfile: &'static str, context: &'static str, text: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), dockerfile, text, 0o644);
        std::fs::create_dir_all(dir.path().join(context)).unwrap();
        Case { dir, dockerfile, context, args: BTreeMap::new(), target: None, random_content: &[] }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Each file of the image: (type, mode, uid, gid, digest or link target, mtime if compared).
type Files = BTreeMap<Vec<u8>, (char, u32, u64, u64, String, Option<u64>)>;

fn files_of(image: &str) -> Files {
    let container = docker(&["create", image, "/bin/true"]);
    let tar = run(Command::new("docker").args(["export", &container]));
    docker(&["rm", &container]);
    let mut out = Files::new();
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path_bytes().trim_end_matches_slash();
        // Written by the daemon into every container.
        if [&b".dockerenv"[..], b"etc/hostname", b"etc/hosts", b"etc/resolv.conf", b"etc/mtab"].contains(&path.as_slice())
            || path.starts_with(b"proc")
            || path.starts_with(b"sys")
            || path.starts_with(b"dev")
        {
            continue;
        }
        let h = entry.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => '?',
        };
        let what = match kind {
            'l' | 'h' => String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default()).into_owned(),
            _ => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                format!("{:x}", Sha256::digest(&data))
            }
        };
        let mtime = (path.starts_with(b"c/") && kind != 'd').then(|| h.mtime().unwrap());
        out.insert(path, (kind, h.mode().unwrap() & 0o7777, h.uid().unwrap(), h.gid().unwrap(), what, mtime));
    }
    out
}

trait TrimSlash {
    fn trim_end_matches_slash(&self) -> Vec<u8>;
}
impl TrimSlash for std::borrow::Cow<'_, [u8]> {
    fn trim_end_matches_slash(&self) -> Vec<u8> {
        let mut v = self.to_vec();
        while v.last() == Some(&b'/') {
            v.pop();
        }
        v
    }
}

fn config_of(image: &str) -> serde_json::Value {
    let mut config: serde_json::Value = serde_json::from_str(&docker(&["inspect", "--format", "{{json .Config}}", image])).unwrap();
    // The container's hostname is random; `Image` is the parent layer's ID, not content.
    config.as_object_mut().unwrap().remove("Hostname");
    config.as_object_mut().unwrap().remove("Image");
    config
}

/// Build `case` with the engine and with `docker build`; both images must agree.
async fn compare(name: &str, case: &Case) -> Files {
    let daemon = docker::Daemon::connect().await.expect("the Docker daemon is not reachable");
    let b = Builder::new(daemon);
    let wf = unique("engparity");
    let ctx = BuildContext { workflow: &wf, dir: case.root(), run_id: "t", no_cache: true, container_labels: &HashMap::new() };
    let def = dsl::ImageDef::Dockerfile {
        dockerfile: case.dockerfile.into(),
        context: case.context.into(),
        network: dsl::Network::None,
        args: case.args.clone(),
        target: case.target.map(str::to_string),
    };
    let quiet = |_: &str, _: &str, _: &str| {};
    let built = b.build(&ctx, name, &def, &quiet, &CancellationToken::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));

    let tag = format!("{wf}-cli/{name}:1");
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_BUILDKIT", "0").current_dir(case.root());
    cmd.args(["build", "-q", "--no-cache", "--network", "none", "-f", case.dockerfile, "-t", &tag]);
    cmd.args(["--label", &format!("engine.image={name}"), "--label", &format!("engine.image.key={}", built.key.hex())]);
    for (k, v) in &case.args {
        cmd.args(["--build-arg", &format!("{k}={v}")]);
    }
    if let Some(t) = case.target {
        cmd.args(["--target", t]);
    }
    cmd.arg(case.context);
    run(&mut cmd);

    let (mut engine_files, mut cli_files) = (files_of(&built.tag), files_of(&tag));
    // The CLI names a Dockerfile from outside the context randomly in `.dockerignore`; the
    // engine by the Dockerfile's digest. Only that name may differ.
    for path in case.random_content {
        for files in [&mut engine_files, &mut cli_files] {
            if let Some(v) = files.get_mut(path.as_bytes()) {
                v.4 = "(differs by design)".into();
            }
        }
    }
    let (engine_config, cli_config) = (config_of(&built.tag), config_of(&tag));
    docker(&["rmi", "-f", &tag, &built.tag]);
    assert_eq!(engine_config, cli_config, "{name}: image config");
    let only = |a: &Files, b: &Files| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(only(&engine_files, &cli_files), vec![], "{name}: files the engine's image has and docker build's lacks or differs");
    assert_eq!(only(&cli_files, &engine_files), vec![], "{name}: files docker build's image has and the engine's lacks or differs");
    engine_files
}

fn has(files: &Files, path: &str) -> bool {
    files.contains_key(path.as_bytes())
}

#[tokio::test]
async fn modes_are_kept() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), "id_key", "secret", 0o600);
    write(case.root(), "run.sh", "#!/bin/sh\n", 0o755);
    write(case.root(), "group.txt", "umask 002", 0o664);
    write(case.root(), "setgid/file", "x", 0o640);
    std::fs::set_permissions(case.root().join("setgid"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    write(case.root(), "suid", "s", 0o4755);
    write(case.root(), "sticky/f", "s", 0o644);
    std::fs::set_permissions(case.root().join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let files = compare("modes", &case).await;
    assert_eq!(files[&b"c/id_key"[..]].1, 0o600, "a 0600 key stays 0600");
}

#[tokio::test]
async fn symlinks_are_sent_as_symlinks() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), "target.txt", "t", 0o644);
    std::os::unix::fs::symlink("target.txt", case.root().join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", case.root().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("missing", case.root().join("dangling")).unwrap();
    let files = compare("symlinks", &case).await;
    assert_eq!(files[&b"c/abs-link"[..]].0, 'l');
}

#[tokio::test]
async fn hard_links_and_mtimes() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), "a.txt", "same", 0o644);
    std::fs::hard_link(case.root().join("a.txt"), case.root().join("b.txt")).unwrap();
    write(case.root(), "old.txt", "old", 0o644);
    set_mtime(&case.root().join("old.txt"), 1_000_000_000);
    let files = compare("hardlinks", &case).await;
    assert_eq!(files[&b"c/old.txt"[..]].5, Some(1_000_000_000));
}

#[tokio::test]
async fn dockerignore_bom_indented_hash_and_double_star_suffix() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), ".dockerignore", "\u{FEFF}secret.key\n  #hash\n# a comment\n**.pem\n  \n/build/\n", 0o644);
    for f in ["secret.key", "#hash", "a/b/c.pem", "x.pem", "keep.txt", "build/out", "# a comment"] {
        write(case.root(), f, f, 0o644);
    }
    let files = compare("dockerignore-edges", &case).await;
    for gone in ["c/secret.key", "c/#hash", "c/a/b/c.pem", "c/x.pem", "c/build"] {
        assert!(!has(&files, gone), "{gone} is excluded");
    }
    assert!(has(&files, "c/keep.txt") && has(&files, "c/# a comment"));
}

#[tokio::test]
async fn dockerignore_exceptions_and_excluded_folders() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), ".dockerignore", "*\n!keep/**\n!*.md\ndir\n!dir/inner.txt\nDockerfile\n", 0o644);
    for f in ["drop.txt", "keep/a/b.txt", "README.md", "sub/notes.md", "dir/inner.txt", "dir/other.txt"] {
        write(case.root(), f, f, 0o644);
    }
    let files = compare("dockerignore-exceptions", &case).await;
    assert!(has(&files, "c/dir/inner.txt") && !has(&files, "c/dir/other.txt") && !has(&files, "c/drop.txt"));
}

#[tokio::test]
async fn wildcard_copy_sources() {
    let text = format!("FROM {BASE}\nCOPY *.txt src/*.py /c/\nCOPY [\"with space.txt\", \"/c/spaced/\"]\nCOPY sub* /c/subs/\n");
    let case = Case::new("Dockerfile", ".", &text);
    for f in ["a.txt", "b.txt", "src/m.py", "src/n.rs", "with space.txt", "sub1/x", "sub2/y", "other"] {
        write(case.root(), f, f, 0o644);
    }
    compare("wildcards", &case).await;
}

#[tokio::test]
async fn dockerfile_outside_the_context() {
    let mut case = Case::new("build/Dockerfile", "ctx", &format!("FROM {BASE}\nCOPY . /c/\n"));
    case.random_content = &["c/.dockerignore"];
    write(case.root(), "ctx/file.txt", "inside", 0o644);
    write(case.root(), "ctx/.dockerignore", "*.log\n", 0o644);
    write(case.root(), "ctx/x.log", "log", 0o644);
    let files = compare("outside", &case).await;
    assert!(has(&files, "c/file.txt") && !has(&files, "c/x.log"));
}

#[tokio::test]
async fn dockerfile_in_an_excluded_folder_is_still_sent() {
    let case = Case::new("sub/Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), ".dockerignore", "sub\n.dockerignore\n", 0o644);
    write(case.root(), "sub/other.txt", "x", 0o644);
    write(case.root(), "top.txt", "x", 0o644);
    compare("excluded-dockerfile", &case).await;
}

#[tokio::test]
async fn non_utf8_names() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(case.root().join(name), "latin-1").unwrap();
    let files = compare("non-utf8", &case).await;
    assert!(files.contains_key(&b"c/caf\xe9.txt"[..]));
}

#[tokio::test]
async fn build_arguments_and_target() {
    let text = format!(
        "ARG BASE={BASE}\nFROM ${{BASE}} AS one\nARG MSG=default\nENV MSG=$MSG\nCOPY m.txt /c/\n\
         FROM one AS two\nLABEL stage=two\nFROM {BASE} AS three\nLABEL stage=three\n"
    );
    let mut case = Case::new("Dockerfile", ".", &text);
    write(case.root(), "m.txt", "m", 0o644);
    case.args.insert("MSG".into(), "hello".into());
    case.target = Some("two");
    compare("args-target", &case).await;
}

#[tokio::test]
async fn long_names_and_deep_folders() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    let deep = format!("{}/{}.txt", ["d"; 40].join("/"), "n".repeat(150));
    write(case.root(), &deep, "deep", 0o644);
    std::os::unix::fs::symlink("x".repeat(200), case.root().join("long-link")).unwrap();
    compare("long-names", &case).await;
}

#[tokio::test]
async fn dockerignore_classes_escapes_and_double_stars() {
    let case = Case::new("Dockerfile", ".", &format!("FROM {BASE}\nCOPY . /c/\n"));
    write(case.root(), ".dockerignore", "[a-c].txt\n\\*lit\nd?r\n**/tmp/**\nnested/**/*.o\n!nested/keep/**\n", 0o644);
    for f in ["a.txt", "d.txt", "*lit", "xlit", "dir/f", "dor/f", "x/tmp/y/z", "tmp/q", "nested/a/b/c.o", "nested/keep/k.o", "nested/c.c"] {
        write(case.root(), f, f, 0o644);
    }
    let files = compare("dockerignore-classes", &case).await;
    assert!(!has(&files, "c/a.txt") && has(&files, "c/d.txt") && !has(&files, "c/*lit") && has(&files, "c/xlit"));
    assert!(!has(&files, "c/nested/a/b/c.o") && has(&files, "c/nested/keep/k.o"));
}
