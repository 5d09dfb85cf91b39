//! Load-time errors with source positions. Every problem found in a workflow file becomes a
//! [`Diagnostic`]: file, line, column, the offending line with a caret, and what was expected.
//! Rendering (colours, layout) happens once, in the `engine` binary, through miette.
//!
//! This module must not print anything itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

use crate::bounds;
use crate::ir::{SourceFile, Span};

/// One problem at one place in a workflow (or policy) file.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("{location}: {message}")]
pub struct Diagnostic {
    /// `path:line:col`, part of the one-line message so that logs and JSON carry it too.
    pub location: String,
    /// What is wrong, in one sentence.
    pub message: String,
    #[source_code]
    src: NamedSource<Excerpt>,
    #[label("{label}")]
    at: SourceSpan,
    label: String,
    /// Further places in the same file, labelled in the same excerpt (the `{` a missing `}`
    /// leaves open, next to where the parser noticed it).
    #[label(collection)]
    extra: Vec<miette::LabeledSpan>,
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
            src: NamedSource::new(source.path.display().to_string(), Excerpt::around(&source.text, span)),
            at: SourceSpan::new(span.offset.into(), span.len),
            label: label.into(),
            extra: Vec::new(),
            help: None,
            related: Vec::new(),
            span,
        }
    }

    /// The same diagnostic with a help text (what was expected, how to fix it).
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The same diagnostic with a second labelled place in the same file, shown in the same
    /// excerpt. `source` must be the file the diagnostic was made for. Places further apart
    /// than an excerpt shows are left out (the message must name them anyway).
    pub fn with_label(mut self, source: &SourceFile, span: Span, label: impl Into<String>) -> Self {
        let from = span.offset.min(self.span.offset);
        let to = (span.offset + span.len).max(self.span.offset + self.span.len);
        if to - from > EXCERPT_BYTES {
            return self;
        }
        let whole = Span { offset: from, len: to - from, ..if span.offset < self.span.offset { span } else { self.span } };
        self.src = NamedSource::new(source.path.display().to_string(), Excerpt::around(&source.text, whole));
        self.extra.push(miette::LabeledSpan::new(Some(label.into()), span.offset, span.len));
        self
    }

    /// The same diagnostic with a second place involved (shown under it).
    pub fn with_related(mut self, other: Diagnostic) -> Self {
        self.related.push(other);
        self
    }
}

/// The text a diagnostic shows: the whole file when it is small, else the lines around the span
/// (at most [`EXCERPT_BYTES`] each side), so that many diagnostics on a large file never copy
/// the file once each. Line numbers and offsets stay those of the whole file.
#[derive(Debug, Clone)]
struct Excerpt {
    text: Arc<String>,
    /// Byte offset of `text` in the file, and the (0-based) line it starts on.
    offset: usize,
    line: usize,
}

/// Files up to this size are kept whole in each diagnostic.
const WHOLE_FILE_BYTES: usize = 64 << 10;
const EXCERPT_BYTES: usize = 2 << 10;

impl Excerpt {
    fn around(text: &str, span: Span) -> Excerpt {
        if text.len() <= WHOLE_FILE_BYTES {
            return Excerpt { text: Arc::new(text.to_string()), offset: 0, line: 0 };
        }
        let floor = |mut i: usize| {
            i = i.min(text.len());
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let (from, to) = (floor(span.offset), floor(span.offset.saturating_add(span.len)));
        // Two lines before and after, within EXCERPT_BYTES of the span.
        let limit_lo = floor(from.saturating_sub(EXCERPT_BYTES));
        let mut start = from;
        for _ in 0..3 {
            match text[limit_lo..start].rfind('\n') {
                // `start` on the newline before a line; the window begins after the last one.
                Some(i) => start = limit_lo + i,
                None => {
                    start = limit_lo;
                    break;
                }
            }
        }
        if text.as_bytes().get(start) == Some(&b'\n') && start < from {
            start += 1;
        }
        let limit_hi = floor(to.saturating_add(EXCERPT_BYTES));
        let mut end = to;
        for _ in 0..3 {
            match text[end..limit_hi].find('\n') {
                Some(i) => end = end + i + 1,
                None => {
                    end = limit_hi;
                    break;
                }
            }
        }
        let start = start.min(from);
        let line = span.line.saturating_sub(1).saturating_sub(text[start..from].matches('\n').count());
        Excerpt { text: Arc::new(text[start..end.max(from)].to_string()), offset: start, line }
    }
}

impl miette::SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let local_offset = span.offset().saturating_sub(self.offset).min(self.text.len());
        let local_len = span.len().min(self.text.len() - local_offset);
        let local = SourceSpan::new(local_offset.into(), local_len);
        let inner = self.text.read_span(&local, before, after)?;
        let global = SourceSpan::new((inner.span().offset() + self.offset).into(), inner.span().len());
        Ok(Box::new(miette::MietteSpanContents::new(inner.data(), global, inner.line() + self.line, inner.column(), inner.line_count())))
    }
}

