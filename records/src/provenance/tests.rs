//! Tests of the provenance statement, on the fixtures' records.

use super::*;
use crate::fixtures::*;
use crate::schema::StepState;

fn names(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect()
}

/// `build` (executed) and `package` (cached), then a step that failed and one it skipped.
fn with_a_failure() -> RunRecord {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    r.status = RecordStatus::Failed;
    let mut test = step("test", StepState::Failed, "local/alpine:3", "alpine", vec![]);
    set_inputs(&mut test, vec![input("tests/t.sh", "t")]);
    r.steps.push(test);
    r.steps.push(step("after", StepState::Skipped, "local/alpine:3", "alpine", vec![]));
    r
}

#[test]
fn a_statement_is_an_in_toto_v1_statement_with_slsa_provenance_v1() {
    let s = statement(&two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z"), manifest).unwrap();
    let keys: BTreeSet<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["_type", "subject", "predicateType", "predicate"]));
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["predicateType"], "https://slsa.dev/provenance/v1");
    let p = &s["predicate"];
    let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["buildDefinition", "runDetails"]));
    let bd = &p["buildDefinition"];
    assert_eq!(bd["buildType"], "tag:engine,2026:buildtypes/workflow-run/v1");
    assert_eq!(
        bd["internalParameters"],
        json!({ "jobs": 4, "no_cache": false, "keep_going": false, "cache_format": cache::CACHE_FORMAT_VERSION })
    );
    let rd = &p["runDetails"];
    assert_eq!(rd["builder"], json!({ "id": "tag:engine,2026:builder/engine", "version": { "engine": "0.1.0" } }));
    assert_eq!(
        rd["metadata"],
        json!({ "invocationId": "6a000002aaaaaa", "startedOn": "2026-03-01T10:05:00Z", "finishedOn": "2026-03-01T10:00:07Z" })
    );
}

#[test]
fn subjects_are_the_exported_files_sorted_by_name() {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    // A step listed last in plan order whose name sorts first.
    r.steps.push(step("aaa", StepState::Succeeded, "local/busybox:1", "busybox", vec![file("z.txt", "z")]));
    let s = statement(&r, manifest).unwrap();
    assert_eq!(names(&s["subject"]), ["aaa/z.txt", "build/out/a.txt", "build/out/b.txt", "package/pkg.tar"]);
    assert_eq!(s["subject"][1], json!({ "name": "build/out/a.txt", "digest": { "sha256": digest("a").hex() } }));
    // Plain SHA-256 of the contents: what `sha256sum` prints.
    assert_eq!(s["subject"][3]["digest"]["sha256"], hex_sha256(b"tarball"));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn external_parameters_are_the_workflow_targets_and_resolved_steps() {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    r.invocation.targets = vec!["package".into()];
    let s = statement(&r, manifest).unwrap();
    let ext = &s["predicate"]["buildDefinition"]["externalParameters"];
    let keys: BTreeSet<&str> = ext.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["workflow", "targets", "steps"]));
    assert_eq!(ext["workflow"], json!({ "name": "demo", "file": "workflow.yml", "digest": { "sha256": digest("version: 1\n").hex() } }));
    assert_eq!(ext["targets"], json!(["package"]));
    assert_eq!(names(&ext["steps"]), ["build", "package"]);
    assert_eq!(
        ext["steps"][1],
        json!({
            "name": "package",
            "image": { "reference": "local/busybox:1", "id": format!("sha256:{}", digest("busybox").hex()) },
            "command": ["/bin/sh", "-c", "make package"],
            "env": { "LANG": "C" },
            "workdir": "/workspace",
            "user": "1000:1000",
            "network": "none",
            "secrets": [],
            "needs": ["build"],
            "key": digest("key of package").hex(),
            "source_date_epoch": 1234567890,
        })
    );
}

#[test]
fn dependencies_are_images_workflow_and_inputs_each_once() {
    let s = statement(&with_a_failure(), manifest).unwrap();
    let deps = &s["predicate"]["buildDefinition"]["resolvedDependencies"];
    assert_eq!(
        deps,
        &json!([
            // Both attested steps use one image; the failed step's image is not a dependency
            // of anything exported.
            { "uri": "docker-image:local/busybox:1", "digest": { "sha256": digest("busybox").hex() }, "name": "local/busybox:1" },
            { "uri": "file:pkg.cfg", "digest": { "sha256": digest("cfg").hex() } },
            { "uri": "file:src/main.c", "digest": { "sha256": digest("int main;").hex() } },
            { "uri": "file:workflow.yml", "digest": { "sha256": digest("version: 1\n").hex() } },
        ])
    );
}

