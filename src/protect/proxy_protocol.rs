//! PROXY protocol (v1 text and v2 binary, haproxy.org's spec) on listeners behind an L4 load
//! balancer: the balancer prefixes each connection with the client's address, which then
//! counts as the socket's peer for everything else (deny lists, limits, logs).
//!
//! Only the header's source address is used. `LOCAL` (the balancer's own health checks) and
//! `UNKNOWN` / unspecified families keep the socket's address. A connection on such a listener
//! without a valid header within `header_timeout` is closed: a listener that expects the
//! header must never take a client's first bytes as one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest line, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers carry TLVs after the addresses; more than this is not a balancer's header.
const V2_MAX: usize = 16 + 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    Client(SocketAddr),
    /// A health check from the balancer itself, or an unknown family: keep the socket's peer.
    Local,
}

/// The result of parsing what has been read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Done { source: Source, len: usize },
    Incomplete,
    Invalid(&'static str),
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf) && !buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf.starts_with(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    let v1 = b"PROXY ";
    if buf.len() < v1.len() {
        return if v1.starts_with(buf) {
            Parsed::Incomplete
        } else {
            Parsed::Invalid("no PROXY protocol header")
        };
    }
    if !buf.starts_with(v1) {
        return Parsed::Invalid("no PROXY protocol header");
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() < V1_MAX {
            Parsed::Incomplete
        } else {
            Parsed::Invalid("PROXY v1 line too long")
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid("PROXY v1 line is not text");
    };
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.get(1).copied() {
        Some("UNKNOWN") => Parsed::Done {
            source: Source::Local,
            len,
        },
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, _, src, _dst, sport, _dport] = fields[..] else {
                return Parsed::Invalid("PROXY v1 line needs 6 fields");
            };
            let ip = match (family, src.parse::<IpAddr>()) {
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
                _ => return Parsed::Invalid("PROXY v1 source address"),
            };
            match sport.parse::<u16>() {
                Ok(port) => Parsed::Done {
                    source: Source::Client(SocketAddr::new(ip, port)),
                    len,
                },
                Err(_) => Parsed::Invalid("PROXY v1 source port"),
            }
        }
        _ => Parsed::Invalid("PROXY v1 protocol family"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("PROXY v2 version");
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let body = &buf[16..len];
    let source = match (command, buf[13]) {
        (0, _) => Source::Local,
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Source::Client(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Source::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        (1, 0x11 | 0x21) => return Parsed::Invalid("PROXY v2 address block too short"),
        // UDP, unix sockets, unspecified: nothing we can use as a client address.
        (1, _) => Source::Local,
        _ => return Parsed::Invalid("PROXY v2 command"),
    };
    Parsed::Done { source, len }
}

/// Reads the header off a plain TCP stream within `limit`; bytes read past it are put back
/// for the HTTP parser. Returns the stream and what the header said.
pub async fn accept(stream: Stream, limit: Duration) -> Result<(Stream, Source), &'static str> {
    let mut tcp: Box<TcpStream> = stream
        .into_any()
        .downcast()
        .map_err(|_| "PROXY protocol on a stream that is not plain TCP")?;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => return Err("no PROXY protocol header within header_timeout"),
            Ok(Err(_)) | Ok(Ok(0)) => return Err("closed before its PROXY protocol header"),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Parsed::Done { source, len } => {
                tcp.rewind(&buf[len..]);
                return Ok((tcp, source));
            }
            Parsed::Incomplete => {}
            Parsed::Invalid(why) => return Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Done {
                source: Source::Client(addr("198.51.100.7:51234")),
                len: 46
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(v6),
            Parsed::Done {
                source: Source::Client(addr("[2001:db8::7]:4000")),
                len: v6.len()
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Done {
                source: Source::Local,
                len: 15
            }
        );
        // Every prefix of a valid line is incomplete, not invalid.
        for cut in 1..line.len().min(45) {
            assert_eq!(parse(&line[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 2001:db8::7 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
            b"PROXY TCP4 1.2.3.4 80\r\n",
            b"PROXY SCTP 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![198, 51, 100, 7, 203, 0, 113, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&80u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        let mut stream = h.clone();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&stream),
            Parsed::Done {
                source: Source::Client(addr("198.51.100.7:51234")),
                len: h.len()
            }
        );
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&[0u8; 16]);
        body6.extend_from_slice(&4000u16.to_be_bytes());
        body6.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body6)),
            Parsed::Done {
                source: Source::Client(addr("[2001:db8::7]:4000")),
                len: 52
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Done {
                source: Source::Local,
                len: 16
            }
        );
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&v2(7, 0x11, &body)), Parsed::Invalid(_)));
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x11;
        assert!(matches!(parse(&wrong_version), Parsed::Invalid(_)));
    }
}
