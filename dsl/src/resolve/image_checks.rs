//! Load-time checks of what an image build may touch: a stage's `limits:` (layered over the
//! stage defaults and asked of the policy like a step's), a Dockerfile image's `dockerfile:` and
//! `context:` (inside the workflow's folder, never through a symlink leading out, the Dockerfile a
//! regular file), and the image references a Dockerfile reads (`FROM`, `COPY --from`,
//! `RUN --mount=...,from=`), checked against the policy's `image_prefixes` with the Dockerfile's
//! own `path:line`.
//!
//! Reading a Dockerfile is bounded ([`MAX_DOCKERFILE`]) and only ever of a regular file whose
//! real path is inside the workflow's folder.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::MarkedMappingNode;

use super::settings::Layer;
use crate::ir::{Limits, Network, SourceFile, Span};
use crate::policy::{Ask, Asked, Policy};
use crate::validate;
use crate::yaml::reader::Reader;
use crate::Diagnostic;

/// The largest Dockerfile the engine reads (1 MiB).
pub(crate) const MAX_DOCKERFILE: u64 = 1 << 20;

/// A stage's limits: [`Limits::stage`] overlaid with its `limits:` mapping. What the policy
/// caps (cpus, memory, pids, timeout) is asked, built-in values pointing at the stage.
pub(super) fn stage_limits(r: &mut Reader, map: &MarkedMappingNode, who: &str, fallback: Span, asks: &mut Vec<Ask>) -> Limits {
    let mut own = Layer::default();
    if let Some((key, node)) = map.iter().find(|(k, _)| k.as_str() == "limits") {
        // Only `limits`: a layer reads `network`, `user`... too, which mean other things here.
        let only: MarkedMappingNode = std::iter::once((key.clone(), node.clone())).collect();
        own.read(r, &only);
    }
    let resolved = Layer::with_limits(Limits::stage(), None).over(&own);
    let mut all = Vec::new();
    resolved.asks(who, fallback, &mut all);
    asks.extend(all.into_iter().filter(|a| matches!(a.asked, Asked::Cpus(_) | Asked::Memory(_) | Asked::Pids(_) | Asked::Timeout(_))));
    resolved.limits()
}

/// Why a Dockerfile could not be read (a policy restricting images then refuses the image).
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("the workflow's folder cannot be resolved")]
    Folder,
    #[error("the Dockerfile `{0}` does not exist")]
    Missing(String),
    #[error("cannot read the Dockerfile `{0}`: {1}")]
    Io(String, #[source] std::io::Error),
}

