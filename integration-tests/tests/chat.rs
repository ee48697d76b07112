//! The chat example's room logic over real sockets: fan-out to 200 clients,
//! a slow consumer that must not slow the room, churn in the middle of a
//! broadcast, and the commands.
//!
//! The chat runs in-process (`room::Chat` on a port-0 listener); clients are
//! blocking `std::net` streams on threads, each with read timeouts, and
//! every loop is bounded in count and time.

// The test uses only part of the shared module.
#[allow(dead_code)]
#[path = "../../core/examples/chat/room.rs"]
mod room;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_std::task::{self, JoinHandle};
use session_core::{Framing, IpInformation, Listener, SessionConfig, ShutdownHandle};

use room::{Chat, ChatStats};

/// Held by each test for its whole run: they load the machine with hundreds
/// of threads, and the slow-consumer test's timings mean something only
/// when nothing else runs beside it.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest a single read may block.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

struct ChatServer {
    addr: SocketAddr,
    stats: Arc<ChatStats>,
    stop: ShutdownHandle,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl ChatServer {
    fn start(config: SessionConfig) -> ChatServer {
        let listener = task::block_on(async {
            let ip = IpInformation::resolve("127.0.0.1", 0).await?;
            Listener::bind(&ip, config).await
        })
        .expect("bind a chat server on 127.0.0.1:0");
        let chat = Chat::new();
        ChatServer {
            addr: listener.local_addr(),
            stats: chat.stats(),
            stop: listener.shutdown_handle(),
            task: Some(task::spawn(chat.run(listener))),
        }
    }

    fn members(&self) -> usize {
        self.stats.members.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for `done` to hold; whether it did.
    fn wait(&self, timeout: Duration, done: impl Fn(&ChatStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.stats) {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        done(&self.stats)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task::block_on(async_std::future::timeout(Duration::from_secs(10), task));
        }
    }
}

fn lines_config() -> SessionConfig {
    SessionConfig {
        framing: Framing::Lines,
        max_frame_len: 4096,
        ..SessionConfig::default()
    }
}

/// A blocking line client.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    nick: String,
    /// The nick the server gave on connect.
    guest: String,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the chat");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            nick: String::new(),
            guest: String::new(),
        };
        let welcome = client.line();
        let nick = welcome
            .strip_prefix("* welcome, you are ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"));
        client.nick = nick.to_owned();
        client.guest = nick.to_owned();
        client
    }

    /// Connects and takes the nick `nick`, waiting for the confirmation.
    fn named(addr: SocketAddr, nick: &str) -> Client {
        let mut client = Client::connect(addr);
        client.send(&format!("/nick {nick}"));
        let confirm = format!("* {} is now {nick}", client.nick);
        client.expect(&confirm);
        client.nick = nick.to_owned();
        client
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: send {line:?}: {e}", self.nick));
    }

    /// The next line; `None` at end of stream.
    fn try_line(&mut self) -> io::Result<Option<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line.trim_end_matches('\n').to_owned())),
        }
    }

    fn line(&mut self) -> String {
        match self.try_line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{}: the server closed the connection", self.nick),
            Err(e) => panic!("{}: no line within {READ_TIMEOUT:?}: {e}", self.nick),
        }
    }

    /// Reads lines until `wanted`; fails after 10,000 other lines.
    fn expect(&mut self, wanted: &str) {
        for _ in 0..10_000 {
            if self.line() == wanted {
                return;
            }
        }
        panic!("{}: never got {wanted:?}", self.nick);
    }

    /// Reads until the server closes; fails if it does not within the timeout.
    fn expect_closed(&mut self) {
        for _ in 0..100_000 {
            match self.try_line() {
                Ok(None) => return,
                Ok(Some(_)) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{}: not closed: {e}", self.nick),
            }
        }
        panic!("{}: not closed after 100,000 lines", self.nick);
    }
}

