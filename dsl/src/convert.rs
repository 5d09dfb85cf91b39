//! Conversion between the two workflow syntaxes (`engine convert`). Owns the printers: the
//! YAML-shaped node tree printed as `.wf` text, and as YAML text. It works on the node tree, not
//! the resolved IR, so `env`, `defaults` and `images` stay where the author wrote them.
//!
//! This module must not resolve or validate workflow semantics: every input is first loaded by
//! the normal front end (a broken file gives its usual [`LoadError`]), and the printed text must
//! load to the same IR. DSL → YAML prints the *desugared* tree: templates, matrices and imports
//! are expanded, since YAML has none of them. Comments are not carried over.

use std::path::Path;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use crate::ir::{SourceFile, Span};
use crate::{Diagnostic, LoadError};

/// Keys whose sequence of mappings the DSL writes as repeated entries.
const STAGES: &str = "stages";
/// A YAML instance of a library template: `uses: MODULE#TEMPLATE` with `with:` arguments.
const USES: &str = "uses";
const WITH: &str = "with";

/// The `.wf` side's lowered tree printed as YAML.
pub(crate) fn wf_to_yaml(root: &Node) -> Result<String, LoadError> {
    let mut out = String::new();
    match root.as_mapping() {
        Some(m) => yaml_mapping(m, 0, &mut out),
        None => out.push_str("{}\n"),
    }
    Ok(out)
}

/// A YAML workflow's tree (already checked to load) printed as `.wf` text.
pub(crate) fn yaml_to_wf(path: &Path, text: &str, root: &Node) -> Result<String, LoadError> {
    let mut p = WfPrinter { src: SourceFile { path: path.to_path_buf(), text: text.to_string() }, out: String::new(), diags: Vec::new() };
    p.file(root);
    if p.diags.is_empty() {
        Ok(p.out)
    } else {
        Err(LoadError::Invalid { path: path.to_path_buf(), diagnostics: p.diags })
    }
}

/// A DSL string literal: every `"`, `\`, `$`, newline and tab escaped.
pub(crate) fn wf_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A declaration head for `name`: the name itself, or for a matrix-instance step name
/// `base[a,b]` the same name (`step base[a,b]`, as `needs` writes it).
fn decl_name(name: &str, step: bool) -> Option<String> {
    if is_ident(name) {
        return Some(name.to_string());
    }
    let (base, rest) = name.split_once('[')?;
    let values = rest.strip_suffix(']')?;
    if !step || !is_ident(base) || !values.split(',').all(is_word) {
        return None;
    }
    Some(name.to_string())
}

struct WfPrinter {
    src: SourceFile,
    out: String,
    diags: Vec<Diagnostic>,
}

impl WfPrinter {
    fn error(&mut self, node: &Node, msg: String) {
        let (line, col, ch) = node.span().start().map_or((1, 1, 0), |m| (m.line(), m.column(), m.character()));
        let offset = self.src.text.char_indices().nth(ch).map_or(0, |(i, _)| i);
        let span = Span { offset, len: 1, line, col };
        self.diags.push(
            Diagnostic::new(&self.src, span, msg, "cannot be written in the DSL")
                .with_help("the `.wf` DSL cannot express this; keep the workflow in YAML"),
        );
    }

    fn file(&mut self, root: &Node) {
        let Some(top) = root.as_mapping() else { return };
        let mut sections = Vec::new();
        for (k, v) in top.iter() {
            match k.as_str() {
                "images" | "steps" => sections.push((k.as_str(), v)),
                _ => {
                    self.entry(k, v, 0);
                }
            }
        }
        let aliases = self.imports(&sections);
        for (section, v) in sections {
            let kw = if section == "images" { "image" } else { "step" };
            let Some(m) = v.as_mapping() else { continue };
            for (name, body) in m.iter() {
                let Some(head) = decl_name(name.as_str(), kw == "step") else {
                    self.error(v, format!("{kw} name `{}` is not a DSL name", name.as_str()));
                    continue;
                };
                self.out.push('\n');
                self.out.push_str(&format!("{kw} {head} "));
                match body.as_mapping().and_then(|b| Some((b, b.get_scalar(USES)?))) {
                    Some((b, uses)) => self.instance(b, uses.as_str(), &aliases, section == "images"),
                    None => self.block(body, 0, section == "images"),
                }
                self.out.push('\n');
            }
        }
    }

