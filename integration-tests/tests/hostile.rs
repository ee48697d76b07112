//! Hostile peers against a real listener: reset storms, garbage, slow and
//! byte-at-a-time writers, non-readers, too many connections, panicking
//! callbacks, silent peers.
//!
//! Every test ends by serving a well-behaved client correctly and (on Linux)
//! by checking that the process's open fd count is back where it started.
//! The tests run one at a time (they share the process's fd table).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use async_std::task;
use integration_tests::{
    Events, Recorder, Server, TIMEOUT, XorShift, assert_closed_within, assert_fds_back_to, connect,
    lp, open_fds, read_line, read_lp, read_n, read_to_close, shutdown_write, start_server,
    wait_until, write_all,
};
use session_core::{DisconnectReason, FrameError, Framing, SendError, SessionConfig};

/// Serialises the tests of this file: each one counts the process's fds.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test still runs alone.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An echo server (each message sent back as it is) that records events.
fn echo_server(config: SessionConfig) -> (Server, Events) {
    let (recorder, events) = Recorder::new();
    let recorder = recorder.echo();
    (start_server(config, move || recorder.clone()), events)
}

fn framed(framing: Framing) -> SessionConfig {
    SessionConfig {
        framing,
        ..SessionConfig::default()
    }
}

/// A well-behaved client: one message each way, framed as the server expects.
fn assert_served(addr: SocketAddr, framing: Framing) {
    let mut client = connect(addr);
    match framing {
        Framing::Raw => {
            write_all(&mut client, b"ping");
            assert_eq!(read_n(&mut client, 4), b"ping");
        }
        Framing::Lines => {
            write_all(&mut client, b"ping\n");
            assert_eq!(read_line(&mut client), b"ping");
        }
        Framing::LengthPrefixed => {
            write_all(&mut client, &lp(b"ping"));
            assert_eq!(read_lp(&mut client), b"ping");
        }
        Framing::WebSocket => unreachable!("WebSocket has tests of its own"),
    }
}

/// Warms the server up with one good client, waits for it to be gone, and
/// returns the fd count to come back to.
fn baseline(server: &Server, framing: Framing) -> Option<usize> {
    assert_served(server.addr, framing);
    assert!(server.wait_idle(TIMEOUT), "{:?}", server.stats.get());
    open_fds()
}

/// The common ending: a good client is served, every session is gone, the
/// fds are back, and the listener shuts down cleanly.
fn finish(server: Server, framing: Framing, fds: Option<usize>) {
    assert_served(server.addr, framing);
    assert!(
        server.wait_idle(TIMEOUT),
        "sessions still open: {:?}",
        server.stats.get()
    );
    assert_fds_back_to(fds, TIMEOUT);
    server
        .stop(TIMEOUT)
        .expect("Listener::run returns Ok after shutdown");
}

/// Makes dropping `stream` send a reset instead of a FIN (SO_LINGER 0).
/// Through socket2, so the reset is real on every OS.
fn set_linger_zero(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("setsockopt SO_LINGER");
}

