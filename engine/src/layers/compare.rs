//! The compare layer of `engine replay`: what the replayed container produced, compared with
//! the record path by path (content, kind, mode, link target), into a [`Verdict`] per step. A
//! failed replay's verdict names why, with the last lines of its log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use cache::{Digest, OutputEntry, Store};

use crate::events::LogSink;
use crate::executor::{Executor, Job, Outcome, StepContext, StepFailure, StepLogs};
use crate::record::RunRecord;

/// Compares each replayed step's outputs with the record; the verdicts are taken at the end.
pub struct Compare<E> {
    pub inner: E,
    pub store: Arc<Store>,
    pub record: Arc<RunRecord>,
    pub verdicts: Mutex<HashMap<String, Verdict>>,
}

impl<E> Compare<E> {
    /// The verdicts so far, by step name.
    pub fn take_verdicts(&self) -> HashMap<String, Verdict> {
        std::mem::take(&mut *self.verdicts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Lines of a failed replay's log shown with its verdict.
const TAIL_LINES: usize = 10;

impl<E: Executor> Executor for Compare<E> {
    async fn execute(&self, mut job: Job, ctx: StepContext) -> Outcome {
        let name = job.step.name.clone();
        // The replay's log is kept only to explain a failure: its last lines.
        let tail = Arc::new(Tail::default());
        job.logs = Some(tail.clone());
        let outcome = self.inner.execute(job, ctx).await;
        let verdict = match &outcome {
            Outcome::Executed { outputs, .. } => match (outputs.dir.clone(), self.record.steps.iter().find(|s| s.name == name)) {
                (Some(dir), Some(recorded)) => {
                    let at = dir.clone();
                    match tokio::task::spawn_blocking(move || cache::store::scan_outputs(&at)).await {
                        Ok(Ok(scanned)) => {
                            let differences = compare(&recorded.outputs, &scanned, |d| self.store.read_blob(d), &dir);
                            if differences.is_empty() {
                                Verdict::Reproduced
                            } else {
                                Verdict::Differs(differences)
                            }
                        }
                        Ok(Err(e)) => Verdict::Failed(format!("cannot read the replayed outputs: {e}")),
                        Err(e) => Verdict::Failed(e.to_string()),
                    }
                }
                _ => Verdict::Failed("not in the record".into()),
            },
            other => {
                let mut why = match other.failure() {
                    Some(StepFailure::Exit(code)) => format!("the replay exited with code {code}"),
                    Some(failure) => format!("the replay failed: {failure}"),
                    None => "the replay did not run".to_string(),
                };
                let lines = tail.lines();
                if !lines.is_empty() {
                    why.push_str("; last lines of its log:");
                    for line in lines {
                        why.push_str("\n      ");
                        why.push_str(&line);
                    }
                }
                Verdict::Failed(why)
            }
        };
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).insert(name, verdict);
        outcome
    }
}

/// The last [`TAIL_LINES`] lines of a step's log (`<stream> <line>`), in memory (bounded).
#[derive(Default)]
struct Tail(Arc<TailLines>);

#[derive(Default)]
struct TailLines(Mutex<VecDeque<Vec<u8>>>);

impl Tail {
    fn lines(&self) -> Vec<String> {
        let lines = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| String::from_utf8_lossy(l).trim_end_matches('\n').to_string()).collect()
    }
}

impl LogSink for TailLines {
    fn append(&self, line: Vec<u8>) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

impl StepLogs for Tail {
    fn open(&self) -> Option<Arc<dyn LogSink>> {
        Some(self.0.clone())
    }

    fn finish(&self) -> std::io::Result<Vec<u8>> {
        Ok(self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten().copied().collect())
    }

    fn keep(&self, _blob: &std::path::Path, _digest: cache::Digest) {}
}

/// How one output path compares with the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// Same path, other content.
    Content {
        /// The output path, relative to the step's outputs.
        path: String,
        /// Digest of the recorded content.
        recorded: Digest,
        /// Digest of the replayed content.
        replayed: Digest,
        /// A short unified diff, when both sides are small UTF-8 texts.
        diff: Option<String>,
    },
    /// Recorded but not produced again.
    Missing {
        /// The output path.
        path: String,
    },
    /// Produced now but not recorded.
    Extra {
        /// The output path.
        path: String,
    },
    /// Same path, other kind (file, folder, symlink), mode or link target.
    Changed {
        /// The output path.
        path: String,
        /// What was recorded (kind, mode or target).
        recorded: String,
        /// What the replay produced.
        replayed: String,
    },
}

/// The verdict on one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reproduced,
    Differs(Vec<Difference>),
    /// The replay did not finish (non-zero exit, timeout, ...): nothing to compare.
    Failed(String),
}

/// Texts up to this size are diffed line by line in the report.
const DIFF_MAX_BYTES: usize = 64 * 1024;
/// Lines of a text diff shown per file.
const DIFF_MAX_LINES: usize = 20;

