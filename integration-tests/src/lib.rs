//! Helpers shared by the integration tests.
//!
//! - [`Recorder`]: a [`Session`] that reports every callback as an [`Event`]
//!   into a channel, and can be told how to reply.
//! - [`Events`]: the receiving end, which keeps every event seen so tests can
//!   wait for one and later check a session's whole history.
//! - [`Server`]: a [`Listener`] on a loopback port 0, run in a spawned task.
//! - Blocking `std::net` client helpers, each with a timeout, and small
//!   tools: a polling wait with a deadline, the process's open fd count, a
//!   deterministic PRNG, length-prefixed framing for clients.
//! - [`process`] runs the real binaries and other programs, [`pki`] makes
//!   certificates, and [`ws_peers`] finds the WebSocket peers (Python's
//!   `websockets`, Chromium) and their scripts in `peers/`.

pub mod counting_alloc;
pub mod pki;
pub mod process;
pub mod ws_peers;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use async_std::task::{self, JoinHandle};
use session_core::{
    DisconnectReason, IpInformation, Listener, ListenerStatsHandle, ServerTls, Session,
    SessionConfig, SessionHandle, SessionId, ShutdownHandle, WebSocketServer,
};

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One callback of one session.
#[derive(Debug, Clone)]
pub struct Event {
    /// The session the callback belongs to.
    pub id: SessionId,
    /// What happened.
    pub kind: EventKind,
    /// When the callback ran.
    pub at: Instant,
}

/// Which callback ran, with its arguments.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// `on_connected`; the handle lets a test talk to the session.
    Connected(SessionHandle),
    /// `on_received`, with a copy of the message.
    Received(Vec<u8>),
    /// `on_sent`, with a copy of the payload.
    Sent(Vec<u8>),
    /// `on_disconnected`, with the reason.
    Disconnected(DisconnectReason),
}

type ReplyFn = dyn Fn(&SessionHandle, &[u8]) + Send + Sync;
type ConnectFn = dyn Fn(&SessionHandle) + Send + Sync;

/// A [`Session`] that sends an [`Event`] for every callback, then runs the
/// configured reaction. Clone it in a listener's factory.
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Event>,
    on_message: Option<Arc<ReplyFn>>,
    on_connect: Option<Arc<ConnectFn>>,
    record_sent: bool,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("replies", &self.on_message.is_some())
            .field("on_connect", &self.on_connect.is_some())
            .field("record_sent", &self.record_sent)
            .finish()
    }
}

impl Recorder {
    /// A recorder that only records (no reply), and the events' receiver.
    pub fn new() -> (Recorder, Events) {
        let (tx, rx) = channel();
        (
            Recorder {
                tx,
                on_message: None,
                on_connect: None,
                record_sent: false,
            },
            Events::new(rx),
        )
    }

    /// Runs `f` after recording each received message.
    pub fn reply(mut self, f: impl Fn(&SessionHandle, &[u8]) + Send + Sync + 'static) -> Self {
        self.on_message = Some(Arc::new(f));
        self
    }

    /// Echoes every message back as it is.
    pub fn echo(self) -> Self {
        self.reply(|handle, message| {
            let _ = handle.send(message);
        })
    }

    /// Runs `f` after recording `on_connected`.
    pub fn on_connect(mut self, f: impl Fn(&SessionHandle) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Records `on_sent` too (off by default: it doubles the events).
    pub fn record_sent(mut self) -> Self {
        self.record_sent = true;
        self
    }

    fn record(&self, handle: &SessionHandle, kind: EventKind) {
        // The test may have stopped listening; that is not the session's
        // business.
        let _ = self.tx.send(Event {
            id: handle.id(),
            kind,
            at: Instant::now(),
        });
    }
}

impl Session for Recorder {
    fn on_connected(&mut self, handle: &SessionHandle) {
        self.record(handle, EventKind::Connected(handle.clone()));
        if let Some(f) = &self.on_connect {
            f(handle);
        }
    }

    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        self.record(handle, EventKind::Received(message.to_vec()));
        if let Some(f) = &self.on_message {
            f(handle, message);
        }
    }

