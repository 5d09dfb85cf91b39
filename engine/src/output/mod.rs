//! The one place text reaches users: every line the engine prints on stdout or stderr is written
//! here, from the reports (data) the other modules and the library crates return; they never
//! print (checked by `tests/tests/architecture.rs`). Submodules render each command's report as
//! text or JSON (`plan`, `cache`, `runs`, `replay`, `provenance`, `commands`) and the engine's own
//! notes and errors on stderr (`notes`).
//!
//! This module renders run events for people and machines: plain mode prefixes each log line
//! with its step name (coloured on a TTY) and ends with a summary table; JSON mode prints one
//! event per line (the schema is documented in `docs/events.md`).
//!
//! Renderers only format; they never decide anything about the run. The formatting is done by
//! pure functions ([`PlainRenderer::render`], [`summary_table`], [`summary_line`]) so that tests
//! can snapshot it; [`spawn`] only moves their lines to stdout/stderr.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use crate::events::{Event, StepStatus, StepSummary};

pub mod cache;
pub mod commands;
pub mod notes;
pub mod plan;
pub mod provenance;
mod remote;
pub mod replay;
pub mod runs;

/// `--output plain|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Prefixed log lines and a summary table, for people.
    Plain,
    /// One JSON event per line.
    Json,
}

/// Whether stdout is a terminal that wants colours (`NO_COLOR` unset).
pub fn stdout_has_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Foreground colours given to step names; bright and distinguishable on dark and light terminals.
/// Red and green are left out: they mean failure and success here.
const PALETTE: [&str; 6] = ["36", "35", "33", "34", "96", "95"];
const RESET: &str = "\x1b[0m";
const BOLD_GREEN: &str = "\x1b[1;32m";
const BOLD_RED: &str = "\x1b[1;31m";
const DIM: &str = "\x1b[2m";

/// A step's colour depends on its name only (FNV-1a), so it is the same in every run and does not
/// change when steps are added to the workflow.
fn colour_of(step: &str) -> &'static str {
    let hash = step.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

/// Text from a step (or anything a workflow or a step can influence) made safe for a terminal:
/// every control character is shown instead of acting. C0 controls become their Unicode control
/// pictures (ESC `␛`, CR `␍`, BEL `␇`, ...; TAB is kept), DEL becomes `␡`, a C1 control becomes
/// `␛` plus its 7-bit form (CSI `\u{9b}` is `␛[`), and the bidirectional and line-separator
/// controls (which can reorder or split what a terminal shows) become `<U+XXXX>`. So no escape
/// sequence (clear screen, cursor moves, OSC 52 clipboard writes, colours) and no bare carriage
/// return reaches the terminal, and nothing can overwrite a line's `step |` prefix.
pub(crate) fn neutralise(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_neutralising) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !needs_neutralising(c) => out.push(c),
            '\u{0}'..='\u{1f}' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
            '\u{7f}' => out.push('\u{2421}'),
            '\u{80}'..='\u{9f}' => {
                out.push('\u{241b}');
                out.push(char::from(c as u8 - 0x40));
            }
            c => {
                let _ = write!(out, "<U+{:04X}>", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// [`neutralise`] for a multi-line text the engine composed (a table, a report) that embeds text
/// from records or steps: each line is neutralised, the newlines between them kept.
pub(crate) fn neutralise_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, newline) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        out.push_str(&neutralise(body));
        out.push_str(newline);
    }
    out
}

