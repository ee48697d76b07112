//! WebSocket (RFC 6455) as a layer of the same engine: the HTTP/1.1
//! upgrade before the session starts, then frames in and out.
//!
//! The upgrade is a step of the listener's prelude (after the PROXY header
//! and TLS) and of the connector's attempt, with its own deadline and
//! limits. After it the engine runs with [`Framing::WebSocket`]: each
//! whole message (fragments joined) is one
//! [`Session::on_message`](crate::Session::on_message), pings are
//! answered, and the close handshake maps close codes to and from
//! [`DisconnectReason`]. Everything here is sans-IO except the two
//! handshake functions, which read and write a stream they are lent.
//!
//! A plain TCP or TLS session pays nothing for this: the decoder's state
//! lives in a box only WebSocket sessions have.
//!
//! [`Framing::WebSocket`]: crate::Framing::WebSocket

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha1::{Digest, Sha1};

use crate::session::DisconnectReason;

/// Continuation of a fragmented message.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// A text message (or its first fragment).
pub(crate) const OP_TEXT: u8 = 0x1;
/// A binary message (or its first fragment).
pub(crate) const OP_BINARY: u8 = 0x2;
/// The close handshake.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// A ping, answered with a pong of the same payload.
pub(crate) const OP_PING: u8 = 0x9;
/// A pong.
pub(crate) const OP_PONG: u8 = 0xA;

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A reassembly buffer larger than this is freed once its message is
/// delivered.
const KEEP_MESSAGE: usize = 16 * 1024;

/// Which kind of WebSocket message: the opcode of its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message: its bytes are valid UTF-8 (the engine checks it
    /// once the message is whole, and closes with 1007 if not).
    Text,
    /// A binary message.
    Binary,
}

impl MessageKind {
    pub(crate) fn opcode(self) -> u8 {
        match self {
            MessageKind::Text => OP_TEXT,
            MessageKind::Binary => OP_BINARY,
        }
    }
}

/// Why bytes a WebSocket peer sent break RFC 6455. Each closes the session
/// with the close code [`close_code`](Self::close_code) gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSocketError {
    /// A reserved bit (RSV1-3) is set, and no extension was agreed.
    ReservedBits(u8),
    /// A client's frame is not masked.
    UnmaskedClientFrame,
    /// A server's frame is masked.
    MaskedServerFrame,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame (close, ping, pong) without its FIN bit.
    FragmentedControl,
    /// A control frame whose payload is over 125 bytes.
    ControlTooLong,
    /// A continuation frame with no fragmented message to continue.
    UnexpectedContinuation,
    /// A new text or binary message before the last fragment of the
    /// previous one.
    UnfinishedMessage,
    /// A close frame with a one-byte payload (a code is two bytes).
    BadClosePayload,
    /// A close code a peer may not send (RFC 6455 section 7.4).
    BadCloseCode(u16),
    /// A text message, or a close frame's reason, that is not UTF-8.
    InvalidUtf8,
    /// A message, or the fragments of one so far, longer than the
    /// session's `max_frame_len` (said by a frame's header, before any of
    /// its payload is held).
    TooLarge {
        /// The length the headers announce.
        len: u64,
        /// The session's maximum.
        max: usize,
    },
}

impl WebSocketError {
    /// The close code this side sends for the error: 1007 for invalid
    /// UTF-8, 1009 for a message too large, 1002 (protocol error) for the
    /// rest.
    pub fn close_code(&self) -> u16 {
        match self {
            WebSocketError::InvalidUtf8 => 1007,
            WebSocketError::TooLarge { .. } => 1009,
            _ => 1002,
        }
    }
}

impl fmt::Display for WebSocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebSocketError::ReservedBits(bits) => write!(
                f,
                "reserved bits {bits:#05b} set without an extension that defines them"
            ),
            WebSocketError::UnmaskedClientFrame => f.write_str("a client frame is not masked"),
            WebSocketError::MaskedServerFrame => f.write_str("a server frame is masked"),
            WebSocketError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            WebSocketError::FragmentedControl => f.write_str("a control frame is fragmented"),
            WebSocketError::ControlTooLong => {
                f.write_str("a control frame's payload is over 125 bytes")
            }
            WebSocketError::UnexpectedContinuation => {
                f.write_str("a continuation frame without a message to continue")
            }
            WebSocketError::UnfinishedMessage => {
                f.write_str("a new message before the previous one's last fragment")
            }
            WebSocketError::BadClosePayload => f.write_str("a close frame of one byte"),
            WebSocketError::BadCloseCode(code) => write!(f, "close code {code} is not allowed"),
            WebSocketError::InvalidUtf8 => f.write_str("a text message is not valid UTF-8"),
            WebSocketError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes is larger than the maximum of {max}"
                )
            }
        }
    }
}

impl std::error::Error for WebSocketError {}

/// Whether a peer may send `code` in a close frame.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What one frame said, for the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum WebSocketEvent<'a> {
    /// A whole message (a single frame, or the last fragment of one).
    Message(MessageKind, &'a [u8]),
    /// A ping with its payload: answer with a pong of the same.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer starts (or answers) the close handshake.
    Close {
        /// Its code, if it gave one.
        code: Option<u16>,
        /// Its reason, UTF-8.
        reason: &'a str,
    },
}