    /// One `import` per module that a `uses:` names, aliased after the module's file name.
    fn imports(&mut self, sections: &[(&str, &Node)]) -> Vec<(String, String)> {
        let mut aliases: Vec<(String, String)> = Vec::new();
        for (_, v) in sections {
            let Some(m) = v.as_mapping() else { continue };
            for (_, body) in m.iter() {
                let Some(uses) = body.as_mapping().and_then(|b| b.get_scalar(USES)) else { continue };
                let Some((module, _)) = uses.as_str().rsplit_once('#') else { continue };
                if aliases.iter().any(|(m, _)| m == module) {
                    continue;
                }
                let stem = Path::new(module)
                    .file_stem()
                    .map(|s| s.to_string_lossy().replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_"));
                let stem = stem.filter(|s| is_ident(s)).unwrap_or_else(|| "lib".into());
                let mut alias = stem.clone();
                let mut n = 2;
                while aliases.iter().any(|(_, a)| *a == alias) {
                    alias = format!("{stem}{n}");
                    n += 1;
                }
                self.out.push_str(&format!("import {} as {alias}\n", wf_quote(module)));
                aliases.push((module.to_string(), alias));
            }
        }
        aliases
    }

    /// `= alias.template(name = "value", ...) { other keys }` for a `uses:` entry.
    fn instance(&mut self, b: &MarkedMappingNode, uses: &str, aliases: &[(String, String)], image: bool) {
        let (module, template) = uses.rsplit_once('#').unwrap_or((uses, ""));
        let alias = aliases.iter().find(|(m, _)| m == module).map_or("lib", |(_, a)| a.as_str());
        let mut args = Vec::new();
        if let Some(with) = b.get_node(WITH).and_then(Node::as_mapping) {
            for (k, v) in with.iter() {
                match v.as_scalar() {
                    Some(s) if is_ident(k.as_str()) => args.push(format!("{} = {}", k.as_str(), wf_quote(s.as_str()))),
                    _ => self.error(v, format!("argument `{}` cannot be written in the DSL", k.as_str())),
                }
            }
        }
        self.out.push_str(&format!("= {alias}.{template}({})", args.join(", ")));
        let rest: MarkedMappingNode =
            b.iter().filter(|(k, _)| !matches!(k.as_str(), USES | WITH)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !rest.is_empty() {
            self.out.push(' ');
            self.block(&Node::Mapping(rest), 0, image);
        }
    }

    /// `{ ... }` for a mapping, one key per line at `indent + 2`.
    fn block(&mut self, node: &Node, indent: usize, image: bool) {
        let Some(m) = node.as_mapping() else {
            self.error(node, "expected a mapping".into());
            return;
        };
        if m.is_empty() {
            self.out.push_str("{ }");
            return;
        }
        self.out.push_str("{\n");
        self.entries(m, indent + 2, image);
        self.out.push_str(&" ".repeat(indent));
        self.out.push('}');
    }

    fn entries(&mut self, m: &MarkedMappingNode, indent: usize, image: bool) {
        for (k, v) in m.iter() {
            if image && k.as_str() == STAGES {
                if let Some(seq) = v.as_sequence() {
                    for st in seq.iter() {
                        self.stage(st, indent);
                    }
                    continue;
                }
            }
            self.entry(k, v, indent);
        }
    }

    fn stage(&mut self, st: &Node, indent: usize) {
        let Some(m) = st.as_mapping() else {
            self.error(st, "a stage must be a mapping".into());
            return;
        };
        let name = m.get_scalar("name").map(|s| s.as_str().to_string());
        let (Some(name), Some(from)) = (name, m.get_node("from")) else {
            self.error(st, "a stage needs `name` and `from`".into());
            return;
        };
        if !is_ident(&name) {
            self.error(st, format!("stage name `{name}` is not a DSL name"));
            return;
        }
        let pad = " ".repeat(indent);
        self.out.push_str(&format!("{pad}stage {name} from "));
        self.value(from);
        let rest: Vec<_> = m.iter().filter(|(k, _)| !matches!(k.as_str(), "name" | "from")).collect();
        if rest.is_empty() {
            self.out.push('\n');
            return;
        }
        self.out.push_str(" {\n");
        for (k, v) in rest {
            if k.as_str() == "copy" {
                if let Some(seq) = v.as_sequence() {
                    for c in seq.iter() {
                        self.copy(c, indent + 2);
                    }
                    continue;
                }
            }
            self.entry(k, v, indent + 2);
        }
        self.out.push_str(&format!("{pad}}}\n"));
    }

    fn copy(&mut self, c: &Node, indent: usize) {
        let Some(m) = c.as_mapping() else {
            self.error(c, "a copy must be a mapping".into());
            return;
        };
        let (Some(src), Some(dst)) = (m.get_node("src"), m.get_node("dst")) else {
            self.error(c, "a copy needs `src` and `dst`".into());
            return;
        };
        self.out.push_str(&format!("{}copy ", " ".repeat(indent)));
        if let Some(from) = m.get_scalar("from") {
            if !is_ident(from.as_str()) {
                self.error(c, format!("copy from `{}` is not a DSL name", from.as_str()));
                return;
            }
            self.out.push_str(&format!("from {} ", from.as_str()));
        }
        self.value(src);
        self.out.push_str(" to ");
        self.value(dst);
        self.out.push('\n');
    }

    fn entry(&mut self, k: &MarkedScalarNode, v: &Node, indent: usize) {
        let key = k.as_str();
        if !is_ident(key) || matches!(key, "stage" | "copy") {
            self.error(v, format!("key `{key}` is not a DSL key"));
            return;
        }
        let pad = " ".repeat(indent);
        if key == "caches" {
            if let Some(seq) = v.as_sequence() {
                for c in seq.iter() {
                    self.out.push_str(&format!("{pad}caches "));
                    self.block(c, indent, false);
                    self.out.push('\n');
                }
                return;
            }
        }
        self.out.push_str(&format!("{pad}{key} "));
        match v {
            Node::Mapping(_) => self.block(v, indent, false),
            _ => self.value(v),
        }
        self.out.push('\n');
    }

    fn value(&mut self, v: &Node) {
        match v {
            Node::Scalar(s) => {
                // Strings are always quoted; only what YAML may read as a boolean or a number
                // (`false`, `1`, `10m`) stays a bare word, so it is coerced the same way.
                let t = s.as_str();
                let scalar_like =
                    matches!(t, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") || t.starts_with(|c: char| c.is_ascii_digit());
                if s.may_coerce() && is_word(t) && scalar_like {
                    self.out.push_str(s.as_str());
                } else {
                    self.out.push_str(&wf_quote(s.as_str()));
                }
            }
            Node::Sequence(seq) => {
                self.out.push('[');
                for (i, item) in seq.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    if item.as_mapping().is_some() {
                        self.error(item, "a list of mappings here".into());
                    } else {
                        self.value(item);
                    }
                }
                self.out.push(']');
            }
            Node::Mapping(_) => self.error(v, "a mapping inside a list".into()),
        }
    }
}

/// A YAML double-quoted string (JSON-style escapes).
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            // YAML line breaks and the BOM would not survive raw inside quotes.
            '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{80}'..='\u{9f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A scalar as YAML: plain only when it is a DSL word (so it may be coerced, like the word) that
/// YAML reads back unchanged; otherwise double-quoted.
fn yaml_scalar(s: &MarkedScalarNode) -> String {
    let t = s.as_str();
    let plain = s.may_coerce() && is_word(t) && !t.starts_with('-') && !t.starts_with('.') && !matches!(t, "~" | "null" | "Null" | "NULL");
    if plain {
        t.to_string()
    } else {
        yaml_quote(t)
    }
}

fn yaml_key(k: &str) -> String {
    if is_ident(k) {
        k.to_string()
    } else {
        yaml_quote(k)
    }
}

fn yaml_mapping(m: &MarkedMappingNode, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in m.iter() {
        out.push_str(&format!("{pad}{}:", yaml_key(k.as_str())));
        yaml_value(v, indent, out);
    }
}

/// The value after `key:` (or `-`): inline for scalars and empty collections, else on new lines.
fn yaml_value(v: &Node, indent: usize, out: &mut String) {
    match v {
        Node::Scalar(s) => out.push_str(&format!(" {}\n", yaml_scalar(s))),
        Node::Mapping(m) if m.is_empty() => out.push_str(" {}\n"),
        Node::Sequence(s) if s.is_empty() => out.push_str(" []\n"),
        Node::Mapping(m) => {
            out.push('\n');
            yaml_mapping(m, indent + 2, out);
        }
        Node::Sequence(s) => {
            out.push('\n');
            let pad = " ".repeat(indent + 2);
            for item in s.iter() {
                out.push_str(&format!("{pad}-"));
                yaml_value(item, indent + 2, out);
            }
        }
    }
}
