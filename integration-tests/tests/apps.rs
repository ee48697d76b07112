//! The real `server-app` and `client-app` binaries, driven as a user would:
//! over loopback sockets, with signals, and with `nc`.
//!
//! The binaries are built once per test process (`cargo build -p server-app
//! -p client-app`, same profile as this test) and found in this test's own
//! target folder, so `CARGO_TARGET_DIR` is respected. Every server listens
//! on `127.0.0.1` port 0 and the test learns the port from its `Listening
//! on` line. Every wait is bounded, and every child is killed and reaped by
//! a guard when the test ends, passing or failing.
//!
//! The signal tests run on Unix only: Windows has no signal to send to one
//! child (its console control events go to a whole console or process
//! group, and under Wine they are hard to deliver at all). There, the server's stop path is covered by the unit test
//! of `server-app`'s stop requests and by the in-process shutdown tests in
//! `sessions.rs` and `hostile.rs`. The real-`nc` half runs on Linux only,
//! where CI installs netcat-openbsd (README, Platforms).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
#[cfg(target_os = "linux")]
use std::process::{Command, Stdio};

#[cfg(target_os = "linux")]
use integration_tests::process::{ChildGuard, tools_present, wait_exit};
use integration_tests::process::{Finished, LIMIT, Proc};

/// The reply suffix server-app appends by default.
const SUFFIX: &str = " - Receive Completed";

/// Runs client-app against `port` to the end.
fn run_client(port: u16, extra: &[&str]) -> Finished {
    let port = port.to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    Proc::app("client-app", &args).finish()
}

/// Connects, writes `request`, closes the write side (as `nc -N` does) and
/// reads until the server closes; returns what it sent back.
fn exchange(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(request).expect("write");
    stream.shutdown(Shutdown::Write).expect("shutdown write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read reply");
    reply
}

/// A loopback port on which nothing listens (bound, read, released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

fn count_lines(text: &str, want: impl Fn(&str) -> bool) -> usize {
    text.lines().filter(|l| want(l)).count()
}

#[test]
fn client_greets_the_server_and_both_print_the_exchange() {
    let (mut server, port) = Proc::server(&[]);
    let client = run_client(port, &["--count", "3", "--interval", "0.05"]);
    assert!(client.status.success(), "{client:#?}");
    assert!(
        client.stdout().starts_with("CLIENT RUNNING.."),
        "{client:#?}"
    );
    assert!(
        client
            .stdout()
            .contains(&format!("Connected to 127.0.0.1:{port}")),
        "{client:#?}"
    );
    for i in 0..3 {
        assert_eq!(
            count_lines(&client.stdout(), |l| l
                .ends_with(&format!("] To server : Hi {i}"))),
            1,
            "{client:#?}"
        );
        assert!(
            client.stdout().contains(&format!("Hi {i}{SUFFIX}")),
            "reply {i} missing: {client:#?}"
        );
    }
    assert!(
        count_lines(&client.stdout(), |l| l.contains("] From server - Len : ")) >= 1,
        "{client:#?}"
    );
    assert!(
        client.stdout().contains("Disconnected from 127.0.0.1:"),
        "{client:#?}"
    );
    assert!(client.stderr.is_empty(), "{client:#?}");

    let connected = server.wait_line(|l| l.starts_with("Connected to 127.0.0.1:"));
    let peer = connected["Connected to ".len()..].to_string();
    for i in 0..3 {
        server.wait_line(|l| {
            l.contains("] From client - Len : 4, String : ") && l.ends_with(&format!("Hi {i}"))
        });
    }
    server.wait_line(|l| l == format!("Disconnected from {peer} (closed by peer)"));
    assert!(
        server
            .seen()
            .iter()
            .any(|l| l.ends_with(&format!("] To client : Hi 2{SUFFIX}"))),
        "{:#?}",
        server.seen()
    );
}

/// A signal while a client is connected: the server closes the session with
/// reason `shutdown`, prints its last line and exits 0; the client notices
/// the early close and exits non-zero with one line. Unix only (signals).
#[cfg(unix)]
fn signal_stops_the_server_gracefully(signal: libc::c_int, name: &str) {
    let (mut server, port) = Proc::server(&[]);
    let port_text = port.to_string();
    let client = Proc::app(
        "client-app",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port_text,
            "--count",
            "1000",
            "--interval",
            "0.05",
        ],
    );
    let connected = server.wait_line(|l| l.starts_with("Connected to "));
    let peer = connected["Connected to ".len()..].to_string();
    server.wait_line(|l| l.contains("] From client - Len : "));

    server.signal(signal);
    let server = server.finish();
    assert!(server.status.success(), "{server:#?}");
    assert!(
        server
            .stdout()
            .contains(&format!("Received {name}, shutting down..")),
        "{server:#?}"
    );
    assert!(
        server
            .stdout()
            .contains(&format!("Disconnected from {peer} (shutdown)")),
        "{server:#?}"
    );
    assert!(
        server.stdout().trim_end().ends_with("SERVER STOPPED"),
        "{server:#?}"
    );

    let client = client.finish();
    assert!(!client.status.success(), "{client:#?}");
    assert!(
        client
            .stderr
            .starts_with("error: the server closed the connection after ")
            && client.stderr.lines().count() == 1,
        "{client:#?}"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_gracefully_with_a_client_connected() {
    signal_stops_the_server_gracefully(libc::SIGTERM, "SIGTERM");
}

#[cfg(unix)]
#[test]
fn sigint_stops_the_server_gracefully_with_a_client_connected() {
    signal_stops_the_server_gracefully(libc::SIGINT, "SIGINT");
}

#[test]
fn client_without_a_server_fails_with_one_clear_line() {
    let port = closed_port();
    let client = run_client(port, &[]);
    assert_eq!(client.status.code(), Some(1), "{client:#?}");
    let stderr = client.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "{client:#?}");
    assert!(
        stderr.starts_with("error: connect to 127.0.0.1:")
            && stderr.contains(&format!("127.0.0.1:{port}")),
        "{client:#?}"
    );
    assert!(!client.stderr.contains("panicked"), "{client:#?}");
}

