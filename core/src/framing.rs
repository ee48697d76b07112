//! How bytes on the wire become messages, and messages become bytes.
//!
//! TCP is a byte stream: one read may hold half a message or ten of them.
//! [`Framing`] names the rule that cuts the stream into messages; the same
//! rule frames what [`SessionHandle::send`](crate::SessionHandle::send) writes.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::websocket::{self, MessageKind, WebSocketError};

/// The rule that cuts a byte stream into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// No framing: each read is one message and each send is written as it
    /// is. This is the wire behaviour of the original C# sessions, and what
    /// `nc` speaks; message boundaries are whatever the network delivers.
    #[default]
    Raw,
    /// Newline-delimited text: a message ends at `\n` (a `\r` before it is
    /// dropped too); `send` appends `\n`.
    Lines,
    /// `[size: u16 little-endian][payload]`, where `size` counts its own two
    /// bytes, as the course's `PacketSession` does; `send` writes the header.
    /// A size below 2 is a [`FrameError::BadSize`].
    LengthPrefixed,
    /// WebSocket frames (RFC 6455): what a session gets after
    /// [`Listener::with_websocket`](crate::Listener::with_websocket) or
    /// [`Connector::with_websocket`](crate::Connector::with_websocket)
    /// made the upgrade; it is not set in a config by hand. Each send is
    /// one binary message (see
    /// [`SessionHandle::send_message`](crate::SessionHandle::send_message)
    /// for text); `encode` and [`Frame`] write a server's frame (unmasked),
    /// and `decode` reads one whole unfragmented data frame as a client
    /// sees it (the engine's own decoder,
    /// [`WebSocketDecoder`](crate::WebSocketDecoder), does the rest of the
    /// protocol).
    WebSocket,
}

impl Framing {
    /// Bytes the framing adds to each message on the wire.
    pub fn overhead(self) -> usize {
        match self {
            Framing::Raw => 0,
            Framing::Lines => 1,
            Framing::LengthPrefixed => 2,
            // The longest header, with a masking key.
            Framing::WebSocket => 14,
        }
    }

    /// Finds the first message in `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no whole message yet, and an error
    /// when it can never become one (the session must then be closed).
    ///
    /// ```
    /// use session_core::Framing;
    ///
    /// let buf = b"\x07\x00hello\x04\x00";
    /// let first = Framing::LengthPrefixed.decode(buf, 1024).unwrap().unwrap();
    /// assert_eq!(&buf[first.payload.clone()], b"hello");
    /// assert_eq!(first.consumed, 7);
    /// // The rest is a header without its payload: not a message yet.
    /// assert!(Framing::LengthPrefixed.decode(&buf[7..], 1024).unwrap().is_none());
    /// ```
    #[inline]
    pub fn decode(self, buf: &[u8], max_frame_len: usize) -> Result<Option<Decoded>, FrameError> {
        match self {
            Framing::Raw => Ok(decode_raw(buf, max_frame_len)),
            Framing::Lines => decode_line(buf, max_frame_len),
            Framing::LengthPrefixed => decode_length_prefixed(buf, max_frame_len),
            Framing::WebSocket => decode_websocket(buf, max_frame_len),
        }
    }

    /// Appends `payload`, framed, to `out`.
    ///
    /// Fails without writing anything if the payload is longer than
    /// `max_frame_len`, or holds a newline under [`Framing::Lines`].
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use session_core::Framing;
    ///
    /// let mut out = BytesMut::new();
    /// Framing::LengthPrefixed.encode(b"hi", 1024, &mut out).unwrap();
    /// assert_eq!(&out[..], b"\x04\x00hi");
    /// ```
    pub fn encode(
        self,
        payload: &[u8],
        max_frame_len: usize,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        self.encode_parts(&[payload], max_frame_len, out)
    }

    /// Appends one message made of `parts` laid end to end, framed, to
    /// `out`: a reply and its suffix, say, without joining them first.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use session_core::Framing;
    ///
    /// let mut out = BytesMut::new();
    /// Framing::Lines.encode_parts(&[b"Hi 0", b" - Receive Completed"], 1024, &mut out).unwrap();
    /// assert_eq!(&out[..], b"Hi 0 - Receive Completed\n");
    /// ```
    pub fn encode_parts(
        self,
        parts: &[&[u8]],
        max_frame_len: usize,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let len = self.check_parts(parts, max_frame_len)?;
        out.reserve(len + self.overhead());
        self.write_parts(parts, len, out);
        Ok(())
    }

