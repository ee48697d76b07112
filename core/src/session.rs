//! The [`Session`] trait a user implements, and the [`SessionHandle`] through
//! which the user's code talks back to its connection.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;

use crate::config::SessionConfig;
use crate::framing::{Frame, FrameError, Framing};

/// What happens on one connection: the four events of the original C#
/// `Session` class.
///
/// The library calls these methods from the connection's own task, one at a
/// time, never at once: `on_connected` first, then any number of
/// `on_received` and `on_sent`, then `on_disconnected` exactly once, last.
/// They must not block: a long job belongs in a task of its own, which can
/// keep a clone of the [`SessionHandle`] and call [`SessionHandle::send`].
///
/// A panic in any of them closes this session (with
/// [`DisconnectReason::Panicked`]) and nothing else.
///
/// ```
/// use session_core::{DisconnectReason, Session, SessionHandle};
///
/// #[derive(Default)]
/// struct Counter {
///     messages: usize,
/// }
///
/// impl Session for Counter {
///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
///         self.messages += 1;
///         let _ = handle.send(format!("{} bytes", message.len()).as_bytes());
///     }
///
///     fn on_disconnected(&mut self, _handle: &SessionHandle, reason: &DisconnectReason) {
///         log::info!("{} messages, then {reason}", self.messages);
///     }
/// }
/// ```
pub trait Session: Send + 'static {
    /// The connection is open. Called once, before any other callback.
    fn on_connected(&mut self, handle: &SessionHandle) {
        let _ = handle;
    }

    /// One message arrived, framed as the session's [`Framing`] says. The
    /// slice is only valid during the call.
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]);

    /// One message given to [`SessionHandle::send`] was written whole to the
    /// socket (the payload, without framing). Not called if
    /// [`wants_on_sent`](Self::wants_on_sent) says no, nor for a raw message
    /// with no bytes, which has nothing to write.
    fn on_sent(&mut self, handle: &SessionHandle, message: &[u8]) {
        let _ = (handle, message);
    }

    /// Whether to call [`on_sent`](Self::on_sent) at all; asked once, when
    /// the engine starts. A session that answers `false` spares the engine
    /// from keeping every message's length until it is written, which is a
    /// good part of the cost of a small message.
    fn wants_on_sent(&self) -> bool {
        true
    }

    /// The connection is closed. Called exactly once, last.
    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        let _ = (handle, reason);
    }
}

/// A number that names one session for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    fn next() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a session ended.
#[derive(Debug, Clone)]
pub enum DisconnectReason {
    /// The peer closed its side of the connection.
    PeerClosed,
    /// This side called [`SessionHandle::disconnect`].
    LocalClose,
    /// Reading or writing the socket failed.
    Io(Arc<io::Error>),
    /// The peer sent a message longer than the configured maximum.
    FrameTooLarge {
        /// The message's length, or the bytes seen so far of a line that
        /// never ended.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The peer sent bytes that can never be a message (a length-prefixed
    /// size below 2).
    BadFrame(FrameError),
    /// Nothing was received or sent for the configured idle timeout.
    Idle,
    /// More bytes were queued for the peer than the configured cap: the peer
    /// does not read fast enough.
    SlowConsumer,
    /// The listener is shutting down.
    Shutdown,
    /// A callback of the session panicked; the text is the panic's message.
    Panicked(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed => f.write_str("closed by peer"),
            DisconnectReason::LocalClose => f.write_str("closed locally"),
            DisconnectReason::Io(e) => write!(f, "I/O error: {e}"),
            DisconnectReason::FrameTooLarge { len, max } => {
                write!(f, "frame too large: {len} bytes, maximum {max}")
            }
            DisconnectReason::BadFrame(e) => write!(f, "bad frame: {e}"),
            DisconnectReason::Idle => f.write_str("idle timeout"),
            DisconnectReason::SlowConsumer => f.write_str("slow consumer: send queue full"),
            DisconnectReason::Shutdown => f.write_str("shutdown"),
            DisconnectReason::Panicked(message) => {
                write!(f, "session callback panicked: {message}")
            }
        }
    }
}

