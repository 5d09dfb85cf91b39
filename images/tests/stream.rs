//! The context of a Dockerfile build is streamed: sending a large file costs bounded memory
//! (its own test binary, so that the peak RSS measured is this build's alone).

use std::collections::HashMap;

use images::{BuildContext, Builder};
use tokio_util::sync::CancellationToken;

fn peak_rss_bytes() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    u64::try_from(usage.ru_maxrss).unwrap() * 1024
}

#[tokio::test]
async fn a_large_context_file_is_streamed_in_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM local/busybox:1\nCOPY big.bin /big.bin\n").unwrap();
    // Sparse: no disk space here, but every byte is read and sent.
    std::fs::File::create(dir.path().join("big.bin")).unwrap().set_len(SIZE).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let wf = format!("engstream{}x{}", std::process::id(), nanos % 1_000_000_000);
    let b = Builder::new(docker::Daemon::connect().await.expect("the Docker daemon is not reachable"));
    let ctx = BuildContext { workflow: &wf, dir: dir.path(), run_id: "t", no_cache: false, container_labels: &HashMap::new() };
    let def = dsl::ImageDef::Dockerfile {
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        network: dsl::Network::None,
        args: Default::default(),
        target: None,
    };
    let before = peak_rss_bytes();
    let quiet = |_: &str, _: &str, _: &str| {};
    let built = b.build(&ctx, "big", &def, &quiet, &CancellationToken::new()).await.expect("build");
    let peak = peak_rss_bytes();
    let _ = std::process::Command::new("docker").args(["rmi", "-f", &built.tag]).output();
    assert!(peak < before + (64 << 20), "peak RSS grew from {before} to {peak} bytes for a {SIZE}-byte file");
}
