//! The wording of `.wf` syntax errors: a pest error becomes a diagnostic in the user's words,
//! "expected `{`, found the end of the line", never the name of a grammar rule.
//!
//! This module must not parse; it only words what [`super::parse`] found.

use super::ast::Locator;
use super::grammar::Rule;
use crate::ir::SourceFile;
use crate::Diagnostic;

/// A pest error as a diagnostic in the user's words: never a grammar rule name.
pub(super) fn syntax_error(src: &SourceFile, e: &pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let offset = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let loc = Locator::new(&src.text);
    // At the end of the file or of a line, point at the last real character instead, so the
    // user sees a line and a caret.
    let rest_of_line = src.text.get(offset..).and_then(|r| r.lines().next()).unwrap_or("");
    let caret = match rest_of_line.trim().is_empty() {
        true => src.text.get(..offset).and_then(|b| b.trim_end().char_indices().last()).map_or(offset, |(i, _)| i),
        false => offset,
    };
    // A word is underlined whole, anything else by its first character.
    let rest = src.text.get(caret..).unwrap_or("");
    let word = rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))).unwrap_or(rest.len());
    let len = match word {
        0 => rest.chars().next().map_or(0, char::len_utf8),
        n => n.min(40),
    };
    let at = loc.at(caret, len);
    if let ErrorVariant::ParsingError { positives, .. } = &e.variant {
        if positives.contains(&Rule::rbrace) {
            if let Some(d) = unclosed_brace(src, &loc, offset) {
                return d;
            }
        }
    }
    let (message, label) = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut words: Vec<&str> = Vec::new();
            for r in positives {
                let w = expected(*r);
                if !words.contains(&w) {
                    words.push(w);
                }
            }
            // `{` first: a missing `{` is the usual reason a declaration line fails.
            if let Some(i) = words.iter().position(|w| *w == "`{`") {
                let brace = words.remove(i);
                words.insert(0, brace);
            }
            let found = found(&src.text, offset);
            let expected = match words.len() {
                0 => "something else".to_string(),
                1 => words[0].to_string(),
                n => format!("{} or {}", words[..n - 1].join(", "), words[n - 1]),
            };
            (format!("expected {expected}, found {found}"), "unexpected here".to_string())
        }
        ErrorVariant::CustomError { message } => (message.clone(), "here".to_string()),
    };
    Diagnostic::new(src, at.span, format!("invalid workflow syntax: {message}"), label)
        .with_help("see docs/dsl.md for the syntax of .wf files")
}

/// What the parser stopped at, in words: a whole word (`image`, not `i`), a string, a
/// character, or the end of the line or file.
fn found(text: &str, offset: usize) -> String {
    let rest = text.get(offset..).unwrap_or("");
    let word: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')).take(41).collect();
    match rest.chars().next() {
        None => "the end of the file".to_string(),
        Some(c) if c.is_whitespace() => "the end of the line".to_string(),
        Some('"') if rest.lines().next().is_some_and(|l| l[1..].contains('"')) => "a string".to_string(),
        Some('"') => "`\"`, a string not closed on its line".to_string(),
        Some(_) if word.chars().count() > 40 => format!("`{}...`", word.chars().take(40).collect::<String>()),
        Some(_) if !word.is_empty() => format!("`{word}`"),
        Some(c) => format!("`{c}`"),
    }
}

/// The declaration keywords: one at the start of a line inside a block means the block's `}`
/// is missing.
const DECLARATIONS: [&str; 4] = ["step", "image", "template", "import"];

