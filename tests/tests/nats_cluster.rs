//! The work queue on a three-node NATS cluster: three `nats-server` containers on a private
//! Docker network (Debian's binary in the Debian test image), the stream replicated on all
//! three. One node killed (`docker kill`) loses no job: the others keep taking and finishing
//! them (each at least once). The harness drives the Docker CLI; containers and network are
//! removed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Job, Queue};

const NATS_BIN: &str = "/usr/sbin/nats-server";
const BASE: &str = "local/debian:bookworm";
const IMAGE: &str = "engine-test/nats:1";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI");
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image: the host's nats-server on the Debian test image (built once, reused).
fn image() {
    if Command::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(NATS_BIN, ctx.path().join("nats-server")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nCOPY nats-server /usr/local/bin/nats-server\nENTRYPOINT [\"/usr/local/bin/nats-server\"]\n"),
    )
    .unwrap();
    docker(&["build", "-q", "-t", IMAGE, ctx.path().to_str().unwrap()]);
}

struct NatsCluster {
    network: String,
    nodes: Vec<String>,
}

impl NatsCluster {
    fn start() -> Option<NatsCluster> {
        if !std::path::Path::new(NATS_BIN).is_file() {
            assert!(std::env::var_os("CI").is_none(), "{NATS_BIN} is missing (install Debian's nats-server package)");
            eprintln!("SKIP: {NATS_BIN} is missing");
            return None;
        }
        image();
        let tag = format!("engine-test-nats-{}", std::process::id());
        docker(&["network", "create", "--label", "engine.test=nats", &tag]);
        let mut cluster = NatsCluster { network: tag.clone(), nodes: Vec::new() };
        let names: Vec<String> = (1..=3).map(|i| format!("{tag}-n{i}")).collect();
        let routes: Vec<String> = names.iter().map(|n| format!("nats://{n}:6222")).collect();
        for name in &names {
            docker(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                &tag,
                "--label",
                "engine.test=nats",
                IMAGE,
                "-js",
                "-sd",
                "/tmp/js",
                "-p",
                "4222",
                "--server_name",
                name,
                "--cluster_name",
                "engine-test",
                "--cluster",
                "nats://0.0.0.0:6222",
                "--routes",
                &routes.join(","),
            ]);
            cluster.nodes.push(name.clone());
        }
        Some(cluster)
    }

    /// `nats://IP1:4222,IP2:4222,…` of the nodes still listed.
    fn url(&self) -> cluster::ClusterUrl {
        let servers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:4222", docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", n])))
            .collect();
        format!("nats://{}", servers.join(",")).parse().unwrap()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = Command::new("docker").args(["rm", "-f", n]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

fn job(step: &str) -> Job {
    Job { run: "r".into(), step: step.into(), key: "cd".repeat(32), labels: vec![] }
}

/// Until `f` succeeds, at most `within` (a cluster electing a leader answers errors meanwhile).
async fn eventually<T, F: std::future::Future<Output = Result<T, cluster::ClusterError>>>(within: Duration, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("not within {within:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_replicated_queue_loses_no_job_when_a_node_is_killed() {
    let Some(nats) = NatsCluster::start() else { return };
    let url = nats.url();
    let ack_wait = Duration::from_secs(5);
    let queue = eventually(Duration::from_secs(60), || Queue::connect(&url, Duration::from_secs(5), 3, ack_wait)).await;
    for i in 0..4 {
        let j = job(&format!("s{i}"));
        eventually(Duration::from_secs(30), || queue.submit(&j)).await;
    }
    let first = queue.take(&[], Duration::from_secs(10)).await.unwrap().expect("a job");
    let mut done = vec![first.job().step.clone()];
    first.done().await.unwrap();

    // One node goes; the stream has two replicas left (a quorum), and the client the others.
    docker(&["kill", &nats.nodes[0]]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < 4 {
        assert!(Instant::now() < deadline, "only {done:?} after a node was killed");
        match queue.take(&[], Duration::from_secs(2)).await {
            Ok(Some(lease)) => {
                let step = lease.job().step.clone();
                if lease.done().await.is_ok() {
                    done.push(step);
                }
            }
            Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    // The queue empties: an acknowledgement is applied by the stream's remaining replicas a
    // moment after it is confirmed, and a job whose acknowledgement was lost with the node is
    // delivered again (at least once: a worker runs it again, and its key makes that harmless).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if queue.depth().await.is_ok_and(|d| d == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still queued a minute after all were done: {done:?}");
        if let Ok(Some(lease)) = queue.take(&[], Duration::from_millis(500)).await {
            let step = lease.job().step.clone();
            if lease.done().await.is_ok() {
                done.push(step);
            }
        }
    }
    done.sort();
    done.dedup();
    assert_eq!(done, ["s0", "s1", "s2", "s3"], "every job done");
}
