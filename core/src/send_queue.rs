//! The bytes one session has queued for its peer, in order, in memory that
//! session alone holds.
//!
//! Messages are framed into the session's own buffers ("own segments", at
//! most [`MAX_SEGMENT`] bytes each), so that what a queue keeps alive is
//! what its byte count says, give or take one segment's spare room. Nothing
//! is cut from a buffer shared with other sessions: a frame shared on
//! purpose (one broadcast [`Frame`](crate::Frame) for a whole room, or a
//! [`Bytes`] the caller hands over) is queued as a reference to that one
//! allocation and counted at its full length.
//!
//! A [`SendQueue`] sits in two places: behind the session's lock, where
//! `send` appends to it from any thread, and in the engine, which takes the
//! whole queue at once (a swap, no copy) and writes it. An own segment the
//! engine has written goes to a small pool of empty segments on its thread,
//! where the next send on that thread (a callback's reply, most often)
//! takes it: a steady echo allocates nothing, and a session that has
//! nothing queued holds no segment at all.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::io::AsyncWrite;

use crate::framing::Framing;
use crate::session::DisconnectReason;

/// The first own segment's capacity: a few small messages.
const FIRST_SEGMENT: usize = 512;
/// An own segment grows up to this; past it a new one starts, so a long
/// queue holds at most one segment of spare room.
pub(crate) const MAX_SEGMENT: usize = 64 * 1024;
/// A written own segment up to this capacity is kept for the next sends;
/// a larger one is freed.
pub(crate) const KEEP_SEGMENT: usize = 4 * 1024;
/// Segments handed to one vectored write at most.
const MAX_IOVECS: usize = 64;
/// Empty segments one thread's pool keeps at most.
const POOL_SEGMENTS: usize = 16;

thread_local! {
    /// Written own segments, emptied, for the next sends on this thread.
    /// Each belongs to one session's queue while it holds bytes; the pool
    /// holds at most [`POOL_SEGMENTS`] of at most [`KEEP_SEGMENT`] bytes.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Makes room for `len` more bytes in `segment`: doubling, up to about
/// [`MAX_SEGMENT`], so appends stay amortised and spare room stays small.
fn make_room(segment: &mut Vec<u8>, len: usize) {
    if segment.capacity() - segment.len() < len {
        let grow = segment
            .capacity()
            .min(MAX_SEGMENT.saturating_sub(segment.len()));
        segment.reserve_exact(len.max(grow));
    }
}

/// An empty segment from this thread's pool, or a new one.
fn take_segment() -> Vec<u8> {
    POOL.try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a written own segment to this thread's pool, if it is small and
/// the pool has room; else frees it.
pub(crate) fn recycle(mut segment: Vec<u8>) {
    if segment.capacity() > KEEP_SEGMENT {
        return;
    }
    segment.clear();
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_SEGMENTS {
            pool.push(segment);
        }
    });
}

/// Queued bytes in one piece of memory.
#[derive(Debug)]
pub(crate) enum Segment {
    /// Whole frames framed into the session's own buffer, end to end.
    Own(Vec<u8>),
    /// Memory shared with others: a broadcast frame, a payload handed over
    /// as [`Bytes`], or a framing header or trailer.
    Shared(Bytes),
}

impl Segment {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Segment::Own(bytes) => bytes,
            Segment::Shared(bytes) => bytes,
        }
    }
}

/// Queued frames in order, and each frame's length on the wire when the
/// session wants `on_sent` (a frame may span segments).
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) frame_lens: VecDeque<u32>,
}

