//! The `engine` library: planner, scheduler, Docker executor, output rendering. The binary in
//! `main.rs` is a thin CLI over it.

#![warn(missing_docs)]

pub(crate) mod budget;
pub mod cache_transfer;
pub(crate) mod caching;
pub mod cli;
pub mod docker;
pub mod error;
pub mod events;
pub mod executor;
pub mod explain;
pub mod front;
pub(crate) mod layers;
pub mod lock;
pub mod output;
pub(crate) mod owner;
pub mod plan;
pub mod prefetch;
pub mod provenance;
pub mod record;
pub mod remote_cache;
pub mod remote_settings;
pub mod replay;
pub mod run;
pub mod runs;
pub(crate) mod scheduler;
pub(crate) mod session;
pub(crate) mod units;
pub mod workspace;
