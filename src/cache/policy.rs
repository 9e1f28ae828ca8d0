//! Whether and how long a response may be stored and served: RFC 9111 shared-cache rules,
//! with the edge-targeted fields (RFC 9213 `CDN-Cache-Control`, then `Surrogate-Control`)
//! taking precedence over `Cache-Control`.
//!
//! onair adds three rules of its own, each safer than the RFC's minimum:
//! - no heuristic freshness: a response without explicit freshness is not stored;
//! - 5xx, 206 and responses with `Set-Cookie` or `Vary: *` are never stored (a cached error
//!   would replace a good page; a cookie would be handed to every reader);
//! - where the origin forbids serving stale (`must-revalidate`, `proxy-revalidate`,
//!   `s-maxage`, `no-cache`), no stale window is granted unless the site sets
//!   `force_stale_if_error`, a deviation the operator chooses for "always online".

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, Cacheable, DirectiveKey, InterpretCacheControl};
use pingora::cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

/// No default freshness for any status: only explicit freshness makes a response cacheable.
static NO_HEURISTICS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// The operator's rules for one request (from `[cache]`, the site and the route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRules {
    /// The route's `default_ttl`: freshness for responses that carry none (heuristically
    /// cacheable statuses only). None: such responses are not stored.
    pub default_ttl: Option<Duration>,
    /// Added to the origin's stale-while-revalidate window.
    pub while_revalidate: Duration,
    /// The least stale-if-error window every cacheable response gets ("always online").
    pub if_error: Duration,
    /// Grant the stale windows even when the origin forbids serving stale.
    pub force: bool,
}

/// The edge's cache directives: CDN-Cache-Control, else Surrogate-Control, else Cache-Control.
/// A CDN-Cache-Control that is not a valid structured-field dictionary is ignored as a whole
/// (RFC 9213 §2.1): a lenient reading of a broken one could cache what the origin meant to keep
/// out, or for longer.
pub fn edge_directives(resp: &ResponseHeader) -> Option<CacheControl> {
    let cdn = valid_dictionary(resp, "cdn-cache-control")
        .then(|| CacheControl::from_resp_headers_named("cdn-cache-control", resp))
        .flatten();
    cdn.or_else(|| CacheControl::from_resp_headers_named("surrogate-control", resp))
        .or_else(|| CacheControl::from_resp_headers(resp))
}

/// Whether every line of `name` together parses as an RFC 8941 dictionary (absent: false).
fn valid_dictionary(resp: &ResponseHeader, name: &str) -> bool {
    let mut joined: Vec<u8> = Vec::new();
    for (i, line) in resp.headers.get_all(name).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    !joined.is_empty() && sfv::Parser::parse_dictionary(&joined).is_ok()
}

/// Decides cacheability and builds the stored metadata.
pub fn decide(
    resp: &ResponseHeader,
    authorization: bool,
    now: SystemTime,
    grants: &EdgeRules,
) -> RespCacheable {
    let uncacheable = RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    // Refusals that say nothing about the URL's other responses carry reasons the predictor
    // does not remember (see [`transient_refusal`]): one 503, one cookie or one request with
    // Authorization must not make every later request for the URL skip the cache.
    let transient = |why| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
    let status = resp.status.as_u16();
    if status >= 500 {
        return RespCacheable::Uncacheable(NoCacheReason::UpstreamError);
    }
    if status == 206 || resp.status.is_informational() {
        return transient("partial");
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return transient("set-cookie");
    }
    if vary_star(resp) {
        return transient("vary-star");
    }
    let cc = edge_directives(resp);
    if authorization
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return transient("authorization");
    }
    // The response may have aged in caches before us (a shield): its age counts against its
    // freshness, and the stored copy's clock starts when it was made, not when we got it
    // (RFC 9111 §4.2.3). So a copy a shield held for 50 s of its 60 is fresh here for 10 s,
    // and readers are told Age 50 and up.
    let made = now.checked_sub(upstream_age(resp)).unwrap_or(now);
    let explicit = calculate_fresh_until(made, cc.as_ref(), resp, authorization, &NO_HEURISTICS)
        .map(|until| expires_by_origin_clock(cc.as_ref(), resp, made).unwrap_or(until));
    let Some(fresh_until) = explicit.or_else(|| default_freshness(cc.as_ref(), resp, made, grants))
    else {
        return uncacheable;
    };
    let (origin_swr, origin_sie) = calculate_serve_stale_durations(cc.as_ref(), &NO_HEURISTICS);
    let forbidden = cc.as_ref().is_some_and(|c| {
        c.must_revalidate()
            || c.proxy_revalidate()
            || c.no_cache()
            || c.has_directive(&DirectiveKey::SMaxAge)
    });
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let (swr, sie) = if forbidden && !grants.force {
        (0, 0)
    } else {
        (
            origin_swr.saturating_add(secs(grants.while_revalidate)),
            origin_sie.max(secs(grants.if_error)),
        )
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    // The stored copy's age is `created` (which the upstream Age moved back); a stored Age
    // field would be stale at once, and a revalidation would count it a second time.
    if header.headers.contains_key(http::header::AGE) {
        header.remove_header(&http::header::AGE);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, made, swr, sie, header))
}

