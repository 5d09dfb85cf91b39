//! The canonical formatter of `.wf` text (`format_wf`). Owns the printing of the pest parse tree:
//! templates, matrices, calls and imports are printed as written, never desugared.
//!
//! This module must not change what a file means (the formatted file loads to the same IR) and
//! must not resolve anything, nor lose a comment. The grammar drops comments (`COMMENT` is
//! silent, so the desugarer never sees them); the formatter finds them in the text again
//! ([`comments`]) and puts each one back before the item or entry that follows it (a comment on
//! a line of its own, at that entry's indentation) or at the end of the line it followed (a
//! trailing comment).

use std::path::Path;

use super::grammar::Rule;
use super::parse::parse_text;
use crate::diagnostic::finish;
use crate::ir::SourceFile;
use crate::LoadError;
use pest::iterators::Pair;

/// Formats `text` (read from `path`, used in messages); a syntax error is the usual `LoadError`.
pub(crate) fn format(path: &Path, text: &str) -> Result<String, LoadError> {
    let src = SourceFile { path: path.to_path_buf(), text: text.to_string() };
    let file = match parse_text(&src) {
        Ok(file) => Some(file),
        Err(d) => return finish(path, vec![*d], String::new()),
    };
    let mut f = Fmt { out: String::new(), comments: comments(text), next: 0 };
    let mut last: Option<Rule> = None;
    // Where the previous item ended in the source, and whether it was printed on one line.
    let mut last_end = 0;
    let mut last_one_line = false;
    for item in file.into_iter().flat_map(|f| f.into_inner()) {
        let rule = item.as_rule();
        if rule == Rule::EOI {
            continue;
        }
        let (start, end) = (item.as_span().start(), item.as_span().end());
        // Consecutive imports and consecutive top-level keys stay together, and so do
        // `step`/`image` declarations of one line each written on consecutive lines; anything
        // else is one block separated by a blank line.
        let decl = |r: Rule| matches!(r, Rule::step_decl | Rule::image_decl);
        let grouped = last == Some(rule) && matches!(rule, Rule::import | Rule::top_entry);
        let adjacent =
            last.is_some_and(decl) && decl(rule) && last_one_line && !blank_line_between(text.get(last_end..start).unwrap_or(""));
        // A comment trailing the previous item stays on its line, before the blank line.
        f.trailing_before(start);
        let separator_at = f.out.len();
        let separate = last.is_some() && !grouped;
        last = Some(rule);
        f.comments_before(start, 0);
        let before = f.out.len();
        match rule {
            Rule::top_entry => {
                for e in item.into_inner() {
                    f.entry(e, 0);
                }
            }
            _ => {
                f.decl(item);
                f.out.push('\n');
            }
        }
        let one_line = decl(rule) && f.out[before..].matches('\n').count() == 1;
        if separate && !(adjacent && one_line) {
            f.out.insert(separator_at, '\n');
        }
        last_one_line = one_line;
        last_end = end;
    }
    f.comments_before(usize::MAX, 0);
    Ok(f.out)
}

/// Whether the text between two items (from the end of one to the start of the next) holds a
/// line of its own that is blank.
fn blank_line_between(between: &str) -> bool {
    let lines: Vec<&str> = between.split('\n').collect();
    lines.len() > 2 && lines[1..lines.len() - 1].iter().any(|l| l.trim().is_empty())
}

/// A `#` comment of the source: where it starts, its text (from `#`, trailing blanks removed),
/// and whether it has a line of its own.
struct Comment {
    offset: usize,
    text: String,
    own_line: bool,
}

