//! Protecting readers and origins from abusive clients: who a client is (`client`) and how
//! fast it may go (`rate`).
//!
//! The limits are per client address (IPv6 grouped by /64, since one subscriber gets a whole
//! /64), counted on every request, cache hits included: a client over its rate gets 429 with
//! `Retry-After` before any cache or origin work.

pub mod acl;
pub mod attack;
pub mod challenge;
pub mod client;
pub mod conn;
pub mod hygiene;
pub mod proxy_protocol;
pub mod rate;
pub mod shed;
pub mod upload;

use std::net::IpAddr;

use pingora::proxy::Session;

use crate::config::Protect;
use hygiene::Refusal;

/// What a request is refused for before any routing, cache or origin work, if anything:
/// a denied client that a trusted proxy forwarded (the accept saw only the proxy), then the
/// request hygiene rules.
pub fn screen(
    session: &Session,
    client: Option<IpAddr>,
    peer: Option<IpAddr>,
    protect: &Protect,
) -> Option<Refusal> {
    if client.is_some_and(|ip| client != peer && acl::denied(ip, protect)) {
        return Some(Refusal {
            status: 403,
            reason: "denied",
            close: false,
        });
    }
    let req = session.req_header();
    hygiene::check(req, protect).or_else(|| {
        // Both framings sent: Pingora has already dropped Content-Length (and keep-alive),
        // which is safe; a request that ambiguous is refused all the same.
        let raw_cl = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && session
                .as_downstream()
                .as_http1()
                .is_some_and(|h1| hygiene::raw_has_content_length(&h1.get_headers_raw_bytes()));
        raw_cl.then_some(Refusal {
            status: 400,
            reason: "smuggling",
            close: true,
        })
    })
}