/// 1,000 connections that connect and reset at once, in batches of 100;
/// after each batch a good client is served (accept is FIFO, so by then the
/// whole batch has been accepted). Then 200 sessions reset after one echo
/// end with a connection-reset I/O error. Every session that got started
/// ended once, as closed or reset.
#[test]
fn thousand_connect_and_reset() {
    let _serial = serial();
    let (server, mut events) = echo_server(framed(Framing::Raw));
    let fds = baseline(&server, Framing::Raw);

    for batch in 0..10 {
        for _ in 0..100 {
            let stream = TcpStream::connect_timeout(&server.addr, TIMEOUT)
                .unwrap_or_else(|e| panic!("connect in batch {batch}: {e}"));
            set_linger_zero(&stream);
            drop(stream);
        }
        assert_served(server.addr, Framing::Raw);
    }
    // Most of those vanish before the listener takes them. Now reset
    // sessions that are surely running: 2 batches of 100, each echoed once.
    let mut mid_session = Vec::new();
    for _ in 0..2 {
        let mut batch: Vec<TcpStream> = (0..100).map(|_| connect(server.addr)).collect();
        for client in &mut batch {
            write_all(client, b"x");
            assert_eq!(read_n(client, 1), b"x");
            mid_session.push(client.local_addr().unwrap());
        }
        for client in batch {
            set_linger_zero(&client);
            drop(client);
        }
        assert_served(server.addr, Framing::Raw);
    }
    for peer in mid_session {
        let (id, _) = events.connected_from(peer);
        let reason = events.reason(id);
        if cfg!(target_os = "linux") {
            assert!(
                matches!(&reason, DisconnectReason::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "a reset session ended with {reason:?}"
            );
        }
    }
    assert!(
        server.wait_idle(TIMEOUT),
        "sessions still open: {:?}",
        server.stats.get()
    );
    let stats = server.stats.get();
    assert!(stats.accepted >= 213, "{stats:?}");
    assert!(stats.accepted <= 1_213, "{stats:?}");
    assert_eq!(stats.rejected, 0, "{stats:?}");
    for id in events.session_ids() {
        let reason = events.reason(id);
        assert!(
            matches!(
                reason,
                DisconnectReason::PeerClosed | DisconnectReason::Io(_)
            ),
            "session {id}: {reason:?}"
        );
        events.assert_lifecycle(id);
    }
    finish(server, Framing::Raw, fds);
}

/// Sends `bytes` on a new connection, closes the write side, reads until the
/// server closes, and returns the session's messages and end reason.
fn hostile_exchange(
    server: &Server,
    events: &mut Events,
    bytes: &[u8],
) -> (Vec<Vec<u8>>, Vec<u8>, DisconnectReason) {
    let mut client = connect(server.addr);
    let local = client.local_addr().unwrap();
    // The server may close before it has read everything: a failed write
    // is part of the game.
    let _ = client.write_all(bytes);
    shutdown_write(&client);
    let echoed = read_to_close(&mut client, 1 << 22);
    drop(client);
    let (id, _) = events.connected_from(local);
    let reason = events.reason(id);
    events.assert_lifecycle(id);
    (events.received(id), echoed, reason)
}

fn is_frame_error(reason: &DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::BadFrame(_) | DisconnectReason::FrameTooLarge { .. }
    )
}

