//! The load mode over TLS: a rustls client session per connection, driven
//! by hand (rustls is sans-IO) around the load loop's own socket I/O.
//!
//! - Load and idle connections make their handshake as they open, before
//!   the load starts ([`handshake`]); the loop then hands its plaintext to
//!   rustls and writes the records, and reads records and checks the
//!   plaintext (see `flush_tls` and `on_readable_tls` in `load.rs`).
//! - The handshake mode ([`handshakes`]) measures new sessions per second:
//!   each of `--clients` slots connects, makes a full handshake (session
//!   resumption off, so every one is a full handshake), sends one message,
//!   checks its echo, closes and starts over, for `--duration`, all in one
//!   epoll loop.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use session_core::ClientTls;
use session_core::rustls::ClientConnection;
use session_core::rustls::pki_types::ServerName;

use super::{Plan, Summary};

/// How long a handshake, or a handshake-mode round, may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Makes the TLS handshake over the blocking `stream` (at most
/// [`HANDSHAKE_LIMIT`] per read or write); the session is ready for data
/// after it.
pub(super) fn handshake(
    stream: &TcpStream,
    client: &ClientTls,
    name: ServerName<'static>,
) -> Result<ClientConnection> {
    let mut session = ClientConnection::new(client.rustls_config().clone(), name)
        .map_err(|e| anyhow::anyhow!("TLS session: {e}"))?;
    stream.set_read_timeout(Some(HANDSHAKE_LIMIT))?;
    stream.set_write_timeout(Some(HANDSHAKE_LIMIT))?;
    // Each round reads or writes at least a record, or fails; rustls caps
    // the handshake's size.
    let mut io = stream;
    while session.is_handshaking() {
        session
            .complete_io(&mut io)
            .map_err(|e| anyhow::anyhow!("TLS handshake: {e}"))?;
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(session)
}

/// For the idle check: reads what has arrived on the non-blocking `stream`
/// through `session` (session tickets are TLS's own and pass unseen) and
/// reads plaintext into `buf`: `WouldBlock` when there is none and the
/// session is open, `Ok(0)` or an error when it ended.
pub(super) fn read_idle(
    stream: &TcpStream,
    session: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<usize> {
    // Bounded: what the server sent while the connection sat idle.
    for _ in 0..64 {
        match session.read_tls(&mut &*stream) {
            Ok(0) => break,
            Ok(_) => {
                session
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    session.process_new_packets().map_err(io::Error::other)?;
    session.reader().read(buf)
}

/// The handshake mode; see the module's documentation.
pub(super) fn handshakes(
    plan: &Plan,
    addrs: &[SocketAddr],
    client: &ClientTls,
    name: ServerName<'static>,
) -> Result<Summary> {
    imp::handshakes(plan, addrs, client, name)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use rustix::buffer::spare_capacity;
    use rustix::event::{Timespec, epoll};
    use session_core::ClientTls;
    use session_core::rustls::client::Resumption;
    use session_core::rustls::pki_types::ServerName;
    use session_core::rustls::{ClientConfig, ClientConnection};

    use super::HANDSHAKE_LIMIT;
    use crate::load::{Failure, Histogram, MessageMaker, Plan, Summary, connect_any};

    /// After `--duration`, how long open rounds may take to finish.
    const DRAIN: Duration = Duration::from_secs(5);

    /// One round of a slot: a connection from connect to close.
    struct Round {
        slot: usize,
        stream: TcpStream,
        tls: ClientConnection,
        /// The message's number: the rounds opened before this one.
        seq: u64,
        /// When it opened, ns after start.
        started: u64,
        /// Bytes of the echo matched so far.
        matched: usize,
        want_write: bool,
    }

    struct Loop<'a> {
        addrs: &'a [SocketAddr],
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        maker: MessageMaker,
        epoll: rustix::fd::OwnedFd,
        start: Instant,
        measure_from: u64,
        send_until: u64,
        hist: Histogram,
        opened: u64,
        handshakes: u64,
        corrupt: u64,
        conn_errors: u64,
        lost: u64,
    }

    fn ns(d: Duration) -> u64 {
        d.as_nanos().min(u64::MAX as u128) as u64
    }

    pub(super) fn handshakes(
        plan: &Plan,
        addrs: &[SocketAddr],
        client: &ClientTls,
        name: ServerName<'static>,
    ) -> Result<Summary> {
        // A fresh configuration that remembers no session: every handshake
        // is a full one (certificate, signature, key exchange).
        let mut config = ClientConfig::clone(client.rustls_config());
        config.resumption = Resumption::disabled();
        let duration = plan.duration.unwrap_or(Duration::from_secs(5));
        let mut lp = Loop {
            addrs,
            config: Arc::new(config),
            name,
            maker: MessageMaker::new(plan.framing, plan.size),
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?,
            start: Instant::now(),
            measure_from: ns(plan.warmup),
            send_until: ns(plan.warmup + duration),
            hist: Histogram::new(),
            opened: 0,
            handshakes: 0,
            corrupt: 0,
            conn_errors: 0,
            lost: 0,
        };
        let mut slots: Vec<Option<Round>> = Vec::with_capacity(plan.clients);
        for i in 0..plan.clients {
            // A server that cannot be reached at all stops the run here.
            let round = lp.open(i).with_context(|| format!("connection {i}"))?;
            slots.push(Some(round));
        }
        lp.run(&mut slots)?;
        let mut summary = plan.summary_base();
        summary.tls = true;
        summary.sent = lp.opened;
        summary.messages = lp.handshakes;
        summary.handshakes = lp.handshakes;
        summary.elapsed = Duration::from_nanos(lp.send_until - lp.measure_from);
        summary.corrupt = lp.corrupt;
        summary.conn_errors = lp.conn_errors;
        summary.lost = lp.lost;
        lp.hist.report(&mut summary);
        Ok(summary)
    }

    impl Loop<'_> {
        fn now_ns(&self) -> u64 {
            ns(self.start.elapsed())
        }

        /// Connects slot `slot`'s next round: the message is queued in
        /// rustls at once (it goes out with the client's Finished), and the
        /// ClientHello is written.
        fn open(&mut self, slot: usize) -> io::Result<Round> {
            let stream = connect_any(self.addrs)?;
            stream.set_nonblocking(true)?;
            let mut tls = ClientConnection::new(self.config.clone(), self.name.clone())
                .map_err(io::Error::other)?;
            let seq = self.opened;
            self.opened += 1;
            let mut message = Vec::with_capacity(self.maker.wire_len());
            self.maker.append(slot as u32, seq, &mut message);
            tls.writer().write_all(&message)?;
            epoll::add(
                &self.epoll,
                &stream,
                epoll::EventData::new_u64(slot as u64),
                epoll::EventFlags::IN,
            )?;
            let mut round = Round {
                slot,
                stream,
                tls,
                seq,
                started: self.now_ns(),
                matched: 0,
                want_write: false,
            };
            self.flush(&mut round)?;
            Ok(round)
        }

        /// Writes what rustls has; asks for `EPOLLOUT` while the socket is
        /// full.
        fn flush(&self, round: &mut Round) -> io::Result<()> {
            let mut blocked = false;
            while round.tls.wants_write() {
                match round.tls.write_tls(&mut &round.stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if blocked != round.want_write {
                round.want_write = blocked;
                let mut flags = epoll::EventFlags::IN;
                if blocked {
                    flags |= epoll::EventFlags::OUT;
                }
                let data = epoll::EventData::new_u64(round.slot as u64);
                epoll::modify(&self.epoll, &round.stream, data, flags)?;
            }
            Ok(())
        }

        /// Reads and handles what arrived; `Ok(true)` when the echo is
        /// whole.
        fn step(
            &mut self,
            slot: usize,
            round: &mut Round,
            buf: &mut [u8],
        ) -> Result<bool, Failure> {
            match round.tls.read_tls(&mut &round.stream) {
                Ok(0) => return Err(Failure::Broken),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Err(Failure::Broken),
            }
            if round.tls.process_new_packets().is_err() {
                return Err(Failure::Broken);
            }
            let wire = self.maker.wire_len();
            // Bounded by what one read decrypted.
            loop {
                match round.tls.reader().read(buf) {
                    Ok(0) => return Err(Failure::Broken),
                    Ok(n) => {
                        let want = n.min(wire - round.matched);
                        let matched =
                            self.maker
                                .matching(slot as u32, round.seq, round.matched, &buf[..n]);
                        // Wrong bytes, or bytes after the echo.
                        if matched < want || n > want {
                            return Err(Failure::Corrupt);
                        }
                        round.matched += matched;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return Err(Failure::Broken),
                }
            }
            self.flush(round).map_err(|_| Failure::Broken)?;
            Ok(round.matched == wire)
        }

        /// Ends a round politely: `close_notify`, then the socket closes
        /// (which takes it out of the epoll set).
        fn close(round: Round) {
            let Round {
                stream, mut tls, ..
            } = round;
            tls.send_close_notify();
            let _ = tls.write_tls(&mut &stream);
        }

        /// Closes slot `slot`'s round and opens the next while there is
        /// time; a failed connect counts as an error and leaves the slot
        /// empty until the next pass.
        fn next_round(&mut self, slots: &mut [Option<Round>], slot: usize) {
            if let Some(round) = slots[slot].take() {
                Self::close(round);
            }
            if self.now_ns() < self.send_until {
                match self.open(slot) {
                    Ok(round) => slots[slot] = Some(round),
                    Err(_) => self.conn_errors += 1,
                }
            }
        }

        fn run(&mut self, slots: &mut [Option<Round>]) -> Result<()> {
            let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
            let mut buf = vec![0u8; 64 * 1024];
            let limit = ns(HANDSHAKE_LIMIT);
            loop {
                let now = self.now_ns();
                if now >= self.send_until + ns(DRAIN) {
                    self.lost += slots.iter().filter(|s| s.is_some()).count() as u64;
                    break;
                }
                // Rounds that took too long, and slots left empty by a
                // failed connect.
                for slot in 0..slots.len() {
                    let late = slots[slot]
                        .as_ref()
                        .is_some_and(|r| now.saturating_sub(r.started) > limit);
                    if late {
                        self.lost += 1;
                        self.next_round(slots, slot);
                    } else if slots[slot].is_none() && now < self.send_until {
                        self.next_round(slots, slot);
                    }
                }
                if now >= self.send_until && slots.iter().all(Option::is_none) {
                    break;
                }
                let ts = Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                events.clear();
                match epoll::wait(&self.epoll, spare_capacity(&mut events), Some(&ts)) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e)).context("epoll_wait"),
                }
                for ev in events.iter() {
                    let slot = ev.data.u64() as usize;
                    let Some(mut round) = slots[slot].take() else {
                        continue;
                    };
                    match self.step(slot, &mut round, &mut buf) {
                        Ok(false) => slots[slot] = Some(round),
                        Ok(true) => {
                            let now = self.now_ns();
                            if now >= self.measure_from && now < self.send_until {
                                self.handshakes += 1;
                                self.hist.record(now - round.started);
                            }
                            slots[slot] = Some(round);
                            self.next_round(slots, slot);
                        }
                        Err(why) => {
                            match why {
                                Failure::Corrupt => self.corrupt += 1,
                                Failure::Broken => self.conn_errors += 1,
                            }
                            slots[slot] = Some(round);
                            self.next_round(slots, slot);
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// Without epoll the load mode is not available.
#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(super) fn handshakes(
        _plan: &Plan,
        _addrs: &[SocketAddr],
        _client: &ClientTls,
        _name: ServerName<'static>,
    ) -> Result<Summary> {
        anyhow::bail!("the load mode needs Linux (epoll)")
    }
}