#[test]
fn one_image_id_under_two_references_is_one_dependency() {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    r.steps[1].image.as_mut().unwrap().reference = "local/busybox:latest".into();
    let s = statement(&r, manifest).unwrap();
    let deps = s["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let images: Vec<&Value> = deps.iter().filter(|d| d["uri"].as_str().unwrap().starts_with("docker-image:")).collect();
    assert_eq!(images.len(), 1, "{deps:?}");
    assert_eq!(images[0]["name"], "local/busybox:1");
}

#[test]
fn a_failed_run_attests_what_it_exported_and_keeps_every_log() {
    let s = statement(&with_a_failure(), manifest).unwrap();
    assert_eq!(names(&s["subject"]), ["build/out/a.txt", "build/out/b.txt", "package/pkg.tar"]);
    assert_eq!(names(&s["predicate"]["buildDefinition"]["externalParameters"]["steps"]), ["build", "package"]);
    let byproducts = &s["predicate"]["runDetails"]["byproducts"];
    assert_eq!(names(byproducts), ["logs/00-build.log", "logs/00-package.log", "logs/00-test.log", "logs/00-after.log", "host"]);
    assert_eq!(byproducts[0]["digest"], json!({ "sha256": digest("build | done\n").hex() }));
    assert_eq!(
        byproducts[4],
        json!({
            "name": "host",
            "uri": "tag:engine,2026:host",
            "annotations": { "os": "linux", "arch": "x86_64", "docker_version": "24.0.7", "docker_api_version": "1.43" },
        })
    );
}

#[test]
fn every_resource_descriptor_is_valid() {
    let s = statement(&with_a_failure(), manifest).unwrap();
    let p = &s["predicate"];
    let all = [&s["subject"], &p["buildDefinition"]["resolvedDependencies"], &p["runDetails"]["byproducts"]];
    for rd in all.iter().flat_map(|l| l.as_array().unwrap()) {
        // "MUST specify one of uri, digest or content".
        assert!(rd.get("uri").is_some() || rd.get("digest").is_some(), "{rd}");
        if let Some(d) = rd.get("digest") {
            let hex = d["sha256"].as_str().unwrap_or_else(|| panic!("{rd}"));
            assert!(hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{rd}");
        }
    }
    for subject in s["subject"].as_array().unwrap() {
        assert!(subject.get("digest").is_some(), "a subject MUST have a digest: {subject}");
    }
}

#[test]
fn an_incomplete_run_is_refused() {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    r.status = RecordStatus::Incomplete;
    match statement(&r, manifest) {
        Err(e @ ProvenanceError::Incomplete { .. }) => assert_eq!(
            e.to_string(),
            "run 6a000002aaaaaa is incomplete (the engine stopped before it ended); provenance is only given for finished runs"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_run_that_exported_no_file_is_refused() {
    let r = record(
        "6a000001bbbbbb",
        "2026-03-01T10:00:00Z",
        RecordStatus::Failed,
        vec![step("build", StepState::Failed, "local/busybox:1", "busybox", vec![])],
    );
    match statement(&r, manifest) {
        Err(e @ ProvenanceError::NoSubjects { .. }) => {
            assert!(e.to_string().contains("run 6a000001bbbbbb exported no files"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn input_files_come_from_the_manifests_the_record_names() {
    let r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    // A manifest the store no longer has.
    match statement(&r, |_| None) {
        Err(e @ ProvenanceError::InputsMissing { .. }) => {
            assert!(e.to_string().starts_with("the input manifest "), "{e}");
            assert!(e.to_string().contains(" of step `build` is no longer in the cache store"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A count the manifest contradicts, or no manifest for a step with inputs: an edited record.
    let mut edited = r.clone();
    edited.steps[1].inputs_count = 5;
    assert!(matches!(statement(&edited, manifest), Err(ProvenanceError::InputsMismatch { count: 5, listed: 2, .. })));
    let mut edited = r.clone();
    edited.steps[0].inputs_manifest = None;
    assert!(matches!(statement(&edited, manifest), Err(ProvenanceError::NoInputManifest { count: 1, .. })));
    // Each distinct manifest is read once.
    let reads = std::cell::Cell::new(0);
    let mut shared = r.clone();
    shared.steps[1].inputs_manifest = shared.steps[0].inputs_manifest;
    shared.steps[1].inputs_count = 1;
    statement(&shared, |d| {
        reads.set(reads.get() + 1);
        manifest(d)
    })
    .unwrap();
    assert_eq!(reads.get(), 1);
    // A record of the older schema is not attested.
    let mut old = r;
    old.schema = crate::SCHEMA_V1.into();
    let e = statement(&old, manifest).unwrap_err();
    assert!(e.to_string().contains("recorded by an older engine (schema `engine.run-record/v1`)"), "{e}");
}

#[test]
fn built_images_are_named_with_their_id_and_bases_modules_are_dependencies_and_steps_without_files_are_not_described() {
    let mut r = two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z");
    let base = cache::ImageId::from_digest(&digest("debian"));
    let built = r.steps[0].image.as_mut().unwrap();
    built.reference = "images.tool".into();
    built.bases = vec![crate::schema::BaseImage { reference: "local/debian:bookworm".into(), id: base.clone() }];
    let built_id = built.id.clone();
    r.workflow.modules = vec![
        crate::schema::ModuleInfo { name: "stdlib/python.wf".into(), digest: digest("template test() {}") },
        crate::schema::ModuleInfo { name: "lib/common.wf".into(), digest: digest("template x() {}") },
    ];
    // A step that succeeded with no file among its outputs (a check): described nowhere.
    r.steps.push(step("lint", StepState::Succeeded, "local/busybox:1", "busybox", vec![]));
    let s = statement(&r, manifest).unwrap();
    assert_eq!(names(&s["predicate"]["buildDefinition"]["externalParameters"]["steps"]), ["build", "package"]);
    let deps = s["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let by_uri = |uri: &str| deps.iter().find(|d| d["uri"] == uri).unwrap_or_else(|| panic!("no {uri} in {deps:?}"));
    let tool = by_uri(&format!("docker-image:images.tool@{built_id}"));
    assert_eq!(tool["name"], "images.tool");
    assert_eq!(tool["digest"]["sha256"], built_id.hex());
    assert_eq!(tool["annotations"]["bases"], json!([{ "reference": "local/debian:bookworm", "id": base.to_string() }]));
    assert_eq!(by_uri("docker-image:local/debian:bookworm")["digest"]["sha256"], base.hex());
    assert_eq!(by_uri("tag:engine,2026:stdlib/python.wf")["digest"]["sha256"], digest("template test() {}").hex());
    assert_eq!(by_uri("tag:engine,2026:stdlib/python.wf")["name"], "stdlib/python.wf");
    assert_eq!(by_uri("file:lib/common.wf")["digest"]["sha256"], digest("template x() {}").hex());
}
