//! The only module that names the async runtime.
//!
//! Everything else in the crate is written against the `futures` I/O traits.
//! Sessions run on the crate's own worker threads ([`Runtime`], see
//! `worker`), each an executor, an edge-triggered reactor and a timer heap
//! at once: a session's reads, writes and timers, the accept loops and the
//! connecting all run there. What the user awaits (`Listener::run`,
//! `Connector::connect`, job queues, name resolution) runs on async-std;
//! a timer polled there is async-io's. Moving to another runtime built on
//! async-io (smol, for example) is a change of this module alone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

mod poller;
#[cfg(test)]
mod tests;
mod timer;
mod worker;

pub use worker::Runtime;

pub(crate) use timer::{Timer, sleep, timeout, timer_at};
pub(crate) use worker::{
    STREAMING_READ, TcpListener, TcpStream, connect, set_worker_threads, spawn_on_current,
};

/// A handle that waits for a spawned task's output.
pub(crate) type JoinHandle<T> = async_std::task::JoinHandle<T>;

/// Runs `future` on async-std's executor (job queues: not the workers).
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Binds a TCP listener to `addr`, with `SO_REUSEPORT` if `reuse_port`.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    if reuse_port {
        bind_reuse_port(addr)
    } else {
        std::net::TcpListener::bind(addr)
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