#[test]
fn server_replies_to_a_half_closed_connection_like_nc_sees_it() {
    let (_server, port) = Proc::server(&[]);
    assert_eq!(
        String::from_utf8(exchange(port, b"hello")).unwrap(),
        format!("hello{SUFFIX}")
    );
    #[cfg(target_os = "linux")]
    with_real_nc(port);
    #[cfg(not(target_os = "linux"))]
    println!("SKIPPED the real-nc half of this test: netcat-openbsd is a Linux-only peer here");
}

/// The same exchange through `sh -c "printf hello | nc -N ..."`: Linux only.
#[cfg(target_os = "linux")]
fn with_real_nc(port: u16) {
    if !tools_present(&["nc"], "netcat-openbsd") {
        eprintln!("SKIPPED the real-nc half of this test: nc is not on PATH");
        return;
    }
    let mut nc = ChildGuard::new(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf hello | nc -N 127.0.0.1 {port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sh"),
    );
    let mut stdout = nc.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status =
        wait_exit(&mut nc, LIMIT).unwrap_or_else(|| panic!("nc still running after {LIMIT:?}"));
    let text = reader.join().unwrap();
    assert!(status.success(), "nc: {status}");
    assert_eq!(text, format!("hello{SUFFIX}"));
}

#[test]
fn empty_suffix_makes_a_plain_echo_of_the_exact_bytes() {
    let (_server, port) = Proc::server(&["--suffix", ""]);
    assert_eq!(exchange(port, b"hello"), b"hello");
    // Not UTF-8: echoed as bytes, never through a lossy conversion.
    assert_eq!(exchange(port, b"\xff\xfe\x00bin"), b"\xff\xfe\x00bin");
}

/// A raw read of up to the maximum frame still gets its suffix: 1 MiB in,
/// every byte back in order, with a suffix after each read.
#[test]
fn large_raw_messages_get_every_byte_back_with_their_suffixes() {
    let (_server, port) = Proc::server(&["--quiet"]);
    // Bytes that never form the suffix.
    let request: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = exchange(port, &request);
    // Each read comes back as `piece - Receive Completed`: splitting on the
    // suffix leaves the request.
    let text = String::from_utf8(reply).expect("ASCII");
    assert!(text.ends_with(SUFFIX), "the last read has its suffix");
    let echoed: String = text.split(SUFFIX).collect();
    assert!(echoed.as_bytes() == request.as_slice(), "the echo differs");
}

#[test]
fn lines_framing_answers_each_line() {
    let (mut server, port) = Proc::server(&["--framing", "lines"]);
    assert_eq!(
        String::from_utf8(exchange(port, b"a\nb\n")).unwrap(),
        format!("a{SUFFIX}\nb{SUFFIX}\n")
    );
    server.wait_line(|l| l.ends_with("] From client - Len : 1, String : a"));
    server.wait_line(|l| l.ends_with("] From client - Len : 1, String : b"));
}

#[test]
fn client_and_server_agree_on_every_framing() {
    for framing in ["lines", "length-prefixed"] {
        let (_server, port) = Proc::server(&["--framing", framing, "--quiet"]);
        let client = run_client(
            port,
            &["--framing", framing, "--count", "3", "--interval", "0"],
        );
        assert!(client.status.success(), "{framing}: {client:#?}");
        for i in 0..3 {
            assert!(
                client.stdout().lines().any(|l| l.ends_with(&format!(
                    "] From server - Len : {}, String : Hi {i}{SUFFIX}",
                    4 + SUFFIX.len()
                ))),
                "{framing}: {client:#?}"
            );
        }
    }
}

#[test]
fn quiet_server_prints_connections_but_no_messages() {
    let (mut server, port) = Proc::server(&["--quiet"]);
    assert_eq!(exchange(port, b"x"), format!("x{SUFFIX}").as_bytes());
    server.wait_line(|l| l.starts_with("Disconnected from "));
    assert!(
        !server.seen().iter().any(|l| l.contains("From client")),
        "{:#?}",
        server.seen()
    );
}

#[test]
fn idle_timeout_closes_a_silent_connection() {
    let (mut server, port) = Proc::server(&["--idle-timeout", "0.2"]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("server closes");
    assert!(rest.is_empty());
    server.wait_line(|l| l.starts_with("Disconnected from ") && l.ends_with("(idle timeout)"));
}

#[test]
fn server_errors_are_one_line_and_a_failure_status() {
    // The port is taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port().to_string();
    let server = Proc::app("server-app", &["--host", "127.0.0.1", "--port", &port]).finish();
    assert_eq!(server.status.code(), Some(1), "{server:#?}");
    assert_eq!(server.stderr.trim_end().lines().count(), 1, "{server:#?}");
    assert!(
        server.stderr.starts_with("error: bind 127.0.0.1:") && server.stderr.contains(&port),
        "{server:#?}"
    );
    drop(taken);

    // A bad flag value.
    let server = Proc::app("server-app", &["--framing", "json"]).finish();
    assert_eq!(server.status.code(), Some(2), "{server:#?}");
    assert_eq!(server.stderr.trim_end().lines().count(), 1, "{server:#?}");
    assert!(server.stderr.contains("json"), "{server:#?}");
    assert!(!server.stderr.contains("panicked"), "{server:#?}");
}
