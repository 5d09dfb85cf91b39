//! The step cache end to end, against the real daemon: no container on a fully cached run,
//! exact invalidation, explanations, concurrency, damage repair, and secrets kept out.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// JSON events of a run; panics unless it exited with `expect`.
fn run_json(p: &Project, args: &[&str], expect: i32) -> Vec<serde_json::Value> {
    let mut all = vec!["run", "--output", "json"];
    all.extend_from_slice(args);
    let o = p.run(&all);
    assert_eq!(code(&o), expect, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn run_id(events: &[serde_json::Value]) -> String {
    events[0]["run_id"].as_str().unwrap().to_string()
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(dir, dir)
}

fn walk(root: &Path, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(root, &p));
        } else {
            out.insert(p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap());
        }
    }
    out
}

const CHAIN: &str = r#"version: 1
defaults: { image: local/busybox:1 }
steps:
  a:
    inputs: [a.txt]
    run: mkdir -p gen && cp a.txt gen/a.out && echo built-a
    outputs: [gen/a.out]
  b:
    inputs: [b.txt]
    run: cp b.txt b.out && chmod 755 b.out
    outputs: [b.out]
  c:
    needs: [a]
    run: cat gen/a.out gen/a.out > c.out
    outputs: [c.out]
"#;

fn chain() -> Project {
    let p = Project::new(CHAIN);
    p.write("a.txt", "alpha\n");
    p.write("b.txt", "beta\n");
    p
}

