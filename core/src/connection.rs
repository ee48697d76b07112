//! The engine of one connection: reading and decoding, the user's callbacks,
//! the send queue and its batched writes, back-pressure, timeouts and the
//! close.
//!
//! One task runs one connection: a hand-written future that interleaves
//! reading and writing, so that the user's callbacks never run at once and
//! a reply queued from `on_received` is written in the same wake-up. It is
//! written against the `futures` I/O traits, so tests drive it over
//! in-memory pipes as well as sockets.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::io::{AsyncRead, AsyncWrite};

use crate::config::SessionConfig;
use crate::framing::{FrameError, Framing};
use crate::rt;
use crate::session::{
    CLOSE_ENGINE, CLOSE_LOCAL, CLOSE_SHUTDOWN, CLOSE_SLOW, DisconnectReason, OPEN, Session,
    SessionHandle,
};

/// Frames handed to one vectored write at most.
const MAX_IOVECS: usize = 64;
/// Reads one wake-up may do before it yields to other tasks.
const READS_PER_POLL: usize = 16;
/// A lingering close ends once a peer that was still sending has sent
/// nothing for this long.
const LINGER_QUIET: Duration = Duration::from_millis(100);
/// A partial-frame buffer larger than this is freed once it empties.
const KEEP_PENDING: usize = 16 * 1024;

thread_local! {
    /// One read buffer per thread, lent to whichever session is reading:
    /// an idle session holds no read buffer at all.
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Starts the engine of one session over any byte stream.
///
/// Returns the session's handle and the future that runs it; the future
/// ends, with the reason, after `on_disconnected` has run. [`Listener`] and
/// [`Connector`] call this for every socket; call it yourself to run a
/// session over something else, such as an in-memory pipe in a test.
///
/// ```
/// use futures::io::Cursor;
/// use session_core::{run_session, DisconnectReason, Session, SessionConfig, SessionHandle};
///
/// struct Collect(Vec<Vec<u8>>);
/// impl Session for Collect {
///     fn on_received(&mut self, _: &SessionHandle, message: &[u8]) {
///         self.0.push(message.to_vec());
///     }
/// }
///
/// let addr = "127.0.0.1:1".parse().unwrap();
/// let io = Cursor::new(b"hello".to_vec());
/// let (_handle, task) = run_session(io, addr, addr, &SessionConfig::default(), Collect(Vec::new()));
/// let reason = async_std::task::block_on(task);
/// assert!(matches!(reason, DisconnectReason::PeerClosed));
/// ```
///
/// [`Listener`]: crate::Listener
/// [`Connector`]: crate::Connector
pub fn run_session<S, T>(
    io: T,
    peer: SocketAddr,
    local: SocketAddr,
    config: &SessionConfig,
    session: S,
) -> (
    SessionHandle,
    impl Future<Output = DisconnectReason> + Send + 'static,
)
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handle = SessionHandle::new(peer, local, config);
    let engine = Engine::new(io, handle.clone(), config, session);
    (handle, engine)
}

/// Where the engine is in the life of its connection.
enum Phase {
    /// Reading and writing.
    Open,
    /// No more reading; writing what is queued until it is all out or the
    /// deadline passes.
    Draining(DisconnectReason, Instant, rt::Timer),
    /// Closing the write side of the stream; then, until the instant given
    /// (the drain deadline), reading and discarding what the peer has sent
    /// (a "lingering close"): until nothing waits if it had sent nothing
    /// more, else until its end of stream or a quiet spell. Closing a socket
    /// with unread input makes the kernel reset the connection and drop the
    /// replies still in its send buffer.
    Closing(DisconnectReason, Option<Instant>),
    /// The write side is closed; discarding input as `Closing` says, until
    /// the first timer (the drain deadline) fires at the latest, or the
    /// second (quiet for [`LINGER_QUIET`]) once the peer has sent anything.
    Lingering(DisconnectReason, rt::Timer, rt::Timer),
    /// `on_disconnected` has run.
    Done,
}

