//! `session_core::Runtime` through the public API only: a listener and a
//! connector on workers of their own, and a shutdown that ends every
//! session once.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use async_std::task;
use session_core::{
    Connector, DisconnectReason, Framing, IpInformation, Listener, Runtime, Session, SessionConfig,
    SessionHandle,
};

const WAIT: Duration = Duration::from_secs(10);

/// Echoes lines; reports each session's end and the thread it ran on.
#[derive(Clone)]
struct Echo(Sender<(u64, String, String)>);

impl Session for Echo {
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        let _ = handle.send(message);
    }
    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let _ = self
            .0
            .send((handle.id().get(), format!("{reason:?}"), thread));
    }
}

/// The connector's side: reports what it receives, and its end.
struct Client {
    received: Sender<Vec<u8>>,
    ended: Sender<(u64, String, String)>,
}

impl Session for Client {
    fn on_received(&mut self, _: &SessionHandle, message: &[u8]) {
        let _ = self.received.send(message.to_vec());
    }
    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        Echo(self.ended.clone()).on_disconnected(handle, reason);
    }
}

#[test]
fn a_listener_and_a_connector_on_their_own_runtime_end_with_it() {
    let runtime = Runtime::new(2).unwrap();
    assert_eq!(runtime.worker_count(), 2);
    let config = SessionConfig {
        framing: Framing::Lines,
        ..SessionConfig::default()
    };
    let (ended, ends) = mpsc::channel();
    let ip = IpInformation::from("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    let listener = task::block_on(Listener::bind_on(&runtime, &ip, config.clone())).unwrap();
    let addr = listener.local_addr();
    let (ran, run_result) = mpsc::channel();
    let echo = Echo(ended.clone());
    std::thread::spawn(move || {
        let _ = ran.send(task::block_on(listener.run(move || echo.clone())));
    });

    let mut clients: Vec<BufReader<TcpStream>> = (0..4)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.write_all(format!("line {i}\n").as_bytes()).unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, format!("line {i}\n"));
            reader
        })
        .collect();

    let connector = Connector::with_runtime(config, runtime.clone()).unwrap();
    let (received, replies) = mpsc::channel();
    let client = Client { received, ended };
    let connection = task::block_on(connector.connect(&IpInformation::from(addr), client)).unwrap();
    let handle = connection.handle().clone();
    // The reply shows that the server's side of it runs too.
    handle.send(b"from the connector").unwrap();
    assert_eq!(replies.recv_timeout(WAIT).unwrap(), b"from the connector");

    runtime.shutdown_and_join();
    // 4 sessions of the std clients, plus the connector's session and
    // its server side: 6 ends, each once, on a worker. The std clients
    // never close, so theirs end with `Shutdown`; the connector's pair
    // share the runtime, so one of them may first see the other's socket
    // closed by the worker that stopped before its own.
    let mut seen = Vec::new();
    while let Ok(end) = ends.try_recv() {
        seen.push(end);
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (_, reason, thread) in &seen {
        assert!(reason == "Shutdown" || reason == "PeerClosed", "{seen:?}");
        assert!(thread.starts_with("session-worker"), "{seen:?}");
    }
    let shutdown = seen.iter().filter(|(_, r, _)| r == "Shutdown").count();
    assert!(shutdown >= 4, "{seen:?}");
    let mut ids: Vec<u64> = seen.iter().map(|(id, _, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "each session ended once");
    assert!(handle.send(b"too late\n").is_err());
    assert!(matches!(
        task::block_on(connection.closed()),
        DisconnectReason::Shutdown | DisconnectReason::PeerClosed
    ));
    run_result
        .recv_timeout(WAIT)
        .expect("Listener::run returns once its runtime stopped")
        .unwrap();
    for client in &mut clients {
        let mut rest = String::new();
        let _ = client.read_line(&mut rest);
        assert_eq!(rest, "", "the server closed the connection");
    }
}
