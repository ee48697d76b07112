//! TLS with rustls, as a layer between the socket and the framing.
//!
//! rustls is sans-IO: ciphertext in, plaintext out, and back. [`TlsStream`]
//! drives one rustls connection over the session's own socket, on the
//! session's own worker, with rustls's unbuffered API: ciphertext is
//! decrypted in a buffer of the thread's and the plaintext handed to the
//! engine's read; the engine's writes are encrypted and written at once. An
//! idle session keeps no TLS buffer (`tls/stream.rs`). The engine sees a byte
//! stream like any other, so framing, back-pressure and the close work as
//! on plain TCP, and a plain session pays nothing for TLS (the engine is
//! generic over its stream).
//!
//! The handshake runs before the session starts, with a deadline and a cap
//! on its bytes: a peer that fails it never reaches `on_connected`.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::io::{AsyncRead, AsyncWrite};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

mod stream;

pub(crate) use stream::TlsStream;
use stream::{Conn, RecordSni};

/// The server side of TLS for a [`Listener`](crate::Listener): a
/// certificate chain and its key, and optionally the CA that client
/// certificates must be signed by (mutual TLS).
///
/// ```no_run
/// use std::path::Path;
/// use session_core::ServerTls;
///
/// let tls = ServerTls::from_pem_files(Path::new("cert.pem"), Path::new("key.pem"), None)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

/// The client side of TLS for a [`Connector`](crate::Connector): the roots
/// it trusts, the name it expects, and optionally its own certificate.
///
/// ```no_run
/// use std::path::Path;
/// use session_core::ClientTls;
///
/// // Trust one CA (say, a test CA); `None` trusts the system's roots.
/// let tls = ClientTls::new(Some(Path::new("ca.pem")), None)?.with_server_name("localhost")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

/// What one session's TLS handshake settled, read with
/// [`SessionHandle::tls`](crate::SessionHandle::tls).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    protocol: Option<rustls::ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    peer_certificates: Vec<CertificateDer<'static>>,
    server_name: Option<String>,
}

impl TlsInfo {
    /// The protocol version, such as `TLSv1_3`.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.protocol
    }

    /// The application protocol both sides chose (ALPN), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The peer's certificate chain, its own first (DER): on a server with
    /// client certificates, the client's; on a client, the server's. A
    /// device gateway keys its sessions by the first one's subject.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// On a server, the name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An error about `path`: what was tried, and what failed.
fn file_error(what: &str, path: &Path, e: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

/// The certificates in a PEM file, at least one.
fn load_certs(what: &str, path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in it"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("TLS key file", path, e))
}

/// A root store with every certificate of a PEM file.
fn load_roots(path: &Path) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("TLS CA file", path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("TLS CA file", path, e))?;
    }
    Ok(roots)
}