/// A one-shot barrier with a deadline: a thread that fails before it never
/// leaves the others waiting for ever.
struct Gate {
    arrived: Mutex<usize>,
    all: Condvar,
    count: usize,
}

impl Gate {
    fn new(count: usize) -> Arc<Gate> {
        Arc::new(Gate {
            arrived: Mutex::new(0),
            all: Condvar::new(),
            count,
        })
    }

    fn arrive_and_wait(&self, timeout: Duration) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        if *arrived == self.count {
            self.all.notify_all();
        }
        let (arrived, result) = self
            .all
            .wait_timeout_while(arrived, timeout, |n| *n < self.count)
            .unwrap();
        assert!(
            !result.timed_out(),
            "only {} of {} clients reached the gate",
            *arrived,
            self.count
        );
    }
}

/// Checks one chat line `NICK: SEQ[ tail]` against the per-sender order:
/// every sender's numbers must arrive as 0, 1, 2, ... with none missing
/// or repeated. Returns false for lines that are not messages.
fn check_in_order(line: &str, next: &mut HashMap<String, u64>, me: &str) -> bool {
    let Some((nick, text)) = line.split_once(": ") else {
        return false;
    };
    if line.starts_with("* ") || line.starts_with("! ") {
        return false;
    }
    assert_ne!(nick, me, "{me} got its own line back: {line:?}");
    let seq: u64 = text
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{me}: unexpected line {line:?}"));
    let expected = next.entry(nick.to_owned()).or_insert(0);
    assert_eq!(
        seq, *expected,
        "{me}: from {nick} expected #{expected}, got #{seq} (lost, repeated or reordered)"
    );
    *expected += 1;
    true
}

/// Joins every thread; fails with the first panic's message.
fn join_all<T>(threads: Vec<thread::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for t in threads {
        match t.join() {
            Ok(value) => results.push(value),
            Err(payload) => failures.push(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            ),
        }
    }
    assert!(
        failures.is_empty(),
        "{} threads failed: {failures:?}",
        failures.len()
    );
    results
}

#[test]
fn two_hundred_clients_each_get_every_other_line_once_and_in_order() {
    let _serial = serial();
    const CLIENTS: usize = 200;
    const LINES: u64 = 50;
    let server = ChatServer::start(lines_config());
    let gate = Gate::new(CLIENTS);
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, gate) = (server.addr, Arc::clone(&gate));
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let nick = format!("c{n}");
                    let mut client = Client::named(addr, &nick);
                    gate.arrive_and_wait(Duration::from_secs(15));
                    for seq in 0..LINES {
                        client.send(&format!("{seq} from {nick}"));
                    }
                    let mut next = HashMap::new();
                    let wanted = (CLIENTS as u64 - 1) * LINES;
                    let mut got = 0;
                    for _ in 0..1_000_000 {
                        if got == wanted {
                            break;
                        }
                        if check_in_order(&client.line(), &mut next, &nick) {
                            got += 1;
                        }
                    }
                    assert_eq!(got, wanted, "{nick}: got {got} of {wanted} lines");
                    assert_eq!(next.len(), CLIENTS - 1);
                    assert!(next.values().all(|&n| n == LINES), "{nick}: {next:?}");
                })
                .unwrap()
        })
        .collect();
    join_all(threads);
    println!(
        "{CLIENTS} clients x {LINES} lines: {} deliveries in {:?}",
        server.stats.deliveries.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert_eq!(
        server.stats.messages.load(Ordering::Relaxed),
        CLIENTS as u64 * LINES
    );
}

/// Connects to `addr` from a socket whose kernel receive buffer is shrunk
/// before the handshake, so that the window it advertises stays small and a
/// peer that does not read backs up into the server's send queue quickly
/// instead of into kernel buffers. Through socket2, so it runs on every OS.
fn connect_with_small_receive_buffer(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("setsockopt SO_RCVBUF");
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    socket.into()
}

