//! The PROXY protocol (versions 1 and 2) that L4 load balancers such as
//! HAProxy and nginx put in front of a connection to say who the client is.
//!
//! Parsed by hand, following the specification's every rule that a server
//! must check, because the crates that exist either allocate per header or
//! do not reject what the specification says to reject.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest header a listener accepts: a version 2 header with up to
/// 1,008 bytes of addresses and TLVs.
pub const MAX_HEADER_LEN: usize = 1024;

/// The 12 bytes that open a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, `\r\n` included.
pub const V1_MAX_LEN: usize = 107;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer speaks for itself (a health check: v2 `LOCAL`, or v1
    /// `UNKNOWN`): use the connection's own addresses.
    Local,
    /// The connection carries a client's: these are its addresses.
    Proxied {
        /// The client's address, as the balancer saw it.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet to know.
    Incomplete,
    /// A whole header of `len` bytes.
    Header {
        /// What the header says.
        header: ProxyHeader,
        /// The header's length on the wire; the client's bytes follow it.
        len: usize,
    },
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not open with a PROXY header at all.
    Missing,
    /// The header breaks the specification; the text says how.
    Malformed(&'static str),
    /// The header is longer than the specification (v1) or the configured
    /// limit (v2) allows.
    TooLong,
    /// The connection closed before a whole header arrived.
    Closed,
    /// No whole header arrived within the configured deadline.
    TimedOut,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            ProxyError::TooLong => f.write_str("PROXY protocol header too long"),
            ProxyError::Closed => f.write_str("connection closed before its PROXY protocol header"),
            ProxyError::TimedOut => f.write_str("PROXY protocol header did not arrive in time"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header at the start of `buf`, version 1 or 2; a
/// version 2 header longer than `max_v2_len` is [`ProxyError::TooLong`].
///
/// ```
/// use session_core::proxy_protocol::{parse, Parsed, ProxyHeader};
///
/// let bytes = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello";
/// let Parsed::Header { header, len } = parse(bytes, 536).unwrap() else { panic!() };
/// assert_eq!(&bytes[len..], b"hello");
/// let ProxyHeader::Proxied { source, .. } = header else { panic!() };
/// assert_eq!(source.to_string(), "192.0.2.1:56324");
/// ```
pub fn parse(buf: &[u8], max_v2_len: usize) -> Result<Parsed, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    match first {
        b'P' => parse_v1(buf),
        b'\r' => parse_v2(buf, max_v2_len),
        _ => Err(ProxyError::Missing),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.contains(&b'\n') {
            return Err(ProxyError::Malformed("line ends without \\r"));
        }
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    match window.get(cr + 1) {
        None if cr + 1 >= V1_MAX_LEN => return Err(ProxyError::TooLong),
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::Malformed("\\r not followed by \\n")),
    }
    let line = std::str::from_utf8(&buf[prefix.len()..cr])
        .map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let len = cr + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line, whatever it holds, is to be ignored.
        return Ok(Parsed::Header {
            header: ProxyHeader::Local,
            len,
        });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed(
            "expected exactly four fields after the protocol",
        ));
    };
    let source = SocketAddr::new(v1_address(src, v6)?, v1_port(sport)?);
    let destination = SocketAddr::new(v1_address(dst, v6)?, v1_port(dport)?);
    Ok(Parsed::Header {
        header: ProxyHeader::Proxied {
            source,
            destination,
        },
        len,
    })
}

fn v1_address(text: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    let parsed = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    parsed.map_err(|_| ProxyError::Malformed("address does not match the protocol"))
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProxyError::Malformed(
            "port is not a decimal number without leading zeros",
        ));
    }
    text.parse()
        .map_err(|_| ProxyError::Malformed("port is above 65535"))
}