struct Engine<S: Session, T: AsyncRead + AsyncWrite + Unpin> {
    io: T,
    session: S,
    handle: SessionHandle,
    framing: Framing,
    max_frame_len: usize,
    read_buffer_size: usize,
    high_watermark: usize,
    low_watermark: usize,
    drain_timeout: Duration,
    idle_timeout: Option<Duration>,
    idle_timer: Option<rt::Timer>,
    last_activity: Instant,
    /// Bytes of a frame that began in an earlier read.
    pending: Vec<u8>,
    /// Chunks of whole frames taken from the outbox and the stage, in
    /// order; the first may be partly written.
    inflight: VecDeque<Bytes>,
    /// The length of every frame in `inflight`, in order, if `on_sent` is
    /// wanted.
    frame_lens: VecDeque<u32>,
    /// The session wants `on_sent`.
    report: bool,
    /// Bytes of `inflight[0]` already written.
    written: usize,
    /// Bytes of `inflight[0]` already reported to `on_sent`.
    reported: usize,
    /// False while back-pressure holds reading.
    reading: bool,
    /// The peer's end of stream has been read.
    saw_eof: bool,
    /// Lingering has read and dropped bytes the peer sent.
    discarded: bool,
    /// Lingering has let the runtime take a turn after finding nothing.
    settled: bool,
    started: bool,
    /// A callback panicked: only `on_disconnected` is called from now on.
    poisoned: bool,
    phase: Phase,
}

