//! The engine driven over in-memory streams: framing, ordering, batching,
//! back-pressure and close reasons, without sockets or timing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;

use futures::{AsyncReadExt, AsyncWriteExt};
use proptest::prelude::*;

use super::run_session;
use crate::config::SessionConfig;
use crate::framing::Framing;
use crate::session::{DisconnectReason, SendError, Session, SessionHandle};
use crate::test_pipe::{Chunked, duplex};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Connected,
    Received(Vec<u8>),
    Sent(Vec<u8>),
    Disconnected(String),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Records every callback; optionally echoes, optionally panics on a message.
#[derive(Default)]
struct Recorder {
    log: Log,
    echo: bool,
    panic_on: Option<Vec<u8>>,
    /// Answer `wants_on_sent` with no.
    no_sent_reports: bool,
}

impl Session for Recorder {
    fn on_connected(&mut self, _: &SessionHandle) {
        self.log.lock().unwrap().push(Event::Connected);
    }
    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Event::Received(message.to_vec()));
        if self.panic_on.as_deref() == Some(message) {
            panic!("boom on {:?}", String::from_utf8_lossy(message));
        }
        if self.echo {
            handle.send(message).unwrap();
        }
    }
    fn on_sent(&mut self, _: &SessionHandle, message: &[u8]) {
        self.log.lock().unwrap().push(Event::Sent(message.to_vec()));
    }
    fn wants_on_sent(&self) -> bool {
        !self.no_sent_reports
    }
    fn on_disconnected(&mut self, _: &SessionHandle, reason: &DisconnectReason) {
        self.log
            .lock()
            .unwrap()
            .push(Event::Disconnected(format!("{reason:?}")));
    }
}

fn addr() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

/// The messages `on_received` was given, in order.
fn received(log: &Log) -> Vec<Vec<u8>> {
    logged(log, |e| match e {
        Event::Received(m) => Some(m.clone()),
        _ => None,
    })
}

/// The payloads `on_sent` reported, in order.
fn sent(log: &Log) -> Vec<Vec<u8>> {
    logged(log, |e| match e {
        Event::Sent(m) => Some(m.clone()),
        _ => None,
    })
}

fn logged(log: &Log, pick: impl Fn(&Event) -> Option<Vec<u8>>) -> Vec<Vec<u8>> {
    log.lock().unwrap().iter().filter_map(pick).collect()
}

fn encode_all(framing: Framing, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    for p in payloads {
        framing.encode(p, 65_533, &mut out).unwrap();
    }
    out.to_vec()
}

/// Waits, up to five seconds, for `condition`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Cuts `bytes` into chunks whose sizes cycle through `sizes`.
fn split(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        chunks.push(rest[..n].to_vec());
        rest = &rest[n..];
        i += 1;
    }
    chunks
}

/// Runs `session` to its end over a stream that delivers `chunks`, one per
/// read; returns why it ended.
fn run_over(config: SessionConfig, chunks: Vec<Vec<u8>>, session: Recorder) -> DisconnectReason {
    let (_, task) = run_session(Chunked::new(chunks), addr(), addr(), &config, session);
    async_std::task::block_on(task)
}

