//! `engine replay`: re-execute the steps of a recorded run and say whether their outputs come out
//! the same (a reproducibility audit, like `nix build --check`).
//!
//! Each replayed step gets a fresh workspace made from the *store*, never from the working tree:
//! its input files by the digests the record names, and the outputs its needs produced **in the
//! recorded run** (so every step is judged on its own, and all of them can run at once). The
//! container is created from the recorded image ID with the recorded definition (command, env,
//! user, network, limits; `SOURCE_DATE_EPOCH` as recorded), bypassing the cache. The new outputs
//! are hashed, never stored, and compared with the record path by path.
//!
//! A record is untrusted input (anyone who can write the project folder can edit it), so before
//! anything starts every selected step is **verified** and **admitted**:
//! - verified ([`verify_step`]): its key is recomputed from its recorded key components and input
//!   files and must equal the recorded key; its definition (command, env, workdir, user, network,
//!   outputs, secret names, image ID, needs' outputs) must be the one those components describe;
//!   the cache store must hold an entry for that key (and, when it keeps the key's input manifest,
//!   the same input files); the outputs of its needs, which are staged into its workspace, must
//!   hash to the digests its key covers. An edited record is refused (exit 2).
//! - admitted ([`admit`]): the recorded definition is loaded again through the workflow front end
//!   as a one-step workflow, under today's operator policy and built-in rules and defaults (root,
//!   networks, `max_limits`, image prefixes, names, paths, minimum sizes), and checked against the
//!   daemon host's size like `engine run` does. The step that runs is the one the front end
//!   returns, never the recorded one as is.
//!
//! Owns the comparison and its report; running a container is the Docker executor's job (the
//! same hardened path as `engine run`), and the run record is only read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache::{Digest, InputEntry, OutputEntry, Store};
use tokio_util::sync::CancellationToken;

use crate::docker::{cleanup, DockerExecutor};
use crate::error::{exit, EnvironmentError};
use crate::events::EventSink;
use crate::executor::{CacheMountJob, StepContext, StepFailure, StepJob};
use crate::plan;
use crate::record::{self, RunRecord, StepRecord};
use crate::run::{new_run_id, open_store, StartError};
use crate::workspace::{self, RunDir};

pub struct ReplayConfig {
    /// The folder holding the workflow and its `.engine/runs`.
    pub dir: PathBuf,
    pub id: String,
    /// Steps to replay; empty: every step with recorded outputs.
    pub steps: Vec<String>,
    /// Default: the recorded run's `--jobs`.
    pub jobs: Option<usize>,
    pub cache_dir: PathBuf,
    /// Today's operator policy; every replayed step must pass it.
    pub policy: dsl::policy::Policy,
}

/// How one output path compares with the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// Same path, other content.
    Content { path: String, recorded: Digest, replayed: Digest, diff: Option<String> },
    /// Recorded but not produced again.
    Missing { path: String },
    /// Produced now but not recorded.
    Extra { path: String },
    /// Same path, other kind (file, folder, symlink), mode or link target.
    Changed { path: String, recorded: String, replayed: String },
}

/// The verdict on one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reproduced,
    Differs(Vec<Difference>),
    /// The replay did not finish (non-zero exit, timeout, ...): nothing to compare.
    Failed(String),
}

