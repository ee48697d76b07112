//! A chat server: rooms, nicks, join and leave notices, one line per
//! message, so that `nc 127.0.0.1 12346` is a client. With `--ws-port` a
//! second listener takes WebSocket clients into the same rooms, so that a
//! browser can join (each text message is a line).
//!
//! ```text
//! cargo run -p session-core --example chat_server -- --port 12346 --ws-port 12347
//! nc 127.0.0.1 12346
//! ```
//!
//! and in a browser's console:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:12347/");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send("hello from the browser");
//! ```
//!
//! Commands: `/nick NAME`, `/join ROOM` (everyone starts in `lobby`), `/who`,
//! `/quit`; any other line goes to the others in your room as `NICK: text`
//! (you do not get your own line back). The room logic is in
//! `chat/room.rs`, shared with the tests and the fan-out benchmark.

// Each program that includes the module uses only part of it.
#[allow(dead_code)]
#[path = "chat/room.rs"]
mod room;

use std::process::ExitCode;
use std::time::Duration;

use session_core::{Framing, IpInformation, Listener, SessionConfig, WebSocketServer};

const USAGE: &str = "usage: chat_server [--host HOST] [--port PORT] [--ws-port PORT]
  --host HOST      address to listen on (default 127.0.0.1)
  --port PORT      port to listen on, 0 for any free one (default 12346)
  --ws-port PORT   also take WebSocket clients (browsers) on this port";

struct Args {
    host: String,
    port: u16,
    ws_port: Option<u16>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".to_owned(),
        port: 12346,
        ws_port: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--host" => args.host = value("--host")?,
            "--port" => {
                let port = value("--port")?;
                args.port = port.parse().map_err(|e| format!("--port {port:?}: {e}"))?;
            }
            "--ws-port" => {
                let port = value("--ws-port")?;
                let port = port
                    .parse()
                    .map_err(|e| format!("--ws-port {port:?}: {e}"))?;
                args.ws_port = Some(port);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("chat_server: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = SessionConfig {
        framing: Framing::Lines,
        // Room for a `/who` line and a long message with its nick.
        max_frame_len: 4096,
        idle_timeout: Some(Duration::from_secs(600)),
        ..SessionConfig::default()
    };
    let result = async_std::task::block_on(async {
        let ip = IpInformation::resolve(&args.host, args.port).await?;
        let listener = Listener::bind(&ip, config.clone()).await?;
        println!("Listening on {}", listener.local_addr());
        let Some(ws_port) = args.ws_port else {
            return room::serve(listener).await;
        };
        let ip = IpInformation::resolve(&args.host, ws_port).await?;
        let websockets = Listener::bind(&ip, config)
            .await?
            .with_websocket(WebSocketServer::new());
        println!("WebSocket clients on ws://{}/", websockets.local_addr());
        // One chat, two doors: the rooms are the same.
        let chat = room::Chat::new();
        futures::try_join!(chat.clone().run(listener), chat.run(websockets))?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_server: {e}");
            ExitCode::FAILURE
        }
    }
}