/// Cuts WebSocket frames out of a byte stream, sans-IO: unmasks them in
/// place, joins fragments into one message, and checks every rule of
/// RFC 6455 that a receiver must (masking by role, reserved bits,
/// opcodes, control frames, lengths, UTF-8).
///
/// ```
/// use session_core::{MessageKind, WebSocketDecoder, WebSocketEvent};
///
/// // As a client: a server's unmasked "hi" in two fragments.
/// let mut decoder = WebSocketDecoder::new(false, 1024);
/// let mut wire = b"\x01\x01h\x80\x01i".to_vec();
/// let (used, event) = decoder.decode(&mut wire).unwrap().unwrap();
/// assert_eq!((used, event), (3, None));
/// let (used, event) = decoder.decode(&mut wire[3..]).unwrap().unwrap();
/// assert_eq!(used, 3);
/// assert_eq!(event, Some(WebSocketEvent::Message(MessageKind::Text, b"hi")));
/// ```
#[derive(Debug)]
pub struct WebSocketDecoder {
    /// Frames come from a client (must be masked), else from a server.
    server: bool,
    max: usize,
    /// The fragments of a message so far.
    message: Vec<u8>,
    /// The kind of the fragmented message being joined.
    kind: Option<MessageKind>,
    /// `message` was handed out whole: clear it on the next call.
    delivered: bool,
}

struct Head {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header: usize,
    len: usize,
}

impl WebSocketDecoder {
    /// A decoder for the server side (`server`: frames must be masked) or
    /// the client side (frames must not be), for messages of at most
    /// `max_message_len` bytes.
    pub fn new(server: bool, max_message_len: usize) -> WebSocketDecoder {
        WebSocketDecoder {
            server,
            max: max_message_len,
            message: Vec::new(),
            kind: None,
            delivered: false,
        }
    }

    /// Decodes the first frame at the start of `buf`, unmasking its
    /// payload in place.
    ///
    /// `Ok(None)`: `buf` does not hold a whole frame yet (keep it and add
    /// to it). `Ok(Some((used, event)))`: the frame took `used` bytes;
    /// `event` is `None` for a fragment that does not end its message.
    /// An error can never become valid: close with its
    /// [`close_code`](WebSocketError::close_code). A frame's length is
    /// checked against the maximum from its header alone, before anything
    /// is held for it.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<WebSocketEvent<'a>>)>, WebSocketError> {
        self.settle();
        let Some(head) = self.parse_head(buf)? else {
            return Ok(None);
        };
        // No overflow: `len` is at most `max` (or 125), `header` 14.
        let total = head.header + head.len;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &mut buf[head.header..total];
        if let Some(mask) = head.mask {
            apply_mask(payload, mask);
        }
        let event = match head.opcode {
            OP_TEXT | OP_BINARY => {
                let kind = if head.opcode == OP_TEXT {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if head.fin {
                    check_utf8(kind, payload)?;
                    Some(WebSocketEvent::Message(kind, payload))
                } else {
                    self.append(payload);
                    self.kind = Some(kind);
                    None
                }
            }
            OP_CONTINUATION => {
                self.append(payload);
                match self.kind {
                    Some(kind) if head.fin => {
                        self.kind = None;
                        self.delivered = true;
                        check_utf8(kind, &self.message)?;
                        Some(WebSocketEvent::Message(kind, &self.message))
                    }
                    _ => None,
                }
            }
            OP_PING => Some(WebSocketEvent::Ping(payload)),
            OP_PONG => Some(WebSocketEvent::Pong(payload)),
            OP_CLOSE => Some(parse_close(payload)?),
            op => return Err(WebSocketError::UnknownOpcode(op)),
        };
        Ok(Some((total, event)))
    }

    /// Adds a fragment to the message being joined: the buffer doubles as
    /// a `Vec` does, but never past the maximum (the header check made
    /// sure the message fits in it).
    fn append(&mut self, fragment: &[u8]) {
        let message = &mut self.message;
        let need = message.len() + fragment.len();
        if need > message.capacity() {
            let grown = (message.capacity() * 2).clamp(need, self.max.max(need));
            message.reserve_exact(grown - message.len());
        }
        message.extend_from_slice(fragment);
    }

    /// Frees a message handed out whole (a large buffer goes back to the
    /// allocator): call it when done with the events of a read.
    pub fn settle(&mut self) {
        if self.delivered {
            self.delivered = false;
            self.message.clear();
            if self.message.capacity() > KEEP_MESSAGE {
                self.message = Vec::new();
            }
        }
    }

    /// Bytes held for a fragmented message not yet whole.
    pub fn buffered(&self) -> usize {
        if self.delivered {
            0
        } else {
            self.message.len()
        }
    }

