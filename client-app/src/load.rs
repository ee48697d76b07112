//! Load mode: many echo clients on one thread, every reply checked.
//!
//! The course's "dummy clients", made into a measuring tool. `--clients N`
//! connections each send numbered messages to an echo server (`server-app
//! --suffix ''`) and check that what comes back is, byte for byte, what was
//! sent: message `seq` of connection `conn` holds `conn` and `seq` in hex
//! followed by a filler that depends on `seq`, so no two messages of a
//! connection are alike. The replies are compared as they arrive with the
//! messages regenerated from the two numbers, piece by piece, without
//! building them (under raw framing the replies are a byte stream with no
//! boundaries; the comparison does not need them, and every message has the
//! same length, so the bytes matched say how many replies are complete). A
//! reply that differs, bytes that nobody asked for, or a reply that never
//! comes is an error, and errors make the run fail.
//!
//! With `--websocket` each connection is upgraded first and every message
//! goes as one masked binary frame; the payloads of the server's frames are
//! checked as above (see `load/ws.rs`).
//!
//! Two ways to drive the load:
//! - closed loop (default): each connection keeps `--window` messages in
//!   flight and sends the next one when a reply completes;
//! - open loop (`--rate R`): `R` messages per second in total, spread over the
//!   connections on a fixed schedule (message `k` of a connection is due at
//!   `start + (k + phase) / rate_per_connection`), sent in batches every
//!   millisecond, woken by a `timerfd` (an `epoll` timeout counts whole
//!   milliseconds and rounds up, which made the batches about 1.7 ms
//!   apart). Round trips are measured from the scheduled time, not the time
//!   the message actually left, so a server that falls behind shows it in
//!   the percentiles (no coordinated omission).
//!
//! Why one thread and raw `epoll`: the load generator shares a 2-core machine
//! with the server it measures, and on loopback nearly all of the cost is
//! syscalls. One level-triggered epoll loop registers each socket once, reads
//! every reply that has arrived in one `read`, and answers with one `write`
//! per batch: no thread switches, no re-arming. Thread-per-connection
//! blocking sockets or async-std tasks pay a wake-up (and async-std a
//! cross-thread one) per batch on top.
//!
//! The epoll loop is Linux's; elsewhere the mode refuses to run (see the
//! second `imp`), and the parts only the loop uses are compiled but unused.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use session_core::rustls::ClientConnection;
use session_core::{ClientTls, Framing};
use structopt::StructOpt;

use crate::output::parse_seconds;

mod tls;
mod ws;

/// Options of the load mode (flattened into the client's command line).
#[derive(Debug, Clone, StructOpt)]
pub struct LoadOptions {
    /// Run the load mode with this many connections instead of the greeting.
    #[structopt(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Messages per connection (closed loop default: 1000 unless --duration).
    #[structopt(long, value_name = "M")]
    pub count: Option<u64>,
    /// Send for this many seconds instead of a fixed count.
    #[structopt(long, value_name = "SECONDS", parse(try_from_str = parse_seconds))]
    pub duration: Option<Duration>,
    /// Message payload size in bytes.
    #[structopt(long, value_name = "BYTES", default_value = "64")]
    pub size: usize,
    /// Messages in flight per connection (closed loop).
    #[structopt(long, value_name = "W", default_value = "1")]
    pub window: usize,
    /// Open loop: messages per second in total, spread over the connections
    /// (0 = closed loop).
    #[structopt(long, value_name = "R", default_value = "0")]
    pub rate: f64,
    /// Print the summary as one JSON line.
    #[structopt(long)]
    pub json: bool,
    /// Seconds at the start that are checked but left out of the figures.
    #[structopt(long, value_name = "SECONDS", parse(try_from_str = parse_seconds))]
    pub warmup: Option<Duration>,
    /// Open the connections, send nothing, hold them for --duration (default
    /// 5 s), then close them. Prints "holding N connections" on stderr once
    /// all are open.
    #[structopt(long)]
    pub idle: bool,
    /// With --tls: measure new sessions per second instead. Each of the
    /// --clients slots connects, makes a full handshake (no resumption),
    /// sends one message, checks its echo and closes, again and again for
    /// --duration (default 5 s).
    #[structopt(long)]
    pub handshakes: bool,
}

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Connections opened.
    pub clients: usize,
    /// Framing used, as named on the command line.
    pub framing: &'static str,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection (closed loop).
    pub window: usize,
    /// Target rate in messages/s (0 = closed loop).
    pub rate: f64,
    /// Messages sent, warm-up included.
    pub sent: u64,
    /// Correct replies inside the measuring window.
    pub messages: u64,
    /// Length of the measuring window.
    pub elapsed: Duration,
    /// Replies that differed from their request, or bytes nobody asked for.
    pub corrupt: u64,
    /// Messages whose reply never came.
    pub lost: u64,
    /// Connections that failed (closed by the peer, I/O error).
    pub conn_errors: u64,
    /// Round-trip percentiles in microseconds: p50, p99, p99.9, max.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest round trip.
    pub max_us: f64,
    /// Handshake mode: sessions opened, handshaken, echoed once and closed
    /// inside the measuring window (0 in the other modes).
    pub handshakes: u64,
    /// TLS was used.
    pub tls: bool,
    /// Every message went as a WebSocket frame (`--websocket`).
    pub websocket: bool,
}

impl Summary {
    /// All errors together.
    pub fn errors(&self) -> u64 {
        self.corrupt + self.lost + self.conn_errors
    }

    /// Correct replies per second.
    pub fn msgs_per_sec(&self) -> f64 {
        per_sec(self.messages as f64, self.elapsed)
    }