    /// Checks that `parts` (of `payload_len(parts)` bytes) can be framed;
    /// returns the payload length.
    #[inline]
    pub(crate) fn check_parts(
        self,
        parts: &[&[u8]],
        max_frame_len: usize,
    ) -> Result<usize, FrameError> {
        let len = payload_len(parts);
        if len > max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: max_frame_len,
            });
        }
        // The 2-byte size counts itself, so 65,533 payload bytes at most.
        if self == Framing::LengthPrefixed && len > 65_533 {
            return Err(FrameError::TooLarge { len, max: 65_533 });
        }
        if self == Framing::Lines && parts.iter().any(|p| p.contains(&b'\n')) {
            return Err(FrameError::NewlineInLine);
        }
        Ok(len)
    }

    /// Appends `parts`, checked by [`check_parts`](Self::check_parts) to be
    /// `len` bytes that can be framed, as one frame.
    #[inline]
    pub(crate) fn write_parts(self, parts: &[&[u8]], len: usize, out: &mut impl BufMut) {
        if let [one] = parts {
            // The common case, one slice: no loop, no check for empty parts.
            match self {
                Framing::Raw => out.put_slice(one),
                Framing::LengthPrefixed => {
                    out.put_slice(&((len + 2) as u16).to_le_bytes());
                    out.put_slice(one);
                }
                Framing::Lines => {
                    out.put_slice(one);
                    out.put_slice(b"\n");
                }
                Framing::WebSocket => {
                    websocket::write_header(out, websocket::OP_BINARY, len, None);
                    out.put_slice(one);
                }
            }
            return;
        }
        if self == Framing::WebSocket {
            websocket::write_header(out, websocket::OP_BINARY, len, None);
        }
        if self == Framing::LengthPrefixed {
            // In range: `check_parts` allowed at most 65,533 bytes.
            out.put_slice(&((len + 2) as u16).to_le_bytes());
        }
        for part in parts {
            if !part.is_empty() {
                out.put_slice(part);
            }
        }
        if self == Framing::Lines {
            out.put_slice(b"\n");
        }
    }

    /// Where the payload sits inside one encoded frame of `frame_len` bytes.
    pub(crate) fn payload_of(self, frame_len: usize) -> Range<usize> {
        match self {
            Framing::Raw => 0..frame_len,
            Framing::Lines => 0..frame_len.saturating_sub(1),
            Framing::LengthPrefixed => 2.min(frame_len)..frame_len,
            Framing::WebSocket => {
                websocket::unmasked_header_len(frame_len).min(frame_len)..frame_len
            }
        }
    }
}

/// Raw: whatever was read is one message (cut at the maximum).
#[inline]
fn decode_raw(buf: &[u8], max_frame_len: usize) -> Option<Decoded> {
    if buf.is_empty() {
        return None;
    }
    let len = buf.len().min(max_frame_len);
    Some(Decoded {
        payload: 0..len,
        consumed: len,
    })
}

/// Lines: up to `\n`, a `\r` before it dropped.
#[inline]
fn decode_line(buf: &[u8], max_frame_len: usize) -> Result<Option<Decoded>, FrameError> {
    // Only the first `max_frame_len + 2` bytes can hold the end of an
    // acceptable line (payload, `\r`, `\n`).
    let window = &buf[..buf.len().min(max_frame_len.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let end = if newline > 0 && buf[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if end > max_frame_len {
                return Err(FrameError::TooLarge {
                    len: end,
                    max: max_frame_len,
                });
            }
            Ok(Some(Decoded {
                payload: 0..end,
                consumed: newline + 1,
            }))
        }
        None if window.len() > max_frame_len + 1 => Err(FrameError::TooLarge {
            len: window.len(),
            max: max_frame_len,
        }),
        None => Ok(None),
    }
}

/// Length-prefixed: a 2-byte little-endian size that counts itself.
#[inline]
fn decode_length_prefixed(buf: &[u8], max_frame_len: usize) -> Result<Option<Decoded>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let size = u16::from_le_bytes([buf[0], buf[1]]);
    if size < 2 {
        return Err(FrameError::BadSize(size));
    }
    let len = usize::from(size) - 2;
    if len > max_frame_len {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_len,
        });
    }
    if buf.len() < usize::from(size) {
        return Ok(None);
    }
    Ok(Some(Decoded {
        payload: 2..usize::from(size),
        consumed: usize::from(size),
    }))
}

