//! Hostile conditions that need the real `server-app` as its own process:
//! SIGTERM while 50 clients stream pipelined messages, and a server whose
//! file-descriptor limit is lower than the number of its clients.
//!
//! As in `apps.rs`, through `integration_tests::process`: the binary is
//! built once per test process (same profile as this test) and found in
//! this test's own target folder; the server listens on `127.0.0.1` port 0
//! and the test reads the port from its `Listening on` line; every wait is
//! bounded; every child is killed by its own PID and reaped by a guard when
//! the test ends, passing or failing.
//!
//! Unix only: every test here stops the server with SIGTERM, and the fd
//! test needs Linux (`RLIMIT_NOFILE`, `/proc`). Windows has no signal to
//! send to one child; its shutdown path is tested in-process (`sessions.rs`,
//! `hostile.rs`) and by `server-app`'s unit test of its stop requests.
#![cfg(unix)]

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(target_os = "linux")]
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration_tests::process::{self, LIMIT, Proc};
use integration_tests::wait_until;

/// How often a bounded wait looks at its condition again (a poll interval,
/// never a synchronisation: each loop ends on the condition itself).
const POLL: Duration = Duration::from_millis(5);

/// The reply suffix server-app appends by default.
const SUFFIX: &[u8] = b" - Receive Completed";

/// Starts server-app on a free loopback port with `extra` flags; with
/// `nofile`, the child's soft RLIMIT_NOFILE is lowered to it before exec.
/// Returns it and its address.
fn start_server(extra: &[&str], nofile: Option<u64>) -> (Proc, SocketAddr) {
    let mut command = process::server_command(extra);
    if let Some(soft) = nofile {
        process::lower_nofile_in_child(&mut command, soft);
    }
    let mut server = Proc::spawn("server-app", &mut command);
    let port = server.listening_port();
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The open fd numbers of process `pid` (our own child).
#[cfg(target_os = "linux")]
fn fd_numbers_of(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The number of open fds of process `pid` (our own child).
#[cfg(target_os = "linux")]
fn fds_of(pid: u32) -> usize {
    fd_numbers_of(pid).len()
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
#[cfg(target_os = "linux")]
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
    let (server, addr) = start_server(&["--framing", "length-prefixed"], None);
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
    let server = server.finish_within(Duration::from_secs(10));
    let exited = signalled.elapsed();

    let stdout_tail = server.lines[server.lines.len().saturating_sub(20)..].join("\n");
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
    let written = seqs_in(&server.lines, "] To client : ");
    for (client, report) in reports.iter().enumerate() {
        let got: Vec<usize> = (0..report.replied).collect();
        assert_eq!(
            written[client], got,
            "client {client}: replies the server wrote vs replies the client got\n{context}"
        );
    }
    // Every request the server took in was answered, the one being handled
    // as the shutdown landed included, and nothing went to stderr.
    let received = seqs_in(&server.lines, "] From client - Len : ");
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
    let count = |want: &dyn Fn(&str) -> bool| server.lines.iter().filter(|l| want(l)).count();
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
        server.lines.last().map(String::as_str),
        Some("SERVER STOPPED"),
        "{context}"
    );
}

// ---------------------------------------------------------------------------
// Fewer fds than clients.

/// The server's soft limit on open fds.
#[cfg(target_os = "linux")]
const NOFILE: u64 = 64;
/// Clients open at once: more than the server has fds.
#[cfg(target_os = "linux")]
const FD_CLIENTS: usize = 150;
/// How long a starved client waits for its reply.
#[cfg(target_os = "linux")]
const STARVED_WAIT: Duration = Duration::from_secs(2);

/// The limit as `/proc/PID/limits` shows it: `Max open files  SOFT  HARD  files`.
#[cfg(target_os = "linux")]
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
    let (mut server, addr) =
        start_server(&["--quiet", "--framing", "length-prefixed"], Some(NOFILE));
    let pid = server.pid();
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
    let server = server.finish_within(LIMIT);
    assert!(server.status.success(), "{server:#?}");
    assert_eq!(
        server.lines.last().map(String::as_str),
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
    let (server, addr) = start_server(
        &["--quiet", "--framing", "length-prefixed", "--suffix", ""],
        None,
    );
    let mut stream = connect(addr, LIMIT).expect("connect");
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
    let server = server.finish_within(LIMIT);
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
