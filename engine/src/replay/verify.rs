//! Reading, verifying and admitting a recorded run before anything of it is replayed (see the
//! module above): everything about the record that needs no daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache::{Digest, InputEntry, OutputEntry, Store};

use crate::error::EnvironmentError;
use crate::record::{self, RunRecord, StepRecord};
use crate::session::{open_store, StartError};

/// A record found, verified and admitted.
pub(super) struct Checked {
    pub(super) record_path: PathBuf,
    pub(super) record: RunRecord,
    pub(super) selected: Vec<StepRecord>,
    pub(super) store: Store,
    /// Each selected step's verified input files.
    pub(super) inputs: HashMap<String, Arc<Vec<InputEntry>>>,
    /// The selected steps as today's policy and rules admit them.
    pub(super) admitted: Arc<dsl::Workflow>,
}

/// Find the record, select the steps, verify each against its key and the store, and admit it
/// under `policy`: everything about the record that needs no daemon. The record is untrusted.
pub(super) fn check_record(
    dir: &Path,
    id: &str,
    steps: &[String],
    cache_dir: &Path,
    policy: &dsl::policy::Policy,
) -> Result<Checked, StartError> {
    let (run_folder, record) = record::find_current(dir, id)?;
    let record_path = run_folder.join("record.json");
    let selected: Vec<StepRecord> = select(&record, steps)?.into_iter().cloned().collect();
    let store = open_store(cache_dir)?;
    check_unique_names(&record).map_err(|why| StartError::Invalid(format!("record {}: {why}", record_path.display())))?;
    let mut inputs = HashMap::new();
    let mut unverifiable = Vec::new();
    for step in &selected {
        match verify_step(&store, &record, step) {
            Ok(step_inputs) => {
                inputs.insert(step.name.clone(), Arc::new(step_inputs));
            }
            Err(Refusal::Edited(why)) => {
                return Err(StartError::Invalid(format!(
                    "record {} step `{}`: {why}; refusing to replay an edited record",
                    record_path.display(),
                    step.name.escape_debug()
                )))
            }
            Err(Refusal::Unverifiable(why)) => unverifiable.push(format!("step `{}`: {why}", step.name.escape_debug())),
        }
    }
    if !unverifiable.is_empty() {
        return Err(EnvironmentError(format!(
            "cannot replay run {}: the record cannot be verified against the cache store:\n  {}",
            record.run_id,
            unverifiable.join("\n  ")
        ))
        .into());
    }
    let admitted = admit(&record_path, &selected, policy)?;
    Ok(Checked { record_path, record, selected, store, inputs, admitted })
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
            return Err(StartError::Invalid(format!("run {} has no step `{name}`; its steps: {}", record.run_id, known.join(", "))));
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

/// Why a recorded step is not replayed.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    /// The record contradicts itself or the store: it was edited (exit 2).
    Edited(String),
    /// The store no longer holds what the check needs (exit 3).
    Unverifiable(String),
}

/// Steps are found by name: a record listing one twice could show one and replay the other.
fn check_unique_names(record: &RunRecord) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    match record.steps.iter().find(|s| !seen.insert(s.name.as_str())) {
        Some(s) => Err(format!("it lists step `{}` twice; refusing to replay an edited record", s.name.escape_debug())),
        None => Ok(()),
    }
}

/// The digest of a list of output entries, as the store computes it for a manifest.
fn outputs_digest(entries: &[OutputEntry]) -> Digest {
    cache::Manifest {
        key: cache::ActionKey::from_digest(Digest::from_bytes([0; 32])),
        workflow: String::new(),
        step: String::new(),
        entries: entries.to_vec(),
        exit_code: 0,
        log: Digest::from_bytes([0; 32]),
        inputs: None,
        created: 0,
        duration_ms: 0,
    }
    .outputs_digest()
}

