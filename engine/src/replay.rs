//! `engine replay`: re-execute the steps of a recorded run and say whether their outputs come out
//! the same (a reproducibility audit, like `nix build --check`).
//!
//! Each replayed step gets a fresh workspace made from the *store*, never from the working tree:
//! its input files by the digests the record names, and the outputs its needs produced **in the
//! recorded run** (so every step is judged on its own, and all of them can run at once). The
//! container is created from the recorded image ID with the recorded definition (command, env,
//! user, network, limits; `SOURCE_DATE_EPOCH` as recorded), bypassing the cache. The new outputs
//! are hashed, never stored, and compared with the record path by path.
//!
//! Owns the comparison and its report; running a container is the Docker executor's job, and the
//! run record is only read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache::{Digest, InputEntry, OutputEntry, Store};
use tokio_util::sync::CancellationToken;

use crate::docker::{cleanup, DockerExecutor};
use crate::error::{exit, EnvironmentError};
use crate::events::EventSink;
use crate::executor::{CacheMountJob, StepContext, StepFailure, StepJob};
use crate::record::{self, RunRecord, StepRecord};
use crate::run::{new_run_id, open_store, StartError};
use crate::workspace::{self, RunDir};

pub struct ReplayConfig {
    /// The folder holding the workflow and its `.engine/runs`.
    pub dir: PathBuf,
    pub id: String,
    /// Steps to replay; empty: every step with recorded outputs.
    pub steps: Vec<String>,
    /// Default: the recorded run's `--jobs`.
    pub jobs: Option<usize>,
    pub cache_dir: PathBuf,
}

/// How one output path compares with the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// Same path, other content.
    Content { path: String, recorded: Digest, replayed: Digest, diff: Option<String> },
    /// Recorded but not produced again.
    Missing { path: String },
    /// Produced now but not recorded.
    Extra { path: String },
    /// Same path, other kind (file, folder, symlink), mode or link target.
    Changed { path: String, recorded: String, replayed: String },
}

/// The verdict on one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reproduced,
    Differs(Vec<Difference>),
    /// The replay did not finish (non-zero exit, timeout, ...): nothing to compare.
    Failed(String),
}

pub async fn replay(cfg: ReplayConfig, cancel: CancellationToken) -> Result<i32, StartError> {
    let (_, record) = record::find(&cfg.dir, &cfg.id)?;
    let selected: Vec<StepRecord> = select(&record, &cfg.steps)?.into_iter().cloned().collect();
    let store = Arc::new(open_store(&cfg.cache_dir)?);
    let docker = Arc::new(DockerExecutor::connect().await?);

    // Everything a replay needs is checked before any container starts: a missing input or
    // image is the environment's problem (exit 3), named precisely.
    let mut secrets = HashMap::new();
    let mut missing = Vec::new();
    // Each step's input manifest, read once (from the store for a step with many inputs).
    let mut inputs = HashMap::new();
    for step in &selected {
        let (step_missing, step_inputs) = check_step(&docker, &store, &record, step).await;
        missing.extend(step_missing);
        inputs.insert(step.name.clone(), Arc::new(step_inputs));
        for name in &step.definition.secrets {
            match std::env::var(name) {
                Ok(v) => {
                    secrets.insert(name.clone(), v);
                }
                Err(_) => missing.push(format!("step `{}` needs the secret `{name}`: export {name} in the environment", step.name)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(EnvironmentError(format!("cannot replay run {}:\n  {}", record.run_id, missing.join("\n  "))).into());
    }

    let replay_id = new_run_id();
    let run_dir = Arc::new(
        RunDir::create(&replay_id).map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the replay: {e}")))?,
    );
    eprintln!(
        "replaying {} step{} of run {} ({}) as {replay_id}",
        selected.len(),
        if selected.len() == 1 { "" } else { "s" },
        record.run_id,
        record.workflow.name
    );
    let jobs = cfg.jobs.unwrap_or(record.invocation.jobs).max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs));
    let record = Arc::new(record);
    let secrets = Arc::new(secrets);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, step) in selected.iter().enumerate() {
        let (docker, store, record, run_dir) = (docker.clone(), store.clone(), record.clone(), run_dir.clone());
        let (permits, cancel, secrets, replay_id) = (permits.clone(), cancel.clone(), secrets.clone(), replay_id.clone());
        let name = step.name.clone();
        let inputs = inputs[&name].clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let verdict = if cancel.is_cancelled() {
                Verdict::Failed("cancelled".into())
            } else {
                replay_step(&docker, &store, &record, &name, inputs, &run_dir, &replay_id, &secrets, cancel).await
            };
            (index, verdict)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; selected.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, v)) => verdicts[i] = Some(v),
            Err(e) => tracing::warn!(error = %e, "a replay task stopped"),
        }
    }
    // Every container of the replay is gone before we report, whatever happened.
    let _ = cleanup::remove_run(docker.client(), &replay_id).await;
    if cancel.is_cancelled() {
        eprintln!("replay cancelled");
        return Ok(exit::INTERRUPTED);
    }

    let width = selected.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut reproduced = 0;
    for (step, verdict) in selected.iter().zip(&verdicts) {
        let verdict = verdict.clone().unwrap_or_else(|| Verdict::Failed("the replay task stopped".into()));
        print!("{}", report_line(&step.name, width, &verdict));
        if verdict == Verdict::Reproduced {
            reproduced += 1;
        }
    }
    let differ = selected.len() - reproduced;
    println!("{reproduced} reproduced, {differ} differ{}", if differ == 1 { "s" } else { "" });
    Ok(if differ == 0 { exit::OK } else { exit::STEP_FAILED })
}

