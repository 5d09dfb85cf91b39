//! Keys are machine-independent: the same workflow and sources in two folders at different
//! paths, with two cache dirs (two "machines" sharing one daemon), give every step the same
//! action key, in `engine plan`, in the run records and in `engine cache explain`: a step on
//! `local/busybox:1` (no registry digest: keyed by its local ID) and a step on an engine-built
//! image from `images:` (keyed by the image's key, not its local ID), with input files and a need.

mod common;

use std::collections::BTreeMap;

use common::*;

fn workflow(wf: &str) -> String {
    format!(
        r#"version: 1
name: {wf}
images:
  {wf}-tool:
    stages:
      - name: main
        from: local/busybox:1
        copy:
          - src: tools/shout.sh
            dst: /usr/local/bin/shout
        run:
          - chmod 0755 /usr/local/bin/shout
steps:
  gen:
    image: local/busybox:1
    inputs: [src/**]
    run: mkdir -p out && cat src/a.txt src/b.txt > out/all.txt
    outputs: [out/]
  use:
    image: {wf}-tool
    needs: [gen]
    inputs: [data.txt]
    run: shout < out/all.txt > loud.txt && cat data.txt >> loud.txt
    outputs: [loud.txt]
"#
    )
}

fn project(wf: &str) -> Project {
    let p = Project::new(&workflow(wf));
    p.write("tools/shout.sh", "#!/bin/sh\ntr a-z A-Z\n");
    p.write("src/a.txt", "alpha\n");
    p.write("src/b.txt", "beta\n");
    p.write("data.txt", "data\n");
    p
}

/// Step name -> key, from `engine plan --output json` (a step whose need will run has none).
fn planned_keys(p: &Project) -> BTreeMap<String, Option<String>> {
    let o = p.run(&["plan", "--output", "json"]);
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["key"].as_str().map(str::to_string)))
        .collect()
}

/// Step name -> key, from the latest run record.
fn recorded_keys(p: &Project) -> BTreeMap<String, String> {
    let (_, record) = latest_record(p);
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["key"].as_str().expect("a recorded key").to_string()))
        .collect()
}

/// The key `engine cache explain STEP` shows.
fn explained_key(p: &Project, step: &str) -> String {
    let o = p.run(&["cache", "explain", step]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    let line = shown.lines().find_map(|l| l.trim().strip_prefix("key:")).unwrap_or_else(|| panic!("no key in:\n{shown}"));
    line.trim().to_string()
}

#[test]
fn two_folders_and_two_cache_dirs_give_every_step_the_same_key() {
    let wf = unique("keys").to_lowercase();
    let images = Images(wf.clone());
    let (a, b) = (project(&wf), project(&wf));
    assert_ne!(a.path(), b.path());
    assert_ne!(a.cache_dir(), b.cache_dir());

    // Planned before anything is built or cached: the same keys on both "machines" (`use`
    // has none yet: it needs `gen`, which will run).
    let planned = planned_keys(&a);
    assert!(planned["gen"].is_some() && planned["use"].is_none(), "{planned:?}");
    assert_eq!(planned_keys(&b), planned, "the plan's keys depend on the folder or the cache dir");

    // The first machine runs with its cache dir: the run keys `gen` as the plan said.
    let o = a.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let keys = recorded_keys(&a);
    assert_eq!(Some(&keys["gen"]), planned["gen"].as_ref());
    // Every step is known now, and cached on the first machine.
    let planned: BTreeMap<String, Option<String>> = keys.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    assert_eq!(planned_keys(&a), planned);
    let (_, record) = latest_record(&a);
    let use_step = record["steps"].as_array().unwrap().iter().find(|s| s["name"] == "use").unwrap().clone();
    let identity = use_step["key_components"]["image"].as_str().unwrap();
    assert!(identity.starts_with("built sha256:"), "an engine-built image is keyed by its key: {identity}");
    assert_ne!(identity.strip_prefix("built ").unwrap(), use_step["image"]["id"].as_str().unwrap(), "not by its local ID");

    // The second machine lacks the built image: it builds it again, and gets another local ID
    // (the commits' times differ), but the same keys; with a fresh cache dir every step runs.
    let first_id = use_step["image"]["id"].as_str().unwrap().to_string();
    images.remove();
    let o = b.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(recorded_keys(&b), keys, "the second machine's keys differ");
    assert_eq!(planned_keys(&b), planned);
    let (_, record) = latest_record(&b);
    let rebuilt = record["steps"].as_array().unwrap().iter().find(|s| s["name"] == "use").unwrap()["image"]["id"].clone();
    assert_ne!(rebuilt.as_str(), Some(first_id.as_str()), "the image was not rebuilt");
    for s in record["steps"].as_array().unwrap() {
        assert_eq!(s["cached"], false, "a fresh cache dir has nothing: {s}");
    }
    for step in ["gen", "use"] {
        assert_eq!(explained_key(&a, step), keys[step]);
        assert_eq!(explained_key(&b, step), keys[step]);
    }
}
