//! The executors the engine stacks in front of the container runner, each wrapping an inner
//! [`Executor`](crate::executor::Executor) and doing one thing around it:
//!
//! - [`recording`]: fills the run record around the inner outcome (and keeps the step's log);
//! - [`export`]: copies (or moves) a step's outputs to the output folder;
//! - [`image`]: waits for the image the step uses (built in the background) and names it;
//! - [`caching`]: computes the key and decides; a hit is restored without calling the inner
//!   executor, a miss calls it and stores what an executed step produced;
//! - [`staging`]: makes the workspace from the source tree and the needs' outputs, with the
//!   cache mounts, secrets and `SOURCE_DATE_EPOCH`, then calls the container runner;
//! - [`container`]: the bottom, the Docker executor.
//!
//! `engine run` stacks them all; `engine replay` stacks [`replay`]'s compare layer and stager
//! over the container runner (no cache, no record); `engine plan` uses [`dry_run`] alone.

pub mod caching;
pub mod compare;
pub mod container;
pub mod dry_run;
pub mod export;
pub mod image;
pub mod recording;
pub mod replay;
pub mod staging;
