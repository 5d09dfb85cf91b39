//! The `.wf` syntax tree, in our own types: what [`super::parse`] makes of the pest parse tree
//! and every later stage (imports, expansion, lowering) works on. Every node keeps its place
//! ([`At`]) in the file it was written in.
//!
//! This module holds data and the byte-offset arithmetic only; it must not know pest.

use std::collections::HashMap;
use std::sync::Arc;

use marked_yaml::Marker;

use crate::ir::{SourceFile, Span};

/// A place in a `.wf` file: the diagnostic span and the marked-yaml character index.
#[derive(Debug, Clone, Copy)]
pub(super) struct At {
    pub span: Span,
    pub ch: usize,
}

impl At {
    pub fn marker(&self) -> Marker {
        Marker::new(0, self.ch, self.span.line, self.span.col)
    }
}

/// A piece of a double-quoted string.
#[derive(Debug, Clone)]
pub(super) enum Part {
    Lit(String),
    Param(String, At),
}

/// A value as written.
#[derive(Debug, Clone)]
pub(super) enum Val {
    /// A double-quoted string, split at its `${param}`s.
    Str(Vec<Part>, At),
    /// A bare word or number; never interpolated, may name a parameter as a template argument.
    Word(String, At),
    List(Vec<Val>, At),
}

impl Val {
    pub fn at(&self) -> At {
        match self {
            Val::Str(_, at) | Val::Word(_, at) | Val::List(_, at) => *at,
        }
    }
}

/// `key value, value` or `key { ... }` (`stage` and `copy` arrive as blocks under their key).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub key: String,
    pub at: At,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub(super) enum Body {
    Values(Vec<Val>),
    Block(Vec<Entry>, At),
}

/// What a declaration or template makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Step,
    Image,
}

/// `import "path" as alias`.
pub(super) struct Import {
    /// The path as written (a `${param}` in it counts as nothing).
    pub path: String,
    pub alias: String,
    pub at: At,
}

/// `template [image] name(params) { body }`.
pub(super) struct TemplateDecl {
    pub kind: Kind,
    pub name: String,
    pub name_at: At,
    pub params: Vec<Param>,
    pub body: Vec<Entry>,
}

/// A template parameter: `name` or `name = "default"`.
#[derive(Debug, Clone)]
pub(super) struct Param {
    pub name: String,
    pub at: At,
    /// The default value (a string literal; it cannot name other parameters).
    pub default: Option<Val>,
}

/// `= template(args)` of a declaration.
pub(super) struct Call {
    pub name: String,
    pub at: At,
    /// Arguments by position, in order.
    pub args: Vec<Val>,
    /// Arguments by name (after the positional ones): `name = value`.
    pub named: Vec<(String, At, Val)>,
}

/// One matrix axis: `name in [values]`.
pub(super) type Axis = (String, Vec<Val>, At);

/// `step name [matrix] (= call)? { body }` or `image name ...`.
pub(super) struct Decl {
    pub kind: Kind,
    pub name: String,
    pub at: At,
    pub matrix: Vec<Axis>,
    pub call: Option<Call>,
    pub body: Option<(Vec<Entry>, At)>,
}

/// One file's syntax tree, items in the order written.
#[derive(Default)]
pub(super) struct File {
    pub top: Vec<Entry>,
    pub imports: Vec<Import>,
    pub templates: Vec<TemplateDecl>,
    pub decls: Vec<Decl>,
}

/// A template ready to be instantiated.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub kind: Kind,
    pub params: Vec<Param>,
    pub body: Vec<Entry>,
    /// The file the template was written in (diagnostics about its own text point there).
    pub src: Arc<SourceFile>,
    /// Imported templates: where the resolver's messages should point instead (the import's
    /// markers would index the wrong file).
    pub imported: bool,
}

/// One file with its imports resolved: its own declarations, and the templates it can use.
pub(super) struct Unit {
    pub src: Arc<SourceFile>,
    pub top: Vec<Entry>,
    pub decls: Vec<Decl>,
    pub templates: HashMap<String, Template>,
    pub imports: HashMap<String, HashMap<String, Template>>,
}

/// Byte offsets to spans and markers (markers count characters, spans count bytes). Every
/// lookup costs at most one line start search plus [`CHUNK`] bytes of counting, so locating
/// every node of a large file stays linear.
pub(super) struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    /// `chunk_chars[i]`: characters before byte `i * CHUNK`.
    chunk_chars: Vec<usize>,
}

const CHUNK: usize = 256;

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut chunk_chars = Vec::with_capacity(text.len() / CHUNK + 1);
        let mut chars = 0;
        for chunk in text.as_bytes().chunks(CHUNK) {
            chunk_chars.push(chars);
            chars += chunk.iter().filter(|b| (**b & 0xC0) != 0x80).count();
        }
        chunk_chars.push(chars);
        Locator { text, line_starts, chunk_chars }
    }

    /// Characters before byte `offset` (a char boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let chunk = offset / CHUNK;
        let start = chunk * CHUNK;
        self.chunk_chars[chunk] + self.text.as_bytes()[start..offset].iter().filter(|b| (**b & 0xC0) != 0x80).count()
    }

    pub fn at(&self, offset: usize, len: usize) -> At {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let ch = self.chars_before(offset);
        let col = ch - self.chars_before(start) + 1;
        At { span: Span { offset, len, line, col }, ch }
    }
}
