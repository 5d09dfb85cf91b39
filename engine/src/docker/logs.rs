//! Turning the container's output chunks into log lines: split on newlines per stream, flush the
//! partial last line at the end, mask secret values before a line leaves as an event.
//!
//! Must never emit an unmasked line; does not talk to Docker.

use crate::events::{Event, EventSink, Stream};

pub struct LineSplitter {
    step: String,
    events: EventSink,
    /// Secret values, longest first so that a secret containing another is masked whole.
    secrets: Vec<String>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    pub fn new(step: String, events: EventSink, secrets: &[(String, String)]) -> Self {
        let mut values: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).filter(|v| !v.is_empty()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        LineSplitter { step, events, secrets: values, stdout: Vec::new(), stderr: Vec::new() }
    }

    pub fn push(&mut self, stream: Stream, chunk: &[u8]) {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            lines.push(line);
        }
        for line in lines {
            self.emit(stream, &line);
        }
    }

    /// Emit what is left without a trailing newline.
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = match stream {
                Stream::Stdout => std::mem::take(&mut self.stdout),
                Stream::Stderr => std::mem::take(&mut self.stderr),
            };
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }

    fn emit(&self, stream: Stream, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let line = mask(text, &self.secrets);
        self.events.emit(Event::Log { step: self.step.clone(), stream, line });
    }
}

/// Replace every occurrence of each secret value by `***`.
pub fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_masks_and_flushes() {
        let (sink, mut rx) = EventSink::channel();
        let mut s = LineSplitter::new("s".into(), sink, &[("T".into(), "hunter2".into())]);
        s.push(Stream::Stdout, b"a hunter");
        s.push(Stream::Stdout, b"2 b\nrest");
        s.push(Stream::Stderr, b"err\n");
        s.flush();
        let mut got = Vec::new();
        while let Ok(Event::Log { stream, line, .. }) = rx.try_recv() {
            got.push((stream, line));
        }
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, "a *** b".to_string()),
                (Stream::Stderr, "err".to_string()),
                (Stream::Stdout, "rest".to_string()),
            ]
        );
    }
}
