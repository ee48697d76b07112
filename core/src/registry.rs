//! Sets of live sessions: every session of a listener, or a group ("room")
//! that the user's code keeps, with broadcast that frames a message once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::framing::Frame;
use crate::session::{SendError, SessionHandle, SessionId};

/// A set of live sessions, safe to share between tasks and threads: the
/// course's `SessionManager`, and a room of a chat or a game.
///
/// A [`Listener`](crate::Listener) keeps one with every open session (see
/// [`Listener::registry`](crate::Listener::registry)): sessions are added
/// before `on_connected` and removed after `on_disconnected`. For a room,
/// make a `Registry`, [`insert`](Self::insert) on join and
/// [`remove`](Self::remove) on leave; a session that closes without leaving
/// is dropped from the set at the next broadcast.
///
/// Broadcast frames the payload once and every receiver shares that buffer
/// by reference count; a receiver whose send queue is full is closed as a
/// slow consumer and the others never wait for it.
///
/// ```
/// use session_core::{Frame, Framing, Registry};
///
/// let room = Registry::new();
/// // ... room.insert(handle) as sessions join ...
/// let frame = Frame::new(Framing::Lines, b"hello, everyone", 1024).unwrap();
/// let report = room.broadcast(&frame, None);
/// assert_eq!(report.delivered, 0);
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<SessionId, SessionHandle>>>,
}

/// What one [`Registry::broadcast`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Sessions the frame was queued for.
    pub delivered: usize,
    /// Sessions that were closed or closing, now removed from the set.
    pub removed: usize,
    /// Sessions over their send-queue cap, now closing as slow consumers
    /// (and removed from the set).
    pub slow: usize,
    /// Sessions whose framing or frame limit does not fit the frame.
    pub unfit: usize,
}

impl Registry {
    /// An empty set.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session; returns false if it was already in the set.
    pub fn insert(&self, handle: SessionHandle) -> bool {
        self.lock().insert(handle.id(), handle).is_none()
    }

    /// Removes a session; returns its handle if it was in the set.
    pub fn remove(&self, id: SessionId) -> Option<SessionHandle> {
        self.lock().remove(&id)
    }

    /// The session with this id, if it is in the set.
    pub fn get(&self, id: SessionId) -> Option<SessionHandle> {
        self.lock().get(&id).cloned()
    }

    /// Whether the session is in the set.
    pub fn contains(&self, id: SessionId) -> bool {
        self.lock().contains_key(&id)
    }

    /// How many sessions are in the set.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot of the handles in the set, in no particular order.
    pub fn handles(&self) -> Vec<SessionHandle> {
        self.lock().values().cloned().collect()
    }

    /// Queues `frame` for every session in the set except `except`; never
    /// waits for any of them.
    pub fn broadcast(&self, frame: &Frame, except: Option<SessionId>) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        self.lock().retain(|&id, handle| {
            if Some(id) == except {
                return true;
            }
            match handle.send_frame(frame) {
                Ok(()) => {
                    report.delivered += 1;
                    true
                }
                Err(SendError::Closed) => {
                    report.removed += 1;
                    false
                }
                Err(SendError::SlowConsumer) => {
                    report.slow += 1;
                    false
                }
                Err(SendError::Frame(_)) => {
                    report.unfit += 1;
                    true
                }
            }
        });
        report
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;
    use crate::framing::Framing;

    fn handle(framing: Framing) -> SessionHandle {
        let addr = "127.0.0.1:1".parse().unwrap();
        let config = SessionConfig {
            framing,
            max_send_queue: 64,
            send_high_watermark: 32,
            send_low_watermark: 16,
            max_frame_len: 16,
            ..SessionConfig::default()
        };
        SessionHandle::new(addr, addr, &config, false, None, None)
    }

    #[test]
    fn a_large_broadcast_frame_is_shared_and_a_small_one_copied() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let config = SessionConfig::default();
        let room = Registry::new();
        let members: Vec<_> = (0..3)
            .map(|_| SessionHandle::new(addr, addr, &config, false, None, None))
            .collect();
        for h in &members {
            room.insert(h.clone());
        }
        let large = Frame::new(Framing::Raw, &[1; 4096], 8192).unwrap();
        let small = Frame::new(Framing::Raw, b"tick", 8192).unwrap();
        assert_eq!(room.broadcast(&large, None).delivered, 3);
        assert_eq!(room.broadcast(&small, None).delivered, 3);
        for h in &members {
            let outbox = h.shared.lock_outbox();
            let segments = &outbox.queue.get().segments;
            assert_eq!(segments.len(), 2);
            // The same buffer for every receiver, not a copy...
            assert_eq!(segments[0].bytes().as_ptr(), large.bytes().as_ptr());
            // ...and the small frame in the receiver's own memory.
            assert!(matches!(segments[1], crate::send_queue::Segment::Own(_)));
            assert_eq!(segments[1].bytes(), b"tick");
        }
    }

    #[test]
    fn broadcast_queues_for_each_and_sorts_out_closed_slow_and_unfit_sessions() {
        let room = Registry::new();
        let open: Vec<_> = (0..3).map(|_| handle(Framing::Lines)).collect();
        for h in &open {
            assert!(room.insert(h.clone()));
        }
        assert!(!room.insert(open[0].clone()), "inserting twice is refused");
        let closed = handle(Framing::Lines);
        closed.disconnect();
        room.insert(closed.clone());
        let other = handle(Framing::Raw);
        room.insert(other.clone());

        let frame = Frame::new(Framing::Lines, b"hello", 16).unwrap();
        let report = room.broadcast(&frame, Some(open[2].id()));
        assert_eq!(
            report,
            BroadcastReport {
                delivered: 2,
                removed: 1,
                slow: 0,
                unfit: 1
            }
        );
        assert!(!room.contains(closed.id()));
        assert_eq!(room.len(), 4);
        // Every receiver queued the frame; the excepted one nothing.
        let queued = |h: &SessionHandle| {
            let outbox = h.shared.lock_outbox();
            let segments = &outbox.queue.get().segments;
            segments
                .iter()
                .flat_map(|s| s.bytes().to_vec())
                .collect::<Vec<u8>>()
        };
        assert_eq!(queued(&open[0]), b"hello\n");
        assert_eq!(queued(&open[1]), b"hello\n");
        assert!(
            queued(&open[2]).is_empty(),
            "the excepted session got nothing"
        );

        // Eleven more 6-byte frames pass the 64-byte cap of every receiver.
        let mut slow = 0;
        for _ in 0..11 {
            slow += room.broadcast(&frame, None).slow;
        }
        assert_eq!(slow, 3);
        assert!(!open[0].is_connected());
        assert_eq!(room.len(), 1, "only the unfit raw session is left");
        assert!(room.get(other.id()).is_some());
    }
}
