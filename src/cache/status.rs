//! How a request used the cache, in the two vocabularies operators see: the RFC 9211
//! `Cache-Status` header (`edge-hn-1; hit; ttl=53`) and the bounded `cache` metric label.

use std::time::SystemTime;

use pingora::cache::{CachePhase, HttpCache};

/// The cache outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from the cache.
    Hit,
    /// Served stale while a background request refreshes it.
    StaleWhileRevalidate,
    /// Served stale because the origins failed.
    StaleIfError,
    /// Revalidated with the origin (304) and served from the cache.
    Revalidated,
    /// Fetched from the origin; `stored` when the response went into the cache.
    Miss { stored: bool },
    /// The cache was not used (method, route `cache = false`, or a request onair answered).
    Bypass,
}

impl Outcome {
    /// Reads the outcome off the request's cache state. `enabled` is whether onair turned the
    /// cache on for the request; `stored` whether the response was cacheable.
    pub fn of(cache: &HttpCache, enabled: bool, stored: bool) -> Outcome {
        if !enabled {
            return Outcome::Bypass;
        }
        match cache.phase() {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::StaleUpdating => Outcome::StaleWhileRevalidate,
            CachePhase::Stale => Outcome::StaleIfError,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            _ => Outcome::Miss { stored },
        }
    }

    /// The `cache` label of `onair_requests_total` and `onair_request_duration_seconds`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::StaleWhileRevalidate | Outcome::StaleIfError => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Miss { .. } => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    /// This node's `Cache-Status` entry (RFC 9211). `ttl` is the remaining freshness of the
    /// stored object, for hits.
    pub fn header(self, node: &str, ttl: Option<i64>) -> String {
        match self {
            Outcome::Hit => match ttl {
                Some(ttl) => format!("{node}; hit; ttl={ttl}"),
                None => format!("{node}; hit"),
            },
            Outcome::StaleWhileRevalidate => format!("{node}; hit; detail=stale-while-revalidate"),
            Outcome::StaleIfError => format!("{node}; hit; detail=stale-if-error"),
            Outcome::Revalidated => format!("{node}; fwd=stale; fwd-status=304"),
            Outcome::Miss { stored: true } => format!("{node}; fwd=uri-miss; stored"),
            Outcome::Miss { stored: false } => format!("{node}; fwd=uri-miss"),
            Outcome::Bypass => format!("{node}; fwd=bypass"),
        }
    }
}

/// The `Cache-Status` entry of a maintenance answer: this node is a cache that could not get
/// an answer from any origin for the request (`fwd=bypass` when the request was not for the
/// cache). Tells an operator looking at a 503 which tier gave up.
pub fn origin_unavailable(node: &str, cache_on: bool) -> String {
    let fwd = if cache_on { "uri-miss" } else { "bypass" };
    format!("{node}; fwd={fwd}; detail=origin-unavailable")
}

/// Whether the cache closest to us upstream (the last `Cache-Status` entry, RFC 9211 §2) says
/// it answered from a stale copy. Such an answer is stored here as stale too: its Age counts
/// from when the upstream stored it, not from when it stopped being fresh, so by Age alone a
/// copy the shield could only serve because the origin is down would look fresh for a whole
/// lifetime. Only ever makes a copy staler, so any upstream may say it.
pub fn upstream_served_stale(resp: &pingora::http::ResponseHeader) -> bool {
    last_entry_says(
        resp,
        &["detail=stale-if-error", "detail=stale-while-revalidate"],
    )
}

/// Whether an onair cache upstream said its own origins failed (its maintenance answer,
/// [`origin_unavailable`]), in any entry: a tier between it and us passes the answer on and
/// adds an entry of its own.
pub fn upstream_origin_unavailable(resp: &pingora::http::ResponseHeader) -> bool {
    resp.headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            entry
                .split(';')
                .skip(1)
                .any(|p| p.trim().eq_ignore_ascii_case("detail=origin-unavailable"))
        })
}

/// Whether the last `Cache-Status` entry has one of `params`.
fn last_entry_says(resp: &pingora::http::ResponseHeader, params: &[&str]) -> bool {
    let Some(last) = resp
        .headers
        .get_all("cache-status")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
    else {
        return false;
    };
    last.split(';').skip(1).any(|param| {
        let param = param.trim();
        params.iter().any(|p| param.eq_ignore_ascii_case(p))
    })
}

/// Seconds of freshness left, as RFC 9211's `ttl` (negative once stale).
pub fn ttl(fresh_until: SystemTime, now: SystemTime) -> i64 {
    match fresh_until.duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn headers_follow_rfc_9211() {
        assert_eq!(
            Outcome::Hit.header("edge-hn-1", Some(53)),
            "edge-hn-1; hit; ttl=53"
        );
        assert_eq!(
            Outcome::Miss { stored: true }.header("e", None),
            "e; fwd=uri-miss; stored"
        );
        assert_eq!(
            Outcome::StaleIfError.header("e", None),
            "e; hit; detail=stale-if-error"
        );
        assert_eq!(
            Outcome::StaleWhileRevalidate.header("e", None),
            "e; hit; detail=stale-while-revalidate"
        );
        assert_eq!(Outcome::Bypass.header("e", None), "e; fwd=bypass");
    }

    #[test]
    fn an_upstream_stale_answer_is_read_from_its_last_entry() {
        let with = |values: &[&str]| {
            let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
            for v in values {
                resp.append_header("Cache-Status", *v).unwrap();
            }
            upstream_served_stale(&resp)
        };
        assert!(with(&["shield; hit; detail=stale-if-error"]));
        assert!(with(&[
            "o; fwd=uri-miss",
            "shield; hit; detail=stale-while-revalidate"
        ]));
        assert!(with(&[
            "o; fwd=uri-miss, shield; hit; detail=stale-if-error"
        ]));
        // An older entry (a farther cache, maybe stored long ago) does not decide.
        assert!(!with(&[
            "o; hit; detail=stale-if-error",
            "shield; fwd=stale; fwd-status=304"
        ]));
        assert!(!with(&["shield; hit; ttl=5"]));
        assert!(!with(&[]));
    }

    #[test]
    fn ttl_arithmetic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(ttl(now + Duration::from_secs(53), now), 53);
        assert_eq!(ttl(now - Duration::from_secs(7), now), -7);
    }
}
