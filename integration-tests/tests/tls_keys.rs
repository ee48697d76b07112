//! TLS keys in every PEM form a server is given (PKCS#8, PKCS#1, SEC1),
//! and the cap on a peer's handshake bytes (issue 13).
//!
//! The key forms are made with the `openssl` command line (on Linux) from
//! the keys the test certificates come with (PKCS#8), and an RSA key for
//! PKCS#1; where `openssl` is missing the test says it skipped (and fails
//! under CI, which installs it).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use async_std::task::block_on;
use integration_tests::pki::Pki;
use integration_tests::process::tools_present;
use integration_tests::{Recorder, TIMEOUT, start_tls_server, wait_until};
use session_core::rustls::pki_types::ServerName;
use session_core::rustls::{self, ClientConnection};
use session_core::{ClientTls, Connector, IpInformation, ServerTls, SessionConfig};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS echo server with `cert` and `key`, and a client of this library
/// trusting `ca` echoes one message through it.
fn serves(cert: &Path, key: &Path, ca: &Path) {
    let tls = ServerTls::from_pem_files(cert, key, None).expect("the key loads");
    let (recorder, _events) = Recorder::new();
    let recorder = recorder.echo();
    let server = start_tls_server(SessionConfig::default(), tls, move || recorder.clone());
    let (client, mut events) = Recorder::new();
    let client_tls = ClientTls::new(Some(ca), None)
        .unwrap()
        .with_server_name("localhost")
        .unwrap();
    let connector = Connector::new(SessionConfig::default())
        .unwrap()
        .with_tls(client_tls);
    let connection =
        block_on(connector.connect(&IpInformation::from(server.addr), client)).expect("handshake");
    connection.handle().send(b"key").unwrap();
    let echoed = events.wait_for(
        TIMEOUT,
        |e| matches!(&e.kind, integration_tests::EventKind::Received(m) if m == b"key"),
    );
    assert!(echoed.is_some(), "no echo");
    server.stop(TIMEOUT).unwrap();
}

#[test]
fn pkcs8_sec1_and_pkcs1_keys_all_serve() {
    let pki = Pki::new();
    // PKCS#8: what the test certificates come with.
    serves(&pki.server.cert, &pki.server.key, &pki.ca);
    // The other forms are made with Linux's openssl (CI installs it); the
    // macOS and Windows runners' openssl builds differ in their flags.
    if !cfg!(target_os = "linux") {
        println!("skipped the SEC1 and PKCS#1 keys: they are made with openssl on Linux only");
        return;
    }
    if !tools_present(&["openssl"], "openssl") {
        println!("skipped the SEC1 and PKCS#1 keys: no openssl");
        return;
    }
    let dir = pki.dir();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // SEC1: the same EC key as `EC PRIVATE KEY`.
    let sec1 = path("server-sec1.pem");
    openssl(&["ec", "-in", &path("server-key.pem"), "-out", &sec1]);
    assert!(
        std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    serves(&pki.server.cert, Path::new(&sec1), &pki.ca);
    // PKCS#1: an RSA key (`RSA PRIVATE KEY`) with its own certificate.
    let (rsa, rsa_cert) = (path("rsa-pkcs8.pem"), path("rsa.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &rsa,
        "-out",
        &rsa_cert,
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]);
    let pkcs1 = path("rsa-pkcs1.pem");
    openssl(&["rsa", "-in", &rsa, "-traditional", "-out", &pkcs1]);
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    serves(
        Path::new(&rsa_cert),
        Path::new(&pkcs1),
        Path::new(&rsa_cert),
    );
}

/// A peer may send at most `tls_max_handshake_bytes` during the handshake:
/// a ClientHello longer than a 64-byte cap is refused, never a session.
#[test]
fn a_handshake_over_its_byte_cap_is_refused() {
    let pki = Pki::new();
    let config = SessionConfig {
        tls_max_handshake_bytes: 64,
        ..SessionConfig::default()
    };
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, None).unwrap();
    let (recorder, mut events) = Recorder::new();
    let recorder = recorder.echo();
    let server = start_tls_server(config, tls, move || recorder.clone());
    let client_tls = ClientTls::new(Some(&pki.ca), None).unwrap();
    let mut conn = ClientConnection::new(
        Arc::clone(client_tls.rustls_config()),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut socket = integration_tests::connect(server.addr);
    let mut tls = rustls::Stream::new(&mut conn, &mut socket);
    use std::io::Write;
    // The server refuses the ClientHello: the write or the handshake fails.
    let failed = tls.write_all(b"hi").and_then(|()| tls.flush());
    let mut buf = [0u8; 8];
    let read = std::io::Read::read(&mut tls, &mut buf);
    assert!(failed.is_err() || read.is_err() || read.is_ok_and(|n| n == 0));
    assert!(wait_until(TIMEOUT, || server.stats.get().tls_rejected == 1));
    events.pump();
    assert!(events.seen().is_empty(), "no session started");
    server.stop(TIMEOUT).unwrap();
}
