//! `engine runs`, `engine runs show` and `engine runs prune` as text or JSON, from what
//! `runs` and the `records` crate return.
//!
//! Plain text is for people (short digests, sizes like `1.5k`, no colours); JSON is for
//! machines: `engine runs --output json` prints one summary object per run on one line, and
//! `engine runs show ID --output json` prints the record itself (schema: docs/records.md).

use std::fmt::Write as _;
use std::path::Path;

use cache::OutputEntry;

use super::{fmt_secs, fmt_size, neutralise_lines};
use crate::cli::OutputFormat;
use crate::record::{self, RecordError, RunRecord, StepRecord, StepState};
use crate::runs::{RunList, RunsPruned};

/// The runs recorded, oldest first: id, start time, workflow, result, steps run / cached.
pub fn list(list: &RunList, output: OutputFormat) -> String {
    match output {
        // Names, reasons and paths come from records, which anyone who can write the folder
        // can edit: nothing in them reaches the terminal as a control character.
        OutputFormat::Plain => neutralise_lines(&list_table(&list.runs, &list.runs_dir)),
        OutputFormat::Json => {
            let summaries: Vec<record::RunSummary> = list.runs.iter().map(RunRecord::summary).collect();
            // Through a `Value`: keys in sorted order, as documented.
            let json = serde_json::to_value(summaries).unwrap_or_default();
            format!("{json}\n")
        }
    }
}

/// One run in detail. `run_dir` is the run's folder (logs are relative to it).
pub fn show(run_dir: &Path, record: &RunRecord, output: OutputFormat) -> Result<String, RecordError> {
    match output {
        OutputFormat::Plain => Ok(neutralise_lines(&show_text(run_dir, record))),
        OutputFormat::Json => serde_json::to_string_pretty(record)
            .map(|json| format!("{json}\n"))
            .map_err(|e| RecordError::Unreadable { path: run_dir.join("record.json"), reason: e.to_string() }),
    }
}

/// Prints [`list`] on stdout.
pub fn print_list(runs: &RunList, output: OutputFormat) {
    print!("{}", list(runs, output));
}

/// Prints [`show`] on stdout.
pub fn print_show(run_dir: &Path, record: &RunRecord, output: OutputFormat) -> Result<(), RecordError> {
    print!("{}", show(run_dir, record, output)?);
    Ok(())
}

/// Prints [`prune`] on stdout.
pub fn print_prune(pruned: &RunsPruned, output: OutputFormat) {
    print!("{}", prune(pruned, output));
}

fn list_table(runs: &[RunRecord], runs_dir: &Path) -> String {
    let header = ["id", "started", "workflow", "result", "run", "cached"];
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            [
                r.run_id.clone(),
                r.started_at.clone(),
                r.workflow.name.clone(),
                // An older engine's record is marked (and explained below the table).
                format!("{}{}", r.status.as_str(), if r.is_current() { "" } else { "*" }),
                r.steps_run().to_string(),
                r.steps_cached().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        // Text columns left-aligned, the two counts right-aligned; no trailing spaces.
        let [id, started, workflow, result, run, cached] = cells;
        format!(
            "{id:<w0$}  {started:<w1$}  {workflow:<w2$}  {result:<w3$}  {run:>w4$}  {cached:>w5$}\n",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        )
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]));
    }
    let n = runs.len();
    let _ = writeln!(out, "{n} run{} in {}", if n == 1 { "" } else { "s" }, runs_dir.display());
    if let Some(old) = runs.iter().find(|r| !r.is_current()) {
        let _ = writeln!(out, "* recorded by an older engine ({}): shown, but not replayed or attested", old.schema);
    }
    out
}

/// `sha256:<first 12 hex digits>` of a digest, for people.
fn short_digest(digest: &cache::Digest) -> String {
    format!("sha256:{}", digest.short())
}

/// Label column of `show`: wide enough for `SOURCE_DATE_EPOCH`.
const LABEL: usize = 18;

fn field(out: &mut String, indent: &str, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{indent}{label:<LABEL$} {value}");
}

