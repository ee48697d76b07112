//! The client side: connect to a server, then run the same engine.

use std::io;
use std::net::SocketAddr;

use futures::FutureExt;
use futures::channel::oneshot;
use std::panic::AssertUnwindSafe;

use crate::config::SessionConfig;
use crate::connection::{panic_message, run_session_layered};
use crate::ip_information::IpInformation;
use crate::rt::{self, Runtime};
use crate::session::{DisconnectReason, Session, SessionHandle};
use crate::tls::{ClientTls, TlsInfo};
use crate::websocket::{self, WebSocketClient, WsStart};
use futures::io::{AsyncRead, AsyncWrite};

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
    tls: Option<ClientTls>,
    websocket: Option<WebSocketClient>,
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
            tls: None,
            websocket: None,
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
            tls: None,
            websocket: None,
        })
    }

    /// Speaks TLS on every connection: the handshake (within
    /// [`SessionConfig::tls_handshake_timeout`]) comes before the session
    /// starts, and a server whose certificate is not trusted, or not for
    /// the expected name, fails [`connect`](Self::connect) with the reason.
    ///
    /// ```no_run
    /// use std::path::Path;
    /// use session_core::{ClientTls, Connector, IpInformation, Session, SessionConfig, SessionHandle};
    ///
    /// struct Quiet;
    /// impl Session for Quiet {
    ///     fn on_received(&mut self, _: &SessionHandle, _: &[u8]) {}
    /// }
    ///
    /// # async fn client() -> std::io::Result<()> {
    /// let tls = ClientTls::new(Some(Path::new("ca.pem")), None)?;
    /// let connector = Connector::new(SessionConfig::default())?.with_tls(tls);
    /// let server = IpInformation::resolve("localhost", 12345).await?;
    /// let connection = connector.connect(&server, Quiet).await?;
    /// assert!(connection.handle().tls().is_some());
    /// # Ok(()) }
    /// ```
    pub fn with_tls(mut self, tls: ClientTls) -> Connector {
        self.tls = Some(tls);
        self
    }

    /// Speaks WebSocket (RFC 6455) on every connection: the HTTP/1.1
    /// upgrade (within [`SessionConfig::websocket_handshake_timeout`])
    /// comes before the session starts, after TLS if there is any (`wss`);
    /// a server that refuses it fails [`connect`](Self::connect) with the
    /// status it answered. The sessions' framing is
    /// [`Framing::WebSocket`](crate::Framing::WebSocket) whatever the
    /// config says; every frame is masked with a fresh key.
    ///
    /// ```no_run
    /// use session_core::{Connector, IpInformation, Session, SessionConfig, SessionHandle, WebSocketClient};
    ///
    /// struct Hello;
    /// impl Session for Hello {
    ///     fn on_connected(&mut self, handle: &SessionHandle) {
    ///         let _ = handle.send_text("Hi 0");
    ///     }
    ///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
    ///         println!("{}", String::from_utf8_lossy(message));
    ///         handle.disconnect();
    ///     }
    /// }
    ///
    /// # async fn client() -> std::io::Result<()> {
    /// let connector = Connector::new(SessionConfig::default())?.with_websocket(WebSocketClient::new("/"));
    /// let server = IpInformation::resolve("localhost", 12345).await?;
    /// let connection = connector.connect(&server, Hello).await?;
    /// connection.closed().await;
    /// # Ok(()) }
    /// ```
    pub fn with_websocket(mut self, websocket: WebSocketClient) -> Connector {
        self.websocket = Some(websocket);
        self
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
        if self.websocket.is_some() {
            self.config.validated_for_websocket()?;
        }
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => Runtime::default_shared()?,
        };
        let attempt = Attempt {
            name: target.to_string(),
            host: target.host().to_owned(),
            endpoints: target.endpoints().to_vec(),
            config: self.config.clone(),
            tls: self.tls.clone(),
            websocket: self.websocket.clone(),
        };
        let (opened, open) = oneshot::channel::<io::Result<SessionHandle>>();
        let (done, task) = oneshot::channel();
        runtime.spawn_on_worker(attempt.run(session, opened, done));
        let handle = open.await.unwrap_or_else(|_| {
            Err(io::Error::other(format!(
                "connect to {target}: the session runtime stopped"
            )))
        })?;
        Ok(Connection { handle, task })
    }
}

