//! Error classification: every daemon call runs under a deadline ([`call`]) and fails as one
//! [`DaemonError`] (no answer in time, or the daemon's refusal with its bollard error as the
//! source), whose `Display` is the one sentence users see. Never shows an error chain or Debug
//! output. Also the settings read from the environment (`ENGINE_DOCKER_TIMEOUT`,
//! `ENGINE_STOP_GRACE`) and the address of the daemon this process talks to.

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

/// How long a container has, after its stop signal (SIGTERM, or the image's `StopSignal`), to
/// exit before it is killed with SIGKILL, on timeout and on interrupt. [`STOP_GRACE_VAR`]
/// overrides it (`0` kills at once).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);
/// The environment variable overriding [`DEFAULT_STOP_GRACE`].
pub const STOP_GRACE_VAR: &str = "ENGINE_STOP_GRACE";

/// The daemon address used when DOCKER_HOST is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// A setting read from the environment that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// `ENGINE_DOCKER_TIMEOUT` is not a positive duration.
    #[error("{CALL_TIMEOUT_VAR} must be a duration such as `30s` or `2m`, not `{0}`")]
    CallTimeout(String),
    /// `ENGINE_STOP_GRACE` is not a duration of at most an hour.
    #[error("{STOP_GRACE_VAR} must be a duration of at most 1h such as `5s`, not `{0}`")]
    StopGrace(String),
}

/// A duration as the engine's settings write it: `30s`, `2m`, `1m30s`, `500ms`, or a bare number
/// of seconds. `0` (any unit) is zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).ok()
}

/// A duration as sentences write it: `30s`, `1m30s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

static DAEMON: RwLock<Option<String>> = RwLock::new(None);
static UNRESPONSIVE: AtomicBool = AtomicBool::new(false);

/// The address of the daemon this process talks to, for sentences ("the Docker daemon at ...").
pub fn set_daemon(host: &str) {
    if let Ok(mut d) = DAEMON.write() {
        *d = Some(host.to_string());
    }
}

/// The address set by [`set_daemon`] (the default socket before any connect).
pub fn daemon() -> String {
    DAEMON.read().ok().and_then(|d| d.clone()).unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// The deadline of one ordinary call: `ENGINE_DOCKER_TIMEOUT`, else 30 s. `Err` with a sentence
/// when the variable is set but is not a duration (checked once, at connect).
pub fn call_timeout() -> Result<Duration, SettingError> {
    static PARSED: OnceLock<Result<Duration, SettingError>> = OnceLock::new();
    PARSED
        .get_or_init(|| match std::env::var(CALL_TIMEOUT_VAR) {
            Err(_) => Ok(DEFAULT_CALL_TIMEOUT),
            Ok(text) => match parse_duration(&text) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(SettingError::CallTimeout(text)),
            },
        })
        .clone()
}

/// The grace period of the stop ladder (see [`DEFAULT_STOP_GRACE`]); `Err` when
/// `ENGINE_STOP_GRACE` is not a duration of at most an hour (checked once, at connect).
pub fn stop_grace() -> Result<Duration, SettingError> {
    static PARSED: OnceLock<Result<Duration, SettingError>> = OnceLock::new();
    PARSED
        .get_or_init(|| match std::env::var(STOP_GRACE_VAR) {
            Err(_) => Ok(DEFAULT_STOP_GRACE),
            Ok(text) => parse_duration(&text).filter(|d| d.as_secs() <= 3600).ok_or(SettingError::StopGrace(text)),
        })
        .clone()
}

/// The grace period in effect ([`stop_grace`], or the default when the setting is broken).
pub fn grace() -> Duration {
    stop_grace().unwrap_or(DEFAULT_STOP_GRACE)
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
        format_duration(*after)
    )]
    TimedOut {
        /// What the engine was trying to do ("create the step's container").
        action: String,
        /// The daemon's address.
        daemon: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The daemon answered with an error, or the connection failed.
    #[error("{}", daemon_sentence(action, source))]
    Failed {
        /// What the engine was trying to do.
        action: String,
        /// bollard's error.
        #[source]
        source: Error,
    },
    /// The daemon's answer lacked a valid image ID (`sha256:` and 64 hex digits).
    #[error("the Docker daemon reported no valid image ID for `{reference}`")]
    NoImageId {
        /// The image reference or container asked about.
        reference: String,
    },
}

impl DaemonError {
    /// True when the daemon answered 404 (no such container, image or volume).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DaemonError::Failed { source, .. } if is_not_found(source))
    }

    /// The short reason: the daemon's own words when it answered, else the innermost cause.
    pub fn reason(&self) -> String {
        match self {
            DaemonError::Failed { source, .. } => daemon_reason(source),
            other => other.to_string(),
        }
    }

    /// True when the daemon answered 409 (a conflict: an image in use, a name taken).
    pub fn is_conflict(&self) -> bool {
        matches!(self, DaemonError::Failed { source: Error::DockerResponseServerError { status_code: 409, .. }, .. })
    }

    /// True when the call got no answer within its deadline.
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
pub(crate) fn is_not_found(err: &Error) -> bool {
    matches!(err, Error::DockerResponseServerError { status_code: 404, .. })
}

/// The daemon's own words when it answered, else the innermost cause (not bollard's wrapping).
pub(crate) fn daemon_reason(err: &Error) -> String {
    match err {
        Error::DockerResponseServerError { message, .. } => message.trim().to_string(),
        Error::DockerStreamError { error } => error.trim().to_string(),
        other => short_reason(other),
    }
}

/// A sentence for a daemon call that failed while trying to `action` ("create the container").
pub(crate) fn daemon_sentence(action: &str, err: &Error) -> String {
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

    #[test]
    fn durations_read_and_write_as_the_settings_do() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_sentence_and_its_404() {
        let refused = async { Err::<(), _>(Error::DockerResponseServerError { status_code: 404, message: "no such container: x".into() }) };
        let err = call("inspect the step's container", Duration::from_secs(1), refused).await.unwrap_err();
        assert!(err.is_not_found() && !err.timed_out());
        assert_eq!(err.to_string(), "the Docker daemon refused to inspect the step's container: no such container: x");
    }
}