/// Fields a 304 never changes in the stored copy: they describe the stored body's framing and
/// encoding, or only the hop that carried the 304 (RFC 9111 §3.2, §4.3.4).
const NOT_FROM_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The stored header updated with every field of a 304 but the framing ones (RFC 9111
/// §4.3.4), to decide on as if it were a full answer: Pingora merges only a few fields, and
/// the 304's `Age` (an upstream cache revalidated its copy: the age starts again) and
/// `Cache-Status` (it answered from stale) must count as they would on a 200.
pub fn merged_with_304(stored: &ResponseHeader, fields: &http::HeaderMap) -> ResponseHeader {
    let mut header = stored.clone();
    // A stored Age is never kept (see `decide`): an Age in the merged header is the 304's. Nor
    // the stored Cache-Status: it described the answer that filled the copy (perhaps a stale
    // one, which would expire every revalidation at once); the 304's, if any, describes now.
    for name in [
        http::header::AGE,
        http::header::HeaderName::from_static("cache-status"),
    ] {
        if header.headers.contains_key(&name) {
            header.remove_header(&name);
        }
    }
    for name in fields.keys() {
        if NOT_FROM_304.contains(&name.as_str()) {
            continue;
        }
        header.remove_header(name);
        for value in fields.get_all(name) {
            let _ = header.append_header(name.clone(), value.clone());
        }
    }
    header
}

/// The response's `Age` (RFC 9111 §5.1): delta-seconds; one that does not parse, or a list,
/// counts as none. Bounded to a year: a bogus huge value must not make time run backwards.
fn upstream_age(resp: &ResponseHeader) -> Duration {
    age_of(resp).unwrap_or(Duration::ZERO)
}

/// The response's valid `Age`, if it has one: the answer came from a cache, made that long ago.
pub fn age_of(resp: &ResponseHeader) -> Option<Duration> {
    let mut values = resp.headers.get_all(http::header::AGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(365 * 86_400)))
}

/// Freshness from `Expires` is measured on the origin's clock, `Expires - Date` (RFC 9111
/// §4.2.1), not against ours: an origin whose clock is off by an hour must not make its pages
/// stale (or fresh) for an hour. Only when no Cache-Control lifetime applies (it wins); a
/// missing or invalid Date is taken as now.
fn expires_by_origin_clock(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    made: SystemTime,
) -> Option<SystemTime> {
    if cc.and_then(|c| c.fresh_duration()).is_some() {
        return None;
    }
    let date_of = |name: http::header::HeaderName| -> Option<SystemTime> {
        let mut values = resp.headers.get_all(name).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return None;
        };
        httpdate::parse_http_date(v.to_str().ok()?).ok()
    };
    let expires = match date_of(http::header::EXPIRES) {
        Some(t) => t,
        // Present but invalid (or repeated): already in the past (§5.3).
        None if resp.headers.contains_key(http::header::EXPIRES) => {
            return made.checked_sub(Duration::from_secs(1))
        }
        None => return None,
    };
    let date = date_of(http::header::DATE).unwrap_or(made);
    match expires.duration_since(date) {
        Ok(lifetime) if !lifetime.is_zero() => made.checked_add(lifetime),
        _ => made.checked_sub(Duration::from_secs(1)),
    }
}

