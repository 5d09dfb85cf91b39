//! The `engine` library: planner, scheduler, Docker executor, output rendering. The binary in
//! `main.rs` is a thin CLI over it.

pub mod docker;
pub mod error;
pub mod events;
pub mod executor;
pub mod output;
pub mod owner;
pub mod plan;
pub mod scheduler;
pub mod units;
pub mod workspace;
