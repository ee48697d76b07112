//! Timers that live on the worker whose task polls them.
//!
//! Each worker keeps its timers in a binary heap of `(deadline, seq, slot)`
//! on its own thread, and waits in its poller no longer than until the
//! earliest deadline: a session's idle, drain and linger timers wake it on
//! its own thread, and no timer thread or timerfd is involved. A timer that
//! moves later keeps its heap entry and is pushed again, at its new
//! deadline, only when that entry comes up (re-arming an idle timer on
//! every message costs no heap operation); entries left behind by dropped
//! or earlier-moved timers are skipped when they come up, and the heap is
//! compacted once they are more than half of it. Heap and slots keep their
//! capacity: re-arming does not allocate.
//!
//! A timer polled on a thread that is not a worker (the engine's tests run
//! it under `async_std::task::block_on`; `Listener::run` waits on async-std)
//! is an `async_io::Timer` instead.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::worker::{self, Worker};

/// Heap entries that belong to no live timer before compaction is worth it.
const COMPACT_FROM: usize = 64;

/// A timer that can be re-armed without allocating; it fires once per
/// arming (`Ready` with its deadline), then stays pending until re-armed,
/// as `async_io::Timer` does.
pub(crate) struct Timer {
    deadline: Instant,
    /// Not yet fired at `deadline`.
    armed: bool,
    /// `deadline` changed since the backend last saw it.
    moved: bool,
    backend: Backend,
}

enum Backend {
    /// Not polled yet.
    None,
    /// In the timers of `worker`, whose thread polls it.
    Worker { worker: Arc<Worker>, key: usize },
    /// Polled off the workers (boxed: a timer on a worker, the common
    /// case, stays small inside its session).
    Fallback(Box<async_io::Timer>),
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.deadline)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

/// A timer that fires at `deadline`.
pub(crate) fn timer_at(deadline: Instant) -> Timer {
    Timer {
        deadline,
        armed: true,
        moved: false,
        backend: Backend::None,
    }
}

impl Timer {
    /// Fires at `deadline` instead (again, if it had fired).
    pub(crate) fn set_at(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.armed = true;
        self.moved = true;
    }

    /// Fires `duration` from now instead.
    pub(crate) fn set_after(&mut self, duration: Duration) {
        self.set_at(Instant::now() + duration);
    }

