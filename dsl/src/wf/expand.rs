//! Stage 3 of the `.wf` front end: expansion. Templates are instantiated (their parameters bound,
//! the instance's own entries merged over them), matrices multiplied out into named steps, and
//! every `${param}` replaced by its value. The result is a tree of plain values in the YAML
//! shape ([`XBody`]) that [`super::lower`] turns into nodes.
//!
//! Expansion is where text multiplies, so it is charged against [`bounds::MAX_EXPANDED_BYTES`]
//! as it is produced ([`Budget`]), and step counts and matrix sizes are checked before any
//! combination is built.
//!
//! This module must not resolve or validate workflow semantics (no defaults, no key lists).

use std::collections::HashMap;
use std::sync::Arc;

use super::ast::{At, Body, Call, Entry, Kind, Locator, Param, Part, Unit, Val};
use crate::diagnostic::{push, Diagnostic};
use crate::ir::{SourceFile, Span};
use crate::{bounds, suggest};

/// Keys whose YAML value is always a list, even when one value is written.
const LISTS: &[&str] = &["inputs", "outputs", "needs", "secrets", "command", "runs_on"];

/// An expanded value: strings interpolated.
#[derive(Debug, Clone)]
pub(super) enum XVal {
    /// A quoted string: stays a string in YAML (`cache "false"` is not a boolean).
    Str(String, At),
    /// A bare word or number, as written.
    Word(String, At),
    List(Vec<XVal>, At),
}

/// An expanded entry.
#[derive(Debug, Clone)]
pub(super) struct XEntry {
    pub key: String,
    pub at: At,
    pub body: XBody,
}

/// What an entry's value is in the YAML shape.
#[derive(Debug, Clone)]
pub(super) enum XBody {
    One(XVal),
    Seq(Vec<XVal>),
    Block(Vec<XEntry>, At),
}

/// One expanded step or image: its name (matrix suffix included) and body.
pub(super) struct Declared {
    pub name: String,
    pub at: At,
    pub body: Vec<XEntry>,
    pub body_at: At,
}

/// The expanded workflow file.
pub(super) struct Expanded {
    /// The start of the file.
    pub file_at: At,
    /// Nothing but comments.
    pub empty: bool,
    pub top: Vec<XEntry>,
    pub images: Vec<Declared>,
    pub steps: Vec<Declared>,
}

/// Expansion state: where messages go and which parameters are in scope.
struct Expand<'a> {
    src: &'a Arc<SourceFile>,
    scope: &'a HashMap<String, String>,
    /// Imported text: every position becomes this one (the call site in the main file).
    remap: Option<At>,
    /// What the expansion may still produce.
    budget: &'a Budget,
}

/// The bytes of text (plus [`NODE_COST`] per node) the expansion of one file may produce:
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

    fn value(&self, val: &Val, diags: &mut Vec<Diagnostic>) -> XVal {
        self.budget.charge(NODE_COST, self.src, val.at());
        match val {
            Val::Str(parts, at) => XVal::Str(self.string(parts, *at, diags), *at),
            Val::Word(w, at) => XVal::Word(w.clone(), *at),
            Val::List(items, at) => XVal::List(items.iter().map(|v| self.value(v, diags)).collect(), *at),
        }
    }

    /// The entries of a block, expanded; past a spent budget the rest are dropped.
    fn entries(&self, entries: &[Entry], diags: &mut Vec<Diagnostic>) -> Vec<XEntry> {
        let mut out = Vec::new();
        for e in entries {
            if !self.budget.charge(NODE_COST + e.key.len(), self.src, e.at) {
                break;
            }
            let body = match &e.body {
                Body::Block(body, bat) => XBody::Block(self.entries(body, diags), *bat),
                Body::Values(vals) if vals.len() == 1 && !LISTS.contains(&e.key.as_str()) => XBody::One(self.value(&vals[0], diags)),
                Body::Values(vals) => {
                    let mut items = Vec::new();
                    for v in vals {
                        match v {
                            // `command ["a", "b"]` is the list itself, not a list of one list.
                            Val::List(inner, _) if vals.len() == 1 => items.extend(inner.iter().map(|i| self.value(i, diags))),
                            v => items.push(self.value(v, diags)),
                        }
                    }
                    XBody::Seq(items)
                }
            };
            out.push(XEntry { key: e.key.clone(), at: e.at, body });
        }
        out
    }
}

/// A misspelt `${param}` is an error even in a template nobody instantiates (yet); the same
/// message from an instantiation is dropped as a duplicate when the diagnostics are sorted.
pub(super) fn check_templates(unit: &Unit, diags: &mut Vec<Diagnostic>) {
    let mut names: Vec<&String> = unit.templates.keys().collect();
    names.sort();
    for name in names {
        let t = &unit.templates[name];
        let scope = t.params.iter().map(|p| (p.name.clone(), String::new())).collect();
        let budget = Budget::new();
        let ex = Expand { src: &t.src, scope: &scope, remap: None, budget: &budget };
        bind(&t.body, &ex, diags);
        check_params(&t.src, &t.params, diags);
        budget.report(diags);
    }
}

