//! Real WebSocket peers of another make (Python's `websockets`, see
//! `integration-tests/peers/`) against both programs, every payload checked
//! byte for byte:
//!
//! - `ws_client.py` against `server-app --websocket`, plain and `wss`: a
//!   text and a binary message come back in their kind with server-app's
//!   default suffix, so do a 60 KB message (within the default limit of
//!   65,533 bytes) and two fragmented messages; a ping is answered; the close is clean (1000) and server-app prints its
//!   disconnect line for that client.
//! - `client-app --websocket` (greetings) against `ws_server.py`, plain and
//!   `wss`: the greetings arrive as text messages on the path asked for,
//!   and the client closes with 1000.
//! - client-app's load mode over WebSocket against `ws_server.py` (plain
//!   and `wss`) and against server-app; a server that fragments its
//!   replies fails the run with a clear error instead of hanging it.
//!
//! The same client script also runs against `reference-echo-ws` (with
//! server-app's suffix and lines), which proves the peers and the checks
//! apart from server-app.
//!
//! A missing Python or `websockets` skips these tests with a note, and
//! fails them under `CI` (`.ci/run` makes the virtual environment).
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::pki::Pki;
use integration_tests::process::{Proc, json_line, json_number};
use integration_tests::ws_peers::{hex, peer_script, unhex, ws_python};

/// server-app's default suffix.
const SUFFIX: &str = " - Receive Completed";

/// How long a peer script or a client run may take.
const LIMIT: Duration = Duration::from_secs(60);