fn show_text(run_dir: &Path, r: &RunRecord) -> String {
    let mut out = String::new();
    field(&mut out, "", "run", &r.run_id);
    if !r.is_current() {
        field(&mut out, "", "schema", format!("{} (an older engine's record: not replayed or attested)", r.schema));
    }
    field(&mut out, "", "status", r.status.as_str());
    field(&mut out, "", "workflow", format!("{} ({}, {})", r.workflow.name, r.workflow.file, short_digest(&r.workflow.digest)));
    field(&mut out, "", "engine", format!("{} {}", r.engine.name, r.engine.version));
    field(
        &mut out,
        "",
        "host",
        format!("{}/{}, docker {} (API {})", r.host.os, r.host.arch, r.host.docker_version, r.host.docker_api_version),
    );
    field(&mut out, "", "started", &r.started_at);
    match (&r.finished_at, r.duration_ms) {
        (Some(at), Some(ms)) => field(&mut out, "", "finished", format!("{at} ({})", fmt_secs(ms))),
        (Some(at), None) => field(&mut out, "", "finished", at),
        (None, _) => field(&mut out, "", "finished", "not yet (the run is going on, or the engine stopped)"),
    }
    let targets = if r.invocation.targets.is_empty() { "all steps".to_string() } else { r.invocation.targets.join(", ") };
    field(&mut out, "", "targets", targets);
    field(&mut out, "", "out dir", &r.invocation.out_dir);
    field(&mut out, "", "steps", format!("{} ({} run, {} cached)", r.steps.len(), r.steps_run(), r.steps_cached()));
    for step in &r.steps {
        out.push('\n');
        step_text(&mut out, run_dir, step);
    }
    out
}