/// A template's parameters: each name once, defaults last (a call passes its arguments in order),
/// and a default is a plain string (it is bound before any parameter is).
fn check_params(src: &SourceFile, params: &[Param], diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    let mut defaulted: Option<&Param> = None;
    for p in params {
        if !seen.insert(p.name.as_str()) {
            push(
                diags,
                Diagnostic::new(src, p.at.span, format!("parameter `{}` is declared twice", p.name), "declared again")
                    .with_help("give each parameter its own name"),
            );
        }
        match (&p.default, defaulted) {
            (Some(Val::Str(parts, at)), _) => {
                defaulted = Some(p);
                if let Some(Part::Param(name, _)) = parts.iter().find(|part| matches!(part, Part::Param(..))) {
                    push(
                        diags,
                        Diagnostic::new(src, at.span, format!("a default value cannot use `${{{name}}}`"), "not a plain string")
                            .with_help("write the value itself; `\\${` is a literal `${`"),
                    );
                }
            }
            (None, Some(d)) => push(
                diags,
                Diagnostic::new(
                    src,
                    p.at.span,
                    format!("parameter `{}` has no default but follows `{}`, which has one", p.name, d.name),
                    "needs a default",
                )
                .with_help("put the parameters with defaults last"),
            ),
            _ => {}
        }
    }
}

/// The whole workflow file, expanded.
pub(super) fn expand(p: &Unit, diags: &mut Vec<Diagnostic>) -> Expanded {
    let file_at = Locator::new(&p.src.text).at(0, 0);
    let mut out =
        Expanded { file_at, empty: p.top.is_empty() && p.decls.is_empty(), top: Vec::new(), images: Vec::new(), steps: Vec::new() };
    if out.empty {
        return out;
    }
    let none = HashMap::new();
    let budget = Budget::new();
    let top_ex = Expand { src: &p.src, scope: &none, remap: None, budget: &budget };
    out.top = top_ex.entries(&p.top, diags);
    // Names declared so far (images, steps), and the count, before anything is expanded.
    let mut names: [HashMap<String, At>; 2] = [HashMap::new(), HashMap::new()];
    let mut declared = [0usize; 2];
    for d in &p.decls {
        if budget.spent() {
            break;
        }
        let i = usize::from(d.kind == Kind::Step);
        let what = if d.kind == Kind::Image { "image" } else { "step" };
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
        declared[i] = declared[i].saturating_add(count);
        if declared[i] > bounds::MAX_STEPS {
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
            if let Some(first) = names[i].get(&name) {
                push(
                    diags,
                    Diagnostic::new(&p.src, d.at.span, format!("duplicate {what} `{name}`"), "defined again here")
                        .with_help(format!("every {what} name may appear only once; rename or remove one"))
                        .with_related(Diagnostic::new(&p.src, first.span, format!("`{name}` first defined here"), "first definition")),
                );
                continue;
            }
            names[i].insert(name.clone(), d.at);
            let own_ex = Expand { src: &p.src, scope: &scope, remap: None, budget: &budget };
            let (own, body_at) = d.body.clone().unwrap_or((Vec::new(), d.at));
            let body = match &d.call {
                None => own_ex.entries(&own, diags),
                Some(call) => match instantiate(p, d.kind, call, &scope, &own, &budget, diags) {
                    Some(body) => body,
                    None => continue,
                },
            };
            let section = if d.kind == Kind::Image { &mut out.images } else { &mut out.steps };
            section.push(Declared { name, at: d.at, body, body_at });
        }
    }
    budget.report(diags);
    out
}