/// WebSocket, as a client reads a server: one whole, unmasked, unfragmented
/// text or binary frame.
fn decode_websocket(buf: &[u8], max_frame_len: usize) -> Result<Option<Decoded>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let error = |e| Err(FrameError::WebSocket(e));
    if b0 & 0x70 != 0 {
        return error(WebSocketError::ReservedBits((b0 >> 4) & 7));
    }
    if b1 & 0x80 != 0 {
        return error(WebSocketError::MaskedServerFrame);
    }
    match b0 & 0x0F {
        websocket::OP_TEXT | websocket::OP_BINARY if b0 & 0x80 != 0 => {}
        websocket::OP_TEXT | websocket::OP_BINARY => {
            return error(WebSocketError::UnfinishedMessage);
        }
        websocket::OP_CONTINUATION => return error(WebSocketError::UnexpectedContinuation),
        op => return error(WebSocketError::UnknownOpcode(op)),
    }
    let Some((len, header)) = websocket::payload_len(buf) else {
        return Ok(None);
    };
    if len > max_frame_len as u64 {
        return Err(FrameError::TooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: max_frame_len,
        });
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Decoded {
        payload: header..end,
        consumed: end,
    }))
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

/// A message framed once, to be sent to many sessions: each receiver's queue
/// holds a reference to the same buffer, never a copy.
///
/// ```
/// use session_core::{Frame, Framing};
///
/// let frame = Frame::new(Framing::LengthPrefixed, b"tick", 1024).unwrap();
/// assert_eq!(frame.payload(), b"tick");
/// assert_eq!(frame.wire_len(), 6);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    framing: Framing,
}

impl Frame {
    /// Frames `payload` under `framing`; fails as [`Framing::encode`] does.
    pub fn new(
        framing: Framing,
        payload: &[u8],
        max_frame_len: usize,
    ) -> Result<Frame, FrameError> {
        let mut out = BytesMut::with_capacity(payload.len() + framing.overhead());
        framing.encode(payload, max_frame_len, &mut out)?;
        Ok(Frame {
            bytes: out.freeze(),
            framing,
        })
    }

    /// A WebSocket message of `kind` framed once as a server sends it, for
    /// many WebSocket sessions (a client session masks a copy of it). A
    /// text payload must be UTF-8.
    ///
    /// ```
    /// use session_core::{Frame, MessageKind};
    ///
    /// let frame = Frame::websocket(MessageKind::Text, "tick".as_bytes(), 1024).unwrap();
    /// assert_eq!(frame.payload(), b"tick");
    /// assert_eq!(frame.wire_len(), 6);
    /// ```
    pub fn websocket(
        kind: MessageKind,
        payload: &[u8],
        max_frame_len: usize,
    ) -> Result<Frame, FrameError> {
        if payload.len() > max_frame_len {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: max_frame_len,
            });
        }
        if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
            return Err(FrameError::WebSocket(WebSocketError::InvalidUtf8));
        }
        let len = payload.len();
        let mut out = Vec::with_capacity(len + websocket::header_len(len, false));
        websocket::write_frame(&mut out, kind.opcode(), &[payload], len, None);
        Ok(Frame {
            bytes: Bytes::from(out),
            framing: Framing::WebSocket,
        })
    }

    /// The framing the frame was made for.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The message without its framing.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.framing.payload_of(self.bytes.len())]
    }

    /// Bytes on the wire, framing included.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes on the wire, shared.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// One message found by [`Framing::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Where the message's payload lies in the decoded buffer.
    pub payload: Range<usize>,
    /// How many bytes of the buffer the message used, framing included.
    pub consumed: usize,
}

/// Why bytes cannot be a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message is longer than the configured maximum.
    TooLarge {
        /// The message's length (for a line still unterminated, the bytes
        /// seen so far).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A length-prefixed header whose size is below 2, the header's own
    /// length: such a frame would never advance the stream.
    BadSize(u16),
    /// A message sent under [`Framing::Lines`] holds a newline, which would
    /// split it in two on the wire.
    NewlineInLine,
    /// Bytes that break the WebSocket protocol, or a text message that is
    /// not UTF-8.
    WebSocket(WebSocketError),
    /// A [`Frame`] made for one framing was sent to a session that uses
    /// another.
    WrongFraming {
        /// The frame's framing.
        frame: Framing,
        /// The session's framing.
        session: Framing,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "frame of {len} bytes is larger than the maximum of {max}"
                )
            }
            FrameError::BadSize(size) => {
                write!(
                    f,
                    "frame size {size} is below the 2-byte header it must count"
                )
            }
            FrameError::NewlineInLine => write!(f, "a line-framed message cannot hold a newline"),
            FrameError::WebSocket(e) => write!(f, "WebSocket: {e}"),
            FrameError::WrongFraming { frame, session } => {
                write!(
                    f,
                    "a frame made for {frame} framing cannot go to a {session} session"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl FromStr for Framing {
    type Err = ParseFramingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Framing::Raw),
            "lines" => Ok(Framing::Lines),
            "length-prefixed" => Ok(Framing::LengthPrefixed),
            _ => Err(ParseFramingError(s.to_owned())),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Raw => "raw",
            Framing::Lines => "lines",
            Framing::LengthPrefixed => "length-prefixed",
            Framing::WebSocket => "websocket",
        })
    }
}