/// Statuses RFC 9110 §15.1 calls heuristically cacheable (5xx excluded, see the module doc).
const HEURISTIC_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414];

/// Freshness from the route's `default_ttl`, for a response that names none but does not
/// forbid storing either (requests with Authorization were already refused by `decide`).
fn default_freshness(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    now: SystemTime,
    rules: &EdgeRules,
) -> Option<SystemTime> {
    let ttl = rules.default_ttl?;
    if !HEURISTIC_STATUSES.contains(&resp.status.as_u16()) {
        return None;
    }
    if cc.is_some_and(|c| c.is_cacheable() == Cacheable::No) {
        return None;
    }
    now.checked_add(ttl)
}

/// The predictor's filter: refusals with these reasons are not remembered for the URL.
pub fn transient_refusal(reason: &'static str) -> bool {
    matches!(
        reason,
        "partial" | "set-cookie" | "vary-star" | "authorization"
    )
}

fn vary_star(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANTS: EdgeRules = EdgeRules {
        default_ttl: None,
        while_revalidate: Duration::from_secs(5),
        if_error: Duration::from_secs(7 * 86_400),
        force: false,
    };

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn meta(r: &ResponseHeader, auth: bool, grants: &EdgeRules) -> Option<CacheMeta> {
        match decide(r, auth, now(), grants) {
            RespCacheable::Cacheable(m) => Some(m),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    fn ttl(m: &CacheMeta) -> u64 {
        m.fresh_until()
            .duration_since(now())
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn explicit_freshness_only() {
        assert_eq!(
            ttl(&meta(
                &resp(200, &[("Cache-Control", "max-age=60")]),
                false,
                &GRANTS
            )
            .unwrap()),
            60
        );
        // s-maxage wins over max-age for a shared cache.
        let m = meta(
            &resp(200, &[("Cache-Control", "max-age=60, s-maxage=300")]),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 300);
        // No freshness information: not stored (no heuristics).
        assert!(meta(&resp(200, &[]), false, &GRANTS).is_none());
        assert!(meta(
            &resp(200, &[("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            false,
            &GRANTS
        )
        .is_none());
        // Expires works when Cache-Control has no age.
        let expires = httpdate::fmt_http_date(now() + Duration::from_secs(120));
        let m = meta(&resp(200, &[("Expires", &expires)]), false, &GRANTS).unwrap();
        assert_eq!(ttl(&m), 120);
    }

    #[test]
    fn route_default_ttl_only_where_the_origin_is_silent() {
        let rules = EdgeRules {
            default_ttl: Some(Duration::from_secs(30)),
            ..GRANTS
        };
        assert_eq!(ttl(&meta(&resp(200, &[]), false, &rules).unwrap()), 30);
        assert_eq!(ttl(&meta(&resp(404, &[]), false, &rules).unwrap()), 30);
        // Explicit freshness still wins; explicit refusals still refuse.
        assert_eq!(
            ttl(&meta(&resp(200, &[("Cache-Control", "max-age=5")]), false, &rules).unwrap()),
            5
        );
        assert!(meta(&resp(200, &[("Cache-Control", "no-store")]), false, &rules).is_none());
        assert!(meta(&resp(200, &[("Cache-Control", "private")]), false, &rules).is_none());
        assert!(meta(&resp(302, &[]), false, &rules).is_none());
        assert!(meta(&resp(200, &[]), true, &rules).is_none());
    }

    #[test]
    fn never_stored() {
        for r in [
            resp(200, &[("Cache-Control", "no-store, max-age=60")]),
            resp(200, &[("Cache-Control", "private, max-age=60")]),
            resp(503, &[("Cache-Control", "max-age=60")]),
            resp(206, &[("Cache-Control", "max-age=60")]),
            resp(
                200,
                &[("Cache-Control", "max-age=60"), ("Set-Cookie", "s=1")],
            ),
            resp(
                200,
                &[
                    ("Cache-Control", "max-age=60"),
                    ("Vary", "Accept-Encoding, *"),
                ],
            ),
        ] {
            assert!(meta(&r, false, &GRANTS).is_none(), "{:?}", r.headers);
        }
        // 404 with explicit freshness is fine.
        assert!(meta(
            &resp(404, &[("Cache-Control", "max-age=10")]),
            false,
            &GRANTS
        )
        .is_some());
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        assert!(meta(
            &resp(200, &[("Cache-Control", "max-age=60")]),
            true,
            &GRANTS
        )
        .is_none());
        assert!(meta(
            &resp(200, &[("Cache-Control", "public, max-age=60")]),
            true,
            &GRANTS
        )
        .is_some());
        assert!(meta(
            &resp(200, &[("Cache-Control", "s-maxage=60")]),
            true,
            &GRANTS
        )
        .is_some());
    }

    #[test]
    fn edge_fields_take_precedence() {
        let r = resp(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=600"),
            ],
        );
        assert_eq!(ttl(&meta(&r, false, &GRANTS).unwrap()), 600);
        let r = resp(
            200,
            &[
                ("Cache-Control", "max-age=5"),
                ("Surrogate-Control", "max-age=900"),
            ],
        );
        assert_eq!(ttl(&meta(&r, false, &GRANTS).unwrap()), 900);
        let r = resp(
            200,
            &[
                ("Cache-Control", "max-age=600"),
                ("CDN-Cache-Control", "no-store"),
            ],
        );
        assert!(meta(&r, false, &GRANTS).is_none());
    }

    #[test]
    fn stale_windows() {
        let m = meta(
            &resp(
                200,
                &[(
                    "Cache-Control",
                    "max-age=60, stale-while-revalidate=30, stale-if-error=60",
                )],
            ),
            false,
            &GRANTS,
        )
        .unwrap();
        // Origin's SWR plus the operator's grace; SIE at least the operator's window.
        assert_eq!(m.stale_while_revalidate_sec(), 35);
        assert_eq!(m.stale_if_error_sec(), 7 * 86_400);
        let m = meta(
            &resp(
                200,
                &[("Cache-Control", "max-age=60, stale-if-error=999999999")],
            ),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(m.stale_if_error_sec(), 999_999_999);
        for forbid in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
            "no-cache",
        ] {
            let m = meta(&resp(200, &[("Cache-Control", forbid)]), false, &GRANTS).unwrap();
            assert_eq!(
                (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
                (0, 0),
                "{forbid}"
            );
            let forced = EdgeRules {
                force: true,
                ..GRANTS
            };
            let m = meta(&resp(200, &[("Cache-Control", forbid)]), false, &forced).unwrap();
            assert_eq!(m.stale_if_error_sec(), 7 * 86_400, "{forbid} forced");
        }
        // no-cache is stored but always stale: every use revalidates.
        let m = meta(&resp(200, &[("Cache-Control", "no-cache")]), false, &GRANTS).unwrap();
        assert!(!m.is_fresh(now()));
    }

    #[test]
    fn private_field_names_are_not_stored() {
        let r = resp(
            200,
            &[
                ("Cache-Control", "max-age=60, private=\"x-user\""),
                ("X-User", "alice"),
            ],
        );
        // `private` with field names permits storing without those fields.
        if let Some(m) = meta(&r, false, &GRANTS) {
            assert!(m.headers().get("x-user").is_none());
        }
    }

    #[test]
    fn age_from_upstream_counts_against_freshness() {
        // A shield held it 50 s of its 60.
        let m = meta(
            &resp(200, &[("Cache-Control", "max-age=60"), ("Age", "50")]),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 10);
        assert_eq!(
            m.created(),
            now() - Duration::from_secs(50),
            "Age goes on counting from there"
        );
        // Older than its lifetime: stored, but stale at once.
        let m = meta(
            &resp(200, &[("Cache-Control", "max-age=60"), ("Age", "90")]),
            false,
            &GRANTS,
        )
        .unwrap();
        assert!(!m.is_fresh(now()));
        // s-maxage and CDN-Cache-Control too.
        let m = meta(
            &resp(200, &[("CDN-Cache-Control", "max-age=30"), ("Age", "20")]),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 10);
        // Nonsense Age counts as none.
        for bad in ["-5", "abc", "1.5", ""] {
            let m = meta(
                &resp(200, &[("Cache-Control", "max-age=60"), ("Age", bad)]),
                false,
                &GRANTS,
            )
            .unwrap();
            assert_eq!(ttl(&m), 60, "{bad:?}");
        }
    }

    #[test]
    fn a_304_is_decided_with_all_its_fields() {
        // Stored from a shield, then revalidated: the shield's 304 says its copy is 40 s old
        // and was served stale; the stored header's own fields stay but the framing.
        let stored = resp(
            200,
            &[
                ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/html"),
                ("Content-Length", "5"),
                ("ETag", "\"e1\""),
                ("X-Old", "kept"),
            ],
        );
        let mut fields = http::HeaderMap::new();
        fields.insert("age", "40".parse().unwrap());
        fields.insert("cache-control", "max-age=100".parse().unwrap());
        fields.insert("content-length", "0".parse().unwrap());
        fields.insert(
            "cache-status",
            "shield; hit; detail=stale-if-error".parse().unwrap(),
        );
        let merged = merged_with_304(&stored, &fields);
        assert_eq!(merged.headers["content-length"], "5");
        assert_eq!(merged.headers["x-old"], "kept");
        assert!(crate::cache::status::upstream_served_stale(&merged));
        let m = meta(&merged, false, &GRANTS).unwrap();
        // Fresh for what is left of the 304's lifetime, not a whole new one.
        assert_eq!(ttl(&m), 60);
        // The stored header keeps no Age (its age is the meta's).
        assert!(!m.response_header().headers.contains_key("age"));
        // The stored Cache-Status described the fill, not this 304: a copy once filled from
        // stale is not expired again by every revalidation.
        let mut filled_stale = stored.clone();
        filled_stale
            .append_header("Cache-Status", "shield; hit; detail=stale-if-error")
            .unwrap();
        let merged = merged_with_304(&filled_stale, &http::HeaderMap::new());
        assert!(!crate::cache::status::upstream_served_stale(&merged));
        // A 304 without Age: made now; an Age stored by mistake does not count.
        let mut with_age = stored.clone();
        with_age.append_header("Age", "50").unwrap();
        let m = meta(
            &merged_with_304(&with_age, &http::HeaderMap::new()),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 60);
    }

    #[test]
    fn expires_runs_on_the_origin_clock() {
        // The origin's clock is an hour behind ours; its page is good for 120 s.
        let origin_now = now() - Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(origin_now);
        let expires = httpdate::fmt_http_date(origin_now + Duration::from_secs(120));
        let m = meta(
            &resp(200, &[("Date", &date), ("Expires", &expires)]),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 120);
        // With Age, the lifetime runs from when it was made.
        let m = meta(
            &resp(
                200,
                &[("Date", &date), ("Expires", &expires), ("Age", "100")],
            ),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 20);
        // Cache-Control wins over Expires.
        let m = meta(
            &resp(
                200,
                &[
                    ("Date", &date),
                    ("Expires", &expires),
                    ("Cache-Control", "max-age=5"),
                ],
            ),
            false,
            &GRANTS,
        )
        .unwrap();
        assert_eq!(ttl(&m), 5);
    }

    #[test]
    fn a_cdn_cache_control_that_does_not_parse_is_ignored_whole() {
        let valid = resp(
            200,
            &[
                ("CDN-Cache-Control", "max-age=60"),
                ("Cache-Control", "max-age=5"),
            ],
        );
        assert_eq!(ttl(&meta(&valid, false, &GRANTS).unwrap()), 60);
        for broken in [
            "max-age=60, ===",
            "Max-Age=60",
            "max-age=60;;",
            "max-age=6 0",
        ] {
            let r = resp(
                200,
                &[
                    ("CDN-Cache-Control", broken),
                    ("Cache-Control", "max-age=5"),
                ],
            );
            assert_eq!(ttl(&meta(&r, false, &GRANTS).unwrap()), 5, "{broken:?}");
        }
        // Broken, and nothing else: not stored on its say-so.
        let r = resp(200, &[("CDN-Cache-Control", "max-age=60, ===")]);
        assert!(meta(&r, false, &GRANTS).is_none());
    }
}
