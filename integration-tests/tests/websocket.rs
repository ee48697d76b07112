//! WebSocket (issue 14), in process: a WebSocket listener driven by a
//! minimal raw-socket client written here (so that every malformed case
//! can be sent), and the library's own WebSocket connector against its
//! listener, plain and over TLS (`wss`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use async_std::task::block_on;
use integration_tests::pki::Pki;
use integration_tests::{
    Events, Recorder, TIMEOUT, XorShift, connect, start_websocket_server, wait_until,
};
use session_core::{
    ClientTls, Connector, DisconnectReason, Frame, Framing, IpInformation, MessageKind, ServerTls,
    Session, SessionConfig, SessionHandle, WebSocketClient, WebSocketServer,
};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A session that records each message with its kind and, if `echo`,
/// answers it in the same kind.
#[derive(Clone)]
struct KindEcho {
    recorder: Recorder,
    kinds: Sender<(MessageKind, Vec<u8>)>,
    echo: bool,
}

impl Session for KindEcho {
    fn on_connected(&mut self, handle: &SessionHandle) {
        self.recorder.on_connected(handle);
    }

    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        self.recorder.on_received(handle, message);
    }

    fn on_message(&mut self, handle: &SessionHandle, message: &[u8], kind: MessageKind) {
        let _ = self.kinds.send((kind, message.to_vec()));
        self.recorder.on_received(handle, message);
        if self.echo {
            let _ = handle.send_message(kind, &[message]);
        }
    }

    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        self.recorder.on_disconnected(handle, reason);
    }
}

/// Each message a session got, with its kind.
type Kinds = Receiver<(MessageKind, Vec<u8>)>;

fn kind_echo() -> (KindEcho, Events, Kinds) {
    let (recorder, events) = Recorder::new();
    let (tx, rx) = channel();
    (
        KindEcho {
            recorder,
            kinds: tx,
            echo: true,
        },
        events,
        rx,
    )
}

fn small(max_frame_len: usize) -> SessionConfig {
    SessionConfig {
        max_frame_len,
        ..SessionConfig::default()
    }
}

/// A WebSocket echo server (each message back in its kind) on `/`.
fn echo_server(config: SessionConfig) -> (integration_tests::Server, Events) {
    let (session, events, _kinds) = kind_echo();
    let server = start_websocket_server(config, WebSocketServer::new(), None, move || {
        session.clone()
    });
    (server, events)
}

/// The raw client's upgrade request for `path`, with `extra` header lines.
fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head (up to its blank line), byte by byte.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!("read a response head: {e} (got {:?})", head),
        }
        assert!(head.len() < 64 * 1024, "response head over 64 KiB");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A raw client that has made the upgrade on `path`.
fn upgraded(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(request(path, "").as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    stream
}

/// One frame as a client sends it: masked with a fixed key unless
/// `masked` is false.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, true)
}

/// Reads one server frame: (fin, opcode, payload). Server frames are
/// never masked.
fn read_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .unwrap_or_else(|e| panic!("read a frame header: {e}"));
    assert_eq!(head[1] & 0x80, 0, "a server frame is masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    assert!(len <= 1 << 24, "a server frame of {len} bytes");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).unwrap();
    (head[0] & 0x80 != 0, head[0] & 0x0F, payload)
}

/// Reads frames until a close frame; its code. Then the connection must
/// end.
fn expect_close(stream: &mut TcpStream) -> Option<u16> {
    for _ in 0..10_000 {
        let (_, opcode, payload) = read_frame(stream);
        if opcode == CLOSE {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            // Answer it, as a client does, then see the end.
            let _ = stream.write_all(&masked(CLOSE, &payload[..payload.len().min(2)]));
            integration_tests::assert_closed_within(stream, TIMEOUT);
            return code;
        }
    }
    panic!("no close frame in 10,000 frames");
}

/// The only session of `events` that has ended; its reason.
fn only_reason(events: &mut Events) -> DisconnectReason {
    let (id, _) = events.next_connected(&[]);
    events.reason(id)
}