    /// Payload megabytes (10^6) echoed per second, one direction.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.messages as f64 * self.size as f64, self.elapsed) / 1e6
    }

    /// New TLS sessions per second (handshake mode).
    pub fn handshakes_per_sec(&self) -> f64 {
        per_sec(self.handshakes as f64, self.elapsed)
    }

    /// Success when no message was lost, reordered or corrupted.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.errors() == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }

    /// The summary as one JSON object on one line.
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"clients\":{},\"framing\":\"{}\",\"size\":{},\"window\":{},\"rate\":{},",
                "\"sent\":{},\"messages\":{},\"elapsed_s\":{:.6},\"msgs_per_s\":{:.1},",
                "\"mb_per_s\":{:.3},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},",
                "\"max_us\":{:.1},\"errors\":{},\"corrupt\":{},\"lost\":{},\"conn_errors\":{},",
                "\"tls\":{},\"websocket\":{},\"handshakes\":{},\"handshakes_per_s\":{:.1}}}"
            ),
            self.clients,
            self.framing,
            self.size,
            self.window,
            self.rate,
            self.sent,
            self.messages,
            self.elapsed.as_secs_f64(),
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors(),
            self.corrupt,
            self.lost,
            self.conn_errors,
            self.tls,
            self.websocket,
            self.handshakes,
            self.handshakes_per_sec(),
        )
    }

    /// The summary for people, a few lines.
    pub fn to_text(&self) -> String {
        let mode = if self.handshakes > 0 {
            "handshakes (a full TLS handshake and one echo per connection)".to_string()
        } else if self.rate > 0.0 {
            format!("open loop at {} msgs/s", self.rate)
        } else {
            format!("closed loop, window {}", self.window)
        };
        let sessions = if self.handshakes > 0 {
            format!(
                "\nsessions:   {} in {:.2} s ({:.0} new TLS sessions/s)",
                self.handshakes,
                self.elapsed.as_secs_f64(),
                self.handshakes_per_sec()
            )
        } else {
            String::new()
        };
        format!(
            "load: {} clients{}{}, {} framing, {} B messages, {mode}{sessions}\n\
             messages:   {} correct in {:.2} s ({:.0} msgs/s, {:.2} MB/s), {} sent\n\
             round trip: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us\n\
             errors:     {} (corrupt {}, lost {}, failed connections {})",
            self.clients,
            if self.tls { " over TLS" } else { "" },
            if self.websocket {
                " over WebSocket"
            } else {
                ""
            },
            self.framing,
            self.size,
            self.messages,
            self.elapsed.as_secs_f64(),
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.sent,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors(),
            self.corrupt,
            self.lost,
            self.conn_errors,
        )
    }
}

fn per_sec(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

fn framing_name(framing: Framing) -> &'static str {
    match framing {
        Framing::Raw => "raw",
        Framing::Lines => "lines",
        Framing::LengthPrefixed => "length-prefixed",
        Framing::WebSocket => "websocket",
    }
}

/// Runs the load described by `opts` against `host:port`, prints the summary
/// on stdout (and progress on stderr when it is a terminal), and returns it.
///
/// With `tls`, every connection is a TLS session (see `load/tls.rs`): its
/// handshake is made when it opens, before the load starts.
///
/// With `websocket` (the path to ask for), every connection is upgraded to
/// a WebSocket when it opens (after its TLS handshake), and every message
/// goes as one masked binary frame (see `load/ws.rs`).
///
/// An `Err` means the run could not start (bad options, no connection);
/// errors in the replies are counted in the [`Summary`].
pub fn run(
    host: &str,
    port: u16,
    framing: Framing,
    opts: &LoadOptions,
    tls: Option<&ClientTls>,
    websocket: Option<&str>,
) -> Result<Summary> {
    let plan = Plan::new(framing, opts, websocket.is_some())?;
    if opts.handshakes && (tls.is_none() || opts.idle || opts.rate > 0.0) {
        bail!("--handshakes needs --tls, and goes with neither --idle nor --rate");
    }
    if opts.handshakes && websocket.is_some() {
        bail!("--handshakes measures TLS sessions and does not go with --websocket");
    }
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}:{port}"))?
        .collect();
    if addrs.is_empty() {
        bail!("resolve {host}:{port}: no address");
    }
    let summary = match tls {
        Some(client) if opts.handshakes => {
            let name = client.name_for(host)?;
            tls::handshakes(&plan, &addrs, client, name)?
        }
        _ => {
            let mut streams = Vec::with_capacity(plan.clients);
            let mut sessions = Vec::with_capacity(plan.clients);
            let name = tls.map(|t| t.name_for(host)).transpose()?;
            for i in 0..plan.clients {
                let what = || format!("connection {i} of {} to {host}:{port}", plan.clients);
                let stream = connect_any(&addrs).with_context(what)?;
                let mut session = match (tls, &name) {
                    (Some(client), Some(name)) => {
                        Some(tls::handshake(&stream, client, name.clone()).with_context(what)?)
                    }
                    _ => None,
                };
                if let Some(path) = websocket {
                    ws_upgrade(&stream, session.as_mut(), host, port, path).with_context(what)?;
                }
                sessions.push(session);
                streams.push(stream);
            }
            if opts.idle {
                hold_idle(&plan, streams, sessions)
            } else {
                imp::drive(&plan, streams, sessions)?
            }
        }
    };
    if opts.json {
        println!("{}", summary.to_json());
    } else {
        println!("{}", summary.to_text());
    }
    Ok(summary)
}

/// The WebSocket upgrade of one new connection, through its TLS session
/// if it has one, each read and write bounded.
fn ws_upgrade(
    stream: &TcpStream,
    session: Option<&mut ClientConnection>,
    host: &str,
    port: u16,
    path: &str,
) -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(10);
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    let mut socket = stream;
    match session {
        Some(session) => ws::upgrade(
            &mut session_core::rustls::Stream::new(session, &mut socket),
            host,
            port,
            path,
        )?,
        None => ws::upgrade(&mut socket, host, port, path)?,
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(())
}

fn connect_any(addrs: &[std::net::SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::other("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(10)) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("connect to {addr}: {e}")),
        }
    }
    Err(last)
}

/// Holds the connections open, sending nothing, for the idle measurement.
fn hold_idle(
    plan: &Plan,
    streams: Vec<TcpStream>,
    mut sessions: Vec<Option<ClientConnection>>,
) -> Summary {
    let hold = plan.duration.unwrap_or(Duration::from_secs(5));
    eprintln!(
        "holding {} connections for {:.1} s",
        streams.len(),
        hold.as_secs_f64()
    );
    std::thread::sleep(hold);
    let mut summary = plan.summary_base();
    summary.elapsed = hold;
    // A server that closed a connection while it was idle has failed it.
    for (stream, session) in streams.iter().zip(&mut sessions) {
        let _ = stream.set_nonblocking(true);
        let mut byte = [0u8; 1];
        let read = match session {
            // What the server sent after the handshake (session tickets)
            // is TLS's own; only plaintext or an end counts.
            Some(session) => tls::read_idle(stream, session, &mut byte),
            None => (&*stream).read(&mut byte),
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(0) | Err(_) => summary.conn_errors += 1,
            Ok(_) => summary.corrupt += 1,
        }
        let _ = stream.shutdown(Shutdown::Both);
    }
    summary.tls = sessions.iter().any(Option::is_some);
    summary
}