/// Random garbage and crafted bad frames in each framing: bad sizes and
/// too-long frames close the session with the matching reason; nothing
/// panics; raw garbage is just echoed.
#[test]
fn garbage_in_every_framing() {
    let _serial = serial();
    let mut rng = XorShift::new(0xbad_f00d);

    // Raw: any bytes are messages; they come back as they went.
    let (server, mut events) = echo_server(framed(Framing::Raw));
    let fds = baseline(&server, Framing::Raw);
    for _ in 0..20 {
        let n = rng.range(1, 8192);
        let garbage = rng.bytes(n);
        let (_, echoed, reason) = hostile_exchange(&server, &mut events, &garbage);
        assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
        assert!(echoed == garbage, "raw garbage not echoed as it was");
    }
    finish(server, Framing::Raw, fds);

    // Length-prefixed, with frames capped at 1,024 bytes.
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        max_frame_len: 1024,
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::LengthPrefixed);
    let (got, _, reason) = hostile_exchange(&server, &mut events, b"\x00\x00rest");
    assert!(got.is_empty());
    assert!(
        matches!(reason, DisconnectReason::BadFrame(FrameError::BadSize(0))),
        "size 0: {reason:?}"
    );
    let (got, _, reason) = hostile_exchange(&server, &mut events, b"\x01\x00rest");
    assert!(got.is_empty());
    assert!(
        matches!(reason, DisconnectReason::BadFrame(FrameError::BadSize(1))),
        "size 1: {reason:?}"
    );
    // Size 2 is an empty message; 65,535 is over this server's cap.
    let mut bytes = b"\x02\x00".to_vec();
    bytes.extend_from_slice(&lp(b"ok"));
    bytes.extend_from_slice(b"\xff\xff");
    bytes.extend_from_slice(&rng.bytes(65_533));
    let (got, echoed, reason) = hostile_exchange(&server, &mut events, &bytes);
    assert_eq!(got, vec![b"".to_vec(), b"ok".to_vec()]);
    assert_eq!(echoed, [&b"\x02\x00"[..], &lp(b"ok")].concat());
    assert!(
        matches!(
            reason,
            DisconnectReason::FrameTooLarge {
                len: 65_533,
                max: 1024
            }
        ),
        "size 65,535: {reason:?}"
    );
    for _ in 0..30 {
        let n = rng.range(1, 4096);
        let garbage = rng.bytes(n);
        let (_, _, reason) = hostile_exchange(&server, &mut events, &garbage);
        assert!(
            is_frame_error(&reason) || matches!(reason, DisconnectReason::PeerClosed),
            "{reason:?}"
        );
    }
    finish(server, Framing::LengthPrefixed, fds);

    // Lines, capped at 100 bytes.
    let config = SessionConfig {
        framing: Framing::Lines,
        max_frame_len: 100,
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::Lines);
    let long = vec![b'a'; 100];
    let bytes = [&long[..], b"\n", &long[..], b"\r\n"].concat();
    let (got, _, reason) = hostile_exchange(&server, &mut events, &bytes);
    assert_eq!(
        got,
        vec![long.clone(), long.clone()],
        "lines of exactly max"
    );
    assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
    let bytes = [&[b'b'; 101][..], b"\n"].concat();
    let (got, _, reason) = hostile_exchange(&server, &mut events, &bytes);
    assert!(got.is_empty());
    assert!(
        matches!(
            reason,
            DisconnectReason::FrameTooLarge { len: 101, max: 100 }
        ),
        "line of 101: {reason:?}"
    );
    let (got, _, reason) = hostile_exchange(&server, &mut events, &[b'c'; 5000]);
    assert!(got.is_empty());
    assert!(
        matches!(reason, DisconnectReason::FrameTooLarge { max: 100, .. }),
        "unterminated line: {reason:?}"
    );
    for _ in 0..30 {
        let n = rng.range(1, 4096);
        let garbage = rng.bytes(n);
        let (got, _, reason) = hostile_exchange(&server, &mut events, &garbage);
        assert!(got.iter().all(|m| m.len() <= 100 && !m.contains(&b'\n')));
        assert!(
            is_frame_error(&reason) || matches!(reason, DisconnectReason::PeerClosed),
            "{reason:?}"
        );
    }
    finish(server, Framing::Lines, fds);
}

/// At the default cap, size 65,535 is the largest legal frame: one message
/// of 65,533 bytes, echoed whole.
#[test]
fn largest_length_prefixed_frame_is_one_message() {
    let _serial = serial();
    let (server, mut events) = echo_server(framed(Framing::LengthPrefixed));
    let fds = baseline(&server, Framing::LengthPrefixed);
    let payload = XorShift::new(7).bytes(65_533);
    let mut client = connect(server.addr);
    let frame = lp(&payload);
    assert_eq!(&frame[..2], b"\xff\xff");
    write_all(&mut client, &frame);
    assert!(read_lp(&mut client) == payload, "echo differs");
    let (id, _) = events.connected_from(client.local_addr().unwrap());
    let got = events.wait_received(id, 1);
    assert_eq!(got.len(), 1);
    assert!(got[0] == payload);
    drop(client);
    assert!(matches!(events.reason(id), DisconnectReason::PeerClosed));
    finish(server, Framing::LengthPrefixed, fds);
}

