//! Load-time errors with source positions. Every problem found in a workflow file becomes a
//! [`Diagnostic`]: file, line, column, the offending line with a caret, and what was expected.
//! Rendering (colours, layout) happens once, in the `engine` binary, through miette.
//!
//! This module must not print anything itself.

use std::path::PathBuf;
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

use crate::ir::{SourceFile, Span};

/// One problem at one place in a workflow (or policy) file.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("{location}: {message}")]
pub struct Diagnostic {
    /// `path:line:col`, part of the one-line message so that logs and JSON carry it too.
    pub location: String,
    pub message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("{label}")]
    at: SourceSpan,
    label: String,
    /// What was expected, or how to fix it ("did you mean ...").
    #[help]
    pub help: Option<String>,
    /// A second place involved in the problem (the other end of a cycle, the policy line...).
    #[related]
    pub related: Vec<Diagnostic>,
    /// Where it is, for tools that want line/col without parsing `location`.
    pub span: Span,
}

impl Diagnostic {
    /// A diagnostic at `span` of `source`. `label` is the short text under the caret.
    pub fn new(source: &SourceFile, span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Diagnostic {
            location: format!("{}:{}:{}", source.path.display(), span.line, span.col),
            message: message.into(),
            src: NamedSource::new(source.path.display().to_string(), Arc::new(source.text.clone())),
            at: SourceSpan::new(span.offset.into(), span.len),
            label: label.into(),
            help: None,
            related: Vec::new(),
            span,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, other: Diagnostic) -> Self {
        self.related.push(other);
        self
    }
}

/// Why a workflow could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    #[error("cannot read workflow file {}: {source}", path.display())]
    #[diagnostic(help("check the path; `engine run` looks for workflow.yml, then workflow.wf, in the current directory"))]
    Io { path: PathBuf, source: std::io::Error },

    /// The operator's policy file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    #[diagnostic(help("check the path given with `--policy` or ENGINE_POLICY"))]
    PolicyIo { path: PathBuf, source: std::io::Error },

    /// One or more problems in the file, in source order.
    #[error("{} in {}", count(.diagnostics.len()), path.display())]
    Invalid {
        path: PathBuf,
        #[related]
        diagnostics: Vec<Diagnostic>,
    },
}

fn count(n: usize) -> String {
    if n == 1 { "1 error".into() } else { format!("{n} errors") }
}

/// Render any error for a person: the message, and for each diagnostic its `file:line:col`, the
/// source line with a `^` caret under the span, and the help. The binary and the snapshot tests
/// both use this, so snapshots show exactly what users see. Colour only when asked (a TTY).
pub fn render(err: &dyn miette::Diagnostic, color: bool) -> String {
    let styles = if color { miette::ThemeStyles::ansi() } else { miette::ThemeStyles::none() };
    let mut characters = miette::ThemeCharacters::ascii();
    // `error: message`, as compilers print it, rather than a bare `x`.
    characters.error = "error:".into();
    // The connector under a span is drawn as a caret too, so a one-character span (a missing
    // brace, a single-letter name) still gets a `^` under it.
    characters.underbar = '^';
    let theme = miette::GraphicalTheme { characters, styles };
    let mut out = String::new();
    if miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .render_report(&mut out, err)
        .is_err()
    {
        out = err.to_string();
    }
    out
}