/// What `ws_client.py` sends, in order (its `MESSAGES`, then its
/// `FRAGMENTED` messages joined), each with whether it is text.
fn client_messages() -> Vec<(bool, Vec<u8>)> {
    vec![
        (true, "Hello, WebSocket \u{2713}".as_bytes().to_vec()),
        (false, (0..=255).collect()),
        (
            false,
            (0..60_000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect(),
        ),
        (true, b"fragmented text".to_vec()),
        (false, b"\x00\x01\xfe\xff binary".to_vec()),
    ]
}

/// Starts `reference-echo-ws` standing in for `server-app --websocket`
/// (its suffix, its connect and disconnect lines), with `extra` flags.
fn reference_server(extra: &[&str]) -> (Proc, u16) {
    let mut server = Proc::spawn(
        "reference-echo-ws",
        Command::new(env!("CARGO_BIN_EXE_reference-echo-ws"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log",
                "--suffix",
                SUFFIX,
            ])
            .args(extra),
    );
    let port = server.listening_port();
    (server, port)
}

/// Runs `ws_client.py` against the server on `port` (over `wss` trusting
/// `ca` when given) and checks every line it prints and the server's
/// disconnect line for it.
fn python_client_against(python: &Path, server: &mut Proc, port: u16, ca: Option<&Path>) {
    let script = peer_script("ws_client.py");
    let scheme = if ca.is_some() { "wss" } else { "ws" };
    // The test certificate is valid for 127.0.0.1 as well as localhost.
    let url = format!("{scheme}://127.0.0.1:{port}/");
    let mut command = Command::new(python);
    command.arg(&script).arg(&url);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let client = Proc::spawn("ws_client.py", &mut command).finish_within(LIMIT);
    assert!(
        client.status.success(),
        "ws_client.py {url}: {}\nstdout:\n{}\nstderr:\n{}\nserver:\n{}",
        client.status,
        client.stdout(),
        client.stderr,
        server.describe()
    );
    let mut lines = client.lines.iter();
    let local = lines
        .next()
        .and_then(|l| l.strip_prefix("local "))
        .unwrap_or_else(|| panic!("no local line: {:?}", client.lines))
        .to_string();
    for (i, (text, sent)) in client_messages().into_iter().enumerate() {
        let line = lines.next().map_or("", String::as_str);
        let (kind, payload) = line
            .strip_prefix("reply ")
            .and_then(|rest| rest.split_once(' '))
            .unwrap_or_else(|| panic!("message {i}: no reply line, got {line:.200}"));
        let mut want = sent.clone();
        want.extend_from_slice(SUFFIX.as_bytes());
        assert_eq!(
            kind,
            if text { "text" } else { "binary" },
            "message {i} came back in another kind"
        );
        let got = unhex(payload);
        assert!(
            got == want,
            "message {i} ({} bytes sent): {} bytes back, first difference at {:?}; \
             wanted {:.120}…, got {:.120}…",
            sent.len(),
            got.len(),
            got.iter().zip(&want).position(|(a, b)| a != b),
            hex(&want),
            hex(&got)
        );
    }
    assert_eq!(
        lines.next().map(String::as_str),
        Some("pong"),
        "{:?}",
        client.lines
    );
    assert_eq!(
        lines.next().map(String::as_str),
        Some("closed 1000"),
        "the server did not answer the close with 1000"
    );
    server.wait_line(|l| l.starts_with(&format!("Disconnected from {local} (")));
}

#[test]
fn python_client_gets_every_message_back_from_server_app() {
    let Some(python) = ws_python() else { return };
    let (mut server, port) = Proc::server(&["--websocket"]);
    python_client_against(&python, &mut server, port, None);
}

#[test]
fn python_client_over_wss_gets_every_message_back_from_server_app() {
    let Some(python) = ws_python() else { return };
    let pki = Pki::new();
    let (cert, key) = (
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap(),
    );
    let (mut server, port) = Proc::server(&["--websocket", "--tls-cert", cert, "--tls-key", key]);
    python_client_against(&python, &mut server, port, Some(&pki.ca));
}

#[test]
fn python_client_checks_hold_against_the_reference_echo() {
    // The harness itself, apart from server-app: the same script and
    // checks against async-tungstenite, plain and over wss.
    let Some(python) = ws_python() else { return };
    let (mut server, port) = reference_server(&[]);
    python_client_against(&python, &mut server, port, None);
    let pki = Pki::new();
    let (cert, key) = (
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap(),
    );
    let (mut server, port) = reference_server(&["--cert", cert, "--key", key]);
    python_client_against(&python, &mut server, port, Some(&pki.ca));
}

/// Starts `ws_server.py` with `extra` flags; returns it and its port.
fn python_server(python: &Path, extra: &[&str]) -> (Proc, u16) {
    let mut server = Proc::spawn(
        "ws_server.py",
        Command::new(python)
            .arg(peer_script("ws_server.py"))
            .args(extra),
    );
    let port = server.listening_port();
    (server, port)
}

/// Greets the Python server on `port` with `client-app --websocket` (three
/// greetings, on `/chat`, with `tls` flags) and checks what it received.
fn greet_python_server(server: &mut Proc, port: u16, tls: &[&str]) {
    let port = port.to_string();
    let mut args = vec![
        "--websocket",
        "--path",
        "/chat",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--count",
        "3",
        "--interval",
        "0.05",
        "--wait",
        "10",
    ];
    args.extend_from_slice(tls);
    let client = Proc::app("client-app", &args).finish_within(LIMIT);
    assert!(
        client.status.success(),
        "client-app {args:?}: {}\nstdout:\n{}\nstderr:\n{}\nserver:\n{}",
        client.status,
        client.stdout(),
        client.stderr,
        server.describe()
    );
    server.wait_line(|l| l == "connected /chat");
    for i in 0..3 {
        let want = format!("got text {}", hex(format!("Hi {i}").as_bytes()));
        let line = server.wait_line(|l| l.starts_with("got ") || l.starts_with("closed"));
        assert_eq!(line, want, "greeting {i}: not that text message");
    }
    let closed = server.wait_line(|l| l.starts_with("closed "));
    assert_eq!(closed, "closed 1000", "client-app did not close cleanly");
}

#[test]
fn client_app_greets_a_python_server_in_text_messages() {
    let Some(python) = ws_python() else { return };
    let (mut server, port) = python_server(&python, &["--suffix", SUFFIX]);
    greet_python_server(&mut server, port, &[]);
}

#[test]
fn client_app_greets_a_python_server_over_wss() {
    let Some(python) = ws_python() else { return };
    let pki = Pki::new();
    let (cert, key) = (
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap(),
    );
    let (mut server, port) =
        python_server(&python, &["--suffix", SUFFIX, "--cert", cert, "--key", key]);
    let ca = pki.ca.to_str().unwrap();
    greet_python_server(
        &mut server,
        port,
        &["--tls", "--tls-ca", ca, "--tls-server-name", "localhost"],
    );
}

/// Runs client-app's load mode over WebSocket against `port` with `extra`
/// flags; returns its stdout, stderr and whether it succeeded.
fn run_ws_load(port: u16, extra: &[&str]) -> (String, String, bool) {
    let port = port.to_string();
    let mut args = vec!["--websocket", "--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    let client = Proc::app("client-app", &args).finish_within(LIMIT);
    (client.stdout(), client.stderr, client.status.success())
}

/// Checks a load run of 4 connections of 100 messages each.
fn check_load_summary(out: &str, err: &str, ok: bool) {
    let json = json_line(out);
    assert!(ok, "load run failed: {json}\n{err}");
    assert_eq!(json_number(json, "messages"), 400.0, "{json}");
    assert_eq!(json_number(json, "sent"), 400.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
    assert!(json_number(json, "p50_us") > 0.0, "{json}");
    assert!(json.contains("\"websocket\":true"), "{json}");
}

const LOAD: [&str; 7] = [
    "--clients",
    "4",
    "--count",
    "100",
    "--window",
    "4",
    "--json",
];

#[test]
fn load_mode_over_websocket_against_a_python_server() {
    let Some(python) = ws_python() else { return };
    let (_server, port) = python_server(&python, &["--quiet"]);
    let (out, err, ok) = run_ws_load(port, &LOAD);
    check_load_summary(&out, &err, ok);
    // Messages from 126 bytes up have a 16-bit length, from 64 KiB a
    // 64-bit one: both forms, both ways.
    for size in ["300", "70000"] {
        let mut args = LOAD.to_vec();
        args.extend(["--size", size]);
        let (out, err, ok) = run_ws_load(port, &args);
        check_load_summary(&out, &err, ok);
    }
}

#[test]
fn load_mode_over_wss_against_a_python_server() {
    let Some(python) = ws_python() else { return };
    let pki = Pki::new();
    let (cert, key) = (
        pki.server.cert.to_str().unwrap(),
        pki.server.key.to_str().unwrap(),
    );
    let (_server, port) = python_server(&python, &["--quiet", "--cert", cert, "--key", key]);
    let mut args = LOAD.to_vec();
    let ca = pki.ca.to_str().unwrap();
    args.extend(["--tls", "--tls-ca", ca, "--tls-server-name", "localhost"]);
    let (out, err, ok) = run_ws_load(port, &args);
    check_load_summary(&out, &err, ok);
    assert!(out.contains("\"tls\":true"), "{out}");
}

#[test]
fn load_mode_fails_clearly_on_fragmented_replies() {
    let Some(python) = ws_python() else { return };
    let (_server, port) = python_server(&python, &["--quiet", "--fragment"]);
    let (out, err, ok) = run_ws_load(port, &LOAD);
    assert!(!ok, "a fragmented reply passed: {out}");
    let json = json_line(&out);
    assert_eq!(json_number(json, "conn_errors"), 4.0, "{json}");
    assert!(
        err.contains("fragmented message"),
        "stderr does not say why: {err}"
    );
}

#[test]
fn load_mode_over_websocket_against_server_app() {
    let (_server, port) = Proc::server(&["--websocket", "--quiet", "--suffix", ""]);
    let (out, err, ok) = run_ws_load(port, &LOAD);
    check_load_summary(&out, &err, ok);
}