/// Why a workflow could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The workflow file could not be read.
    #[error("cannot read workflow file {}: {source}", path.display())]
    #[diagnostic(help("check the path; `engine run` looks for workflow.yml, then workflow.wf, in the current directory"))]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it was not read.
        source: crate::bounds::ReadError,
    },

    /// The operator's policy file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    #[diagnostic(help("check the path given with `--policy` or ENGINE_POLICY"))]
    PolicyIo {
        /// The file.
        path: PathBuf,
        /// Why it was not read.
        source: crate::bounds::ReadError,
    },

    /// One or more problems in the file, in source order.
    #[error("{} in {}", count(.diagnostics.len()), path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problems, each at its place.
        #[related]
        diagnostics: Vec<Diagnostic>,
    },
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 error".into()
    } else {
        format!("{n} errors")
    }
}

/// Render any error for a person: for each diagnostic one `error: file:line:col: message`
/// header, the source line with a `^` caret under the span, and the help; a second place
/// involved (the first definition of a duplicate...) follows as `note:`. A file with several
/// problems ends with their count. The binary and the snapshot tests both use this, so
/// snapshots show exactly what users see. Colour only when asked (a TTY).
pub fn render(err: &dyn miette::Diagnostic, color: bool) -> String {
    // `LoadError::Invalid` only groups the file's diagnostics: its own header ("1 error in
    // f.wf") would be a second one above each diagnostic's, so each is shown on its own.
    let group: Vec<&dyn miette::Diagnostic> = match err.related() {
        Some(related) if err.labels().is_none() && err.source_code().is_none() => related.collect(),
        _ => Vec::new(),
    };
    let items = if group.is_empty() { vec![err] } else { group };
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_one(&Alone(*item), "error:", color));
        for related in item.related().into_iter().flatten() {
            out.push('\n');
            out.push_str(&render_one(&Alone(related), "note:", color));
        }
    }
    if items.len() > 1 {
        out.push_str(&format!("\n{err}\n"));
    }
    out
}

/// One diagnostic, without the ones related to it, under a `header` (`error:` or `note:`).
fn render_one(err: &dyn miette::Diagnostic, header: &str, color: bool) -> String {
    let styles = if color { miette::ThemeStyles::ansi() } else { miette::ThemeStyles::none() };
    let mut characters = miette::ThemeCharacters::ascii();
    // `error: message`, as compilers print it, rather than a bare `x`.
    characters.error = header.into();
    // The connector under a span is drawn as a caret too, so a one-character span (a missing
    // brace, a single-letter name) still gets a `^` under it.
    characters.underbar = '^';
    let theme = miette::GraphicalTheme { characters, styles };
    let mut out = String::new();
    if miette::GraphicalReportHandler::new_themed(theme).with_width(100).render_report(&mut out, err).is_err() {
        out = format!("{header} {err}\n");
    }
    out
}

/// A diagnostic shown without its related ones (rendered after it, each under its own header).
struct Alone<'a>(&'a dyn miette::Diagnostic);

impl std::fmt::Debug for Alone<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

impl std::fmt::Display for Alone<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.0, f)
    }
}

impl std::error::Error for Alone<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl miette::Diagnostic for Alone<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.0.severity()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.help()
    }
    fn url<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.url()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.0.source_code()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.0.labels()
    }
    fn diagnostic_source(&self) -> Option<&dyn miette::Diagnostic> {
        self.0.diagnostic_source()
    }
}

/// Diagnostics shown for one file at most.
const MAX_DIAGNOSTICS: usize = 100;

/// Ends a load: the diagnostics sorted by position (duplicates dropped), or the value.
pub(crate) fn finish<T>(path: &Path, mut diags: Vec<Diagnostic>, value: T) -> Result<T, LoadError> {
    if diags.is_empty() {
        return Ok(value);
    }
    diags.sort_by_key(|d| (d.span.offset, d.span.len));
    diags.dedup_by(|a, b| a.span == b.span && a.message == b.message);
    // A hostile file can have a problem on every line: the first ones are enough.
    if diags.len() > MAX_DIAGNOSTICS {
        let mut more = diags[MAX_DIAGNOSTICS].clone();
        let capped = if diags.len() >= bounds::MAX_COLLECTED { "at least " } else { "" };
        more.message = format!("... and {capped}{} more errors, not shown", diags.len() - MAX_DIAGNOSTICS);
        more.help = Some("fix the errors above first".into());
        more.related.clear();
        diags.truncate(MAX_DIAGNOSTICS);
        diags.push(more);
    }
    Err(LoadError::Invalid { path: path.to_path_buf(), diagnostics: diags })
}

/// A parser gives no tree only with a diagnostic; this covers the impossible case without a
/// panic (shared with the DSL front end).
pub(crate) fn no_tree(path: &Path) -> LoadError {
    LoadError::Invalid { path: path.to_path_buf(), diagnostics: Vec::new() }
}

/// Collects a diagnostic, up to [`bounds::MAX_COLLECTED`]: a hostile file can have a problem in
/// every line, and past the bound they are dropped rather than kept.
pub(crate) fn push(diags: &mut Vec<Diagnostic>, d: Diagnostic) {
    if diags.len() < bounds::MAX_COLLECTED {
        diags.push(d);
    }
}
