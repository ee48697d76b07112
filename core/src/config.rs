//! One place for every limit and timeout a session obeys.

use std::time::Duration;

use crate::framing::Framing;

/// The largest read buffer a session may ask for.
const MAX_READ_BUFFER: usize = 1 << 30;

/// Limits, timeouts and framing for the sessions of one [`Listener`] or
/// [`Connector`].
///
/// Every field is public and documented with its default; build one with
/// struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use session_core::{Framing, SessionConfig};
///
/// let config = SessionConfig {
///     framing: Framing::Lines,
///     idle_timeout: Some(Duration::from_secs(30)),
///     ..SessionConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
///
/// [`Listener`]: crate::Listener
/// [`Connector`]: crate::Connector
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How bytes on the wire become messages. Default [`Framing::Raw`]: each
    /// read is one message, as in the original C# sessions.
    pub framing: Framing,
    /// The largest message payload, in bytes, that a peer may send or that
    /// `send` accepts. Default 65,533 (the most a 2-byte size that counts its
    /// own header can describe). A peer that exceeds it is disconnected with
    /// [`DisconnectReason::FrameTooLarge`](crate::DisconnectReason::FrameTooLarge).
    pub max_frame_len: usize,
    /// Size of one read from the socket. Default 64 KiB, at most 1 GiB. The
    /// buffer is shared by the sessions of one thread; a session keeps bytes
    /// of its own only for a partial frame.
    pub read_buffer_size: usize,
    /// Queued outgoing bytes above which the session stops reading from its
    /// peer until the queue drains below [`send_low_watermark`](Self::send_low_watermark).
    /// Default 1 MiB.
    pub send_high_watermark: usize,
    /// Queued outgoing bytes below which a paused session reads again.
    /// Default 256 KiB.
    pub send_low_watermark: usize,
    /// Hard cap on queued outgoing bytes. A `send` that would pass it closes
    /// the session with [`DisconnectReason::SlowConsumer`](crate::DisconnectReason::SlowConsumer).
    /// Default 4 MiB.
    pub max_send_queue: usize,
    /// Close a session that has neither received nor sent anything for this
    /// long. Default `None` (never).
    pub idle_timeout: Option<Duration>,
    /// Give up a connection attempt to one address after this long.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// When a session closes gracefully (local close, peer close, shutdown),
    /// keep writing its queued messages for at most this long. Default 5 s.
    pub drain_timeout: Duration,
    /// Most sessions one listener keeps open at once; a connection over the
    /// limit is closed at once and counted. Default 10,000.
    pub max_connections: usize,
    /// Give every worker thread a listening socket of its own on the same
    /// port (`SO_REUSEPORT`; the kernel spreads new connections over them),
    /// so that each worker accepts its own connections and keeps their
    /// sessions. Default `false`: one accept loop hands connections to the
    /// workers in turn. Unix only.
    pub reuse_port: bool,
    /// Expect a PROXY protocol header (version 1 or 2, as HAProxy's
    /// `send-proxy` / `send-proxy-v2` and nginx's `proxy_protocol on` send)
    /// at the start of every accepted connection, and use the client address
    /// it gives as the session's peer. A connection whose header is missing,
    /// malformed, longer than 1,024 bytes or late is closed, counted in
    /// [`ListenerStats::proxy_rejected`](crate::ListenerStats::proxy_rejected),
    /// and never reaches `on_connected`. Only for listeners behind a
    /// balancer: anyone who can connect could claim any address. Default
    /// `false`.
    pub proxy_protocol: bool,
    /// How long a connection may take to send its PROXY header. Default 3 s.
    pub proxy_header_timeout: Duration,
    /// The kernel's send buffer per socket (`SO_SNDBUF`), in bytes. Default
    /// `None`: the kernel's own, which on Linux grows by itself up to
    /// `net.ipv4.tcp_wmem`'s maximum (often 4 MiB) for a peer that does not
    /// read. Set it to bound what a slow consumer costs beyond
    /// [`max_send_queue`](Self::max_send_queue).
    pub socket_send_buffer: Option<usize>,
    /// Disable Nagle's algorithm on every connection, so small messages leave
    /// at once. Default `true`.
    pub nodelay: bool,
    /// With TLS: how long a connection may take to finish its handshake.
    /// Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// With TLS: the most bytes a peer may send during the handshake
    /// (a certificate chain fits in a few kilobytes). Default 64 KiB.
    pub tls_max_handshake_bytes: usize,
    /// With WebSocket: how long a connection may take to finish its
    /// upgrade (the HTTP request and the answer). Default 10 s.
    pub websocket_handshake_timeout: Duration,
    /// With WebSocket: the most bytes of an upgrade's request (or, for a
    /// client, response) head; a server answers a longer one with `431`.
    /// Default 8 KiB, at least 256 and at most 1 MiB.
    pub websocket_max_header_bytes: usize,
    /// With WebSocket: the most header fields of an upgrade's head; a
    /// server answers more with `431`. Default 64, at least 8 and at most
    /// 1,024.
    pub websocket_max_headers: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            framing: Framing::Raw,
            max_frame_len: 65_533,
            read_buffer_size: 64 * 1024,
            send_high_watermark: 1024 * 1024,
            send_low_watermark: 256 * 1024,
            max_send_queue: 4 * 1024 * 1024,
            idle_timeout: None,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            reuse_port: false,
            proxy_protocol: false,
            proxy_header_timeout: Duration::from_secs(3),
            socket_send_buffer: None,
            nodelay: true,
            tls_handshake_timeout: Duration::from_secs(10),
            tls_max_handshake_bytes: 64 * 1024,
            websocket_handshake_timeout: Duration::from_secs(10),
            websocket_max_header_bytes: 8 * 1024,
            websocket_max_headers: 64,
        }
    }
}

