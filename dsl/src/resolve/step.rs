//! One step under `steps:`: its command, inputs, outputs, needs, env and secrets read, and its
//! settings layered (built-in < `defaults:` < `profile:` < its own keys).

use std::collections::BTreeMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::caches;
use super::settings::{Layer, Val};
use crate::ir::ImageDef;
use crate::ir::{Command, ImageRef, Span, Step};
use crate::policy::{Ask, Asked};
use crate::validate::{self, StepSpans};
use crate::yaml::reader::Reader;
use crate::{bounds, suggest};

const STEP_KEYS: &[&str] = &[
    "image",
    "run",
    "command",
    "inputs",
    "outputs",
    "needs",
    "env",
    "secrets",
    "cache",
    "caches",
    "profile",
    "limits",
    "network",
    "user",
    "workdir",
    "continue_on_error",
    "runs_on",
];
const PROFILES: &[&str] = &["sandbox", "build"];

/// What every step is resolved against: the workflow's `env`, `defaults:` and images.
pub(super) struct StepCtx<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub defaults: &'a Layer,
    pub images: &'a BTreeMap<String, ImageDef>,
}

/// Parses and resolves one step. Always returns a step (placeholders where values were wrong) so
/// that graph checks still see it and do not report it as unknown.
pub(super) fn step(r: &mut Reader, ctx: &StepCtx, name: String, key_span: Span, node: &Node, asks: &mut Vec<Ask>) -> (Step, StepSpans) {
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
            None => {
                inputs.push(pattern);
                spans.inputs.push(span);
            }
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
    let mut runs_on = Vec::new();
    for (label, span) in list(r, "runs_on") {
        if !crate::ir::is_label(&label) {
            r.error(
                span,
                format!("invalid worker label `{label}`"),
                "not a label",
                "labels are 1 to 64 lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit, e.g. gpu or arm64",
            );
        } else if runs_on.len() == bounds::MAX_LABELS {
            r.error(
                span,
                format!("step `{name}` asks for more than {} worker labels", bounds::MAX_LABELS),
                "too many labels",
                "a step names the few labels a worker must have; describe a machine with one label (e.g. gpu-a100)",
            );
            break;
        } else {
            runs_on.push(label);
        }
    }
    runs_on.sort();
    runs_on.dedup();
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
    let continue_on_error = map.get_node("continue_on_error").and_then(|n| r.bool(n, "`continue_on_error`")).unwrap_or(false);
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
        continue_on_error,
        caches,
        runs_on,
        workdir,
        profile,
        isolation,
        limits,
    };
    (step, spans)
}

/// An `env:` mapping; names must be valid environment variable names.
pub(super) fn env_map(r: &mut Reader, node: &Node) -> BTreeMap<String, String> {
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
