//! The `ProxyHttp` implementation. Each phase is a few lines that call the modules that own
//! the concern: routing (`router`), origin choice (`origin`), headers (`headers`), local
//! answers (`respond`), metrics and the access log.
//!
//! Phase order for one request (see docs/architecture.md):
//! `new_ctx` (snapshot) -> `request_filter` (request id, host -> site -> route -> pool) ->
//! `upstream_peer` (origin choice) -> `upstream_request_filter` (forwarding headers) ->
//! `upstream_response_filter` (origin outcome, hop-by-hop) -> `response_filter` (`Via`, id) ->
//! `logging` (metrics, access log). On failure: `fail_to_connect` / `error_while_proxy` decide
//! whether to try the next origin, and `fail_to_proxy` answers with the maintenance page.

pub mod challenge;
pub mod ctx;
pub mod headers;
pub mod hit;
pub mod integrity;
pub mod respond;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

use crate::access_log;
use crate::cache::{self, EdgeCache};
use crate::metrics::{OriginOutcome, METRICS};
use crate::origin::health::Seen;
use crate::protect::{
    self,
    rate::{RateLimiter, Verdict},
};
use crate::router::{parse_authority, RouteTarget};
use crate::snapshot::Live;
use ctx::RequestCtx;

/// A request body that grew past `protect.max_body` while streaming.
const BODY_TOO_LARGE: ErrorType = ErrorType::Custom("request body too large");
/// The upstream cache's copy may predate a purge made here: ask again (see `cache::history`).
const PREDATES_PURGE: ErrorType = ErrorType::Custom("upstream copy may predate a purge");

/// The edge proxy.
pub struct Edge {
    live: Arc<Live>,
    cache: EdgeCache,
    limiter: Arc<RateLimiter>,
    /// The port of the first HTTPS listener bound at start (listeners do not reload), for the
    /// plain-HTTP redirect; None: no HTTPS, no redirect.
    https_port: Option<u16>,
}

