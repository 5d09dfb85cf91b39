//! How a step meets the cache: its key components (from the resolved step, its image identity, its
//! hashed inputs and the output digests of the steps it needs), and the decision "restore from
//! the cache" or "run, because ...". `run`, `plan` and `cache explain` all decide through
//! [`decide`], so what `plan` predicts is what `run` does.
//!
//! No Docker here; the store is read, never written (runs write through `run.rs`).

use cache::{ActionKey, InputEntry, KeyComponents, Manifest, Reason, Store, UpstreamEntry, CACHE_FORMAT_VERSION};

/// The key components of `step`. `inputs` are the hashed input files of the step (sorted);
/// `upstream` the output digest of each direct need. Secret values never enter: names only.
pub fn components(
    step: &dsl::Step,
    image: &cache::ImageIdentity,
    inputs: Vec<InputEntry>,
    mut upstream: Vec<UpstreamEntry>,
) -> KeyComponents {
    upstream.sort_by(|a, b| a.step.cmp(&b.step));
    let mut secrets = step.secrets.clone();
    secrets.sort();
    KeyComponents {
        format: CACHE_FORMAT_VERSION,
        image: image.clone(),
        command: step.command.argv(),
        env: step.env.clone(),
        workdir: step.workdir.clone(),
        user: step.isolation.user.to_string(),
        network: step.isolation.network.as_str().to_string(),
        outputs: step.outputs.clone(),
        secrets,
        inputs,
        upstream,
    }
}

/// The input entries of one step (`selected`, sorted) picked from the hashes of the whole tree
/// (`hashed`, sorted by path): one merge pass over the two sorted lists.
pub fn step_inputs(selected: &[String], hashed: &[InputEntry]) -> Vec<InputEntry> {
    let mut out = Vec::with_capacity(selected.len());
    let mut all = hashed.iter().peekable();
    for path in selected {
        while all.next_if(|e| e.path < *path).is_some() {}
        if let Some(entry) = all.next_if(|e| e.path == *path) {
            out.push(entry.clone());
        }
    }
    out
}

/// What happens to a step.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Its key has an entry: restore it, create no container.
    Cached(Box<Manifest>),
    /// It runs, for these reasons (never empty).
    Run(Vec<Reason>),
}

/// Cached or run, and why. `key` is `components`' key (computed once by the caller: for a step
/// with many inputs it is the costly part); `force` is `--no-cache`.
pub fn decide(store: &Store, workflow: &str, step: &dsl::Step, components: &KeyComponents, key: &ActionKey, force: bool) -> Decision {
    if !step.cache {
        return Decision::Run(vec![Reason::CacheDisabled]);
    }
    if force {
        return Decision::Run(vec![Reason::NoCacheFlag]);
    }
    if let Some(manifest) = store.get(key) {
        return Decision::Cached(Box::new(manifest));
    }
    Decision::Run(why_miss(store, workflow, &step.name, components))
}

/// Whether a local miss of `step` may be looked up in the remote cache: its cache is on and
/// `--no-cache` (`force`) was not given (the remote cache is a second store, bypassed alike).
pub fn remote_may_hit(step: &dsl::Step, force: bool) -> bool {
    step.cache && !force
}

/// Why `components` has no entry: what changed since the step's last successful run.
pub fn why_miss(store: &Store, workflow: &str, step: &str, components: &KeyComponents) -> Vec<Reason> {
    match store.last(workflow, step) {
        None => vec![Reason::NeverRun],
        Some(previous) => {
            let reasons = components.diff(&previous);
            if reasons.is_empty() {
                vec![Reason::EntryMissing]
            } else {
                reasons
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::Digest;

    #[test]
    fn step_inputs_picks_the_selected_entries_in_order() {
        let entry = |p: &str| InputEntry { path: p.into(), mode: 0o644, digest: Digest::of(p.as_bytes()) };
        let hashed: Vec<InputEntry> = ["a", "b/c", "b/d", "e"].iter().map(|p| entry(p)).collect();
        let pick = |sel: &[&str]| -> Vec<String> {
            let sel: Vec<String> = sel.iter().map(|s| s.to_string()).collect();
            step_inputs(&sel, &hashed).into_iter().map(|e| e.path).collect()
        };
        assert_eq!(pick(&["b/c", "e"]), ["b/c", "e"]);
        assert_eq!(pick(&["a", "b/c", "b/d", "e"]), ["a", "b/c", "b/d", "e"]);
        assert_eq!(pick(&["a0", "zz"]), Vec::<String>::new());
        assert_eq!(pick(&[]), Vec::<String>::new());
    }

    #[test]
    fn where_a_step_runs_and_how_its_failure_counts_are_not_in_its_key() {
        let image = cache::ImageIdentity::Built { key: Digest::of(b"image") };
        let plain = dsl::Step::new("s", dsl::ImageRef::Reference("i".into()), dsl::Command::Shell("true".into()));
        let mut placed = plain.clone();
        placed.runs_on = vec!["gpu".into(), "x86".into()];
        placed.continue_on_error = true;
        placed.caches = vec![dsl::CacheMount { name: "cargo".into(), path: "/home/u/.cargo".into() }];
        let key = |s: &dsl::Step| components(s, &image, vec![], vec![]).key();
        assert_eq!(key(&plain), key(&placed));
    }
}