fn decode_through_engine(
    framing: Framing,
    chunks: Vec<Vec<u8>>,
    read_buffer_size: usize,
) -> (Vec<Vec<u8>>, Vec<Event>) {
    let log = Log::default();
    let config = SessionConfig {
        framing,
        read_buffer_size,
        ..SessionConfig::default()
    };
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let reason = run_over(config, chunks, session);
    assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
    let events = log.lock().unwrap().clone();
    (received(&log), events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any split of a byte stream, and any read size, decodes to the same frames.
    #[test]
    fn any_split_decodes_to_the_same_frames(
        payloads in prop::collection::vec(prop::collection::vec(0u8..=255, 0..400), 0..40),
        sizes in prop::collection::vec(1usize..700, 1..8),
        read_buffer_size in 1usize..2048,
        lines in any::<bool>(),
    ) {
        let (framing, payloads) = if lines {
            let clean = payloads
                .into_iter()
                .map(|p| p.into_iter().filter(|&b| b != b'\n' && b != b'\r').collect())
                .collect::<Vec<Vec<u8>>>();
            (Framing::Lines, clean)
        } else {
            (Framing::LengthPrefixed, payloads)
        };
        let stream = encode_all(framing, &payloads);
        let (frames, _) = decode_through_engine(framing, split(&stream, &sizes), read_buffer_size);
        prop_assert_eq!(frames, payloads);
    }
}

#[test]
fn raw_framing_delivers_each_read_as_one_message() {
    let chunks = vec![b"Hi 0".to_vec(), b"Hi 1Hi 2".to_vec()];
    let (frames, events) = decode_through_engine(Framing::Raw, chunks.clone(), 1024);
    assert_eq!(frames, chunks);
    assert_eq!(events.first(), Some(&Event::Connected));
    assert_eq!(
        events.last(),
        Some(&Event::Disconnected("PeerClosed".into()))
    );
}

#[test]
fn bad_and_oversized_frames_close_the_session_with_their_reason() {
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let reason = run_over(config, vec![b"\x03\x00a\x01\x00zz".to_vec()], session);
    assert!(
        matches!(reason, DisconnectReason::BadFrame(_)),
        "{reason:?}"
    );
    let events = log.lock().unwrap().clone();
    assert_eq!(
        events[1],
        Event::Received(b"a".to_vec()),
        "frames before the bad one are delivered"
    );
    assert_eq!(events.len(), 3);

    let config = SessionConfig {
        framing: Framing::Lines,
        max_frame_len: 8,
        ..SessionConfig::default()
    };
    let reason = run_over(config, vec![vec![b'x'; 100]], Recorder::default());
    assert!(
        matches!(reason, DisconnectReason::FrameTooLarge { max: 8, .. }),
        "{reason:?}"
    );
}

#[test]
fn messages_queued_together_go_out_in_one_vectored_write() {
    let (server, mut client) = duplex(1 << 20);
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, Recorder::default());
    // Small frames are copied end to end into the session's own buffer; a
    // large shared frame sits between them by reference.
    let shared = crate::framing::Frame::new(Framing::LengthPrefixed, &[9; 600], 1024).unwrap();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for i in 0..10u8 {
        handle.send(&[i; 3]).unwrap();
        payloads.push(vec![i; 3]);
    }
    handle.send_frame(&shared).unwrap();
    payloads.push(vec![9; 600]);
    for i in 10..20u8 {
        handle.send(&[i; 3]).unwrap();
        payloads.push(vec![i; 3]);
    }
    let task = async_std::task::spawn(task);
    async_std::task::block_on(async {
        let expected = encode_all(Framing::LengthPrefixed, &payloads);
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(
            client.writes_received(),
            vec![3],
            "one write call of three slices carrying all 21 frames"
        );
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
}

#[test]
fn on_sent_reports_each_payload_in_order_and_disconnect_flushes_first() {
    let (server, mut client) = duplex(64);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::Lines,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, session);
    let task = async_std::task::spawn(task);
    let messages: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("message {i}").into_bytes())
        .collect();
    for m in &messages {
        handle.send(m).unwrap();
    }
    // Disconnect with everything still queued: it must all arrive first.
    handle.disconnect();
    assert_eq!(handle.send(b"late"), Err(SendError::Closed));
    async_std::task::block_on(async {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, encode_all(Framing::Lines, &messages));
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
    let sent = sent(&log);
    assert_eq!(sent, messages);
}

#[test]
fn a_session_that_wants_no_sent_reports_gets_none_and_loses_nothing() {
    let (server, mut client) = duplex(64);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        echo: true,
        no_sent_reports: true,
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, session);
    let task = async_std::task::spawn(task);
    let requests: Vec<Vec<u8>> = (0..300).map(|i| format!("req {i}").into_bytes()).collect();
    async_std::task::block_on(async {
        // Echoed replies (staged by the callback), then messages sent from
        // outside the engine (through the outbox).
        client
            .write_all(&encode_all(Framing::LengthPrefixed, &requests))
            .await
            .unwrap();
        let mut echoed = vec![0; encode_all(Framing::LengthPrefixed, &requests).len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, encode_all(Framing::LengthPrefixed, &requests));
        let pushed: Vec<Vec<u8>> = (0..100).map(|i| format!("push {i}").into_bytes()).collect();
        for m in &pushed {
            handle.send(m).unwrap();
        }
        handle.disconnect();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, encode_all(Framing::LengthPrefixed, &pushed));
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
    let events = log.lock().unwrap().clone();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Sent(_))),
        "on_sent was called: {events:?}"
    );
    let received = events
        .iter()
        .filter(|e| matches!(e, Event::Received(_)))
        .count();
    assert_eq!(received, requests.len());
}

