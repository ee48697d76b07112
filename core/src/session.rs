//! The [`Session`] trait a user implements, and the [`SessionHandle`] through
//! which the user's code talks back to its connection.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;

use crate::config::SessionConfig;
use crate::framing::{Frame, FrameError, Framing};
use crate::send_queue::{Outbox, SendQueue};
use crate::tls::TlsInfo;
use crate::websocket::{self, MessageKind, WebSocketError, WebSocketInfo};

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

    /// One WebSocket message arrived whole (fragments joined), text or
    /// binary; a text message is valid UTF-8. The default calls
    /// [`on_received`](Self::on_received), so a session written for TCP
    /// serves WebSocket peers as it is; override it to tell the kinds
    /// apart. Only WebSocket sessions get it.
    ///
    /// ```
    /// use session_core::{MessageKind, Session, SessionHandle};
    ///
    /// struct Echo;
    /// impl Session for Echo {
    ///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
    ///         let _ = handle.send(message);
    ///     }
    ///     fn on_message(&mut self, handle: &SessionHandle, message: &[u8], kind: MessageKind) {
    ///         // Answer in the kind it came in.
    ///         let _ = handle.send_message(kind, &[message]);
    ///     }
    /// }
    /// ```
    fn on_message(&mut self, handle: &SessionHandle, message: &[u8], kind: MessageKind) {
        let _ = kind;
        self.on_received(handle, message);
    }

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
    /// The stream ended without its protocol's own close: a TLS peer that
    /// closed without `close_notify`, so what it sent last may be cut
    /// short.
    Truncated,
    /// The WebSocket peer sent a close frame (this side answered it).
    WebSocketClose {
        /// The peer's close code (1000 is a normal close, 1001 going away,
        /// 1009 a message too large, ...), if it gave one.
        code: Option<u16>,
        /// The peer's reason, if it gave one.
        reason: String,
    },
    /// The WebSocket peer broke the protocol; this side sent the close
    /// code the error names ([`WebSocketError::close_code`]). A message
    /// over the maximum is [`FrameTooLarge`](Self::FrameTooLarge) (1009).
    WebSocket(WebSocketError),
}

impl DisconnectReason {
    /// The close code a WebSocket session sends when it ends for this
    /// reason: 1000 for a local close, 1001 for shutdown or idle, 1002 for
    /// a protocol error, 1007 for invalid UTF-8, 1009 for a message too
    /// large, 1011 for a panic, the peer's own code to answer its close;
    /// `None` when no close frame is sent (the peer closed the connection,
    /// an I/O error, a slow consumer).
    pub fn websocket_close_code(&self) -> Option<u16> {
        websocket::close_for(self).and_then(|payload| match payload[..] {
            [a, b, ..] => Some(u16::from_be_bytes([a, b])),
            _ => None,
        })
    }
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
            DisconnectReason::Truncated => {
                f.write_str("closed by peer without TLS close_notify (truncated)")
            }
            DisconnectReason::WebSocketClose { code: None, .. } => {
                f.write_str("closed by WebSocket peer (no close code)")
            }
            DisconnectReason::WebSocketClose {
                code: Some(code),
                reason,
            } => {
                write!(f, "closed by WebSocket peer with code {code}")?;
                if !reason.is_empty() {
                    write!(f, ": {}", reason.escape_debug())?;
                }
                Ok(())
            }
            DisconnectReason::WebSocket(e) => {
                write!(
                    f,
                    "WebSocket protocol error (close code {}): {e}",
                    e.close_code()
                )
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

/// Shared payloads and frames from this size up are queued by reference;
/// smaller ones are copied into the session's own buffer, which costs less
/// than a reference (a count, a segment) in time and memory.
const SHARE_FROM: usize = 512;

/// What a session's layers settled.
pub(crate) struct Layers {
    tls: Option<TlsInfo>,
    websocket: Option<WebSocketInfo>,
}

/// A close requested from outside the engine, or decided by it.
pub(crate) const OPEN: u8 = 0;
pub(crate) const CLOSE_LOCAL: u8 = 1;
pub(crate) const CLOSE_SLOW: u8 = 2;
pub(crate) const CLOSE_SHUTDOWN: u8 = 3;
/// The engine itself is closing (peer closed, error, idle, ...).
pub(crate) const CLOSE_ENGINE: u8 = 4;

/// The state a [`SessionHandle`] shares with its connection's engine.
pub(crate) struct Shared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) framing: Framing,
    pub(crate) max_frame_len: usize,
    pub(crate) max_send_queue: usize,
    pub(crate) high_watermark: usize,
    pub(crate) low_watermark: usize,
    pub(crate) drain_timeout: Duration,
    /// The session wants `on_sent`: every frame's length is kept.
    pub(crate) track_lens: bool,
    /// What the TLS handshake and the WebSocket upgrade settled, for a
    /// session that has either: one box, so a plain session pays one word.
    pub(crate) layers: Option<Box<Layers>>,
    /// Frames sent and not yet taken by the engine, and who waits.
    pub(crate) outbox: Mutex<Outbox>,
    /// The outbox holds frames: readable without the lock, so that the
    /// engine takes the lock only when there is something to take.
    pub(crate) has_outbox: AtomicBool,
    /// Someone waits in the outbox's `waiters`.
    pub(crate) has_waiters: AtomicBool,
    /// Bytes queued and not yet written, the engine's share included.
    /// Bytes ever queued: written only under the outbox lock, so a send
    /// adds to it with a plain store, not a read-modify-write.
    pub(crate) enqueued: AtomicUsize,
    /// Bytes ever written or dropped: written only by the engine.
    /// `enqueued - dequeued` is what is queued now.
    pub(crate) dequeued: AtomicUsize,
    /// One of `OPEN`, `CLOSE_*`.
    pub(crate) state: AtomicU8,
    /// Wakes the engine for a new frame or a close request.
    pub(crate) waker: AtomicWaker,
    /// The user asked the session to stop reading (see `pause_reading`).
    pub(crate) read_paused: AtomicBool,
    /// True while the engine is inside its poll and will look at the outbox
    /// again before it sleeps; saves a wake-up per send from a callback.
    pub(crate) polling: AtomicBool,
}