#[test]
fn text_and_binary_come_back_in_their_kind() {
    let (session, mut events, kinds) = kind_echo();
    let server = start_websocket_server(small(70_000), WebSocketServer::new(), None, {
        move || session.clone()
    });
    let mut client = upgraded(server.addr, "/");
    client
        .write_all(&masked(TEXT, "h\u{e9}llo".as_bytes()))
        .unwrap();
    assert_eq!(read_frame(&mut client), (true, TEXT, "h\u{e9}llo".into()));
    client.write_all(&masked(BINARY, &[0, 1, 2, 255])).unwrap();
    assert_eq!(read_frame(&mut client), (true, BINARY, vec![0, 1, 2, 255]));
    // Lengths on each side of the 2- and 8-byte length fields.
    for len in [0, 125, 126, 65_535, 65_536] {
        let payload = XorShift::new(len as u64 + 1).bytes(len);
        client.write_all(&masked(BINARY, &payload)).unwrap();
        let (fin, opcode, back) = read_frame(&mut client);
        assert!(fin && opcode == BINARY && back == payload, "len {len}");
    }
    let got: Vec<_> = kinds.try_iter().take(2).collect();
    assert_eq!(
        got,
        vec![
            (MessageKind::Text, "h\u{e9}llo".as_bytes().to_vec()),
            (MessageKind::Binary, vec![0, 1, 2, 255])
        ]
    );
    let (_, handle) = events.next_connected(&[]);
    assert_eq!(handle.framing(), Framing::WebSocket);
    let info = handle.websocket().expect("a WebSocket session");
    assert_eq!(info.path(), "/");
    assert!(!info.is_client());
    // A close from the client is answered with its code.
    client.write_all(&masked(CLOSE, b"\x03\xe8bye")).unwrap();
    assert_eq!(expect_close(&mut client), Some(1000));
    match only_reason(&mut events) {
        DisconnectReason::WebSocketClose {
            code: Some(1000),
            reason,
        } => assert_eq!(reason, "bye"),
        other => panic!("unexpected reason {other}"),
    }
    drop(server);
}

#[test]
fn fragments_are_joined_and_a_ping_between_them_is_answered() {
    let (server, _events) = echo_server(SessionConfig::default());
    let mut client = upgraded(server.addr, "/");
    let mut wire = frame(false, TEXT, b"Hel", true);
    wire.extend(frame(true, PING, b"are you there", true));
    wire.extend(frame(false, CONTINUATION, b"lo, ", true));
    wire.extend(frame(true, CONTINUATION, b"world", true));
    // Byte by byte: every frame is cut at every place.
    for byte in &wire {
        client.write_all(std::slice::from_ref(byte)).unwrap();
    }
    assert_eq!(
        read_frame(&mut client),
        (true, PONG, b"are you there".to_vec())
    );
    assert_eq!(
        read_frame(&mut client),
        (true, TEXT, b"Hello, world".to_vec())
    );
    // An unsolicited pong is ignored.
    client.write_all(&masked(PONG, b"x")).unwrap();
    client.write_all(&masked(BINARY, b"after")).unwrap();
    assert_eq!(read_frame(&mut client), (true, BINARY, b"after".to_vec()));
}

#[test]
fn ten_thousand_messages_come_back_in_order() {
    let (server, _events) = echo_server(SessionConfig::default());
    let mut client = upgraded(server.addr, "/");
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut wire = Vec::new();
        for i in 0..10_000u32 {
            wire.extend(masked(BINARY, &i.to_be_bytes()));
        }
        writer.write_all(&wire).unwrap();
    });
    for i in 0..10_000u32 {
        let (fin, opcode, payload) = read_frame(&mut client);
        assert!(fin && opcode == BINARY);
        assert_eq!(payload, i.to_be_bytes(), "message {i}");
    }
    sender.join().unwrap();
}

