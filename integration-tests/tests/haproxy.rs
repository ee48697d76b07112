//! A real balancer: HAProxy (Debian package `haproxy`) on loopback in front
//! of two `server-app --proxy-protocol` instances, with `send-proxy-v2`.
//!
//! - 100 clients at once through HAProxy: both instances serve sessions, and
//!   every session sees its client's own address (127.0.0.1 and the client's
//!   source port), not HAProxy's.
//! - A rolling restart: SIGTERM to one instance while 20 clients pipeline
//!   lines through HAProxy. Every line that instance read is answered, each
//!   of its clients gets a prefix of its replies and then a clean end of
//!   stream, the instance exits 0, and new connections all go to the other.
//!
//! Without `haproxy` the tests print a note and pass, unless `CI` is set,
//! when they fail. Every child (HAProxy, the servers) is killed by its own
//! PID when its guard drops; every socket has timeouts; every wait is
//! bounded; only 127.0.0.1 is used.
//!
//! Linux only: HAProxy is one of the real peers CI installs on Linux (see
//! README, Platforms), and the rolling restart is a SIGTERM.
#![cfg(target_os = "linux")]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::process::{self, LIMIT, Proc};
use integration_tests::{read_line, wait_until, write_all};

/// The reply suffix server-app appends by default.
const SUFFIX: &str = " - Receive Completed";

/// Lines a pipelining client writes before it reads their replies.
const BATCH: usize = 8;

/// The `haproxy` binary: on PATH, else where Debian puts it
/// (`/usr/sbin/haproxy`, which a non-root PATH may leave out). `None`
/// (with a note) when it is missing and CI is not set; a failure under CI.
fn haproxy() -> Option<PathBuf> {
    let found = process::find_program("haproxy", &["/usr/sbin", "/usr/local/sbin"]);
    if found.is_none() {
        process::fail_if_ci("haproxy", "haproxy (apt-get install haproxy)");
        eprintln!("SKIPPED: haproxy is not installed (Debian: apt-get install haproxy)");
    }
    found
}

/// One `server-app --proxy-protocol --framing lines` on 127.0.0.1, port 0,
/// not quiet: its `Connected to ADDR` lines show the peer each session saw
/// and its `String : TEXT` lines each line it read.
struct Backend {
    proc: Proc,
    port: u16,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let mut proc = Proc::spawn(
            name,
            &mut process::server_command(&["--proxy-protocol", "--framing", "lines"]),
        );
        let port = proc.listening_port();
        proc.wait_line(|l| l.starts_with("Workers: ") && l.ends_with(", PROXY protocol expected"));
        Backend { proc, port }
    }

    /// Whether this instance read the line `text`.
    fn read_line_text(&self, text: &str) -> bool {
        let tail = format!(", String : {text}");
        self.proc.has_line(|l| l.ends_with(&tail))
    }

    /// How many lines this instance read whose text starts with `prefix`.
    fn count_read(&self, prefix: &str) -> usize {
        let needle = format!(", String : {prefix}");
        self.proc
            .lines()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// The source ports of every session's peer, all of which must be
    /// 127.0.0.1.
    fn peer_ports(&self) -> Vec<u16> {
        self.proc
            .lines()
            .iter()
            .filter_map(|l| l.strip_prefix("Connected to "))
            .map(|peer| {
                let addr: SocketAddr = peer
                    .parse()
                    .unwrap_or_else(|e| panic!("bad peer {peer:?}: {e}"));
                assert_eq!(addr.ip().to_string(), "127.0.0.1", "peer {peer}");
                addr.port()
            })
            .collect()
    }
}

/// HAProxy in front of two backends.
struct Cluster {
    backends: [Backend; 2],
    frontend: SocketAddr,
    // Declared last: dropped (killed) after the checks that read the rest.
    _haproxy: Proc,
}