    /// Leaves whatever backend holds the timer.
    fn release(&mut self) {
        if let Backend::Worker { worker, key } = std::mem::replace(&mut self.backend, Backend::None)
        {
            if worker::is_current(&worker) {
                remove(key);
            } else {
                // Dropped away from its worker (rare: a task's future is
                // dropped where it runs): the worker frees the slot.
                worker.cancel_timer(key);
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.release();
    }
}

impl Future for Timer {
    type Output = Instant;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        let this = self.get_mut();
        if !this.armed {
            return Poll::Pending;
        }
        let deadline = this.deadline;
        if let Backend::Worker { worker, key } = &this.backend {
            if worker::is_current(worker) {
                let moved = std::mem::take(&mut this.moved);
                return if poll_slot(*key, deadline, moved, cx) {
                    this.armed = false;
                    Poll::Ready(deadline)
                } else {
                    Poll::Pending
                };
            }
        }
        if let Some(worker) = worker::current() {
            // First poll on this worker.
            this.release();
            this.moved = false;
            if deadline <= Instant::now() {
                this.armed = false;
                return Poll::Ready(deadline);
            }
            let key = insert(deadline, cx.waker().clone());
            this.backend = Backend::Worker { worker, key };
            return Poll::Pending;
        }
        if !matches!(this.backend, Backend::Fallback(_)) {
            this.release();
            this.backend = Backend::Fallback(Box::new(async_io::Timer::at(deadline)));
        } else if this.moved {
            if let Backend::Fallback(timer) = &mut this.backend {
                timer.set_at(deadline);
            }
        }
        this.moved = false;
        let Backend::Fallback(timer) = &mut this.backend else {
            unreachable!("set above")
        };
        match Pin::new(&mut **timer).poll(cx) {
            Poll::Ready(_) => {
                this.armed = false;
                Poll::Ready(deadline)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits for `duration`: on the worker's timers when run on a worker.
pub(crate) async fn sleep(duration: Duration) {
    timer_at(Instant::now() + duration).await;
}

/// Runs `future` for at most `duration`; `None` if it did not finish.
pub(crate) async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    let mut timer = timer_at(Instant::now() + duration);
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        Pin::new(&mut timer).poll(cx).map(|_| None)
    })
    .await
}

/// One timer of this worker.
struct Slot {
    deadline: Instant,
    /// The deadline of this timer's entry in the heap, if it has one.
    queued: Option<Instant>,
    /// Tells this timer's heap entry from stale ones.
    seq: u64,
    waker: Option<Waker>,
    fired: bool,
}

/// The timers of the worker on this thread.
#[derive(Default)]
pub(super) struct Timers {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    next_seq: u64,
    /// Heap entries that belong to no live timer.
    stale: usize,
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
}

fn with<R>(f: impl FnOnce(&mut Timers) -> R) -> R {
    TIMERS.with(|timers| f(&mut timers.borrow_mut()))
}

fn insert(deadline: Instant, waker: Waker) -> usize {
    with(|timers| {
        let seq = timers.seq();
        let slot = Slot {
            deadline,
            queued: Some(deadline),
            seq,
            waker: Some(waker),
            fired: false,
        };
        let key = match timers.free.pop() {
            Some(key) => {
                timers.slots[key] = Some(slot);
                key
            }
            None => {
                timers.slots.push(Some(slot));
                timers.slots.len() - 1
            }
        };
        timers.heap.push(Reverse((deadline, seq, key)));
        key
    })
}

/// Whether timer `key` has fired; re-arms it first if it `moved`.
fn poll_slot(key: usize, deadline: Instant, moved: bool, cx: &mut Context<'_>) -> bool {
    with(|timers| {
        let seq = if moved { Some(timers.seq()) } else { None };
        let Some(Some(slot)) = timers.slots.get_mut(key) else {
            return false;
        };
        if let Some(seq) = seq {
            slot.deadline = deadline;
            slot.fired = false;
            match slot.queued {
                // Its entry comes up first; it is pushed again from there.
                Some(queued) if queued <= deadline => {}
                queued => {
                    slot.seq = seq;
                    slot.queued = Some(deadline);
                    let left_behind = queued.is_some();
                    timers.heap.push(Reverse((deadline, seq, key)));
                    if left_behind {
                        timers.stale += 1;
                    }
                }
            }
        }
        let Some(Some(slot)) = timers.slots.get_mut(key) else {
            return false;
        };
        if slot.fired {
            slot.fired = false;
            return true;
        }
        match &mut slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        false
    })
}

fn remove(key: usize) {
    // The thread may be past its locals (a worker's last drops): nothing
    // to free then.
    let _ = TIMERS.try_with(|timers| timers.borrow_mut().remove(key));
}

/// Frees timers dropped away from this worker's thread.
pub(super) fn remove_all(keys: &mut Vec<usize>) {
    if keys.is_empty() {
        return;
    }
    with(|timers| {
        for key in keys.drain(..) {
            timers.remove(key);
        }
    });
}

/// How long this worker may wait before a timer is due: `None` if it has
/// none.
pub(super) fn next_timeout() -> Option<Duration> {
    with(|timers| timers.next_deadline())
        .map(|deadline| deadline.saturating_duration_since(Instant::now()))
}

/// Marks every timer due by now as fired and puts its waker in `wakers`.
pub(super) fn fire_due(wakers: &mut Vec<Waker>) {
    with(|timers| {
        if timers.heap.is_empty() {
            return;
        }
        let now = Instant::now();
        timers.fire_due(now, wakers);
    });
}

/// Drops every timer of this thread (a worker that stops).
pub(super) fn clear() {
    let _ = TIMERS.try_with(|timers| {
        let old = std::mem::take(&mut *timers.borrow_mut());
        drop(old);
    });
}

impl Timers {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn is_live(&self, seq: u64, key: usize) -> bool {
        matches!(self.slots.get(key), Some(Some(slot)) if slot.seq == seq && slot.queued.is_some())
    }

    fn remove(&mut self, key: usize) {
        if let Some(entry) = self.slots.get_mut(key) {
            if let Some(slot) = entry.take() {
                if slot.queued.is_some() {
                    self.stale += 1;
                }
                self.free.push(key);
            }
        }
        if self.stale >= COMPACT_FROM && self.stale * 2 > self.heap.len() {
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, seq, key))| {
                matches!(slots.get(*key), Some(Some(slot)) if slot.seq == *seq && slot.queued.is_some())
            });
            self.stale = 0;
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, seq, key))) = self.heap.peek() {
            if self.is_live(seq, key) {
                return Some(deadline);
            }
            self.heap.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        None
    }

    fn fire_due(&mut self, now: Instant, wakers: &mut Vec<Waker>) {
        while let Some(&Reverse((when, seq, key))) = self.heap.peek() {
            if when > now {
                break;
            }
            self.heap.pop();
            if !self.is_live(seq, key) {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            let Some(Some(slot)) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.deadline <= now {
                slot.queued = None;
                slot.fired = true;
                if let Some(waker) = slot.waker.take() {
                    wakers.push(waker);
                }
            } else {
                // Moved later since it was queued: queue it again there.
                let deadline = slot.deadline;
                slot.queued = Some(deadline);
                self.heap.push(Reverse((deadline, seq, key)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The heap on its own: due timers fire in order, moved ones fire at
    /// their new deadline, removed ones never, and left-behind entries are
    /// compacted away.
    #[test]
    fn heap_fires_due_timers_and_skips_stale_entries() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let a = insert(t0 + ms(10), waker.clone());
        let b = insert(t0 + ms(20), waker.clone());
        let c = insert(t0 + ms(30), waker.clone());
        // `b` moves later: its entry stays, it is queued again when it comes up.
        assert!(!poll_slot(b, t0 + ms(40), true, &mut cx));
        remove(c);
        let mut wakers = Vec::new();
        with(|t| t.fire_due(t0 + ms(25), &mut wakers));
        assert_eq!(wakers.len(), 1, "only `a` was due");
        assert!(poll_slot(a, t0 + ms(10), false, &mut cx));
        assert!(!poll_slot(b, t0 + ms(40), false, &mut cx));
        assert_eq!(with(|t| t.next_deadline()), Some(t0 + ms(40)));
        wakers.clear();
        with(|t| t.fire_due(t0 + ms(45), &mut wakers));
        assert_eq!(wakers.len(), 1, "`b` at its new deadline, not `c`");
        assert!(poll_slot(b, t0 + ms(40), false, &mut cx));
        remove(a);
        remove(b);
        // Many timers dropped while queued: the heap does not keep them all.
        let keys: Vec<usize> = (0..1000)
            .map(|i| insert(t0 + Duration::from_secs(60 + i), waker.clone()))
            .collect();
        for key in keys {
            remove(key);
        }
        assert!(with(|t| t.heap.len()) < 2 * COMPACT_FROM);
        assert_eq!(with(|t| t.next_deadline()), None);
    }
}