fn step_text(out: &mut String, run_dir: &Path, s: &StepRecord) {
    const IN: &str = "  ";
    let how = match s.status {
        StepState::Cached => "outputs restored from the cache, no container ran".to_string(),
        _ if s.executed() => match s.duration_ms {
            Some(ms) => format!("executed in {}", fmt_secs(ms)),
            None => "executed".to_string(),
        },
        StepState::Skipped => "not executed".to_string(),
        StepState::Pending => "not finished".to_string(),
        StepState::Succeeded | StepState::Failed | StepState::Cancelled => "stopped".to_string(),
    };
    let _ = writeln!(out, "step {}: {} ({how})", s.name, s.status.as_str());
    if let Some(reason) = &s.reason {
        field(out, IN, "reason", reason);
    }
    if let Some(code) = s.exit_code {
        field(out, IN, "exit code", code);
    }
    if let Some(image) = &s.image {
        field(out, IN, "image", format!("{} (sha256:{})", image.reference, image.id.short()));
    }
    if let Some(key) = &s.key {
        field(out, IN, "key", key.digest().short());
    }
    if s.key.is_some() {
        let n = s.inputs_count;
        field(out, IN, "inputs", format!("{n} file{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(epoch) = s.source_date_epoch {
        field(out, IN, "SOURCE_DATE_EPOCH", epoch);
    }
    let shown: Vec<(String, String)> = s
        .outputs
        .iter()
        .filter_map(|o| match o {
            OutputEntry::File { path, digest, size, .. } => Some((path.clone(), format!("sha256:{}  {}", digest.short(), fmt_size(*size)))),
            OutputEntry::Symlink { path, target } => Some((path.clone(), format!("-> {target}"))),
            OutputEntry::Dir { .. } => None,
        })
        .collect();
    if s.status.has_outputs() {
        if shown.is_empty() {
            field(out, IN, "outputs", "none");
        }
        let width = shown.iter().map(|(p, _)| p.chars().count()).max().unwrap_or(0);
        for (i, (path, what)) in shown.iter().enumerate() {
            let label = if i == 0 { "outputs" } else { "" };
            field(out, IN, label, format!("{path:<width$}  {what}"));
        }
    }
    if let Some(log) = &s.log {
        field(out, IN, "log", format!("{}  {}  {}", run_dir.join(&log.path).display(), short_digest(&log.digest), fmt_size(log.bytes)));
    }
}

/// What `engine runs prune` removed and why. Plain: one line per removed run, then a total;
/// JSON: one object.
pub fn prune(pruned: &RunsPruned, output: OutputFormat) -> String {
    let report = &pruned.report;
    let started = |p: &record::Pruned| humantime::format_rfc3339_seconds(p.started).to_string();
    let why = |p: &record::Pruned| match p.reason {
        record::PruneReason::BeyondNewest(n) => format!("beyond the newest {n}"),
        record::PruneReason::OlderThan(age) => format!("older than {}", humantime::format_duration(age)),
    };
    match output {
        OutputFormat::Plain => {
            let mut out = String::new();
            for p in &report.removed {
                let _ = writeln!(out, "removed {}  started {}  {}", p.run_id, started(p), why(p));
            }
            for id in &report.live {
                let _ = writeln!(out, "kept {id}: its engine is still running");
            }
            for (id, e) in &report.failed {
                let _ = writeln!(out, "kept {id}: cannot remove it: {e}");
            }
            let n = report.removed.len();
            let _ =
                writeln!(out, "removed {n} run{}, kept {} in {}", if n == 1 { "" } else { "s" }, report.kept, pruned.runs_dir.display());
            neutralise_lines(&out)
        }
        OutputFormat::Json => {
            let removed: Vec<serde_json::Value> =
                report.removed.iter().map(|p| serde_json::json!({ "id": p.run_id, "started_at": started(p), "reason": why(p) })).collect();
            let failed: Vec<serde_json::Value> = report.failed.iter().map(|(id, e)| serde_json::json!({ "id": id, "error": e })).collect();
            format!("{}\n", serde_json::json!({ "removed": removed, "kept": report.kept, "live": report.live, "failed": failed }))
        }
    }
}

#[cfg(test)]
mod tests {
    use records::fixtures::*;

    use super::*;
    use crate::record::{RecordStatus, Recorder};

    fn write(dir: &Path, record: RunRecord) {
        Recorder::create(dir, record).unwrap();
    }

    /// `engine runs` as the binary does it: the records listed, then rendered.
    fn list(dir: &Path, output: OutputFormat) -> Result<String, RecordError> {
        Ok(super::list(&crate::runs::list(dir)?, output))
    }

    /// `engine runs prune` as the binary does it.
    fn prune(dir: &Path, policy: record::PrunePolicy, output: OutputFormat) -> Result<String, RecordError> {
        Ok(super::prune(&crate::runs::prune(dir, policy)?, output))
    }

    #[test]
    fn control_characters_from_a_record_never_reach_the_terminal() {
        let mut r = two_steps("6a000003cccccc", "2026-03-01T10:00:00Z");
        r.steps[0].reason = Some("ok\r\u{1b}[2Jtrusted | ok succeeded".into());
        let dir = tempfile::tempdir().unwrap();
        let text = show(dir.path(), &r, OutputFormat::Plain).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(text.contains("␍␛[2Jtrusted"), "{text}");
    }

    #[test]
    fn list_is_oldest_first_with_counts_and_a_total_line() {
        let dir = tempfile::tempdir().unwrap();
        // Written newest first: the listing orders by start time, not by folder or write order.
        write(dir.path(), two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z"));
        let failed = record(
            "6a000001bbbbbb",
            "2026-03-01T10:00:00Z",
            RecordStatus::Failed,
            vec![
                step("build", StepState::Failed, "local/busybox:1", "busybox", vec![]),
                step("package", StepState::Skipped, "local/busybox:1", "busybox", vec![]),
            ],
        );
        write(dir.path(), failed);

        let text = list(dir.path(), OutputFormat::Plain).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cols(lines[0]), ["id", "started", "workflow", "result", "run", "cached"]);
        assert_eq!(cols(lines[1]), ["6a000001bbbbbb", "2026-03-01T10:00:00Z", "demo", "failed", "1", "0"]);
        assert_eq!(cols(lines[2]), ["6a000002aaaaaa", "2026-03-01T10:05:00Z", "demo", "succeeded", "1", "1"]);
        assert_eq!(lines[3], format!("2 runs in {}", record::runs_dir(dir.path()).display()));
        // Columns line up: every row is as wide as the header up to the last column.
        assert!(lines[..3].iter().all(|l| l.len() == lines[0].len()), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
    }

    #[test]
    fn one_run_is_one_run() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z"));
        let text = list(dir.path(), OutputFormat::Plain).unwrap();
        assert!(text.ends_with(&format!("1 run in {}\n", record::runs_dir(dir.path()).display())), "{text}");
    }

    #[test]
    fn list_as_json_is_one_line_of_summaries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z"));
        let mut incomplete = two_steps("6a000003cccccc", "2026-03-01T10:09:00Z");
        incomplete.status = RecordStatus::Incomplete;
        incomplete.steps[1] = crate::record::StepRecord::pending(incomplete.steps[1].definition.clone());
        write(dir.path(), incomplete);

        let text = list(dir.path(), OutputFormat::Json).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"id": "6a000002aaaaaa", "started_at": "2026-03-01T10:05:00Z", "workflow": "demo", "status": "succeeded",
                 "steps_run": 1, "steps_cached": 1, "steps_total": 2, "schema": "engine.run-record/v2"},
                {"id": "6a000003cccccc", "started_at": "2026-03-01T10:09:00Z", "workflow": "demo", "status": "incomplete",
                 "steps_run": 1, "steps_cached": 0, "steps_total": 2, "schema": "engine.run-record/v2"},
            ])
        );
    }

    #[test]
    fn no_runs_is_an_error_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for output in [OutputFormat::Plain, OutputFormat::Json] {
            match list(dir.path(), output) {
                Err(RecordError::NoRuns(d)) => assert_eq!(d, record::runs_dir(dir.path())),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn show_names_everything_a_person_checks() {
        let r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
        let run_dir = Path::new("/src/demo/.engine/runs/6a000002aaaaaa");
        let text = show(run_dir, &r, OutputFormat::Plain).unwrap();
        let has = |needle: &str| assert!(text.contains(needle), "no `{needle}` in:\n{text}");
        // The header.
        has("run                6a000002aaaaaa\n");
        has("status             succeeded\n");
        has(&format!("workflow           demo (workflow.yml, sha256:{})\n", &digest("version: 1\n").hex()[..12]));
        has("engine             engine 0.1.0\n");
        has("host               linux/x86_64, docker 24.0.7 (API 1.43)\n");
        has("started            2026-03-01T10:05:00Z\n");
        has("finished           2026-03-01T10:00:07Z (6.2s)\n");
        has("targets            all steps\n");
        has("out dir            /src/demo/.engine/out\n");
        has("steps              2 (1 run, 1 cached)\n");
        // The steps, in record order.
        let build = text.find("step build: succeeded (executed in 1.5s)\n").expect(&text);
        let package = text.find("step package: cached (outputs restored from the cache, no container ran)\n").expect(&text);
        assert!(build < package);
        has("  exit code          0\n");
        has(&format!("  image              local/busybox:1 (sha256:{})\n", &digest("busybox").hex()[..12]));
        has(&format!("  key                {}\n", &digest("key of build").hex()[..12]));
        has("  inputs             1 file\n");
        has("  inputs             2 files\n");
        has("  SOURCE_DATE_EPOCH  1234567890\n");
        // Output files with short digest and size, in record order; folders left out.
        has(&format!("  outputs            out/b.txt  sha256:{}  3b\n", digest("bbb").short()));
        has(&format!("                     out/a.txt  sha256:{}  1b\n", digest("a").short()));
        has(&format!("  outputs            pkg.tar     sha256:{}  7b\n", digest("tarball").short()));
        has("                     latest.tar  -> pkg.tar\n");
        assert!(!text.contains("out  "), "{text}");
        has(&format!(
            "  log                /src/demo/.engine/runs/6a000002aaaaaa/logs/00-build.log  sha256:{}  13b\n",
            &digest("build | done\n").hex()[..12]
        ));
        assert!(!text.contains('\x1b'), "no colours");
    }

    #[test]
    fn show_gives_reasons_and_unfinished_steps() {
        let mut r = record(
            "6a000001bbbbbb",
            "2026-03-01T10:00:00Z",
            RecordStatus::Incomplete,
            vec![step("build", StepState::Failed, "local/busybox:1", "busybox", vec![])],
        );
        r.steps[0].reason = Some("exited with code 2".into());
        r.steps[0].exit_code = Some(2);
        r.steps.push(crate::record::StepRecord::pending(r.steps[0].definition.clone()));
        r.steps[1].name = "later".into();
        r.invocation.targets = vec!["build".into(), "later".into()];
        let text = show(Path::new("/r"), &r, OutputFormat::Plain).unwrap();
        assert!(text.contains("status             incomplete\n"), "{text}");
        assert!(text.contains("finished           not yet"), "{text}");
        assert!(text.contains("targets            build, later\n"), "{text}");
        assert!(
            text.contains("step build: failed (executed in 1.5s)\n  reason             exited with code 2\n  exit code          2\n"),
            "{text}"
        );
        assert!(text.contains("step later: pending (not finished)\n"), "{text}");
        assert!(!text.contains("outputs"), "a failed step lists no outputs:\n{text}");
    }

    #[test]
    fn show_as_json_is_the_record_itself() {
        let r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
        let text = show(Path::new("/r"), &r, OutputFormat::Json).unwrap();
        let back: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&r).unwrap());
        assert!(text.lines().count() > 10, "pretty-printed");
    }

    #[test]
    fn an_older_engines_record_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = two_steps("6a000001bbbbbb", "2026-03-01T10:00:00Z");
        old.schema = record::SCHEMA_V1.into();
        write(dir.path(), old.clone());
        write(dir.path(), two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z"));
        let text = list(dir.path(), OutputFormat::Plain).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains(" succeeded* ") && !lines[2].contains('*'), "{text}");
        assert_eq!(lines[4], "* recorded by an older engine (engine.run-record/v1): shown, but not replayed or attested");
        let shown = show(Path::new("/r"), &old, OutputFormat::Plain).unwrap();
        assert!(
            shown.contains("schema             engine.run-record/v1 (an older engine's record: not replayed or attested)\n"),
            "{shown}"
        );
        let json: serde_json::Value = serde_json::from_str(&list(dir.path(), OutputFormat::Json).unwrap()).unwrap();
        assert_eq!((json[0]["schema"].as_str(), json[1]["schema"].as_str()), (Some(record::SCHEMA_V1), Some(record::SCHEMA)));
    }

    #[test]
    fn prune_says_what_it_removed_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        let id = |days: u32, n: u32| format!("{:x}{n:06x}", (now - day * days).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
        let (new, mid, old) = (id(0, 1), id(2, 2), id(40, 3));
        for id in [&new, &mid, &old] {
            std::fs::create_dir_all(record::runs_dir(dir.path()).join(id)).unwrap();
        }
        let policy = record::PrunePolicy { keep: 2, max_age: day * 30 };
        let text = prune(dir.path(), policy, OutputFormat::Plain).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with(&format!("removed {old}  started ")) && lines[0].ends_with("  beyond the newest 2"), "{text}");
        assert_eq!(lines[1], format!("removed 1 run, kept 2 in {}", record::runs_dir(dir.path()).display()));
        let json: serde_json::Value =
            serde_json::from_str(&prune(dir.path(), record::PrunePolicy { keep: 5, max_age: day }, OutputFormat::Json).unwrap()).unwrap();
        assert_eq!(json["removed"][0]["id"], mid.as_str());
        assert_eq!(json["removed"][0]["reason"], "older than 1day");
        assert_eq!(json["kept"], 1);
    }
}