impl Edge {
    pub fn new(live: Arc<Live>, cache: EdgeCache, limiter: Arc<RateLimiter>) -> Self {
        let https_port = live.current().config.listen.https.first().map(|a| a.port());
        Edge {
            live,
            cache,
            limiter,
            https_port,
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.current())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pingora's own background revalidation (stale-while-revalidate) runs through here as
        // a copy of the reader's request: it is not the reader, and must not be limited,
        // tarpitted or challenged as one.
        let background = session.subrequest_ctx.is_some();
        let gated = match protect::conn::watch(session) {
            Some(watch) => {
                let req = session.req_header();
                let body = headers::has_body(req);
                let expect_continue = body
                    && req
                        .headers
                        .get(http::header::EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                watch.head_done(body, expect_continue);
                true
            }
            None => false,
        };
        ctx.request_id = headers::request_id(session.req_header());
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let protect = &ctx.snapshot.config.protect;
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = ctx
            .peer_ip
            .map(|peer| protect::client::identify(peer, session.req_header(), protect));
        ctx.from_tier = ctx
            .peer_ip
            .is_some_and(|peer| protect::client::from_tier(peer, protect));
        // Slow readers: the gate's send clock cuts HTTP/1 connections; other sessions get
        // Pingora's per-write timeout.
        if !gated {
            session.set_write_timeout(Some(protect.send_timeout));
        }
        // Idle keep-alive time (unless the client asked to close, which stays so).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(protect.keepalive_timeout.as_secs().max(1)));
        }
        if let Some(refusal) = protect::screen(session, ctx.client_ip, ctx.peer_ip, protect) {
            METRICS.refused(refusal.reason);
            if refusal.close {
                // Its framing cannot be trusted: nothing after it on this connection can be.
                session.set_keepalive(None);
            }
            respond::text(session, ctx, refusal.status, refusal.text()).await?;
            return Ok(true);
        }
        if !background {
            self.live.attack().observe();
        }
        let req = session.req_header();
        if headers::is_loop(req, &ctx.snapshot.via) {
            respond::text(
                session,
                ctx,
                508,
                "request loop detected: this node already forwarded it\n",
            )
            .await?;
            return Ok(true);
        }
        let Some((host, port)) = headers::raw_host(req).and_then(parse_authority) else {
            respond::text(session, ctx, 400, "missing or invalid Host\n").await?;
            return Ok(true);
        };
        ctx.host = host;
        ctx.port = port;
        // Routes, the cache key and the origin all see one spelling of the path: `//login`,
        // `/%6cogin` and `/x/../login` are `/login` (RFC 3986 §6.2.2); what cannot be read one
        // way only is refused.
        if let Err(refused) = normalize_target(session) {
            METRICS.refused("path");
            respond::text(session, ctx, 400, refused.text()).await?;
            return Ok(true);
        }
        let Some(site) = ctx.snapshot.hosts.site_for(&ctx.host) else {
            // Never forward a request for a host we do not serve: it could reach an origin
            // that trusts the edge for a site it is not meant to serve.
            respond::text(
                session,
                ctx,
                421,
                "this edge serves no site for that host\n",
            )
            .await?;
            return Ok(true);
        };
        ctx.site = Some(site);
        // A warm fetch (see `release::warm`), recognized before the redirect to HTTPS: it
        // warms an https URL through the node's plain listener, as the https reader's object.
        let server_ip = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.warming = crate::release::warm::recognized(
            session.req_header(),
            ctx.peer_ip
                .is_some_and(|ip| ip.is_loopback() || Some(ip) == server_ip),
            ctx.from_tier,
            ctx.snapshot.config.release.warm_secret.as_deref(),
        );
        if ctx.warming && crate::release::warm::for_https(session.req_header()) {
            ctx.tls = true;
        }
        if let Some(location) = https_redirect(session, ctx, self.https_port) {
            respond::to_https(session, ctx, &location).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let Some(route) = ctx
            .snapshot
            .sites
            .get(site)
            .map(|s| s.routes.route_for(req.uri.path()))
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "site index out of range",
            ));
        };
        if let Some(retry_after) = self
            .over_rate(ctx, &route)
            .filter(|_| !background && !ctx.warming)
        {
            respond::too_many_requests(session, ctx, retry_after).await?;
            return Ok(true);
        }
        if session.req_header().uri.path() == protect::challenge::PATH {
            challenge::answer(session, ctx).await?;
            return Ok(true);
        }
        // Another tier's requests are not challenged: the edge challenged its readers already
        // (a miss reaches the shield only from a cleared reader), and its misses are all the
        // shield exists for.
        ctx.uncleared = !background
            && !ctx.from_tier
            && !ctx.warming
            && self.live.attack().active()
            && !challenge::cleared(session, ctx);
        // Counted for load shedding from here: past the refusals (a tarpitted 429 is no load).
        ctx.in_progress = Some(protect::shed::enter());
        if !ctx.warming && self.embargoed(session, ctx, route.query) {
            // Before its release: never from the cache, never from the origin, whatever the
            // method or the path to it. The answer looks like any missing page (saying
            // "embargoed" would tell that the page exists).
            METRICS.embargo_hit();
            respond::text(session, ctx, embargo_status(ctx), "not found\n").await?;
            return Ok(true);
        }
        let req = session.req_header();
        ctx.pool = ctx.snapshot.pools.get(route.pool).cloned();
        ctx.cache_on = route.cache && cache::request_cacheable(req);
        let refetch_asked = ctx.from_tier && cache::asks_revalidation(req);
        ctx.revalidate = ctx.cache_on && refetch_asked;
        // And passed on, cached here or not: behind this node may be another cache tier whose
        // copy is as old.
        ctx.refetch = refetch_asked;
        ctx.query_key = route.query;
        if ctx.cache_on && route.query != crate::config::QueryKey::Keep {
            // The origin gets the query as the key holds it (sorted, or none): what it answers
            // is stored under that key, so it must answer exactly that.
            keyed_query(session, route.query);
        }
        ctx.default_ttl = route.default_ttl;
        let req = session.req_header();
        if req.method.as_str() == "PURGE" {
            self.purge_method(session, ctx).await?;
            return Ok(true);
        }
        if ctx.cache_on && !ctx.revalidate && self.cache.catch_up.is_open() && hit::plain(req) {
            let key = self.cache_key(session, ctx);
            let hash = pingora::cache::key::CacheHashKey::combined_bin(&key);
            let served = hit::serve_fresh(self.cache.memory, session, ctx, &hash).await?;
            // Kept for cache_key_callback, which Pingora calls next on the full path.
            ctx.cache_key = Some(key);
            return Ok(served);
        }
        Ok(false)
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // Attack mode: what is cached is served to everyone; the origins see only the cleared.
        if ctx.uncleared {
            challenge::refuse(session, ctx).await?;
            return Ok(false);
        }
        if ctx.cache_on {
            ctx.fill_ticket = Some(self.cache.early_ticket());
        }
        Ok(true)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if ctx.cache_on {
            self.cache
                .enable(&mut session.cache, ctx.snapshot.config.cache.lock_timeout);
        }
        Ok(())
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut pingora::cache::HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        // A tier's no-cache: revalidate the stored copy once. Readers wait for the origin (no
        // stale while revalidating: the tier asked precisely because its copy may be stale).
        // Nor stale if the origin fails: a tier asks this after a purge of the object, and a
        // purged page must not come back because the origin is down (the tier still has its
        // own stale-if-error window, if its purge was soft). Once only: after waiting on
        // another request's fill, that fill is new enough.
        if std::mem::take(&mut ctx.revalidate) && session.cache.lock_duration().is_none() {
            return Ok(Some(pingora::cache::ForcedFreshness::ForceExpired));
        }
        // Stored before this start, with fleet operations still to catch up: it may have been
        // purged meanwhile. Revalidated first; served stale only if the origin fails.
        if self.cache.catch_up.suspect(meta.epoch()) {
            return Ok(Some(
                pingora::cache::ForcedFreshness::ForceExpiredServeStale { expired_at: None },
            ));
        }
        Ok(None)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // A copy under its origin's embargo gets the embargo answer (`response_filter`), never
        // a 304 that would confirm it exists (and would leave that answer without its body).
        if !ctx.warming && crate::release::origin_embargo(&resp.headers, SystemTime::now()) {
            return Ok(false);
        }
        Ok(
            pingora::protocols::http::conditional_filter::not_modified_filter(
                session.req_header(),
                resp,
            ),
        )
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        Ok(match ctx.cache_key.take() {
            Some(key) => key,
            None => self.cache_key(session, ctx),
        })
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let cfg = &ctx.snapshot.config.cache;
        let grants = cache::policy::EdgeRules {
            default_ttl: ctx.default_ttl,
            while_revalidate: cfg.stale_while_revalidate,
            if_error: cfg.stale_if_error,
            force: ctx.site_config().is_some_and(|s| s.force_stale_if_error),
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        // A revalidation: Pingora merged a few of the 304's fields into the stored header; the
        // decision takes all of them but the framing ones (its Age and Cache-Status included),
        // so a field the origin changed shows next time.
        let merged = ctx
            .not_modified
            .as_ref()
            .map(|fields| cache::policy::merged_with_304(resp, fields));
        let resp = merged.as_ref().unwrap_or(resp);
        let mut decision = cache::policy::decide(resp, authorization, SystemTime::now(), &grants);
        if ctx.warming && !self.warm_covered(session, ctx) {
            // Fetched past the origin's own embargo for a release this node does not hold
            // (out of its scope, or called off meanwhile): nothing here would hide it.
            decision = RespCacheable::Uncacheable(pingora::cache::NoCacheReason::Custom(
                "warm fetch of content no release here holds back",
            ));
        }
        // The store holds the ticket from here (Pingora gives the same meta to the fill). When
        // nothing will be stored it is dropped now: kept open by a long answer (a WebSocket, a
        // stream) it would only make the fence remember purges for nothing.
        let ticket = ctx.fill_ticket.take();
        if let RespCacheable::Cacheable(meta) = &mut decision {
            if cache::status::upstream_served_stale(resp) {
                meta.expire_at(SystemTime::now());
            }
        }
        if let (RespCacheable::Cacheable(meta), Some(ticket)) = (&mut decision, ticket) {
            meta.extensions_mut().insert(ticket);
        }
        ctx.cache_stored = matches!(decision, RespCacheable::Cacheable(_));
        Ok(decision)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // The windows themselves (origin directives, operator grants, must-revalidate) were
        // fixed when the object was stored; here only the trigger matters.
        match error {
            // stale-while-revalidate: always, within the stored window.
            None => true,
            // stale-if-error: origin failures only, never a client's own error.
            Some(e) => {
                let upstream = *e.esource() == ErrorSource::Upstream;
                if upstream {
                    // A 5xx answered from a stale copy never reaches upstream_response_filter:
                    // count the attempt here, so passive health sees it (no-op if counted).
                    match e.etype() {
                        ErrorType::HTTPStatus(status) => record_5xx(ctx, *status, None),
                        _ => record_attempt(ctx, outcome_of(e)),
                    }
                }
                upstream
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(mut pool) = ctx.pool.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request has no pool",
            ));
        };
        // A pool with nothing left to offer (no origin ready, or its attempts spent) hands the
        // request to its fallback pool, with that pool's own slot, TLS, host and timeouts.
        while let Some(next) = pool
            .fallback
            .and_then(|i| ctx.snapshot.pools.get(i))
            .cloned()
        {
            let spent =
                ctx.pool_attempts >= pool.config.max_attempts || !pool.any_ready(&ctx.tried);
            if !spent || ctx.fallbacks >= ctx.snapshot.pools.len() {
                break;
            }
            METRICS.failover(pool.name());
            ctx.fallbacks += 1;
            ctx.tried.clear();
            ctx.pool_attempts = 0;
            ctx.permit = None;
            ctx.pool = Some(next.clone());
            pool = next;
        }
        if ctx.permit.is_none() {
            // Load shedding, then origin protection: a slot under max_inflight for the whole
            // request, across its attempts. Refused requests get a stale copy if there is one,
            // else 503.
            let permit = if protect::shed::overloaded(ctx.snapshot.config.protect.shed_at) {
                Err("shed")
            } else {
                pool.limiter
                    .acquire(pool.config.queue_timeout)
                    .await
                    .map_err(|rejected| rejected.label())
            };
            match permit {
                Ok(permit) => ctx.permit = Some(permit),
                Err(reason) => {
                    METRICS.rejected(pool.name(), reason);
                    let mut e = Error::explain(
                        ErrorType::Custom("origin busy"),
                        "node overloaded or pool at max_inflight: no slot for this request",
                    )
                    .into_up();
                    e.set_retry(false);
                    return Err(e);
                }
            }
            pool.budget.request(std::time::Instant::now());
        }
        let region = ctx.snapshot.config.node.region.as_str();
        let key = match pool.config.select {
            crate::config::Select::Hash => {
                let pq = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str());
                crate::origin::request_hash(&ctx.host, &cache::key::keyed_target(pq, ctx.query_key))
            }
            crate::config::Select::RoundRobin => 0,
        };
        let Some((index, trial)) = pool.choose_trial(region, &ctx.tried, key) else {
            return Err(
                Error::explain(ErrorType::ConnectNoRoute, "no origin left to try").into_up(),
            );
        };
        if !ctx.tried.is_empty() {
            METRICS.failover(pool.name());
        }
        ctx.tried.push(index);
        ctx.trial = trial;
        // Counted per attempt: a retry replays the body through request_body_filter.
        ctx.body_bytes = 0;
        // Hang detection watches answers to requests without a body: an upload may take long
        // before the origin can answer, and that is not a stall.
        ctx.waiting = if headers::has_body(session.req_header()) {
            None
        } else {
            pool.origins.get(index).map(|o| o.health.wait_for_answer())
        };
        ctx.attempts += 1;
        ctx.pool_attempts += 1;
        ctx.attempt_started = Some(std::time::Instant::now());
        ctx.attempt_recorded = false;
        match pool.peer(index) {
            Some(peer) => Ok(Box::new(peer)),
            None => Err(Error::explain(
                ErrorType::InternalError,
                "origin index out of range",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.cache_on && !ctx.refetch {
            self.judge_stored_copy(session, ctx);
        }
        // A reader's HEAD goes up as a GET when the cache may store the answer; as a HEAD, no
        // body comes back to check.
        ctx.upstream_head = upstream.method == http::Method::HEAD;
        headers::to_origin(upstream, ctx, ctx.scheme())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::NOT_MODIFIED && ctx.cache_on {
            ctx.not_modified = Some(resp.headers.clone());
        }
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // A WebSocket can stay open for hours; it is not load waiting to be answered.
            ctx.in_progress = None;
        }
        let passed = ctx.pass_headers();
        for path in cache::invalidated_by(session.req_header(), resp, &ctx.host) {
            let path = cache::key::keyed_target(&path, ctx.query_key);
            // Both schemes hold a copy of the URL; a change through either stales both. Keyed
            // as the reads were (with the site's passed headers, as this request sent them).
            for scheme in ["http", "https"] {
                let key = cache::key::cache_key_with(
                    scheme,
                    &ctx.host,
                    ctx.port,
                    &path,
                    passed,
                    &session.req_header().headers,
                );
                self.cache.invalidate(&key).await;
            }
        }
        if !resp.status.is_informational() || resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if resp.status.is_server_error() {
                record_5xx(ctx, resp.status.as_u16(), Some(resp));
            } else {
                record_attempt(ctx, OriginOutcome::Ok);
            }
            // A gateway-class answer from one origin (overloaded, restarting, its own backend
            // gone): like a refused connection, an idempotent request whose client has seen
            // nothing yet moves to the next origin, within max_attempts and the retry budget.
            // Otherwise the answer goes through (or stale-if-error serves a stored copy).
            let status = resp.status.as_u16();
            if (502..=504).contains(&status) && replayable(session) && grant_retry(ctx) {
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "origin answered with a gateway error",
                )
                .into_up();
                e.set_retry(true);
                return Err(e);
            }
        }
        if ctx.cache_on && !resp.status.is_server_error() {
            self.judge_upstream_copy(session, resp, ctx)?;
        }
        headers::from_origin(resp);
        // Checked as it will be stored and served (after the hop-by-hop headers are gone: a
        // `Connection: content-type` must not take a signed field away unseen), once no retry
        // will replace it.
        integrity::on_head(session, resp, ctx);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            if let Some(watch) = protect::conn::watch(session) {
                watch.body_done();
            }
        }
        if protect::upload::too_slow(session, ctx, end_of_stream) {
            METRICS.slow_client("upload");
            ctx.client_stalled = true;
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "request body slower than protect.min_upload_rate",
            )
            .into_down());
        }
        // Content-Length was checked with the head; a chunked body is counted as it comes.
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.snapshot.config.protect.max_body {
                METRICS.refused("body");
                return Err(Error::explain(
                    BODY_TOO_LARGE,
                    "request body over protect.max_body",
                ));
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        integrity::on_body(session, body, end_of_stream, ctx);
        // read_timeout bounds each read; this bounds the whole answer, so an origin trickling
        // a byte a second cannot hold a reader (and a connection) for ever. The error cuts the
        // client's response and the partial body is not cached.
        if end_of_stream {
            // The origin is done: its slot under max_inflight is free even while the answer
            // still drains to a slow reader.
            ctx.permit = None;
        }
        let over = match (&ctx.pool, ctx.attempt_started) {
            // An upgraded connection (WebSocket) lives as long as its two ends want.
            _ if session.was_upgraded() => false,
            (Some(pool), Some(started)) => started.elapsed() > pool.config.total_timeout,
            _ => false,
        };
        if over {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "origin answer exceeded the pool's total_timeout",
            )
            .into_up());
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let outcome = cache::status::Outcome::of(&session.cache, ctx.cache_on, ctx.cache_stored);
        let ttl = match outcome {
            cache::status::Outcome::Hit => session
                .cache
                .maybe_cache_meta()
                .map(|m| cache::status::ttl(m.fresh_until(), SystemTime::now())),
            _ => None,
        };
        ctx.cache_outcome = Some(outcome);
        if !matches!(
            outcome,
            cache::status::Outcome::Miss { .. } | cache::status::Outcome::Bypass
        ) {
            // Answered from a stored copy (hit, stale, revalidated): the origin, if it was
            // asked at all, is done; the slot must not wait for this body to reach the reader,
            // nor does a slow download of it count as load.
            ctx.permit = None;
            ctx.in_progress = None;
        }
        if !ctx.warming && crate::release::origin_embargo(&resp.headers, SystemTime::now()) {
            // The origin keeps this back until a time still to come: stored as it is, but the
            // reader (or another tier) gets the embargo answer; the body is held back in
            // response_body_filter.
            METRICS.embargo_hit();
            ctx.origin_embargo = true;
            ctx.embargo = Some(std::sync::Arc::from("origin"));
            *resp = embargo_answer(ctx)?;
            return Ok(());
        }
        resp.append_header(
            "Cache-Status",
            outcome.header(&ctx.snapshot.config.node.id, ttl),
        )?;
        headers::to_client(resp, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.origin_embargo {
            *body = end_of_stream.then(|| Bytes::from_static(EMBARGO_BODY));
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        record_attempt(ctx, outcome_of(&e));
        // Nothing reached the origin, so any method may move to the next origin.
        e.set_retry(grant_retry(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("origin {peer}"));
        if *e.etype() == PREDATES_PURGE {
            // The origin (an upstream cache) answered well: ask the same one again, as a
            // new attempt outside max_attempts and the retry budget (once per request).
            ctx.tried.pop();
            ctx.pool_attempts = ctx.pool_attempts.saturating_sub(1);
            e.set_retry(replayable(session));
            return e;
        }
        if protect::upload::stalled_origin_wait(session, &e) {
            // The origin timed out waiting for an HTTP/2 upload that stopped coming: the
            // client's fault, not the origin's (no health penalty, no retry).
            METRICS.slow_client("upload");
            ctx.client_stalled = true;
            e.set_retry(false);
            return e;
        }
        if *e.esource() != ErrorSource::Upstream {
            // The client went away or sent something we cannot forward: another origin
            // would fare no better, and the origin is not to blame.
            e.set_retry(false);
            return e;
        }
        // An idle pooled connection the origin had already closed: the origin did not fail,
        // so it may be tried again on a fresh connection (still within max_attempts).
        let stale_connection = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        if stale_connection {
            ctx.tried.pop();
        } else {
            record_attempt(ctx, outcome_of(&e));
        }
        let retry = if stale_connection {
            may_try_again(ctx)
        } else {
            replayable(session) && grant_retry(ctx)
        };
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let already_answered = session.response_written().is_some();
        let code = if already_answered {
            // Headers are out: all we can do is cut the connection so the client sees an
            // incomplete answer rather than a silently truncated one.
            0
        } else if ctx.client_stalled {
            // Its slot under max_inflight is free before the answer is even written.
            ctx.permit = None;
            respond::text(session, ctx, 408, "request body too slow\n")
                .await
                .unwrap_or(0)
        } else if *e.etype() == BODY_TOO_LARGE {
            respond::text(session, ctx, 413, "request body too large\n")
                .await
                .unwrap_or(0)
        } else if *e.esource() == ErrorSource::Downstream {
            match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                _ => respond::text(session, ctx, 400, "bad request\n")
                    .await
                    .unwrap_or(0),
            }
        } else {
            // Origins failed (or none is left): the site's maintenance page, never a bare 502.
            // The connection closes after it (Pingora does not reuse it): say so, or a cache
            // tier in front pools it and meets a reset on its next request.
            session.set_keepalive(None);
            respond::maintenance(session, ctx).await.unwrap_or(0)
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        integrity::on_end(session, e.is_none(), ctx);
        // A body left unread (the request was answered without it: a refusal, the challenge)
        // would be drained next under no clock of ours: close the connection instead, as
        // nginx does for a refused request's body. Otherwise it waits for the next head.
        if !session.is_body_done() {
            session.set_keepalive(None);
        } else if let Some(watch) = protect::conn::watch(session) {
            watch.request_done();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        let cache = ctx.cache_outcome.map_or("bypass", |o| o.label());
        match ctx.cache_outcome {
            Some(cache::status::Outcome::StaleWhileRevalidate) => {
                METRICS.stale_served("stale-while-revalidate")
            }
            Some(cache::status::Outcome::StaleIfError) => METRICS.stale_served("stale-if-error"),
            // Waited on the cache lock, then served from what another request fetched.
            Some(cache::status::Outcome::Hit) if session.cache.lock_duration().is_some() => {
                METRICS.coalesced()
            }
            _ => {}
        }
        let series = ctx
            .site
            .and_then(|i| ctx.snapshot.sites.get(i))
            .map_or(&ctx.snapshot.unrouted, |s| &s.metrics);
        series.request(cache, status, elapsed);
        if !access_log::enabled() {
            return;
        }
        let req = session.req_header();
        // The access log stays on the node: the address, whatever the metrics call it.
        let origin = ctx.current_origin().map(|o| o.addr_text.as_str());
        // The connection's own TLS (a warm fetch of an https URL is keyed as https over plain).
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref());
        access_log::write(&access_log::Entry {
            time: access_log::now_rfc3339(),
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip.map(|ip| ip.to_string()),
            method: req.method.as_str(),
            host: &ctx.host,
            path: req.uri.path(),
            status,
            bytes: session.body_bytes_sent(),
            duration_ms: (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            site: ctx.site_name(),
            origin,
            attempts: ctx.attempts,
            cache,
            http: match req.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
            tls: tls.map(|t| t.version.to_string()),
            // The listeners offer h2 and http/1.1: HTTP/2 over TLS is what ALPN agreed.
            alpn: tls.map(|_| {
                if req.version == http::Version::HTTP_2 {
                    "h2"
                } else {
                    "http/1.1"
                }
            }),
            error: e.map(|e| format!("{}: {}", e.source_str(), e.etype().as_str())),
            embargo: ctx.embargo.as_deref(),
            warm: ctx.warming,
        });
    }
}

impl Edge {
    /// Revalidating a stored copy that may predate a purge made here (a soft purge marked it
    /// stale, or it came from an upstream cache before the purge): the upstream is asked with
    /// `no-cache`, so an upstream onair node revalidates its own copy with the origin before it
    /// answers. Decided before the request leaves, because Pingora serves a 304 from the stored
    /// copy whatever this node thinks of it afterwards: it cannot be refused and asked again.
    fn judge_stored_copy(&self, session: &Session, ctx: &mut RequestCtx) {
        let Some(meta) = session.cache.maybe_cache_meta() else {
            return;
        };
        let now = SystemTime::now();
        // The copy as of its last validation (`epoch`), which the upstream's Age moved back.
        let age = now.duration_since(meta.epoch()).unwrap_or_default();
        let target = self.purge_target(session, ctx);
        let tags = cache::purge::tags_of(meta.response_header());
        if self.cache.history.judge(age, &target, &tags) != cache::history::Verdict::Current {
            ctx.refetch = true;
            METRICS.refetched();
        }
    }

    /// Whether an upstream cache's copy may predate a purge made here (`cache::history`): if
    /// so, the request is asked again with `no-cache` (an error Pingora retries, on the same
    /// origin of a hash pool), once. Whatever that second answer is, it is the best the
    /// upstream has: an onair shield revalidated it with the origin (or failed, and said so),
    /// and an upstream that ignores a request's no-cache (Varnish and nginx by default) would
    /// hand the same copy to every refetch; it is stored, so that such an upstream costs one
    /// refetch per object lifetime, not one per request. A 304 is never refused (Pingora would
    /// send it bare): the request that got it was judged before it left (`judge_stored_copy`).
    fn judge_upstream_copy(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // No Age: the answer did not come from a cache, it is as new as it gets.
        let Some(age) = cache::policy::age_of(resp) else {
            return Ok(());
        };
        let target = self.purge_target(session, ctx);
        let tags = cache::purge::tags_of(resp);
        let verdict = self.cache.history.judge(age, &target, &tags);
        let not_modified = resp.status == http::StatusCode::NOT_MODIFIED;
        if verdict != cache::history::Verdict::Current && !ctx.refetch && !not_modified {
            ctx.refetch = true;
            record_attempt(ctx, OriginOutcome::Ok);
            METRICS.refetched();
            let mut e =
                Error::explain(PREDATES_PURGE, "upstream copy made before a purge").into_up();
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    /// Whether a release's embargo covers this request now (recorded in `ctx.embargo`), on a
    /// route keying the query as `query`.
    fn embargoed(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        query: crate::config::QueryKey,
    ) -> bool {
        if self.cache.releases.holds_nothing() {
            // The usual case: one atomic load, nothing built.
            return false;
        }
        let uri = &session.req_header().uri;
        let (snapshot, site) = (&ctx.snapshot, ctx.site);
        // Any host name of the request's site, on any port: routing ignores the port.
        let same_site = |host: &str| snapshot.hosts.site_for(host) == site;
        ctx.embargo = self.cache.releases.embargoed(
            &same_site,
            uri.path(),
            release_query(uri, query),
            crate::release::now_ms(),
        );
        ctx.embargo.is_some()
    }

    /// Whether a pending release here (not being called off) covers this warm fetch, so that
    /// its answer may be stored (see `release::Book::warm_covered`).
    fn warm_covered(&self, session: &Session, ctx: &RequestCtx) -> bool {
        let uri = &session.req_header().uri;
        let (snapshot, site) = (&ctx.snapshot, ctx.site);
        let same_site = |host: &str| snapshot.hosts.site_for(host) == site;
        let query = release_query(uri, ctx.query_key);
        self.cache
            .releases
            .warm_covered(&same_site, uri.path(), query)
    }

    /// `host[:port]/path?query` of this request, as purges name objects.
    fn purge_target(&self, session: &Session, ctx: &RequestCtx) -> String {
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let path = cache::key::keyed_target(path, ctx.query_key);
        let default_port = if ctx.tls { 443 } else { 80 };
        cache::purge::target(&ctx.host, ctx.port.filter(|p| *p != default_port), &path)
    }

    /// Counts the request against the client's limits (node-wide, then the route's); when it is
    /// over one, how long until it may try again.
    fn over_rate(&self, ctx: &RequestCtx, route: &RouteTarget) -> Option<Duration> {
        let ip = ctx.client_ip?;
        let (client, block) = (
            protect::client::limit_key(ip),
            protect::client::block_key(ip),
        );
        let now = std::time::Instant::now();
        let protect = &ctx.snapshot.config.protect;
        let node = protect
            .rate
            .map(|r| (protect::rate::NODE, client, r.limit, "node"));
        // The whole /24 or /48 too: one sender with many addresses is still one sender.
        let block = protect
            .block_rate
            .map(|r| (protect::rate::BLOCK, block, r.limit, "block"));
        let route = route
            .rate
            .map(|(policy, limit)| (policy, client, limit, "route"));
        for (policy, key, limit, reason) in node.into_iter().chain(block).chain(route) {
            if let Verdict::Deny { retry_after } = self.limiter.check(policy, key, &limit, now) {
                METRICS.rate_limited(reason);
                return Some(retry_after);
            }
        }
        None
    }

    /// The request's cache key (see `cache::key`): the normalized target, plus the values of
    /// the site's `pass_headers` (they reach the origin, so they must select the object).
    fn cache_key(&self, session: &Session, ctx: &RequestCtx) -> CacheKey {
        let req = session.req_header();
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = cache::key::keyed_target(path, ctx.query_key);
        let passed = ctx.pass_headers();
        cache::key::cache_key_with(
            ctx.scheme(),
            &ctx.host,
            ctx.port,
            &path,
            passed,
            &req.headers,
        )
    }

    /// The PURGE method: drops the cached copies (all variants) of the request's URL, for
    /// clients in `cache.purge_from` only; `Soft-Purge: 1` marks them stale instead. Nothing
    /// reaches an origin.
    async fn purge_method(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let allowed = ctx.client_ip.is_some_and(|ip| {
            ctx.snapshot
                .config
                .cache
                .purge_from
                .iter()
                .any(|range| range.contains(ip))
        });
        if !allowed {
            respond::text(
                session,
                ctx,
                403,
                "PURGE is not allowed from this address\n",
            )
            .await?;
            return Ok(());
        }
        let target = self.purge_target(session, ctx);
        let req = session.req_header();
        let soft = req
            .headers
            .get("soft-purge")
            .is_some_and(|v| v.as_bytes() == b"1");
        let selector = cache::purge::Selector::Urls(std::iter::once(target.clone()).collect());
        let report = self.cache.purge(&selector, soft).await;
        // An operator's call like the admin API's: in the audit log (refused ones, from the
        // public side, are only answered: they change nothing).
        let state_dir = ctx.snapshot.config.node.state_dir.clone();
        crate::admin::audit::record(
            &state_dir,
            &crate::admin::audit::Entry {
                time: crate::access_log::now_rfc3339(),
                who: "purge_from",
                from: ctx
                    .client_ip
                    .map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                method: "PURGE",
                path: &target,
                status: 200,
                result: format!("ok: {} purged", report.purged),
            },
        )
        .await;
        let body = format!(
            "{{\"purged\": {}, \"soft\": {soft}, \"index_ready\": {}}}\n",
            report.purged, report.index_ready
        );
        respond::send(session, ctx, 200, "application/json", body.into(), &[]).await?;
        Ok(())
    }
}

/// Rewrites the request's path to its normal form (see [`crate::uri_path`]) when it is not
/// already; the query is kept as sent.
fn normalize_target(session: &mut Session) -> std::result::Result<(), crate::uri_path::Refused> {
    let req = session.req_header();
    // Raw bytes outside ASCII reach the origin as sent, while the URI holds a lossy rendering
    // of them: the key would not name what the origin answers.
    if !req.raw_path().is_ascii() {
        return Err(crate::uri_path::Refused::NotAscii);
    }
    let Some(pq) = req.uri.path_and_query() else {
        return Ok(());
    };
    let normal = match crate::uri_path::normalize_path_and_query(pq.as_str())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    set_path_and_query(session, &normal);
    Ok(())
}

/// Rewrites the query as the route's key holds it (sorted, or dropped).
fn keyed_query(session: &mut Session, mode: crate::config::QueryKey) {
    let Some(pq) = session.req_header().uri.path_and_query() else {
        return;
    };
    let keyed = cache::key::keyed_target(pq.as_str(), mode);
    if keyed != pq.as_str() {
        let keyed = keyed.into_owned();
        set_path_and_query(session, &keyed);
    }
}

/// Replaces the request URI's path and query, keeping its scheme and authority (HTTP/2).
fn set_path_and_query(session: &mut Session, path_and_query: &str) {
    let uri = &session.req_header().uri;
    let mut parts = http::uri::Builder::new();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        parts = parts.scheme(scheme.clone()).authority(authority.clone());
    }
    // Built from a URI that parsed, with a path that only lost or decoded characters: it
    // parses again. Should it not, the request keeps its URI (and its checked spelling).
    if let Ok(new) = parts.path_and_query(path_and_query).build() {
        session.req_header_mut().set_uri(new);
    }
}

/// Where a plain-HTTP request should go instead, with `tls.redirect_http`: the https URL, for
/// hosts a served certificate covers, except ACME http-01 challenges (a certificate authority
/// checks those over plain HTTP, also to renew the certificate).
fn https_redirect(session: &Session, ctx: &RequestCtx, https_port: Option<u16>) -> Option<String> {
    let https_port = https_port?;
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    // PURGE is an operator's call for this very URL, not a reader to send elsewhere.
    let wanted = !ctx.tls
        && ctx.snapshot.config.tls.redirect_http
        && req.method.as_str() != "PURGE"
        && !path.starts_with("/.well-known/acme-challenge/")
        && crate::tls::store::covers(&ctx.snapshot.certs, &ctx.host);
    if !wanted {
        return None;
    }
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    Some(format!("https://{}{port}{path}", ctx.host))
}

/// Whether the pool allows another attempt and has an origin left to try.
fn may_try_again(ctx: &RequestCtx) -> bool {
    let Some(pool) = &ctx.pool else { return false };
    let here = ctx.pool_attempts < pool.config.max_attempts && ctx.tried.len() < pool.origins.len();
    here || (pool.fallback.is_some() && ctx.fallbacks < ctx.snapshot.pools.len())
}

/// Whether the origin may have acted on the request without harm to a second try: only
/// idempotent requests whose body we can replay, and only while the client has seen nothing
/// of the answer.
fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}

/// Decides once per attempt whether the request may go to another origin: an attempt and an
/// origin must be left, and the pool's retry budget must allow it (it is spent here).
fn grant_retry(ctx: &mut RequestCtx) -> bool {
    if let Some((attempt, granted)) = ctx.retry_decision {
        if attempt == ctx.attempts {
            return granted;
        }
    }
    let granted = may_try_again(ctx)
        && ctx.pool.as_ref().is_some_and(|pool| {
            let allowed = pool.budget.try_retry(std::time::Instant::now());
            METRICS.retry(pool.name(), allowed);
            allowed
        });
    ctx.retry_decision = Some((ctx.attempts, granted));
    granted
}

fn outcome_of(e: &Error) -> OriginOutcome {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            OriginOutcome::Timeout
        }
        _ => OriginOutcome::Error,
    }
}

