//! The threads that run sessions: each is an executor, a reactor and a
//! timer heap at once, and [`Runtime`] is a handle to a set of them.
//!
//! Every worker thread owns a poller (epoll on Linux) and runs the tasks
//! spawned on it. A socket is registered with its worker's poller once,
//! edge-triggered, for reading and writing, and never re-armed: readiness is
//! a generation counter that the poller bumps and a read or write that finds
//! nothing remembers. A readiness event wakes its task on the same thread,
//! so the common path has no cross-thread wake-up and no `epoll_ctl` per
//! wait. (async-io, under async-std, re-arms each socket on every wait and
//! drives its reactor from another thread; on this project's machines that
//! costs about twice the system calls for the same echo.) Where the poller
//! cannot be edge-triggered (polling on Windows' IOCP), a socket is armed,
//! oneshot, for the direction a task is about to wait on.
//!
//! Timers (see `timer`) live on the worker too: the poller's wait ends at
//! the next deadline, and a due timer wakes its task on the same thread.
//! Wakes from other threads (a `send` from another task) push the task onto
//! the worker's remote queue and wake its poller only if it sleeps.
//!
//! A worker remembers every task it has run and not finished: when its
//! runtime stops, it drops them all on its own thread, so a session's
//! `on_disconnected` (reason `Shutdown`) runs where its other callbacks did.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

use super::poller::{AsSource, Events, Mode, Poller};
use super::timer;
use futures::io::{AsyncRead, AsyncWrite};
use futures::task::AtomicWaker;

/// A read of this many bytes does not mark the socket as emptied, even if
/// it filled less than the buffer: more of a large write is likely on its
/// way, and the next read tries (the engine's joined reads count on it).
pub(crate) const STREAMING_READ: usize = 16 * 1024;

/// Tasks one turn of a worker runs before it looks at its sockets again.
const TASKS_PER_TURN: usize = 256;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The worker threads that run sessions: each an executor, a reactor and
/// a timer heap at once.
///
/// A session lives on one worker: its reads, writes and timers (idle,
/// drain, linger, the PROXY header's deadline) run there, and so do the
/// accept loops of a [`Listener`](crate::Listener) and the connecting of a
/// [`Connector`](crate::Connector) bound to this runtime. A `Runtime` is a
/// handle: clones share the same workers.
///
/// [`Listener::bind`](crate::Listener::bind) and
/// [`Connector::new`](crate::Connector::new) use a runtime shared by the
/// whole process ([`Runtime::default_shared`]); give a listener or
/// connector a runtime of its own with
/// [`Listener::bind_on`](crate::Listener::bind_on) and
/// [`Connector::with_runtime`](crate::Connector::with_runtime).
///
/// ```
/// use session_core::Runtime;
///
/// let runtime = Runtime::new(2)?;
/// assert_eq!(runtime.worker_count(), 2);
/// // ... bind listeners and connectors on it (`Listener::bind_on`,
/// // `Connector::with_runtime`) ...
/// // Stops the workers: sessions still running end with
/// // `DisconnectReason::Shutdown`.
/// runtime.shutdown_and_join();
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// When the last handle (including those held by listeners and
/// connectors) is dropped, the workers stop, as with
/// [`shutdown`](Self::shutdown), without being waited for.
#[derive(Clone)]
pub struct Runtime {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.pool.workers.len())
            .field("stopped", &self.pool.stopped.load(Ordering::Relaxed))
            .finish()
    }
}

