//! What a Dockerfile reads, as far as its key is concerned: the images its stages start from or
//! copy from (`FROM`, `COPY --from=<image>`), and the context paths its `COPY`/`ADD` lines name.
//!
//! Deliberately conservative: whatever is not understood widens what is read, never narrows it.
//! A source with a variable (`COPY $SRC .`), `.`, or a path leaving the context reads the whole
//! context; the key then covers every file sent.

use std::collections::{BTreeMap, HashMap};

/// The context paths the build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sources {
    /// The whole context.
    All,
    /// These `COPY`/`ADD` sources (cleaned, relative, possibly with wildcards).
    Paths(Vec<String>),
}

/// What the build reads besides the Dockerfile itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reads {
    /// Image references of `FROM` and `COPY --from`, in order, each once (after build
    /// arguments are substituted into `FROM`).
    pub bases: Vec<String>,
    /// The context paths copied.
    pub sources: Sources,
}

/// One instruction: its keyword (upper case) and its arguments, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

/// Logical lines: parser directives (`# escape=`) honoured, comments and empty lines dropped,
/// lines ending in the escape character joined with the next.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut escape = '\\';
    let mut directives = true;
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if directives {
            if let Some((k, v)) = trimmed.strip_prefix('#').and_then(|d| d.split_once('=')) {
                if k.trim().eq_ignore_ascii_case("escape") {
                    if v.trim() == "`" {
                        escape = '`';
                    }
                    continue;
                }
                if k.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
                    continue;
                }
            }
            directives = false;
        }
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix(escape) {
            Some(body) => {
                current.push_str(body);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let full = std::mem::take(&mut current);
                let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
                out.push(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() });
            }
        }
    }
    if !current.trim().is_empty() {
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() });
    }
    out
}

/// `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}` replaced from `vars` (an unset name is
/// empty, as in the builder); `\$` is a literal `$`.
pub(crate) fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let Some(end) = chars[i + 2..].iter().position(|c| *c == '}') else {
                    out.extend(&chars[i..]);
                    break;
                };
                let inner: String = chars[i + 2..i + 2 + end].iter().collect();
                let value = |n: &str| vars.get(n).cloned().unwrap_or_default();
                let replaced = if let Some((n, word)) = inner.split_once(":-") {
                    Some(value(n)).filter(|v| !v.is_empty()).unwrap_or_else(|| word.to_string())
                } else if let Some((n, word)) = inner.split_once(":+") {
                    if value(n).is_empty() {
                        String::new()
                    } else {
                        word.to_string()
                    }
                } else {
                    value(&inner)
                };
                out.push_str(&replaced);
                i += end + 3;
            }
            '$' if chars.get(i + 1).is_some_and(|c| name_char(*c)) => {
                let len = chars[i + 1..].iter().take_while(|c| name_char(**c)).count();
                let name: String = chars[i + 1..i + 1 + len].iter().collect();
                out.push_str(&vars.get(&name).cloned().unwrap_or_default());
                i += len + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The words of a `COPY`/`ADD`: flags, then sources and the destination; the JSON form
/// (`["a", "b", "/dst"]`) or whitespace-separated words.
fn copy_words(args: &str) -> (Vec<String>, Vec<String>) {
    let mut flags = Vec::new();
    let mut rest = args.trim();
    while rest.starts_with("--") {
        let (flag, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag.to_string());
        rest = after.trim_start();
    }
    let words = if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest).unwrap_or_else(|_| rest.split_whitespace().map(str::to_string).collect())
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    (flags, words)
}

