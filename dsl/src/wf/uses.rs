//! YAML's way into the library: a step or image written `uses: stdlib/python.wf#test` with
//! `with:` arguments is an instance of a `.wf` template, as GitHub Actions users write
//! `uses:`/`with:`. The YAML tree gets, in place of such an entry, the template's body expanded
//! exactly as the DSL's `step test = python.test(args = "...") { ... }` would give it (the same
//! imports, bounds, defaults and argument checks), with the entry's other keys written over it:
//! a key replaces the template's, except `env` and `limits`, merged entry by entry.
//!
//! Messages about the instance point at the `uses:` value in the YAML file. This module must not
//! resolve workflow semantics: the resolver sees an ordinary YAML tree afterwards.

use std::collections::HashMap;
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use super::ast::{At, Call, Decl, Import, Kind, Part, Unit, Val};
use super::{expand, imports, lower};
use crate::diagnostic::finish;
use crate::ir::SourceFile;
use crate::loader::{self, Loader};
use crate::yaml::reader::Reader;
use crate::LoadError;

/// The keys of an instance that are not workflow keys.
const USES: &str = "uses";
const WITH: &str = "with";
/// Blocks merged entry by entry into the template's (as for DSL instances).
const MERGED: [&str; 2] = ["env", "limits"];

/// One `uses:` entry: which section, its name, the module, the template and the arguments.
struct Instance {
    kind: Kind,
    name: String,
    module: String,
    template: String,
    at: At,
    args: Vec<(String, At, Val)>,
}

/// The tree with every `uses:` entry of `steps:` and `images:` expanded. A tree without one is
/// returned as it is.
pub(crate) fn expand_uses(src: &Arc<SourceFile>, root: Node, loader: &dyn Loader) -> Result<Node, LoadError> {
    let Node::Mapping(mut top) = root else { return Ok(root) };
    let mut r = Reader::new(src);
    let mut found = Vec::new();
    for (section, kind) in [("steps", Kind::Step), ("images", Kind::Image)] {
        let Some(Node::Mapping(m)) = top.get_node(section) else { continue };
        for (name, body) in m.iter() {
            if let Some(uses) = body.as_mapping().and_then(|b| b.get_node(USES)) {
                if let Some(i) = instance(&mut r, kind, name.as_str(), uses, body.as_mapping().and_then(|b| b.get_node(WITH))) {
                    found.push(i);
                }
            }
        }
    }
    if found.is_empty() && r.diags.is_empty() {
        return Ok(Node::Mapping(top));
    }
    let mut diags = std::mem::take(&mut r.diags);
    // One import per module, under a name no template call can clash with.
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut unit = Unit { src: src.clone(), top: Vec::new(), decls: Vec::new(), templates: HashMap::new(), imports: HashMap::new() };
    let mut chain = imports::Imports::new(loader, loader::identity(&src.path));
    for i in &found {
        let alias = match aliases.get(&i.module) {
            Some(a) => a.clone(),
            None => {
                let alias = format!("uses{}", aliases.len());
                aliases.insert(i.module.clone(), alias.clone());
                let import = Import { path: i.module.clone(), alias: alias.clone(), at: i.at };
                if let Some(templates) = imports::import_one(src, &import, &mut chain, &mut diags) {
                    unit.imports.insert(alias.clone(), templates);
                }
                alias
            }
        };
        if !unit.imports.contains_key(&alias) {
            continue;
        }
        let call = Call { name: format!("{alias}.{}", i.template), at: i.at, args: Vec::new(), named: i.args.clone() };
        unit.decls.push(Decl { kind: i.kind, name: i.name.clone(), at: i.at, matrix: Vec::new(), call: Some(call), body: None });
    }
    let first = diags.len();
    let expanded = expand::expand(&unit, &mut diags);
    // The calls were written `MODULE#TEMPLATE`: say so, not the import names made up above.
    for d in &mut diags[first..] {
        for (module, alias) in &aliases {
            let (from, to) = (format!("`{alias}."), format!("`{module}#"));
            d.message = d.message.replace(&from, &to);
            d.help = d.help.take().map(|h| h.replace(&from, &to));
        }
    }
    let mut bodies: HashMap<(bool, String), MarkedMappingNode> = HashMap::new();
    for (is_step, declared) in [(false, expanded.images), (true, expanded.steps)] {
        for d in declared {
            let body = lower::mapping(src, &d.body, d.body_at, &mut diags);
            bodies.insert((is_step, d.name), body);
        }
    }
    for (section, is_step) in [("steps", true), ("images", false)] {
        let Some(Node::Mapping(m)) = top.get_mut(&key(section)) else { continue };
        for (name, body) in m.iter_mut() {
            let Some(own) = body.as_mapping().filter(|b| b.get_node(USES).is_some()) else { continue };
            let Some(mut expanded) = bodies.remove(&(is_step, name.as_str().to_string())) else { continue };
            for (k, v) in own.iter() {
                match (k.as_str(), v, expanded.get_mut(k)) {
                    (USES | WITH, _, _) => {}
                    (key, Node::Mapping(theirs), Some(Node::Mapping(ours))) if MERGED.contains(&key) => {
                        for (vk, vv) in theirs.iter() {
                            ours.insert(vk.clone(), vv.clone());
                        }
                    }
                    _ => {
                        expanded.insert(k.clone(), v.clone());
                    }
                }
            }
            *body = Node::Mapping(expanded);
        }
    }
    finish(&src.path, diags, Node::Mapping(top))
}

/// Reads one `uses:` (`MODULE#TEMPLATE`) and its `with:` mapping of plain values.
fn instance(r: &mut Reader, kind: Kind, name: &str, uses: &Node, with: Option<&Node>) -> Option<Instance> {
    let at = at_of(r, uses);
    let (text, span) = r.string(uses, "`uses`")?;
    let Some((module, template)) = text.rsplit_once('#').filter(|(m, t)| !m.is_empty() && !t.is_empty()) else {
        r.error(
            span,
            format!("`uses: {text}` names no template"),
            "no `#template`",
            "write the module and the template: `uses: stdlib/python.wf#test`",
        );
        return None;
    };
    let mut args = Vec::new();
    if let Some(with) = with {
        let map = r.mapping(with, "`with`")?;
        for (k, v) in map.iter() {
            let key_at = scalar_at(r, k);
            let v_at = at_of(r, v);
            match v {
                Node::Scalar(s) => args.push((k.as_str().to_string(), key_at, Val::Str(vec![Part::Lit(s.as_str().to_string())], v_at))),
                _ => {
                    let span = r.span(v);
                    r.error(
                        span,
                        format!("`with: {}` must be a single value", k.as_str()),
                        "not a value",
                        "a template argument is one string",
                    );
                }
            }
        }
    }
    Some(Instance { kind, name: name.to_string(), module: module.to_string(), template: template.to_string(), at, args })
}

fn key(k: &str) -> MarkedScalarNode {
    MarkedScalarNode::new(marked_yaml::Span::new_blank(), k)
}

fn at_of(r: &Reader, n: &Node) -> At {
    let span = r.span(n);
    let ch = n.span().start().map_or(0, |m| m.character());
    At { span, ch }
}

fn scalar_at(r: &Reader, s: &MarkedScalarNode) -> At {
    let span = r.scalar_span(s);
    let ch = s.span().start().map_or(0, |m| m.character());
    At { span, ch }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merged_blocks_match_the_dsl() {
        assert_eq!(super::MERGED, super::super::expand::MERGED_BLOCKS);
    }
}
