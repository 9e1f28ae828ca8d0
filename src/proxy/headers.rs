//! Header handling on the way to the origin and back: forwarding headers, `Via`, request ids,
//! hop-by-hop removal on responses.
//!
//! Pingora already strips hop-by-hop request headers (its standard upstream request policy);
//! responses are ours to clean.

use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use rand::RngCore;

use super::ctx::RequestCtx;

/// Longest client-supplied request id we keep; longer (or odd) ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` when it is sane, else a fresh random one.
pub fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic()) {
            // Checked as visible ASCII just above, so this is valid UTF-8.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut id = String::with_capacity(32);
    for byte in raw {
        id.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        id.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    id
}

/// Whether a request body follows the head: chunked, or a non-zero Content-Length.
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The request's host as the client sent it: the URI authority (HTTP/2, absolute-form) or
/// the Host header.
pub fn raw_host(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// True when our own node already appears in `Via`: the request went around in a loop.
pub fn is_loop(req: &RequestHeader, via: &str) -> bool {
    req.headers.get_all(http::header::VIA).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|hop| hop.trim() == via))
            .unwrap_or(false)
    })
}

/// Appends `value` to a comma-separated list header, joining every line the header already
/// has (a client may send `X-Forwarded-For` twice); creates it when absent. A line that is not
/// visible ASCII is kept byte for byte.
fn append_list(headers: &http::HeaderMap, name: HeaderName, value: &str) -> Option<HeaderValue> {
    let mut joined: Vec<u8> = Vec::new();
    for line in headers.get_all(&name) {
        if !line.as_bytes().is_empty() {
            joined.extend_from_slice(line.as_bytes());
            joined.extend_from_slice(b", ");
        }
    }
    joined.extend_from_slice(value.as_bytes());
    HeaderValue::from_bytes(&joined).ok()
}

/// Request headers a client may send that origins (or the frameworks behind them) act on, but
/// that are not in the cache key: passed through, one attacker's value would shape the answer
/// stored for every reader (cache poisoning). onair strips them; a site that needs one names it
/// in `pass_headers`, which also puts its value into the key. The forwarding headers onair sets
/// itself (`X-Forwarded-Host`, `X-Forwarded-Proto`) are replaced, not listed here.
pub const UNKEYED: &[&str] = &[
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
    "front-end-https",
    "x-url-scheme",
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-path",
    "x-forwarded-protocol",
    "x-http-host-override",
];

/// Sets the headers the origin sees: forwarding headers, `Via`, request id, host override, and
/// strips the unkeyed ones (see [`UNKEYED`]). Host and X-Forwarded-Host carry the host and port
/// the cache key was built from, never the client's spelling of them.
pub fn to_origin(req: &mut RequestHeader, ctx: &RequestCtx, scheme: &'static str) -> Result<()> {
    let passed = ctx.pass_headers();
    // One pass over the request's few headers rather than a lookup per listed name (misses
    // pay this on every request): usually nothing matches and nothing is allocated.
    let strip: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| UNKEYED.contains(&k.as_str()) && !passed.iter().any(|p| p == k.as_str()))
        .cloned()
        .collect();
    for name in strip {
        req.remove_header(&name);
    }
    if ctx.cache_on {
        // A cache decides freshness for its readers: their no-cache is not the origin's
        // business (nor any tier's behind this one).
        for name in [http::header::CACHE_CONTROL, http::header::PRAGMA] {
            if req.headers.contains_key(&name) {
                req.remove_header(&name);
            }
        }
    }
    // Only this node's own refetch of a copy that may predate a purge (or a tier's refetch,
    // passed on) asks the next tier to revalidate (see `cache::history`); a reader's copy of
    // the header never gets through, whatever the route.
    if req.headers.contains_key(crate::cache::REFETCH_HEADER) {
        req.remove_header(crate::cache::REFETCH_HEADER);
    }
    if ctx.refetch {
        req.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
        req.insert_header(crate::cache::REFETCH_HEADER, "1")?;
    }
    // A warm fetch's marker goes on only as the fleet's secret (for the next tier and the
    // origin's own embargo); a reader's copy, or this node's own token, never.
    if req.headers.contains_key(crate::release::warm::HEADER) {
        req.remove_header(crate::release::warm::HEADER);
    }
    if req
        .headers
        .contains_key(crate::release::warm::SCHEME_HEADER)
    {
        req.remove_header(crate::release::warm::SCHEME_HEADER);
    }
    if ctx.warming {
        if let Some(secret) = &ctx.snapshot.config.release.warm_secret {
            req.insert_header(crate::release::warm::HEADER, secret.as_str())?;
        }
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let original_host: Option<HeaderValue> = match ctx.port.filter(|p| *p != default_port) {
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", ctx.host)).ok(),
        None => HeaderValue::from_str(&ctx.host).ok(),
    };
    if let Some(peer) = ctx.peer_ip {
        // Each hop appends the address it got the request from (as nginx and CDNs do): the
        // origin trusts only the entries its own proxies added, from the right.
        if let Some(v) = append_list(
            &req.headers,
            HeaderName::from_static("x-forwarded-for"),
            &peer.to_string(),
        ) {
            req.insert_header("X-Forwarded-For", v)?;
        }
    }
    req.insert_header("X-Forwarded-Proto", HeaderValue::from_static(scheme))?;
    if let Some(host) = &original_host {
        req.insert_header("X-Forwarded-Host", host.clone())?;
    }
    if let Some(v) = append_list(&req.headers, http::header::VIA, &ctx.snapshot.via) {
        req.insert_header("Via", v)?;
    }
    req.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    let pool_host = ctx.pool.as_ref().and_then(|p| p.config.host.as_deref());
    match (pool_host, original_host) {
        (Some(h), _) => req.insert_header("Host", h)?,
        // The normalized host (HTTP/2 clients send none; an HTTP/1.1 origin needs one).
        (None, Some(h)) => req.insert_header("Host", h)?,
        (None, None) => {}
    }
    Ok(())
}

