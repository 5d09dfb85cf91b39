//! The bounds every workflow must fit in, whatever its syntax: file sizes, nesting depth,
//! expansion, step counts, name and path lengths, and the maxima of `limits`. A hostile file is
//! refused at load time (exit 2) with a diagnostic at the construct that went over, before it can
//! cost memory, time or stack.
//!
//! This module owns the numbers and the safe way to read a file; the front ends decide where
//! each check happens. Documented in docs/workflow.md ("Validation rules") and docs/dsl.md.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// A workflow (or policy) file: at most 16 MiB.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// A `.wf` module brought in by `import`: at most 1 MiB.
pub const MAX_IMPORT_BYTES: u64 = 1 << 20;
/// Files imported by one workflow, all levels together.
pub const MAX_IMPORTS: usize = 64;
/// Imports of imports of ...: at most this many levels below the workflow file.
pub const MAX_IMPORT_DEPTH: usize = 8;
/// `{`/`[` nesting in a `.wf` file; mapping/sequence nesting in a YAML file.
pub const MAX_NESTING: usize = 64;
/// Axes of one matrix (each adds a value to the step's name, itself at most 128 characters).
pub const MAX_AXES: usize = 16;
/// Steps after matrix expansion (images likewise).
pub const MAX_STEPS: usize = 10_000;
/// Bytes of text (plus 16 per node) the `.wf` desugaring may produce: templates and matrices
/// multiply text, this bounds the product.
pub const MAX_EXPANDED_BYTES: usize = 64 << 20;
/// Bytes of `env` and command text over all resolved steps (workflow `env` is copied into every
/// step).
pub const MAX_RESOLVED_BYTES: usize = 256 << 20;
/// Diagnostics collected for one file; past it no more are built (the first 100 are shown).
pub const MAX_COLLECTED: usize = 1000;
/// Step, image, stage and cache names.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest worker label (`runs_on`, `engine worker --label`).
pub const MAX_LABEL_CHARS: usize = 64;
/// Most worker labels one step asks for.
pub const MAX_LABELS: usize = 16;
/// One `inputs`/`outputs`/`copy` path, and one component of it (a file name).
pub const MAX_PATH_BYTES: usize = 1024;
/// One component of such a path (a file name).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// One argv string or `NAME=value` env entry, as the kernel's execve accepts it (MAX_ARG_STRLEN
/// is 131072 including the terminating NUL).
pub const MAX_ARG_BYTES: usize = 131_071;
/// All env entries of one step together (execve's total is about 2 MiB with the argv).
pub const MAX_ENV_BYTES: usize = 1 << 20;
/// uid and gid: 0..=2^31-2 (the kernel's `(uid_t)-1` and the sign bit are never valid ids).
pub const MAX_ID: u32 = (1 << 31) - 2;

// The maxima of `limits` (also caps a policy cannot raise).
/// `limits.cpus`, in thousandths of a CPU (1024 CPUs).
pub const MAX_MILLICPUS: u64 = 1024 * 1000;
/// `limits.memory`: 1 TiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// `limits.pids` (the kernel's `pid_max` limit).
pub const MAX_PIDS: u64 = 4_194_304;
/// `limits.timeout`: a week.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// `limits.tmpfs`: 64 GiB.
pub const MAX_TMPFS: u64 = 64 << 30;
/// `limits.workspace`: 16 TiB.
pub const MAX_WORKSPACE: u64 = 16 << 40;
/// `limits.outputs`: 16 TiB.
pub const MAX_OUTPUTS: u64 = 16 << 40;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read (the operating system's error, shown as is).
    #[error(transparent)]
    Io(io::Error),
    /// A folder, FIFO, socket, device, or (when asked) a symlink.
    #[error("not a regular file (a folder, FIFO, socket or device is never read)")]
    NotRegular,
    /// Larger than the bound (in bytes) it is read with.
    #[error("larger than the maximum of {} MiB", .0 >> 20)]
    TooLarge(u64),
    /// Not UTF-8.
    #[error("not UTF-8 text")]
    NotText,
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// Reads a regular file of at most `max` bytes as text. The file is opened non-blocking (a FIFO
/// never blocks the open) and checked on the open descriptor before any byte is read, so a
/// device or FIFO is refused, never read; `no_follow` refuses a symlink as the last component.
pub fn read_regular(path: &Path, max: u64, no_follow: bool) -> Result<String, ReadError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
        if no_follow {
            flags |= libc::O_NOFOLLOW;
        }
        opts.custom_flags(flags);
    }
    let file: File = opts.open(path).map_err(|e| {
        #[cfg(unix)]
        if no_follow && e.raw_os_error() == Some(libc::ELOOP) {
            return ReadError::NotRegular;
        }
        ReadError::Io(e)
    })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the check: never read more than the cap.
    file.take(max + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

/// The deepest `{`/`[` nesting of `.wf` text (strings and comments skipped), and the byte
/// offset of the first bracket that goes deeper than `max`, if any. Linear, no recursion: runs
/// before the (recursive) parser sees the text.
pub(crate) fn wf_too_deep(text: &str, max: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wf_depth_skips_strings_and_comments() {
        assert_eq!(wf_too_deep("a { b { c } }", 2), None);
        assert_eq!(wf_too_deep("a { b { c { } } }", 2), Some(10));
        assert_eq!(wf_too_deep("a \"{{{{\" # {{{{\n{", 1), None);
        assert_eq!(wf_too_deep("a \"\\\"{{\" {", 1), None);
    }

    #[test]
    fn fifo_and_devices_are_refused_without_blocking() {
        assert!(matches!(read_regular(Path::new("/dev/zero"), 10, false), Err(ReadError::NotRegular)));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_regular(&fifo, 10, false), Err(ReadError::NotRegular)));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(matches!(read_regular(&big, 10, false), Err(ReadError::TooLarge(10))));
        std::os::unix::fs::symlink(&big, dir.path().join("link")).unwrap();
        assert!(matches!(read_regular(&dir.path().join("link"), 100, true), Err(ReadError::NotRegular)));
        assert_eq!(read_regular(&dir.path().join("link"), 100, false).unwrap().len(), 11);
    }
}
