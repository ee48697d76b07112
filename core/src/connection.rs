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
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};

use crate::config::SessionConfig;
use crate::framing::FrameError;
use crate::rt;
use crate::send_queue::Outgoing;
use crate::session::{
    CLOSE_ENGINE, CLOSE_LOCAL, CLOSE_SHUTDOWN, CLOSE_SLOW, DisconnectReason, OPEN, Session,
    SessionHandle,
};
use crate::tls::TlsInfo;
use crate::websocket::{self, WebSocketDecoder, WebSocketEvent, WsEngine, WsStart};

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
    run_session_layered(io, peer, local, config, session, None, None)
}

/// [`run_session`], for a stream whose TLS handshake settled `tls` and
/// whose WebSocket upgrade settled `ws`.
pub(crate) fn run_session_layered<S, T>(
    io: T,
    peer: SocketAddr,
    local: SocketAddr,
    config: &SessionConfig,
    session: S,
    tls: Option<TlsInfo>,
    ws: Option<WsStart>,
) -> (
    SessionHandle,
    impl Future<Output = DisconnectReason> + Send + 'static,
)
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (info, rest) = match ws {
        Some(WsStart { info, rest }) => (Some(info), rest),
        None => (None, Vec::new()),
    };
    let server = info.as_ref().map(|info| !info.is_client());
    let handle = SessionHandle::new(peer, local, config, session.wants_on_sent(), tls, info);
    let mut engine = Engine::new(io, handle.clone(), config, session);
    if let Some(server) = server {
        engine.ws = Some(Box::new(WsEngine {
            decoder: WebSocketDecoder::new(server, config.max_frame_len),
            close_sent: false,
        }));
        // The first frames, sent with the upgrade: delivered once started.
        engine.pending = rest;
    }
    (handle, engine)
}

/// Where the engine is in the life of its connection. Each phase after
/// the first holds what only it needs, boxed: an open session pays a word
/// for them.
enum Phase {
    /// Reading and writing.
    Open,
    /// No more reading; writing what is queued until it is all out or the
    /// deadline passes.
    Draining(Box<Draining>),
    /// Closing the write side of the stream; then, until `linger_until`
    /// (the drain deadline), discarding what the peer still sends (see
    /// [`Linger`]).
    Closing(Box<Closing>),
    /// The write side is closed; discarding input.
    Lingering(Box<Linger>),
    /// `on_disconnected` has run.
    Done,
}

struct Draining {
    reason: DisconnectReason,
    deadline: Instant,
    timer: rt::Timer,
}

struct Closing {
    reason: DisconnectReason,
    linger_until: Option<Instant>,
}

/// A "lingering close": closing a socket with unread input makes the
/// kernel reset the connection and drop the replies still in its send
/// buffer, so after closing its write side the engine reads and discards
/// what the peer sends: until nothing waits if it had sent nothing more,
/// else until its end of stream or a quiet spell, and never past the drain
/// deadline.
struct Linger {
    reason: DisconnectReason,
    deadline: rt::Timer,
    /// Fires once the peer has been quiet for [`LINGER_QUIET`].
    quiet: rt::Timer,
    /// Bytes the peer sent were read and dropped.
    discarded: bool,
    /// The runtime had a turn after a read found nothing.
    settled: bool,
}

/// What one phase's step asks of the loop in [`Engine::poll_engine`].
enum Step {
    /// Go round again (the phase changed, or there is more to do).
    Again,
    /// Nothing to do until a wake-up.
    Wait,
    /// Let the thread's other tasks have a turn, then come back.
    Yield,
    /// The connection is over.
    Done(DisconnectReason),
}

/// The idle timeout: a timer armed lazily and re-armed only when it fires
/// early, so activity costs a clock read and nothing more.
struct Idle {
    timeout: Duration,
    last_activity: Instant,
    timer: Option<rt::Timer>,
}