#[test]
fn replies_written_in_pieces_are_each_reported_once_in_order() {
    // A 64-byte pipe takes only part of each batch of replies: the rest
    // stays queued and is reported as it goes out.
    let (server, mut client) = duplex(64);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        echo: true,
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, session);
    let task = async_std::task::spawn(task);
    let requests: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("request number {i}").into_bytes())
        .collect();
    let wire = encode_all(Framing::LengthPrefixed, &requests);
    async_std::task::block_on(async {
        client.write_all(&wire).await.unwrap();
        let mut echoed = vec![0; wire.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, wire);
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
    let sent = sent(&log);
    assert_eq!(sent, requests);
}

#[test]
fn large_raw_echoes_written_in_pieces_arrive_whole_and_reported() {
    // A stream that takes at most 700 bytes a write leaves most of each
    // large reply queued, across reads of many sizes. With no such limit,
    // a read of 16 KiB or more is followed by another before the write:
    // the replies to 20,000 then 17,000 bytes go out in one write.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunks = split(
        &data,
        &[3000, 700, 20_000, 17_000, 1024, 5000, 1, 30_000, 1500],
    );
    for max_write in [700, usize::MAX] {
        let stream = Chunked::new(chunks.clone()).with_max_write(max_write);
        let written = Arc::clone(&stream.written);
        let writes = Arc::clone(&stream.writes);
        let log = Log::default();
        let session = Recorder {
            log: log.clone(),
            echo: true,
            ..Recorder::default()
        };
        let config = SessionConfig {
            framing: Framing::Raw,
            ..SessionConfig::default()
        };
        let (_, task) = run_session(stream, addr(), addr(), &config, session);
        let reason = async_std::task::block_on(task);
        assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
        assert!(
            *written.lock().unwrap() == data,
            "the echo differs from what was sent (max_write {max_write})"
        );
        // Each reply reported once, in order, whole.
        let (replies, reported) = (received(&log), sent(&log));
        assert_eq!(replies, chunks);
        assert!(reported == replies, "on_sent differs from the replies");
        if max_write == usize::MAX {
            let writes = *writes.lock().unwrap();
            assert!(
                writes < chunks.len(),
                "{writes} writes for {} reads",
                chunks.len()
            );
        }
    }
}

#[test]
fn an_echo_whose_peer_never_reads_stops_reading_at_the_high_watermark() {
    let (server, client) = duplex(4096);
    let config = SessionConfig {
        read_buffer_size: 1024,
        send_high_watermark: 16 * 1024,
        send_low_watermark: 4 * 1024,
        max_send_queue: 64 * 1024,
        ..SessionConfig::default()
    };
    let session = Recorder {
        echo: true,
        ..Recorder::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, session);
    let task = async_std::task::spawn(task);
    let input: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut from_server, mut to_server) = client.split();
    // The pipe holds 4 KiB each way, so the writer blocks once the server
    // stops reading.
    let writer = {
        let input = input.clone();
        async_std::task::spawn(async move {
            to_server.write_all(&input).await.unwrap();
            to_server.close().await.unwrap();
        })
    };
    wait_for("the queue to pass the high watermark", || {
        handle.queued_bytes() > 16 * 1024
    });
    // Reading has stopped: the queue holds still, at most one read past the mark.
    let held = handle.queued_bytes();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(handle.queued_bytes(), held);
    }
    assert!(held <= 16 * 1024 + 1024, "{held}");
    assert!(handle.is_connected(), "back-pressure is not a close");
    // Once the peer reads, the session resumes and everything comes back in order.
    async_std::task::block_on(async {
        let mut echoed = Vec::new();
        from_server.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed.len(), input.len());
        assert!(echoed == input, "echo differs from input");
        writer.await;
        assert!(matches!(task.await, DisconnectReason::PeerClosed));
    });
}

#[test]
fn a_send_past_the_cap_closes_the_session_as_a_slow_consumer() {
    let (server, _client) = duplex(1024);
    let config = SessionConfig {
        max_frame_len: 1024,
        send_high_watermark: 2048,
        send_low_watermark: 1024,
        max_send_queue: 8192,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, Recorder::default());
    let task = async_std::task::spawn(task);
    let mut results = Vec::new();
    for _ in 0..20 {
        results.push(handle.send(&[7; 1024]));
    }
    assert!(
        results.contains(&Err(SendError::SlowConsumer)),
        "{results:?}"
    );
    assert!(handle.queued_bytes() <= 8192);
    let reason = async_std::task::block_on(task);
    assert!(
        matches!(reason, DisconnectReason::SlowConsumer),
        "{reason:?}"
    );
    assert_eq!(handle.send(b"x"), Err(SendError::Closed));
    assert_eq!(handle.queued_bytes(), 0, "a closed session frees its queue");
}

