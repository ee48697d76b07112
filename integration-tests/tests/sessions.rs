//! The foundation, on real loopback sockets: echo, ordering, many sessions,
//! callback order and close reasons, sends from other tasks, connect errors,
//! IPv6.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::thread;
use std::time::{Duration, Instant};

use async_std::task;
use integration_tests::{
    EventKind, Recorder, Server, TIMEOUT, XorShift, connect, lp, read_line, read_lp, read_n,
    read_to_close, shutdown_write, start_server, start_server_on, wait_until, write_all,
};
use session_core::{
    Connector, DisconnectReason, Framing, IpInformation, SendError, SessionConfig, SessionHandle,
};

const SUFFIX: &[u8] = b" - Receive Completed";

fn config(framing: Framing) -> SessionConfig {
    SessionConfig {
        framing,
        ..SessionConfig::default()
    }
}

fn suffix_echo(handle: &SessionHandle, message: &[u8]) {
    let mut reply = message.to_vec();
    reply.extend_from_slice(SUFFIX);
    handle.send(&reply).expect("queue the reply");
}

fn stop(server: Server) {
    server
        .stop(TIMEOUT)
        .expect("Listener::run returns Ok after shutdown");
}

/// The seed's exchange: the server answers `message + " - Receive Completed"`,
/// to a plain std client and to a `Connector` session.
#[test]
fn echo_replies_with_suffix() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.reply(suffix_echo);
    let server = start_server(config(Framing::Raw), move || recorder.clone());

    // A std client.
    let mut client = connect(server.addr);
    write_all(&mut client, b"Hello");
    assert_eq!(
        read_n(&mut client, 5 + SUFFIX.len()),
        b"Hello - Receive Completed"
    );
    let (id, _) = events.connected_from(client.local_addr().unwrap());
    assert_eq!(events.received(id), vec![b"Hello".to_vec()]);
    drop(client);
    assert!(matches!(events.reason(id), DisconnectReason::PeerClosed));

    // A Connector session: says hello on connect, closes on the reply.
    let (client_rec, mut client_events) = Recorder::new();
    let client_rec = client_rec
        .on_connect(|handle| handle.send(b"Hi 0").expect("send on connect"))
        .reply(|handle, _| handle.disconnect());
    let connection = task::block_on(
        Connector::new(SessionConfig::default())
            .unwrap()
            .connect(&IpInformation::from(server.addr), client_rec),
    )
    .expect("connect");
    let client_id = connection.handle().id();
    assert_eq!(connection.handle().peer_addr(), server.addr);
    let reason = task::block_on(async_std::future::timeout(TIMEOUT, connection.closed()))
        .expect("client session ends after the reply");
    assert!(matches!(reason, DisconnectReason::LocalClose), "{reason:?}");
    assert_eq!(
        client_events.received(client_id),
        vec![b"Hi 0 - Receive Completed".to_vec()]
    );
    assert!(matches!(
        client_events.assert_lifecycle(client_id),
        DisconnectReason::LocalClose
    ));
    stop(server);
}

/// Raw framing has no message boundaries: 10,000 numbered messages come back
/// as exactly their concatenation.
#[test]
fn ten_thousand_raw_messages_in_order() {
    let (recorder, _events) = Recorder::new();
    let recorder = recorder.echo();
    let server = start_server(config(Framing::Raw), move || recorder.clone());

    let mut expected = Vec::new();
    for i in 0..10_000 {
        expected.extend_from_slice(format!("message {i};").as_bytes());
    }
    let mut client = connect(server.addr);
    let mut writer = client.try_clone().unwrap();
    let to_send = expected.clone();
    // Write in its own thread while this one reads, so neither side's
    // buffers decide the outcome.
    let writer = thread::spawn(move || {
        for i in 0..10_000 {
            write_all(&mut writer, format!("message {i};").as_bytes());
        }
        drop(to_send);
    });
    let echoed = read_n(&mut client, expected.len());
    writer.join().unwrap();
    assert!(
        echoed == expected,
        "echoed stream differs from what was sent"
    );
    stop(server);
}