    fn parse_head(&self, buf: &[u8]) -> Result<Option<Head>, WebSocketError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let rsv = (b0 >> 4) & 0x7;
        if rsv != 0 {
            return Err(WebSocketError::ReservedBits(rsv));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        if self.server && !masked {
            return Err(WebSocketError::UnmaskedClientFrame);
        }
        if !self.server && masked {
            return Err(WebSocketError::MaskedServerFrame);
        }
        let in_message = self.kind.is_some();
        match opcode {
            OP_CONTINUATION if !in_message => return Err(WebSocketError::UnexpectedContinuation),
            OP_TEXT | OP_BINARY if in_message => return Err(WebSocketError::UnfinishedMessage),
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WebSocketError::FragmentedControl);
                }
                if b1 & 0x7F > 125 {
                    return Err(WebSocketError::ControlTooLong);
                }
            }
            op => return Err(WebSocketError::UnknownOpcode(op)),
        }
        let Some((len, mut header)) = payload_len(buf) else {
            return Ok(None);
        };
        if opcode < OP_CLOSE {
            let whole = (self.buffered() as u64).saturating_add(len);
            if whole > self.max as u64 {
                return Err(WebSocketError::TooLarge {
                    len: whole,
                    max: self.max,
                });
            }
        }
        let mask = if masked {
            let Some(b) = buf.get(header..header + 4) else {
                return Ok(None);
            };
            header += 4;
            Some([b[0], b[1], b[2], b[3]])
        } else {
            None
        };
        Ok(Some(Head {
            fin,
            opcode,
            mask,
            header,
            // At most `max` (a usize) or 125.
            len: len as usize,
        }))
    }
}

fn check_utf8(kind: MessageKind, message: &[u8]) -> Result<(), WebSocketError> {
    if kind == MessageKind::Text && std::str::from_utf8(message).is_err() {
        return Err(WebSocketError::InvalidUtf8);
    }
    Ok(())
}

fn parse_close(payload: &[u8]) -> Result<WebSocketEvent<'_>, WebSocketError> {
    match payload {
        [] => Ok(WebSocketEvent::Close {
            code: None,
            reason: "",
        }),
        [_] => Err(WebSocketError::BadClosePayload),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(WebSocketError::BadCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WebSocketError::InvalidUtf8)?;
            Ok(WebSocketEvent::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// The payload length in the frame header at the start of `buf` (at least
/// its first two bytes) and the header's length without a mask key;
/// `None` until the extended length's bytes are there.
pub(crate) fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    match buf[1] & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([b[0], b[1]])), 4))
        }
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(buf.get(2..10)?);
            Some((u64::from_be_bytes(be), 10))
        }
        short => Some((u64::from(short), 2)),
    }
}

/// XORs `data` with `mask`, the first byte with `mask[0]`.
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The chunks were multiples of 4 bytes: the rest starts at mask[0].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The bytes of a frame header for a payload of `len` bytes.
#[inline]
pub(crate) fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    };
    if masked { base + 4 } else { base }
}