impl SendQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends one message made of `parts` (checked by
    /// [`Framing::check_parts`] to be `payload` bytes that can be framed),
    /// framed, to the last own segment, or to a new one. `len` is its
    /// length on the wire, more than 0.
    pub(crate) fn push_parts(
        &mut self,
        framing: Framing,
        parts: &[&[u8]],
        payload: usize,
        len: usize,
    ) {
        let tail = self.own_tail(len);
        framing.write_parts(parts, payload, tail);
    }

    /// Appends one WebSocket frame of `opcode` holding `parts` (`payload`
    /// bytes; `len` on the wire), masked with `mask` if given.
    pub(crate) fn push_websocket(
        &mut self,
        opcode: u8,
        parts: &[&[u8]],
        payload: usize,
        len: usize,
        mask: Option<[u8; 4]>,
    ) {
        let tail = self.own_tail(len);
        crate::websocket::write_frame(tail, opcode, parts, payload, mask);
    }

    /// Room for `len` more bytes at the end of an own segment.
    fn own_tail(&mut self, len: usize) -> &mut Vec<u8> {
        let fits = match self.segments.back() {
            Some(Segment::Own(last)) => {
                last.capacity() - last.len() >= len || last.len() + len <= MAX_SEGMENT
            }
            _ => false,
        };
        if !fits {
            let mut fresh = take_segment();
            fresh.reserve(len.max(FIRST_SEGMENT));
            self.segments.push_back(Segment::Own(fresh));
        }
        let Some(Segment::Own(last)) = self.segments.back_mut() else {
            unreachable!("an own segment was just made the last");
        };
        make_room(last, len);
        last
    }

    /// Appends shared bytes (a whole frame, or a frame's payload between
    /// its header and trailer).
    pub(crate) fn push_shared(&mut self, bytes: Bytes) {
        // An empty segment alone would make its write return 0.
        if !bytes.is_empty() {
            self.segments.push_back(Segment::Shared(bytes));
        }
    }

    /// Appends a few bytes that go with shared ones (a length header) to
    /// the last own segment, or to a new one.
    pub(crate) fn push_own(&mut self, bytes: &[u8]) {
        self.own_tail(bytes.len()).extend_from_slice(bytes);
    }

    /// Frees the queue's own memory if it is empty and that memory is more
    /// than a few frames need: a burst must not stay held once written.
    pub(crate) fn shrink_if_empty(&mut self) {
        if self.is_empty() && (self.segments.capacity() > 8 || self.frame_lens.capacity() > 64) {
            *self = SendQueue::default();
        }
    }

    /// Moves everything queued in `other` behind what this queue holds.
    /// Own segments are joined while they fit in one: the engine takes the
    /// outbox at every wake-up, and a slow peer's queue must not become a
    /// list of small, mostly empty segments.
    pub(crate) fn append(&mut self, other: &mut SendQueue) {
        if self.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        while let (Some(Segment::Own(last)), Some(Segment::Own(first))) =
            (self.segments.back_mut(), other.segments.front())
        {
            if last.len() + first.len() > MAX_SEGMENT {
                break;
            }
            make_room(last, first.len());
            last.extend_from_slice(first);
            if let Some(Segment::Own(first)) = other.segments.pop_front() {
                recycle(first);
            }
        }
        self.segments.append(&mut other.segments);
        self.frame_lens.append(&mut other.frame_lens);
    }

    /// The bytes to write next, from `written` bytes into the first segment.
    pub(crate) fn slices<'a>(
        &'a self,
        written: usize,
        out: &mut [IoSlice<'a>; MAX_IOVECS],
    ) -> usize {
        let mut count = 0;
        for (i, segment) in self.segments.iter().take(MAX_IOVECS).enumerate() {
            let start = if i == 0 { written } else { 0 };
            out[i] = IoSlice::new(&segment.bytes()[start..]);
            count += 1;
        }
        count
    }

    /// Forgets everything queued; returns how many bytes that was, less
    /// `written` bytes of the first segment already gone.
    pub(crate) fn clear(&mut self, written: usize) -> usize {
        let total: usize = self.segments.iter().map(|s| s.bytes().len()).sum();
        self.segments.clear();
        self.frame_lens.clear();
        total - written
    }
}

/// A [`SendQueue`] made on first use and kept while the session lives: a
/// session that never sends pays one word for it. The engine and the
/// outbox swap these boxes, so a steady session allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct LazyQueue(Option<Box<SendQueue>>);

/// What an empty [`LazyQueue`] reads as.
static EMPTY: SendQueue = SendQueue {
    segments: VecDeque::new(),
    frame_lens: VecDeque::new(),
};

impl LazyQueue {
    pub(crate) fn get(&self) -> &SendQueue {
        self.0.as_deref().unwrap_or(&EMPTY)
    }

    pub(crate) fn get_mut(&mut self) -> &mut SendQueue {
        self.0.get_or_insert_with(Box::default)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.get().is_empty()
    }