#[test]
fn a_second_run_creates_no_container_and_restores_identical_outputs() {
    let p = chain();
    let first = run_json(&p, &[], 0);
    assert_eq!(statuses(&first), map(&[("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]));
    let out = p.path().join(".engine/out");
    let exported = tree(&out);
    std::fs::remove_dir_all(&out).unwrap();

    let since = now();
    let second = run_json(&p, &[], 0);
    let until = now() + 1.0;
    assert_eq!(statuses(&second), map(&[("a", "cached"), ("b", "cached"), ("c", "cached")]));
    assert!(second.iter().any(|e| e["event"] == "step_finished" && e["status"] == "cached"));
    assert!(!second.iter().any(|e| e["event"] == "log"), "no step ran, so no log");
    assert_eq!(containers_created(&run_id(&second), since, until), 0);
    assert_eq!(tree(&out), exported, "restored byte-identical");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(out.join("b/b.out")).unwrap().permissions().mode() & 0o777, 0o755);
    // The first run did create containers: the check above can see them.
    assert!(containers_created(&run_id(&first), since - 600.0, until) > 0);
}

#[test]
fn changing_one_input_reruns_exactly_the_steps_downstream_and_plan_names_the_file() {
    let p = chain();
    run_json(&p, &[], 0);
    // `touch` alone changes nothing.
    let f = std::fs::File::options().append(true).open(p.path().join("b.txt")).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(f);
    p.write("a.txt", "ALPHA\n");

    let o = p.run(&["plan", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let by_name = |n: &str| steps.iter().find(|s| s["name"] == n).unwrap().clone();
    assert_eq!(by_name("a")["status"], "run");
    assert_eq!(by_name("a")["reasons"], serde_json::json!(["input `a.txt` changed"]));
    assert_eq!(by_name("b")["status"], "cached");
    assert!(by_name("b")["key"].as_str().is_some_and(|k| k.len() == 64));
    assert_eq!(by_name("c")["status"], "run");
    assert_eq!(by_name("c")["key"], serde_json::Value::Null, "unknown until a has run");
    let text_plan = text(&p.run(&["plan"]).stdout);
    assert!(text_plan.contains("input `a.txt` changed"), "{text_plan}");

    let events = run_json(&p, &[], 0);
    assert_eq!(statuses(&events), map(&[("a", "succeeded"), ("b", "cached"), ("c", "succeeded")]));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/c/c.out")).unwrap(), "ALPHA\nALPHA\n");

    // `cache explain` gives the whole breakdown.
    let o = p.run(&["cache", "explain", "c"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let explained = text(&o.stdout);
    assert!(explained.contains("step `c`: cached") && explained.contains("outputs of `a`"), "{explained}");
    let o = p.run(&["cache", "explain", "a"]);
    assert!(text(&o.stdout).contains("a.txt") && text(&o.stdout).contains("sha256:"), "{}", text(&o.stdout));
}

#[test]
fn env_change_is_explained_and_reruns_only_that_step() {
    let p = chain();
    run_json(&p, &[], 0);
    std::fs::write(p.path().join("workflow.yml"), CHAIN.replace("  b:\n", "  b:\n    env: { MODE: fast }\n")).unwrap();
    let o = p.run(&["plan"]);
    assert!(text(&o.stdout).contains("env `MODE` added"), "{}", text(&o.stdout));
    let events = run_json(&p, &[], 0);
    assert_eq!(statuses(&events), map(&[("a", "cached"), ("b", "succeeded"), ("c", "cached")]));
}

#[test]
fn the_same_workflow_in_another_folder_hits_the_same_keys() {
    let p = chain();
    run_json(&p, &[], 0);
    let elsewhere = Project::new(CHAIN);
    elsewhere.write("a.txt", "alpha\n");
    elsewhere.write("b.txt", "beta\n");
    let o = elsewhere.cmd(&["run", "--output", "json"]).env("ENGINE_CACHE_DIR", p.cache_dir()).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let events: Vec<serde_json::Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(statuses(&events), map(&[("a", "cached"), ("b", "cached"), ("c", "cached")]));
}

#[test]
fn cache_false_no_cache_and_failures_always_execute() {
    let p = Project::new(
        "version: 1\ndefaults: { image: local/busybox:1 }\nsteps:\n  fresh: { run: echo fresh, cache: false }\n  kept: { run: echo kept }\n  bad: { run: echo bad; exit 4 }\n",
    );
    let first = run_json(&p, &["--keep-going"], 1);
    assert_eq!(statuses(&first), map(&[("bad", "failed"), ("fresh", "succeeded"), ("kept", "succeeded")]));
    let second = run_json(&p, &["--keep-going"], 1);
    assert_eq!(statuses(&second), map(&[("bad", "failed"), ("fresh", "succeeded"), ("kept", "cached")]));
    assert!(second.iter().any(|e| e["event"] == "log" && e["line"] == "bad"), "a failed step is never cached");
    let forced = run_json(&p, &["--keep-going", "--no-cache"], 1);
    assert_eq!(statuses(&forced), map(&[("bad", "failed"), ("fresh", "succeeded"), ("kept", "succeeded")]));
    let o = p.run(&["plan", "--output", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fresh = plan["steps"].as_array().unwrap().iter().find(|s| s["name"] == "fresh").unwrap().clone();
    assert_eq!(fresh["reasons"], serde_json::json!(["cache: false on the step"]));
}

#[test]
fn two_concurrent_runs_on_one_cache_both_succeed_and_a_third_is_fully_cached() {
    let mut wf = String::from("version: 1\ndefaults: { image: local/busybox:1 }\nsteps:\n");
    for i in 0..6 {
        wf.push_str(&format!("  s{i}: {{ inputs: [in.txt], run: 'cat in.txt > o{i} && echo {i} >> o{i}', outputs: [o{i}] }}\n"));
    }
    let p = Project::new(&wf);
    p.write("in.txt", "shared\n");
    let spawn = |out: &str| p.cmd(&["run", "--output", "json", "--out", out]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (one, two) = (spawn("out1"), spawn("out2"));
    for child in [one, two] {
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    }
    let third = run_json(&p, &[], 0);
    assert!(statuses(&third).values().all(|s| s == "cached"), "{:?}", statuses(&third));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/s3/o3")).unwrap(), "shared\n3\n");
}

/// A no-op re-run leaves exports that already hold exactly the outputs untouched (same inode,
/// same mtime) and repairs one that was edited, removed, re-moded or added to; the restored log
/// of a cached step is in the record with the entry's digest.
#[test]
fn a_no_op_rerun_writes_no_export_that_is_intact_and_repairs_one_that_is_not() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let p = chain();
    run_json(&p, &[], 0);
    let out = p.path().join(".engine/out");
    let exported = tree(&out);
    let stamp = |rel: &str| {
        let m = std::fs::metadata(out.join(rel)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let before = (stamp("a/gen/a.out"), stamp("b/b.out"), stamp("c/c.out"));

    let again = run_json(&p, &[], 0);
    assert_eq!(statuses(&again), map(&[("a", "cached"), ("b", "cached"), ("c", "cached")]));
    assert_eq!((stamp("a/gen/a.out"), stamp("b/b.out"), stamp("c/c.out")), before, "intact exports are not rewritten");
    let (_, record) = latest_record(&p);
    let a = record["steps"].as_array().unwrap().iter().find(|s| s["name"] == "a").unwrap();
    let log = &a["log"];
    let kept = std::fs::read(latest_record(&p).0.join(log["path"].as_str().unwrap())).unwrap();
    assert!(String::from_utf8_lossy(&kept).contains("built-a"), "the cached step's log is its entry's log");
    assert_eq!(log["digest"].as_str().unwrap(), format!("sha256:{}", cache::Digest::of(&kept).hex()));

    // Edited, removed, re-moded, or with an extra file: each export is put back as it was.
    std::fs::write(out.join("a/gen/a.out"), "edited\n").unwrap();
    std::fs::remove_file(out.join("c/c.out")).unwrap();
    std::fs::set_permissions(out.join("b/b.out"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(out.join("b/extra"), "junk").unwrap();
    let third = run_json(&p, &[], 0);
    assert_eq!(statuses(&third), map(&[("a", "cached"), ("b", "cached"), ("c", "cached")]));
    assert_eq!(tree(&out), exported, "every damaged export restored byte-identical");
    assert_eq!(std::fs::metadata(out.join("b/b.out")).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn a_damaged_entry_is_a_miss_never_restored_and_is_repaired() {
    let p = Project::new("version: 1\nsteps:\n  w: { image: local/busybox:1, run: echo payload > f, outputs: [f] }\n");
    run_json(&p, &[], 0);
    let blobs = p.cache_dir().join("v1/blobs");
    let mut damaged = 0;
    for (rel, content) in tree(&blobs) {
        if content == b"payload\n" {
            let path = blobs.join(rel);
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&path, perm).unwrap();
            std::fs::write(&path, b"tampered\n").unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    let again = run_json(&p, &[], 0);
    assert_eq!(statuses(&again), map(&[("w", "succeeded")]), "damaged entry is not restored");
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/w/f")).unwrap(), "payload\n");
    let third = run_json(&p, &[], 0);
    assert_eq!(statuses(&third), map(&[("w", "cached")]), "repaired by the re-run");
    let o = p.run(&["cache", "verify"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
}

#[test]
fn secret_values_never_reach_the_cache_or_the_key() {
    let p = Project::new(
        "version: 1\nsteps:\n  s: { image: local/busybox:1, secrets: [TOKEN], run: cat /run/secrets/TOKEN; echo done > f, outputs: [f] }\n",
    );
    let run = |value: &str| {
        let o = p.cmd(&["run", "--output", "json"]).env("TOKEN", value).output().unwrap();
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        let events: Vec<serde_json::Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (text(&o.stdout), statuses(&events))
    };
    let (stdout, st) = run("hunter2-secret");
    assert!(!stdout.contains("hunter2-secret"));
    assert_eq!(st["s"], "succeeded");
    for (path, content) in tree(&p.path().join(".engine")) {
        assert!(!String::from_utf8_lossy(&content).contains("hunter2-secret"), "secret in {path}");
    }
    let (_, st) = run("another-value");
    assert_eq!(st["s"], "cached", "a secret's value is not part of the key");
}

#[test]
fn ls_and_gc_manage_the_cache() {
    let p = chain();
    run_json(&p, &[], 0);
    let o = p.run(&["cache", "ls"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let listing = text(&o.stdout);
    assert!(listing.contains("3 entries"), "{listing}");
    let o = p.run(&["cache", "gc", "--max-size", "0"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&p.run(&["cache", "ls"]).stdout).contains("0 entries"));
    let events = run_json(&p, &[], 0);
    assert!(statuses(&events).values().all(|s| s == "succeeded"));
    let o = p.run(&["cache", "gc", "--max-size", "12q"]);
    assert_eq!(code(&o), 2);
}

/// `engine cache ls` counts what the entries do not: the input files kept for replay and
/// provenance, and blobs no entry names (here the input of a step that failed); `gc` collects
/// the unreferenced ones and keeps the inputs an entry names.
#[test]
fn ls_shows_stored_inputs_and_gc_collects_unreferenced_ones() {
    let p = Project::new(
        "version: 1\ndefaults: { image: local/busybox:1 }\nsteps:\n  ok: { inputs: [kept.bin], run: wc -c kept.bin }\n  \
         bad: { inputs: [lost.bin], run: 'wc -c lost.bin; exit 3' }\n",
    );
    std::fs::write(p.path().join("kept.bin"), vec![b'k'; 300 * 1024]).unwrap();
    std::fs::write(p.path().join("lost.bin"), vec![b'l'; 200 * 1024]).unwrap();
    let o = p.run(&["run", "--keep-going"]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let ls = || {
        let o = p.run(&["cache", "ls"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let listing = ls();
    assert!(listing.contains("1 entries"), "{listing}");
    assert!(listing.contains("inputs (kept for replay and provenance):  1 blobs, 300k; 1 input manifests"), "{listing}");
    assert!(listing.contains("unreferenced:  1 blobs, 200k"), "{listing}");

    // Older than gc's grace for a put in progress.
    let blobs = p.cache_dir().join("v1/blobs");
    let o = Command::new("find").arg(&blobs).args(["-type", "f", "-exec", "touch", "-d", "-10 min", "{}", "+"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = p.run(&["cache", "gc", "--max-size", "1g"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let gc = text(&o.stdout);
    assert!(gc.contains("removed 0 entries and 1 blobs"), "{gc}");
    let listing = ls();
    assert!(listing.contains("inputs (kept for replay and provenance):  1 blobs, 300k"), "{listing}");
    assert!(listing.contains("unreferenced:  0 blobs"), "{listing}");

    // Without the entry, its inputs go too.
    let o = p.run(&["cache", "gc", "--max-size", "0"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let listing = ls();
    assert!(listing.contains("inputs (kept for replay and provenance):  0 blobs"), "{listing}");
    assert!(listing.contains("on disk:  0b"), "{listing}");
}