#[test]
fn frames_sent_with_the_upgrade_request_are_delivered() {
    let (server, _events) = echo_server(SessionConfig::default());
    let mut client = connect(server.addr);
    let mut wire = request("/", "").into_bytes();
    wire.extend(masked(TEXT, b"early"));
    client.write_all(&wire).unwrap();
    assert!(read_head(&mut client).starts_with("HTTP/1.1 101"));
    assert_eq!(read_frame(&mut client), (true, TEXT, b"early".to_vec()));
}

/// Sends `wire` as a whole request; the status line of the answer, which
/// must be followed by the connection's end.
fn refused_with(addr: SocketAddr, wire: &[u8]) -> String {
    let mut client = connect(addr);
    // The server may close before it has read everything (a flood).
    let _ = client.write_all(wire);
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn refused_upgrades_get_their_status_and_are_never_sessions() {
    let (recorder, mut events) = Recorder::new();
    let ws = WebSocketServer::new()
        .path("/chat")
        .allowed_origins(["https://good.example"]);
    let config = SessionConfig {
        websocket_max_header_bytes: 1024,
        websocket_max_headers: 16,
        ..SessionConfig::default()
    };
    let server = start_websocket_server(config, ws, None, move || recorder.clone());
    let addr = server.addr;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a plain GET",
            b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "HTTP/1.1 426 ",
        ),
        (
            "a POST",
            b"POST /chat HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "HTTP/1.1 405 ",
        ),
        ("not HTTP", b"hello\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
        (
            "a wrong path",
            request("/other", "").into_bytes(),
            "HTTP/1.1 404 ",
        ),
        (
            "a bad origin",
            request("/chat", "Origin: https://evil.example\r\n").into_bytes(),
            "HTTP/1.1 403 ",
        ),
        (
            "no key",
            request("/chat", "").replace(key, "").into_bytes(),
            "HTTP/1.1 400 ",
        ),
        (
            "a key of 15 bytes",
            request("/chat", "")
                .replace(key, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n")
                .into_bytes(),
            "HTTP/1.1 400 ",
        ),
        (
            "version 8",
            request("/chat", "")
                .replace("Version: 13", "Version: 8")
                .into_bytes(),
            "HTTP/1.1 426 ",
        ),
        (
            "too many headers",
            request("/chat", &"X-A: b\r\n".repeat(20)).into_bytes(),
            "HTTP/1.1 431 ",
        ),
        (
            "a header flood",
            request("/chat", &format!("X-Big: {}\r\n", "a".repeat(100_000))).into_bytes(),
            "HTTP/1.1 431 ",
        ),
    ];
    for (n, (what, wire, want)) in cases.iter().enumerate() {
        let status = refused_with(addr, wire);
        assert!(status.starts_with(want), "{what}: answered {status:?}");
        assert!(
            wait_until(TIMEOUT, || server.stats.get().websocket_rejected
                == n as u64 + 1),
            "{what}: not counted"
        );
    }
    // The good request is served, from the allowed origin or from no
    // browser at all.
    for origin in ["Origin: https://GOOD.example\r\n", ""] {
        let seen = events.session_ids();
        let mut client = connect(addr);
        client
            .write_all(request("/chat?room=1", origin).as_bytes())
            .unwrap();
        assert!(read_head(&mut client).starts_with("HTTP/1.1 101"));
        let (_, handle) = events.next_connected(&seen);
        assert_eq!(handle.websocket().unwrap().path(), "/chat?room=1");
    }
    assert_eq!(
        events.session_ids().len(),
        2,
        "a refused request became a session"
    );
    assert_eq!(server.stats.get().accepted, 2);
}

#[test]
fn an_unfinished_upgrade_is_closed_at_its_deadline_and_the_next_client_is_served() {
    let config = SessionConfig {
        websocket_handshake_timeout: Duration::from_millis(300),
        ..SessionConfig::default()
    };
    let (server, _events) = echo_server(config);
    let mut slow = connect(server.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    integration_tests::assert_closed_within(&mut slow, TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(wait_until(TIMEOUT, || server
        .stats
        .get()
        .websocket_rejected
        == 1));
    let mut client = upgraded(server.addr, "/");
    client.write_all(&masked(TEXT, b"next")).unwrap();
    assert_eq!(read_frame(&mut client), (true, TEXT, b"next".to_vec()));
}

/// Sends `wire` after the upgrade; the close code the server answers
/// with, and the server session's reason.
fn closes_with(config: SessionConfig, wire: &[u8]) -> (Option<u16>, DisconnectReason) {
    let (server, mut events) = echo_server(config);
    let mut client = upgraded(server.addr, "/");
    let _ = client.write_all(wire);
    let code = expect_close(&mut client);
    (code, only_reason(&mut events))
}

#[test]
fn broken_rules_close_with_their_codes() {
    let unmasked = frame(true, BINARY, b"plain", false);
    let (code, reason) = closes_with(SessionConfig::default(), &unmasked);
    assert_eq!(code, Some(1002));
    assert!(
        matches!(reason, DisconnectReason::WebSocket(ref e) if e.close_code() == 1002),
        "{reason}"
    );

    let mut rsv = masked(BINARY, b"x");
    rsv[0] |= 0x40;
    assert_eq!(closes_with(SessionConfig::default(), &rsv).0, Some(1002));

    let long_ping = masked(PING, &[7; 126]);
    assert_eq!(
        closes_with(SessionConfig::default(), &long_ping).0,
        Some(1002)
    );

    let fragmented_ping = frame(false, PING, b"x", true);
    assert_eq!(
        closes_with(SessionConfig::default(), &fragmented_ping).0,
        Some(1002)
    );

    let stray = masked(CONTINUATION, b"x");
    assert_eq!(closes_with(SessionConfig::default(), &stray).0, Some(1002));

    let opcode = masked(0x3, b"x");
    assert_eq!(closes_with(SessionConfig::default(), &opcode).0, Some(1002));

    let (code, reason) = closes_with(SessionConfig::default(), &masked(TEXT, b"bad \xff"));
    assert_eq!(code, Some(1007));
    assert!(reason.to_string().contains("UTF-8"), "{reason}");

    // Invalid UTF-8 split over fragments is found once the message is whole.
    let mut split = frame(false, TEXT, b"\xe2\x82", true);
    split.extend(frame(true, CONTINUATION, b"x", true));
    assert_eq!(closes_with(SessionConfig::default(), &split).0, Some(1007));

    let bad_code = masked(CLOSE, &1005u16.to_be_bytes());
    assert_eq!(
        closes_with(SessionConfig::default(), &bad_code).0,
        Some(1002)
    );
}

#[test]
fn lengths_over_the_limit_close_with_1009_before_anything_is_held() {
    // A length of 2^63 in the header, and nothing after it.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let (code, reason) = closes_with(small(1000), &huge);
    assert_eq!(code, Some(1009));
    assert!(
        matches!(reason, DisconnectReason::FrameTooLarge { max: 1000, .. }),
        "{reason}"
    );

    // One byte over, in one frame.
    assert_eq!(
        closes_with(small(1000), &masked(BINARY, &[0; 1001])).0,
        Some(1009)
    );

    // Fragments that each fit but together do not.
    let mut fragments = frame(false, BINARY, &[1; 600], true);
    fragments.extend(frame(true, CONTINUATION, &[2; 600], true));
    let (code, reason) = closes_with(small(1000), &fragments);
    assert_eq!(code, Some(1009));
    assert!(
        matches!(
            reason,
            DisconnectReason::FrameTooLarge {
                len: 1200,
                max: 1000
            }
        ),
        "{reason}"
    );

    // Exactly the limit is served.
    let (server, _events) = echo_server(small(1000));
    let mut client = upgraded(server.addr, "/");
    let mut wire = frame(false, BINARY, &[1; 500], true);
    wire.extend(frame(true, CONTINUATION, &[2; 500], true));
    client.write_all(&wire).unwrap();
    let (_, _, back) = read_frame(&mut client);
    assert_eq!(back.len(), 1000);
}

#[test]
fn a_local_close_sends_1000_and_shutdown_1001() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.reply(|handle, message| {
        if message == b"bye" {
            handle.disconnect();
        }
    });
    let server = start_websocket_server(SessionConfig::default(), WebSocketServer::new(), None, {
        move || recorder.clone()
    });
    let mut client = upgraded(server.addr, "/");
    client.write_all(&masked(TEXT, b"bye")).unwrap();
    assert_eq!(expect_close(&mut client), Some(1000));
    assert!(matches!(
        only_reason(&mut events),
        DisconnectReason::LocalClose
    ));

    let mut client = upgraded(server.addr, "/");
    assert!(wait_until(TIMEOUT, || server.stats.get().active == 1));
    server.shutdown.shutdown();
    assert_eq!(expect_close(&mut client), Some(1001));
}

#[test]
fn a_broadcast_frame_reaches_websocket_sessions() {
    let (server, mut events) = echo_server(SessionConfig::default());
    let mut client = upgraded(server.addr, "/");
    let (_, handle) = events.next_connected(&[]);
    let small = Frame::websocket(MessageKind::Text, b"tick", 1024).unwrap();
    let large = Frame::new(Framing::WebSocket, &[9; 1000], 65_533).unwrap();
    handle.send_frame(&small).unwrap();
    handle.send_frame(&large).unwrap();
    handle.send_text("text").unwrap();
    handle.send_bytes(vec![5; 600].into()).unwrap();
    assert!(handle.send_message(MessageKind::Text, &[b"\xff"]).is_err());
    let plain = Frame::new(Framing::Raw, b"raw", 1024).unwrap();
    assert!(handle.send_frame(&plain).is_err());
    assert_eq!(read_frame(&mut client), (true, TEXT, b"tick".to_vec()));
    assert_eq!(read_frame(&mut client), (true, BINARY, vec![9; 1000]));
    assert_eq!(read_frame(&mut client), (true, TEXT, b"text".to_vec()));
    assert_eq!(read_frame(&mut client), (true, BINARY, vec![5; 600]));
}

/// A client session that records what it gets, with its kind.
fn ws_connect(
    addr: SocketAddr,
    config: SessionConfig,
    client: WebSocketClient,
    tls: Option<ClientTls>,
) -> std::io::Result<(session_core::Connection, Events, Kinds)> {
    let (recorder, events) = Recorder::new();
    let (tx, rx) = channel();
    let session = KindEcho {
        recorder,
        kinds: tx,
        echo: false,
    };
    let mut connector = Connector::new(config)?.with_websocket(client);
    if let Some(tls) = tls {
        connector = connector.with_tls(tls);
    }
    let connection = block_on(connector.connect(&IpInformation::from(addr), session))?;
    Ok((connection, events, rx))
}

fn next_message(kinds: &Receiver<(MessageKind, Vec<u8>)>) -> (MessageKind, Vec<u8>) {
    kinds.recv_timeout(TIMEOUT).expect("a message within 5 s")
}

#[test]
fn the_connector_speaks_to_the_listener_both_ways() {
    let (session, mut server_events, server_kinds) = kind_echo();
    let ws = WebSocketServer::new()
        .path("/echo")
        .subprotocols(["v2", "v1"]);
    let server =
        start_websocket_server(SessionConfig::default(), ws, None, move || session.clone());
    let client = WebSocketClient::new("/echo")
        .origin("https://example.com")
        .subprotocols(["v1", "v2"]);
    let (connection, mut events, kinds) =
        ws_connect(server.addr, SessionConfig::default(), client, None).unwrap();
    let handle = connection.handle().clone();
    let info = handle.websocket().unwrap();
    assert!(info.is_client());
    assert_eq!(info.subprotocol(), Some("v2"));
    handle.send_text("Hi 0").unwrap();
    handle.send(&[1, 2, 3]).unwrap();
    let big: Vec<u8> = XorShift::new(7).bytes(60_000);
    handle.send_bytes(big.clone().into()).unwrap();
    handle
        .send_frame(&Frame::websocket(MessageKind::Text, b"framed", 1024).unwrap())
        .unwrap();
    // The server saw unmasked messages: the client masked every frame.
    assert_eq!(
        next_message(&server_kinds),
        (MessageKind::Text, b"Hi 0".to_vec())
    );
    assert_eq!(
        next_message(&server_kinds),
        (MessageKind::Binary, vec![1, 2, 3])
    );
    assert_eq!(
        next_message(&server_kinds),
        (MessageKind::Binary, big.clone())
    );
    assert_eq!(
        next_message(&server_kinds),
        (MessageKind::Text, b"framed".to_vec())
    );
    // And the client got them back from a server that does not mask.
    assert_eq!(next_message(&kinds), (MessageKind::Text, b"Hi 0".to_vec()));
    assert_eq!(next_message(&kinds), (MessageKind::Binary, vec![1, 2, 3]));
    assert_eq!(next_message(&kinds), (MessageKind::Binary, big));
    assert_eq!(
        next_message(&kinds),
        (MessageKind::Text, b"framed".to_vec())
    );
    let (server_id, server_handle) = server_events.next_connected(&[]);
    assert_eq!(
        server_handle.websocket().unwrap().origin(),
        Some("https://example.com")
    );
    // The client closes: the server is told 1000, the client its own close.
    handle.disconnect();
    let reason = block_on(connection.closed());
    assert!(matches!(reason, DisconnectReason::LocalClose), "{reason}");
    match server_events.reason(server_id) {
        DisconnectReason::WebSocketClose {
            code: Some(1000), ..
        } => {}
        other => panic!("server saw {other}"),
    }
    let (client_id, _) = events.next_connected(&[]);
    assert!(matches!(
        events.reason(client_id),
        DisconnectReason::LocalClose
    ));
}

#[test]
fn close_codes_reach_the_connectors_session() {
    // The server closes: the client is told 1000.
    let (recorder, mut server_events) = Recorder::new();
    let server = start_websocket_server(small(100), WebSocketServer::new(), None, move || {
        recorder.clone()
    });
    let (connection, _events, _kinds) = ws_connect(
        server.addr,
        SessionConfig::default(),
        WebSocketClient::new("/"),
        None,
    )
    .unwrap();
    let (_, server_handle) = server_events.next_connected(&[]);
    server_handle.disconnect();
    match block_on(connection.closed()) {
        DisconnectReason::WebSocketClose {
            code: Some(1000), ..
        } => {}
        other => panic!("client saw {other}"),
    }
    // The client sends more than the server takes: 1009 both sides.
    let (connection, _events, _kinds) = ws_connect(
        server.addr,
        SessionConfig::default(),
        WebSocketClient::new("/"),
        None,
    )
    .unwrap();
    let first = server_events.session_ids()[..1].to_vec();
    let (id, _) = server_events.next_connected(&first);
    connection.handle().send(&[0; 101]).unwrap();
    match block_on(connection.closed()) {
        DisconnectReason::WebSocketClose {
            code: Some(1009), ..
        } => {}
        other => panic!("client saw {other}"),
    }
    assert!(matches!(
        server_events.reason(id),
        DisconnectReason::FrameTooLarge { len: 101, max: 100 }
    ));
    // A subprotocol the server does not speak is no error: none is chosen.
    let offered = ws_connect(
        server.addr,
        SessionConfig::default(),
        WebSocketClient::new("/").subprotocols(["x"]).host("h"),
        None,
    )
    .unwrap();
    assert_eq!(offered.0.handle().websocket().unwrap().subprotocol(), None);
    // A refused upgrade fails the connect with the status.
    let ws = WebSocketServer::new().path("/only");
    let (recorder, _) = Recorder::new();
    let other =
        start_websocket_server(SessionConfig::default(), ws, None, move || recorder.clone());
    let err = ws_connect(
        other.addr,
        SessionConfig::default(),
        WebSocketClient::new("/"),
        None,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn wss_carries_websocket_over_tls() {
    let pki = Pki::new();
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, None).unwrap();
    let (session, mut server_events, _) = kind_echo();
    let server = start_websocket_server(
        SessionConfig::default(),
        WebSocketServer::new(),
        Some(tls),
        move || session.clone(),
    );
    let client_tls = ClientTls::new(Some(&pki.ca), None)
        .unwrap()
        .with_server_name("localhost")
        .unwrap();
    let (connection, _events, kinds) = ws_connect(
        server.addr,
        SessionConfig::default(),
        WebSocketClient::new("/"),
        Some(client_tls),
    )
    .unwrap();
    let handle = connection.handle();
    assert!(handle.tls().is_some() && handle.websocket().is_some());
    for i in 0..100u32 {
        handle.send_text(&format!("secure {i}")).unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(
            next_message(&kinds),
            (MessageKind::Text, format!("secure {i}").into_bytes())
        );
    }
    handle.disconnect();
    block_on(connection.closed());
    let (id, server_handle) = server_events.next_connected(&[]);
    assert!(server_handle.tls().is_some());
    assert!(matches!(
        server_events.reason(id),
        DisconnectReason::WebSocketClose {
            code: Some(1000),
            ..
        }
    ));
    // A plain WebSocket client at a wss listener never becomes a session.
    let mut plain = connect(server.addr);
    plain.write_all(request("/", "").as_bytes()).unwrap();
    integration_tests::assert_closed_within(&mut plain, TIMEOUT);
    assert!(wait_until(TIMEOUT, || server.stats.get().tls_rejected == 1));
}

/// Reads one client frame from a raw server's side: (opcode, mask key,
/// unmasked payload). Client frames must be masked.
fn read_client_frame(stream: &mut TcpStream) -> (u8, [u8; 4], Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).unwrap();
    assert_ne!(head[1] & 0x80, 0, "a client frame is not masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => panic!("no test frame is that long"),
        n => usize::from(n),
    };
    let mut key = [0u8; 4];
    stream.read_exact(&mut key).unwrap();
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    (head[0] & 0x0F, key, payload)
}

#[test]
fn the_connector_masks_every_frame_and_refuses_a_masked_server_frame() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("GET /raw HTTP/1.1\r\n"), "{head}");
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .to_owned();
        // 16 random bytes in base64.
        assert_eq!(key.len(), 24, "{key}");
        stream
            .write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_for(&key)
                )
                .as_bytes(),
            )
            .unwrap();
        let mut keys = Vec::new();
        for i in 0..3u8 {
            let (opcode, key, payload) = read_client_frame(&mut stream);
            assert_eq!((opcode, payload), (TEXT, vec![b'a' + i]));
            keys.push(key);
        }
        keys.dedup();
        assert_eq!(keys.len(), 3, "the same masking key twice in a row");
        // A ping is answered with a masked pong.
        stream.write_all(&frame(true, PING, b"hey", false)).unwrap();
        let (opcode, _, payload) = read_client_frame(&mut stream);
        assert_eq!((opcode, payload), (PONG, b"hey".to_vec()));
        // A masked frame from a server breaks the protocol: 1002.
        stream.write_all(&masked(BINARY, b"masked")).unwrap();
        let (opcode, _, payload) = read_client_frame(&mut stream);
        assert_eq!(opcode, CLOSE);
        u16::from_be_bytes([payload[0], payload[1]])
    });
    let (connection, _events, _kinds) = ws_connect(
        addr,
        SessionConfig::default(),
        WebSocketClient::new("/raw"),
        None,
    )
    .unwrap();
    for text in ["a", "b", "c"] {
        connection.handle().send_text(text).unwrap();
    }
    let reason = block_on(connection.closed());
    assert!(
        matches!(reason, DisconnectReason::WebSocket(ref e) if e.close_code() == 1002),
        "{reason}"
    );
    assert_eq!(peer.join().unwrap(), 1002);
}

