//! Turning a container's output chunks into log lines (steps and image builds alike): split on
//! newlines per stream, cap each line at [`MAX_LINE`] bytes, flush the partial last line at the
//! end, and mask secret values before a line leaves.
//!
//! Linear in the output: each byte is scanned for a newline once, and a stream never buffers
//! more than one capped line (plus the longest secret, so that a secret crossing the cut is
//! still masked whole). Must never emit an unmasked line; does not talk to Docker.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

/// Which output of the container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The longest line kept, in bytes. The rest of a longer line is dropped and the line ends with
/// `[… N bytes cut]` (N: the bytes dropped).
pub const MAX_LINE: usize = 64 * 1024;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Lines of a multi-line secret shorter than this (after trimming) are not masked on their own:
/// masking every `}` or empty line would garble the log and hide nothing worth hiding.
const MIN_PIECE: usize = 4;

/// Column at which `base64` (coreutils, busybox) wraps its output by default.
const BASE64_WRAP: usize = 76;

/// Finds and replaces secret values. Built once per step from the step's secrets.
pub struct Masker {
    /// None when the step has no secrets.
    matcher: Option<AhoCorasick>,
    /// Length in bytes of the longest pattern.
    longest: usize,
}

impl Masker {
    /// Patterns: every non-empty value whole (and trimmed); each line of a multi-line value (trimmed, at least
    /// [`MIN_PIECE`] bytes), so a key printed line by line or re-wrapped is still masked; and the
    /// standard base64 encoding of each value, whole and as the 76-column lines `base64` prints.
    pub fn new(secrets: &[(String, String)]) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for (_, value) in secrets {
            if value.is_empty() {
                continue;
            }
            patterns.push(value.clone());
            // A value read from a file often ends with a newline that printed lines lack.
            let trimmed = value.trim();
            if !trimmed.is_empty() && trimmed != value {
                patterns.push(trimmed.to_string());
            }
            let pieces = value.lines().map(str::trim).filter(|l| l.len() >= MIN_PIECE);
            patterns.extend(pieces.filter(|l| *l != value).map(str::to_string));
            let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
            if encoded.len() >= MIN_PIECE {
                for piece in encoded.as_bytes().chunks(BASE64_WRAP) {
                    // ASCII: the chunks are valid UTF-8.
                    let piece = String::from_utf8_lossy(piece).into_owned();
                    if piece.len() >= MIN_PIECE {
                        patterns.push(piece);
                    }
                }
                patterns.push(encoded);
            }
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        // Leftmost-longest: a secret that contains another (or one of its own lines) is masked
        // whole, not piecewise.
        let matcher = if patterns.is_empty() {
            None
        } else {
            // Building fails only for pattern sets far beyond any real secret's size; then mask
            // what the plain values alone allow rather than nothing.
            AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok().or_else(|| {
                let values: Vec<&str> = secrets.iter().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()).collect();
                AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(values).ok()
            })
        };
        Masker { matcher, longest }
    }

    /// `raw` with every secret replaced by [`MASK`].
    pub fn mask<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.matcher {
            Some(m) if m.is_match(raw) => Cow::Owned(m.replace_all_bytes(raw, &vec![MASK.as_bytes(); m.patterns_len()])),
            _ => Cow::Borrowed(raw),
        }
    }

    /// The first `limit` bytes of `raw`, masked, and the number of bytes of `raw` they cover.
    /// A secret that starts before `limit` is masked whole (the cut moves past it), so `raw`
    /// must extend at least [`Self::longest`] bytes beyond `limit` when it is longer than that.
    fn head<'a>(&self, raw: &'a [u8], limit: usize) -> (Cow<'a, [u8]>, usize) {
        let mut cut = limit.min(raw.len());
        let mut matches = Vec::new();
        if let Some(m) = &self.matcher {
            for found in m.find_iter(raw) {
                if found.start() >= cut {
                    break;
                }
                cut = cut.max(found.end());
                matches.push((found.start(), found.end()));
            }
        }
        // Do not split a UTF-8 character (unless a mask ends right there).
        let floor = matches.last().map_or(0, |&(_, end)| end);
        let mut back = 0;
        while back < 3 && cut > floor && cut < raw.len() && (raw[cut] & 0xC0) == 0x80 {
            cut -= 1;
            back += 1;
        }
        if matches.is_empty() {
            return (Cow::Borrowed(&raw[..cut]), cut);
        }
        let mut out = Vec::with_capacity(cut);
        let mut at = 0;
        for (start, end) in matches {
            out.extend_from_slice(&raw[at..start]);
            out.extend_from_slice(MASK.as_bytes());
            at = end;
        }
        out.extend_from_slice(&raw[at..cut]);
        (Cow::Owned(out), cut)
    }
}