struct Engine<S: Session, T: AsyncRead + AsyncWrite + Unpin> {
    io: T,
    session: S,
    handle: SessionHandle,
    /// Boxed: most sessions have none.
    idle: Option<Box<Idle>>,
    /// Bytes of a frame that began in an earlier read.
    pending: Vec<u8>,
    /// Frames taken from the outbox, being written.
    out: Outgoing,
    /// The session wants `on_sent`.
    report: bool,
    /// False while back-pressure holds reading.
    reading: bool,
    /// The peer's end of stream has been read.
    saw_eof: bool,
    started: bool,
    /// A callback panicked: only `on_disconnected` is called from now on.
    poisoned: bool,
    /// The last read was large: read again before writing.
    read_ahead: bool,
    /// Bytes of one read (the buffer is the thread's); at most 1 GiB.
    read_buffer_size: u32,
    phase: Phase,
    /// The WebSocket layer's state, for a WebSocket session only.
    ws: Option<Box<WsEngine>>,
}

// The engine never pins the session or the stream in place.
impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Unpin for Engine<S, T> {}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Engine<S, T> {
    fn new(io: T, handle: SessionHandle, config: &SessionConfig, session: S) -> Self {
        Engine {
            io,
            report: handle.shared.track_lens,
            session,
            handle,
            idle: config.idle_timeout.map(|timeout| {
                Box::new(Idle {
                    timeout,
                    last_activity: Instant::now(),
                    timer: None,
                })
            }),
            pending: Vec::new(),
            out: Outgoing::default(),
            reading: true,
            saw_eof: false,
            started: false,
            poisoned: false,
            read_ahead: false,
            // `SessionConfig::validate` holds it to 1 GiB.
            read_buffer_size: config.read_buffer_size as u32,
            phase: Phase::Open,
            ws: None,
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
                self.panicked(panic_message(payload.as_ref()));
                R::default()
            }
        }
    }

    /// A callback panicked with `message`: the session closes, draining
    /// what it queued before.
    #[cold]
    fn panicked(&mut self, message: String) {
        log::error!(
            "session {} ({}): callback panicked: {message}",
            self.handle.id(),
            self.handle.peer_addr()
        );
        self.begin_close(DisconnectReason::Panicked(message), true);
    }

    /// Stops reading and, if `drain`, writes what is queued before closing.
    fn begin_close(&mut self, reason: DisconnectReason, drain: bool) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        // From now on sends are refused (a requested close has been read).
        self.handle
            .shared
            .state
            .store(CLOSE_ENGINE, Ordering::SeqCst);
        log::debug!(
            "session {} ({}): closing: {reason}",
            self.handle.id(),
            self.handle.peer_addr()
        );
        self.phase = if drain {
            let deadline = Instant::now() + self.handle.shared.drain_timeout;
            Phase::Draining(Box::new(Draining {
                reason,
                deadline,
                timer: rt::timer_at(deadline),
            }))
        } else {
            Phase::Closing(Box::new(Closing {
                reason,
                linger_until: None,
            }))
        };
        self.queue_websocket_close();
    }

    /// A WebSocket session that has begun to drain sends its close frame,
    /// with the code for its reason, behind what was queued before it.
    /// (A close without draining, a slow consumer's, writes nothing more.)
    fn queue_websocket_close(&mut self) {
        let (Some(ws), Phase::Draining(draining)) = (&mut self.ws, &self.phase) else {
            return;
        };
        if ws.close_sent {
            return;
        }
        ws.close_sent = true;
        if let Some(payload) = websocket::close_for(&draining.reason) {
            let _ = self.handle.send_control(websocket::OP_CLOSE, &payload);
        }
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

    /// Moves what waits in the outbox behind the frames being written.
    /// Takes the lock only when there is something to move.
    #[inline]
    fn take_outbox(&mut self) {
        let shared = &self.handle.shared;
        if !shared.has_outbox.load(Ordering::Acquire) {
            return;
        }
        let mut outbox = shared.lock_outbox();
        self.out.queue.append(&mut outbox.queue);
        outbox.queue.shrink_if_empty();
        shared.has_outbox.store(false, Ordering::Release);
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    /// Returns whether anything was written.
    fn write_queue(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        loop {
            self.take_outbox();
            if self.out.is_empty() {
                break;
            }
            let n = match self.out.poll_write(&mut self.io, cx) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            };
            progress = true;
            self.handle.shared.dequeue(n);
            self.advance(n);
        }
        if progress {
            // Streams that buffer (not sockets) need a flush to move.
            let _ = Pin::new(&mut self.io).poll_flush(cx)?;
            let shared = &self.handle.shared;
            if shared.queued() <= shared.low_watermark {
                shared.wake_waiters();
            }
        }
        Ok(progress)
    }

    /// Marks `n` bytes written and reports every frame now wholly written.
    fn advance(&mut self, n: usize) {
        let Engine {
            out,
            session,
            handle,
            poisoned,
            report,
            ..
        } = self;
        let framing = handle.shared.framing;
        let mut panicked = None;
        out.advance(n, *report, |frame| {
            if *poisoned {
                return;
            }
            let sent;
            let payload = if framing == crate::Framing::WebSocket {
                // Control frames are the engine's; a client's are masked.
                match websocket::sent_payload(frame) {
                    Some(payload) => {
                        sent = payload;
                        &sent[..]
                    }
                    None => return,
                }
            } else {
                &frame[framing.payload_of(frame.len())]
            };
            let sent = catch_unwind(AssertUnwindSafe(|| session.on_sent(handle, payload)));
            if let Err(payload) = sent {
                *poisoned = true;
                panicked = Some(panic_message(payload.as_ref()));
            }
        });
        if let Some(message) = panicked {
            self.panicked(message);
        }
    }

    /// Reads once and delivers every whole message; how many bytes came
    /// (0 at end of stream).
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        with_scratch(self.read_buffer_size as usize, |scratch| {
            match Pin::new(&mut self.io).poll_read(cx, scratch) {
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => {
                    self.deliver(&mut scratch[..n]);
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// Cuts `data` (with any partial frame kept from before) into messages
    /// and hands each to `on_received`.
    fn deliver(&mut self, data: &mut [u8]) {
        if self.pending.is_empty() {
            let used = self.deliver_from(data);
            if used < data.len() && matches!(self.phase, Phase::Open) {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            let mut pending = std::mem::take(&mut self.pending);
            let used = self.deliver_from(&mut pending);
            pending.drain(..used);
            if pending.is_empty() && pending.capacity() > KEEP_PENDING {
                pending = Vec::new();
            }
            self.pending = pending;
        }
    }

    /// Delivers the messages at the start of `buf`; returns the bytes used.
    fn deliver_from(&mut self, buf: &mut [u8]) -> usize {
        if !matches!(self.phase, Phase::Open) {
            return 0;
        }
        if self.ws.is_some() {
            return self.deliver_websocket(buf);
        }
        let buf = &*buf;
        let (framing, max) = (self.handle.shared.framing, self.handle.shared.max_frame_len);
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

    /// Decodes the WebSocket frames at the start of `buf` (unmasking them in
    /// place), hands each whole message to `on_message`, answers pings and
    /// the close handshake; returns the bytes used.
    #[inline(never)]
    fn deliver_websocket(&mut self, buf: &mut [u8]) -> usize {
        let Some(mut ws) = self.ws.take() else {
            return 0;
        };
        let mut used = 0;
        let mut close = None;
        while matches!(self.phase, Phase::Open) && !self.poisoned {
            let event = match ws.decoder.decode(&mut buf[used..]) {
                Ok(None) => break,
                Ok(Some((n, event))) => {
                    used += n;
                    event
                }
                Err(websocket::WebSocketError::TooLarge { len, max }) => {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    close = Some(DisconnectReason::FrameTooLarge { len, max });
                    break;
                }
                Err(e) => {
                    close = Some(DisconnectReason::WebSocket(e));
                    break;
                }
            };
            match event {
                None | Some(WebSocketEvent::Pong(_)) => {}
                Some(WebSocketEvent::Message(kind, message)) => {
                    self.guarded(|session, handle| session.on_message(handle, message, kind));
                    if self.handle.shared.state.load(Ordering::Acquire) != OPEN {
                        break;
                    }
                }
                Some(WebSocketEvent::Ping(payload)) => {
                    // Over the cap: the session is closing as a slow consumer.
                    let _ = self.handle.send_control(websocket::OP_PONG, payload);
                }
                Some(WebSocketEvent::Close { code, reason }) => {
                    close = Some(DisconnectReason::WebSocketClose {
                        code,
                        reason: reason.to_owned(),
                    });
                    break;
                }
            }
        }
        ws.decoder.settle();
        self.ws = Some(ws);
        // A callback that panicked began the close while the state was out.
        self.queue_websocket_close();
        self.check_close_request();
        if let Some(reason) = close {
            self.begin_close(reason, true);
        }
        used
    }

    /// Drops everything queued, marks the session closed and runs
    /// `on_disconnected`.
    fn finish(&mut self, reason: DisconnectReason) -> DisconnectReason {
        self.phase = Phase::Done;
        self.pending = Vec::new();
        self.end(&reason);
        reason
    }

    /// Refuses every later send, drops what is queued, runs
    /// `on_disconnected` and wakes whoever waits for the end.
    fn end(&mut self, reason: &DisconnectReason) {
        let shared = &self.handle.shared;
        shared.state.store(CLOSE_ENGINE, Ordering::SeqCst);
        // Under the outbox lock, so that a racing `send` either lands
        // before the clear or sees `finished` and takes its bytes back.
        let dropped = {
            let mut outbox = shared.lock_outbox();
            outbox.finished = true;
            shared.has_outbox.store(false, Ordering::Release);
            outbox.queue.clear(0) + self.out.clear()
        };
        self.out = Outgoing::default();
        shared.dequeue(dropped);
        let (session, handle) = (&mut self.session, &self.handle);
        if let Err(payload) =
            catch_unwind(AssertUnwindSafe(|| session.on_disconnected(handle, reason)))
        {
            log::error!(
                "session {} ({}): on_disconnected panicked: {}",
                handle.id(),
                handle.peer_addr(),
                panic_message(payload.as_ref())
            );
        }
        let ended = Some(reason.clone());
        let mut outbox = self.handle.shared.lock_outbox();
        outbox.waiting.get_or_insert_with(Box::default).ended = ended;
        drop(outbox);
        // Unconditionally: a waiter may have registered just before `ended`.
        self.handle
            .shared
            .has_waiters
            .store(true, Ordering::Release);
        self.handle.shared.wake_waiters();
    }

    /// Whether new frames or a close request arrived since the last look.
    fn has_news(&self) -> bool {
        let shared = &self.handle.shared;
        match self.phase {
            Phase::Open => {
                let state = shared.state.load(Ordering::Acquire);
                (state != OPEN && state != CLOSE_ENGINE) || shared.has_outbox.load(Ordering::SeqCst)
            }
            Phase::Draining(_) => shared.has_outbox.load(Ordering::SeqCst),
            _ => false,
        }
    }

    /// Notes activity, for the idle timeout (the clock is only read if
    /// there is one).
    fn touch(&mut self) {
        if let Some(idle) = &mut self.idle {
            idle.last_activity = Instant::now();
        }
    }

    /// Whether the idle timeout has passed; arms its timer if not.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else {
            return false;
        };
        let deadline = idle.last_activity + idle.timeout;
        let timer = idle.timer.get_or_insert_with(|| rt::timer_at(deadline));
        loop {
            if Pin::new(&mut *timer).poll(cx).is_pending() {
                return false;
            }
            let deadline = idle.last_activity + idle.timeout;
            if deadline <= Instant::now() {
                return true;
            }
            timer.set_at(deadline);
        }
    }

    /// Starts the session, then runs the current phase's step until one
    /// waits or the connection is over.
    fn poll_engine(&mut self, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        if !self.started {
            self.started = true;
            self.guarded(|session, handle| session.on_connected(handle));
            if !self.pending.is_empty() {
                // Frames that came with the WebSocket upgrade.
                self.deliver(&mut []);
            }
        }
        let shared = Arc::clone(&self.handle.shared);
        shared.waker.register(cx.waker());
        shared.polling.store(true, Ordering::SeqCst);
        let mut reads = 0;
        loop {
            self.check_close_request();
            let step = match self.phase {
                Phase::Open => self.step_open(cx, &mut reads),
                Phase::Draining(_) => self.step_draining(cx),
                Phase::Closing(_) => self.step_closing(cx),
                Phase::Lingering(_) => self.step_lingering(cx, &mut reads),
                Phase::Done => return Poll::Pending,
            };
            match step {
                Step::Again => continue,
                Step::Wait => {
                    shared.polling.store(false, Ordering::SeqCst);
                    if self.has_news() {
                        shared.polling.store(true, Ordering::SeqCst);
                        continue;
                    }
                    return Poll::Pending;
                }
                Step::Yield => {
                    shared.polling.store(false, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Step::Done(reason) => {
                    shared.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(self.finish(reason));
                }
            }
        }
    }

    /// Open: write what is queued, then read once if back-pressure and the
    /// user allow, then watch the idle timeout.
    ///
    /// After a large read the write waits for one more read: a large write
    /// reaches the socket in pieces (Linux pushes a segment at half the
    /// peer's window), and one write then answers them all.
    fn step_open(&mut self, cx: &mut Context<'_>, reads: &mut usize) -> Step {
        if !(self.read_ahead && self.may_read() && *reads < READS_PER_POLL) {
            self.read_ahead = false;
            match self.write_queue(cx) {
                Ok(true) => self.touch(),
                Ok(false) => {}
                Err(e) => return Step::Done(DisconnectReason::Io(Arc::new(e))),
            }
        }
        // Asked again after the write: it may have drained the queue below
        // the low watermark, and nothing else would wake a paused reader.
        if self.may_read() {
            if *reads == READS_PER_POLL {
                return Step::Yield;
            }
            if let Some(step) = self.step_read(cx, reads) {
                return step;
            }
        }
        if self.idle_expired(cx) {
            self.begin_close(DisconnectReason::Idle, true);
            return Step::Again;
        }
        Step::Wait
    }

    /// Whether back-pressure (the queue between its watermarks) and the
    /// user ([`SessionHandle::pause_reading`]) let the session read now.
    fn may_read(&mut self) -> bool {
        let shared = &self.handle.shared;
        let queued = shared.queued();
        if self.reading && queued > shared.high_watermark {
            self.reading = false;
        } else if !self.reading && queued <= shared.low_watermark {
            self.reading = true;
        }
        self.reading && !shared.read_paused.load(Ordering::SeqCst)
    }

    /// Reads once; the step to take next, or `None` if nothing waits.
    fn step_read(&mut self, cx: &mut Context<'_>, reads: &mut usize) -> Option<Step> {
        match self.poll_read_once(cx) {
            Poll::Ready(Ok(0)) => {
                self.saw_eof = true;
                self.begin_close(DisconnectReason::PeerClosed, true);
                Some(Step::Again)
            }
            Poll::Ready(Ok(n)) => {
                *reads += 1;
                self.touch();
                self.read_ahead = n >= rt::STREAMING_READ;
                // Another turn writes what the callbacks queued.
                Some(Step::Again)
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Some(Step::Again),
            // A stream that ends before its protocol's close: TLS without
            // close_notify (a socket never says so).
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Some(Step::Done(DisconnectReason::Truncated))
            }
            Poll::Ready(Err(e)) => Some(Step::Done(DisconnectReason::Io(Arc::new(e)))),
            // The read ahead found nothing: write now.
            Poll::Pending if self.read_ahead || !matches!(self.phase, Phase::Open) => {
                self.read_ahead = false;
                Some(Step::Again)
            }
            Poll::Pending => None,
        }
    }

    /// Draining: write until the queue is empty or the deadline passes,
    /// then close.
    fn step_draining(&mut self, cx: &mut Context<'_>) -> Step {
        if let Err(e) = self.write_queue(cx) {
            return Step::Done(DisconnectReason::Io(Arc::new(e)));
        }
        let drained = self.out.is_empty() && !self.handle.shared.has_outbox.load(Ordering::Acquire);
        let Phase::Draining(draining) = &mut self.phase else {
            unreachable!("called in the draining phase");
        };
        if !drained && Pin::new(&mut draining.timer).poll(cx).is_pending() {
            return Step::Wait;
        }
        let Phase::Draining(draining) = std::mem::replace(&mut self.phase, Phase::Done) else {
            unreachable!("called in the draining phase");
        };
        if !drained {
            log::debug!(
                "session {} ({}): drain deadline passed with {} bytes unsent",
                self.handle.id(),
                self.handle.peer_addr(),
                self.handle.queued_bytes()
            );
        }
        self.phase = Phase::Closing(Box::new(Closing {
            reason: draining.reason,
            linger_until: Some(draining.deadline),
        }));
        Step::Again
    }

    /// Closing: close the write side, then linger if the peer may still be
    /// sending and there is time left.
    fn step_closing(&mut self, cx: &mut Context<'_>) -> Step {
        if Pin::new(&mut self.io).poll_close(cx).is_pending() {
            return Step::Wait;
        }
        let Phase::Closing(closing) = std::mem::replace(&mut self.phase, Phase::Done) else {
            unreachable!("called in the closing phase");
        };
        let now = Instant::now();
        match closing.linger_until {
            Some(until) if !self.saw_eof && until > now => {
                self.phase = Phase::Lingering(Box::new(Linger {
                    reason: closing.reason,
                    deadline: rt::timer_at(until),
                    quiet: rt::timer_at(now + LINGER_QUIET),
                    discarded: false,
                    settled: false,
                }));
                Step::Again
            }
            _ => Step::Done(closing.reason),
        }
    }

    /// Lingering: discard input until the peer is done (see [`Linger`]).
    fn step_lingering(&mut self, cx: &mut Context<'_>, reads: &mut usize) -> Step {
        let Phase::Lingering(linger) = &mut self.phase else {
            unreachable!("called in the lingering phase");
        };
        let mut done = Pin::new(&mut linger.deadline).poll(cx).is_ready();
        while !done {
            if *reads == READS_PER_POLL {
                return Step::Yield;
            }
            *reads += 1;
            match poll_discard(&mut self.io, self.read_buffer_size as usize, cx) {
                Poll::Ready(true) => done = true,
                Poll::Ready(false) => {
                    linger.discarded = true;
                    linger.quiet.set_after(LINGER_QUIET);
                }
                // Nothing waits. A read may say so from readiness the
                // runtime collected before the latest events (the workers
                // skip the read after one that emptied the socket): only
                // trust it after one more turn.
                Poll::Pending if !linger.discarded && !linger.settled => {
                    linger.settled = true;
                    return Step::Yield;
                }
                // A peer that sent nothing since reading stopped is done.
                // One that was still sending may have more in flight, which
                // a close would answer with a reset: wait until it closes
                // or has been quiet a while (as nginx's lingering close).
                Poll::Pending => {
                    done = !linger.discarded || Pin::new(&mut linger.quiet).poll(cx).is_ready();
                    break;
                }
            }
        }
        if !done {
            return Step::Wait;
        }
        let Phase::Lingering(linger) = std::mem::replace(&mut self.phase, Phase::Done) else {
            unreachable!("called in the lingering phase");
        };
        Step::Done(linger.reason)
    }
}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Future for Engine<S, T> {
    type Output = DisconnectReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        self.get_mut().poll_engine(cx)
    }
}

impl<S: Session, T: AsyncRead + AsyncWrite + Unpin> Drop for Engine<S, T> {
    fn drop(&mut self) {
        // Dropped before it finished (its runtime is going away): the
        // promise of exactly one `on_disconnected` still holds.
        if self.started && !matches!(self.phase, Phase::Done) {
            self.phase = Phase::Done;
            self.end(&DisconnectReason::Shutdown);
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