impl Shared {
    /// Bytes queued and not yet written, the engine's share included.
    #[inline]
    pub(crate) fn queued(&self) -> usize {
        // `dequeued` first: `enqueued` read after it is at least as large.
        let dequeued = self.dequeued.load(Ordering::SeqCst);
        self.enqueued.load(Ordering::SeqCst).wrapping_sub(dequeued)
    }

    /// The engine wrote (or dropped) `n` queued bytes. SeqCst, paired with
    /// a waiter's look at the queue after registering (see `wake_waiters`).
    #[inline]
    pub(crate) fn dequeue(&self, n: usize) {
        let dequeued = self.dequeued.load(Ordering::Relaxed);
        self.dequeued
            .store(dequeued.wrapping_add(n), Ordering::SeqCst);
    }

    pub(crate) fn lock_outbox(&self) -> MutexGuard<'_, Outbox> {
        // No code that can panic runs while the lock is held, but do not
        // turn one into a second panic if it somehow did.
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

    /// Wakes every task waiting on the queue or the end.
    pub(crate) fn wake_waiters(&self) {
        // SeqCst, paired with `wait` and the waiter's second look at the
        // queue: either the waiter sees the drained queue or this sees it.
        if !self.has_waiters.load(Ordering::SeqCst) {
            return;
        }
        let waiters = {
            let mut outbox = self.lock_outbox();
            self.has_waiters.store(false, Ordering::Release);
            outbox
                .waiting
                .as_mut()
                .map(|w| std::mem::take(&mut w.wakers))
                .unwrap_or_default()
        };
        for waiter in waiters {
            waiter.wake();
        }
    }

    /// Registers `waker` to be woken by [`wake_waiters`](Self::wake_waiters).
    fn wait(outbox: &mut Outbox, has_waiters: &AtomicBool, waker: &Waker) {
        let wakers = &mut outbox.waiting.get_or_insert_with(Box::default).wakers;
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        has_waiters.store(true, Ordering::SeqCst);
    }
}