/// What `dockerfile` reads, with the build arguments `args`, building up to stage `target`
/// (every stage is considered: a wider key is safe).
pub(crate) fn reads(dockerfile: &str, args: &BTreeMap<String, String>) -> Reads {
    let mut global: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    let mut sources = Some(Vec::new());
    let mut seen_from = false;
    let is_stage = |stages: &[String], name: &str| {
        name.parse::<usize>().is_ok_and(|n| n < stages.len()) || stages.iter().any(|s| s.eq_ignore_ascii_case(name))
    };
    for ins in instructions(dockerfile) {
        match ins.keyword.as_str() {
            "ARG" if !seen_from => {
                for decl in ins.args.split_whitespace() {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, d)) => (n, Some(substitute(d.trim_matches('"'), &global))),
                        None => (decl, None),
                    };
                    let value = args.get(name).cloned().or(default).unwrap_or_default();
                    global.insert(name.to_string(), value);
                }
            }
            "FROM" => {
                seen_from = true;
                let text = substitute(&ins.args, &global);
                let mut words = text.split_whitespace().filter(|w| !w.starts_with("--"));
                let image = words.next().unwrap_or_default().to_string();
                if !image.is_empty() && !image.eq_ignore_ascii_case("scratch") && !is_stage(&stages, &image) && !bases.contains(&image) {
                    bases.push(image);
                }
                let name = match (words.next(), words.next()) {
                    (Some(kw), Some(n)) if kw.eq_ignore_ascii_case("as") => n.to_string(),
                    _ => stages.len().to_string(),
                };
                stages.push(name);
            }
            "COPY" | "ADD" => {
                let (flags, words) = copy_words(&ins.args);
                let from = flags.iter().find_map(|f| f.strip_prefix("--from="));
                if let Some(from) = from {
                    if !from.contains('$') && !is_stage(&stages, from) && !bases.iter().any(|b| b == from) {
                        bases.push(from.to_string());
                    }
                    continue;
                }
                let n = words.len().saturating_sub(1);
                for src in &words[..n] {
                    if ins.keyword == "ADD" && (src.contains("://") || src.starts_with("git@")) {
                        continue;
                    }
                    match source_path(src) {
                        Some(p) => {
                            if let Some(list) = sources.as_mut() {
                                list.push(p);
                            }
                        }
                        None => sources = None,
                    }
                }
            }
            _ => {}
        }
    }
    Reads { bases, sources: sources.map_or(Sources::All, Sources::Paths) }
}

/// A `COPY`/`ADD` source as a path relative to the context, or `None` when it reads the whole
/// context as far as the key can tell (`.`, a variable, a path through `..`).
fn source_path(src: &str) -> Option<String> {
    if src.contains('$') {
        return None;
    }
    let cleaned = super::ignore::clean(&format!("/{src}"));
    let rel = cleaned.trim_start_matches('/');
    if rel.is_empty() || src.split('/').any(|c| c == "..") {
        return None;
    }
    Some(rel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, args: &[(&str, &str)]) -> Reads {
        let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        reads(text, &args)
    }

    #[test]
    fn bases_with_build_arguments_and_stages() {
        let text = "# escape=`\nARG BASE=local/busybox:1\nARG TAG\nFROM ${BASE} AS build\nCOPY --from=other/img:2 /x /x\nFROM build\nCOPY --from=build /a /b\nFROM scratch\nFROM `\n  local/debian:${TAG:-bookworm}\n";
        let r = read(text, &[]);
        assert_eq!(r.bases, ["local/busybox:1", "other/img:2", "local/debian:bookworm"]);
        let r = read(text, &[("BASE", "mine:3"), ("TAG", "x")]);
        assert_eq!(r.bases, ["mine:3", "other/img:2", "local/debian:x"]);
        assert_eq!(r.sources, Sources::Paths(vec![]));
    }

    #[test]
    fn copy_sources() {
        let r = read("FROM a\nCOPY --chown=1:1 src/*.py ./lib/ /app/\nADD [\"b c\", \"/d\"]\nADD https://x.invalid/f /f\n", &[]);
        assert_eq!(r.sources, Sources::Paths(vec!["src/*.py".into(), "lib".into(), "b c".into()]));
        for all in ["COPY . /app", "COPY $X /app", "COPY ../x /y", "ADD ./ /", "COPY / /x"] {
            assert_eq!(read(&format!("FROM a\n{all}\n"), &[]).sources, Sources::All, "{all}");
        }
    }

    #[test]
    fn substitution() {
        let vars = HashMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(substitute("$A-${A}-${B:-d}-${A:+s}-${B:+s}-\\$A-$B.", &vars), "1-1-d-s--$A-.");
    }
}
