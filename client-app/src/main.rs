//! `client-app`: the seed's greeting client (`ClientProgram` with its
//! `ServerSession`) on top of `session-core`.
//!
//! It connects, sends `--count` greetings (`"Hi 0"`, `"Hi 1"`, ...) one
//! `--interval` apart from a task of its own, waits up to `--wait` seconds
//! after the last one for the server to have echoed every greeting, then
//! disconnects and exits 0. An unreachable server, a server that hangs up
//! early, or replies that never come end it with one line on stderr and
//! status 1.
//!
//! With `--clients N` it runs the load mode instead (see `load.rs`): many
//! connections, every reply checked, a summary at the end. The two modes
//! share `--host`, `--port`, `--framing` and `--count` (greetings in the
//! greeting mode, default 5; messages per connection in the load mode).
//!
//! `--tls` (with `--tls-ca`, `--tls-server-name`, `--tls-cert` and
//! `--tls-key`) connects over TLS; a server certificate it does not trust
//! ends it with one line saying why, and status 1.
//!
//! `--websocket` (with `--path`, default `/`) speaks WebSocket (RFC 6455;
//! `wss` with `--tls`): the greetings go out as text messages and each
//! reply is one message; the load mode sends masked binary frames.

mod greeter;
mod load;
#[path = "../../server-app/src/output.rs"]
mod output;
mod replies;
#[path = "../../server-app/src/tls.rs"]
mod tls;
mod tls_options;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use session_core::{
    ClientTls, Connector, Framing, IpInformation, MessageKind, SendError, SessionConfig,
    SessionHandle, WebSocketClient,
};
use structopt::StructOpt;

use crate::greeter::{Greeter, Shared};
use crate::output::{cli_error, parse_seconds, say};

/// The command line of both modes.
#[derive(Debug, StructOpt)]
#[structopt(name = "client-app")]
struct Opt {
    /// Host name or address of the server (every address it resolves to is
    /// tried in turn).
    #[structopt(long, default_value = "localhost")]
    host: String,
    /// Port of the server.
    #[structopt(long, default_value = "12345")]
    port: u16,
    /// Seconds between two greetings (fractions allowed).
    #[structopt(long, value_name = "SECONDS", default_value = "1.0", parse(try_from_str = parse_seconds))]
    interval: Duration,
    /// The greeting; `{i}` becomes its index, from 0.
    #[structopt(long, default_value = "Hi {i}")]
    message: String,
    /// How messages are cut from the stream: raw, lines or length-prefixed.
    #[structopt(long, default_value = "raw")]
    framing: Framing,
    /// Seconds to wait for the replies after the last greeting.
    #[structopt(long, value_name = "SECONDS", default_value = "5", parse(try_from_str = parse_seconds))]
    wait: Duration,
    /// The load mode's options, `--count` among them.
    #[structopt(flatten)]
    load: load::LoadOptions,
    /// TLS: `--tls` and the files and name it uses.
    #[structopt(flatten)]
    tls: tls_options::TlsOptions,
    /// Speak WebSocket (RFC 6455): an HTTP/1.1 upgrade on --path, then each
    /// greeting (or, with --clients, each load message) is one message:
    /// text for greetings, masked binary frames for the load. With --tls:
    /// wss. WebSocket has its own message boundaries: --framing must be
    /// raw.
    #[structopt(long)]
    websocket: bool,
    /// The path the WebSocket upgrade asks for (with --websocket).
    #[structopt(long, default_value = "/")]
    path: String,
}

/// Greetings sent when `--count` is not given.
const DEFAULT_GREETINGS: u64 = 5;

/// What `--help` says first. Set on the built parser because a flattened
/// struct's doc comment would otherwise replace the one on `Opt`.
const ABOUT: &str = "Greeting client: sends --count numbered greetings (default 5) and waits for \
their echoes. With --clients N: load mode, --count messages per connection (default 1000).";

