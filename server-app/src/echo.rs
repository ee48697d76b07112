//! The seed's `ClientSession`: the server-side session that answers every
//! message with the message and a suffix.

use session_core::{DisconnectReason, Framing, MessageKind, SendError, Session, SessionHandle};

use crate::output::{printable, say, timestamp};
use crate::tls;

/// Replies to each message with the message's bytes followed by the
/// suffix's bytes, and prints what it receives and sends.
#[derive(Debug, Clone)]
pub struct EchoSession {
    suffix: Vec<u8>,
    quiet: bool,
}

impl EchoSession {
    /// A session that appends `suffix` to each reply; `quiet` leaves out
    /// the per-message lines.
    pub fn new(suffix: &str, quiet: bool) -> EchoSession {
        EchoSession {
            suffix: suffix.as_bytes().to_vec(),
            quiet,
        }
    }
}

impl EchoSession {
    fn print_received(&self, message: &[u8]) {
        if !self.quiet {
            say!(
                "{} From client - Len : {}, String : {}",
                timestamp(),
                message.len(),
                printable(message)
            );
        }
    }
}

/// Says why a reply was not sent, unless the session is closing (its
/// disconnect line says why).
fn report(handle: &SessionHandle, sent: Result<(), SendError>) {
    match sent {
        Ok(()) | Err(SendError::Closed) => {}
        Err(e) => eprintln!("reply to {} not sent: {e}", handle.peer_addr()),
    }
}

impl Session for EchoSession {
    fn on_connected(&mut self, handle: &SessionHandle) {
        say!("Connected to {}", handle.peer_addr());
        if let (false, Some(info)) = (self.quiet, handle.tls()) {
            say!("TLS with {}: {}", handle.peer_addr(), tls::describe(info));
        }
    }

    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        self.print_received(message);
        // Message and suffix go out as one reply, framed without joining
        // them into a buffer first. A raw read of nearly the maximum leaves
        // no room for the suffix in one message: raw bytes carry no
        // boundaries, so it goes out as two, the same bytes on the wire.
        let sent = if self.suffix.is_empty() {
            handle.send(message)
        } else if handle.framing() == Framing::Raw
            && message.len() + self.suffix.len() > handle.max_frame_len()
        {
            handle
                .send(message)
                .and_then(|()| handle.send(&self.suffix))
        } else {
            handle.send_parts(&[message, &self.suffix])
        };
        report(handle, sent);
    }

    /// A WebSocket message: answered in its kind, the message and the
    /// suffix in one WebSocket message (text stays text: both are UTF-8).
    fn on_message(&mut self, handle: &SessionHandle, message: &[u8], kind: MessageKind) {
        self.print_received(message);
        report(handle, handle.send_message(kind, &[message, &self.suffix]));
    }

    fn on_sent(&mut self, _handle: &SessionHandle, message: &[u8]) {
        say!("{} To client : {}", timestamp(), printable(message));
    }

    // Quiet: `on_sent` would print nothing, so the engine need not keep
    // each reply's length for it.
    fn wants_on_sent(&self) -> bool {
        !self.quiet
    }

    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        say!("Disconnected from {} ({reason})", handle.peer_addr());
    }
}