    fn on_sent(&mut self, handle: &SessionHandle, message: &[u8]) {
        if self.record_sent {
            self.record(handle, EventKind::Sent(message.to_vec()));
        }
    }

    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        self.record(handle, EventKind::Disconnected(reason.clone()));
    }
}

/// The receiving end of a [`Recorder`]'s events; keeps every event seen.
#[derive(Debug)]
pub struct Events {
    rx: Receiver<Event>,
    seen: Vec<Event>,
}

impl Events {
    fn new(rx: Receiver<Event>) -> Events {
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// Takes every event already sent, without waiting.
    pub fn pump(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
    }

    /// Every event seen so far (after [`pump`](Self::pump)).
    pub fn seen(&mut self) -> &[Event] {
        self.pump();
        &self.seen
    }

    /// Waits up to `timeout` for an event matching `pred` (one seen before
    /// included) and returns the first such.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        self.pump();
        if let Some(event) = self.seen.iter().find(|e| pred(e)) {
            return Some(event.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    let hit = pred(&event);
                    self.seen.push(event.clone());
                    if hit {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// Waits for the session whose peer is `peer` (a client's local address)
    /// and returns its id and handle.
    pub fn connected_from(&mut self, peer: SocketAddr) -> (SessionId, SessionHandle) {
        let event = self
            .wait_for(
                TIMEOUT,
                |e| matches!(&e.kind, EventKind::Connected(h) if h.peer_addr() == peer),
            )
            .unwrap_or_else(|| panic!("no session connected from {peer} within {TIMEOUT:?}"));
        match event.kind {
            EventKind::Connected(handle) => (event.id, handle),
            _ => unreachable!(),
        }
    }

    /// Waits for any new session (the first `Connected` not in `skip`).
    pub fn next_connected(&mut self, skip: &[SessionId]) -> (SessionId, SessionHandle) {
        let event = self
            .wait_for(TIMEOUT, |e| {
                matches!(e.kind, EventKind::Connected(_)) && !skip.contains(&e.id)
            })
            .unwrap_or_else(|| panic!("no new session within {TIMEOUT:?}"));
        match event.kind {
            EventKind::Connected(handle) => (event.id, handle),
            _ => unreachable!(),
        }
    }

    /// Waits up to `timeout` for session `id` to end; its reason.
    pub fn disconnected(&mut self, id: SessionId, timeout: Duration) -> Option<DisconnectReason> {
        self.disconnected_at(id, timeout).map(|(reason, _)| reason)
    }

    /// Waits up to `timeout` for session `id` to end; its reason and when
    /// `on_disconnected` ran.
    pub fn disconnected_at(
        &mut self,
        id: SessionId,
        timeout: Duration,
    ) -> Option<(DisconnectReason, Instant)> {
        self.wait_for(timeout, |e| {
            e.id == id && matches!(e.kind, EventKind::Disconnected(_))
        })
        .map(|e| match e.kind {
            EventKind::Disconnected(reason) => (reason, e.at),
            _ => unreachable!(),
        })
    }

    /// Like [`disconnected`](Self::disconnected) with [`TIMEOUT`], failing
    /// the test if the session does not end.
    pub fn reason(&mut self, id: SessionId) -> DisconnectReason {
        self.disconnected(id, TIMEOUT)
            .unwrap_or_else(|| panic!("session {id} did not end within {TIMEOUT:?}"))
    }

    /// The events of session `id`, in order.
    pub fn of(&mut self, id: SessionId) -> Vec<EventKind> {
        self.pump();
        self.seen
            .iter()
            .filter(|e| e.id == id)
            .map(|e| e.kind.clone())
            .collect()
    }

    /// The messages session `id` received so far, in order.
    pub fn received(&mut self, id: SessionId) -> Vec<Vec<u8>> {
        self.of(id)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::Received(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Waits until session `id` has received `count` messages; returns them.
    pub fn wait_received(&mut self, id: SessionId, count: usize) -> Vec<Vec<u8>> {
        // `wait_for` shows `pred` every event once, those seen before included.
        let mut n = 0;
        self.wait_for(TIMEOUT, |e| {
            if e.id == id && matches!(e.kind, EventKind::Received(_)) {
                n += 1;
            }
            n >= count
        });
        self.received(id)
    }

    /// Asserts promise 1 for session `id`, which must have ended: one
    /// `on_connected`, first; one `on_disconnected`, last. Returns its reason.
    pub fn assert_lifecycle(&mut self, id: SessionId) -> DisconnectReason {
        let events = self.of(id);
        assert!(
            matches!(events.first(), Some(EventKind::Connected(_))),
            "session {id}: first event is not on_connected: {:?}",
            events.first()
        );
        let connects = events
            .iter()
            .filter(|k| matches!(k, EventKind::Connected(_)))
            .count();
        assert_eq!(
            connects, 1,
            "session {id}: on_connected ran {connects} times"
        );
        let disconnects = events
            .iter()
            .filter(|k| matches!(k, EventKind::Disconnected(_)))
            .count();
        assert_eq!(
            disconnects, 1,
            "session {id}: on_disconnected ran {disconnects} times"
        );
        match events.last() {
            Some(EventKind::Disconnected(reason)) => reason.clone(),
            other => panic!("session {id}: last event is not on_disconnected: {other:?}"),
        }
    }

    /// Ids of every session seen connecting, in order.
    pub fn session_ids(&mut self) -> Vec<SessionId> {
        self.pump();
        self.seen
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Connected(_)))
            .map(|e| e.id)
            .collect()
    }
}

/// A listener running in a spawned task.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Stops it.
    pub shutdown: ShutdownHandle,
    /// Its counters.
    pub stats: ListenerStatsHandle,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// Binds `addr` and runs a listener there in a spawned task.
pub fn start_server_on<S, F>(
    addr: SocketAddr,
    config: SessionConfig,
    factory: F,
) -> io::Result<Server>
where
    S: Session,
    F: FnMut() -> S + Clone + Send + 'static,
{
    start_listener(addr, config, None, None, factory)
}

/// Runs a TLS listener on `127.0.0.1:0` in a spawned task.
pub fn start_tls_server<S, F>(config: SessionConfig, tls: ServerTls, factory: F) -> Server
where
    S: Session,
    F: FnMut() -> S + Clone + Send + 'static,
{
    start_listener(
        "127.0.0.1:0".parse().unwrap(),
        config,
        Some(tls),
        None,
        factory,
    )
    .expect("bind a listener on 127.0.0.1:0")
}

/// Runs a WebSocket listener (over TLS with `tls`: `wss`) on
/// `127.0.0.1:0` in a spawned task.
pub fn start_websocket_server<S, F>(
    config: SessionConfig,
    websocket: WebSocketServer,
    tls: Option<ServerTls>,
    factory: F,
) -> Server
where
    S: Session,
    F: FnMut() -> S + Clone + Send + 'static,
{
    let addr = "127.0.0.1:0".parse().unwrap();
    start_listener(addr, config, tls, Some(websocket), factory)
        .expect("bind a listener on 127.0.0.1:0")
}

fn start_listener<S, F>(
    addr: SocketAddr,
    config: SessionConfig,
    tls: Option<ServerTls>,
    websocket: Option<WebSocketServer>,
    factory: F,
) -> io::Result<Server>
where
    S: Session,
    F: FnMut() -> S + Clone + Send + 'static,
{
    let mut listener = task::block_on(Listener::bind(&IpInformation::from(addr), config))?;
    if let Some(tls) = tls {
        listener = listener.with_tls(tls);
    }
    if let Some(websocket) = websocket {
        listener = listener.with_websocket(websocket);
    }
    let addr = listener.local_addr();
    let shutdown = listener.shutdown_handle();
    let stats = listener.stats_handle();
    let task = task::spawn(listener.run(factory));
    Ok(Server {
        addr,
        shutdown,
        stats,
        task: Some(task),
    })
}

/// Runs a listener on `127.0.0.1:0` in a spawned task.
pub fn start_server<S, F>(config: SessionConfig, factory: F) -> Server
where
    S: Session,
    F: FnMut() -> S + Clone + Send + 'static,
{
    start_server_on("127.0.0.1:0".parse().unwrap(), config, factory)
        .expect("bind a listener on 127.0.0.1:0")
}

impl Server {
    /// Asks for shutdown and waits up to `timeout` for `run` to return.
    pub fn stop(mut self, timeout: Duration) -> io::Result<()> {
        self.shutdown.shutdown();
        let task = self.task.take().expect("server task");
        task::block_on(async_std::future::timeout(timeout, task))
            .unwrap_or_else(|_| panic!("Listener::run did not return within {timeout:?}"))
    }

    /// Polls until the listener has no open session; false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.stats.get().active == 0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed half-way leaves no listener behind.
        self.shutdown.shutdown();
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number of open file descriptors of this process, where the OS tells
/// (Linux: the entries of `/proc/self/fd`).
pub fn open_fds() -> Option<usize> {
    // The directory handle itself is one entry while listing; it is counted
    // in every reading alike.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count())
}

/// Waits (bounded) for the fd count to come back to `baseline` and asserts
/// it did; does nothing where fds cannot be counted.
pub fn assert_fds_back_to(baseline: Option<usize>, timeout: Duration) {
    let Some(baseline) = baseline else {
        println!("note: cannot count open fds on this OS; skipping the leak check");
        return;
    };
    let mut now = open_fds();
    let back = wait_until(timeout, || {
        now = open_fds();
        now.is_some_and(|n| n <= baseline)
    });
    assert!(
        back,
        "open fds did not return to {baseline} within {timeout:?}: now {now:?}"
    );
}

/// A blocking loopback client with read and write timeouts of [`TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `n` bytes (fails the test on timeout or early end).
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {n} bytes: {e}"));
    buf
}

/// Reads until the peer closes (end of stream, or a reset, which is also a
/// close), at most `max` bytes; fails the test on a read timeout.
pub fn read_to_close(stream: &mut TcpStream, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                assert!(out.len() <= max, "more than {max} bytes before close");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => panic!("peer did not close: read timed out ({e})"),
            Err(_) => return out,
        }
    }
}

/// Asserts the peer closes the connection within `within`: a read returns
/// end of stream or an error other than a timeout.
pub fn assert_closed_within(stream: &mut TcpStream, within: Duration) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    // Bytes sent before the close may come first; bounded by count and time.
    for _ in 0..1024 {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => panic!("connection not closed within {within:?}"),
            Err(_) => return,
        }
        assert!(
            Instant::now() < deadline,
            "connection not closed within {within:?}"
        );
    }
    panic!("connection kept sending and was not closed");
}