/// What loading a Dockerfile image found: its text and the references to check.
pub(super) struct DockerfileRefs {
    pub src: Arc<SourceFile>,
    pub refs: Vec<Reference>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reference {
    pub image: String,
    /// `FROM`, `COPY --from`, `ADD --from` or `RUN --mount`.
    pub what: &'static str,
    pub span: Span,
}

/// Checks `dockerfile:` and `context:` of image `name`; returns the Dockerfile's references when
/// it could be read. `unreadable` gets why it could not (a prefix policy then refuses the image).
#[allow(clippy::too_many_arguments)]
pub(super) fn dockerfile_paths(
    r: &mut Reader,
    dir: &Path,
    name: &str,
    dockerfile: &(String, Span),
    context: &(String, Span),
    network: Network,
) -> Result<Option<DockerfileRefs>, Unreadable> {
    let what = format!("image `{name}`");
    let mut ok = true;
    for (key, (path, span)) in [("dockerfile", dockerfile), ("context", context)] {
        // A context may be the whole workflow folder (`.`, the default).
        let whole_folder = key == "context" && path.split('/').all(|c| c.is_empty() || c == ".");
        if whole_folder {
            continue;
        }
        if let Some(problem) = validate::relative_path_problem(path) {
            r.error(
                *span,
                format!("{what}: `{key}` `{path}` {problem}"),
                "outside the workflow folder",
                format!(
                    "`{key}` is a path relative to the workflow's folder, without `..`: an image build reads nothing outside that folder"
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return Ok(None);
    }
    let Ok(root) = dir.canonicalize() else { return Err(Unreadable::Folder) };
    // Each must resolve (symlinks included) inside the folder.
    let mut resolved = Vec::new();
    for (key, (path, span)) in [("dockerfile", dockerfile), ("context", context)] {
        let joined = dir.join(path);
        match joined.canonicalize() {
            Ok(real) if !real.starts_with(&root) => {
                r.error(
                    *span,
                    format!("{what}: `{key}` `{path}` leads outside the workflow folder through a symlink (to {})", real.display()),
                    "outside the workflow folder",
                    format!("`{key}` must be inside the workflow's folder; an image build reads nothing outside it"),
                );
                ok = false;
            }
            Ok(real) => resolved.push(Some(real)),
            Err(_) => resolved.push(None),
        }
    }
    if !ok {
        return Ok(None);
    }
    if let Some(Some(ctx)) = resolved.get(1) {
        if !ctx.is_dir() {
            r.error(
                context.1,
                format!("{what}: `context` `{}` is not a folder", context.0),
                "not a folder",
                "`context` names a folder inside the workflow's folder",
            );
            return Ok(None);
        }
    }
    let Some(Some(real)) = resolved.first() else {
        return Err(Unreadable::Missing(dockerfile.0.clone()));
    };
    let meta = std::fs::symlink_metadata(real).map_err(|e| Unreadable::Io(dockerfile.0.clone(), e))?;
    if !meta.is_file() {
        r.error(
            dockerfile.1,
            format!("{what}: the Dockerfile `{}` is not a regular file", dockerfile.0),
            "not a regular file",
            "`dockerfile` names a regular file inside the workflow's folder; devices, FIFOs and folders are never read",
        );
        return Ok(None);
    }
    if meta.len() > MAX_DOCKERFILE {
        r.error(
            dockerfile.1,
            format!("{what}: the Dockerfile `{}` is larger than 1 MiB", dockerfile.0),
            "too large",
            "a Dockerfile is at most 1 MiB",
        );
        return Ok(None);
    }
    let mut text = String::new();
    std::fs::File::open(real)
        .and_then(|f| f.take(MAX_DOCKERFILE + 1).read_to_string(&mut text))
        .map_err(|e| Unreadable::Io(dockerfile.0.clone(), e))?;
    let src = Arc::new(SourceFile { path: display_path(dir, &dockerfile.0), text });
    let (refs, remote) = references(&src.text);
    if network == Network::None {
        for span in remote {
            r.push(
                Diagnostic::new(
                    &src,
                    span,
                    format!("{what}: `ADD` of a URL reaches the network, but the image's network is none"),
                    "network access",
                )
                .with_help("download in a `RUN` with `network: bridge` on the image, or add the file to the context"),
            );
        }
    }
    Ok(Some(DockerfileRefs { src, refs }))
}

fn display_path(dir: &Path, rel: &str) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(rel)
    } else {
        dir.join(rel)
    }
}

/// The policy's verdict on the references of one Dockerfile.
pub(super) fn check_references(policy: &Policy, image: &str, df: &DockerfileRefs) -> Vec<Diagnostic> {
    let Some(prefixes) = policy.image_prefixes() else { return Vec::new() };
    let mut out = Vec::new();
    for reference in &df.refs {
        let who = format!("the Dockerfile of image `{image}` ({})", reference.what);
        let asked = if reference.image.contains('$') {
            Asked::UnresolvedImage(reference.image.clone())
        } else if prefixes.iter().any(|p| reference.image.starts_with(p.as_str())) {
            continue;
        } else {
            Asked::Image(reference.image.clone())
        };
        let ask = Ask { who, asked, span: reference.span, builtin: false };
        out.extend(policy.check(&df.src, &ask));
    }
    out
}

/// Logical lines of a Dockerfile: (instruction text joined, span of its first physical line).
fn logical_lines(text: &str) -> Vec<(String, usize, Span)> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut current: Option<(String, usize, Span)> = None;
    let mut directives = true;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim();
        if directives {
            if let Some(d) = trimmed.strip_prefix('#') {
                if let Some((k, v)) = d.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("escape") && v.trim() == "`" {
                        escape = '`';
                    }
                    continue;
                }
            }
            directives = false;
        }
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let entry =
            current.get_or_insert_with(|| (String::new(), start, Span { offset: start, len: line.len().max(1), line: i + 1, col: 1 }));
        entry.0.push_str(body);
        entry.0.push(' ');
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current.take());
    out
}

