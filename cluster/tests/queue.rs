//! The work queue against a real nats-server with JetStream: a job goes to one worker whose
//! labels cover it; a worker that stops keeping its lease alive loses the job to another after
//! the deadline; progress keeps it; a message that is not a job is dropped, never delivered.

use std::time::{Duration, Instant};

use cluster::testing::NatsServer;
use cluster::{Job, Queue};

const ACK_WAIT: Duration = Duration::from_secs(2);

async fn queue(server: &NatsServer) -> Queue {
    Queue::connect(&server.url(), Duration::from_secs(5), 1, ACK_WAIT).await.unwrap()
}

fn job(step: &str, labels: &[&str]) -> Job {
    Job { run: "r1".into(), step: step.into(), key: "ab".repeat(32), labels: labels.iter().map(|l| l.to_string()).collect() }
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_job_goes_to_one_worker_with_its_labels() {
    let Some(server) = NatsServer::start() else { return };
    let (client, plain, gpu) = (queue(&server).await, queue(&server).await, queue(&server).await);
    client.submit(&job("train", &["gpu"])).await.unwrap();
    client.submit(&job("lint", &[])).await.unwrap();
    assert_eq!(client.depth().await.unwrap(), 2);

    // A worker without `gpu` gets the unlabelled job only.
    let lease = plain.take(&[], Duration::from_secs(2)).await.unwrap().expect("the lint job");
    assert_eq!(lease.job().step, "lint");
    lease.done().await.unwrap();
    assert!(plain.take(&labels(&["x86_64"]), Duration::from_millis(500)).await.unwrap().is_none(), "no gpu, no train");
    // One with `gpu` (and more) gets it.
    let lease = gpu.take(&labels(&["gpu", "x86_64"]), Duration::from_secs(2)).await.unwrap().expect("the train job");
    assert_eq!((lease.job().step.as_str(), lease.deliveries()), ("train", 1));
    lease.done().await.unwrap();
    assert_eq!(client.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn a_lost_worker_s_job_is_delivered_again_and_progress_keeps_it() {
    let Some(server) = NatsServer::start() else { return };
    let (client, one, two) = (queue(&server).await, queue(&server).await, queue(&server).await);
    client.submit(&job("long", &[])).await.unwrap();

    // Worker one keeps its lease alive for three deadlines: worker two gets nothing.
    let lease = one.take(&[], Duration::from_secs(2)).await.unwrap().expect("a job");
    let until = Instant::now() + 3 * ACK_WAIT;
    while Instant::now() < until {
        lease.progress().await.unwrap();
        assert!(two.take(&[], Duration::from_millis(200)).await.unwrap().is_none(), "a kept lease is not delivered again");
    }
    // Then worker one is lost (its lease dropped unanswered): after the deadline, worker two
    // gets the same job, marked as delivered twice.
    drop(lease);
    let again = two.take(&[], 4 * ACK_WAIT).await.unwrap().expect("delivered again");
    assert_eq!((again.job().step.as_str(), again.deliveries()), ("long", 2));
    again.done().await.unwrap();
    assert_eq!(client.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn a_job_given_back_goes_out_at_once_and_hostile_messages_are_dropped() {
    let Some(server) = NatsServer::start() else { return };
    let (client, worker) = (queue(&server).await, queue(&server).await);
    client.submit(&job("s", &[])).await.unwrap();
    let lease = worker.take(&[], Duration::from_secs(2)).await.unwrap().unwrap();
    lease.give_back().await.unwrap();
    let started = Instant::now();
    let again = worker.take(&[], Duration::from_secs(2)).await.unwrap().expect("given back");
    assert!(started.elapsed() < ACK_WAIT, "not after the deadline: {:?}", started.elapsed());
    again.done().await.unwrap();

    // A message that is not a job, put straight on the subject of the jobs for any worker (as a
    // hostile client could): dropped for good, and the job behind it is delivered.
    client.submit(&job("after", &[])).await.unwrap();
    let raw = async_nats::jetstream::new(async_nats::connect(format!("127.0.0.1:{}", server.port())).await.unwrap());
    raw.publish(cluster::subject(&[]), "not a job".into()).await.unwrap().await.unwrap();
    client.submit(&job("last", &[])).await.unwrap();
    let mut got = Vec::new();
    while let Some(lease) = worker.take(&[], Duration::from_millis(500)).await.unwrap() {
        got.push(lease.job().step.clone());
        lease.done().await.unwrap();
    }
    assert_eq!(got, ["after", "last"]);
    assert_eq!(client.depth().await.unwrap(), 0, "the hostile message is gone");

    // Not jobs: each is refused when parsed, and by `submit` before it is sent.
    for bad in [&b"not json"[..], br#"{"run":"r","step":"s","key":"zz","labels":[]}"#, br#"{"run":"r","step":"s","key":"00","extra":1}"#] {
        assert!(Job::parse(bad).is_err());
    }
    assert!(Job::parse(&vec![b' '; cluster::MAX_JOB_BYTES + 1]).is_err());
    let mut unsorted = job("s", &["b", "a"]);
    assert!(client.submit(&unsorted).await.is_err());
    unsorted.labels = vec!["GPU".into()];
    assert!(client.submit(&unsorted).await.is_err());
    assert_eq!(client.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let err = Queue::connect(&url, Duration::from_secs(1), 1, ACK_WAIT).await.unwrap_err();
    assert!(matches!(err, cluster::ClusterError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
