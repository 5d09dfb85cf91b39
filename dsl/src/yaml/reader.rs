//! Typed, spanned access to a marked-yaml tree. Turns YAML parser errors and every "wrong shape"
//! problem into [`Diagnostic`]s that point at the offending node, and collects them instead of
//! stopping at the first one.
//!
//! This module owns the marked-yaml specifics (character markers, scalar styles); it must not
//! know what a workflow or a policy means.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoaderOptions, Marker, Node};

use crate::bounds;
use crate::ir::{SourceFile, Span};
use crate::suggest;
use crate::Diagnostic;

/// One file being read: its text, the byte offset of every character, and the problems found.
pub(crate) struct Reader<'a> {
    pub(crate) src: &'a SourceFile,
    /// `char_bytes[i]` is the byte offset of character `i` (markers count characters).
    char_bytes: Vec<usize>,
    pub(crate) diags: Vec<Diagnostic>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(src: &'a SourceFile) -> Self {
        let mut char_bytes: Vec<usize> = src.text.char_indices().map(|(b, _)| b).collect();
        char_bytes.push(src.text.len());
        Reader { src, char_bytes, diags: Vec::new() }
    }

    /// Parses the text; a syntax error becomes a diagnostic and `None`.
    pub(crate) fn parse(&mut self) -> Option<Node> {
        if !self.prescan() {
            return None;
        }
        let opts = LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true);
        match marked_yaml::parse_yaml_with_options(0, &self.src.text, opts) {
            Ok(node) => Some(node),
            Err(e) => {
                self.syntax_error(e);
                None
            }
        }
    }

    /// A first, non-recursive pass over the parser's events: nesting deeper than
    /// [`bounds::MAX_NESTING`] and anchors or aliases (the "billion laughs") are refused here,
    /// before the recursive loader could overflow the stack or expand anything. Syntax errors
    /// are left to the loader, which reports them the usual way. `false` when reported.
    fn prescan(&mut self) -> bool {
        use yaml_rust2::parser::{Event, Parser};
        let mut parser = Parser::new_from_str(&self.src.text);
        let mut depth = 0usize;
        loop {
            let Ok((ev, mark)) = parser.next_token() else {
                return true;
            };
            let marker = Marker::new(0, mark.index(), mark.line(), mark.col() + 1);
            let anchored = match ev {
                Event::StreamEnd => return true,
                Event::Alias(_) => true,
                Event::Scalar(_, _, aid, _) => aid != 0,
                Event::MappingStart(aid, _) | Event::SequenceStart(aid, _) => {
                    depth += 1;
                    if depth > bounds::MAX_NESTING {
                        let span = self.marker_span(&marker, 1);
                        self.error(
                            span,
                            format!("nesting deeper than {} levels", bounds::MAX_NESTING),
                            "too deep",
                            "a workflow needs a few levels of mappings and lists; flatten the structure",
                        );
                        return false;
                    }
                    aid != 0
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    depth = depth.saturating_sub(1);
                    false
                }
                _ => false,
            };
            if anchored {
                self.syntax_error(marked_yaml::LoadError::UnexpectedAnchor(marker));
                return false;
            }
        }
    }

    fn syntax_error(&mut self, e: marked_yaml::LoadError) {
        use marked_yaml::LoadError as E;
        let (marker, msg, help) = match &e {
            E::TopLevelMustBeMapping(m) => (*m, "the file must be a YAML mapping".to_string(), "start with `version: 1`"),
            E::TopLevelMustBeSequence(m) => (*m, "unexpected top-level mapping".to_string(), "expected a list"),
            E::UnexpectedAnchor(m) => (*m, "YAML anchors and aliases are not supported".to_string(), "write the value out"),
            E::MappingKeyMustBeScalar(m) => (*m, "a mapping key must be a plain string".to_string(), "use `key: value`"),
            E::UnexpectedTag(m) => (*m, "YAML tags (`!name`) are not supported".to_string(), "remove the tag"),
            E::ScanError(m, se) => (*m, format!("invalid YAML: {}", se.info()), "check indentation, quoting and `key: value` syntax"),
            E::DuplicateKey(d) => {
                let first = self.scalar_span(&d.prev_key);
                let second = self.scalar_span(&d.key);
                let name = d.key.as_str();
                let diag = Diagnostic::new(self.src, second, format!("duplicate key `{name}`"), "defined again here")
                    .with_help("every key (and every step name) may appear only once in a mapping; rename or remove one")
                    .with_related(Diagnostic::new(self.src, first, format!("`{name}` first defined here"), "first definition"));
                self.diags.push(diag);
                return;
            }
        };
        // The scanner often reports the end of the file or an empty line; point at the last
        // real character before it instead, so the user sees a line and a caret.
        let start = marker.character().min(self.char_bytes.len() - 1);
        let before = &self.src.text[..self.char_bytes[start]];
        let span = if self.src.text[self.char_bytes[start]..].lines().next().unwrap_or("").trim().is_empty() {
            match before.trim_end().char_indices().last() {
                Some((b, c)) => self.byte_span(b, c.len_utf8()),
                None => self.marker_span(&marker, 1),
            }
        } else {
            self.marker_span(&marker, 1)
        };
        self.diags.push(Diagnostic::new(self.src, span, msg, "here").with_help(help));
    }

    /// A span from a byte offset, computing line and column (in characters).
    fn byte_span(&self, offset: usize, len: usize) -> Span {
        let before = &self.src.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        Span { offset, len, line, col }
    }

    fn marker_span(&self, m: &Marker, chars: usize) -> Span {
        let start = m.character().min(self.char_bytes.len() - 1);
        let end = (start + chars).min(self.char_bytes.len() - 1);
        Span { offset: self.char_bytes[start], len: self.char_bytes[end] - self.char_bytes[start], line: m.line(), col: m.column() }
    }

    /// The span of a scalar: its text as written (quotes included), or up to the end of the line
    /// when it cannot be matched (block scalars, escapes).
    pub(crate) fn scalar_span(&self, s: &MarkedScalarNode) -> Span {
        let Some(m) = s.span().start() else {
            return Span::default();
        };
        let start = m.character().min(self.char_bytes.len() - 1);
        let rest = &self.src.text[self.char_bytes[start]..];
        let value = s.as_str();
        let chars = if !value.is_empty() && rest.starts_with(value) {
            value.chars().count()
        } else if let Some(q @ ('"' | '\'')) = rest.chars().next() {
            let body = &rest[1..];
            if body.starts_with(value) && body[value.len()..].starts_with(q) {
                value.chars().count() + 2
            } else {
                line_chars(rest)
            }
        } else {
            line_chars(rest)
        };
        self.marker_span(m, chars.max(1))
    }

    /// The span of any node: scalars exactly, collections from their start to the end of that line.
    pub(crate) fn span(&self, node: &Node) -> Span {
        match node {
            Node::Scalar(s) => self.scalar_span(s),
            _ => match node.span().start() {
                Some(m) => {
                    let start = m.character().min(self.char_bytes.len() - 1);
                    let rest = &self.src.text[self.char_bytes[start]..];
                    self.marker_span(m, flow_chars(rest).unwrap_or_else(|| line_chars(rest)).max(1))
                }
                None => Span::default(),
            },
        }
    }

    pub(crate) fn error(&mut self, span: Span, message: impl Into<String>, label: impl Into<String>, help: impl Into<String>) {
        // A hostile file can have a problem on every line: stop building them past the bound.
        if self.diags.len() < bounds::MAX_COLLECTED {
            self.diags.push(Diagnostic::new(self.src, span, message, label).with_help(help));
        }
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        if self.diags.len() < bounds::MAX_COLLECTED {
            self.diags.push(d);
        }
    }

    pub(crate) fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            // `key:` with nothing after it is an empty mapping, not an error.
            Node::Scalar(s) if s.is_empty() && s.may_coerce() => None,
            _ => {
                let span = self.span(node);
                self.error(
                    span,
                    format!("expected a mapping for {what}"),
                    "not a mapping",
                    format!("write {what} as `key: value` lines or `{{ key: value }}`"),
                );
                None
            }
        }
    }

    /// A list; anything else is reported as "not a list" with `message` and `help`.
    pub(crate) fn sequence<'n>(&mut self, node: &'n Node, message: impl Into<String>, help: &str) -> Option<&'n MarkedSequenceNode> {
        match node {
            Node::Sequence(seq) => Some(seq),
            _ => {
                let span = self.span(node);
                self.error(span, message, "not a list", help);
                None
            }
        }
    }

    /// A scalar's text (numbers and booleans as written).
    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<(String, Span)> {
        match node {
            Node::Scalar(s) => Some((s.as_str().to_string(), self.scalar_span(s))),
            _ => {
                let span = self.span(node);
                self.error(span, format!("expected a string for {what}"), "not a string", format!("write {what} as a single value"));
                None
            }
        }
    }

    pub(crate) fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<(String, Span)>> {
        let help = format!("write {what} as `[a, b]` or as `- a` lines");
        match node {
            Node::Sequence(seq) => {
                let mut out = Vec::new();
                for item in seq.iter() {
                    match item {
                        Node::Scalar(s) => out.push((s.as_str().to_string(), self.scalar_span(s))),
                        _ => {
                            let span = self.span(item);
                            self.error(span, format!("expected a list of strings for {what}"), "not a string", help.clone());
                        }
                    }
                }
                Some(out)
            }
            _ => {
                let span = self.span(node);
                self.error(span, format!("expected a list of strings for {what}"), "not a list", help);
                None
            }
        }
    }

    /// `map[key]` through `parse`; an unparsable value is reported as "invalid <key>" with `help`.
    pub(crate) fn parsed<T>(
        &mut self,
        map: &MarkedMappingNode,
        key: &str,
        parse: impl Fn(&str) -> Option<T>,
        help: &str,
    ) -> Option<(T, Span)> {
        let (text, span) = self.string(map.get_node(key)?, &format!("`{key}`"))?;
        let value = parse(&text);
        if value.is_none() {
            self.error(span, format!("invalid {key} `{text}`"), format!("invalid {key}"), help);
        }
        Some((value?, span))
    }

    pub(crate) fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        let parsed = match node {
            Node::Scalar(s) if s.may_coerce() => match s.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            let span = self.span(node);
            self.error(span, format!("expected `true` or `false` for {what}"), "not a boolean", "write true or false, unquoted");
        }
        parsed
    }

    /// A `NAME: value` mapping of scalars (numbers and booleans become their text).
    pub(crate) fn string_map(&mut self, node: &Node, what: &str) -> Vec<(String, String, Span)> {
        let Some(map) = self.mapping(node, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map.iter() {
            match v {
                Node::Scalar(s) => out.push((k.as_str().to_string(), s.as_str().to_string(), self.scalar_span(k))),
                _ => {
                    let span = self.span(v);
                    self.error(
                        span,
                        format!("expected a string, number or boolean for `{}` in {what}", k.as_str()),
                        "not a scalar",
                        "env values are single values; quote them if in doubt",
                    );
                }
            }
        }
        out
    }

    /// Reports every key of `map` not in `allowed`, with a suggestion and the list of valid keys.
    pub(crate) fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let span = self.scalar_span(key);
                let hint = suggest::hint(key.as_str(), allowed.iter().copied());
                self.error(
                    span,
                    format!("unknown key `{}` in {what}{hint}", key.as_str()),
                    "unknown key",
                    format!("valid keys: {}", allowed.join(", ")),
                );
            }
        }
    }
}

/// Characters of a flow collection (`[a, b]`, `{ k: v }`) written on one line, brackets included.
fn flow_chars(rest: &str) -> Option<usize> {
    let line = rest.lines().next()?;
    if !line.starts_with(['[', '{']) {
        return None;
    }
    let (mut depth, mut quote) = (0usize, None);
    for (i, c) in line.chars().enumerate() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Characters up to the end of the line, without trailing blanks.
fn line_chars(rest: &str) -> usize {
    rest.lines().next().unwrap_or("").trim_end().chars().count()
}
