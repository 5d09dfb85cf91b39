//! Reading records back: lookup by id, prefix or `latest`, listing, and the checks that treat a
//! record as untrusted input.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::schema::{RunRecord, SCHEMA, SCHEMA_V1};
#[cfg(test)]
use cache::Digest;

/// `<workflow dir>/.engine/runs`.
pub fn runs_dir(workflow_dir: &Path) -> PathBuf {
    workflow_dir.join(".engine").join("runs")
}

/// Why a record could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// There is no readable record at all in this runs folder.
    #[error("no run records in {}: `engine run` writes one per run", .0.display())]
    NoRuns(PathBuf),
    /// No run has this id (or a prefix match).
    #[error("no run `{id}` in {}; `engine runs` lists them", dir.display())]
    NotFound {
        /// As asked for.
        id: String,
        /// The runs folder.
        dir: PathBuf,
    },
    /// The prefix matches several runs.
    #[error("run id `{id}` is ambiguous: it starts {n} runs in {}", dir.display())]
    Ambiguous {
        /// As asked for.
        id: String,
        /// How many runs it matches.
        n: usize,
        /// The runs folder.
        dir: PathBuf,
    },
    /// The file could not be read (permissions, I/O): the environment's problem.
    #[error("cannot read the run record {}: {reason}", path.display())]
    Unreadable {
        /// The record file.
        path: PathBuf,
        /// The I/O error, worded.
        reason: String,
    },
    /// The file is not a record this engine accepts (not a regular file, too large, not JSON,
    /// another schema, inconsistent): a record is untrusted input.
    #[error("refusing the run record {}: {reason}", path.display())]
    Refused {
        /// The record file (or folder).
        path: PathBuf,
        /// Why, worded.
        reason: String,
    },
    /// A record of an older schema: listed and shown, but its inputs are not where this engine
    /// replays or attests them from.
    #[error(
        "run {run_id} was recorded by an older engine (schema `{schema}`); `engine replay` and `engine provenance` read `{current}` records only: run the workflow again for a new record",
        current = SCHEMA
    )]
    OlderSchema {
        /// The run.
        run_id: String,
        /// Its record's schema.
        schema: String,
    },
}

/// The largest record (or store manifest) read: 64 MiB. Input manifests are kept in the cache
/// store, not in records, so an honest record stays far below this.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum ReadRefused {
    /// Not there.
    Missing,
    /// A symlink, a FIFO, a device, a folder, or larger than the cap: never read.
    Refused(String),
    /// An I/O error other than those.
    Io(io::Error),
}

/// The bytes of the regular file `path`, at most `cap` of them. A symlink is not followed (the
/// open fails), and a FIFO or device is opened without blocking and refused before any read, so a
/// planted FIFO cannot hang the engine and a planted device cannot feed it forever.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadRefused> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(
        |e| match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => ReadRefused::Missing,
            Some(libc::ELOOP) => ReadRefused::Refused("it is a symlink, which is never followed".into()),
            _ => ReadRefused::Io(e),
        },
    )?;
    let meta = file.metadata().map_err(ReadRefused::Io)?;
    if !meta.file_type().is_file() {
        return Err(ReadRefused::Refused("it is not a regular file".into()));
    }
    if meta.len() > cap {
        return Err(ReadRefused::Refused(format!("it is {} bytes, more than the {} bytes allowed", meta.len(), cap)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never read more than the cap.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadRefused::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadRefused::Refused(format!("it is more than the {cap} bytes allowed")));
    }
    Ok(bytes)
}

/// `.engine/runs` and what leads to it must be real folders: run records are never read
/// through a symlink (it could point anywhere).
pub(crate) fn check_runs_dir(workflow_dir: &Path) -> Result<(), RecordError> {
    for dir in [workflow_dir.join(".engine"), runs_dir(workflow_dir)] {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            if !meta.file_type().is_dir() {
                return Err(RecordError::Refused {
                    path: dir,
                    reason: "it is not a folder (a symlink is never followed); run records are read from a real `.engine/runs` folder only"
                        .into(),
                });
            }
        }
    }
    Ok(())
}

