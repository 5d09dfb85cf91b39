//! Turning bollard errors into the one-sentence messages users see (`StepFailure::Environment`,
//! `EnvironmentError`), and the deadline every daemon call runs under ([`call`]). Never shows an
//! error chain or Debug output.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use bollard::errors::Error;

/// How long connecting to the daemon (version negotiation, then ping) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default deadline of one ordinary API call (inspect, create, start, remove, kill, volume
/// operations, info, version, list); `ENGINE_DOCKER_TIMEOUT` overrides it.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The environment variable overriding [`DEFAULT_CALL_TIMEOUT`] (`10s`, `2m`, a bare number of
/// seconds).
pub const CALL_TIMEOUT_VAR: &str = "ENGINE_DOCKER_TIMEOUT";
/// Once a call went unanswered, the daemon is taken as unresponsive and every later call (mostly
/// cleanup) waits at most this long until one is answered again, so that a frozen daemon costs
/// one deadline, not one each.
pub const UNRESPONSIVE_TIMEOUT: Duration = Duration::from_secs(5);

static DAEMON: RwLock<Option<String>> = RwLock::new(None);
static UNRESPONSIVE: AtomicBool = AtomicBool::new(false);

/// The address of the daemon this process talks to, for sentences ("the Docker daemon at ...").
pub fn set_daemon(host: &str) {
    if let Ok(mut d) = DAEMON.write() {
        *d = Some(host.to_string());
    }
}

pub fn daemon() -> String {
    DAEMON.read().ok().and_then(|d| d.clone()).unwrap_or_else(|| super::DEFAULT_DOCKER_HOST.to_string())
}

/// The deadline of one ordinary call: `ENGINE_DOCKER_TIMEOUT`, else 30 s. `Err` with a sentence
/// when the variable is set but is not a duration (checked once, at connect).
pub fn call_timeout() -> Result<Duration, String> {
    static PARSED: OnceLock<Result<Duration, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| match std::env::var(CALL_TIMEOUT_VAR) {
            Err(_) => Ok(DEFAULT_CALL_TIMEOUT),
            Ok(text) => match dsl::units::parse_duration(text.trim()) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(format!("{CALL_TIMEOUT_VAR} must be a duration such as `30s` or `2m`, not `{text}`")),
            },
        })
        .clone()
}

/// The deadline for a call that should take about `limit`: shortened once the daemon has failed
/// to answer a call before.
pub fn deadline(limit: Duration) -> Duration {
    if UNRESPONSIVE.load(Ordering::Relaxed) {
        limit.min(UNRESPONSIVE_TIMEOUT)
    } else {
        limit
    }
}

/// The deadline of one ordinary call (see [`call_timeout`]).
pub fn ordinary() -> Duration {
    deadline(call_timeout().unwrap_or(DEFAULT_CALL_TIMEOUT))
}

/// A daemon call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No answer within the deadline: the daemon is hung, overloaded or not a daemon at all.
    #[error(
        "the Docker daemon at {daemon} did not answer within {} while trying to {action}; check that it is running and responsive",
        dsl::units::format_duration(*after)
    )]
    TimedOut { action: String, daemon: String, after: Duration },
    /// The daemon answered with an error, or the connection failed.
    #[error("{}", daemon_sentence(action, source))]
    Failed {
        action: String,
        #[source]
        source: Error,
    },
}

impl DaemonError {
    /// True when the daemon answered 404 (no such container, image or volume).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DaemonError::Failed { source, .. } if is_not_found(source))
    }

    pub fn timed_out(&self) -> bool {
        matches!(self, DaemonError::TimedOut { .. })
    }
}

/// Await one daemon call under a deadline: the only way the engine waits for the daemon. A call
/// that does not finish within `limit` (see [`ordinary`], [`deadline`]) is a [`DaemonError::TimedOut`]
/// naming `action` and the daemon, and marks the daemon unresponsive for later calls (until one
/// is answered).
pub async fn call<T>(action: &str, limit: Duration, fut: impl Future<Output = Result<T, Error>>) -> Result<T, DaemonError> {
    let timed_out = || {
        UNRESPONSIVE.store(true, Ordering::Relaxed);
        DaemonError::TimedOut { action: action.to_string(), daemon: daemon(), after: limit }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => {
            UNRESPONSIVE.store(false, Ordering::Relaxed);
            Ok(value)
        }
        // bollard's own client timeout (on the response headers) counts as no answer too.
        Ok(Err(Error::RequestTimeoutError)) | Err(_) => Err(timed_out()),
        Ok(Err(source)) => Err(DaemonError::Failed { action: action.to_string(), source }),
    }
}

/// The innermost cause of an error, which is the short, specific part ("No such file or
/// directory", "connection refused") without the wrapping layers.
pub fn short_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// True when the daemon answered 404 (no such container, image or volume).
pub fn is_not_found(err: &Error) -> bool {
    matches!(err, Error::DockerResponseServerError { status_code: 404, .. })
}

/// A sentence for a daemon call that failed while trying to `action` ("create the container").
pub fn daemon_sentence(action: &str, err: &Error) -> String {
    match err {
        Error::DockerResponseServerError { message, .. } => {
            format!("the Docker daemon refused to {action}: {}", message.trim())
        }
        other => format!("lost the Docker daemon while trying to {action}: {}. Check that it is still running", short_reason(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_times_out_with_a_sentence() {
        set_daemon("unix:///tmp/silent.sock");
        let never = std::future::pending::<Result<(), Error>>();
        let err = call("list the engine's containers", Duration::from_secs(30), never).await.unwrap_err();
        assert!(err.timed_out());
        assert_eq!(
            err.to_string(),
            "the Docker daemon at unix:///tmp/silent.sock did not answer within 30s while trying to list the engine's \
             containers; check that it is running and responsive"
        );
        // From now on the daemon counts as unresponsive: later calls wait at most 5 s...
        assert_eq!(deadline(Duration::from_secs(30)), UNRESPONSIVE_TIMEOUT);
        assert_eq!(deadline(Duration::from_secs(1)), Duration::from_secs(1));
        // ...until it answers one.
        call("ping", Duration::from_secs(1), async { Ok(()) }).await.unwrap();
        assert_eq!(deadline(Duration::from_secs(30)), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_sentence_and_its_404() {
        let refused = async { Err::<(), _>(Error::DockerResponseServerError { status_code: 404, message: "no such container: x".into() }) };
        let err = call("inspect the step's container", Duration::from_secs(1), refused).await.unwrap_err();
        assert!(err.is_not_found() && !err.timed_out());
        assert_eq!(err.to_string(), "the Docker daemon refused to inspect the step's container: no such container: x");
    }
}
