//! The workers as a value: their timers, accept loops, connecting,
//! shutdown, and the oneshot poller mode, through real loopback sockets.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::task;

use super::{Runtime, sleep, timeout};
use crate::{
    Connector, DisconnectReason, Framing, IpInformation, Listener, Session, SessionConfig,
    SessionHandle, ShutdownHandle,
};

const WAIT: Duration = Duration::from_secs(10);

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// What the sessions of a test saw, in order, with the thread each ran on.
#[derive(Debug, Clone)]
enum Seen {
    Connected(u64, String),
    Disconnected(u64, DisconnectReason, String),
}

/// Echoes every message; reports its callbacks.
#[derive(Clone)]
struct Echo(Sender<Seen>);

impl Session for Echo {
    fn on_connected(&mut self, handle: &SessionHandle) {
        let _ = self
            .0
            .send(Seen::Connected(handle.id().get(), thread_name()));
    }
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        let _ = handle.send(message);
    }
    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        let _ = self.0.send(Seen::Disconnected(
            handle.id().get(),
            reason.clone(),
            thread_name(),
        ));
    }
}

/// A listener on `runtime` at `127.0.0.1:0`, run on another thread.
struct Server {
    addr: SocketAddr,
    stop: ShutdownHandle,
    ran: Receiver<std::io::Result<()>>,
}

