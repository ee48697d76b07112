//! The server side: bind, accept for ever, one session per connection.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::future::{Either, select};
use futures::io::{AsyncRead, AsyncWrite};
use futures::task::AtomicWaker;
use futures::{AsyncWriteExt, FutureExt, Stream, StreamExt};

use crate::rt::Runtime;

use crate::config::SessionConfig;
use crate::connection::{panic_message, run_session_layered};
use crate::ip_information::IpInformation;
use crate::proxy_protocol::{self, ProxyError, ProxyHeader};
use crate::registry::Registry;
use crate::rt;
use crate::session::{Session, SessionHandle, SessionId};
use crate::shutdown::ShutdownHandle;
use crate::tls::{ServerTls, TlsInfo};
use crate::websocket::{self, WebSocketServer, WsStart};

/// The first pause after an accept error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections and runs a [`Session`] for each: the seed's
/// `Listener`, with a connection limit, accept errors that never end the
/// loop, and a graceful shutdown.
///
/// ```no_run
/// use session_core::{IpInformation, Listener, Session, SessionConfig, SessionHandle};
///
/// struct Echo;
/// impl Session for Echo {
///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
///         let _ = handle.send(message);
///     }
/// }
///
/// # async fn serve() -> std::io::Result<()> {
/// let listener = Listener::bind(&IpInformation::resolve("127.0.0.1", 0).await?, SessionConfig::default()).await?;
/// println!("listening on {}", listener.local_addr());
/// let stop = listener.shutdown_handle();
/// // ... hand `stop` to whatever decides when to stop (Ctrl-C, a test) ...
/// listener.run(|| Echo).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::TcpListener>,
    /// With `reuse_port`: for each worker after the first, its own sockets
    /// on the same addresses, bound here so that no connection lands before
    /// every worker's socket exists.
    more: Vec<Vec<std::net::TcpListener>>,
    addrs: Vec<SocketAddr>,
    config: SessionConfig,
    shutdown: ShutdownHandle,
    shared: Arc<ListenerShared>,
    runtime: Runtime,
    tls: Option<ServerTls>,
    websocket: Option<Arc<WebSocketServer>>,
}

/// Counters of one listener, read with [`Listener::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerStats {
    /// Connections accepted and given a session.
    pub accepted: u64,
    /// Connections closed at once because the connection limit was reached.
    pub rejected: u64,
    /// Errors returned by `accept` (each followed by a short pause).
    pub accept_errors: u64,
    /// Connections closed because their PROXY protocol header was missing,
    /// malformed, too long or late (with
    /// [`SessionConfig::proxy_protocol`]).
    pub proxy_rejected: u64,
    /// Connections closed because their TLS handshake failed or was late
    /// (with [`Listener::with_tls`]); each is logged with the reason.
    pub tls_rejected: u64,
    /// Connections closed because their WebSocket upgrade was refused
    /// (answered with an HTTP 4xx), malformed, too large or late (with
    /// [`Listener::with_websocket`]); each is logged with the reason.
    pub websocket_rejected: u64,
    /// Sessions open now.
    pub active: usize,
}

#[derive(Debug, Default)]
struct ListenerShared {
    accepted: AtomicU64,
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    proxy_rejected: AtomicU64,
    tls_rejected: AtomicU64,
    websocket_rejected: AtomicU64,
    active: AtomicUsize,
    sessions: Registry,
    /// Woken when the last session ends.
    all_closed: AtomicWaker,
}

impl ListenerShared {
    /// A connection ends: its session (if it got one) leaves the registry.
    fn remove(&self, id: Option<SessionId>) {
        if let Some(id) = id {
            self.sessions.remove(id);
        }
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.wake();
        }
    }
}

/// A cheap, cloneable view of a running listener's counters.
#[derive(Debug, Clone)]
pub struct ListenerStatsHandle(Arc<ListenerShared>);

impl Listener {
    /// Binds every address `ip` resolved to (all on one port: with port 0,
    /// the port the first one got). Fails if none could be bound, naming
    /// each address and its error; an address that fails while another
    /// binds (say `::1` on a host without IPv6) is logged and skipped.
    ///
    /// Its sessions run on the process's shared runtime
    /// ([`Runtime::default_shared`]); an error starting that runtime is
    /// returned here.
    pub async fn bind(ip: &IpInformation, config: SessionConfig) -> io::Result<Listener> {
        config.validated()?;
        Listener::bind_on(&Runtime::default_shared()?, ip, config).await
    }

