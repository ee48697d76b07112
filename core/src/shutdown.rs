//! The signal that tells a [`Listener`](crate::Listener) to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// Tells a running [`Listener`](crate::Listener) to shut down: stop
/// accepting, let every session write what it has queued (up to the drain
/// timeout), close every session with
/// [`DisconnectReason::Shutdown`](crate::DisconnectReason::Shutdown), and
/// return from [`Listener::run`](crate::Listener::run).
///
/// Cheap to clone; usable from any thread, a signal handler's thread
/// included.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl ShutdownHandle {
    /// Asks for the shutdown; calling it again does nothing.
    pub fn shutdown(&self) {
        if !self.inner.requested.swap(true, Ordering::SeqCst) {
            self.inner.waker.wake();
        }
    }

    /// Whether a shutdown was asked for.
    pub fn is_shutdown(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Ready once a shutdown was asked for (one waiter: the accept loop).
    pub(crate) fn poll_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.waker.register(cx.waker());
        if self.is_shutdown() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