impl SessionHandle {
    pub(crate) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        config: &SessionConfig,
        track_lens: bool,
        tls: Option<TlsInfo>,
        websocket: Option<WebSocketInfo>,
    ) -> SessionHandle {
        SessionHandle {
            shared: Arc::new(Shared {
                id: SessionId::next(),
                peer,
                local,
                framing: if websocket.is_some() {
                    Framing::WebSocket
                } else {
                    config.framing
                },
                max_frame_len: config.max_frame_len,
                max_send_queue: config.max_send_queue,
                high_watermark: config.send_high_watermark,
                low_watermark: config.send_low_watermark,
                drain_timeout: config.drain_timeout,
                track_lens,
                layers: (tls.is_some() || websocket.is_some())
                    .then(|| Box::new(Layers { tls, websocket })),
                outbox: Mutex::new(Outbox::default()),
                has_outbox: AtomicBool::new(false),
                has_waiters: AtomicBool::new(false),
                enqueued: AtomicUsize::new(0),
                dequeued: AtomicUsize::new(0),
                state: AtomicU8::new(OPEN),
                waker: AtomicWaker::new(),
                polling: AtomicBool::new(false),
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

    /// What the TLS handshake settled (protocol, ALPN, the peer's
    /// certificates), for a session over TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.shared.layers.as_ref()?.tls.as_ref()
    }

    /// What the WebSocket upgrade settled (path, subprotocol, origin), for
    /// a WebSocket session.
    pub fn websocket(&self) -> Option<&WebSocketInfo> {
        self.shared.layers.as_ref()?.websocket.as_ref()
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
        self.shared.queued()
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
    /// messages queued together go out in one vectored write. The message
    /// is copied into this session's own send buffer, so it costs the
    /// queue what it counts. Fails when the session is closing, when the
    /// message cannot be framed, or when the send queue would pass its cap,
    /// in which case the session is closed as a slow consumer (to wait for
    /// room instead, see [`send_async`](Self::send_async)).
    pub fn send(&self, message: &[u8]) -> Result<(), SendError> {
        self.send_parts(&[message])
    }

    /// Queues one message made of `parts` laid end to end, as
    /// [`send`](Self::send) does: a reply and its suffix without joining
    /// them into a new buffer first.
    pub fn send_parts(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        let shared = &*self.shared;
        self.check_open()?;
        let framing = shared.framing;
        if framing == Framing::WebSocket {
            return self.send_websocket(websocket::OP_BINARY, parts);
        }
        let payload = framing
            .check_parts(parts, shared.max_frame_len)
            .map_err(SendError::Frame)?;
        let len = payload + framing.overhead();
        self.enqueue(len, |queue| queue.push_parts(framing, parts, payload, len))
    }

    /// Queues `payload` as one message without copying it: the queue keeps
    /// a reference to the caller's buffer (framing headers go beside it).
    /// The queue counts `payload.len()` bytes; a `Bytes` cut from a larger
    /// buffer keeps that whole buffer alive until it is written. A payload
    /// under 512 bytes is copied, as [`send`](Self::send) does: for so few
    /// bytes a copy costs less time and memory than a reference. Fails as
    /// [`send`](Self::send) does.
    ///
    /// ```
    /// use session_core::bytes::Bytes;
    /// use session_core::SessionHandle;
    ///
    /// fn send_map(handle: &SessionHandle, map: &Bytes) {
    ///     // Every session gets a reference to the same map, not a copy.
    ///     let _ = handle.send_bytes(map.clone());
    /// }
    /// ```
    pub fn send_bytes(&self, payload: Bytes) -> Result<(), SendError> {
        if payload.len() < SHARE_FROM {
            return self.send(&payload);
        }
        let shared = &*self.shared;
        self.check_open()?;
        let framing = shared.framing;
        if framing == Framing::WebSocket && self.is_websocket_client() {
            // A client masks every frame with a key of its own: a copy.
            return self.send_websocket(websocket::OP_BINARY, &[&payload]);
        }
        let len = framing
            .check_parts(&[&payload], shared.max_frame_len)
            .map_err(SendError::Frame)?
            + framing.overhead();
        self.enqueue(len, |queue| match framing {
            Framing::Raw => queue.push_shared(payload),
            Framing::LengthPrefixed => {
                // In range: `check_parts` allowed at most 65,533 bytes.
                queue.push_own(&(len as u16).to_le_bytes());
                queue.push_shared(payload);
            }
            Framing::Lines => {
                queue.push_shared(payload);
                queue.push_shared(Bytes::from_static(b"\n"));
            }
            Framing::WebSocket => {
                let mut header = [0u8; 10];
                let mut room = &mut header[..];
                websocket::write_header(&mut room, websocket::OP_BINARY, payload.len(), None);
                let used = 10 - room.len();
                queue.push_own(&header[..used]);
                queue.push_shared(payload);
            }
        })
    }

    /// Queues a [`Frame`] made once for many sessions: the queue holds a
    /// reference to the frame's buffer, not a copy (a frame under 512
    /// bytes is copied into this session's own buffer, which costs less
    /// than the reference and its bookkeeping). Fails as
    /// [`send`](Self::send) does, and if the frame was made for another
    /// framing or is longer than this session's maximum.
    pub fn send_frame(&self, frame: &Frame) -> Result<(), SendError> {
        let shared = &*self.shared;
        self.check_open()?;
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
        let bytes = frame.bytes();
        if shared.framing == Framing::WebSocket && self.is_websocket_client() {
            // Made unmasked, for servers: a client masks a copy.
            return self.send_websocket(bytes[0] & 0x0F, &[frame.payload()]);
        }
        if bytes.len() < SHARE_FROM {
            return self.enqueue(bytes.len(), |queue| queue.push_own(bytes));
        }
        self.enqueue(bytes.len(), |queue| queue.push_shared(bytes.clone()))
    }

    /// Queues one message of `kind` made of `parts` laid end to end: on a
    /// WebSocket session, a text or binary message (text must be UTF-8,
    /// else [`FrameError::WebSocket`]); on any other session the kind is
    /// ignored and the message is framed as [`send_parts`](Self::send_parts)
    /// does. [`send`](Self::send), `send_parts` and
    /// [`send_bytes`](Self::send_bytes) send binary messages.
    ///
    /// ```
    /// use session_core::{MessageKind, SessionHandle};
    ///
    /// fn greet(handle: &SessionHandle) {
    ///     let _ = handle.send_message(MessageKind::Text, &[b"Hi ", b"there"]);
    /// }
    /// ```
    pub fn send_message(&self, kind: MessageKind, parts: &[&[u8]]) -> Result<(), SendError> {
        if self.shared.framing != Framing::WebSocket {
            return self.send_parts(parts);
        }
        self.check_open()?;
        if kind == MessageKind::Text {
            // Valid parts make a valid whole; a character split across
            // parts needs the whole to be looked at.
            let valid = parts.iter().all(|p| std::str::from_utf8(p).is_ok())
                || (parts.len() > 1 && std::str::from_utf8(&parts.concat()).is_ok());
            if !valid {
                return Err(SendError::Frame(FrameError::WebSocket(
                    WebSocketError::InvalidUtf8,
                )));
            }
        }
        self.send_websocket(kind.opcode(), parts)
    }

    /// Queues `text` as one WebSocket text message (on another session,
    /// as [`send`](Self::send) does).
    ///
    /// ```
    /// use session_core::SessionHandle;
    ///
    /// fn hello(handle: &SessionHandle) {
    ///     let _ = handle.send_text("hello");
    /// }
    /// ```
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        if self.shared.framing != Framing::WebSocket {
            return self.send(text.as_bytes());
        }
        self.check_open()?;
        self.send_websocket(websocket::OP_TEXT, &[text.as_bytes()])
    }

    fn is_websocket_client(&self) -> bool {
        self.websocket().is_some_and(WebSocketInfo::is_client)
    }

    /// Queues one WebSocket frame of `opcode` (open checked by the caller):
    /// unmasked from a server, masked with a fresh key from a client.
    fn send_websocket(&self, opcode: u8, parts: &[&[u8]]) -> Result<(), SendError> {
        let shared = &*self.shared;
        let len = crate::framing::payload_len(parts);
        if len > shared.max_frame_len {
            return Err(SendError::Frame(FrameError::TooLarge {
                len,
                max: shared.max_frame_len,
            }));
        }
        let mask = self.is_websocket_client().then(websocket::mask_key);
        let wire = websocket::header_len(len, mask.is_some()) + len;
        self.enqueue(wire, |queue| {
            queue.push_websocket(opcode, parts, len, wire, mask)
        })
    }

    /// Queues a control frame from the engine (a pong, a close), whatever
    /// the session's state. A pong counts against the cap as any send; a
    /// close frame (one per session, at most 127 bytes) does not, so that
    /// it goes out even from a full queue.
    pub(crate) fn send_control(&self, opcode: u8, payload: &[u8]) -> Result<(), SendError> {
        let mask = self.is_websocket_client().then(websocket::mask_key);
        let len = payload.len();
        let wire = websocket::header_len(len, mask.is_some()) + len;
        let push =
            |queue: &mut SendQueue| queue.push_websocket(opcode, &[payload], len, wire, mask);
        if opcode == websocket::OP_CLOSE {
            // Sealed under the lock every send takes: a send racing the
            // close from another thread lands before the close frame or
            // not at all (RFC 6455 5.5.1: nothing after a close).
            self.enqueue_with(wire, Enqueue::Close, push)
        } else {
            self.enqueue_with(wire, Enqueue::Capped, push)
        }
    }

    /// Queues `message` as [`send`](Self::send) does, but first waits while
    /// the send queue is above the high watermark
    /// ([`SessionConfig::send_high_watermark`]); once it had to wait, until
    /// the queue is down to the low watermark. A producer that sends with
    /// it slows down to the peer's pace instead of having the session
    /// closed as a slow consumer. (Several producers racing for the same
    /// room can still pass the hard cap.)
    ///
    /// ```
    /// use session_core::{SendError, SessionHandle};
    ///
    /// async fn stream_log(handle: SessionHandle, lines: Vec<String>) -> Result<(), SendError> {
    ///     for line in lines {
    ///         handle.send_async(line.as_bytes()).await?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub async fn send_async(&self, message: &[u8]) -> Result<(), SendError> {
        self.writable().await?;
        self.send(message)
    }

    /// Waits until a send would not pass the high watermark (see
    /// [`send_async`](Self::send_async)); fails once the session is closing.
    pub async fn writable(&self) -> Result<(), SendError> {
        let shared = &*self.shared;
        let mut limit = shared.high_watermark;
        poll_fn(|cx| {
            self.check_open()?;
            if shared.queued() <= limit {
                return Poll::Ready(Ok(()));
            }
            limit = shared.low_watermark;
            let mut outbox = shared.lock_outbox();
            Shared::wait(&mut outbox, &shared.has_waiters, cx.waker());
            drop(outbox);
            // Looked at again after registering: the engine may have
            // drained the queue in between (see `wake_waiters`).
            if shared.queued() <= limit {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until the session has ended (after its `on_disconnected`) and
    /// returns why it ended. Any number of tasks may wait.
    ///
    /// ```
    /// use session_core::SessionHandle;
    ///
    /// async fn log_end(handle: SessionHandle) {
    ///     let reason = handle.closed().await;
    ///     log::info!("session {} ended: {reason}", handle.id());
    /// }
    /// ```
    pub async fn closed(&self) -> DisconnectReason {
        let shared = &*self.shared;
        poll_fn(|cx| {
            let mut outbox = shared.lock_outbox();
            if let Some(reason) = outbox.waiting.as_ref().and_then(|w| w.ended.as_ref()) {
                return Poll::Ready(reason.clone());
            }
            Shared::wait(&mut outbox, &shared.has_waiters, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Fails unless sends are still taken: the session is open, or a
    /// shutdown was asked for that the engine has not acted on yet (a reply
    /// to a message already delivered is still queued and drained).
    #[inline]
    fn check_open(&self) -> Result<(), SendError> {
        match self.shared.state.load(Ordering::Acquire) {
            OPEN | CLOSE_SHUTDOWN => Ok(()),
            _ => Err(SendError::Closed),
        }
    }

    /// Counts `len` bytes against the cap, then lets `push` append the
    /// frame to the outbox under the lock and wakes the engine if it may
    /// be asleep.
    #[inline]
    fn enqueue(&self, len: usize, push: impl FnOnce(&mut SendQueue)) -> Result<(), SendError> {
        self.enqueue_with(len, Enqueue::Capped, push)
    }

    /// [`enqueue`](Self::enqueue), held to the cap unless it queues the
    /// close frame, which seals the queue.
    #[inline]
    fn enqueue_with(
        &self,
        len: usize,
        how: Enqueue,
        push: impl FnOnce(&mut SendQueue),
    ) -> Result<(), SendError> {
        let shared = &*self.shared;
        if len == 0 {
            // A raw message with no bytes has nothing to write; queued, it
            // would make the write that carries it return 0.
            return Ok(());
        }
        let was_empty = {
            let mut outbox = shared.lock_outbox();
            if outbox.finished || outbox.sealed {
                return Err(SendError::Closed);
            }
            outbox.sealed = how == Enqueue::Close;
            let enqueued = shared.enqueued.load(Ordering::Relaxed);
            let queued = enqueued.wrapping_sub(shared.dequeued.load(Ordering::Acquire));
            if how == Enqueue::Capped && queued + len > shared.max_send_queue {
                drop(outbox);
                return Err(self.close_slow());
            }
            shared
                .enqueued
                .store(enqueued.wrapping_add(len), Ordering::Release);
            let queue = outbox.queue.get_mut();
            push(queue);
            if shared.track_lens {
                queue.frame_lens.push_back(len as u32);
            }
            // SeqCst, paired with the engine's store of `polling` and load
            // of `has_outbox`: one of the two sides sees the other, so no
            // wake-up is lost between the engine's last look and its sleep.
            // Only the first send of a batch stores (the engine clears the
            // flag under this lock).
            let first = !shared.has_outbox.load(Ordering::Relaxed);
            if first {
                shared.has_outbox.store(true, Ordering::SeqCst);
            }
            first
        };
        if was_empty {
            shared.notify();
        }
        Ok(())
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

/// How a frame joins the send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enqueue {
    /// Held to the send queue's cap (every send, and pongs).
    Capped,
    /// A WebSocket close frame: past the cap, and the last frame queued.
    Close,
}