#[test]
fn a_panicking_callback_closes_its_session_once_with_the_panic_message() {
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        panic_on: Some(b"boom".to_vec()),
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::Lines,
        ..SessionConfig::default()
    };
    let reason = run_over(config, vec![b"a\nboom\nb\n".to_vec()], session);
    match reason {
        DisconnectReason::Panicked(message) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    let events = log.lock().unwrap().clone();
    assert_eq!(
        events[..3],
        [
            Event::Connected,
            Event::Received(b"a".to_vec()),
            Event::Received(b"boom".to_vec())
        ]
    );
    assert_eq!(
        events.len(),
        4,
        "nothing is delivered after the panic: {events:?}"
    );
    assert!(matches!(&events[3], Event::Disconnected(r) if r.starts_with("Panicked")));
}

#[test]
fn an_engine_dropped_before_its_end_still_reports_one_disconnect() {
    let (server, _client) = duplex(1024);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &SessionConfig::default(), session);
    let mut task = Box::pin(task);
    // One poll: the session starts and waits for input.
    let waker = futures::task::noop_waker();
    assert!(
        task.as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    drop(task);
    assert_eq!(
        *log.lock().unwrap(),
        [Event::Connected, Event::Disconnected("Shutdown".into())]
    );
    assert!(!handle.is_connected());
}

#[test]
fn sends_from_other_threads_arrive_whole_and_in_order_per_sender() {
    let (server, mut client) = duplex(8192);
    let config = SessionConfig {
        framing: Framing::LengthPrefixed,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, Recorder::default());
    let task = async_std::task::spawn(task);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for i in 0..500u16 {
                    let mut m = vec![t];
                    m.extend_from_slice(&i.to_le_bytes());
                    handle.send(&m).unwrap();
                }
            })
        })
        .collect();
    async_std::task::block_on(async {
        let mut next = [0u16; 4];
        for _ in 0..2000 {
            let mut frame = [0u8; 5];
            client.read_exact(&mut frame).await.unwrap();
            assert_eq!(&frame[..2], &[5, 0]);
            let (t, i) = (frame[2] as usize, u16::from_le_bytes([frame[3], frame[4]]));
            assert_eq!(i, next[t], "sender {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [500; 4]);
        for t in threads {
            t.join().unwrap();
        }
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
}

#[test]
fn pause_reading_holds_the_peer_back_until_resume() {
    let (server, mut client) = duplex(1 << 16);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let config = SessionConfig {
        framing: Framing::Lines,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, session);
    handle.pause_reading();
    let task = async_std::task::spawn(task);
    async_std::task::block_on(async {
        client.write_all(b"one\ntwo\n").await.unwrap();
    });
    // Paused: the engine sends but does not read.
    handle.send(b"still sending").unwrap();
    async_std::task::block_on(async {
        let mut line = vec![0; 14];
        client.read_exact(&mut line).await.unwrap();
        assert_eq!(line, b"still sending\n");
    });
    assert!(received(&log).is_empty(), "nothing is read while paused");
    handle.resume_reading();
    wait_for("both lines after resume", || received(&log).len() == 2);
    assert_eq!(received(&log), [b"one".to_vec(), b"two".to_vec()]);
    handle.disconnect();
    assert!(matches!(
        async_std::task::block_on(task),
        DisconnectReason::LocalClose
    ));
}

/// A raw message with no bytes has nothing to put on the wire: sending it,
/// from the session's own callback, from outside or as a shared `Frame`,
/// succeeds and queues nothing, and the session goes on as before (an empty
/// chunk in the queue once made the next write return 0 and the session
/// stall or fail).
#[test]
fn an_empty_raw_message_queues_nothing_and_breaks_nothing() {
    struct EmptyFirst;
    impl Session for EmptyFirst {
        fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
            handle.send(b"").unwrap();
            handle.send(message).unwrap();
        }
    }
    let (server, mut client) = duplex(1 << 16);
    let config = SessionConfig {
        framing: Framing::Raw,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, EmptyFirst);
    let task = async_std::task::spawn(task);
    async_std::task::block_on(async {
        let mut got = [0u8; 4];
        // Alone in the queue, from outside and as a frame.
        handle.send(b"").unwrap();
        let empty = crate::framing::Frame::new(Framing::Raw, b"", 1024).unwrap();
        handle.send_frame(&empty).unwrap();
        async_std::task::sleep(Duration::from_millis(20)).await;
        handle.send(b"next").unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"next");
        // Sent by the callback, ahead of the echo.
        client.write_all(b"ping").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // Counted down just after the write that the client just read.
        wait_for("an empty queue", || handle.queued_bytes() == 0);
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
}

/// A producer that sends with `send_async` waits for the peer instead of
/// passing the cap: 200 KB through a 64 KiB queue and a 4 KiB pipe arrive
/// whole and in order, and the session stays open.
#[test]
fn send_async_waits_for_room_instead_of_closing_the_session() {
    let (server, mut client) = duplex(4096);
    let config = SessionConfig {
        max_send_queue: 64 * 1024,
        send_high_watermark: 32 * 1024,
        send_low_watermark: 8 * 1024,
        ..SessionConfig::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &config, Recorder::default());
    let task = async_std::task::spawn(task);
    let producer = handle.clone();
    let sent = async_std::task::spawn(async move {
        let mut most = 0;
        for i in 0..2000u32 {
            producer.send_async(&[(i % 251) as u8; 100]).await.unwrap();
            most = most.max(producer.queued_bytes());
        }
        most
    });
    async_std::task::block_on(async {
        let mut got = vec![0u8; 200_000];
        client.read_exact(&mut got).await.unwrap();
        for (i, message) in got.chunks(100).enumerate() {
            assert!(message.iter().all(|&b| b == (i % 251) as u8), "message {i}");
        }
        let most = sent.await;
        assert!(most <= 32 * 1024 + 100, "queue reached {most} bytes");
        assert!(handle.is_connected());
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
    });
}

/// `closed` completes once `on_disconnected` has run, with the reason, for
/// every waiter, and at once when the session has already ended; a send
/// after the end fails, and `writable` too.
#[test]
fn closed_completes_after_on_disconnected_with_the_reason() {
    let (server, _client) = duplex(1024);
    let log = Log::default();
    let session = Recorder {
        log: log.clone(),
        ..Recorder::default()
    };
    let (handle, task) = run_session(server, addr(), addr(), &SessionConfig::default(), session);
    let task = async_std::task::spawn(task);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (handle, log) = (handle.clone(), log.clone());
            async_std::task::spawn(async move {
                let reason = handle.closed().await;
                let disconnected = log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| matches!(e, Event::Disconnected(_)));
                (reason, disconnected)
            })
        })
        .collect();
    async_std::task::block_on(async {
        handle.disconnect();
        assert!(matches!(task.await, DisconnectReason::LocalClose));
        for waiter in waiters {
            let (reason, disconnected) = waiter.await;
            assert!(matches!(reason, DisconnectReason::LocalClose), "{reason:?}");
            assert!(disconnected, "closed() completed before on_disconnected");
        }
        assert!(matches!(
            handle.closed().await,
            DisconnectReason::LocalClose
        ));
        assert_eq!(handle.send(b"late"), Err(SendError::Closed));
        assert_eq!(handle.writable().await, Err(SendError::Closed));
    });
}