fn main() -> ExitCode {
    let matches = Opt::clap()
        .about(ABOUT)
        .get_matches_from_safe(std::env::args_os());
    let opt = match matches {
        Ok(matches) => Opt::from_clap(&matches),
        Err(e) => return cli_error(&e),
    };
    if opt.websocket && opt.framing != Framing::Raw {
        eprintln!(
            "error: --websocket has its own message boundaries; --framing {} cannot go with it",
            opt.framing
        );
        return ExitCode::from(2);
    }
    // Both modes: a flag without what it needs, or a wrong file, ends it
    // before it connects.
    let tls = match opt.tls.client_tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if opt.load.clients.is_some() {
        let websocket = opt.websocket.then_some(opt.path.as_str());
        return match load::run(
            &opt.host,
            opt.port,
            opt.framing,
            &opt.load,
            tls.as_ref(),
            websocket,
        ) {
            Ok(summary) => summary.exit_code(),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match async_std::task::block_on(greet(opt, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn greet(opt: Opt, tls: Option<ClientTls>) -> Result<()> {
    say!("CLIENT RUNNING..");
    let count = opt.load.count.unwrap_or(DEFAULT_GREETINGS);
    let count = usize::try_from(count).context("--count is too large")?;
    let greetings: Vec<Vec<u8>> = (0..count)
        .map(|i| opt.message.replace("{i}", &i.to_string()).into_bytes())
        .collect();
    let config = SessionConfig {
        framing: opt.framing,
        ..SessionConfig::default()
    };
    let mut connector = Connector::new(config)?;
    if let Some(tls) = tls {
        connector = connector.with_tls(tls);
    }
    if opt.websocket {
        connector = connector.with_websocket(WebSocketClient::new(&opt.path));
    }
    let server = IpInformation::resolve(&opt.host, opt.port).await?;

    let (changed, on_change) = async_std::channel::bounded(1);
    let shared = Shared::new(greetings.clone(), changed);
    let connection = connector
        .connect(&server, Greeter::new(shared.clone()))
        .await?;
    let handle = connection.handle().clone();
    let sender = async_std::task::spawn(send_greetings(
        handle.clone(),
        greetings,
        opt.interval,
        shared.clone(),
    ));

    let outcome = wait_for_replies(&shared, &on_change, count, opt.wait).await;
    sender.cancel().await;
    handle.disconnect();
    connection.closed().await;
    outcome
}

/// The seed's `ServerSession.Body()`, off the callback thread: queue each
/// greeting, one interval apart.
async fn send_greetings(
    handle: SessionHandle,
    greetings: Vec<Vec<u8>>,
    interval: Duration,
    shared: Shared,
) {
    for (i, greeting) in greetings.iter().enumerate() {
        if i > 0 {
            async_std::task::sleep(interval).await;
        }
        // A text message over WebSocket; framed as `send` does otherwise.
        if let Err(e) = handle.send_message(MessageKind::Text, &[greeting]) {
            shared.update(|p| p.send_error = Some(e));
            return;
        }
    }
    shared.update(|p| p.all_sent = true);
}

/// Waits until all `count` replies are in (success), the connection ends
/// first, a send fails, or `wait` passes after the last greeting.
async fn wait_for_replies(
    shared: &Shared,
    on_change: &async_std::channel::Receiver<()>,
    count: usize,
    wait: Duration,
) -> Result<()> {
    let mut deadline: Option<Instant> = None;
    loop {
        {
            let progress = shared.lock();
            let found = progress.replies.found();
            if progress.all_sent && found >= count {
                return Ok(());
            }
            if let Some(reason) = &progress.closed {
                bail!(
                    "the server closed the connection after {found} of {count} replies ({reason})"
                );
            }
            // `Closed` means the session is ending: its reason follows.
            if let Some(e) = progress
                .send_error
                .as_ref()
                .filter(|e| **e != SendError::Closed)
            {
                bail!("sending greeting {found}: {e}");
            }
            if progress.all_sent && deadline.is_none() {
                deadline = Some(Instant::now() + wait);
            }
        }
        match deadline {
            None => {
                let _ = on_change.recv().await;
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if async_std::future::timeout(left, on_change.recv())
                    .await
                    .is_err()
                {
                    let found = shared.lock().replies.found();
                    bail!(
                        "{found} of {count} replies within {:.1} s of the last greeting",
                        wait.as_secs_f64()
                    );
                }
            }
        }
    }
}