/// Hop-by-hop response headers that must not travel past this hop (RFC 9110 §7.6.1).
/// `Transfer-Encoding` is left to Pingora, which re-frames the body for the client.
const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "te", "trailer"];

/// Cleans an origin response: hop-by-hop headers and anything `Connection` nominates.
pub fn from_origin(resp: &mut ResponseHeader) {
    let upgrading = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if !resp.headers.contains_key(http::header::CONNECTION) {
        // The common case: nothing nominated. Removing is costlier than looking (Pingora
        // keeps a second, case-preserving map), so only remove what is there.
        for name in HOP_BY_HOP {
            if resp.headers.contains_key(*name) {
                resp.remove_header(*name);
            }
        }
        if !upgrading && resp.headers.contains_key(http::header::UPGRADE) {
            resp.remove_header(&http::header::UPGRADE);
        }
        return;
    }
    let nominated: Vec<String> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || (upgrading && t == "upgrade")))
        .collect();
    for name in nominated
        .iter()
        .map(String::as_str)
        .chain(HOP_BY_HOP.iter().copied())
    {
        resp.remove_header(name);
    }
    if !upgrading {
        resp.remove_header(&http::header::CONNECTION);
        resp.remove_header(&http::header::UPGRADE);
    }
}

/// Headers meant for this edge only: `Surrogate-Control` is addressed to surrogates (and was
/// acted on), `Surrogate-Key` / `Cache-Tag` name purge groups that readers need not see.
const EDGE_ONLY: &[&str] = &[
    "surrogate-control",
    "surrogate-key",
    "cache-tag",
    crate::release::ORIGIN_EMBARGO,
];

/// Adds this node's `Via` entry and the request id to the client's answer. Another tier (an
/// edge asking a shield) gets the edge-only fields too: it needs the tags to purge by and the
/// surrogate lifetime to cache by, exactly as this node did.
pub fn to_client(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if !ctx.from_tier {
        for name in EDGE_ONLY {
            if resp.headers.contains_key(*name) {
                resp.remove_header(*name);
            }
        }
    }
    if let Some(v) = append_list(&resp.headers, http::header::VIA, &ctx.snapshot.via) {
        resp.insert_header("Via", v)?;
    }
    resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    if ctx.tls {
        if let Some(hsts) = &ctx.snapshot.config.tls.hsts {
            resp.insert_header("Strict-Transport-Security", hsts.as_str())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let made = request_id(&req);
        assert_eq!(made.len(), 32);
        assert_ne!(made, request_id(&req));
        req.insert_header("X-Request-Id", "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header("X-Request-Id", "has space").unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }

    #[test]
    fn response_hop_by_hop() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Connection", "close, X-Secret").unwrap();
        resp.insert_header("X-Secret", "1").unwrap();
        resp.insert_header("Keep-Alive", "timeout=5").unwrap();
        resp.insert_header("Cache-Control", "max-age=1").unwrap();
        from_origin(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("cache-control").is_some());
    }

    #[test]
    fn list_headers_keep_every_line() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Forwarded-For", "203.0.113.1").unwrap();
        req.append_header("X-Forwarded-For", "198.51.100.2, 192.0.2.3")
            .unwrap();
        let v = append_list(
            &req.headers,
            HeaderName::from_static("x-forwarded-for"),
            "10.0.0.1",
        )
        .unwrap();
        assert_eq!(v, "203.0.113.1, 198.51.100.2, 192.0.2.3, 10.0.0.1");
        let empty = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(
            append_list(&empty.headers, http::header::VIA, "1.1 a").unwrap(),
            "1.1 a"
        );
    }

    #[test]
    fn loops() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Via", "1.1 other, 1.1 edge-1").unwrap();
        assert!(is_loop(&req, "1.1 edge-1"));
        assert!(!is_loop(&req, "1.1 edge-2"));
    }
}
