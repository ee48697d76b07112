//! `server-app`: the seed's echo server (`ServerProgram` with its
//! `ClientSession`) on top of `session-core`.
//!
//! It binds the resolved address(es), prints them, and answers every message
//! with the message and a suffix (`" - Receive Completed"` by default) until
//! SIGINT (Ctrl-C) or SIGTERM (on Windows: Ctrl-C, Ctrl-Break or closing the
//! console), when it shuts the listener down gracefully and exits 0. Errors end it with one line on stderr and a non-zero status.
//!
//! Behind a load balancer: `--proxy-protocol` takes each client's address
//! from the PROXY header the balancer sends, `--workers N` sets how many
//! threads run sessions, and SIGTERM is a rolling restart (the listening
//! socket closes at once, open sessions drain, exit 0).
//!
//! With `--tls-cert` and `--tls-key` it serves TLS (1.2 and 1.3, rustls);
//! with `--tls-client-ca` as well, only clients with a certificate signed by
//! that CA (mutual TLS). A file that is missing or wrong ends it before it
//! listens, with one line naming the file.
//!
//! With `--websocket` it serves WebSocket (RFC 6455; `wss` with the TLS
//! flags): each message is answered in the kind it came in (text or
//! binary), the message and the suffix in one WebSocket message.

mod echo;
mod output;
mod stop_requests;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use session_core::{Framing, IpInformation, Listener, ServerTls, SessionConfig, WebSocketServer};
use structopt::StructOpt;

use crate::echo::EchoSession;
use crate::output::{cli_error, parse_seconds, say};
use crate::stop_requests::StopRequests;

/// Echo server: replies to every message with the message and a suffix.
#[derive(Debug, StructOpt)]
#[structopt(name = "server-app")]
struct Opt {
    /// Host name or address to listen on (every address it resolves to).
    #[structopt(long, default_value = "localhost")]
    host: String,
    /// Port to listen on; 0 picks a free one (printed at start).
    #[structopt(long, default_value = "12345")]
    port: u16,
    /// Text appended to each reply; empty makes a plain echo.
    #[structopt(long, default_value = " - Receive Completed")]
    suffix: String,
    /// Leave out the per-message lines.
    #[structopt(long)]
    quiet: bool,
    /// How messages are cut from the stream: raw, lines or length-prefixed.
    #[structopt(long, default_value = "raw")]
    framing: Framing,
    /// Close a connection idle for this many seconds (off by default).
    #[structopt(long, value_name = "SECONDS", parse(try_from_str = parse_seconds))]
    idle_timeout: Option<Duration>,
    /// Most connections open at once.
    #[structopt(long, value_name = "N", default_value = "10000")]
    max_connections: usize,
    /// Threads that run sessions (each with its own executor and epoll; a
    /// session stays on the thread it started on). Default: one per core.
    #[structopt(long, value_name = "N", parse(try_from_str = parse_workers))]
    workers: Option<usize>,
    /// Expect a PROXY protocol v1 or v2 header (HAProxy `send-proxy-v2`,
    /// nginx `proxy_protocol on`) on every connection and use the client
    /// address it names. Only behind a balancer: anyone who can connect
    /// could claim any address.
    #[structopt(long)]
    proxy_protocol: bool,
    /// Give every worker a listening socket of its own (SO_REUSEPORT): each
    /// accepts its own connections, spread by the kernel. Default: one
    /// accept loop hands connections to the workers in turn.
    #[structopt(long)]
    reuse_port: bool,
    /// Serve TLS with this certificate chain (PEM, the server's own
    /// certificate first); needs --tls-key.
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients whose certificate is signed by a CA
    /// in this file (PEM); needs --tls-cert and --tls-key.
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    tls_client_ca: Option<PathBuf>,
    /// Serve WebSocket (RFC 6455) on any path: every message is answered
    /// in its kind (text or binary). With --tls-cert and --tls-key: wss.
    /// WebSocket has its own message boundaries: --framing must be raw.
    #[structopt(long)]
    websocket: bool,
}