// The engine never pins the session or the stream in place.
impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Unpin for Engine<S, T> {}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Engine<S, T> {
    fn new(io: T, handle: SessionHandle, config: &SessionConfig, session: S) -> Self {
        let report = session.wants_on_sent();
        Engine {
            io,
            session,
            handle,
            framing: config.framing,
            max_frame_len: config.max_frame_len,
            read_buffer_size: config.read_buffer_size,
            high_watermark: config.send_high_watermark,
            low_watermark: config.send_low_watermark,
            drain_timeout: config.drain_timeout,
            idle_timeout: config.idle_timeout,
            idle_timer: None,
            last_activity: Instant::now(),
            pending: Vec::new(),
            inflight: VecDeque::new(),
            frame_lens: VecDeque::new(),
            report,
            written: 0,
            reported: 0,
            reading: true,
            saw_eof: false,
            discarded: false,
            settled: false,
            started: false,
            poisoned: false,
            phase: Phase::Open,
        }
    }

    /// Runs one callback, or a loop of them; a panic poisons the session and
    /// starts its close.
    fn guarded<R: Default>(&mut self, f: impl FnOnce(&mut S, &SessionHandle) -> R) -> R {
        if self.poisoned {
            return R::default();
        }
        let (session, handle) = (&mut self.session, &self.handle);
        match catch_unwind(AssertUnwindSafe(|| f(session, handle))) {
            Ok(result) => result,
            Err(payload) => {
                self.poisoned = true;
                let message = panic_message(payload.as_ref());
                log::error!(
                    "session {} ({}): callback panicked: {message}",
                    self.handle.id(),
                    self.handle.peer_addr()
                );
                self.begin_close(DisconnectReason::Panicked(message), true);
                R::default()
            }
        }
    }

    /// Stops reading and, if `drain`, writes what is queued before closing.
    fn begin_close(&mut self, reason: DisconnectReason, drain: bool) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        let _ = self.handle.shared.state.compare_exchange(
            OPEN,
            CLOSE_ENGINE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        log::debug!(
            "session {} ({}): closing: {reason}",
            self.handle.id(),
            self.handle.peer_addr()
        );
        self.phase = if drain {
            let deadline = Instant::now() + self.drain_timeout;
            Phase::Draining(reason, deadline, rt::timer_at(deadline))
        } else {
            Phase::Closing(reason, None)
        };
    }

    /// Acts on a close asked for through the handle.
    fn check_close_request(&mut self) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        match self.handle.shared.state.load(Ordering::Acquire) {
            CLOSE_LOCAL => self.begin_close(DisconnectReason::LocalClose, true),
            CLOSE_SHUTDOWN => self.begin_close(DisconnectReason::Shutdown, true),
            CLOSE_SLOW => self.begin_close(DisconnectReason::SlowConsumer, false),
            _ => {}
        }
    }

    /// Moves what this session's callbacks staged on this thread, then what
    /// waits in the outbox, behind the frames already in flight.
    #[inline]
    fn take_queued(&mut self) {
        let shared = &self.handle.shared;
        let (inflight, frame_lens, report) =
            (&mut self.inflight, &mut self.frame_lens, self.report);
        crate::session::stage_take(shared.id, |chunk, lens| {
            shared.queued.fetch_add(chunk.len(), Ordering::AcqRel);
            inflight.push_back(chunk);
            frame_lens.extend(lens.iter().copied());
        });
        if shared.outbox_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut outbox = shared.lock_outbox();
        for frame in outbox.drain(..) {
            if report {
                frame_lens.push_back(frame.len() as u32);
            }
            inflight.push_back(frame);
        }
        shared.outbox_len.store(0, Ordering::Release);
    }

    /// Writes what this session's callbacks staged straight from the
    /// thread's stage buffer: the common case of a reply to a read, with no
    /// chunk cut, queued, counted and dropped, and the same warm buffer for
    /// every batch. Returns whether anything was written.
    fn write_staged(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        let id = self.handle.id();
        let Some((mut buf, lens)) = crate::session::stage_lend(id) else {
            return Ok(false);
        };
        if self.report {
            self.frame_lens.extend(lens.iter().copied());
        }
        let written = self.write_direct(&buf, cx);
        if let Ok(n) = written
            && n < buf.len()
        {
            self.queue_rest(buf.split().freeze(), n);
        }
        crate::session::stage_return(id, buf, lens);
        written.map(|n| n > 0)
    }

    /// Sends the raw messages that callbacks sent back from the reads they
    /// came in, which the stage lent instead of copying (an echo; their
    /// lengths are already in `frame_lens`). What the socket does not take
    /// now is copied to the queue, as the read buffer is about to be reused.
    fn send_lent(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> io::Result<()> {
        let n = self.write_direct(bytes, cx)?;
        if n < bytes.len() {
            self.queue_rest(Bytes::copy_from_slice(bytes), n);
        }
        Ok(())
    }

    /// Writes `bytes` (whole frames whose lengths are already in
    /// `frame_lens`) to the socket now if nothing is queued ahead of them,
    /// and reports them to `on_sent` if they all went out. Returns how many
    /// bytes went out; the caller queues the rest with `queue_rest`.
    fn write_direct(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> io::Result<usize> {
        let shared = &self.handle.shared;
        if !self.inflight.is_empty() || shared.outbox_len.load(Ordering::Acquire) != 0 {
            return Ok(0);
        }
        let n = match Pin::new(&mut self.io).poll_write(cx, bytes) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => 0,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        if n == bytes.len() && self.report {
            self.report_sent(bytes, 0, n);
        }
        Ok(n)
    }

    /// Queues `chunk`, of which `write_direct` wrote the first `written`
    /// bytes, behind the frames in flight (ahead of the outbox).
    fn queue_rest(&mut self, chunk: Bytes, written: usize) {
        let shared = &self.handle.shared;
        shared
            .queued
            .fetch_add(chunk.len() - written, Ordering::AcqRel);
        self.inflight.push_back(chunk);
        self.advance(written);
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    /// Returns whether anything was written.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        let mut progress = self.write_staged(cx)?;
        loop {
            self.take_queued();
            if self.inflight.is_empty() {
                if progress {
                    // Streams that buffer (not sockets) need a flush to move.
                    let _ = Pin::new(&mut self.io).poll_flush(cx)?;
                }
                return Ok(progress);
            }
            let io = Pin::new(&mut self.io);
            let written = if self.inflight.len() == 1 {
                // The common case, one chunk: a plain write.
                io.poll_write(cx, &self.inflight[0][self.written..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, chunk) in self.inflight.iter().take(MAX_IOVECS).enumerate() {
                    let start = if i == 0 { self.written } else { 0 };
                    slices[i] = IoSlice::new(&chunk[start..]);
                    count += 1;
                }
                io.poll_write_vectored(cx, &slices[..count])
            };
            let n = match written {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            };
            progress = true;
            self.handle.shared.queued.fetch_sub(n, Ordering::AcqRel);
            self.advance(n);
        }
    }

    /// Marks `n` bytes written and reports every frame now wholly written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let chunk_len = self.inflight[0].len();
            let step = n.min(chunk_len - self.written);
            self.written += step;
            n -= step;
            if self.written == chunk_len {
                let chunk = self
                    .inflight
                    .pop_front()
                    .expect("written bytes belong to a queued chunk");
                let from = std::mem::take(&mut self.reported);
                self.written = 0;
                if self.report {
                    self.report_sent(&chunk, from, chunk_len);
                }
            } else if self.report {
                let chunk = self.inflight[0].clone();
                let upto = self.written;
                self.reported = self.report_sent(&chunk, self.reported, upto);
            }
        }
    }

    /// Calls `on_sent` for each whole frame of `chunk` in `from..upto`;
    /// returns where the last one ended.
    fn report_sent(&mut self, chunk: &[u8], from: usize, upto: usize) -> usize {
        let mut frame_lens = std::mem::take(&mut self.frame_lens);
        let framing = self.framing;
        let mut at = from;
        // One guard for the whole loop: after a panic nothing more is
        // reported, and the session is closing.
        self.guarded(|session, handle| {
            while let Some(&len) = frame_lens.front() {
                let end = at + len as usize;
                if end > upto {
                    break;
                }
                frame_lens.pop_front();
                let frame = &chunk[at..end];
                at = end;
                session.on_sent(handle, &frame[framing.payload_of(frame.len())]);
            }
        });
        self.frame_lens = frame_lens;
        at
    }

    /// Reads once and delivers every whole message. `Ready(true)` if bytes
    /// arrived, `Ready(false)` at end of stream.
    ///
    /// When every byte of a large read came back as lent raw replies (an
    /// echo), it reads again into the rest of the buffer before writing: a
    /// large write reaches the socket in pieces (Linux pushes a segment at
    /// half the peer's window), and one write then carries the replies to
    /// them all.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        with_scratch(self.read_buffer_size, |scratch| {
            let id = self.handle.id();
            let n = match Pin::new(&mut self.io).poll_read(cx, scratch) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            // Only raw messages are lent (see `try_stage`).
            if self.framing != Framing::Raw {
                self.deliver(&scratch[..n]);
                return Poll::Ready(Ok(true));
            }
            crate::session::stage_reading(id, scratch, 0..n);
            self.deliver(&scratch[..n]);
            let (mut filled, mut last, mut error) = (n, n, None);
            while last >= JOIN_READS_FROM
                && scratch.len() - filled >= JOIN_READS_FROM
                && matches!(self.phase, Phase::Open)
                && crate::session::stage_lent_end(id) == Some(filled)
            {
                match Pin::new(&mut self.io).poll_read(cx, &mut scratch[filled..]) {
                    Poll::Ready(Ok(0)) | Poll::Pending => break,
                    Poll::Ready(Ok(m)) => {
                        crate::session::stage_reading(id, scratch, filled..filled + m);
                        self.deliver(&scratch[filled..filled + m]);
                        (filled, last) = (filled + m, m);
                    }
                    // Reported after the replies to what was read.
                    Poll::Ready(Err(e)) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            // Closing without a drain: dropped, as staged messages are.
            let keep = matches!(self.phase, Phase::Open | Phase::Draining(..));
            let lens = (keep && self.report).then_some(&mut self.frame_lens);
            if let Some((at, len)) = crate::session::stage_read_done(id, lens)
                && keep
                && let Err(e) = self.send_lent(&scratch[at..at + len], cx)
            {
                return Poll::Ready(Err(e));
            }
            match error {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(true)),
            }
        })
    }

    /// Cuts `data` (with any partial frame kept from before) into messages
    /// and hands each to `on_received`.
    fn deliver(&mut self, data: &[u8]) {
        if self.pending.is_empty() {
            let used = self.deliver_from(data);
            if used < data.len() && matches!(self.phase, Phase::Open) {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            let mut pending = std::mem::take(&mut self.pending);
            let used = self.deliver_from(&pending);
            pending.drain(..used);
            if pending.is_empty() && pending.capacity() > KEEP_PENDING {
                pending = Vec::new();
            }
            self.pending = pending;
        }
    }

    /// Delivers the messages at the start of `buf`; returns the bytes used.
    fn deliver_from(&mut self, buf: &[u8]) -> usize {
        if !matches!(self.phase, Phase::Open) {
            return 0;
        }
        let (framing, max) = (self.framing, self.max_frame_len);
        let mut used = 0;
        // One guard for the whole loop, which stops at a frame error or once
        // a close is asked for (the phase is only read between callbacks).
        let error = self.guarded(|session, handle| {
            let state = &handle.shared.state;
            loop {
                match framing.decode(&buf[used..], max) {
                    Ok(Some(frame)) => {
                        let message = &buf[used + frame.payload.start..used + frame.payload.end];
                        used += frame.consumed;
                        session.on_received(handle, message);
                        if state.load(Ordering::Acquire) != OPEN {
                            return None;
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some(e),
                }
            }
        });
        self.check_close_request();
        if let Some(e) = error {
            let reason = match e {
                FrameError::TooLarge { len, max } => DisconnectReason::FrameTooLarge { len, max },
                other => DisconnectReason::BadFrame(other),
            };
            self.begin_close(reason, true);
        }
        used
    }

    /// Drops everything queued, marks the session closed and runs
    /// `on_disconnected`.
    fn finish(&mut self, reason: DisconnectReason) -> DisconnectReason {
        self.phase = Phase::Done;
        let shared = &self.handle.shared;
        let _ =
            shared
                .state
                .compare_exchange(OPEN, CLOSE_ENGINE, Ordering::SeqCst, Ordering::SeqCst);
        // Under the outbox lock, so that a racing `send` either lands
        // before the clear or sees `finished` and takes its bytes back.
        let dropped = {
            let mut outbox = shared.lock_outbox();
            shared.finished.store(true, Ordering::Release);
            shared.outbox_len.store(0, Ordering::Release);
            let unsent: usize = outbox
                .drain(..)
                .chain(self.inflight.drain(..))
                .map(|f| f.len())
                .sum();
            unsent - std::mem::take(&mut self.written)
        };
        self.frame_lens.clear();
        self.reported = 0;
        // Staged messages were never counted in `queued`.
        crate::session::stage_take(shared.id, |_, _| {});
        shared.queued.fetch_sub(dropped, Ordering::AcqRel);
        self.pending = Vec::new();
        let (session, handle) = (&mut self.session, &self.handle);
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| {
            session.on_disconnected(handle, &reason)
        })) {
            log::error!(
                "session {} ({}): on_disconnected panicked: {}",
                handle.id(),
                handle.peer_addr(),
                panic_message(payload.as_ref())
            );
        }
        reason
    }

    /// Whether new frames or a close request arrived since the last look.
    fn has_news(&self) -> bool {
        let shared = &self.handle.shared;
        let state = shared.state.load(Ordering::Acquire);
        (matches!(self.phase, Phase::Open) && state != OPEN && state != CLOSE_ENGINE)
            || shared.outbox_len.load(Ordering::SeqCst) != 0
    }

    /// Notes activity, for the idle timeout (the clock is only read if
    /// there is one).
    fn touch(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_activity = Instant::now();
        }
    }

    #[inline]
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle_timeout else {
            return false;
        };
        let deadline = self.last_activity + idle;
        let timer = self
            .idle_timer
            .get_or_insert_with(|| rt::timer_at(deadline));
        loop {
            if Pin::new(&mut *timer).poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_activity + idle;
            if deadline <= Instant::now() {
                return true;
            }
            timer.set_at(deadline);
        }
    }

    fn poll_engine(&mut self, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        if !self.started {
            self.started = true;
            self.guarded(|session, handle| session.on_connected(handle));
        }
        let shared = Arc::clone(&self.handle.shared);
        shared.waker.register(cx.waker());
        shared.polling.store(true, Ordering::SeqCst);
        let mut reads = 0;
        loop {
            self.check_close_request();
            if matches!(self.phase, Phase::Done) {
                return Poll::Pending;
            }
            if let Phase::Closing(_, linger) = self.phase {
                shared.polling.store(false, Ordering::SeqCst);
                if Pin::new(&mut self.io).poll_close(cx).is_pending() {
                    return Poll::Pending;
                }
                let Phase::Closing(reason, _) = std::mem::replace(&mut self.phase, Phase::Done)
                else {
                    unreachable!()
                };
                match linger {
                    Some(until) if !self.saw_eof && until > Instant::now() => {
                        let quiet = rt::timer_at(Instant::now() + LINGER_QUIET);
                        self.phase = Phase::Lingering(reason, rt::timer_at(until), quiet);
                    }
                    _ => return Poll::Ready(self.finish(reason)),
                }
            }
            if let Phase::Lingering(_, deadline, quiet) = &mut self.phase {
                let (io, size) = (&mut self.io, self.read_buffer_size);
                let expired = Pin::new(deadline).poll(cx).is_ready();
                let mut done = expired;
                while !done {
                    if reads == READS_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    reads += 1;
                    match poll_discard(io, size, cx) {
                        Poll::Ready(true) => done = true,
                        Poll::Ready(false) => {
                            self.discarded = true;
                            quiet.set_after(LINGER_QUIET);
                        }
                        // Nothing waits. A peer that sent nothing since
                        // reading stopped is done: close now. One that was
                        // still sending may have more in flight, which a
                        // close would answer with a reset: wait until it
                        // closes or has been quiet a while (as nginx's
                        // lingering close does).
                        //
                        // A read may say nothing waits from readiness the
                        // runtime collected before the latest events (the
                        // workers skip the read after one that emptied the
                        // socket): only trust it after one more turn.
                        Poll::Pending if !self.discarded && !self.settled => {
                            self.settled = true;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Poll::Pending => {
                            done = !self.discarded || Pin::new(&mut *quiet).poll(cx).is_ready();
                            break;
                        }
                    }
                }
                if !done {
                    return Poll::Pending;
                }
                let Phase::Lingering(reason, _, _) =
                    std::mem::replace(&mut self.phase, Phase::Done)
                else {
                    unreachable!()
                };
                return Poll::Ready(self.finish(reason));
            }

            // A write needs no second turn (it goes until the queue is empty
            // or the socket is full, and then waits for the socket); a read
            // that brought bytes does, for what its callbacks queued.
            let mut again = false;
            let wrote = match self.poll_write_queue(cx) {
                Ok(wrote) => wrote,
                Err(e) => {
                    shared.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(self.finish(DisconnectReason::Io(Arc::new(e))));
                }
            };
            if wrote {
                self.touch();
            }

            if let Phase::Draining(_, deadline, timer) = &mut self.phase {
                let deadline = *deadline;
                let drained =
                    self.inflight.is_empty() && shared.outbox_len.load(Ordering::Acquire) == 0;
                let expired = !drained && Pin::new(timer).poll(cx).is_ready();
                if drained || expired {
                    let Phase::Draining(reason, _, _) =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!()
                    };
                    if expired {
                        log::debug!(
                            "session {} ({}): drain deadline passed with {} bytes unsent",
                            self.handle.id(),
                            self.handle.peer_addr(),
                            shared.queued.load(Ordering::Acquire)
                        );
                    }
                    self.phase = Phase::Closing(reason, Some(deadline));
                    continue;
                }
            }

            if matches!(self.phase, Phase::Open) {
                let queued = shared.queued.load(Ordering::Acquire);
                if self.reading && queued > self.high_watermark {
                    self.reading = false;
                } else if !self.reading && queued <= self.low_watermark {
                    self.reading = true;
                }
                if self.reading && !shared.read_paused.load(Ordering::SeqCst) {
                    if reads == READS_PER_POLL {
                        // Let other sessions of this thread have a turn.
                        shared.polling.store(false, Ordering::SeqCst);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    match self.poll_read_once(cx) {
                        Poll::Ready(Ok(true)) => {
                            reads += 1;
                            again = true;
                            self.touch();
                        }
                        Poll::Ready(Ok(false)) => {
                            self.begin_close(DisconnectReason::PeerClosed, true)
                        }
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {
                            again = true
                        }
                        Poll::Ready(Err(e)) => {
                            shared.polling.store(false, Ordering::SeqCst);
                            return Poll::Ready(self.finish(DisconnectReason::Io(Arc::new(e))));
                        }
                        Poll::Pending => {}
                    }
                    if !matches!(self.phase, Phase::Open) {
                        continue;
                    }
                }
                if self.poll_idle(cx) {
                    self.begin_close(DisconnectReason::Idle, true);
                    continue;
                }
            }

            if !again {
                shared.polling.store(false, Ordering::SeqCst);
                if self.has_news() {
                    shared.polling.store(true, Ordering::SeqCst);
                    continue;
                }
                return Poll::Pending;
            }
        }
    }
}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Future for Engine<S, T> {
    type Output = DisconnectReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        let engine = self.get_mut();
        let id = engine.handle.id();
        let staging = crate::session::stage_begin(id, engine.report);
        let result = engine.poll_engine(cx);
        if staging {
            if result.is_pending() {
                // Sent from the last callbacks after the last write: queue
                // them and come back to write them.
                let before = engine.inflight.len();
                engine.take_queued();
                if engine.inflight.len() != before {
                    cx.waker().wake_by_ref();
                }
            }
            crate::session::stage_end(id);
        }
        result
    }
}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Drop for Engine<S, T> {
    fn drop(&mut self) {
        // Dropped before it finished (its runtime is going away): the
        // promise of exactly one `on_disconnected` still holds.
        if self.started && !matches!(self.phase, Phase::Done) {
            let reason = DisconnectReason::Shutdown;
            self.phase = Phase::Done;
            let _ = self.handle.shared.state.compare_exchange(
                OPEN,
                CLOSE_ENGINE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            let (session, handle) = (&mut self.session, &self.handle);
            let _ = catch_unwind(AssertUnwindSafe(|| {
                session.on_disconnected(handle, &reason)
            }));
        }
    }
}

/// Reads and drops input while lingering; `Ready(true)` once the peer has
/// closed (or the stream failed), `Pending` when nothing waits.
fn poll_discard<T: AsyncRead + Unpin>(io: &mut T, size: usize, cx: &mut Context<'_>) -> Poll<bool> {
    with_scratch(size, |scratch| match Pin::new(io).poll_read(cx, scratch) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
        Poll::Ready(Ok(_)) => Poll::Ready(false),
        Poll::Pending => Poll::Pending,
    })
}

/// A read of this many bytes or more whose replies were all lent is
/// followed by another into the rest of the buffer, if this much room is
/// left (see `poll_read_once`). The runtime's own threshold: after a
/// smaller read it skips the next one as the socket is likely empty.
const JOIN_READS_FROM: usize = rt::STREAMING_READ;

/// Lends `f` this thread's read buffer, at least `size` bytes long.
fn with_scratch<R>(size: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut scratch = SCRATCH
        .take()
        .filter(|buf| buf.len() >= size)
        .unwrap_or_else(|| vec![0; size].into_boxed_slice());
    let result = f(&mut scratch[..size]);
    SCRATCH.set(Some(scratch));
    result
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