/// Every comment of `text`, in order. A `#` inside a string is not one. Only called on text
/// that parsed, so strings are closed on their line.
fn comments(text: &str) -> Vec<Comment> {
    let mut found = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut line_start = 0;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '\n' => line_start = i + 1,
            '#' => {
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                found.push(Comment {
                    offset: i,
                    text: text[i..end].trim_end().to_string(),
                    own_line: text[line_start..i].trim().is_empty(),
                });
                // The rest of the line is the comment's.
                for _ in text[i..end].chars().skip(1) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    found
}

/// The output being built, and the comments not yet put back.
struct Fmt {
    out: String,
    comments: Vec<Comment>,
    next: usize,
}

impl Fmt {
    /// Put back the trailing comments (those after code on their line) that start before
    /// `offset` and come before any comment on a line of its own.
    fn trailing_before(&mut self, offset: usize) {
        while self.comments.get(self.next).is_some_and(|c| c.offset < offset && !c.own_line) {
            self.put_back(0);
        }
    }

    /// Put back every comment that starts before `offset`.
    fn comments_before(&mut self, offset: usize, indent: usize) {
        while self.comments.get(self.next).is_some_and(|c| c.offset < offset) {
            self.put_back(indent);
        }
    }

    /// The next comment: on its own line at `indent`, or at the end of the last line written if
    /// it followed code on its line.
    fn put_back(&mut self, indent: usize) {
        let c = &self.comments[self.next];
        if c.own_line || self.out.is_empty() {
            self.out.push_str(&" ".repeat(indent));
            self.out.push_str(&c.text);
            self.out.push('\n');
        } else {
            let had_newline = self.out.ends_with('\n');
            if had_newline {
                self.out.pop();
            }
            self.out.push_str("  ");
            self.out.push_str(&c.text);
            if had_newline {
                self.out.push('\n');
            }
        }
        self.next += 1;
    }

    /// `import`, `template`, `image` and `step` declarations, on one line up to their block.
    fn decl(&mut self, item: Pair<Rule>) {
        let out = &mut self.out;
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
                Rule::param_decl => {
                    let mut text = String::new();
                    for q in p.into_inner() {
                        match q.as_rule() {
                            Rule::ident => text.push_str(q.as_str()),
                            Rule::string => {
                                text.push_str(" = ");
                                text.push_str(&string(q));
                            }
                            _ => {}
                        }
                    }
                    params.push(text);
                }
                Rule::ident => {
                    out.push(' ');
                    out.push_str(p.as_str());
                }
                Rule::instance => out.push_str(p.as_str()),
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
                            Rule::arg => {
                                let mut text = String::new();
                                for q in a.into_inner() {
                                    match q.as_rule() {
                                        Rule::ident => text.push_str(&format!("{} = ", q.as_str())),
                                        Rule::string | Rule::list | Rule::word => text.push_str(&value(q)),
                                        _ => {}
                                    }
                                }
                                args.push(text);
                            }
                            _ => {}
                        }
                    }
                    out.push_str(&format!(" = {name}({})", args.join(", ")));
                }
                Rule::block => {
                    self.out.push(' ');
                    self.block(p, 0);
                    return;
                }
                _ => {}
            }
        }
    }

    /// `{ ... }`, one entry per line at `indent + 2`; an empty block is `{ }` (a comment inside
    /// one is put back after it).
    fn block(&mut self, p: Pair<Rule>, indent: usize) {
        let mut entries = Vec::new();
        let mut close = None;
        let single_line = !p.as_str().contains('\n');
        for e in p.into_inner() {
            match e.as_rule() {
                Rule::entry => entries.push(e),
                Rule::rbrace => close = Some(e.as_span().start()),
                _ => {}
            }
        }
        if entries.is_empty() {
            self.out.push_str("{ }");
            return;
        }
        if let Some(line) = single_line.then(|| one_line(&entries)).flatten() {
            let column = self.out[self.out.rfind('\n').map_or(0, |i| i + 1)..].chars().count();
            if column + line.chars().count() <= WIDTH {
                self.out.push_str(&line);
                return;
            }
        }
        self.out.push_str("{\n");
        for e in entries {
            self.comments_before(e.as_span().start(), indent + 2);
            self.entry(e, indent + 2);
        }
        self.comments_before(close.unwrap_or(usize::MAX), indent + 2);
        self.out.push_str(&" ".repeat(indent));
        self.out.push('}');
    }

    /// One entry on its own line (a block value spans several).
    fn entry(&mut self, e: Pair<Rule>, indent: usize) {
        self.out.push_str(&" ".repeat(indent));
        let Some(inner) = e.into_inner().next() else {
            self.out.push('\n');
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
        self.out.push_str(&text);
        if let Some(b) = sub {
            self.out.push(' ');
            self.block(b, indent);
        }
        self.out.push('\n');
    }
}

/// Lines a block kept on one line may fill (the indentation and what precedes the `{` included).
const WIDTH: usize = 100;

/// `{ key value  key value }`, for a block written on one line (so it holds no comment), when
/// each entry prints on one line; `None` otherwise.
fn one_line(entries: &[Pair<Rule>]) -> Option<String> {
    let mut parts = Vec::new();
    for e in entries {
        let mut f = Fmt { out: String::new(), comments: Vec::new(), next: 0 };
        f.entry(e.clone(), 0);
        let text = f.out.trim_end_matches('\n');
        if text.contains('\n') {
            return None;
        }
        parts.push(text.to_string());
    }
    Some(format!("{{ {} }}", parts.join("  ")))
}

fn inner_is_pair(words: &[String]) -> bool {
    !matches!(words.first().map(String::as_str), Some("stage" | "copy"))
}

fn value(p: Pair<Rule>) -> String {
    match p.as_rule() {
        Rule::string => string(p),
        Rule::list => {
            let items: Vec<String> =
                p.into_inner().filter(|v| matches!(v.as_rule(), Rule::string | Rule::list | Rule::word)).map(value).collect();
            format!("[{}]", items.join(", "))
        }
        _ => p.as_str().to_string(),
    }
}

/// A string re-quoted canonically: escapes kept as written, a raw tab written `\t`; nothing
/// else is rewritten (shell text such as `$?` or `$HOME` stays as it is).
fn string(p: Pair<Rule>) -> String {
    let mut out = String::from("\"");
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::text => {
                for c in q.as_str().chars() {
                    match c {
                        '\t' => out.push_str("\\t"),
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