/// Every combination of the matrix axes, as (name suffix values, scope).
fn combinations(
    src: &Arc<SourceFile>,
    matrix: &[super::ast::Axis],
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

/// `= template(args) { own }`: the template's body with its parameters bound, then `own` over it.
fn instantiate(
    p: &Unit,
    kind: Kind,
    call: &Call,
    scope: &HashMap<String, String>,
    own: &[Entry],
    budget: &Budget,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<XEntry>> {
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
    let signature = || {
        let params: Vec<String> = t
            .params
            .iter()
            .map(|p| match &p.default {
                Some(Val::Str(parts, _)) => format!("{} = \"{}\"", p.name, literal(parts)),
                _ => p.name.clone(),
            })
            .collect();
        format!("`{}({})`", call.name, params.join(", "))
    };
    let wrong = |diags: &mut Vec<Diagnostic>, span: Span, message: String, label: &str| {
        push(diags, Diagnostic::new(&p.src, span, message, label.to_string()).with_help(signature()));
    };
    if call.args.len() > t.params.len() {
        let message = format!("template `{}` takes {} argument(s), {} given", call.name, t.params.len(), call.args.len());
        wrong(diags, call.at.span, message, "wrong number of arguments");
        return None;
    }
    let caller = Expand { src: &p.src, scope, remap: None, budget };
    // An argument's value: a bare name that is a parameter in scope (a matrix axis) passes its
    // value; every instance holds its own copy of its arguments.
    let arg_value = |arg: &Val, diags: &mut Vec<Diagnostic>| -> Option<String> {
        match arg {
            Val::Word(w, wat) => {
                let v = scope.get(w).cloned().unwrap_or_else(|| w.clone());
                budget.charge(v.len(), &p.src, *wat).then_some(v)
            }
            Val::Str(parts, sat) => Some(caller.string(parts, *sat, diags)),
            Val::List(_, at) => {
                push(
                    diags,
                    Diagnostic::new(&p.src, at.span, "a template argument must be a single string or name", "a list")
                        .with_help("pass one value per parameter"),
                );
                None
            }
        }
    };
    let mut bound = HashMap::new();
    for (param, arg) in t.params.iter().map(|p| &p.name).zip(&call.args) {
        let v = arg_value(arg, diags)?;
        bound.insert(param.clone(), v);
    }
    for (name, name_at, arg) in &call.named {
        if !t.params.iter().any(|q| &q.name == name) {
            let hint = suggest::hint(name, t.params.iter().map(|q| q.name.as_str()));
            wrong(diags, name_at.span, format!("template `{}` has no parameter `{name}`{hint}", call.name), "no such parameter");
            return None;
        }
        if bound.contains_key(name) {
            wrong(diags, name_at.span, format!("parameter `{name}` is given twice"), "given again");
            return None;
        }
        let v = arg_value(arg, diags)?;
        bound.insert(name.clone(), v);
    }
    // Parameters left out take their defaults (plain strings, checked by `check_params`).
    for param in &t.params {
        match &param.default {
            _ if bound.contains_key(&param.name) => {}
            Some(Val::Str(parts, _)) => {
                bound.insert(param.name.clone(), literal(parts));
            }
            _ => {
                let message = format!("template `{}` needs the argument `{}`", call.name, param.name);
                wrong(diags, call.at.span, message, "missing argument");
                return None;
            }
        }
    }
    let template_ex = Expand { src: &t.src, scope: &bound, remap: t.imported.then_some(call.at), budget };
    // Bind the template's parameters first (its own scope), then merge: the instance's entries,
    // interpolated in the caller's scope, win key by key.
    let before = diags.len();
    let body = bind(&t.body, &template_ex, diags);
    if diags.len() > before {
        return None;
    }
    Some(caller.entries(&merge(&body, own), diags))
}

/// The literal text of a string (a default value; its `${...}` are refused by `check_params`).
fn literal(parts: &[Part]) -> String {
    parts.iter().map(|p| if let Part::Lit(s) = p { s.as_str() } else { "" }).collect()
}

/// The template's entries with every `${param}` replaced by its value (and, for imported
/// templates, every position moved to the call site), so they can be merged with the instance's.
fn bind(entries: &[Entry], ex: &Expand, diags: &mut Vec<Diagnostic>) -> Vec<Entry> {
    let at = |a: At| ex.remap.unwrap_or(a);
    fn val(v: &Val, ex: &Expand, diags: &mut Vec<Diagnostic>) -> Val {
        let at = |a: At| ex.remap.unwrap_or(a);
        match v {
            Val::Str(parts, a) => Val::Str(vec![Part::Lit(ex.string(parts, *a, diags))], at(*a)),
            Val::Word(w, a) => Val::Word(w.clone(), at(*a)),
            Val::List(items, a) => Val::List(items.iter().map(|i| val(i, ex, diags)).collect(), at(*a)),
        }
    }
    entries
        .iter()
        .map(|e| Entry {
            key: e.key.clone(),
            at: at(e.at),
            body: match &e.body {
                Body::Values(vs) => Body::Values(vs.iter().map(|v| val(v, ex, diags)).collect()),
                Body::Block(b, a) => Body::Block(bind(b, ex, diags), at(*a)),
            },
        })
        .collect()
}

/// Keys whose block is a map of independent settings: an instance's block is merged into the
/// template's, the instance winning setting by setting (`env { RUST_LOG "debug" }` keeps the
/// template's `CARGO_HOME`).
pub(super) const MERGED_BLOCKS: [&str; 2] = ["env", "limits"];

/// Instance body over template body: a key written in the instance replaces the template's,
/// except the blocks of `MERGED_BLOCKS`, merged entry by entry.
fn merge(template: &[Entry], own: &[Entry]) -> Vec<Entry> {
    let merged = |key: &str| MERGED_BLOCKS.contains(&key);
    let written: std::collections::HashSet<&str> = own.iter().map(|o| o.key.as_str()).collect();
    let mut out: Vec<Entry> = template.iter().filter(|t| !written.contains(t.key.as_str())).cloned().collect();
    for o in own {
        let from_template = template.iter().find(|t| t.key == o.key && merged(&t.key));
        match (from_template, &o.body) {
            (Some(Entry { body: Body::Block(t_entries, _), .. }), Body::Block(o_entries, o_at)) => {
                let mut entry = o.clone();
                entry.body = Body::Block(merge(t_entries, o_entries), *o_at);
                out.push(entry);
            }
            _ => out.push(o.clone()),
        }
    }
    out
}
