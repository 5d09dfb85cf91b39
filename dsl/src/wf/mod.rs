//! The `.wf` DSL front end. Owns the pest grammar (`wf.pest`) and the desugaring of imports,
//! templates, matrices and `${param}` interpolation. It builds the same YAML-shaped
//! `marked_yaml::Node` tree the YAML format would give, with every marker pointing into the `.wf`
//! text, and hands it to [`crate::yaml::resolve`].
//!
//! This module must not resolve or validate workflow semantics itself (no defaults, no graph
//! checks, no key lists): that belongs to the shared resolver, so both syntaxes give the same IR
//! and the same messages. It only reports what the resolver cannot see: syntax errors, unknown
//! parameters, template calls and imports.

mod format;

pub(crate) use format::format;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Marker, Node};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ir::{SourceFile, Span};
use crate::policy::Policy;
use crate::{bounds, suggest, yaml, Diagnostic, LoadError, Workflow};

#[derive(pest_derive::Parser)]
#[grammar = "wf/wf.pest"]
struct WfParser;

/// A place in a `.wf` file: the diagnostic span and the marked-yaml character index.
#[derive(Debug, Clone, Copy)]
struct At {
    span: Span,
    ch: usize,
}

impl At {
    fn marker(&self) -> Marker {
        Marker::new(0, self.ch, self.span.line, self.span.col)
    }
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Param(String, At),
}

#[derive(Debug, Clone)]
enum Val {
    /// A double-quoted string, split at its `${param}`s.
    Str(Vec<Part>, At),
    /// A bare word or number; never interpolated, may name a parameter as a template argument.
    Word(String, At),
    List(Vec<Val>, At),
}