    /// Moves everything queued in `other` behind what this queue holds:
    /// the boxes trade places when this one is empty.
    pub(crate) fn append(&mut self, other: &mut LazyQueue) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else if let Some(other) = other.0.as_deref_mut() {
            self.get_mut().append(other);
        }
    }

    /// See [`SendQueue::shrink_if_empty`].
    pub(crate) fn shrink_if_empty(&mut self) {
        if let Some(queue) = self.0.as_deref_mut() {
            queue.shrink_if_empty();
        }
    }

    /// See [`SendQueue::clear`].
    pub(crate) fn clear(&mut self, written: usize) -> usize {
        self.0
            .as_deref_mut()
            .map_or(0, |queue| queue.clear(written))
    }
}

/// What `send` and the engine share behind the session's lock.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Frames sent and not yet taken by the engine.
    pub(crate) queue: LazyQueue,
    /// The engine has ended: nothing queued now could ever be written.
    pub(crate) finished: bool,
    /// A WebSocket close frame is queued: nothing may follow it.
    pub(crate) sealed: bool,
    /// Who waits, and how the session ended: made on first use, so a
    /// session nobody waits on pays a word for it.
    pub(crate) waiting: Option<Box<Waiting>>,
}

/// Tasks waiting on one session, and its end.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// Tasks waiting for the queue to drain below the low watermark, or for
    /// the session to end.
    pub(crate) wakers: Vec<Waker>,
    /// Why the session ended, once `on_disconnected` has run.
    pub(crate) ended: Option<DisconnectReason>,
}

/// The engine's side of the queue: what it took from the outbox, how far
/// it has written it, and which frames it has reported to `on_sent`.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) queue: LazyQueue,
    /// Bytes of the first segment already written.
    written: usize,
    /// Where the first frame not yet reported starts in the first segment.
    frame_start: usize,
    /// The bytes of a frame that began in segments already written (a
    /// payload sent as `Bytes` between its header and trailer); boxed, as
    /// it is rare (one word while unused, where a `Vec` takes three).
    #[allow(clippy::box_collection)]
    partial: Option<Box<Vec<u8>>>,
}