/// With a framing, each of 10,000 messages is exactly one `on_received`, in
/// order, on the server and (echoed) on a `Connector` client.
fn ten_thousand_framed(framing: Framing) {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.echo();
    let server = start_server(config(framing), move || recorder.clone());

    let (client_rec, mut client_events) = Recorder::new();
    let connection = task::block_on(
        Connector::new(config(framing))
            .unwrap()
            .connect(&IpInformation::from(server.addr), client_rec),
    )
    .expect("connect");
    let handle = connection.handle().clone();
    let messages: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("message number {i}").into_bytes())
        .collect();
    for m in &messages {
        handle.send(m).expect("queue a message");
    }
    let (server_id, _) = events.connected_from(handle.local_addr());
    let got = events.wait_received(server_id, messages.len());
    assert_eq!(got.len(), messages.len(), "{framing}: server message count");
    assert!(got == messages, "{framing}: server got other messages");
    let echoed = client_events.wait_received(handle.id(), messages.len());
    assert_eq!(
        echoed.len(),
        messages.len(),
        "{framing}: client message count"
    );
    assert!(echoed == messages, "{framing}: client got other messages");

    handle.disconnect();
    let reason = task::block_on(async_std::future::timeout(TIMEOUT, connection.closed()))
        .expect("client closes");
    assert!(matches!(reason, DisconnectReason::LocalClose), "{reason:?}");
    assert!(matches!(
        events.reason(server_id),
        DisconnectReason::PeerClosed
    ));
    assert!(matches!(
        events.assert_lifecycle(server_id),
        DisconnectReason::PeerClosed
    ));
    stop(server);
}

#[test]
fn ten_thousand_length_prefixed_messages_in_order() {
    ten_thousand_framed(Framing::LengthPrefixed);
}

#[test]
fn ten_thousand_lines_in_order() {
    ten_thousand_framed(Framing::Lines);
}

/// 100 clients open at once, each echo-checked; the listener counts 100.
#[test]
fn hundred_sessions_at_once() {
    let (recorder, _events) = Recorder::new();
    let recorder = recorder.reply(suffix_echo);
    let server = start_server(config(Framing::Lines), move || recorder.clone());

    let mut clients: Vec<_> = (0..100).map(|_| connect(server.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        write_all(client, format!("client {i}\n").as_bytes());
    }
    assert!(
        wait_until(TIMEOUT, || server.stats.get().active == 100),
        "100 sessions open at once: {:?}",
        server.stats.get()
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = read_line(client);
        assert_eq!(
            reply,
            format!("client {i} - Receive Completed").into_bytes()
        );
    }
    let stats = server.stats.get();
    assert_eq!(stats.accepted, 100, "{stats:?}");
    assert_eq!(stats.rejected, 0, "{stats:?}");
    drop(clients);
    assert!(server.wait_idle(TIMEOUT), "{:?}", server.stats.get());
    stop(server);
}

/// The peer closes: `PeerClosed`, once, last; on_connected first.
#[test]
fn peer_close_is_reported_once_and_last() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.echo().record_sent();
    let server = start_server(config(Framing::Lines), move || recorder.clone());

    let mut client = connect(server.addr);
    write_all(&mut client, b"one\ntwo\n");
    assert_eq!(read_line(&mut client), b"one");
    assert_eq!(read_line(&mut client), b"two");
    let (id, handle) = events.connected_from(client.local_addr().unwrap());
    shutdown_write(&client);
    // The server closes its side in turn.
    assert!(read_to_close(&mut client, 0).is_empty());
    assert!(matches!(events.reason(id), DisconnectReason::PeerClosed));
    assert!(server.wait_idle(TIMEOUT));
    assert!(!handle.is_connected());
    assert_eq!(handle.send(b"late"), Err(SendError::Closed));

    let reason = events.assert_lifecycle(id);
    assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
    assert_eq!(events.received(id), vec![b"one".to_vec(), b"two".to_vec()]);
    let sent: Vec<_> = events
        .of(id)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Sent(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![b"one".to_vec(), b"two".to_vec()], "on_sent");
    stop(server);
}

