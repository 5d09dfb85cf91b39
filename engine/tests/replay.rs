//! Run records and replay audits, end to end on the real daemon: what `engine run` records, what
//! `engine replay` concludes from it, and what survives an engine killed mid-run.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// A deterministic step (`gen`), a step depending on it that also is (`use`), and a step that
/// writes the time (`clock`).
fn workflow() -> String {
    format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n\
         \x20 gen:\n    inputs: [a.txt]\n    run: mkdir -p out && tr a-z A-Z < a.txt > out/upper.txt && echo $SOURCE_DATE_EPOCH > out/epoch\n    outputs: [out]\n\
         \x20 use:\n    needs: [gen]\n    run: cat out/upper.txt out/upper.txt > twice.txt\n    outputs: [twice.txt]\n\
         \x20 clock:\n    run: cat /proc/uptime > stamp; echo fixed > same.txt\n    outputs: [stamp, same.txt]\n"
    )
}

fn step<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

/// The input files of a recorded step: the input manifest it names, in `p`'s cache store.
fn inputs_of(p: &Project, step: &serde_json::Value) -> serde_json::Value {
    let digest = step["inputs_manifest"].as_str().expect("an input manifest");
    let path = p.cache_dir().join("v1/inputs").join(&digest[..2]).join(format!("{digest}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_run_leaves_a_complete_record_with_logs_beside_it() {
    let p = Project::new(&workflow());
    p.write("a.txt", "hello\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let (dir, r) = latest_record(&p);
    assert_eq!(r["schema"], "engine.run-record/v2");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["engine"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["host"]["os"], "linux");
    assert!(r["host"]["docker_version"].as_str().is_some_and(|v| !v.is_empty() && v != "unknown"));
    let wf = std::fs::read(p.path().join("workflow.yml")).unwrap();
    let sha = text(&Command::new("sha256sum").arg(p.path().join("workflow.yml")).output().unwrap().stdout);
    assert_eq!(r["workflow"]["digest"], format!("sha256:{}", &sha[..64]), "{}", wf.len());

    let gen = step(&r, "gen");
    assert_eq!(gen["status"], "succeeded");
    assert_eq!(gen["cached"], false);
    assert_eq!(gen["exit_code"], 0);
    assert_eq!(gen["key"].as_str().unwrap().len(), 64);
    assert!(gen["image"]["id"].as_str().unwrap().starts_with("sha256:"));
    // An imported image has no registry digest: it is keyed by its local ID.
    assert_eq!(gen["key_components"]["image"], format!("local {}", gen["image"]["id"].as_str().unwrap()));
    assert_eq!(inputs_of(&p, gen)[0]["path"], "a.txt");
    assert_eq!(gen["inputs_count"], 1);
    let upper = gen["outputs"].as_array().unwrap().iter().find(|e| e["path"] == "out/upper.txt").unwrap();
    let sha = text(&Command::new("sha256sum").arg(p.path().join(".engine/out/gen/out/upper.txt")).output().unwrap().stdout);
    assert_eq!(upper["digest"].as_str().unwrap(), &sha[..64]);
    // The step saw SOURCE_DATE_EPOCH, and the record says which.
    let epoch = std::fs::read_to_string(p.path().join(".engine/out/gen/out/epoch")).unwrap();
    assert_eq!(epoch.trim(), gen["source_date_epoch"].to_string());
    // A time in the past, never after the run started (whatever the key).
    let epoch: u64 = epoch.trim().parse().unwrap();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((1_000_000_000..1_500_000_000).contains(&epoch) && epoch <= started, "{epoch}");
    // Logs beside the record, with their digests.
    let clock = step(&r, "clock");
    assert!(clock["log"]["path"].as_str().unwrap().starts_with("logs/"));
    let log = std::fs::read(dir.join(clock["log"]["path"].as_str().unwrap())).unwrap();
    assert_eq!(clock["log"]["bytes"], log.len());

    // A second run records the steps as cached, with the same keys and outputs.
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let (dir2, r2) = latest_record(&p);
    assert_ne!(dir, dir2);
    let gen2 = step(&r2, "gen");
    assert_eq!((gen2["status"].as_str(), gen2["cached"].as_bool()), (Some("cached"), Some(true)));
    assert_eq!(gen2["key"], gen["key"]);
    assert_eq!(gen2["outputs"], gen["outputs"]);
}

#[test]
fn a_deterministic_run_reproduces_after_the_working_tree_changed_and_a_clock_does_not() {
    let p = Project::new(&workflow());
    p.write("a.txt", "hello\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let (_, r) = latest_record(&p);
    let run_id = r["run_id"].as_str().unwrap().to_string();

    // The working tree moves on; the replay takes the recorded inputs from the store.
    p.write("a.txt", "something else entirely\n");
    std::fs::write(p.path().join("workflow.yml"), "version: 1\nsteps: {}\n").unwrap();
    let o = p.run(&["replay", &run_id, "gen", "use"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.contains("gen  reproduced") && out.contains("use  reproduced"), "{out}");

    // All steps: only `clock` differs, naming `stamp` and only `stamp`.
    let o = p.run(&["replay", "latest"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}{}", text(&o.stderr));
    let differs: Vec<&str> = out.lines().filter(|l| l.contains(" differs") && !l.contains("reproduced,")).collect();
    assert_eq!(differs.len(), 1, "{out}");
    assert!(differs[0].starts_with("clock"), "{out}");
    assert!(out.contains("    stamp: recorded sha256 "), "{out}");
    assert!(!out.contains("same.txt"), "{out}");
    assert!(out.contains("gen    reproduced") && out.contains("use    reproduced"), "{out}");
    assert!(out.contains("2 reproduced, 1 differs"), "{out}");
    // The replay left nothing behind, and wrote nothing into the output folder.
    assert!(containers("engine.step=clock").is_empty());
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/gen/out/upper.txt")).unwrap(), "HELLO\n");
}

#[test]
fn a_missing_input_or_image_is_named_and_exits_3() {
    // An image of our own, so that removing it touches no other test.
    let tag = format!("local/replay-gone:{}", unique("t").replace('-', ""));
    let name = unique("mk");
    assert!(Command::new("docker").args(["run", "--name", &name, IMAGE, "true"]).status().unwrap().success());
    let committed = Command::new("docker").args(["commit", "--change", &format!("ENV GONE={name}"), &name, &tag]).output().unwrap();
    assert!(committed.status.success(), "{}", text(&committed.stderr));
    let _ = Command::new("docker").args(["rm", &name]).output();

    let p = Project::new(&format!(
        "version: 1\nsteps:\n  read: {{ image: {IMAGE}, inputs: [a.txt], run: cp a.txt b.txt, outputs: [b.txt] }}\n  \
         other: {{ image: \"{tag}\", run: echo hi > c.txt, outputs: [c.txt] }}\n"
    ));
    p.write("a.txt", "input\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let (_, r) = latest_record(&p);

    let digest = inputs_of(&p, step(&r, "read"))[0]["digest"].as_str().unwrap().to_string();
    let blob = p.cache_dir().join("v1/blobs").join(&digest[..2]).join(&digest);
    assert!(blob.is_file(), "the input's content is kept in the store");
    std::fs::remove_file(&blob).unwrap();
    let o = p.run(&["replay", "latest", "read"]);
    assert_eq!(code(&o), 3, "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("step `read`: input `a.txt`") && err.contains(&digest), "{err}");

    let rmi = Command::new("docker").args(["rmi", &tag]).output().unwrap();
    assert!(rmi.status.success(), "{}", text(&rmi.stderr));
    let o = p.run(&["replay", "latest", "other"]);
    assert_eq!(code(&o), 3);
    let err = text(&o.stderr);
    let id = step(&r, "other")["image"]["id"].as_str().unwrap().to_string();
    assert!(err.contains("step `other`: image") && err.contains(&id) && err.contains(&tag), "{err}");

    // Naming a step the run does not have is a usage error.
    let o = p.run(&["replay", "latest", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("no step `nope`"), "{}", text(&o.stderr));

    // The record names the step's input manifest by digest; without it in the store, neither a
    // replay nor a provenance statement can say what went in.
    let named = step(&r, "read")["inputs_manifest"].as_str().unwrap().to_string();
    std::fs::remove_file(p.cache_dir().join("v1/inputs").join(&named[..2]).join(format!("{named}.json"))).unwrap();
    let o = p.run(&["replay", "latest", "read"]);
    assert_eq!(code(&o), 3);
    assert!(text(&o.stderr).contains(&format!("step `read`: its input manifest {} is not in the cache store", &named[..12])));
    let o = p.run(&["provenance", "latest"]);
    assert_eq!(code(&o), 3);
    assert!(text(&o.stderr).contains(&format!("the input manifest {} of step `read` is no longer in the cache store", &named[..12])));
}

#[test]
fn a_record_of_a_sigkilled_run_is_readable_and_incomplete() {
    let slow = unique("slow");
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  quick: {{ run: echo done > q.txt, outputs: [q.txt] }}\n  \
         {slow}: {{ needs: [quick], run: sleep 300 }}\n"
    ));
    let label = format!("engine.step={slow}");
    let mut victim = p.spawn(&["run"]);
    wait_for("the slow step's container", Duration::from_secs(30), || !containers(&label).is_empty());
    // The record catches up within its flush interval (100 ms).
    let quick_recorded = || {
        let runs = p.path().join(".engine/runs");
        std::fs::read_dir(&runs).into_iter().flatten().flatten().any(|d| {
            std::fs::read(d.path().join("record.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|r| step(&r, "quick")["status"] == "succeeded")
        })
    };
    wait_for("the quick step in the record", Duration::from_secs(10), quick_recorded);
    signal(&victim, libc::SIGKILL);
    victim.wait().unwrap();

    let (_, r) = latest_record(&p);
    assert_eq!(r["status"], "incomplete");
    assert!(r["finished_at"].is_null());
    assert_eq!(step(&r, "quick")["status"], "succeeded");
    assert_eq!(step(&r, &slow)["status"], "pending");
    // The engine lists it so, and its finished step can still be replayed.
    let o = p.run(&["runs"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let listed = text(&o.stdout);
    assert!(listed.lines().any(|l| l.starts_with(r["run_id"].as_str().unwrap()) && l.contains("incomplete")), "{listed}");
    let o = p.run(&["replay", "latest", "quick"]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("quick  reproduced"));
    // The next run removes what the killed one left.
    let o = p.run(&["run", "quick"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&label).is_empty());
}

#[test]
fn secrets_never_reach_the_record_or_its_logs_and_a_set_epoch_is_kept() {
    let secret = format!("s3cr3t-{}", unique("v"));
    let p = Project::new(&format!(
        "version: 1\nenv: {{ SOURCE_DATE_EPOCH: \"1700000000\" }}\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  \
         use: {{ secrets: [TOKEN], run: 'cat /run/secrets/TOKEN; echo $SOURCE_DATE_EPOCH > e.txt', outputs: [e.txt] }}\n"
    ));
    let o = p.cmd(&["run"]).env("TOKEN", &secret).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/use/e.txt")).unwrap(), "1700000000\n");
    let (dir, r) = latest_record(&p);
    assert!(step(&r, "use")["source_date_epoch"].is_null(), "the workflow's own value is not replaced");
    for entry in files_under(&dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret), "secret in {}", entry.display());
    }
    let log = std::fs::read_to_string(dir.join(step(&r, "use")["log"]["path"].as_str().unwrap())).unwrap();
    assert!(log.contains("***"), "{log}");
}

/// A symlink input is kept as its target text; the replay stages it as a link again, so a step
/// that reads through it (or `readlink`s it) reproduces.
#[test]
fn a_symlink_input_is_replayed_as_a_link() {
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  s:\n    inputs: [data/real.txt, data/link.txt]\n    run: readlink data/link.txt > out.txt && cat data/link.txt >> out.txt\n    outputs: [out.txt]\n"
    ));
    p.write("data/real.txt", "content\n");
    std::os::unix::fs::symlink("real.txt", p.path().join("data/link.txt")).unwrap();
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/s/out.txt")).unwrap(), "real.txt\ncontent\n");
    let o = p.run(&["replay", "latest"]);
    let out = text(&o.stdout) + &text(&o.stderr);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains("reproduced"), "{out}");
}
