//! The resolver: an already-parsed YAML-shaped node tree (from the YAML reader, or lowered from
//! the `.wf` DSL with markers into its own text) becomes the IR. Walks the tree by hand so every
//! problem points at the node that caused it, resolves built-in defaults < `defaults:` <
//! `profile:` < the step's own keys (see [`settings`]), so every `Step` arrives complete, and
//! hands whole-workflow checks to [`crate::validate`] and the operator's [`Policy`].
//!
//! This module must not parse text (the front ends do) and must not stop at the first problem:
//! it collects them all, sorted by position.

mod caches;
mod image;
pub(crate) mod image_checks;
pub(crate) mod names;
pub(crate) mod settings;
mod step;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::Node;

use crate::diagnostic::finish;
use crate::ir::{SourceFile, Workflow};
use crate::policy::Policy;
use crate::validate;
use crate::yaml::reader::Reader;
use crate::{bounds, LoadError};

use names::{check_name, check_version};
use settings::Layer;
use step::StepCtx;

const TOP_KEYS: &[&str] = &["version", "name", "env", "defaults", "images", "steps"];
const DEFAULTS_KEYS: &[&str] = &["image", "network", "user", "workdir", "limits"];

/// Resolves and validates an already-parsed YAML-shaped tree into the IR. Every front end ends
/// here (the DSL builds such a tree with markers into its own text), so validation and messages
/// are the same whatever the syntax.
pub(crate) fn resolve(path: &Path, src: Arc<SourceFile>, root: Node, policy: &Policy) -> Result<Workflow, LoadError> {
    let mut r = Reader::new(&src);
    let Some(top) = r.mapping(&root, "the workflow file") else {
        let span = r.span(&root);
        r.error(span, "the workflow file is empty", "empty", "start with `version: 1` and a `steps:` mapping");
        return finish(path, r.diags, unreachable_workflow(&src));
    };
    r.check_keys(top, TOP_KEYS, "the workflow");
    check_version(&mut r, top, "workflow");

    let name = match top.get_node("name") {
        Some(n) => match r.string(n, "`name`") {
            // It names the workflow in records, cache listings and image repositories.
            Some((s, span)) if s.chars().count() > bounds::MAX_NAME_CHARS || s.chars().any(char::is_control) => {
                r.error(
                    span,
                    format!(
                        "invalid workflow name: {} characters{}",
                        s.chars().count(),
                        if s.chars().any(char::is_control) { ", with control characters" } else { "" }
                    ),
                    "invalid name",
                    format!("a workflow name has at most {} characters and no control characters (newlines, tabs)", bounds::MAX_NAME_CHARS),
                );
                String::new()
            }
            Some((s, _)) => s,
            None => String::new(),
        },
        None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "workflow".into()),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let env = top.get_node("env").map(|n| step::env_map(&mut r, n)).unwrap_or_default();

    let mut defaults = Layer::default();
    if let Some(map) = top.get_node("defaults").and_then(|n| r.mapping(n, "`defaults`")) {
        r.check_keys(map, DEFAULTS_KEYS, "`defaults`");
        defaults.read(&mut r, map);
    }

    let mut asks = Vec::new();
    let mut dockerfiles = Vec::new();
    let images = match top.get_node("images").and_then(|n| r.mapping(n, "`images`")) {
        Some(map) => map
            .iter()
            .filter_map(|(k, v)| {
                let span = r.scalar_span(k);
                check_name(&mut r, k.as_str(), span, "image");
                Some((k.as_str().to_string(), image::image(&mut r, &dir, k.as_str(), v, &mut asks, &mut dockerfiles)?))
            })
            .collect(),
        None => BTreeMap::new(),
    };

    let mut steps = Vec::new();
    let mut spans = Vec::new();
    match top.get_node("steps") {
        None => {
            let span = r.span(&root);
            r.error(span, "the workflow has no `steps`", "no steps here", "add a `steps:` mapping of step name to step");
        }
        Some(n) => {
            let empty_map = matches!(n, Node::Mapping(m) if m.is_empty());
            if empty_map || matches!(n, Node::Scalar(s) if s.is_empty()) {
                let span = r.span(n);
                r.error(span, "`steps` is empty", "no steps", "add at least one step under `steps:`");
            }
            if let Some(map) = r.mapping(n, "`steps`") {
                let ctx = StepCtx { env: &env, defaults: &defaults, images: &images };
                if map.len() > bounds::MAX_STEPS {
                    let span = r.span(n);
                    r.error(
                        span,
                        format!("the workflow has {} steps, more than the maximum of {}", map.len(), bounds::MAX_STEPS),
                        "too many steps",
                        "split the workflow",
                    );
                }
                // Workflow `env` is copied into every step: bound what the copies add up to.
                let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
                let mut resolved = 0usize;
                for (key, node) in map.iter().take(bounds::MAX_STEPS) {
                    let (name, key_span) = (key.as_str().to_string(), r.scalar_span(key));
                    resolved = resolved.saturating_add(env_bytes).saturating_add(node_bytes(node));
                    if resolved > bounds::MAX_RESOLVED_BYTES {
                        r.error(
                            key_span,
                            format!(
                                "the resolved workflow is larger than {} MiB (workflow `env` is copied into every step)",
                                bounds::MAX_RESOLVED_BYTES >> 20
                            ),
                            "size limit reached here",
                            "use a smaller workflow `env`, or fewer steps",
                        );
                        break;
                    }
                    check_name(&mut r, &name, key_span, "step");
                    let (step, step_spans) = step::step(&mut r, &ctx, name, key_span, node, &mut asks);
                    steps.push(step);
                    spans.push(step_spans);
                }
            }
        }
    }
    r.diags.extend(validate::check_graph(&src, &steps, &spans));
    // A value written once in `defaults:` is asked for by every step; report it once.
    let mut reported = std::collections::HashSet::new();
    for ask in &asks {
        if let Some(d) = policy.check(&src, ask) {
            if reported.insert((ask.span, std::mem::discriminant(&ask.asked))) {
                r.push(d);
            }
        }
    }
    // What a Dockerfile reads is checked in the Dockerfile, when the policy restricts images.
    if policy.image_prefixes().is_some() {
        for (name, found, span) in &dockerfiles {
            match found {
                Ok(Some(df)) => r.diags.extend(image_checks::check_references(policy, name, df)),
                Ok(None) => {}
                Err(why) => r.error(*span, format!("image `{name}`: {why}, so the images it reads cannot be checked against the policy"), "cannot be checked", "the policy restricts images (`image_prefixes`): the Dockerfile must be a readable regular file inside the workflow's folder"),
            }
        }
    }
    let diags = std::mem::take(&mut r.diags);
    let input_spans = steps.iter().zip(spans).map(|(s, sp)| (s.name.clone(), sp.inputs)).collect();
    finish(path, diags, Workflow { name, source: src.clone(), dir, images, steps, input_spans, modules: Vec::new() })
}

/// The text a node holds (keys and scalars), counted without recursion.
fn node_bytes(node: &Node) -> usize {
    let mut stack = vec![node];
    let mut total = 0usize;
    while let Some(n) = stack.pop() {
        match n {
            Node::Scalar(s) => total = total.saturating_add(s.as_str().len()),
            Node::Sequence(seq) => stack.extend(seq.iter()),
            Node::Mapping(m) => {
                for (k, v) in m.iter() {
                    total = total.saturating_add(k.as_str().len());
                    stack.push(v);
                }
            }
        }
    }
    total
}

/// The value `finish` never returns when there are diagnostics; keeps the signature simple.
pub(crate) fn unreachable_workflow(src: &Arc<SourceFile>) -> Workflow {
    Workflow {
        name: String::new(),
        source: src.clone(),
        dir: PathBuf::new(),
        images: BTreeMap::new(),
        steps: Vec::new(),
        input_spans: BTreeMap::new(),
        modules: Vec::new(),
    }
}
