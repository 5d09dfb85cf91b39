//! Who owns a run: [`docker::owner::Owner`] (pid, its start time, the host), re-exported for the
//! engine's own folders (the run's temporary folder names its owner too).

pub use docker::owner::*;