impl SessionConfig {
    /// Checks that the limits are consistent with one another, and says which
    /// one is not.
    ///
    /// [`Listener::bind`](crate::Listener::bind) and
    /// [`Connector::new`](crate::Connector::new) call it.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_len == 0 {
            return Err("max_frame_len must be at least 1".into());
        }
        if self.framing == Framing::WebSocket {
            return Err(
                "framing websocket comes with the upgrade: use Listener::with_websocket or Connector::with_websocket"
                    .into(),
            );
        }
        if self.framing == Framing::LengthPrefixed && self.max_frame_len > 65_533 {
            return Err(format!(
                "max_frame_len {} is more than a length-prefixed frame can hold (65533)",
                self.max_frame_len
            ));
        }
        if self.read_buffer_size == 0 {
            return Err("read_buffer_size must be at least 1".into());
        }
        if self.read_buffer_size > MAX_READ_BUFFER {
            return Err(format!(
                "read_buffer_size {} is more than {MAX_READ_BUFFER} (1 GiB)",
                self.read_buffer_size
            ));
        }
        if self.send_low_watermark > self.send_high_watermark {
            return Err(format!(
                "send_low_watermark ({}) is above send_high_watermark ({})",
                self.send_low_watermark, self.send_high_watermark
            ));
        }
        if self.send_high_watermark > self.max_send_queue {
            return Err(format!(
                "send_high_watermark ({}) is above max_send_queue ({})",
                self.send_high_watermark, self.max_send_queue
            ));
        }
        let largest_frame = self.max_frame_len + self.framing.overhead();
        if largest_frame > self.max_send_queue {
            return Err(format!(
                "max_send_queue ({}) cannot hold one largest frame ({largest_frame} bytes)",
                self.max_send_queue
            ));
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if !(256..=1 << 20).contains(&self.websocket_max_header_bytes) {
            return Err(format!(
                "websocket_max_header_bytes {} is not between 256 and 1048576",
                self.websocket_max_header_bytes
            ));
        }
        if !(8..=1024).contains(&self.websocket_max_headers) {
            return Err(format!(
                "websocket_max_headers {} is not between 8 and 1024",
                self.websocket_max_headers
            ));
        }
        Ok(())
    }

    /// Applies the socket options of this config to a new connection.
    pub(crate) fn apply_to(&self, socket: &std::net::TcpStream) {
        if self.nodelay {
            let _ = socket.set_nodelay(true);
        }
        if let Some(size) = self.socket_send_buffer {
            if let Err(e) = socket2::SockRef::from(socket).set_send_buffer_size(size) {
                log::debug!("set SO_SNDBUF to {size}: {e}");
            }
        }
    }

    /// The TLS handshake's limits.
    pub(crate) fn tls_limits(&self) -> crate::tls::Limits {
        crate::tls::Limits {
            timeout: self.tls_handshake_timeout,
            max_bytes: self.tls_max_handshake_bytes,
        }
    }

    /// Checks the config for WebSocket sessions: valid, and a send queue
    /// that holds one largest message with its longest header.
    pub(crate) fn validated_for_websocket(&self) -> std::io::Result<()> {
        self.validated()?;
        let largest = self
            .max_frame_len
            .saturating_add(Framing::WebSocket.overhead());
        if largest > self.max_send_queue {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "invalid session config: max_send_queue ({}) cannot hold one largest WebSocket frame ({largest} bytes)",
                    self.max_send_queue
                ),
            ));
        }
        Ok(())
    }

    /// The WebSocket upgrade's limits.
    pub(crate) fn websocket_limits(&self) -> crate::websocket::Limits {
        crate::websocket::Limits {
            timeout: self.websocket_handshake_timeout,
            max_bytes: self.websocket_max_header_bytes,
            max_headers: self.websocket_max_headers,
        }
    }

    pub(crate) fn validated(&self) -> std::io::Result<()> {
        self.validate().map_err(|message| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid session config: {message}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_options_are_applied_to_new_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let default = socket2::SockRef::from(&server).send_buffer_size().unwrap();
        let config = SessionConfig {
            socket_send_buffer: Some(8 * 1024),
            ..SessionConfig::default()
        };
        config.apply_to(&server);
        let set = socket2::SockRef::from(&server).send_buffer_size().unwrap();
        // Linux doubles the request for its own bookkeeping.
        assert!(
            (8 * 1024..=16 * 1024).contains(&set),
            "SO_SNDBUF {set}, default {default}"
        );
        assert!(server.nodelay().unwrap());
        drop(client);
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(SessionConfig::default().validate(), Ok(()));
    }

    #[test]
    fn inconsistent_limits_are_named() {
        let config = SessionConfig {
            send_low_watermark: 10,
            send_high_watermark: 5,
            ..SessionConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("send_low_watermark")
        );

        let config = SessionConfig {
            framing: Framing::LengthPrefixed,
            max_frame_len: 70_000,
            ..SessionConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("65533"));

        let config = SessionConfig {
            max_send_queue: 100,
            send_high_watermark: 50,
            send_low_watermark: 10,
            ..SessionConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("largest frame"));

        let config = SessionConfig {
            read_buffer_size: (1 << 30) + 1,
            ..SessionConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("read_buffer_size"));

        let config = SessionConfig {
            framing: Framing::WebSocket,
            ..SessionConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("with_websocket"));
        let config = SessionConfig {
            max_frame_len: 100,
            max_send_queue: 110,
            send_high_watermark: 50,
            send_low_watermark: 10,
            ..SessionConfig::default()
        };
        assert!(config.validate().is_ok());
        let err = config.validated_for_websocket().unwrap_err().to_string();
        assert!(err.contains("WebSocket frame (114 bytes)"), "{err}");

        let config = SessionConfig {
            websocket_max_header_bytes: 10,
            ..SessionConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("websocket_max_header_bytes")
        );
        let config = SessionConfig {
            websocket_max_headers: 5000,
            ..SessionConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("websocket_max_headers")
        );
    }
}
