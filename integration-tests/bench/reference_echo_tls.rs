//! The TLS benchmark's reference: the TLS echo server anyone would write
//! directly on async-std with `futures-rustls`, no framework. One task per
//! connection makes the TLS handshake, then reads into its own 64 KiB
//! buffer and writes back what it read with `write_all` and `flush`.
//!
//! The rustls configuration is the one rustls's own examples build, as
//! `session_core::ServerTls::from_pem_files` does: the ring provider, TLS
//! 1.2 and 1.3, no client certificates, the default session cache and
//! tickets.
//!
//! `reference-echo-tls --cert PEM --key PEM [--host HOST] [--port PORT]`
//! (defaults 127.0.0.1 and 0) prints `Listening on ADDR` on stdout once
//! bound, as `server-app` does, and runs until it is killed.

use std::io::Write;
use std::path::PathBuf;

use async_std::io::{ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures::StreamExt;
use futures_rustls::TlsAcceptor;

#[path = "reference_tls.rs"]
mod reference_tls;

use reference_tls::{fail, server_config};

fn main() {
    let mut host = String::from("127.0.0.1");
    let mut port: u16 = 0;
    let mut cert: Option<PathBuf> = None;
    let mut key: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--host", Some(v)) => host = v,
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => fail(&format!("--port {v:?} is not a port number")),
            },
            ("--cert", Some(v)) => cert = Some(v.into()),
            ("--key", Some(v)) => key = Some(v.into()),
            _ => fail(&format!(
                "unexpected argument {arg:?}; usage: reference-echo-tls --cert PEM --key PEM \
                 [--host HOST] [--port PORT]"
            )),
        }
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        fail("--cert and --key are needed");
    };
    let config = server_config(&cert, &key).unwrap_or_else(|e| fail(&e));
    if let Err(e) = task::block_on(serve(&host, port, TlsAcceptor::from(config))) {
        fail(&format!("reference-echo-tls on {host}:{port}: {e}"));
    }
}

async fn serve(host: &str, port: u16, acceptor: TlsAcceptor) -> std::io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    println!("Listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut incoming = listener.incoming();
    while let Some(stream) = incoming.next().await {
        match stream {
            Ok(stream) => {
                task::spawn(echo(stream, acceptor.clone()));
            }
            // Out of file descriptors or a connection reset before accept:
            // wait a little and go on, as any careful echo server would.
            Err(_) => task::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    Ok(())
}

async fn echo(stream: TcpStream, acceptor: TlsAcceptor) {
    let _ = stream.set_nodelay(true);
    let Ok(mut stream) = acceptor.accept(stream).await else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