/// The steps to replay, in record (plan) order.
fn select<'r>(record: &'r RunRecord, names: &[String]) -> Result<Vec<&'r StepRecord>, StartError> {
    if names.is_empty() {
        let steps: Vec<&StepRecord> = record.steps.iter().filter(|s| s.status.has_outputs()).collect();
        if steps.is_empty() {
            return Err(StartError::Invalid(format!("run {} has no step that succeeded: nothing to replay", record.run_id)));
        }
        return Ok(steps);
    }
    for name in names {
        let Some(step) = record.steps.iter().find(|s| &s.name == name) else {
            let known: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(StartError::Invalid(format!(
                "run {} has no step `{name}`; its steps: {}",
                record.run_id,
                known.join(", ")
            )));
        };
        if !step.status.has_outputs() {
            return Err(StartError::Invalid(format!(
                "step `{name}` {} in run {}: only steps that succeeded (or came from the cache) have outputs to compare",
                step.status.as_str(),
                record.run_id
            )));
        }
    }
    Ok(record.steps.iter().filter(|s| names.contains(&s.name)).collect())
}

/// What is missing for replaying `step` (its image, input contents, or its needs' outputs), and
/// its input files.
async fn check_step(
    docker: &DockerExecutor,
    store: &Store,
    record: &RunRecord,
    step: &StepRecord,
) -> (Vec<String>, Vec<InputEntry>) {
    let mut missing = Vec::new();
    match &step.image {
        Some(image) => {
            if docker.image_id(&image.id).await.is_err() {
                missing.push(format!(
                    "step `{}`: image {} ({}) is no longer on the daemon",
                    step.name, image.id, image.reference
                ));
            }
        }
        None => missing.push(format!("step `{}`: the record names no image", step.name)),
    }
    let Some(inputs) = step.input_entries(store) else {
        missing.push(format!("step `{}`: its input manifest is not in the cache store {}", step.name, store.dir().display()));
        return (missing, Vec::new());
    };
    for input in &inputs {
        if !store.has_blob(&input.digest) {
            missing.push(format!(
                "step `{}`: input `{}` (sha256 {}) is not in the cache store {}",
                step.name,
                input.path,
                input.digest,
                store.dir().display()
            ));
        }
    }
    for need in &step.definition.needs {
        let Some(up) = record.steps.iter().find(|s| &s.name == need) else {
            missing.push(format!("step `{}`: the record has no step `{need}` it needs", step.name));
            continue;
        };
        for entry in &up.outputs {
            if let OutputEntry::File { path, digest, .. } = entry {
                if !store.has_blob(digest) {
                    missing.push(format!(
                        "step `{}`: output `{path}` of `{need}` (sha256 {digest}) is not in the cache store {}",
                        step.name,
                        store.dir().display()
                    ));
                }
            }
        }
    }
    (missing, inputs)
}