impl Opt {
    /// The TLS configuration the flags ask for: `None` without them; an
    /// error naming the flag that is missing, or the file that is wrong.
    fn server_tls(&self) -> Result<Option<ServerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                anyhow::ensure!(
                    self.tls_client_ca.is_none(),
                    "--tls-client-ca needs --tls-cert and --tls-key (client certificates are asked for over TLS)"
                );
                Ok(None)
            }
            (Some(cert), Some(key)) => Ok(Some(ServerTls::from_pem_files(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key (its private key)"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (its certificate)"),
        }
    }

    /// What the start-up line says about TLS.
    fn tls_line(&self) -> Option<String> {
        let cert = self.tls_cert.as_ref()?;
        let clients = match &self.tls_client_ca {
            Some(ca) => format!("client certificates required (CA {})", ca.display()),
            None => "no client certificates".to_owned(),
        };
        Some(format!(
            "Serving TLS (1.2, 1.3) with {}, {clients}",
            cert.display()
        ))
    }
}

/// More worker threads than this is a typo, not a deployment.
const MAX_WORKERS: usize = 1024;

/// A worker count: a whole number from 1 to [`MAX_WORKERS`].
fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("--workers must be at least 1".into()),
        Ok(n) if n > MAX_WORKERS => Err(format!("--workers {n} is more than {MAX_WORKERS}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a number of workers")),
    }
}

fn main() -> ExitCode {
    let opt = match Opt::from_iter_safe(std::env::args_os()) {
        Ok(opt) => opt,
        Err(e) => return cli_error(&e),
    };
    if opt.websocket && opt.framing != Framing::Raw {
        eprintln!(
            "error: --websocket has its own message boundaries; --framing {} cannot go with it",
            opt.framing
        );
        return ExitCode::from(2);
    }
    match async_std::task::block_on(serve(opt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(opt: Opt) -> Result<()> {
    // The files first: a wrong one ends the program before it listens.
    let tls = opt.server_tls()?;
    // Install the handlers first: from the moment the address is printed,
    // SIGINT and SIGTERM (Windows: Ctrl-C, Ctrl-Break, console close) mean a
    // graceful shutdown, never the default death.
    let requests = StopRequests::install().context("install signal handlers")?;
    let requests_closer = requests.closer();

    say!("SERVER RUNNING..");
    let workers = opt.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Before the first session: the workers start with it.
    anyhow::ensure!(
        session_core::set_worker_threads(workers),
        "the session workers were already running; --workers {workers} not applied"
    );
    let ip = IpInformation::resolve(&opt.host, opt.port).await?;
    let config = SessionConfig {
        framing: opt.framing,
        idle_timeout: opt.idle_timeout,
        max_connections: opt.max_connections,
        proxy_protocol: opt.proxy_protocol,
        reuse_port: opt.reuse_port,
        ..SessionConfig::default()
    };
    let mut listener = Listener::bind(&ip, config).await?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    if let Some(tls) = tls {
        listener = listener.with_tls(tls);
    }
    if opt.websocket {
        listener = listener.with_websocket(WebSocketServer::new());
    }
    let addrs: Vec<String> = listener
        .local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    say!("Listening on {}", addrs.join(", "));
    say!(
        "Workers: {workers}{}{}",
        if opt.reuse_port {
            ", each accepting (SO_REUSEPORT)"
        } else {
            ""
        },
        if opt.proxy_protocol {
            ", PROXY protocol expected"
        } else {
            ""
        }
    );

    if let Some(line) = opt.tls_line() {
        say!("{line}");
    }
    if opt.websocket {
        say!(
            "Serving WebSocket: {scheme}://{}/ (any path)",
            listener.local_addr()
        );
    }

    let stop = listener.shutdown_handle();
    let watcher = async_std::task::spawn(async move {
        let mut requests = requests;
        if let Some(name) = requests.next().await {
            say!("Received {name}, shutting down..");
            stop.shutdown();
        }
        // A second signal while sessions drain: stop waiting.
        if let Some(name) = requests.next().await {
            eprintln!("error: {name} during shutdown, exiting now");
            std::process::exit(1);
        }
    });

    let suffix = opt.suffix;
    let quiet = opt.quiet;
    listener
        .run(move || EchoSession::new(&suffix, quiet))
        .await
        .context("run listener")?;
    requests_closer.close();
    watcher.cancel().await;
    say!("SERVER STOPPED");
    Ok(())
}
