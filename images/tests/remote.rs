//! Engine-built images through a registry (the daemon does the transfer): a built image is
//! pushed under its key in the background; on a "machine" that lacks it (its images removed),
//! the next build pulls it instead of building (no build container created), with the same key
//! and the same image ID; a registry that cannot be reached costs one warning and a build.
//! Against Debian's `docker-registry` on a free port of 127.0.0.1 (plain HTTP: the daemon treats
//! 127.0.0.0/8 registries as insecure).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::{BuildContext, Builder, BuiltImage, ImageRemote};
use tokio_util::sync::CancellationToken;

use common::*;

/// A registry of this test, stopped (and reaped) and its storage removed when the test ends.
struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port of 127.0.0.1 (nobody listens on it once this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Debian's `docker-registry` on a free port, without auth; `None` (SKIP) when it is absent
/// outside CI.
fn start_registry() -> Option<Registry> {
    let bin = Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/docker-registry is absent; install it with `apt-get install -y docker-registry`"
        );
        println!("SKIP: /usr/bin/docker-registry is absent; install it with `apt-get install -y docker-registry`");
        return None;
    }
    let dir = std::env::temp_dir().join(unique("engtest-remote-registry"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new(bin)
        .args(["serve", dir.join("config.yml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let registry = Registry { child, dir, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(registry)
}

fn remote(port: u16, reads: bool, writes: bool) -> ImageRemote {
    ImageRemote::new(move |key| format!("127.0.0.1:{port}/cache:image-{}", key.hex()), None, reads, writes, Duration::from_secs(120))
}

/// Builds image `name` (one stage on busybox, copying a file of `dir` and running two commands)
/// with `remote`; returns it and the log lines.
async fn build(dir: &Path, wf: &str, name: &str, run_id: &str, remote: Option<ImageRemote>) -> (BuiltImage, Vec<String>) {
    let def = dsl::ImageDef::Stages(vec![dsl::Stage {
        name: "main".into(),
        span: Default::default(),
        from: BASE.into(),
        env: Default::default(),
        workdir: None,
        user: None,
        copy: vec![dsl::CopySpec { src: "tool.sh".into(), dst: "/usr/local/bin/tool".into(), from: None }],
        run: vec!["chmod 0755 /usr/local/bin/tool".into(), "echo built > /built".into()],
        network: dsl::Network::None,
        limits: dsl::Limits::stage(),
    }]);
    let b = Builder::new(docker::Daemon::connect().await.expect("the Docker daemon is not reachable")).with_remote(remote);
    let ctx = BuildContext { workflow: wf, dir, run_id, no_cache: false, container_labels: &HashMap::new() };
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |_: &str, stage: &str, line: &str| lines.lock().unwrap().push(format!("{stage}: {line}"));
    let built = b.build(&ctx, name, &def, &log, &CancellationToken::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    (built, lines.into_inner().unwrap())
}

/// Removes every image of `name` (final, stage and per-instruction images), as on a machine
/// that never built it.
fn remove_images(name: &str) {
    let ids = docker(&["images", "-a", "-q", "--filter", &format!("label=engine.image={name}")]);
    for id in ids.lines() {
        docker_quiet(&["rmi", "-f", id]);
    }
}

/// The daemon's container events of build run `run_id` between `since` and now.
fn containers_created(run_id: &str, since: f64) -> usize {
    let until = now() + 1.0;
    let out = docker(&[
        "events",
        "--since",
        &format!("{since:.3}"),
        "--until",
        &format!("{until:.3}"),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &format!("label=engine.run={run_id}"),
        "--format",
        "{{.ID}}",
    ]);
    out.lines().filter(|l| !l.is_empty()).count()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test]
async fn a_built_image_is_pushed_and_pulled_on_a_machine_that_lacks_it_instead_of_rebuilt() {
    let Some(registry) = start_registry() else { return };
    let (wf, name) = (unique("engremote"), unique("engremote-tool"));
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tool.sh"), "#!/bin/sh\necho tool\n");
    remove_images(&name);

    // First machine: built, then pushed in the background; `finish` waits for the push.
    let shared = remote(registry.port, true, true);
    let run1 = unique("t1");
    let since = now();
    let (first, _) = build(dir.path(), &wf, &name, &run1, Some(shared.clone())).await;
    assert!(first.stages_built >= 1 && !first.pulled, "{first:?}");
    assert!(containers_created(&run1, since) >= 1, "the first build creates build containers");
    let report = shared.finish().await;
    assert_eq!(report.pushed, vec![(name.clone(), first.key)], "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
    let reference = shared.reference(&first.key);
    let local = docker(&["images", "-q", &reference]);
    assert!(local.is_empty(), "the registry tag is not left on the daemon: {local}");

    // Second machine: the image is gone; the build pulls it, creates no container.
    remove_images(&name);
    let again = remote(registry.port, true, true);
    let run2 = unique("t2");
    let since = now();
    let (second, lines) = build(dir.path(), &wf, &name, &run2, Some(again.clone())).await;
    assert_eq!(containers_created(&run2, since), 0, "a pulled image is not built: {lines:?}");
    assert!(second.pulled && second.stages_built == 0, "{second:?}");
    assert_eq!(second.key, first.key, "the same key: the steps on it keep their keys");
    assert_eq!(second.id, first.id, "push and pull keep the image (its ID is its config's digest)");
    assert_eq!(second.tag, first.tag);
    assert!(lines.iter().any(|l| l.contains("pulled from the remote cache")), "{lines:?}");
    let report = again.finish().await;
    assert_eq!(report.pulled, vec![(name.clone(), first.key)], "{report:?}");
    assert!(report.pushed.is_empty(), "a pulled image is not pushed back: {report:?}");
    assert_eq!(docker(&["run", "--rm", &second.tag, "cat", "/built"]), "built");
    assert!(docker(&["images", "-q", &reference]).is_empty(), "the registry tag is removed after the pull");

    // Found locally now: neither pulled nor built.
    let (third, _) = build(dir.path(), &wf, &name, &unique("t3"), Some(again.clone())).await;
    assert!(!third.pulled && third.stages_built == 0 && third.id == first.id, "{third:?}");

    // A registry that cannot be reached: one warning, built as without a remote; a remote that
    // only reads pushes nothing.
    remove_images(&name);
    let down = remote(free_port(), true, false);
    let (fourth, lines) = build(dir.path(), &wf, &name, &unique("t4"), Some(down.clone())).await;
    assert!(fourth.stages_built >= 1 && !fourth.pulled, "{fourth:?}");
    assert_eq!(fourth.key, first.key);
    let report = down.finish().await;
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.pushed.is_empty() && report.pulled.is_empty(), "{report:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("warning:")).count(), 1, "{lines:?}");
    remove_images(&name);
}
