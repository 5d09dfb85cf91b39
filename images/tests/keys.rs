//! What an image's key covers, against the real daemon: a Dockerfile image is keyed on what its
//! build reads (not on unrelated files of the context) and on its bases' IDs, as stage images
//! are; re-tagging a base rebuilds both kinds.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use images::{BuildContext, Builder, BuiltImage};
use tokio_util::sync::CancellationToken;

use common::*;

fn dockerfile(args: &[(&str, &str)], target: Option<&str>) -> dsl::ImageDef {
    dsl::ImageDef::Dockerfile {
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        network: dsl::Network::None,
        args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        target: target.map(str::to_string),
    }
}

async fn build(dir: &Path, wf: &str, name: &str, def: &dsl::ImageDef) -> BuiltImage {
    let b = Builder::new(docker::Daemon::connect().await.expect("the Docker daemon is not reachable"));
    let ctx = BuildContext { workflow: wf, dir, run_id: "t", no_cache: false, container_labels: &HashMap::new() };
    let quiet = |_: &str, _: &str, _: &str| {};
    b.build(&ctx, name, def, &quiet, &CancellationToken::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn cleanup(wf: &str) {
    let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for r in out.lines().filter(|r| r.starts_with(&format!("{wf}/")) || r.starts_with(wf)) {
        let _ = Command::new("docker").args(["rmi", "-f", r]).output();
    }
}

#[tokio::test]
async fn a_dockerfile_image_is_keyed_on_what_it_reads() {
    let wf = unique("engkeys");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("Dockerfile"), "FROM local/busybox:1\nCOPY app/ /app/\nCOPY *.cfg /etc/\n");
    write(&root.join("app/main.txt"), "v1");
    write(&root.join("a.cfg"), "cfg");
    write(&root.join("README.md"), "readme");
    write(&root.join("workflow.yml"), "version: 1\n");
    let def = dockerfile(&[], None);
    let first = build(root, &wf, "app", &def).await;
    assert_eq!(first.stages_built, 1);

    // Files the build does not read: same key, same image, nothing built.
    write(&root.join("README.md"), "edited");
    write(&root.join("workflow.yml"), "version: 1\n# edited\n");
    write(&root.join("notes/new.txt"), "new");
    let t = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(root.join("app/main.txt"), t).unwrap();
    let again = build(root, &wf, "app", &def).await;
    assert_eq!((again.key, again.id.clone(), again.stages_built), (first.key, first.id.clone(), 0));

    // Files it reads: a new key and a new image.
    write(&root.join("b.cfg"), "another match of *.cfg");
    let wider = build(root, &wf, "app", &def).await;
    assert_ne!(wider.key, first.key);
    write(&root.join("app/main.txt"), "v2");
    let edited = build(root, &wf, "app", &def).await;
    assert_ne!(edited.key, wider.key);
    assert_eq!(edited.stages_built, 1);
    assert_eq!(docker(&["run", "--rm", &edited.tag, "cat", "/app/main.txt"]), "v2");

    // `COPY .` reads the whole context: the README is then part of it.
    write(&root.join("Dockerfile"), "FROM local/busybox:1\nCOPY . /ctx/\n");
    let all = build(root, &wf, "app", &def).await;
    write(&root.join("README.md"), "edited again");
    let all_again = build(root, &wf, "app", &def).await;
    assert_ne!(all.key, all_again.key);
    cleanup(&wf);
}

#[tokio::test]
async fn build_arguments_and_target_are_in_the_key_and_reach_the_build() {
    let wf = unique("engargs");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("Dockerfile"),
        "ARG BASE=local/busybox:1\nFROM $BASE AS one\nARG MSG=default\nRUN echo $MSG > /msg\nFROM one AS two\nRUN echo two > /two\n",
    );
    let plain = build(root, &wf, "a", &dockerfile(&[], None)).await;
    assert_eq!(docker(&["run", "--rm", &plain.tag, "cat", "/msg", "/two"]), "default\ntwo");
    let hello = build(root, &wf, "a", &dockerfile(&[("MSG", "hello")], None)).await;
    assert_ne!(hello.key, plain.key);
    assert_eq!(docker(&["run", "--rm", &hello.tag, "cat", "/msg"]), "hello");
    let one = build(root, &wf, "a", &dockerfile(&[("MSG", "hello")], Some("one"))).await;
    assert_ne!(one.key, hello.key);
    let out = Command::new("docker").args(["run", "--rm", &one.tag, "cat", "/two"]).output().unwrap();
    assert!(!out.status.success(), "the target stage `one` has no /two");
    cleanup(&wf);
}

#[tokio::test]
async fn a_retagged_base_rebuilds_dockerfile_and_stage_images() {
    let wf = unique("engbase");
    let base = format!("{wf}-base/img:1");
    docker(&["tag", "local/busybox:1", &base]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("Dockerfile"), &format!("FROM {base}\nRUN echo built > /built\n"));
    let stages = dsl::ImageDef::Stages(vec![dsl::Stage {
        name: "s".into(),
        span: Default::default(),
        from: base.clone(),
        env: Default::default(),
        workdir: None,
        user: None,
        copy: vec![],
        run: vec!["echo built > /built".into()],
        network: dsl::Network::None,
        limits: dsl::Limits::stage(),
    }]);
    let df = build(root, &wf, "df", &dockerfile(&[], None)).await;
    let st = build(root, &wf, "st", &stages).await;
    assert_eq!(build(root, &wf, "df", &dockerfile(&[], None)).await.stages_built, 0, "up to date");
    assert_eq!(build(root, &wf, "st", &stages).await.stages_built, 0, "up to date");

    // The tag now names another image: both must be rebuilt on it.
    classic_build(&base, "FROM local/busybox:1\nRUN echo new > /new-base\n");
    let df2 = build(root, &wf, "df", &dockerfile(&[], None)).await;
    let st2 = build(root, &wf, "st", &stages).await;
    assert_ne!(df2.key, df.key);
    assert_ne!(st2.key, st.key);
    assert_eq!((df2.stages_built, st2.stages_built), (1, 1));
    assert_eq!(docker(&["run", "--rm", &df2.tag, "cat", "/new-base"]), "new");
    assert_eq!(docker(&["run", "--rm", &st2.tag, "cat", "/new-base"]), "new");
    cleanup(&wf);
    let _ = Command::new("docker").args(["rmi", "-f", &base]).output();
}

#[tokio::test]
async fn a_base_with_onbuild_triggers_keys_the_whole_context() {
    let wf = unique("engonbuild");
    let base = format!("{wf}-base/onbuild:1");
    classic_build(&base, "FROM local/busybox:1\nONBUILD COPY . /ob/\n");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("Dockerfile"), &format!("FROM {base}\n"));
    write(&root.join("README.md"), "v1");
    let first = build(root, &wf, "ob", &dockerfile(&[], None)).await;
    assert_eq!(docker(&["run", "--rm", &first.tag, "cat", "/ob/README.md"]), "v1");
    write(&root.join("README.md"), "v2");
    let second = build(root, &wf, "ob", &dockerfile(&[], None)).await;
    assert_ne!(second.key, first.key, "the trigger copies the README");
    assert_eq!(docker(&["run", "--rm", &second.tag, "cat", "/ob/README.md"]), "v2");
    cleanup(&wf);
    let _ = Command::new("docker").args(["rmi", "-f", &base]).output();
}
