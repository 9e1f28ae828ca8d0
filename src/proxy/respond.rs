//! Answers onair writes itself: the maintenance page, unknown hosts, loops, bad requests,
//! rate-limit refusals (after the tarpit) and the redirect to HTTPS.
//!
//! Every local answer carries `Cache-Control: no-store` (it must never be cached anywhere as
//! if it were the site's content), `X-Request-Id` and `Via`, so a reader's report can be traced.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::RequestCtx;

/// Served with 503 when a site has no `maintenance_page` and nothing can answer.
pub const BUILTIN_MAINTENANCE: &[u8] = b"<!doctype html>\n<html lang=\"vi\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>\xC4\x90ang b\xE1\xBA\xA3o tr\xC3\xAC / Under maintenance</title></head>\
<body style=\"font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em\">\
<h1>\xC4\x90ang b\xE1\xBA\xA3o tr\xC3\xAC</h1>\
<p>Trang t\xE1\xBA\xA1m th\xE1\xBB\x9Di kh\xC3\xB4ng ph\xE1\xBA\xA3n h\xE1\xBB\x93i. Vui l\xC3\xB2ng th\xE1\xBB\xAD l\xE1\xBA\xA1i sau \xC3\xADt ph\xC3\xBAt.</p>\
<h1 lang=\"en\">Under maintenance</h1>\
<p lang=\"en\">This site is temporarily unavailable. Please try again in a few minutes.</p>\
</body></html>\n";

/// Seconds a client is asked to wait before retrying after a maintenance answer.
const RETRY_AFTER: &str = "30";

/// Writes a complete local answer. Returns the status for the log.
pub async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, &str)],
) -> Result<u16> {
    let mut resp = ResponseHeader::build(status, Some(6 + extra.len()))?;
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("Cache-Control", "no-store")?;
    resp.insert_header("Via", ctx.snapshot.via.as_str())?;
    if !ctx.request_id.is_empty() {
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    }
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    ctx.local_status = Some(status);
    Ok(status)
}

/// 429 for a client over a rate limit, after the tarpit: the pause slows a flooder that waits
/// for its answers (most do) to its own concurrency per tarpit; until it is back under the
/// rate, its new connections are refused at accept (protect::acl). A ±25 % jitter keeps a
/// flooder's connections from coming back all at once.
pub async fn too_many_requests(
    session: &mut Session,
    ctx: &mut RequestCtx,
    retry_after: std::time::Duration,
) -> Result<u16> {
    let tarpit = ctx.snapshot.config.protect.tarpit;
    if !tarpit.is_zero() {
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25);
        tokio::time::sleep(tarpit.mul_f64(jitter)).await;
    }
    let retry_after = retry_after.as_secs_f64().ceil().max(1.0).to_string();
    send(
        session,
        ctx,
        429,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"too many requests: slow down\n"),
        &[("Retry-After", &retry_after)],
    )
    .await
}

/// The redirect of a plain-HTTP request to `location` (its https URL): 301 for GET and HEAD,
/// 308 otherwise, which keeps the method and body that a 301 lets clients turn into a GET.
pub async fn to_https(session: &mut Session, ctx: &mut RequestCtx, location: &str) -> Result<u16> {
    let status = if matches!(session.req_header().method.as_str(), "GET" | "HEAD") {
        301
    } else {
        308
    };
    send(
        session,
        ctx,
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"this site is served over HTTPS\n"),
        &[("Location", location)],
    )
    .await
}

/// A short plain-text answer.
pub async fn text(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    msg: &'static str,
) -> Result<u16> {
    send(
        session,
        ctx,
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(msg.as_bytes()),
        &[],
    )
    .await
}

/// The site's maintenance page with 503 and `Retry-After`, and a `Cache-Status` that tells
/// a cache tier in front of this node that its origins, not this node, failed.
pub async fn maintenance(session: &mut Session, ctx: &mut RequestCtx) -> Result<u16> {
    let page = ctx
        .site
        .and_then(|i| ctx.snapshot.sites.get(i))
        .map_or_else(
            || Bytes::from_static(BUILTIN_MAINTENANCE),
            |s| s.maintenance_page.clone(),
        );
    let status =
        crate::cache::status::origin_unavailable(&ctx.snapshot.config.node.id, ctx.cache_on);
    send(
        session,
        ctx,
        503,
        "text/html; charset=utf-8",
        page,
        &[("Retry-After", RETRY_AFTER), ("Cache-Status", &status)],
    )
    .await
}