impl Cluster {
    /// Starts both instances, then HAProxy on a free loopback port (a few
    /// attempts, should another process take the port first), and waits
    /// until a line goes through.
    fn start(haproxy: &Path, tag: &str) -> Cluster {
        let backends = [
            Backend::start("server-app A"),
            Backend::start("server-app B"),
        ];
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let mut failures = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let config = dir.join(format!(
                "haproxy-{}-{tag}-{attempt}.cfg",
                std::process::id()
            ));
            std::fs::write(&config, haproxy_config(port, &backends))
                .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
            let config_arg = config.to_str().expect("UTF-8 temp path");
            let mut proc = Proc::spawn(
                "haproxy",
                Command::new(haproxy).args(["-f", config_arg, "-db"]),
            );
            let frontend = SocketAddr::from(([127, 0, 0, 1], port));
            if let Some(()) = wait_ready(&mut proc, frontend) {
                return Cluster {
                    backends,
                    frontend,
                    _haproxy: proc,
                };
            }
            let _ = writeln!(failures, "attempt {attempt}: {}", proc.describe());
        }
        panic!("haproxy did not start:\n{failures}");
    }
}

/// A loopback port free a moment ago (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// TCP mode, round robin over both instances, a PROXY v2 header on every
/// connection to them. A plain TCP health check every 100 ms marks a
/// stopped instance down (HAProxy 2.6 connects and closes before any
/// header: server-app drops those as rejected PROXY connections, and they
/// never become sessions); `redispatch` sends a connection refused in the
/// meantime to the other instance.
fn haproxy_config(port: u16, backends: &[Backend; 2]) -> String {
    format!(
        "global
    maxconn 1024
    # Without SO_REUSEPORT a port another process holds (the other test's
    # HAProxy, say) fails the bind, and `Cluster::start` tries another,
    # instead of two HAProxies sharing one port.
    noreuseport

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1

frontend front
    bind 127.0.0.1:{port}
    default_backend instances

backend instances
    balance roundrobin
    default-server send-proxy-v2 check inter 100ms fall 2 rise 1
    server a 127.0.0.1:{}
    server b 127.0.0.1:{}
",
        backends[0].port, backends[1].port
    )
}

/// Waits until a line goes through HAProxy and back; `None` if HAProxy
/// exits first (it could not bind, say).
fn wait_ready(proc: &mut Proc, frontend: SocketAddr) -> Option<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if !proc.is_running() {
            proc.wait_exit();
            return None;
        }
        if let Ok(stream) = TcpStream::connect_timeout(&frontend, LIMIT) {
            // A connection HAProxy accepted before it could pass it on may
            // be reset: tried again until the deadline below.
            if let Ok(reply) = try_exchange(with_timeouts(stream), "ready") {
                assert_eq!(reply, format!("ready{SUFFIX}"));
                return Some(());
            }
        }
        assert!(
            Instant::now() < deadline,
            "haproxy did not accept on {frontend} within {LIMIT:?}\n{}",
            proc.describe()
        );
        // A poll interval; the loop ends on HAProxy's own readiness.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects to HAProxy's frontend.
fn connect(frontend: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&frontend, LIMIT)
        .unwrap_or_else(|e| panic!("connect {frontend}: {e}"));
    with_timeouts(stream)
}

/// Sends one line and reads one line back, or says why not.
fn try_exchange(mut stream: TcpStream, text: &str) -> std::io::Result<String> {
    stream.write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches('\n').to_owned())
}

/// Sends one line and reads one line back.
fn exchange(stream: &mut TcpStream, text: &str) -> String {
    write_all(stream, format!("{text}\n").as_bytes());
    String::from_utf8(read_line(stream)).expect("UTF-8 reply")
}