/// The system's trusted roots.
fn system_roots() -> io::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or("none found".to_owned(), |e| e.to_string());
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("load the system's TLS roots: {why}"),
        ));
    }
    Ok(roots)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl ServerTls {
    /// From PEM files: `cert_chain` (the server's certificate first) and
    /// its private key (PKCS#8, PKCS#1 or SEC1). With `client_ca`, every
    /// client must present a certificate signed by one of the CAs in that
    /// file (mutual TLS). TLS 1.2 and 1.3. Errors name the file and what is
    /// wrong with it.
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> io::Result<ServerTls> {
        let certs = load_certs("TLS certificate file", cert_chain)?;
        let key = load_key(key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = Arc::new(load_roots(path)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| file_error("TLS client CA file", path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| file_error("TLS certificate and key", cert_chain, e))?;
        Ok(ServerTls::from_config(Arc::new(config)))
    }

    /// From a rustls configuration built by hand (ALPN, session resumption,
    /// a certificate resolver, ...).
    pub fn from_config(config: Arc<ServerConfig>) -> ServerTls {
        // The resolver also notes the name each client asks for (see
        // `TlsInfo::server_name`).
        let mut config = Arc::unwrap_or_clone(config);
        config.cert_resolver = Arc::new(RecordSni(config.cert_resolver));
        ServerTls {
            config: Arc::new(config),
        }
    }

    /// The rustls configuration.
    pub fn rustls_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

impl ClientTls {
    /// Trusts the CAs in the PEM file `ca`, or the system's roots if
    /// `None`; with `client_cert` (certificate chain and key PEM files),
    /// presents that certificate to servers that ask (mutual TLS). The
    /// server's name is checked against the name given to
    /// [`with_server_name`](Self::with_server_name), or else the host the
    /// connector resolved.
    pub fn new(ca: Option<&Path>, client_cert: Option<(&Path, &Path)>) -> io::Result<ClientTls> {
        let roots = match ca {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = load_certs("TLS certificate file", cert)?;
                let key = load_key(key)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| file_error("TLS certificate and key", cert, e))?
            }
        };
        Ok(ClientTls::from_config(Arc::new(config)))
    }

    /// From a rustls configuration built by hand.
    pub fn from_config(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    /// Expects the server to be `name` (and sends it as SNI), instead of
    /// the host the connector resolved.
    pub fn with_server_name(mut self, name: &str) -> io::Result<ClientTls> {
        self.server_name = Some(server_name(name)?);
        Ok(self)
    }

    /// The rustls configuration, for code that drives rustls itself (a
    /// load generator's own loop).
    pub fn rustls_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name to expect from a server reached as `host`: the one given to
    /// [`with_server_name`](Self::with_server_name), else `host`.
    pub fn name_for(&self, host: &str) -> io::Result<ServerName<'static>> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => server_name(host),
        }
    }
}

fn server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {name:?}: {e}"),
        )
    })
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// The server side of the handshake on `io`, within `timeout` and
/// `max_bytes` of the client's; the stream and what it settled.
pub(crate) async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    tls: &ServerTls,
    limits: Limits,
) -> io::Result<(TlsStream<T>, TlsInfo)> {
    let conn = UnbufferedServerConnection::new(Arc::clone(&tls.config)).map_err(tls_error)?;
    handshake(TlsStream::new(io, Conn::Server(Box::new(conn))), limits).await
}

/// The client side of the handshake on `io`, expecting `name`.
pub(crate) async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    tls: &ClientTls,
    name: ServerName<'static>,
    limits: Limits,
) -> io::Result<(TlsStream<T>, TlsInfo)> {
    let conn = UnbufferedClientConnection::new(Arc::clone(&tls.config), name).map_err(tls_error)?;
    handshake(TlsStream::new(io, Conn::Client(Box::new(conn))), limits).await
}

/// A handshake's deadline and cap on the peer's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: std::time::Duration,
    pub(crate) max_bytes: usize,
}

