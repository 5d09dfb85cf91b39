//! Dockerfile images, base pulls, rootfs imports, list/prune, against the real daemon.
//! A missing daemon fails these tests loudly: they are the only proof the Docker calls work.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use images::{BuildContext, BuildError, Builder, BuiltImage};
use tokio_util::sync::CancellationToken;

use common::*;

async fn builder() -> Builder {
    let daemon = docker::Daemon::connect().await.expect("the Docker daemon is not reachable");
    Builder::new(daemon)
}

struct Logs(Mutex<Vec<(String, String, String)>>);
impl Logs {
    fn new() -> Logs {
        Logs(Mutex::new(Vec::new()))
    }
    fn push(&self, image: &str, stage: &str, line: &str) {
        self.0.lock().unwrap().push((image.into(), stage.into(), line.into()));
    }
    fn lines(&self) -> Vec<(String, String, String)> {
        self.0.lock().unwrap().clone()
    }
}

fn def(dockerfile: &str, context: &str) -> dsl::ImageDef {
    dsl::ImageDef::Dockerfile {
        dockerfile: dockerfile.into(),
        context: context.into(),
        network: dsl::Network::None,
        args: Default::default(),
        target: None,
    }
}

fn remove_engine_images(workflow: &str) {
    let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for r in out.lines().filter(|r| r.starts_with(&format!("{workflow}/"))) {
        docker_quiet(&["rmi", r]);
    }
}

fn multi(wf: &str) -> String {
    format!("FROM local/busybox:1 AS build\nRUN echo built > /made.txt # {wf}\nFROM local/busybox:1\nCOPY --from=build /made.txt /made.txt\nCOPY app/ /app/\n")
}

/// Images whose build step mentions `marker`: intermediate images the builder left behind.
fn leftover_steps(marker: &str) -> Vec<String> {
    let ids = docker(&["images", "-a", "-q", "--no-trunc"]);
    let mut args = vec!["inspect", "--format", "{{.Id}} {{json .ContainerConfig.Cmd}}"];
    args.extend(ids.lines());
    let out = Command::new("docker").args(&args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(marker)).map(str::to_string).collect()
}

#[tokio::test]
async fn dockerfile_builds_caches_and_keys_on_the_context() {
    let b = builder().await;
    let wf = unique("engtest-df");
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("docker/Dockerfile"), &multi(&wf));
    write(&dir.path().join("app/main.txt"), "v1");
    write(&dir.path().join("app/notes.log"), "ignored");
    write(&dir.path().join(".dockerignore"), "# logs are noise\n\n**/*.log\n");
    let ctx = BuildContext { workflow: &wf, dir: dir.path(), run_id: "t", no_cache: false, container_labels: &Default::default() };
    let logs = Logs::new();
    let log = |i: &str, s: &str, l: &str| logs.push(i, s, l);
    let cancel = CancellationToken::new();
    let d = def("docker/Dockerfile", ".");

    let first = b.build(&ctx, "legacy", &d, &log, &cancel).await.expect("first build");
    assert_eq!(first.stages_built, 1);
    assert_eq!(first.key.hex().len(), 64);
    assert_eq!(first.tag, format!("{wf}/legacy:{}", first.key.short()));
    assert!(logs.lines().iter().any(|(i, s, _)| i == "legacy" && s == "dockerfile"), "builder output is logged");
    let labels = docker(&["inspect", "--format", "{{json .Config.Labels}}", &first.tag]);
    let labels: HashMap<String, String> = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels.get("engine.image").map(String::as_str), Some("legacy"));
    assert_eq!(labels.get("engine.image.key"), Some(&first.key.hex()));
    assert_eq!(docker(&["inspect", "--format", "{{.Id}}", &first.tag]), first.id.as_str());
    let out = docker(&["run", "--rm", &first.tag, "cat", "/made.txt", "/app/main.txt"]);
    assert_eq!(out, "built\nv1");

    let second = b.build(&ctx, "legacy", &d, &log, &cancel).await.expect("second build");
    assert_eq!((second.id.as_str(), second.stages_built), (first.id.as_str(), 0));

    // An ignored file does not enter the key.
    write(&dir.path().join("app/notes.log"), "edited");
    let third = b.build(&ctx, "legacy", &d, &log, &cancel).await.expect("third build");
    assert_eq!((third.key, third.stages_built), (first.key, 0));

    // A sent file does.
    write(&dir.path().join("app/main.txt"), "v2");
    let fourth = b.build(&ctx, "legacy", &d, &log, &cancel).await.expect("fourth build");
    assert_ne!(fourth.key, first.key);
    assert_ne!(fourth.id, first.id);
    assert_eq!(fourth.stages_built, 1);

    // A Dockerfile outside the context is sent under a name of its own, as the docker CLI does.
    write(&dir.path().join("ctx/file.txt"), "inside");
    write(&dir.path().join("outside.Dockerfile"), "FROM local/busybox:1\nCOPY file.txt /file.txt\n");
    let outside = b.build(&ctx, "outside", &def("outside.Dockerfile", "ctx"), &log, &cancel).await.expect("outside");
    assert_eq!(docker(&["run", "--rm", &outside.tag, "cat", "/file.txt"]), "inside");

    remove_engine_images(&wf);
    assert_eq!(leftover_steps(&wf), Vec::<String>::new(), "intermediate images are removed");
}