/// Why [`SessionHandle::send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The session is closed or closing; nothing more is sent.
    Closed,
    /// Queuing the message would pass the send-queue cap; the session is now
    /// closing with [`DisconnectReason::SlowConsumer`].
    SlowConsumer,
    /// The message cannot be framed (too long, or a newline in a line).
    Frame(FrameError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("session is closed"),
            SendError::SlowConsumer => {
                f.write_str("send queue is full: peer does not read fast enough")
            }
            SendError::Frame(e) => write!(f, "message cannot be sent: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// A cheap, cloneable handle to one live session: send to it, close it, ask
/// who it is.
///
/// Every method may be called from any task or thread and none of them
/// blocks or waits for the network.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("local", &self.shared.local)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// A close requested from outside the engine, or decided by it.
pub(crate) const OPEN: u8 = 0;
pub(crate) const CLOSE_LOCAL: u8 = 1;
pub(crate) const CLOSE_SLOW: u8 = 2;
pub(crate) const CLOSE_SHUTDOWN: u8 = 3;
/// The engine itself is closing (peer closed, error, idle, ...).
pub(crate) const CLOSE_ENGINE: u8 = 4;

/// Bytes of one per-thread chunk that encoded frames are cut from.
const CHUNK: usize = 64 * 1024;
/// The largest stage buffer kept for the next batch after one large reply.
const MAX_KEPT_CHUNK: usize = 4 * CHUNK;
/// Raw messages from this size up, sent back from the read they arrived in,
/// are written from the read buffer instead of being copied to the stage.
const LEND_MIN: usize = 1024;

thread_local! {
    /// The course's `SendBufferHelper`: frames are encoded into one chunk per
    /// thread and shared from it by reference count, so that sending a small
    /// message allocates nothing in steady state.
    static SEND_CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Messages a session's own callbacks send while its engine runs them, kept
/// on the engine's thread: one contiguous buffer and the frame lengths, with
/// no lock, no atomic operation and no reference count per message. When
/// nothing waits to be written ahead of them, the engine writes them straight
/// from this buffer, which the next batch reuses; otherwise it takes them as
/// one chunk behind the queue. A large raw message sent back from the read
/// being delivered is not even copied here (see `lent_len`).
#[derive(Default)]
struct Stage {
    /// The session whose engine is running on this thread.
    owner: Option<SessionId>,
    /// Whether the owner keeps each message's length (for `on_sent`).
    track_lens: bool,
    /// The staged frames, end to end; never holds a frame of no bytes.
    buf: BytesMut,
    /// The address of the engine's read buffer, and the addresses of the
    /// read being delivered from it, while it is.
    base: usize,
    reading: Range<usize>,
    /// Raw messages sent back from inside the reads, not copied: where they
    /// sit in the read buffer, end to end, and their length (0: none). They
    /// go out before `buf`.
    lent_at: usize,
    lent_len: usize,
    /// Each lent message's length, if the owner keeps them.
    lent_lens: Vec<u32>,
    lens: Vec<u32>,
}

thread_local! {
    /// This thread's stage. Only reached through [`with_stage`] and
    /// [`ACTIVE`], and never borrowed while user code runs.
    static STAGE: UnsafeCell<Stage> = UnsafeCell::new(Stage::default());
    /// `STAGE` while an engine holds it (from `stage_begin` to `stage_end`),
    /// else null: a send checks it with one load, without the lazy
    /// initialisation check every access to `STAGE` itself makes.
    static ACTIVE: Cell<*mut Stage> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` on this thread's stage.
#[allow(unsafe_code)]
fn with_stage<R>(f: impl FnOnce(&mut Stage) -> R) -> R {
    // SAFETY: the stage is only touched by this thread, and every reference
    // to it (here and in `try_stage`) ends before any user code runs, so no
    // two are ever live at once.
    STAGE.with(|stage| f(unsafe { &mut *stage.get() }))
}

/// What [`try_stage`] did. Small on purpose: returned in a register, where
/// a `Result<(), SendError>` goes through memory, and copying it out cost
/// more than the rest of a small send (a store-forwarding stall, `perf`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Staged {
    /// Staged.
    Yes,
    /// Not the engine's own callback: send through the outbox.
    NotHere,
    /// The engine's own callback, but the outbox holds earlier messages:
    /// send through it, behind them.
    Behind,
    Closed,
    /// Over the send queue's cap.
    Slow,
    /// Cannot be framed: [`Framing::check_parts`] says why.
    Unframable,
}

/// Queues a message sent from `handle`'s own callback, while its engine
/// runs on this thread: staged if nothing waits in the outbox.
#[inline]
#[allow(unsafe_code)]
fn try_stage(handle: &SessionHandle, parts: &[&[u8]]) -> Staged {
    let active = ACTIVE.get();
    if active.is_null() {
        return Staged::NotHere;
    }
    // SAFETY: `ACTIVE` points at this thread's stage while an engine holds
    // it; this reference ends before the function returns and no user code
    // runs meanwhile (see `with_stage`).
    let stage = unsafe { &mut *active };
    let shared = &*handle.shared;
    if stage.owner != Some(shared.id) {
        return Staged::NotHere;
    }
    if shared.outbox_len.load(Ordering::Acquire) != 0 {
        return Staged::Behind;
    }
    if shared.finished.load(Ordering::Acquire) {
        return Staged::Closed;
    }
    let framing = shared.framing;
    let Ok(payload) = framing.check_parts(parts, shared.max_frame_len) else {
        return Staged::Unframable;
    };
    let len = payload + framing.overhead();
    if len == 0 {
        // A raw message with no bytes: nothing to queue (see `push_frame`).
        return Staged::Yes;
    }
    let staged = stage.buf.len() + stage.lent_len;
    if shared.queued.load(Ordering::Acquire) + staged + len > shared.max_send_queue {
        return Staged::Slow;
    }
    // A large raw message from the read being delivered (an echo) is not
    // copied: the engine writes it from the read buffer right after the
    // delivery, or copies it then if it must wait. One that continues the
    // lent bytes in the buffer (the echo of a further read) joins them.
    if framing == Framing::Raw
        && stage.buf.is_empty()
        && let [one] = parts
    {
        let at = one.as_ptr() as usize;
        if stage.reading.start <= at && at + len <= stage.reading.end {
            let offset = at - stage.base;
            let first = stage.lent_len == 0 && len >= LEND_MIN;
            if first || (stage.lent_len > 0 && offset == stage.lent_at + stage.lent_len) {
                if first {
                    stage.lent_at = offset;
                }
                stage.lent_len += len;
                if stage.track_lens {
                    stage.lent_lens.push(len as u32);
                }
                return Staged::Yes;
            }
        }
    }
    if stage.buf.capacity() - stage.buf.len() < len {
        stage.buf.reserve(len.max(CHUNK));
    }
    framing.write_parts(parts, payload, &mut stage.buf);
    if stage.track_lens {
        stage.lens.push(len as u32);
    }
    Staged::Yes
}

/// The bytes of a message made of `parts`.
#[inline]
pub(crate) fn payload_len(parts: &[&[u8]]) -> usize {
    match parts {
        [one] => one.len(),
        [a, b] => a.len() + b.len(),
        _ => parts.iter().map(|p| p.len()).sum(),
    }
}

/// Makes `id` the session whose own sends are staged on this thread (with
/// each message's length if `track_lens`); false if another session's
/// engine holds the stage (a nested poll).
pub(crate) fn stage_begin(id: SessionId, track_lens: bool) -> bool {
    with_stage(|stage| {
        if stage.owner.is_some() {
            return false;
        }
        stage.owner = Some(id);
        stage.track_lens = track_lens;
        ACTIVE.set(stage);
        true
    })
}

/// Runs `f` on this thread's stage if `id`'s engine holds it. `f` is the
/// engine's own code and runs no user code, so no other reference to the
/// stage is made while its reference lives.
#[inline]
#[allow(unsafe_code)]
fn with_held_stage<R>(id: SessionId, f: impl FnOnce(&mut Stage) -> R) -> Option<R> {
    let active = ACTIVE.get();
    if active.is_null() {
        // No engine holds the stage, so nothing is staged for `id`.
        return None;
    }
    // SAFETY: as in `try_stage`; this reference ends when `f` returns.
    let stage = unsafe { &mut *active };
    (stage.owner == Some(id)).then(|| f(stage))
}

/// Hands what `id` has staged to `take` (the chunk, and the frame lengths
/// if tracked), if anything. `take` must not send.
#[inline]
pub(crate) fn stage_take(id: SessionId, take: impl FnOnce(Bytes, &mut Vec<u32>)) {
    with_held_stage(id, |stage| {
        if !stage.buf.is_empty() {
            take(stage.buf.split().freeze(), &mut stage.lens);
            stage.lens.clear();
        }
    });
}

/// Lends what `id`'s callbacks staged on this thread (the frames end to end
/// and, if tracked, their lengths) to the engine, which writes it straight
/// from this buffer when nothing else waits to be written, and gives the
/// buffer back with [`stage_return`] so the next batch reuses its memory.
#[inline]
pub(crate) fn stage_lend(id: SessionId) -> Option<(BytesMut, Vec<u32>)> {
    with_held_stage(id, |stage| {
        (!stage.buf.is_empty()).then(|| {
            (
                std::mem::take(&mut stage.buf),
                std::mem::take(&mut stage.lens),
            )
        })
    })
    .flatten()
}

/// Gives back a buffer lent by [`stage_lend`], emptied; kept for the next
/// batch unless the stage took a new one meanwhile or it grew too large to
/// keep.
#[inline]
pub(crate) fn stage_return(id: SessionId, mut buf: BytesMut, mut lens: Vec<u32>) {
    with_held_stage(id, |stage| {
        if stage.buf.capacity() == 0 && buf.capacity() <= MAX_KEPT_CHUNK {
            buf.clear();
            stage.buf = buf;
        }
        if stage.lens.capacity() == 0 {
            lens.clear();
            stage.lens = lens;
        }
    });
}

/// Marks `buf[range]` as the read being delivered to `id`'s callbacks,
/// `buf` being the engine's read buffer: until [`stage_read_done`], a raw
/// message sent from within it may be lent instead of copied.
#[inline]
pub(crate) fn stage_reading(id: SessionId, buf: &[u8], range: Range<usize>) {
    with_held_stage(id, |stage| {
        let base = buf.as_ptr() as usize;
        stage.base = base;
        stage.reading = base + range.start..base + range.end;
    });
}

/// Where the messages lent so far end in the read buffer, if all that is
/// staged is lent: a further read there can join them.
#[inline]
pub(crate) fn stage_lent_end(id: SessionId) -> Option<usize> {
    with_held_stage(id, |stage| {
        (stage.lent_len > 0 && stage.buf.is_empty()).then_some(stage.lent_at + stage.lent_len)
    })
    .flatten()
}

/// Ends the delivery marked by [`stage_reading`]; returns where the lent
/// messages sit in the read buffer (offset, length), if any were lent, and
/// moves their lengths to `lens` if given (else drops them). They must be
/// written or copied before the read buffer is used again, and they go out
/// before anything else staged.
#[inline]
pub(crate) fn stage_read_done(
    id: SessionId,
    lens: Option<&mut VecDeque<u32>>,
) -> Option<(usize, usize)> {
    with_held_stage(id, |stage| {
        stage.reading = 0..0;
        if let Some(lens) = lens {
            lens.extend(stage.lent_lens.iter().copied());
        }
        stage.lent_lens.clear();
        let lent = (stage.lent_len > 0).then_some((stage.lent_at, stage.lent_len));
        stage.lent_len = 0;
        lent
    })
    .flatten()
}

/// Ends `id`'s hold on the stage; anything still staged is dropped.
pub(crate) fn stage_end(id: SessionId) {
    with_stage(|stage| {
        if stage.owner == Some(id) {
            stage.owner = None;
            ACTIVE.set(std::ptr::null_mut());
            stage.lens.clear();
            stage.buf.clear();
            stage.reading = 0..0;
            stage.lent_len = 0;
            stage.lent_lens.clear();
        }
    })
}

/// The state a [`SessionHandle`] shares with its connection's engine.
pub(crate) struct Shared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) framing: Framing,
    pub(crate) max_frame_len: usize,
    pub(crate) max_send_queue: usize,
    /// Frames queued by `send` and not yet taken by the engine.
    pub(crate) outbox: Mutex<VecDeque<Bytes>>,
    /// `outbox.len()`, readable without the lock: a send from the engine's
    /// own callbacks may skip the outbox only while it is empty, so that
    /// messages keep the order they were queued in.
    pub(crate) outbox_len: AtomicUsize,
    /// Bytes queued and not yet written, the engine's share included.
    pub(crate) queued: AtomicUsize,
    /// One of `OPEN`, `CLOSE_*`.
    pub(crate) state: AtomicU8,
    /// Wakes the engine for a new frame or a close request.
    pub(crate) waker: AtomicWaker,
    /// The user asked the session to stop reading (see `pause_reading`).
    pub(crate) read_paused: AtomicBool,
    /// Set, under the outbox lock, once the engine has ended: nothing queued
    /// after that could ever be written.
    pub(crate) finished: AtomicBool,
    /// True while the engine is inside its poll and will look at the outbox
    /// again before it sleeps; saves a wake-up per send from a callback.
    pub(crate) polling: AtomicBool,
}

impl Shared {
    pub(crate) fn lock_outbox(&self) -> MutexGuard<'_, VecDeque<Bytes>> {
        // A panic never happens while the lock is held, but do not turn
        // one into a second panic if it somehow did.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn notify(&self) {
        if !self.polling.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Requests a close; the first request wins. Returns whether this one did.
    pub(crate) fn request_close(&self, code: u8) -> bool {
        let won = self
            .state
            .compare_exchange(OPEN, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if won {
            self.waker.wake();
        }
        won
    }
}

impl SessionHandle {
    pub(crate) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        config: &SessionConfig,
    ) -> SessionHandle {
        SessionHandle {
            shared: Arc::new(Shared {
                id: SessionId::next(),
                peer,
                local,
                framing: config.framing,
                max_frame_len: config.max_frame_len,
                max_send_queue: config.max_send_queue,
                outbox: Mutex::new(VecDeque::new()),
                outbox_len: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                state: AtomicU8::new(OPEN),
                waker: AtomicWaker::new(),
                polling: AtomicBool::new(false),
                finished: AtomicBool::new(false),
                read_paused: AtomicBool::new(false),
            }),
        }
    }

    /// This session's id, unique in the process.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The peer's address (the seed's `RemoteEndPoint`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The framing messages are cut and sent with.
    pub fn framing(&self) -> Framing {
        self.shared.framing
    }

    /// Whether the session is open: neither closing nor closed.
    pub fn is_connected(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OPEN
    }

    /// Bytes queued for the peer and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// The largest payload this session sends or accepts.
    pub fn max_frame_len(&self) -> usize {
        self.shared.max_frame_len
    }

    /// Stops reading from the peer until [`resume_reading`](Self::resume_reading):
    /// its bytes wait in the kernel and then in the peer, which is TCP's own
    /// back-pressure. For a session whose messages feed shared work (a room's
    /// job queue) that is falling behind. Sending, timeouts and closing go on.
    pub fn pause_reading(&self) {
        self.shared.read_paused.store(true, Ordering::SeqCst);
    }

    /// Reads from the peer again after [`pause_reading`](Self::pause_reading).
    pub fn resume_reading(&self) {
        if self.shared.read_paused.swap(false, Ordering::SeqCst) {
            self.shared.waker.wake();
        }
    }

    /// Queues `message` for the peer, framed, behind every message queued
    /// before it; returns at once.
    ///
    /// Messages reach the wire whole and in the order they were queued;
    /// messages queued together go out in one vectored write. Fails when the
    /// session is closing, when the message cannot be framed, or when the
    /// send queue would pass its cap, in which case the session is closed
    /// as a slow consumer.
    pub fn send(&self, message: &[u8]) -> Result<(), SendError> {
        self.send_parts(&[message])
    }

    /// Queues one message made of `parts` laid end to end, as
    /// [`send`](Self::send) does: a reply and its suffix without joining
    /// them into a new buffer first.
    pub fn send_parts(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let shared = &*self.shared;
        let state = shared.state.load(Ordering::Acquire);
        // A shutdown may land while a callback runs: the reply to a message
        // already delivered is still queued and drained, as promised.
        if state != OPEN && state != CLOSE_SHUTDOWN {
            return Err(SendError::Closed);
        }
        match try_stage(self, parts) {
            Staged::Yes => Ok(()),
            Staged::Behind => self.send_via_outbox(parts),
            Staged::NotHere if state == OPEN => self.send_via_outbox(parts),
            Staged::NotHere | Staged::Closed => Err(SendError::Closed),
            Staged::Slow => Err(self.close_slow()),
            Staged::Unframable => Err(self.unframable(parts)),
        }
    }

    /// Encodes into this thread's send chunk and queues in the outbox.
    fn send_via_outbox(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let shared = &*self.shared;
        let framing = shared.framing;
        let frame = SEND_CHUNK.with(|chunk| {
            let mut chunk = chunk.borrow_mut();
            let needed = payload_len(parts) + framing.overhead();
            if chunk.capacity() - chunk.len() < needed {
                *chunk = BytesMut::with_capacity(needed.max(CHUNK));
            }
            framing
                .encode_parts(parts, shared.max_frame_len, &mut chunk)
                .map(|()| chunk.split().freeze())
        });
        let frame = frame.map_err(SendError::Frame)?;
        self.push_frame(frame)
    }

    /// Why `parts` cannot be framed for this session.
    #[cold]
    fn unframable(&self, parts: &[&[u8]]) -> SendError {
        let shared = &*self.shared;
        // `try_stage` found an error; the same check names it.
        shared
            .framing
            .check_parts(parts, shared.max_frame_len)
            .err()
            .map_or(SendError::Closed, SendError::Frame)
    }

    #[cold]
    fn close_slow(&self) -> SendError {
        let shared = &*self.shared;
        if shared.request_close(CLOSE_SLOW) {
            log::debug!(
                "session {} to {}: send queue over {} bytes, closing as slow consumer",
                shared.id,
                shared.peer,
                shared.max_send_queue
            );
        }
        SendError::SlowConsumer
    }

    /// Queues a [`Frame`] made once for many sessions: the queue holds a
    /// reference to the frame's buffer, not a copy. Fails as
    /// [`send`](Self::send) does, and if the frame was made for another
    /// framing or is longer than this session's maximum.
    pub fn send_frame(&self, frame: &Frame) -> Result<(), SendError> {
        let shared = &*self.shared;
        if shared.state.load(Ordering::Acquire) != OPEN {
            return Err(SendError::Closed);
        }
        if frame.framing() != shared.framing {
            return Err(SendError::Frame(FrameError::WrongFraming {
                frame: frame.framing(),
                session: shared.framing,
            }));
        }
        let len = frame.payload().len();
        if len > shared.max_frame_len {
            return Err(SendError::Frame(FrameError::TooLarge {
                len,
                max: shared.max_frame_len,
            }));
        }
        self.push_frame(frame.bytes().clone())
    }

    fn push_frame(&self, frame: Bytes) -> Result<(), SendError> {
        let shared = &*self.shared;
        let len = frame.len();
        if len == 0 {
            // A raw message with no bytes has nothing to write; queued, it
            // would make the write that carries it return 0.
            return Ok(());
        }
        let before = shared.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > shared.max_send_queue {
            shared.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(self.close_slow());
        }
        let was_empty = {
            let mut outbox = shared.lock_outbox();
            if shared.finished.load(Ordering::Acquire) {
                drop(outbox);
                shared.queued.fetch_sub(len, Ordering::AcqRel);
                return Err(SendError::Closed);
            }
            outbox.push_back(frame);
            // SeqCst, paired with the engine's store of `polling` and load of
            // `outbox_len`: one of the two sides sees the other, so no wake-up
            // is lost between the engine's last look and its sleep.
            shared.outbox_len.store(outbox.len(), Ordering::SeqCst);
            outbox.len() == 1
        };
        if was_empty {
            shared.notify();
        }
        Ok(())
    }

    /// Closes the session: nothing more is read, messages already queued are
    /// still written (up to the drain timeout), then the connection closes
    /// and `on_disconnected` runs with [`DisconnectReason::LocalClose`].
    /// Calling it again, or on a closed session, does nothing.
    pub fn disconnect(&self) {
        self.shared.request_close(CLOSE_LOCAL);
    }

    pub(crate) fn shutdown(&self) {
        self.shared.request_close(CLOSE_SHUTDOWN);
    }
}
