//! One entry under `images:`: a list of `stages` (each with its `copy` entries), or a
//! `dockerfile:` with its `context:` (whose paths and references are checked by
//! [`super::image_checks`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use marked_yaml::Node;

use super::names::check_name;
use super::step::env_map;
use super::{image_checks, settings};
use crate::ir::{CopySpec, ImageDef, Span, Stage};
use crate::policy::{Ask, Asked};
use crate::suggest;
use crate::validate;
use crate::yaml::reader::Reader;

const IMAGE_KEYS: &[&str] = &["stages", "dockerfile", "context", "network", "args", "target"];
const STAGE_KEYS: &[&str] = &["name", "from", "env", "workdir", "user", "copy", "run", "network", "limits"];
const COPY_KEYS: &[&str] = &["from", "src", "dst"];

/// What loading each Dockerfile image found: (image, its references or why it was not read,
/// the span of its `dockerfile:` value).
pub(super) type Dockerfiles = Vec<(String, Result<Option<image_checks::DockerfileRefs>, image_checks::Unreadable>, Span)>;

/// One entry under `images:`: stages, or a Dockerfile with its context (whose paths are checked
/// and whose Dockerfile is read here, see `image_checks`).
pub(super) fn image(
    r: &mut Reader,
    dir: &Path,
    name: &str,
    node: &Node,
    asks: &mut Vec<Ask>,
    dockerfiles: &mut Dockerfiles,
) -> Option<ImageDef> {
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
            for key in ["args", "target"] {
                if let Some(n) = map.get_node(key) {
                    let span = r.span(n);
                    r.error(
                        span,
                        format!("{what} has `{key}` but no `dockerfile`"),
                        format!("{key} without dockerfile"),
                        "`args` and `target` belong with `dockerfile`; stages say `env:` and `from:`",
                    );
                }
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
            let args = match map.get_node("args") {
                Some(n) => build_args(r, n),
                None => BTreeMap::new(),
            };
            let target = match map.get_node("target") {
                Some(n) => Some(build_target(r, n)?),
                None => None,
            };
            Some(ImageDef::Dockerfile { dockerfile: dockerfile.0, context: context.0, network, args, target })
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

/// `args:`: the build arguments (`--build-arg NAME=value`), names as the builder takes them.
fn build_args(r: &mut Reader, node: &Node) -> BTreeMap<String, String> {
    let mut args = BTreeMap::new();
    for (k, v, span) in r.string_map(node, "`args`") {
        // As a Dockerfile can use them (`$NAME`), and as the DSL can write them as keys.
        let valid = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            r.error(
                span,
                format!("invalid build argument name `{k}`"),
                "invalid name",
                "names contain letters, digits and `_`, not starting with a digit",
            );
        } else if k.len() + v.len() > crate::bounds::MAX_ARG_BYTES {
            r.error(span, format!("build argument `{k}` is longer than 128 KiB"), "too long", "pass large data as a context file");
        }
        args.insert(k, v);
    }
    args
}

/// `target:`: the stage to build (`--target`), a stage name as `FROM ... AS name` gives it.
fn build_target(r: &mut Reader, node: &Node) -> Option<String> {
    let (target, span) = r.string(node, "`target`")?;
    let valid = target.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        r.error(
            span,
            format!("invalid target stage `{target}`"),
            "invalid stage name",
            "a stage name starts with a letter and holds letters, digits, `_`, `-` and `.`",
        );
        return None;
    }
    Some(target)
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
