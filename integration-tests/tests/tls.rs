//! TLS (issue 13), in process: a TLS listener and a TLS connector of this
//! library, and rustls clients driven by hand for what a well-behaved peer
//! never does (cut handshakes, truncation). Certificates are made fresh by
//! every run ([`Pki`]).
//!
//! The tests of this file run one at a time: some count the process's open
//! files.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_std::task::block_on;
use integration_tests::pki::Pki;
use integration_tests::{
    EventKind, Events, Recorder, Server, TIMEOUT, XorShift, assert_closed_within,
    assert_fds_back_to, connect, open_fds, read_to_close, shutdown_write, start_tls_server,
    wait_until,
};
use session_core::rustls::pki_types::pem::PemObject;
use session_core::rustls::pki_types::{CertificateDer, ServerName};
use session_core::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use session_core::{
    ClientTls, Connection, Connector, DisconnectReason, Framing, IpInformation, ServerTls,
    SessionConfig, SessionHandle,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(framing: Framing) -> SessionConfig {
    SessionConfig {
        framing,
        ..SessionConfig::default()
    }
}

/// A TLS echo server with `pki`'s server certificate (and, with
/// `client_ca`, mutual TLS).
fn tls_echo(pki: &Pki, config: SessionConfig, client_ca: bool) -> (Server, Events) {
    let ca = client_ca.then_some(pki.ca.as_path());
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, ca).unwrap();
    let (recorder, events) = Recorder::new();
    let recorder = recorder.echo();
    (
        start_tls_server(config, tls, move || recorder.clone()),
        events,
    )
}

/// A connection of this library's TLS connector to `addr`, trusting `pki`'s
/// CA, expecting `localhost`; its client events.
fn tls_connect(
    addr: SocketAddr,
    config: SessionConfig,
    tls: ClientTls,
) -> io::Result<(Connection, Events)> {
    let (recorder, events) = Recorder::new();
    let connector = Connector::new(config)?.with_tls(tls);
    let connection = block_on(connector.connect(&IpInformation::from(addr), recorder))?;
    Ok((connection, events))
}

fn client_tls(pki: &Pki) -> ClientTls {
    ClientTls::new(Some(&pki.ca), None)
        .unwrap()
        .with_server_name("localhost")
        .unwrap()
}

