//! Turning bollard errors into the one-sentence messages users see (`StepFailure::Environment`,
//! `EnvironmentError`). Never shows an error chain or Debug output.

use bollard::errors::Error;

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
        other => format!(
            "lost the Docker daemon while trying to {action}: {}. Check that it is still running",
            short_reason(other)
        ),
    }
}