    /// As [`bind`](Self::bind), with the accept loops and sessions on the
    /// workers of `runtime`.
    ///
    /// ```no_run
    /// use session_core::{IpInformation, Listener, Runtime, Session, SessionConfig, SessionHandle};
    ///
    /// struct Quiet;
    /// impl Session for Quiet {
    ///     fn on_received(&mut self, _: &SessionHandle, _: &[u8]) {}
    /// }
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let runtime = Runtime::new(2)?;
    /// let ip = IpInformation::resolve("127.0.0.1", 0).await?;
    /// let listener = Listener::bind_on(&runtime, &ip, SessionConfig::default()).await?;
    /// let stop = listener.shutdown_handle();
    /// // ... hand `stop` to whatever decides when to stop ...
    /// listener.run(|| Quiet).await?;
    /// runtime.shutdown_and_join();
    /// # Ok(()) }
    /// ```
    pub async fn bind_on(
        runtime: &Runtime,
        ip: &IpInformation,
        config: SessionConfig,
    ) -> io::Result<Listener> {
        config.validated()?;
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        let mut errors = Vec::new();
        let mut port = ip.port();
        for endpoint in ip.endpoints() {
            let mut addr = *endpoint;
            addr.set_port(port);
            match rt::bind(addr, config.reuse_port) {
                Ok(socket) => {
                    let bound = socket.local_addr()?;
                    port = bound.port();
                    addrs.push(bound);
                    sockets.push(socket);
                }
                Err(e) => errors.push((addr, e)),
            }
        }
        if sockets.is_empty() {
            return Err(match (ip.endpoints(), errors.pop()) {
                // One address: its own error, naming the address once.
                ([_], Some((addr, e))) => io::Error::new(e.kind(), format!("bind {addr}: {e}")),
                (_, last) => {
                    errors.extend(last);
                    io::Error::other(format!("bind {ip}: {}", describe(&errors)))
                }
            });
        }
        for (addr, e) in errors {
            log::warn!("bind {ip}: skipped {addr}: {e}");
        }
        let more = if config.reuse_port {
            (1..runtime.worker_count())
                .map(|_| {
                    addrs
                        .iter()
                        .map(|&addr| rt::bind_reuse_port(addr))
                        .collect()
                })
                .collect::<io::Result<Vec<Vec<_>>>>()?
        } else {
            Vec::new()
        };
        Ok(Listener {
            sockets,
            more,
            addrs,
            config,
            shutdown: ShutdownHandle::default(),
            shared: Arc::default(),
            runtime: runtime.clone(),
            tls: None,
            websocket: None,
        })
    }

    /// Serves TLS on every connection: the handshake (within
    /// [`SessionConfig::tls_handshake_timeout`] and
    /// [`SessionConfig::tls_max_handshake_bytes`]) comes before the session
    /// starts, after the PROXY header if there is one; a connection that
    /// fails it never reaches `on_connected` and is counted in
    /// [`ListenerStats::tls_rejected`].
    ///
    /// ```no_run
    /// use std::path::Path;
    /// use session_core::{IpInformation, Listener, ServerTls, Session, SessionConfig, SessionHandle};
    ///
    /// struct Echo;
    /// impl Session for Echo {
    ///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
    ///         let _ = handle.send(message);
    ///     }
    /// }
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let tls = ServerTls::from_pem_files(Path::new("cert.pem"), Path::new("key.pem"), None)?;
    /// let ip = IpInformation::resolve("0.0.0.0", 12345).await?;
    /// Listener::bind(&ip, SessionConfig::default()).await?.with_tls(tls).run(|| Echo).await
    /// # }
    /// ```
    pub fn with_tls(mut self, tls: ServerTls) -> Listener {
        self.tls = Some(tls);
        self
    }

