//! The only module that names the async runtime.
//!
//! Everything else in the crate is written against the `futures` I/O traits.
//! Sessions run on the crate's own worker threads (see `worker`), each an
//! executor and an edge-triggered reactor at once; everything else (the
//! accept loop, connecting, name resolution, timers, job queues) runs on
//! async-std and its reactor, async-io. Moving to another runtime built on
//! async-io (smol, for example) is a change of this module alone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_io::Async;
use futures::stream::{self, Stream};

mod poller;
mod worker;

pub(crate) use worker::{
    TcpListener as WorkerListener, TcpStream, set_worker_threads, spawn_here, spawn_on_index,
    spawn_on_worker, worker_count,
};

/// A listening socket on async-io's reactor: accepting is not the hot path.
pub(crate) type TcpListener = Async<std::net::TcpListener>;

/// A timer that can be re-armed without allocating.
pub(crate) type Timer = async_io::Timer;

/// A handle that waits for a spawned task's output.
pub(crate) type JoinHandle<T> = async_std::task::JoinHandle<T>;

/// Runs `future` on the runtime's executor.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Waits for `duration`.
pub(crate) async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// A timer that fires at `deadline`.
pub(crate) fn timer_at(deadline: Instant) -> Timer {
    async_io::Timer::at(deadline)
}

/// Runs `future` for at most `duration`; `None` if it did not finish.
pub(crate) async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    async_std::future::timeout(duration, future).await.ok()
}

/// Binds a TCP listener to `addr`, with `SO_REUSEPORT` if `reuse_port`.
pub(crate) async fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    if reuse_port {
        Async::new(bind_reuse_port(addr)?)
    } else {
        Async::<std::net::TcpListener>::bind(addr)
    }
}

/// A listening socket with `SO_REUSEPORT` (and `SO_REUSEADDR`) on `addr`:
/// several may share one port, and the kernel spreads connections.
#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
pub(crate) fn bind_reuse_port(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `SO_REUSEPORT` is not available here.
#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
pub(crate) fn bind_reuse_port(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("bind {addr}: SO_REUSEPORT is not available on this system"),
    ))
}

/// The connections `listener` accepts, as a stream; each socket goes to a
/// worker untouched by async-io's reactor.
pub(crate) fn incoming(
    listener: &TcpListener,
) -> impl Stream<Item = io::Result<TcpStream>> + Send + Unpin + '_ {
    Box::pin(stream::unfold(listener, |listener| async move {
        let accepted = listener.read_with(|l| l.accept()).await;
        Some((
            accepted.and_then(|(socket, _)| TcpStream::new(socket)),
            listener,
        ))
    }))
}

/// Opens a TCP connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let connected = Async::<std::net::TcpStream>::connect(addr).await?;
    TcpStream::new(connected.into_inner()?)
}

/// Resolves `host:port` with the system resolver, in the resolver's order,
/// on a thread where blocking is allowed.
pub(crate) async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let host = host.to_owned();
    async_std::task::spawn_blocking(move || Ok((host.as_str(), port).to_socket_addrs()?.collect()))
        .await
}

/// A bounded multi-producer channel, used by the job queue.
pub(crate) use async_std::channel::{Sender, bounded};
