//! The engine's own words on stderr: the one rendering of errors (`engine: error: ...`, or a
//! workflow file's diagnostics with their places), the panic note, interrupts, what may be left
//! behind, and progress notes (pulls, waiting for another run's output folder).

use std::io::IsTerminal;
use std::path::Path;

/// An error with no place in a file: `engine: error: <sentence>`. Sentences are printed as they
/// are: wrapping them would split digests and paths that users copy.
pub fn error(err: &dyn std::fmt::Display) {
    eprintln!("engine: error: {err}");
}

/// An error with places in workflow files: `engine: ` and every diagnostic with its
/// file:line:col, the source line and a caret (coloured on a TTY unless `NO_COLOR`).
pub fn diagnostic(err: &dyn miette::Diagnostic) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let out = dsl::diagnostic::render(err, color);
    eprintln!("engine: {}", out.trim_start().trim_end());
}

/// A bug: never a panic message with a backtrace or a debug dump. `at`: `file:line`.
pub fn internal_error(at: Option<(&str, u32)>) {
    let at = at.map(|(file, line)| format!(" at {file}:{line}")).unwrap_or_default();
    eprintln!("engine: internal error{at}; this is a bug, please report it with the command you ran");
}

/// The async runtime could not start.
pub fn no_runtime(err: &dyn std::fmt::Display) {
    eprintln!("engine: cannot start the async runtime: {err}");
}

/// The first interrupt (plain output only: JSON consumers see the cancellation in the events).
pub fn interrupted() {
    eprintln!("engine: interrupted; stopping and removing the running containers (interrupt again to kill them at once)");
}

/// A second SIGINT (`terminated: false`) or SIGTERM (`true`).
pub fn interrupted_again(terminated: bool) {
    let what = if terminated { "terminated" } else { "interrupted" };
    eprintln!("engine: {what} again; killing the run's containers without waiting");
}

/// The cleanup after an interrupt did not end within `secs`.
pub fn cleanup_timed_out(secs: u64) {
    eprintln!("engine: the cleanup did not finish within {secs}s (the Docker daemon may be hung); exiting without it");
}

/// The remote cache's warnings, on stderr (whatever the output format: JSON events carry the
/// counts in the `remote_cache` event).
#[derive(Debug, Clone, Copy)]
pub struct RemoteWarnings;

impl crate::remote_cache::RemoteNotes for RemoteWarnings {
    fn unavailable(&self, url: &str, why: &str) {
        eprintln!("engine: warning: remote cache {url}: unavailable ({why}); running locally, results not shared");
    }

    fn damaged(&self, url: &str, step: &str, why: &str) {
        let step = super::neutralise(step);
        eprintln!("engine: warning: remote cache {url}: the entry of step `{step}` is damaged ({why}); the step runs");
    }
}

/// What this engine created and has not seen removed.
#[derive(Debug, Default)]
pub struct LeftBehind {
    /// Container names or IDs.
    pub containers: Vec<String>,
    /// Volume names.
    pub volumes: Vec<String>,
    /// Temporary folders.
    pub folders: Vec<String>,
    /// The runs (`engine.run` label values) they belong to.
    pub runs: Vec<String>,
}

impl LeftBehind {
    /// Nothing is left.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.volumes.is_empty() && self.folders.is_empty()
    }
}

/// `engine: these may be left behind (all labelled engine.run=ID): ...; `engine clean` removes
/// them once this engine has exited`, or nothing when nothing is left.
pub fn left_behind(left: &LeftBehind) {
    if let Some(text) = left_behind_text(left) {
        eprintln!("engine: {text}");
    }
}

fn left_behind_text(left: &LeftBehind) -> Option<String> {
    let mut parts = Vec::new();
    if !left.containers.is_empty() {
        parts.push(format!("containers {}", left.containers.join(", ")));
    }
    if !left.volumes.is_empty() {
        parts.push(format!("volumes {}", left.volumes.join(", ")));
    }
    if !left.folders.is_empty() {
        parts.push(format!("temporary folders {}", left.folders.join(", ")));
    }
    if parts.is_empty() {
        return None;
    }
    let runs: Vec<String> = left.runs.iter().map(|id| format!("engine.run={id}")).collect();
    let labelled = if runs.is_empty() { String::new() } else { format!(" (all labelled {})", runs.join(", ")) };
    Some(format!("these may be left behind{labelled}: {}; `engine clean` removes them once this engine has exited", parts.join("; ")))
}

/// A line of a base image's pull, on stderr (so that `--output json` on stdout stays one event
/// per line). The shape of `images::LogFn`.
pub fn pull_line(reference: &str, _stage: &str, line: &str) {
    eprintln!("pull {reference} | {line}");
}

/// Said once while another engine holds the output folder.
pub fn waiting_for_out_dir(out: &Path, pid: Option<u32>) {
    let pid = pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
    eprintln!("waiting for another engine run using {} ({pid})…", out.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_behind_is_named_with_its_runs() {
        assert_eq!(left_behind_text(&LeftBehind::default()), None);
        let left = LeftBehind {
            containers: vec!["a".into(), "b".into()],
            volumes: vec![],
            folders: vec!["/tmp/engine-run-1-x".into()],
            runs: vec!["1".into()],
        };
        assert_eq!(
            left_behind_text(&left).unwrap(),
            "these may be left behind (all labelled engine.run=1): containers a, b; temporary folders /tmp/engine-run-1-x; \
             `engine clean` removes them once this engine has exited"
        );
    }
}
