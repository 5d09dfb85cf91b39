//! The YAML front end (version 1 of the workflow format). Owns the YAML layer (marked-yaml, which
//! keeps a span on every node) so no other module depends on it. Walks the node tree by hand so
//! every problem points at the node that caused it, resolves defaults/profiles/env into the IR,
//! and hands whole-workflow checks to [`crate::validate`] and [`crate::policy`].
//!
//! This module must not stop at the first problem: it collects them all, sorted by position.

mod caches;
mod image_checks;
mod policy_file;
mod reader;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use crate::ir::{Command, CopySpec, ImageDef, ImageRef, SourceFile, Span, Stage, Step, Workflow};
use crate::policy::{Ask, Asked, Policy};
use crate::validate::{self, StepSpans};
use crate::{bounds, suggest, Diagnostic, LoadError};

pub(crate) use policy_file::load_policy;
use reader::Reader;
use settings::{Layer, Val};

const TOP_KEYS: &[&str] = &["version", "name", "env", "defaults", "images", "steps"];
const DEFAULTS_KEYS: &[&str] = &["image", "network", "user", "workdir", "limits"];
const STEP_KEYS: &[&str] = &[
    "image", "run", "command", "inputs", "outputs", "needs", "env", "secrets", "cache", "caches", "profile", "limits", "network", "user",
    "workdir",
];
const IMAGE_KEYS: &[&str] = &["stages", "dockerfile", "context", "network"];
const STAGE_KEYS: &[&str] = &["name", "from", "env", "workdir", "user", "copy", "run", "network", "limits"];
const COPY_KEYS: &[&str] = &["from", "src", "dst"];
const PROFILES: &[&str] = &["sandbox", "build"];

/// Diagnostics shown for one file at most.
const MAX_DIAGNOSTICS: usize = 100;

/// Ends a load: the diagnostics sorted by position (duplicates dropped), or the value.
pub(crate) fn finish<T>(path: &Path, mut diags: Vec<Diagnostic>, value: T) -> Result<T, LoadError> {
    if diags.is_empty() {
        return Ok(value);
    }
    diags.sort_by_key(|d| (d.span.offset, d.span.len));
    diags.dedup_by(|a, b| a.span == b.span && a.message == b.message);
    // A hostile file can have a problem on every line: the first ones are enough.
    if diags.len() > MAX_DIAGNOSTICS {
        let mut more = diags[MAX_DIAGNOSTICS].clone();
        let capped = if diags.len() >= bounds::MAX_COLLECTED { "at least " } else { "" };
        more.message = format!("... and {capped}{} more errors, not shown", diags.len() - MAX_DIAGNOSTICS);
        more.help = Some("fix the errors above first".into());
        more.related.clear();
        diags.truncate(MAX_DIAGNOSTICS);
        diags.push(more);
    }
    Err(LoadError::Invalid { path: path.to_path_buf(), diagnostics: diags })
}

/// The YAML node tree of `text`, parsed once; syntax errors as diagnostics.
fn parse(path: &Path, text: &str) -> Result<(Arc<SourceFile>, Node), LoadError> {
    let src = Arc::new(SourceFile { path: path.to_path_buf(), text: text.to_string() });
    let mut r = Reader::new(&src);
    match r.parse() {
        Some(root) => Ok((src, root)),
        None => finish(path, r.diags, ()).and_then(|()| Err(no_tree(path))),
    }
}

/// A parser gives no tree only with a diagnostic; this covers the impossible case without a
/// panic (shared with the DSL front end).
pub(crate) fn no_tree(path: &Path) -> LoadError {
    LoadError::Invalid { path: path.to_path_buf(), diagnostics: Vec::new() }
}

pub(crate) fn load(path: &Path, text: &str, policy: &Policy) -> Result<Workflow, LoadError> {
    let (src, root) = parse(path, text)?;
    resolve(path, src, root, policy)
}

