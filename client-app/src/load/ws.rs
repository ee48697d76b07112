//! The load mode over WebSocket (RFC 6455): the opening handshake, the
//! client's frames and a reader for the server's.
//!
//! - [`upgrade`]: each connection, once open (and after its TLS handshake
//!   with `--tls`), sends an HTTP/1.1 `GET` with `Upgrade: websocket` and a
//!   random 16-byte `Sec-WebSocket-Key`, and accepts only a `101` whose
//!   `Sec-WebSocket-Accept` is base64(SHA-1(key + [`GUID`])). This is done
//!   blocking, before the load starts, as the TLS handshake is.
//! - [`push_frame_header`] and [`apply_mask`]: every message goes out as one
//!   masked binary frame with a fresh random mask, written straight into
//!   the connection's output buffer and masked there, so the hot loop
//!   allocates nothing.
//! - [`FrameReader`]: the server's frames, unmasked, in any length form,
//!   text or binary, cut into pieces as they arrive in the reads (header,
//!   payload bytes, whole control frames), with no copy of a data payload.
//!   The load loop checks the payload bytes as it checks a plain echo.
//!   Fragmented messages (a data frame without FIN, or a continuation
//!   frame) are not supported: they are an [`Error`] that fails the
//!   connection, never a wait.

use std::io::{self, Read, Write};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID that RFC 6455 appends to the key before hashing it.
pub(super) const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A continuation frame.
pub(super) const OP_CONTINUATION: u8 = 0x0;
/// A text frame.
pub(super) const OP_TEXT: u8 = 0x1;
/// A binary frame.
pub(super) const OP_BINARY: u8 = 0x2;
/// A close frame.
pub(super) const OP_CLOSE: u8 = 0x8;
/// A ping frame.
pub(super) const OP_PING: u8 = 0x9;
/// A pong frame.
pub(super) const OP_PONG: u8 = 0xA;

/// The largest response to the upgrade request that is read.
const MAX_RESPONSE: usize = 8 * 1024;

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub(super) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn new_key() -> String {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    BASE64.encode(bytes)
}

/// Makes the opening handshake over `io` (blocking, with the caller's
/// timeouts): asks `host:port` for `path` and checks the server's `101`.
/// The server must send nothing after its response until it is sent a
/// message (the load mode only talks to echo servers).
pub(super) fn upgrade(io: &mut impl ReadWrite, host: &str, port: u16, path: &str) -> Result<()> {
    let key = new_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    );
    io.write_all(request.as_bytes())
        .context("send the WebSocket upgrade request")?;
    io.flush().context("send the WebSocket upgrade request")?;
    let mut response = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(at) = find(&response, b"\r\n\r\n") {
            break at + 4;
        }
        if response.len() > MAX_RESPONSE {
            bail!("the upgrade response has no end within {MAX_RESPONSE} bytes");
        }
        let n = match io.read(&mut chunk) {
            Ok(0) => bail!(
                "the server closed the connection during the WebSocket upgrade{}",
                first_line_note(&response)
            ),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read the WebSocket upgrade response"),
        };
        response.extend_from_slice(&chunk[..n]);
    };
    if response.len() > end {
        bail!(
            "the server sent {} bytes after its upgrade response, before any message",
            response.len() - end
        );
    }
    check_response(&response[..end], &key)
}

/// Read and Write together, for [`upgrade`] over a socket or a TLS stream.
pub(super) trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

