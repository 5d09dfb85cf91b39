//! Which remote lookups can start with the run (`RemoteCache::prefetch`), before the scheduler
//! gives any step a job slot: the keys of the planned steps that need no other step and run on
//! an image reference (their whole key is known once `prepare` has hashed the inputs and resolved
//! the images), when the local store lacks them. Keys are computed here exactly as the caching
//! layer computes them (`crate::caching::components`), so the caching layer's lookup of the same
//! step finds the prefetch's. Steps on an image under `images:` are left to the caching layer
//! (their identity is known once their build has started); so are steps with needs (their key
//! depends on their needs' outputs).
//!
//! No Docker and no network here; the store is read (blocking: call it off the async workers).

use std::collections::HashMap;
use std::sync::Arc;

use cache::{ActionKey, ImageIdentity, InputEntry, Store};

use crate::caching;
use crate::plan::Plan;

/// The (key, step) pairs worth looking up in the remote cache at the start of a run: each planned
/// step without needs, whose cache is on (and `no_cache` is off), keyed from its image identity
/// (`identities`, by step) and hashed inputs (`inputs`, by step), that `store` has no entry for.
pub fn wanted(
    plan: &Plan,
    identities: &HashMap<String, ImageIdentity>,
    inputs: &HashMap<String, Arc<Vec<InputEntry>>>,
    store: &Store,
    no_cache: bool,
) -> Vec<(ActionKey, String)> {
    plan.steps
        .iter()
        .filter(|p| p.needs.is_empty() && caching::remote_may_hit(&p.step, no_cache))
        .filter(|p| matches!(p.step.image, dsl::ImageRef::Reference(_)))
        .filter_map(|p| {
            let step = &p.step;
            let image = identities.get(&step.name)?;
            let hashed = inputs.get(&step.name).map(|i| i.as_ref().clone()).unwrap_or_default();
            let key = caching::components(step, image, hashed, Vec::new()).key();
            store.get(&key).is_none().then(|| (key, step.name.clone()))
        })
        .collect()
}
