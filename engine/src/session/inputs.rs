//! Input selection checked where the user can fix it: `engine check` selects every step's
//! inputs from the workflow folder exactly as a run does, and a pattern that selects nothing (or
//! something that cannot be an input) is reported at the pattern in the workflow file, with a
//! caret and a hint, by `check` and `run` alike.
//!
//! This module must not read inputs; it only selects them (names and kinds, as a run does).

use dsl::{Diagnostic, LoadError, Workflow};

use super::StartError;
use crate::workspace::{InputError, SourceTree};

/// Files compared with a mistyped pattern at most, for a suggestion: a large tree is not
/// searched whole for one.
const MAX_SUGGESTION_CANDIDATES: usize = 20_000;

/// Selects the inputs of every step of `workflow`, as a run does: every pattern that selects
/// nothing (or is not a valid glob) is one diagnostic at the pattern (exit 2). A selected file
/// that cannot be an input (a FIFO, a link leaving the folder) and a folder that cannot be
/// walked are the plain error a run gives (exit 2).
pub fn check_inputs(workflow: &Workflow) -> Result<(), StartError> {
    let tree = SourceTree::scan(&workflow.dir)?;
    let mut diagnostics = Vec::new();
    for step in &workflow.steps {
        if let Err(e) = tree.select(&step.name, &step.inputs) {
            match diagnostic(workflow, &tree, &e) {
                Some(d) => diagnostics.push(d),
                None => return Err(e.into()),
            }
        }
    }
    if diagnostics.is_empty() {
        return Ok(());
    }
    Err(LoadError::Invalid { path: workflow.source.path.clone(), diagnostics }.into())
}

/// A selection error of a run as the same diagnostic `check` gives, when it names a pattern of a
/// step (else the plain error).
pub(crate) fn input_error(workflow: &Workflow, tree: &SourceTree, e: InputError) -> StartError {
    match diagnostic(workflow, tree, &e) {
        Some(d) => LoadError::Invalid { path: workflow.source.path.clone(), diagnostics: vec![d] }.into(),
        None => e.into(),
    }
}

/// The diagnostic at the pattern an input error names; `None` when it names none, or the
/// pattern's place is not known.
fn diagnostic(workflow: &Workflow, tree: &SourceTree, e: &InputError) -> Option<Diagnostic> {
    // A special file or a link leaving the folder is about a file, named in the message: those
    // stay plain sentences (not wrapped, so the path can be copied).
    let (step, pattern) = match e {
        InputError::NoMatch { step, pattern, .. } | InputError::BadPattern { step, pattern, .. } => (step, pattern),
        _ => return None,
    };
    let index = workflow.step(step)?.inputs.iter().position(|p| p == pattern)?;
    let span = *workflow.input_spans.get(step)?.get(index)?;
    let (message, label, help) = match e {
        InputError::NoMatch { dir, .. } => {
            let closest = tree.closest(pattern, MAX_SUGGESTION_CANDIDATES).map(|f| format!("did you mean `{f}`? ")).unwrap_or_default();
            let under = match dir.as_os_str().is_empty() || dir == std::path::Path::new(".") {
                true => "the current folder".to_string(),
                false => dir.display().to_string(),
            };
            let help = format!(
                "{closest}no file under {under} matches; patterns are relative to the workflow folder, `*` stays within one folder and `**` crosses folders"
            );
            (format!("step `{step}`: input pattern `{pattern}` matches no file"), "matches no file", help)
        }
        _ => (e.to_string(), "not a valid glob", "see `inputs` under \"Step keys\" in docs/format.md for the pattern syntax".to_string()),
    };
    Some(Diagnostic::new(&workflow.source, span, message, label).with_help(help))
}
