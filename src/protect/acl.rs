//! Deny and allow lists. `protect.deny` ranges are refused, except addresses also in
//! `protect.allow` (which carves exceptions out of a denied range, and marks monitoring and
//! verified crawlers that later protections let through).
//!
//! Applied twice: at accept, on the socket's peer, through Pingora's connection filter (a
//! denied peer costs an accept and a close, before TLS or any parsing); and per request, on the
//! client address a trusted proxy forwarded, which the accept cannot see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;

use super::rate::RateLimiter;
use crate::config::Protect;
use crate::metrics::METRICS;
use crate::snapshot::Live;

/// Whether `ip` is refused by the lists.
pub fn denied(ip: IpAddr, protect: &Protect) -> bool {
    protect.deny.iter().any(|c| c.contains(ip)) && !protect.allow.iter().any(|c| c.contains(ip))
}

/// The accept-time check, reading the lists of the live config (they follow reloads). A
/// client over the node-wide rate is refused here too, while it stays over: its requests would
/// only get 429, and an accept and a close cost far less than parsing and answering them.
pub struct AcceptFilter {
    live: Arc<Live>,
    limiter: Arc<RateLimiter>,
}

impl AcceptFilter {
    pub fn new(live: Arc<Live>, limiter: Arc<RateLimiter>) -> AcceptFilter {
        AcceptFilter { live, limiter }
    }
}

impl std::fmt::Debug for AcceptFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptFilter")
    }
}

#[async_trait]
impl ConnectionFilter for AcceptFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else { return true };
        let ip = addr.ip();
        let snapshot = self.live.current();
        let protect = &snapshot.config.protect;
        if denied(ip, protect) {
            METRICS.connection_refused("deny");
            return false;
        }
        // A balancer's connections carry other clients: never refused for one of them.
        let over_rate = protect.rate.is_some()
            && !protect.forwards_for_others(ip)
            && self
                .limiter
                .told_off(super::client::limit_key(ip), std::time::Instant::now());
        if over_rate {
            METRICS.connection_refused("rate");
        }
        !over_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_carves_exceptions_out_of_deny() {
        let protect = Protect {
            deny: vec![
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            allow: vec!["203.0.113.7/32".parse().unwrap()],
            ..Protect::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(denied(ip("203.0.113.9"), &protect));
        assert!(!denied(ip("203.0.113.7"), &protect));
        assert!(denied(ip("2001:db8::1"), &protect));
        assert!(
            denied(ip("::ffff:203.0.113.9"), &protect),
            "mapped IPv4 too"
        );
        assert!(!denied(ip("198.51.100.1"), &protect));
    }
}
