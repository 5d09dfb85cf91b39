//! The project's documentation stands on its own in a clone: every link in README.md,
//! ARCHITECTURE.md and docs/ that is not a web address leads to a file of the repository (and,
//! with a `#fragment`, to a heading of that file), and no text names a path outside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    docs.extend(
        walkdir::WalkDir::new(root.join("docs"))
            .into_iter()
            .map(Result::unwrap)
            .map(|e| e.into_path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    docs
}

/// The targets of the inline links `[text](target)` of a Markdown text, outside code blocks.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchors of a Markdown file's headings: lower case, spaces to `-`, punctuation other
/// than `-` and `_` dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let rel = doc.strip_prefix(&root).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() { doc.clone() } else { doc.parent().unwrap().join(path) };
            let Ok(file) = file.canonicalize() else {
                broken.push(format!("{rel}:{line}: `{target}` names no file"));
                continue;
            };
            if !file.starts_with(&root) {
                broken.push(format!("{rel}:{line}: `{target}` leads outside the repository"));
                continue;
            }
            if let Some(fragment) = fragment {
                let anchors = if file.is_file() { anchors(&std::fs::read_to_string(&file).unwrap()) } else { BTreeSet::new() };
                if !anchors.contains(fragment) {
                    broken.push(format!("{rel}:{line}: `{target}`: no heading with that anchor"));
                }
            }
        }
        if text.contains("../shared") {
            broken.push(format!("{rel}: names `../shared`, which is not in the repository"));
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_finder_sees_links_and_anchors() {
    let text = "# A title, here\n[a](b.md#c) and [d](#e)\n```\n[not](a link)\n```\n";
    assert_eq!(links(text), vec![(2, "b.md#c".to_string()), (2, "#e".to_string())]);
    assert!(anchors(text).contains("a-title-here"));
}
