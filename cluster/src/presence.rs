//! Which workers are there: each worker puts a [`WorkerInfo`] under its ID in the key-value
//! bucket `engine_workers` and puts it again (a heartbeat) well within the bucket's time to live;
//! a worker that stops (killed, cut off) disappears when its last entry expires, one that shuts
//! down withdraws at once. `engine cluster status` reads them back, each checked like any other
//! message from the cluster.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{ClusterError, Queue, MAX_LABELS};

/// The bucket.
pub const BUCKET: &str = "engine_workers";
/// Largest entry.
pub const MAX_INFO_BYTES: usize = 16 << 10;
/// Most workers listed.
pub const MAX_WORKERS: usize = 10_000;

/// What a worker says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerInfo {
    /// Its ID (`[A-Za-z0-9_-]`, 1 to 64 characters), the key of its entry.
    pub id: String,
    /// The host it runs on, as it names itself.
    pub host: String,
    /// Its `--label`s, sorted without repeats.
    pub labels: Vec<String>,
    /// Steps it runs at once (`--jobs`).
    pub jobs: u32,
    /// Steps it runs now.
    pub running: u32,
    /// Its memory budget in bytes (`--memory`), if it has one.
    pub memory: Option<u64>,
    /// The engine version it runs.
    pub version: String,
}

impl WorkerInfo {
    /// Checked: the ID, names without control characters, valid labels, `running <= jobs`.
    pub fn check(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty() && self.id.len() <= 64 && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !id_ok {
            return Err("the worker ID is not 1 to 64 letters, digits, `_` or `-`".into());
        }
        for (what, s) in [("host", &self.host), ("version", &self.version)] {
            if s.len() > 256 || s.chars().any(char::is_control) {
                return Err(format!("the {what} is longer than 256 bytes or holds control characters"));
            }
        }
        crate::check_labels(&self.labels, 4 * MAX_LABELS)?;
        if self.running > self.jobs {
            return Err(format!("{} steps running with room for {}", self.running, self.jobs));
        }
        Ok(())
    }

    /// The entry in `bytes`, bounded and checked.
    pub fn parse(bytes: &[u8]) -> Result<WorkerInfo, String> {
        let info: WorkerInfo = crate::parse_bounded(bytes, MAX_INFO_BYTES, "a worker entry")?;
        info.check()?;
        Ok(info)
    }
}

/// The workers' bucket.
#[derive(Clone)]
pub struct Presence {
    kv: kv::Store,
    url: String,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("url", &self.url).finish()
    }
}

impl Queue {
    /// The workers' bucket, created when missing with entries that live `ttl` (a worker puts
    /// its entry again well within it) on `replicas` servers.
    pub async fn presence(&self, ttl: Duration, replicas: usize) -> Result<Presence, ClusterError> {
        // The bucket's stream is made here, as the key-value layer would make it: the client's
        // `create_key_value` first asks for the account's limits, an answer it cannot read from
        // the nats-server 2.9 of Debian 12. Then the bucket is opened as any bucket is.
        let stream = stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("engine workers: one entry per worker, put again as a heartbeat".into()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            // At most the entries' life (the server refuses a longer window).
            duplicate_window: ttl.min(Duration::from_secs(120)),
            max_message_size: MAX_INFO_BYTES as i32,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas.clamp(1, 5),
            ..Default::default()
        };
        self.js.get_or_create_stream(stream).await.map_err(|e| self.unavailable(&e))?;
        let kv = self.js.get_key_value(BUCKET).await.map_err(|e| self.unavailable(&e))?;
        Ok(Presence { kv, url: self.url.clone() })
    }
}

impl Presence {
    fn unavailable(&self, e: &dyn std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable { url: self.url.clone(), message: e.to_string() }
    }

    /// Put `info` (again): the worker is there for one more time to live.
    pub async fn announce(&self, info: &WorkerInfo) -> Result<(), ClusterError> {
        info.check().map_err(ClusterError::Invalid)?;
        let body = serde_json::to_vec(info).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        self.kv.put(&info.id, body.into()).await.map_err(|e| self.unavailable(&e))?;
        Ok(())
    }

    /// The worker `id` is gone (it shut down).
    pub async fn withdraw(&self, id: &str) -> Result<(), ClusterError> {
        self.kv.delete(id).await.map_err(|e| self.unavailable(&e))
    }

    /// The workers there now, by ID (at most [`MAX_WORKERS`]). An entry that is not a worker's
    /// is skipped with a warning.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClusterError> {
        let mut keys = self.kv.keys().await.map_err(|e| self.unavailable(&e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| self.unavailable(&e))?;
            if out.len() == MAX_WORKERS {
                tracing::warn!(max = MAX_WORKERS, "more workers than can be listed; the rest are left out");
                break;
            }
            let Some(bytes) = self.kv.get(&key).await.map_err(|e| self.unavailable(&e))? else { continue };
            match WorkerInfo::parse(&bytes) {
                Ok(info) if info.id == key => out.push(info),
                Ok(_) => tracing::warn!(key = %key.escape_debug(), "a worker entry names another worker; skipped"),
                Err(why) => tracing::warn!(key = %key.escape_debug(), %why, "an entry of the workers' bucket is not a worker's; skipped"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
