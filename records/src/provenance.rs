//! `engine provenance`: an in-toto Statement v1 with a SLSA provenance v1 predicate for a recorded
//! run, built from the record and the input manifests it names; never talks to Docker, prints
//! nothing (the binary renders the JSON).
//!
//! - Statement: <https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>
//! - Predicate: <https://slsa.dev/spec/v1.0/provenance>
//!
//! The subjects are the files the run exported (`<out dir>/<step>/<path>`, named `<step>/<path>`),
//! with the SHA-256 of their contents as recorded when they were stored: what `sha256sum` prints
//! for the exported files as long as nobody changed them. Only steps that produced outputs
//! (succeeded or cached) are described; a failed run still gets a statement of what it exported.
//! The statement is unsigned: sign it with an external tool (docs/records.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cache::{Digest, InputEntry, OutputEntry};
use serde_json::{json, Map, Value};

use crate::schema::{RecordStatus, RunRecord, StepRecord};

/// Why no statement was given.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The run has not ended (or its engine died).
    #[error("run {run_id} is incomplete (the engine stopped before it ended); provenance is only given for finished runs")]
    Incomplete {
        /// The run.
        run_id: String,
    },
    /// Nothing was exported: a statement needs a subject.
    #[error("run {run_id} exported no files ({status}): a provenance statement needs at least one subject")]
    NoSubjects {
        /// The run.
        run_id: String,
        /// How it ended.
        status: &'static str,
    },
    /// A record of an older schema (its inputs are not where this engine reads them).
    #[error(transparent)]
    OlderSchema(crate::read::RecordError),
    /// The record names no input manifest for a step that has inputs: it was edited, or its cache
    /// entry came from an older engine.
    #[error("step `{step}` of run {run_id} has {count} input files but the record names no input manifest for them")]
    NoInputManifest {
        /// The run.
        run_id: String,
        /// The step.
        step: String,
        /// Its recorded number of inputs.
        count: usize,
    },
    /// The input manifest the record names is not in the cache store (collected by gc).
    #[error("the input manifest {} of step `{step}` is no longer in the cache store; the provenance would be incomplete", digest.short())]
    InputsMissing {
        /// The step.
        step: String,
        /// The manifest's digest.
        digest: Digest,
    },
    /// The input manifest lists another number of files than the record counts.
    #[error("step `{step}` of run {run_id} counts {count} input files but its input manifest lists {listed}")]
    InputsMismatch {
        /// The run.
        run_id: String,
        /// The step.
        step: String,
        /// The record's count.
        count: usize,
        /// The manifest's.
        listed: usize,
    },
}

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of a SLSA provenance v1 predicate.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// How a run is described: tag URIs (RFC 4151) in the engine's own namespace, since no domain
/// of ours could host the build type's description; docs/records.md describes it.
pub const BUILD_TYPE: &str = "tag:engine,2026:buildtypes/workflow-run/v1";
/// `builder.id` of the statements.
pub const BUILDER_ID: &str = "tag:engine,2026:builder/engine";
/// `uri` of the byproduct that describes the host (a ResourceDescriptor needs a `uri`, a
/// `digest` or a `content`; the host has no digest).
pub const HOST_URI: &str = "tag:engine,2026:host";

/// The statement for `record`. `manifests` reads an input manifest by its digest (from the cache
/// store); each distinct manifest is read once, however many steps share it.
pub fn statement(record: &RunRecord, manifests: impl Fn(&Digest) -> Option<Vec<InputEntry>>) -> Result<Value, ProvenanceError> {
    let id = &record.run_id;
    if !record.is_current() {
        return Err(ProvenanceError::OlderSchema(crate::read::RecordError::OlderSchema {
            run_id: id.clone(),
            schema: record.schema.clone(),
        }));
    }
    if record.status == RecordStatus::Incomplete {
        return Err(ProvenanceError::Incomplete { run_id: id.clone() });
    }
    // The steps whose outputs the run exported (executed or restored from the cache).
    let attested: Vec<&StepRecord> = record.steps.iter().filter(|s| s.status.has_outputs()).collect();
    let inputs = input_files(record, &attested, manifests)?;

    let mut subjects: Vec<(String, Value)> = attested
        .iter()
        .flat_map(|s| {
            s.outputs.iter().filter_map(move |o| match o {
                OutputEntry::File { path, digest, .. } => {
                    let name = format!("{}/{path}", s.name);
                    Some((name.clone(), json!({ "name": name, "digest": { "sha256": digest.hex() } })))
                }
                OutputEntry::Symlink { .. } | OutputEntry::Dir { .. } => None,
            })
        })
        .collect();
    subjects.sort_by(|a, b| a.0.cmp(&b.0));
    if subjects.is_empty() {
        return Err(ProvenanceError::NoSubjects { run_id: id.clone(), status: record.status.as_str() });
    }

    let predicate = json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "workflow": {
                    "name": record.workflow.name,
                    "file": record.workflow.file,
                    "digest": digest_set(&record.workflow.digest),
                },
                "targets": record.invocation.targets,
                "steps": attested.iter().map(|s| step_parameters(s)).collect::<Vec<_>>(),
            },
            "internalParameters": {
                "jobs": record.invocation.jobs,
                "no_cache": record.invocation.no_cache,
                "keep_going": record.invocation.keep_going,
                "cache_format": attested
                    .iter()
                    .find_map(|s| s.key_components.as_ref().map(|k| k.format))
                    .unwrap_or(cache::CACHE_FORMAT_VERSION),
            },
            "resolvedDependencies": resolved_dependencies(record, &attested, &inputs),
        },
        "runDetails": {
            "builder": {
                "id": BUILDER_ID,
                "version": { "engine": record.engine.version },
            },
            "metadata": metadata(record),
            "byproducts": byproducts(record),
        },
    });

    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }))
}