    /// Serves WebSocket (RFC 6455) on every connection: the HTTP/1.1
    /// upgrade (within [`SessionConfig::websocket_handshake_timeout`] and
    /// the header limits) comes before the session starts, after the PROXY
    /// header and TLS if there are any (TLS makes it `wss`). A request that
    /// is not an upgrade, or that `websocket` refuses (path, origin), is
    /// answered with an HTTP 4xx and closed, counted in
    /// [`ListenerStats::websocket_rejected`] and never a session.
    ///
    /// The sessions' framing is [`Framing::WebSocket`](crate::Framing::WebSocket)
    /// whatever the config says: each message is one
    /// [`Session::on_message`] (by default `on_received`), and `send` sends
    /// binary messages ([`SessionHandle::send_text`] sends text).
    ///
    /// ```no_run
    /// use session_core::{IpInformation, Listener, MessageKind, Session, SessionConfig, SessionHandle, WebSocketServer};
    ///
    /// struct Echo;
    /// impl Session for Echo {
    ///     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
    ///         let _ = handle.send(message);
    ///     }
    ///     fn on_message(&mut self, handle: &SessionHandle, message: &[u8], kind: MessageKind) {
    ///         let _ = handle.send_message(kind, &[message]);
    ///     }
    /// }
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let ip = IpInformation::resolve("127.0.0.1", 12345).await?;
    /// let ws = WebSocketServer::new().path("/");
    /// Listener::bind(&ip, SessionConfig::default()).await?.with_websocket(ws).run(|| Echo).await
    /// # }
    /// ```
    pub fn with_websocket(mut self, websocket: WebSocketServer) -> Listener {
        self.websocket = Some(Arc::new(websocket));
        self
    }

    /// The first bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every bound address.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that stops [`run`](Self::run) from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Every open session of this listener: look one up by id, count them,
    /// broadcast to all. A session is in it from before `on_connected` until
    /// after `on_disconnected`, or until a broadcast finds it closing.
    pub fn registry(&self) -> Registry {
        self.shared.sessions.clone()
    }

    /// The listener's counters now.
    pub fn stats(&self) -> ListenerStats {
        self.stats_handle().get()
    }

    /// A handle to read the counters while [`run`](Self::run) owns the listener.
    pub fn stats_handle(&self) -> ListenerStatsHandle {
        ListenerStatsHandle(Arc::clone(&self.shared))
    }

    /// Accepts connections until [`ShutdownHandle::shutdown`], running one
    /// session from `factory` on each; then closes every session gracefully
    /// and returns once they have all ended.
    ///
    /// Accept errors never end the loop: each is logged and followed by a
    /// pause that doubles while errors repeat (5 ms up to 1 s), so that a
    /// process out of file descriptors recovers once some close. A
    /// connection over [`SessionConfig::max_connections`] is closed at once
    /// and counted in [`ListenerStats::rejected`]. A panic in `factory`
    /// drops that connection only.
    ///
    /// With [`SessionConfig::reuse_port`], every worker thread accepts on a
    /// socket of its own (`SO_REUSEPORT`, the kernel spreads connections)
    /// and keeps the sessions it accepts; `factory` is cloned for each.
    pub async fn run<S, F>(self, factory: F) -> io::Result<()>
    where
        S: Session,
        F: FnMut() -> S + Clone + Send + 'static,
    {
        let Listener {
            sockets,
            more,
            addrs,
            config,
            shutdown,
            shared,
            runtime,
            tls,
            websocket,
        } = self;
        if websocket.is_some() {
            // The frames' header takes more room than the config's framing.
            config.validated_for_websocket()?;
        }
        // One accept loop per worker with `reuse_port`, each on a socket of
        // its own and keeping its sessions; else one, on one worker, that
        // hands sessions to the workers in turn.
        let groups: Vec<Vec<std::net::TcpListener>> = if config.reuse_port {
            std::iter::once(sockets).chain(more).collect()
        } else {
            vec![sockets]
        };
        // Every socket made non-blocking before any loop starts: an error
        // leaves no loop behind.
        let groups = groups
            .into_iter()
            .map(|group| group.into_iter().map(rt::TcpListener::new).collect())
            .collect::<io::Result<Vec<Vec<_>>>>()?;
        let mut done = Vec::new();
        for (worker, listeners) in groups.into_iter().enumerate() {
            let context = AcceptContext {
                addrs: addrs.clone(),
                config: config.clone(),
                shared: Arc::clone(&shared),
                shutdown: shutdown.clone(),
                tls: tls.clone(),
                websocket: websocket.clone(),
                spawn: if config.reuse_port {
                    Spawn::Here(runtime.clone())
                } else {
                    Spawn::InTurn(runtime.clone())
                },
            };
            done.push(context.start(&runtime, worker, listeners, factory.clone()));
        }
        // A loop that ends without a word was dropped: its runtime stopped.
        for wait in done {
            let _ = wait.await;
        }
        close_all(&shared, config.drain_timeout).await;
        Ok(())
    }
}