impl Val {
    fn at(&self) -> At {
        match self {
            Val::Str(_, at) | Val::Word(_, at) | Val::List(_, at) => *at,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    at: At,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Values(Vec<Val>),
    Block(Vec<Entry>, At),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Step,
    Image,
}

#[derive(Debug, Clone)]
struct Template {
    kind: Kind,
    params: Vec<String>,
    body: Vec<Entry>,
    /// The file the template was written in (diagnostics about its own text point there).
    src: Arc<SourceFile>,
    /// Imported templates: where the resolver's messages should point instead (the import's
    /// markers would index the wrong file).
    imported: bool,
}

struct Call {
    name: String,
    at: At,
    args: Vec<Val>,
}

struct Decl {
    kind: Kind,
    name: String,
    at: At,
    matrix: Vec<(String, Vec<Val>, At)>,
    call: Option<Call>,
    body: Option<(Vec<Entry>, At)>,
}

/// One parsed file: its text, its own declarations, and the templates it makes available.
struct Parsed {
    src: Arc<SourceFile>,
    top: Vec<Entry>,
    decls: Vec<Decl>,
    templates: HashMap<String, Template>,
    imports: HashMap<String, HashMap<String, Template>>,
}

/// Loads a `.wf` file: parse, desugar into a YAML-shaped tree, resolve with the YAML resolver.
/// The desugared YAML-shaped tree of `text` (templates, matrix and imports expanded), parsed
/// once; syntax and desugaring errors as diagnostics.
fn parse(path: &Path, text: &str) -> Result<(Arc<SourceFile>, Node), LoadError> {
    let src = Arc::new(SourceFile { path: path.to_path_buf(), text: text.to_string() });
    let mut diags = Vec::new();
    let mut stack = Imports::new(path);
    let Some(parsed) = parse_file(src.clone(), &mut stack, &mut diags) else {
        return yaml::finish(path, diags, ()).and_then(|()| Err(yaml::no_tree(path)));
    };
    let root = build(&parsed, &mut diags);
    yaml::finish(path, diags, (src, root))
}

pub(crate) fn load(path: &Path, text: &str, policy: &Policy) -> Result<Workflow, LoadError> {
    let (src, root) = parse(path, text)?;
    yaml::resolve(path, src, root, policy)
}

/// The desugared YAML-shaped tree of a `.wf` file (templates, matrix and imports expanded),
/// after checking that the file loads.
pub(crate) fn tree(path: &Path, text: &str) -> Result<Node, LoadError> {
    let (src, root) = parse(path, text)?;
    yaml::resolve(path, src, root.clone(), &Policy::default())?;
    Ok(root)
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Byte offsets to spans and markers (markers count characters, spans count bytes). Every
/// lookup costs at most one line start search plus [`CHUNK`] bytes of counting, so locating
/// every node of a large file stays linear.
struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    /// `chunk_chars[i]`: characters before byte `i * CHUNK`.
    chunk_chars: Vec<usize>,
}

const CHUNK: usize = 256;

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
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

    fn at(&self, offset: usize, len: usize) -> At {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let ch = self.chars_before(offset);
        let col = ch - self.chars_before(start) + 1;
        At { span: Span { offset, len, line, col }, ch }
    }

    fn pair(&self, p: &Pair<Rule>) -> At {
        let s = p.as_span();
        self.at(s.start(), s.end() - s.start())
    }
}

/// The pest parse tree of a file, after checking its nesting depth on the raw text: the pest
/// parser (and the desugaring after it) recurse once per `{` or `[`.
pub(crate) fn parse_text(src: &SourceFile) -> Result<Pair<'_, Rule>, Box<Diagnostic>> {
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

fn parse_file(src: Arc<SourceFile>, stack: &mut Imports, diags: &mut Vec<Diagnostic>) -> Option<Parsed> {
    let file = match parse_text(&src) {
        Ok(file) => file,
        Err(d) => {
            push(diags, *d);
            return None;
        }
    };
    let loc = Locator::new(&src.text);
    let mut parsed = Parsed { src: src.clone(), top: Vec::new(), decls: Vec::new(), templates: HashMap::new(), imports: HashMap::new() };
    for item in file.into_inner() {
        match item.as_rule() {
            Rule::top_entry => parsed.top.extend(item.into_inner().map(|e| entry(&loc, e))),
            Rule::import => import(&loc, &src, item, stack, diags, &mut parsed),
            Rule::template => {
                let mut kind = Kind::Step;
                let (mut name, mut params, mut body) = (None, Vec::new(), Vec::new());
                for p in item.into_inner() {
                    match p.as_rule() {
                        Rule::kw_image => kind = Kind::Image,
                        Rule::ident if name.is_none() => name = Some((p.as_str().to_string(), loc.pair(&p))),
                        Rule::ident => params.push(p.as_str().to_string()),
                        Rule::block => body = block(&loc, p).0,
                        _ => {}
                    }
                }
                let Some((name, nat)) = name else { continue };
                if parsed.templates.contains_key(&name) {
                    push(
                        diags,
                        Diagnostic::new(&src, nat.span, format!("duplicate template `{name}`"), "defined again")
                            .with_help("template names must be unique within a file"),
                    );
                }
                let t = Template { kind, params, body, src: src.clone(), imported: false };
                parsed.templates.insert(name, t);
            }
            Rule::image_decl | Rule::step_decl => {
                let kind = if item.as_rule() == Rule::image_decl { Kind::Image } else { Kind::Step };
                let mut d = Decl { kind, name: String::new(), at: loc.pair(&item), matrix: Vec::new(), call: None, body: None };
                for p in item.into_inner() {
                    match p.as_rule() {
                        Rule::ident => {
                            d.name = p.as_str().to_string();
                            d.at = loc.pair(&p);
                        }
                        Rule::matrix => {
                            for axis in p.into_inner().filter(|a| a.as_rule() == Rule::axis) {
                                let at = loc.pair(&axis);
                                let mut inner = axis.into_inner();
                                let name = inner.next().map(|n| n.as_str().to_string()).unwrap_or_default();
                                let values = inner.find(|v| v.as_rule() == Rule::list).map(|l| list_items(&loc, l)).unwrap_or_default();
                                d.matrix.push((name, values, at));
                            }
                        }
                        Rule::call => {
                            let mut c = Call { name: String::new(), at: loc.pair(&p), args: Vec::new() };
                            for a in p.into_inner() {
                                match a.as_rule() {
                                    Rule::qname => c.name = a.as_str().to_string(),
                                    Rule::string | Rule::list | Rule::word => c.args.push(value(&loc, a)),
                                    _ => {}
                                }
                            }
                            d.call = Some(c);
                        }
                        Rule::block => d.body = Some(block(&loc, p)),
                        _ => {}
                    }
                }
                parsed.decls.push(d);
            }
            _ => {}
        }
    }
    // A misspelt `${param}` is an error even in a template nobody instantiates (yet); the same
    // message from an instantiation is dropped as a duplicate by `finish`.
    let mut names: Vec<&String> = parsed.templates.keys().collect();
    names.sort();
    for name in names {
        let t = &parsed.templates[name];
        let scope = t.params.iter().map(|p| (p.clone(), String::new())).collect();
        let budget = Budget::new();
        let ex = Expand { src: &t.src, scope: &scope, remap: None, budget: &budget };
        bind(&t.body, &ex, diags);
        budget.report(diags);
    }
    Some(parsed)
}

/// The files being imported (to find cycles), how many were, and where imports may come from.
struct Imports {
    /// Canonical paths of the files on the current import chain, the workflow file first.
    stack: Vec<PathBuf>,
    /// Files imported so far, all levels together.
    count: usize,
    /// Real folders imports must stay in: the workflow's folder and the library's.
    roots: Vec<PathBuf>,
}

impl Imports {
    fn new(path: &Path) -> Imports {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut roots: Vec<PathBuf> = std::fs::canonicalize(dir).into_iter().collect();
        roots.extend(stdlib_roots().iter().filter_map(|r| std::fs::canonicalize(r).ok()));
        Imports { stack: vec![canonical(path)], count: 0, roots }
    }
}

/// `import "path" as name`: parse the library (its own imports too, to find cycles) and keep its
/// templates. Its steps and images are not part of the importing workflow.
///
/// Imports are hostile paths: a `.wf` file whose real path (symlinks resolved) is inside the
/// workflow's folder or the library's, a regular file of at most [`bounds::MAX_IMPORT_BYTES`]
/// (never a FIFO or device), at most [`bounds::MAX_IMPORTS`] of them and
/// [`bounds::MAX_IMPORT_DEPTH`] levels deep. A refused file is never read, so no message can
/// quote it.
fn import(loc: &Locator, src: &Arc<SourceFile>, item: Pair<Rule>, stack: &mut Imports, diags: &mut Vec<Diagnostic>, parsed: &mut Parsed) {
    let at = loc.pair(&item);
    let mut inner = item.into_inner().filter(|p| matches!(p.as_rule(), Rule::string | Rule::ident));
    let (Some(path_pair), Some(alias)) = (inner.next(), inner.next()) else {
        return;
    };
    let Val::Str(parts, _) = value(loc, path_pair) else {
        return;
    };
    let rel: String = parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Param(..) => "",
        })
        .collect();
    let refuse = |diags: &mut Vec<Diagnostic>, message: String, help: &str| {
        push(diags, Diagnostic::new(src, at.span, message, "cannot import").with_help(help.to_string()));
    };
    const WHERE: &str = "imports are `.wf` files inside the workflow's folder (relative to the importing file) or `stdlib/...` modules of the shipped library";
    if !rel.ends_with(".wf") {
        return refuse(diags, format!("cannot import `{rel}`: only `.wf` files can be imported"), WHERE);
    }
    if stack.stack.len() > bounds::MAX_IMPORT_DEPTH {
        return refuse(
            diags,
            format!("cannot import `{rel}`: imports nested deeper than {} levels", bounds::MAX_IMPORT_DEPTH),
            "flatten the chain of imports",
        );
    }
    if stack.count >= bounds::MAX_IMPORTS {
        return refuse(diags, format!("cannot import `{rel}`: more than {} imported files", bounds::MAX_IMPORTS), "import fewer files");
    }
    let Some(path) = import_path(&src.path, &rel) else {
        push(
            diags,
            Diagnostic::new(src, at.span, format!("cannot find the standard library for `{rel}`"), "not found")
                .with_help("set ENGINE_STDLIB to the folder holding the `stdlib-workflows` files"),
        );
        return;
    };
    let canon = match std::fs::canonicalize(&path) {
        Ok(c) => c,
        Err(e) => return refuse(diags, format!("cannot read imported file `{rel}`: {e}"), WHERE),
    };
    if !stack.roots.iter().any(|root| canon.starts_with(root)) {
        return refuse(diags, format!("cannot import `{rel}`: it leaves the workflow's folder"), WHERE);
    }
    if stack.stack.contains(&canon) {
        push(
            diags,
            Diagnostic::new(src, at.span, format!("import cycle: `{rel}` imports this file again"), "cycle")
                .with_help("a library may not import, directly or not, a file that imports it"),
        );
        return;
    }
    // The real path, without following a symlink swapped in since: what was checked is read.
    let text = match bounds::read_regular(&canon, bounds::MAX_IMPORT_BYTES, true) {
        Ok(t) => t,
        Err(e) => return refuse(diags, format!("cannot read imported file `{rel}`: {e}"), WHERE),
    };
    stack.count += 1;
    stack.stack.push(canon);
    let lib_src = Arc::new(SourceFile { path: path.clone(), text });
    let before = diags.len();
    let lib = parse_file(lib_src, stack, diags);
    stack.stack.pop();
    if diags.len() > before {
        // Point at the import too, so the user sees which import brought the problem in.
        push(
            diags,
            Diagnostic::new(src, at.span, format!("the import of `{rel}` has errors"), "imported here")
                .with_help("fix the errors reported in the imported file"),
        );
    }
    let Some(lib) = lib else { return };
    let templates = lib.templates.into_iter().map(|(k, mut t)| {
        t.imported = true;
        (k, t)
    });
    parsed.imports.insert(alias.as_str().to_string(), templates.collect());
}

