//! Request bodies written on a blocking thread and streamed to the daemon in bounded memory: the
//! workspace upload of the archive transfer and the context of a Dockerfile build.
//!
//! [`pack`] runs the writer on a blocking thread; what it writes travels in chunks of [`CHUNK`]
//! bytes through a channel of [`DEPTH`] chunks to the request ([`Chunks`]), so memory stays a few
//! chunks whatever the body's size. Both ends stop each other: a writer that fails ends the
//! body with its error (the request fails; the daemon never takes a truncated body for a whole
//! one), and a request that ends first (refused, timed out, dropped) makes the writer's next
//! write fail, so the thread stops ([`PackError::Stopped`]).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

/// Size of the chunks a body is sent in.
pub const CHUNK: usize = 256 << 10;
/// How many chunks may wait for the request: with the one being filled, the memory a body costs.
pub const DEPTH: usize = 4;

/// Why a body written by [`pack`] was not sent whole.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The writer failed (or panicked); the body ended with this error.
    #[error(transparent)]
    Failed(io::Error),
    /// The request ended (refused, timed out or dropped) before the whole body was written.
    #[error("the request ended before its body was sent")]
    Stopped,
    /// The writer's thread did not run to its end (the runtime is shutting down).
    #[error(transparent)]
    Join(tokio::task::JoinError),
}

/// The writing end: what is written is sent in chunks of [`CHUNK`] bytes, waiting while the
/// channel is full (blocking: it lives on the blocking thread of [`pack`]).
pub struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    stopped: bool,
}

impl ChunkWriter {
    fn send(&mut self, item: io::Result<Vec<u8>>) -> io::Result<()> {
        if self.tx.blocking_send(item).is_err() {
            self.stopped = true;
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the request ended"));
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.send(Ok(chunk))
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    /// A no-op: chunks go when full, and the last one when the writer returns.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end, a stream of chunks for a streaming request body: ends after the last chunk
/// of a writer that succeeded, or with the error of one that failed.
pub struct Chunks(mpsc::Receiver<io::Result<Vec<u8>>>);

impl futures_util::Stream for Chunks {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The writer's thread; [`Packer::finish`] tells how it ended.
pub struct Packer(tokio::task::JoinHandle<Result<(), PackError>>);

impl Packer {
    /// Wait for the writer to end: at once after the request has ended, since its next write
    /// then fails.
    pub async fn finish(self) -> Result<(), PackError> {
        self.0.await.unwrap_or_else(|e| Err(PackError::Join(e)))
    }
}

/// Run `write` on a blocking thread, its output streamed as [`Chunks`] (hand them to the request
/// that sends the body, then [`Packer::finish`]). Must be called within a Tokio runtime.
pub fn pack<F>(write: F) -> (Packer, Chunks)
where
    F: FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(DEPTH);
    let handle = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter { tx, buf: Vec::with_capacity(CHUNK), stopped: false };
        // A panic must not end the body as if it were complete.
        let written = catch_unwind(AssertUnwindSafe(|| write(&mut out)))
            .unwrap_or_else(|_| Err(io::Error::other("the thread writing the request body panicked")));
        match written.and_then(|()| out.flush_chunk()) {
            Ok(()) => Ok(()),
            Err(_) if out.stopped => Err(PackError::Stopped),
            Err(e) => {
                // The request must fail rather than send a truncated body: end it with the error.
                let _ = out.send(Err(io::Error::new(e.kind(), e.to_string())));
                Err(PackError::Failed(e))
            }
        }
    });
    (Packer(handle), Chunks(rx))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use futures_util::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn a_body_arrives_whole_in_bounded_chunks() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (packer, mut chunks) = pack(move |out| {
            // Uneven writes: chunks are cut at CHUNK whatever the writes are.
            for piece in data.chunks(1000) {
                out.write_all(piece)?;
            }
            Ok(())
        });
        let mut got = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert!(got == expected, "the body arrived changed");
        packer.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_writer_ends_the_body_with_its_error() {
        let (packer, mut chunks) = pack(|out| {
            // Two chunks sent, then the failure.
            out.write_all(&vec![1; 2 * CHUNK + 10])?;
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "no access to `x`"))
        });
        let mut items = Vec::new();
        while let Some(item) = chunks.next().await {
            items.push(item);
        }
        let last = items.pop().expect("the body ended without its error");
        assert_eq!(last.unwrap_err().to_string(), "no access to `x`");
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(Result::is_ok));
        match packer.finish().await {
            Err(PackError::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panicking_writer_ends_the_body_with_an_error() {
        let (packer, mut chunks) = pack(|out| {
            out.write_all(&[1; 10])?;
            panic!("bug in the writer");
        });
        let mut last = None;
        while let Some(item) = chunks.next().await {
            last = Some(item);
        }
        assert!(last.expect("no item").is_err(), "the body of a panicked writer ended as if whole");
        assert!(matches!(packer.finish().await, Err(PackError::Failed(_))));
    }

    #[tokio::test]
    async fn a_request_that_ends_stops_the_writer() {
        let (packer, mut chunks) = pack(|out| {
            // Endless, unless the writes start to fail.
            loop {
                out.write_all(&[0; 4096])?;
            }
        });
        chunks.next().await.unwrap().unwrap();
        drop(chunks);
        assert!(matches!(packer.finish().await, Err(PackError::Stopped)));
    }
}
