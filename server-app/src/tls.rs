//! `server-app`'s TLS flags (`--tls-cert`, `--tls-key`, `--tls-client-ca`)
//! and what it prints about a session's TLS: the version, and the client's
//! certificate by size and SHA-256 fingerprint (the one `openssl x509
//! -noout -fingerprint -sha256` prints), so that no X.509 parser is needed
//! to tell devices apart.
//!
//! `client-app` uses this file too (`#[path]`), for what it prints about
//! its own TLS session.

use std::fmt::Write as _;

use session_core::TlsInfo;
use session_core::rustls::ProtocolVersion;
use session_core::rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;

/// `TLS 1.3` for `TLSv1_3`; other versions as rustls names them.
pub fn version_name(version: Option<ProtocolVersion>) -> String {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "TLS (version unknown)".to_owned(),
    }
}

/// The SHA-256 of `der`, as colon-separated upper-case hex pairs (the form
/// `openssl x509 -fingerprint -sha256` prints). The hash is rustls's own
/// (ring), through a cipher suite's hash: no other crate is needed.
pub fn fingerprint(der: &[u8]) -> String {
    let hash = TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(der);
    let mut text = String::with_capacity(hash.as_ref().len() * 3);
    for (i, byte) in hash.as_ref().iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

/// One line about a session's TLS: `TLS 1.3`, and the peer's certificate
/// (`certificate: 412 bytes, SHA-256 AB:CD:...`) if it sent one.
pub fn describe(info: &TlsInfo) -> String {
    let mut line = version_name(info.protocol_version());
    if let Some(name) = info.server_name() {
        let _ = write!(line, ", server name {name}");
    }
    match info.peer_certificates().first() {
        Some(cert) => {
            let _ = write!(
                line,
                ", peer certificate: {} bytes, SHA-256 {}",
                cert.as_ref().len(),
                fingerprint(cert.as_ref())
            );
        }
        None => line.push_str(", no peer certificate"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_sha256_in_openssl_form() {
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn versions_are_named_as_people_write_them() {
        assert_eq!(version_name(Some(ProtocolVersion::TLSv1_3)), "TLS 1.3");
        assert_eq!(version_name(Some(ProtocolVersion::TLSv1_2)), "TLS 1.2");
    }
}
