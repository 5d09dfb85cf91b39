//! The work queue of engine workers, on NATS JetStream (the one crate that talks to NATS).
//!
//! A client submits [`Job`]s for ready steps; a worker [`Queue::take`]s one whose labels it has,
//! keeps its [`Lease`] alive while the step runs ([`Lease::progress`], an in-progress ack), and
//! acknowledges it only once the result is stored ([`Lease::done`]). A worker that dies stops
//! sending progress: after the acknowledgement deadline the job is delivered to another worker.
//!
//! **Routing by labels.** Every distinct label set has its own subject
//! (`engine.steps.<16 hex digits of the set's digest>`, since a label may hold a `.`) and its own
//! durable pull consumer on the one work-queue stream, whose description carries the labels. A
//! worker serves every consumer whose labels it has all of: a step asking for `[gpu]` goes to a
//! worker started with `--label gpu` (and any others), never to one without it. A work-queue
//! stream delivers each job to one consumer; the consumers' subjects never overlap.
//!
//! Every message read is bounded and checked ([`Job::parse`]): a job that is not one of ours is
//! terminated (never redelivered), and said so.

#![warn(missing_docs)]

pub mod presence;
mod url;

#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use presence::{Presence, WorkerInfo};
pub use url::{BadClusterUrl, ClusterUrl};

/// The stream of ready steps.
pub const STREAM: &str = "ENGINE_STEPS";
/// Subjects of the stream: `engine.steps.<label set>`.
pub const SUBJECT_PREFIX: &str = "engine.steps";
/// Largest job message (a job names a step and its key; definitions travel by digest).
pub const MAX_JOB_BYTES: usize = 64 << 10;
/// Most label sets (consumers of the stream) a worker looks through for work; more are ignored
/// (a hostile client could make any number).
pub const MAX_LABEL_SETS: usize = 10_000;
/// Most labels a job names (as a step's `runs_on`).
pub const MAX_LABELS: usize = dsl::bounds::MAX_LABELS;

/// Why the queue could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster cannot be reached or answered with an error; the message names the server
    /// address and what failed.
    #[error("the cluster at {url} is unavailable: {message}")]
    Unavailable {
        /// The cluster (never a credential).
        url: String,
        /// What failed.
        message: String,
    },
    /// Something we were asked to send is not valid (a label, a job too large).
    #[error("{0}")]
    Invalid(String),
}

/// One ready step, as the queue carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The run that submitted it.
    pub run: String,
    /// The step's name.
    pub step: String,
    /// The step's action key (64 lowercase hex digits).
    pub key: String,
    /// The labels a worker must have (sorted, without repeats).
    #[serde(default)]
    pub labels: Vec<String>,
}

impl Job {
    /// The job in `bytes`, checked: bounded, JSON of exactly these fields, a key of 64 hex
    /// digits, names without control characters, valid labels sorted without repeats.
    pub fn parse(bytes: &[u8]) -> Result<Job, String> {
        let job: Job = parse_bounded(bytes, MAX_JOB_BYTES, "a job")?;
        job.check()?;
        Ok(job)
    }

    fn check(&self) -> Result<(), String> {
        if self.key.len() != 64 || !self.key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("the key is not 64 lowercase hex digits".into());
        }
        for (what, s) in [("run", &self.run), ("step", &self.step)] {
            if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
                return Err(format!("the {what} name is empty, longer than 256 bytes or holds control characters"));
            }
        }
        check_labels(&self.labels, MAX_LABELS)
    }

    fn subject(&self) -> String {
        subject(&self.labels)
    }
}