/// Every message received by a client session, joined.
fn received_bytes(events: &mut Events, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let done = wait_until(TIMEOUT, || {
        got = events
            .seen()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Received(m) => Some(m.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        got.len() >= want
    });
    assert!(done, "{} of {want} bytes came back", got.len());
    got
}

/// The first session the server saw connect.
fn server_session(events: &mut Events) -> SessionHandle {
    events.next_connected(&[]).1
}

#[test]
fn echo_over_tls_in_every_framing_with_what_was_negotiated() {
    let _serial = serial();
    let pki = Pki::new();
    for framing in [Framing::Raw, Framing::Lines, Framing::LengthPrefixed] {
        let (server, mut server_events) = tls_echo(&pki, config(framing), false);
        let (connection, mut events) =
            tls_connect(server.addr, config(framing), client_tls(&pki)).unwrap();
        let info = connection.handle().tls().expect("a TLS session");
        assert_eq!(
            info.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(info.peer_certificates()[0].as_ref(), pki.server.der);
        let mut expected = Vec::new();
        for i in 0..100 {
            let message = format!("message {i} over {framing}");
            connection.handle().send(message.as_bytes()).unwrap();
            expected.extend_from_slice(message.as_bytes());
        }
        assert_eq!(received_bytes(&mut events, expected.len()), expected);
        let server_side = server_session(&mut server_events);
        let server_info = server_side.tls().expect("a TLS session on the server");
        assert_eq!(server_info.server_name(), Some("localhost"));
        assert!(
            server_info.peer_certificates().is_empty(),
            "no client certificate"
        );
        connection.handle().disconnect();
        assert!(matches!(
            block_on(connection.closed()),
            DisconnectReason::LocalClose
        ));
        server.stop(TIMEOUT).unwrap();
    }
}

#[test]
fn ten_thousand_messages_arrive_in_order_over_tls() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, _server_events) = tls_echo(&pki, config(Framing::LengthPrefixed), false);
    let (connection, mut events) = tls_connect(
        server.addr,
        config(Framing::LengthPrefixed),
        client_tls(&pki),
    )
    .unwrap();
    let handle = connection.handle().clone();
    let sender = async_std::task::spawn(async move {
        for i in 0..10_000u32 {
            handle.send_async(&i.to_le_bytes()).await.unwrap();
        }
    });
    block_on(sender);
    let got = received_bytes(&mut events, 40_000);
    for (i, message) in got.chunks(4).enumerate() {
        assert_eq!(message, (i as u32).to_le_bytes(), "message {i}");
    }
    connection.handle().disconnect();
    block_on(connection.closed());
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn mutual_tls_lets_a_client_certificate_in_and_keeps_others_out() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, mut server_events) = tls_echo(&pki, config(Framing::Lines), true);
    // With the client certificate: the server session knows the device.
    let with_cert = ClientTls::new(Some(&pki.ca), Some((&pki.client.cert, &pki.client.key)))
        .unwrap()
        .with_server_name("localhost")
        .unwrap();
    let (connection, mut events) =
        tls_connect(server.addr, config(Framing::Lines), with_cert).unwrap();
    connection.handle().send(b"hello").unwrap();
    assert_eq!(received_bytes(&mut events, 5), b"hello");
    let device = server_session(&mut server_events);
    let certs = device.tls().unwrap().peer_certificates();
    assert_eq!(certs[0].as_ref(), pki.client.der);
    // Without one: the handshake fails on the server, which never starts a
    // session (the client learns it from the server's alert).
    let rejected_before = server.stats.get().tls_rejected;
    let attempt = tls_connect(server.addr, config(Framing::Lines), client_tls(&pki));
    if let Ok((connection, _)) = attempt {
        let reason = block_on(connection.closed());
        assert!(
            matches!(reason, DisconnectReason::Io(_)),
            "the client learns of the refusal: {reason:?}"
        );
    }
    assert!(wait_until(TIMEOUT, || {
        server.stats.get().tls_rejected == rejected_before + 1
    }));
    server_events.pump();
    let sessions = server_events
        .seen()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Connected(_)))
        .count();
    assert_eq!(
        sessions, 1,
        "only the client with a certificate got a session"
    );
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn a_wrong_name_an_expired_and_an_untrusted_certificate_are_refused() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, _) = tls_echo(&pki, config(Framing::Raw), false);
    let wrong_name = ClientTls::new(Some(&pki.ca), None)
        .unwrap()
        .with_server_name("wrong.example")
        .unwrap();
    let error = tls_connect(server.addr, config(Framing::Raw), wrong_name)
        .map(|(connection, _)| connection)
        .expect_err("a wrong name is refused");
    assert!(error.to_string().contains("not valid for name"), "{error}");
    server.stop(TIMEOUT).unwrap();

    for (pem, why) in [(&pki.expired, "expired"), (&pki.untrusted, "UnknownIssuer")] {
        let tls = ServerTls::from_pem_files(&pem.cert, &pem.key, None).unwrap();
        let (recorder, _) = Recorder::new();
        let recorder = recorder.echo();
        let server = start_tls_server(config(Framing::Raw), tls, move || recorder.clone());
        let error = tls_connect(server.addr, config(Framing::Raw), client_tls(&pki))
            .map(|(connection, _)| connection)
            .expect_err("refused");
        assert!(
            error.to_string().contains(why),
            "{why}: {error} (names the target: {})",
            error.to_string().contains("TLS handshake with")
        );
        server.stop(TIMEOUT).unwrap();
    }
}

#[test]
fn bad_tls_files_are_named_in_the_error() {
    let pki = Pki::new();
    let missing = pki.dir().join("missing.pem");
    let error = ServerTls::from_pem_files(&missing, &pki.server.key, None).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
    // A key file given as the certificate: no certificate in it.
    let error = ServerTls::from_pem_files(&pki.server.key, &pki.server.key, None).unwrap_err();
    assert!(error.to_string().contains("server-key.pem"), "{error}");
    let error = ServerTls::from_pem_files(&pki.server.cert, &pki.server.cert, None).unwrap_err();
    assert!(error.to_string().contains("TLS key file"), "{error}");
    let error = ClientTls::new(Some(&missing), None).unwrap_err();
    assert!(error.to_string().contains("TLS CA file"), "{error}");
}