/// One stream's line in progress.
#[derive(Default)]
struct Pending {
    /// The bytes of the current line so far (no newline in it), at most `window` bytes.
    buf: Vec<u8>,
    /// Set once the line outgrew [`MAX_LINE`]: its masked head, and how many bytes were dropped
    /// so far. The rest of the line is only counted until its newline.
    cut: Option<(Vec<u8>, u64)>,
}

/// Splits the two output streams of one container into lines and hands each (masked, capped)
/// line to `emit`.
pub struct LineSplitter<F: FnMut(Stream, String)> {
    emit: F,
    masker: Masker,
    /// [`MAX_LINE`] plus the longest secret pattern (plus 4): how much of a line is buffered
    /// before it is cut.
    window: usize,
    stdout: Pending,
    stderr: Pending,
}

impl<F: FnMut(Stream, String)> LineSplitter<F> {
    /// A splitter masking the values of `secrets` (name, value), handing lines to `emit`.
    pub fn new(secrets: &[(String, String)], emit: F) -> Self {
        let masker = Masker::new(secrets);
        // A few bytes more so that a cut can see whether it would split a UTF-8 character.
        let window = MAX_LINE + masker.longest + 4;
        LineSplitter { emit, masker, window, stdout: Pending::default(), stderr: Pending::default() }
    }

    /// Take the next chunk of `stream`.
    pub fn push(&mut self, stream: Stream, mut chunk: &[u8]) {
        let window = self.window;
        while !chunk.is_empty() {
            let newline = memchr::memchr(b'\n', chunk);
            let pending = self.pending(stream);
            if let Some((_, dropped)) = &mut pending.cut {
                // Past the cut: count what is dropped until the line ends.
                match newline {
                    Some(i) => {
                        *dropped += i as u64;
                        chunk = &chunk[i + 1..];
                        self.end_line(stream);
                    }
                    None => {
                        *dropped += chunk.len() as u64;
                        chunk = &[];
                    }
                }
                continue;
            }
            match newline {
                Some(i) if pending.buf.len() + i <= window => {
                    pending.buf.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    self.end_line(stream);
                }
                _ => {
                    // No newline within the window: fill it, and cut once it is full.
                    let room = window - pending.buf.len();
                    let take = room.min(chunk.len());
                    pending.buf.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if pending.buf.len() >= window {
                        self.start_cut(stream);
                    }
                }
            }
        }
    }

