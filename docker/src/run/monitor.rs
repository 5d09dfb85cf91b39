//! Measuring what a step's bind-mounted workspace holds on the host while the step runs, for
//! `limits.workspace` (like Kubernetes' ephemeral-storage eviction: a periodic walk, no quota).
//!
//! Reads metadata only, never follows a symlink, and stops counting as soon as the limit is
//! passed, so one measurement is bounded by the limit, not by what the step wrote.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How often the workspace of a running step is measured (at most; see [`pause_after`]).
pub const INTERVAL: Duration = Duration::from_millis(500);

/// The pause before the next measurement, after one that took `walk`: [`INTERVAL`], or ten
/// times the walk when that is longer (a workspace of many files is walked less often, so
/// measuring never costs more than a tenth of a core), at most 10 s.
pub fn pause_after(walk: Duration) -> Duration {
    walk.saturating_mul(10).clamp(INTERVAL, Duration::from_secs(10))
}

/// Bytes of disk the folder `dir` takes (allocated blocks of every file, folder and symlink
/// under it, the folder itself included), counted until it passes `stop_above`. Entries that
/// vanish while walking are skipped, and so are folders the engine may not read (only possible
/// when it does not run as root: the step made them private); other errors are errors.
pub fn usage(dir: &Path, stop_above: u64) -> io::Result<u64> {
    let skipped =
        |e: &walkdir::Error| e.io_error().is_some_and(|io| matches!(io.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied));
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if skipped(&e) => continue,
            Err(e) => return Err(io::Error::other(e)),
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if skipped(&e) => continue,
            Err(e) => return Err(io::Error::other(e)),
        };
        // Allocated blocks, not the length: a sparse file takes what it takes. (Its length is
        // what `limits.outputs` counts if it is collected.)
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if total > stop_above {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes_and_stops_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("root")).unwrap();
        let used = usage(dir.path(), u64::MAX).unwrap();
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
        assert!(usage(dir.path(), 10).unwrap() > 10);
    }

    #[test]
    fn slow_walks_are_spaced_out() {
        assert_eq!(pause_after(Duration::from_millis(5)), INTERVAL);
        assert_eq!(pause_after(Duration::from_millis(200)), Duration::from_secs(2));
        assert_eq!(pause_after(Duration::from_secs(5)), Duration::from_secs(10));
    }
}
