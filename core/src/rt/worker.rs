//! The threads that run sessions: each is an executor and a reactor at once.
//!
//! Every worker thread owns a poller (epoll on Linux) and runs the tasks
//! spawned on it. A socket is registered with its worker's poller once,
//! edge-triggered, for reading and writing, and never re-armed: readiness is
//! a generation counter that the poller bumps and a read or write that finds
//! nothing remembers. A readiness event wakes its task on the same thread,
//! so the common path has no cross-thread wake-up and no `epoll_ctl` per
//! wait. (async-io, under async-std, re-arms each socket on every wait and
//! drives its reactor from another thread; on this project's machines that
//! costs about twice the system calls for the same echo.)
//!
//! Wakes from other threads (a `send` from another task, a timer) push the
//! task onto the worker's remote queue and wake its poller only if it sleeps.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use super::poller::{AsSource, Events, Poller};
use futures::io::{AsyncRead, AsyncWrite};
use futures::task::AtomicWaker;

/// A read of this many bytes does not mark the socket as emptied, even if
/// it filled less than the buffer: more of a large write is likely on its
/// way, and the next read tries (the engine's joined reads count on it).
pub(crate) const STREAMING_READ: usize = 16 * 1024;

/// Tasks one turn of a worker runs before it looks at its sockets again.
const TASKS_PER_TURN: usize = 256;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The process's workers, started on first use.
struct Pool {
    workers: Vec<Arc<Worker>>,
    next: AtomicUsize,
}

static POOL: OnceLock<Pool> = OnceLock::new();
/// Workers to start; 0 means one per available core.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many worker threads run sessions. Takes effect only before the
/// first session starts; returns whether it did.
pub(crate) fn set_worker_threads(count: usize) -> bool {
    WORKERS.store(count, Ordering::SeqCst);
    POOL.get().is_none()
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let count = match WORKERS.load(Ordering::SeqCst) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = (0..count)
            .map(|id| {
                let worker = Arc::new(Worker {
                    id,
                    poller: Poller::new().expect("create the worker's poller (epoll)"),
                    remote: Mutex::new(Remote::default()),
                    sources: Mutex::new(Slab::default()),
                });
                let run = Arc::clone(&worker);
                std::thread::Builder::new()
                    .name(format!("session-worker-{id}"))
                    .spawn(move || run.run())
                    .expect("start a session worker thread");
                worker
            })
            .collect();
        Pool {
            workers,
            next: AtomicUsize::new(0),
        }
    })
}

impl Pool {
    fn pick(&self) -> &Arc<Worker> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.workers[i % self.workers.len()]
    }
}

/// Runs `future` on one of the workers, chosen in turn.
pub(crate) fn spawn_on_worker(future: impl Future<Output = ()> + Send + 'static) {
    spawn_on(Arc::clone(pool().pick()), future);
}

/// Runs `future` on the worker of this thread, or on one chosen in turn
/// when this is not a worker's thread: a session accepted by a worker's
/// own accept loop stays there.
pub(crate) fn spawn_here(future: impl Future<Output = ()> + Send + 'static) {
    let pool = pool();
    let worker = match CURRENT.get() {
        Some(id) => Arc::clone(&pool.workers[id]),
        None => Arc::clone(pool.pick()),
    };
    spawn_on(worker, future);
}

/// Runs `future` on worker number `index` (modulo their number).
pub(crate) fn spawn_on_index(index: usize, future: impl Future<Output = ()> + Send + 'static) {
    let pool = pool();
    spawn_on(
        Arc::clone(&pool.workers[index % pool.workers.len()]),
        future,
    );
}

/// How many workers run sessions (starting them if they were not yet).
pub(crate) fn worker_count() -> usize {
    pool().workers.len()
}

fn spawn_on(worker: Arc<Worker>, future: impl Future<Output = ()> + Send + 'static) {
    let task = Arc::new(Task {
        future: Mutex::new(Some(Box::pin(future))),
        scheduled: AtomicBool::new(false),
        worker,
    });
    task.schedule();
}

thread_local! {
    /// The id of the worker running on this thread, if any.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    /// This worker's tasks that are ready to run.
    static READY: RefCell<VecDeque<Arc<Task>>> = const { RefCell::new(VecDeque::new()) };
}

#[derive(Default)]
struct Remote {
    tasks: Vec<Arc<Task>>,
    /// The worker is, or is about to be, blocked in its poller.
    sleeping: bool,
}