/// The workers of one runtime.
struct Pool {
    workers: Vec<Arc<Worker>>,
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// Tells the workers to stop when the last handle goes.
impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tells workers apart across runtimes (0 is no worker).
static NEXT_WORKER_UID: AtomicUsize = AtomicUsize::new(1);

/// The process's shared runtime, started on first use.
static DEFAULT: Mutex<Option<Runtime>> = Mutex::new(None);
/// Workers the shared runtime starts with; 0 means one per available core.
static DEFAULT_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many worker threads the shared runtime starts with. Takes
/// effect only before it starts; returns whether it did.
pub(crate) fn set_worker_threads(count: usize) -> bool {
    let default = lock(&DEFAULT);
    DEFAULT_WORKERS.store(count, Ordering::SeqCst);
    // A shared runtime that was shut down is started again on next use.
    default
        .as_ref()
        .is_none_or(|runtime| runtime.pool.stopped.load(Ordering::Acquire))
}

impl Runtime {
    /// Starts `workers` worker threads (0: one per core this process may
    /// use), named `session-worker-N`.
    ///
    /// Fails if a poller or a thread cannot be created (for example when
    /// the process is out of file descriptors); the workers started before
    /// the failure are stopped and joined.
    pub fn new(workers: usize) -> io::Result<Runtime> {
        Runtime::build(workers, Poller::new)
    }

    /// A runtime whose workers poll in oneshot mode (the mode of systems
    /// without edge-triggering), for tests on any system.
    #[cfg(test)]
    pub(crate) fn new_oneshot(workers: usize) -> io::Result<Runtime> {
        Runtime::build(workers, Poller::oneshot)
    }

    pub(super) fn build(workers: usize, poller: fn() -> io::Result<Poller>) -> io::Result<Runtime> {
        let count = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut pool = Pool {
            workers: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            threads: Mutex::new(Vec::with_capacity(count)),
            stopped: AtomicBool::new(false),
        };
        let started = (0..count).try_for_each(|index| {
            let worker = Arc::new(Worker {
                uid: NEXT_WORKER_UID.fetch_add(1, Ordering::Relaxed),
                index,
                poller: poller().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("create session worker {index}'s poller: {e}"),
                    )
                })?,
                remote: Mutex::new(Remote::default()),
                sources: Mutex::new(Slab::default()),
            });
            let run = Arc::clone(&worker);
            let thread = std::thread::Builder::new()
                .name(format!("session-worker-{index}"))
                .spawn(move || run.run())
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("start session worker thread {index}: {e}"),
                    )
                })?;
            pool.workers.push(worker);
            lock(&pool.threads).push(thread);
            Ok::<(), io::Error>(())
        });
        let runtime = Runtime {
            pool: Arc::new(pool),
        };
        match started {
            Ok(()) => Ok(runtime),
            Err(e) => {
                runtime.shutdown_and_join();
                Err(e)
            }
        }
    }

    /// The runtime shared by the process, started on first use with
    /// [`set_worker_threads`](crate::set_worker_threads) workers (default:
    /// one per core). Used by [`Listener::bind`](crate::Listener::bind) and
    /// [`Connector::new`](crate::Connector::new).
    ///
    /// A failure to start it is returned, and the next call tries again;
    /// so does the call after it was shut down.
    ///
    /// ```
    /// let runtime = session_core::Runtime::default_shared()?;
    /// assert!(runtime.worker_count() >= 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn default_shared() -> io::Result<Runtime> {
        let mut default = lock(&DEFAULT);
        if let Some(runtime) = default.as_ref() {
            if !runtime.pool.stopped.load(Ordering::Acquire) {
                return Ok(runtime.clone());
            }
        }
        let runtime = Runtime::new(DEFAULT_WORKERS.load(Ordering::SeqCst))?;
        *default = Some(runtime.clone());
        Ok(runtime)
    }

    /// How many worker threads it has.
    pub fn worker_count(&self) -> usize {
        self.pool.workers.len()
    }

    /// Tells every worker to stop, without waiting: each drops the tasks
    /// still on it (a session ends with `DisconnectReason::Shutdown`, its
    /// `on_disconnected` called on the worker) and its thread ends. Tasks
    /// handed to it afterwards are dropped at once.
    pub fn shutdown(&self) {
        self.pool.stop();
    }

    /// Stops the workers as [`shutdown`](Self::shutdown) does, then waits
    /// until their threads have ended. Called on one of this runtime's own
    /// workers, it does not wait for that one.
    pub fn shutdown_and_join(self) {
        self.pool.stop();
        let threads = std::mem::take(&mut *lock(&self.pool.threads));
        let here = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != here {
                let _ = thread.join();
            }
        }
    }

    /// Whether both are handles of the same workers.
    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Runtime) -> bool {
        Arc::ptr_eq(&self.pool, &other.pool)
    }

    fn pick(&self) -> &Arc<Worker> {
        let i = self.pool.next.fetch_add(1, Ordering::Relaxed);
        &self.pool.workers[i % self.pool.workers.len()]
    }

    /// Runs `future` on one of the workers, chosen in turn.
    pub(crate) fn spawn_on_worker(&self, future: impl Future<Output = ()> + Send + 'static) {
        spawn_on(Arc::clone(self.pick()), future);
    }

    /// Runs `future` on the worker of this thread if it is one of this
    /// runtime's, else on one chosen in turn: a session accepted by a
    /// worker's own accept loop stays there.
    pub(crate) fn spawn_here(&self, future: impl Future<Output = ()> + Send + 'static) {
        let worker = match current() {
            Some(worker) if self.pool.workers.iter().any(|w| Arc::ptr_eq(w, &worker)) => worker,
            _ => Arc::clone(self.pick()),
        };
        spawn_on(worker, future);
    }

    /// Runs `future` on worker number `index` (modulo their number).
    pub(crate) fn spawn_on_index(
        &self,
        index: usize,
        future: impl Future<Output = ()> + Send + 'static,
    ) {
        let workers = &self.pool.workers;
        spawn_on(Arc::clone(&workers[index % workers.len()]), future);
    }
}