/// A framing name that is not `raw`, `lines` or `length-prefixed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFramingError(String);

impl fmt::Display for ParseFramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown framing {:?}: expected raw, lines or length-prefixed",
            self.0
        )
    }
}

impl std::error::Error for ParseFramingError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, mut buf: &[u8], max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(d) = framing.decode(buf, max)? {
            out.push(buf[d.payload].to_vec());
            buf = &buf[d.consumed..];
        }
        Ok(out)
    }

    #[test]
    fn lines_split_on_newline_and_drop_carriage_return() {
        let frames = all(Framing::Lines, b"a\r\nbc\n\nrest", 10).unwrap();
        assert_eq!(frames, vec![b"a".to_vec(), b"bc".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_rejected_before_its_newline() {
        assert_eq!(
            all(Framing::Lines, b"abcd", 4).unwrap(),
            Vec::<Vec<u8>>::new()
        );
        assert!(all(Framing::Lines, b"abcd\r", 4).unwrap().is_empty());
        assert!(matches!(
            all(Framing::Lines, b"abcdef", 4),
            Err(FrameError::TooLarge { max: 4, .. })
        ));
        assert!(matches!(
            all(Framing::Lines, b"abcde\n", 4),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
        assert_eq!(
            all(Framing::Lines, b"abcd\r\n", 4).unwrap(),
            vec![b"abcd".to_vec()]
        );
    }

    #[test]
    fn length_prefixed_sizes_below_two_are_bad() {
        assert_eq!(
            all(Framing::LengthPrefixed, b"\x00\x00", 100),
            Err(FrameError::BadSize(0))
        );
        assert_eq!(
            all(Framing::LengthPrefixed, b"\x01\x00", 100),
            Err(FrameError::BadSize(1))
        );
        assert_eq!(
            all(Framing::LengthPrefixed, b"\x02\x00", 100).unwrap(),
            vec![Vec::new()]
        );
    }

    #[test]
    fn length_prefixed_accepts_the_full_u16_range() {
        let payload = vec![7u8; 65_533];
        let mut out = BytesMut::new();
        Framing::LengthPrefixed
            .encode(&payload, 65_533, &mut out)
            .unwrap();
        assert_eq!(&out[..2], &[0xff, 0xff]);
        assert_eq!(
            all(Framing::LengthPrefixed, &out, 65_533).unwrap(),
            vec![payload]
        );
        let mut out = BytesMut::new();
        assert!(
            Framing::LengthPrefixed
                .encode(&[0; 65_534], 70_000, &mut out)
                .is_err()
        );
        assert!(out.is_empty());
    }

    #[test]
    fn length_prefixed_over_the_limit_is_rejected_from_the_header_alone() {
        assert_eq!(
            all(Framing::LengthPrefixed, b"\xff\xff", 100),
            Err(FrameError::TooLarge {
                len: 65_533,
                max: 100
            })
        );
    }

    #[test]
    fn encode_rejects_newlines_in_lines_and_oversized_payloads() {
        let mut out = BytesMut::new();
        assert_eq!(
            Framing::Lines.encode(b"a\nb", 10, &mut out),
            Err(FrameError::NewlineInLine)
        );
        assert!(matches!(
            Framing::Raw.encode(b"abc", 2, &mut out),
            Err(FrameError::TooLarge { len: 3, max: 2 })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn framing_names_round_trip() {
        for f in [Framing::Raw, Framing::Lines, Framing::LengthPrefixed] {
            assert_eq!(f.to_string().parse::<Framing>(), Ok(f));
        }
        let err = "json".parse::<Framing>().unwrap_err().to_string();
        assert!(err.contains("json") && err.contains("length-prefixed"));
    }
}