/// Sets a socket's kernel receive buffer (SO_RCVBUF) to `size` bytes.
fn set_receive_buffer(stream: &TcpStream, size: usize) {
    socket2::SockRef::from(stream)
        .set_recv_buffer_size(size)
        .expect("setsockopt SO_RCVBUF");
}

/// Lines a busy client may send ahead of the slowest line it has heard:
/// the room is only as fast as its readers, so senders that ran ahead
/// without limit would make every reader a slow consumer.
///
/// A sender waits for every other sender's lines, whose senders wait for
/// theirs in turn, so one reader has at most `2 * WINDOW + 1` unread lines of
/// each sender: 48 x 5 x 910 bytes = 218 KB, within the 256 KiB cap.
const WINDOW: u64 = 2;

/// How many lines of every other sender one client has heard, for its own
/// sender to wait on.
struct Progress {
    heard: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            heard: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    fn set(&self, heard: u64) {
        let mut current = self.heard.lock().unwrap();
        if heard > *current {
            *current = heard;
            self.changed.notify_all();
        }
    }

    fn wait_until(&self, heard: u64, timeout: Duration) {
        let current = self.heard.lock().unwrap();
        let (current, result) = self
            .changed
            .wait_timeout_while(current, timeout, |n| *n < heard)
            .unwrap();
        assert!(
            !result.timed_out(),
            "heard only {} lines of each other sender, waiting for {heard}",
            *current
        );
    }
}

/// Runs `busy` clients that each send `lines` long lines and read all the
/// others'; with `stalled`, one more client joins that never reads. Returns
/// how long the busy ones took, from the gate to the last one done.
fn busy_room(busy: usize, lines: u64, stalled: bool) -> Duration {
    let config = SessionConfig {
        max_send_queue: 256 * 1024,
        send_high_watermark: 128 * 1024,
        send_low_watermark: 64 * 1024,
        ..lines_config()
    };
    let server = ChatServer::start(config);
    let mut sleeper = stalled.then(|| {
        let stream = connect_with_small_receive_buffer(server.addr);
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
    });
    if stalled {
        assert!(server.wait(READ_TIMEOUT, |s| s.members.load(Ordering::Relaxed) == 1));
    }
    let gate = Gate::new(busy + 1);
    // Long lines: the stalled client must be sent more than the kernel
    // keeps for it (the server's send buffer autotunes up to
    // net.ipv4.tcp_wmem's maximum, 4 MiB by default) plus the 256 KiB cap.
    let padding = "x".repeat(900);
    let threads: Vec<_> = (0..busy)
        .map(|n| {
            let (addr, gate, padding) = (server.addr, Arc::clone(&gate), padding.clone());
            thread::spawn(move || {
                let nick = format!("b{n}");
                let mut client = Client::named(addr, &nick);
                gate.arrive_and_wait(Duration::from_secs(15));
                // The writer runs on its own thread so that reading never
                // waits for writing, as in a real client.
                let mut writer = client.writer.try_clone().unwrap();
                let progress = Progress::new();
                let heard = Arc::clone(&progress);
                let sender = thread::spawn(move || {
                    for seq in 0..lines {
                        heard.wait_until(seq.saturating_sub(WINDOW), READ_TIMEOUT);
                        writer
                            .write_all(format!("{seq} {padding}\n").as_bytes())
                            .unwrap();
                    }
                });
                let mut next = HashMap::new();
                let wanted = (busy as u64 - 1) * lines;
                let mut got = 0;
                for _ in 0..10_000_000 {
                    if got == wanted {
                        break;
                    }
                    if check_in_order(&client.line(), &mut next, &nick) {
                        got += 1;
                        if next.len() == busy - 1 {
                            progress.set(next.values().copied().min().unwrap_or(0));
                        }
                    }
                }
                sender.join().unwrap();
                assert_eq!(got, wanted, "{nick}: got {got} of {wanted}");
            })
        })
        .collect();
    // The clock starts when every busy client is in the room.
    gate.arrive_and_wait(Duration::from_secs(15));
    let started = Instant::now();
    join_all(threads);
    let took = started.elapsed();
    if let Some(sleeper) = sleeper.as_mut() {
        assert!(
            server.wait(READ_TIMEOUT, |s| s.slow_consumers.load(Ordering::Relaxed)
                >= 1),
            "the client that never reads was not closed as a slow consumer: {:?}",
            server.stats
        );
        // Its socket drains what the kernel kept, then ends. A wider
        // window lets the kernel's megabytes through quickly.
        set_receive_buffer(sleeper, 1024 * 1024);
        let drain_started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut drained = 0usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the stalled socket never ended");
            match sleeper.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("stalled socket: {e}"),
            }
        }
        println!(
            "stalled client: closed as a slow consumer; {drained} bytes had reached it \
             (of about {} sent to the room), drained in {:?}",
            busy as u64 * lines * (padding.len() as u64 + 10),
            drain_started.elapsed()
        );
    }
    assert_eq!(
        server.stats.slow_consumers.load(Ordering::Relaxed),
        u64::from(stalled)
    );
    took
}