fn needs_neutralising(c: char) -> bool {
    match c {
        '\t' => false,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional embeddings, overrides and isolates; line and paragraph separators.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

pub use crate::units::{fmt_age, fmt_secs, fmt_size};

/// Turns events into lines of text for people. Log lines are `step | line` with step names
/// padded to the longest name of the run (known from `RunStarted`).
#[derive(Debug, Clone)]
pub(crate) struct PlainRenderer {
    color: bool,
    width: usize,
    /// The remote cache's lines, printed after the summary table.
    remote: Vec<String>,
}

impl PlainRenderer {
    pub fn new(color: bool) -> Self {
        PlainRenderer { color, width: 0, remote: Vec::new() }
    }

    /// The step name padded to the common width, coloured when enabled (padding stays outside
    /// the escape codes so that columns line up).
    fn prefix(&mut self, step: &str) -> String {
        let step = neutralise(step);
        let len = step.chars().count();
        self.width = self.width.max(len);
        let pad = " ".repeat(self.width - len);
        if self.color {
            format!("\x1b[{}m{step}{RESET}{pad} |", colour_of(&step))
        } else {
            format!("{step}{pad} |")
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// Status markers: symbols on a colour terminal, plain ASCII otherwise.
    fn marker(&self, status: StepStatus) -> String {
        let (symbol, ascii, code) = match status {
            StepStatus::Succeeded => ("✓", "ok", BOLD_GREEN),
            StepStatus::Cached => ("✓", "ok", BOLD_GREEN),
            StepStatus::Failed => ("✗", "!!", BOLD_RED),
            StepStatus::Cancelled => ("✗", "!!", BOLD_RED),
            StepStatus::Skipped => ("-", "--", DIM),
        };
        if self.color {
            self.paint(code, symbol)
        } else {
            ascii.to_string()
        }
    }

    /// The lines one event produces (possibly none). `Log` lines belong on stdout, everything
    /// else on stderr (see [`spawn`]).
    pub fn render(&mut self, event: &Event) -> Vec<String> {
        match event {
            Event::RunStarted { run_id, workflow, steps } => {
                self.width = steps.iter().map(|s| neutralise(s).chars().count()).max().unwrap_or(0).max(self.width);
                let n = steps.len();
                let (run_id, workflow) = (neutralise(run_id), neutralise(workflow));
                vec![format!("run {run_id}: workflow `{workflow}`, {n} step{}", if n == 1 { "" } else { "s" })]
            }
            Event::StepStarted { step } => {
                let arrow = if self.color { self.paint(DIM, "▶") } else { ">>".into() };
                vec![format!("{} {arrow} started", self.prefix(step))]
            }
            Event::Log { step, line, .. } => vec![format!("{} {}", self.prefix(step), neutralise(line))],
            Event::StepFinished { step, status, duration_ms, source, .. } => {
                let what = if *status == StepStatus::Cached && *source == Some(crate::events::CacheSource::Remote) {
                    "restored from the remote cache".to_string()
                } else if *status == StepStatus::Cached {
                    "restored from cache".to_string()
                } else {
                    format!("{} in {}", status.as_str(), fmt_secs(*duration_ms))
                };
                vec![format!("{} {} {what}", self.prefix(step), self.marker(*status))]
            }
            Event::StepFailed { step, status, duration_ms, reason, allowed, .. } => {
                let what = if *allowed { FAILED_ALLOWED } else { status.as_str() };
                let mut line = format!("{} {} {what} after {}", self.prefix(step), self.marker(*status), fmt_secs(*duration_ms));
                // "cancelled after 2.0s: cancelled" would say it twice.
                if reason != status.as_str() {
                    let _ = write!(line, ": {}", neutralise(reason));
                }
                vec![line]
            }
            Event::StepSkipped { step, reason } => {
                vec![format!("{} {} skipped: {}", self.prefix(step), self.marker(StepStatus::Skipped), neutralise(reason))]
            }
            Event::RunFinished { steps, duration_ms, .. } => {
                let mut lines: Vec<String> = vec![String::new()];
                lines.extend(summary_table(steps).lines().map(str::to_string));
                lines.push(summary_line(steps, Duration::from_millis(*duration_ms)));
                lines.extend(not_started_hint(steps));
                lines.append(&mut self.remote);
                lines
            }
            Event::RemoteCache(summary) => {
                self.remote = remote::summary_lines(summary);
                Vec::new()
            }
        }
    }
}

/// The end-of-run table: step, status, duration, exit code, and why (for failures and skips).
pub(crate) fn summary_table(steps: &[StepSummary]) -> String {
    let header = ["step", "status", "duration", "exit", "reason"];
    let rows: Vec<[String; 5]> = steps
        .iter()
        .map(|s| {
            let ran = !matches!(s.status, StepStatus::Skipped | StepStatus::Cached);
            [
                neutralise(&s.step).into_owned(),
                status_text(s).to_string(),
                if ran { fmt_secs(s.duration_ms) } else { "-".into() },
                s.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                neutralise(s.reason.as_deref().unwrap_or_default()).into_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Durations and exit codes read best right-aligned.
            if i == 2 || i == 3 {
                let _ = write!(text, "{cell:>w$}");
            } else {
                let _ = write!(text, "{cell:<w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

/// How a failure of a step with `continue_on_error` is written in place of its status.
const FAILED_ALLOWED: &str = "failed (allowed)";

/// A step's status as the summary writes it ([`FAILED_ALLOWED`] for an allowed failure).
fn status_text(s: &StepSummary) -> &'static str {
    if s.allowed {
        FAILED_ALLOWED
    } else {
        s.status.as_str()
    }
}

/// The last line of a run: `3 succeeded, 1 failed, 2 skipped in 4.1s` (zero counts left out).
pub(crate) fn summary_line(steps: &[StepSummary], total: Duration) -> String {
    let order = ["succeeded", "cached", "failed", FAILED_ALLOWED, "cancelled", "skipped"];
    let counts: Vec<String> = order
        .iter()
        .filter_map(|status| {
            let n = steps.iter().filter(|s| status_text(s) == *status).count();
            (n > 0).then(|| format!("{n} {status}"))
        })
        .collect();
    let what = if counts.is_empty() { "no steps".to_string() } else { counts.join(", ") };
    format!("{what} in {}", fmt_secs(u64::try_from(total.as_millis()).unwrap_or(u64::MAX)))
}

/// After a fail-fast stop: which steps were not started and how to run them.
fn not_started_hint(steps: &[StepSummary]) -> Option<String> {
    let names: Vec<String> = steps.iter().filter(|s| s.not_started).map(|s| format!("`{}`", neutralise(&s.step))).collect();
    if names.is_empty() {
        return None;
    }
    let (n, them) = (names.len(), if names.len() == 1 { "it" } else { "them" });
    Some(format!(
        "{n} step{} not started after the failure (fail-fast): {}; `--keep-going` runs {them}, and `continue_on_error: true` \
         on a step lets the run go on when it fails",
        if n == 1 { " was" } else { "s were" },
        names.join(", ")
    ))
}

/// One event as one line of JSON (the shape is `Event`'s serde form, see `docs/events.md`).
/// JSON escapes C0 controls itself; DEL, C1 and the characters [`neutralise`] shows as
/// `<U+XXXX>` are escaped as `\uXXXX` too, so that no control reaches a terminal the JSON is
/// printed on. (Only strings hold such characters, and the escape is the same string.)
pub(crate) fn json_line(event: &Event) -> String {
    // Serialising plain data with string keys cannot fail; an empty object keeps the stream valid.
    let line = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    if !line.chars().any(needs_neutralising) {
        return line;
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if needs_neutralising(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Drains `rx` until every sender is gone. Plain: log lines to stdout, status and summary lines
/// to stderr (so `engine run > log` keeps only the steps' output). JSON: everything to stdout.
/// Write errors (a closed pipe) are ignored: output must never abort the run.
pub(crate) fn spawn(mode: OutputMode, color: bool, mut rx: crate::events::EventReceiver) -> tokio::task::JoinHandle<()> {
    // On a thread of its own: writing to a terminal or a pipe blocks, and must neither hold up an
    // async worker nor fall behind the steps (the events wait in the channel meanwhile). Output
    // is buffered and flushed whenever the channel is drained, so a step printing millions of
    // lines costs a write per batch, not per line, and the backlog stays small.
    tokio::task::spawn_blocking(move || {
        let mut plain = PlainRenderer::new(color);
        let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout());
        let mut err = std::io::BufWriter::with_capacity(8 << 10, std::io::stderr());
        while let Some(event) = rx.blocking_recv() {
            match mode {
                OutputMode::Json => {
                    let _ = writeln!(out, "{}", json_line(&event));
                }
                OutputMode::Plain => {
                    let lines = plain.render(&event);
                    if matches!(event, Event::Log { .. }) {
                        for line in lines {
                            let _ = writeln!(out, "{line}");
                        }
                    } else {
                        // Status lines go to stderr after the log lines before them.
                        let _ = out.flush();
                        for line in lines {
                            let _ = writeln!(err, "{line}");
                        }
                        let _ = err.flush();
                    }
                }
            }
            if rx.is_empty() {
                let _ = out.flush();
                let _ = err.flush();
            }
        }
        let _ = out.flush();
        let _ = err.flush();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RunStatus, Stream};

    fn summaries() -> Vec<StepSummary> {
        let row = |step: &str, status, duration_ms, exit_code, reason: Option<&str>| {
            StepSummary::ended(step.into(), status, duration_ms, exit_code, reason.map(str::to_string))
        };
        vec![
            row("compile", StepStatus::Succeeded, 1234, Some(0), None),
            row("unit-test", StepStatus::Failed, 30_000, None, Some("timed out after 30s")),
            row("lint", StepStatus::Cached, 0, None, None),
            row("scan", StepStatus::Cancelled, 2_050, None, Some("cancelled")),
            row("package", StepStatus::Skipped, 0, None, Some("needs `unit-test`, which failed")),
            row("docs", StepStatus::Failed, 150, Some(2), Some("exited with code 2")),
            StepSummary { allowed: true, ..row("fuzz", StepStatus::Failed, 900, Some(137), Some("killed: out of memory (limit 64 MiB)")) },
            StepSummary {
                not_started: true,
                ..row(
                    "report",
                    StepStatus::Skipped,
                    0,
                    None,
                    Some("not started: the run stopped after `docs` failed (fail-fast; --keep-going runs it)"),
                )
            },
        ]
    }

    fn events() -> Vec<Event> {
        let steps = summaries();
        vec![
            Event::RunStarted { run_id: "r-1".into(), workflow: "demo".into(), steps: steps.iter().map(|s| s.step.clone()).collect() },
            Event::StepStarted { step: "compile".into() },
            Event::Log { step: "compile".into(), stream: Stream::Stdout, line: "cc -o build/app main.c".into() },
            Event::Log { step: "compile".into(), stream: Stream::Stderr, line: "warning: unused variable".into() },
            Event::StepFinished {
                step: "compile".into(),
                status: StepStatus::Succeeded,
                duration_ms: 1234,
                exit_code: Some(0),
                source: None,
            },
            Event::StepFinished {
                step: "lint".into(),
                status: StepStatus::Cached,
                duration_ms: 0,
                exit_code: None,
                source: Some(crate::events::CacheSource::Local),
            },
            Event::StepStarted { step: "unit-test".into() },
            Event::StepFailed {
                step: "unit-test".into(),
                status: StepStatus::Failed,
                duration_ms: 30_000,
                exit_code: None,
                reason: "timed out after 30s".into(),
                allowed: false,
            },
            Event::StepFailed {
                step: "fuzz".into(),
                status: StepStatus::Failed,
                duration_ms: 900,
                exit_code: Some(137),
                reason: "killed: out of memory (limit 64 MiB)".into(),
                allowed: true,
            },
            Event::StepFailed {
                step: "scan".into(),
                status: StepStatus::Cancelled,
                duration_ms: 2050,
                exit_code: None,
                reason: "cancelled".into(),
                allowed: false,
            },
            Event::StepSkipped { step: "package".into(), reason: "needs `unit-test`, which failed".into() },
            Event::RemoteCache(crate::events::RemoteSummary {
                url: "oci://127.0.0.1:5000/cache".into(),
                mode: "readwrite".into(),
                hits: 1,
                misses: 3,
                uploads: 1,
                bytes_down: 2048,
                bytes_up: 1_500_000,
                blobs_up: 2,
                blobs_skipped: 3,
                not_shared: vec!["compile".into()],
                unavailable: Some("registry 127.0.0.1:5000 is unavailable: timed out".into()),
                ..Default::default()
            }),
            Event::RunFinished { run_id: "r-1".into(), status: RunStatus::Failed, duration_ms: 33_400, steps },
        ]
    }

    fn render_all(color: bool) -> String {
        let mut r = PlainRenderer::new(color);
        events().iter().flat_map(|e| r.render(e)).map(|l| l + "\n").collect()
    }

    #[test]
    fn plain_rendering_without_colour() {
        let text = render_all(false);
        assert!(text.is_ascii(), "no-colour output must be ASCII");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn colour_is_stable_per_step_and_only_when_asked() {
        let text = render_all(true);
        assert!(text.contains("\x1b["));
        let mut a = PlainRenderer::new(true);
        let mut b = PlainRenderer::new(true);
        let log = Event::Log { step: "x".into(), stream: Stream::Stdout, line: "hi".into() };
        assert_eq!(a.render(&log), b.render(&log));
        assert_eq!(a.render(&log), [format!("\x1b[{}mx{RESET} | hi", colour_of("x"))]);
    }

    #[test]
    fn names_are_padded_to_the_longest_step() {
        let mut r = PlainRenderer::new(false);
        r.render(&Event::RunStarted { run_id: "r".into(), workflow: "w".into(), steps: vec!["a".into(), "long-name".into()] });
        let lines = r.render(&Event::Log { step: "a".into(), stream: Stream::Stdout, line: "x".into() });
        assert_eq!(lines, ["a         | x"]);
    }

    #[test]
    fn table() {
        insta::assert_snapshot!(summary_table(&summaries()));
    }

    #[test]
    fn last_line() {
        assert_eq!(
            summary_line(&summaries(), Duration::from_millis(4100)),
            "1 succeeded, 1 cached, 2 failed, 1 failed (allowed), 1 cancelled, 2 skipped in 4.1s"
        );
        assert_eq!(summary_line(&[], Duration::ZERO), "no steps in 0ms");
        assert_eq!(fmt_secs(45), "45ms");
        assert_eq!(fmt_secs(1250), "1.2s");
    }

    #[test]
    fn json_lines() {
        let lines: Vec<String> = events().iter().map(json_line).collect();
        assert_eq!(lines[1], r#"{"event":"step_started","step":"compile"}"#);
        assert!(lines.iter().all(|l| !l.contains('\n')));
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn control_characters_of_steps_are_shown_not_obeyed() {
        let mut r = PlainRenderer::new(false);
        let hostile = "a\x1b[2Jb\x1b]52;c;SGVsbG8=\x07c\rtrusted | ok succeeded\u{9b}1A\x7f\u{202e}x\ty";
        let lines = r.render(&Event::Log { step: "evil".into(), stream: Stream::Stdout, line: hostile.into() });
        assert_eq!(lines, ["evil | a␛[2Jb␛]52;c;SGVsbG8=␇c␍trusted | ok succeeded␛[1A␡<U+202E>x\ty"]);
        let failed = Event::StepFailed {
            step: "s\x1b[1A".into(),
            status: StepStatus::Failed,
            duration_ms: 5,
            exit_code: None,
            reason: "output `x\ry` is missing".into(),
            allowed: false,
        };
        let skipped = Event::StepSkipped { step: "t".into(), reason: "needs `\x1b]0;x\x07`".into() };
        let started = Event::RunStarted { run_id: "r\x1bc".into(), workflow: "w\x1b[2J".into(), steps: vec!["s\x1b[1A".into()] };
        let finished = Event::RunFinished {
            run_id: "r".into(),
            status: RunStatus::Failed,
            duration_ms: 5,
            steps: vec![StepSummary {
                not_started: true,
                ..StepSummary::ended("s\x1b[1A".into(), StepStatus::Failed, 5, None, Some("\x1b[31mred\r".into()))
            }],
        };
        for event in [started, failed, skipped, finished] {
            for line in r.render(&event) {
                assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
            }
        }
    }

    #[test]
    fn json_lines_carry_no_raw_control_characters() {
        let line = json_line(&Event::Log { step: "s".into(), stream: Stream::Stdout, line: "a\x1b[2J\u{9b}\x7f\u{2028}\rb".into() });
        assert!(!line.chars().any(|c| c.is_control() || c == '\u{2028}'), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["line"], "a\x1b[2J\u{9b}\x7f\u{2028}\rb");
    }

    #[tokio::test]
    async fn spawned_renderer_ends_when_the_senders_are_gone() {
        let (sink, rx) = crate::events::EventSink::channel();
        let handle = spawn(OutputMode::Json, false, rx);
        sink.emit(Event::StepStarted { step: "x".into() });
        drop(sink);
        handle.await.unwrap();
    }
}
