//! `SessionConfig::reuse_port`: every worker accepts on a socket of its own
//! (SO_REUSEPORT) and keeps the sessions it accepts.
//!
//! Unix only: Windows has no SO_REUSEPORT, and there `Listener::bind`
//! refuses `reuse_port`, which `elsewhere.rs` checks.
#![cfg(unix)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::start_server;
use session_core::{DisconnectReason, Framing, Session, SessionConfig, SessionHandle};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where each callback of each session ran, by thread name.
type Threads = Arc<Mutex<Vec<(u64, &'static str, String)>>>;

#[derive(Clone)]
struct Echo(Threads);

impl Echo {
    fn note(&self, handle: &SessionHandle, what: &'static str) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        self.0
            .lock()
            .unwrap()
            .push((handle.id().get(), what, thread));
    }
}

impl Session for Echo {
    fn on_connected(&mut self, handle: &SessionHandle) {
        self.note(handle, "connected");
    }
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        self.note(handle, "received");
        let _ = handle.send(message);
    }
    fn on_disconnected(&mut self, handle: &SessionHandle, _: &DisconnectReason) {
        self.note(handle, "disconnected");
    }
}

#[test]
fn each_worker_accepts_its_own_connections_and_keeps_their_sessions() {
    // This test binary's own pool: two workers, whatever the machine.
    assert!(
        session_core::set_worker_threads(2),
        "no session ran before this test"
    );
    let threads = Threads::default();
    let config = SessionConfig {
        framing: Framing::Lines,
        reuse_port: true,
        ..SessionConfig::default()
    };
    let echo = Echo(Arc::clone(&threads));
    let server = start_server(config, move || echo.clone());

    let mut clients: Vec<BufReader<TcpStream>> = (0..50)
        .map(|_| {
            let stream = TcpStream::connect(server.addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            BufReader::new(stream)
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .get_mut()
            .write_all(format!("hello {i}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        client.read_line(&mut line).unwrap();
        assert_eq!(line, format!("hello {i}\n"));
    }
    assert_eq!(server.stats.get().accepted, 50);
    drop(clients);
    assert!(server.wait_idle(TIMEOUT), "{:?}", server.stats.get());
    server.stop(TIMEOUT).unwrap();

    let log = threads.lock().unwrap().clone();
    let mut home = std::collections::HashMap::new();
    for (id, what, thread) in &log {
        assert!(
            thread.starts_with("session-worker-"),
            "{what} of {id} ran on {thread}"
        );
        // Every callback of a session runs on the worker that accepted it.
        assert_eq!(
            home.entry(*id).or_insert_with(|| thread.clone()),
            thread,
            "{what} of {id}"
        );
    }
    assert_eq!(home.len(), 50);
    let used: HashSet<&String> = home.values().collect();
    // The kernel spreads connections by their addresses: with 50 of them,
    // one worker getting them all has a chance of 2^-49.
    assert_eq!(used.len(), 2, "{used:?}");
}