/// The load, worked out from the options.
#[derive(Debug)]
struct Plan {
    framing: Framing,
    clients: usize,
    size: usize,
    window: usize,
    /// Messages per second per connection, 0 for closed loop.
    rate_per_conn: f64,
    rate: f64,
    /// Messages per connection, `u64::MAX` when bounded by time only.
    count: u64,
    duration: Option<Duration>,
    warmup: Duration,
    /// Each message is one WebSocket frame.
    websocket: bool,
}

impl Plan {
    fn new(framing: Framing, opts: &LoadOptions, websocket: bool) -> Result<Plan> {
        if websocket && framing != Framing::Raw {
            bail!("--websocket carries each message in a frame of its own: leave --framing raw");
        }
        let clients = opts.clients.unwrap_or(1);
        if clients == 0 {
            bail!("--clients must be at least 1");
        }
        if opts.size == 0 {
            bail!("--size must be at least 1");
        }
        if framing == Framing::LengthPrefixed && opts.size > 65_533 {
            bail!(
                "--size {} is more than a length-prefixed frame holds (65533)",
                opts.size
            );
        }
        if opts.window == 0 {
            bail!("--window must be at least 1");
        }
        if !(opts.rate >= 0.0 && opts.rate.is_finite()) {
            bail!("--rate must be a non-negative number");
        }
        if opts.count.is_some() && opts.duration.is_some() && !opts.idle {
            bail!("give --count or --duration, not both");
        }
        let warmup = opts.warmup.unwrap_or_default();
        let rate_per_conn = opts.rate / clients as f64;
        let count = match (opts.count, opts.duration) {
            (Some(count), _) => count,
            (None, Some(duration)) if rate_per_conn > 0.0 => {
                ((duration + warmup).as_secs_f64() * rate_per_conn).ceil() as u64
            }
            (None, Some(_)) => u64::MAX,
            (None, None) => 1000,
        };
        Ok(Plan {
            framing,
            clients,
            size: opts.size,
            window: opts.window,
            rate_per_conn,
            rate: opts.rate,
            count,
            duration: opts.duration,
            warmup,
            websocket,
        })
    }

    fn summary_base(&self) -> Summary {
        Summary {
            clients: self.clients,
            framing: framing_name(self.framing),
            size: self.size,
            window: self.window,
            rate: self.rate,
            websocket: self.websocket,
            ..Summary::default()
        }
    }
}

/// Makes the bytes of every message, on the wire, from its connection and
/// sequence number.
#[derive(Debug)]
struct MessageMaker {
    framing: Framing,
    size: usize,
    /// The alphabet repeated: a message's filler is a slice of it that
    /// starts at `seq % 26`.
    pattern: Vec<u8>,
}

impl MessageMaker {
    const HEADER: usize = 24;

    fn new(framing: Framing, size: usize) -> MessageMaker {
        let pattern = (0..size + 26).map(|i| b'a' + (i % 26) as u8).collect();
        MessageMaker {
            framing,
            size,
            pattern,
        }
    }

    /// Bytes of one message on the wire, framing included.
    fn wire_len(&self) -> usize {
        self.size + self.framing.overhead()
    }

    /// `conn` and `seq` in hex, 8 and 16 digits, as three words of eight
    /// digits each (see [`hex8`]).
    fn hex_words(conn: u32, seq: u64) -> [u64; 3] {
        [hex8(conn), hex8((seq >> 32) as u32), hex8(seq as u32)]
    }

    /// `conn` and `seq` in hex, 8 and 16 digits.
    fn hex(conn: u32, seq: u64) -> [u8; Self::HEADER] {
        let mut hex = [0u8; Self::HEADER];
        for (digits, word) in hex.chunks_exact_mut(8).zip(Self::hex_words(conn, seq)) {
            digits.copy_from_slice(&word.to_le_bytes());
        }
        hex
    }

    /// Message `seq` of connection `conn` on the wire, in three pieces: the
    /// frame header and numbers (written into `prefix`), the filler (a
    /// slice of the pattern, never copied to be checked) and the line end.
    fn parts<'a>(
        &'a self,
        conn: u32,
        seq: u64,
        prefix: &'a mut [u8; 2 + Self::HEADER],
    ) -> [&'a [u8]; 3] {
        let mut len = 0;
        if self.framing == Framing::LengthPrefixed {
            // Plan::new keeps size + 2 within u16.
            prefix[..2].copy_from_slice(&((self.size + 2) as u16).to_le_bytes());
            len = 2;
        }
        prefix[len..len + Self::HEADER].copy_from_slice(&Self::hex(conn, seq));
        let head = self.size.min(Self::HEADER);
        let start = (seq % 26) as usize;
        let tail: &[u8] = if self.framing == Framing::Lines {
            b"\n"
        } else {
            b""
        };
        [
            &prefix[..len + head],
            &self.pattern[start..start + (self.size - head)],
            tail,
        ]
    }

    /// Appends message `seq` of connection `conn`, framed, to `out`.
    fn append(&self, conn: u32, seq: u64, out: &mut Vec<u8>) {
        let mut prefix = [0u8; 2 + Self::HEADER];
        for part in self.parts(conn, seq, &mut prefix) {
            out.extend_from_slice(part);
        }
    }

    /// How many bytes at the start of `data` match message `seq` of `conn`
    /// from byte `from` of its wire form on, stopping at the message's end:
    /// fewer than `data` holds (up to that end) only where a byte differs.
    fn matching(&self, conn: u32, seq: u64, from: usize, data: &[u8]) -> usize {
        // The common case, a whole reply from its start that is right,
        // with fixed-size comparisons where the layout allows.
        if from == 0 && data.len() >= self.wire_len() && self.size >= Self::HEADER {
            let lp = if self.framing == Framing::LengthPrefixed {
                2
            } else {
                0
            };
            let header_ok = lp == 0 || data[..2] == ((self.size + 2) as u16).to_le_bytes();
            // The digits compared as words, in registers: building them in
            // memory and reading them back stalled on store forwarding
            // (`perf annotate`: 13% of the generator's own time).
            let word =
                |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("eight bytes"));
            let [a, b, c] = Self::hex_words(conn, seq);
            let hex_ok = word(lp) == a && word(lp + 8) == b && word(lp + 16) == c;
            let start = (seq % 26) as usize;
            let filler = &self.pattern[start..start + self.size - Self::HEADER];
            let end = lp + self.size;
            let tail_ok = self.framing != Framing::Lines || data[end] == b'\n';
            if header_ok && hex_ok && data[lp + Self::HEADER..end] == *filler && tail_ok {
                return self.wire_len();
            }
        }
        let mut prefix = [0u8; 2 + Self::HEADER];
        let mut matched = 0;
        for want in skip_bytes(self.parts(conn, seq, &mut prefix), from) {
            let n = want.len().min(data.len() - matched);
            let got = &data[matched..matched + n];
            if got != &want[..n] {
                let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
                return matched + same;
            }
            matched += n;
            if matched == data.len() {
                break;
            }
        }
        matched
    }
}

