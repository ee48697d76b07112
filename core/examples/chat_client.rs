//! A line client for `chat_server`: lines typed on stdin go to the server,
//! lines from the server go to stdout.
//!
//! ```text
//! cargo run -p session-core --example chat_client -- --port 12346
//! ```
//!
//! End of input (Ctrl-D) or `/quit` ends the session.

use std::io::BufRead;
use std::process::ExitCode;

use session_core::{
    Connector, DisconnectReason, Framing, IpInformation, Session, SessionConfig, SessionHandle,
};

const USAGE: &str = "usage: chat_client [--host HOST] [--port PORT]
  --host HOST   server to connect to (default 127.0.0.1)
  --port PORT   server port (default 12346)";

/// Prints every line from the server.
struct Printer;

impl Session for Printer {
    fn on_received(&mut self, _handle: &SessionHandle, message: &[u8]) {
        println!("{}", String::from_utf8_lossy(message));
    }

    fn on_disconnected(&mut self, _handle: &SessionHandle, reason: &DisconnectReason) {
        eprintln!("disconnected: {reason}");
    }
}

fn parse_args() -> Result<(String, u16), String> {
    let (mut host, mut port) = ("127.0.0.1".to_owned(), 12346);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--host" => host = value("--host")?,
            "--port" => {
                let text = value("--port")?;
                port = text.parse().map_err(|e| format!("--port {text:?}: {e}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((host, port))
}

fn main() -> ExitCode {
    let (host, port) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("chat_client: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = SessionConfig {
        framing: Framing::Lines,
        max_frame_len: 4096,
        ..SessionConfig::default()
    };
    let result = async_std::task::block_on(async {
        let server = IpInformation::resolve(&host, port).await?;
        let connection = Connector::new(config)?.connect(&server, Printer).await?;
        let handle = connection.handle().clone();
        // Stdin blocks: read it on a thread of its own. `send` never blocks
        // and may be called from any thread.
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if handle.send(line.as_bytes()).is_err() {
                    break;
                }
            }
            handle.disconnect();
        });
        connection.closed().await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_client: {e}");
            ExitCode::FAILURE
        }
    }
}
