//! One TLS connection over a socket, driven by the engine, with rustls's
//! unbuffered API: the session keeps no TLS buffer of its own while idle.
//!
//! - Ciphertext is read into a buffer of the thread's, where rustls
//!   decrypts it; only a record cut by the end of a read is kept, in the
//!   session (`incoming`), until its end arrives.
//! - Plaintext goes straight into the engine's read buffer; what does not
//!   fit waits in `plaintext`.
//! - Records are made in a buffer of the thread's and written at once;
//!   only what the socket did not take is kept (`outgoing`), at most one
//!   write's worth ([`MAX_WRITE`] of plaintext).
//!
//! With rustls's buffered `Connection`, each session held a 4 KiB read
//! buffer for its whole life, and a larger future with the handshake's
//! state; an idle TLS session holds about a third of that now (README,
//! Benchmarks).

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{CommonState, unbuffered::UnbufferedConnectionCommon};

use super::{TlsInfo, tls_error};

/// Plaintext taken by one write at most: one full record. What the socket
/// does not take of its records waits in the session; the rest of the
/// engine's queue stays where it is counted.
pub(super) const MAX_WRITE: usize = 16 * 1024;

/// Ciphertext read at once at least (a full record and its header).
const MIN_READ: usize = 16 * 1024 + 512;

thread_local! {
    /// Ciphertext being read or written on this thread.
    static CIPHERTEXT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Plaintext of a vectored write, gathered into one piece.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The name a client asked for, seen by [`RecordSni`] during the
    /// handshake step running on this thread.
    static SNI: Cell<Option<Box<str>>> = const { Cell::new(None) };
}

/// Runs `f` with a buffer of the thread's (a fresh one if it is in use).
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// The server's certificate resolver, which also notes the name the client
/// asked for (SNI): rustls's unbuffered server connection does not tell it.
#[derive(Debug)]
pub(super) struct RecordSni(pub(super) Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for RecordSni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        SNI.set(hello.server_name().map(Box::from));
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// The server and client connections of rustls's unbuffered API, as one.
trait Records: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

pub(super) enum Conn {
    Server(Box<UnbufferedServerConnection>),
    Client(Box<UnbufferedClientConnection>),
}

impl Conn {
    fn common(&self) -> &CommonState {
        match self {
            Conn::Server(conn) => conn,
            Conn::Client(conn) => conn,
        }
    }
}

/// Where the plaintext of one pass goes: the engine's buffer first, the
/// rest (in order) into the session's `plaintext`.
struct Sink<'a> {
    buf: &'a mut [u8],
    filled: usize,
    overflow: &'a mut Vec<u8>,
}

impl Sink<'_> {
    fn put(&mut self, data: &[u8]) {
        let n = if self.overflow.is_empty() {
            data.len().min(self.buf.len() - self.filled)
        } else {
            0
        };
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        self.overflow.extend_from_slice(&data[n..]);
    }
}

/// Ciphertext made by one pass: `buf[..len]`; the bytes past `len` are
/// room (initialised, so rustls can write into them).
struct Out<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl Out<'_> {
    /// Runs `make` on the room after `len`, growing it to the size rustls
    /// asks for until the record fits.
    fn make(
        &mut self,
        mut make: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
    ) -> Result<(), ()> {
        loop {
            if self.buf.len() < self.len + 64 {
                self.buf.resize(self.len + 64, 0);
            }
            match make(&mut self.buf[self.len..]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(Some(required)) => self.buf.resize(self.len + required, 0),
                Err(None) => return Err(()),
            }
        }
    }
}

/// What one pass asks of rustls beyond reading.
#[derive(Default)]
struct Ask<'a> {
    /// Plaintext to encrypt once the connection may send it.
    write: Option<&'a [u8]>,
    /// Send `close_notify`.
    close: bool,
}

/// Where a pass stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more of the peer's bytes.
    Blocked,
    /// The connection may send data (what was asked is done).
    Open,
    /// Both sides sent `close_notify`.
    Closed,
}

