//! Before any container starts: every planned step's inputs selected and hashed (one walk, one
//! parallel hashing pass over the union, with the stat cache), every image reference resolved
//! to its ID and identity (pulled if missing), and the lock file checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cache::Store;

use super::StartError;
use crate::caching;
use crate::docker::{DockerExecutor, ImageId};
use crate::error::EnvironmentError;
use crate::executor::StepFailure;
use crate::plan::Plan;
use crate::workspace::SourceTree;

/// What `run`, `plan` and `cache explain` need to know about each planned step before deciding:
/// its selected input files, hashed, and its image reference and ID.
///
/// Steps with the same `inputs` patterns share one selection and one hashed list (a matrix or a
/// workflow of many steps over one source tree selects and picks once, not once per step).
pub struct Prepared {
    pub inputs: HashMap<String, Arc<Vec<String>>>,
    pub hashed: HashMap<String, Arc<Vec<cache::InputEntry>>>,
    pub images: HashMap<String, String>,
    pub image_ids: HashMap<String, ImageId>,
    /// Step name -> the identity its image enters its key as (registry digest, else local ID).
    pub image_identities: HashMap<String, cache::ImageIdentity>,
    /// Names under `images:` the planned steps use; built by `start_image_builds`.
    pub built: std::collections::BTreeSet<String>,
}

/// Select and hash every step's inputs (one walk, one parallel hashing pass over the union, with
/// the stat cache), and resolve every image to its ID. Errors here stop the run before any
/// container starts.
/// `progress` gets the lines of base images' pulls.
pub async fn prepare(docker: &DockerExecutor, store: &Store, plan: &Plan, progress: images::LogFn<'_>) -> Result<Prepared, StartError> {
    let workflow = &plan.workflow;
    let t = Instant::now();
    // The stat cache (large for a large tree) loads while the tree is walked.
    let (root, cache_dir) = (workflow.dir.clone(), store.dir().to_path_buf());
    let stat = tokio::task::spawn_blocking(move || cache::hash::StatCache::load(&cache_dir, &root));
    let tree = SourceTree::scan(&workflow.dir)?;
    tracing::debug!(elapsed = ?t.elapsed(), "scanned the workflow folder");
    // One selection per distinct list of patterns: `selections[i]`, and each step's `i`.
    let mut selections: Vec<Arc<Vec<String>>> = Vec::new();
    let mut by_patterns: HashMap<&[String], usize> = HashMap::new();
    let mut selection_of: Vec<(String, usize)> = Vec::new();
    let mut images = HashMap::new();
    let mut image_ids = HashMap::new();
    let mut image_identities = HashMap::new();
    let mut resolved: HashMap<String, (ImageId, cache::ImageIdentity)> = HashMap::new();
    let mut built = std::collections::BTreeSet::new();
    for planned in &plan.steps {
        let step = &planned.step;
        let i = match by_patterns.get(step.inputs.as_slice()) {
            Some(&i) => i,
            None => {
                let selected = tree.select(&step.name, &step.inputs).map_err(|e| super::inputs::input_error(workflow, &tree, e))?;
                selections.push(Arc::new(selected));
                by_patterns.insert(&step.inputs, selections.len() - 1);
                selections.len() - 1
            }
        };
        selection_of.push((step.name.clone(), i));
        match &step.image {
            dsl::ImageRef::Reference(image) => {
                if !resolved.contains_key(image) {
                    // Found locally, or pulled from its registry (with progress).
                    let builder = images::Builder::new(docker.daemon().clone());
                    let found = builder.resolve_base(image, progress).await.map_err(|e| match StepFailure::from(e) {
                        StepFailure::Environment(m) => StartError::Environment(EnvironmentError(m)),
                        other => StartError::ImageFailed(other.to_string()),
                    })?;
                    let identity = identity_of(image, &found);
                    resolved.insert(image.clone(), (found.id, identity));
                }
                let (id, identity) = resolved[image].clone();
                image_ids.insert(step.name.clone(), id);
                image_identities.insert(step.name.clone(), identity);
                images.insert(step.name.clone(), image.clone());
            }
            // Built by `start_image_builds` once the run has started (its output is part of it).
            dsl::ImageRef::Built(name) => {
                built.insert(name.clone());
            }
        }
    }

    tracing::debug!(elapsed = ?t.elapsed(), "selected inputs and resolved images");
    // The union of every step's selection, hashed once. Selections are sorted, so sorting and
    // deduplicating references is cheap even for 100,000 files.
    let mut union: Vec<&String> = selections.iter().flat_map(|s| s.iter()).collect();
    union.sort_unstable();
    union.dedup();
    let all: Vec<String> = union.into_iter().cloned().collect();
    check_lock(docker, workflow).await?;
    let mut stat = stat.await.map_err(|e| EnvironmentError(format!("cannot load the stat cache: {e}")))?;
    tracing::debug!(elapsed = ?t.elapsed(), "loaded the stat cache");
    let root = workflow.dir.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let entries = cache::hash::hash_inputs(&root, &all, &mut stat)?;
        tracing::debug!(elapsed = ?t.elapsed(), files_read = cache::hash::files_read(&stat), "hashed the inputs");
        // A stat cache that cannot be saved only costs a re-hash next time.
        let _ = stat.save();
        tracing::debug!(elapsed = ?t.elapsed(), "saved the stat cache");
        // Freeing 100,000 entries takes longer than using them did: not on the critical path.
        std::thread::spawn(move || drop(stat));
        Ok::<_, std::io::Error>(entries)
    })
    .await
    .map_err(|e| EnvironmentError(format!("cannot hash the inputs: {e}")))?
    .map_err(|e| EnvironmentError(format!("cannot read the inputs under {}: {e}", workflow.dir.display())))?;
    // Picked once per distinct selection, then shared by every step using it.
    let picked: Vec<Arc<Vec<cache::InputEntry>>> = selections.iter().map(|s| Arc::new(caching::step_inputs(s, &entries))).collect();
    let hashed = selection_of.iter().map(|(step, i)| (step.clone(), picked[*i].clone())).collect();
    let inputs = selection_of.into_iter().map(|(step, i)| (step, selections[i].clone())).collect();
    tracing::debug!(elapsed = ?t.elapsed(), "picked each step's inputs");
    std::thread::spawn(move || drop((tree, entries)));
    Ok(Prepared { inputs, hashed, images, image_ids, image_identities, built })
}