/// The fields in which two sets of key components differ, named as a person reads them.
fn differing_fields(expected: &cache::KeyComponents, recorded: &cache::KeyComponents) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            out.push(name)
        }
    };
    check(expected.format != recorded.format, "cache format");
    check(expected.image != recorded.image, "image");
    check(expected.command != recorded.command, "command");
    check(expected.env != recorded.env, "env");
    check(expected.workdir != recorded.workdir, "workdir");
    check(expected.user != recorded.user, "user");
    check(expected.network != recorded.network, "network");
    check(expected.outputs != recorded.outputs, "outputs");
    check(expected.secrets != recorded.secrets, "secrets");
    check(expected.inputs != recorded.inputs, "inputs");
    check(expected.upstream != recorded.upstream, "needs");
    out
}

/// Checks that `step` is what its key says and that the store knows that key; returns its input
/// files. Reads the record and the store only (manifests, not blobs).
fn verify_step(store: &Store, record: &RunRecord, step: &StepRecord) -> Result<Vec<InputEntry>, Refusal> {
    use Refusal::{Edited, Unverifiable};
    let key = step.key.ok_or_else(|| Edited("it has no key".into()))?;
    let recorded = step.key_components.as_ref().ok_or_else(|| Edited("it has no key components".into()))?;
    let image = step.image.as_ref().ok_or_else(|| Edited("it names no image".into()))?;
    let inputs = match step.inputs_manifest {
        Some(d) => store
            .input_manifest(&d)
            .ok_or_else(|| Unverifiable(format!("its input manifest {} is not in the cache store {}", d.short(), store.dir().display())))?,
        None if step.inputs_count == 0 => Vec::new(),
        None => return Err(Unverifiable("the record names no input manifest for its input files".into())),
    };
    if inputs.len() != step.inputs_count {
        return Err(Edited(format!("it counts {} input files but lists {}", step.inputs_count, inputs.len())));
    }
    let mut recorded = recorded.clone();
    recorded.inputs = inputs;
    if recorded.key() != key {
        return Err(Edited("its key does not match its key components and input files".into()));
    }

    // The outputs of its needs are staged into its workspace: they must be what its key covers.
    let mut upstream = Vec::new();
    for need in &step.definition.needs {
        let up = record
            .steps
            .iter()
            .find(|s| &s.name == need)
            .ok_or_else(|| Edited(format!("it needs `{}`, which the record does not have", need.escape_debug())))?;
        let digest = up
            .outputs_digest
            .filter(|_| up.status.has_outputs())
            .ok_or_else(|| Edited(format!("it needs `{need}`, which has no outputs in the record")))?;
        if outputs_digest(&up.outputs) != digest {
            return Err(Edited(format!("the outputs of `{need}` it needs do not match their digest")));
        }
        upstream.push(cache::UpstreamEntry { step: need.clone(), outputs: digest });
    }

    // An image keyed by its local ID must be the recorded image; a built or pulled image is
    // keyed by its stage key or registry digest, which the record's components carry.
    let identity = match &recorded.image {
        cache::ImageIdentity::Local { .. } => cache::ImageIdentity::Local { id: image.id.clone() },
        other => other.clone(),
    };
    let expected = crate::caching::components(&record::to_step(&step.definition), &identity, recorded.inputs.clone(), upstream);
    let mut differs = differing_fields(&expected, &recorded);
    let reference = step.definition.image_reference();
    if reference != image.reference && !differs.contains(&"image") {
        differs.push("image");
    }
    // As this engine derives it (clamped to the run's start), or as engines before the clamp did.
    let derived = |f: &dyn Fn(&cache::ActionKey) -> u64| (!step.definition.env.contains_key("SOURCE_DATE_EPOCH")).then(|| f(&key));
    let started = record::run_started_secs(&record.run_id);
    if step.source_date_epoch != derived(&|k| record::source_date_epoch(k, started))
        && step.source_date_epoch != derived(&record::source_date_epoch_unclamped)
    {
        differs.push("SOURCE_DATE_EPOCH");
    }
    if !differs.is_empty() {
        return Err(Edited(format!(
            "its definition does not match its key ({} differ{})",
            differs.join(", "),
            if differs.len() == 1 { "s" } else { "" }
        )));
    }
    if let Some(d) = step.outputs_digest {
        if d != outputs_digest(&step.outputs) {
            return Err(Edited("its outputs do not match their digest".into()));
        }
    }

    // The store is the reference: it must know the key (a record with a key of its own making is
    // not replayed), and the input files it keeps for the key must be the recorded ones.
    let manifest_path = store.manifest_path(&key);
    let manifest = match record::read_regular(&manifest_path, record::MAX_RECORD_BYTES) {
        Ok(bytes) => serde_json::from_slice::<cache::Manifest>(&bytes).ok().filter(|m| m.key == key),
        Err(record::ReadRefused::Missing) => {
            return Err(Unverifiable(format!(
                "the cache store {} has no entry for its key {} (collected by `engine cache gc`, or the record was edited)",
                store.dir().display(),
                key.digest().short()
            )))
        }
        Err(_) => None,
    };
    if manifest.is_none() {
        return Err(Unverifiable(format!(
            "the cache entry of its key {} is unreadable or damaged ({})",
            key.digest().short(),
            manifest_path.display()
        )));
    }
    if let Some(kept) = manifest.as_ref().and_then(|m| m.inputs).filter(|kept| Some(*kept) != step.inputs_manifest) {
        if let Some(mut kept) = store.input_manifest(&kept) {
            let mut listed = recorded.inputs.clone();
            kept.sort_by(|a, b| a.path.cmp(&b.path));
            listed.sort_by(|a, b| a.path.cmp(&b.path));
            if kept != listed {
                return Err(Edited("its input files do not match those the cache store keeps for its key".into()));
            }
        }
    }
    Ok(recorded.inputs)
}