impl Pool {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for worker in &self.workers {
            lock(&worker.remote).stopping = true;
            worker.poller.notify();
        }
    }
}

/// Runs `future` as a task of its own on this thread's worker; gives it
/// back if this thread is not a worker. A connection's prelude (PROXY
/// header, TLS handshake) hands its session over this way, so the session
/// does not live inside the larger future of the prelude for its whole life.
pub(crate) fn spawn_on_current<F>(future: F) -> Result<(), F>
where
    F: Future<Output = ()> + Send + 'static,
{
    match current() {
        Some(worker) => {
            spawn_on(worker, future);
            Ok(())
        }
        None => Err(future),
    }
}

fn spawn_on(worker: Arc<Worker>, future: impl Future<Output = ()> + Send + 'static) {
    let task = Arc::new(Task {
        future: Mutex::new(Some(Box::pin(future))),
        scheduled: AtomicBool::new(false),
        live: AtomicU32::new(NOT_LIVE),
        worker,
    });
    task.schedule();
}

thread_local! {
    /// The uid of the worker running on this thread, if any (0: none).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    /// The worker running on this thread, if any.
    static WORKER: RefCell<Option<Arc<Worker>>> = const { RefCell::new(None) };
    /// This worker's tasks that are ready to run.
    static READY: RefCell<VecDeque<Arc<Task>>> = const { RefCell::new(VecDeque::new()) };
    /// Every task this worker has run and that has not finished: what it
    /// drops when it stops.
    static LIVE: RefCell<Slab<Arc<Task>>> = RefCell::new(Slab::default());
}

/// Whether this thread is `worker`'s.
#[inline]
pub(crate) fn is_current(worker: &Worker) -> bool {
    CURRENT.get() == worker.uid
}

/// The worker of this thread, if it is one.
pub(crate) fn current() -> Option<Arc<Worker>> {
    if CURRENT.get() == 0 {
        return None;
    }
    WORKER
        .try_with(|worker| worker.borrow().clone())
        .ok()
        .flatten()
}

#[derive(Default)]
struct Remote {
    tasks: Vec<Arc<Task>>,
    /// Timers dropped on other threads, by key.
    cancelled_timers: Vec<usize>,
    /// The worker is, or is about to be, blocked in its poller.
    sleeping: bool,
    /// The runtime is shutting down: the worker drops its tasks and ends.
    stopping: bool,
    /// The worker has begun dropping its tasks: tasks woken or spawned
    /// from other threads are dropped where they are.
    stopped: bool,
}

