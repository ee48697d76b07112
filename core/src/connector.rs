//! The client side: connect to a server, then run the same engine.

use std::io;
use std::net::SocketAddr;

use futures::FutureExt;
use futures::channel::oneshot;
use std::panic::AssertUnwindSafe;

use crate::config::SessionConfig;
use crate::connection::{panic_message, run_session};
use crate::ip_information::IpInformation;
use crate::rt::{self, Runtime};
use crate::session::{DisconnectReason, Session, SessionHandle};

/// Opens connections to a server and runs a [`Session`] on each: the seed's
/// `Connector`, trying every resolved address in turn, each with a timeout.
///
/// ```no_run
/// use session_core::{Connector, IpInformation, Session, SessionConfig, SessionHandle};
///
/// struct Greeter;
/// impl Session for Greeter {
///     fn on_connected(&mut self, handle: &SessionHandle) {
///         let _ = handle.send(b"Hi 0");
///     }
///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
///         println!("{}", String::from_utf8_lossy(message));
///         handle.disconnect();
///     }
/// }
///
/// # async fn client() -> std::io::Result<()> {
/// let server = IpInformation::resolve("localhost", 12345).await?;
/// let connection = Connector::new(SessionConfig::default())?.connect(&server, Greeter).await?;
/// let reason = connection.closed().await;
/// println!("disconnected: {reason}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Connector {
    config: SessionConfig,
    /// `None`: the process's shared runtime, started on the first connect.
    runtime: Option<Runtime>,
}

/// One open client connection: its session's handle, and a way to wait for
/// its end.
#[derive(Debug)]
pub struct Connection {
    handle: SessionHandle,
    task: oneshot::Receiver<DisconnectReason>,
}

impl Connector {
    /// A connector whose sessions follow `config`; fails if the config's
    /// limits contradict one another. It connects, and runs its sessions,
    /// on the process's shared runtime ([`Runtime::default_shared`]).
    pub fn new(config: SessionConfig) -> io::Result<Connector> {
        config.validated()?;
        Ok(Connector {
            config,
            runtime: None,
        })
    }

    /// As [`new`](Self::new), connecting and running its sessions on the
    /// workers of `runtime`. The connector holds a handle of `runtime`:
    /// keep one (this connector, a clone of it, or the runtime itself) for
    /// as long as its sessions should run, since the workers stop when the
    /// last handle goes.
    ///
    /// ```no_run
    /// use session_core::{Connector, IpInformation, Runtime, Session, SessionConfig, SessionHandle};
    ///
    /// struct Quiet;
    /// impl Session for Quiet {
    ///     fn on_received(&mut self, _: &SessionHandle, _: &[u8]) {}
    /// }
    ///
    /// # async fn client() -> std::io::Result<()> {
    /// let runtime = Runtime::new(1)?;
    /// let connector = Connector::with_runtime(SessionConfig::default(), runtime.clone())?;
    /// let server = IpInformation::resolve("localhost", 12345).await?;
    /// let connection = connector.connect(&server, Quiet).await?;
    /// connection.handle().disconnect();
    /// connection.closed().await;
    /// # Ok(()) }
    /// ```
    pub fn with_runtime(config: SessionConfig, runtime: Runtime) -> io::Result<Connector> {
        config.validated()?;
        Ok(Connector {
            config,
            runtime: Some(runtime),
        })
    }

    /// The config its sessions follow.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Connects to the first of `target`'s addresses that answers within the
    /// connect timeout, then runs `session` on the connection in a task of
    /// its own.
    ///
    /// The connecting runs on one of the runtime's workers (a non-blocking
    /// connect, its timeout on that worker's timers), and the session then
    /// runs on that same worker. The error names the target and every
    /// address tried with its own error, such as
    /// `connect to localhost:12345 (127.0.0.1:12345: Connection refused (os error 111))`;
    /// it is also an error starting the shared runtime, for a connector
    /// made with [`new`](Self::new).
    pub async fn connect<S: Session>(
        &self,
        target: &IpInformation,
        session: S,
    ) -> io::Result<Connection> {
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => Runtime::default_shared()?,
        };
        let config = self.config.clone();
        let name = target.to_string();
        let endpoints = target.endpoints().to_vec();
        let (opened, open) = oneshot::channel::<io::Result<SessionHandle>>();
        let (done, task) = oneshot::channel();
        runtime.spawn_on_worker(async move {
            let stream = match open_first(&name, &endpoints, &config).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            let socket = stream.get_ref();
            let (peer, local) = match (socket.peer_addr(), socket.local_addr()) {
                (Ok(peer), Ok(local)) => (peer, local),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            config.apply_to(socket);
            let (handle, engine) = run_session(stream, peer, local, &config, session);
            if opened.send(Ok(handle)).is_err() {
                // The caller stopped waiting: no session starts.
                return;
            }
            let reason = match AssertUnwindSafe(engine).catch_unwind().await {
                Ok(reason) => reason,
                Err(payload) => DisconnectReason::Panicked(panic_message(payload.as_ref())),
            };
            let _ = done.send(reason);
        });
        let handle = open.await.unwrap_or_else(|_| {
            Err(io::Error::other(format!(
                "connect to {target}: the session runtime stopped"
            )))
        })?;
        Ok(Connection { handle, task })
    }
}

/// Tries each of `endpoints` in turn, each for at most the connect timeout,
/// on this worker; the error names `name` and every address with its error.
async fn open_first(
    name: &str,
    endpoints: &[SocketAddr],
    config: &SessionConfig,
) -> io::Result<rt::TcpStream> {
    let mut failures: Vec<(SocketAddr, io::Error)> = Vec::new();
    for &addr in endpoints {
        let attempt = rt::timeout(config.connect_timeout, rt::connect(addr)).await;
        match attempt {
            Some(Ok(stream)) => return Ok(stream),
            Some(Err(e)) => failures.push((addr, e)),
            None => failures.push((
                addr,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {:?}", config.connect_timeout),
                ),
            )),
        }
    }
    let kind = failures
        .last()
        .map_or(io::ErrorKind::NotFound, |(_, e)| e.kind());
    let tried: Vec<String> = failures
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect();
    Err(io::Error::new(
        kind,
        format!("connect to {name} ({})", tried.join("; ")),
    ))
}

impl Connection {
    /// The session's handle: send, disconnect, addresses.
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    /// Waits until the session has ended (after its `on_disconnected`) and
    /// returns why it ended.
    pub async fn closed(self) -> DisconnectReason {
        // The task always sends before it ends; a worker that died without
        // sending is the process shutting down.
        self.task.await.unwrap_or(DisconnectReason::Shutdown)
    }
}