#[allow(clippy::too_many_arguments)]
async fn replay_step(
    docker: &DockerExecutor,
    store: &Arc<Store>,
    record: &Arc<RunRecord>,
    name: &str,
    inputs: Arc<Vec<InputEntry>>,
    run_dir: &Arc<RunDir>,
    replay_id: &str,
    secrets: &HashMap<String, String>,
    cancel: CancellationToken,
) -> Verdict {
    let Some(step) = record.steps.iter().find(|s| s.name == name) else {
        return Verdict::Failed("not in the record".into());
    };
    let workspace = run_dir.workspace(name);
    let collect = run_dir.collected(name);
    let (store2, record2, run_dir2, name2) = (store.clone(), record.clone(), run_dir.clone(), name.to_string());
    let (ws, col) = (workspace.clone(), collect.clone());
    let staged =
        tokio::task::spawn_blocking(move || stage_from_store(&store2, &record2, &name2, &inputs, &run_dir2, &ws, &col))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = staged {
        return Verdict::Failed(format!("cannot prepare the workspace from the store: {e}"));
    }

    let mut definition = step.definition.clone();
    if let Some(epoch) = step.source_date_epoch {
        definition.env.insert("SOURCE_DATE_EPOCH".into(), epoch.to_string());
    }
    let mut caches = Vec::new();
    for mount in &definition.caches {
        match store.mount_dir(&mount.name) {
            Ok(host_dir) => caches.push(CacheMountJob { name: mount.name.clone(), path: mount.path.clone(), host_dir }),
            Err(e) => return Verdict::Failed(format!("cannot prepare cache mount `{}`: {e}", mount.name)),
        }
    }
    let job = StepJob {
        run_id: replay_id.to_string(),
        step: Arc::new(definition),
        image: step.image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
        workspace: workspace.clone(),
        collect_to: collect.clone(),
        secrets: step.definition.secrets.iter().filter_map(|s| secrets.get(s).map(|v| (s.clone(), v.clone()))).collect(),
        caches,
    };
    // The replay's log is kept only to explain a failure.
    let (events, mut rx) = EventSink::channel();
    let (events, log) = events.capturing_logs();
    let outcome = docker.run_step(job, StepContext { events, cancel }).await;
    rx.close();
    while rx.try_recv().is_ok() {}
    let _ = std::fs::remove_dir_all(&workspace);
    if let Err(failure) = outcome.result {
        let log = String::from_utf8_lossy(&log.take()).into_owned();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let mut why = match failure {
            StepFailure::Exit(code) => format!("the replay exited with code {code}"),
            other => format!("the replay failed: {other}"),
        };
        if !tail.is_empty() {
            why.push_str("; last lines of its log:");
            for line in tail.into_iter().rev() {
                why.push_str("\n      ");
                why.push_str(line);
            }
        }
        return Verdict::Failed(why);
    }
    let scanned = match tokio::task::spawn_blocking(move || cache::store::scan_outputs(&collect)).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return Verdict::Failed(format!("cannot read the replayed outputs: {e}")),
        Err(e) => return Verdict::Failed(e.to_string()),
    };
    let differences = compare(&step.outputs, &scanned, |d| store.read_blob(d), &run_dir.collected(name));
    if differences.is_empty() {
        Verdict::Reproduced
    } else {
        Verdict::Differs(differences)
    }
}

