//! Request bodies written on a blocking thread and streamed to the daemon in bounded memory: the
//! workspace upload of the archive transfer and the context of a Dockerfile build.
//!
//! [`pack`] runs the writer on a blocking thread; what it writes travels in chunks of [`CHUNK`]
//! bytes through a channel of [`DEPTH`] chunks to the request ([`Chunks`]), so memory stays a few
//! chunks whatever the body's size. Both ends stop each other: a writer that fails ends the
//! body with its error (the request fails), and the body ends cleanly only after a writer that
//! ran to its end, so the daemon never takes a truncated body for a whole one (a panic included).
//! Once the request has ended (refused, timed out, dropped), [`Packer::finish`] (or dropping the
//! [`Packer`]) stops the writer at its next chunk ([`PackError::Stopped`]), even when the HTTP
//! connection still holds the body.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Size of the chunks a body is sent in.
pub const CHUNK: usize = 256 << 10;
/// How many chunks may wait for the request: with the one being filled, the memory a body costs.
pub const DEPTH: usize = 4;

/// Why a body written by [`pack`] was not sent whole.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The writer failed; the body ended with this error.
    #[error(transparent)]
    Failed(io::Error),
    /// The request ended (refused, timed out or dropped) before the whole body was written.
    #[error("the request ended before its body was sent")]
    Stopped,
    /// The writer's thread did not run to its end (it panicked, or the runtime is shutting down).
    #[error(transparent)]
    Join(tokio::task::JoinError),
}

/// The writing end: what is written is sent in chunks of [`CHUNK`] bytes, waiting while the
/// channel is full (blocking: it lives on the blocking thread of [`pack`]).
pub struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
    stopped: bool,
}

impl ChunkWriter {
    fn send(&mut self, item: io::Result<Vec<u8>>) -> io::Result<()> {
        let (tx, stop) = (&self.tx, &self.stop);
        let sent = self.runtime.block_on(async {
            tokio::select! {
                sent = tx.send(item) => sent.is_ok(),
                () = stop.cancelled() => false,
            }
        });
        if !sent {
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
/// of a writer that ran to its end, and with an error otherwise (the writer's own, or one saying
/// the body is incomplete).
pub struct Chunks {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    complete: Arc<AtomicBool>,
    ended: bool,
}

impl futures_util::Stream for Chunks {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(self.rx.poll_recv(cx)) {
            Some(Ok(chunk)) => Some(Ok(chunk)),
            Some(Err(e)) => {
                self.ended = true;
                Some(Err(e))
            }
            None => {
                self.ended = true;
                // The writer's flag is set before its sender is dropped.
                (!self.complete.load(Ordering::Acquire)).then(|| Err(io::Error::other("the request body was not written to its end")))
            }
        })
    }
}

/// The writer's thread; [`Packer::finish`] tells how it ended. Dropped, it stops the writer.
pub struct Packer {
    thread: tokio::task::JoinHandle<Result<(), PackError>>,
    stop: DropGuard,
}

impl Packer {
    /// Call once the request has ended: stops the writer if it has not finished (its next chunk
    /// would go nowhere) and says how it ended.
    pub async fn finish(self) -> Result<(), PackError> {
        let Packer { thread, stop } = self;
        drop(stop);
        thread.await.unwrap_or_else(|e| Err(PackError::Join(e)))
    }
}

/// Run `write` on a blocking thread, its output streamed as [`Chunks`]: hand them to the request
/// that sends the body, then, once it has ended, [`Packer::finish`]. Must be called within a
/// Tokio runtime.
pub fn pack<F>(write: F) -> (Packer, Chunks)
where
    F: FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(DEPTH);
    let complete = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let mut out =
        ChunkWriter { tx, buf: Vec::with_capacity(CHUNK), stop: stop.clone(), runtime: tokio::runtime::Handle::current(), stopped: false };
    let done = complete.clone();
    let thread = tokio::task::spawn_blocking(move || match write(&mut out).and_then(|()| out.flush_chunk()) {
        Ok(()) => {
            done.store(true, Ordering::Release);
            Ok(())
        }
        Err(_) if out.stopped => Err(PackError::Stopped),
        Err(e) => {
            // The request must fail rather than send a truncated body: end it with the error.
            let _ = out.send(Err(io::Error::new(e.kind(), e.to_string())));
            Err(PackError::Failed(e))
        }
    });
    (Packer { thread, stop: stop.drop_guard() }, Chunks { rx, complete, ended: false })
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
            out.write_all(&vec![1; CHUNK + 10])?;
            panic!("bug in the writer");
        });
        let mut items = Vec::new();
        while let Some(item) = chunks.next().await {
            items.push(item);
        }
        assert!(items.pop().expect("no item").is_err(), "the body of a panicked writer ended as if whole");
        assert!(matches!(packer.finish().await, Err(PackError::Join(_))));
    }

    fn endless(out: &mut ChunkWriter) -> io::Result<()> {
        loop {
            out.write_all(&[0; 4096])?;
        }
    }

    #[tokio::test]
    async fn a_request_that_ends_stops_the_writer() {
        let (packer, mut chunks) = pack(endless);
        chunks.next().await.unwrap().unwrap();
        drop(chunks);
        assert!(matches!(packer.finish().await, Err(PackError::Stopped)));
    }

    #[tokio::test]
    async fn finishing_stops_a_writer_whose_body_is_held_but_no_longer_read() {
        // As when a connection still holds the body of a request that has ended.
        let (packer, mut chunks) = pack(endless);
        chunks.next().await.unwrap().unwrap();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), packer.finish()).await;
        assert!(matches!(stopped, Ok(Err(PackError::Stopped))), "{stopped:?}");
        drop(chunks);
    }

    #[tokio::test]
    async fn dropping_the_packer_stops_the_writer() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (packer, chunks) = pack(move |out| {
            let ended = endless(out);
            let _ = tx.send(());
            ended
        });
        drop(packer);
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the writer stopped");
        drop(chunks);
    }
}
