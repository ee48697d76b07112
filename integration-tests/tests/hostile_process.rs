//! Hostile conditions that need the real `server-app` as its own process:
//! SIGTERM while 50 clients stream pipelined messages, and a server whose
//! file-descriptor limit is lower than the number of its clients.
//!
//! As in `apps.rs`: the binary is built once per test process (same profile
//! as this test) and found in this test's own target folder; the server
//! listens on `127.0.0.1` port 0 and the test reads the port from its
//! `Listening on` line; every wait is bounded; every child is killed by its
//! own PID and reaped by a guard when the test ends, passing or failing.

// Unsafe code here is two libc calls on our own children: kill(2) by PID,
// and setrlimit(2) in a forked child before exec (async-signal-safe).
#![allow(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any one wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

/// How often a bounded wait looks at its condition again (a poll interval,
/// never a synchronisation: each loop ends on the condition itself).
const POLL: Duration = Duration::from_millis(5);

/// The reply suffix server-app appends by default.
const SUFFIX: &[u8] = b" - Receive Completed";

/// Builds server-app once; returns the folder holding it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test runs as <target>/<profile>/deps/hostile_process-HASH.
        let exe = std::env::current_exe().expect("own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target folder")
            .to_path_buf();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace folder");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "server-app"])
            .current_dir(workspace);
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build failed: {status}");
        assert!(
            dir.join("server-app").exists(),
            "server-app not found in {}",
            dir.display()
        );
        dir
    })
}