#[test]
fn haproxy_spreads_100_clients_over_both_instances_and_each_sees_its_client() {
    let Some(haproxy) = haproxy() else { return };
    let cluster = Cluster::start(&haproxy, "spread");
    const CLIENTS: usize = 100;

    // All 100 open at once, so that their source ports are distinct.
    let mut streams: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(cluster.frontend)).collect();
    let ports: Vec<u16> = streams
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        write_all(stream, format!("hello {i}\n").as_bytes());
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let reply = String::from_utf8(read_line(stream)).expect("UTF-8 reply");
        assert_eq!(reply, format!("hello {i}{SUFFIX}"));
    }
    drop(streams);

    // Which instance read each client's line (each prints it before it
    // replies; the reader thread may lag a little).
    let [a, b] = &cluster.backends;
    let owner = |i: usize| -> Vec<usize> {
        let text = format!("hello {i}");
        [a, b]
            .iter()
            .enumerate()
            .filter(|(_, backend)| backend.read_line_text(&text))
            .map(|(n, _)| n)
            .collect()
    };
    let all_seen = wait_until(LIMIT, || (0..CLIENTS).all(|i| !owner(i).is_empty()));
    assert!(
        all_seen,
        "not every line was printed by an instance\n{}\n{}",
        a.proc.describe(),
        b.proc.describe()
    );
    let mut served = [0usize; 2];
    let peers = [a.peer_ports(), b.peer_ports()];
    for (i, port) in ports.iter().enumerate() {
        let owners = owner(i);
        assert_eq!(owners.len(), 1, "client {i}: read by {owners:?}");
        let n = owners[0];
        served[n] += 1;
        // The session that read client i's line saw client i's own
        // address: 127.0.0.1 (checked in `peer_ports`) and its port.
        assert!(
            peers[n].contains(port),
            "client {i} (127.0.0.1:{port}) was served by instance {n}, whose sessions saw {:?}",
            peers[n]
        );
    }
    println!(
        "100 clients through haproxy: instance A served {}, B {}",
        served[0], served[1]
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "one instance served no client: {served:?}"
    );
}

/// How a pipelining client's run ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server side closed: a clean end of stream after whole replies.
    Eof,
    /// The test told it to stop: it closed its write side and read every
    /// reply, then a clean end of stream.
    Stopped,
    /// Anything else, described.
    Failed(String),
}

#[derive(Debug)]
struct Outcome {
    id: usize,
    sent: usize,
    replies: usize,
    end: End,
}

/// One reply line, the end of stream, or a failure.
enum Reply {
    Line(String),
    Eof,
    Failed(String),
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => Reply::Eof,
        Ok(_) if line.last() == Some(&b'\n') => {
            line.pop();
            match String::from_utf8(line) {
                Ok(text) => Reply::Line(text),
                Err(e) => Reply::Failed(format!("reply not UTF-8: {e}")),
            }
        }
        Ok(_) => Reply::Failed(format!(
            "end of stream inside a line: {:?}",
            String::from_utf8_lossy(&line)
        )),
        Err(e) => Reply::Failed(format!("read: {e}")),
    }
}

/// A client that writes batches of lines `c{id} m{k}` and reads each
/// batch's replies, checking each, until the server side closes or `stop`.
fn pipelining_client(
    id: usize,
    frontend: SocketAddr,
    progress: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let mut stream = connect(frontend);
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let (mut sent, mut replies) = (0usize, 0usize);
    let deadline = Instant::now() + 3 * LIMIT;
    let outcome = |sent, replies, end| Outcome {
        id,
        sent,
        replies,
        end,
    };
    let check = |text: String, replies: &mut usize| -> Option<End> {
        let want = format!("c{id} m{replies}{SUFFIX}");
        if text != want {
            return Some(End::Failed(format!(
                "reply {replies} was {text:?}, expected {want:?}"
            )));
        }
        *replies += 1;
        progress.store(*replies, Ordering::Release);
        None
    };
    loop {
        if stop.load(Ordering::Acquire) {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Bounded: `sent` replies at most, then the end.
            for _ in 0..=sent {
                match read_reply(&mut reader) {
                    Reply::Line(text) => {
                        if let Some(end) = check(text, &mut replies) {
                            return outcome(sent, replies, end);
                        }
                    }
                    Reply::Eof => return outcome(sent, replies, End::Stopped),
                    Reply::Failed(e) => return outcome(sent, replies, End::Failed(e)),
                }
            }
            return outcome(sent, replies, End::Failed("more replies than lines".into()));
        }
        if Instant::now() > deadline {
            return outcome(sent, replies, End::Failed("still running".into()));
        }
        let batch: String = (sent..sent + BATCH)
            .map(|k| format!("c{id} m{k}\n"))
            .collect();
        if let Err(e) = stream.write_all(batch.as_bytes()) {
            return outcome(sent, replies, End::Failed(format!("write: {e}")));
        }
        sent += BATCH;
        while replies < sent {
            match read_reply(&mut reader) {
                Reply::Line(text) => {
                    if let Some(end) = check(text, &mut replies) {
                        return outcome(sent, replies, end);
                    }
                }
                Reply::Eof => return outcome(sent, replies, End::Eof),
                Reply::Failed(e) => return outcome(sent, replies, End::Failed(e)),
            }
        }
    }
}