/// `parts` without their first `skip` bytes, leaving out those emptied.
fn skip_bytes(parts: [&[u8]; 3], mut skip: usize) -> impl Iterator<Item = &[u8]> {
    parts.into_iter().filter_map(move |part| {
        let rest = part.get(skip..).unwrap_or_default();
        skip = skip.saturating_sub(part.len());
        (!rest.is_empty()).then_some(rest)
    })
}

/// The eight lowercase hex digits of `x`, most significant first, as the
/// word whose little-endian bytes they are: computed in a register, a few
/// shifts and masks, with no table and no store per digit.
fn hex8(x: u32) -> u64 {
    // One nibble per byte, the lowest nibble in the lowest byte.
    let mut v = u64::from(x);
    v = ((v & 0xffff_0000) << 16) | (v & 0xffff);
    v = ((v & 0x0000_ff00_0000_ff00) << 8) | (v & 0x0000_00ff_0000_00ff);
    v = ((v & 0x00f0_00f0_00f0_00f0) << 4) | (v & 0x000f_000f_000f_000f);
    // Digits past 9 get 'a' - '0' - 10 = 39 more.
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    let ascii = v + 0x3030_3030_3030_3030 + letters * 39;
    // The most significant digit first in memory.
    ascii.swap_bytes()
}

/// Round-trip times in a fixed log-linear histogram: 128 linear steps per
/// power of two, so any value is known within 1 %.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 7;
    const SUB: u64 = 1 << Self::SUB_BITS;

    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; ((64 - Self::SUB_BITS as usize) + 1) * Self::SUB as usize],
            count: 0,
            max: 0,
        }
    }

    fn index(value: u64) -> usize {
        if value < Self::SUB {
            return value as usize;
        }
        let exp = 63 - value.leading_zeros();
        let shift = exp - Self::SUB_BITS;
        ((shift as u64 + 1) * Self::SUB + ((value >> shift) - Self::SUB)) as usize
    }

    /// The middle of the values that fall in bucket `index`.
    fn value_at(index: usize) -> u64 {
        let index = index as u64;
        if index < Self::SUB {
            return index;
        }
        let shift = index / Self::SUB - 1;
        let lower = (index % Self::SUB + Self::SUB) << shift;
        lower + (1u64 << shift) / 2
    }

    fn record(&mut self, value: u64) {
        self.buckets[Self::index(value)] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    /// Puts the round-trip percentiles (in microseconds) into `summary`.
    fn report(&self, summary: &mut Summary) {
        summary.p50_us = self.percentile(0.50) as f64 / 1e3;
        summary.p99_us = self.percentile(0.99) as f64 / 1e3;
        summary.p999_us = self.percentile(0.999) as f64 / 1e3;
        summary.max_us = self.max as f64 / 1e3;
    }

    fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Self::value_at(index).min(self.max);
            }
        }
        self.max
    }
}

/// A one-line progress report on stderr, only when it is a terminal.
#[derive(Debug)]
struct Progress {
    enabled: bool,
    next: Instant,
    drawn: bool,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(250);

    fn new(start: Instant) -> Progress {
        Progress {
            enabled: io::stderr().is_terminal(),
            next: start + Self::EVERY,
            drawn: false,
        }
    }

