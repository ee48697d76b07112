//! The seed's `ServerSession`: the client-side session that prints what it
//! sends and receives and counts the server's replies.
//!
//! The seed sends its greetings from `OnConnected` with `Thread.Sleep`
//! between them, blocking the thread its callbacks run on. Here the session
//! only reports; the greetings are sent by a task of their own (see
//! `main.rs`) through a clone of the session's handle.

use std::sync::{Arc, Mutex, MutexGuard};

use async_std::channel::Sender;
use session_core::{DisconnectReason, SendError, Session, SessionHandle};

use crate::output::{printable, say, timestamp};
use crate::replies::ReplyTracker;
use crate::tls;

/// What the client knows about its connection, shared by the session, the
/// sending task and `main`.
#[derive(Debug)]
pub struct Progress {
    /// The replies found so far.
    pub replies: ReplyTracker,
    /// Every greeting was queued.
    pub all_sent: bool,
    /// Queuing a greeting failed.
    pub send_error: Option<SendError>,
    /// The connection ended, and why.
    pub closed: Option<DisconnectReason>,
}

/// [`Progress`] and a wake-up for whoever waits on it.
#[derive(Debug, Clone)]
pub struct Shared {
    progress: Arc<Mutex<Progress>>,
    changed: Sender<()>,
}

impl Shared {
    /// Shared progress towards `expected` replies; `changed` receives a
    /// message (at most one pending) after every change.
    pub fn new(expected: Vec<Vec<u8>>, changed: Sender<()>) -> Shared {
        Shared {
            progress: Arc::new(Mutex::new(Progress {
                replies: ReplyTracker::new(expected),
                all_sent: false,
                send_error: None,
                closed: None,
            })),
            changed,
        }
    }

    /// The progress, locked.
    pub fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the progress and wakes the waiter; never blocks.
    pub fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.lock());
        // Full means a wake-up is already pending: nothing is lost.
        let _ = self.changed.try_send(());
    }
}

/// The client's session: prints and reports, never blocks.
#[derive(Debug)]
pub struct Greeter {
    shared: Shared,
}

impl Greeter {
    /// A session reporting into `shared`.
    pub fn new(shared: Shared) -> Greeter {
        Greeter { shared }
    }
}

impl Session for Greeter {
    fn on_connected(&mut self, handle: &SessionHandle) {
        say!("Connected to {}", handle.peer_addr());
        if let Some(info) = handle.tls() {
            say!("TLS with {}: {}", handle.peer_addr(), tls::describe(info));
        }
    }

    fn on_received(&mut self, _handle: &SessionHandle, message: &[u8]) {
        say!(
            "{} From server - Len : {}, String : {}",
            timestamp(),
            message.len(),
            printable(message)
        );
        self.shared.update(|p| {
            p.replies.feed(message);
        });
    }

    fn on_sent(&mut self, _handle: &SessionHandle, message: &[u8]) {
        say!("{} To server : {}", timestamp(), printable(message));
    }

    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        say!("Disconnected from {} ({reason})", handle.peer_addr());
        let reason = reason.clone();
        self.shared.update(|p| p.closed = Some(reason));
    }
}