pub(crate) struct Worker {
    uid: usize,
    index: usize,
    poller: Poller,
    remote: Mutex<Remote>,
    sources: Mutex<Slab<Arc<Source>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    /// Frees timer `key` of this worker, dropped on another thread.
    pub(crate) fn cancel_timer(&self, key: usize) {
        lock(&self.remote).cancelled_timers.push(key);
    }

    fn run(self: Arc<Self>) {
        CURRENT.set(self.uid);
        WORKER.with(|worker| *worker.borrow_mut() = Some(Arc::clone(&self)));
        let mut events = Events::new();
        let mut woken = Vec::new();
        let mut cancelled = Vec::new();
        let mut due = Vec::new();
        let oneshot = self.poller.mode() == Mode::Oneshot;
        loop {
            for _ in 0..TASKS_PER_TURN {
                let Some(task) = READY.with(|ready| ready.borrow_mut().pop_front()) else {
                    break;
                };
                task.run();
            }
            let block = {
                let mut remote = lock(&self.remote);
                if remote.stopping {
                    break;
                }
                std::mem::swap(&mut remote.tasks, &mut woken);
                std::mem::swap(&mut remote.cancelled_timers, &mut cancelled);
                let idle = woken.is_empty() && READY.with(|ready| ready.borrow().is_empty());
                remote.sleeping = idle;
                idle
            };
            READY.with(|ready| ready.borrow_mut().extend(woken.drain(..)));
            timer::remove_all(&mut cancelled);
            // Blocks until the next timer is due at the latest: the timeout
            // is the wait's own argument, no system call of its own.
            let timeout = if block {
                timer::next_timeout()
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.poller.wait(&mut events, timeout) {
                log::error!("session worker {}: poller wait failed: {e}", self.index);
            }
            if block {
                lock(&self.remote).sleeping = false;
            }
            self.dispatch(&events, oneshot);
            timer::fire_due(&mut due);
            for waker in due.drain(..) {
                waker.wake();
            }
        }
        self.stop();
    }

    /// Wakes the tasks waiting on the sockets that `events` says are ready.
    fn dispatch(&self, events: &Events, oneshot: bool) {
        let mut ready = events.iter().peekable();
        if ready.peek().is_none() {
            return;
        }
        let sources = lock(&self.sources);
        for event in ready {
            let Some(source) = sources.get(event.key) else {
                continue;
            };
            if event.read_closed {
                source.read_closed.store(true, Ordering::Release);
            }
            if oneshot {
                // One event disarms the socket: a direction that was
                // waited on but did not fire is woken to look again, and
                // re-arms.
                let armed = source.armed.swap(0, Ordering::AcqRel);
                if armed & READ != 0 && !event.readable {
                    source.read_waker.wake();
                }
                if armed & WRITE != 0 && !event.writable {
                    source.write_waker.wake();
                }
            }
            if event.readable {
                source.read_gen.fetch_add(1, Ordering::AcqRel);
                source.read_waker.wake();
            }
            if event.writable {
                source.write_gen.fetch_add(1, Ordering::AcqRel);
                source.write_waker.wake();
            }
        }
    }

    /// Drops every task of this worker, on its own thread (a session's
    /// `on_disconnected` runs here, its timers and sockets leave this
    /// worker), until none is left.
    fn stop(&self) {
        let mut tasks = {
            let mut remote = lock(&self.remote);
            remote.stopped = true;
            std::mem::take(&mut remote.tasks)
        };
        loop {
            tasks.append(&mut lock(&self.remote).tasks);
            READY.with(|ready| tasks.extend(ready.borrow_mut().drain(..)));
            LIVE.with(|live| {
                let live = std::mem::take(&mut *live.borrow_mut());
                tasks.extend(live.entries.into_iter().flatten());
            });
            if tasks.is_empty() {
                break;
            }
            for task in tasks.drain(..) {
                let future = lock(&task.future).take();
                drop(future);
            }
        }
        timer::clear();
        let sources = std::mem::take(&mut *lock(&self.sources));
        drop(sources);
        WORKER.with(|worker| worker.borrow_mut().take());
        CURRENT.set(0);
        log::debug!("session worker {} stopped", self.index);
    }
}

/// A task not in its worker's live set.
const NOT_LIVE: u32 = u32::MAX;

struct Task {
    future: Mutex<Option<BoxFuture>>,
    /// In a ready queue already: a second wake does nothing.
    scheduled: AtomicBool,
    /// Its key in its worker's live set, once it has run there (32 bits:
    /// with `scheduled`, one word).
    live: AtomicU32,
    worker: Arc<Worker>,
}

impl Task {
    fn schedule(self: Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        if is_current(&self.worker) {
            READY.with(|ready| ready.borrow_mut().push_back(self));
            return;
        }
        let worker = Arc::clone(&self.worker);
        let sleeping = {
            let mut remote = lock(&worker.remote);
            if remote.stopped {
                drop(remote);
                // A task that has run on the worker is dropped there, by
                // its sweep (a session's `on_disconnected` runs on its
                // worker); one that never reached it is dropped here.
                if self.live.load(Ordering::Relaxed) == NOT_LIVE {
                    self.discard();
                }
                return;
            }
            remote.tasks.push(self);
            remote.sleeping
        };
        if sleeping {
            worker.poller.notify();
        }
    }