/// `disconnect()` from a callback and from another thread: `LocalClose`,
/// and everything queued before it still reaches the peer.
#[test]
fn local_close_drains_queued_messages() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.reply(|handle, message| {
        if message == b"close" {
            for i in 0..100 {
                handle.send(format!("bye {i}").as_bytes()).unwrap();
            }
            handle.disconnect();
            assert_eq!(handle.send(b"after"), Err(SendError::Closed));
            assert!(!handle.is_connected());
        }
    });
    let server = start_server(config(Framing::Lines), move || recorder.clone());

    // From a callback.
    let mut client = connect(server.addr);
    write_all(&mut client, b"close\n");
    let text = read_to_close(&mut client, 1 << 20);
    let expected: String = (0..100).map(|i| format!("bye {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&text), expected);
    let (id, _) = events.connected_from(client.local_addr().unwrap());
    assert!(matches!(events.reason(id), DisconnectReason::LocalClose));
    assert!(matches!(
        events.assert_lifecycle(id),
        DisconnectReason::LocalClose
    ));

    // From this thread, with much more queued than one write takes.
    let mut client = connect(server.addr);
    let (id, handle) = events.connected_from(client.local_addr().unwrap());
    let big = vec![b'x'; 4000];
    for _ in 0..200 {
        handle.send(&big).unwrap();
    }
    handle.disconnect();
    handle.disconnect(); // a second call does nothing
    let text = read_to_close(&mut client, 1 << 21);
    assert_eq!(text.len(), 200 * 4001);
    assert!(
        text.chunks(4001)
            .all(|c| c[..4000] == big[..] && c[4000] == b'\n')
    );
    assert!(matches!(events.reason(id), DisconnectReason::LocalClose));
    assert!(matches!(
        events.assert_lifecycle(id),
        DisconnectReason::LocalClose
    ));
    stop(server);
}

/// Shutdown: every session ends with `Shutdown` after its queued bytes
/// went out, `run()` returns, and the port no longer accepts.
#[test]
fn shutdown_closes_every_session_and_run_returns() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.echo();
    let config = SessionConfig {
        framing: Framing::Lines,
        drain_timeout: Duration::from_secs(2),
        ..SessionConfig::default()
    };
    let server = start_server(config, move || recorder.clone());
    let addr = server.addr;

    let mut clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let mut sessions = Vec::new();
    for client in &mut clients {
        write_all(client, b"hello\n");
        assert_eq!(read_line(client), b"hello");
        sessions.push(events.connected_from(client.local_addr().unwrap()));
    }
    for (_, handle) in &sessions {
        handle.send(b"last words").unwrap();
    }
    let started = Instant::now();
    stop(server);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "run() took {:?} to return",
        started.elapsed()
    );
    for client in &mut clients {
        assert_eq!(read_to_close(client, 1024), b"last words\n");
    }
    for (id, handle) in &sessions {
        assert!(!handle.is_connected());
        let reason = events.assert_lifecycle(*id);
        assert!(matches!(reason, DisconnectReason::Shutdown), "{reason:?}");
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, TIMEOUT).is_err(),
        "the port still accepts after run() returned"
    );
}

