//! Stage 1 of the `.wf` front end: text to syntax tree. Owns the pest grammar (`wf.pest`); turns
//! the pest parse tree into the [`ast`](super::ast) types, so no later stage walks pest pairs
//! (the formatter, which prints the concrete tree with its comments, is the one other reader of
//! pest pairs).
//!
//! This module must not follow imports, expand or resolve anything; it only reports syntax
//! errors (worded by [`super::syntax`]) and too-deep nesting.

use pest::iterators::Pair;
use pest::Parser as _;

use super::ast::{Body, Call, Decl, Entry, File, Import, Kind, Locator, Param, Part, TemplateDecl, Val};
use super::grammar::{Rule, WfParser};
use super::syntax::syntax_error;
use crate::ir::SourceFile;
use crate::{bounds, Diagnostic};

/// The pest parse tree of a file, after checking its nesting depth on the raw text: the pest
/// parser (and the stages after it) recurse once per `{` or `[`.
pub(super) fn parse_text(src: &SourceFile) -> Result<Pair<'_, Rule>, Box<Diagnostic>> {
    if let Some(offset) = bounds::wf_too_deep(&src.text, bounds::MAX_NESTING) {
        let at = Locator::new(&src.text).at(offset, 1);
        return Err(Box::new(
            Diagnostic::new(src, at.span, format!("nesting deeper than {} levels", bounds::MAX_NESTING), "too deep")
                .with_help("a workflow needs a few levels of blocks and lists; flatten the structure"),
        ));
    }
    match WfParser::parse(Rule::file, &src.text) {
        Ok(mut pairs) => pairs.next().ok_or_else(|| {
            Box::new(syntax_error(
                src,
                &pest::error::Error::new_from_pos(
                    pest::error::ErrorVariant::CustomError { message: "empty parse".into() },
                    pest::Position::from_start(&src.text),
                ),
            ))
        }),
        Err(e) => Err(Box::new(syntax_error(src, &e))),
    }
}

/// The syntax tree of `src`, or the syntax error.
pub(super) fn parse(src: &SourceFile) -> Result<File, Box<Diagnostic>> {
    let file = parse_text(src)?;
    let loc = Locator::new(&src.text);
    let mut out = File::default();
    for item in file.into_inner() {
        match item.as_rule() {
            Rule::top_entry => out.top.extend(item.into_inner().map(|e| entry(&loc, e))),
            Rule::import => out.imports.extend(import(&loc, item)),
            Rule::template => out.templates.extend(template(&loc, item)),
            Rule::image_decl | Rule::step_decl => out.decls.push(decl(&loc, item)),
            _ => {}
        }
    }
    Ok(out)
}

fn at(loc: &Locator, p: &Pair<Rule>) -> super::ast::At {
    let s = p.as_span();
    loc.at(s.start(), s.end() - s.start())
}

fn import(loc: &Locator, item: Pair<Rule>) -> Option<Import> {
    let at = at(loc, &item);
    let mut inner = item.into_inner().filter(|p| matches!(p.as_rule(), Rule::string | Rule::ident));
    let (Some(path_pair), Some(alias)) = (inner.next(), inner.next()) else {
        return None;
    };
    let Val::Str(parts, _) = value(loc, path_pair) else {
        return None;
    };
    let path = parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Param(..) => "",
        })
        .collect();
    Some(Import { path, alias: alias.as_str().to_string(), at })
}

fn template(loc: &Locator, item: Pair<Rule>) -> Option<TemplateDecl> {
    let mut kind = Kind::Step;
    let (mut name, mut params, mut body) = (None, Vec::new(), Vec::new());
    for p in item.into_inner() {
        match p.as_rule() {
            Rule::kw_image => kind = Kind::Image,
            Rule::ident if name.is_none() => name = Some((p.as_str().to_string(), at(loc, &p))),
            Rule::param_decl => {
                let param_at = at(loc, &p);
                let mut inner = p.into_inner();
                let name = inner.next().map(|i| i.as_str().to_string()).unwrap_or_default();
                let default = inner.find(|d| d.as_rule() == Rule::string).map(|d| value(loc, d));
                params.push(Param { name, at: param_at, default });
            }
            Rule::block => body = block(loc, p).0,
            _ => {}
        }
    }
    let (name, name_at) = name?;
    Some(TemplateDecl { kind, name, name_at, params, body })
}

