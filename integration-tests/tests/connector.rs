//! The connector's deadline: a server that never answers the handshake
//! costs the connect timeout, not the kernel's two minutes, and the error
//! says what was tried.
//!
//! Unix only: the test's premise is that a full accept queue drops further
//! SYNs, so a connect hangs; Windows answers them with a reset instead.
#![cfg(unix)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use session_core::{Connector, IpInformation, Session, SessionConfig, SessionHandle};
use socket2::{Domain, Socket, Type};

struct Idle;

impl Session for Idle {
    fn on_received(&mut self, _: &SessionHandle, _: &[u8]) {}
}

/// A listener whose accept queue is full and never drained: Linux drops
/// further SYNs, so a new connection attempt hangs.
fn full_listener() -> (Socket, SocketAddr, Vec<TcpStream>) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 holds one; a few more absorb any slack),
    // each connect bounded so that the loop ends by itself.
    let mut held = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    (socket, addr, held)
}

#[test]
fn a_server_that_never_answers_fails_at_the_connect_timeout_naming_the_address() {
    let (_listener, addr, _held) = full_listener();
    let config = SessionConfig {
        connect_timeout: Duration::from_millis(300),
        ..SessionConfig::default()
    };
    let connector = Connector::new(config).unwrap();
    let started = Instant::now();
    let result = async_std::task::block_on(connector.connect(&IpInformation::from(addr), Idle));
    let elapsed = started.elapsed();
    let err = result.expect_err("the handshake never completes");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("timed out"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}