#[test]
fn a_client_that_never_reads_is_dropped_and_does_not_slow_the_room() {
    let _serial = serial();
    const BUSY: usize = 49;
    const LINES: u64 = 150;
    let without = busy_room(BUSY, LINES, false);
    let with = busy_room(BUSY, LINES, true);
    let ratio = with.as_secs_f64() / without.as_secs_f64().max(0.05);
    println!(
        "{BUSY} busy clients x {LINES} lines: {without:?} alone, {with:?} with a client \
         that never reads: ratio {ratio:.2}"
    );
    assert!(
        ratio < 3.0,
        "the stalled client slowed the room: ratio {ratio:.2}"
    );
}

#[test]
fn churn_in_the_middle_of_broadcasts_loses_and_repeats_nothing() {
    let _serial = serial();
    const STAYERS: usize = 8;
    const LINES: u64 = 400;
    const CHURNERS: usize = 12;
    const MAX_ROUNDS: usize = 40;
    let server = ChatServer::start(lines_config());
    let gate = Gate::new(STAYERS + CHURNERS);
    let stayers_done = Arc::new(AtomicBool::new(false));
    let stayers: Vec<_> = (0..STAYERS)
        .map(|n| {
            let (addr, gate) = (server.addr, Arc::clone(&gate));
            thread::spawn(move || {
                let nick = format!("s{n}");
                let mut client = Client::named(addr, &nick);
                gate.arrive_and_wait(Duration::from_secs(15));
                let mut writer = client.writer.try_clone().unwrap();
                let sender = thread::spawn(move || {
                    for seq in 0..LINES {
                        writer.write_all(format!("{seq}\n").as_bytes()).unwrap();
                        if seq % 2 == 1 {
                            // Spread the lines out so that churn happens
                            // between and during their broadcasts.
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
                // Stayers' lines: all of them, in order. Churners' lines:
                // in order with none repeated (some are missed while apart),
                // and none said in another room.
                let mut stayer_next = HashMap::new();
                let mut churner_last: HashMap<String, u64> = HashMap::new();
                let wanted = (STAYERS as u64 - 1) * LINES;
                let mut got = 0;
                for _ in 0..1_000_000 {
                    if got == wanted {
                        break;
                    }
                    let line = client.line();
                    if line.starts_with('x') && !line.starts_with("* ") {
                        let (who, text) = line.split_once(": ").unwrap();
                        assert!(
                            !text.contains("side"),
                            "{nick}: {line:?} leaked from another room"
                        );
                        let seq: u64 = text.parse().unwrap();
                        if let Some(&last) = churner_last.get(who) {
                            assert!(seq > last, "{nick}: {line:?} after #{last}");
                        }
                        churner_last.insert(who.to_owned(), seq);
                    } else if check_in_order(&line, &mut stayer_next, &nick) {
                        got += 1;
                    }
                }
                sender.join().unwrap();
                assert_eq!(got, wanted, "{nick}: got {got} of {wanted} stayers' lines");
                (churner_last.len(), client)
            })
        })
        .collect();
    let churners: Vec<_> = (0..CHURNERS)
        .map(|n| {
            let (addr, gate, done) = (server.addr, Arc::clone(&gate), Arc::clone(&stayers_done));
            thread::spawn(move || {
                gate.arrive_and_wait(Duration::from_secs(15));
                let mut rounds = 0;
                while rounds < MAX_ROUNDS && !done.load(Ordering::Relaxed) {
                    let nick = format!("x{n}-{rounds}");
                    let mut client = Client::named(addr, &nick);
                    let mut seq = 0;
                    let mut say = |client: &mut Client, text: &str| {
                        client.send(&format!("{seq}{text}"));
                        seq += 1;
                    };
                    say(&mut client, "");
                    say(&mut client, "");
                    match rounds % 4 {
                        0 => {
                            // Leave for another room, talk there, come back.
                            client.send("/join side");
                            say(&mut client, " side");
                            client.send("/join lobby");
                            client.expect(&format!("* {nick} joined lobby"));
                            say(&mut client, "");
                            client.send("/quit");
                            client.expect_closed();
                        }
                        1 => {
                            // Quit with lines still on the way.
                            client.send("/quit");
                            client.expect_closed();
                        }
                        2 => {
                            // Vanish: close without a word.
                            drop(client);
                        }
                        _ => {
                            // Half-close: the server sees end of stream.
                            client.writer.shutdown(std::net::Shutdown::Write).unwrap();
                            client.expect_closed();
                        }
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let (seen, _stayers): (Vec<usize>, Vec<Client>) = join_all(stayers).into_iter().unzip();
    stayers_done.store(true, Ordering::Relaxed);
    let rounds: usize = join_all(churners).into_iter().sum();
    println!(
        "{STAYERS} stayers x {LINES} lines with {rounds} churner sessions; \
         each stayer heard from {seen:?} of them"
    );
    assert!(rounds >= CHURNERS, "churners did not churn");
    assert!(
        server.wait(READ_TIMEOUT, |s| s.members.load(Ordering::Relaxed)
            == STAYERS),
        "members after churn: {} (stayers {STAYERS})",
        server.members()
    );
}

#[test]
fn commands_who_nick_conflicts_unknown_and_quit() {
    let _serial = serial();
    let server = ChatServer::start(lines_config());
    let mut ann = Client::named(server.addr, "ann");
    let mut bob = Client::named(server.addr, "bob");
    assert_eq!(ann.line(), format!("* {} joined lobby", bob.guest));
    assert_eq!(ann.line(), format!("* {} is now bob", bob.guest));

    ann.send("/foo bar");
    assert_eq!(
        ann.line(),
        "! unknown command /foo; try /nick, /join, /who, /quit"
    );

    bob.send("/nick ann");
    assert_eq!(bob.line(), "! nick ann is taken");
    for (bad, why) in [
        ("a b", "! nick holds a space or a control character"),
        (&"n".repeat(33), "! nick is longer than 32 bytes"),
        ("guest-1", "! nick guest-1 is taken"),
    ] {
        bob.send(&format!("/nick {bad}"));
        assert_eq!(bob.line(), why);
    }
    bob.send("/nick");
    assert_eq!(bob.line(), "! usage: /nick NAME");

    ann.send("/who");
    assert_eq!(ann.line(), "* in lobby (2): ann bob");

    // A message reaches the others, not the sender.
    ann.send("hello bob");
    assert_eq!(bob.line(), "ann: hello bob");
    bob.send("/who");
    assert_eq!(bob.line(), "* in lobby (2): ann bob");

    // Join and leave notices; rooms are apart.
    bob.send("/join den");
    assert_eq!(bob.line(), "* bob joined den");
    assert_eq!(ann.line(), "* bob left lobby");
    bob.send("/who");
    assert_eq!(bob.line(), "* in den (1): bob");
    ann.send("anyone?");
    // `/who` runs after `anyone?` in the room's queue: once its answer is
    // back, bob may come back without hearing a line said while apart.
    ann.send("/who");
    assert_eq!(ann.line(), "* in lobby (1): ann");
    bob.send("/join lobby");
    assert_eq!(bob.line(), "* bob joined lobby");
    assert_eq!(ann.line(), "* bob joined lobby");

    // Quit says goodbye, closes, and the room hears the leave.
    bob.send("/quit");
    assert_eq!(bob.line(), "* bye");
    bob.expect_closed();
    assert_eq!(ann.line(), "* bob left lobby");

    // A dropped connection is a leave too, and frees its nick.
    let carl = Client::named(server.addr, "carl");
    ann.expect(&format!("* {} is now carl", carl.guest));
    drop(carl);
    assert_eq!(ann.line(), "* carl left lobby");
    let _carl = Client::named(server.addr, "carl");
    assert!(server.wait(READ_TIMEOUT, |s| s.members.load(Ordering::Relaxed) == 2));
}

/// Records every WebSocket message a chat member gets, with its kind.
struct WsMember(std::sync::mpsc::Sender<(session_core::MessageKind, String)>);

impl session_core::Session for WsMember {
    fn on_received(&mut self, _: &session_core::SessionHandle, _: &[u8]) {}

    fn on_message(
        &mut self,
        _: &session_core::SessionHandle,
        message: &[u8],
        kind: session_core::MessageKind,
    ) {
        let _ = self
            .0
            .send((kind, String::from_utf8_lossy(message).into_owned()));
    }
}

#[test]
fn a_websocket_member_and_a_line_member_share_a_room() {
    let _serial = serial();
    let (addr, ws_addr, stop, task) = task::block_on(async {
        let ip = IpInformation::resolve("127.0.0.1", 0).await?;
        let lines = Listener::bind(&ip, lines_config()).await?;
        let websockets = Listener::bind(&ip, lines_config())
            .await?
            .with_websocket(session_core::WebSocketServer::new());
        let (addr, ws_addr) = (lines.local_addr(), websockets.local_addr());
        let stop = [lines.shutdown_handle(), websockets.shutdown_handle()];
        let chat = Chat::new();
        let task = task::spawn(async move {
            futures::try_join!(chat.clone().run(lines), chat.run(websockets)).map(|_| ())
        });
        io::Result::Ok((addr, ws_addr, stop, task))
    })
    .expect("bind the chat's two listeners");
    let mut alice = Client::named(addr, "alice");
    let (tx, rx) = std::sync::mpsc::channel();
    let connector = session_core::Connector::new(SessionConfig::default())
        .unwrap()
        .with_websocket(session_core::WebSocketClient::new("/"));
    let browser = task::block_on(connector.connect(&IpInformation::from(ws_addr), WsMember(tx)))
        .expect("a WebSocket member connects");
    let next = || {
        let (kind, text) = rx
            .recv_timeout(READ_TIMEOUT)
            .expect("a message to the browser");
        assert_eq!(kind, session_core::MessageKind::Text, "{text}");
        text
    };
    let welcome = next();
    let guest = welcome
        .strip_prefix("* welcome, you are ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"))
        .to_owned();
    alice.expect(&format!("* {guest} joined lobby"));
    browser.handle().send_text("/nick bob").unwrap();
    alice.expect(&format!("* {guest} is now bob"));
    browser
        .handle()
        .send_text("hello from the browser")
        .unwrap();
    alice.expect("bob: hello from the browser");
    alice.send("hi bob");
    assert!(
        (0..100).any(|_| next() == "alice: hi bob"),
        "the browser never got alice's line"
    );
    browser.handle().disconnect();
    task::block_on(browser.closed());
    alice.expect("* bob left lobby");
    for stop in stop {
        stop.shutdown();
    }
    let ended = task::block_on(async_std::future::timeout(Duration::from_secs(10), task));
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}