/// The run folders under `<workflow dir>/.engine/runs` (real folders only, never symlinks), by
/// name.
pub(crate) fn run_folders(workflow_dir: &Path) -> Result<Vec<(String, PathBuf)>, RecordError> {
    check_runs_dir(workflow_dir)?;
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(runs_dir(workflow_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    Ok(out)
}

/// Every readable record under `<workflow dir>/.engine/runs`, oldest first. Folders without a
/// readable record (a run killed before its first write, or a record refused by [`read`]) are
/// skipped; so are symlinks.
pub fn list(workflow_dir: &Path) -> Vec<RunRecord> {
    let mut runs: Vec<RunRecord> =
        run_folders(workflow_dir).unwrap_or_default().into_iter().filter_map(|(_, dir)| read_run(&dir).ok()).collect();
    // Run ids start with the start time in hex seconds; the timestamp breaks no ties better.
    runs.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
    runs
}

/// The record in the run folder `dir`, which must name the run after the folder.
fn read_run(dir: &Path) -> Result<RunRecord, RecordError> {
    let path = dir.join("record.json");
    let record = read(&path)?;
    if dir.file_name().and_then(|n| n.to_str()) != Some(record.run_id.as_str()) {
        return Err(RecordError::Refused {
            path,
            reason: format!("its run id `{}` is not the name of its folder", record.run_id.escape_debug()),
        });
    }
    Ok(record)
}

/// Read and parse one record, treating it as untrusted: a regular file (symlinks not followed),
/// at most [`MAX_RECORD_BYTES`], JSON of schema [`SCHEMA`] (or [`SCHEMA_V1`], read as far as v2
/// reads it: its inline input lists are left out). A step definition without `limits` or
/// `isolation` (or missing some of their fields) leaves them `None`: the reader's defaults, never
/// "unlimited".
pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
    let refused = |reason: String| RecordError::Refused { path: path.to_path_buf(), reason };
    let bytes = match read_regular(path, MAX_RECORD_BYTES) {
        Ok(b) => b,
        Err(ReadRefused::Missing) => {
            return Err(RecordError::Unreadable { path: path.to_path_buf(), reason: "there is no such file".into() })
        }
        Err(ReadRefused::Refused(why)) => return Err(refused(why)),
        Err(ReadRefused::Io(e)) => return Err(RecordError::Unreadable { path: path.to_path_buf(), reason: e.to_string() }),
    };
    // Only the schema first: a record of another schema is refused by name, whatever else it holds.
    #[derive(serde::Deserialize)]
    struct Schema {
        schema: Option<serde_json::Value>,
    }
    let schema = serde_json::from_slice::<Schema>(&bytes).map_err(|e| refused(format!("it is not valid JSON ({e})")))?;
    let schema = match schema.schema {
        Some(serde_json::Value::String(s)) => s,
        Some(_) | None => return Err(refused(format!("it has no `schema` (expected `{SCHEMA}`)"))),
    };
    if schema != SCHEMA && schema != SCHEMA_V1 {
        return Err(refused(format!("schema `{}` is not `{SCHEMA}`", schema.escape_debug())));
    }
    serde_json::from_slice(&bytes).map_err(|e| refused(format!("it does not follow the schema `{}` ({e})", schema.escape_debug())))
}

/// The record of run `id` (`latest`, a full id, or an unambiguous prefix) and its folder. A run
/// named by id whose record is refused is an error (never silently another run); `latest` is the
/// newest readable record.
pub fn find(workflow_dir: &Path, id: &str) -> Result<(PathBuf, RunRecord), RecordError> {
    let dir = runs_dir(workflow_dir);
    let folders = run_folders(workflow_dir)?;
    if id == "latest" {
        let mut runs: Vec<(PathBuf, RunRecord)> = folders.into_iter().filter_map(|(_, d)| read_run(&d).ok().map(|r| (d, r))).collect();
        runs.sort_by(|(_, a), (_, b)| a.started_at.cmp(&b.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
        return runs.pop().ok_or(RecordError::NoRuns(dir));
    }
    // A folder without a record (a run killed before its first write) is no run.
    let mut matching: Vec<(String, PathBuf)> =
        folders.into_iter().filter(|(name, d)| name.starts_with(id) && fs::symlink_metadata(d.join("record.json")).is_ok()).collect();
    let (_, folder) = if let Some(exact) = matching.iter().position(|(name, _)| name == id) {
        matching.swap_remove(exact)
    } else {
        match matching.len() {
            0 => return Err(RecordError::NotFound { id: id.to_string(), dir }),
            1 => matching.remove(0),
            n => return Err(RecordError::Ambiguous { id: id.to_string(), n, dir }),
        }
    };
    let record = read_run(&folder)?;
    Ok((folder, record))
}

/// [`find`], for replay and provenance: a record of an older schema is refused
/// ([`RecordError::OlderSchema`]).
pub fn find_current(workflow_dir: &Path, id: &str) -> Result<(PathBuf, RunRecord), RecordError> {
    let (folder, record) = find(workflow_dir, id)?;
    if !record.is_current() {
        return Err(RecordError::OlderSchema { run_id: record.run_id, schema: record.schema });
    }
    Ok((folder, record))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::definition::{Command, ImageRef, StepDefinition};
    use crate::schema::*;
    use crate::Recorder;

    fn record(id: &str, started: &str) -> RunRecord {
        let mut r = crate::fixtures::record(id, started, RecordStatus::Incomplete, Vec::new());
        r.steps = vec![StepRecord::pending(StepDefinition::new("a", ImageRef::Reference("i".into()), Command::Shell("true".into())))];
        r
    }

    #[test]
    fn records_are_written_whole_and_found_by_id_prefix_or_latest() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = Recorder::create(dir.path(), record("6a0001", "2026-01-01T00:00:00Z")).unwrap();
        let r2 = Recorder::create(dir.path(), record("6a0002", "2026-01-01T00:00:05Z")).unwrap();
        r1.update_step("a", |s| s.status = StepState::Succeeded).unwrap();
        r1.flush(false).unwrap();
        let log = r2.write_log("a", b"stdout hi\n").unwrap();
        assert_eq!(log.path, "logs/00-a.log");
        assert_eq!(fs::read(r2.dir().join(&log.path)).unwrap(), b"stdout hi\n");
        // No temp files left beside the records.
        let names: Vec<String> = fs::read_dir(r1.dir()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");

        assert_eq!(find(dir.path(), "latest").unwrap().1.run_id, "6a0002");
        assert_eq!(find(dir.path(), "6a0001").unwrap().1.steps[0].status, StepState::Succeeded);
        assert!(matches!(find(dir.path(), "6a"), Err(RecordError::Ambiguous { n: 2, .. })));
        assert!(matches!(find(dir.path(), "7"), Err(RecordError::NotFound { .. })));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(find(empty.path(), "latest"), Err(RecordError::NoRuns(_))));
    }

    #[test]
    fn a_long_step_log_keeps_its_head_and_tail_and_says_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0004", "t")).unwrap();
        let log = r.step_log("a", crate::MIN_LOG_LIMIT).unwrap();
        let mut total = 0;
        for n in 0..100_000 {
            let line = format!("stdout line {n}\n").into_bytes();
            total += line.len() as u64;
            log.append(line);
        }
        let rec = log.finish().unwrap();
        assert_eq!(rec.path, "logs/00-a.log");
        let kept = fs::read(log.path()).unwrap();
        assert_eq!(rec.bytes, kept.len() as u64);
        assert!(rec.bytes <= crate::MIN_LOG_LIMIT, "{} bytes kept", rec.bytes);
        assert_eq!(rec.digest, cache::Digest::of(&kept));
        let text = String::from_utf8(kept).unwrap();
        assert!(text.starts_with("stdout line 0\n"));
        assert!(text.ends_with("stdout line 99999\n"));
        let said = format!("engine [{} bytes of this log cut here: at most 64k of a step's log is kept (ENGINE_LOG_LIMIT)]", rec.cut);
        assert!(text.contains(&said), "no cut line");
        let cut_line = text.lines().find(|l| l.starts_with("engine [")).unwrap().len() as u64 + 1;
        assert_eq!(rec.bytes - cut_line + rec.cut, total);
        // Every line kept whole, in order.
        let numbers: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix("stdout line ")?.parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[1] > w[0]));
        // A short log is kept whole, nothing said.
        let short = r.step_log("b", crate::DEFAULT_LOG_LIMIT).unwrap();
        short.append(b"stdout hi\n".to_vec());
        let rec = short.finish().unwrap();
        assert_eq!((rec.bytes, rec.cut), (10, 0));
        assert_eq!(short.finish().unwrap().digest, rec.digest, "finish answers again");
        // No temp files left beside the logs.
        assert_eq!(fs::read_dir(r.dir().join("logs")).unwrap().count(), 2);
    }

    #[test]
    fn updates_close_together_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0003", "t")).unwrap();
        let on_disk = || find(dir.path(), "6a0003").unwrap().1.steps[0].status;
        r.update_step("a", |s| s.status = StepState::Succeeded).unwrap();
        assert_eq!(on_disk(), StepState::Pending, "written less than FLUSH_EVERY ago");
        r.flush(false).unwrap();
        assert_eq!(on_disk(), StepState::Succeeded);
        r.finish(|rec| rec.status = RecordStatus::Failed).unwrap();
        assert_eq!(find(dir.path(), "6a0003").unwrap().1.status, RecordStatus::Failed);
    }

    #[test]
    fn a_record_is_read_as_untrusted_input() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), record("6a0004", "t")).unwrap();
        let path = r.dir().join("record.json");
        // Limits and isolation dropped from a definition: left to the reader's defaults.
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let def = v["steps"][0]["definition"].as_object_mut().unwrap();
        def.remove("limits");
        def["isolation"] = serde_json::json!({ "network": "none" });
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.steps[0].definition.limits, crate::Limits::default());
        assert_eq!(back.steps[0].definition.isolation.user, None);

        let refused = |p: &Path| match read(p) {
            Err(RecordError::Refused { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        v["schema"] = "engine.run-record/v3".into();
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(refused(&path), "schema `engine.run-record/v3` is not `engine.run-record/v2`");
        v["schema"] = serde_json::json!(2);
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(refused(&path), "it has no `schema` (expected `engine.run-record/v2`)");
        v["schema"] = SCHEMA.into();
        v["steps"][0]["definition"]["isolation"]["network"] = "host".into();
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(refused(&path).starts_with("it does not follow the schema `engine.run-record/v2` ("));
        fs::write(&path, b"{").unwrap();
        assert!(refused(&path).starts_with("it is not valid JSON"));
        fs::File::create(&path).unwrap().set_len(MAX_RECORD_BYTES + 1).unwrap();
        assert!(refused(&path).contains("more than the 67108864 bytes allowed"));
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(refused(&path), "it is not a regular file");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert_eq!(refused(&path), "it is a symlink, which is never followed");
        assert!(matches!(find(dir.path(), "6a0004"), Err(RecordError::Refused { .. })));
        // A symlinked runs folder is not followed.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join(".engine")).unwrap();
        std::os::unix::fs::symlink(runs_dir(dir.path()), runs_dir(other.path())).unwrap();
        assert!(matches!(find(other.path(), "latest"), Err(RecordError::Refused { .. })));
        assert!(list(other.path()).is_empty());
    }

    /// A record of schema v1 (as the previous engine wrote it, inline inputs and all) is listed
    /// and found, marked by its schema; replay and provenance refuse it by name.
    #[test]
    fn a_v1_record_is_listed_and_found_but_not_current() {
        let dir = tempfile::tempdir().unwrap();
        let folder = runs_dir(dir.path()).join("6a0005");
        fs::create_dir_all(&folder).unwrap();
        let mut v = serde_json::to_value(record("6a0005", "2026-01-01T00:00:00Z")).unwrap();
        v["schema"] = SCHEMA_V1.into();
        let step = v["steps"][0].as_object_mut().unwrap();
        step.remove("inputs_manifest");
        step.insert("inputs".into(), serde_json::json!([{ "path": "a", "mode": 420, "digest": Digest::of(b"a").hex() }]));
        step.insert("inputs_in_store".into(), false.into());
        fs::write(folder.join("record.json"), serde_json::to_vec(&v).unwrap()).unwrap();
        let listed = list(dir.path());
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].is_current());
        assert_eq!(listed[0].summary().schema, SCHEMA_V1);
        assert_eq!(find(dir.path(), "latest").unwrap().1.steps[0].inputs_manifest, None);
        match find_current(dir.path(), "6a0005") {
            Err(e @ RecordError::OlderSchema { .. }) => assert_eq!(
                e.to_string(),
                "run 6a0005 was recorded by an older engine (schema `engine.run-record/v1`); `engine replay` and `engine provenance` read `engine.run-record/v2` records only: run the workflow again for a new record"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// 64 lowercase hex digits, with `sha256:` in front when `prefixed`.
    fn is_digest(v: &serde_json::Value, prefixed: bool) -> bool {
        let text = v.as_str().unwrap_or_default();
        let hex = if prefixed { text.strip_prefix("sha256:").unwrap_or("-") } else { text };
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn a_record_round_trips_byte_for_byte_with_its_digests_as_documented() {
        let r = crate::fixtures::two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
        // The typed fields keep the schema's forms (docs/records.md).
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(is_digest(&v["workflow"]["digest"], true), "{}", v["workflow"]["digest"]);
        for step in v["steps"].as_array().unwrap() {
            assert!(is_digest(&step["key"], false), "{}", step["key"]);
            assert!(is_digest(&step["outputs_digest"], false), "{}", step["outputs_digest"]);
            assert!(is_digest(&step["inputs_manifest"], false), "{}", step["inputs_manifest"]);
            assert!(is_digest(&step["image"]["id"], true), "{}", step["image"]["id"]);
            assert!(is_digest(&step["log"]["digest"], true), "{}", step["log"]["digest"]);
            assert!(is_digest(&step["outputs"][0]["digest"], false) || step["outputs"][0]["kind"] == "dir");
        }
        let hex = r.steps[0].key.unwrap().digest().hex();
        assert!(text.contains(&format!("\"key\": \"{hex}\"")), "{text}");
    }

    #[test]
    fn a_record_with_a_malformed_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::create(dir.path(), crate::fixtures::two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z")).unwrap();
        let path = r.dir().join("record.json");
        let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(read(&path).is_ok());
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 6] = [
            ("workflow digest", |v| v["workflow"]["digest"] = "sha256:1234".into()),
            ("workflow digest without sha256:", |v| {
                let hex = v["workflow"]["digest"].as_str().unwrap()["sha256:".len()..].to_string();
                v["workflow"]["digest"] = hex.into();
            }),
            ("key", |v| v["steps"][0]["key"] = "not hex".into()),
            ("outputs digest", |v| v["steps"][0]["outputs_digest"] = "ab".into()),
            ("image ID", |v| v["steps"][0]["image"]["id"] = "sha256:XYZ".into()),
            ("log digest", |v| v["steps"][1]["log"]["digest"] = serde_json::json!(7)),
        ];
        for (what, edit) in edits {
            let mut v = good.clone();
            edit(&mut v);
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            match read(&path) {
                Err(RecordError::Refused { reason, .. }) => {
                    assert!(reason.starts_with("it does not follow the schema `engine.run-record/v2` ("), "{what}: {reason}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
