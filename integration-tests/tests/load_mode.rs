//! client-app's load mode against the real server-app: every reply checked,
//! the summary's JSON line, and a non-zero exit when the echo is wrong.
//!
//! The two binaries are built once (debug) with `cargo build -p server-app
//! -p client-app` and found next to this test's own target folder.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one load run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Builds server-app and client-app once; returns the folder holding them.
fn bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace folder")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "server-app", "-p", "client-app"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build failed: {status}");
        // This test runs as <target>/debug/deps/load_mode-HASH.
        let exe = std::env::current_exe().expect("own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target folder")
            .to_path_buf();
        assert!(
            dir.join("server-app").exists() && dir.join("client-app").exists(),
            "binaries not found in {}",
            dir.display()
        );
        dir
    })
}

/// A child process killed by its PID when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts server-app on a free loopback port with `suffix` and `framing`;
/// returns it and its port.
fn start_server(suffix: &str, framing: &str) -> (Guard, u16) {
    let mut child = Command::new(bin_dir().join("server-app"))
        .args(["--quiet", "--host", "127.0.0.1", "--port", "0", "--suffix"])
        .arg(suffix)
        .args(["--framing", framing])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server-app");
    let stdout = child.stdout.take().expect("server stdout");
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("Listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server-app printed no 'Listening on' line");
    let port = addr
        .split(',')
        .next()
        .and_then(|a| a.trim().rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"));
    (guard, port)
}

/// Runs the load client to the end; returns its stdout and whether it
/// exited successfully.
fn run_load(port: u16, extra: &[&str]) -> (String, bool) {
    let child = Command::new(bin_dir().join("client-app"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start client-app");
    let mut guard = Guard(child);
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait for client-app") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "client-app ran past {RUN_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    guard
        .0
        .stdout
        .take()
        .expect("client stdout")
        .read_to_string(&mut out)
        .expect("read client stdout");
    (out, status.success())
}

/// A number from the summary's one JSON line.
fn json_number(json: &str, key: &str) -> f64 {
    let needle = format!("\"{key}\":");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + needle.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn json_line(out: &str) -> &str {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "expected one JSON line in {out:?}");
    lines[0]
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