/// The YAML-shaped node tree of a YAML workflow, after checking that the file loads.
pub(crate) fn tree(path: &Path, text: &str) -> Result<Node, LoadError> {
    let (src, root) = parse(path, text)?;
    resolve(path, src, root.clone(), &Policy::default())?;
    Ok(root)
}

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
    let env = top.get_node("env").map(|n| env_map(&mut r, n)).unwrap_or_default();

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
                Some((k.as_str().to_string(), image(&mut r, &dir, k.as_str(), v, &mut asks, &mut dockerfiles)?))
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
                    let (step, step_spans) = step(&mut r, &ctx, name, key_span, node, &mut asks);
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
    finish(path, diags, Workflow { name, source: src.clone(), dir, images, steps })
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
    Workflow { name: String::new(), source: src.clone(), dir: PathBuf::new(), images: BTreeMap::new(), steps: Vec::new() }
}

/// `version: 1` is required (workflow and policy files alike).
pub(crate) fn check_version(r: &mut Reader, top: &MarkedMappingNode, what: &str) {
    match top.get_node("version") {
        None => {
            let span = top.keys().next().map(|k| r.scalar_span(k)).unwrap_or_default();
            r.error(
                span,
                format!("missing `version` in the {what} file"),
                "expected `version: 1` before this",
                "add `version: 1` at the top; this engine supports version 1",
            );
        }
        Some(n) => {
            if let Some((v, span)) = r.string(n, "`version`") {
                if v != "1" {
                    r.error(span, format!("unsupported {what} version `{v}`"), "unsupported version", "this engine supports version 1");
                }
            }
        }
    }
}

/// Step, image and cache names become container labels, volume and folder names; `false` when
/// reported as invalid.
/// Step names may also end in a matrix suffix `[v1,v2]` (what the DSL's matrix produces), each
/// value following the same rule; the engine maps `[`, `]` and `,` to `-` in container names.
fn check_name(r: &mut Reader, name: &str, span: Span, what: &str) -> bool {
    let plain = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    let ok = match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
        Some((base, values)) if what == "step" => plain(base) && values.split(',').all(plain),
        _ => plain(name),
    };
    let chars = name.chars().count();
    if ok && chars > bounds::MAX_NAME_CHARS {
        // Names become container labels, folder and log file names: longer ones fail at run.
        r.error(
            span,
            format!(
                "{what} name `{}...` is {chars} characters long, more than the maximum of {}",
                name.chars().take(32).collect::<String>(),
                bounds::MAX_NAME_CHARS
            ),
            "too long",
            format!("{what} names (matrix values included) have at most {} characters", bounds::MAX_NAME_CHARS),
        );
        return false;
    }
    if !ok {
        r.error(
            span,
            format!("invalid {what} name `{name}`"),
            "invalid name",
            format!("{what} names start with a letter or digit and contain only letters, digits, `_`, `.` and `-`"),
        );
    }
    ok
}

struct StepCtx<'a> {
    env: &'a BTreeMap<String, String>,
    defaults: &'a Layer,
    images: &'a BTreeMap<String, ImageDef>,
}