fn first_line_note(response: &[u8]) -> String {
    if response.is_empty() {
        String::new()
    } else {
        let text = String::from_utf8_lossy(response);
        format!(" (it had sent {:?})", text.lines().next().unwrap_or(""))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the upgrade response (status line and headers, up to the empty
/// line) for the request that sent `key`.
pub(super) fn check_response(response: &[u8], key: &str) -> Result<()> {
    let text = std::str::from_utf8(response).context("the upgrade response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "101" {
        bail!("the server refused the WebSocket upgrade: {status:?} (expected HTTP/1.1 101)");
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("a malformed header in the upgrade response: {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            }
            "sec-websocket-accept" => accept = Some(value.to_string()),
            "sec-websocket-extensions" if !value.is_empty() => {
                bail!("the server agreed to extensions nobody asked for: {value:?}")
            }
            _ => {}
        }
    }
    if !upgrade || !connection {
        bail!("the upgrade response lacks Upgrade: websocket or Connection: Upgrade");
    }
    let want = accept_key(key);
    match accept {
        Some(got) if got == want => Ok(()),
        Some(got) => bail!("Sec-WebSocket-Accept is {got:?}, expected {want:?}"),
        None => bail!("the upgrade response has no Sec-WebSocket-Accept"),
    }
}

/// Appends the header of one final, masked client frame of `opcode` with
/// a payload of `len` bytes and the masking key `mask`. The payload must
/// follow, masked with [`apply_mask`].
pub(super) fn push_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
}

/// The bytes of a client frame header for a payload of `len` bytes.
pub(super) fn frame_header_len(len: usize) -> usize {
    let extended = if len < 126 {
        0
    } else if len <= usize::from(u16::MAX) {
        2
    } else {
        8
    };
    2 + extended + 4
}

/// Masks (or unmasks) `data`, a whole payload, with `mask`: byte `i` is
/// XORed with `mask[i % 4]`, eight bytes at a time.
pub(super) fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("eight bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // A multiple of 8 (so of 4) bytes went before the remainder.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Appends one final, masked client frame of `opcode` carrying `payload`.
pub(super) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    push_frame_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// A random masking key.
pub(super) fn new_mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// What is wrong with the server's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Error {
    /// RSV1-3 set, with no extension agreed.
    Reserved,
    /// A server frame with the mask bit set.
    Masked,
    /// A data frame without FIN, or a continuation frame.
    Fragmented,
    /// An opcode RFC 6455 does not define.
    Opcode(u8),
    /// A control frame over 125 bytes or without FIN.
    BadControl,
    /// A data frame longer than the reader takes.
    TooLong(u64, u64),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Reserved => write!(f, "a frame with reserved bits set (no extension agreed)"),
            Error::Masked => write!(f, "a masked frame from the server"),
            Error::Fragmented => write!(
                f,
                "a fragmented message (a frame without FIN, or a continuation), which the \
                 load mode does not support"
            ),
            Error::Opcode(op) => write!(f, "a frame with the unknown opcode {op:#x}"),
            Error::BadControl => write!(f, "a control frame over 125 bytes or fragmented"),
            Error::TooLong(len, max) => {
                write!(f, "a frame of {len} bytes, more than the {max} expected")
            }
        }
    }
}

impl std::error::Error for Error {}

/// One step of [`FrameReader::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece {
    /// Bytes of a frame header, not yet all of it.
    Partial,
    /// The header of a data frame (text or binary, final) of `len` payload
    /// bytes; with `len` 0 the frame is complete.
    Header { opcode: u8, len: u64 },
    /// The first `len` bytes of the input are payload of the current data
    /// frame; `last` when they end it.
    Payload { len: usize, last: bool },
    /// A whole control frame (close, ping, pong); its payload is
    /// [`FrameReader::control`].
    Control { opcode: u8 },
}

/// Reads the server's frames from the bytes of the stream, in pieces; see
/// the module's documentation. Holds no more than one frame header and one
/// control payload.
#[derive(Debug, Clone)]
pub(super) struct FrameReader {
    /// The header read so far (unmasked server frames: at most 10 bytes).
    head: [u8; 10],
    head_len: usize,
    /// The frame whose payload is being read: its opcode, and the payload
    /// bytes still to come.
    opcode: u8,
    left: u64,
    in_payload: bool,
    control: [u8; 125],
    control_len: usize,
    /// The largest data frame taken.
    max: u64,
}

impl FrameReader {
    /// A reader that takes data frames of at most `max` bytes.
    pub(super) fn new(max: u64) -> FrameReader {
        FrameReader {
            head: [0; 10],
            head_len: 0,
            opcode: 0,
            left: 0,
            in_payload: false,
            control: [0; 125],
            control_len: 0,
            max,
        }
    }

    /// The payload of the last [`Piece::Control`].
    pub(super) fn control(&self) -> &[u8] {
        &self.control[..self.control_len]
    }

