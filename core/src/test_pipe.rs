//! An in-memory, bounded, duplex byte pipe for driving the engine in tests
//! without sockets or timing, as Netty's `EmbeddedChannel` does.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::io::{AsyncRead, AsyncWrite};

#[derive(Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Slice counts of every write call that moved bytes.
    writes: Vec<usize>,
}

/// One direction of the pipe.
#[derive(Clone)]
pub(crate) struct Half(Arc<Mutex<Buffer>>);

impl Half {
    fn new(capacity: usize) -> Half {
        Half(Arc::new(Mutex::new(Buffer {
            capacity,
            ..Buffer::default()
        })))
    }
}

/// One end of a duplex pipe: reads from one half, writes to the other.
pub(crate) struct End {
    read: Half,
    write: Half,
}

/// A connected pair of ends; each direction buffers at most `capacity` bytes.
pub(crate) fn duplex(capacity: usize) -> (End, End) {
    let a = Half::new(capacity);
    let b = Half::new(capacity);
    (
        End {
            read: a.clone(),
            write: b.clone(),
        },
        End { read: b, write: a },
    )
}

impl End {
    /// The slice counts of the writes the other end made into this end.
    pub(crate) fn writes_received(&self) -> Vec<usize> {
        self.read.0.lock().unwrap().writes.clone()
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.read.0.lock().unwrap();
        if b.bytes.is_empty() {
            if b.closed {
                return Poll::Ready(Ok(0));
            }
            b.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(b.bytes.len());
        for (dst, src) in buf.iter_mut().zip(b.bytes.drain(..n)) {
            *dst = src;
        }
        if let Some(w) = b.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.write.0.lock().unwrap();
        if b.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = b.capacity - b.bytes.len();
        if room == 0 {
            b.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        for slice in bufs {
            let take = slice.len().min(room - n);
            b.bytes.extend(&slice[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        b.writes.push(bufs.len());
        if let Some(w) = b.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut b = self.write.0.lock().unwrap();
        b.closed = true;
        if let Some(w) = b.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

/// A stream whose reads return the given chunks, one per read, then end;
/// writes go to a buffer that is kept, at most `max_write` bytes a call.
pub(crate) struct Chunked {
    chunks: VecDeque<Vec<u8>>,
    pub(crate) written: Arc<Mutex<Vec<u8>>>,
    /// How many writes took bytes.
    pub(crate) writes: Arc<Mutex<usize>>,
    max_write: usize,
}

impl Chunked {
    pub(crate) fn new(chunks: Vec<Vec<u8>>) -> Chunked {
        Chunked {
            chunks: chunks.into(),
            written: Arc::default(),
            writes: Arc::default(),
            max_write: usize::MAX,
        }
    }

    /// Takes at most `max` bytes per write, as a socket with little room.
    pub(crate) fn with_max_write(mut self, max: usize) -> Chunked {
        self.max_write = max;
        self
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Some(chunk) = self.chunks.front_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = buf.len().min(chunk.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.max_write);
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        *self.writes.lock().unwrap() += usize::from(n > 0);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