/// What one accept loop needs.
struct AcceptContext {
    addrs: Vec<SocketAddr>,
    config: SessionConfig,
    shared: Arc<ListenerShared>,
    shutdown: ShutdownHandle,
    tls: Option<ServerTls>,
    websocket: Option<Arc<WebSocketServer>>,
    /// Where a new session's task goes.
    spawn: Spawn,
}

/// Where an accept loop puts the sessions it starts.
enum Spawn {
    /// On its own worker (one accept loop per worker).
    Here(Runtime),
    /// On the workers in turn (one accept loop for all).
    InTurn(Runtime),
}

impl Spawn {
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        match self {
            Spawn::Here(runtime) => runtime.spawn_here(future),
            Spawn::InTurn(runtime) => runtime.spawn_on_worker(future),
        }
    }
}

impl AcceptContext {
    /// Runs an accept loop over `listeners` on worker `worker`; the
    /// receiver hears when it has ended and closed them.
    fn start<S, F>(
        self,
        runtime: &Runtime,
        worker: usize,
        mut listeners: Vec<rt::TcpListener>,
        factory: F,
    ) -> futures::channel::oneshot::Receiver<()>
    where
        S: Session,
        F: FnMut() -> S + Send + 'static,
    {
        let (finished, wait) = futures::channel::oneshot::channel::<()>();
        runtime.spawn_on_index(worker, async move {
            let incoming = futures::stream::poll_fn(|cx| {
                for listener in listeners.iter_mut() {
                    if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                        return Poll::Ready(Some(accepted));
                    }
                }
                Poll::Pending
            });
            self.accept_loop(incoming, factory).await;
            // Stop accepting at once: a balancer sends new connections
            // elsewhere.
            drop(listeners);
            let _ = finished.send(());
        });
        wait
    }

    /// Accepts until shutdown; accept errors pause the loop, never end it.
    async fn accept_loop<S, F>(
        &self,
        mut incoming: impl Stream<Item = io::Result<rt::TcpStream>> + Unpin,
        mut factory: F,
    ) where
        S: Session,
        F: FnMut() -> S,
    {
        let (addrs, shared, shutdown) = (&self.addrs, &self.shared, &self.shutdown);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let next = poll_fn(|cx| {
                if shutdown.poll_requested(cx).is_ready() {
                    return Poll::Ready(None);
                }
                incoming.poll_next_unpin(cx).map(|item| item.map(Some))
            })
            .await;
            let stream = match next {
                None | Some(None) => break,
                Some(Some(Ok(stream))) => {
                    backoff = FIRST_BACKOFF;
                    stream
                }
                Some(Some(Err(e))) => {
                    shared.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if is_transient(&e) {
                        log::debug!("accept on {addrs:?}: {e}");
                        continue;
                    }
                    log::warn!("accept on {addrs:?}: {e}; pausing {backoff:?}");
                    let stop = poll_fn(|cx| shutdown.poll_requested(cx));
                    if let Either::Left(_) = select(stop, Box::pin(rt::sleep(backoff))).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            accept_one(stream, self, &mut factory);
        }
    }
}

impl ListenerStatsHandle {
    /// The counters now.
    pub fn get(&self) -> ListenerStats {
        ListenerStats {
            accepted: self.0.accepted.load(Ordering::Relaxed),
            rejected: self.0.rejected.load(Ordering::Relaxed),
            accept_errors: self.0.accept_errors.load(Ordering::Relaxed),
            proxy_rejected: self.0.proxy_rejected.load(Ordering::Relaxed),
            tls_rejected: self.0.tls_rejected.load(Ordering::Relaxed),
            websocket_rejected: self.0.websocket_rejected.load(Ordering::Relaxed),
            active: self.0.active.load(Ordering::Acquire),
        }
    }
}

