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
    let len = src.text.get(caret..).and_then(|r| r.chars().next()).map_or(0, char::len_utf8);
    let at = loc.at(caret, len);
    let (message, label) = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut words: Vec<&str> = Vec::new();
            for r in positives {
                let w = expected(*r);
                if !words.contains(&w) {
                    words.push(w);
                }
            }
            let found = match src.text.get(offset..).and_then(|r| r.chars().next()) {
                None => "the end of the file".to_string(),
                Some(c) if c.is_whitespace() => "the end of the line".to_string(),
                Some(c) => format!("`{c}`"),
            };
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
        Rule::lbrack | Rule::matrix => "`[`",
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