/// One call of [`Connector::connect`], run on a worker.
struct Attempt {
    name: String,
    host: String,
    endpoints: Vec<SocketAddr>,
    config: SessionConfig,
    tls: Option<ClientTls>,
    websocket: Option<WebSocketClient>,
}

impl Attempt {
    /// Connects (and makes the TLS handshake), says how that went on
    /// `opened`, then runs the session and says why it ended on `done`.
    async fn run<S: Session>(
        self,
        session: S,
        opened: oneshot::Sender<io::Result<SessionHandle>>,
        done: oneshot::Sender<DisconnectReason>,
    ) {
        let stream = match open_first(&self.name, &self.endpoints, &self.config).await {
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
        self.config.apply_to(socket);
        let Some(tls) = &self.tls else {
            let layers = (peer, local, None);
            return self.upgrade(stream, layers, session, opened, done).await;
        };
        let handshake = match tls.name_for(&self.host) {
            Ok(name) => crate::tls::connect(stream, tls, name, self.config.tls_limits()).await,
            Err(e) => Err(e),
        };
        match handshake {
            Ok((stream, info)) => {
                let layers = (peer, local, Some(info));
                self.upgrade(stream, layers, session, opened, done).await;
            }
            Err(e) => {
                let _ = opened.send(Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {} ({peer}): {e}", self.name),
                )));
            }
        }
    }
}

impl Attempt {
    /// Makes the WebSocket upgrade if asked to, then runs the session.
    async fn upgrade<S: Session, T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut stream: T,
        (peer, local, tls): (SocketAddr, SocketAddr, Option<TlsInfo>),
        session: S,
        opened: oneshot::Sender<io::Result<SessionHandle>>,
        done: oneshot::Sender<DisconnectReason>,
    ) {
        let ws = match &self.websocket {
            None => None,
            Some(client) => {
                let limits = self.config.websocket_limits();
                let host = match peer.port() {
                    port if self.host.contains(':') && !self.host.starts_with('[') => {
                        format!("[{}]:{port}", self.host)
                    }
                    port => format!("{}:{port}", self.host),
                };
                let upgrade = rt::timeout(
                    limits.timeout,
                    websocket::connect(&mut stream, client, &host, limits),
                )
                .await;
                match upgrade {
                    Some(Ok((info, rest))) => Some(WsStart { info, rest }),
                    Some(Err(e)) => {
                        let _ = opened.send(Err(io::Error::new(
                            e.kind(),
                            format!("WebSocket upgrade with {} ({peer}): {e}", self.name),
                        )));
                        return;
                    }
                    None => {
                        let _ = opened.send(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "WebSocket upgrade with {} ({peer}): no answer within {:?}",
                                self.name, limits.timeout
                            ),
                        )));
                        return;
                    }
                }
            }
        };
        let run = run_session_layered(stream, peer, local, &self.config, session, tls, ws);
        report(run, opened, done).await;
    }
}

/// Hands the session's handle to `opened`, runs it, and sends why it
/// ended to `done`. The session runs as a task of its own on this worker,
/// so the attempt's larger future (connecting, the handshake) is freed
/// now, not when the session ends.
async fn report(
    (handle, engine): (
        SessionHandle,
        impl Future<Output = DisconnectReason> + Send + 'static,
    ),
    opened: oneshot::Sender<io::Result<SessionHandle>>,
    done: oneshot::Sender<DisconnectReason>,
) {
    if opened.send(Ok(handle)).is_err() {
        // The caller stopped waiting: no session starts.
        return;
    }
    let session = async move {
        let reason = match AssertUnwindSafe(engine).catch_unwind().await {
            Ok(reason) => reason,
            Err(payload) => DisconnectReason::Panicked(panic_message(payload.as_ref())),
        };
        let _ = done.send(reason);
    };
    if let Err(session) = rt::spawn_on_current(session) {
        session.await;
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
