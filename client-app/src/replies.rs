//! Counting the server's replies in the byte stream it sends back.
//!
//! With raw framing a TCP read is whatever the network delivered: two replies
//! can arrive in one read, one reply can be split over two. So replies are
//! not counted per read: a reply is counted when the message it answers
//! (which an echo server repeats, whatever suffix it appends) shows up in the
//! received bytes, each message after the previous one, in the order they
//! were sent. The same rule holds for framed replies, whose payloads are
//! simply fed in one after the other.

/// Finds the sent messages, in order, in the bytes received so far.
#[derive(Debug, Clone)]
pub struct ReplyTracker {
    expected: Vec<Vec<u8>>,
    found: usize,
    /// Received bytes not yet matched; never longer than the next expected
    /// message plus the latest read.
    window: Vec<u8>,
}

impl ReplyTracker {
    /// A tracker waiting for `expected`, in order.
    pub fn new(expected: Vec<Vec<u8>>) -> ReplyTracker {
        let mut tracker = ReplyTracker {
            expected,
            found: 0,
            window: Vec::new(),
        };
        tracker.scan();
        tracker
    }

    /// Feeds received bytes; returns how many replies are now found.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.found < self.expected.len() {
            self.window.extend_from_slice(bytes);
            self.scan();
        }
        self.found
    }

    /// Replies found so far.
    pub fn found(&self) -> usize {
        self.found
    }

    fn scan(&mut self) {
        while let Some(needle) = self.expected.get(self.found) {
            if needle.is_empty() {
                self.found += 1;
                continue;
            }
            match find(&self.window, needle) {
                Some(at) => {
                    self.window.drain(..at + needle.len());
                    self.found += 1;
                }
                None => {
                    // Only the last `needle.len() - 1` bytes can still begin
                    // a match: keep those, drop the rest.
                    let keep = self.window.len().min(needle.len() - 1);
                    self.window.drain(..self.window.len() - keep);
                    return;
                }
            }
        }
        self.window = Vec::new();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(messages: &[&str]) -> ReplyTracker {
        ReplyTracker::new(messages.iter().map(|m| m.as_bytes().to_vec()).collect())
    }

    #[test]
    fn one_reply_per_read() {
        let mut t = tracker(&["Hi 0", "Hi 1"]);
        assert_eq!(t.feed(b"Hi 0 - Receive Completed"), 1);
        assert_eq!(t.feed(b"Hi 1 - Receive Completed"), 2);
    }

    #[test]
    fn coalesced_and_split_replies() {
        let mut t = tracker(&["Hi 0", "Hi 1", "Hi 2"]);
        assert_eq!(t.feed(b"Hi 0 - Receive CompletedHi 1 - Rec"), 2);
        assert_eq!(t.feed(b"eive CompletedH"), 2);
        assert_eq!(t.feed(b"i"), 2);
        assert_eq!(t.feed(b" 2 - Receive Completed"), 3);
    }

    #[test]
    fn order_matters_and_prefixes_do_not_overcount() {
        let mut t = tracker(&["Hi 1", "Hi 10"]);
        assert_eq!(
            t.feed(b"Hi 10"),
            1,
            "Hi 10 holds Hi 1 but not a second Hi 10"
        );
        assert_eq!(t.feed(b"Hi 10"), 2);
        let mut t = tracker(&["a", "b"]);
        assert_eq!(t.feed(b"ba"), 1);
    }

    #[test]
    fn unrelated_bytes_are_not_kept() {
        let mut t = tracker(&["Hi 0"]);
        for _ in 0..1000 {
            t.feed(b"garbage garbage garbage");
        }
        assert!(t.window.len() < 4);
        assert_eq!(t.found(), 0);
    }

    #[test]
    fn nothing_expected_is_done_at_once() {
        assert_eq!(tracker(&[]).found(), 0);
        assert_eq!(tracker(&["", ""]).found(), 2);
    }
}