/// Counts a 5xx answer. From a pool of shields, a shield's maintenance answer (503, with a
/// Cache-Status entry saying `detail=origin-unavailable`) means the shield is up and its own
/// origins failed. The request still moves on (a retry, a fallback, a stale copy), but
/// ejecting the shield would lose every stale copy it still serves. A bare 503 (a balancer in
/// front of a dead shield) counts as a failure. On the stale-if-error path Pingora hands over
/// the status alone (`resp` None): a 503 from a shields pool is taken for a maintenance answer.
fn record_5xx(ctx: &mut RequestCtx, status: u16, resp: Option<&ResponseHeader>) {
    let shields = ctx.pool.as_ref().is_some_and(|p| p.config.shields);
    let maintenance =
        shields && status == 503 && resp.is_none_or(cache::status::upstream_origin_unavailable);
    let seen = if maintenance { Seen::Ok } else { Seen::Failure };
    record(ctx, OriginOutcome::Status5xx, seen);
}

/// Counts the current attempt once in the origin metrics.
fn record_attempt(ctx: &mut RequestCtx, outcome: OriginOutcome) {
    let seen = match outcome {
        OriginOutcome::Ok => Seen::Ok,
        OriginOutcome::Timeout => Seen::Timeout,
        OriginOutcome::Error | OriginOutcome::Status5xx => Seen::Failure,
    };
    record(ctx, outcome, seen);
}

