//! Turning a host name and a port into socket addresses.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::rt;

/// A host name and port, resolved: the seed's `IPInformation`.
///
/// [`address`](Self::address) and [`endpoint`](Self::endpoint) are the first
/// address the resolver gave, as in the seed; [`endpoints`](Self::endpoints)
/// keeps all of them, and [`Connector`](crate::Connector) tries each in turn.
///
/// ```
/// # async_std::task::block_on(async {
/// use session_core::IpInformation;
///
/// let ip = IpInformation::resolve("127.0.0.1", 12345).await.unwrap();
/// assert_eq!(ip.endpoint().to_string(), "127.0.0.1:12345");
/// assert_eq!(ip.to_string(), "127.0.0.1:12345");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpInformation {
    host: String,
    port: u16,
    endpoints: Vec<SocketAddr>,
}

impl IpInformation {
    /// Resolves `host` (a name or an address literal) with the system
    /// resolver. Fails, naming the host, if it resolves to nothing.
    pub async fn resolve(host: &str, port: u16) -> io::Result<IpInformation> {
        let endpoints = rt::resolve(host, port)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("resolve {host}:{port}: {e}")))?;
        if endpoints.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("resolve {host}:{port}: the name has no addresses"),
            ));
        }
        Ok(IpInformation {
            host: host.to_owned(),
            port,
            endpoints,
        })
    }

    /// The host name as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The first resolved address (the seed's `Address`).
    pub fn address(&self) -> IpAddr {
        self.endpoint().ip()
    }

    /// The first resolved address with the port (the seed's `EndPoint`).
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoints[0]
    }

    /// Every resolved address with the port, in the resolver's order; never
    /// empty.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

impl From<SocketAddr> for IpInformation {
    fn from(addr: SocketAddr) -> Self {
        IpInformation {
            host: addr.ip().to_string(),
            port: addr.port(),
            endpoints: vec![addr],
        }
    }
}

impl fmt::Display for IpInformation {
    /// `host:port`, with brackets around an IPv6 literal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_resolve_to_themselves() {
        async_std::task::block_on(async {
            let v6 = IpInformation::resolve("::1", 80).await.unwrap();
            assert_eq!(v6.endpoints(), &["[::1]:80".parse::<SocketAddr>().unwrap()]);
            assert_eq!(v6.to_string(), "[::1]:80");
            let localhost = IpInformation::resolve("localhost", 7).await.unwrap();
            assert!(
                localhost
                    .endpoints()
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 7)
            );
            assert_eq!(localhost.endpoint(), localhost.endpoints()[0]);
        });
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        async_std::task::block_on(async {
            let err = IpInformation::resolve("no-such-host.invalid", 1)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("no-such-host.invalid:1"), "{err}");
        });
    }
}
