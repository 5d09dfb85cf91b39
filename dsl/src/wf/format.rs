//! The canonical formatter of `.wf` text (`format_wf`). Owns the printing of the pest parse tree:
//! templates, matrices, calls and imports are printed as written, never desugared.
//!
//! This module must not change what a file means (the formatted file loads to the same IR) and
//! must not resolve anything. The grammar drops comments (`COMMENT` is silent), so formatting
//! removes them.

use std::path::Path;

use pest::iterators::Pair;
use pest::Parser as _;

use super::{syntax_error, Rule, WfParser};
use crate::ir::SourceFile;
use crate::{yaml, LoadError};

/// Formats `text` (read from `path`, used in messages); a syntax error is the usual `LoadError`.
pub(crate) fn format(path: &Path, text: &str) -> Result<String, LoadError> {
    let src = SourceFile {
        path: path.to_path_buf(),
        text: text.to_string(),
    };
    let file = match WfParser::parse(Rule::file, text) {
        Ok(mut pairs) => pairs.next(),
        Err(e) => return yaml::finish(path, vec![syntax_error(&src, &e)], String::new()),
    };
    let mut out = String::new();
    let mut last: Option<Rule> = None;
    for item in file.into_iter().flat_map(|f| f.into_inner()) {
        let rule = item.as_rule();
        if rule == Rule::EOI {
            continue;
        }
        // Consecutive imports and consecutive top-level keys stay together; anything else
        // is one block separated by a blank line.
        let grouped = last == Some(rule) && matches!(rule, Rule::import | Rule::top_entry);
        if last.is_some() && !grouped {
            out.push('\n');
        }
        last = Some(rule);
        match rule {
            Rule::top_entry => {
                for e in item.into_inner() {
                    entry(e, 0, &mut out);
                }
            }
            _ => {
                decl(item, &mut out);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `import`, `template`, `image` and `step` declarations, on one line up to their block.
fn decl(item: Pair<Rule>, out: &mut String) {
    let mut params: Vec<String> = Vec::new();
    let mut in_params = false;
    for p in item.into_inner() {
        match p.as_rule() {
            Rule::kw_import | Rule::kw_template | Rule::kw_image | Rule::kw_step => {
                if !out.ends_with('\n') && !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(p.as_str());
            }
            Rule::kw_as => out.push_str(" as"),
            Rule::string => {
                out.push(' ');
                out.push_str(&string(p));
            }
            Rule::lparen => in_params = true,
            Rule::rparen => {
                out.push('(');
                out.push_str(&params.join(", "));
                out.push(')');
                in_params = false;
            }
            Rule::ident if in_params => params.push(p.as_str().to_string()),
            Rule::ident => {
                out.push(' ');
                out.push_str(p.as_str());
            }
            Rule::matrix => {
                let axes: Vec<String> = p
                    .into_inner()
                    .filter(|a| a.as_rule() == Rule::axis)
                    .map(|a| {
                        let mut name = String::new();
                        let mut list = String::new();
                        for q in a.into_inner() {
                            match q.as_rule() {
                                Rule::ident => name = q.as_str().to_string(),
                                Rule::list => list = value(q),
                                _ => {}
                            }
                        }
                        format!("{name} in {list}")
                    })
                    .collect();
                out.push_str(&format!("[{}]", axes.join(", ")));
            }
            Rule::call => {
                let mut name = String::new();
                let mut args = Vec::new();
                for a in p.into_inner() {
                    match a.as_rule() {
                        Rule::qname => name = a.as_str().to_string(),
                        Rule::string | Rule::list | Rule::word => args.push(value(a)),
                        _ => {}
                    }
                }
                out.push_str(&format!(" = {name}({})", args.join(", ")));
            }
            Rule::block => {
                out.push(' ');
                block(p, 0, out);
            }
            _ => {}
        }
    }
}

/// `{ ... }`, one entry per line at `indent + 2`; an empty block is `{ }`.
fn block(p: Pair<Rule>, indent: usize, out: &mut String) {
    let entries: Vec<_> = p
        .into_inner()
        .filter(|e| e.as_rule() == Rule::entry)
        .collect();
    if entries.is_empty() {
        out.push_str("{ }");
        return;
    }
    out.push_str("{\n");
    for e in entries {
        entry(e, indent + 2, out);
    }
    out.push_str(&" ".repeat(indent));
    out.push('}');
}

/// One entry on its own line (a block value spans several).
fn entry(e: Pair<Rule>, indent: usize, out: &mut String) {
    out.push_str(&" ".repeat(indent));
    let Some(inner) = e.into_inner().next() else {
        out.push('\n');
        return;
    };
    let mut words: Vec<String> = Vec::new();
    let mut sub = None;
    for p in inner.into_inner() {
        match p.as_rule() {
            Rule::block => sub = Some(p),
            Rule::string | Rule::list | Rule::word => words.push(value(p)),
            Rule::comma => {}
            _ => words.push(p.as_str().to_string()),
        }
    }
    // In a pair the values after the key are comma-separated; stage and copy use keywords.
    let text = if inner_is_pair(&words) {
        let (key, vals) = words.split_at(1);
        let mut t = key.join("");
        if !vals.is_empty() {
            t.push(' ');
            t.push_str(&vals.join(", "));
        }
        t
    } else {
        words.join(" ")
    };
    out.push_str(&text);
    if let Some(b) = sub {
        out.push(' ');
        block(b, indent, out);
    }
    out.push('\n');
}

fn inner_is_pair(words: &[String]) -> bool {
    !matches!(words.first().map(String::as_str), Some("stage" | "copy"))
}

fn value(p: Pair<Rule>) -> String {
    match p.as_rule() {
        Rule::string => string(p),
        Rule::list => {
            let items: Vec<String> = p
                .into_inner()
                .filter(|v| matches!(v.as_rule(), Rule::string | Rule::list | Rule::word))
                .map(value)
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ => p.as_str().to_string(),
    }
}

/// A string re-quoted canonically: escapes kept, a raw tab written `\t`, a lone `$` written `\$`.
fn string(p: Pair<Rule>) -> String {
    let mut out = String::from("\"");
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::text => {
                for c in q.as_str().chars() {
                    match c {
                        '\t' => out.push_str("\\t"),
                        '$' => out.push_str("\\$"),
                        c => out.push(c),
                    }
                }
            }
            _ => out.push_str(q.as_str()),
        }
    }
    out.push('"');
    out
}