/// A DigestSet: `{"sha256": <hex>}`.
fn digest_set(digest: &Digest) -> Value {
    json!({ "sha256": digest.hex() })
}

/// One step as it was resolved and run: what the key covered, except the input files (those are
/// `resolvedDependencies`) and the outputs of the steps it needs (those are other subjects).
fn step_parameters(s: &StepRecord) -> Value {
    let mut p = Map::new();
    p.insert("name".into(), json!(s.name));
    if let Some(image) = &s.image {
        p.insert("image".into(), json!({ "reference": image.reference, "id": image.id }));
    }
    let k = s.key_components.as_ref();
    if let Some(k) = k {
        p.insert("command".into(), json!(k.command));
        p.insert("env".into(), json!(k.env));
    }
    p.insert("workdir".into(), json!(k.map(|k| k.workdir.as_str()).unwrap_or(s.definition.workdir.as_str())));
    if let Some(k) = k {
        p.insert("user".into(), json!(k.user));
        p.insert("network".into(), json!(k.network));
        // Names only (a secret's value never reaches the record); they are part of the key.
        p.insert("secrets".into(), json!(k.secrets));
    }
    p.insert("needs".into(), json!(s.definition.needs));
    if let Some(key) = &s.key {
        p.insert("key".into(), json!(key));
    }
    if let Some(epoch) = s.source_date_epoch {
        p.insert("source_date_epoch".into(), json!(epoch));
    }
    Value::Object(p)
}

/// The images (one per image ID), the workflow file and every input file of the attested steps,
/// each once, sorted by URI.
fn resolved_dependencies(record: &RunRecord, attested: &[&StepRecord], inputs: &[InputEntry]) -> Vec<Value> {
    let mut deps: BTreeMap<(String, String), Value> = BTreeMap::new();
    // Image ID -> the references that resolved to it; the first (sorted) names it.
    let mut images: BTreeMap<&cache::ImageId, BTreeSet<&str>> = BTreeMap::new();
    for image in attested.iter().filter_map(|s| s.image.as_ref()) {
        images.entry(&image.id).or_default().insert(image.reference.as_str());
    }
    for (id, references) in images {
        let reference = references.into_iter().next().unwrap_or_default();
        let uri = format!("docker-image:{reference}");
        deps.insert((uri.clone(), id.to_string()), json!({ "uri": uri, "digest": { "sha256": id.hex() }, "name": reference }));
    }
    // Relative to the workflow's folder, like the inputs (the file as typed may be `sub/x.yml`).
    let name = std::path::Path::new(&record.workflow.file).file_name().map(|n| n.to_string_lossy().into_owned());
    let workflow = format!("file:{}", name.unwrap_or_else(|| record.workflow.file.clone()));
    deps.insert(
        (workflow.clone(), record.workflow.digest.prefixed()),
        json!({ "uri": workflow, "digest": digest_set(&record.workflow.digest) }),
    );
    for input in inputs {
        let uri = format!("file:{}", input.path);
        let hex = input.digest.hex();
        deps.entry((uri.clone(), format!("sha256:{hex}"))).or_insert_with(|| json!({ "uri": uri, "digest": { "sha256": hex } }));
    }
    deps.into_values().collect()
}

fn metadata(record: &RunRecord) -> Value {
    let mut m = Map::new();
    m.insert("invocationId".into(), json!(record.run_id));
    m.insert("startedOn".into(), json!(record.started_at));
    if let Some(finished) = &record.finished_at {
        m.insert("finishedOn".into(), json!(finished));
    }
    Value::Object(m)
}

/// Every step's log (relative to the run's folder), then the host the run used.
fn byproducts(record: &RunRecord) -> Vec<Value> {
    let mut out: Vec<Value> = record
        .steps
        .iter()
        .filter_map(|s| s.log.as_ref())
        .map(|log| json!({ "name": log.path, "digest": digest_set(&log.digest) }))
        .collect();
    let host = &record.host;
    out.push(json!({
        "name": "host",
        "uri": HOST_URI,
        "annotations": {
            "os": host.os,
            "arch": host.arch,
            "docker_version": host.docker_version,
            "docker_api_version": host.docker_api_version,
        },
    }));
    out
}

/// The input files of the attested steps, from their manifests (each read once).
fn input_files(
    record: &RunRecord,
    attested: &[&StepRecord],
    manifests: impl Fn(&Digest) -> Option<Vec<InputEntry>>,
) -> Result<Vec<InputEntry>, ProvenanceError> {
    let mut read: HashMap<Digest, usize> = HashMap::new();
    let mut all = Vec::new();
    for s in attested.iter().filter(|s| s.inputs_count > 0) {
        let Some(digest) = s.inputs_manifest else {
            return Err(ProvenanceError::NoInputManifest { run_id: record.run_id.clone(), step: s.name.clone(), count: s.inputs_count });
        };
        let listed = match read.get(&digest) {
            Some(n) => *n,
            None => {
                let entries = manifests(&digest).ok_or_else(|| ProvenanceError::InputsMissing { step: s.name.clone(), digest })?;
                let n = entries.len();
                all.extend(entries);
                read.insert(digest, n);
                n
            }
        };
        if listed != s.inputs_count {
            return Err(ProvenanceError::InputsMismatch {
                run_id: record.run_id.clone(),
                step: s.name.clone(),
                count: s.inputs_count,
                listed,
            });
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            ext["workflow"],
            json!({ "name": "demo", "file": "workflow.yml", "digest": { "sha256": digest("version: 1\n").hex() } })
        );
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
}