/// Counts the current attempt once: `outcome` in the metrics, `seen` for its health.
fn record(ctx: &mut RequestCtx, outcome: OriginOutcome, seen: Seen) {
    if ctx.attempt_recorded {
        return;
    }
    let (Some(pool), Some(&index), Some(started)) =
        (&ctx.pool, ctx.tried.last(), ctx.attempt_started)
    else {
        return;
    };
    if let Some(origin) = pool.origins.get(index) {
        origin.metrics.attempt(outcome, started.elapsed());
        if outcome != OriginOutcome::Timeout {
            origin.health.answered();
        }
        if let Some(change) =
            origin
                .health
                .record_traffic(seen, &pool.config.passive, pool.rise(), ctx.trial)
        {
            origin.report(pool.name(), change, outcome.label());
        }
    }
    ctx.attempt_recorded = true;
    ctx.waiting = None;
}

/// A request's query as releases judge it on a route keying the query as `mode`: none where the
/// key drops it (every query shares the object: judged on the path alone).
fn release_query(uri: &http::Uri, mode: crate::config::QueryKey) -> Option<&str> {
    (mode != crate::config::QueryKey::Drop).then(|| uri.query().unwrap_or(""))
}

/// The embargo answer's body: like any missing page's.
const EMBARGO_BODY: &[u8] = b"not found\n";

/// The embargo answer's head (for a response under its origin's embargo, in place of its own).
fn embargo_answer(ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(embargo_status(ctx), Some(6))?;
    resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    resp.insert_header("Content-Length", EMBARGO_BODY.len().to_string())?;
    resp.insert_header("Cache-Control", "no-store")?;
    headers::to_client(&mut resp, ctx)?;
    Ok(resp)
}

/// The status of the embargo answer for this request's site (`site.embargo_status`).
fn embargo_status(ctx: &RequestCtx) -> u16 {
    ctx.site
        .and_then(|i| ctx.snapshot.config.sites.get(i))
        .map_or(404, |s| s.embargo_status)
}