    /// Emit what is left without a trailing newline.
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = self.pending(stream);
            if pending.cut.is_some() || !pending.buf.is_empty() {
                self.end_line(stream);
            }
        }
    }

    fn pending(&mut self, stream: Stream) -> &mut Pending {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// The window is full and holds no newline: keep the masked head, count the rest as dropped.
    fn start_cut(&mut self, stream: Stream) {
        let pending = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let (head, used) = self.masker.head(&pending.buf, MAX_LINE);
        let dropped = (pending.buf.len() - used) as u64;
        pending.cut = Some((head.into_owned(), dropped));
        pending.buf = Vec::new();
    }

    /// The current line of `stream` is complete: emit it and reset.
    fn end_line(&mut self, stream: Stream) {
        if self.pending(stream).cut.is_none() && self.pending(stream).buf.len() > MAX_LINE {
            self.start_cut(stream);
        }
        let pending = self.pending(stream);
        let line = match pending.cut.take() {
            Some((head, dropped)) => {
                let mut line = String::from_utf8_lossy(&head).into_owned();
                line.push_str(&format!(" [… {dropped} bytes cut]"));
                line
            }
            None => {
                let raw = std::mem::take(&mut pending.buf);
                let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
                String::from_utf8_lossy(&self.masker.mask(raw)).into_owned()
            }
        };
        // A short line's buffer is reused; a long one's capacity is given back.
        if self.pending(stream).buf.capacity() > 2 * MAX_LINE {
            self.pending(stream).buf = Vec::new();
        }
        (self.emit)(stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(secrets: &[(&str, &str)], pushes: &[(Stream, &[u8])]) -> Vec<(Stream, String)> {
        let secrets: Vec<(String, String)> = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut got = Vec::new();
        let mut s = LineSplitter::new(&secrets, |stream, line| got.push((stream, line)));
        for (stream, bytes) in pushes {
            s.push(*stream, bytes);
        }
        s.flush();
        drop(s);
        got
    }

    #[test]
    fn splits_masks_and_flushes() {
        let got =
            lines(&[("T", "hunter2")], &[(Stream::Stdout, b"a hunter"), (Stream::Stdout, b"2 b\nrest"), (Stream::Stderr, b"err\r\n")]);
        assert_eq!(
            got,
            vec![(Stream::Stdout, "a *** b".to_string()), (Stream::Stderr, "err".to_string()), (Stream::Stdout, "rest".to_string()),]
        );
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line_and_whole() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\nab\n-----END KEY-----\n";
        let got = lines(
            &[("K", pem)],
            &[
                (Stream::Stdout, pem.as_bytes()),
                (Stream::Stdout, b"x MIIEvQIBADANBg"),
                (Stream::Stdout, b"kqhkiG9w0BAQEFAASC y\n"),
                (Stream::Stdout, b"BKcwggSjAgEAAoIBAQC7-----END KEY-----\n"),
            ],
        );
        let text: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        // `ab` is shorter than a piece worth masking alone.
        assert_eq!(text, ["***", "***", "***", "ab", "***", "x *** y", "******"]);
    }

    #[test]
    fn a_short_value_with_a_trailing_newline_is_masked() {
        let got = lines(&[("T", "abc\n")], &[(Stream::Stdout, b"x abc y\n")]);
        assert_eq!(got, [(Stream::Stdout, "x *** y".to_string())]);
    }

    #[test]
    fn base64_of_a_secret_is_masked_as_printed() {
        let value = "correct horse battery staple, and a rather long tail to wrap past 76 columns of base64";
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        let wrapped: Vec<&str> = encoded.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let printed = format!("{}\n", wrapped.join("\n"));
        let got = lines(&[("K", value)], &[(Stream::Stdout, printed.as_bytes()), (Stream::Stdout, encoded.as_bytes())]);
        assert!(got.iter().all(|(_, l)| l.chars().all(|c| c == '*')), "{got:?}");
    }

    #[test]
    fn a_long_line_is_cut_with_the_count_and_a_secret_at_the_cut_is_masked_whole() {
        let secret = "s3cr3t-value";
        let mut line = vec![b'a'; MAX_LINE - 4];
        line.extend_from_slice(secret.as_bytes());
        line.extend_from_slice(&[b'b'; 100_000]);
        let mut pushes: Vec<(Stream, &[u8])> = line.chunks(1000).map(|c| (Stream::Stdout, c)).collect();
        pushes.push((Stream::Stdout, b"\nnext\n"));
        let got = lines(&[("S", secret)], &pushes);
        assert_eq!(got.len(), 2, "{:?}", got.iter().map(|(_, l)| l.len()).collect::<Vec<_>>());
        let dropped = line.len() - (MAX_LINE - 4 + secret.len());
        assert_eq!(got[0].1, format!("{}*** [… {dropped} bytes cut]", "a".repeat(MAX_LINE - 4)));
        assert_eq!(got[1].1, "next");
        assert!(!got[0].1.contains("s3cr"));
    }

    #[test]
    fn a_long_unterminated_line_is_cut_at_flush_and_the_buffer_stays_bounded() {
        let mut got = Vec::new();
        let mut s = LineSplitter::new(&[], |_, line| got.push(line));
        let chunk = vec![b'x'; 1 << 20];
        let started = std::time::Instant::now();
        for _ in 0..64 {
            s.push(Stream::Stderr, &chunk);
            assert!(s.stderr.buf.capacity() <= 2 * MAX_LINE + (1 << 20));
        }
        s.flush();
        // 64 MiB in 1 MiB chunks: linear work (this took ~90 s when every chunk rescanned the line).
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        drop(s);
        assert_eq!(got, [format!("{} [… {} bytes cut]", "x".repeat(MAX_LINE), (64 << 20) - MAX_LINE)]);
    }

    #[test]
    fn lines_split_across_chunks_per_stream() {
        let got = lines(&[], &[(Stream::Stdout, b"a\nb"), (Stream::Stderr, b"e\r\n"), (Stream::Stdout, b"c\n")]);
        let text: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(text, ["a", "e", "bc"]);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.extend_from_slice("é".repeat(10).as_bytes());
        line.extend_from_slice(b"\n");
        let got = lines(&[], &[(Stream::Stdout, &line)]);
        assert_eq!(got[0].1, format!("{} [… 20 bytes cut]", "a".repeat(MAX_LINE - 1)));
        assert_eq!(got.len(), 1);
    }
}
