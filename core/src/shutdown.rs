//! The signal that tells a [`Listener`](crate::Listener) to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

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
    /// The accept loops waiting for the request (one per worker with
    /// `SO_REUSEPORT`).
    wakers: Mutex<Vec<Waker>>,
}

impl ShutdownHandle {
    /// Asks for the shutdown; calling it again does nothing.
    pub fn shutdown(&self) {
        if !self.inner.requested.swap(true, Ordering::SeqCst) {
            let wakers = std::mem::take(&mut *self.wakers());
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Whether a shutdown was asked for.
    pub fn is_shutdown(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready once a shutdown was asked for (the accept loops wait on it).
    pub(crate) fn poll_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut wakers = self.wakers();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        if self.is_shutdown() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