/// A frame written one byte per write (each flushed and paced so it goes
/// out alone) is still one message; so are the frames after it.
#[test]
fn one_byte_at_a_time() {
    let _serial = serial();
    for framing in [Framing::LengthPrefixed, Framing::Lines] {
        let (server, mut events) = echo_server(framed(framing));
        let fds = baseline(&server, framing);
        let encode = |m: &[u8]| match framing {
            Framing::LengthPrefixed => lp(m),
            _ => [m, b"\n"].concat(),
        };
        let mut client = connect(server.addr);
        let first = encode(b"one byte at a time, flushed");
        for byte in &first {
            write_all(&mut client, std::slice::from_ref(byte));
            client.flush().unwrap();
            // Pacing, not synchronisation: lets each byte be its own segment.
            thread::sleep(Duration::from_millis(1));
        }
        // Then one frame and a half in one write, and the other half.
        let (second, third) = (encode(b"second"), encode(b"third"));
        write_all(&mut client, &[&second[..], &third[..3]].concat());
        client.flush().unwrap();
        thread::sleep(Duration::from_millis(1));
        write_all(&mut client, &third[3..]);
        let (id, _) = events.connected_from(client.local_addr().unwrap());
        let got = events.wait_received(id, 3);
        assert_eq!(
            got,
            vec![
                b"one byte at a time, flushed".to_vec(),
                b"second".to_vec(),
                b"third".to_vec()
            ],
            "{framing}"
        );
        let expected = [first, second, third].concat();
        assert_eq!(read_n(&mut client, expected.len()), expected, "{framing}");
        drop(client);
        assert!(matches!(events.reason(id), DisconnectReason::PeerClosed));
        finish(server, framing, fds);
    }
}

/// 1 MiB in one write to a raw echo server comes back whole.
#[test]
fn one_mebibyte_in_one_write() {
    let _serial = serial();
    let (server, _events) = echo_server(framed(Framing::Raw));
    let fds = baseline(&server, Framing::Raw);
    let data = XorShift::new(42).bytes(1 << 20);
    let mut client = connect(server.addr);
    let mut writer = client.try_clone().unwrap();
    let to_send = data.clone();
    let writer = thread::spawn(move || write_all(&mut writer, &to_send));
    let echoed = read_n(&mut client, data.len());
    writer.join().unwrap();
    assert!(echoed == data, "1 MiB echo differs");
    drop(client);
    finish(server, Framing::Raw, fds);
}

/// The byte at stream position `i` of the back-pressure test.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A peer that writes and never reads: the echo server stops reading once
/// its queue passes the high watermark, its queue never passes the cap, and
/// nothing is lost: once the peer reads, every byte comes back in order.
#[test]
fn non_reading_peer_gets_back_pressure() {
    let _serial = serial();
    const MAX_QUEUE: usize = 256 * 1024;
    let config = SessionConfig {
        framing: Framing::Raw,
        send_high_watermark: 64 * 1024,
        send_low_watermark: 16 * 1024,
        max_send_queue: MAX_QUEUE,
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::Raw);

    let mut client = connect(server.addr);
    let (id, handle) = events.connected_from(client.local_addr().unwrap());
    client
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut written = 0usize;
    let mut max_seen = 0usize;
    let mut blocked = false;
    // At most 64 MiB: far more than the socket buffers and the queue hold.
    for _ in 0..1024 {
        let chunk: Vec<u8> = (written..written + 64 * 1024).map(pattern).collect();
        match client.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if integration_tests::is_timeout(&e) => {
                blocked = true;
                break;
            }
            Err(e) => panic!("write failed after {written} bytes: {e}"),
        }
        max_seen = max_seen.max(handle.queued_bytes());
        assert!(handle.is_connected(), "closed while the peer still wrote");
    }
    assert!(
        blocked,
        "the server kept reading: {written} bytes written without a block"
    );
    // While the peer is stuck, the queue stays under its cap.
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        max_seen = max_seen.max(handle.queued_bytes());
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        max_seen <= MAX_QUEUE,
        "queued {max_seen} bytes, cap {MAX_QUEUE}"
    );
    assert!(
        handle.is_connected(),
        "an echo server under back-pressure must not be closed"
    );

    // Now read: every byte written comes back, in order.
    client.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = client.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        while seen < written {
            let want = buf.len().min(written - seen);
            let n = reader
                .read(&mut buf[..want])
                .unwrap_or_else(|e| panic!("read after {seen} of {written} bytes: {e}"));
            assert!(n > 0, "closed after {seen} of {written} bytes");
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, pattern(seen + k), "echoed byte {} differs", seen + k);
            }
            seen += n;
        }
        seen
    });
    assert_eq!(reader.join().unwrap(), written);
    assert!(handle.queued_bytes() <= MAX_QUEUE);
    write_all(&mut client, b"ping");
    assert_eq!(read_n(&mut client, 4), b"ping");
    drop(client);
    let reason = events.reason(id);
    assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
    finish(server, Framing::Raw, fds);
}