/// `stdlib/x.wf` is looked up in `$ENGINE_STDLIB`, then `<exe dir>/../share/engine/stdlib-workflows`,
/// then the repository's `stdlib-workflows/`; anything else is relative to the importing file.
fn import_path(importer: &Path, rel: &str) -> Option<PathBuf> {
    let Some(lib) = rel.strip_prefix("stdlib/") else {
        let dir = importer.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Some(dir.join(rel));
    };
    stdlib_roots().into_iter().map(|r| r.join(lib)).find(|p| p.is_file())
}

/// Where `stdlib/` modules are looked up, in order.
fn stdlib_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("ENGINE_STDLIB") {
        roots.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
        roots.push(exe_dir.join("../share/engine/stdlib-workflows"));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib-workflows"));
    roots
}

fn block(loc: &Locator, p: Pair<Rule>) -> (Vec<Entry>, At) {
    let at = loc.pair(&p);
    let entries = p.into_inner().filter(|e| e.as_rule() == Rule::entry).map(|e| entry(loc, e)).collect();
    (entries, at)
}

fn list_items(loc: &Locator, p: Pair<Rule>) -> Vec<Val> {
    p.into_inner().filter(|v| matches!(v.as_rule(), Rule::string | Rule::list | Rule::word)).map(|v| value(loc, v)).collect()
}

