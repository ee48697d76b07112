//! `client-app`'s TLS flags, shared by both modes: `--tls`, with
//! `--tls-ca`, `--tls-server-name` and `--tls-cert`/`--tls-key`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use session_core::ClientTls;
use structopt::StructOpt;

/// The TLS flags.
#[derive(Debug, StructOpt)]
pub struct TlsOptions {
    /// Connect over TLS (1.2 or 1.3). The server's certificate must be
    /// signed by a CA the client trusts (--tls-ca, else the system's) and
    /// be valid for --tls-server-name, else for --host.
    #[structopt(long)]
    pub tls: bool,
    /// Trust the CAs in this PEM file instead of the system's roots.
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must be valid for, also sent as
    /// SNI (default: --host).
    #[structopt(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Present this certificate chain (PEM) to a server that asks for one
    /// (mutual TLS); needs --tls-key.
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[structopt(long, value_name = "PEM", parse(from_os_str))]
    pub tls_key: Option<PathBuf>,
}

impl TlsOptions {
    /// The client TLS configuration the flags ask for: `None` without
    /// `--tls`; an error naming a flag given without what it needs, or
    /// the file that is wrong.
    pub fn client_tls(&self) -> Result<Option<ClientTls>> {
        if !self.tls {
            let given = [
                ("--tls-ca", self.tls_ca.is_some()),
                ("--tls-server-name", self.tls_server_name.is_some()),
                ("--tls-cert", self.tls_cert.is_some()),
                ("--tls-key", self.tls_key.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
                bail!("{flag} needs --tls (without it the connection is plain TCP)");
            }
            return Ok(None);
        }
        let client_cert = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (Some(_), None) => bail!("--tls-cert needs --tls-key (its private key)"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert (its certificate)"),
        };
        let mut tls = ClientTls::new(self.tls_ca.as_deref(), client_cert)?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name)?;
        }
        Ok(Some(tls))
    }
}