/// A server that pushes to a peer that never reads, from a task of its own
/// (not in reply): `send` fails and the session ends as a slow consumer;
/// the queue never passes its cap.
#[test]
fn pushing_to_non_reading_peer_is_slow_consumer() {
    let _serial = serial();
    const MAX_QUEUE: usize = 256 * 1024;
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        send_high_watermark: 64 * 1024,
        send_low_watermark: 16 * 1024,
        max_send_queue: MAX_QUEUE,
        ..SessionConfig::default()
    };
    let (pushed_tx, pushed_rx) = mpsc::channel();
    let (recorder, mut events) = Recorder::new();
    // An echo server, except that the message "push" starts a task that
    // pushes data at the peer on its own, never in reply.
    let recorder = recorder.reply(move |handle, message| {
        if message != b"push" {
            let _ = handle.send(message);
            return;
        }
        let handle = handle.clone();
        let tx = pushed_tx.clone();
        task::spawn(async move {
            let chunk = vec![7u8; 16 * 1024];
            let deadline = Instant::now() + TIMEOUT;
            let mut max_queued = 0;
            let mut result = Ok(());
            // Bounded: 10,000 chunks (160 MiB) or the deadline.
            for _ in 0..10_000 {
                if Instant::now() > deadline {
                    break;
                }
                if let Err(e) = handle.send(&chunk) {
                    result = Err(e);
                    break;
                }
                max_queued = max_queued.max(handle.queued_bytes());
                task::yield_now().await;
            }
            let after = handle.send(b"after");
            let _ = tx.send((result, after, max_queued));
        });
    });
    let server = start_server(config, move || recorder.clone());
    let fds = baseline(&server, Framing::LengthPrefixed);

    let mut client = connect(server.addr);
    let (id, handle) = events.connected_from(client.local_addr().unwrap());
    write_all(&mut client, &lp(b"push"));
    let (result, after, max_queued) = pushed_rx
        .recv_timeout(TIMEOUT + Duration::from_secs(1))
        .expect("the pusher reports");
    assert!(
        matches!(
            result,
            Err(SendError::SlowConsumer) | Err(SendError::Closed)
        ),
        "the pusher's sends never failed: {result:?}"
    );
    assert_eq!(after, Err(SendError::Closed));
    assert!(
        max_queued <= MAX_QUEUE,
        "queued {max_queued} bytes, cap {MAX_QUEUE}"
    );
    let reason = events.reason(id);
    assert!(
        matches!(reason, DisconnectReason::SlowConsumer),
        "{reason:?}"
    );
    events.assert_lifecycle(id);
    assert!(!handle.is_connected());
    // The peer sees the connection end after what was in flight.
    let _ = read_to_close(&mut client, 256 << 20);
    drop(client);
    finish(server, Framing::LengthPrefixed, fds);
}