fn decl(loc: &Locator, item: Pair<Rule>) -> Decl {
    let kind = if item.as_rule() == Rule::image_decl { Kind::Image } else { Kind::Step };
    let mut d = Decl { kind, name: String::new(), at: at(loc, &item), matrix: Vec::new(), call: None, body: None };
    for p in item.into_inner() {
        match p.as_rule() {
            Rule::ident => {
                d.name = p.as_str().to_string();
                d.at = at(loc, &p);
            }
            Rule::instance => d.name.push_str(p.as_str()),
            Rule::matrix => {
                for axis in p.into_inner().filter(|a| a.as_rule() == Rule::axis) {
                    let axis_at = at(loc, &axis);
                    let mut inner = axis.into_inner();
                    let name = inner.next().map(|n| n.as_str().to_string()).unwrap_or_default();
                    let values = inner.find(|v| v.as_rule() == Rule::list).map(|l| list_items(loc, l)).unwrap_or_default();
                    d.matrix.push((name, values, axis_at));
                }
            }
            Rule::call => {
                let mut c = Call { name: String::new(), at: at(loc, &p), args: Vec::new(), named: Vec::new() };
                for a in p.into_inner() {
                    match a.as_rule() {
                        Rule::qname => c.name = a.as_str().to_string(),
                        Rule::arg => {
                            let mut name = None;
                            for q in a.into_inner() {
                                match q.as_rule() {
                                    Rule::ident => name = Some((q.as_str().to_string(), at(loc, &q))),
                                    Rule::string | Rule::list | Rule::word => match name.take() {
                                        Some((n, n_at)) => c.named.push((n, n_at, value(loc, q))),
                                        None => c.args.push(value(loc, q)),
                                    },
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                d.call = Some(c);
            }
            Rule::block => d.body = Some(block(loc, p)),
            _ => {}
        }
    }
    d
}

fn block(loc: &Locator, p: Pair<Rule>) -> (Vec<Entry>, super::ast::At) {
    let block_at = at(loc, &p);
    let entries = p.into_inner().filter(|e| e.as_rule() == Rule::entry).map(|e| entry(loc, e)).collect();
    (entries, block_at)
}

fn list_items(loc: &Locator, p: Pair<Rule>) -> Vec<Val> {
    p.into_inner().filter(|v| matches!(v.as_rule(), Rule::string | Rule::list | Rule::word)).map(|v| value(loc, v)).collect()
}

fn value(loc: &Locator, p: Pair<Rule>) -> Val {
    let value_at = at(loc, &p);
    match p.as_rule() {
        Rule::list => Val::List(list_items(loc, p), value_at),
        Rule::string => {
            let mut parts: Vec<Part> = Vec::new();
            let mut lit = String::new();
            for q in p.into_inner() {
                match q.as_rule() {
                    Rule::text => lit.push_str(q.as_str()),
                    Rule::escape => lit.push(match q.as_str() {
                        "\\n" => '\n',
                        "\\t" => '\t',
                        s => s.chars().nth(1).unwrap_or('\\'),
                    }),
                    Rule::interp => {
                        if !lit.is_empty() {
                            parts.push(Part::Lit(std::mem::take(&mut lit)));
                        }
                        let name = q.as_str().trim_start_matches("${").trim_end_matches('}');
                        parts.push(Part::Param(name.to_string(), at(loc, &q)));
                    }
                    _ => {}
                }
            }
            if !lit.is_empty() || parts.is_empty() {
                parts.push(Part::Lit(lit));
            }
            Val::Str(parts, value_at)
        }
        _ => Val::Word(p.as_str().to_string(), value_at),
    }
}

/// One `key ...` entry. `stage` and `copy` are sugar for a mapping under that key.
fn entry(loc: &Locator, e: Pair<Rule>) -> Entry {
    let entry_at = at(loc, &e);
    let Some(inner) = e.into_inner().next() else {
        return Entry { key: String::new(), at: entry_at, body: Body::Values(Vec::new()) };
    };
    let rule = inner.as_rule();
    let mut key = String::new();
    let mut key_at = entry_at;
    let mut values = Vec::new();
    let mut sub = None;
    let mut fields: Vec<Entry> = Vec::new();
    for p in inner.into_inner() {
        match p.as_rule() {
            Rule::key | Rule::kw_stage | Rule::kw_copy => {
                key = p.as_str().to_string();
                key_at = at(loc, &p);
            }
            Rule::ident => {
                let field = if rule == Rule::stage { "name" } else { "from" };
                let v = Val::Word(p.as_str().to_string(), at(loc, &p));
                fields.push(Entry { key: field.into(), at: v.at(), body: Body::Values(vec![v]) });
            }
            Rule::string | Rule::list | Rule::word => values.push(value(loc, p)),
            Rule::block => sub = Some(block(loc, p)),
            _ => {}
        }
    }
    match rule {
        Rule::stage => {
            if let Some(v) = values.pop() {
                fields.push(Entry { key: "from".into(), at: v.at(), body: Body::Values(vec![v]) });
            }
            if let Some((body, _)) = sub {
                fields.extend(body);
            }
            Entry { key: "stage".into(), at: key_at, body: Body::Block(fields, key_at) }
        }
        Rule::copy => {
            let mut vs = values.into_iter();
            for field in ["src", "dst"] {
                if let Some(v) = vs.next() {
                    fields.push(Entry { key: field.into(), at: v.at(), body: Body::Values(vec![v]) });
                }
            }
            Entry { key: "copy".into(), at: key_at, body: Body::Block(fields, key_at) }
        }
        _ => match sub {
            Some((body, bat)) => Entry { key, at: key_at, body: Body::Block(body, bat) },
            None => Entry { key, at: key_at, body: Body::Values(values) },
        },
    }
}
