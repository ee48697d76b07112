//! client-app's load mode against the real server-app: every reply checked,
//! the summary's JSON line, and a non-zero exit when the echo is wrong.
//!
//! The two binaries are built once (same profile as this test) with `cargo
//! build -p server-app -p client-app` and found in this test's own target
//! folder (`integration_tests::process`).
//!
//! Linux only: the load mode is an epoll loop. Elsewhere it says so and
//! exits 1, which `elsewhere.rs` checks.
#![cfg(target_os = "linux")]

use std::time::Duration;

use integration_tests::process::{Proc, json_line, json_number};

/// How long one load run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Starts server-app on a free loopback port with `suffix` and `framing`;
/// returns it and its port.
fn start_server(suffix: &str, framing: &str) -> (Proc, u16) {
    Proc::server(&["--quiet", "--suffix", suffix, "--framing", framing])
}

/// Runs the load client to the end; returns its stdout and whether it
/// exited successfully.
fn run_load(port: u16, extra: &[&str]) -> (String, bool) {
    let port = port.to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    let client = Proc::app("client-app", &args).finish_within(RUN_LIMIT);
    (client.stdout(), client.status.success())
}

#[test]
fn every_message_comes_back_from_a_plain_echo() {
    let (_server, port) = start_server("", "raw");
    let (out, ok) = run_load(
        port,
        &[
            "--clients",
            "4",
            "--count",
            "200",
            "--window",
            "4",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert_eq!(json_number(json, "messages"), 800.0, "{json}");
    assert_eq!(json_number(json, "sent"), 800.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
    assert!(json_number(json, "p50_us") > 0.0, "{json}");
}

#[test]
fn large_messages_written_from_their_pieces_come_back_whole() {
    // From 4 KiB up the generator writes each message from its pieces with
    // `writev` instead of copying it first. 12 MB in flight per connection
    // is more than the socket buffers hold, so writes stop in the middle of
    // a message and must go on from there.
    let (_server, port) = start_server("", "length-prefixed");
    let (out, ok) = run_load(
        port,
        &[
            "--clients",
            "2",
            "--count",
            "300",
            "--window",
            "200",
            "--size",
            "60000",
            "--framing",
            "length-prefixed",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert_eq!(json_number(json, "messages"), 600.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn length_prefixed_load_is_checked_too() {
    let (_server, port) = start_server("", "length-prefixed");
    let (out, ok) = run_load(
        port,
        &[
            "--framing",
            "length-prefixed",
            "--clients",
            "3",
            "--count",
            "100",
            "--window",
            "8",
            "--size",
            "300",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(ok, "load run failed: {json}");
    assert_eq!(json_number(json, "messages"), 300.0, "{json}");
    assert_eq!(json_number(json, "errors"), 0.0, "{json}");
}

#[test]
fn a_wrong_echo_is_counted_and_fails_the_run() {
    // The default suffix makes every reply longer than its request.
    let (_server, port) = start_server(" - Receive Completed", "raw");
    let (out, ok) = run_load(
        port,
        &[
            "--clients",
            "4",
            "--count",
            "200",
            "--window",
            "4",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(!ok, "a wrong echo must fail the run: {json}");
    assert!(json_number(json, "errors") > 0.0, "{json}");
    assert!(json_number(json, "messages") < 800.0, "{json}");
}

#[test]
fn a_reply_of_the_right_length_with_one_byte_changed_is_caught() {
    // A hand-made echo that changes one byte of each connection's stream
    // after its first 1000 bytes: every reply keeps its length, so only a
    // byte-for-byte check notices.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut handlers = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            handlers.push(std::thread::spawn(move || {
                let (mut seen, mut buf) = (0usize, [0u8; 4096]);
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if (seen..seen + n).contains(&1000) {
                        buf[1000 - seen] ^= 0x20;
                    }
                    seen += n;
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        for h in handlers {
            h.join().unwrap();
        }
    });
    let (out, ok) = run_load(
        port,
        &[
            "--clients",
            "2",
            "--count",
            "100",
            "--window",
            "4",
            "--json",
        ],
    );
    let json = json_line(&out);
    assert!(!ok, "a changed byte must fail the run: {json}");
    assert_eq!(json_number(json, "corrupt"), 2.0, "{json}");
    // Message 15 (bytes 960..1024) came back wrong on each connection; the
    // ones before it were checked and counted.
    assert_eq!(json_number(json, "messages"), 30.0, "{json}");
    server.join().unwrap();
}