/// `send_bytes` queues the caller's buffer itself (no copy) and frames it
/// under every framing; `on_sent` reports each payload whole, also when a
/// frame spans the header, the shared payload and the trailer.
#[test]
fn send_bytes_queues_the_callers_buffer_and_frames_it() {
    for framing in [Framing::Raw, Framing::Lines, Framing::LengthPrefixed] {
        let (server, mut client) = duplex(1 << 16);
        let log = Log::default();
        let session = Recorder {
            log: log.clone(),
            ..Recorder::default()
        };
        let config = SessionConfig {
            framing,
            ..SessionConfig::default()
        };
        let (handle, task) = run_session(server, addr(), addr(), &config, session);
        let large = bytes::Bytes::from(vec![b'x'; 1000]);
        let small = bytes::Bytes::from_static(b"small");
        handle.send_bytes(large.clone()).unwrap();
        handle.send_bytes(small.clone()).unwrap();
        handle.send(b"plain").unwrap();
        {
            let outbox = handle.shared.lock_outbox();
            let shares = outbox
                .queue
                .get()
                .segments
                .iter()
                .any(|s| s.bytes().as_ptr() == large.as_ptr());
            assert!(shares, "{framing}: the large payload was copied");
        }
        let payloads = vec![large.to_vec(), small.to_vec(), b"plain".to_vec()];
        let expected = encode_all(framing, &payloads);
        let task = async_std::task::spawn(task);
        async_std::task::block_on(async {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected, "{framing}");
            handle.disconnect();
            assert!(matches!(task.await, DisconnectReason::LocalClose));
        });
        assert_eq!(sent(&log), payloads, "{framing}: on_sent");
    }
}
