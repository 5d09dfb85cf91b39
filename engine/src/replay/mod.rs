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
//! A replay goes through the same scheduler as a run, with the layers of `crate::layers::replay`
//! (stage from the store) and `crate::layers::compare` (the verdicts) over the same container
//! runner (the same hardened path as `engine run`); the run record is only read.

mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use cache::{InputEntry, OutputEntry, Store};
use tokio_util::sync::CancellationToken;

use crate::docker::{cleanup, DockerExecutor};
use crate::error::{exit, EnvironmentError};
use crate::events::EventSink;
use crate::layers::compare::{Compare, Verdict};
use crate::layers::container::Container;
use crate::layers::replay::FromStore;
use crate::layers::staging::read_secrets;
use crate::output;
use crate::plan;
use crate::record::{RunRecord, StepRecord};
use crate::scheduler::{self, SchedulerConfig};
use crate::session::{self, StartError};
use crate::workspace::RunDir;
use verify::{check_record, Checked};

pub use crate::layers::compare::{compare, Difference};

/// What `engine replay` was asked to do.
pub struct ReplayConfig {
    /// The folder holding the workflow and its `.engine/runs`.
    pub dir: PathBuf,
    /// The run id (or an unambiguous prefix), or `latest`.
    pub id: String,
    /// Steps to replay; empty: every step with recorded outputs.
    pub steps: Vec<String>,
    /// Default: the recorded run's `--jobs`.
    pub jobs: Option<usize>,
    /// The cache store holding the recorded inputs, outputs and input manifests.
    pub cache_dir: PathBuf,
    /// Today's operator policy; every replayed step must pass it.
    pub policy: dsl::policy::Policy,
}

/// Replay a recorded run's steps and compare their outputs with the record; returns the exit
/// code (0 everything reproduced, 1 something differs or failed, 130 interrupted).
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

    let docker = Arc::new(session::connect().await?);
    for step in &selected {
        if let Some(why) = image_not_allowed(&docker, step, &policy).await {
            return Err(refused(&step.name, format!("{why}; refusing to replay it")));
        }
        if let Some(why) = claimed_build(&docker, step).await {
            return Err(refused(&step.name, format!("{why}; refusing to replay an edited record")));
        }
    }
    let budget = docker.host_budget().await?;
    let plan = match plan::plan(admitted.clone(), &[], budget) {
        Ok(plan) => plan,
        Err(e) => {
            let why = match e {
                plan::PlanError::TooLarge(d) => d.message,
                other => other.to_string(),
            };
            return Err(StartError::Invalid(format!("record {}: {why}; refusing to replay it", record_path.display())));
        }
    };

    // Everything a replay needs is checked before any container starts: a missing input or
    // image is the environment's problem (exit 3), named precisely.
    let mut missing = Vec::new();
    for step in &selected {
        missing.extend(check_step(&docker, &store, &record, step, &inputs[&step.name]).await);
    }
    let (secrets, unset) = read_secrets(selected.iter().map(|s| (s.name.as_str(), s.definition.secrets.as_slice())));
    for (step, name) in unset {
        missing.push(format!("step `{step}` needs the secret `{name}`: export {name} in the environment"));
    }
    if !missing.is_empty() {
        return Err(EnvironmentError(format!("cannot replay run {}:\n  {}", record.run_id, missing.join("\n  "))).into());
    }

    let replay_id = session::new_run_id();
    let run_dir = Arc::new(
        RunDir::create(&replay_id).map_err(|e| EnvironmentError(format!("cannot create a temporary folder for the replay: {e}")))?,
    );
    output::replay::print_start(selected.len(), &record.run_id, &record.workflow.name, &replay_id);
    // The same scheduler as a run: the admitted steps have no needs (each is staged from the
    // recorded outputs of its needs), so all may run at once, up to the recorded `--jobs`.
    let jobs = jobs.unwrap_or(record.invocation.jobs).clamp(1, selected.len().max(1));
    let record = Arc::new(record);
    let runner = Container { docker: docker.clone(), run_id: replay_id.clone() };
    let stager = FromStore {
        inner: runner,
        store: store.clone(),
        record: record.clone(),
        inputs: Arc::new(inputs),
        run_dir: run_dir.clone(),
        secrets: Arc::new(secrets),
    };
    let executor = Arc::new(Compare { inner: stager, store: store.clone(), record: record.clone(), verdicts: Default::default() });
    let config = SchedulerConfig { jobs, budget, keep_going: true };
    scheduler::run(&plan, executor.clone(), config, EventSink::null(), cancel.clone()).await;
    let mut verdicts = executor.take_verdicts();
    // Every container of the replay is gone before we report, whatever happened.
    let _ = cleanup::remove_run(docker.daemon(), &replay_id).await;
    if cancel.is_cancelled() {
        output::replay::print_cancelled();
        return Ok(exit::INTERRUPTED);
    }

    let verdicts: Vec<(String, Verdict)> = selected
        .iter()
        .map(|step| {
            let verdict = verdicts.remove(&step.name).unwrap_or_else(|| Verdict::Failed("the replay task stopped".into()));
            (step.name.clone(), verdict)
        })
        .collect();
    output::replay::print_verdicts(&verdicts);
    let differ = verdicts.iter().filter(|(_, v)| *v != Verdict::Reproduced).count();
    Ok(if differ == 0 { exit::OK } else { exit::STEP_FAILED })
}

/// Under a policy with `image_prefixes`, the image a step runs must carry a tag the policy
/// allows: the recorded reference is the record's word, the image ID is what runs (an edited
/// reference could otherwise pass a forbidden image off as an allowed one). An untagged image
/// (its tag moved on) is refused too. Engine-built images are checked by [`claimed_build`].
async fn image_not_allowed(docker: &DockerExecutor, step: &StepRecord, policy: &dsl::policy::Policy) -> Option<String> {
    let prefixes = policy.image_prefixes()?;
    let (records::ImageRef::Reference(_), Some(image)) = (&step.definition.image, &step.image) else { return None };
    // A missing image is reported with the other missing things (exit 3).
    let inspected = docker.daemon().inspect_image(image.id.as_str()).await.ok()??;
    let tags = inspected.repo_tags;
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
    let (records::ImageRef::Built(name), Some(image)) = (&step.definition.image, &step.image) else { return None };
    let inspected = docker.daemon().inspect_image(image.id.as_str()).await.ok()??;
    let label = inspected.config.labels.and_then(|l| l.get(images::LABEL_IMAGE).cloned());
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
            if docker.image_id(image.id.as_str()).await.is_err() {
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
