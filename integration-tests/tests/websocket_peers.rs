//! A WebSocket peer of another make: the browser's `WebSocket` API as
//! Node.js has it (undici), against `server-app --websocket`, plain and
//! over TLS (`wss`). Text and binary come back in their kind, a message
//! over the limit closes with 1009, and the peer's own close code reaches
//! the server's session.
//!
//! Node.js is on the project's machines (it is missing: the test says so
//! and passes, except under `CI`, where it fails).

use std::process::Command;

use integration_tests::pki::Pki;
use integration_tests::process::{Finished, Proc, fail_if_ci};

/// The browser's side, as the README shows it: connects to `WS_URL`, sends
/// a text, a binary and a 60,000-byte binary message, prints each reply,
/// then closes with 4000; with `WS_TOO_LONG` it sends one message over the
/// server's limit instead and prints the close code it gets.
const PEER: &str = r#"
const ws = new WebSocket(process.env.WS_URL);
ws.binaryType = "arraybuffer";
const timer = setTimeout(() => { console.log("timeout"); process.exit(3); }, 5000);
let replies = 0;
ws.onopen = () => {
  if (process.env.WS_TOO_LONG) { ws.send(new Uint8Array(70000)); return; }
  ws.send("hello \u00e9");
  ws.send(new Uint8Array([1, 2, 3]));
  ws.send(new Uint8Array(60000).fill(7));
};
ws.onmessage = (e) => {
  if (typeof e.data === "string") console.log("text " + JSON.stringify(e.data));
  else {
    const b = new Uint8Array(e.data);
    console.log("binary " + b.length + " " + b[0] + " " + b[b.length - 1]);
  }
  if (++replies === 3) ws.close(4000, "done");
};
ws.onclose = (e) => { console.log("close " + e.code + " " + e.wasClean); clearTimeout(timer); };
ws.onerror = (e) => console.log("error " + e.message);
"#;

/// Whether this Node.js has the browser's `WebSocket` (Node 20 behind a
/// flag, 22 on its own).
fn node_has_websocket() -> bool {
    let status = Command::new("node")
        .args(["--experimental-websocket", "-e"])
        .arg("process.exit(typeof WebSocket === 'function' ? 0 : 1)")
        .status();
    match status {
        Ok(status) if status.success() => true,
        _ => {
            fail_if_ci(
                "node with the WebSocket API (Node.js 20 or later)",
                "nodejs",
            );
            println!("note: no node with WebSocket; skipping the browser-API peer");
            false
        }
    }
}

fn run_peer(url: &str, extra_ca: Option<&std::path::Path>, too_long: bool) -> Finished {
    let mut command = Command::new("node");
    command
        .args(["--experimental-websocket", "-e", PEER])
        .env("WS_URL", url);
    if let Some(ca) = extra_ca {
        command.env("NODE_EXTRA_CA_CERTS", ca);
    }
    if too_long {
        command.env("WS_TOO_LONG", "1");
    }
    Proc::spawn("node", &mut command).finish()
}

#[test]
fn the_browser_api_talks_to_server_app_over_ws_and_wss() {
    if !node_has_websocket() {
        return;
    }
    let (mut server, port) = Proc::server(&["--websocket", "--quiet", "--suffix", "!"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let peer = run_peer(&url, None, false);
    assert!(peer.status.success(), "{peer:?}");
    assert_eq!(
        peer.lines,
        [
            "text \"hello \u{e9}!\"",
            "binary 4 1 33",
            "binary 60001 7 33",
            "close 4000 true"
        ],
        "{peer:?}"
    );
    server.wait_line(|l| l.contains("(closed by WebSocket peer with code 4000: done)"));

    let peer = run_peer(&url, None, true);
    assert_eq!(peer.lines, ["close 1009 true"], "{peer:?}");
    server.wait_line(|l| l.contains("(frame too large: 70000 bytes, maximum 65533)"));

    let pki = Pki::new();
    let (mut server, port) = Proc::server(&[
        "--websocket",
        "--quiet",
        "--suffix",
        "!",
        "--tls-cert",
        pki.server.cert.to_str().unwrap(),
        "--tls-key",
        pki.server.key.to_str().unwrap(),
    ]);
    let peer = run_peer(&format!("wss://127.0.0.1:{port}/"), Some(&pki.ca), false);
    assert!(peer.status.success(), "{peer:?}");
    assert_eq!(peer.lines.len(), 4, "{peer:?}");
    assert_eq!(peer.lines[3], "close 4000 true", "{peer:?}");
    server.wait_line(|l| l.contains("(closed by WebSocket peer with code 4000: done)"));
}
