//! The fan-out benchmark (issue 5): one sender, 1,000 receivers, 64-byte
//! lines, session-core against the same fan-out written directly on
//! async-std with a `Vec` of writers.
//!
//! `cargo run --release -p integration-tests --bin bench-fanout [-- --quick]`
//!
//! Each run starts a fresh server as a child process (this binary again,
//! with `--serve KIND --port 0`, on 127.0.0.1 only) and drives it from this
//! process. Servers:
//!
//! - `registry`: session-core, every session in the listener's
//!   [`Registry`]; each line received is framed once and broadcast to all
//!   the others.
//! - `chat`: the chat example's room (`core/examples/chat/room.rs`): the
//!   line goes through the room's `JobQueue`, then one broadcast.
//! - `reference`: async-std alone; each incoming line is written to each
//!   receiver's `TcpStream` in turn with `write_all`, under one async mutex.
//!
//! The load is closed-loop, the same for all three: the sender keeps at
//! most `WINDOW` lines ahead of the slowest receiver, so that no receiver
//! falls behind by more than `WINDOW` x 64 bytes and nobody is closed as a
//! slow consumer. Receivers read everything (one async-std task each) and
//! count lines. After a warm-up, deliveries (lines read by receivers) are
//! counted for the run's duration; the server's RSS is read from
//! `/proc/PID/status` at the end. Median of 3 runs. With two or more CPUs
//! and `taskset`, the server runs on CPU 0 and the load on CPU 1. Every
//! child is killed by its PID when its run ends.

// The benchmark uses only part of the shared module.
#[allow(dead_code)]
#[path = "../../core/examples/chat/room.rs"]
mod room;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_std::io::{BufReadExt, ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures::StreamExt;
use session_core::{
    Frame, Framing, IpInformation, Listener, Registry, Session, SessionConfig, SessionHandle,
};

const RECEIVERS: usize = 1000;
/// Bytes of one line on the wire, newline included.
const LINE: usize = 64;
/// Lines the sender may be ahead of the slowest receiver.
const WINDOW: u64 = 256;
/// Environment variable set once this process has been re-executed with a
/// raised file limit and pinned to its CPU.
const PREPARED: &str = "BENCH_FANOUT_PREPARED";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Registry,
    Chat,
    Reference,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Registry => "registry",
            Kind::Chat => "chat",
            Kind::Reference => "reference",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        [Kind::Registry, Kind::Chat, Kind::Reference]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let kind = args.get(1).and_then(|k| Kind::parse(k));
        let port = match args.get(2..4) {
            Some([flag, port]) if flag == "--port" => port.parse().ok(),
            _ => None,
        };
        let (Some(kind), Some(port)) = (kind, port) else {
            eprintln!("usage: bench-fanout --serve registry|chat|reference --port PORT");
            return ExitCode::from(2);
        };
        return match task::block_on(serve(kind, port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-fanout --serve {}: {e}", kind.name());
                ExitCode::FAILURE
            }
        };
    }
    let (runs, seconds) = match args.first().map(String::as_str) {
        None => (3, 5.0),
        Some("--quick") => (1, 2.0),
        Some(other) => {
            eprintln!("bench-fanout: unexpected argument {other:?}; usage: bench-fanout [--quick]");
            return ExitCode::from(2);
        }
    };
    // The prepared process is pinned to one CPU and would see only that
    // one: the outer process decides, and says so in the variable.
    match std::env::var(PREPARED).as_deref() {
        Ok("pinned") => bench(runs, Duration::from_secs_f64(seconds), true),
        Ok(_) => bench(runs, Duration::from_secs_f64(seconds), false),
        Err(_) => reexec_prepared(&args),
    }
}

/// Whether the server and the load can each have a CPU of their own.
fn can_pin() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus >= 2
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs this program again with the file limit raised to its hard maximum
/// (1,000 receivers and the server's 1,000 sessions need more than the
/// usual 1,024) and, when possible, pinned to CPU 1.
fn reexec_prepared(args: &[String]) -> ExitCode {
    let exe = std::env::current_exe().expect("the path of this program");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null; exec "$@""#)
        .arg("sh");
    let pin = can_pin();
    if pin {
        command.args(["taskset", "-c", "1"]);
    }
    let status = command
        .arg(exe)
        .args(args)
        .env(PREPARED, if pin { "pinned" } else { "not pinned" })
        .status()
        .expect("run sh to raise the file limit");
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

// ---------------------------------------------------------------- servers

/// Fans every line out to every other session of the listener.
struct FanOut {
    everyone: Registry,
}

impl Session for FanOut {
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        if let Ok(frame) = Frame::new(Framing::Lines, message, 65_533) {
            self.everyone.broadcast(&frame, Some(handle.id()));
        }
    }
}

