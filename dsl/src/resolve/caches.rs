//! A step's `caches:` list (persistent package-manager folders mounted read-write into the
//! container). Owns the shape and path rules of one step's cache mounts; which folder or volume
//! backs a name is the executor's business.
//!
//! Caches are deliberately not part of a step's cache key, so nothing here feeds hashing.

use marked_yaml::Node;

use crate::ir::{CacheMount, Span};
use crate::yaml::reader::Reader;
use crate::Diagnostic;

const CACHE_KEYS: &[&str] = &["name", "path"];
/// Paths the engine itself mounts; a cache on, under or above one would hide it or be hidden.
const RESERVED: &[&str] = &["/workspace", "/run/secrets", "/tmp"];
const ENTRY_HELP: &str = "write `caches:` followed by `- { name: <cache name>, path: <absolute path> }` entries";

/// Parses `caches:` of step `step`; entries with a problem are reported and left out.
pub(super) fn read(r: &mut Reader, step: &str, node: &Node) -> Vec<CacheMount> {
    let message = format!("expected a list for `caches` of step `{step}`");
    let Some(seq) = r.sequence(node, message, ENTRY_HELP) else {
        return Vec::new();
    };
    let mut out: Vec<(CacheMount, Span)> = Vec::new();
    for item in seq.iter() {
        let Some(map) = r.mapping(item, "a `caches` entry") else {
            continue;
        };
        r.check_keys(map, CACHE_KEYS, "a `caches` entry");
        let entry_span = r.span(item);
        let mut field = |key: &str| match map.get_node(key) {
            Some(n) => r.string(n, &format!("`{key}`")),
            None => {
                r.error(entry_span, format!("a `caches` entry needs `{key}`"), format!("no `{key}`"), ENTRY_HELP);
                None
            }
        };
        let name = field("name");
        let path = field("path");
        let name_ok = match &name {
            Some((n, span)) => super::names::check_name(r, n, *span, "cache"),
            None => false,
        };
        let Some(path) = path.and_then(|(p, span)| check_path(r, &p, span).map(|p| (p, span))) else {
            continue;
        };
        if let Some((first, first_span)) = out.iter().find(|(c, _)| c.path == path.0) {
            let d = Diagnostic::new(r.src, path.1, format!("step `{step}` mounts two caches at `{}`", first.path), "mounted again here")
                .with_help("each cache of a step needs its own `path`")
                .with_related(Diagnostic::new(r.src, *first_span, format!("cache `{}` is first mounted here", first.name), "first mount"));
            r.push(d);
            continue;
        }
        if let (Some((name, _)), true) = (name, name_ok) {
            out.push((CacheMount { name, path: path.0 }, path.1));
        }
    }
    out.into_iter().map(|(c, _)| c).collect()
}

/// The path in normal form (`/a/b`), or `None` after reporting why it cannot be a cache mount.
fn check_path(r: &mut Reader, path: &str, span: Span) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let normal = format!("/{}", parts.join("/"));
    let problem = if !path.starts_with('/') {
        Some("is not an absolute path".to_string())
    } else if parts.contains(&"..") {
        Some("contains a `..` component".to_string())
    } else if parts.is_empty() {
        Some("is the root directory".to_string())
    } else {
        RESERVED.iter().find_map(|reserved| {
            let res: Vec<&str> = reserved.split('/').filter(|c| !c.is_empty()).collect();
            let n = res.len().min(parts.len());
            (res[..n] == parts[..n]).then(|| {
                if parts.len() >= res.len() {
                    format!("is {reserved} or inside it")
                } else {
                    format!("contains {reserved}")
                }
            })
        })
    };
    match problem {
        Some(problem) => {
            r.error(
                span,
                format!("cache path `{path}` {problem}"),
                "invalid cache path",
                "a cache path is an absolute folder outside /workspace, /run/secrets and /tmp, e.g. /home/user/.cargo/registry",
            );
            None
        }
        None => Some(normal),
    }
}
