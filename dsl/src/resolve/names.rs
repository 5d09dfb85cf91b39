//! Checks every file's top and every named thing share: `version: 1`, and the rule for step,
//! image, stage and cache names (they become container labels, volume and folder names).

use marked_yaml::types::MarkedMappingNode;

use crate::bounds;
use crate::ir::Span;
use crate::yaml::reader::Reader;

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
pub(super) fn check_name(r: &mut Reader, name: &str, span: Span, what: &str) -> bool {
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
