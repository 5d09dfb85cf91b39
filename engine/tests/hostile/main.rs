//! The hostile-input section: workflows, files and daemons that try to escape the engine's
//! guarantees, each with the exact exit code and message expected and a check that nothing escaped
//! (`common::hostile::assert_nothing_escaped`: no file outside `<out>`, no host file in the cache,
//! no secret on disk after the run, no container, volume or network left).
//!
//! One module per area of the security model (README, "Security model").

#[path = "../common/mod.rs"]
mod common;

mod daemon;
mod dsl_bombs;
mod files;
mod images;
mod replay;
mod resources;
mod secrets;

use common::hostile::*;
use common::*;

/// The harness itself: a benign run passes the escape check, and the check sees a host marker
/// planted in the cache.
#[test]
fn benign_run_passes_the_escape_check_and_a_planted_marker_does_not() {
    let host = Host::new();
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a:\n    run: mkdir -p o && echo hi > o/x\n    outputs: [o]\n"
    ));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_nothing_escaped(&p, &host, &[]);
    std::fs::write(p.cache_dir().join("planted"), HOST_MARKER).unwrap();
    let caught = std::panic::catch_unwind(|| assert_nothing_escaped(&p, &host, &[]));
    assert!(caught.is_err(), "the escape check missed a host marker in the cache");
}