/// The client's first flight, as a real rustls client sends it.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = ClientConnection::new(rustls_client(pki), name("localhost")).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

fn name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).unwrap()
}

fn rustls_client(pki: &Pki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A rustls client over a plain socket, handshake done.
fn rustls_stream(pki: &Pki, addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
    let conn = ClientConnection::new(rustls_client(pki), name("localhost")).unwrap();
    let mut stream = StreamOwned::new(conn, connect(addr));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

#[test]
fn a_handshake_cut_at_every_byte_never_becomes_a_session() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, mut events) = tls_echo(&pki, config(Framing::Raw), false);
    let hello = client_hello(&pki);
    for cut in 0..hello.len() {
        let mut stream = connect(server.addr);
        stream.write_all(&hello[..cut]).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        // The server closes: an alert at most, never an echo.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    let cuts = hello.len() as u64;
    assert!(
        wait_until(TIMEOUT, || server.stats.get().tls_rejected == cuts),
        "{:?} after {cuts} cut handshakes",
        server.stats.get()
    );
    events.pump();
    assert!(events.seen().is_empty(), "no session started");
    // The server still serves a good client.
    let mut good = rustls_stream(&pki, server.addr);
    good.write_all(b"after").unwrap();
    let mut echo = [0u8; 5];
    good.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"after");
    drop(good);
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn a_silent_peer_is_closed_at_the_handshake_deadline() {
    let _serial = serial();
    let pki = Pki::new();
    let config = SessionConfig {
        tls_handshake_timeout: Duration::from_millis(300),
        ..config(Framing::Raw)
    };
    let (server, mut events) = tls_echo(&pki, config, false);
    let mut silent = connect(server.addr);
    let mut rest = Vec::new();
    // Ends by the server's close, well before the read timeout (TIMEOUT).
    silent.read_to_end(&mut rest).unwrap();
    // Counted once the connection has left the active count.
    assert!(wait_until(TIMEOUT, || server.stats.get().tls_rejected == 1));
    events.pump();
    assert!(events.seen().is_empty(), "no session started");
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn a_peer_that_ends_without_close_notify_is_truncated_and_a_close_sends_it() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, mut events) = tls_echo(&pki, config(Framing::Raw), false);
    // Truncated: the TCP stream ends with no close_notify.
    let mut client = rustls_stream(&pki, server.addr);
    client.write_all(b"bye").unwrap();
    let mut echo = [0u8; 3];
    client.read_exact(&mut echo).unwrap();
    client.sock.shutdown(Shutdown::Both).unwrap();
    let (id, _) = events.next_connected(&[]);
    assert!(
        matches!(events.reason(id), DisconnectReason::Truncated),
        "{:?}",
        events.of(id)
    );
    // A close from the server: the client reads close_notify (a clean
    // end), not a truncation.
    let mut client = rustls_stream(&pki, server.addr);
    client.write_all(b"hi").unwrap();
    let mut echo = [0u8; 2];
    client.read_exact(&mut echo).unwrap();
    let (_, handle) = events.next_connected(&[id]);
    handle.disconnect();
    let mut rest = Vec::new();
    let end = client.read_to_end(&mut rest);
    assert!(
        end.is_ok(),
        "the server's close came with close_notify: {end:?}"
    );
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn a_thousand_resets_during_handshakes_leave_no_file_open() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, _events) = tls_echo(&pki, config(Framing::Raw), false);
    let hello = client_hello(&pki);
    // One full handshake first, so that every lazily made thing exists.
    drop(rustls_stream(&pki, server.addr));
    assert!(server.wait_idle(TIMEOUT));
    let fds = open_fds();
    for i in 0..1_000 {
        let mut stream = connect(server.addr);
        stream.write_all(&hello[..(i * 7) % hello.len()]).unwrap();
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }
    let mut good = rustls_stream(&pki, server.addr);
    good.write_all(b"ok").unwrap();
    let mut echo = [0u8; 2];
    good.read_exact(&mut echo).unwrap();
    drop(good);
    assert!(server.wait_idle(TIMEOUT), "{:?}", server.stats.get());
    assert_fds_back_to(fds, TIMEOUT);
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn tls_1_2_is_served_too() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, _events) = tls_echo(&pki, config(Framing::Raw), false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let only_1_2 = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = ClientTls::from_config(Arc::new(only_1_2))
        .with_server_name("localhost")
        .unwrap();
    let (connection, mut events) = tls_connect(server.addr, config(Framing::Raw), tls).unwrap();
    let info = connection.handle().tls().unwrap();
    assert_eq!(
        info.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    connection.handle().send(b"twelve").unwrap();
    assert_eq!(received_bytes(&mut events, 6), b"twelve");
    server.stop(TIMEOUT).unwrap();
}

/// Behind a balancer, the PROXY header comes first, then the handshake:
/// the session sees the client the header names, over TLS.
#[test]
fn the_proxy_header_is_read_before_the_handshake() {
    let _serial = serial();
    let pki = Pki::new();
    let config = SessionConfig {
        proxy_protocol: true,
        ..config(Framing::Raw)
    };
    let (server, mut events) = tls_echo(&pki, config, false);
    let conn = ClientConnection::new(rustls_client(&pki), name("localhost")).unwrap();
    let mut socket = connect(server.addr);
    socket
        .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n")
        .unwrap();
    let mut stream = StreamOwned::new(conn, socket);
    stream.write_all(b"proxied").unwrap();
    let mut echo = [0u8; 7];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"proxied");
    let (_, handle) = events.next_connected(&[]);
    assert_eq!(handle.peer_addr(), "203.0.113.7:40000".parse().unwrap());
    assert!(handle.tls().is_some());
    drop(stream);
    server.stop(TIMEOUT).unwrap();
}