fn value(loc: &Locator, p: Pair<Rule>) -> Val {
    let at = loc.pair(&p);
    match p.as_rule() {
        Rule::list => Val::List(list_items(loc, p), at),
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
                        parts.push(Part::Param(name.to_string(), loc.pair(&q)));
                    }
                    _ => {}
                }
            }
            if !lit.is_empty() || parts.is_empty() {
                parts.push(Part::Lit(lit));
            }
            Val::Str(parts, at)
        }
        _ => Val::Word(p.as_str().to_string(), at),
    }
}

/// One `key ...` entry. `stage` and `copy` are sugar for a mapping under that key.
fn entry(loc: &Locator, e: Pair<Rule>) -> Entry {
    let at = loc.pair(&e);
    let Some(inner) = e.into_inner().next() else {
        return Entry { key: String::new(), at, body: Body::Values(Vec::new()) };
    };
    let rule = inner.as_rule();
    let mut key = String::new();
    let mut key_at = at;
    let mut values = Vec::new();
    let mut sub = None;
    let mut fields: Vec<Entry> = Vec::new();
    let mut words = Vec::new();
    for p in inner.into_inner() {
        match p.as_rule() {
            Rule::key => {
                key = p.as_str().to_string();
                key_at = loc.pair(&p);
            }
            Rule::kw_stage | Rule::kw_copy => {
                key = p.as_str().to_string();
                key_at = loc.pair(&p);
            }
            Rule::kw_from | Rule::kw_to => words.push(p.as_str().to_string()),
            Rule::ident => {
                let field = if rule == Rule::stage { "name" } else { "from" };
                let v = Val::Word(p.as_str().to_string(), loc.pair(&p));
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

/// Keys that may be written several times; each occurrence adds one item to a list.
const REPEATED: &[(&str, &str)] = &[("stage", "stages"), ("copy", "copy"), ("caches", "caches")];
/// Keys whose YAML value is always a list, even when one value is written.
const LISTS: &[&str] = &["inputs", "outputs", "needs", "secrets", "command"];

/// Expansion state: where messages go and which parameters are in scope.
struct Expand<'a> {
    src: &'a Arc<SourceFile>,
    scope: &'a HashMap<String, String>,
    /// Imported text: every marker becomes this one (the call site in the main file).
    remap: Option<At>,
    /// What the desugaring may still produce.
    budget: &'a Budget,
}

/// The bytes of text (plus [`NODE_COST`] per node) the desugaring of one file may produce:
/// templates and matrices multiply text, and this bounds the product. Once spent, nothing more
/// is produced and the first place that went over is reported.
struct Budget {
    left: std::cell::Cell<usize>,
    over: std::cell::RefCell<Option<(Arc<SourceFile>, Span)>>,
}

const NODE_COST: usize = 16;

impl Budget {
    fn new() -> Budget {
        Budget { left: std::cell::Cell::new(bounds::MAX_EXPANDED_BYTES), over: std::cell::RefCell::new(None) }
    }

    /// Takes `n` from the budget; `false` (and the place remembered) when it is spent. `at` is
    /// in `src` (for an imported template, the library: never remapped to the call site).
    fn charge(&self, n: usize, src: &Arc<SourceFile>, at: At) -> bool {
        let left = self.left.get();
        if n <= left {
            self.left.set(left - n);
            return true;
        }
        self.left.set(0);
        let mut over = self.over.borrow_mut();
        if over.is_none() {
            *over = Some((src.clone(), at.span));
        }
        false
    }

    fn spent(&self) -> bool {
        self.over.borrow().is_some()
    }

    /// The diagnostic for a spent budget (once).
    fn report(&self, diags: &mut Vec<Diagnostic>) {
        if let Some((src, span)) = self.over.borrow_mut().take() {
            push(
                diags,
                Diagnostic::new(
                    &src,
                    span,
                    format!(
                        "the workflow expands to more than {} MiB (templates and matrices multiply text)",
                        bounds::MAX_EXPANDED_BYTES >> 20
                    ),
                    "expansion limit reached here",
                )
                .with_help("use fewer matrix values, shorter template parameters or fewer `${param}` in a template"),
            );
        }
    }
}

impl Expand<'_> {
    fn marker(&self, at: At) -> Marker {
        self.remap.unwrap_or(at).marker()
    }

    fn string(&self, parts: &[Part], at: At, diags: &mut Vec<Diagnostic>) -> String {
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Lit(s) => {
                    if self.budget.charge(s.len(), self.src, at) {
                        out.push_str(s)
                    }
                }
                Part::Param(name, at) => match self.scope.get(name) {
                    Some(v) => {
                        if self.budget.charge(v.len(), self.src, *at) {
                            out.push_str(v)
                        }
                    }
                    None => {
                        let hint = suggest::hint(name, self.scope.keys().map(String::as_str));
                        let known = if self.scope.is_empty() {
                            "no parameters are in scope here".to_string()
                        } else {
                            let mut k: Vec<&str> = self.scope.keys().map(String::as_str).collect();
                            k.sort();
                            format!("parameters in scope: {}", k.join(", "))
                        };
                        push(
                            diags,
                            Diagnostic::new(self.src, at.span, format!("unknown parameter `{name}`{hint}"), "unknown parameter")
                                .with_help(format!("{known}; write `\\${{` for a literal `${{`")),
                        );
                    }
                },
            }
        }
        out
    }

    fn scalar(&self, val: &Val, diags: &mut Vec<Diagnostic>) -> Node {
        self.budget.charge(NODE_COST, self.src, val.at());
        match val {
            Val::Str(parts, at) => {
                let mut s = MarkedScalarNode::new(marked_yaml::Span::new_start(self.marker(*at)), self.string(parts, *at, diags));
                // A quoted string stays a string (`cache "false"` is not a boolean), as in YAML.
                s.set_coerce(false);
                Node::Scalar(s)
            }
            Val::Word(w, at) => Node::Scalar(MarkedScalarNode::new(marked_yaml::Span::new_start(self.marker(*at)), w.as_str())),
            Val::List(items, at) => {
                let items = items.iter().map(|v| self.scalar(v, diags)).collect();
                Node::Sequence(MarkedSequenceNode::new(marked_yaml::Span::new_start(self.marker(*at)), items))
            }
        }
    }

    /// Entries to a mapping node; repeated keys become lists, others may appear once.
    fn mapping(&self, entries: &[Entry], at: At, diags: &mut Vec<Diagnostic>) -> MarkedMappingNode {
        let mut map = MarkedMappingNode::new_empty(marked_yaml::Span::new_start(self.marker(at)));
        let mut seen: HashMap<&str, At> = HashMap::new();
        for e in entries {
            if !self.budget.charge(NODE_COST + e.key.len(), self.src, e.at) {
                break;
            }
            let repeated = REPEATED.iter().find(|(k, _)| *k == e.key).map(|(_, yaml_key)| *yaml_key);
            let value = match &e.body {
                Body::Block(body, bat) => Node::Mapping(self.mapping(body, *bat, diags)),
                Body::Values(vals) if vals.len() == 1 && !LISTS.contains(&e.key.as_str()) => self.scalar(&vals[0], diags),
                Body::Values(vals) => {
                    let mut items = Vec::new();
                    for v in vals {
                        match v {
                            // `command ["a", "b"]` is the list itself, not a list of one list.
                            Val::List(inner, _) if vals.len() == 1 => items.extend(inner.iter().map(|i| self.scalar(i, diags))),
                            v => items.push(self.scalar(v, diags)),
                        }
                    }
                    Node::Sequence(MarkedSequenceNode::new(marked_yaml::Span::new_start(self.marker(e.at)), items))
                }
            };
            let key_node = |k: &str| MarkedScalarNode::new(marked_yaml::Span::new_start(self.marker(e.at)), k);
            if let Some(yaml_key) = repeated {
                let existing = map.get_mut(&key_node(yaml_key) as &MarkedScalarNode);
                match existing {
                    Some(Node::Sequence(seq)) => seq.push(value),
                    _ => {
                        let seq = MarkedSequenceNode::new(marked_yaml::Span::new_start(self.marker(e.at)), vec![value]);
                        map.insert(key_node(yaml_key), Node::Sequence(seq));
                    }
                }
                continue;
            }
            if let Some(first) = seen.get(e.key.as_str()) {
                let d = Diagnostic::new(self.src, e.at.span, format!("duplicate key `{}`", e.key), "defined again here")
                    .with_help("every key may appear only once in a block; rename or remove one")
                    .with_related(Diagnostic::new(self.src, first.span, format!("`{}` first defined here", e.key), "first definition"));
                push(diags, d);
                continue;
            }
            seen.insert(&e.key, e.at);
            map.insert(key_node(&e.key), value);
        }
        map
    }
}

