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
/// The `uri` prefix of a module of the workflow library (`stdlib/python.wf` is
/// `tag:engine,2026:stdlib/python.wf`): its path on the host that ran it says nothing elsewhere.
pub const STDLIB_URI: &str = "tag:engine,2026:stdlib/";
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
    // The steps whose files the run exported (executed or restored from the cache, with at least
    // one file among their outputs: the subjects are files, and a step without one is no
    // subject's producer).
    let attested: Vec<&StepRecord> =
        record.steps.iter().filter(|s| s.status.has_outputs() && s.outputs.iter().any(|o| matches!(o, OutputEntry::File { .. }))).collect();
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
    // Image ID -> the references that resolved to it; the first (sorted) names it. The images an
    // engine-built image was built from are dependencies too.
    let mut images: BTreeMap<&cache::ImageId, BTreeSet<&str>> = BTreeMap::new();
    let mut built: BTreeMap<&cache::ImageId, &[crate::schema::BaseImage]> = BTreeMap::new();
    for image in attested.iter().filter_map(|s| s.image.as_ref()) {
        images.entry(&image.id).or_default().insert(image.reference.as_str());
        if image.reference.starts_with("images.") {
            built.insert(&image.id, &image.bases);
        }
        for base in &image.bases {
            images.entry(&base.id).or_default().insert(base.reference.as_str());
        }
    }
    for (id, references) in images {
        let reference = references.into_iter().next().unwrap_or_default();
        let mut dep = json!({ "digest": { "sha256": id.hex() }, "name": reference });
        // An engine-built image has no reference outside the workflow: its ID names it, and its
        // bases are said beside it.
        let uri = match built.get(id) {
            Some(bases) => {
                dep["annotations"] =
                    json!({ "bases": bases.iter().map(|b| json!({ "reference": b.reference, "id": b.id })).collect::<Vec<_>>() });
                format!("docker-image:{reference}@{id}")
            }
            None => format!("docker-image:{reference}"),
        };
        dep["uri"] = json!(uri);
        deps.insert((uri, id.to_string()), dep);
    }
    // Every imported `.wf` module, by its path in the workflow's folder, or in the library.
    for module in &record.workflow.modules {
        let uri = match module.name.strip_prefix("stdlib/") {
            Some(rest) => format!("{STDLIB_URI}{rest}"),
            None => format!("file:{}", module.name),
        };
        deps.insert(
            (uri.clone(), module.digest.prefixed()),
            json!({ "uri": uri, "name": module.name, "digest": digest_set(&module.digest) }),
        );
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
mod tests;