async fn serve(kind: Kind, port: u16) -> std::io::Result<()> {
    if kind == Kind::Reference {
        return reference(port).await;
    }
    let config = SessionConfig {
        framing: Framing::Lines,
        max_frame_len: 4096,
        ..SessionConfig::default()
    };
    let listener =
        Listener::bind(&IpInformation::resolve("127.0.0.1", port).await?, config).await?;
    println!("Listening on {}", listener.local_addr());
    match kind {
        Kind::Chat => room::serve(listener).await,
        _ => {
            let everyone = listener.registry();
            listener
                .run(move || FanOut {
                    everyone: everyone.clone(),
                })
                .await
        }
    }
}

/// The same fan-out with async-std alone: a `Vec` of writers, and each
/// line written to each of them in turn.
async fn reference(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on {}", listener.local_addr()?);
    let writers: Arc<async_std::sync::Mutex<Vec<(u64, TcpStream)>>> = Arc::default();
    let mut incoming = listener.incoming();
    let mut next_id = 0u64;
    while let Some(stream) = incoming.next().await {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        writers.lock().await.push((id, stream.clone()));
        let writers = Arc::clone(&writers);
        task::spawn(async move {
            let mut lines = async_std::io::BufReader::new(stream).lines();
            while let Some(Ok(mut line)) = lines.next().await {
                line.push('\n');
                let mut writers = writers.lock().await;
                let mut dead = Vec::new();
                for (other, writer) in writers.iter_mut() {
                    if *other != id && writer.write_all(line.as_bytes()).await.is_err() {
                        dead.push(*other);
                    }
                }
                writers.retain(|(other, _)| !dead.contains(other));
            }
            writers.lock().await.retain(|(other, _)| *other != id);
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- load

/// One server child; killed by its PID when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(kind: Kind, pin: bool) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let mut child = command
            .args(["--serve", kind.name(), "--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start the {} server: {e}", kind.name()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = line
            .trim()
            .strip_prefix("Listening on ")
            .and_then(|a| a.parse().ok());
        match (read, addr) {
            (Ok(_), Some(addr)) => Ok(Server { child, addr }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the {} server said {line:?}", kind.name()))
            }
        }
    }

    /// Resident and peak resident memory, in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    per_second: f64,
    rss_kib: u64,
    peak_kib: u64,
}

/// Reads everything a receiver gets; counts lines, and notes when a line
/// holding `SYNC` has come (the server has it in its fan-out).
async fn receive(mut stream: TcpStream, count: Arc<AtomicU64>, synced: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if !synced.load(Ordering::Relaxed) && data.windows(4).any(|w| w == b"SYNC") {
            synced.store(true, Ordering::Relaxed);
        }
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        count.fetch_add(lines as u64, Ordering::Relaxed);
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = async_std::future::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr}: timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn load(kind: Kind, addr: SocketAddr, measure: Duration) -> Result<f64, String> {
    let counts: Vec<Arc<AtomicU64>> = (0..RECEIVERS).map(|_| Arc::default()).collect();
    let synced: Vec<Arc<AtomicBool>> = (0..RECEIVERS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for batch in (0..RECEIVERS).collect::<Vec<_>>().chunks(50) {
        let streams = futures::future::join_all(batch.iter().map(|_| connect(addr))).await;
        for (&i, stream) in batch.iter().zip(streams) {
            tasks.push(task::spawn(receive(
                stream?,
                Arc::clone(&counts[i]),
                Arc::clone(&synced[i]),
            )));
        }
    }
    let mut sender = connect(addr).await?;
    // The chat prefixes `NICK: `; with the nick `s` a 60-byte text makes a
    // 64-byte line, as the 63 bytes + newline of the others.
    let text_len = if kind == Kind::Chat {
        sender
            .write_all(b"/nick s\n")
            .await
            .map_err(|e| e.to_string())?;
        LINE - 4
    } else {
        LINE - 1
    };
    let mut line = vec![b'm'; text_len];
    line.push(b'\n');
    let mut sync = line.clone();
    sync[..4].copy_from_slice(b"SYNC");

    // Until every receiver has heard a SYNC line, all are not in yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !synced.iter().all(|s| s.load(Ordering::Relaxed)) {
        if Instant::now() > deadline {
            let n = synced.iter().filter(|s| s.load(Ordering::Relaxed)).count();
            return Err(format!("only {n} of {RECEIVERS} receivers in after 30 s"));
        }
        sender.write_all(&sync).await.map_err(|e| e.to_string())?;
        task::sleep(Duration::from_millis(20)).await;
    }
    // Let joins, notices and probes settle, then count from here.
    task::sleep(Duration::from_millis(300)).await;
    let base: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let delivered = || -> u64 {
        counts
            .iter()
            .zip(&base)
            .map(|(c, b)| c.load(Ordering::Relaxed) - b)
            .sum()
    };
    let slowest = || -> u64 {
        counts
            .iter()
            .zip(&base)
            .map(|(c, b)| c.load(Ordering::Relaxed).saturating_sub(*b))
            .min()
            .unwrap_or(0)
    };

    let warm_up = Duration::from_secs(1);
    let started = Instant::now();
    let mut measuring: Option<(Instant, u64)> = None;
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(WINDOW as usize * LINE);
    loop {
        let now = Instant::now();
        match measuring {
            None if now - started >= warm_up => measuring = Some((now, delivered())),
            Some((from, _)) if now - from >= measure => break,
            _ => {}
        }
        let room = WINDOW.saturating_sub(sent - slowest().min(sent));
        if room < WINDOW / 8 {
            task::sleep(Duration::from_micros(200)).await;
            continue;
        }
        batch.clear();
        for _ in 0..room {
            batch.extend_from_slice(&line);
        }
        sender.write_all(&batch).await.map_err(|e| e.to_string())?;
        sent += room;
    }
    let (from, at_start) = measuring.expect("the warm-up ended");
    let per_second = (delivered() - at_start) as f64 / from.elapsed().as_secs_f64();
    drop(sender);
    drop(tasks);
    Ok(per_second)
}

fn run_once(kind: Kind, pin: bool, measure: Duration) -> Result<Sample, String> {
    let server = Server::start(kind, pin)?;
    let per_second = task::block_on(load(kind, server.addr, measure))?;
    let (rss_kib, peak_kib) = server.memory();
    drop(server);
    Ok(Sample {
        per_second,
        rss_kib,
        peak_kib,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn bench(runs: usize, measure: Duration, pin: bool) -> ExitCode {
    println!(
        "fan-out: 1 sender, {RECEIVERS} receivers, {LINE}-byte lines, sender at most {WINDOW} \
         lines ahead of the slowest receiver; {runs} run(s) of {measure:?} per server; {}",
        if pin {
            "server on CPU 0, load on CPU 1"
        } else {
            "not pinned (needs 2 CPUs and taskset)"
        }
    );
    let mut results = Vec::new();
    for kind in [Kind::Registry, Kind::Chat, Kind::Reference] {
        let mut samples = Vec::new();
        for run in 1..=runs {
            match run_once(kind, pin, measure) {
                Ok(sample) => {
                    println!(
                        "  {:<9} run {run}: {:>12.0} deliveries/s, RSS {} KiB (peak {} KiB)",
                        kind.name(),
                        sample.per_second,
                        sample.rss_kib,
                        sample.peak_kib
                    );
                    samples.push(sample);
                }
                Err(e) => {
                    eprintln!("bench-fanout: {} run {run}: {e}", kind.name());
                    return ExitCode::FAILURE;
                }
            }
        }
        let per_second = median(samples.iter().map(|s| s.per_second).collect());
        let rss = median(samples.iter().map(|s| s.rss_kib as f64).collect());
        let peak = median(samples.iter().map(|s| s.peak_kib as f64).collect());
        results.push((kind, per_second, rss, peak));
    }
    let [registry, chat, reference] = [0, 1, 2].map(|i| results[i]);
    println!();
    println!("| scenario | session-core | reference | ratio |\n|---|---|---|---|");
    for (name, ours) in [
        ("registry broadcast", registry),
        ("chat room (JobQueue)", chat),
    ] {
        println!(
            "| {name}: deliveries/s | {:.0} | {:.0} | {:.2}x |",
            ours.1,
            reference.1,
            ours.1 / reference.1
        );
        println!(
            "| {name}: server RSS (peak) | {:.1} MiB ({:.1}) | {:.1} MiB ({:.1}) | {:.2}x |",
            ours.2 / 1024.0,
            ours.3 / 1024.0,
            reference.2 / 1024.0,
            reference.3 / 1024.0,
            ours.2 / reference.2
        );
    }
    println!();
    for (name, ours) in [("registry broadcast", registry), ("chat room", chat)] {
        let ratio = ours.1 / reference.1;
        println!(
            "target: {name} >= 2x the reference's deliveries/s: {ratio:.2}x {}",
            if ratio >= 2.0 { "PASS" } else { "FAIL" }
        );
    }
    ExitCode::SUCCESS
}
