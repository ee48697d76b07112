//! Session-based asynchronous TCP servers and clients.
//!
//! This crate carries the C# `SocketAsyncEventArgs` design (a `Listener` and a
//! `Connector` that create one `Session` per connection) into Rust, and adds
//! what the original left out: framing, ordered and batched sending,
//! back-pressure, limits, timeouts and a clean shutdown.
//!
//! A user writes one type that implements [`Session`] and hands a factory to a
//! [`Listener`] (server side) or a session to a [`Connector`] (client side);
//! the library does the accepting, reading, framing and writing.
//!
//! ```no_run
//! use session_core::{DisconnectReason, IpInformation, Listener, Session, SessionConfig, SessionHandle};
//!
//! /// Replies to every message with the message and a suffix.
//! struct Echo;
//!
//! impl Session for Echo {
//!     fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
//!         let mut reply = message.to_vec();
//!         reply.extend_from_slice(b" - Receive Completed");
//!         // `send` never blocks; an error only means the session is closing.
//!         let _ = handle.send(&reply);
//!     }
//! }
//!
//! # async fn serve() -> std::io::Result<()> {
//! let ip = IpInformation::resolve("localhost", 12345).await?;
//! let listener = Listener::bind(&ip, SessionConfig::default()).await?;
//! listener.run(|| Echo).await
//! # }
//! ```
//!
//! The library never prints: it reports through callbacks, return values and
//! the [`log`](https://docs.rs/log) facade.
//!
//! # Sending
//!
//! [`SessionHandle::send`] never blocks and may be called from any thread:
//! it frames the message into the session's own send queue (behind one
//! lock per session) and wakes the session's engine if it sleeps.
//! [`SessionHandle::send_async`] waits for room instead of failing at the
//! cap, [`SessionHandle::send_bytes`] and [`SessionHandle::send_frame`]
//! queue a buffer by reference, and [`SessionHandle::closed`] waits for the
//! end. What a session's queue holds is what it counts: a slow peer costs
//! its own queue and nothing of other sessions'.
//!
//! # How it is built
//!
//! One file per idea:
//!
//! | module | holds |
//! |---|---|
//! | `session` | the [`Session`] trait and the [`SessionHandle`] (send, close, addresses) |
//! | `send_queue` | one session's queued bytes: own segments, shared frames, the outbox the handle and the engine share |
//! | `framing` | how bytes become messages and back ([`Framing`], [`Frame`]) |
//! | `connection` | the engine of one connection, a future with one step per phase: open, draining, closing, lingering |
//! | `listener`, `connector` | accepting and connecting, then the same engine |
//! | `config` | [`SessionConfig`], every limit with its default |
//! | `registry`, `job_queue` | many sessions: the live set and broadcast, a room's jobs in order |
//! | `proxy_protocol` | the PROXY v1/v2 header a balancer sends first |
//! | `tls` | TLS with rustls: a stream layer between the socket and the framing, the handshake before the session starts |
//! | `websocket` | WebSocket (RFC 6455): the HTTP/1.1 upgrade before the session starts, then a framing the engine decodes ([`Listener::with_websocket`], [`Connector::with_websocket`]) |
//! | `rt` | the only module that names the runtime: the worker threads (an executor and a poller each), timers, sockets |
#![warn(missing_docs)]

mod config;
mod connection;
mod connector;
mod framing;
mod ip_information;
mod job_queue;
mod listener;
pub mod proxy_protocol;
mod registry;
mod rt;
mod send_queue;
mod session;
mod shutdown;
#[cfg(test)]
mod test_pipe;
mod tls;
mod websocket;

pub use bytes;
pub use config::SessionConfig;
pub use connection::run_session;
pub use connector::{Connection, Connector};
pub use framing::{Decoded, Frame, FrameError, Framing, ParseFramingError};
pub use ip_information::IpInformation;
pub use job_queue::{JobQueue, PushError};
pub use listener::{Listener, ListenerStats, ListenerStatsHandle};
pub use registry::{BroadcastReport, Registry};
pub use rt::Runtime;
pub use rustls;
pub use session::{DisconnectReason, SendError, Session, SessionHandle, SessionId};
pub use shutdown::ShutdownHandle;
pub use tls::{ClientTls, ServerTls, TlsInfo};
pub use websocket::{
    MessageKind, WebSocketClient, WebSocketDecoder, WebSocketError, WebSocketEvent, WebSocketInfo,
    WebSocketServer,
};

/// Sets how many worker threads the process's shared [`Runtime`] starts
/// with; the default is one per core this process may use.
///
/// Each worker is an executor, a reactor and a timer heap at once, and a
/// session stays on the worker it started on. Takes effect only when called
/// before the shared runtime starts (the first [`Listener::bind`] or
/// [`Connector::connect`] without a runtime of its own, or
/// [`Runtime::default_shared`]); returns whether it did.
pub fn set_worker_threads(count: usize) -> bool {
    rt::set_worker_threads(count)
}

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