/// The images a Dockerfile reads (`FROM`, `COPY --from`, `ADD --from`, `RUN --mount`), as
/// written, each once, in order; stage names and `scratch` are not images, and a reference made
/// of a build argument (`${BASE}`) is left out (its value is not known here).
pub fn dockerfile_images(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in references(text).0 {
        if !r.image.contains('$') && !out.contains(&r.image) {
            out.push(r.image);
        }
    }
    out
}

/// The image references a Dockerfile reads, and the spans of `ADD <url>` instructions.
fn references(text: &str) -> (Vec<Reference>, Vec<Span>) {
    let mut stages: Vec<String> = Vec::new();
    let mut refs = Vec::new();
    let mut remote = Vec::new();
    for (line, start, first) in logical_lines(text) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(instr) = words.first() else { continue };
        let args = &words[1..];
        // The span of a word: its place in the instruction's text, else the instruction's line.
        let at = |word: &str| -> Span {
            let end = text[start..].find(word).map(|p| start + p);
            match end {
                Some(o) => {
                    let before = &text[..o];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rfind('\n').map_or(o, |n| o - n - 1) + 1;
                    Span { offset: o, len: word.len().max(1), line, col }
                }
                None => first,
            }
        };
        let is_stage = |stages: &[String], name: &str| name.parse::<usize>().is_ok() || stages.iter().any(|s| s.eq_ignore_ascii_case(name));
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                let mut plain = args.iter().filter(|a| !a.starts_with("--"));
                let Some(image) = plain.next() else { continue };
                if !image.eq_ignore_ascii_case("scratch") && !is_stage(&stages, image) {
                    refs.push(Reference { image: image.to_string(), what: "FROM", span: at(image) });
                }
                if let (Some(kw), Some(name)) = (plain.next(), plain.next()) {
                    if kw.eq_ignore_ascii_case("as") {
                        stages.push(name.to_string());
                    }
                }
            }
            kw @ ("COPY" | "ADD") => {
                for a in args.iter().filter(|a| a.starts_with("--")) {
                    if let Some(from) = a.strip_prefix("--from=") {
                        if !is_stage(&stages, from) {
                            let what = if kw == "COPY" { "COPY --from" } else { "ADD --from" };
                            refs.push(Reference { image: from.to_string(), what, span: at(a) });
                        }
                    }
                }
                if kw == "ADD" {
                    let sources = args.iter().filter(|a| !a.starts_with("--"));
                    let n = sources.clone().count();
                    for s in sources.take(n.saturating_sub(1)) {
                        let s = s.trim_matches(['[', ']', '"', ',']);
                        if s.contains("://") || s.starts_with("git@") {
                            remote.push(at(s));
                        }
                    }
                }
            }
            "RUN" => {
                for a in args.iter().take_while(|a| a.starts_with("--")) {
                    let Some(mount) = a.strip_prefix("--mount=") else { continue };
                    for kv in mount.split(',') {
                        if let Some(from) = kv.strip_prefix("from=") {
                            if !is_stage(&stages, from) {
                                refs.push(Reference { image: from.to_string(), what: "RUN --mount", span: at(a) });
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (refs, remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(text: &str) -> Vec<(String, &'static str, usize)> {
        references(text).0.into_iter().map(|r| (r.image, r.what, r.span.line)).collect()
    }

    #[test]
    fn references_skip_stages_and_scratch() {
        let text = "# escape=\\\nARG BASE=local/x\nFROM --platform=linux/amd64 local/busybox:1 AS Build\nRUN echo \\\n  hi\nFROM scratch\nCOPY --from=build /a /a\nCOPY --from=0 /a /b\nCOPY --from=evil/img /etc/passwd /p\nRUN --mount=type=bind,from=other/img,target=/m true\nFROM ${BASE}\nFROM build\n";
        assert_eq!(
            images(text),
            [
                ("local/busybox:1".to_string(), "FROM", 3),
                ("evil/img".to_string(), "COPY --from", 9),
                ("other/img".to_string(), "RUN --mount", 10),
                ("${BASE}".to_string(), "FROM", 11),
            ]
        );
    }

    #[test]
    fn dockerfile_images_are_each_image_once_without_arguments() {
        let text = "ARG BASE=local/x\nFROM local/busybox:1 AS build\nFROM ${BASE}\nCOPY --from=other/img /a /a\nFROM local/busybox:1\nCOPY --from=build /a /b\n";
        assert_eq!(dockerfile_images(text), ["local/busybox:1", "other/img"]);
    }

    #[test]
    fn continuation_lines_and_backtick_escape() {
        let text = "# escape=`\nFROM `\n  evil/base\n";
        assert_eq!(images(text), [("evil/base".to_string(), "FROM", 3)]);
        let (_, remote) = references("FROM scratch\nADD https://example.invalid/x /x\n");
        assert_eq!(remote.len(), 1);
        assert_eq!(remote[0].line, 2);
    }

    #[test]
    fn stage_limits_and_dockerfile_network_load_alike_from_yaml_and_the_dsl() {
        let yaml = "version: 1\nimages:\n  t:\n    stages:\n      - name: s\n        from: local/busybox:1\n        limits: { timeout: 2s, memory: 64m }\n  d:\n    dockerfile: Dockerfile\n    network: bridge\nsteps:\n  a: { image: t, run: 'true' }\n";
        let wf = "version 1\nimage t {\n  stage s from \"local/busybox:1\" {\n    limits {\n      timeout 2s\n      memory 64m\n    }\n  }\n}\nimage d {\n  dockerfile \"Dockerfile\"\n  network \"bridge\"\n}\nstep a {\n  image \"t\"\n  run \"true\"\n}\n";
        let from_yaml = crate::load_str(Path::new("w.yml"), yaml).unwrap();
        let from_wf = crate::load_str(Path::new("w.wf"), wf).unwrap();
        assert_eq!(from_yaml.images["d"], from_wf.images["d"]);
        let crate::ImageDef::Stages(stages) = &from_yaml.images["t"] else { panic!("stages") };
        let crate::ImageDef::Stages(wf_stages) = &from_wf.images["t"] else { panic!("stages") };
        assert_eq!(stages[0].limits, wf_stages[0].limits);
        let want = Limits { timeout: std::time::Duration::from_secs(2), memory: 64 << 20, ..Limits::stage() };
        assert_eq!(stages[0].limits, want);
        assert_eq!(Limits::stage().timeout, std::time::Duration::from_secs(1800));
        assert!(matches!(&from_yaml.images["d"], crate::ImageDef::Dockerfile { network: Network::Bridge, .. }));
    }

    #[test]
    fn dockerfile_args_and_target_load_alike_from_yaml_and_the_dsl() {
        let yaml = "version: 1\nimages:\n  d:\n    dockerfile: Dockerfile\n    args: { MSG: hello, BASE_IMAGE: 'local/busybox:1' }\n    target: two\nsteps:\n  a: { image: d, run: 'true' }\n";
        let wf = "version 1\nimage d {\n  dockerfile \"Dockerfile\"\n  args {\n    MSG \"hello\"\n    BASE_IMAGE \"local/busybox:1\"\n  }\n  target \"two\"\n}\nstep a {\n  image \"d\"\n  run \"true\"\n}\n";
        let from_yaml = crate::load_str(Path::new("w.yml"), yaml).unwrap();
        let from_wf = crate::load_str(Path::new("w.wf"), wf).unwrap();
        assert_eq!(from_yaml.images["d"], from_wf.images["d"]);
        let crate::ImageDef::Dockerfile { args, target, .. } = &from_yaml.images["d"] else { panic!("dockerfile") };
        assert_eq!(args.get("MSG").map(String::as_str), Some("hello"));
        assert_eq!(target.as_deref(), Some("two"));

        let bad = [("    args: { '1x': a }\n", "invalid build argument name `1x`"), ("    target: 'a b'\n", "invalid target stage `a b`")];
        for (line, message) in bad {
            let text = format!("version: 1\nimages:\n  d:\n    dockerfile: Dockerfile\n{line}steps:\n  a: {{ image: d, run: 'true' }}\n");
            let err = crate::load_str(Path::new("w.yml"), &text).unwrap_err();
            assert!(format!("{err:?}").contains(message), "{line}: {err:?}");
        }
        let stages = "version: 1\nimages:\n  t:\n    stages: [{ name: s, from: 'local/busybox:1' }]\n    args: { A: b }\nsteps:\n  a: { image: t, run: 'true' }\n";
        let err = crate::load_str(Path::new("w.yml"), stages).unwrap_err();
        assert!(format!("{err:?}").contains("has `args` but no `dockerfile`"), "{err:?}");
    }
}
