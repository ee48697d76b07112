//! The WebSocket benchmark's reference: the WebSocket echo server anyone
//! would write directly on async-std with `async-tungstenite`, no framework.
//! One task per connection accepts the upgrade, then reads a message and
//! writes it back in the same kind (text or binary), until the peer closes;
//! tungstenite answers pings and the closing handshake itself.
//!
//! `reference-echo-ws [--host HOST] [--port PORT]` (defaults 127.0.0.1 and
//! 0) prints `Listening on ADDR` on stdout once bound, as `server-app`
//! does, and runs until it is killed. For developing the real-peer tests
//! without `server-app --websocket`, it can stand in for it:
//! `--suffix TEXT` is appended to every reply (server-app's default is
//! `" - Receive Completed"`), `--log` prints `Connected to PEER` and
//! `Disconnected from PEER (...)` lines, and `--cert PEM --key PEM` serve
//! `wss` with futures-rustls.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use async_tungstenite::tungstenite::Message;
use futures::{AsyncRead, AsyncWrite, StreamExt};
use futures_rustls::TlsAcceptor;

#[path = "reference_tls.rs"]
mod reference_tls;

use reference_tls::{fail, server_config};

/// How each connection is served.
#[derive(Clone)]
struct Echo {
    suffix: Arc<str>,
    log: bool,
    tls: Option<TlsAcceptor>,
}

fn main() {
    let mut host = String::from("127.0.0.1");
    let mut port: u16 = 0;
    let mut suffix = String::new();
    let mut log = false;
    let (mut cert, mut key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--log" {
            log = true;
            continue;
        }
        let value = args.next();
        match (arg.as_str(), value) {
            ("--host", Some(v)) => host = v,
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => fail(&format!("--port {v:?} is not a port number")),
            },
            ("--suffix", Some(v)) => suffix = v,
            ("--cert", Some(v)) => cert = Some(v.into()),
            ("--key", Some(v)) => key = Some(v.into()),
            _ => fail(&format!(
                "unexpected argument {arg:?}; usage: reference-echo-ws [--host HOST] \
                 [--port PORT] [--suffix TEXT] [--log] [--cert PEM --key PEM]"
            )),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsAcceptor::from(
            server_config(&cert, &key).unwrap_or_else(|e| fail(&e)),
        )),
        (None, None) => None,
        _ => fail("--cert and --key go together"),
    };
    let echo = Echo {
        suffix: suffix.into(),
        log,
        tls,
    };
    if let Err(e) = task::block_on(serve(&host, port, echo)) {
        fail(&format!("reference-echo-ws on {host}:{port}: {e}"));
    }
}

async fn serve(host: &str, port: u16, echo: Echo) -> std::io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    println!("Listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut incoming = listener.incoming();
    while let Some(stream) = incoming.next().await {
        match stream {
            Ok(stream) => {
                task::spawn(accept(stream, echo.clone()));
            }
            // Out of file descriptors or a connection reset before accept:
            // wait a little and go on, as any careful echo server would.
            Err(_) => task::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    Ok(())
}

async fn accept(stream: TcpStream, echo: Echo) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let reason = match &echo.tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => serve_one(stream, &echo, &peer).await,
            Err(e) => Err(format!("TLS: {e}")),
        },
        None => serve_one(stream, &echo, &peer).await,
    };
    if echo.log {
        let reason = reason.err().unwrap_or_else(|| "closed by peer".into());
        println!("Disconnected from {peer} ({reason})");
    }
}

/// Upgrades, then echoes every message in its kind; `Ok` on the peer's
/// close (a close frame or the end of the stream).
async fn serve_one<S>(stream: S, echo: &Echo, peer: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = async_tungstenite::accept_async(stream)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    if echo.log {
        println!("Connected to {peer}");
    }
    while let Some(message) = ws.next().await {
        let reply = match message.map_err(|e| e.to_string())? {
            Message::Text(text) if echo.suffix.is_empty() => Message::Text(text),
            Message::Binary(bytes) if echo.suffix.is_empty() => Message::Binary(bytes),
            Message::Text(text) => Message::text(format!("{}{}", text.as_str(), echo.suffix)),
            Message::Binary(bytes) => {
                let mut reply = bytes.to_vec();
                reply.extend_from_slice(echo.suffix.as_bytes());
                Message::binary(reply)
            }
            // Pings are answered and closes completed by tungstenite.
            _ => continue,
        };
        ws.send(reply).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