/// The step's workspace: its recorded inputs and its needs' recorded outputs, from the store.
fn stage_from_store(
    store: &Store,
    record: &RunRecord,
    name: &str,
    inputs: &[InputEntry],
    run_dir: &RunDir,
    workspace: &Path,
    collect: &Path,
) -> Result<(), String> {
    let step = record.steps.iter().find(|s| s.name == name).ok_or("not in the record")?;
    let safe = cache::store::sanitise(name);
    // The inputs, as a source tree of their own (only the recorded files, at their paths).
    let source = run_dir.path().join("replay-inputs").join(&safe);
    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
    let files: Vec<OutputEntry> = inputs
        .iter()
        .map(|i| OutputEntry::File { path: i.path.clone(), mode: i.mode & 0o7777, digest: i.digest, size: 0 })
        .collect();
    store.materialise(&files, &source).map_err(|e| e.to_string())?;
    let mut upstream = Vec::new();
    for need in &step.definition.needs {
        let up = record.steps.iter().find(|s| &s.name == need).ok_or_else(|| format!("no step `{need}` in the record"))?;
        let dir = run_dir.path().join("replay-upstream").join(&safe).join(cache::store::sanitise(need));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        store.materialise(&up.outputs, &dir).map_err(|e| format!("outputs of `{need}`: {e}"))?;
        upstream.push(dir);
    }
    let paths: Vec<String> = inputs.iter().map(|i| i.path.clone()).collect();
    workspace::stage(&source, &paths, &upstream, workspace).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(collect).map_err(|e| e.to_string())
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
            (
                Some(OutputEntry::File { digest: d1, mode: m1, .. }),
                Some(OutputEntry::File { digest: d2, mode: m2, .. }),
            ) if d1 != d2 => {
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
            (Some(a), Some(b)) => {
                out.push(Difference::Changed { path: path.to_string(), recorded: describe(a), replayed: describe(b) })
            }
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

/// The report of one step: `name  reproduced`, or `name  differs` with one line per difference.
pub fn report_line(name: &str, width: usize, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Reproduced => format!("{name:<width$}  reproduced\n"),
        Verdict::Failed(why) => format!("{name:<width$}  differs: {why}\n"),
        Verdict::Differs(diffs) => {
            let mut s = format!("{name:<width$}  differs\n");
            for d in diffs {
                match d {
                    Difference::Content { path, recorded, replayed, diff } => {
                        s.push_str(&format!("    {path}: recorded sha256 {recorded}, replayed sha256 {replayed}\n"));
                        if let Some(diff) = diff {
                            for line in diff.lines() {
                                s.push_str(&format!("      {line}\n"));
                            }
                        }
                    }
                    Difference::Missing { path } => s.push_str(&format!("    {path}: recorded, not produced by the replay\n")),
                    Difference::Extra { path } => s.push_str(&format!("    {path}: produced by the replay, not recorded\n")),
                    Difference::Changed { path, recorded, replayed } => {
                        s.push_str(&format!("    {path}: recorded {recorded}, replayed {replayed}\n"))
                    }
                }
            }
            s
        }
    }
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
        let report = report_line("use", 3, &Verdict::Differs(diffs.clone()));
        assert!(report.starts_with("use  differs\n"), "{report}");
        assert!(report.contains(&format!("stamp: recorded sha256 {}, replayed sha256 {}", Digest::of(b"1\n"), Digest::of(b"2\n"))), "{report}");
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

    #[test]
    fn unknown_or_failed_steps_are_refused_by_name() {
        let mut ok = StepRecord::pending(&dsl::Step::new("ok", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("true".into())));
        ok.status = record::StepState::Succeeded;
        let mut bad = StepRecord::pending(&dsl::Step::new("bad", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("false".into())));
        bad.status = record::StepState::Failed;
        let record: RunRecord = serde_json::from_value(serde_json::json!({
            "schema": record::SCHEMA, "run_id": "r1", "status": "failed", "started_at": "t",
            "finished_at": null, "duration_ms": null,
            "engine": {"name": "engine", "version": "0"},
            "host": {"os": "linux", "arch": "x", "docker_version": "d", "docker_api_version": "a"},
            "workflow": {"name": "w", "file": "f", "dir": "/", "digest": "sha256:0"},
            "invocation": {"targets": [], "jobs": 1, "keep_going": false, "no_cache": false, "out_dir": "/o"},
            "steps": [ok, bad],
        }))
        .unwrap();
        assert_eq!(select(&record, &[]).unwrap().len(), 1);
        let err = select(&record, &["bad".into()]).unwrap_err().to_string();
        assert!(err.contains("step `bad` failed in run r1"), "{err}");
        let err = select(&record, &["nope".into()]).unwrap_err().to_string();
        assert!(err.contains("no step `nope`; its steps: ok, bad"), "{err}");
    }
}
