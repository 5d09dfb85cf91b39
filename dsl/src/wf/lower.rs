//! Stage 4 of the `.wf` front end: lowering. The expanded tree becomes the YAML-shaped
//! `marked_yaml::Node` tree the YAML format would give, every marker pointing into the `.wf`
//! text, ready for [`crate::resolve::resolve`]: repeated `stage`/`copy`/`caches` entries become
//! lists, declarations go under `images:` and `steps:`, and a key written twice in a block is
//! reported.
//!
//! This module must not interpolate, count or check anything else: expansion did that.

use std::collections::HashMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::Node;

use super::ast::At;
use super::expand::{Declared, Expanded, XBody, XEntry, XVal};
use crate::diagnostic::{push, Diagnostic};
use crate::ir::SourceFile;

/// Keys that may be written several times; each occurrence adds one item to a list.
const REPEATED: &[(&str, &str)] = &[("stage", "stages"), ("copy", "copy"), ("caches", "caches")];

fn start(at: At) -> marked_yaml::Span {
    marked_yaml::Span::new_start(at.marker())
}

/// The node tree of the whole file.
pub(super) fn lower(src: &SourceFile, x: Expanded, diags: &mut Vec<Diagnostic>) -> Node {
    if x.empty {
        // Nothing but comments: the same "empty file" the YAML reader reports for an empty document.
        return Node::Scalar(MarkedScalarNode::new(start(x.file_at), ""));
    }
    let mut root = mapping(src, &x.top, x.file_at, diags);
    for (key, declared) in [("images", x.images), ("steps", x.steps)] {
        if declared.is_empty() {
            continue;
        }
        let mut section = MarkedMappingNode::new_empty(start(x.file_at));
        for Declared { name, at, body, body_at } in declared {
            section.insert(MarkedScalarNode::new(start(at), name), Node::Mapping(mapping(src, &body, body_at, diags)));
        }
        root.insert(MarkedScalarNode::new(start(x.file_at), key), Node::Mapping(section));
    }
    Node::Mapping(root)
}

fn scalar(v: &XVal) -> Node {
    match v {
        XVal::Str(s, at) => {
            let mut s = MarkedScalarNode::new(start(*at), s.as_str());
            // A quoted string stays a string (`cache "false"` is not a boolean), as in YAML.
            s.set_coerce(false);
            Node::Scalar(s)
        }
        XVal::Word(w, at) => Node::Scalar(MarkedScalarNode::new(start(*at), w.as_str())),
        XVal::List(items, at) => Node::Sequence(MarkedSequenceNode::new(start(*at), items.iter().map(scalar).collect())),
    }
}

/// Entries to a mapping node; repeated keys become lists, others may appear once.
pub(super) fn mapping(src: &SourceFile, entries: &[XEntry], at: At, diags: &mut Vec<Diagnostic>) -> MarkedMappingNode {
    let mut map = MarkedMappingNode::new_empty(start(at));
    let mut seen: HashMap<&str, At> = HashMap::new();
    for e in entries {
        let value = match &e.body {
            XBody::Block(body, bat) => Node::Mapping(mapping(src, body, *bat, diags)),
            XBody::One(v) => scalar(v),
            XBody::Seq(items) => Node::Sequence(MarkedSequenceNode::new(start(e.at), items.iter().map(scalar).collect())),
        };
        let key_node = |k: &str| MarkedScalarNode::new(start(e.at), k);
        if let Some((_, yaml_key)) = REPEATED.iter().find(|(k, _)| *k == e.key) {
            match map.get_mut(&key_node(yaml_key) as &MarkedScalarNode) {
                Some(Node::Sequence(seq)) => seq.push(value),
                _ => {
                    let seq = MarkedSequenceNode::new(start(e.at), vec![value]);
                    map.insert(key_node(yaml_key), Node::Sequence(seq));
                }
            }
            continue;
        }
        if let Some(first) = seen.get(e.key.as_str()) {
            let d = Diagnostic::new(src, e.at.span, format!("duplicate key `{}`", e.key), "defined again here")
                .with_help("every key may appear only once in a block; rename or remove one")
                .with_related(Diagnostic::new(src, first.span, format!("`{}` first defined here", e.key), "first definition"));
            push(diags, d);
            continue;
        }
        seen.insert(&e.key, e.at);
        map.insert(key_node(&e.key), value);
    }
    map
}
