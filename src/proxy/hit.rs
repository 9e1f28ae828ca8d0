//! The fast path for the answer an edge gives most: a fresh copy from memory, for a plain GET
//! or HEAD.
//!
//! Pingora's cache state machine (lookup through boxed storage futures, a rebuilt `CacheMeta`,
//! a second header copy in `cache_hit_header`, the hit handler) cost about a third of the CPU
//! of a 1 KiB hit in the profile (docs/benchmarks.md). A request that needs none of what it
//! adds is answered here, from `request_filter`, with one copy of the stored header:
//! - GET or HEAD without a body, `Range` or any conditional header (those go the full way:
//!   Pingora answers ranges and 304s from the cache);
//! - an object in the memory tier, fresh now, stored without `Vary`, with `Content-Length` and
//!   a status that has a body.
//!
//! Everything else (misses, stale copies, variants, the disk tier) goes through Pingora's cache
//! exactly as before, and the answer is the same either way: the stored header with `Age`,
//! `Cache-Status`, `Via` and `X-Request-Id`, as `response_filter` would make it.

use std::time::SystemTime;

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::RequestCtx;
use super::headers;
use crate::cache::memory::MemoryStore;
use crate::cache::status::{ttl, Outcome};

/// Whether a request may take the fast path: nothing in it asks for more than the stored copy.
pub fn plain(req: &RequestHeader) -> bool {
    let method_ok = req.method == http::Method::GET || req.method == http::Method::HEAD;
    method_ok
        && ![
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::TRANSFER_ENCODING,
        ]
        .iter()
        .any(|h| req.headers.contains_key(h))
        && req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Answers from a fresh memory copy if there is one; false leaves the request to the full path.
pub async fn serve_fresh(
    memory: &MemoryStore,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: &pingora::cache::key::HashBinary,
) -> Result<bool> {
    let now = SystemTime::now();
    let Some(hit) = memory.fresh_hit(key, now) else {
        return Ok(false);
    };
    if crate::release::origin_embargo(&hit.header.headers, now) {
        // Its origin keeps it back until a time still to come: the full path answers that.
        return Ok(false);
    }
    let mut resp = hit.header;
    resp.set_version(http::Version::HTTP_11);
    // RFC 9111 §4: a response served from cache without validation carries Age.
    resp.insert_header(header::AGE, hit.age)?;
    if resp.status == http::StatusCode::OK {
        // As Pingora's range filter (and nginx) do for a cached 200 with a length: this copy
        // can be asked for in ranges.
        resp.insert_header(header::ACCEPT_RANGES, "bytes")?;
    }
    let outcome = Outcome::Hit;
    resp.append_header(
        "Cache-Status",
        outcome.header(
            &ctx.snapshot.config.node.id,
            Some(ttl(hit.fresh_until, now)),
        ),
    )?;
    headers::to_client(&mut resp, ctx)?;
    ctx.cache_outcome = Some(outcome);
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(hit.body), true).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/a", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_plain_reads_take_the_fast_path() {
        assert!(plain(&req("GET", &[("Accept", "*/*")])));
        assert!(plain(&req("HEAD", &[])));
        assert!(plain(&req("GET", &[("Content-Length", "0")])));
        assert!(!plain(&req("POST", &[])));
        assert!(!plain(&req("GET", &[("Range", "bytes=0-1")])));
        assert!(!plain(&req("GET", &[("If-None-Match", "\"v1\"")])));
        assert!(!plain(&req("GET", &[("If-Modified-Since", "x")])));
        assert!(!plain(&req("GET", &[("Content-Length", "5")])));
        assert!(!plain(&req("GET", &[("Transfer-Encoding", "chunked")])));
    }
}