/// `bytes` as JSON of a `T`, refused unread beyond `max` bytes; `what` names it in the error.
fn parse_bounded<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize, what: &str) -> Result<T, String> {
    if bytes.len() > max {
        return Err(format!("{what} of {} bytes (at most {max})", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("not {what}: {e}"))
}

/// At most `max` valid labels, sorted without repeats.
fn check_labels(labels: &[String], max: usize) -> Result<(), String> {
    if labels.len() > max {
        return Err(format!("{} labels (at most {max})", labels.len()));
    }
    if let Some(bad) = labels.iter().find(|l| !dsl::is_label(l)) {
        return Err(format!("`{}` is not a label", bad.escape_debug()));
    }
    if labels.windows(2).any(|w| w[0] >= w[1]) {
        return Err("the labels are not sorted without repeats".into());
    }
    Ok(())
}

/// The subject of the jobs for workers with `labels` (sorted, without repeats).
pub fn subject(labels: &[String]) -> String {
    format!("{SUBJECT_PREFIX}.{}", label_set_id(labels))
}

/// 16 hex digits naming a label set (sorted labels, one per line).
fn label_set_id(labels: &[String]) -> String {
    let mut h = Sha256::new();
    for l in labels {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

/// A connection to the cluster's JetStream.
#[derive(Clone)]
pub struct Queue {
    js: jetstream::Context,
    url: String,
    ack_wait: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("url", &self.url).field("ack_wait", &self.ack_wait).finish()
    }
}

impl Queue {
    /// Connect to `url` within `timeout`, and make sure the stream exists (replicated on
    /// `replicas` servers: 3 on a three-node cluster, 1 on a single server). A job taken and
    /// neither acknowledged nor kept alive for `ack_wait` goes to another worker.
    pub async fn connect(url: &ClusterUrl, timeout: Duration, replicas: usize, ack_wait: Duration) -> Result<Queue, ClusterError> {
        let shown = url.to_string();
        let unavailable = |e: &dyn std::fmt::Display| ClusterError::Unavailable { url: shown.clone(), message: e.to_string() };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .connect(url.servers())
            .await
            .map_err(|e| unavailable(&e))?;
        let js = jetstream::new(client);
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![format!("{SUBJECT_PREFIX}.*")],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas.clamp(1, 5),
            max_message_size: MAX_JOB_BYTES as i32,
            ..Default::default()
        };
        js.get_or_create_stream(config).await.map_err(|e| unavailable(&e))?;
        Ok(Queue { js, url: shown, ack_wait })
    }

    fn unavailable(&self, e: &dyn std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable { url: self.url.clone(), message: e.to_string() }
    }

    /// Put `job` in the queue (and the consumer of its label set, if it is the first of that
    /// set). Returns once the cluster has stored it.
    pub async fn submit(&self, job: &Job) -> Result<(), ClusterError> {
        job.check().map_err(ClusterError::Invalid)?;
        self.consumer(&job.labels).await?;
        let body = serde_json::to_vec(job).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let ack = self.js.publish(job.subject(), body.into()).await.map_err(|e| self.unavailable(&e))?;
        ack.await.map_err(|e| self.unavailable(&e))?;
        Ok(())
    }

    /// The durable consumer of the label set `labels`, created when missing.
    async fn consumer(&self, labels: &[String]) -> Result<jetstream::consumer::Consumer<pull::Config>, ClusterError> {
        let id = label_set_id(labels);
        let stream = self.js.get_stream(STREAM).await.map_err(|e| self.unavailable(&e))?;
        let config = pull::Config {
            durable_name: Some(format!("steps-{id}")),
            filter_subject: format!("{SUBJECT_PREFIX}.{id}"),
            description: Some(serde_json::to_string(labels).map_err(|e| ClusterError::Invalid(e.to_string()))?),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            ..Default::default()
        };
        stream.get_or_create_consumer(&format!("steps-{id}"), config).await.map_err(|e| self.unavailable(&e))
    }

    /// The next job a worker with `labels` may run, waiting at most `wait`; `None` when there
    /// was none. A message that is not a job of ours is terminated (never delivered again) and
    /// skipped, with a warning.
    pub async fn take(&self, labels: &[String], wait: Duration) -> Result<Option<Lease>, ClusterError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let stream = self.js.get_stream(STREAM).await.map_err(|e| self.unavailable(&e))?;
            let mut eligible = Vec::new();
            let mut infos = stream.consumers().take(MAX_LABEL_SETS);
            while let Some(info) = infos.next().await {
                let info = info.map_err(|e| self.unavailable(&e))?;
                let wanted: Option<Vec<String>> = info.config.description.as_deref().and_then(|d| serde_json::from_str(d).ok());
                match wanted {
                    Some(w) if check_labels(&w, MAX_LABELS).is_ok() && w.iter().all(|l| labels.contains(l)) => eligible.push(info.name),
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Each consumer in turn, for a share of the time left (at least the server's minimum).
            let share = (left / eligible.len().max(1) as u32).max(Duration::from_millis(100));
            for name in &eligible {
                let consumer: jetstream::consumer::Consumer<pull::Config> =
                    stream.get_consumer(name).await.map_err(|e| self.unavailable(&e))?;
                let mut batch = consumer.batch().max_messages(1).expires(share).messages().await.map_err(|e| self.unavailable(&e))?;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| self.unavailable(&e))?;
                    match Job::parse(&message.payload) {
                        Ok(job) => return Ok(Some(Lease { message, job, url: self.url.clone() })),
                        Err(why) => {
                            tracing::warn!(subject = %message.subject, %why, "a message in the step queue is not a job; dropped");
                            message.ack_with(AckKind::Term).await.map_err(|e| self.unavailable(&e))?;
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            if eligible.is_empty() {
                // No label set this worker serves has a consumer yet: look again shortly.
                tokio::time::sleep(left.min(Duration::from_millis(200))).await;
            }
        }
    }

    /// Jobs waiting in the queue (all label sets).
    pub async fn depth(&self) -> Result<u64, ClusterError> {
        let mut stream = self.js.get_stream(STREAM).await.map_err(|e| self.unavailable(&e))?;
        Ok(stream.info().await.map_err(|e| self.unavailable(&e))?.state.messages)
    }
}

/// A job taken by a worker: delivered to no one else while it is kept alive.
pub struct Lease {
    message: jetstream::Message,
    job: Job,
    url: String,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("job", &self.job).finish()
    }
}

impl Lease {
    fn unavailable(&self, e: &dyn std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable { url: self.url.clone(), message: e.to_string() }
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// How many times it was delivered, this delivery included (more than 1: a worker before
    /// this one took it and was lost, or gave it back).
    pub fn deliveries(&self) -> u64 {
        self.message.info().map(|i| i.delivered as u64).unwrap_or(1)
    }

    /// Still working on it: the deadline starts again (send more often than the queue's
    /// acknowledgement wait).
    pub async fn progress(&self) -> Result<(), ClusterError> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| self.unavailable(&e))
    }

    /// Finished and its result stored: the job leaves the queue (confirmed by the server).
    pub async fn done(self) -> Result<(), ClusterError> {
        self.message.double_ack().await.map_err(|e| self.unavailable(&e))
    }

    /// Not run here (shutting down): another worker takes it at once.
    pub async fn give_back(self) -> Result<(), ClusterError> {
        self.message.ack_with(AckKind::Nak(None)).await.map_err(|e| self.unavailable(&e))
    }
}