pub async fn replay(cfg: ReplayConfig, cancel: CancellationToken) -> Result<i32, StartError> {
    // Reading, verifying and admitting the record touch only files: off the async workers.
    let ReplayConfig { dir, id, steps, jobs, cache_dir, policy } = cfg;
    let policy = Arc::new(policy);
    let for_check = policy.clone();
    let checked = tokio::task::spawn_blocking(move || check_record(&dir, &id, &steps, &cache_dir, &for_check))
        .await
        .map_err(|e| EnvironmentError(format!("the record check stopped: {e}")))??;
    let Checked { record_path, record, selected, store, inputs, admitted } = checked;
    let store = Arc::new(store);
    // Names from the record are printed escaped: a record could carry terminal control codes.
    let refused =
        |step: &str, why: String| StartError::Invalid(format!("record {} step `{}`: {why}", record_path.display(), step.escape_debug()));

    let docker = Arc::new(DockerExecutor::connect().await?);
    for step in &selected {
        if let Some(why) = image_not_allowed(&docker, step, &policy).await {
            return Err(refused(&step.name, format!("{why}; refusing to replay it")));
        }
        if let Some(why) = claimed_build(&docker, step).await {
            return Err(refused(&step.name, format!("{why}; refusing to replay an edited record")));
        }
    }
    let budget = docker.host_budget().await?;
    if let Err(e) = plan::plan(admitted.clone(), &[], budget) {
        let why = match e {
            plan::PlanError::TooLarge(d) => d.message,
            other => other.to_string(),
        };
        return Err(StartError::Invalid(format!("record {}: {why}; refusing to replay it", record_path.display())));
    }

    // Everything a replay needs is checked before any container starts: a missing input or
    // image is the environment's problem (exit 3), named precisely.
    let mut secrets = HashMap::new();
    let mut missing = Vec::new();
    for step in &selected {
        missing.extend(check_step(&docker, &store, &record, step, &inputs[&step.name]).await);
        for name in &step.definition.secrets {
            match std::env::var(name) {
                Ok(v) => {
                    secrets.insert(name.clone(), v);
                }
                Err(_) => missing.push(format!("step `{}` needs the secret `{name}`: export {name} in the environment", step.name)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(EnvironmentError(format!("cannot replay run {}:\n  {}", record.run_id, missing.join("\n  "))).into());
    }

    let replay_id = new_run_id();
    let run_dir = Arc::new(
        RunDir::create(&replay_id).map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the replay: {e}")))?,
    );
    eprintln!(
        "replaying {} step{} of run {} ({}) as {replay_id}",
        selected.len(),
        if selected.len() == 1 { "" } else { "s" },
        record.run_id,
        record.workflow.name.escape_debug()
    );
    // The recorded `--jobs` is the record's word: never more permits than steps.
    let jobs = jobs.unwrap_or(record.invocation.jobs).clamp(1, selected.len().max(1));
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs));
    let record = Arc::new(record);
    let secrets = Arc::new(secrets);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, step) in selected.iter().enumerate() {
        let (docker, store, record, run_dir) = (docker.clone(), store.clone(), record.clone(), run_dir.clone());
        let (permits, cancel, secrets, replay_id) = (permits.clone(), cancel.clone(), secrets.clone(), replay_id.clone());
        let name = step.name.clone();
        let inputs = inputs[&name].clone();
        let definition = admitted.step(&name).cloned();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let verdict = match definition {
                _ if cancel.is_cancelled() => Verdict::Failed("cancelled".into()),
                None => Verdict::Failed("not admitted".into()),
                Some(definition) => replay_step(&docker, &store, &record, definition, inputs, &run_dir, &replay_id, &secrets, cancel).await,
            };
            (index, verdict)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; selected.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, v)) => verdicts[i] = Some(v),
            Err(e) => tracing::warn!(error = %e, "a replay task stopped"),
        }
    }
    // Every container of the replay is gone before we report, whatever happened.
    let _ = cleanup::remove_run(docker.client(), &replay_id).await;
    if cancel.is_cancelled() {
        eprintln!("replay cancelled");
        return Ok(exit::INTERRUPTED);
    }

    let width = selected.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut reproduced = 0;
    for (step, verdict) in selected.iter().zip(&verdicts) {
        let verdict = verdict.clone().unwrap_or_else(|| Verdict::Failed("the replay task stopped".into()));
        print!("{}", report_line(&step.name, width, &verdict));
        if verdict == Verdict::Reproduced {
            reproduced += 1;
        }
    }
    let differ = selected.len() - reproduced;
    println!("{reproduced} reproduced, {differ} differ{}", if differ == 1 { "s" } else { "" });
    Ok(if differ == 0 { exit::OK } else { exit::STEP_FAILED })
}