/// Instance body over template body: a key written in the instance replaces the template's.
fn merge(template: &[Entry], own: &[Entry]) -> Vec<Entry> {
    let written: std::collections::HashSet<&str> = own.iter().map(|o| o.key.as_str()).collect();
    let mut out: Vec<Entry> = template.iter().filter(|t| !written.contains(t.key.as_str())).cloned().collect();
    out.extend(own.iter().cloned());
    out
}

/// Every combination of the matrix axes, as (name suffix values, scope).
fn combinations(
    src: &Arc<SourceFile>,
    matrix: &[(String, Vec<Val>, At)],
    budget: &Budget,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Vec<String>, HashMap<String, String>)> {
    let mut out = vec![(Vec::new(), HashMap::new())];
    let none = HashMap::new();
    let ex = Expand { src, scope: &none, remap: None, budget };
    for (name, values, at) in matrix {
        if values.is_empty() {
            push(
                diags,
                Diagnostic::new(src, at.span, format!("matrix axis `{name}` has no values"), "empty axis")
                    .with_help("list at least one value, e.g. `target in [\"x86\", \"arm\"]`"),
            );
        }
        let mut next = Vec::new();
        for (suffix, scope) in &out {
            for v in values {
                // Each combination holds copies of its values (suffix and scope): charged too.
                let copies = suffix.iter().map(String::len).sum::<usize>() * 2 + NODE_COST;
                if !budget.charge(copies, src, *at) {
                    return next;
                }
                let text = match v {
                    Val::Str(parts, vat) => ex.string(parts, *vat, diags),
                    Val::Word(w, wat) => {
                        if !budget.charge(w.len() * 2, src, *wat) {
                            return next;
                        }
                        w.clone()
                    }
                    Val::List(_, vat) => {
                        push(
                            diags,
                            Diagnostic::new(src, vat.span, "a matrix value must be a single string or name", "a list")
                                .with_help("write the values as `[\"a\", \"b\"]`"),
                        );
                        continue;
                    }
                };
                let (mut s, mut sc) = (suffix.clone(), scope.clone());
                s.push(text.clone());
                sc.insert(name.clone(), text);
                next.push((s, sc));
            }
        }
        out = next;
    }
    out
}