/// `addr: error; addr: error`.
fn describe(errors: &[(SocketAddr, io::Error)]) -> String {
    let each: Vec<String> = errors
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect();
    each.join("; ")
}

/// Errors that concern one connection that never got to us, not the listener.
/// (Wine's `accept`, as Windows' can, reports a connection reset while it
/// waited in the backlog as `WSAENOTCONN`.)
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn accept_one<S, F>(stream: rt::TcpStream, context: &AcceptContext, factory: &mut F)
where
    S: Session,
    F: FnMut() -> S,
{
    let (config, shared) = (&context.config, &context.shared);
    if shared.active.load(Ordering::Acquire) >= config.max_connections {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "connection limit {} reached: closing a new connection",
            config.max_connections
        );
        return;
    }
    // A peer that already reset has no address: nothing to serve.
    let socket = stream.get_ref();
    let (Ok(peer), Ok(local)) = (socket.peer_addr(), socket.local_addr()) else {
        return;
    };
    config.apply_to(socket);
    let session = match catch_unwind(AssertUnwindSafe(&mut *factory)) {
        Ok(session) => session,
        Err(payload) => {
            log::error!(
                "session factory panicked for {peer}: {}",
                panic_message(payload.as_ref())
            );
            return;
        }
    };
    shared.active.fetch_add(1, Ordering::AcqRel);
    let active = Active {
        shared: Arc::clone(shared),
        id: None,
    };
    if !config.proxy_protocol && context.tls.is_none() && context.websocket.is_none() {
        let (_, engine) = start(stream, peer, local, config, active, session, None, None);
        context.spawn.spawn(engine);
        return;
    }
    let prelude = Prelude {
        peer,
        local,
        config: config.clone(),
        tls: context.tls.clone(),
        websocket: context.websocket.clone(),
        shutdown: context.shutdown.clone(),
        active,
    };
    context.spawn.spawn(prelude.serve(stream, session));
}

/// What comes before a session on a connection that has a PROXY header to
/// read, a TLS handshake or a WebSocket upgrade to make.
struct Prelude {
    peer: SocketAddr,
    local: SocketAddr,
    config: SessionConfig,
    tls: Option<ServerTls>,
    websocket: Option<Arc<WebSocketServer>>,
    shutdown: ShutdownHandle,
    active: Active,
}

