//! client-app's load mode over WebSocket against a WebSocket server written
//! here, frame by frame, to be awkward where RFC 6455 allows it: every
//! reply written a byte at a time, in all three length forms (the 16- and
//! 64-bit ones for a 64-byte payload too, which the RFC calls non-minimal
//! but a reader must still take), text and binary by turns, with pings
//! between them whose pongs must come back masked and with the ping's
//! payload; at the end each connection sends a close frame with 1000. And
//! the upgrade's failures: a wrong `Sec-WebSocket-Accept` and
//! a refusal each end the run with a line that says so.
//!
//! Linux only: the load mode is an epoll loop.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use integration_tests::process::{Proc, json_line, json_number};

/// How long one load run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How the server answers the upgrade.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Upgrade {
    Accept,
    WrongKey,
    Refuse,
}

/// What one connection of the server saw.
#[derive(Debug, Default)]
struct Seen {
    messages: u64,
    pings: u64,
    /// Pongs whose payload was the ping's.
    pongs: u64,
    /// Client frames without the mask bit (each is an error).
    unmasked: u64,
    /// The code of the client's close frame, if it sent one.
    close: Option<u16>,
}

/// Reads exactly `buf.len()` bytes; false at the end of the stream.
fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    stream.read_exact(buf).is_ok()
}

/// Reads one client frame: (opcode, masked, unmasked payload).
fn read_frame(stream: &mut TcpStream) -> Option<(u8, bool, Vec<u8>)> {
    let mut head = [0u8; 2];
    if !read_exact(stream, &mut head) {
        return None;
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            read_exact(stream, &mut ext).then_some(())?;
            u64::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            read_exact(stream, &mut ext).then_some(())?;
            u64::from_be_bytes(ext)
        }
        n => u64::from(n),
    };
    assert!(len <= 1 << 20, "a client frame of {len} bytes");
    let masked = head[1] & 0x80 != 0;
    let mut mask = [0u8; 4];
    if masked && !read_exact(stream, &mut mask) {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    read_exact(stream, &mut payload).then_some(())?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Some((head[0] & 0x0f, masked, payload))
}

/// An unmasked server frame with its length in `form` (0: 7 bits, 2: 16,
/// 8: 64).
fn server_frame(opcode: u8, payload: &[u8], form: usize) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
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

/// Writes `bytes` a byte at a time: the client gets them in as many reads.
fn write_bytewise(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| stream.write_all(std::slice::from_ref(b)).is_ok())
}

/// Serves one connection: the upgrade as `how` says, then the echo.
fn serve(mut stream: TcpStream, how: Upgrade) -> Seen {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(RUN_LIMIT));
    let mut seen = Seen::default();
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
        if !read_exact(&mut stream, &mut byte) {
            return seen;
        }
        request.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or("")
        .to_string();
    assert!(text.starts_with("GET /load HTTP/1.1\r\n"), "{text}");
    let response = match how {
        Upgrade::Refuse => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_string(),
        Upgrade::Accept | Upgrade::WrongKey => {
            let accept = if how == Upgrade::Accept {
                derive_accept_key(key.as_bytes())
            } else {
                derive_accept_key(b"some other key")
            };
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
        }
    };
    if stream.write_all(response.as_bytes()).is_err() || how != Upgrade::Accept {
        return seen;
    }
    let mut sent_pings = Vec::new();
    while let Some((opcode, masked, payload)) = read_frame(&mut stream) {
        if !masked {
            seen.unmasked += 1;
        }
        match opcode {
            0x2 => {
                let n = seen.messages;
                seen.messages += 1;
                // Every third reply after a ping; the forms and kinds by turns.
                if n % 3 == 1 {
                    let ping = format!("ping {n}").into_bytes();
                    if !write_bytewise(&mut stream, &server_frame(0x9, &ping, 0)) {
                        break;
                    }
                    sent_pings.push(ping);
                    seen.pings += 1;
                }
                let opcode = if n % 2 == 0 { 0x2 } else { 0x1 };
                let form = [0, 2, 8][(n % 3) as usize];
                if !write_bytewise(&mut stream, &server_frame(opcode, &payload, form)) {
                    break;
                }
            }
            0xA => {
                if sent_pings.first() == Some(&payload) {
                    sent_pings.remove(0);
                    seen.pongs += 1;
                }
            }
            0x8 => {
                seen.close =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                break;
            }
            _ => break,
        }
    }
    seen
}

/// A server on a free loopback port whose connections are served as `how`
/// says, each on a thread; every connection's [`Seen`] goes to the channel.
fn start_server(how: Upgrade, connections: usize) -> (u16, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(serve(stream, how));
            });
        }
    });
    (port, rx)
}

fn run_load(port: u16, clients: &str) -> (String, String, bool) {
    let port = port.to_string();
    let args = [
        "--websocket",
        "--path",
        "/load",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--clients",
        clients,
        "--count",
        "60",
        "--window",
        "3",
        "--json",
    ];
    let client = Proc::app("client-app", &args).finish_within(RUN_LIMIT);
    (client.stdout(), client.stderr, client.status.success())
}

#[test]
fn replies_in_every_length_form_cut_into_bytes_and_pings_between() {
    let (port, seen) = start_server(Upgrade::Accept, 3);
    let (out, err, ok) = run_load(port, "3");
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}\n{err}");
    assert_eq!(json_number(json, "messages"), 180.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
    for _ in 0..3 {
        let seen = seen.recv_timeout(RUN_LIMIT).expect("a connection's record");
        assert_eq!(seen.messages, 60, "{seen:?}");
        assert_eq!(seen.pings, 20, "{seen:?}");
        assert_eq!(seen.pongs, seen.pings, "every ping answered: {seen:?}");
        assert_eq!(seen.unmasked, 0, "every client frame masked: {seen:?}");
        assert_eq!(seen.close, Some(1000), "a clean close at the end: {seen:?}");
    }
}

#[test]
fn a_wrong_accept_key_ends_the_run_before_any_load() {
    let (port, _seen) = start_server(Upgrade::WrongKey, 1);
    let (out, err, ok) = run_load(port, "1");
    assert!(!ok, "a wrong key was taken: {out}");
    assert!(err.contains("Sec-WebSocket-Accept"), "{err}");
}

#[test]
fn a_refused_upgrade_ends_the_run_with_the_status() {
    let (port, _seen) = start_server(Upgrade::Refuse, 1);
    let (out, err, ok) = run_load(port, "1");
    assert!(!ok, "a refusal was taken: {out}");
    assert!(err.contains("HTTP/1.1 403 Forbidden"), "{err}");
}