/// A missing `}`: when the parser, still inside a block, meets the end of the file or a line
/// starting with a declaration keyword, the error names the `{` left open (the primary place,
/// so `file:line:col` points at it) and labels where the `}` was expected. `None` when that is
/// not what happened (then the plain "expected ..." wording applies).
fn unclosed_brace(src: &SourceFile, loc: &Locator, offset: usize) -> Option<Diagnostic> {
    let text = &src.text;
    let open = *open_braces(text.get(..offset)?).last()?;
    // The place where the `}` was due: the end of the file, or the first declaration keyword
    // at the start of a line between the open `{` and the error.
    let notice = match text.get(offset..).is_some_and(|r| r.trim().is_empty()) {
        true => None,
        false => Some(declaration_line(text, open, offset)?),
    };
    let open_at = loc.at(open, 1);
    let (where_, label_at) = match notice {
        None => ("the end of the file".to_string(), text.trim_end().char_indices().last().map(|(i, _)| i)),
        Some((kw, at)) => (format!("`{kw}` on line {}", loc.at(at, 0).span.line), Some(at)),
    };
    let message = format!("invalid workflow syntax: the `{{` on line {} is never closed: expected `}}` before {where_}", open_at.span.line);
    let mut d = Diagnostic::new(src, open_at.span, message, "this `{` is not closed")
        .with_help(format!("add the `}}` that ends the block opened on line {}; see docs/dsl.md", open_at.span.line));
    if let Some(at) = label_at {
        let len = match notice {
            Some((kw, _)) => kw.len(),
            None => text.get(at..).and_then(|r| r.chars().next()).map_or(0, char::len_utf8),
        };
        let label = if notice.is_some() { "expected `}` before this" } else { "expected `}` after this" };
        d = d.with_label(src, loc.at(at, len).span, label);
    }
    Some(d)
}

/// Offsets of the `{` still open at the end of `text`, outermost first; braces in strings and
/// comments do not count.
fn open_braces(text: &str) -> Vec<usize> {
    let mut stack = Vec::new();
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' | '\n' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '#' => in_comment = true,
                '"' => in_string = true,
                '{' => stack.push(i),
                '}' => {
                    stack.pop();
                }
                _ => {}
            }
        }
    }
    stack
}

/// The first line after `from` and up to the line of `to` that starts with a declaration
/// keyword: the keyword and its offset.
fn declaration_line(text: &str, from: usize, to: usize) -> Option<(&'static str, usize)> {
    let line_end = text.get(to..).and_then(|r| r.find('\n')).map_or(text.len(), |n| to + n);
    let mut start = text.get(from..)?.find('\n').map(|n| from + n + 1)?;
    while start <= line_end {
        let line = text.get(start..)?.lines().next().unwrap_or("");
        let trimmed = line.trim_start();
        let at = start + (line.len() - trimmed.len());
        let first: String = trimmed.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')).collect();
        // `image` is a key inside steps too: a declaration is `image NAME {` or `image NAME =`.
        let is_image_decl = || {
            let mut words = trimmed.split_whitespace().skip(1);
            let name = words.next().unwrap_or("");
            let named = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            named && words.next().is_some_and(|w| w.starts_with('{') || w.starts_with('='))
        };
        if let Some(kw) = DECLARATIONS.iter().find(|k| **k == first && (first != "image" || is_image_decl())) {
            return Some((kw, at));
        }
        start += line.len() + 1;
    }
    None
}

fn expected(rule: Rule) -> &'static str {
    match rule {
        Rule::string | Rule::text | Rule::escape | Rule::interp => "a string in double quotes",
        Rule::param => "a parameter name",
        Rule::word | Rule::list => "a value (a string in double quotes, a number, a name or `[...]`)",
        Rule::entry | Rule::top_entry | Rule::pair | Rule::key | Rule::stage | Rule::copy | Rule::kw_stage | Rule::kw_copy => {
            "a key such as `run`, `image`, `needs`"
        }
        Rule::block | Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::lbrack | Rule::matrix | Rule::instance => "`[`",
        Rule::rbrack => "`]`",
        Rule::comma => "`,`",
        Rule::eq | Rule::call => "`=`",
        Rule::arg => "an argument (a value, or `name = value`)",
        Rule::ident | Rule::qname => "a name",
        Rule::param_decl => "a parameter name (with its default: `name = \"value\"`)",
        Rule::axis => "a matrix axis such as `target in [\"x86\", \"arm\"]`",
        Rule::kw_as => "`as`",
        Rule::kw_from => "`from`",
        Rule::kw_to => "`to`",
        Rule::kw_in => "`in`",
        Rule::EOI | Rule::file => "the end of the file",
        Rule::import
        | Rule::template
        | Rule::image_decl
        | Rule::step_decl
        | Rule::kw_import
        | Rule::kw_template
        | Rule::kw_image
        | Rule::kw_step => "a declaration such as `step`, `image`, `template`, `import` or a key such as `version`",
        _ => "something else",
    }
}