async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    mut stream: TlsStream<T>,
    limits: Limits,
) -> io::Result<(TlsStream<T>, TlsInfo)> {
    stream.handshake(limits).await?;
    let info = stream.info();
    Ok((stream, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;
    use crate::connection::run_session_layered;
    use crate::session::{DisconnectReason, Session, SessionHandle};
    use crate::test_pipe::duplex;
    use futures::AsyncWriteExt;
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::task::Poll;

    /// A server and a client configuration for `localhost`, made in
    /// memory.
    fn configs() -> (ServerTls, ClientTls) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            ServerTls::from_config(Arc::new(server)),
            ClientTls::from_config(Arc::new(client)),
        )
    }

    struct Echo;

    impl Session for Echo {
        fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
            handle.send(message).unwrap();
        }
    }

    fn limits() -> Limits {
        SessionConfig::default().tls_limits()
    }

    /// Through a pipe of 97 bytes every write of either side is cut short
    /// and waits: 200 KB echoed whole and in order, then a clean close
    /// (close_notify) from the client, which the server sees as the
    /// peer's close, not a truncation.
    #[test]
    fn an_echo_through_a_tiny_pipe_is_whole_and_closes_cleanly() {
        let (server_tls, client_tls) = configs();
        let (server_io, client_io) = duplex(97);
        let addr = "127.0.0.1:1".parse().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reason = async_std::task::block_on(async {
            let server = async_std::task::spawn(async move {
                let (stream, info) = accept(server_io, &server_tls, limits()).await.unwrap();
                let config = SessionConfig::default();
                let (_, engine) =
                    run_session_layered(stream, addr, addr, &config, Echo, Some(info), None);
                engine.await
            });
            let name = client_tls.name_for("localhost").unwrap();
            let (client, info) = connect(client_io, &client_tls, name, limits())
                .await
                .unwrap();
            assert_eq!(
                info.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            // One task writes and reads (the pipe keeps one waker per
            // direction, as a socket does).
            let (mut client, mut sent, mut echoed) = (client, 0, Vec::new());
            let mut buf = [0u8; 4096];
            poll_fn(|cx| {
                while sent < data.len() {
                    let end = (sent + 1000).min(data.len());
                    match Pin::new(&mut client).poll_write(cx, &data[sent..end]) {
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Ready(Err(e)) => panic!("write: {e}"),
                        Poll::Pending => break,
                    }
                }
                loop {
                    match Pin::new(&mut client).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(0)) => panic!("the server closed early"),
                        Poll::Ready(Ok(n)) => echoed.extend_from_slice(&buf[..n]),
                        Poll::Ready(Err(e)) => panic!("read: {e}"),
                        Poll::Pending => break,
                    }
                }
                if echoed.len() < data.len() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            assert!(echoed == data, "the echo differs");
            client.close().await.unwrap();
            server.await
        });
        assert!(matches!(reason, DisconnectReason::PeerClosed), "{reason:?}");
    }

    /// A peer that sends garbage instead of a ClientHello fails the
    /// handshake with an error, not a panic.
    #[test]
    fn garbage_fails_the_handshake() {
        let (server_tls, _) = configs();
        let (server_io, mut client_io) = duplex(4096);
        let result = async_std::task::block_on(async {
            client_io
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            accept(server_io, &server_tls, limits()).await
        });
        let error = result.map(|_| ()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    /// Reads all of `len` bytes from `stream`, `chunk` bytes at most per
    /// read.
    async fn read_exactly<T: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut TlsStream<T>,
        len: usize,
        chunk: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        while got.len() < len {
            let n = poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf))
                .await
                .unwrap();
            assert_ne!(n, 0, "the stream ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Once what came is read and what was written has gone, a session
    /// holds no TLS buffer of its own: that is what keeps idle TLS
    /// sessions small. Plaintext larger than the reader's buffer waits in
    /// the session meanwhile, and comes out whole and in order.
    #[test]
    fn an_idle_stream_holds_no_buffer_and_small_reads_get_everything() {
        let (server_tls, client_tls) = configs();
        let (server_io, client_io) = duplex(64 * 1024);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        async_std::task::block_on(async {
            // The server's task reports what it held; a failed assertion
            // there would leave this test waiting.
            let server = async_std::task::spawn(async move {
                let (mut stream, _) = accept(server_io, &server_tls, limits()).await.unwrap();
                // 10 bytes per read: most of each record waits in the
                // session between reads.
                let got = read_exactly(&mut stream, 40_000, 10).await;
                stream.write_all(&got).await.unwrap();
                stream.flush().await.unwrap();
                (got, stream.held())
            });
            let name = client_tls.name_for("localhost").unwrap();
            let (mut client, _) = connect(client_io, &client_tls, name, limits())
                .await
                .unwrap();
            client.write_all(&data).await.unwrap();
            let echoed = read_exactly(&mut client, data.len(), 4096).await;
            assert!(echoed == data, "the echo differs");
            let (got, after_echo) = server.await;
            assert!(got == data, "the server read something else");
            assert_eq!(after_echo, 0, "the server, after the echo");
            assert_eq!(client.held(), 0, "the client, after the echo");
        });
    }
}