/// A record found, verified and admitted.
struct Checked {
    record_path: PathBuf,
    record: RunRecord,
    selected: Vec<StepRecord>,
    store: Store,
    /// Each selected step's verified input files.
    inputs: HashMap<String, Arc<Vec<InputEntry>>>,
    /// The selected steps as today's policy and rules admit them.
    admitted: Arc<dsl::Workflow>,
}

/// Find the record, select the steps, verify each against its key and the store, and admit it
/// under `policy`: everything about the record that needs no daemon. The record is untrusted.
fn check_record(dir: &Path, id: &str, steps: &[String], cache_dir: &Path, policy: &dsl::policy::Policy) -> Result<Checked, StartError> {
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

/// Under a policy with `image_prefixes`, the image a step runs must carry a tag the policy
/// allows: the recorded reference is the record's word, the image ID is what runs (an edited
/// reference could otherwise pass a forbidden image off as an allowed one). An untagged image
/// (its tag moved on) is refused too. Engine-built images are checked by [`claimed_build`].
async fn image_not_allowed(docker: &DockerExecutor, step: &StepRecord, policy: &dsl::policy::Policy) -> Option<String> {
    let prefixes = policy.image_prefixes()?;
    let (record::ImageRef::Reference(_), Some(image)) = (&step.definition.image, &step.image) else { return None };
    // A missing image is reported with the other missing things (exit 3).
    let inspected = docker.client().inspect_image(&image.id).await.ok()?;
    let tags = inspected.repo_tags.unwrap_or_default();
    if tags.iter().any(|t| prefixes.iter().any(|p| t.starts_with(p.as_str()))) {
        return None;
    }
    let shown: Vec<String> = prefixes.iter().map(|p| format!("`{p}`")).collect();
    Some(format!(
        "its image {} carries no tag the policy allows (tags: {}; the policy allows images starting with {})",
        image.id,
        if tags.is_empty() { "none".to_string() } else { tags.join(", ") },
        shown.join(", ")
    ))
}

/// A step that claims an engine-built image is admitted without an image-prefix check (the
/// image is pinned by its ID): the image must then really be the engine's build of that name
/// (label `engine.image`), or a record could pass any image off as built. `None` when fine or
/// when the image is gone (reported with the other missing things).
async fn claimed_build(docker: &DockerExecutor, step: &StepRecord) -> Option<String> {
    let (record::ImageRef::Built(name), Some(image)) = (&step.definition.image, &step.image) else { return None };
    let inspected = docker.client().inspect_image(&image.id).await.ok()?;
    let label = inspected.config.and_then(|c| c.labels).and_then(|l| l.get(images::LABEL_IMAGE).cloned());
    (label.as_deref() != Some(name.as_str())).then(|| {
        format!(
            "its image {} is not the engine-built image `{}` it claims (no label {}={})",
            image.id,
            name.escape_debug(),
            images::LABEL_IMAGE,
            name.escape_debug()
        )
    })
}

/// What is missing for replaying `step` (its image, input contents, or its needs' outputs).
async fn check_step(docker: &DockerExecutor, store: &Store, record: &RunRecord, step: &StepRecord, inputs: &[InputEntry]) -> Vec<String> {
    let mut missing = Vec::new();
    match &step.image {
        Some(image) => {
            if docker.image_id(&image.id).await.is_err() {
                missing.push(format!("step `{}`: image {} ({}) is no longer on the daemon", step.name, image.id, image.reference));
            }
        }
        None => missing.push(format!("step `{}`: the record names no image", step.name)),
    }
    for input in inputs {
        if !store.has_blob(&input.digest) {
            missing.push(format!(
                "step `{}`: input `{}` (sha256 {}) is not in the cache store {}",
                step.name,
                input.path,
                input.digest,
                store.dir().display()
            ));
        }
    }
    for need in &step.definition.needs {
        let Some(up) = record.steps.iter().find(|s| &s.name == need) else {
            missing.push(format!("step `{}`: the record has no step `{need}` it needs", step.name));
            continue;
        };
        for entry in &up.outputs {
            if let OutputEntry::File { path, digest, .. } = entry {
                if !store.has_blob(digest) {
                    missing.push(format!(
                        "step `{}`: output `{path}` of `{need}` (sha256 {digest}) is not in the cache store {}",
                        step.name,
                        store.dir().display()
                    ));
                }
            }
        }
    }
    missing
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
        key: cache::ActionKey(Digest([0; 32])),
        workflow: String::new(),
        step: String::new(),
        entries: entries.to_vec(),
        exit_code: 0,
        log: Digest([0; 32]),
        created: 0,
        duration_ms: 0,
        inputs: None,
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
    check(expected.image_id != recorded.image_id, "image");
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
    let key_text = step.key.as_deref().ok_or_else(|| Edited("it has no key".into()))?;
    let key =
        cache::ActionKey(key_text.parse().map_err(|_| Edited(format!("its key `{}` is not a SHA-256 digest", key_text.escape_debug())))?);
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
            .as_deref()
            .and_then(|d| d.parse::<Digest>().ok())
            .filter(|_| up.status.has_outputs())
            .ok_or_else(|| Edited(format!("it needs `{need}`, which has no outputs in the record")))?;
        if outputs_digest(&up.outputs) != digest {
            return Err(Edited(format!("the outputs of `{need}` it needs do not match their digest")));
        }
        upstream.push(cache::UpstreamEntry { step: need.clone(), outputs: digest });
    }

    let expected = crate::caching::components(&record::to_step(&step.definition), &image.id, recorded.inputs.clone(), upstream);
    let mut differs = differing_fields(&expected, &recorded);
    let reference = step.definition.image_reference();
    if reference != image.reference && !differs.contains(&"image") {
        differs.push("image");
    }
    let epoch = (!step.definition.env.contains_key("SOURCE_DATE_EPOCH")).then(|| record::source_date_epoch(&key));
    if step.source_date_epoch != epoch {
        differs.push("SOURCE_DATE_EPOCH");
    }
    if !differs.is_empty() {
        return Err(Edited(format!(
            "its definition does not match its key ({} differ{})",
            differs.join(", "),
            if differs.len() == 1 { "s" } else { "" }
        )));
    }
    if let Some(d) = step.outputs_digest.as_deref() {
        if d.parse::<Digest>().ok() != Some(outputs_digest(&step.outputs)) {
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
                key.0.short()
            )))
        }
        Err(_) => None,
    };
    if manifest.is_none() {
        return Err(Unverifiable(format!(
            "the cache entry of its key {} is unreadable or damaged ({})",
            key.0.short(),
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
    let workflow = match dsl::load_str_with(record_path, &text, policy) {
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

#[allow(clippy::too_many_arguments)]
async fn replay_step(
    docker: &DockerExecutor,
    store: &Arc<Store>,
    record: &Arc<RunRecord>,
    definition: dsl::Step,
    inputs: Arc<Vec<InputEntry>>,
    run_dir: &Arc<RunDir>,
    replay_id: &str,
    secrets: &HashMap<String, String>,
    cancel: CancellationToken,
) -> Verdict {
    let name = definition.name.as_str();
    let Some(step) = record.steps.iter().find(|s| s.name == name) else {
        return Verdict::Failed("not in the record".into());
    };
    let workspace = run_dir.workspace(name);
    let collect = run_dir.collected(name);
    let (store2, record2, run_dir2, name2) = (store.clone(), record.clone(), run_dir.clone(), name.to_string());
    let (ws, col) = (workspace.clone(), collect.clone());
    let staged = tokio::task::spawn_blocking(move || stage_from_store(&store2, &record2, &name2, &inputs, &run_dir2, &ws, &col))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = staged {
        return Verdict::Failed(format!("cannot prepare the workspace from the store: {e}"));
    }

    // The admitted definition (today's policy and defaults applied), not the recorded one.
    let mut definition = definition.clone();
    definition.needs = step.definition.needs.clone();
    if let Some(epoch) = step.source_date_epoch {
        definition.env.insert("SOURCE_DATE_EPOCH".into(), epoch.to_string());
    }
    let mut caches = Vec::new();
    for mount in &definition.caches {
        match store.mount_dir(&mount.name) {
            Ok(host_dir) => caches.push(CacheMountJob { name: mount.name.clone(), path: mount.path.clone(), host_dir }),
            Err(e) => return Verdict::Failed(format!("cannot prepare cache mount `{}`: {e}", mount.name)),
        }
    }
    let definition_secrets = definition.secrets.clone();
    let job = StepJob {
        run_id: replay_id.to_string(),
        step: Arc::new(definition),
        image: step.image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
        workspace: workspace.clone(),
        collect_to: collect.clone(),
        secrets: definition_secrets.iter().filter_map(|s| secrets.get(s).map(|v| (s.clone(), v.clone()))).collect(),
        caches,
    };
    // The replay's log is kept only to explain a failure.
    let (events, mut rx) = EventSink::channel();
    let (events, log) = events.capturing_logs();
    let outcome = docker.run_step(job, StepContext { events, cancel }).await;
    rx.close();
    while rx.try_recv().is_ok() {}
    let _ = std::fs::remove_dir_all(&workspace);
    if let Err(failure) = outcome.result {
        let log = String::from_utf8_lossy(&log.take()).into_owned();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let mut why = match failure {
            StepFailure::Exit(code) => format!("the replay exited with code {code}"),
            other => format!("the replay failed: {other}"),
        };
        if !tail.is_empty() {
            why.push_str("; last lines of its log:");
            for line in tail.into_iter().rev() {
                why.push_str("\n      ");
                why.push_str(line);
            }
        }
        return Verdict::Failed(why);
    }
    let scanned = match tokio::task::spawn_blocking(move || cache::store::scan_outputs(&collect)).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return Verdict::Failed(format!("cannot read the replayed outputs: {e}")),
        Err(e) => return Verdict::Failed(e.to_string()),
    };
    let differences = compare(&step.outputs, &scanned, |d| store.read_blob(d), &run_dir.collected(name));
    if differences.is_empty() {
        Verdict::Reproduced
    } else {
        Verdict::Differs(differences)
    }
}

/// The step's workspace: its recorded inputs and its needs' recorded outputs, from the store.
fn stage_from_store(
    store: &Store,
    record: &RunRecord,
    name: &str,
    inputs: &[InputEntry],
    run_dir: &RunDir,
    workspace: &Path,
    collect: &Path,
) -> Result<(), String> {
    let step = record.steps.iter().find(|s| s.name == name).ok_or("not in the record")?;
    let safe = cache::store::sanitise(name);
    // The inputs, as a source tree of their own (only the recorded files, at their paths).
    let source = run_dir.path().join("replay-inputs").join(&safe);
    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
    // A symlink input is kept as its target text (that is what its digest covers): staged as a
    // link again, never as a file holding the text.
    let files: Vec<OutputEntry> = inputs
        .iter()
        .map(|i| {
            if i.mode != cache::hash::SYMLINK_MODE {
                return Ok(OutputEntry::File { path: i.path.clone(), mode: i.mode & 0o7777, digest: i.digest, size: 0 });
            }
            let target = store
                .read_blob(&i.digest)
                .filter(|t| cache::Digest::of(t) == i.digest)
                .ok_or_else(|| format!("the target of symlink input `{}` is not in the store (or damaged)", i.path))?;
            let target = String::from_utf8(target).map_err(|_| format!("the target of symlink input `{}` is not UTF-8", i.path))?;
            Ok(OutputEntry::Symlink { path: i.path.clone(), target })
        })
        .collect::<Result<_, String>>()?;
    store.materialise(&files, &source).map_err(|e| e.to_string())?;
    let mut upstream = Vec::new();
    for need in &step.definition.needs {
        let up = record.steps.iter().find(|s| &s.name == need).ok_or_else(|| format!("no step `{need}` in the record"))?;
        let dir = run_dir.path().join("replay-upstream").join(&safe).join(cache::store::sanitise(need));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        store.materialise(&up.outputs, &dir).map_err(|e| format!("outputs of `{need}`: {e}"))?;
        upstream.push(dir);
    }
    let paths: Vec<String> = inputs.iter().map(|i| i.path.clone()).collect();
    workspace::stage(&source, &paths, &upstream, workspace).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(collect).map_err(|e| e.to_string())
}

/// Texts up to this size are diffed line by line in the report.
const DIFF_MAX_BYTES: usize = 64 * 1024;
/// Lines of a text diff shown per file.
const DIFF_MAX_LINES: usize = 20;

/// Path-by-path comparison of recorded and replayed outputs. `recorded_blob` reads a recorded
/// file's content (for a text diff); `replayed_dir` holds the replayed files.
pub fn compare(
    recorded: &[OutputEntry],
    replayed: &[OutputEntry],
    recorded_blob: impl Fn(&Digest) -> Option<Vec<u8>>,
    replayed_dir: &Path,
) -> Vec<Difference> {
    let old: BTreeMap<&str, &OutputEntry> = recorded.iter().map(|e| (e.path(), e)).collect();
    let new: BTreeMap<&str, &OutputEntry> = replayed.iter().map(|e| (e.path(), e)).collect();
    let mut paths: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    let mut out = Vec::new();
    for path in paths {
        match (old.get(path), new.get(path)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(OutputEntry::File { digest: d1, mode: m1, .. }), Some(OutputEntry::File { digest: d2, mode: m2, .. })) if d1 != d2 => {
                let diff = match (recorded_blob(d1), std::fs::read(replayed_dir.join(path)).ok()) {
                    (Some(a), Some(b)) => text_diff(&a, &b),
                    _ => None,
                };
                out.push(Difference::Content { path: path.to_string(), recorded: *d1, replayed: *d2, diff });
                if m1 != m2 {
                    out.push(Difference::Changed {
                        path: path.to_string(),
                        recorded: format!("mode {m1:o}"),
                        replayed: format!("mode {m2:o}"),
                    });
                }
            }
            (Some(a), Some(b)) => out.push(Difference::Changed { path: path.to_string(), recorded: describe(a), replayed: describe(b) }),
            (Some(_), None) => out.push(Difference::Missing { path: path.to_string() }),
            (None, Some(_)) => out.push(Difference::Extra { path: path.to_string() }),
            (None, None) => {}
        }
    }
    out
}

fn describe(e: &OutputEntry) -> String {
    match e {
        OutputEntry::File { mode, .. } => format!("file, mode {mode:o}"),
        OutputEntry::Dir { mode, .. } => format!("folder, mode {mode:o}"),
        OutputEntry::Symlink { target, .. } => format!("symlink to `{target}`"),
    }
}

/// A short unified diff when both sides are small UTF-8 texts.
fn text_diff(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() > DIFF_MAX_BYTES || b.len() > DIFF_MAX_BYTES || a.contains(&0) || b.contains(&0) {
        return None;
    }
    let (a, b) = (std::str::from_utf8(a).ok()?, std::str::from_utf8(b).ok()?);
    let diff = similar::TextDiff::from_lines(a, b);
    let text = diff.unified_diff().context_radius(1).header("recorded", "replayed").to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    let more = lines.len().saturating_sub(DIFF_MAX_LINES);
    lines.truncate(DIFF_MAX_LINES);
    let mut shown = lines.join("\n");
    if more > 0 {
        shown.push_str(&format!("\n... {more} more lines"));
    }
    Some(shown)
}

/// The report of one step: `name  reproduced`, or `name  differs` with one line per difference.
pub fn report_line(name: &str, width: usize, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Reproduced => format!("{name:<width$}  reproduced\n"),
        Verdict::Failed(why) => format!("{name:<width$}  differs: {why}\n"),
        Verdict::Differs(diffs) => {
            let mut s = format!("{name:<width$}  differs\n");
            for d in diffs {
                match d {
                    Difference::Content { path, recorded, replayed, diff } => {
                        s.push_str(&format!("    {path}: recorded sha256 {recorded}, replayed sha256 {replayed}\n"));
                        if let Some(diff) = diff {
                            for line in diff.lines() {
                                s.push_str(&format!("      {line}\n"));
                            }
                        }
                    }
                    Difference::Missing { path } => s.push_str(&format!("    {path}: recorded, not produced by the replay\n")),
                    Difference::Extra { path } => s.push_str(&format!("    {path}: produced by the replay, not recorded\n")),
                    Difference::Changed { path, recorded, replayed } => {
                        s.push_str(&format!("    {path}: recorded {recorded}, replayed {replayed}\n"))
                    }
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> OutputEntry {
        OutputEntry::File { path: path.into(), mode: 0o644, digest: Digest::of(content), size: content.len() as u64 }
    }

    #[test]
    fn same_outputs_have_no_differences() {
        let a = vec![OutputEntry::Dir { path: "out".into(), mode: 0o755 }, file("out/a", b"x")];
        assert!(compare(&a, &a.clone(), |_| None, Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn each_kind_of_difference_is_named_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stamp"), "2\n").unwrap();
        let recorded = vec![file("gone", b"g"), file("stamp", b"1\n"), OutputEntry::Symlink { path: "l".into(), target: "a".into() }];
        let replayed = vec![file("new", b"n"), file("stamp", b"2\n"), OutputEntry::Symlink { path: "l".into(), target: "b".into() }];
        let diffs = compare(&recorded, &replayed, |d| (*d == Digest::of(b"1\n")).then(|| b"1\n".to_vec()), dir.path());
        assert_eq!(diffs.len(), 4, "{diffs:?}");
        assert_eq!(diffs[0], Difference::Missing { path: "gone".into() });
        assert!(matches!(&diffs[1], Difference::Changed { path, .. } if path == "l"));
        assert_eq!(diffs[2], Difference::Extra { path: "new".into() });
        let Difference::Content { path, diff: Some(diff), .. } = &diffs[3] else { panic!("{:?}", diffs[3]) };
        assert_eq!(path, "stamp");
        assert!(diff.contains("-1") && diff.contains("+2"), "{diff}");
        let report = report_line("use", 3, &Verdict::Differs(diffs.clone()));
        assert!(report.starts_with("use  differs\n"), "{report}");
        assert!(
            report.contains(&format!("stamp: recorded sha256 {}, replayed sha256 {}", Digest::of(b"1\n"), Digest::of(b"2\n"))),
            "{report}"
        );
    }

    #[test]
    fn binary_or_large_files_get_no_text_diff() {
        assert!(text_diff(b"a\0b", b"a\0c").is_none());
        assert!(text_diff(&vec![b'a'; DIFF_MAX_BYTES + 1], b"b").is_none());
        let long_a: String = (0..100).map(|i| format!("{i}\n")).collect();
        let long_b: String = (0..100).map(|i| format!("{}\n", i * 2)).collect();
        let d = text_diff(long_a.as_bytes(), long_b.as_bytes()).unwrap();
        assert!(d.lines().count() <= DIFF_MAX_LINES + 1 && d.ends_with("more lines"), "{d}");
    }

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
            "workflow": {"name": "w", "file": "f", "dir": "/", "digest": "sha256:0"},
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
