//! The client side: connect to a server, then run the same engine.

use std::io;
use std::net::SocketAddr;

use futures::FutureExt;
use futures::channel::oneshot;
use std::panic::AssertUnwindSafe;

use crate::config::SessionConfig;
use crate::connection::{panic_message, run_session};
use crate::ip_information::IpInformation;
use crate::rt;
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
    /// limits contradict one another.
    pub fn new(config: SessionConfig) -> io::Result<Connector> {
        config.validated()?;
        Ok(Connector { config })
    }

    /// The config its sessions follow.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Connects to the first of `target`'s addresses that answers within the
    /// connect timeout, then runs `session` on the connection in a task of
    /// its own.
    ///
    /// The error names the target and every address tried with its own
    /// error, such as
    /// `connect to localhost:12345 (127.0.0.1:12345: Connection refused (os error 111))`.
    pub async fn connect<S: Session>(
        &self,
        target: &IpInformation,
        session: S,
    ) -> io::Result<Connection> {
        let stream = self.open(target).await?;
        let socket = stream.get_ref();
        let peer = socket.peer_addr()?;
        let local = socket.local_addr()?;
        self.config.apply_to(socket);
        let (handle, engine) = run_session(stream, peer, local, &self.config, session);
        let (done, task) = oneshot::channel();
        rt::spawn_on_worker(async move {
            let reason = match AssertUnwindSafe(engine).catch_unwind().await {
                Ok(reason) => reason,
                Err(payload) => DisconnectReason::Panicked(panic_message(payload.as_ref())),
            };
            let _ = done.send(reason);
        });
        Ok(Connection { handle, task })
    }

    async fn open(&self, target: &IpInformation) -> io::Result<rt::TcpStream> {
        let mut failures: Vec<(SocketAddr, io::Error)> = Vec::new();
        for &addr in target.endpoints() {
            let attempt = rt::timeout(self.config.connect_timeout, rt::connect(addr)).await;
            match attempt {
                Some(Ok(stream)) => return Ok(stream),
                Some(Err(e)) => failures.push((addr, e)),
                None => failures.push((
                    addr,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("timed out after {:?}", self.config.connect_timeout),
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
            format!("connect to {target} ({})", tried.join("; ")),
        ))
    }
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
