//! Checks that need the whole workflow rather than one node: `needs` names, self-dependencies,
//! cycles and output paths that two steps would write into one `/workspace`; plus the shape
//! rules for relative paths shared by `inputs`, `outputs` and image `copy` sources.
//!
//! This module works on the IR plus the spans the front end recorded; it must not parse
//! anything, so the `.wf` front end can reuse it.

use std::collections::{BTreeSet, HashMap};

use crate::bounds;
use crate::ir::{SourceFile, Span, Step};
use crate::suggest;
use crate::Diagnostic;

/// Where the parts of one step were written, in the order of the IR vectors.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepSpans {
    pub inputs: Vec<Span>,
    pub needs: Vec<Span>,
    pub outputs: Vec<Span>,
}

/// Why a relative path (an input pattern, an output path, a `copy` source) is unacceptable, if
/// it is. Only one spelling of a path is accepted, so that what `check` accepts is what a run
/// can stage and export: no empty or `.` components (the message gives the canonical spelling),
/// no `..`, no leading `/` or `~`, file names of at most 255 bytes and paths of at most 1024.
/// One trailing `/` (a folder) is kept as written.
pub(crate) fn relative_path_problem(path: &str) -> Option<String> {
    let body = path.strip_suffix('/').unwrap_or(path);
    let canonical = || {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        let mut c = parts.join("/");
        if path.ends_with('/') && !c.is_empty() {
            c.push('/');
        }
        c
    };
    if path.trim().is_empty() {
        Some("is empty".into())
    } else if path.starts_with('/') {
        Some("is absolute".into())
    } else if path.starts_with('~') {
        Some("starts with `~`, which is not expanded (paths are relative, never to a home folder)".into())
    } else if path.split('/').any(|c| c == "..") {
        Some("contains a `..` component".into())
    } else if body.split('/').any(|c| c == ".") {
        match canonical().as_str() {
            "" | "/" => Some("names the whole folder (`.`); name the files or folders in it".into()),
            c => Some(format!("has a `.` component; write `{c}`")),
        }
    } else if body.split('/').any(str::is_empty) {
        Some(format!("has an empty component (`//`); write `{}`", canonical()))
    } else if path.len() > bounds::MAX_PATH_BYTES {
        Some(format!("is longer than {} bytes", bounds::MAX_PATH_BYTES))
    } else if body.split('/').any(|c| c.len() > bounds::MAX_COMPONENT_BYTES) {
        Some(format!("has a file name longer than {} bytes", bounds::MAX_COMPONENT_BYTES))
    } else {
        None
    }
}

/// `./build/` and `build` are the same output.
fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect()
}

/// Two outputs collide when they are equal or one contains the other.
#[cfg(test)]
fn overlap(a: &str, b: &str) -> bool {
    let (a, b) = (components(a), components(b));
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// All graph problems of `steps` (in file order; `spans[i]` belongs to `steps[i]`).
pub(crate) fn check_graph(src: &SourceFile, steps: &[Step], spans: &[StepSpans]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    // Edges that point at known, other steps: (target, span of the needs entry).
    let mut edges: Vec<Vec<(usize, Span)>> = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for (need, span) in step.needs.iter().zip(&spans[i].needs) {
            match index.get(need.as_str()) {
                Some(&j) if j == i => diags.push(
                    Diagnostic::new(src, *span, format!("step `{need}` needs itself"), "self-dependency")
                        .with_help(format!("remove `{need}` from its own `needs`")),
                ),
                Some(&j) => edges[i].push((j, *span)),
                // Past the bound, no more messages are built (each lists every step).
                None if diags.len() >= bounds::MAX_COLLECTED => {}
                None => {
                    let hint = suggest::hint(need, steps.iter().map(|s| s.name.as_str()));
                    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
                    diags.push(
                        Diagnostic::new(src, *span, format!("unknown step `{need}` in needs of `{}`{hint}", step.name), "no such step")
                            .with_help(format!("`needs` names steps of this workflow: {}", names.join(", "))),
                    );
                }
            }
        }
    }
    cycles(src, steps, &edges, &mut diags);
    output_collisions(src, steps, spans, &edges, &mut diags);
    diags
}

/// One diagnostic per back edge of a depth-first search: each closes a distinct cycle.
fn cycles(src: &SourceFile, steps: &[Step], edges: &[Vec<(usize, Span)>], diags: &mut Vec<Diagnostic>) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Active,
        Done,
    }
    let mut state = vec![State::New; steps.len()];
    for root in 0..steps.len() {
        if state[root] != State::New {
            continue;
        }
        // Iterative DFS: (node, next edge index); `path` mirrors the active nodes.
        let mut stack = vec![(root, 0usize)];
        state[root] = State::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(to, span)) = edges[node].get(*next) {
                *next += 1;
                match state[to] {
                    State::New => {
                        state[to] = State::Active;
                        stack.push((to, 0));
                    }
                    State::Active => {
                        let start = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut names: Vec<&str> = stack[start..].iter().map(|(n, _)| steps[*n].name.as_str()).collect();
                        names.push(&steps[to].name);
                        diags.push(
                            Diagnostic::new(src, span, format!("dependency cycle: {}", names.join(" -> ")), "this need closes the cycle")
                                .with_help("steps cannot depend on themselves, directly or through others; remove one of these needs"),
                        );
                    }
                    State::Done => {}
                }
            } else {
                state[node] = State::Done;
                stack.pop();
            }
        }
    }
}

