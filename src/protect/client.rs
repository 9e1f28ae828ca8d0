//! Who a request comes from: the socket's peer, or, when that peer is a trusted proxy (a load
//! balancer in front of onair), the rightmost address in `X-Forwarded-For` that is not itself a
//! trusted proxy. Everything to the left of that address was written by the client and can be
//! forged, so it is never believed.

use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::config::Protect;

/// The client address of a request from `peer` carrying these `X-Forwarded-For` values.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    client_ip_by(peer, forwarded_for, |ip| {
        trusted.iter().any(|c| c.contains(ip))
    })
}

fn client_ip_by<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Right to left: each hop appended the address it received the request from.
    for value in forwarded_for.rev() {
        for entry in value.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                // Garbage where an address should be: stop at the last hop we could read.
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return client;
            }
        }
    }
    client
}

/// The client of a request from `peer`: [`client_ip`] over the request's `X-Forwarded-For`
/// lines, or the peer itself when no proxy is trusted (the usual edge: nothing to parse). A
/// shield's edges (`protect.tiers`) are proxies too: behind them is the reader.
pub fn identify(peer: IpAddr, req: &pingora::http::RequestHeader, protect: &Protect) -> IpAddr {
    if protect.trusted_proxies.is_empty() && protect.tiers.is_empty() {
        return peer;
    }
    let forwarded = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    client_ip_by(peer, forwarded, |ip| protect.forwards_for_others(ip))
}

/// Whether the request comes from another cache tier: its peer is one of `protect.tiers` (a
/// shield lists its edges). Only the connection's own peer counts, never a header: a reader
/// behind a load balancer can write any `Via` or `X-Forwarded-For` it likes, and a tier's
/// requests are trusted to ask for revalidation and are not challenged.
pub fn from_tier(peer: IpAddr, protect: &Protect) -> bool {
    protect.tiers.iter().any(|c| c.contains(peer))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = entry.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// The key a client's limits are counted under: its IPv4 address, or its IPv6 /64 (one home or
/// phone gets a whole /64 and could otherwise rotate through it).
pub fn limit_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

/// The address block a client's aggregate limit is counted under: IPv4 /24, IPv6 /48 (what
/// one site or small provider customer gets: a /64 limit alone lets one attacker be 65,536
/// clients).
pub fn block_key(ip: IpAddr) -> u128 {
    let v4 = |v4: std::net::Ipv4Addr| u128::from(v4.to_ipv6_mapped()) & !0xff;
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(a) => v4(a),
            None => u128::from(v6) & !((1u128 << 80) - 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks() {
        assert_eq!(block_key(ip("203.0.113.7")), block_key(ip("203.0.113.250")));
        assert_ne!(block_key(ip("203.0.113.7")), block_key(ip("203.0.114.7")));
        assert_eq!(
            block_key(ip("::ffff:203.0.113.7")),
            block_key(ip("203.0.113.9"))
        );
        assert_eq!(
            block_key(ip("2001:db8:1:ffff::1")),
            block_key(ip("2001:db8:1:1::1"))
        );
        assert_ne!(
            block_key(ip("2001:db8:1::1")),
            block_key(ip("2001:db8:2::1"))
        );
    }

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn rightmost_untrusted_address_through_trusted_proxies_only() {
        let t = trusted();
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.7"), ["1.2.3.4"].into_iter(), &t),
            ip("198.51.100.7")
        );
        // From the load balancer: the address it saw.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.7"].into_iter(), &t),
            ip("198.51.100.7")
        );
        // A forged entry on the left does not help the client.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                ["6.6.6.6, 198.51.100.7, 10.0.0.9"].into_iter(),
                &t
            ),
            ip("198.51.100.7")
        );
        // Several header lines read as one list.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["6.6.6.6", "198.51.100.7"].into_iter(), &t),
            ip("198.51.100.7")
        );
        // Ports and brackets.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["[2001:db8::1]:443"].into_iter(), &t),
            ip("2001:db8::1")
        );
        // Garbage: stop at the last address read; no header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["nonsense, 10.0.0.5"].into_iter(), &t),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), std::iter::empty(), &t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_ne!(limit_key(ip("192.0.2.1")), limit_key(ip("192.0.2.2")));
        assert_eq!(
            limit_key(ip("::ffff:192.0.2.1")),
            limit_key(ip("192.0.2.1"))
        );
    }
}