/// What a TLS port meets on the open internet: plain text, an HTTP
/// request, a record header that claims 64 KiB, and random bytes. Each is
/// closed by the server without ever becoming a session, counted in
/// `tls_rejected`; the server goes on serving a good client.
#[test]
fn plain_text_http_an_oversized_record_and_random_bytes_never_become_sessions() {
    let _serial = serial();
    let pki = Pki::new();
    let (server, mut events) = tls_echo(&pki, config(Framing::Raw), false);
    let mut rng = XorShift::new(0x7153);
    // A handshake record claiming 65,535 bytes (more than any TLS record
    // may hold), then some of them.
    let mut oversized = b"\x16\x03\x01\xff\xff".to_vec();
    oversized.extend(rng.bytes(20 * 1024));
    // Closed as soon as read: the server need not wait for our end.
    let closed_at_once: [(&str, Vec<u8>); 3] = [
        ("plain text", b"hello, is this the echo server?\n".to_vec()),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        ),
        ("a record header claiming 64 KiB", oversized),
    ];
    let mut rejected = 0;
    for (what, bytes) in closed_at_once {
        let mut stream = connect(server.addr);
        // The server may close before it has read everything.
        let _ = stream.write_all(&bytes);
        assert_closed_within(&mut stream, TIMEOUT);
        rejected += 1;
        assert!(
            wait_until(TIMEOUT, || server.stats.get().tls_rejected == rejected),
            "{what}: {:?}",
            server.stats.get()
        );
    }
    // Random bytes, some of which may look like the start of a record:
    // the end of our stream ends those.
    for _ in 0..50 {
        let len = rng.range(1, 4096);
        let bytes = rng.bytes(len);
        let mut stream = connect(server.addr);
        let _ = stream.write_all(&bytes);
        shutdown_write(&stream);
        // An alert at most, never an echo.
        let reply = read_to_close(&mut stream, 64);
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "only an alert comes back: {reply:?}"
        );
    }
    rejected += 50;
    assert!(
        wait_until(TIMEOUT, || server.stats.get().tls_rejected == rejected),
        "{:?} after {rejected} hostile peers",
        server.stats.get()
    );
    events.pump();
    assert!(events.seen().is_empty(), "no session started");
    // A good client is served.
    let mut good = rustls_stream(&pki, server.addr);
    good.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    good.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    drop(good);
    server.stop(TIMEOUT).unwrap();
}