/// One pass over `incoming`: processes every whole record, puts plaintext
/// into `sink` and records to send into `out`, and does what `ask` asks
/// once it may. Returns where it stopped, the bytes of `incoming` used,
/// and whether the peer's `close_notify` came.
fn pass<C: Records>(
    conn: &mut C,
    incoming: &mut [u8],
    sink: &mut Sink<'_>,
    out: &mut Out<'_>,
    mut ask: Ask<'_>,
    peer_closed: &mut bool,
) -> Result<(Stop, usize), (rustls::Error, usize)> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.records(&mut incoming[used..]);
        let mut discard = discard;
        let state = match state {
            Ok(state) => state,
            Err(e) => return Err((e, used + discard)),
        };
        let stop = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            sink.put(record.payload);
                        }
                        Err(e) => return Err((e, used + discard)),
                    }
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                out.make(|room| match encode.encode(room) {
                    Ok(n) => Ok(n),
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        Err(Some(required_size))
                    }
                    Err(EncodeError::AlreadyEncoded) => Ok(0),
                })
                .map_err(|()| {
                    let e = rustls::Error::General("TLS record not encoded".into());
                    (e, used + discard)
                })?;
                None
            }
            // The records are in `out`, which is written before anything
            // made later.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                None
            }
            ConnectionState::Closed => Some(Stop::Closed),
            ConnectionState::BlockedHandshake => Some(Stop::Blocked),
            ConnectionState::WriteTraffic(mut traffic) => {
                if let Some(data) = ask.write.take() {
                    out.make(|room| match traffic.encrypt(data, room) {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(Some(required_size)),
                        Err(_) => Err(None),
                    })
                    .map_err(|()| (rustls::Error::EncryptError, used + discard))?;
                }
                if std::mem::take(&mut ask.close) {
                    out.make(|room| match traffic.queue_close_notify(room) {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(Some(required_size)),
                        Err(_) => Err(None),
                    })
                    .map_err(|()| (rustls::Error::EncryptError, used + discard))?;
                }
                Some(Stop::Open)
            }
            // Early data is never enabled here.
            _ => {
                let e = rustls::Error::General("unexpected TLS early data".into());
                return Err((e, used + discard));
            }
        };
        used += discard;
        if let Some(stop) = stop {
            return Ok((stop, used));
        }
    }
}

/// Why reading ciphertext failed: the socket, or the peer's TLS.
enum ReadError {
    Io(io::Error),
    Tls(rustls::Error),
}

/// After a TLS error: puts the alert rustls queued for the peer (if any)
/// into `out`. rustls hands queued records out before it reads further,
/// and it is not called again after this (it would read the bytes that
/// failed once more).
fn alert<C: Records>(conn: &mut C, incoming: &mut [u8], sink: &mut Sink<'_>, out: &mut Out<'_>) {
    // Plaintext that came before the error is handed out first.
    for _ in 0..2 {
        match conn.records(incoming).state {
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(Ok(record)) = traffic.next_record() {
                    sink.put(record.payload);
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let _ = out.make(|room| match encode.encode(room) {
                    Ok(n) => Ok(n),
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        Err(Some(required_size))
                    }
                    Err(EncodeError::AlreadyEncoded) => Ok(0),
                });
                return;
            }
            _ => return,
        }
    }
}