/// A task other than the session's sends 1,000 messages while the peer
/// sends 1,000 that are echoed: both streams arrive whole and in order.
#[test]
fn sends_from_another_task_while_receiving() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder
        .on_connect(|handle| {
            let handle = handle.clone();
            task::spawn(async move {
                for i in 0..1_000 {
                    handle
                        .send(format!("server {i}").as_bytes())
                        .expect("send from a spawned task");
                    if i % 16 == 0 {
                        task::yield_now().await;
                    }
                }
            });
        })
        .echo();
    let server = start_server(config(Framing::LengthPrefixed), move || recorder.clone());

    let mut client = connect(server.addr);
    let mut writer = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for i in 0..1_000 {
            write_all(&mut writer, &lp(format!("client {i}").as_bytes()));
        }
    });
    let (mut next_server, mut next_client) = (0, 0);
    for _ in 0..2_000 {
        let message = String::from_utf8(read_lp(&mut client)).unwrap();
        if let Some(n) = message.strip_prefix("server ") {
            assert_eq!(
                n.parse::<i32>().unwrap(),
                next_server,
                "server stream order"
            );
            next_server += 1;
        } else if let Some(n) = message.strip_prefix("client ") {
            assert_eq!(n.parse::<i32>().unwrap(), next_client, "echo order");
            next_client += 1;
        } else {
            panic!("unexpected message {message:?}");
        }
    }
    writer.join().unwrap();
    assert_eq!((next_server, next_client), (1_000, 1_000));
    let (id, _) = events.connected_from(client.local_addr().unwrap());
    let received = events.wait_received(id, 1_000);
    let expected: Vec<Vec<u8>> = (0..1_000)
        .map(|i| format!("client {i}").into_bytes())
        .collect();
    assert!(received == expected, "server received other messages");
    stop(server);
}

/// Connecting to a port nobody listens on fails, naming the address.
#[test]
fn connect_to_closed_port_names_the_address() {
    let addr: SocketAddr = {
        let probe = StdListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (recorder, _events) = Recorder::new();
    let result = task::block_on(
        Connector::new(SessionConfig {
            connect_timeout: TIMEOUT,
            ..SessionConfig::default()
        })
        .unwrap()
        .connect(&IpInformation::from(addr), recorder),
    );
    let error = result.expect_err("connect to a closed port must fail");
    let text = error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", addr.port())),
        "error does not name the address: {text}"
    );
}

/// IPv6 loopback serves like IPv4, where the host has it.
#[test]
fn ipv6_loopback_works_if_available() {
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.reply(suffix_echo);
    let server = match start_server_on(
        "[::1]:0".parse().unwrap(),
        config(Framing::Lines),
        move || recorder.clone(),
    ) {
        Ok(server) => server,
        Err(e) => {
            println!("note: cannot bind [::1]:0 ({e}); skipping the IPv6 test");
            return;
        }
    };
    assert!(server.addr.is_ipv6());
    let mut client = connect(server.addr);
    client.write_all(b"v6\n").unwrap();
    assert_eq!(read_line(&mut client), b"v6 - Receive Completed");
    let (id, handle) = events.connected_from(client.local_addr().unwrap());
    assert!(handle.peer_addr().is_ipv6());
    drop(client);
    assert!(matches!(
        events.reason(id),
        DisconnectReason::PeerClosed | DisconnectReason::Io(_)
    ));

    // A Connector session over IPv6 too.
    let (client_rec, mut client_events) = Recorder::new();
    let connection = task::block_on(
        Connector::new(config(Framing::Lines))
            .unwrap()
            .connect(&IpInformation::from(server.addr), client_rec),
    )
    .expect("connect over ::1");
    connection.handle().send(b"hello v6").unwrap();
    let got = client_events.wait_received(connection.handle().id(), 1);
    assert_eq!(got, vec![b"hello v6 - Receive Completed".to_vec()]);
    connection.handle().disconnect();
    let _ = task::block_on(async_std::future::timeout(TIMEOUT, connection.closed()))
        .expect("client closes");
    stop(server);
}

/// Many sessions of random sizes on one framing keep every byte (a light
/// randomised check of the framed path, beside the fixed ones above).
#[test]
fn random_sized_length_prefixed_messages_round_trip() {
    let (recorder, _events) = Recorder::new();
    let recorder = recorder.echo();
    let server = start_server(config(Framing::LengthPrefixed), move || recorder.clone());
    let mut rng = XorShift::new(0x5eed);
    let mut client = connect(server.addr);
    let messages: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let n = rng.range(0, 65_534);
            rng.bytes(n)
        })
        .collect();
    let to_send = messages.clone();
    let mut writer = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for m in &to_send {
            write_all(&mut writer, &lp(m));
        }
    });
    for (i, m) in messages.iter().enumerate() {
        let got = read_lp(&mut client);
        assert!(got == *m, "message {i} ({} bytes) differs", m.len());
    }
    writer.join().unwrap();
    stop(server);
}
