//! Errors of the engine library and their exit codes (spec: 0 ok, 1 step failed, 2 invalid
//! workflow or command line, 3 environment failed, 130 interrupted). Rendering happens once, in
//! `main.rs`.

/// The environment failed (daemon unreachable, image missing, disk full). The message is a
/// sentence that says what to do, never an error chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("{0}")]
pub struct EnvironmentError(pub String);

/// The process exit codes.
pub mod exit {
    /// Everything succeeded.
    pub const OK: i32 = 0;
    /// A step (or an image build) failed, or a replay differs.
    pub const STEP_FAILED: i32 = 1;
    /// The workflow or the command line is invalid.
    pub const INVALID: i32 = 2;
    /// The environment failed (daemon unreachable, image missing, disk full).
    pub const ENVIRONMENT: i32 = 3;
    /// Interrupted by SIGINT or SIGTERM.
    pub const INTERRUPTED: i32 = 130;
}
