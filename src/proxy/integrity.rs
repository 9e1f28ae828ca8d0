//! `[site.integrity]` on the request path: an origin's response head is checked against the
//! newsroom's signature when it arrives, its body against its `Content-Digest` as it streams
//! through; each failure is counted (`onair_integrity_failures_total{site,reason}`) and logged
//! with the URL. In `report` mode that is all: the response is served and cached as before.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::integrity::signature::{self, Message, Request, REQUIRED};
use crate::integrity::{digest, Failure};
use crate::metrics::METRICS;

/// Checks an origin's response head (`upstream_response_filter`); a body to check is left in
/// `ctx.integrity`.
pub fn on_head(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
    ctx.integrity = None;
    let Some(config) = ctx.site_config().and_then(|s| s.integrity.clone()) else {
        return;
    };
    // A 304 keeps the stored copy, checked when it was stored; 1xx are no answers.
    if resp.status == http::StatusCode::NOT_MODIFIED || resp.status.is_informational() {
        return;
    }
    let req = session.req_header();
    let msg = Message {
        status: Some(resp.status.as_u16()),
        headers: &resp.headers,
        request: Request {
            method: req.method.as_str(),
            scheme: ctx.scheme(),
            authority: &ctx.host,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
        },
    };
    let now = crate::release::now_ms() / 1000;
    let verified = signature::verify(
        &msg,
        &config.keys,
        &REQUIRED,
        i64::try_from(now).unwrap_or(i64::MAX),
    );
    // Every line of the field, as the signature base took it.
    let lines: Vec<&[u8]> = resp
        .headers
        .get_all("content-digest")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let field = (!lines.is_empty()).then(|| lines.join(&b", "[..]));
    match verified.and_then(|_| digest::Check::new(field.as_deref())) {
        // Asked as a HEAD, the origin sends no body: its signed head is all there is. (A
        // reader's HEAD the cache turned into a GET is checked over the body it stores.)
        Ok(_) if ctx.upstream_head => {}
        Ok(check) => ctx.integrity = Some(check),
        Err(failure) => failed(session, ctx, &failure),
    }
}

/// At the end of the exchange (`logging`): a check still open is finished, if the answer came
/// whole (`complete`). An empty body ends with its head, and an HTTP/2 one with its trailers:
/// neither reaches the body filter with its end.
pub fn on_end(session: &Session, complete: bool, ctx: &mut RequestCtx) {
    let Some(check) = ctx.integrity.take() else {
        return;
    };
    if complete {
        if let Err(failure) = check.finish() {
            failed(session, ctx, &failure);
        }
    }
}

/// Feeds the body through its digest (`upstream_response_body_filter`); at its end, the
/// verdict.
pub fn on_body(session: &Session, body: &Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    let Some(check) = ctx.integrity.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        check.update(chunk);
    }
    if end_of_stream {
        if let Some(Err(failure)) = ctx.integrity.take().map(digest::Check::finish) {
            failed(session, ctx, &failure);
        }
    }
}

/// Counts a failure, and logs it (at most one line a second: a site sending nothing signed
/// must not flood the log; the counter has them all).
fn failed(session: &Session, ctx: &RequestCtx, failure: &Failure) {
    METRICS.integrity_failure(ctx.site_name(), failure.reason());
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let second = crate::release::now_ms() / 1000;
    if LOGGED.swap(second, Ordering::Relaxed) != second {
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        tracing::warn!(
            site = ctx.site_name(),
            url = %format!("{}://{}{path}", ctx.scheme(), ctx.host),
            reason = failure.reason(),
            "integrity: {failure}"
        );
    }
}
