//! A real browser as a WebSocket peer: headless Chromium opens
//! `integration-tests/peers/ws_page.html`, which connects to the server on
//! 127.0.0.1, sends a text and a binary message, closes with 1000 once both
//! replies are in, and reports what came back (kind and bytes in hex); the
//! test checks both replies byte for byte and in their kind.
//!
//! The page is served by the test itself on 127.0.0.1 (a few lines of
//! HTTP/1.1 on a thread, so the page, its socket and its report are all
//! loopback, with no file:// origin rules in the way), and the page sends
//! its report back there as `GET /result?r=...`: the test waits for that
//! request, not for a time (Chromium's `--dump-dom` with a virtual time
//! budget printed the page before the replies had come).
//!
//! Chromium runs as `--headless=new` with a fresh profile in a temporary
//! folder, `--no-sandbox` (the tests run as root in CI), and is killed by
//! its own PID once the report is in or the time bound has passed.
//!
//! The same page also runs against `reference-echo-ws` (with server-app's
//! suffix and lines), which proves the harness apart from server-app.
//! Chromium missing: skipped with a note, or a failure under `CI`.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use integration_tests::process::Proc;
use integration_tests::ws_peers::{chromium, hex, peer_script};

/// server-app's default suffix.
const SUFFIX: &str = " - Receive Completed";

/// How long Chromium may take to report.
const LIMIT: Duration = Duration::from_secs(60);

/// A temporary folder, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make a temporary folder");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `%XX` escapes decoded (what `encodeURIComponent` makes).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one HTTP/1.1 request on `stream`: the page, the report (sent to
/// `report`), or a 404.
fn serve_request(mut stream: TcpStream, page: &str, report: &mpsc::Sender<String>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: a request line and headers, at most 64 KiB.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let target = text.split(' ').nth(1).unwrap_or("");
    let (status, kind, body) = if target.starts_with("/ws_page.html") {
        ("200 OK", "text/html; charset=utf-8", page.to_string())
    } else if let Some(query) = target.strip_prefix("/result?r=") {
        let _ = report.send(percent_decode(query));
        ("204 No Content", "text/plain", String::new())
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Opens the page in headless Chromium against the WebSocket server on
/// `port`; returns the lines the page reported.
fn browser_lines(chromium: &Path, port: u16, server: &Proc) -> Vec<String> {
    let page = std::fs::read_to_string(peer_script("ws_page.html")).expect("read ws_page.html");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind the page's server");
    let http_port = http.local_addr().expect("its address").port();
    http.set_nonblocking(true).expect("non-blocking accept");
    let (report_tx, report_rx) = mpsc::channel();
    let deadline = Instant::now() + LIMIT;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    // The page's server, until the test is done or the deadline.
    let pages = std::thread::spawn(move || {
        while Instant::now() < deadline && !stopped.load(Ordering::Relaxed) {
            match http.accept() {
                // A thread per connection: a socket Chromium opens ahead
                // and leaves unused must not hold up the page's request.
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let (page, report_tx) = (page.clone(), report_tx.clone());
                    std::thread::spawn(move || serve_request(stream, &page, &report_tx));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    });
    let profile = TempDir::new(&format!("ws-browser-profile-{port}"));
    let url = format!("http://127.0.0.1:{http_port}/ws_page.html?port={port}");
    let mut command = Command::new(chromium);
    command
        .arg("--headless=new")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--disable-extensions")
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(&url);
    let mut browser = Proc::spawn("chromium", &mut command);
    let report = report_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok();
    stop.store(true, Ordering::Relaxed);
    let running = browser.is_running();
    let described = browser.describe();
    // Kills Chromium by its PID.
    drop(browser);
    let _ = pages.join();
    let Some(report) = report else {
        panic!(
            "no report from the page within {LIMIT:?} (chromium running: {running}):\n{}\nserver:\n{}",
            &described[described.len().saturating_sub(3000)..],
            server.describe()
        );
    };
    report.split('|').map(str::to_string).collect()
}

/// Checks what the page saw from an echo that appends [`SUFFIX`], and the
/// server's disconnect line.
fn check_browser_against(chromium: &Path, server: &mut Proc, port: u16) {
    let lines = browser_lines(chromium, port, server);
    let reply = |kind: &str, sent: &[u8]| {
        let mut want = sent.to_vec();
        want.extend_from_slice(SUFFIX.as_bytes());
        format!("reply {kind} {}", hex(&want))
    };
    let want = vec![
        reply("text", "Hello from Chromium \u{e9}\u{2713}".as_bytes()),
        reply("binary", &[0, 1, 2, 128, 254, 255]),
        "closed 1000".to_string(),
        "end".to_string(),
    ];
    assert_eq!(lines, want, "server:\n{}", server.describe());
    server.wait_line(|l| l.starts_with("Disconnected from 127.0.0.1:"));
}

#[test]
fn chromium_gets_text_and_binary_back_from_server_app() {
    let Some(chromium) = chromium() else { return };
    let (mut server, port) = Proc::server(&["--websocket"]);
    check_browser_against(&chromium, &mut server, port);
}

#[test]
fn chromium_checks_hold_against_the_reference_echo() {
    let Some(chromium) = chromium() else { return };
    let mut server = Proc::spawn(
        "reference-echo-ws",
        Command::new(env!("CARGO_BIN_EXE_reference-echo-ws")).args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log",
            "--suffix",
            SUFFIX,
        ]),
    );
    let port = server.listening_port();
    check_browser_against(&chromium, &mut server, port);
}