/// With max_connections 5, of 8 clients the 3 over the limit are closed at
/// once and counted; the 5 are served, and a freed slot serves a new one.
#[test]
fn connections_over_the_limit_are_rejected() {
    let _serial = serial();
    let config = SessionConfig {
        framing: Framing::Lines,
        max_connections: 5,
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::Lines);
    let sessions_before = events.session_ids().len();

    let mut admitted: Vec<TcpStream> = (0..5).map(|_| connect(server.addr)).collect();
    for (i, client) in admitted.iter_mut().enumerate() {
        write_all(client, format!("hello {i}\n").as_bytes());
        assert_eq!(read_line(client), format!("hello {i}").into_bytes());
    }
    assert_eq!(server.stats.get().active, 5);
    let started = Instant::now();
    for _ in 0..3 {
        let mut extra = connect(server.addr);
        assert_closed_within(&mut extra, Duration::from_secs(2));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "rejections were not at once: {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(TIMEOUT, || server.stats.get().rejected == 3),
        "{:?}",
        server.stats.get()
    );
    for (i, client) in admitted.iter_mut().enumerate() {
        write_all(client, format!("still {i}\n").as_bytes());
        assert_eq!(read_line(client), format!("still {i}").into_bytes());
    }
    let stats = server.stats.get();
    assert_eq!(stats.rejected, 3, "{stats:?}");
    assert_eq!(stats.active, 5, "{stats:?}");
    // The rejected connections never got a session.
    assert_eq!(events.session_ids().len(), sessions_before + 5);

    // A freed slot takes a new client.
    drop(admitted.pop());
    assert!(wait_until(TIMEOUT, || server.stats.get().active == 4));
    let mut late = connect(server.addr);
    write_all(&mut late, b"late\n");
    assert_eq!(read_line(&mut late), b"late");
    drop(late);
    drop(admitted);
    // The limit still holds until those sessions have ended: a client that
    // came sooner would be turned away.
    assert!(server.wait_idle(TIMEOUT), "{:?}", server.stats.get());
    finish(server, Framing::Lines, fds);
}

