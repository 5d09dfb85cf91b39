//! `cleanup::remove_stale` and `remove_run` against the real daemon: containers and volumes of a
//! dead engine go, those of a live one stay.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::CreateContainerOptions;
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

async fn create(exec: &engine::docker::DockerExecutor, labels: HashMap<String, String>) -> String {
    let body = ContainerCreateBody {
        image: Some(BUSYBOX.into()),
        cmd: Some(vec!["true".into()]),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let c = exec.client().create_container(None::<CreateContainerOptions>, body).await.expect("create container");
    let v = VolumeCreateRequest { labels: Some(labels), ..Default::default() };
    exec.client().create_volume(v).await.expect("create volume");
    c.id
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

    let report = cleanup::remove_stale(exec.client()).await.expect("cleanup");
    assert_clean(&exec, &dead_run).await;
    assert_clean(&exec, &reused_run).await;
    let (containers, volumes) = leftovers(&exec, &live_run).await;
    assert_eq!(containers, vec![live.clone()], "the live run's container is kept");
    assert_eq!(volumes.len(), 1, "the live run's volume is kept");
    assert!(!report.containers.contains(&live));

    let removed = cleanup::remove_run(exec.client(), &live_run).await.expect("remove run");
    assert_eq!(removed.containers, vec![live]);
    assert_clean(&exec, &live_run).await;
}