fn output_collisions(src: &SourceFile, steps: &[Step], spans: &[StepSpans], edges: &[Vec<(usize, Span)>], diags: &mut Vec<Diagnostic>) {
    // (step, output index) pairs already reported, so a pair met by several consumers is reported once.
    let mut seen = BTreeSet::new();
    // `meet` says where the two outputs end up together.
    let mut report = |first: (usize, usize), second: (usize, usize), meet: String, diags: &mut Vec<Diagnostic>| {
        if !seen.insert((first, second)) || diags.len() >= bounds::MAX_COLLECTED {
            return;
        }
        let (a, b) = (&steps[first.0], &steps[second.0]);
        let (pa, pb) = (&a.outputs[first.1], &b.outputs[second.1]);
        diags.push(
            Diagnostic::new(
                src,
                spans[second.0].outputs[second.1],
                format!("an output path claimed by two steps that meet in one /workspace: `{pb}` of step `{}` overlaps `{pa}` of step `{}` ({meet})", b.name, a.name),
                "second claim",
            )
            .with_help("give each step its own output directory, e.g. `build/<step>/`")
            .with_related(Diagnostic::new(src, spans[first.0].outputs[first.1], format!("`{pa}` first claimed by step `{}`", a.name), "first claim")),
        );
    };
    let comps: Vec<Vec<Vec<&str>>> = steps.iter().map(|s| s.outputs.iter().map(|o| components(o)).collect()).collect();
    for (s, step) in steps.iter().enumerate() {
        let mut needs: Vec<usize> = edges[s].iter().map(|(j, _)| *j).collect();
        if needs.is_empty() {
            continue;
        }
        needs.sort_unstable();
        needs.dedup();
        // Every output that meets in this step's /workspace (its own and its direct needs'),
        // sorted: a path comes right before the paths inside it, so one pass with a stack of
        // the paths containing the current one finds every overlap (no pairwise scan).
        let mut all: Vec<(&[&str], usize, usize)> = Vec::new();
        for &t in needs.iter().chain([s].iter()) {
            all.extend(comps[t].iter().enumerate().map(|(k, c)| (c.as_slice(), t, k)));
        }
        all.sort_unstable();
        let mut open: Vec<(&[&str], usize, usize)> = Vec::new();
        for &(c, t, k) in &all {
            while open.last().is_some_and(|(p, _, _)| !c.starts_with(p)) {
                open.pop();
            }
            for &(_, u, j) in &open {
                if diags.len() >= bounds::MAX_COLLECTED {
                    return;
                }
                if u == t {
                    continue;
                }
                if u == s || t == s {
                    // The step's own output against one of a need's.
                    let (own, need) = if u == s { (j, (t, k)) } else { (k, (u, j)) };
                    report(need, (s, own), format!("which `{}` needs", step.name), diags);
                } else {
                    // Two needs: the later-declared one is reported.
                    let (first, second) = if u < t { ((u, j), (t, k)) } else { ((t, k), (u, j)) };
                    report(first, second, format!("both needed by `{}`", step.name), diags);
                }
            }
            open.push((c, t, k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps() {
        assert!(overlap("build", "build/app"));
        assert!(overlap("./build/", "build"));
        assert!(!overlap("build", "builder"));
        assert!(!overlap("a/b", "a/c"));
    }

    #[test]
    fn path_problems() {
        let p = |s: &str| relative_path_problem(s);
        assert_eq!(p("/etc").as_deref(), Some("is absolute"));
        assert_eq!(p("a/../b").as_deref(), Some("contains a `..` component"));
        assert_eq!(p("").as_deref(), Some("is empty"));
        assert_eq!(p("a/..b"), None);
        assert_eq!(p("build/"), None);
        assert_eq!(p("a//b").as_deref(), Some("has an empty component (`//`); write `a/b`"));
        assert_eq!(p("./a/").as_deref(), Some("has a `.` component; write `a/`"));
        assert!(p(".").unwrap().starts_with("names the whole folder"));
        assert!(p("./").unwrap().starts_with("names the whole folder"));
        assert!(p("~/x").unwrap().starts_with("starts with `~`"));
        assert!(p("a//").unwrap().contains("write `a/`"));
        assert!(p(&"x".repeat(256)).unwrap().contains("255"));
        assert_eq!(p(&"x".repeat(255)), None);
        assert!(p(&"x/".repeat(600)).unwrap().contains("1024"));
    }
}