impl Outgoing {
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes as much of the queue as `io` takes now, in one call: one
    /// segment with a plain write, several with a vectored one.
    pub(crate) fn poll_write<T: AsyncWrite + Unpin>(
        &self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let queue = self.queue.get();
        let segments = &queue.segments;
        if segments.len() == 1 {
            return Pin::new(io).poll_write(cx, &segments[0].bytes()[self.written..]);
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = queue.slices(self.written, &mut slices);
        Pin::new(io).poll_write_vectored(cx, &slices[..count])
    }

    /// Marks `n` more bytes written; with `report`, hands every frame now
    /// wholly written to `on_frame`, in order.
    pub(crate) fn advance(&mut self, mut n: usize, report: bool, mut on_frame: impl FnMut(&[u8])) {
        while n > 0 {
            let len = self.queue.get().segments[0].bytes().len();
            let step = n.min(len - self.written);
            self.written += step;
            n -= step;
            if report {
                self.report(&mut on_frame);
            }
            if self.written == len {
                self.pop_written(report);
            }
        }
        self.queue.shrink_if_empty();
    }

    /// Hands the frames wholly written in the first segment to `on_frame`.
    fn report(&mut self, on_frame: &mut impl FnMut(&[u8])) {
        let SendQueue {
            segments,
            frame_lens,
        } = self.queue.get_mut();
        let segment = segments[0].bytes();
        while let Some(&len) = frame_lens.front() {
            let begun = self.partial.as_ref().map_or(0, |p| p.len());
            let end = self.frame_start + len as usize - begun;
            if end > self.written {
                break;
            }
            match self.partial.take() {
                None => on_frame(&segment[self.frame_start..end]),
                Some(mut partial) => {
                    partial.extend_from_slice(&segment[self.frame_start..end]);
                    on_frame(&partial);
                }
            }
            self.frame_start = end;
            frame_lens.pop_front();
        }
    }

    /// Drops the first segment, wholly written; keeps the start of a frame
    /// that goes on in the next one, and an own segment for reuse.
    fn pop_written(&mut self, report: bool) {
        let queue = self.queue.get_mut();
        let segment = queue
            .segments
            .pop_front()
            .expect("written bytes belong to a queued segment");
        let bytes = segment.bytes();
        if report && self.frame_start < bytes.len() && !queue.frame_lens.is_empty() {
            self.partial
                .get_or_insert_with(Box::default)
                .extend_from_slice(&bytes[self.frame_start..]);
        }
        self.frame_start = 0;
        self.written = 0;
        if let Segment::Own(own) = segment {
            recycle(own);
        }
    }

    /// Forgets everything queued; returns how many unwritten bytes that was.
    pub(crate) fn clear(&mut self) -> usize {
        let dropped = self.queue.clear(self.written);
        self.written = 0;
        self.frame_start = 0;
        self.partial = None;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_capacity(queue: &SendQueue) -> usize {
        queue
            .segments
            .iter()
            .map(|s| match s {
                Segment::Own(v) => v.capacity(),
                Segment::Shared(_) => 0,
            })
            .sum()
    }

    #[test]
    fn a_long_queue_holds_little_more_than_its_bytes() {
        let mut queue = SendQueue::default();
        let message = [7u8; 100];
        let mut bytes = 0;
        for _ in 0..40_000 {
            queue.push_parts(Framing::LengthPrefixed, &[&message], 100, 102);
            bytes += 102;
        }
        let held = own_capacity(&queue);
        assert!(held >= bytes);
        assert!(
            held <= bytes + MAX_SEGMENT,
            "{held} bytes held for {bytes} queued"
        );
        assert!(
            queue
                .segments
                .iter()
                .all(|s| s.bytes().len() <= MAX_SEGMENT)
        );
        let wire: Vec<u8> = queue
            .segments
            .iter()
            .flat_map(|s| s.bytes().to_vec())
            .collect();
        assert_eq!(wire.len(), bytes);
        assert!(wire.chunks(102).all(|f| f[..2] == 102u16.to_le_bytes()));
    }

    #[test]
    fn a_message_larger_than_a_segment_gets_one_of_its_own() {
        let mut queue = SendQueue::default();
        queue.push_parts(Framing::Raw, &[b"small"], 5, 5);
        let big = vec![1u8; MAX_SEGMENT + 10];
        queue.push_parts(Framing::Raw, &[&big], big.len(), big.len());
        queue.push_parts(Framing::Raw, &[b"after"], 5, 5);
        let lens: Vec<usize> = queue.segments.iter().map(|s| s.bytes().len()).collect();
        assert_eq!(lens, vec![5, MAX_SEGMENT + 10, 5]);
    }

    #[test]
    fn written_segments_are_reused_on_the_thread_and_large_ones_freed() {
        let mut queue = SendQueue::default();
        queue.push_parts(Framing::Raw, &[b"hi"], 2, 2);
        let Some(Segment::Own(first)) = queue.segments.pop_front() else {
            panic!("an own segment");
        };
        let at = first.as_ptr();
        recycle(first);
        queue.push_parts(Framing::Raw, &[b"again"], 5, 5);
        let Some(Segment::Own(second)) = queue.segments.pop_front() else {
            panic!("an own segment");
        };
        assert_eq!(second.as_ptr(), at, "the written segment was filled again");
        assert_eq!(second, b"again");
        let large = Vec::with_capacity(KEEP_SEGMENT + 1);
        recycle(large);
        assert!(POOL.with_borrow(|pool| pool.iter().all(|s| s.capacity() <= KEEP_SEGMENT)));
    }

    #[test]
    fn appending_keeps_order_and_swaps_into_an_empty_queue() {
        let mut engine = SendQueue::default();
        let mut outbox = SendQueue::default();
        outbox.push_parts(Framing::Raw, &[b"a"], 1, 1);
        outbox.frame_lens.push_back(1);
        engine.append(&mut outbox);
        assert!(outbox.is_empty());
        outbox.push_shared(Bytes::from_static(b"b"));
        outbox.frame_lens.push_back(1);
        engine.append(&mut outbox);
        let wire: Vec<u8> = engine
            .segments
            .iter()
            .flat_map(|s| s.bytes().to_vec())
            .collect();
        assert_eq!(wire, b"ab");
        assert_eq!(engine.frame_lens, [1, 1]);
        // Own segments taken one after another are joined into one.
        for byte in [b"c", b"d"] {
            outbox.push_parts(Framing::Raw, &[byte], 1, 1);
            engine.append(&mut outbox);
        }
        let lens: Vec<&[u8]> = engine.segments.iter().map(Segment::bytes).collect();
        assert_eq!(lens, [&b"a"[..], b"b", b"cd"]);
        assert_eq!(engine.clear(1), 3);
    }

    /// One message as a test sends it: copied, or by reference with the
    /// framing's header and trailer beside it (as `send_bytes` does).
    #[derive(Debug, Clone)]
    enum Sent {
        Copied(Vec<u8>),
        Shared(Vec<u8>),
    }

    fn push(queue: &mut SendQueue, framing: Framing, message: &Sent) -> Vec<u8> {
        let (payload, len) = match message {
            Sent::Copied(p) | Sent::Shared(p) => (p.clone(), p.len() + framing.overhead()),
        };
        match message {
            Sent::Copied(p) => queue.push_parts(framing, &[p], p.len(), len),
            Sent::Shared(p) => match framing {
                Framing::Raw => queue.push_shared(Bytes::from(p.clone())),
                Framing::LengthPrefixed => {
                    queue.push_own(&(len as u16).to_le_bytes());
                    queue.push_shared(Bytes::from(p.clone()));
                }
                Framing::Lines => {
                    queue.push_shared(Bytes::from(p.clone()));
                    queue.push_shared(Bytes::from_static(b"\n"));
                }
                Framing::WebSocket => unreachable!("the tests draw plain framings"),
            },
        }
        queue.frame_lens.push_back(len as u32);
        payload
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever the mix of copied and shared messages, however the
        /// engine takes the outbox and however the socket cuts the writes:
        /// the bytes go out in order and every payload is reported once,
        /// whole, in order.
        #[test]
        fn any_mix_of_sends_and_writes_is_reported_whole_and_in_order(
            framing in proptest::prop_oneof![
                proptest::strategy::Just(Framing::Raw),
                proptest::strategy::Just(Framing::Lines),
                proptest::strategy::Just(Framing::LengthPrefixed),
            ],
            messages in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(0u8..=9, 1..700)),
                1..40,
            ),
            takes in proptest::collection::vec(1usize..8, 1..40),
            writes in proptest::collection::vec(1usize..3000, 1..200),
        ) {
            let messages: Vec<Sent> = messages
                .into_iter()
                .map(|(shared, p)| if shared { Sent::Shared(p) } else { Sent::Copied(p) })
                .collect();
            let mut outbox = LazyQueue::default();
            let mut out = Outgoing::default();
            let mut expected_wire = Vec::new();
            let mut expected = Vec::new();
            let mut reported: Vec<Vec<u8>> = Vec::new();
            let mut wire = Vec::new();
            let (mut next, mut take, mut write) = (0, 0, 0);
            while next < messages.len() || !outbox.is_empty() || !out.is_empty() {
                // Some sends, then the engine takes the outbox...
                let count = takes[take % takes.len()];
                take += 1;
                for message in messages.iter().skip(next).take(count) {
                    let payload = push(outbox.get_mut(), framing, message);
                    let mut framed = bytes::BytesMut::new();
                    framing.encode(&payload, 1 << 20, &mut framed).unwrap();
                    expected_wire.extend_from_slice(&framed);
                    expected.push(payload);
                }
                next = (next + count).min(messages.len());
                out.queue.append(&mut outbox);
                // ...and writes what a socket takes.
                if !out.is_empty() {
                    let queue = out.queue.get();
                    let first = &queue.segments[0].bytes()[out.written..];
                    let n = first.len().min(writes[write % writes.len()]);
                    write += 1;
                    wire.extend_from_slice(&first[..n]);
                    out.advance(n, true, |frame| {
                        reported.push(frame[framing.payload_of(frame.len())].to_vec())
                    });
                }
            }
            proptest::prop_assert_eq!(wire, expected_wire);
            proptest::prop_assert_eq!(reported, expected);
        }
    }
}