/// What a pulled image enters keys as: its registry digest (the same on every machine that
/// pulled it), else, for an image with none (imported, built by another tool), its local ID.
pub fn identity_of(reference: &str, resolved: &docker::ResolvedImage) -> cache::ImageIdentity {
    match resolved.repo_digest(reference).and_then(|d| cache::Digest::parse_prefixed(&d).ok()) {
        Some(digest) => cache::ImageIdentity::Registry { digest },
        None => cache::ImageIdentity::Local { id: resolved.id.clone() },
    }
}

/// With an `engine.lock` beside the workflow, every base reference must resolve to its pinned ID.
async fn check_lock(docker: &DockerExecutor, workflow: &dsl::Workflow) -> Result<(), StartError> {
    let Some(lock) = crate::lock::read(&workflow.dir)? else { return Ok(()) };
    let resolved = resolve_bases(docker, workflow).await?;
    crate::lock::check(&lock, &resolved.into_iter().map(|(reference, id)| (reference, id.to_string())).collect())?;
    Ok(())
}

/// Every base reference of the workflow and the image ID it resolves to now.
pub async fn resolve_bases(
    docker: &DockerExecutor,
    workflow: &dsl::Workflow,
) -> Result<std::collections::BTreeMap<String, ImageId>, EnvironmentError> {
    let mut resolved = std::collections::BTreeMap::new();
    for reference in crate::lock::base_references(workflow) {
        let id = docker.image_id(&reference).await?;
        resolved.insert(reference, id);
    }
    Ok(resolved)
}