/// A callback that panics closes its own session only, with the panic's
/// message; on_disconnected still runs once; the rest goes on.
#[test]
fn panicking_callback_closes_only_its_session() {
    let _serial = serial();
    let panic_on_connect = Arc::new(AtomicBool::new(false));
    let (recorder, mut events) = Recorder::new();
    let flag = Arc::clone(&panic_on_connect);
    let recorder = recorder
        .on_connect(move |_| {
            if flag.load(Ordering::SeqCst) {
                panic!("boom in on_connected");
            }
        })
        .reply(|handle, message| {
            if message == b"boom" {
                panic!("boom: the user's callback panicked on purpose");
            }
            let _ = handle.send(message);
        });
    let server = start_server(framed(Framing::Lines), move || recorder.clone());
    let fds = baseline(&server, Framing::Lines);

    let mut victim = connect(server.addr);
    let mut bystander = connect(server.addr);
    write_all(&mut bystander, b"before\n");
    assert_eq!(read_line(&mut bystander), b"before");
    let (victim_id, _) = events.connected_from(victim.local_addr().unwrap());
    // "boom" and a message after it in the same write: nothing after the
    // panic is delivered.
    write_all(&mut victim, b"ok\nboom\nnever\n");
    assert_eq!(read_line(&mut victim), b"ok");
    assert_closed_within(&mut victim, TIMEOUT);
    let reason = events.reason(victim_id);
    match &reason {
        DisconnectReason::Panicked(message) => {
            assert!(message.contains("boom"), "panic message: {message:?}")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(matches!(
        events.assert_lifecycle(victim_id),
        DisconnectReason::Panicked(_)
    ));
    assert_eq!(
        events.received(victim_id),
        vec![b"ok".to_vec(), b"boom".to_vec()]
    );

    write_all(&mut bystander, b"after\n");
    assert_eq!(read_line(&mut bystander), b"after");

    // A panic in on_connected: that session ends at once, unread.
    panic_on_connect.store(true, Ordering::SeqCst);
    let mut early = connect(server.addr);
    let (early_id, _) = events.connected_from(early.local_addr().unwrap());
    let reason = events.reason(early_id);
    panic_on_connect.store(false, Ordering::SeqCst);
    assert!(
        matches!(&reason, DisconnectReason::Panicked(m) if m.contains("boom in on_connected")),
        "{reason:?}"
    );
    assert!(events.received(early_id).is_empty());
    events.assert_lifecycle(early_id);
    let _ = early.write_all(b"ignored\n");
    assert_closed_within(&mut early, TIMEOUT);

    write_all(&mut bystander, b"still here\n");
    assert_eq!(read_line(&mut bystander), b"still here");
    drop(early);
    drop(victim);
    drop(bystander);
    finish(server, Framing::Lines, fds);
}

/// idle_timeout 200 ms: a silent client is closed as idle, not before the
/// timeout and well within a bound; an active one is not, until it too
/// falls silent.
#[test]
fn idle_sessions_are_closed_active_ones_are_not() {
    let _serial = serial();
    const IDLE: Duration = Duration::from_millis(200);
    let config = SessionConfig {
        framing: Framing::Lines,
        idle_timeout: Some(IDLE),
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::Lines);

    let silent_since = Instant::now();
    let mut silent = connect(server.addr);
    let mut active = connect(server.addr);
    let (silent_id, _) = events.connected_from(silent.local_addr().unwrap());
    let (active_id, _) = events.connected_from(active.local_addr().unwrap());
    // Pacing, not synchronisation: one message every 50 ms for 800 ms.
    for i in 0..16 {
        write_all(&mut active, format!("tick {i}\n").as_bytes());
        assert_eq!(read_line(&mut active), format!("tick {i}").into_bytes());
        thread::sleep(Duration::from_millis(50));
    }
    let active_last = Instant::now();
    write_all(&mut active, b"last\n");
    assert_eq!(read_line(&mut active), b"last");

    let (reason, at) = events
        .disconnected_at(silent_id, TIMEOUT)
        .expect("the silent session is closed");
    assert!(matches!(reason, DisconnectReason::Idle), "{reason:?}");
    let after = at.duration_since(silent_since);
    assert!(after >= IDLE, "closed as idle after only {after:?}");
    assert!(
        after < Duration::from_secs(2),
        "closed only after {after:?}"
    );
    assert_closed_within(&mut silent, TIMEOUT);

    let (reason, at) = events
        .disconnected_at(active_id, TIMEOUT)
        .expect("the active session is closed once silent");
    assert!(matches!(reason, DisconnectReason::Idle), "{reason:?}");
    assert!(
        at >= active_last + IDLE,
        "the active session was closed while active"
    );
    assert_eq!(events.received(active_id).len(), 17);
    events.assert_lifecycle(silent_id);
    events.assert_lifecycle(active_id);
    assert_closed_within(&mut active, TIMEOUT);
    drop(silent);
    drop(active);
    finish(server, Framing::Lines, fds);
}

/// Shutdown while a peer is stuck (not reading, the server's queue full of
/// bytes for it): the session is closed as `Shutdown` and `run()` returns
/// within the drain deadline plus a margin, not never.
#[test]
fn shutdown_with_a_stuck_peer_is_bounded() {
    let _serial = serial();
    const DRAIN: Duration = Duration::from_millis(300);
    let config = SessionConfig {
        framing: Framing::Raw,
        drain_timeout: DRAIN,
        ..SessionConfig::default()
    };
    let (server, mut events) = echo_server(config);
    let fds = baseline(&server, Framing::Raw);

    let stuck = connect(server.addr);
    let (id, handle) = events.connected_from(stuck.local_addr().unwrap());
    let chunk = vec![9u8; 16 * 1024];
    // Fill the socket buffers until bytes stay queued (at most 64 MiB).
    let mut filled = false;
    for _ in 0..4096 {
        handle.send(&chunk).expect("queue for the stuck peer");
        if handle.queued_bytes() > 256 * 1024 {
            filled = true;
            break;
        }
        if handle.queued_bytes() > 0 {
            // Let the engine write what it can before queuing more.
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(filled, "the peer's buffers never filled");
    // A well-behaved client is served meanwhile.
    assert_served(server.addr, Framing::Raw);

    let started = Instant::now();
    server
        .stop(TIMEOUT)
        .expect("Listener::run returns Ok after shutdown");
    let took = started.elapsed();
    assert!(
        took < DRAIN + Duration::from_secs(2),
        "run() took {took:?} with a {DRAIN:?} drain deadline"
    );
    let reason = events.reason(id);
    assert!(matches!(reason, DisconnectReason::Shutdown), "{reason:?}");
    events.assert_lifecycle(id);
    assert_eq!(handle.queued_bytes(), 0);
    drop(stuck);
    assert_fds_back_to(fds, TIMEOUT);
}

/// The soft limit on open fds, lowered for one test and restored on drop
/// (even if the test fails).
#[cfg(target_os = "linux")]
struct FdLimit {
    saved: libc::rlimit,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
impl FdLimit {
    fn get() -> libc::rlimit {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a live, writable `rlimit`.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
        limit
    }

    fn set(limit: &libc::rlimit) -> io::Result<()> {
        // SAFETY: `limit` is a live `rlimit`.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Lowers the soft limit to `soft`.
    fn lower_to(soft: u64) -> FdLimit {
        let saved = FdLimit::get();
        let lowered = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: saved.rlim_max,
        };
        FdLimit::set(&lowered).expect("lower RLIMIT_NOFILE");
        FdLimit { saved }
    }
}

#[cfg(target_os = "linux")]
impl Drop for FdLimit {
    fn drop(&mut self) {
        FdLimit::set(&self.saved).expect("restore RLIMIT_NOFILE");
    }
}

/// The highest open fd number of this process.
#[cfg(target_os = "linux")]
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some fd is open")
}

/// Out of file descriptors: accept fails with "too many open files", the
/// listener counts the errors and backs off instead of dying, and serves
/// the waiting clients once fds are free again.
#[cfg(target_os = "linux")]
#[test]
fn accept_survives_running_out_of_fds() {
    use std::fs::File;

    let _serial = serial();
    let (server, _events) = echo_server(framed(Framing::Lines));
    let fds = baseline(&server, Framing::Lines);

    // Placeholders hold fd numbers; the soft limit is set just above the
    // highest, then every gap below it is filled, so that no fd number is
    // free. Closing one placeholder then frees exactly one, which the next
    // client socket takes before the listener's accept can.
    let mut placeholders: Vec<File> = (0..8)
        .map(|_| File::open("/dev/null").expect("open /dev/null"))
        .collect();
    let limit = FdLimit::lower_to(highest_fd() + 1);
    for _ in 0..4096 {
        match File::open("/dev/null") {
            Ok(file) => placeholders.push(file),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    let mut clients = Vec::new();
    for _ in 0..3 {
        drop(placeholders.pop());
        clients.push(connect(server.addr));
    }
    let starved = wait_until(TIMEOUT, || server.stats.get().accept_errors >= 2);
    let stats = server.stats.get();
    // Free the fds before asserting, so a failure leaves the process usable.
    drop(placeholders);
    drop(limit);
    assert!(starved, "accept never failed for lack of fds: {stats:?}");
    assert_eq!(stats.accepted, 1, "nothing could be accepted: {stats:?}");

    // The listener is alive: the clients that waited are served.
    for (i, client) in clients.iter_mut().enumerate() {
        write_all(client, format!("waited {i}\n").as_bytes());
        assert_eq!(read_line(client), format!("waited {i}").into_bytes());
    }
    let stats = server.stats.get();
    assert_eq!(stats.accepted, 4, "{stats:?}");
    drop(clients);
    finish(server, Framing::Lines, fds);
}