/// The whole YAML-shaped tree of the main file.
fn build(p: &Parsed, diags: &mut Vec<Diagnostic>) -> Node {
    let loc = Locator::new(&p.src.text);
    let file_at = loc.at(0, 0);
    if p.top.is_empty() && p.decls.is_empty() {
        // Nothing but comments: the same "empty file" the YAML reader reports for an empty document.
        return Node::Scalar(MarkedScalarNode::new(marked_yaml::Span::new_start(file_at.marker()), ""));
    }
    let none = HashMap::new();
    let budget = Budget::new();
    let top_ex = Expand { src: &p.src, scope: &none, remap: None, budget: &budget };
    let mut root = top_ex.mapping(&p.top, file_at, diags);
    let mut sections: [(Kind, &str, MarkedMappingNode, HashMap<String, At>); 2] = [
        (Kind::Image, "images", MarkedMappingNode::new_empty(marked_yaml::Span::new_start(file_at.marker())), HashMap::new()),
        (Kind::Step, "steps", MarkedMappingNode::new_empty(marked_yaml::Span::new_start(file_at.marker())), HashMap::new()),
    ];
    // Steps (and images) declared so far, counted before anything is expanded.
    let mut declared = [0usize; 2];
    for d in &p.decls {
        if budget.spent() {
            break;
        }
        let Some((_, what, section, names)) = sections.iter_mut().find(|s| s.0 == d.kind) else {
            continue;
        };
        let what = if *what == "images" { "image" } else { "step" };
        if let Some((_, _, at)) = d.matrix.get(bounds::MAX_AXES) {
            push(
                diags,
                Diagnostic::new(
                    &p.src,
                    at.span,
                    format!("the matrix of {what} `{}` has {} axes, more than the maximum of {}", d.name, d.matrix.len(), bounds::MAX_AXES),
                    "too many axes",
                )
                .with_help("a matrix has a few axes; the values of all of them make up the step's name"),
            );
            continue;
        }
        let count = d.matrix.iter().fold(1usize, |n, (_, values, _)| n.saturating_mul(values.len()));
        let total = &mut declared[usize::from(d.kind == Kind::Step)];
        *total = total.saturating_add(count);
        if *total > bounds::MAX_STEPS {
            let (message, at) = match d.matrix.first() {
                Some((_, _, at)) if count > bounds::MAX_STEPS => {
                    let sizes: Vec<String> = d.matrix.iter().map(|(_, v, _)| v.len().to_string()).collect();
                    (
                        format!(
                            "the matrix of {what} `{}` expands to {} {what}s ({}), more than the maximum of {}",
                            d.name,
                            if count == usize::MAX { "too many".to_string() } else { count.to_string() },
                            sizes.join(" x "),
                            bounds::MAX_STEPS
                        ),
                        *at,
                    )
                }
                _ => (format!("the workflow declares more than {} {what}s (matrices expanded)", bounds::MAX_STEPS), d.at),
            };
            push(
                diags,
                Diagnostic::new(&p.src, at.span, message, "too many")
                    .with_help(format!("a workflow has at most {} {what}s after matrix expansion; split it", bounds::MAX_STEPS)),
            );
            break;
        }
        for (suffix, scope) in combinations(&p.src, &d.matrix, &budget, diags) {
            if budget.spent() {
                break;
            }
            let name = if d.matrix.is_empty() { d.name.clone() } else { format!("{}[{}]", d.name, suffix.join(",")) };
            if let Some(first) = names.get(&name) {
                push(
                    diags,
                    Diagnostic::new(&p.src, d.at.span, format!("duplicate {what} `{name}`"), "defined again here")
                        .with_help(format!("every {what} name may appear only once; rename or remove one"))
                        .with_related(Diagnostic::new(&p.src, first.span, format!("`{name}` first defined here"), "first definition")),
                );
                continue;
            }
            names.insert(name.clone(), d.at);
            let own_ex = Expand { src: &p.src, scope: &scope, remap: None, budget: &budget };
            let (own, own_at) = d.body.clone().unwrap_or((Vec::new(), d.at));
            let node = match &d.call {
                None => own_ex.mapping(&own, own_at, diags),
                Some(call) => match instantiate(p, d.kind, call, &scope, &own, own_at, &budget, diags) {
                    Some(n) => n,
                    None => continue,
                },
            };
            let key = MarkedScalarNode::new(marked_yaml::Span::new_start(d.at.marker()), name);
            section.insert(key, Node::Mapping(node));
        }
    }
    budget.report(diags);
    for (_, key, section, _) in sections {
        if !section.is_empty() {
            root.insert(MarkedScalarNode::new(marked_yaml::Span::new_start(file_at.marker()), key), Node::Mapping(section));
        }
    }
    Node::Mapping(root)
}

