//! `cleanup::remove_stale` and `remove_run` against the real daemon: containers and volumes of a
//! dead engine go, those of a live one stay.

use std::collections::HashMap;

use engine::docker::{cleanup, owner, Transfer, LABEL_PID, LABEL_PID_START, LABEL_RUN, LABEL_STEP};
use integration::*;

fn labels(run_id: &str, pid: &str, start: &str) -> HashMap<String, String> {
    let mut l = owner::owner_labels();
    l.insert(LABEL_RUN.into(), run_id.into());
    l.insert(LABEL_STEP.into(), "s".into());
    l.insert(LABEL_PID.into(), pid.into());
    l.insert(LABEL_PID_START.into(), start.into());
    l
}

/// A container and a volume carrying `labels`, created with the `docker` CLI.
async fn create(_exec: &engine::docker::DockerExecutor, labels: HashMap<String, String>) -> String {
    let flags: Vec<String> = labels.iter().map(|(k, v)| format!("--label={k}={v}")).collect();
    let mut args: Vec<&str> = vec!["create"];
    args.extend(flags.iter().map(String::as_str));
    args.extend([BUSYBOX, "true"]);
    let id = docker_lines(&args).await.pop().expect("create container");
    let mut args: Vec<&str> = vec!["volume", "create"];
    args.extend(flags.iter().map(String::as_str));
    docker_lines(&args).await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_removed_live_kept() {
    let exec = executor(Transfer::Bind).await;
    let dead_run = run_id("dead");
    let live_run = run_id("live");
    // pid_max is at most 4194304, so this pid cannot exist.
    create(&exec, labels(&dead_run, "99999999", "12345")).await;
    // Our own pid with another start time: a reused pid, so the owner is gone too.
    let reused_run = run_id("reused");
    create(&exec, labels(&reused_run, &std::process::id().to_string(), "1")).await;
    let own = owner::owner_labels();
    let live = create(&exec, labels(&live_run, &own[LABEL_PID], &own[LABEL_PID_START])).await;

    let report = cleanup::remove_stale(exec.daemon()).await.expect("cleanup");
    assert_clean(&exec, &dead_run).await;
    assert_clean(&exec, &reused_run).await;
    let (containers, volumes) = leftovers(&exec, &live_run).await;
    assert_eq!(containers, vec![live.clone()], "the live run's container is kept");
    assert_eq!(volumes.len(), 1, "the live run's volume is kept");
    assert!(!report.containers.contains(&live));

    let removed = cleanup::remove_run(exec.daemon(), &live_run).await.expect("remove run");
    assert_eq!(removed.containers, vec![live]);
    assert_clean(&exec, &live_run).await;
}
