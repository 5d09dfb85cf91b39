//! Renders run events for people and machines: plain mode prefixes each log line with its step
//! name (coloured on a TTY) and ends with a summary table; JSON mode prints one event per line.
//!
//! Renderers only format; they never decide anything about the run.