/// Parses and resolves one step. Always returns a step (placeholders where values were wrong) so
/// that graph checks still see it and do not report it as unknown.
fn step(r: &mut Reader, ctx: &StepCtx, name: String, key_span: Span, node: &Node, asks: &mut Vec<Ask>) -> (Step, StepSpans) {
    let mut spans = StepSpans::default();
    let empty = MarkedMappingNode::new_empty(marked_yaml::Span::new_blank());
    let map = match r.mapping(node, &format!("step `{name}`")) {
        Some(m) => m,
        None => &empty,
    };
    r.check_keys(map, STEP_KEYS, &format!("step `{name}`"));
    let list = |r: &mut Reader, key: &str| -> Vec<(String, Span)> {
        map.get_node(key).and_then(|n| r.string_list(n, &format!("`{key}`"))).unwrap_or_default()
    };

    let command = match (map.get_node("run"), map.get_node("command")) {
        (Some(run), None) => Command::Shell(r.string(run, "`run`").map(|(s, _)| s).unwrap_or_default()),
        (None, Some(cmd)) => {
            let argv = r.string_list(cmd, "`command`").unwrap_or_default();
            if argv.is_empty() {
                let span = r.span(cmd);
                r.error(span, "`command` is empty", "empty", "give the argv to run, e.g. `command: [make, test]`");
            }
            Command::Argv(argv.into_iter().map(|(s, _)| s).collect())
        }
        (Some(_), Some(cmd)) => {
            let span = r.span(cmd);
            r.error(
                span,
                format!("step `{name}` has both `run` and `command`"),
                "second command",
                "use `run` (a shell script) or `command` (an argv list), not both",
            );
            Command::Shell(String::new())
        }
        (None, None) => {
            r.error(
                key_span,
                format!("step `{name}` has neither `run` nor `command`"),
                "nothing to run",
                "add `run: <shell script>` or `command: [argv, ...]`",
            );
            Command::Shell(String::new())
        }
    };

    let mut inputs = Vec::new();
    for (pattern, span) in list(r, "inputs") {
        match validate::relative_path_problem(&pattern) {
            Some(problem) => r.error(
                span,
                format!("input pattern `{pattern}` {problem}"),
                "invalid input",
                "inputs are glob patterns relative to the workflow's directory, without `..`",
            ),
            None => inputs.push(pattern),
        }
    }
    let mut outputs = Vec::new();
    for (path, span) in list(r, "outputs") {
        match validate::relative_path_problem(&path) {
            Some(problem) => r.error(
                span,
                format!("output path `{path}` {problem}"),
                "invalid output",
                "outputs are paths relative to /workspace, without `..`, e.g. build/app",
            ),
            None => {
                outputs.push(path);
                spans.outputs.push(span);
            }
        }
    }
    let mut needs = Vec::new();
    for (need, span) in list(r, "needs") {
        needs.push(need);
        spans.needs.push(span);
    }
    let mut secrets = Vec::new();
    for (secret, span) in list(r, "secrets") {
        if is_env_name(&secret) {
            secrets.push(secret);
        } else {
            r.error(
                span,
                format!("invalid secret name `{secret}`"),
                "not an environment variable name",
                "secrets name host environment variables: letters, digits and `_`, not starting with a digit",
            );
        }
    }
    let mut env = ctx.env.clone();
    if let Some(n) = map.get_node("env") {
        env.extend(env_map(r, n));
    }
    // What execve accepts: each string, and the environment as a whole.
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_bytes > bounds::MAX_ENV_BYTES {
        r.error(
            key_span,
            format!(
                "the environment of step `{name}` is {} KiB, more than the maximum of {} KiB",
                env_bytes >> 10,
                bounds::MAX_ENV_BYTES >> 10
            ),
            "environment too large",
            "the kernel refuses to start a process with more; pass large data as an input file",
        );
    }
    let arg_strings: Vec<&str> = match &command {
        Command::Shell(script) => vec![script.as_str()],
        Command::Argv(argv) => argv.iter().map(String::as_str).collect(),
    };
    if let Some(long) = arg_strings.iter().find(|a| a.len() > bounds::MAX_ARG_BYTES) {
        let span = map.get_node("run").or(map.get_node("command")).map(|n| r.span(n)).unwrap_or(key_span);
        r.error(
            span,
            format!("the command of step `{name}` has a string of {} KiB, more than the maximum of 128 KiB", long.len() >> 10),
            "too long",
            "the kernel refuses longer arguments; put a long script in an input file and run that",
        );
    }
    let cache = map.get_node("cache").and_then(|n| r.bool(n, "`cache`")).unwrap_or(true);
    let caches = map.get_node("caches").map(|n| caches::read(r, &name, n)).unwrap_or_default();

    let mut profile = None;
    let mut profile_layer = Layer::default();
    if let Some((p, span)) = map.get_node("profile").and_then(|n| r.string(n, "`profile`")) {
        match Layer::profile(&p, span) {
            Some(layer) => profile_layer = layer,
            None => {
                let hint = suggest::hint(&p, PROFILES.iter().copied());
                r.error(
                    span,
                    format!("unknown profile `{p}`{hint}"),
                    "unknown profile",
                    format!("valid profiles: {}", PROFILES.join(", ")),
                );
            }
        }
        profile = Some(p);
    }
    let mut own = Layer::default();
    own.read(r, map);
    let resolved = Layer::builtin().over(ctx.defaults).over(&profile_layer).over(&own);

    let image = match &resolved.image {
        Some(Val { value, .. }) if ctx.images.contains_key(value) => ImageRef::Built(value.clone()),
        Some(Val { value, span }) => {
            asks.push(Ask {
                who: format!("step `{name}`"),
                asked: Asked::Image(value.clone()),
                span: span.unwrap_or(key_span),
                builtin: false,
            });
            ImageRef::Reference(value.clone())
        }
        None => {
            r.error(
                key_span,
                format!("step `{name}` has no image"),
                "no image",
                "set `image:` on the step or `defaults.image` for the workflow",
            );
            ImageRef::Reference(String::new())
        }
    };
    let limits = resolved.limits();
    let isolation = resolved.isolation();
    resolved.asks(&format!("step `{name}`"), key_span, asks);
    let workdir = resolved.workdir.map(|w| w.value).unwrap_or_else(|| "/workspace".into());

    let step = Step {
        name,
        span: key_span,
        image,
        command,
        inputs,
        outputs,
        needs,
        env,
        secrets,
        cache,
        caches,
        workdir,
        profile,
        isolation,
        limits,
    };
    (step, spans)
}

