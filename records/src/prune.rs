//! Pruning old records: keep the newest runs, drop runs older than an age. Run folders are
//! ordered and aged by their names (a run id starts with its start time in hex seconds), so
//! pruning reads no record. A run whose engine still lives (its [`crate::Recorder`] holds the
//! folder's `flock`) is never removed, nor is the run that asks for the pruning.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::read::{run_folders, RecordError};

/// Records kept by default after each run: the newest 100.
pub const DEFAULT_KEEP: usize = 100;
/// Records older than this are removed by default after each run: 30 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Keep at most this many runs (the newest).
    pub keep: usize,
    /// Remove runs that started longer ago than this.
    pub max_age: Duration,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy { keep: DEFAULT_KEEP, max_age: DEFAULT_MAX_AGE }
    }
}

/// Why a run was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneReason {
    /// It was not among the newest `keep` runs.
    BeyondNewest(usize),
    /// It started longer ago than this.
    OlderThan(Duration),
}

/// One run removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The run's id (its folder's name).
    pub run_id: String,
    /// When it started, from its id (to the second).
    pub started: SystemTime,
    /// Why it went.
    pub reason: PruneReason,
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Removed, newest first.
    pub removed: Vec<Pruned>,
    /// Run folders left.
    pub kept: usize,
    /// Runs the policy would remove whose engine still runs: left alone.
    pub live: Vec<String>,
    /// Runs that could not be removed, with why.
    pub failed: Vec<(String, String)>,
}