fn serve(runtime: &Runtime, config: SessionConfig, seen: Sender<Seen>) -> Server {
    let ip = IpInformation::from("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    let listener = task::block_on(Listener::bind_on(runtime, &ip, config)).unwrap();
    let addr = listener.local_addr();
    let stop = listener.shutdown_handle();
    let (done, ran) = mpsc::channel();
    std::thread::spawn(move || {
        let echo = Echo(seen);
        let _ = done.send(task::block_on(listener.run(move || echo.clone())));
    });
    Server { addr, stop, ran }
}

impl Server {
    fn stop(self) {
        self.stop.shutdown();
        self.ran
            .recv_timeout(WAIT)
            .expect("Listener::run returns")
            .unwrap();
    }
}

fn client(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

fn echo_once(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

#[test]
fn a_worker_timer_fires_on_the_workers_own_thread() {
    let runtime = Runtime::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    runtime.spawn_on_worker(async move {
        let started = Instant::now();
        sleep(Duration::from_millis(20)).await;
        let slept = started.elapsed();
        // A timeout that expires, and one whose future wins.
        let expired = timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
        let finished = timeout(WAIT, async { 7 }).await;
        let _ = tx.send((thread_name(), slept, expired, finished));
    });
    let (name, slept, expired, finished) = rx.recv_timeout(WAIT).unwrap();
    assert!(name.starts_with("session-worker"), "{name}");
    assert!(slept >= Duration::from_millis(20), "{slept:?}");
    assert_eq!(expired, None);
    assert_eq!(finished, Some(7));
    runtime.shutdown_and_join();
}

/// Records the thread that wakes it, then wakes the task.
struct WakeWitness {
    task: std::task::Waker,
    by: Mutex<Option<String>>,
}

impl std::task::Wake for WakeWitness {
    fn wake(self: Arc<Self>) {
        *self.by.lock().unwrap() = Some(thread_name());
        self.task.wake_by_ref();
    }
}

/// The engine's timer (`rt::Timer`), polled on a worker, is woken by that
/// worker's own thread, not by a timer thread elsewhere; re-armed after
/// firing, it fires again.
#[test]
fn an_engine_timer_is_woken_by_its_own_worker() {
    let runtime = Runtime::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    runtime.spawn_on_worker(async move {
        let mut timer = super::timer_at(Instant::now() + Duration::from_millis(10));
        let mut wakers = Vec::new();
        for round in 0..2 {
            if round == 1 {
                timer.set_after(Duration::from_millis(10));
            }
            let mut witness = None;
            std::future::poll_fn(|cx| {
                let w = witness.get_or_insert_with(|| {
                    Arc::new(WakeWitness {
                        task: cx.waker().clone(),
                        by: Mutex::new(None),
                    })
                });
                let waker = std::task::Waker::from(Arc::clone(w));
                std::pin::Pin::new(&mut timer).poll(&mut std::task::Context::from_waker(&waker))
            })
            .await;
            let by = witness.and_then(|w| w.by.lock().unwrap().clone());
            wakers.push(by);
        }
        let _ = tx.send((thread_name(), wakers));
    });
    let (ran_on, woken_by) = rx.recv_timeout(WAIT).unwrap();
    assert!(ran_on.starts_with("session-worker"), "{ran_on}");
    assert_eq!(woken_by, vec![Some(ran_on.clone()), Some(ran_on)]);
    runtime.shutdown_and_join();
}

#[test]
fn many_timers_on_a_worker_fire_in_order_and_dropped_ones_never() {
    let runtime = Runtime::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let here = runtime.clone();
    runtime.spawn_on_worker(async move {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (done, mut wait) = futures::channel::mpsc::unbounded::<()>();
        for i in (0..20u64).rev() {
            let (order, done) = (Arc::clone(&order), done.clone());
            // Each on this same worker.
            here.spawn_here(async move {
                sleep(Duration::from_millis(5 * i)).await;
                order.lock().unwrap().push(i);
                let _ = done.unbounded_send(());
            });
        }
        // A timer dropped before it fires wakes nothing.
        let dropped = super::timer_at(Instant::now() + Duration::from_millis(1));
        drop(dropped);
        drop(done);
        use futures::StreamExt;
        while wait.next().await.is_some() {}
        let _ = tx.send(order.lock().unwrap().clone());
    });
    let order = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(order, (0..20).collect::<Vec<u64>>());
    runtime.shutdown_and_join();
}

#[test]
fn an_idle_session_on_a_worker_closes_with_idle() {
    let runtime = Runtime::new(1).unwrap();
    let (seen, events) = mpsc::channel();
    let config = SessionConfig {
        idle_timeout: Some(Duration::from_millis(100)),
        ..SessionConfig::default()
    };
    let server = serve(&runtime, config, seen);
    let mut stream = client(server.addr);
    echo_once(&mut stream, b"hello");
    let started = Instant::now();
    // The server closes the idle connection: the client reads its end.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(90));
    let Seen::Connected(id, _) = events.recv_timeout(WAIT).unwrap() else {
        panic!("connected first")
    };
    match events.recv_timeout(WAIT).unwrap() {
        Seen::Disconnected(got, DisconnectReason::Idle, thread) => {
            assert_eq!(got, id);
            assert!(thread.starts_with("session-worker"), "{thread}");
        }
        other => panic!("{other:?}"),
    }
    server.stop();
    runtime.shutdown_and_join();
}

#[test]
fn shutdown_and_join_ends_every_session_once_and_the_threads() {
    let runtime = Runtime::new(2).unwrap();
    let (seen, events) = mpsc::channel();
    let server = serve(&runtime, SessionConfig::default(), seen);
    let mut clients: Vec<TcpStream> = (0..6).map(|_| client(server.addr)).collect();
    for (i, stream) in clients.iter_mut().enumerate() {
        echo_once(stream, format!("hello {i}").as_bytes());
    }
    let mut connected = Vec::new();
    for _ in 0..6 {
        match events.recv_timeout(WAIT).unwrap() {
            Seen::Connected(id, _) => connected.push(id),
            other => panic!("{other:?}"),
        }
    }
    runtime.clone().shutdown_and_join();
    // Every session ended once, with `Shutdown`; nothing more comes.
    let mut ended = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            // On its worker, as it stopped.
            Seen::Disconnected(id, DisconnectReason::Shutdown, thread)
                if thread.starts_with("session-worker") =>
            {
                ended.push(id)
            }
            other => panic!("{other:?}"),
        }
    }
    ended.sort_unstable();
    connected.sort_unstable();
    assert_eq!(ended, connected);
    // The sockets were closed with their sessions.
    for mut stream in clients {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    // `run` returns: its accept loop was dropped and no session is left.
    server
        .ran
        .recv_timeout(WAIT)
        .expect("Listener::run returns")
        .unwrap();
    // Work handed to a stopped runtime is dropped, not run.
    let (tx, rx) = mpsc::channel::<()>();
    runtime.spawn_on_worker(async move {
        let _ = tx.send(());
    });
    assert!(rx.recv_timeout(WAIT).is_err());
}

fn accept_on_workers(reuse_port: bool) {
    let runtime = Runtime::new(2).unwrap();
    let (seen, events) = mpsc::channel();
    let config = SessionConfig {
        reuse_port,
        ..SessionConfig::default()
    };
    let server = serve(&runtime, config, seen);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| client(server.addr)).collect();
    for (i, stream) in clients.iter_mut().enumerate() {
        echo_once(stream, format!("message {i}").as_bytes());
    }
    for _ in 0..8 {
        match events.recv_timeout(WAIT).unwrap() {
            Seen::Connected(_, thread) => {
                assert!(thread.starts_with("session-worker"), "{thread}")
            }
            other => panic!("{other:?}"),
        }
    }
    drop(clients);
    server.stop();
    runtime.shutdown_and_join();
}

#[test]
fn the_accept_loop_runs_on_a_worker_without_reuse_port() {
    accept_on_workers(false);
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
#[test]
fn the_accept_loops_run_on_the_workers_with_reuse_port() {
    accept_on_workers(true);
}

#[test]
fn connect_on_a_worker_to_a_refused_port_names_the_address() {
    let runtime = Runtime::new(1).unwrap();
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let connector = Connector::with_runtime(SessionConfig::default(), runtime.clone()).unwrap();
    let (seen, _events) = mpsc::channel();
    let err = task::block_on(connector.connect(&IpInformation::from(addr), Echo(seen)))
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("connect to {addr} ({addr}: Connection refused")),
        "{text}"
    );
    runtime.shutdown_and_join();
}

