//! PROXY protocol on a real listener: the session's peer is the client the
//! balancer names, and a connection without a proper header never becomes a
//! session.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::{Recorder, Server, connect, read_line, start_server, wait_until};
use session_core::proxy_protocol::V2_SIGNATURE;
use session_core::{Framing, SessionConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

fn proxy_server(header_timeout: Duration) -> (Server, integration_tests::Events) {
    let (recorder, events) = Recorder::new();
    let recorder = recorder.echo();
    let config = SessionConfig {
        framing: Framing::Lines,
        proxy_protocol: true,
        proxy_header_timeout: header_timeout,
        ..SessionConfig::default()
    };
    (start_server(config, move || recorder.clone()), events)
}

fn v2_tcp4(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4 only")
    };
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&d.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

/// The connection is closed by the server without a reply.
fn assert_refused(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

#[test]
fn the_peer_is_the_client_the_header_names() {
    let (server, mut events) = proxy_server(TIMEOUT);
    // v1, with the client's first line in the same write as the header.
    let mut v1 = connect(server.addr);
    v1.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 12345\r\nhello\n")
        .unwrap();
    assert_eq!(read_line(&mut v1), b"hello");
    let (_, handle) = events.connected_from("192.0.2.7:40001".parse().unwrap());
    assert_eq!(handle.local_addr(), server.addr);

    // v2, the header split over two writes and the data in a third.
    let mut v2 = connect(server.addr);
    let header = v2_tcp4("198.51.100.9:50002".parse().unwrap(), server.addr);
    v2.write_all(&header[..7]).unwrap();
    v2.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    v2.write_all(&header[7..]).unwrap();
    v2.write_all(b"world\n").unwrap();
    assert_eq!(read_line(&mut v2), b"world");
    events.connected_from("198.51.100.9:50002".parse().unwrap());

    // v2 LOCAL (a balancer's health check) keeps the real address.
    let mut local = connect(server.addr);
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.write_all(&header).unwrap();
    local.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut local), b"ping");
    events.connected_from(local.local_addr().unwrap());

    assert_eq!(server.stats.get().proxy_rejected, 0);
    drop((v1, v2, local));
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn connections_without_a_proper_header_never_become_sessions() {
    let (server, mut events) = proxy_server(Duration::from_millis(300));
    let cases: [&[u8]; 5] = [
        b"hello\n",                                  // missing
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2 3\r\n", // malformed
        b"PROXY TCP4 192.0.2.1 127.0.0.1 01 2\r\n",  // leading zero
        b"PROXY xx",                                 // then silence: too slow
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",     // v2 longer than the limit
    ];
    let started = Instant::now();
    for case in cases {
        let mut stream = connect(server.addr);
        stream.write_all(case).unwrap();
        assert_refused(&mut stream);
    }
    // A client that sends nothing at all is closed at the deadline too.
    let mut silent = connect(server.addr);
    assert_refused(&mut silent);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A v1 header longer than 107 bytes without its end.
    let mut long = connect(server.addr);
    long.write_all(&[b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat())
        .unwrap();
    assert_refused(&mut long);

    assert!(
        wait_until(TIMEOUT, || server.stats.get().proxy_rejected == 7),
        "{:?}",
        server.stats.get()
    );
    let stats = server.stats.get();
    assert_eq!((stats.accepted, stats.active), (0, 0), "{stats:?}");
    assert!(
        events.session_ids().is_empty(),
        "no session was ever connected"
    );

    // And a proper client is still served.
    let mut good = connect(server.addr);
    good.write_all(b"PROXY TCP6 2001:db8::1 ::1 40000 12345\r\nok\n")
        .unwrap();
    assert_eq!(read_line(&mut good), b"ok");
    events.connected_from("[2001:db8::1]:40000".parse().unwrap());
    drop(good);
    server.stop(TIMEOUT).unwrap();
}