/// A byte stream with TLS over `io`: what the engine reads is plaintext,
/// what it writes is encrypted.
pub(crate) struct TlsStream<T> {
    io: T,
    conn: Conn,
    /// The start of a record whose end has not come yet.
    incoming: Vec<u8>,
    /// Plaintext decrypted that the engine's buffer had no room for.
    plaintext: Vec<u8>,
    /// Records made that the socket has not taken yet.
    outgoing: Vec<u8>,
    /// The peer's `close_notify` came.
    peer_closed: bool,
    /// Our `close_notify` was made.
    closing: bool,
    /// rustls failed: it is not given bytes again.
    failed: bool,
    /// The name the client asked for (servers, during the handshake).
    sni: Option<Box<str>>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsStream<T> {
    pub(super) fn new(io: T, conn: Conn) -> TlsStream<T> {
        TlsStream {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
            closing: false,
            failed: false,
            sni: None,
        }
    }

    /// Runs one pass over `incoming` with the connection, whichever side
    /// it is. After a TLS error, a second pass over the same bytes makes
    /// the alert rustls has for the peer (into `out`), and the stream
    /// fails from then on: rustls must not see other bytes.
    fn pass(
        &mut self,
        incoming: &mut [u8],
        sink: &mut Sink<'_>,
        out: &mut Out<'_>,
        ask: Ask<'_>,
    ) -> Result<(Stop, usize), rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General(
                "the TLS connection failed earlier".into(),
            ));
        }
        let peer_closed = &mut self.peer_closed;
        let result = match &mut self.conn {
            Conn::Server(conn) => {
                let result = pass(&mut **conn, incoming, sink, out, ask, peer_closed);
                let result = result.map_err(|(e, used)| {
                    alert(&mut **conn, &mut incoming[used..], sink, out);
                    e
                });
                if let Some(name) = SNI.take() {
                    self.sni = Some(name);
                }
                result
            }
            Conn::Client(conn) => {
                pass(&mut **conn, incoming, sink, out, ask, peer_closed).map_err(|(e, used)| {
                    let _ = pass(
                        &mut **conn,
                        &mut incoming[used..],
                        sink,
                        out,
                        Ask::default(),
                        peer_closed,
                    );
                    e
                })
            }
        };
        self.failed = result.is_err();
        result
    }

    /// Writes `outgoing`; `Ready(Ok)` once it is all written.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let result = loop {
            if written == self.outgoing.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.outgoing[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if written == self.outgoing.len() {
            // Nothing waits: the session holds no buffer.
            self.outgoing = Vec::new();
        } else {
            self.outgoing.drain(..written);
        }
        result
    }

    /// Writes `out`'s records after anything still waiting; keeps what the
    /// socket does not take.
    fn send_made(&mut self, cx: &mut Context<'_>, made: &[u8]) -> io::Result<()> {
        let mut written = 0;
        if self.outgoing.is_empty() {
            while written < made.len() {
                match Pin::new(&mut self.io).poll_write(cx, &made[written..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.outgoing.extend_from_slice(&made[written..]);
        Ok(())
    }

    /// Reads ciphertext once and processes it with what was kept from
    /// before; plaintext goes to `buf` (then `plaintext`). `Ready(Ok(n))`
    /// with the ciphertext bytes read, 0 at the end of the stream. A TLS
    /// error sends its alert (if the socket takes it) and fails.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> Poll<io::Result<usize>> {
        let result = with_buffer(&CIPHERTEXT, |scratch| {
            let kept = self.incoming.len();
            let want = kept + MIN_READ.max(buf.len());
            if scratch.len() < want {
                scratch.resize(want, 0);
            }
            scratch[..kept].copy_from_slice(&self.incoming);
            let n = match Pin::new(&mut self.io).poll_read(cx, &mut scratch[kept..want]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                Poll::Pending => return Poll::Pending,
            };
            let mut plaintext = std::mem::take(&mut self.plaintext);
            let mut outgoing = std::mem::take(&mut self.outgoing);
            let mut out = Out {
                len: outgoing.len(),
                buf: &mut outgoing,
            };
            let mut sink = Sink {
                buf: &mut *buf,
                filled: *filled,
                overflow: &mut plaintext,
            };
            let result = self.pass(
                &mut scratch[..kept + n],
                &mut sink,
                &mut out,
                Ask::default(),
            );
            *filled = sink.filled;
            let len = out.len;
            outgoing.truncate(len);
            self.outgoing = outgoing;
            self.plaintext = plaintext;
            let used = match result {
                Ok((_, used)) => used,
                Err(e) => return Poll::Ready(Err(ReadError::Tls(e))),
            };
            // Keep only the cut record; nothing at all when none is cut.
            let rest = &scratch[used..kept + n];
            if rest.is_empty() {
                self.incoming = Vec::new();
            } else {
                self.incoming.clear();
                self.incoming.extend_from_slice(rest);
            }
            Poll::Ready(Ok(n))
        });
        match result {
            Poll::Ready(Err(ReadError::Tls(e))) => {
                // The alert for the peer, if the socket takes it.
                let _ = self.poll_flush_tls(cx);
                Poll::Ready(Err(tls_error(e)))
            }
            Poll::Ready(Err(ReadError::Io(e))) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes over what is kept (no new bytes): makes the first flight of
    /// a client, or the records `ask` asks for. The records made are
    /// written, or kept for later.
    fn poll_pass_kept(&mut self, cx: &mut Context<'_>, ask: Ask<'_>) -> io::Result<Stop> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut plaintext = std::mem::take(&mut self.plaintext);
        let result = with_buffer(&CIPHERTEXT, |scratch| {
            let mut out = Out {
                buf: scratch,
                len: 0,
            };
            let mut sink = Sink {
                buf: &mut [],
                filled: 0,
                overflow: &mut plaintext,
            };
            let result = self.pass(&mut incoming, &mut sink, &mut out, ask);
            let len = out.len;
            let sent = self.send_made(cx, &scratch[..len]);
            result.map(|stop| (stop, sent))
        });
        self.plaintext = plaintext;
        match result {
            Ok(((stop, used), sent)) => {
                incoming.drain(..used);
                self.incoming = incoming;
                sent?;
                Ok(stop)
            }
            // The alert for the peer went with the records made.
            Err(e) => Err(tls_error(e)),
        }
    }

    /// Runs the handshake to its end, reading at most `max_bytes` of the
    /// peer's.
    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        read: &mut usize,
        max_bytes: usize,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.poll_pass_kept(cx, Ask::default())? != Stop::Blocked {
                // The last flight goes out now if the socket takes it,
                // else with the first write or read.
                let _ = self.poll_flush_tls(cx)?;
                return Poll::Ready(Ok(()));
            }
            let _ = self.poll_flush_tls(cx)?;
            let mut filled = 0;
            match self.poll_read_tls(cx, &mut [], &mut filled)? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    )));
                }
                Poll::Ready(n) => {
                    *read += n;
                    if *read > max_bytes {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS handshake over {max_bytes} bytes"),
                        )));
                    }
                }
            }
        }
    }

    /// Bytes of buffers the session holds (the tests check that an idle
    /// session holds none).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// What the handshake settled.
    pub(super) fn info(&mut self) -> TlsInfo {
        let common = self.conn.common();
        TlsInfo {
            protocol: common.protocol_version(),
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: common
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            server_name: self.sni.take().map(String::from),
        }
    }

    pub(super) async fn handshake(&mut self, limits: super::Limits) -> io::Result<()> {
        let mut read = 0;
        let done = crate::rt::timeout(
            limits.timeout,
            std::future::poll_fn(|cx| self.poll_handshake(cx, &mut read, limits.max_bytes)),
        )
        .await;
        done.unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake not done within {:?}", limits.timeout),
            ))
        })
    }

    /// Takes up to [`MAX_WRITE`] bytes of `bufs`, encrypted and written (or
    /// kept if the socket is full); `Pending` while records of an earlier
    /// write still wait for the socket.
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if first.len() >= MAX_WRITE || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
            let data = &first[..first.len().min(MAX_WRITE)];
            let stop = self.poll_pass_kept(
                cx,
                Ask {
                    write: Some(data),
                    close: false,
                },
            )?;
            return Poll::Ready(written(stop, data.len()));
        }
        with_buffer(&GATHER, |gather| {
            gather.clear();
            for buf in bufs {
                let room = MAX_WRITE - gather.len();
                if room == 0 {
                    break;
                }
                gather.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            let stop = self.poll_pass_kept(
                cx,
                Ask {
                    write: Some(gather),
                    close: false,
                },
            )?;
            Poll::Ready(written(stop, gather.len()))
        })
    }
}