struct Worker {
    id: usize,
    poller: Poller,
    remote: Mutex<Remote>,
    sources: Mutex<Slab>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    fn run(self: Arc<Self>) {
        CURRENT.set(Some(self.id));
        let mut events = Events::new();
        let mut woken = Vec::new();
        loop {
            for _ in 0..TASKS_PER_TURN {
                let Some(task) = READY.with(|ready| ready.borrow_mut().pop_front()) else {
                    break;
                };
                task.run();
            }
            let block = {
                let mut remote = lock(&self.remote);
                std::mem::swap(&mut remote.tasks, &mut woken);
                let idle = woken.is_empty() && READY.with(|ready| ready.borrow().is_empty());
                remote.sleeping = idle;
                idle
            };
            READY.with(|ready| ready.borrow_mut().extend(woken.drain(..)));
            if let Err(e) = self.poller.wait(&mut events, block) {
                log::error!("session worker {}: poller wait failed: {e}", self.id);
            }
            if block {
                lock(&self.remote).sleeping = false;
            }
            let mut ready = events.iter().peekable();
            if ready.peek().is_some() {
                let sources = lock(&self.sources);
                for event in ready {
                    if let Some(source) = sources.get(event.key) {
                        if event.read_closed {
                            source.read_closed.store(true, Ordering::Release);
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
            }
        }
    }
}

struct Task {
    future: Mutex<Option<BoxFuture>>,
    /// In a ready queue already: a second wake does nothing.
    scheduled: AtomicBool,
    worker: Arc<Worker>,
}

impl Task {
    fn schedule(self: Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        if CURRENT.get() == Some(self.worker.id) {
            READY.with(|ready| ready.borrow_mut().push_back(self));
            return;
        }
        let worker = Arc::clone(&self.worker);
        let sleeping = {
            let mut remote = lock(&worker.remote);
            remote.tasks.push(self);
            remote.sleeping
        };
        if sleeping {
            worker.poller.notify();
        }
    }

    fn run(self: Arc<Self>) {
        self.scheduled.store(false, Ordering::Release);
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return;
        };
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => *slot = None,
            Err(_) => {
                // Tasks catch their own panics; this keeps the worker alive
                // if one does not.
                log::error!("a task on session worker {} panicked", self.worker.id);
                *slot = None;
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
}

/// Registered sources by key, with a free list.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<Arc<Source>>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, source: Arc<Source>) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(source);
                key
            }
            None => {
                self.entries.push(Some(source));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, key: usize) -> Option<&Arc<Source>> {
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

    fn new(socket: &impl AsSource) -> io::Result<Registration> {
        let pool = pool();
        let worker = match CURRENT.get() {
            Some(id) => Arc::clone(&pool.workers[id]),
            None => Arc::clone(pool.pick()),
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
            .field("worker", &self.worker.id)
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
        self.register()?;
        let TcpStream {
            registration,
            read_blocked,
            write_blocked,
            socket,
        } = self;
        let source = &registration.as_ref().expect("registered above").source;
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

    #[inline]
    fn register(&mut self) -> io::Result<()> {
        if self.registration.is_none() {
            self.registration = Some(Registration::new(&self.socket)?);
        }
        Ok(())
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
    use std::io;
    use std::net::TcpStream;

    use rustix::net::{RecvFlags, SendFlags};

    pub(super) fn recv(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _) = rustix::net::recv(socket, buf, RecvFlags::empty())?;
        Ok(n)
    }

    pub(super) fn send(socket: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        // As std does: a peer that is gone is an error, not a SIGPIPE.
        Ok(rustix::net::send(socket, buf, SendFlags::NOSIGNAL)?)
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
}

/// Which readiness a socket operation waits for.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Runs `op` until it stops returning `Interrupted`; a `WouldBlock` waits for
/// the next readiness event counted by `generation`, and so does the next
/// call after a result that `drained` says emptied the socket.
fn poll_io<T>(
    cx: &mut Context<'_>,
    generation: &AtomicU64,
    waker: &AtomicWaker,
    blocked_at: &mut u64,
    mut op: impl FnMut() -> io::Result<T>,
    drained: impl Fn(&T) -> bool,
) -> Poll<io::Result<T>> {
    loop {
        let current = generation.load(Ordering::Acquire);
        if current == *blocked_at {
            // Nothing has happened since the last `WouldBlock`: wait, but
            // look once more after registering, in case an event just came.
            waker.register(cx.waker());
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
        if self.registration.is_none() {
            self.registration = Some(Registration::new(&self.socket)?);
        }
        let source = &self.registration.as_ref().expect("registered above").source;
        let socket = &self.socket;
        let accepted = poll_io(
            cx,
            &source.read_gen,
            &source.read_waker,
            &mut self.accept_blocked,
            || socket.accept(),
            |_| false,
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
            |mut socket| socket.write_vectored(bufs),
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
