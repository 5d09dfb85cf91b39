//! The image side of a remote cache made from a `remote::Remote` ([`super::image_remote`]):
//! against a registry with htpasswd basic auth, the credentials of Docker's `config.json` reach
//! the daemon's push and pull (an image built on one "machine" is pulled on another that lacks
//! it, with the same key), and without credentials the registry's refusal is one warning naming
//! no secret, and the image is built.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

const USER: &str = "engine-test";
const PASSWORD: &str = "pw-never-shown-7f3a";

fn remote_for(registry: &remote::testing::TestRegistry, docker_config: &Path) -> remote::Remote {
    let config = remote::RemoteConfig {
        url: registry.url(),
        mode: remote::Mode::ReadWrite,
        insecure: false,
        docker_config: Some(docker_config.to_path_buf()),
        timeout: Duration::from_secs(30),
    };
    remote::Remote::new(config).expect("a remote for the test registry")
}

fn def() -> dsl::ImageDef {
    dsl::ImageDef::Stages(vec![dsl::Stage {
        name: "main".into(),
        span: Default::default(),
        from: "local/busybox:1".into(),
        env: Default::default(),
        workdir: None,
        user: None,
        copy: Vec::new(),
        run: vec!["echo shared > /shared".into()],
        network: dsl::Network::None,
        limits: dsl::Limits::stage(),
    }])
}

async fn build(dir: &Path, wf: &str, name: &str, remote: images::ImageRemote) -> (images::BuiltImage, Vec<String>) {
    let daemon = docker::Daemon::connect().await.expect("the Docker daemon is not reachable");
    let builder = images::Builder::new(daemon).with_remote(Some(remote));
    let ctx = images::BuildContext { workflow: wf, dir, run_id: "engine-unit", no_cache: false, container_labels: &HashMap::new() };
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |_: &str, stage: &str, line: &str| lines.lock().unwrap().push(format!("{stage}: {line}"));
    let built = builder.build(&ctx, name, &def(), &log, &CancellationToken::new()).await.expect("build");
    (built, lines.into_inner().unwrap())
}

fn remove_images(name: &str) {
    let out = std::process::Command::new("docker")
        .args(["images", "-a", "-q", "--filter", &format!("label=engine.image={name}")])
        .output()
        .expect("docker CLI");
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = std::process::Command::new("docker").args(["rmi", "-f", id]).output();
    }
}

/// Removes the test's images whatever happens.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_images(&self.0);
    }
}

#[tokio::test]
async fn built_images_are_pushed_and_pulled_with_the_docker_config_credentials() {
    let Some(registry) = remote::testing::TestRegistry::start_with_auth(USER, PASSWORD) else { return };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let (wf, name) = (format!("engunit{}", std::process::id()), format!("engunit-img-{}-{}", std::process::id(), nanos % 1_000_000_000));
    let _cleanup = Cleanup(name.clone());
    let dir = tempfile::tempdir().unwrap();
    let with_auth = registry.docker_config_with(&dir.path().join("docker"), USER, PASSWORD);
    let anonymous = dir.path().join("empty-docker-config");
    std::fs::create_dir_all(&anonymous).unwrap();

    // Without credentials: the registry refuses the pull; one warning, no secret, a build.
    let refused = super::image_remote(&remote_for(&registry, &anonymous), Duration::from_secs(120));
    let (first, _) = build(dir.path(), &wf, &name, refused.clone()).await;
    assert!(first.stages_built >= 1 && !first.pulled, "{first:?}");
    let report = refused.finish().await;
    assert!(report.pushed.is_empty(), "an anonymous push to an authenticated registry fails: {report:?}");
    assert!(!report.warnings.is_empty(), "{report:?}");
    assert!(report.warnings.iter().all(|w| !w.contains(PASSWORD)), "{report:?}");

    // With them: the next build (another image, forced by removing it) is pushed...
    remove_images(&name);
    let shared = super::image_remote(&remote_for(&registry, &with_auth), Duration::from_secs(120));
    let (built, _) = build(dir.path(), &wf, &name, shared.clone()).await;
    assert_eq!(built.key, first.key);
    let report = shared.finish().await;
    assert_eq!(report.pushed, vec![(name.clone(), built.key)], "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
    assert!(registry.count_requests("PUT", "/manifests/image-") >= 1, "{}", registry.log());

    // ... and pulled, not built, where it is missing: same key, same image.
    remove_images(&name);
    let (pulled, lines) = build(dir.path(), &wf, &name, shared.clone()).await;
    assert!(pulled.pulled && pulled.stages_built == 0, "{pulled:?} {lines:?}");
    assert_eq!((pulled.key, &pulled.id), (built.key, &built.id));
    assert!(lines.iter().all(|l| !l.contains(PASSWORD)), "{lines:?}");
    assert!(!registry.log().contains(PASSWORD));
}
