//! Records stay small: the case, a no-op re-run of 50 cached steps that each take the
//! same 2,000 input files, writes a record of under 100 KB (it was 16.7 MB with every step's input
//! manifest inline), and the store keeps that input manifest once for all steps and runs.

mod common;

use common::*;

#[test]
fn a_noop_rerun_of_50_steps_over_the_same_2000_files_writes_under_100_kb() {
    let mut workflow = format!("version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n");
    for s in 1..=50 {
        workflow.push_str(&format!("  s{s}: {{ inputs: ['src/**'], run: 'ls src | wc -l > n', outputs: [n] }}\n"));
    }
    let p = Project::new(&workflow);
    for f in 1..=2000 {
        p.write(&format!("src/f{f}.txt"), &format!("file {f}\n"));
    }
    for _ in 0..2 {
        let o = p.run(&["run"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    }
    let (run, record) = latest_record(&p);
    let bytes = std::fs::metadata(run.join("record.json")).unwrap().len();
    eprintln!("record of the no-op re-run: {bytes} bytes");
    assert!(bytes < 100_000, "the no-op re-run wrote a record of {bytes} bytes");
    let steps = record["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 50);
    assert!(steps.iter().all(|s| s["status"] == "cached" && s["inputs_count"] == 2000), "every step cached, over 2,000 files");
    // One input manifest for the 50 steps of both runs, named by every step.
    let named: std::collections::BTreeSet<&str> = steps.iter().map(|s| s["inputs_manifest"].as_str().unwrap()).collect();
    assert_eq!(named.len(), 1, "{named:?}");
    let manifests = files_under(&p.cache_dir().join("v1/inputs"));
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    // `engine runs show` still counts the inputs, and provenance lists them (once each).
    let o = p.run(&["runs", "show", "latest"]);
    assert!(text(&o.stdout).contains("  inputs             2000 files\n"), "{}", text(&o.stdout));
    let o = p.run(&["provenance", "latest"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let statement: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["uri"].as_str().unwrap().starts_with("file:src/"))
        .count();
    assert_eq!(files, 2000);
}
