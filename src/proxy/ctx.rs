//! The per-request context: everything one request carries between proxy phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::origin::Pool;
use crate::snapshot::Snapshot;

/// State of one request. Created in `new_ctx` with the snapshot it will use to the end.
pub struct RequestCtx {
    pub started: Instant,
    /// Loaded once: a reload during this request does not change its rules.
    pub snapshot: Arc<Snapshot>,
    pub request_id: String,
    /// The client: the peer, or the address a trusted proxy forwarded (see `protect::client`).
    pub client_ip: Option<IpAddr>,
    /// The socket's peer.
    pub peer_ip: Option<IpAddr>,
    /// Normalized request host (lowercase, no port).
    pub host: String,
    /// Index into `snapshot.sites`.
    pub site: Option<usize>,
    pub pool: Option<Arc<Pool>>,
    /// Origin indexes (into `pool.origins`) already tried, in order.
    pub tried: Vec<usize>,
    /// Attempts made, including retries of the same origin after a stale pooled connection.
    pub attempts: usize,
    /// Attempts made in the current pool, and fallback pools moved on to.
    pub pool_attempts: usize,
    pub fallbacks: usize,
    /// When the current origin attempt began.
    pub attempt_started: Option<Instant>,
    /// Whether the current attempt has been counted in the origin metrics.
    pub attempt_recorded: bool,
    /// Status of an answer onair made itself (421, maintenance 503, ...), for the log.
    pub local_status: Option<u16>,
    /// The port the client named in Host, for the cache key.
    pub port: Option<u16>,
    /// Whether the cache may answer and store this request (method and route allow it).
    pub cache_on: bool,
    /// How the route's query string enters the cache key.
    pub query_key: crate::config::QueryKey,
    /// The route's freshness for responses that carry none.
    pub default_ttl: Option<std::time::Duration>,
    /// Whether the origin's response was cacheable and is being stored.
    pub cache_stored: bool,
    /// How the request used the cache, once the answer's headers are out.
    pub cache_outcome: Option<crate::cache::status::Outcome>,
    /// The cache key, computed once by the fast hit path and handed to Pingora on a miss.
    pub cache_key: Option<pingora::cache::CacheKey>,
    /// The pool slot (max_inflight) this request holds from its first origin attempt on.
    pub permit: Option<crate::origin::protect::Permit>,
    /// Whether the current attempt is the trial of an ejected origin.
    pub trial: bool,
    /// Held while the current attempt waits for the origin's answer head (hang detection).
    pub waiting: Option<crate::origin::health::Waiting>,
    /// Request body bytes received so far (for `protect.max_body`).
    pub body_bytes: u64,
    /// Attack mode is on and this client has no clearance: it may have cache hits, but
    /// anything that would reach an origin gets the challenge instead.
    pub uncleared: bool,
    /// The client came over TLS (an HTTPS listener).
    pub tls: bool,
    /// Counts this request in the node's load (`protect::shed`) while the context lives.
    pub in_progress: Option<crate::protect::shed::InProgress>,
    /// `(attempt, granted)`: the retry decision for that attempt, made once.
    pub retry_decision: Option<(usize, bool)>,
    /// Taken when a cacheable request leaves for the origin; what it brings back is stored
    /// only if no purge ran since (see `cache::fence::EarlyTicket`).
    pub fill_ticket: Option<crate::cache::fence::EarlyTicket>,
    /// HTTP/2 uploads (the connection gate clocks HTTP/1 ones): when the body began to be
    /// read, and whether the client was found too slow (answered 408, the origin not blamed).
    pub body_started: Option<Instant>,
    pub client_stalled: bool,
    /// The fields of a 304 from the origin, to update the stored copy's (RFC 9111 §4.3.4).
    pub not_modified: Option<http::HeaderMap>,
    /// The request comes from another cache tier (`protect::client::from_tier`): it gets the
    /// tags and surrogate fields a reader does not, and its `no-cache` is honoured.
    pub from_tier: bool,
    /// A tier asked for a copy revalidated with the origin (`Cache-Control: no-cache`): the
    /// stored copy, fresh or not, is revalidated once before it is served.
    pub revalidate: bool,
    /// The upstream is asked with `no-cache` (see `cache::history`): the stored copy or the
    /// upstream's first answer may predate a purge made here, or a tier asked this node so.
    /// At most once per request.
    pub refetch: bool,
    /// The release whose embargo this request met (answered with the embargo answer).
    pub embargo: Option<std::sync::Arc<str>>,
    /// The answer (stored or arriving) is under its origin's embargo: the reader gets the
    /// embargo answer instead of its head and body.
    pub origin_embargo: bool,
    /// A warm fetch (see `release::warm`): past the embargoes, the rate limits and the
    /// challenge, which are for readers.
    pub warming: bool,
    /// An origin's body being checked against its `Content-Digest` (`[site.integrity]`).
    pub integrity: Option<crate::integrity::digest::Check>,
    /// The request went to the origin as a HEAD (no body comes back).
    pub upstream_head: bool,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            started: Instant::now(),
            snapshot,
            request_id: String::new(),
            client_ip: None,
            peer_ip: None,
            host: String::new(),
            site: None,
            pool: None,
            tried: Vec::new(),
            attempts: 0,
            pool_attempts: 0,
            fallbacks: 0,
            attempt_started: None,
            attempt_recorded: false,
            local_status: None,
            port: None,
            cache_on: false,
            query_key: crate::config::QueryKey::Keep,
            default_ttl: None,
            cache_stored: false,
            cache_outcome: None,
            cache_key: None,
            permit: None,
            waiting: None,
            trial: false,
            retry_decision: None,
            body_bytes: 0,
            uncleared: false,
            tls: false,
            in_progress: None,
            fill_ticket: None,
            body_started: None,
            client_stalled: false,
            not_modified: None,
            from_tier: false,
            revalidate: false,
            refetch: false,
            embargo: None,
            origin_embargo: false,
            warming: false,
            integrity: None,
            upstream_head: false,
        }
    }

    /// The scheme the client used: part of the cache key and of X-Forwarded-Proto.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The origin of the current (last) attempt.
    pub fn current_origin(&self) -> Option<&crate::origin::Origin> {
        let pool = self.pool.as_ref()?;
        pool.origins.get(*self.tried.last()?)
    }

    /// The matched site's config.
    pub fn site_config(&self) -> Option<&crate::config::Site> {
        self.site.and_then(|i| self.snapshot.config.sites.get(i))
    }

    /// The request headers the site passes to its origins and keys on (`pass_headers`).
    pub fn pass_headers(&self) -> &[String] {
        self.site_config()
            .map_or(&[], |s| s.pass_headers.as_slice())
    }

    /// The site's name for metrics and logs; `-` when no site matched.
    pub fn site_name(&self) -> &str {
        self.site
            .and_then(|i| self.snapshot.sites.get(i))
            .map_or("-", |s| s.name.as_str())
    }
}