/// When run `id` started: its id is the start time in hex seconds, then 6 hex digits. `None`
/// for a folder name that is no run id (such folders are never pruned).
pub fn run_started(id: &str) -> Option<SystemTime> {
    let digits = id.len().checked_sub(6).filter(|n| (1..=16).contains(n))?;
    if !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let secs = u64::from_str_radix(&id[..digits], 16).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// When run `run_id` started, in Unix seconds (from its id; `u64::MAX`, no bound, for an id that
/// is no run id).
pub fn run_started_secs(run_id: &str) -> u64 {
    run_started(run_id).and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(u64::MAX, |d| d.as_secs())
}

/// Remove the run folders under `<workflow dir>/.engine/runs` that `policy` does not keep: all
/// but the newest `keep`, and those that started longer than `max_age` before `now`. `spare` (the
/// run just written) is never removed, nor a run whose engine still holds its folder's lock;
/// folders whose names are no run ids are left alone. Symlinks are never followed.
pub fn prune(workflow_dir: &Path, policy: PrunePolicy, now: SystemTime, spare: Option<&str>) -> Result<PruneReport, RecordError> {
    let mut runs: Vec<(SystemTime, String, std::path::PathBuf)> =
        run_folders(workflow_dir)?.into_iter().filter_map(|(name, dir)| Some((run_started(&name)?, name, dir))).collect();
    // Newest first.
    runs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut report = PruneReport::default();
    for (i, (started, id, dir)) in runs.into_iter().enumerate() {
        let reason = if i >= policy.keep {
            Some(PruneReason::BeyondNewest(policy.keep))
        } else if now.duration_since(started).is_ok_and(|age| age > policy.max_age) {
            Some(PruneReason::OlderThan(policy.max_age))
        } else {
            None
        };
        let Some(reason) = reason.filter(|_| spare != Some(id.as_str())) else {
            report.kept += 1;
            continue;
        };
        match remove_unless_live(&dir) {
            Ok(true) => report.removed.push(Pruned { run_id: id, started, reason }),
            Ok(false) => {
                report.kept += 1;
                report.live.push(id);
            }
            Err(e) => {
                report.kept += 1;
                report.failed.push((id, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// Remove the run folder `dir` unless its engine still holds its lock (`Ok(false)`).
fn remove_unless_live(dir: &Path) -> std::io::Result<bool> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = match rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        // Gone meanwhile (another engine pruned it): nothing left to do.
        Err(rustix::io::Errno::NOENT) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    // Held until the folder is gone. `remove_dir_all` never follows a symlink, should one have
    // been swapped in for the folder meanwhile (it removes the link).
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::runs_dir;

    #[test]
    fn a_run_id_gives_its_start_in_seconds() {
        assert_eq!(run_started_secs("6a1e2f00abcdef"), 0x6a1e2f00);
        assert_eq!(run_started_secs("not-a-run"), u64::MAX);
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn id_at(t: SystemTime, n: u32) -> String {
        format!("{:x}{n:06x}", t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
    }

    fn folders(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(runs_dir(dir)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn run_ids_give_their_start_time_and_other_names_none() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(0x6a00_0001);
        assert_eq!(run_started(&id_at(t, 0xabcdef)), Some(t));
        for other in ["", "abc", "ffff0001fifo", "6A000001ABCDEF", "notes", "6a000001abcde-"] {
            assert_eq!(run_started(other), None, "{other}");
        }
    }

    #[test]
    fn keeps_the_newest_drops_the_old_and_spares_the_current_and_live_runs() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let runs = runs_dir(dir.path());
        // Five runs a day apart (newest first), an old one, and a folder that is no run.
        let ids: Vec<String> = (0..5).map(|d| id_at(now - DAY * d, d)).collect();
        let old = id_at(now - DAY * 40, 9);
        for id in ids.iter().chain([&old]) {
            fs::create_dir_all(runs.join(id).join("logs")).unwrap();
        }
        fs::create_dir_all(runs.join("notes")).unwrap();
        // A live engine holds the second oldest (as a Recorder does).
        let live = fs::File::open(runs.join(&ids[3])).unwrap();
        rustix::fs::flock(&live, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();

        let policy = PrunePolicy { keep: 3, max_age: DAY * 30 };
        let report = prune(dir.path(), policy, now, Some(&old)).unwrap();
        assert_eq!(report.removed.iter().map(|p| p.run_id.as_str()).collect::<Vec<_>>(), [ids[4].as_str()]);
        assert_eq!(report.removed[0].reason, PruneReason::BeyondNewest(3));
        assert_eq!(report.live, [ids[3].clone()]);
        assert_eq!(report.kept, 5);
        let mut left: Vec<String> = ids[..4].iter().cloned().chain([old.clone(), "notes".to_string()]).collect();
        left.sort();
        assert_eq!(folders(dir.path()), left);

        // Without the lock and the spare: by count and by age.
        drop(live);
        let report = prune(dir.path(), PrunePolicy { keep: 3, max_age: DAY + DAY / 2 }, now, None).unwrap();
        let removed: Vec<(&str, PruneReason)> = report.removed.iter().map(|p| (p.run_id.as_str(), p.reason)).collect();
        assert_eq!(
            removed,
            [
                (ids[2].as_str(), PruneReason::OlderThan(DAY + DAY / 2)),
                (ids[3].as_str(), PruneReason::BeyondNewest(3)),
                (old.as_str(), PruneReason::BeyondNewest(3))
            ]
        );
        assert_eq!(report.kept, 2);
        let mut left = vec![ids[0].clone(), ids[1].clone(), "notes".to_string()];
        left.sort();
        assert_eq!(folders(dir.path()), left);
    }

    #[test]
    fn a_symlinked_run_folder_or_runs_folder_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        fs::create_dir_all(victim.path().join("keep")).unwrap();
        let runs = runs_dir(dir.path());
        fs::create_dir_all(&runs).unwrap();
        let old = id_at(SystemTime::now() - DAY * 90, 1);
        std::os::unix::fs::symlink(victim.path(), runs.join(&old)).unwrap();
        let report = prune(dir.path(), PrunePolicy::default(), SystemTime::now(), None).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert!(victim.path().join("keep").is_dir());

        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join(".engine")).unwrap();
        std::os::unix::fs::symlink(victim.path(), runs_dir(other.path())).unwrap();
        assert!(matches!(prune(other.path(), PrunePolicy::default(), SystemTime::now(), None), Err(RecordError::Refused { .. })));
        assert!(victim.path().join("keep").is_dir());
    }
}