/// `= template(args) { own }`: the template's body with its parameters bound, then `own` over it.
#[allow(clippy::too_many_arguments)]
fn instantiate(
    p: &Parsed,
    kind: Kind,
    call: &Call,
    scope: &HashMap<String, String>,
    own: &[Entry],
    own_at: At,
    budget: &Budget,
    diags: &mut Vec<Diagnostic>,
) -> Option<MarkedMappingNode> {
    let t = match call.name.split_once('.') {
        Some((alias, name)) => match p.imports.get(alias) {
            Some(lib) => lib.get(name),
            None => {
                let hint = suggest::hint(alias, p.imports.keys().map(String::as_str));
                push(
                    diags,
                    Diagnostic::new(&p.src, call.at.span, format!("unknown import `{alias}`{hint}"), "not imported")
                        .with_help("import a library with `import \"path.wf\" as name`"),
                );
                return None;
            }
        },
        None => p.templates.get(&call.name),
    };
    let Some(t) = t else {
        let hint = match call.name.split_once('.') {
            Some((alias, name)) => suggest::hint(name, p.imports.get(alias).into_iter().flat_map(|l| l.keys().map(String::as_str))),
            None => suggest::hint(&call.name, p.templates.keys().map(String::as_str)),
        };
        push(
            diags,
            Diagnostic::new(&p.src, call.at.span, format!("unknown template `{}`{hint}", call.name), "no such template")
                .with_help("define it with `template NAME(params) { ... }` or import it"),
        );
        return None;
    };
    let want = if kind == Kind::Image { "an image" } else { "a step" };
    if t.kind != kind {
        push(
            diags,
            Diagnostic::new(&p.src, call.at.span, format!("template `{}` is not {want} template", call.name), "wrong kind of template")
                .with_help("image templates are written `template image NAME(...)` and used by `image`; step templates by `step`"),
        );
        return None;
    }
    if t.params.len() != call.args.len() {
        push(
            diags,
            Diagnostic::new(
                &p.src,
                call.at.span,
                format!("template `{}` takes {} argument(s), {} given", call.name, t.params.len(), call.args.len()),
                "wrong number of arguments",
            )
            .with_help(format!("`{}({})`", call.name, t.params.join(", "))),
        );
        return None;
    }
    let caller = Expand { src: &p.src, scope, remap: None, budget };
    let mut bound = HashMap::new();
    for (param, arg) in t.params.iter().zip(&call.args) {
        let v = match arg {
            // A bare name that is a parameter in scope (a matrix axis) passes its value.
            Val::Word(w, wat) => {
                let v = scope.get(w).cloned().unwrap_or_else(|| w.clone());
                // Every instance holds its own copy of its arguments.
                if !budget.charge(v.len(), &p.src, *wat) {
                    return None;
                }
                v
            }
            Val::Str(parts, sat) => caller.string(parts, *sat, diags),
            Val::List(_, at) => {
                push(
                    diags,
                    Diagnostic::new(&p.src, at.span, "a template argument must be a single string or name", "a list")
                        .with_help("pass one value per parameter"),
                );
                return None;
            }
        };
        bound.insert(param.clone(), v);
    }
    let template_ex = Expand { src: &t.src, scope: &bound, remap: t.imported.then_some(call.at), budget };
    // Bind the template's parameters first (its own scope), then merge: the instance's entries,
    // interpolated in the caller's scope, win key by key.
    let before = diags.len();
    let body = bind(&t.body, &template_ex, diags);
    if diags.len() > before {
        return None;
    }
    Some(caller.mapping(&merge(&body, own), own_at, diags))
}

