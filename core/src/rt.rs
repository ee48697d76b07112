//! The only module that names the async runtime.
//!
//! Everything else in the crate is written against the `futures` I/O traits;
//! moving to another runtime built on `async-io` (smol, for example) is a
//! change of this file alone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(crate) use async_std::net::{TcpListener, TcpStream};

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

/// Binds a TCP listener to `addr`.
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Opens a TCP connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect(addr).await
}

/// Resolves `host:port` with the system resolver, in the resolver's order.
pub(crate) async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    use async_std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs().await?.collect())
}

/// A bounded multi-producer channel, used by the job queue.
pub(crate) use async_std::channel::{Sender, bounded};