/// server-app as a child, its stdout read line by line into a channel and
/// its stderr read whole, by threads. Dropping it kills (by its own PID)
/// and reaps the child.
struct Server {
    child: Child,
    port: u16,
    lines: Receiver<String>,
    /// Every stdout line taken from `lines` so far.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts server-app on a free loopback port with `extra` flags; with
    /// `nofile`, the child's soft RLIMIT_NOFILE is lowered to it before exec.
    fn start(extra: &[&str], nofile: Option<u64>) -> Server {
        let mut command = Command::new(bin_dir().join("server-app"));
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(soft) = nofile {
            lower_nofile_in_child(&mut command, soft);
        }
        let mut child = command.spawn().expect("start server-app");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }),
            thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr_pipe.read_to_string(&mut text);
                sink.lock().unwrap().push_str(&text);
            }),
        ];
        let mut server = Server {
            child,
            port: 0,
            lines,
            seen: Vec::new(),
            stderr,
            readers,
        };
        let line = server.wait_line(|l| l.starts_with("Listening on "));
        let addr: SocketAddr = line["Listening on ".len()..]
            .split(", ")
            .next()
            .expect("an address")
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        assert!(addr.ip().is_loopback(), "{line}");
        assert_ne!(addr.port(), 0, "{line}");
        server.port = addr.port();
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for a stdout line that satisfies `want`; returns it.
    fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "server-app: no such line within {LIMIT:?}; stdout so far:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "server-app: stdout closed before the line came ({:?}); stdout:\n{}\nstderr:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Whether the child is still running.
    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` to this child (by its own PID, nothing else).
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes no pointers; the PID is our own child's,
        // which cannot be reaped (and its PID reused) before `self` drops.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits (bounded by `within`) for the child to exit, then for its
    /// output to end; returns the status, all of stdout, and stderr.
    fn finish(mut self, within: Duration) -> Finished {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "server-app still running after {within:?}; stdout so far:\n{}",
                self.seen.join("\n")
            );
            thread::sleep(POLL);
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        self.seen.extend(self.lines.try_iter());
        Finished {
            status,
            stdout: std::mem::take(&mut self.seen),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Kills by this child's PID only; harmless once it has exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished server left behind.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

/// Lowers the soft RLIMIT_NOFILE of `command`'s child to `soft` (the hard
/// limit stays), between fork and exec.
fn lower_nofile_in_child(command: &mut Command, soft: u64) {
    use std::os::unix::process::CommandExt;

    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a live, writable `rlimit`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    let lowered = libc::rlimit {
        rlim_cur: soft.min(current.rlim_max),
        rlim_max: current.rlim_max,
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes one setrlimit(2) call
    // on a value copied into it, and allocates and locks nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// The open fd numbers of process `pid` (our own child).
fn fd_numbers_of(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The number of open fds of process `pid` (our own child).
fn fds_of(pid: u32) -> usize {
    fd_numbers_of(pid).len()
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// `payload` framed for `--framing length-prefixed`: a 2-byte little-endian
/// size that counts the header, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let size = u16::try_from(payload.len() + 2).expect("frame fits u16");
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one length-prefixed frame; `Ok(None)` at a clean end of stream
/// between frames. An end inside a frame is an error.
fn read_frame(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside a frame header",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let size = usize::from(u16::from_le_bytes(header));
    if size < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame size {size} below the header's 2 bytes"),
        ));
    }
    let mut payload = vec![0; size - 2];
    reader.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// A socket to `addr` with read and write timeouts.
fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One echo over a fresh connection, as a well-behaved client does it.
fn assert_served(addr: SocketAddr, payload: &[u8]) {
    let mut stream = connect(addr, LIMIT).expect("connect a well-behaved client");
    stream.write_all(&frame(payload)).expect("write request");
    let reply = read_frame(&mut stream)
        .expect("read reply")
        .expect("a reply before the end of stream");
    assert_eq!(reply, [payload, SUFFIX].concat());
}

// ---------------------------------------------------------------------------
// SIGTERM while 50 clients stream.

const CLIENTS: usize = 50;
/// Requests each client keeps in flight.
const WINDOW: usize = 8;
/// Replies each client must have had before the signal.
const READY_AFTER: usize = 20;
/// Bound on the requests of one client (the signal comes long before).
const MAX_REQUESTS: usize = 1_000_000;

/// The payload of request `seq` of client `client`: numbered, of a length
/// that varies with `seq`, so a lost, repeated, reordered or cut reply
/// cannot match.
fn request_payload(client: usize, seq: usize) -> Vec<u8> {
    let mut payload = format!("client {client:02} request {seq:07} ").into_bytes();
    let fill = (seq * 7 + client) % 61;
    payload.extend((0..fill).map(|i| b'a' + ((seq + i) % 26) as u8));
    payload
}

/// What one streaming client saw.
#[derive(Debug)]
struct StreamReport {
    sent: usize,
    replied: usize,
}

/// Streams numbered requests with `WINDOW` in flight until `stop`, then
/// reads until the server closes. Every reply must be the reply to the next
/// unanswered request; the stream must end with a clean end of stream.
fn stream_client(
    client: usize,
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: &AtomicUsize,
) -> Result<StreamReport, String> {
    let mut stream = connect(addr, LIMIT).map_err(|e| format!("connect: {e}"))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| format!("clone socket: {e}"))?,
    );
    let deadline = Instant::now() + 3 * LIMIT;
    let (mut sent, mut replied) = (0, 0);
    loop {
        let at = |what: &str, sent: usize, replied: usize| {
            format!(
                "client {client}: {what} (sent {sent}, replied {replied}, stopped {})",
                stop.load(Ordering::SeqCst)
            )
        };
        if Instant::now() > deadline {
            return Err(at("still streaming at the deadline", sent, replied));
        }
        // Top up the window in one write, unless the signal has been sent.
        let mut batch = Vec::new();
        while sent - replied < WINDOW && sent < MAX_REQUESTS && !stop.load(Ordering::SeqCst) {
            batch.extend(frame(&request_payload(client, sent)));
            sent += 1;
        }
        if !batch.is_empty() {
            stream
                .write_all(&batch)
                .map_err(|e| at(&format!("write: {e}"), sent, replied))?;
        }
        match read_frame(&mut reader) {
            Ok(Some(reply)) => {
                if replied == sent {
                    return Err(at("a reply to no request", sent, replied));
                }
                let want = [request_payload(client, replied).as_slice(), SUFFIX].concat();
                if reply != want {
                    return Err(at(
                        &format!(
                            "reply {replied} is {:?}, want {:?}",
                            String::from_utf8_lossy(&reply),
                            String::from_utf8_lossy(&want)
                        ),
                        sent,
                        replied,
                    ));
                }
                replied += 1;
                if replied == READY_AFTER {
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(None) if stop.load(Ordering::SeqCst) => {
                return Ok(StreamReport { sent, replied });
            }
            Ok(None) => return Err(at("end of stream before the signal", sent, replied)),
            Err(e) => return Err(at(&format!("read: {e} ({:?})", e.kind()), sent, replied)),
        }
    }
}

/// The request numbers of each client in the server's lines that contain
/// `marker` (`"] From client - Len : "` for `on_received`, `"] To client : "`
/// for `on_sent`), in the order printed.
fn seqs_in(lines: &[String], marker: &str) -> Vec<Vec<usize>> {
    let mut seqs = vec![Vec::new(); CLIENTS];
    for line in lines.iter().filter(|l| l.contains(marker)) {
        let Some(at) = line.find(": client ") else {
            continue;
        };
        let mut words = line[at + 2..].split(' ');
        let (Some("client"), Some(client), Some("request"), Some(seq)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            panic!("unexpected server line {line:?}");
        };
        let client: usize = client.parse().expect("client number");
        seqs[client].push(seq.parse().expect("request number"));
    }
    seqs
}

/// Issue 3: SIGTERM to server-app while 50 clients are mid-stream.
///
/// Each client gets, in order and intact, a reply to every request up to
/// some point and none after (a prefix: nothing lost or cut in the middle),
/// then a clean end of stream (read returns 0, not a reset). The server
/// runs without `--quiet` so that its own lines say which requests its
/// `on_received` saw and which replies its `on_sent` wrote: for every
/// client, the replies written are exactly the replies the client got (every
/// answer arrived), and the requests received are exactly those too (a
/// reply sent from a callback while the shutdown lands is still queued and
/// drained). Every session
/// closes with reason `shutdown`, and the process exits 0 within the drain
/// timeout and a margin.
#[test]
fn sigterm_mid_stream_delivers_every_queued_reply_then_closes_cleanly() {
    let server = Server::start(&["--framing", "length-prefixed"], None);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let clients: Vec<JoinHandle<Result<StreamReport, String>>> = (0..CLIENTS)
        .map(|client| {
            let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
            thread::spawn(move || stream_client(client, addr, &stop, &ready))
        })
        .collect();

    // Mid-stream: every client has had replies and keeps its window full.
    let all_ready = wait_until(LIMIT, || {
        ready.load(Ordering::SeqCst) == CLIENTS || clients.iter().any(|c| c.is_finished())
    }) && ready.load(Ordering::SeqCst) == CLIENTS;
    // The clients stop writing before the signal leaves, so that no request
    // of theirs is still on its way when the server closes.
    stop.store(true, Ordering::SeqCst);
    if !all_ready {
        let ended: Vec<_> = clients
            .into_iter()
            .filter(|c| c.is_finished())
            .map(|c| c.join().expect("client thread"))
            .collect();
        panic!(
            "only {} of {CLIENTS} clients had {READY_AFTER} replies within {LIMIT:?}; ended: {ended:?}",
            ready.load(Ordering::SeqCst)
        );
    }
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);

    let results: Vec<Result<StreamReport, String>> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let clients_done = signalled.elapsed();
    // drain_timeout is 5 s; the listener waits a second more for closes.
    let server = server.finish(Duration::from_secs(10));
    let exited = signalled.elapsed();

    let stdout_tail = server.stdout[server.stdout.len().saturating_sub(20)..].join("\n");
    let context = format!(
        "server: {}, stderr:\n{}\nlast lines of stdout:\n{stdout_tail}",
        server.status, server.stderr
    );
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} clients failed:\n{failures:#?}\n{context}",
        failures.len()
    );
    let reports: Vec<&StreamReport> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let sent: usize = reports.iter().map(|r| r.sent).sum();
    let replied: usize = reports.iter().map(|r| r.replied).sum();
    let unanswered: Vec<usize> = reports.iter().map(|r| r.sent - r.replied).collect();
    eprintln!(
        "sigterm: {CLIENTS} clients sent {sent}, got {replied} replies; unanswered per client \
         {unanswered:?}; clients saw the end {clients_done:?} and the server exited {exited:?} \
         after the signal"
    );
    assert!(replied > CLIENTS * 10, "only {replied} replies");
    assert!(
        unanswered.iter().all(|&n| n <= WINDOW),
        "more unanswered than were ever in flight: {unanswered:?}"
    );

    // Every reply the server wrote arrived: the drain promise.
    let written = seqs_in(&server.stdout, "] To client : ");
    for (client, report) in reports.iter().enumerate() {
        let got: Vec<usize> = (0..report.replied).collect();
        assert_eq!(
            written[client], got,
            "client {client}: replies the server wrote vs replies the client got\n{context}"
        );
    }
    // Every request the server took in was answered, the one being handled
    // as the shutdown landed included, and nothing went to stderr.
    let received = seqs_in(&server.stdout, "] From client - Len : ");
    for (client, report) in reports.iter().enumerate() {
        assert_eq!(
            received[client],
            (0..report.replied).collect::<Vec<_>>(),
            "client {client}: requests the server received vs replies the client got\n{context}"
        );
    }
    assert_eq!(server.stderr.lines().count(), 0, "{context}");

    assert!(server.status.success(), "{context}");
    assert!(exited < Duration::from_secs(10), "exit took {exited:?}");
    let count = |want: &dyn Fn(&str) -> bool| server.stdout.iter().filter(|l| want(l)).count();
    assert_eq!(
        count(&|l| l == "Received SIGTERM, shutting down.."),
        1,
        "{context}"
    );
    assert_eq!(
        count(&|l| l.starts_with("Connected to 127.0.0.1:")),
        CLIENTS,
        "{context}"
    );
    // The clients never closed first: every session ended by the shutdown.
    assert_eq!(
        count(&|l| l.starts_with("Disconnected from 127.0.0.1:") && l.ends_with(" (shutdown)")),
        CLIENTS,
        "{context}"
    );
    assert_eq!(
        server.stdout.last().map(String::as_str),
        Some("SERVER STOPPED"),
        "{context}"
    );
}

// ---------------------------------------------------------------------------
// Fewer fds than clients.

/// The server's soft limit on open fds.
const NOFILE: u64 = 64;
/// Clients open at once: more than the server has fds.
const FD_CLIENTS: usize = 150;
/// How long a starved client waits for its reply.
const STARVED_WAIT: Duration = Duration::from_secs(2);

/// The limit as `/proc/PID/limits` shows it: `Max open files  SOFT  HARD  files`.
fn soft_nofile_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Issue 3: a server with fewer fds than clients. With RLIMIT_NOFILE at 64,
/// 150 clients connect at once and each asks for one echo: some are served,
/// the rest are not (accept fails for lack of fds), the server never holds
/// more fds than its limit, and it does not die. Once the clients close,
/// its fds come back to where they started, a new client is served within
/// seconds, and SIGTERM still ends it with status 0.
#[cfg(target_os = "linux")]
#[test]
fn server_with_fewer_fds_than_clients_keeps_serving() {
    let mut server = Server::start(&["--quiet", "--framing", "length-prefixed"], Some(NOFILE));
    let (addr, pid) = (server.addr(), server.pid());
    assert_eq!(soft_nofile_of(pid), Some(NOFILE), "limit not applied");
    assert_served(addr, b"before");
    // Wait for that session's socket to close before taking the baseline.
    server.wait_line(|l| l.starts_with("Disconnected from "));
    let baseline = fds_of(pid);

    // Every client connects, asks once and waits; each hands its socket
    // back so that all stay open until every one has its answer.
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..FD_CLIENTS {
        let tx = tx.clone();
        thread::spawn(move || {
            let payload = format!("fd client {i}").into_bytes();
            let outcome = connect(addr, STARVED_WAIT).and_then(|mut stream| {
                stream.write_all(&frame(&payload))?;
                let reply = read_frame(&mut stream);
                Ok((stream, reply))
            });
            let _ = tx.send((i, payload, outcome));
        });
    }
    drop(tx);
    let mut open = Vec::new();
    let (mut served, mut starved, mut refused) = (0, 0, 0);
    for _ in 0..FD_CLIENTS {
        let (i, payload, outcome) = rx
            .recv_timeout(LIMIT)
            .expect("every client thread reports within the limit");
        match outcome {
            Ok((stream, Ok(Some(reply)))) => {
                assert_eq!(reply, [payload.as_slice(), SUFFIX].concat(), "client {i}");
                served += 1;
                open.push(stream);
            }
            // Not served while the server is out of fds: no reply in time,
            // or closed / reset before one.
            Ok((stream, Ok(None) | Err(_))) => {
                starved += 1;
                open.push(stream);
            }
            Err(_) => refused += 1,
        }
    }
    let peak = fds_of(pid);
    // Numbers at or above the limit can only be fds inherited from this
    // test process; the server's own all lie below it.
    let below_limit = fd_numbers_of(pid).iter().filter(|&&fd| fd < NOFILE).count();
    let crowded = started.elapsed();
    assert!(server.is_running(), "server-app died while out of fds");

    drop(open);
    let closed = Instant::now();
    let fds_back = wait_until(LIMIT, || fds_of(pid) <= baseline);
    let fds_back_after = closed.elapsed();
    let now = fds_of(pid);
    assert_served(addr, b"after the crowd");
    let recovered = closed.elapsed();
    eprintln!(
        "fd limit {NOFILE}: of {FD_CLIENTS} clients {served} served, {starved} not served, \
         {refused} not connected ({crowded:?}); server fds: {baseline} at rest, {peak} at the \
         peak ({below_limit} of them below the limit), {now} {fds_back_after:?} after the clients closed; a new client served \
         {recovered:?} after they closed"
    );
    assert!(served >= 1, "nobody served at all");
    assert!(
        served < FD_CLIENTS,
        "all {FD_CLIENTS} served: the fd limit never bit"
    );
    assert_eq!(
        below_limit,
        usize::try_from(NOFILE).unwrap(),
        "the server was never out of fds"
    );
    assert!(
        fds_back,
        "server fds {now}, not back to {baseline} within {LIMIT:?}"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "recovery took {recovered:?}"
    );
    assert!(server.is_running(), "server-app died");

    server.signal(libc::SIGTERM);
    let server = server.finish(LIMIT);
    assert!(server.status.success(), "{server:#?}");
    assert_eq!(
        server.stdout.last().map(String::as_str),
        Some("SERVER STOPPED"),
        "{server:#?}"
    );
    assert!(!server.stderr.contains("panicked"), "{server:#?}");
}

// ---------------------------------------------------------------------------
// SIGTERM with replies still in the kernel's send queue.

/// SIGTERM to server-app while a client that pipelined far ahead has
/// megabytes of replies still on their way (the server's socket send queue
/// is full and, by back-pressure, its receive queue holds requests it never
/// read). After the signal the client reads everything: it must get every
/// reply up to some point, intact, then a clean end of stream.
///
/// The session must not close its socket while unread request bytes remain
/// in its receive queue: Linux answers such a close(2) with a reset and
/// throws away every reply still in the send queue. It shuts down its write
/// side and reads to the peer's end of stream first (a lingering close).
#[test]
fn sigterm_with_a_full_send_queue_still_ends_cleanly() {
    let server = Server::start(
        &["--quiet", "--framing", "length-prefixed", "--suffix", ""],
        None,
    );
    let mut stream = connect(server.addr(), LIMIT).expect("connect");
    let payload = [b'x'; 998];
    let request = frame(&payload);
    // Write without reading until the server's back-pressure holds every
    // further write for a while (bounded in bytes and time).
    stream.set_nonblocking(true).expect("nonblocking");
    let (mut sent, mut stalled_since) = (0usize, None);
    let deadline = Instant::now() + LIMIT;
    while sent < 64 * 1024 * 1024 && Instant::now() < deadline {
        // A short write leaves the rest of this request to go first.
        match stream.write(&request[sent % request.len()..]) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                thread::sleep(POLL);
            }
            Err(e) => panic!("write after {sent} bytes: {e}"),
        }
    }
    // A partly written request would be cut by the close; it is not ours
    // to judge, so only whole replies are counted below.
    server.signal(libc::SIGTERM);
    stream.set_nonblocking(false).expect("blocking");
    let mut reader = BufReader::new(stream);
    let mut replies = 0usize;
    let end = loop {
        match read_frame(&mut reader) {
            Ok(Some(reply)) => {
                assert_eq!(reply, payload, "reply {replies}");
                replies += 1;
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let server = server.finish(LIMIT);
    eprintln!(
        "full send queue: sent {sent} bytes ({} requests), got {replies} replies, end {end:?}",
        sent / request.len()
    );
    assert!(server.status.success(), "{server:#?}");
    end.unwrap_or_else(|e| {
        panic!(
            "after {replies} replies the stream ended with {e} ({:?}), not a clean end",
            e.kind()
        )
    });
}
