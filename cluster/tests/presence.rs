//! Which workers are there, against a real nats-server: announced workers are listed with their
//! labels and capacity; one that withdraws is gone at once; one that stops announcing is gone
//! after the time to live; an entry that is not a worker's is skipped, never listed.

use std::time::{Duration, Instant};

use cluster::testing::NatsServer;
use cluster::{Queue, WorkerInfo};

fn info(id: &str, labels: &[&str]) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "machine-1".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        jobs: 2,
        running: 0,
        memory: Some(8 << 30),
        version: "0.1.0".into(),
    }
}

#[tokio::test]
async fn workers_are_listed_until_they_withdraw_or_stop_announcing() {
    let Some(server) = NatsServer::start() else { return };
    let ttl = Duration::from_secs(2);
    let queue = Queue::connect(&server.url(), Duration::from_secs(5), 1, Duration::from_secs(2)).await.unwrap();
    let presence = queue.presence(ttl, 1).await.unwrap();
    presence.announce(&info("w2", &["gpu", "x86_64"])).await.unwrap();
    presence.announce(&info("w1", &[])).await.unwrap();
    let listed = presence.workers().await.unwrap();
    assert_eq!(listed, vec![info("w1", &[]), info("w2", &["gpu", "x86_64"])]);

    presence.withdraw("w1").await.unwrap();
    assert_eq!(presence.workers().await.unwrap(), vec![info("w2", &["gpu", "x86_64"])]);

    // w2 stops announcing: gone once its entry outlives the time to live.
    let deadline = Instant::now() + 5 * ttl;
    while !presence.workers().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "w2 is still listed after {:?}", 5 * ttl);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn entries_that_are_not_a_worker_s_are_refused_or_skipped() {
    let Some(server) = NatsServer::start() else { return };
    let queue = Queue::connect(&server.url(), Duration::from_secs(5), 1, Duration::from_secs(2)).await.unwrap();
    let presence = queue.presence(Duration::from_secs(30), 1).await.unwrap();
    let mut bad = info("w 1", &[]);
    assert!(presence.announce(&bad).await.is_err(), "an ID with a space");
    bad = info("w1", &["b", "a"]);
    assert!(presence.announce(&bad).await.is_err(), "unsorted labels");
    bad = info("w1", &[]);
    bad.running = 3;
    assert!(presence.announce(&bad).await.is_err(), "more running than jobs");

    // Put straight into the bucket, as a hostile client could: skipped when listed.
    let raw = async_nats::jetstream::new(async_nats::connect(format!("127.0.0.1:{}", server.port())).await.unwrap());
    let kv = raw.get_key_value(cluster::presence::BUCKET).await.unwrap();
    kv.put("junk", "not json".into()).await.unwrap();
    kv.put("liar", serde_json::to_vec(&info("other", &[])).unwrap().into()).await.unwrap();
    presence.announce(&info("good", &[])).await.unwrap();
    assert_eq!(presence.workers().await.unwrap(), vec![info("good", &[])]);
    assert!(WorkerInfo::parse(&vec![b' '; cluster::presence::MAX_INFO_BYTES + 1]).is_err());
}