/// A write's outcome: `len` bytes taken if the connection could send
/// them.
fn written(stop: Stop, len: usize) -> io::Result<usize> {
    match stop {
        Stop::Open => Ok(len),
        Stop::Blocked => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "TLS handshake not finished",
        )),
        Stop::Closed => Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "TLS connection closed by both sides",
        )),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Records a write left behind (the socket was full) go out first.
        if !this.outgoing.is_empty() {
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            if !this.plaintext.is_empty() {
                let n = buf.len().min(this.plaintext.len());
                buf[..n].copy_from_slice(&this.plaintext[..n]);
                if n == this.plaintext.len() {
                    this.plaintext = Vec::new();
                } else {
                    this.plaintext.drain(..n);
                }
                return Poll::Ready(Ok(n));
            }
            if this.peer_closed || buf.is_empty() {
                // 0: the peer's close_notify.
                return Poll::Ready(Ok(0));
            }
            let mut filled = 0;
            match this.poll_read_tls(cx, buf, &mut filled) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed without TLS close_notify",
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            // Answers the peer may need (a key update) go out at once.
            if !this.outgoing.is_empty() {
                if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_write_some(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_write_some(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && !this.failed {
            if this.poll_flush_tls(cx)?.is_pending() {
                return Poll::Pending;
            }
            this.closing = true;
            this.poll_pass_kept(
                cx,
                Ask {
                    write: None,
                    close: true,
                },
            )?;
        }
        match this.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_close(cx),
            other => other,
        }
    }
}
