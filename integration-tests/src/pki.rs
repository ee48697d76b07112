//! Test certificates, made fresh by every test run (never committed keys):
//! a CA, a server certificate for `localhost` and `127.0.0.1` signed by it,
//! a client certificate signed by it, and an expired and a self-signed
//! server certificate; each as PEM files in a folder of its own that is
//! removed when the [`Pki`] is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, date_time_ymd,
};

/// A certificate and key, as PEM files and as text.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate (chain) file.
    pub cert: PathBuf,
    /// The private key file (PKCS#8).
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A small public-key infrastructure in a temporary folder.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// The CA's certificate file (what clients and servers trust).
    pub ca: PathBuf,
    /// The server's, signed by the CA, for `localhost` and `127.0.0.1`.
    pub server: Pem,
    /// A client's (common name `device-42`), signed by the CA.
    pub client: Pem,
    /// A server certificate signed by the CA that expired in 2001.
    pub expired: Pem,
    /// A server certificate for `localhost` that no CA signed.
    pub untrusted: Pem,
}

impl Pki {
    /// Makes every certificate (ECDSA P-256) and writes the files.
    pub fn new() -> Pki {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "session-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("make the certificates' folder");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "session-core test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let issuer = (&ca_cert, &ca_key);
        let server = leaf(&dir, "server", Some(issuer), |_| {});
        let client = leaf(&dir, "client", Some(issuer), |params| {
            params
                .distinguished_name
                .push(DnType::CommonName, "device-42");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        let expired = leaf(&dir, "expired", Some(issuer), |params| {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        });
        let untrusted = leaf(&dir, "untrusted", None, |_| {});
        Pki {
            dir,
            ca,
            server,
            client,
            expired,
            untrusted,
        }
    }

    /// The folder the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A leaf certificate for `localhost` and `127.0.0.1`, signed by `issuer`
/// (or by itself), changed by `edit` first; written as `NAME.pem` and
/// `NAME-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    issuer: Option<(&Certificate, &KeyPair)>,
    edit: impl FnOnce(&mut CertificateParams),
) -> Pem {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    edit(&mut params);
    let cert = match issuer {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let pem = Pem {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        der: cert.der().to_vec(),
    };
    std::fs::write(&pem.cert, cert.pem()).unwrap();
    std::fs::write(&pem.key, key.serialize_pem()).unwrap();
    pem
}