    /// Drops the future of a task that its stopped worker never ran,
    /// unless it is being dropped already.
    fn discard(&self) {
        let future = match self.future.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        drop(future);
    }

    fn run(self: Arc<Self>) {
        self.scheduled.store(false, Ordering::Release);
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return;
        };
        if self.live.load(Ordering::Relaxed) == NOT_LIVE {
            LIVE.with(|live| {
                let mut live = live.borrow_mut();
                let key = live.insert(Arc::clone(&self));
                match u32::try_from(key) {
                    Ok(key) if key != NOT_LIVE => self.live.store(key, Ordering::Relaxed),
                    // Four billion live tasks on one worker: this one is
                    // not swept at shutdown.
                    _ => live.remove(key),
                }
            });
        }
        let done = match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(())) => true,
            Err(_) => {
                // Tasks catch their own panics; this keeps the worker alive
                // if one does not.
                log::error!("a task on session worker {} panicked", self.worker.index);
                true
            }
        };
        if done {
            let future = slot.take();
            drop(slot);
            drop(future);
            let key = self.live.swap(NOT_LIVE, Ordering::Relaxed);
            if key != NOT_LIVE {
                let _ = LIVE.try_with(|live| live.borrow_mut().remove(key as usize));
            }
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Arc::clone(self).schedule();
    }
}

/// Readiness of one registered socket, shared with its worker.
#[derive(Default)]
struct Source {
    read_gen: AtomicU64,
    /// The poller reported the read side closed (or an error): reads must
    /// go on until they return it, never be skipped.
    read_closed: AtomicBool,
    write_gen: AtomicU64,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    /// Oneshot mode: the directions ([`READ`], [`WRITE`]) the poller
    /// watches now.
    armed: AtomicU8,
}

/// A direction in [`Source::armed`].
const READ: u8 = 1;
const WRITE: u8 = 2;

/// Entries by key, with a free list: registered sources, live tasks.
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key).and_then(Option::as_ref)
    }

    fn remove(&mut self, key: usize) {
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.take().is_some() {
                self.free.push(key);
            }
        }
    }
}

/// A socket's place in one worker's poller.
struct Registration {
    worker: Arc<Worker>,
    key: usize,
    source: Arc<Source>,
}

impl Registration {
    /// Takes `socket` out of the poller; called before the socket closes.
    fn leave(self, socket: &impl AsSource) {
        // An error means the socket has left the poller already.
        let _ = self.worker.poller.delete(socket);
        lock(&self.worker.sources).remove(self.key);
    }

    /// Oneshot mode: makes sure the poller watches `socket` in `direction`
    /// (a task is about to wait on it). Nothing to do when edge-triggered.
    #[inline]
    fn arm(&self, socket: &impl AsSource, direction: Direction) -> io::Result<()> {
        if self.worker.poller.mode() == Mode::Edge {
            return Ok(());
        }
        let bit = match direction {
            Direction::Read => READ,
            Direction::Write => WRITE,
        };
        let armed = self.source.armed.load(Ordering::Acquire);
        if armed & bit != 0 {
            return Ok(());
        }
        let armed = armed | bit;
        self.source.armed.store(armed, Ordering::Release);
        self.worker
            .poller
            .rearm(socket, self.key, armed & READ != 0, armed & WRITE != 0)
    }