fn parse_v2(buf: &[u8], max_len: usize) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let family = buf[13];
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > max_len {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[16..len];
    let header = match command {
        // LOCAL: the addresses, if any, are to be ignored.
        0x0 => ProxyHeader::Local,
        0x1 => match family {
            // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
            0x11 => {
                let a = block
                    .get(..12)
                    .ok_or(ProxyError::Malformed("IPv4 address block too short"))?;
                let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
                ProxyHeader::Proxied {
                    source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                    destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
                }
            }
            // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
            0x21 => {
                let a = block
                    .get(..36)
                    .ok_or(ProxyError::Malformed("IPv6 address block too short"))?;
                let ip = |i: usize| {
                    let octets: [u8; 16] = a[i..i + 16].try_into().expect("16 bytes");
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                ProxyHeader::Proxied {
                    source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                    destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
                }
            }
            // UNSPEC: the sender could not tell; keep the real addresses.
            0x00 => ProxyHeader::Local,
            _ => {
                return Err(ProxyError::Malformed(
                    "address family is not TCP over IPv4 or IPv6",
                ));
            }
        },
        _ => return Err(ProxyError::Malformed("command is neither LOCAL nor PROXY")),
    };
    Ok(Parsed::Header { header, len })
}

/// Reads the PROXY header at the start of `stream` and takes it off the
/// stream, leaving the client's own bytes for the session.
pub(crate) async fn read_header(
    stream: &mut crate::rt::TcpStream,
) -> Result<ProxyHeader, ProxyError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut seen = 0;
    loop {
        let n = std::future::poll_fn(|cx| stream.poll_peek(cx, &mut buf, seen))
            .await
            .map_err(|_| ProxyError::Closed)?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        match parse(&buf[..n], MAX_HEADER_LEN)? {
            Parsed::Header { header, len } => {
                stream.consume(len).map_err(|_| ProxyError::Closed)?;
                return Ok(header);
            }
            Parsed::Incomplete if n == buf.len() => return Err(ProxyError::TooLong),
            Parsed::Incomplete => seen = n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> Result<Parsed, ProxyError> {
        parse(bytes, 536)
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let Ok(Parsed::Header { header, len }) =
            header(b"PROXY TCP6 ::1 2001:db8::2 65535 0\r\nrest")
        else {
            panic!()
        };
        assert_eq!(len, 36);
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: "[::1]:65535".parse().unwrap(),
                destination: "[2001:db8::2]:0".parse().unwrap()
            }
        );
        assert_eq!(
            header_of(b"PROXY UNKNOWN whatever follows\r\n"),
            ProxyHeader::Local
        );
        assert_eq!(header_of(b"PROXY UNKNOWN\r\n"), ProxyHeader::Local);
    }

    fn header_of(bytes: &[u8]) -> ProxyHeader {
        match header(bytes) {
            Ok(Parsed::Header { header, len }) => {
                assert_eq!(len, bytes.len());
                header
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_every_prefix_of_a_valid_header_is_incomplete() {
        let full = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 12345\r\n";
        for n in 0..full.len() {
            assert_eq!(
                header(&full[..n]),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn v1_malformed_cases_are_rejected() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 127.0.0.1 127.0.0.1 40000\r\n", // a field missing
            b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 1 2\r\n", // a field too many
            b"PROXY TCP4 ::1 127.0.0.1 40000 12345\r\n", // v6 address under TCP4
            b"PROXY TCP6 127.0.0.1 ::1 40000 12345\r\n", // v4 address under TCP6
            b"PROXY TCP4 127.0.0.1 127.0.0.1 65536 12345\r\n", // port too large
            b"PROXY TCP4 127.0.0.1 127.0.0.1 040000 12345\r\n", // leading zero
            b"PROXY TCP4 127.0.0.1 127.0.0.1 -1 12345\r\n", // sign
            b"PROXY TCP4 127.0.0.1  127.0.0.1 1 2\r\n",  // double space
            b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n",   // not TCP
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n",     // bare \n
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\rX",    // \r without \n
        ];
        for case in bad {
            assert!(
                matches!(header(case), Err(ProxyError::Malformed(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(case),
                header(case)
            );
        }
        assert_eq!(header(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(header(b"PROXX"), Err(ProxyError::Missing));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert_eq!(header(&long), Err(ProxyError::TooLong));
        long.truncate(V1_MAX_LEN - 1);
        long.push(b'\r');
        assert_eq!(
            header(&long),
            Err(ProxyError::TooLong),
            "\\n would be the 108th byte"
        );
        long.truncate(V1_MAX_LEN - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(
            header_of(&long),
            ProxyHeader::Local,
            "exactly 107 bytes is allowed"
        );
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut block = vec![127, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x40, 0x30, 0x39];
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, skipped
        let bytes = v2(1, 0x11, &block);
        assert_eq!(
            header_of(&bytes),
            ProxyHeader::Proxied {
                source: "127.0.0.1:40000".parse().unwrap(),
                destination: "10.0.0.2:12345".parse().unwrap()
            }
        );
        let mut block6 = [0u8; 36];
        block6[15] = 1;
        block6[31] = 2;
        block6[32..34].copy_from_slice(&7u16.to_be_bytes());
        block6[34..36].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            header_of(&v2(1, 0x21, &block6)),
            ProxyHeader::Proxied {
                source: "[::1]:7".parse().unwrap(),
                destination: "[::2]:8".parse().unwrap()
            }
        );
        assert_eq!(header_of(&v2(0, 0x00, &[])), ProxyHeader::Local);
        assert_eq!(
            header_of(&v2(0, 0x11, &block)),
            ProxyHeader::Local,
            "LOCAL ignores addresses"
        );
        assert_eq!(
            header_of(&v2(1, 0x00, &[])),
            ProxyHeader::Local,
            "UNSPEC keeps real addresses"
        );
        for n in 0..bytes.len() {
            assert_eq!(
                header(&bytes[..n]),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn v2_malformed_cases_are_rejected() {
        let block = [127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
        let mut bad_version = v2(1, 0x11, &block);
        bad_version[12] = 0x11;
        assert!(matches!(
            header(&bad_version),
            Err(ProxyError::Malformed(_))
        ));
        let mut bad_command = v2(1, 0x11, &block);
        bad_command[12] = 0x22;
        assert!(matches!(
            header(&bad_command),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            header(&v2(1, 0x11, &block[..11])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            header(&v2(1, 0x21, &block)),
            Err(ProxyError::Malformed(_))
        ));
        assert!(
            matches!(header(&v2(1, 0x12, &block)), Err(ProxyError::Malformed(_))),
            "UDP"
        );
        assert!(
            matches!(
                header(&v2(1, 0x31, &[0; 216])),
                Err(ProxyError::Malformed(_))
            ),
            "UNIX"
        );
        assert_eq!(header(&v2(1, 0x11, &[0; 600])), Err(ProxyError::TooLong));
        let mut bad_signature = v2(1, 0x11, &block);
        bad_signature[5] = b'x';
        assert_eq!(header(&bad_signature), Err(ProxyError::Missing));
    }
}