/// The recorded steps as a workflow text for the front end: every setting explicit (JSON is
/// YAML), `needs` left out (the record's graph is checked by [`verify_step`]).
fn as_workflow_text(steps: &[StepRecord]) -> String {
    use serde_json::{json, Map, Value};
    let mut images = Map::new();
    let mut out = Map::new();
    for step in steps {
        let d = &record::to_step(&step.definition);
        let mut m = Map::new();
        match &d.image {
            dsl::ImageRef::Reference(r) => m.insert("image".into(), json!(r)),
            dsl::ImageRef::Built(n) => {
                // The image itself is pinned by its ID; its build is not re-checked here.
                images.insert(n.clone(), json!({ "dockerfile": "Dockerfile", "context": "." }));
                m.insert("image".into(), json!(n))
            }
        };
        match &d.command {
            dsl::Command::Shell(script) => m.insert("run".into(), json!(script)),
            dsl::Command::Argv(argv) => m.insert("command".into(), json!(argv)),
        };
        for (key, list) in [("inputs", &d.inputs), ("outputs", &d.outputs), ("secrets", &d.secrets)] {
            if !list.is_empty() {
                m.insert(key.into(), json!(list));
            }
        }
        if !d.env.is_empty() {
            m.insert("env".into(), json!(d.env));
        }
        if !d.caches.is_empty() {
            let caches: Vec<Value> = d.caches.iter().map(|c| json!({ "name": c.name, "path": c.path })).collect();
            m.insert("caches".into(), Value::Array(caches));
        }
        m.insert("workdir".into(), json!(d.workdir));
        m.insert("network".into(), json!(d.isolation.network.as_str()));
        m.insert("user".into(), json!(d.isolation.user.to_string()));
        let l = &d.limits;
        m.insert(
            "limits".into(),
            json!({
                "cpus": dsl::units::format_cpus(l.millicpus),
                "memory": format!("{}b", l.memory),
                "pids": l.pids.to_string(),
                "timeout": format!("{}ms", l.timeout.as_millis()),
                "tmpfs": format!("{}b", l.tmpfs),
                "workspace": format!("{}b", l.workspace),
                "outputs": format!("{}b", l.outputs),
            }),
        );
        out.insert(step.name.clone(), Value::Object(m));
    }
    let mut doc = Map::new();
    doc.insert("version".into(), json!(1));
    if !images.is_empty() {
        doc.insert("images".into(), Value::Object(images));
    }
    doc.insert("steps".into(), Value::Object(out));
    serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default()
}

