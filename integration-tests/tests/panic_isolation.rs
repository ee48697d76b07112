//! A panic inside a callback while replies are queued closes that session
//! only (issue 11): its replies queued before the panic still reach its
//! peer, and the other sessions on the same worker lose nothing and keep
//! their fast path, counted as allocations per echoed message (a count,
//! not a time).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use integration_tests::counting_alloc::{Counting, allocations};
use integration_tests::{lp as encode_frame, read_lp as read_frame, start_server};
use session_core::{DisconnectReason, Framing, Session, SessionConfig, SessionHandle};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Echoes; on `boom`, queues a last reply and panics.
struct Volatile {
    ended: mpsc::Sender<DisconnectReason>,
}

impl Session for Volatile {
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        if message == b"boom" {
            handle.send(b"last words").unwrap();
            panic!("boom");
        }
        handle.send(message).unwrap();
    }

    fn on_disconnected(&mut self, _: &SessionHandle, reason: &DisconnectReason) {
        let _ = self.ended.send(reason.clone());
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// `count` round trips of a 64-byte message on each of `clients`, in turn,
/// allocating nothing per message itself.
fn ping_pong(clients: &mut [TcpStream], count: usize) {
    let payload: Vec<u8> = (0..64u8).collect();
    let frame = encode_frame(&payload);
    let mut reply = vec![0u8; frame.len()];
    for _ in 0..count {
        for client in clients.iter_mut() {
            client.write_all(&frame).unwrap();
            client.read_exact(&mut reply).unwrap();
            assert_eq!(reply, frame);
        }
    }
}

#[test]
fn a_panicking_session_loses_only_itself_and_its_worker_keeps_its_fast_path() {
    // One worker: every session below runs on the same thread.
    assert!(session_core::set_worker_threads(1));
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let (ended, reasons) = mpsc::channel();
    let server = start_server(config, move || Volatile {
        ended: ended.clone(),
    });
    let addr = server.addr;

    let mut good: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    ping_pong(&mut good, 500);
    let before = allocations();
    ping_pong(&mut good, 2_000);
    let healthy = (allocations() - before) as f64 / 6_000.0;

    // Each bad peer sends two messages and the fatal one in one write: the
    // two echoes and the last words are queued in the same batch as the
    // panic, and still arrive, then the end of stream.
    for _ in 0..5 {
        let mut bad = connect(addr);
        let mut wire = Vec::new();
        for message in [&b"one"[..], b"two", b"boom"] {
            wire.extend_from_slice(&encode_frame(message));
        }
        bad.write_all(&wire).unwrap();
        for expected in [&b"one"[..], b"two", b"last words"] {
            assert_eq!(read_frame(&mut bad), expected);
        }
        let mut rest = Vec::new();
        bad.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the last words");
        let reason = reasons.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(&reason, DisconnectReason::Panicked(m) if m == "boom"),
            "{reason:?}"
        );
    }

    // The good sessions on the same worker: every echo right, and no more
    // allocations per message than before the panics.
    let before = allocations();
    ping_pong(&mut good, 2_000);
    let after_panics = (allocations() - before) as f64 / 6_000.0;
    println!(
        "allocations per echoed message on the worker: {healthy:.4} before the panics, {after_panics:.4} after"
    );
    assert!(
        after_panics <= 0.05,
        "{after_panics:.4} allocations per message after the panics ({healthy:.4} before)"
    );

    drop(good);
    server.stop(Duration::from_secs(10)).unwrap();
    assert!(reasons.try_recv().is_ok(), "the good sessions ended too");
}
