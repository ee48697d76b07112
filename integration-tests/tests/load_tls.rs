//! client-app's load mode over TLS (issue 13's benchmark) against the real
//! `server-app --tls-cert --tls-key`: every reply checked through TLS, the
//! handshake mode's new sessions, and idle TLS connections; with
//! certificates made fresh by the run ([`Pki`]).
//!
//! Linux only, as `load_mode.rs`: the load mode is an epoll loop.
#![cfg(target_os = "linux")]

use std::time::Duration;

use integration_tests::pki::Pki;
use integration_tests::process::{Proc, json_line, json_number};

/// How long one load run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// server-app over TLS with the test server certificate, a plain echo.
fn start_tls_server(pki: &Pki) -> (Proc, u16) {
    let cert = pki.server.cert.to_str().expect("UTF-8 path");
    let key = pki.server.key.to_str().expect("UTF-8 path");
    Proc::server(&[
        "--quiet",
        "--suffix",
        "",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
}

/// Runs the TLS load client (trusting the test CA) to the end; returns its
/// stdout and whether it exited successfully.
fn run_tls_load(pki: &Pki, port: u16, extra: &[&str]) -> (String, bool) {
    let port = port.to_string();
    let ca = pki.ca.to_str().expect("UTF-8 path");
    let mut args = vec![
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "--tls-ca",
        ca,
        "--tls-server-name",
        "localhost",
    ];
    args.extend_from_slice(extra);
    let client = Proc::app("client-app", &args).finish_within(RUN_LIMIT);
    let out = client.stdout();
    assert!(
        client.status.success() || out.contains('{'),
        "client-app failed: {}",
        client.stderr
    );
    (out, client.status.success())
}

#[test]
fn every_message_comes_back_through_tls() {
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let (out, ok) = run_tls_load(
        &pki,
        port,
        &[
            "--clients",
            "4",
            "--count",
            "300",
            "--window",
            "8",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert_eq!(json_number(json, "messages"), 1200.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
    assert!(json.contains("\"tls\":true"), "{json}");
}

#[test]
fn large_messages_come_back_through_tls_records() {
    // Larger than a TLS record (16 KiB): each message spans records, and
    // more is in flight than the socket buffers hold.
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let (out, ok) = run_tls_load(
        &pki,
        port,
        &[
            "--clients",
            "2",
            "--count",
            "100",
            "--window",
            "50",
            "--size",
            "40000",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert_eq!(json_number(json, "messages"), 200.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn open_loop_over_tls_is_checked_too() {
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let (out, ok) = run_tls_load(
        &pki,
        port,
        &[
            "--clients",
            "5",
            "--rate",
            "5000",
            "--duration",
            "0.5",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert!(json_number(json, "messages") >= 2000.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn handshake_mode_counts_new_sessions() {
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let (out, ok) = run_tls_load(
        &pki,
        port,
        &[
            "--clients",
            "4",
            "--handshakes",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "handshake run failed: {json}");
    let sessions = json_number(json, "handshakes");
    assert!(sessions >= 10.0, "{json}");
    assert_eq!(json_number(json, "messages"), sessions, "{json}");
    assert!(json_number(json, "handshakes_per_s") > 0.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn idle_tls_connections_stay_open() {
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let (out, ok) = run_tls_load(
        &pki,
        port,
        &["--clients", "20", "--idle", "--duration", "0.5", "--json"],
    );
    let json = json_line(&out);
    assert!(ok, "idle run failed: {json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn the_wrong_ca_fails_the_handshake() {
    let pki = Pki::new();
    let (_server, port) = start_tls_server(&pki);
    let port = port.to_string();
    // The server's own certificate is no CA for it.
    let wrong = pki.untrusted.cert.to_str().expect("UTF-8 path");
    let client = Proc::app(
        "client-app",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "--tls-ca",
            wrong,
            "--clients",
            "1",
            "--count",
            "1",
        ],
    )
    .finish_within(RUN_LIMIT);
    assert!(!client.status.success());
    assert!(client.stderr.contains("TLS"), "{}", client.stderr);
}