    fn draw(&mut self, now: Instant, done: f64, text: &str) {
        if !self.enabled || now < self.next {
            return;
        }
        self.next = now + Self::EVERY;
        let width = 30;
        let filled = ((done.clamp(0.0, 1.0)) * width as f64) as usize;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r[{bar}] {:3.0}% {text}\x1b[K", done * 100.0);
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Why a connection stopped before its work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A reply differed from what was sent.
    Corrupt,
    /// The peer closed the connection or the socket failed.
    Broken,
}

/// One connection's state.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    id: u32,
    /// Sequence number of the next message to send.
    next_seq: u64,
    /// Sequence number of the reply being received.
    recv_seq: u64,
    /// Bytes of reply `recv_seq` already matched.
    recv_off: usize,
    /// Send (or scheduled) times of the messages in flight, ns after start.
    times: VecDeque<u64>,
    /// Bytes queued for the socket, written from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Large messages are not copied to `out`: the numbers of those not yet
    /// written, and the bytes of the first one already written.
    unsent: VecDeque<u64>,
    unsent_off: usize,
    want_write: bool,
    failed: Option<Failure>,
    /// Scheduled time of message 0 in ns (open loop phase).
    phase_ns: f64,
    /// The TLS session over `stream`, handshake done: `out` is its
    /// plaintext, and what is read goes through it.
    tls: Option<ClientConnection>,
    /// WebSocket (upgrade done): the reader of the server's frames; `out`
    /// holds whole masked frames, and replies are the frames' payloads.
    ws: Option<ws::FrameReader>,
}

impl Conn {
    fn in_flight(&self) -> u64 {
        self.next_seq - self.recv_seq
    }
}

/// The epoll loop (Linux).
#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use rustix::buffer::spare_capacity;
    use rustix::event::{Timespec, epoll};
    use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};

    /// Messages from this size up are written from their pieces, not
    /// copied into the connection's output buffer first.
    const WRITE_IN_PLACE: usize = 4096;
    /// Cap on unwritten bytes per connection in open loop: past it, due
    /// messages wait (and their round trips, measured from the schedule,
    /// show the wait).
    const OUT_CAP: usize = 1 << 20;
    /// Open-loop sends go out in batches this far apart.
    const TICK: Duration = Duration::from_millis(1);
    /// The epoll key of the tick timer (connections use their index).
    const TICK_KEY: u64 = u64::MAX;
    /// After the last send, how long replies may take to arrive.
    const DRAIN: Duration = Duration::from_secs(5);

    struct Loop<'a> {
        plan: &'a Plan,
        maker: MessageMaker,
        epoll: rustix::fd::OwnedFd,
        start: Instant,
        /// Completions at or after this (ns after start) are measured.
        measure_from: u64,
        /// No new messages after this (ns after start), closed loop by time.
        send_until: u64,
        hist: Histogram,
        messages: u64,
        last_done: u64,
        sent: u64,
        corrupt: u64,
        conn_errors: u64,
        /// The first WebSocket protocol error, said on stderr at the end.
        ws_error: Option<String>,
    }

    /// `send(2)` straight through rustix: libc's wrapper toggles thread
    /// cancellation around every call, which a load generator that makes
    /// hundreds of thousands of them a second notices.
    fn send(socket: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        // As std does: a peer that is gone is an error, not a SIGPIPE.
        Ok(rustix::net::send(
            socket,
            buf,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }

    fn recv(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _) = rustix::net::recv(socket, buf, rustix::net::RecvFlags::empty())?;
        Ok(n)
    }

    fn ns(d: Duration) -> u64 {
        d.as_nanos().min(u64::MAX as u128) as u64
    }

    pub(super) fn drive(
        plan: &Plan,
        streams: Vec<TcpStream>,
        sessions: Vec<Option<ClientConnection>>,
    ) -> Result<Summary> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
        let maker = MessageMaker::new(plan.framing, plan.size);
        let mut conns = Vec::with_capacity(streams.len());
        let tls = sessions.iter().any(Option::is_some);
        for (i, (stream, tls)) in streams.into_iter().zip(sessions).enumerate() {
            stream.set_nonblocking(true)?;
            epoll::add(
                &epoll,
                &stream,
                epoll::EventData::new_u64(i as u64),
                epoll::EventFlags::IN,
            )
            .context("epoll_ctl add")?;
            conns.push(Conn {
                stream,
                id: i as u32,
                next_seq: 0,
                recv_seq: 0,
                recv_off: 0,
                times: VecDeque::with_capacity(plan.window),
                out: Vec::with_capacity(
                    plan.window * (maker.wire_len() + ws::frame_header_len(maker.wire_len())),
                ),
                out_pos: 0,
                unsent: VecDeque::with_capacity(plan.window),
                unsent_off: 0,
                want_write: false,
                failed: None,
                phase_ns: if plan.rate_per_conn > 0.0 {
                    i as f64 / plan.clients as f64 * 1e9 / plan.rate_per_conn
                } else {
                    0.0
                },
                tls,
                ws: plan
                    .websocket
                    .then(|| ws::FrameReader::new(maker.wire_len() as u64)),
            });
        }
        let start = Instant::now();
        let send_until = match plan.duration {
            Some(d) if plan.rate_per_conn == 0.0 => ns(plan.warmup + d),
            _ => u64::MAX,
        };
        let mut lp = Loop {
            plan,
            maker,
            epoll,
            start,
            measure_from: ns(plan.warmup),
            send_until,
            hist: Histogram::new(),
            messages: 0,
            last_done: 0,
            sent: 0,
            corrupt: 0,
            conn_errors: 0,
            ws_error: None,
        };
        lp.run(&mut conns)?;
        // WebSocket: a close frame (1000) on every connection still open,
        // best effort and without waiting for the answer: the run is over.
        for c in conns
            .iter_mut()
            .filter(|c| c.ws.is_some() && c.failed.is_none())
        {
            ws::push_frame(
                &mut c.out,
                ws::OP_CLOSE,
                &1000u16.to_be_bytes(),
                ws::new_mask(),
            );
            lp.flush(c);
        }
        if let Some(e) = &lp.ws_error {
            eprintln!("error: WebSocket: {e}");
        }
        let mut summary = plan.summary_base();
        summary.tls = tls;
        summary.sent = lp.sent;
        summary.messages = lp.messages;
        // The window runs from its start (or the first measured reply, when
        // the run is too short for a warm-up) to the last reply.
        let from = if plan.warmup.is_zero() {
            0
        } else {
            lp.measure_from
        };
        summary.elapsed = Duration::from_nanos(lp.last_done.saturating_sub(from));
        summary.corrupt = lp.corrupt;
        summary.conn_errors = lp.conn_errors;
        // A corrupt reply was in flight too; the rest never came back right.
        summary.lost = conns
            .iter()
            .map(|c| match c.failed {
                Some(Failure::Corrupt) => c.in_flight().saturating_sub(1),
                _ => c.in_flight(),
            })
            .sum();
        lp.hist.report(&mut summary);
        Ok(summary)
    }

    impl Loop<'_> {
        fn now_ns(&self) -> u64 {
            ns(self.start.elapsed())
        }

        /// Whether connection `c` may still send messages.
        fn more_to_send(&self, c: &Conn, now: u64) -> bool {
            c.failed.is_none() && c.next_seq < self.plan.count && now < self.send_until
        }

        fn run(&mut self, conns: &mut [Conn]) -> Result<()> {
            let open_loop = self.plan.rate_per_conn > 0.0;
            if !open_loop {
                for c in conns.iter_mut() {
                    let n = (self.plan.window as u64).min(self.plan.count);
                    for _ in 0..n {
                        self.push_message(c, 0);
                    }
                    self.flush(c);
                }
            }
            // Open loop: a timer that fires every TICK, to the microsecond.
            let ticker = if open_loop {
                let fd = rustix::time::timerfd_create(
                    TimerfdClockId::Monotonic,
                    TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
                )
                .context("timerfd_create")?;
                let every = Timespec {
                    tv_sec: 0,
                    tv_nsec: ns(TICK) as _,
                };
                let spec = Itimerspec {
                    it_interval: every,
                    it_value: every,
                };
                rustix::time::timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)
                    .context("timerfd_settime")?;
                epoll::add(
                    &self.epoll,
                    &fd,
                    epoll::EventData::new_u64(TICK_KEY),
                    epoll::EventFlags::IN,
                )
                .context("epoll_ctl")?;
                Some(fd)
            } else {
                None
            };
            let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
            let mut buf = vec![0u8; 64 * 1024];
            let mut progress = Progress::new(self.start);
            let mut next_tick = 0u64;
            let mut tick_due = false;
            let mut drain_deadline: Option<u64> = None;
            let mut last_progress = 0u64;
            let mut last_messages = 0u64;
            loop {
                let now = self.now_ns();
                // Finished: nothing left to send anywhere and nothing in flight.
                let sending = conns.iter().any(|c| self.more_to_send(c, now));
                let waiting = conns
                    .iter()
                    .any(|c| c.failed.is_none() && c.in_flight() > 0);
                if !sending && !waiting {
                    break;
                }
                if !sending {
                    let deadline = *drain_deadline.get_or_insert(now + ns(DRAIN));
                    if now >= deadline {
                        break;
                    }
                }
                if open_loop && (tick_due || now >= next_tick) {
                    for c in conns.iter_mut() {
                        self.send_due(c, now);
                    }
                    tick_due = false;
                    // The ticker wakes the loop for the next batch; this is
                    // only the latest the batch may come.
                    next_tick = now + 2 * ns(TICK);
                }
                // Wake for the next batch, the progress line, or the drain end.
                let mut wake = now + ns(Progress::EVERY);
                if open_loop && sending {
                    wake = wake.min(next_tick);
                }
                if let Some(d) = drain_deadline {
                    wake = wake.min(d);
                }
                if self.send_until != u64::MAX && sending {
                    wake = wake.min(self.send_until);
                }
                let timeout = Duration::from_nanos(wake.saturating_sub(self.now_ns()));
                let ts = Timespec {
                    tv_sec: timeout.as_secs() as _,
                    tv_nsec: timeout.subsec_nanos() as _,
                };
                events.clear();
                match epoll::wait(&self.epoll, spare_capacity(&mut events), Some(&ts)) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e)).context("epoll_wait"),
                }
                let now = self.now_ns();
                for ev in events.iter() {
                    if ev.data.u64() == TICK_KEY {
                        tick_due = true;
                        if let Some(fd) = &ticker {
                            let mut expirations = [0u8; 8];
                            let _ = rustix::io::read(fd, &mut expirations);
                        }
                        continue;
                    }
                    let index = ev.data.u64() as usize;
                    let flags = ev.flags;
                    let c = &mut conns[index];
                    if c.failed.is_some() {
                        continue;
                    }
                    if flags.intersects(epoll::EventFlags::OUT) {
                        self.flush(c);
                    }
                    if flags.intersects(
                        epoll::EventFlags::IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
                    ) {
                        self.on_readable(c, &mut buf, now);
                    }
                }
                let now = self.now_ns();
                if now >= last_progress + ns(Progress::EVERY) {
                    last_progress = now;
                    let total_done: u64 = conns.iter().map(|c| c.recv_seq).sum();
                    let frac = self.fraction_done(now, total_done, conns.len());
                    let rate = (total_done - last_messages) as f64 / Progress::EVERY.as_secs_f64();
                    last_messages = total_done;
                    let errors = self.corrupt + self.conn_errors;
                    progress.draw(
                        self.start + Duration::from_nanos(now),
                        frac,
                        &format!("{total_done} replies, {rate:.0}/s, {errors} errors"),
                    );
                }
            }
            progress.finish();
            Ok(())
        }

        fn fraction_done(&self, now: u64, total_done: u64, clients: usize) -> f64 {
            if self.plan.count != u64::MAX {
                total_done as f64 / (self.plan.count as f64 * clients as f64)
            } else {
                now as f64 / self.send_until.max(1) as f64
            }
        }

        /// Queues message `c.next_seq`, stamped with `time` (ns after start).
        fn push_message(&mut self, c: &mut Conn, time: u64) {
            if c.ws.is_some() {
                // One masked binary frame, masked in place in `out`.
                let mask = ws::new_mask();
                ws::push_frame_header(&mut c.out, ws::OP_BINARY, self.maker.wire_len(), mask);
                let body = c.out.len();
                self.maker.append(c.id, c.next_seq, &mut c.out);
                ws::apply_mask(&mut c.out[body..], mask);
            // TLS copies every message into its records anyway.
            } else if self.maker.size >= WRITE_IN_PLACE && c.tls.is_none() {
                c.unsent.push_back(c.next_seq);
            } else {
                self.maker.append(c.id, c.next_seq, &mut c.out);
            }
            c.times.push_back(time);
            c.next_seq += 1;
            self.sent += 1;
        }

        /// Open loop: queues every message whose scheduled time has come.
        fn send_due(&mut self, c: &mut Conn, now: u64) {
            if c.failed.is_some() {
                return;
            }
            let per_ns = 1e9 / self.plan.rate_per_conn;
            let wire = self.maker.wire_len();
            while c.next_seq < self.plan.count
                && c.out.len() - c.out_pos + c.unsent.len() * wire < OUT_CAP
            {
                let due = (c.phase_ns + c.next_seq as f64 * per_ns) as u64;
                if due > now {
                    break;
                }
                self.push_message(c, due);
            }
            self.flush(c);
        }

        /// Writes queued bytes until done or the socket is full.
        fn flush(&mut self, c: &mut Conn) {
            if c.tls.is_some() {
                if !self.flush_tls(c) {
                    return;
                }
            } else if !self.write_in_place(c) {
                return;
            }
            while c.tls.is_none() && c.out_pos < c.out.len() {
                match send(&c.stream, &c.out[c.out_pos..]) {
                    Ok(0) => {
                        self.fail(c, Failure::Broken);
                        return;
                    }
                    Ok(n) => c.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.fail(c, Failure::Broken);
                        return;
                    }
                }
            }
            if c.out_pos == c.out.len() {
                c.out.clear();
                c.out_pos = 0;
            } else if c.out_pos > c.out.len() / 2 {
                c.out.drain(..c.out_pos);
                c.out_pos = 0;
            }
            let want_write = !c.out.is_empty()
                || !c.unsent.is_empty()
                || c.tls.as_ref().is_some_and(|t| t.wants_write());
            if want_write != c.want_write {
                c.want_write = want_write;
                let mut flags = epoll::EventFlags::IN;
                if want_write {
                    flags |= epoll::EventFlags::OUT;
                }
                let data = epoll::EventData::new_u64(u64::from(c.id));
                if epoll::modify(&self.epoll, &c.stream, data, flags).is_err() {
                    self.fail(c, Failure::Broken);
                }
            }
        }

        /// Writes the large messages queued by number straight from their
        /// pieces (header, pattern), as many per `writev` as fit, until done
        /// or the socket is full: a 16 KiB message is never copied in user
        /// space. False if the connection failed.
        fn write_in_place(&mut self, c: &mut Conn) -> bool {
            const BATCH: usize = 16;
            while !c.unsent.is_empty() {
                let mut prefixes = [[0u8; 2 + MessageMaker::HEADER]; BATCH];
                let mut slices = [io::IoSlice::new(&[]); 3 * BATCH];
                let mut count = 0;
                // The first message may be partly written already.
                let mut skip = c.unsent_off;
                for (prefix, &seq) in prefixes.iter_mut().zip(c.unsent.iter()) {
                    for part in skip_bytes(self.maker.parts(c.id, seq, prefix), skip) {
                        slices[count] = io::IoSlice::new(part);
                        count += 1;
                    }
                    skip = 0;
                }
                match (&c.stream).write_vectored(&slices[..count]) {
                    Ok(0) => {
                        self.fail(c, Failure::Broken);
                        return false;
                    }
                    Ok(n) => {
                        let wire = self.maker.wire_len();
                        let done = c.unsent_off + n;
                        c.unsent.drain(..done / wire);
                        c.unsent_off = done % wire;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.fail(c, Failure::Broken);
                        return false;
                    }
                }
            }
            true
        }

        /// Hands the queued plaintext to TLS and writes its records until
        /// done or the socket is full: one `writev` for all the records a
        /// batch makes. False if the connection failed.
        fn flush_tls(&mut self, c: &mut Conn) -> bool {
            let Some(tls) = c.tls.as_mut() else {
                return true;
            };
            // Bounded: each round moves plaintext or writes records, else
            // it stops.
            loop {
                let mut moved = 0;
                if c.out_pos < c.out.len() {
                    match tls.writer().write(&c.out[c.out_pos..]) {
                        Ok(n) => moved = n,
                        Err(_) => {
                            self.fail(c, Failure::Broken);
                            return false;
                        }
                    }
                    c.out_pos += moved;
                }
                let mut blocked = false;
                while tls.wants_write() {
                    match tls.write_tls(&mut &c.stream) {
                        Ok(0) => {
                            self.fail(c, Failure::Broken);
                            return false;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.fail(c, Failure::Broken);
                            return false;
                        }
                    }
                }
                if blocked || c.out_pos == c.out.len() || moved == 0 {
                    return true;
                }
            }
        }

        /// Reads what has arrived, through TLS if the connection has it,
        /// and checks it against what was sent.
        fn on_readable(&mut self, c: &mut Conn, buf: &mut [u8], now: u64) {
            if c.tls.is_some() {
                self.on_readable_tls(c, buf, now);
                return;
            }
            let Some(n) = self.read_some(c, recv(&c.stream, buf)) else {
                return;
            };
            self.receive(c, &buf[..n], now);
        }

        /// The bytes a read brought, if any; the end of the stream or an
        /// error fails the connection, and `None` also when nothing waits.
        fn read_some(&mut self, c: &mut Conn, read: io::Result<usize>) -> Option<usize> {
            match read {
                Ok(0) => {
                    self.fail(c, Failure::Broken);
                    None
                }
                Ok(n) => Some(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    None
                }
                Err(_) => {
                    self.fail(c, Failure::Broken);
                    None
                }
            }
        }

        /// Reads one batch of records and checks the plaintext in them.
        fn on_readable_tls(&mut self, c: &mut Conn, buf: &mut [u8], now: u64) {
            let Some(tls) = c.tls.as_mut() else {
                return;
            };
            let read = tls.read_tls(&mut &c.stream);
            if self.read_some(c, read).is_none() {
                return;
            }
            let Some(tls) = c.tls.as_mut() else {
                return;
            };
            if tls.process_new_packets().is_err() {
                // A record that fails to decrypt: the bytes were wrong.
                self.fail(c, Failure::Corrupt);
                return;
            }
            // Bounded by what rustls decrypted from one read.
            loop {
                let Some(tls) = c.tls.as_mut() else { return };
                match tls.reader().read(buf) {
                    // close_notify: the server ended the session.
                    Ok(0) => {
                        self.fail(c, Failure::Broken);
                        return;
                    }
                    Ok(n) => {
                        self.receive(c, &buf[..n], now);
                        if c.failed.is_some() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.fail(c, Failure::Broken);
                        return;
                    }
                }
            }
            // Anything TLS wants to answer (a key update) goes out now.
            if c.tls.as_ref().is_some_and(|t| t.wants_write()) {
                self.flush(c);
            }
        }

        /// Takes `data`, the next bytes from the server (after TLS): the
        /// replies themselves, or under WebSocket the server's frames,
        /// whose data payloads are the replies.
        fn receive(&mut self, c: &mut Conn, data: &[u8], now: u64) {
            let done = if c.ws.is_none() {
                self.check(c, data, now)
            } else {
                self.receive_frames(c, data, now)
            };
            if done && c.failed.is_none() {
                self.flush(c);
            }
        }

        /// [`Loop::receive`] under WebSocket: the payloads of the data
        /// frames go to [`Loop::check`]; true if a reply was done.
        fn receive_frames(&mut self, c: &mut Conn, data: &[u8], now: u64) -> bool {
            let wire = self.maker.wire_len() as u64;
            let mut done = false;
            let mut rest = data;
            // Bounded: every step uses at least one byte, or fails.
            while !rest.is_empty() && c.failed.is_none() {
                let Some(reader) = c.ws.as_mut() else {
                    return done;
                };
                let (used, piece) = match reader.next(rest) {
                    Ok(step) => step,
                    Err(e) => {
                        self.ws_fail(c, Failure::Broken, &e.to_string());
                        return done;
                    }
                };
                match piece {
                    ws::Piece::Partial => {}
                    // Each reply is one message, as it was sent.
                    ws::Piece::Header { len, .. } if len != wire || c.recv_off != 0 => {
                        self.ws_fail(
                            c,
                            Failure::Corrupt,
                            &format!("a message of {len} bytes where {wire} were sent"),
                        );
                        return done;
                    }
                    ws::Piece::Header { .. } => {}
                    ws::Piece::Payload { len, .. } => done |= self.check(c, &rest[..len], now),
                    ws::Piece::Control { opcode } => self.on_control(c, opcode),
                }
                rest = &rest[used..];
            }
            done
        }

        /// A whole control frame from the server: a ping is answered, a
        /// close ends the connection (the server gave up on it).
        fn on_control(&mut self, c: &mut Conn, opcode: u8) {
            let Some(reader) = c.ws.as_ref() else { return };
            match opcode {
                ws::OP_PING => {
                    let mut payload = [0u8; 125];
                    let len = reader.control().len();
                    payload[..len].copy_from_slice(reader.control());
                    ws::push_frame(&mut c.out, ws::OP_PONG, &payload[..len], ws::new_mask());
                    self.flush(c);
                }
                ws::OP_CLOSE => {
                    let code = ws::close_code(reader.control());
                    self.ws_fail(
                        c,
                        Failure::Broken,
                        &format!("the server closed the WebSocket (code {code:?})"),
                    );
                }
                _ => {}
            }
        }

        /// Fails a connection for a WebSocket reason, kept for stderr
        /// when it is the first.
        fn ws_fail(&mut self, c: &mut Conn, why: Failure, what: &str) {
            if self.ws_error.is_none() {
                self.ws_error = Some(format!("connection {}: {what}", c.id));
            }
            self.fail(c, why);
        }

        /// Checks `data`, the next bytes of the replies, against what was
        /// sent, and in closed loop queues a message for each reply done;
        /// true if it queued any (the caller flushes: once per read, not
        /// once per WebSocket frame, which cost a `send` per message).
        fn check(&mut self, c: &mut Conn, data: &[u8], now: u64) -> bool {
            // Checked against the messages regenerated from their numbers,
            // without building them: bytes that differ from what was sent,
            // or beyond all of it, are wrong; the replies before the first
            // wrong byte still count.
            let wire = self.maker.wire_len();
            let mut data = data;
            let mut completed = 0u64;
            let mut wrong = false;
            while !data.is_empty() {
                let seq = c.recv_seq + completed;
                if seq >= c.next_seq {
                    wrong = true;
                    break;
                }
                let matched = self.maker.matching(c.id, seq, c.recv_off, data);
                if matched < data.len().min(wire - c.recv_off) {
                    wrong = true;
                    break;
                }
                data = &data[matched..];
                c.recv_off += matched;
                if c.recv_off == wire {
                    c.recv_off = 0;
                    completed += 1;
                }
            }
            for _ in 0..completed {
                let sent_at = c.times.pop_front().unwrap_or(now);
                if now >= self.measure_from {
                    self.hist.record(now.saturating_sub(sent_at));
                    self.messages += 1;
                    self.last_done = now;
                }
            }
            c.recv_seq += completed;
            if wrong {
                self.fail(c, Failure::Corrupt);
                return false;
            }
            if self.plan.rate_per_conn == 0.0 {
                for _ in 0..completed {
                    if !self.more_to_send(c, now) {
                        break;
                    }
                    self.push_message(c, now);
                }
            }
            // Open loop sends on its schedule, not on replies.
            completed > 0 && self.plan.rate_per_conn == 0.0
        }

        /// Stops a connection: its in-flight messages count as lost, except
        /// the one that arrived wrong, which counts as corrupt.
        fn fail(&mut self, c: &mut Conn, why: Failure) {
            if c.failed.is_some() {
                return;
            }
            c.failed = Some(why);
            match why {
                Failure::Corrupt => self.corrupt += 1,
                Failure::Broken => self.conn_errors += 1,
            }
            let _ = epoll::delete(&self.epoll, &c.stream);
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

/// Without epoll the load mode is not available.
#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(super) fn drive(
        _plan: &Plan,
        _streams: Vec<TcpStream>,
        _sessions: Vec<Option<ClientConnection>>,
    ) -> Result<Summary> {
        bail!("the load mode needs Linux (epoll)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [(0.5, 50_000_000.0), (0.99, 99_000_000.0)] {
            let got = h.percentile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q {q}: {got} vs {want}");
        }
        assert_eq!(h.max, 100_000_000);
        for v in [0u64, 1, 127, 128, 255, 256, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i < h.buckets.len());
            let mid = Histogram::value_at(i);
            assert!(mid.abs_diff(v) <= v / 64 + 1, "{v} -> {mid}");
        }
    }

    #[test]
    fn hex_digits_match_format() {
        for x in [0u32, 1, 9, 10, 15, 16, 0x1234_abcd, 0x9a9a_f0f0, u32::MAX] {
            assert_eq!(
                hex8(x).to_le_bytes(),
                *format!("{x:08x}").as_bytes(),
                "{x:#x}"
            );
        }
        let hex = MessageMaker::hex(0xdead_beef, 0x0123_4567_89ab_cdef);
        assert_eq!(&hex, b"deadbeef0123456789abcdef");
    }

    #[test]
    fn matching_finds_the_first_wrong_byte_from_any_offset() {
        for (framing, size) in [
            (Framing::LengthPrefixed, 64),
            (Framing::Lines, 30),
            (Framing::Raw, 300),
        ] {
            let m = MessageMaker::new(framing, size);
            let mut wire = Vec::new();
            m.append(7, 41, &mut wire);
            m.append(7, 42, &mut wire);
            let len = m.wire_len();
            for from in 0..len {
                // The rest of message 41 and all of 42: only 41's rest counts.
                assert_eq!(m.matching(7, 41, from, &wire[from..]), len - from);
                for bad in from..len {
                    let mut wrong = wire.clone();
                    wrong[bad] ^= 1;
                    assert_eq!(m.matching(7, 41, from, &wrong[from..]), bad - from);
                }
            }
            // Another connection's or sequence number's message differs.
            assert!(m.matching(8, 41, 0, &wire) < len);
            assert!(m.matching(7, 40, 0, &wire) < len);
        }
    }

    #[test]
    fn messages_carry_their_numbers_and_framing() {
        let m = MessageMaker::new(Framing::LengthPrefixed, 30);
        let mut out = Vec::new();
        m.append(0x12, 0x3456, &mut out);
        assert_eq!(out.len(), m.wire_len());
        assert_eq!(&out[..2], &32u16.to_le_bytes());
        assert_eq!(&out[2..26], b"000000120000000000003456");
        let lines = MessageMaker::new(Framing::Lines, 8);
        let mut out = Vec::new();
        lines.append(1, 2, &mut out);
        assert_eq!(out, b"00000001\n");
        let raw = MessageMaker::new(Framing::Raw, 64);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        raw.append(1, 2, &mut a);
        raw.append(1, 3, &mut b);
        assert_ne!(a, b);
        assert!(!a.contains(&b'\n'));
    }
}