#[test]
fn a_connected_session_runs_on_the_worker_that_connected() {
    let runtime = Runtime::new(2).unwrap();
    let (server_seen, _server_events) = mpsc::channel();
    let server = serve(&runtime, SessionConfig::default(), server_seen);
    let (seen, events) = mpsc::channel();
    let connector = Connector::with_runtime(SessionConfig::default(), runtime.clone()).unwrap();
    let connection =
        task::block_on(connector.connect(&IpInformation::from(server.addr), Echo(seen))).unwrap();
    match events.recv_timeout(WAIT).unwrap() {
        Seen::Connected(_, thread) => assert!(thread.starts_with("session-worker"), "{thread}"),
        other => panic!("{other:?}"),
    }
    connection.handle().disconnect();
    let reason = task::block_on(connection.closed());
    assert!(matches!(reason, DisconnectReason::LocalClose), "{reason:?}");
    server.stop();
    runtime.shutdown_and_join();
}

/// The portable backend in oneshot mode (the mode of Windows' IOCP, where
/// edge-triggering is refused) runs a real session: small messages both
/// ways and one of 1 MiB.
#[test]
fn an_echo_session_runs_on_the_oneshot_poller() {
    let runtime = Runtime::new_oneshot(2).unwrap();
    let (seen, events) = mpsc::channel();
    let config = SessionConfig {
        framing: Framing::Raw,
        ..SessionConfig::default()
    };
    let server = serve(&runtime, config, seen);
    let mut stream = client(server.addr);
    for i in 0..20 {
        echo_once(&mut stream, format!("message {i}").as_bytes());
    }
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = big.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0; big.len()];
    stream.read_exact(&mut back).unwrap();
    writing.join().unwrap().unwrap();
    assert!(back == big, "the 1 MiB message came back changed");
    echo_once(&mut stream, b"after");
    // A second client at the same time, on the other worker.
    let mut other = client(server.addr);
    echo_once(&mut other, b"other");
    echo_once(&mut stream, b"first again");
    drop(stream);
    drop(other);
    let mut disconnected = 0;
    while disconnected < 2 {
        if let Seen::Disconnected(_, reason, _) = events.recv_timeout(WAIT).unwrap() {
            assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
            disconnected += 1;
        }
    }
    server.stop();
    runtime.shutdown_and_join();
}

#[test]
fn the_shared_runtime_is_one_and_set_worker_threads_says_if_it_applies() {
    let a = Runtime::default_shared().unwrap();
    let b = Runtime::default_shared().unwrap();
    assert!(a.ptr_eq(&b));
    assert!(
        !crate::set_worker_threads(3),
        "the shared runtime is running"
    );
}

/// A worker whose poller cannot be created (a process out of file
/// descriptors, say) makes `Runtime::new` fail with an error naming it,
/// instead of panicking; the workers started before it are stopped.
#[test]
fn a_poller_that_cannot_be_created_is_an_error_not_a_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static MADE: AtomicUsize = AtomicUsize::new(0);
    fn second_fails() -> std::io::Result<super::poller::Poller> {
        if MADE.fetch_add(1, Ordering::SeqCst) == 1 {
            return Err(std::io::Error::from_raw_os_error(24)); // EMFILE
        }
        super::poller::Poller::new()
    }
    let err = Runtime::build(3, second_fails).expect_err("the second poller fails");
    let text = err.to_string();
    assert!(
        text.starts_with("create session worker 1's poller: "),
        "{text}"
    );
    assert_eq!(
        MADE.load(Ordering::SeqCst),
        2,
        "no worker after the failure"
    );
}