/// The selected steps as today's rules and `policy` resolve them: loaded again through the
/// workflow front end, so a recorded step passes exactly the checks a workflow step passes. The
/// result is what runs (without `needs`: staging takes the needs' verified recorded outputs). Refused: exit 2 naming the record, the step
/// and every rule it breaks.
fn admit(record_path: &Path, steps: &[StepRecord], policy: &dsl::policy::Policy) -> Result<Arc<dsl::Workflow>, StartError> {
    let text = as_workflow_text(steps);
    let workflow = match crate::front::load_str(record_path, &text, policy) {
        Ok(w) => w,
        Err(dsl::LoadError::Invalid { diagnostics, .. }) => {
            let record = record_path.display().to_string();
            let mut lines = Vec::new();
            for d in &diagnostics {
                // The step the problem belongs to: the last whose entry starts before the place.
                let steps_at = text.find("\n  \"steps\": {").unwrap_or(text.len());
                let step = steps
                    .iter()
                    .filter_map(|s| {
                        let at = text[steps_at..].find(&format!("\n    {}: {{", json_key(&s.name)))? + steps_at;
                        (at <= d.span.offset).then_some((at, s.name.as_str()))
                    })
                    .max()
                    .map(|(_, name)| name);
                let mut line = match step {
                    Some(name) => format!("record {record} step `{name}`: {}", d.message),
                    None => format!("record {record}: {}", d.message),
                };
                for r in d.related.iter().filter(|r| !r.location.starts_with(&record)) {
                    line.push_str(&format!(" ({}: {})", r.location, r.message));
                }
                lines.push(line);
            }
            return Err(StartError::Invalid(format!(
                "{}\nrefusing to replay: a recorded step must pass today's policy and rules like a workflow step",
                lines.join("\n")
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // The recorded `needs` are kept out of the loaded workflow (a step's needs are not replayed
    // with it); its staging uses the verified recorded outputs of its needs.
    Ok(Arc::new(workflow))
}

/// A step name as it appears as a key in [`as_workflow_text`].
fn json_key(name: &str) -> String {
    serde_json::to_string(name).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record;

    fn recorded(step: &dsl::Step) -> StepRecord {
        record::pending(step)
    }

    #[test]
    fn a_recorded_step_loads_back_as_itself() {
        let mut step = dsl::Step::new(
            "gen[a,b]",
            dsl::ImageRef::Reference("local/busybox:1".into()),
            dsl::Command::Argv(vec!["sh".into(), "-c".into(), "echo \"q\" 'x' \\ $A: {b}\n#c".into()]),
        );
        step.inputs = vec!["src/**".into(), "a b.txt".into()];
        step.outputs = vec!["out".into()];
        step.env.insert("A".into(), "multi\nline: {x} [y] \u{e9}".into());
        step.secrets = vec!["TOKEN".into()];
        step.caches = vec![dsl::CacheMount { name: "cargo".into(), path: "/home/user/.cargo".into() }];
        step.workdir = "/workspace/src".into();
        step.isolation = dsl::Isolation { network: dsl::Network::Bridge, user: dsl::User { uid: 1234, gid: 5678 } };
        step.limits = dsl::Limits::sandbox();
        step.limits.millicpus = 1250;
        step.limits.timeout = std::time::Duration::from_millis(61_500);
        let mut built = dsl::Step::new("use", dsl::ImageRef::Built("tools".into()), dsl::Command::Shell("true".into()));
        built.needs = vec!["gen[a,b]".into()];
        let wf = admit(Path::new("/r/record.json"), &[recorded(&step), recorded(&built)], &dsl::policy::Policy::default()).unwrap();
        let back = wf.step("gen[a,b]").unwrap();
        assert_eq!((&back.image, &back.command, &back.inputs, &back.outputs), (&step.image, &step.command, &step.inputs, &step.outputs));
        assert_eq!((&back.env, &back.secrets, &back.caches, &back.workdir), (&step.env, &step.secrets, &step.caches, &step.workdir));
        assert_eq!((back.isolation, back.limits), (step.isolation, step.limits));
        assert_eq!(wf.step("use").unwrap().image, built.image);
        assert!(wf.step("use").unwrap().needs.is_empty());
    }

    #[test]
    fn a_recorded_step_is_admitted_only_within_todays_policy_and_rules() {
        let record = Path::new("/r/record.json");
        let mut root = dsl::Step::new("a", dsl::ImageRef::Reference("local/busybox:1".into()), dsl::Command::Shell("id".into()));
        root.isolation.user = dsl::User { uid: 0, gid: 0 };
        let err = admit(record, &[recorded(&root)], &dsl::policy::Policy::default()).unwrap_err().to_string();
        assert!(err.starts_with("record /r/record.json step `a`: step `a` asks to run as root (uid 0), which is not allowed"), "{err}");
        assert!(err.ends_with("refusing to replay: a recorded step must pass today's policy and rules like a workflow step"), "{err}");

        let mut unlimited = dsl::Step::new("b", dsl::ImageRef::Reference("local/busybox:1".into()), dsl::Command::Shell("true".into()));
        unlimited.limits.memory = 0;
        unlimited.limits.pids = 0;
        let err = admit(record, &[recorded(&root), recorded(&unlimited)], &dsl::policy::Policy::default()).unwrap_err().to_string();
        assert!(err.contains("record /r/record.json step `b`: memory `0b` is below the minimum of 6m"), "{err}");
        assert!(
            err.contains("record /r/record.json step `b`: invalid `limits.pids`") || err.contains("step `b`: ") && err.contains("pids"),
            "{err}"
        );

        let policy = dsl::policy::Policy::load_str(
            Path::new("/etc/policy.yml"),
            "version: 1\nmax_limits: { memory: 512m }\nnetworks: [none]\nimage_prefixes: [\"local/\"]\n",
        )
        .unwrap();
        let mut big = dsl::Step::new("c", dsl::ImageRef::Reference("evil/x".into()), dsl::Command::Shell("true".into()));
        big.isolation.network = dsl::Network::Bridge;
        let err = admit(record, &[recorded(&big)], &policy).unwrap_err().to_string();
        assert!(err.contains("step `c`: step `c` asks for memory 1g, above the policy's maximum 512m (/etc/policy.yml:2:"), "{err}");
        assert!(err.contains("step `c`: step `c` asks for network bridge, which the policy does not allow"), "{err}");
        assert!(err.contains("step `c`: step `c` uses image `evil/x`, which the policy does not allow"), "{err}");
        let fine = dsl::Step::new("d", dsl::ImageRef::Reference("local/busybox:1".into()), dsl::Command::Shell("true".into()));
        assert!(admit(record, &[recorded(&fine)], &policy).is_err(), "1g memory by default is above the policy's 512m");
    }

    #[test]
    fn unknown_or_failed_steps_are_refused_by_name() {
        let mut ok = record::pending(&dsl::Step::new("ok", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("true".into())));
        ok.status = record::StepState::Succeeded;
        let mut bad = record::pending(&dsl::Step::new("bad", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("false".into())));
        bad.status = record::StepState::Failed;
        let record: RunRecord = serde_json::from_value(serde_json::json!({
            "schema": record::SCHEMA, "run_id": "r1", "status": "failed", "started_at": "t",
            "finished_at": null, "duration_ms": null,
            "engine": {"name": "engine", "version": "0"},
            "host": {"os": "linux", "arch": "x", "docker_version": "d", "docker_api_version": "a"},
            "workflow": {"name": "w", "file": "f", "dir": "/", "digest": format!("sha256:{}", "0".repeat(64))},
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
