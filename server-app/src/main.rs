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

mod echo;
mod output;
mod stop_requests;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use session_core::{Framing, IpInformation, Listener, ServerTls, SessionConfig};
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
    /// TLS: the server's certificate chain, PEM (with --tls-key).
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key, PEM (with --tls-cert).
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    tls_key: Option<PathBuf>,
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
    match async_std::task::block_on(serve(opt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(opt: Opt) -> Result<()> {
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
    let listener = Listener::bind(&ip, config).await?;
    let listener = match (&opt.tls_cert, &opt.tls_key) {
        (Some(cert), Some(key)) => listener.with_tls(ServerTls::from_pem_files(cert, key, None)?),
        (None, None) => listener,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
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