#[test]
fn sigterm_to_one_instance_is_a_rolling_restart_that_loses_no_reply() {
    let Some(haproxy) = haproxy() else { return };
    let mut cluster = Cluster::start(&haproxy, "rolling");
    const CLIENTS: usize = 20;
    let frontend = cluster.frontend;

    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicUsize>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut clients: Vec<Option<JoinHandle<Outcome>>> = progress
        .iter()
        .enumerate()
        .map(|(id, progress)| {
            let (progress, stop) = (Arc::clone(progress), Arc::clone(&stop));
            Some(std::thread::spawn(move || {
                pipelining_client(id, frontend, progress, stop)
            }))
        })
        .collect();
    // A guard of sorts: whatever happens below, the clients stop.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));

    // Every client mid-stream: two batches answered, more on the way.
    let flowing = wait_until(LIMIT, || {
        progress
            .iter()
            .all(|p| p.load(Ordering::Acquire) >= 2 * BATCH)
    });
    assert!(flowing, "not every client got going through haproxy");
    // Which instance serves which client: the one that read its lines.
    let mut owner = vec![None; CLIENTS];
    let known = wait_until(LIMIT, || {
        for (id, slot) in owner.iter_mut().enumerate() {
            if slot.is_none() {
                let first = format!("c{id} m0");
                *slot = (0..2).find(|&n| cluster.backends[n].read_line_text(&first));
            }
        }
        owner.iter().all(Option::is_some)
    });
    assert!(known, "not every client's first line was printed");
    let owner: Vec<usize> = owner.into_iter().map(Option::unwrap).collect();
    let victims: Vec<usize> = (0..CLIENTS).filter(|&id| owner[id] == 0).collect();
    let survivors: Vec<usize> = (0..CLIENTS).filter(|&id| owner[id] == 1).collect();
    assert!(
        !victims.is_empty() && !survivors.is_empty(),
        "round robin left an instance without clients: {owner:?}"
    );

    // The rolling restart of instance A.
    cluster.backends[0].proc.signal(libc::SIGTERM);
    let mut outcomes = Vec::new();
    for &id in &victims {
        let outcome = clients[id]
            .take()
            .expect("client")
            .join()
            .expect("client thread");
        outcomes.push(outcome);
    }
    let status = cluster.backends[0].proc.wait_exit();
    let a = &cluster.backends[0];
    assert!(
        status.success(),
        "instance A: {status}\n{}",
        a.proc.describe()
    );
    let lines = a.proc.lines();
    assert!(
        lines
            .iter()
            .any(|l| l == "Received SIGTERM, shutting down..")
            && lines.last().map(String::as_str) == Some("SERVER STOPPED"),
        "{}",
        a.proc.describe()
    );
    for outcome in &outcomes {
        let read = a.count_read(&format!("c{} m", outcome.id));
        assert!(
            outcome.end == End::Eof
                && outcome.replies >= 2 * BATCH
                && outcome.replies <= outcome.sent
                && outcome.replies == read,
            "client {} of the stopped instance: {outcome:?}; the instance read {read} of its lines",
            outcome.id
        );
    }
    println!(
        "SIGTERM to A with {} clients mid-stream: replies {:?}",
        outcomes.len(),
        outcomes
            .iter()
            .map(|o| (o.replies, o.sent))
            .collect::<Vec<_>>()
    );

    // The other instance's clients were never disturbed: stopped, they get
    // every reply and then the end.
    stop.store(true, Ordering::Release);
    for &id in &survivors {
        let outcome = clients[id]
            .take()
            .expect("client")
            .join()
            .expect("client thread");
        assert!(
            outcome.end == End::Stopped && outcome.replies == outcome.sent,
            "client {id} of the running instance: {outcome:?}"
        );
    }

    // New connections: all through to B, A being gone.
    for i in 0..CLIENTS {
        let mut stream = connect(frontend);
        assert_eq!(
            exchange(&mut stream, &format!("after {i}")),
            format!("after {i}{SUFFIX}")
        );
    }
    let b = &cluster.backends[1];
    let all_b = wait_until(LIMIT, || {
        (0..CLIENTS).all(|i| b.read_line_text(&format!("after {i}")))
    });
    assert!(
        all_b,
        "B did not read every new line\n{}",
        b.proc.describe()
    );
}
