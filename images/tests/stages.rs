//! Stage builds against the real daemon (busybox base `local/busybox:1`, see
//! `scripts/import-busybox.sh`). A missing daemon or base image fails these tests loudly.
//! Each test uses its own image and workflow names and removes the images it created.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use dsl::{CopySpec, ImageDef, Network, Stage};
use images::{BuildContext, BuildError, Builder, BuiltImage};
use tokio_util::sync::CancellationToken;

use common::*;

/// What the tests observe on the daemon they ask the `docker` CLI, an independent witness (only
/// the `docker` crate talks to the Docker API).
#[derive(Clone, Copy)]
struct Docker;

impl Docker {
    /// The stdout of `docker <args>`; panics when it fails.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("docker").args(args).output().expect("docker CLI");
        assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker inspect` of an image, as JSON.
    fn inspect_image(&self, reference: &str) -> serde_json::Value {
        let list: serde_json::Value = serde_json::from_str(&self.cli(&["image", "inspect", reference])).expect("inspect JSON");
        list[0].clone()
    }
}

async fn docker() -> (Docker, docker::Daemon) {
    let d = docker::Daemon::connect().await.expect("the Docker daemon is needed for these tests");
    d.inspect_image(BASE)
        .await
        .expect("the Docker daemon is needed")
        .expect("base image local/busybox:1 missing: run scripts/import-busybox.sh");
    (Docker, d)
}

fn stage(name: &str, from: &str, copy: Vec<CopySpec>, run: &[&str]) -> Stage {
    Stage {
        name: name.into(),
        span: Default::default(),
        from: from.into(),
        env: BTreeMap::new(),
        workdir: None,
        user: None,
        copy,
        run: run.iter().map(|s| s.to_string()).collect(),
        network: Network::None,
        limits: dsl::Limits::stage(),
    }
}

fn cp(from: Option<&str>, src: &str, dst: &str) -> CopySpec {
    CopySpec { from: from.map(String::from), src: src.into(), dst: dst.into() }
}

/// build: the tool copied from the context, made executable, plus a by-product; final: busybox
/// with only the tool; unused: never needed by final.
fn tool_image() -> ImageDef {
    let mut build = stage(
        "build",
        BASE,
        vec![cp(None, "tools/*.sh", "/src/")],
        &["chmod +x /src/tool.sh", "echo by-product > /src/other.txt", "echo hello-from-build"],
    );
    build.workdir = Some("/src".into());
    build.env.insert("GREETING".into(), "hi".into());
    ImageDef::Stages(vec![
        build,
        stage("unused", BASE, vec![], &["exit 9"]),
        stage("final", BASE, vec![cp(Some("build"), "/src/tool.sh", "/usr/local/bin/tool")], &[]),
    ])
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tools")).unwrap();
    std::fs::write(dir.path().join("tools/tool.sh"), "#!/bin/sh\necho tool-ok-1\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not copied\n").unwrap();
    dir
}

/// One test's daemon connection, context folder, workflow name and run id.
struct Build {
    docker: Docker,
    builder: Builder,
    workflow: String,
    dir: tempfile::TempDir,
    run_id: String,
    logs: Mutex<Vec<String>>,
    cancel: CancellationToken,
}

impl Build {
    async fn new() -> Build {
        let (docker, daemon) = docker().await;
        let builder = Builder::new(daemon);
        let (workflow, run_id) = (unique("Wf"), unique("run"));
        Build { docker, builder, workflow, dir: context(), run_id, logs: Mutex::new(Vec::new()), cancel: CancellationToken::new() }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn build(&self, name: &str, def: &ImageDef, no_cache: bool) -> Result<BuiltImage, BuildError> {
        let ctx = BuildContext {
            workflow: &self.workflow,
            dir: self.dir(),
            run_id: &self.run_id,
            no_cache,
            container_labels: &Default::default(),
        };
        let log = |image: &str, stage: &str, line: &str| self.logs.lock().unwrap().push(format!("{image}/{stage}: {line}"));
        self.builder.build(&ctx, name, def, &log, &self.cancel).await
    }
}

/// Remove every image labelled `engine.image=<name>` (children first: newest first).
async fn cleanup(docker: &Docker, names: &[&str]) {
    for name in names {
        for _ in 0..3 {
            let filter = format!("label=engine.image={name}");
            // Newest first (the CLI lists newest first), children before their parents.
            let out = docker.cli(&["images", "-a", "-q", "--no-trunc", "--filter", &filter]);
            let found: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
            if found.is_empty() {
                break;
            }
            for id in found {
                let _ = std::process::Command::new("docker").args(["rmi", "-f", id]).output();
            }
        }
    }
}

async fn leftover_containers(docker: &Docker, run_id: &str) -> usize {
    let filter = format!("label=engine.run={run_id}");
    docker.cli(&["ps", "-a", "-q", "--filter", &filter]).lines().filter(|l| !l.is_empty()).count()
}

fn now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// Containers created with label `engine.image=<name>` between `since` and `until`.
fn creates(since: &str, until: &str, name: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args(["events", "--since", since, "--until", until, "--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("label=engine.image={name}"), "--format", "{{.ID}}"])
        .output()
        .expect("docker CLI");
    assert!(out.status.success(), "docker events: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count()
}

/// Output of `sh -c script` in a container from `image`.
async fn run_in(docker: &Docker, image: &images::ImageId, script: &str, run_id: &str) -> String {
    let label = format!("engine.run={run_id}");
    let id = docker.cli(&["create", "--label", &label, "--entrypoint", "/bin/sh", image.as_str(), "-c", script]).trim().to_string();
    let _ = docker.cli(&["start", "-a", &id]);
    let out = std::process::Command::new("docker").args(["logs", &id]).output().expect("docker CLI");
    docker.cli(&["rm", "-f", &id]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn two_stage_image_builds_then_is_found() {
    let b = Build::new().await;
    let (workflow, name) = (b.workflow.clone(), unique("tool"));
    let def = tool_image();

    let first = b.build(&name, &def, false).await;
    let first = match first {
        Ok(f) => f,
        Err(e) => {
            cleanup(&b.docker, &[&name]).await;
            panic!("build failed: {e}");
        }
    };
    assert_eq!(first.stages_built, 2, "build and final, not the unused stage");
    assert_eq!(first.tag, format!("{}/{}:{}", workflow.to_lowercase(), name, first.key.short()));
    assert!(b.logs.lock().unwrap().contains(&format!("{name}/build: hello-from-build")), "{:?}", b.logs.lock().unwrap());
    let inspect = b.docker.inspect_image(&first.tag);
    assert_eq!(inspect["Id"].as_str(), Some(first.id.as_str()));
    let config = &inspect["Config"];
    let labels: HashMap<String, String> = serde_json::from_value(config["Labels"].clone()).unwrap_or_default();
    assert_eq!(labels.get("engine.image"), Some(&name));
    assert_eq!(labels.get("engine.image.key"), Some(&first.key.hex()));
    assert_eq!(config["Cmd"], serde_json::json!(["/bin/sh"]), "the base's Cmd is kept");
    assert!(config["Entrypoint"].as_array().is_none_or(|e| e.is_empty()), "no Entrypoint of a build container leaks into the image");

    let out =
        run_in(&b.docker, &first.id, "/usr/local/bin/tool; test -e /src/other.txt && echo other-present || echo other-absent", &b.run_id)
            .await;
    assert!(out.contains("tool-ok-1"), "{out}");
    assert!(out.contains("other-absent"), "{out}");

    let since = now();
    let again = b.build(&name, &def, false).await.unwrap();
    let until = now();
    assert_eq!(again.id, first.id);
    assert_eq!(again.key, first.key);
    assert_eq!(again.stages_built, 0);
    assert_eq!(creates(&since, &until, &name), 0, "no container was created for a found image");

    assert_eq!(leftover_containers(&b.docker, &b.run_id).await, 0);
    cleanup(&b.docker, &[&name]).await;
}

#[tokio::test]
async fn changed_context_file_rebuilds_only_what_uses_it() {
    let b = Build::new().await;
    let (tool, other) = (unique("tool"), unique("other"));
    let tool_def = tool_image();
    let other_def = ImageDef::Stages(vec![stage("only", BASE, vec![cp(None, "notes.txt", "/notes.txt")], &["cat /notes.txt"])]);

    let result = async {
        let t1 = b.build(&tool, &tool_def, false).await?;
        let o1 = b.build(&other, &other_def, false).await?;
        // Changing a file the tool image does not copy changes nothing.
        std::fs::write(b.dir().join("tools/readme.md"), "not a .sh").unwrap();
        let t_same = b.build(&tool, &tool_def, false).await?;
        assert_eq!((t_same.key, t_same.stages_built), (t1.key, 0));

        std::fs::write(b.dir().join("tools/tool.sh"), "#!/bin/sh\necho tool-ok-2\n").unwrap();
        let t2 = b.build(&tool, &tool_def, false).await?;
        let o2 = b.build(&other, &other_def, false).await?;
        assert_ne!(t2.key, t1.key);
        assert_ne!(t2.id, t1.id);
        assert_eq!(t2.stages_built, 2, "the build stage and the final stage that copies from it");
        assert_eq!((o2.id.as_str(), o2.stages_built), (o1.id.as_str(), 0));
        let out = run_in(&b.docker, &t2.id, "/usr/local/bin/tool", &b.run_id).await;
        assert!(out.contains("tool-ok-2"), "{out}");
        Ok::<_, BuildError>(())
    }
    .await;
    assert_eq!(leftover_containers(&b.docker, &b.run_id).await, 0);
    cleanup(&b.docker, &[&tool, &other]).await;
    result.unwrap();
}

#[tokio::test]
async fn failing_run_names_stage_and_command_and_leaves_no_container() {
    let b = Build::new().await;
    let (name, good) = (unique("bad"), unique("good"));
    let bad = ImageDef::Stages(vec![
        stage("ok", BASE, vec![], &["echo fine > /fine"]),
        stage("breaks", "ok", vec![], &["true", "echo about to fail; exit 3"]),
    ]);
    let err = b.build(&name, &bad, false).await.unwrap_err();
    let missing = ImageDef::Stages(vec![stage("s", BASE, vec![cp(None, "nothing/**", "/x/")], &[])]);
    let invalid = b.build(&name, &missing, false).await.unwrap_err();
    let leftovers = leftover_containers(&b.docker, &b.run_id).await;

    let good_def = tool_image();
    let g1 = b.build(&good, &good_def, false).await;
    let g2 = b.build(&good, &good_def, true).await;
    cleanup(&b.docker, &[&name, &good]).await;

    match &err {
        BuildError::StageFailed { image, stage, message } => {
            assert_eq!((image.as_str(), stage.as_str()), (name.as_str(), "breaks"));
            assert!(message.contains("echo about to fail; exit 3") && message.contains('3'), "{message}");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert!(matches!(&invalid, BuildError::Invalid { message, .. } if message.contains("matches no file")), "{invalid:?}");
    assert_eq!(leftovers, 0, "no build container remains after a failure");
    let (g1, g2) = (g1.unwrap(), g2.unwrap());
    assert_eq!(g2.stages_built, 2, "no_cache rebuilds every needed stage");
    assert_eq!(g2.key, g1.key);
    assert_eq!(leftover_containers(&b.docker, &b.run_id).await, 0);
}

#[tokio::test]
async fn cancel_stops_a_running_instruction_and_removes_its_container() {
    let b = Build::new().await;
    let name = unique("slow");
    let def = ImageDef::Stages(vec![stage("slow", BASE, vec![], &["sleep 60"])]);
    let started = std::time::Instant::now();
    let cancel_soon = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        b.cancel.cancel();
    };
    let (result, ()) = tokio::join!(b.build(&name, &def, false), cancel_soon);
    let leftovers = leftover_containers(&b.docker, &b.run_id).await;
    cleanup(&b.docker, &[&name]).await;
    assert!(matches!(result, Err(BuildError::Cancelled(ref n)) if *n == name), "{result:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "cancel is prompt");
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn independent_stages_build_concurrently_and_unneeded_ones_not_at_all() {
    let b = Build::new().await;
    let name = unique("fanin");
    // `slow` and `quick` are independent; `last` needs both; `quick` ends while `slow` runs.
    let def = ImageDef::Stages(vec![
        stage("slow", BASE, vec![], &["echo slow-start; sleep 3; echo slow-end > /slow"]),
        stage("quick", BASE, vec![], &["echo quick > /quick; echo quick-done"]),
        stage("unneeded", BASE, vec![], &["echo never"]),
        stage("last", "quick", vec![cp(Some("slow"), "/slow", "/slow")], &["cat /quick /slow"]),
    ]);
    let result = b.build(&name, &def, false).await;
    cleanup(&b.docker, &[&name]).await;
    let built = result.unwrap();
    assert_eq!(built.stages_built, 3);
    let logs = b.logs.lock().unwrap().clone();
    let at = |line: &str| logs.iter().position(|l| l.ends_with(line)).unwrap_or_else(|| panic!("no `{line}` in {logs:?}"));
    assert!(at("quick-done") < at("slow-end"), "quick did not wait for slow: {logs:?}");
    assert!(!logs.iter().any(|l| l.contains("never")), "{logs:?}");
    assert_eq!(leftover_containers(&b.docker, &b.run_id).await, 0);
}