    /// Reads from the start of `data` (which must not be empty) and says
    /// how many bytes it used and what they were. Call again with the rest.
    pub(super) fn next(&mut self, data: &[u8]) -> Result<(usize, Piece), Error> {
        if self.in_payload {
            let n = usize::try_from(self.left).map_or(data.len(), |left| left.min(data.len()));
            if is_control(self.opcode) {
                self.control[self.control_len..self.control_len + n].copy_from_slice(&data[..n]);
                self.control_len += n;
                self.left -= n as u64;
                if self.left == 0 {
                    self.in_payload = false;
                    return Ok((
                        n,
                        Piece::Control {
                            opcode: self.opcode,
                        },
                    ));
                }
                return Ok((n, Piece::Partial));
            }
            self.left -= n as u64;
            let last = self.left == 0;
            if last {
                self.in_payload = false;
            }
            return Ok((n, Piece::Payload { len: n, last }));
        }
        // The header: 2 bytes, then the extended length they announce.
        let mut used = 0;
        loop {
            let need = match self.head_len {
                0 | 1 => 2,
                _ => match self.head[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                },
            };
            if self.head_len == need {
                break;
            }
            let take = (need - self.head_len).min(data.len() - used);
            if take == 0 {
                return Ok((used, Piece::Partial));
            }
            self.head[self.head_len..self.head_len + take]
                .copy_from_slice(&data[used..used + take]);
            self.head_len += take;
            used += take;
            if self.head_len == 2 {
                self.check_first_bytes()?;
            }
        }
        let len = match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("eight bytes")),
            short => u64::from(short),
        };
        let opcode = self.head[0] & 0x0f;
        self.head_len = 0;
        self.opcode = opcode;
        if is_control(opcode) {
            if len > 125 {
                return Err(Error::BadControl);
            }
            self.left = len;
            self.control_len = 0;
            if len == 0 {
                return Ok((used, Piece::Control { opcode }));
            }
            self.in_payload = true;
            return Ok((used, Piece::Partial));
        }
        // Checked before anything is taken for it.
        if len > self.max {
            return Err(Error::TooLong(len, self.max));
        }
        self.left = len;
        self.in_payload = len > 0;
        Ok((used, Piece::Header { opcode, len }))
    }

    /// Checks the first two header bytes.
    fn check_first_bytes(&self) -> Result<(), Error> {
        let (b0, b1) = (self.head[0], self.head[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(Error::Reserved);
        }
        if b1 & 0x80 != 0 {
            return Err(Error::Masked);
        }
        match opcode {
            OP_CONTINUATION => Err(Error::Fragmented),
            OP_TEXT | OP_BINARY if !fin => Err(Error::Fragmented),
            OP_TEXT | OP_BINARY => Ok(()),
            OP_CLOSE | OP_PING | OP_PONG if !fin => Err(Error::BadControl),
            OP_CLOSE | OP_PING | OP_PONG => Ok(()),
            other => Err(Error::Opcode(other)),
        }
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// The status code of a close frame's payload, if it has one.
pub(super) fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked (server) frame.
    fn server_frame(first: u8, payload: &[u8], form: usize) -> Vec<u8> {
        let mut out = vec![first];
        match form {
            0 => out.push(payload.len() as u8),
            2 => {
                out.push(126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Everything the reader makes of `wire` fed in pieces of `step`
    /// bytes: the data frames' (opcode, payload) and the control frames.
    fn read_all(wire: &[u8], step: usize) -> Result<Vec<(u8, Vec<u8>)>, Error> {
        let mut reader = FrameReader::new(1 << 20);
        let mut frames = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        for chunk in wire.chunks(step) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (used, piece) = reader.next(rest)?;
                match piece {
                    Piece::Partial => {}
                    Piece::Header { opcode, len: 0 } => frames.push((opcode, Vec::new())),
                    Piece::Header { opcode, .. } => current = Some((opcode, Vec::new())),
                    Piece::Payload { len, last } => {
                        let frame = current.as_mut().expect("a header first");
                        frame.1.extend_from_slice(&rest[..len]);
                        if last {
                            frames.push(current.take().expect("a frame"));
                        }
                    }
                    Piece::Control { opcode } => frames.push((opcode, reader.control().to_vec())),
                }
                rest = &rest[used..];
            }
        }
        assert!(current.is_none(), "a frame left unfinished");
        Ok(frames)
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\
                    Connection: keep-alive, Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_response(good.as_bytes(), key).unwrap();
        let wrong = good.replace("s3pP", "AAAA");
        let err = check_response(wrong.as_bytes(), key).unwrap_err();
        assert!(err.to_string().contains("Sec-WebSocket-Accept"), "{err}");
        let refused = "HTTP/1.1 404 Not Found\r\n\r\n";
        let err = check_response(refused.as_bytes(), key).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        let plain = good.replace("upgrade: WebSocket\r\n", "");
        assert!(check_response(plain.as_bytes(), key).is_err());
    }

    #[test]
    fn upgrade_over_a_pipe() {
        /// Answers the request it is written with a correct 101.
        struct Peer {
            request: Vec<u8>,
            response: io::Cursor<Vec<u8>>,
        }
        impl Write for Peer {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.request.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                let text = String::from_utf8(self.request.clone()).unwrap();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap();
                // Two reads' worth, to cut the response.
                *self.response.get_mut() = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{}\r\n\r\n",
                    accept_key(key),
                    "X-Pad: ".to_string() + &"p".repeat(1500)
                )
                .into_bytes();
                Ok(())
            }
        }
        impl Read for Peer {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.response.read(buf)
            }
        }
        let mut peer = Peer {
            request: Vec::new(),
            response: io::Cursor::new(Vec::new()),
        };
        upgrade(&mut peer, "localhost", 8080, "/chat").unwrap();
        let request = String::from_utf8(peer.request).unwrap();
        assert!(request.starts_with("GET /chat HTTP/1.1\r\nHost: localhost:8080\r\n"));
        assert!(request.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn client_frames_are_masked_and_sized() {
        for len in [0usize, 1, 7, 64, 125, 126, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            push_frame(&mut out, OP_BINARY, &payload, mask);
            let head = frame_header_len(len);
            assert_eq!(out.len(), head + len, "len {len}");
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80, "mask bit");
            let announced = match out[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([out[2], out[3]])),
                127 => u64::from_be_bytes(out[2..10].try_into().unwrap()),
                n => u64::from(n),
            };
            assert_eq!(announced, len as u64);
            assert_eq!(out[head - 4..head], mask);
            // Byte i is XORed with mask[i % 4].
            for (i, (&got, &want)) in out[head..].iter().zip(&payload).enumerate() {
                assert_eq!(got, want ^ mask[i % 4], "len {len} byte {i}");
            }
        }
    }

    #[test]
    fn server_frames_in_every_length_form_and_any_cut() {
        let mut wire = Vec::new();
        let small: Vec<u8> = (0..64u8).collect();
        let medium: Vec<u8> = (0..300).map(|i| i as u8).collect();
        wire.extend(server_frame(0x82, &small, 0));
        wire.extend(server_frame(0x81, b"hello - Receive Completed", 0));
        wire.extend(server_frame(0x82, &medium, 2));
        // The 8-byte form for a short payload (not minimal, still valid).
        wire.extend(server_frame(0x82, &small, 8));
        wire.extend(server_frame(0x89, b"ping!", 0));
        wire.extend(server_frame(0x82, b"", 0));
        wire.extend(server_frame(0x88, &1000u16.to_be_bytes(), 0));
        let want = vec![
            (OP_BINARY, small.clone()),
            (OP_TEXT, b"hello - Receive Completed".to_vec()),
            (OP_BINARY, medium),
            (OP_BINARY, small),
            (OP_PING, b"ping!".to_vec()),
            (OP_BINARY, Vec::new()),
            (OP_CLOSE, 1000u16.to_be_bytes().to_vec()),
        ];
        for step in [1, 2, 3, 5, 9, 64, 1000, wire.len()] {
            assert_eq!(read_all(&wire, step).unwrap(), want, "step {step}");
        }
        assert_eq!(close_code(&1000u16.to_be_bytes()), Some(1000));
        assert_eq!(close_code(&[]), None);
    }

    #[test]
    fn fragments_and_bad_frames_are_errors_not_waits() {
        // A text message in two fragments: the first frame has no FIN.
        let mut wire = server_frame(0x01, b"hel", 0);
        wire.extend(server_frame(0x80, b"lo", 0));
        assert_eq!(read_all(&wire, 1), Err(Error::Fragmented));
        // A lone continuation frame.
        assert_eq!(
            read_all(&server_frame(0x80, b"lo", 0), 100),
            Err(Error::Fragmented)
        );
        assert_eq!(
            read_all(&server_frame(0xC2, b"x", 0), 100),
            Err(Error::Reserved)
        );
        let mut masked = server_frame(0x82, b"x", 0);
        masked[1] |= 0x80;
        assert_eq!(read_all(&masked, 100), Err(Error::Masked));
        assert_eq!(
            read_all(&server_frame(0x83, b"x", 0), 100),
            Err(Error::Opcode(3))
        );
        assert_eq!(
            read_all(&server_frame(0x89, &[0; 126], 2), 100),
            Err(Error::BadControl)
        );
        assert_eq!(
            read_all(&server_frame(0x09, b"", 0), 100),
            Err(Error::BadControl)
        );
        // A 64-bit length is refused from its header, before any payload.
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut reader = FrameReader::new(1 << 20);
        assert_eq!(reader.next(&huge), Err(Error::TooLong(u64::MAX, 1 << 20)));
    }

    #[test]
    fn mask_is_its_own_inverse_at_any_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let mut masked = data.clone();
            apply_mask(&mut masked, [1, 2, 3, 4]);
            for (i, (&m, &d)) in masked.iter().zip(&data).enumerate() {
                assert_eq!(m, d ^ [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut masked, [1, 2, 3, 4]);
            assert_eq!(masked, data);
        }
    }
}