/// An `env:` mapping; names must be valid environment variable names.
fn env_map(r: &mut Reader, node: &Node) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v, span) in r.string_map(node, "`env`") {
        if !is_env_name(&k) {
            r.error(
                span,
                format!("invalid environment variable name `{k}`"),
                "invalid name",
                "names contain letters, digits and `_`, not starting with a digit",
            );
        } else if k.len() + v.len() + 1 > bounds::MAX_ARG_BYTES {
            r.error(
                span,
                format!("environment variable `{k}` is {} KiB, more than the maximum of 128 KiB", (k.len() + v.len()) >> 10),
                "too long",
                "the kernel refuses longer entries; pass large data as an input file",
            );
        }
        env.insert(k, v);
    }
    env
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What loading each Dockerfile image found: (image, its references or why it was not read,
/// the span of its `dockerfile:` value).
type Dockerfiles = Vec<(String, Result<Option<image_checks::DockerfileRefs>, String>, Span)>;

/// One entry under `images:`: stages, or a Dockerfile with its context (whose paths are checked
/// and whose Dockerfile is read here, see `image_checks`).
fn image(r: &mut Reader, dir: &Path, name: &str, node: &Node, asks: &mut Vec<Ask>, dockerfiles: &mut Dockerfiles) -> Option<ImageDef> {
    let what = format!("image `{name}`");
    let map = r.mapping(node, &what)?;
    r.check_keys(map, IMAGE_KEYS, &what);
    match (map.get_node("stages"), map.get_node("dockerfile")) {
        (Some(stages), None) => {
            if map.get_node("context").is_some() {
                let span = r.span(node);
                r.error(
                    span,
                    format!("{what} has `context` but no `dockerfile`"),
                    "context without dockerfile",
                    "`context` belongs with `dockerfile`; stages copy from the workflow's directory",
                );
            }
            if let Some(n) = map.get_node("network") {
                let span = r.span(n);
                r.error(
                    span,
                    format!("{what} has `network` but no `dockerfile`"),
                    "network without dockerfile",
                    "stages each say their own `network:`",
                );
            }
            Some(ImageDef::Stages(image_stages(r, name, stages, asks)))
        }
        (None, Some(df)) => {
            let dockerfile = r.string(df, "`dockerfile`")?;
            let context = match map.get_node("context") {
                Some(c) => r.string(c, "`context`")?,
                None => (".".into(), dockerfile.1),
            };
            let (network, network_span) = match map.get_node("network") {
                Some(n) => {
                    let span = r.span(n);
                    (settings::network(r, n)?, Some(span))
                }
                None => (crate::ir::Network::None, None),
            };
            asks.push(Ask {
                who: what.clone(),
                asked: Asked::Network(network),
                span: network_span.unwrap_or(dockerfile.1),
                builtin: network_span.is_none(),
            });
            asks.push(Ask { who: what.clone(), asked: Asked::DockerfileBuild, span: dockerfile.1, builtin: false });
            let found = image_checks::dockerfile_paths(r, dir, name, &dockerfile, &context, network);
            dockerfiles.push((name.to_string(), found, dockerfile.1));
            Some(ImageDef::Dockerfile { dockerfile: dockerfile.0, context: context.0, network })
        }
        (Some(_), Some(df)) => {
            let span = r.span(df);
            r.error(
                span,
                format!("{what} has both `stages` and `dockerfile`"),
                "second definition",
                "an image is either a list of `stages` or a `dockerfile` with its `context`",
            );
            None
        }
        (None, None) => {
            let span = r.span(node);
            r.error(
                span,
                format!("{what} has neither `stages` nor `dockerfile`"),
                "empty image",
                "give `stages:` (a list) or `dockerfile:` and `context:`",
            );
            None
        }
    }
}

fn image_stages(r: &mut Reader, image: &str, node: &Node, asks: &mut Vec<Ask>) -> Vec<Stage> {
    let message = format!("expected a list of stages for image `{image}`");
    let Some(seq) = r.sequence(node, message, "write `stages:` followed by `- name: ...` entries") else {
        return Vec::new();
    };
    let mut stages: Vec<Stage> = Vec::new();
    // Names seen so far, and the last position of every name (sets, not scans: linear).
    let mut seen = std::collections::HashSet::new();
    let mut earlier: Vec<String> = Vec::new();
    let mut last_at: HashMap<&str, usize> = HashMap::new();
    for (i, item) in seq.iter().enumerate() {
        if let Some(n) = item.as_mapping().and_then(|m| m.get_scalar("name")) {
            last_at.insert(n.as_str(), i);
        }
    }
    for (i, item) in seq.iter().enumerate() {
        let Some(map) = r.mapping(item, &format!("a stage of image `{image}`")) else {
            continue;
        };
        let what = format!("a stage of image `{image}`");
        r.check_keys(map, STAGE_KEYS, &what);
        let span = r.span(item);
        let name = match map.get_node("name").and_then(|n| r.string(n, "`name`")) {
            Some((n, nspan)) => {
                check_name(r, &n, nspan, "stage");
                if seen.contains(&n) {
                    r.error(
                        nspan,
                        format!("duplicate stage name `{n}` in image `{image}`"),
                        "defined again",
                        "stage names must be unique within an image",
                    );
                }
                n
            }
            None => format!("stage-{}", i + 1),
        };
        let from = match map.get_node("from").and_then(|n| r.string(n, "`from`")) {
            Some((from, fspan)) => {
                if from == name {
                    r.error(
                        fspan,
                        format!("stage `{name}` cannot start from itself"),
                        "self reference",
                        "`from` is an image reference or the name of an EARLIER stage",
                    );
                } else if !seen.contains(&from) {
                    if last_at.get(from.as_str()).is_some_and(|&j| j > i) {
                        r.error(
                            fspan,
                            format!("stage `{name}` starts from `{from}`, which comes later"),
                            "later stage",
                            "`from` may only name an earlier stage of the same image",
                        );
                    } else {
                        asks.push(Ask { who: format!("image `{image}`"), asked: Asked::Image(from.clone()), span: fspan, builtin: false });
                    }
                }
                from
            }
            None => {
                r.error(
                    span,
                    format!("stage `{name}` of image `{image}` has no `from`"),
                    "no base image",
                    "add `from:` with an image reference or the name of an earlier stage",
                );
                String::new()
            }
        };
        let env = map.get_node("env").map(|n| env_map(r, n)).unwrap_or_default();
        let workdir = map.get_node("workdir").and_then(|n| r.string(n, "`workdir`")).map(|(w, wspan)| {
            settings::check_workdir(r, &w, wspan);
            w
        });
        let who = format!("image `{image}`, stage `{name}`");
        let user = map.get_node("user").and_then(|n| r.string(n, "`user`")).map(|(u, uspan)| {
            // No `user:` or uid 0 is a root build, which the policy may refuse.
            if settings::parse_user(r, &u, uspan).is_some_and(|p| p.uid == 0) {
                asks.push(Ask { who: who.clone(), asked: Asked::RootBuild, span: uspan, builtin: false });
            }
            u
        });
        if user.is_none() {
            asks.push(Ask { who: who.clone(), asked: Asked::RootBuild, span, builtin: true });
        }
        let network_node = map.get_node("network");
        let network = network_node.and_then(|n| settings::network(r, n)).unwrap_or(crate::ir::Network::None);
        asks.push(Ask {
            who: who.clone(),
            asked: Asked::Network(network),
            span: network_node.map(|n| r.span(n)).unwrap_or(span),
            builtin: network_node.is_none(),
        });
        let limits = image_checks::stage_limits(r, map, &who, span, asks);
        let run = match map.get_node("run") {
            Some(Node::Scalar(s)) => vec![s.as_str().to_string()],
            Some(n) => r.string_list(n, "`run`").unwrap_or_default().into_iter().map(|(s, _)| s).collect(),
            None => Vec::new(),
        };
        let copy_help = "write `copy:` followed by `- { src: ..., dst: ... }` entries";
        let copy = match map.get_node("copy") {
            Some(n) => match r.sequence(n, "expected a list for `copy`", copy_help) {
                Some(items) => items.iter().filter_map(|c| copy_spec(r, c, &earlier, &seen)).collect(),
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        seen.insert(name.clone());
        earlier.push(name.clone());
        stages.push(Stage { name, span, from, env, workdir, user, copy, run, network, limits });
    }
    stages
}

fn copy_spec(r: &mut Reader, node: &Node, earlier: &[String], seen: &std::collections::HashSet<String>) -> Option<CopySpec> {
    let map = r.mapping(node, "a `copy` entry")?;
    r.check_keys(map, COPY_KEYS, "a `copy` entry");
    let span = r.span(node);
    let from = map.get_node("from").and_then(|n| r.string(n, "`from`"));
    if let Some((f, fspan)) = &from {
        if !seen.contains(f) {
            let hint = suggest::hint(f, earlier.iter().map(String::as_str));
            r.error(
                *fspan,
                format!("`copy.from` names `{f}`, which is not an earlier stage of this image{hint}"),
                "not an earlier stage",
                format!("earlier stages: {}", if earlier.is_empty() { "(none)".to_string() } else { earlier.join(", ") }),
            );
        }
    }
    let mut field = |key: &str| match map.get_node(key) {
        Some(n) => r.string(n, &format!("`{key}`")),
        None => {
            r.error(
                span,
                format!("a `copy` entry needs `{key}`"),
                format!("no `{key}`"),
                "write `{ src: <path or glob>, dst: <absolute path> }`, with `from: <stage>` to copy from an earlier stage",
            );
            None
        }
    };
    let src = field("src");
    let dst = field("dst");
    let (src, sspan) = src?;
    if from.is_none() {
        if let Some(problem) = validate::relative_path_problem(&src) {
            r.error(
                sspan,
                format!("copy source `{src}` {problem}"),
                "invalid source",
                "sources without `from` are globs relative to the workflow's directory, without `..`",
            );
        }
    }
    Some(CopySpec { from: from.map(|f| f.0), src, dst: dst?.0 })
}
