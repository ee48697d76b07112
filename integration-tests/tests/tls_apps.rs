//! The real `server-app` and `client-app` over TLS (issue 13): each other
//! as peers, with and without client certificates, and their TLS flags'
//! errors (one line on stderr, naming the flag or the file; no panic).
//! Certificates are made fresh by every run ([`Pki`]). Real peers of
//! another make (the `openssl` command line) are in `tls_peers.rs`.

use std::path::Path;

use integration_tests::pki::Pki;
use integration_tests::process::{Finished, Proc};

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// Runs client-app against `port` on 127.0.0.1 to the end.
fn run_client(port: u16, extra: &[&str]) -> Finished {
    let port = port.to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--interval", "0"];
    args.extend_from_slice(extra);
    Proc::app("client-app", &args).finish()
}

/// One line on stderr that contains each of `words`; no panic.
#[track_caller]
fn assert_one_error_line(finished: &Finished, words: &[&str]) {
    let stderr = finished.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} in {stderr:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn client_app_greets_server_app_over_tls_with_the_version_on_both_sides() {
    let pki = Pki::new();
    let (mut server, port) = Proc::server(&[
        "--framing",
        "lines",
        "--tls-cert",
        path(&pki.server.cert),
        "--tls-key",
        path(&pki.server.key),
    ]);
    server.wait_line(|l| l.starts_with("Serving TLS") && l.ends_with("no client certificates"));
    // The name checked is --host (127.0.0.1, in the certificate), then the
    // one given.
    for extra in [&[][..], &["--tls-server-name", "localhost"][..]] {
        let mut args = vec![
            "--framing",
            "lines",
            "--tls",
            "--tls-ca",
            path(&pki.ca),
            "--count",
            "3",
        ];
        args.extend_from_slice(extra);
        let client = run_client(port, &args);
        assert!(client.status.success(), "{client:?}");
        let out = client.stdout();
        assert!(out.contains(": TLS 1.3, peer certificate: "), "{out}");
        for i in 0..3 {
            assert!(
                out.contains(&format!("String : Hi {i} - Receive Completed")),
                "{out}"
            );
        }
    }
    server.wait_line(|l| l.starts_with("TLS with 127.0.0.1:") && l.contains("TLS 1.3"));
}

#[test]
fn mutual_tls_shows_the_client_certificate_and_refuses_a_client_without_one() {
    let pki = Pki::new();
    let (mut server, port) = Proc::server(&[
        "--tls-cert",
        path(&pki.server.cert),
        "--tls-key",
        path(&pki.server.key),
        "--tls-client-ca",
        path(&pki.ca),
    ]);
    server
        .wait_line(|l| l.starts_with("Serving TLS") && l.contains("client certificates required"));
    // Without a certificate: refused, status 1, one line; no session.
    let refused = run_client(port, &["--tls", "--tls-ca", path(&pki.ca), "--count", "1"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_one_error_line(&refused, &["error:"]);
    // With one: served, and the server names it by its fingerprint.
    let client = run_client(
        port,
        &[
            "--tls",
            "--tls-ca",
            path(&pki.ca),
            "--tls-cert",
            path(&pki.client.cert),
            "--tls-key",
            path(&pki.client.key),
            "--count",
            "2",
        ],
    );
    assert!(client.status.success(), "{client:?}");
    let fingerprint = server_app_fingerprint(&pki.client.der);
    let line = server.wait_line(|l| l.starts_with("TLS with "));
    assert!(
        line.contains(&format!(
            "peer certificate: {} bytes, SHA-256 {fingerprint}",
            pki.client.der.len()
        )),
        "{line}"
    );
    let connected = server
        .lines()
        .iter()
        .filter(|l| l.starts_with("Connected to "))
        .count();
    assert_eq!(
        connected, 1,
        "only the client with a certificate got a session"
    );
}

/// The fingerprint as server-app prints it: SHA-256, `AB:CD:...`.
fn server_app_fingerprint(der: &[u8]) -> String {
    use session_core::rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap()
        .common
        .hash_provider
        .hash(der);
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn client_app_refuses_a_server_it_does_not_trust_in_one_line() {
    let pki = Pki::new();
    for (pem, why) in [
        (&pki.untrusted, "UnknownIssuer"),
        (&pki.expired, "certificate expired"),
    ] {
        let (_server, port) =
            Proc::server(&["--tls-cert", path(&pem.cert), "--tls-key", path(&pem.key)]);
        let client = run_client(port, &["--tls", "--tls-ca", path(&pki.ca), "--count", "1"]);
        assert_eq!(client.status.code(), Some(1), "{client:?}");
        assert_one_error_line(&client, &["TLS handshake with 127.0.0.1:", why]);
    }
    // A name the certificate is not for.
    let (_server, port) = Proc::server(&[
        "--tls-cert",
        path(&pki.server.cert),
        "--tls-key",
        path(&pki.server.key),
    ]);
    let client = run_client(
        port,
        &[
            "--tls",
            "--tls-ca",
            path(&pki.ca),
            "--tls-server-name",
            "wrong.example",
        ],
    );
    assert_eq!(client.status.code(), Some(1), "{client:?}");
    assert_one_error_line(&client, &["not valid for name"]);
}

#[test]
fn server_app_names_a_missing_or_wrong_tls_file_and_a_missing_flag() {
    let pki = Pki::new();
    let missing = pki.dir().join("missing.pem");
    let (cert, key, ca) = (path(&pki.server.cert), path(&pki.server.key), path(&pki.ca));
    let cases: [(Vec<&str>, &[&str]); 6] = [
        (
            vec!["--tls-cert", path(&missing), "--tls-key", key],
            &["TLS certificate file", "missing.pem"],
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", path(&missing)],
            &["TLS key file", "missing.pem"],
        ),
        (
            vec!["--tls-cert", key, "--tls-key", key],
            &["server-key.pem", "no certificate"],
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", cert],
            &["TLS key file", "server.pem"],
        ),
        (vec!["--tls-cert", cert], &["--tls-cert needs --tls-key"]),
        (
            vec!["--tls-client-ca", ca],
            &["--tls-client-ca needs --tls-cert and --tls-key"],
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["--host", "127.0.0.1", "--port", "0"];
        all.extend_from_slice(&args);
        let server = Proc::app("server-app", &all).finish();
        assert_eq!(server.status.code(), Some(1), "{args:?}: {server:?}");
        assert_one_error_line(&server, words);
        assert!(
            !server.stdout().contains("Listening on"),
            "{args:?}: it never listens: {server:?}"
        );
    }
}

#[test]
fn client_app_names_a_wrong_tls_file_and_a_flag_without_tls() {
    let pki = Pki::new();
    let missing = pki.dir().join("missing.pem");
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (
            vec!["--tls", "--tls-ca", path(&missing)],
            &["TLS CA file", "missing.pem"],
        ),
        (vec!["--tls-ca", path(&pki.ca)], &["--tls-ca needs --tls"]),
        (
            vec!["--tls", "--tls-cert", path(&pki.client.cert)],
            &["--tls-cert needs --tls-key"],
        ),
        (
            vec!["--tls", "--tls-server-name", "not a name!"],
            &["TLS server name"],
        ),
    ];
    for (args, words) in cases {
        // Port 1: nothing is ever connected to, the flags fail first.
        let mut all = vec!["--host", "127.0.0.1", "--port", "1"];
        all.extend_from_slice(&args);
        let client = Proc::app("client-app", &all).finish();
        assert_eq!(client.status.code(), Some(1), "{args:?}: {client:?}");
        assert_one_error_line(&client, words);
    }
}