    /// Joins the poller of this thread's worker; off the workers (not the
    /// library's own use), one of the shared runtime's.
    fn new(socket: &impl AsSource) -> io::Result<Registration> {
        let worker = match current() {
            Some(worker) => worker,
            None => Arc::clone(Runtime::default_shared()?.pick()),
        };
        let source = Arc::new(Source::default());
        let key = lock(&worker.sources).insert(Arc::clone(&source));
        let added = worker.poller.add(socket, key);
        if let Err(e) = added {
            lock(&worker.sources).remove(key);
            return Err(e);
        }
        Ok(Registration {
            worker,
            key,
            source,
        })
    }
}

/// A connected socket driven by the workers.
#[derive(Debug)]
pub(crate) struct TcpStream {
    registration: Option<Registration>,
    /// The read generation at which a read last found nothing.
    read_blocked: u64,
    write_blocked: u64,
    // Declared last: dropped after the registration has left the poller.
    socket: StdTcpStream,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("worker", &self.worker.index)
            .field("key", &self.key)
            .finish()
    }
}

impl TcpStream {
    /// Wraps a connected socket; it joins a poller when first used.
    pub(crate) fn new(socket: StdTcpStream) -> io::Result<TcpStream> {
        socket.set_nonblocking(true)?;
        Ok(TcpStream {
            registration: None,
            read_blocked: u64::MAX,
            write_blocked: u64::MAX,
            socket,
        })
    }

    pub(crate) fn get_ref(&self) -> &StdTcpStream {
        &self.socket
    }

    /// Peeks at the bytes waiting, without taking them; returns once more
    /// than `seen` bytes wait, the peer has closed (0), or `buf` is full.
    pub(crate) fn poll_peek(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        seen: usize,
    ) -> Poll<io::Result<usize>> {
        let full = buf.len();
        self.poll_ready_io(
            cx,
            Direction::Read,
            |socket| match socket.peek(buf) {
                Ok(n) if n > seen || n == 0 || n == full => Ok(n),
                // Nothing new: wait for the next readiness event.
                Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            },
            |_| false,
        )
    }

    /// Runs `op` on the socket once it may make progress in `direction`
    /// (see [`poll_io`]), registering the socket on first use.
    fn poll_ready_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        direction: Direction,
        mut op: impl FnMut(&StdTcpStream) -> io::Result<T>,
        drained: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        let TcpStream {
            registration,
            read_blocked,
            write_blocked,
            socket,
        } = self;
        let registration = registered(registration, socket)?;
        let source = &registration.source;
        let (generation, waker, blocked_at) = match direction {
            Direction::Read => (&source.read_gen, &source.read_waker, read_blocked),
            Direction::Write => (&source.write_gen, &source.write_waker, write_blocked),
        };
        // Once the peer has closed, the read that returns the end must not
        // be skipped: no event will come for it.
        let closed = &source.read_closed;
        poll_io(
            cx,
            generation,
            waker,
            blocked_at,
            || op(socket),
            |done| drained(done) && !closed.load(Ordering::Acquire),
            || registration.arm(socket, direction),
        )
    }

    /// Takes `n` bytes already seen by [`poll_peek`](Self::poll_peek) off
    /// the socket.
    pub(crate) fn consume(&mut self, mut n: usize) -> io::Result<()> {
        let mut sink = [0u8; 256];
        while n > 0 {
            let want = n.min(sink.len());
            match (&self.socket).read(&mut sink[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(got) => n -= got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // What follows may be waiting already: let the next read look.
        self.read_blocked = u64::MAX;
        Ok(())
    }
}

/// The socket's registration, made on first use.
#[inline]
fn registered<'a>(
    slot: &'a mut Option<Registration>,
    socket: &impl AsSource,
) -> io::Result<&'a Registration> {
    if slot.is_none() {
        *slot = Some(Registration::new(socket)?);
    }
    match slot {
        Some(registration) => Ok(registration),
        None => Err(io::Error::other("a socket without its registration")),
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.leave(&self.socket);
        }
    }
}