/// Path-by-path comparison of recorded and replayed outputs. `recorded_blob` reads a recorded
/// file's content (for a text diff); `replayed_dir` holds the replayed files.
pub fn compare(
    recorded: &[OutputEntry],
    replayed: &[OutputEntry],
    recorded_blob: impl Fn(&Digest) -> Option<Vec<u8>>,
    replayed_dir: &Path,
) -> Vec<Difference> {
    let old: BTreeMap<&str, &OutputEntry> = recorded.iter().map(|e| (e.path(), e)).collect();
    let new: BTreeMap<&str, &OutputEntry> = replayed.iter().map(|e| (e.path(), e)).collect();
    let mut paths: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    let mut out = Vec::new();
    for path in paths {
        match (old.get(path), new.get(path)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(OutputEntry::File { digest: d1, mode: m1, .. }), Some(OutputEntry::File { digest: d2, mode: m2, .. })) if d1 != d2 => {
                let diff = match (recorded_blob(d1), std::fs::read(replayed_dir.join(path)).ok()) {
                    (Some(a), Some(b)) => text_diff(&a, &b),
                    _ => None,
                };
                out.push(Difference::Content { path: path.to_string(), recorded: *d1, replayed: *d2, diff });
                if m1 != m2 {
                    out.push(Difference::Changed {
                        path: path.to_string(),
                        recorded: format!("mode {m1:o}"),
                        replayed: format!("mode {m2:o}"),
                    });
                }
            }
            (Some(a), Some(b)) => out.push(Difference::Changed { path: path.to_string(), recorded: describe(a), replayed: describe(b) }),
            (Some(_), None) => out.push(Difference::Missing { path: path.to_string() }),
            (None, Some(_)) => out.push(Difference::Extra { path: path.to_string() }),
            (None, None) => {}
        }
    }
    out
}

fn describe(e: &OutputEntry) -> String {
    match e {
        OutputEntry::File { mode, .. } => format!("file, mode {mode:o}"),
        OutputEntry::Dir { mode, .. } => format!("folder, mode {mode:o}"),
        OutputEntry::Symlink { target, .. } => format!("symlink to `{target}`"),
    }
}

/// A short unified diff when both sides are small UTF-8 texts.
fn text_diff(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() > DIFF_MAX_BYTES || b.len() > DIFF_MAX_BYTES || a.contains(&0) || b.contains(&0) {
        return None;
    }
    let (a, b) = (std::str::from_utf8(a).ok()?, std::str::from_utf8(b).ok()?);
    let diff = similar::TextDiff::from_lines(a, b);
    let text = diff.unified_diff().context_radius(1).header("recorded", "replayed").to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    let more = lines.len().saturating_sub(DIFF_MAX_LINES);
    lines.truncate(DIFF_MAX_LINES);
    let mut shown = lines.join("\n");
    if more > 0 {
        shown.push_str(&format!("\n... {more} more lines"));
    }
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> OutputEntry {
        OutputEntry::File { path: path.into(), mode: 0o644, digest: Digest::of(content), size: content.len() as u64 }
    }

    #[test]
    fn same_outputs_have_no_differences() {
        let a = vec![OutputEntry::Dir { path: "out".into(), mode: 0o755 }, file("out/a", b"x")];
        assert!(compare(&a, &a.clone(), |_| None, Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn each_kind_of_difference_is_named_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stamp"), "2\n").unwrap();
        let recorded = vec![file("gone", b"g"), file("stamp", b"1\n"), OutputEntry::Symlink { path: "l".into(), target: "a".into() }];
        let replayed = vec![file("new", b"n"), file("stamp", b"2\n"), OutputEntry::Symlink { path: "l".into(), target: "b".into() }];
        let diffs = compare(&recorded, &replayed, |d| (*d == Digest::of(b"1\n")).then(|| b"1\n".to_vec()), dir.path());
        assert_eq!(diffs.len(), 4, "{diffs:?}");
        assert_eq!(diffs[0], Difference::Missing { path: "gone".into() });
        assert!(matches!(&diffs[1], Difference::Changed { path, .. } if path == "l"));
        assert_eq!(diffs[2], Difference::Extra { path: "new".into() });
        let Difference::Content { path, diff: Some(diff), .. } = &diffs[3] else { panic!("{:?}", diffs[3]) };
        assert_eq!(path, "stamp");
        assert!(diff.contains("-1") && diff.contains("+2"), "{diff}");
    }

    #[test]
    fn binary_or_large_files_get_no_text_diff() {
        assert!(text_diff(b"a\0b", b"a\0c").is_none());
        assert!(text_diff(&vec![b'a'; DIFF_MAX_BYTES + 1], b"b").is_none());
        let long_a: String = (0..100).map(|i| format!("{i}\n")).collect();
        let long_b: String = (0..100).map(|i| format!("{}\n", i * 2)).collect();
        let d = text_diff(long_a.as_bytes(), long_b.as_bytes()).unwrap();
        assert!(d.lines().count() <= DIFF_MAX_LINES + 1 && d.ends_with("more lines"), "{d}");
    }
}