/// The template's entries with every `${param}` replaced by its value (and, for imported
/// templates, every position moved to the call site), so they can be merged with the instance's.
fn bind(entries: &[Entry], ex: &Expand, diags: &mut Vec<Diagnostic>) -> Vec<Entry> {
    let at = |a: At| ex.remap.unwrap_or(a);
    let val = |v: &Val, diags: &mut Vec<Diagnostic>| -> Val {
        fn go(v: &Val, ex: &Expand, diags: &mut Vec<Diagnostic>) -> Val {
            let at = |a: At| ex.remap.unwrap_or(a);
            match v {
                Val::Str(parts, a) => Val::Str(vec![Part::Lit(ex.string(parts, *a, diags))], at(*a)),
                Val::Word(w, a) => Val::Word(w.clone(), at(*a)),
                Val::List(items, a) => Val::List(items.iter().map(|i| go(i, ex, diags)).collect(), at(*a)),
            }
        }
        go(v, ex, diags)
    };
    entries
        .iter()
        .map(|e| Entry {
            key: e.key.clone(),
            at: at(e.at),
            body: match &e.body {
                Body::Values(vs) => Body::Values(vs.iter().map(|v| val(v, diags)).collect()),
                Body::Block(b, a) => Body::Block(bind(b, ex, diags), at(*a)),
            },
        })
        .collect()
}

/// Collects a diagnostic, up to [`bounds::MAX_COLLECTED`]: a hostile file can have a problem in
/// every line, and past the bound they are dropped rather than kept.
fn push(diags: &mut Vec<Diagnostic>, d: Diagnostic) {
    if diags.len() < bounds::MAX_COLLECTED {
        diags.push(d);
    }
}

/// A pest error as a diagnostic in the user's words: never a grammar rule name.
fn syntax_error(src: &SourceFile, e: &pest::error::Error<Rule>) -> Diagnostic {
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
        Rule::ident | Rule::qname => "a name",
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
