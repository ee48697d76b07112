//! The benchmark's reference: the echo server anyone would write directly on
//! async-std, with no framework. One task per connection reads into its own
//! 64 KiB buffer and writes back what it read with `write_all`.
//!
//! `reference-echo [--host HOST] [--port PORT]` (defaults 127.0.0.1 and 0)
//! prints `Listening on ADDR` on stdout once bound, as `server-app` does, and
//! runs until it is killed.

use async_std::io::{ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures::StreamExt;
use std::io::Write;

fn main() {
    let mut host = String::from("127.0.0.1");
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--host", Some(v)) => host = v,
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => fail(&format!("--port {v:?} is not a port number")),
            },
            _ => fail(&format!(
                "unexpected argument {arg:?}; usage: reference-echo [--host HOST] [--port PORT]"
            )),
        }
    }
    if let Err(e) = task::block_on(serve(&host, port)) {
        fail(&format!("reference-echo on {host}:{port}: {e}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

async fn serve(host: &str, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    println!("Listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut incoming = listener.incoming();
    while let Some(stream) = incoming.next().await {
        match stream {
            Ok(stream) => {
                task::spawn(echo(stream));
            }
            // Out of file descriptors or a connection reset before accept:
            // wait a little and go on, as any careful echo server would.
            Err(_) => task::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    Ok(())
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