impl Prelude {
    /// Reads the PROXY header within its deadline, then makes the TLS
    /// handshake within its own, then the WebSocket upgrade within its
    /// own, then runs the session (with the client the header names as its
    /// peer). A connection that fails any is counted and closed, never a
    /// session.
    async fn serve<S: Session>(self, mut stream: rt::TcpStream, session: S) {
        let mut peer = self.peer;
        if self.config.proxy_protocol {
            let header = rt::timeout(
                self.config.proxy_header_timeout,
                proxy_protocol::read_header(&mut stream),
            )
            .await;
            peer = match header.unwrap_or(Err(ProxyError::TimedOut)) {
                Ok(ProxyHeader::Proxied { source, .. }) => source,
                Ok(ProxyHeader::Local) => peer,
                Err(e) => {
                    log::debug!("connection from {peer} closed: {e}");
                    // Counted once it has left the active count.
                    let shared = Arc::clone(&self.active.shared);
                    drop(self);
                    shared.proxy_rejected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
        }
        let Some(tls) = &self.tls else {
            return self.run(stream, peer, session, None).await;
        };
        match crate::tls::accept(stream, tls, self.config.tls_limits()).await {
            Ok((stream, info)) => self.run(stream, peer, session, Some(info)).await,
            Err(e) => {
                log::info!("TLS handshake with {peer} failed: {e}");
                let shared = Arc::clone(&self.active.shared);
                drop(self);
                shared.tls_rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn run<S, T>(self, mut stream: T, peer: SocketAddr, session: S, tls: Option<TlsInfo>)
    where
        S: Session,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::clone(&self.active.shared);
        let config = &self.config;
        let ws = match &self.websocket {
            None => None,
            Some(server) => {
                let limits = config.websocket_limits();
                let upgrade = rt::timeout(
                    limits.timeout,
                    websocket::accept(&mut stream, server, limits),
                );
                // A shutdown does not wait for an upgrade that is late.
                let stop = poll_fn(|cx| self.shutdown.poll_requested(cx));
                let upgrade = match select(Box::pin(upgrade), Box::pin(stop)).await {
                    Either::Left((upgrade, _)) => upgrade,
                    Either::Right(_) => Some(Err(websocket::Refused {
                        status: None,
                        reason: "shutting down".into(),
                    })),
                };
                let refused = match upgrade {
                    Some(Ok((info, rest))) => Ok(WsStart { info, rest }),
                    Some(Err(refused)) => Err(refused.to_string()),
                    None => Err(format!("no upgrade within {:?}", limits.timeout)),
                };
                match refused {
                    Ok(start) => Some(start),
                    Err(reason) => {
                        log::info!("WebSocket upgrade from {peer} refused: {reason}");
                        // Closed within its own short deadline: a peer that
                        // does not read cannot hold the task.
                        let _ = rt::timeout(Duration::from_secs(1), stream.close()).await;
                        drop(stream);
                        drop(self);
                        shared.websocket_rejected.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        let (id, engine) = start(
            stream,
            peer,
            self.local,
            config,
            self.active,
            session,
            tls,
            ws,
        );
        // A shutdown that began during the prelude still reaches this
        // session: `close_all` may have taken its list before the session
        // was in it.
        if self.shutdown.is_shutdown() {
            if let Some(handle) = shared.sessions.get(id) {
                handle.shutdown();
            }
        }
        // The session goes on as a task of its own on this worker, so the
        // prelude's larger future (the handshake's state) is freed now,
        // not when the session ends: an idle TLS session holds kilobytes
        // less.
        if let Err(engine) = rt::spawn_on_current(engine) {
            engine.await;
        }
    }
}

/// One connection counted in [`ListenerStats::active`]: it leaves the count
/// (and its session the registry) when dropped, whether the session ended
/// or its runtime stopped and dropped it.
struct Active {
    shared: Arc<ListenerShared>,
    id: Option<SessionId>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.remove(self.id);
    }
}

/// Registers a session; returns its id and the future that runs it and then
/// takes it out of the registry.
#[allow(clippy::too_many_arguments)]
fn start<S, T>(
    stream: T,
    peer: SocketAddr,
    local: SocketAddr,
    config: &SessionConfig,
    mut active: Active,
    session: S,
    tls: Option<TlsInfo>,
    ws: Option<WsStart>,
) -> (SessionId, impl Future<Output = ()> + Send + 'static)
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (handle, engine) = run_session_layered(stream, peer, local, config, session, tls, ws);
    let id = handle.id();
    active.shared.accepted.fetch_add(1, Ordering::Relaxed);
    active.shared.sessions.insert(handle);
    active.id = Some(id);
    // The session leaves the registry after its `on_disconnected`, also
    // when the task is dropped: `Map` drops the engine before the closure
    // that holds `active`.
    let engine = AssertUnwindSafe(engine).catch_unwind().map(move |ended| {
        // The engine catches the user's panics; this catches its own.
        if let Err(payload) = ended {
            log::error!(
                "session {id}: engine panicked: {}",
                panic_message(payload.as_ref())
            );
        }
        drop(active);
    });
    (id, engine)
}

/// Closes every session with `Shutdown` and waits until all have ended.
async fn close_all(shared: &ListenerShared, drain_timeout: Duration) {
    let sessions: Vec<SessionHandle> = shared.sessions.handles();
    for session in &sessions {
        session.shutdown();
    }
    drop(sessions);
    let all_closed = poll_fn(|cx| {
        shared.all_closed.register(cx.waker());
        if shared.active.load(Ordering::Acquire) == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    // Each session stops writing at its own drain deadline; the margin is
    // for closing the sockets.
    if rt::timeout(drain_timeout + Duration::from_secs(1), all_closed)
        .await
        .is_none()
    {
        log::warn!(
            "shutdown: {} sessions still open after the drain deadline",
            shared.active.load(Ordering::Acquire)
        );
    }
}