/// Whether a socket error is a read or write timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Closes the write side, ignoring a connection already gone.
pub fn shutdown_write(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// `payload` framed as [`Framing::LengthPrefixed`](session_core::Framing):
/// a 2-byte little-endian size that counts itself.
pub fn lp(payload: &[u8]) -> Vec<u8> {
    let size = u16::try_from(payload.len() + 2).expect("payload fits a length-prefixed frame");
    let mut out = size.to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one length-prefixed frame; its payload.
pub fn read_lp(stream: &mut TcpStream) -> Vec<u8> {
    let header = read_n(stream, 2);
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    assert!(size >= 2, "peer sent a bad frame size {size}");
    read_n(stream, size - 2)
}

/// Reads one `\n`-terminated line (without the `\n`), byte by byte.
pub fn read_line(stream: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream
            .read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("read a line: {e} (got {line:?} so far)"));
        if byte[0] == b'\n' {
            return line;
        }
        line.push(byte[0]);
        assert!(line.len() <= 1 << 20, "line longer than 1 MiB");
    }
}

/// Writes `data` whole; fails the test on error.
pub fn write_all(stream: &mut TcpStream, data: &[u8]) {
    stream
        .write_all(data)
        .unwrap_or_else(|e| panic!("write {} bytes: {e}", data.len()));
}

/// A small deterministic PRNG (xorshift64*), so hostile input is the same
/// on every run.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo < hi);
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}
