//! The real `server-app --websocket` and `client-app --websocket` (issue
//! 14): each other as peers, plain and over TLS (`wss`); a raw client
//! sees replies in the kind it sent; `--websocket` with another framing is
//! a usage error.

use std::io::{Read, Write};
use std::path::Path;

use integration_tests::connect;
use integration_tests::pki::Pki;
use integration_tests::process::{Finished, Proc};

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// Runs client-app against `port` on 127.0.0.1 to the end.
fn run_client(port: u16, extra: &[&str]) -> Finished {
    let port = port.to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--interval", "0"];
    args.extend_from_slice(extra);
    Proc::app("client-app", &args).finish()
}

#[test]
fn client_app_greets_server_app_over_websocket_and_wss() {
    let (mut server, port) = Proc::server(&["--websocket"]);
    server.wait_line(|l| l.starts_with("Serving WebSocket: ws://"));
    let client = run_client(port, &["--websocket", "--count", "3"]);
    assert!(client.status.success(), "{client:?}");
    let out = client.stdout();
    for i in 0..3 {
        assert!(
            out.contains(&format!("String : Hi {i} - Receive Completed")),
            "{out}"
        );
    }

    let pki = Pki::new();
    let (mut server, port) = Proc::server(&[
        "--websocket",
        "--tls-cert",
        path(&pki.server.cert),
        "--tls-key",
        path(&pki.server.key),
    ]);
    server.wait_line(|l| l.starts_with("Serving WebSocket: wss://"));
    let client = run_client(
        port,
        &[
            "--websocket",
            "--path",
            "/any",
            "--tls",
            "--tls-ca",
            path(&pki.ca),
            "--tls-server-name",
            "localhost",
            "--count",
            "2",
        ],
    );
    assert!(client.status.success(), "{client:?}");
    let out = client.stdout();
    assert!(out.contains("String : Hi 1 - Receive Completed"), "{out}");
}

#[test]
fn server_app_answers_in_the_kind_a_message_came_in() {
    let (_server, port) = Proc::server(&["--websocket", "--suffix", "!"]);
    let mut client = connect(format!("127.0.0.1:{port}").parse().unwrap());
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
        assert!(head.len() < 4096);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    // "hi" as text, then [1, 2] as binary, masked with a zero key.
    client.write_all(b"\x81\x82\0\0\0\0hi").unwrap();
    client.write_all(b"\x82\x82\0\0\0\0\x01\x02").unwrap();
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x81\x03hi!");
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x82\x03\x01\x02!");
}

#[test]
fn websocket_with_another_framing_is_a_usage_error() {
    for app in ["server-app", "client-app"] {
        let finished =
            Proc::app(app, &["--websocket", "--framing", "lines", "--port", "1"]).finish();
        assert_eq!(finished.status.code(), Some(2), "{app}: {finished:?}");
        let stderr = finished.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "{app}: {stderr:?}");
        assert!(
            stderr.contains("--websocket") && stderr.contains("lines"),
            "{stderr}"
        );
    }
}