/// `Sec-WebSocket-Accept` for `key`: SHA-1 of the key and the RFC's GUID,
/// in base64, by the test's own small SHA-1 so that the library's is not
/// checked against itself.
fn accept_for(key: &str) -> String {
    let mut data = key.as_bytes().to_vec();
    data.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&data))
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_test_sha1_and_base64_give_the_rfc_example() {
    assert_eq!(
        accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn on_sent_reports_messages_unmasked_and_never_pongs_or_closes() {
    let (recorder, mut server_events) = Recorder::new();
    let recorder = recorder.echo().record_sent();
    let server = start_websocket_server(SessionConfig::default(), WebSocketServer::new(), None, {
        move || recorder.clone()
    });
    let mut client = upgraded(server.addr, "/");
    client.write_all(&masked(PING, b"p")).unwrap();
    client.write_all(&masked(BINARY, b"one")).unwrap();
    assert_eq!(read_frame(&mut client), (true, PONG, b"p".to_vec()));
    assert_eq!(read_frame(&mut client), (true, BINARY, b"one".to_vec()));
    client.write_all(&masked(CLOSE, b"\x03\xe8")).unwrap();
    assert_eq!(expect_close(&mut client), Some(1000));
    let (id, _) = server_events.next_connected(&[]);
    server_events.reason(id);
    let sent: Vec<_> = server_events
        .of(id)
        .into_iter()
        .filter_map(|k| match k {
            integration_tests::EventKind::Sent(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![b"one".to_vec()]);

    // A client's frames are masked on the wire; `on_sent` sees the
    // message.
    let (recorder, mut events) = Recorder::new();
    let connector = Connector::new(SessionConfig::default())
        .unwrap()
        .with_websocket(WebSocketClient::new("/"));
    let connection =
        block_on(connector.connect(&IpInformation::from(server.addr), recorder.record_sent()))
            .unwrap();
    connection.handle().send_text("two").unwrap();
    let (id, _) = events.next_connected(&[]);
    assert_eq!(events.wait_received(id, 1), vec![b"two".to_vec()]);
    assert!(
        events
            .wait_for(
                TIMEOUT,
                |e| matches!(&e.kind, integration_tests::EventKind::Sent(m) if m == b"two")
            )
            .is_some()
    );
}

#[test]
fn a_panicking_callback_closes_with_1011_and_idle_with_1001() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.reply(|_, message| {
        assert_ne!(message, b"boom", "the session panics on boom");
    });
    let config = SessionConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..SessionConfig::default()
    };
    let server = start_websocket_server(config, WebSocketServer::new(), None, move || {
        recorder.clone()
    });
    let mut client = upgraded(server.addr, "/");
    client.write_all(&masked(TEXT, b"boom")).unwrap();
    assert_eq!(expect_close(&mut client), Some(1011));
    assert!(matches!(
        only_reason(&mut events),
        DisconnectReason::Panicked(_)
    ));
    let mut idle = upgraded(server.addr, "/");
    assert_eq!(expect_close(&mut idle), Some(1001));
}

#[test]
fn a_shutdown_does_not_wait_for_an_unfinished_upgrade() {
    let (server, _events) = echo_server(SessionConfig::default());
    let mut slow = connect(server.addr);
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert!(wait_until(TIMEOUT, || server.stats.get().active == 1));
    let started = Instant::now();
    // The upgrade's own deadline is 10 s, the drain deadline 5 s.
    server.stop(Duration::from_secs(3)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    integration_tests::assert_closed_within(&mut slow, TIMEOUT);
}
