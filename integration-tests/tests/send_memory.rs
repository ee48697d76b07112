//! Memory held by send queues is memory counted (issue 11): a game loop on
//! its own thread sends a distinct message to every session in turn while
//! one peer never reads. Once the other peers have drained their queues,
//! the process heap may have grown by at most twice what the slow session's
//! queue counts, plus 1 MiB. The same for one `Registry::broadcast` frame
//! per round, and for a `JobQueue` room whose jobs do the sending.
//!
//! The heap is measured with a global allocator that counts live bytes; the
//! scenarios run one after another in one test, as they share it.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use integration_tests::counting_alloc::{Counting, live_bytes};
use session_core::{
    Frame, Framing, IpInformation, JobQueue, Listener, Registry, Session, SessionConfig,
    SessionHandle,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: usize = 1024 * 1024;
/// The slow session's queue is filled to about this before the readers are
/// left to drain: under the cap (the test's config), so it stays open.
const FILL: usize = 256 * 1024;
/// The message of each send: 64 bytes.
const MESSAGE: usize = 64;

/// A session that only sends what the test's loop gives it.
struct Quiet;

impl Session for Quiet {
    fn on_received(&mut self, _: &SessionHandle, _: &[u8]) {}
}

/// How the loop sends one round.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A distinct message to each session, from a plain thread.
    GameLoop,
    /// One frame for all, through `Registry::broadcast`.
    Broadcast,
    /// A distinct message to each member, from a room's `JobQueue` job.
    JobQueueRoom,
}

/// Everything one scenario opened.
struct Setup {
    registry: Registry,
    slow: SessionHandle,
    others: Vec<SessionHandle>,
    clients: Vec<TcpStream>,
    never_reads: TcpStream,
    stop: session_core::ShutdownHandle,
    server: async_std::task::JoinHandle<std::io::Result<()>>,
}

fn config() -> SessionConfig {
    SessionConfig {
        framing: Framing::Raw,
        socket_send_buffer: Some(64 * 1024),
        max_send_queue: MIB,
        send_high_watermark: 512 * 1024,
        send_low_watermark: 128 * 1024,
        ..SessionConfig::default()
    }
}

/// Opens `sessions` connections, the last of which never reads.
fn setup(sessions: usize) -> Setup {
    let listener = async_std::task::block_on(async {
        let ip = IpInformation::resolve("127.0.0.1", 0).await.unwrap();
        Listener::bind(&ip, config()).await.unwrap()
    });
    let addr: SocketAddr = listener.local_addr();
    let registry = listener.registry();
    let stop = listener.shutdown_handle();
    let server = async_std::task::spawn(listener.run(|| Quiet));
    let mut clients: Vec<TcpStream> = (0..sessions - 1)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let never_reads = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&never_reads)
        .set_recv_buffer_size(4096)
        .unwrap();
    let slow_port = never_reads.local_addr().unwrap().port();
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.len() < sessions {
        assert!(Instant::now() < deadline, "sessions did not all start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (slow, others): (Vec<_>, Vec<_>) = registry
        .handles()
        .into_iter()
        .partition(|h| h.peer_addr().port() == slow_port);
    for client in &mut clients {
        client.set_nonblocking(true).unwrap();
    }
    Setup {
        registry,
        slow: slow.into_iter().next().expect("the slow session"),
        others,
        clients,
        never_reads,
        stop,
        server,
    }
}

/// Reads every client until `stop`, on a thread of its own (bounded: it
/// gives up after 120 s).
fn drain(mut clients: Vec<TcpStream>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
            let mut any = false;
            for client in &mut clients {
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    any = true;
                }
            }
            if !any {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

/// One round of sends: a distinct 64-byte message per session (or one
/// frame for all).
fn round(shape: Shape, number: usize, setup: &Setup, room: &JobQueue<Vec<SessionHandle>>) {
    match shape {
        Shape::GameLoop => {
            for handle in setup.others.iter().chain([&setup.slow]) {
                let _ = handle.send(&message(number, handle));
            }
        }
        Shape::Broadcast => {
            let frame = Frame::new(Framing::Raw, &message(number, &setup.slow), 1024).unwrap();
            setup.registry.broadcast(&frame, None);
        }
        Shape::JobQueueRoom => {
            let job = move |members: &mut Vec<SessionHandle>| {
                for handle in members.iter() {
                    let _ = handle.send(&message(number, handle));
                }
            };
            async_std::task::block_on(room.push_wait(job)).unwrap();
        }
    }
}

/// 64 bytes naming the round and the session.
fn message(number: usize, handle: &SessionHandle) -> Vec<u8> {
    let mut text = format!("round {number} to {}", handle.id()).into_bytes();
    text.resize(MESSAGE, b'.');
    text
}

/// Runs one scenario; returns (heap growth, slow session's queued bytes).
fn heap_growth(shape: Shape, sessions: usize) -> (i64, usize) {
    let setup = setup(sessions);
    let mut members = setup.others.clone();
    members.push(setup.slow.clone());
    let room = JobQueue::spawn(members, 64);
    let stop_reading = Arc::new(AtomicBool::new(false));
    let clients = setup
        .clients
        .iter()
        .map(|c| c.try_clone().unwrap())
        .collect();
    let reader = drain(clients, Arc::clone(&stop_reading));
    let before = live_bytes();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut number = 0;
    while setup.slow.queued_bytes() < FILL {
        assert!(
            Instant::now() < deadline,
            "{shape:?}: the slow queue never filled"
        );
        round(shape, number, &setup, &room);
        number += 1;
    }
    // Let the job queue run its last job, then the readers drain theirs.
    let (done, wait) = mpsc::channel();
    async_std::task::block_on(room.push_wait(move |_| done.send(()).unwrap())).unwrap();
    wait.recv_timeout(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.others.iter().any(|h| h.queued_bytes() > 0) {
        assert!(
            Instant::now() < deadline,
            "{shape:?}: the readers did not drain"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let growth = live_bytes() - before;
    let queued = setup.slow.queued_bytes();
    assert!(
        setup.slow.is_connected(),
        "{shape:?}: the slow session stayed under its cap"
    );

    stop_reading.store(true, Ordering::Release);
    reader.join().unwrap();
    drop(room);
    setup.stop.shutdown();
    drop(setup.never_reads);
    drop(setup.clients);
    async_std::task::block_on(setup.server).unwrap();
    (growth, queued)
}

#[test]
fn a_slow_peer_holds_what_its_queue_counts_in_every_way_of_sending() {
    raise_fd_limit(2_500);
    for (shape, sessions) in [
        (Shape::GameLoop, 200),
        (Shape::GameLoop, 1_000),
        (Shape::Broadcast, 200),
        (Shape::JobQueueRoom, 200),
    ] {
        let (growth, queued) = heap_growth(shape, sessions);
        let bound = 2 * queued as i64 + MIB as i64;
        println!(
            "{shape:?}, {sessions} sessions: heap grew {growth} bytes; the slow queue counts {queued} (bound {bound})"
        );
        assert!(
            growth <= bound,
            "{shape:?} with {sessions} sessions: heap grew {growth} bytes for a slow queue of {queued}"
        );
    }
}

/// Makes room for `needed` open files (clients and sessions).
#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable `rlimit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur < needed {
        limit.rlim_cur = needed.min(limit.rlim_max);
        // SAFETY: `limit` is a live `rlimit`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

#[cfg(not(unix))]
fn raise_fd_limit(_: u64) {}