/// Reads and writes of one buffer. On Linux they go straight to the system
/// calls: libc's wrappers switch thread cancellation on and off around each
/// one: about 1% of the CPU of a small-message echo (`perf`), 7% of its
/// user-space instructions (callgrind).
#[cfg(target_os = "linux")]
mod sys {
    use std::io::{self, IoSlice};
    use std::net::TcpStream;

    use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

    pub(super) fn recv(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _) = rustix::net::recv(socket, buf, RecvFlags::empty())?;
        Ok(n)
    }

    pub(super) fn send(socket: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        // As std does: a peer that is gone is an error, not a SIGPIPE.
        Ok(rustix::net::send(socket, buf, SendFlags::NOSIGNAL)?)
    }

    /// `sendmsg` with `MSG_NOSIGNAL`: std's `write_vectored` is `writev`,
    /// which raises SIGPIPE on a reset peer, killing a host process that
    /// has not set SIGPIPE aside.
    pub(super) fn send_vectored(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut control = SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(
            socket,
            bufs,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io::{self, Read, Write};
    use std::net::TcpStream;

    pub(super) fn recv(mut socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        socket.read(buf)
    }

    pub(super) fn send(mut socket: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        socket.write(buf)
    }

    pub(super) fn send_vectored(
        mut socket: &TcpStream,
        bufs: &[std::io::IoSlice<'_>],
    ) -> io::Result<usize> {
        socket.write_vectored(bufs)
    }
}

/// Which readiness a socket operation waits for.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Runs `op` until it stops returning `Interrupted`; a `WouldBlock` waits for
/// the next readiness event counted by `generation`, and so does the next
/// call after a result that `drained` says emptied the socket. `arm` runs
/// before each wait (a oneshot poller's re-arm).
fn poll_io<T>(
    cx: &mut Context<'_>,
    generation: &AtomicU64,
    waker: &AtomicWaker,
    blocked_at: &mut u64,
    mut op: impl FnMut() -> io::Result<T>,
    drained: impl Fn(&T) -> bool,
    mut arm: impl FnMut() -> io::Result<()>,
) -> Poll<io::Result<T>> {
    loop {
        let current = generation.load(Ordering::Acquire);
        if current == *blocked_at {
            // Nothing has happened since the last `WouldBlock`: wait, but
            // look once more after registering, in case an event just came.
            waker.register(cx.waker());
            arm()?;
            if generation.load(Ordering::Acquire) == current {
                return Poll::Pending;
            }
            continue;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *blocked_at = current,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(done) => {
                if drained(&done) {
                    // The socket had nothing more when `op` returned: the
                    // next try would find `WouldBlock`, so skip it and wait
                    // for an event after `current` (edge-triggered, every
                    // new arrival is one).
                    *blocked_at = current;
                }
                return Poll::Ready(Ok(done));
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A listening socket driven by the worker whose accept loop uses it (with
/// `SO_REUSEPORT`, one per worker).
#[derive(Debug)]
pub(crate) struct TcpListener {
    registration: Option<Registration>,
    accept_blocked: u64,
    // Declared last: dropped after the registration has left the poller.
    socket: StdTcpListener,
}

impl TcpListener {
    pub(crate) fn new(socket: StdTcpListener) -> io::Result<TcpListener> {
        socket.set_nonblocking(true)?;
        Ok(TcpListener {
            registration: None,
            accept_blocked: u64::MAX,
            socket,
        })
    }

    /// Accepts one connection once one waits.
    pub(crate) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let socket = &self.socket;
        let registration = registered(&mut self.registration, socket)?;
        let source = &registration.source;
        let accepted = poll_io(
            cx,
            &source.read_gen,
            &source.read_waker,
            &mut self.accept_blocked,
            || socket.accept(),
            |_| false,
            || registration.arm(socket, Direction::Read),
        );
        accepted.map(|result| result.and_then(|(stream, _)| TcpStream::new(stream)))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.leave(&self.socket);
        }
    }
}

/// Opens a TCP connection to `addr` from this thread's worker: a
/// non-blocking `connect`, then a wait in the worker's poller until the
/// socket is writable, then the socket's own error, if any.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::new(socket.into())?;
    std::future::poll_fn(|cx| stream.poll_connected(cx)).await?;
    Ok(stream)
}

/// A non-blocking `connect` that has begun.
fn in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

impl TcpStream {
    /// Waits until a connect begun on this socket has ended: `Ok` once it
    /// is connected, else the connect's error.
    fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ready_io(
            cx,
            Direction::Write,
            |socket| {
                if let Some(e) = socket.take_error()? {
                    return Err(e);
                }
                match socket.peer_addr() {
                    Ok(_) => Ok(()),
                    // Still connecting: wait for the next event.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    Err(e) => Err(e),
                }
            },
            |_| false,
        )
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        // A read that filled less than the buffer emptied the socket (as
        // tokio assumes too): the next read waits for the next event
        // instead of making a syscall only to hear `WouldBlock`. Except
        // after a large one: more of a large write is likely on its way.
        self.poll_ready_io(
            cx,
            Direction::Read,
            |socket| sys::recv(socket, buf),
            |&n| cfg!(target_os = "linux") && n > 0 && n < len && n < STREAMING_READ,
        )
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_ready_io(
            cx,
            Direction::Write,
            |socket| sys::send(socket, buf),
            |_| false,
        )
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_ready_io(
            cx,
            Direction::Write,
            |socket| sys::send_vectored(socket, bufs),
            |_| false,
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.socket.shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{self, IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::time::Duration;

    use super::sys;

    const TEST: &str = "rt::worker::tests::vectored_writes_to_a_reset_peer_fail_without_sigpipe";
    const CHILD: &str = "SESSION_CORE_SIGPIPE_CHILD";

    /// Vectored writes to a peer that has reset, until one fails: the
    /// first reports the reset, the next a broken pipe (where `writev`
    /// raises SIGPIPE).
    fn write_to_reset_peer(write: impl Fn(&TcpStream, &[IoSlice<'_>]) -> io::Result<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        // Wait for the reset itself: the read returns it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.read(&mut [0; 1]);
        let bufs = [IoSlice::new(b"hello"), IoSlice::new(b", world")];
        for _ in 0..100 {
            if let Err(e) = write(&stream, &bufs) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return;
                }
            }
        }
        panic!("no write failed with a broken pipe");
    }

    /// The worker's vectored write is `sendmsg` with `MSG_NOSIGNAL`: in a
    /// process where SIGPIPE has its default action (a host that never set
    /// it aside; Rust's runtime ignores it in its own binaries, so a child
    /// test process restores the default), it returns an error, while
    /// std's `write_vectored` (`writev`) kills the process.
    #[test]
    fn vectored_writes_to_a_reset_peer_fail_without_sigpipe() {
        if let Ok(mode) = std::env::var(CHILD) {
            // SAFETY: restores a signal's default action, before this test
            // process (run with this one test only) starts any thread of
            // its own that could write to a socket.
            #[allow(unsafe_code)]
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            match mode.as_str() {
                "sendmsg" => write_to_reset_peer(sys::send_vectored),
                _ => write_to_reset_peer(|mut socket, bufs| socket.write_vectored(bufs)),
            }
            return;
        }
        let run = |mode: &str| {
            Command::new(std::env::current_exe().unwrap())
                .args([TEST, "--exact", "--test-threads=1", "--nocapture"])
                .env(CHILD, mode)
                .output()
                .unwrap()
        };
        let ours = run("sendmsg");
        assert!(
            ours.status.success(),
            "{:?}: {}",
            ours.status,
            String::from_utf8_lossy(&ours.stdout)
        );
        // The check itself can see a SIGPIPE: std's `writev` dies of it.
        let std = run("writev");
        assert_eq!(std.status.signal(), Some(libc::SIGPIPE), "{:?}", std.status);
    }
}
