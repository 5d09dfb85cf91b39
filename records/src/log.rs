//! A step's log beside the record, written while the step runs and capped (head and tail).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::schema::LogRecord;

/// Default most bytes of one step's log kept in its run record (`ENGINE_LOG_LIMIT` overrides).
pub const DEFAULT_LOG_LIMIT: u64 = 16 << 20;
/// The smallest log limit accepted: room for a head, a tail and the line saying what was cut.
pub const MIN_LOG_LIMIT: u64 = 64 << 10;

/// A size as a person writes it (`16m`, `1g`, `100b`): how the cut line names the limit, as
/// `ENGINE_LOG_LIMIT` is written.
fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}b")
}

/// One step's log being written: `logs/<n>-<step>.log` keeps the first 1/16 of the limit (the
/// head, at most 1 MiB) and the last lines (the tail, in a rotating pair of files each half of
/// the rest), with one line between them saying how many bytes were cut. Lines arrive through
/// a bounded channel to a writer thread; a slow disk slows the step's log reader, it never
/// grows the engine's memory.
pub struct StepLog {
    tx: Mutex<Option<std::sync::mpsc::SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<io::Result<LogRecord>>>>,
    /// What the writer ended with (a second `finish` returns it again).
    done: Mutex<Option<Result<LogRecord, String>>>,
    path: PathBuf,
}

impl StepLog {
    pub(crate) fn start(logs: PathBuf, rel: String, limit: u64) -> io::Result<std::sync::Arc<StepLog>> {
        let path = logs.parent().unwrap_or(&logs).join(&rel);
        let mut capped = CappedLog::new(&logs, limit)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
        let dest = path.clone();
        let writer = std::thread::Builder::new().name("engine-log".into()).spawn(move || {
            let mut failed = None;
            for line in rx {
                if failed.is_none() {
                    failed = capped.write(&line).err();
                }
            }
            match failed {
                Some(e) => Err(e),
                None => capped.finish(&dest, rel),
            }
        })?;
        Ok(std::sync::Arc::new(StepLog { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), done: Mutex::new(None), path }))
    }

    /// The log file (complete once [`StepLog::finish`] returned).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No more lines: write the kept log out and say what the record says about it. Blocks
    /// until the writer is done (call it off the async workers). Calling it again returns the
    /// same answer.
    pub fn finish(&self) -> io::Result<LogRecord> {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.is_none() {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            *done = Some(match writer {
                Some(w) => match w.join() {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the log writer stopped".to_string()),
                },
                None => Err("the log writer stopped".to_string()),
            });
        }
        done.clone().unwrap_or_else(|| Err(String::new())).map_err(io::Error::other)
    }
}

impl StepLog {
    /// Append one line (with its newline). Lines after [`StepLog::finish`] are dropped. Blocks
    /// while the writer is a few dozen lines behind.
    pub fn append(&self, line: Vec<u8>) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let _ = tx.send(line);
        }
    }

    /// Append one line if the writer has room for it now; otherwise hand it back (to be given
    /// to [`StepLog::append`] where blocking is allowed). Lines after [`StepLog::finish`] are
    /// dropped.
    pub fn try_append(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx.map(|tx| tx.try_send(line)) {
            Some(Err(std::sync::mpsc::TrySendError::Full(line))) => Err(line),
            _ => Ok(()),
        }
    }
}

/// The files behind a [`StepLog`]: the head (the log file to be), and the tail's two segments.
struct CappedLog {
    head: tempfile::NamedTempFile,
    head_len: u64,
    head_limit: u64,
    /// Set once a line did not fit in the head: everything after goes to the tail.
    head_full: bool,
    /// The older and the current tail segment, with their lengths.
    segments: [Option<(tempfile::NamedTempFile, u64)>; 2],
    segment_limit: u64,
    logs: PathBuf,
    limit: u64,
    total: u64,
}

impl CappedLog {
    fn new(logs: &Path, limit: u64) -> io::Result<CappedLog> {
        let head_limit = (limit / 16).min(1 << 20);
        // The rest, less room for the line saying what was cut.
        let segment_limit = (limit - head_limit - 256) / 2;
        Ok(CappedLog {
            head: tempfile::NamedTempFile::new_in(logs)?,
            head_len: 0,
            head_limit,
            head_full: false,
            segments: [None, None],
            segment_limit,
            logs: logs.to_path_buf(),
            limit,
            total: 0,
        })
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        self.total += line.len() as u64;
        if !self.head_full && self.head_len + line.len() as u64 <= self.head_limit {
            self.head.write_all(line)?;
            self.head_len += line.len() as u64;
            return Ok(());
        }
        self.head_full = true;
        // A line longer than a segment keeps its end only.
        let line = &line[line.len().saturating_sub(self.segment_limit as usize)..];
        let current_full = self.segments[1].as_ref().is_none_or(|(_, len)| len + line.len() as u64 > self.segment_limit);
        if current_full {
            // Rotate: the older segment goes, the current one becomes the older.
            self.segments[0] = self.segments[1].take();
            self.segments[1] = Some((tempfile::NamedTempFile::new_in(&self.logs)?, 0));
        }
        if let Some((file, len)) = self.segments[1].as_mut() {
            file.write_all(line)?;
            *len += line.len() as u64;
        }
        Ok(())
    }

    fn finish(mut self, dest: &Path, rel: String) -> io::Result<LogRecord> {
        let kept_tail: u64 = self.segments.iter().flatten().map(|(_, len)| len).sum();
        let cut = self.total - self.head_len - kept_tail;
        if cut > 0 {
            let line = format!(
                "engine [{cut} bytes of this log cut here: at most {} of a step's log is kept (ENGINE_LOG_LIMIT)]\n",
                format_size(self.limit)
            );
            self.head.write_all(line.as_bytes())?;
        }
        for (segment, _) in self.segments.iter_mut().flatten() {
            use std::io::Seek;
            let file = segment.as_file_mut();
            file.seek(io::SeekFrom::Start(0))?;
            io::copy(file, self.head.as_file_mut())?;
        }
        self.head.flush()?;
        let file = self.head.persist(dest).map_err(|e| e.error)?;
        let bytes = file.metadata()?.len();
        let digest = cache::hash::hash_file(dest)?;
        Ok(LogRecord { path: rel, digest, bytes, cut })
    }
}