/// Appends one whole frame (FIN set) of `opcode` holding `parts` end to
/// end (`len` bytes), masked with `mask` if given.
pub(crate) fn write_frame(
    out: &mut Vec<u8>,
    opcode: u8,
    parts: &[&[u8]],
    len: usize,
    mask: Option<[u8; 4]>,
) {
    write_header(out, opcode, len, mask);
    let start = out.len();
    for part in parts {
        out.extend_from_slice(part);
    }
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// Appends a frame header (FIN set).
pub(crate) fn write_header(
    out: &mut impl bytes::BufMut,
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.put_u8(0x80 | opcode);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(bit | len as u8);
    } else if len <= 0xFFFF {
        out.put_u8(bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(bit | 127);
        out.put_u64(len as u64);
    }
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
}

/// Where the payload of an unmasked frame of `frame_len` bytes starts.
pub(crate) fn unmasked_header_len(frame_len: usize) -> usize {
    // Payloads of 126 and 127 bytes take 4 header bytes: no frame is 128
    // or 129 bytes long.
    if frame_len <= 127 {
        2
    } else if frame_len <= 0xFFFF + 4 {
        4
    } else {
        10
    }
}

/// The payload of one whole frame this side wrote, unmasked, for
/// `on_sent`; `None` for a control frame (a pong, a close), which the user
/// did not send.
pub(crate) fn sent_payload(frame: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let [b0, b1, ..] = *frame else {
        return None;
    };
    if b0 & 0x0F >= OP_CLOSE {
        return None;
    }
    let mut header = match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    if b1 & 0x80 == 0 {
        return frame.get(header..).map(std::borrow::Cow::Borrowed);
    }
    let mask = frame.get(header..header + 4)?;
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    header += 4;
    let mut payload = frame.get(header..)?.to_vec();
    apply_mask(&mut payload, mask);
    Some(std::borrow::Cow::Owned(payload))
}

/// The payload of a close frame with `code` and `reason` (cut to fit 125
/// bytes at a character boundary).
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// The close frame payload this side sends when a session ends for
/// `reason`: `None` when no close frame goes out (the peer is gone or does
/// not read), `Some(empty)` to answer a close that had no code.
pub(crate) fn close_for(reason: &DisconnectReason) -> Option<Vec<u8>> {
    let (code, text) = match reason {
        DisconnectReason::WebSocketClose { code: None, .. } => return Some(Vec::new()),
        DisconnectReason::WebSocketClose {
            code: Some(code), ..
        } => (*code, ""),
        DisconnectReason::LocalClose => (1000, ""),
        DisconnectReason::Shutdown => (1001, "shutdown"),
        DisconnectReason::Idle => (1001, "idle timeout"),
        DisconnectReason::FrameTooLarge { .. } => (1009, "message too large"),
        DisconnectReason::WebSocket(e) => (e.close_code(), ""),
        DisconnectReason::BadFrame(_) => (1002, ""),
        DisconnectReason::Panicked(_) => (1011, "internal error"),
        DisconnectReason::PeerClosed
        | DisconnectReason::Io(_)
        | DisconnectReason::SlowConsumer
        | DisconnectReason::Truncated => return None,
    };
    if let DisconnectReason::WebSocket(e) = reason {
        return Some(close_payload(code, &e.to_string()));
    }
    Some(close_payload(code, text))
}

/// The `Sec-WebSocket-Accept` value for a client's key.
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

thread_local! {
    /// A xorshift64* state per thread, seeded from std's random hasher
    /// keys: masking keys need to be unpredictable to a page's script, not
    /// cryptographically strong (RFC 6455 section 10.3).
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    state.hash_one(std::time::Instant::now()) | 1
}

fn random_u64() -> u64 {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A fresh masking key.
pub(crate) fn mask_key() -> [u8; 4] {
    let bytes = random_u64().to_ne_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// What the upgrade settled, for a WebSocket session: see
/// [`SessionHandle::websocket`](crate::SessionHandle::websocket).
#[derive(Debug, Clone)]
pub struct WebSocketInfo {
    path: String,
    subprotocol: Option<String>,
    origin: Option<String>,
    client: bool,
}

impl WebSocketInfo {
    /// The request's target: path and query, as the client sent it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The subprotocol both sides agreed on, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The request's `Origin` header (a browser sends it), if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Whether this side is the client (its frames are masked).
    pub fn is_client(&self) -> bool {
        self.client
    }
}

/// Which request paths a [`WebSocketServer`] accepts.
#[derive(Clone)]
enum PathRule {
    Any,
    Exact(String),
    Filter(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

/// The server side of WebSocket, for
/// [`Listener::with_websocket`](crate::Listener::with_websocket): which
/// paths, origins and subprotocols it accepts.
///
/// ```
/// use session_core::WebSocketServer;
///
/// let ws = WebSocketServer::new()
///     .path("/chat")
///     .allowed_origins(["https://example.com"])
///     .subprotocols(["chat.v2", "chat.v1"]);
/// # let _ = ws;
/// ```
#[derive(Clone)]
pub struct WebSocketServer {
    path: PathRule,
    origins: Option<Vec<String>>,
    subprotocols: Vec<String>,
}

impl Default for WebSocketServer {
    fn default() -> Self {
        WebSocketServer::new()
    }
}

impl fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match &self.path {
            PathRule::Any => "any".to_owned(),
            PathRule::Exact(path) => path.clone(),
            PathRule::Filter(_) => "a filter".to_owned(),
        };
        f.debug_struct("WebSocketServer")
            .field("path", &path)
            .field("origins", &self.origins)
            .field("subprotocols", &self.subprotocols)
            .finish()
    }
}

impl WebSocketServer {
    /// Accepts an upgrade on any path, from any origin, with no
    /// subprotocol.
    pub fn new() -> WebSocketServer {
        WebSocketServer {
            path: PathRule::Any,
            origins: None,
            subprotocols: Vec::new(),
        }
    }

    /// Accepts only requests for `path` (the query string aside); others
    /// get `404 Not Found`.
    pub fn path(mut self, path: &str) -> WebSocketServer {
        self.path = PathRule::Exact(path.to_owned());
        self
    }

    /// Accepts only requests whose path (the query string aside) `accept`
    /// says yes to; others get `404 Not Found`.
    pub fn path_filter(
        mut self,
        accept: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> WebSocketServer {
        self.path = PathRule::Filter(Arc::new(accept));
        self
    }

    /// Accepts browsers only from these origins (such as
    /// `https://example.com`, compared without regard to case); a request
    /// from another origin gets `403 Forbidden`. A request without an
    /// `Origin` header (not a browser) is accepted.
    pub fn allowed_origins<I, O>(mut self, origins: I) -> WebSocketServer
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// The subprotocols this server speaks, best first: of those the client
    /// offers, the first in this list is chosen. A client that offers none
    /// of them is served without a subprotocol.
    pub fn subprotocols<I, P>(mut self, protocols: I) -> WebSocketServer
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    fn path_ok(&self, target: &str) -> bool {
        let path = target.split('?').next().unwrap_or("");
        match &self.path {
            PathRule::Any => true,
            PathRule::Exact(want) => path == want,
            PathRule::Filter(accept) => accept(path),
        }
    }
}

/// The client side of WebSocket, for
/// [`Connector::with_websocket`](crate::Connector::with_websocket): the
/// request's path, `Host`, `Origin` and subprotocols.
///
/// ```
/// use session_core::WebSocketClient;
///
/// let ws = WebSocketClient::new("/chat").subprotocols(["chat.v1"]);
/// # let _ = ws;
/// ```
#[derive(Debug, Clone)]
pub struct WebSocketClient {
    path: String,
    host: Option<String>,
    origin: Option<String>,
    subprotocols: Vec<String>,
}

impl Default for WebSocketClient {
    fn default() -> Self {
        WebSocketClient::new("/")
    }
}

impl WebSocketClient {
    /// Asks for `path` (a request target such as `/` or `/chat?room=1`).
    /// The `Host` header is the connect target's `host:port` unless
    /// [`host`](Self::host) says otherwise.
    pub fn new(path: &str) -> WebSocketClient {
        WebSocketClient {
            path: path.to_owned(),
            host: None,
            origin: None,
            subprotocols: Vec::new(),
        }
    }

    /// The `Host` header to send.
    pub fn host(mut self, host: &str) -> WebSocketClient {
        self.host = Some(host.to_owned());
        self
    }

    /// An `Origin` header to send (a browser's page would).
    pub fn origin(mut self, origin: &str) -> WebSocketClient {
        self.origin = Some(origin.to_owned());
        self
    }

    /// Subprotocols to offer, best first; the server's choice is in
    /// [`WebSocketInfo::subprotocol`].
    pub fn subprotocols<I, P>(mut self, protocols: I) -> WebSocketClient
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

/// The upgrade's limits, from the session config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) max_headers: usize,
}

/// A refused upgrade: the HTTP status sent (if any) and why.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: Option<u16>,
    pub(crate) reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} (answered {status})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn refuse(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status: Some(status),
        reason: reason.into(),
    }
}

/// Reads a request or response head, at most `limits.max_bytes`; returns
/// the bytes read (the head and what came after it).
async fn read_head<T, F>(io: &mut T, limits: Limits, mut complete: F) -> Result<Vec<u8>, Refused>
where
    T: AsyncRead + Unpin,
    F: FnMut(&[u8]) -> Result<bool, Refused>,
{
    let mut buf = Vec::new();
    loop {
        if buf.len() >= limits.max_bytes {
            return Err(refuse(
                431,
                format!("request head over {} bytes", limits.max_bytes),
            ));
        }
        let start = buf.len();
        buf.resize((start + 2048).min(limits.max_bytes), 0);
        let n = match io.read(&mut buf[start..]).await {
            Ok(0) => {
                return Err(Refused {
                    status: None,
                    reason: "closed before the end of its head".into(),
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                return Err(Refused {
                    status: None,
                    reason: format!("read failed: {e}"),
                });
            }
        };
        buf.truncate(start + n);
        if complete(&buf)? {
            return Ok(buf);
        }
    }
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The server's side of the upgrade: reads the request, checks it, and
/// answers `101` or a 4xx (then the caller closes). Returns what was
/// settled and the bytes the client sent after its request.
pub(crate) async fn accept<T>(
    io: &mut T,
    server: &WebSocketServer,
    limits: Limits,
) -> Result<(WebSocketInfo, Vec<u8>), Refused>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = accept_request(io, server, limits).await;
    let response = match &outcome {
        Ok((_, response, _)) => response.clone(),
        Err(Refused {
            status: Some(status),
            reason,
        }) => refusal(*status, reason),
        Err(_) => Vec::new(),
    };
    if !response.is_empty() {
        let written = async {
            io.write_all(&response).await?;
            io.flush().await
        }
        .await;
        if let Err(e) = written {
            if outcome.is_ok() {
                return Err(Refused {
                    status: None,
                    reason: format!("writing the 101 response failed: {e}"),
                });
            }
        }
    }
    outcome.map(|(info, _, rest)| (info, rest))
}

/// An HTTP error response that closes the connection.
fn refusal(status: u16, reason: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = match status {
        426 => "Sec-WebSocket-Version: 13\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    };
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads and checks the request; the info, the 101 response, and the
/// bytes after the request.
async fn accept_request<T: AsyncRead + Unpin>(
    io: &mut T,
    server: &WebSocketServer,
    limits: Limits,
) -> Result<(WebSocketInfo, Vec<u8>, Vec<u8>), Refused> {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let buf = read_head(io, limits, |buf| {
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut request = httparse::Request::new(&mut storage);
        match request.parse(buf) {
            Ok(status) => Ok(status.is_complete()),
            Err(httparse::Error::TooManyHeaders) => Err(refuse(
                431,
                format!("more than {} header fields", limits.max_headers),
            )),
            Err(e) => Err(refuse(400, format!("malformed request: {e}"))),
        }
    })
    .await?;
    let mut request = httparse::Request::new(&mut storage);
    let head_len = match request.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(refuse(400, "malformed request")),
    };
    let headers: &[httparse::Header<'_>] = request.headers;
    if request.method != Some("GET") {
        return Err(refuse(
            405,
            format!(
                "method {} is not GET",
                request.method.unwrap_or_default().escape_debug()
            ),
        ));
    }
    if request.version != Some(1) {
        return Err(refuse(400, "not HTTP/1.1"));
    }
    let upgrade = header(headers, "upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = header(headers, "connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err(refuse(426, "not a WebSocket upgrade request"));
    }
    if header(headers, "host").is_none() {
        return Err(refuse(400, "no Host header"));
    }
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(refuse(426, "Sec-WebSocket-Version is not 13"));
    }
    let key = header(headers, "sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(refuse(400, "missing or invalid Sec-WebSocket-Key"));
    }
    let path = request.path.unwrap_or_default();
    if !server.path_ok(path) {
        return Err(refuse(
            404,
            format!("no WebSocket at {}", path.escape_debug()),
        ));
    }
    let origin = header(headers, "origin").map(|o| String::from_utf8_lossy(o).into_owned());
    if let (Some(allowed), Some(origin)) = (&server.origins, &origin) {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return Err(refuse(
                403,
                format!("origin {} is not allowed", origin.escape_debug()),
            ));
        }
    }
    let offered: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let subprotocol = server
        .subprotocols
        .iter()
        .find(|p| offered.contains(&p.as_bytes()))
        .cloned();
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = &subprotocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    response.push_str("\r\n");
    let info = WebSocketInfo {
        path: path.to_owned(),
        subprotocol,
        origin,
        client: false,
    };
    let rest = buf[head_len..].to_vec();
    Ok((info, response.into_bytes(), rest))
}

/// The client's side of the upgrade: sends the request for `host` and
/// checks the server's `101`. Returns what was settled and the bytes the
/// server sent after its response.
pub(crate) async fn connect<T>(
    io: &mut T,
    client: &WebSocketClient,
    host: &str,
    limits: Limits,
) -> io::Result<(WebSocketInfo, Vec<u8>)>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random_u64().to_ne_bytes());
    key[8..].copy_from_slice(&random_u64().to_ne_bytes());
    let key = BASE64.encode(key);
    let host = client.host.as_deref().unwrap_or(host);
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        client.path
    );
    if let Some(origin) = &client.origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if !client.subprotocols.is_empty() {
        request.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            client.subprotocols.join(", ")
        ));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let fail = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let buf = read_head(io, limits, |buf| {
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        match httparse::Response::new(&mut storage).parse(buf) {
            Ok(status) => Ok(status.is_complete()),
            Err(e) => Err(Refused {
                status: None,
                reason: format!("malformed response: {e}"),
            }),
        }
    })
    .await
    .map_err(|r| fail(r.reason.replace("request", "response")))?;
    let mut response = httparse::Response::new(&mut storage);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(&buf) else {
        return Err(fail("malformed response".into()));
    };
    let headers: &[httparse::Header<'_>] = response.headers;
    if response.code != Some(101) {
        return Err(fail(format!(
            "server answered {} {}",
            response.code.unwrap_or_default(),
            response.reason.unwrap_or_default()
        )));
    }
    let upgrade = header(headers, "upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = header(headers, "connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err(fail("101 response without Upgrade: websocket".into()));
    }
    let accept = header(headers, "sec-websocket-accept").map(<[u8]>::trim_ascii);
    if accept != Some(accept_key(key.as_bytes()).as_bytes()) {
        return Err(fail("wrong Sec-WebSocket-Accept".into()));
    }
    let subprotocol = match header(headers, "sec-websocket-protocol") {
        None => None,
        Some(p) => {
            let p = String::from_utf8_lossy(p.trim_ascii()).into_owned();
            if !client.subprotocols.contains(&p) {
                return Err(fail(format!(
                    "server chose subprotocol {} that was not offered",
                    p.escape_debug()
                )));
            }
            Some(p)
        }
    };
    let info = WebSocketInfo {
        path: client.path.clone(),
        subprotocol,
        origin: client.origin.clone(),
        client: true,
    };
    Ok((info, buf[head_len..].to_vec()))
}

/// The engine's WebSocket state: only WebSocket sessions have one.
#[derive(Debug)]
pub(crate) struct WsEngine {
    pub(crate) decoder: WebSocketDecoder,
    /// A close frame has been queued: nothing more goes out.
    pub(crate) close_sent: bool,
}

/// What the engine needs to run a WebSocket session after the upgrade.
#[derive(Debug)]
pub(crate) struct WsStart {
    pub(crate) info: WebSocketInfo,
    /// Bytes the peer sent after its handshake: the first frames.
    pub(crate) rest: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the close frame is queued, the queue is sealed: a send from
    /// any thread fails instead of landing after it, and so does a second
    /// close.
    #[test]
    fn nothing_is_queued_after_the_close_frame() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let info = WebSocketInfo {
            path: "/".into(),
            subprotocol: None,
            origin: None,
            client: false,
        };
        let config = crate::SessionConfig::default();
        let handle = crate::SessionHandle::new(addr, addr, &config, false, None, Some(info));
        handle.send(b"before").unwrap();
        let before = handle.queued_bytes();
        handle
            .send_control(OP_CLOSE, &close_payload(1000, ""))
            .unwrap();
        let with_close = handle.queued_bytes();
        assert!(with_close > before);
        assert_eq!(handle.send(b"late"), Err(crate::SendError::Closed));
        assert_eq!(handle.send_text("late"), Err(crate::SendError::Closed));
        assert_eq!(
            handle.send_control(OP_PONG, b""),
            Err(crate::SendError::Closed)
        );
        assert_eq!(
            handle.send_control(OP_CLOSE, &close_payload(1000, "")),
            Err(crate::SendError::Closed)
        );
        assert_eq!(handle.queued_bytes(), with_close);
    }

    fn masked(opcode_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode_byte];
        let mask = [1, 2, 3, 4];
        write_header(&mut out, 0, payload.len(), Some(mask));
        // `write_header` wrote a first byte of its own: drop it.
        out.remove(1);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], mask);
        out
    }

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masking_twice_is_the_identity_at_every_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut copy = data.clone();
            apply_mask(&mut copy, [9, 8, 7, 6]);
            for (i, (a, b)) in data.iter().zip(&copy).enumerate() {
                assert_eq!(a ^ [9, 8, 7, 6][i % 4], *b);
            }
            apply_mask(&mut copy, [9, 8, 7, 6]);
            assert_eq!(copy, data);
        }
    }

    #[test]
    fn frames_written_are_decoded_back_at_each_header_size() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; len];
            let mut wire = Vec::new();
            write_frame(&mut wire, OP_TEXT, &[&payload], len, Some(mask_key()));
            assert_eq!(wire.len(), header_len(len, true) + len);
            let mut decoder = WebSocketDecoder::new(true, 70_000);
            let (used, event) = decoder.decode(&mut wire).unwrap().unwrap();
            assert_eq!(used, header_len(len, true) + len);
            assert_eq!(
                event,
                Some(WebSocketEvent::Message(MessageKind::Text, &payload[..]))
            );
            let mut plain = Vec::new();
            write_frame(&mut plain, OP_BINARY, &[&payload], len, None);
            assert_eq!(unmasked_header_len(plain.len()), header_len(len, false));
            assert_eq!(sent_payload(&plain).unwrap().len(), len);
        }
    }

    #[test]
    fn every_rule_has_its_error() {
        let cases: Vec<(bool, Vec<u8>, WebSocketError)> = vec![
            (
                true,
                b"\x82\x00".to_vec(),
                WebSocketError::UnmaskedClientFrame,
            ),
            (false, masked(0x82, b""), WebSocketError::MaskedServerFrame),
            (true, masked(0xC2, b""), WebSocketError::ReservedBits(4)),
            (true, masked(0x83, b""), WebSocketError::UnknownOpcode(3)),
            (true, masked(0x09, b""), WebSocketError::FragmentedControl),
            (
                true,
                masked(0x89, &[0; 126]),
                WebSocketError::ControlTooLong,
            ),
            (
                true,
                masked(0x80, b"x"),
                WebSocketError::UnexpectedContinuation,
            ),
            (true, masked(0x81, b"\xff"), WebSocketError::InvalidUtf8),
            (true, masked(0x88, b"\x03"), WebSocketError::BadClosePayload),
            (
                true,
                masked(0x88, b"\x03\xed"),
                WebSocketError::BadCloseCode(1005),
            ),
            (
                true,
                b"\x82\xff\x80\0\0\0\0\0\0\0".to_vec(),
                WebSocketError::TooLarge {
                    len: 1 << 63,
                    max: 100,
                },
            ),
        ];
        for (server, mut wire, want) in cases {
            let mut decoder = WebSocketDecoder::new(server, 100);
            assert_eq!(decoder.decode(&mut wire), Err(want));
        }
        let mut decoder = WebSocketDecoder::new(true, 100);
        let mut wire = masked(0x01, b"ab");
        wire.extend(masked(0x81, b"cd"));
        assert!(decoder.decode(&mut wire).unwrap().is_some());
        assert_eq!(
            decoder.decode(&mut wire[8..]),
            Err(WebSocketError::UnfinishedMessage)
        );
    }

    #[test]
    fn fragments_count_together_against_the_limit() {
        let mut decoder = WebSocketDecoder::new(true, 10);
        let mut wire = masked(0x02, &[1; 6]);
        let first = wire.len();
        wire.extend(masked(0x80, &[2; 5]));
        assert_eq!(decoder.decode(&mut wire).unwrap().unwrap().1, None);
        assert_eq!(
            decoder.decode(&mut wire[first..]),
            Err(WebSocketError::TooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn a_ping_between_fragments_leaves_the_message_whole() {
        let mut decoder = WebSocketDecoder::new(true, 100);
        let mut wire = masked(0x01, "h\u{e9}".as_bytes());
        let a = wire.len();
        wire.extend(masked(0x89, b"p"));
        let b = wire.len();
        wire.extend(masked(0x80, b"llo"));
        let (_, event) = decoder.decode(&mut wire).unwrap().unwrap();
        assert_eq!(event, None);
        let (_, event) = decoder.decode(&mut wire[a..]).unwrap().unwrap();
        assert_eq!(event, Some(WebSocketEvent::Ping(b"p")));
        let (_, event) = decoder.decode(&mut wire[b..]).unwrap().unwrap();
        assert_eq!(
            event,
            Some(WebSocketEvent::Message(
                MessageKind::Text,
                "h\u{e9}llo".as_bytes()
            ))
        );
        assert!(decoder.message.capacity() <= 100);
        assert_eq!(decoder.buffered(), 0);
    }

    /// Messages (`Some(kind)`) and pings (`None`), and the error decoding
    /// stopped at.
    type Decoded = (Vec<(Option<MessageKind>, Vec<u8>)>, Option<WebSocketError>);

    /// Decodes `wire` fed `step` bytes at a time, as the engine does;
    /// the messages and pings, and the error it stopped at.
    fn decode_all(server: bool, wire: &[u8], max: usize, step: usize) -> Decoded {
        let mut decoder = WebSocketDecoder::new(server, max);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for chunk in wire.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some((used, event))) => {
                        match event {
                            Some(WebSocketEvent::Message(kind, m)) => {
                                out.push((Some(kind), m.to_vec()))
                            }
                            Some(WebSocketEvent::Ping(p)) => out.push((None, p.to_vec())),
                            _ => {}
                        }
                        buf.drain(..used);
                    }
                    Ok(None) => {
                        assert!(buf.len() < 14 + max.max(125));
                        break;
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
            decoder.settle();
        }
        (out, None)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Messages cut into fragments, with pings between them, come out
        /// whole and in order however the bytes are split.
        #[test]
        fn messages_survive_any_fragmentation_and_any_split(
            messages in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(0u8..128, 0..300), 1usize..4),
                1..8,
            ),
            step in 1usize..64,
            server in proptest::bool::ANY,
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (text, payload, pieces) in &messages {
                let kind = if *text { MessageKind::Text } else { MessageKind::Binary };
                let size = payload.len().div_ceil(*pieces).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&[]]
                } else {
                    payload.chunks(size).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let opcode = if i == 0 { kind.opcode() } else { OP_CONTINUATION };
                    let fin = i + 1 == chunks.len();
                    let mut frame = Vec::new();
                    let mask = server.then(mask_key);
                    write_frame(&mut frame, opcode, &[chunk], chunk.len(), mask);
                    if !fin {
                        frame[0] &= 0x7F;
                    }
                    wire.extend(frame);
                    if i == 0 && !fin {
                        write_frame(&mut wire, OP_PING, &[b"p"], 1, mask);
                        want.push((None, b"p".to_vec()));
                    }
                }
                want.push((Some(kind), payload.clone()));
            }
            let (got, error) = decode_all(server, &wire, 300, step);
            proptest::prop_assert_eq!(error, None);
            proptest::prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic, and split or whole give the same.
        #[test]
        fn arbitrary_bytes_decode_alike_whole_and_split(
            wire in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            step in 1usize..16,
            server in proptest::bool::ANY,
            max in 1usize..100,
        ) {
            let whole = decode_all(server, &wire, max, wire.len());
            let split = decode_all(server, &wire, max, step);
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn reasons_map_to_close_codes() {
        use crate::session::DisconnectReason as R;
        let cases = [
            (R::LocalClose, Some(1000)),
            (R::Shutdown, Some(1001)),
            (R::Idle, Some(1001)),
            (R::FrameTooLarge { len: 2, max: 1 }, Some(1009)),
            (R::WebSocket(WebSocketError::InvalidUtf8), Some(1007)),
            (R::WebSocket(WebSocketError::ReservedBits(1)), Some(1002)),
            (R::Panicked("boom".into()), Some(1011)),
            (
                R::WebSocketClose {
                    code: Some(4000),
                    reason: "app".into(),
                },
                Some(4000),
            ),
            (
                R::WebSocketClose {
                    code: None,
                    reason: String::new(),
                },
                None,
            ),
            (R::PeerClosed, None),
            (R::SlowConsumer, None),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.websocket_close_code(), code, "{reason}");
        }
        // An answer to a close without a code has no code either, but is
        // sent.
        let bare = R::WebSocketClose {
            code: None,
            reason: String::new(),
        };
        assert_eq!(close_for(&bare), Some(Vec::new()));
    }

    #[test]
    fn framing_decodes_what_it_encodes_and_refuses_the_rest() {
        use crate::framing::{FrameError, Framing};
        let mut out = bytes::BytesMut::new();
        Framing::WebSocket
            .encode(&[7; 300], 1000, &mut out)
            .unwrap();
        let decoded = Framing::WebSocket.decode(&out, 1000).unwrap().unwrap();
        assert_eq!((decoded.payload, decoded.consumed), (4..304, 304));
        assert_eq!(Framing::WebSocket.decode(&out[..100], 1000), Ok(None));
        assert!(matches!(
            Framing::WebSocket.decode(&out, 299),
            Err(FrameError::TooLarge { len: 300, max: 299 })
        ));
        assert_eq!(
            Framing::WebSocket.decode(&masked(0x82, b"x"), 10),
            Err(FrameError::WebSocket(WebSocketError::MaskedServerFrame))
        );
    }

    #[test]
    fn close_frames_are_cut_to_125_bytes_on_a_character() {
        let payload = close_payload(1000, &"\u{e9}".repeat(100));
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
