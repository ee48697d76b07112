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
mod session;
mod shutdown;
#[cfg(test)]
mod test_pipe;

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
pub use session::{DisconnectReason, SendError, Session, SessionHandle, SessionId};
pub use shutdown::ShutdownHandle;

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