/// Build image `name` of workflow `wf` from a context holding only `Dockerfile` (none if `None`).
async fn build_single(b: &Builder, wf: &str, name: &str, dockerfile: Option<&str>) -> Result<BuiltImage, BuildError> {
    let dir = tempfile::tempdir().unwrap();
    if let Some(text) = dockerfile {
        write(&dir.path().join("Dockerfile"), text);
    }
    let ctx = BuildContext { workflow: wf, dir: dir.path(), run_id: "t", no_cache: false, container_labels: &Default::default() };
    let log = |_: &str, _: &str, _: &str| {};
    b.build(&ctx, name, &def("Dockerfile", "."), &log, &CancellationToken::new()).await
}

#[tokio::test]
async fn failing_run_is_stage_failed() {
    let b = builder().await;
    let wf = unique("engtest-fail");
    let text = format!("FROM local/busybox:1\nRUN echo {wf} > /a\nRUN echo about to fail && exit 7\n");
    let err = build_single(&b, &wf, "bad", Some(&text)).await.unwrap_err();
    match err {
        BuildError::StageFailed { image, stage, message } => {
            assert_eq!((image.as_str(), stage.as_str()), ("bad", "dockerfile"));
            assert!(message.contains("exit 7") || message.contains("code: 7"), "{message}");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert_eq!(leftover_steps(&wf), Vec::<String>::new(), "a failed build leaves no step image");
    remove_engine_images(&wf);
}

#[tokio::test]
async fn missing_dockerfile_is_invalid() {
    let b = builder().await;
    let err = build_single(&b, "engtest-missing", "x", None).await.unwrap_err();
    assert!(matches!(err, BuildError::Invalid { .. }), "{err:?}");
}

#[tokio::test]
async fn import_rootfs_gives_a_runnable_image() {
    let b = builder().await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("busybox-static provides /bin/busybox");
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/echo")).unwrap();
    let reference = format!("{}/root:1", unique("engtest-import"));
    let id = b.import_rootfs(root.path(), &reference).await.expect("import");
    assert!(id.as_str().starts_with("sha256:"), "{id}");
    assert_eq!(docker(&["run", "--rm", &reference, "/bin/sh", "-c", "echo ok"]), "ok");
    docker_quiet(&["rmi", &reference]);

    let file = root.path().join("bin/busybox");
    assert!(matches!(b.import_rootfs(&file, &reference).await, Err(BuildError::Invalid { .. })));
}

/// The registry this test started, stopped (and reaped) when the test ends, even by a panic.
struct Registry(Option<(std::process::Child, std::path::PathBuf)>);
impl Drop for Registry {
    fn drop(&mut self) {
        if let Some((child, dir)) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts a local registry on 127.0.0.1:5000 unless one answers.
fn local_registry() -> Option<Registry> {
    let up = || std::net::TcpStream::connect("127.0.0.1:5000").is_ok();
    if up() {
        return Some(Registry(None));
    }
    let bin = Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        // In CI the registry is part of the environment (.ci/run installs it): never skip there.
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/docker-registry is absent; .ci/run installs it with `apt-get install -y docker-registry`"
        );
        println!("SKIP: /usr/bin/docker-registry is absent; install it with `apt-get install -y docker-registry`");
        return None;
    }
    // Our own config: the package's asks for htpasswd auth and listens on every interface.
    let dir = std::env::temp_dir().join(unique("engtest-registry"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:5000\n",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let registry = Registry(Some((
        Command::new(bin)
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry"),
        dir,
    )));
    for _ in 0..100 {
        if up() {
            return Some(registry);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("docker-registry did not start listening on 127.0.0.1:5000");
}

#[tokio::test]
async fn ensure_base_pulls_from_a_local_registry() {
    let Some(_registry) = local_registry() else { return };
    let b = builder().await;
    let reference = format!("127.0.0.1:5000/engine-test/busybox:{}", unique("t"));
    docker(&["tag", "local/busybox:1", &reference]);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    let logs = Logs::new();
    let log = |i: &str, s: &str, l: &str| logs.push(i, s, l);
    let id = b.ensure_base(&reference, &log).await.expect("pull");
    assert_eq!(id.as_str(), docker(&["inspect", "--format", "{{.Id}}", &reference]));
    let lines = logs.lines();
    assert!(!lines.is_empty() && lines.iter().all(|(i, s, _)| i == &reference && s == "pull"), "{lines:?}");
    // Present now: no pull, no log.
    let quiet = Logs::new();
    let qlog = |i: &str, s: &str, l: &str| quiet.push(i, s, l);
    assert_eq!(b.ensure_base(&reference, &qlog).await.expect("present"), id);
    assert!(quiet.lines().is_empty());
    docker_quiet(&["rmi", &reference]);

    // Not in the registry: Environment, with the offline hint.
    let missing = format!("127.0.0.1:5000/engine-test/nothing:{}", unique("t"));
    match b.ensure_base(&missing, &log).await {
        Err(e @ BuildError::Environment(_)) => {
            let m = e.to_string();
            assert!(
                e.is_environment() && m.contains(&format!("cannot pull base image `{missing}`")) && m.contains("engine images import"),
                "{m}"
            )
        }
        other => panic!("expected Environment, got {other:?}"),
    }
}

#[tokio::test]
async fn list_and_prune() {
    let b = builder().await;
    let wf = unique("engtest-ls");
    let text = format!("FROM local/busybox:1\nRUN echo {wf} > /id\n");
    let built = build_single(&b, &wf, "listed", Some(&text)).await.expect("build");
    let listed = b.list().await.expect("list");
    let info = listed.iter().find(|i| i.id == built.id).expect("the built image is listed");
    assert_eq!((info.name.as_str(), info.key), ("listed", Some(built.key)));
    assert!(info.tags.contains(&built.tag));
    assert!(listed.windows(2).all(|w| w[0].created >= w[1].created), "newest first");

    // Keep every other engine image (other tests run concurrently); prune only ours.
    let keep: Vec<images::ImageId> = b.list().await.unwrap().into_iter().map(|i| i.id).filter(|id| id != &built.id).collect();
    let mut keep_all = keep.clone();
    keep_all.extend(all_engine_images().into_iter().filter_map(|id| id.parse().ok()).filter(|id| id != &built.id));
    let removed = b.prune(&keep_all).await.expect("prune");
    assert_eq!(removed, vec![built.id.clone()]);
    assert!(b.list().await.unwrap().iter().all(|i| i.id != built.id));
}

fn all_engine_images() -> Vec<String> {
    let out = docker(&["images", "-a", "--no-trunc", "--filter", "label=engine.image", "--format", "{{.ID}}"]);
    out.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn cancelled_build_is_cancelled() {
    let b = builder().await;
    let wf = unique("engtest-cancel");
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("Dockerfile"), &format!("FROM local/busybox:1\nRUN sleep 30 # {wf}\n"));
    let ctx = BuildContext { workflow: &wf, dir: dir.path(), run_id: "t", no_cache: false, container_labels: &Default::default() };
    let log = |_: &str, _: &str, _: &str| {};
    let cancel = CancellationToken::new();
    let timer = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        timer.cancel();
    });
    let started = std::time::Instant::now();
    let err = b.build(&ctx, "slow", &def("Dockerfile", "."), &log, &cancel).await.unwrap_err();
    assert!(matches!(err, BuildError::Cancelled(ref i) if i == "slow"), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "cancelled promptly");
    // The daemon stops the build when the request is dropped; forcerm then removes its container.
    let build_container = || docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]).contains(&wf);
    for _ in 0..50 {
        if !build_container() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!build_container(), "the cancelled build's container is removed");
    assert_eq!(leftover_steps(&wf), Vec::<String>::new());
}
