//! Attack mode in the request path: who is cleared, the challenge page, and answers to it
//! (the rules and the crypto are in `protect::challenge`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::RequestCtx;
use super::respond;
use crate::metrics::METRICS;
use crate::protect::challenge::{self, Answer};

/// No-JavaScript redemptions per address block, on this node.
static NOJS_BUDGET: std::sync::LazyLock<challenge::NoJsBudget> =
    std::sync::LazyLock::new(challenge::NoJsBudget::default);

/// The no-JavaScript wait in seconds on this request's site, None where the site has it off.
fn nojs_wait(ctx: &RequestCtx) -> Option<u64> {
    ctx.site_config()?
        .nojs_challenge
        .then(|| ctx.snapshot.config.protect.attack.nojs_wait.as_secs())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Whether this request may reach an origin while attack mode is on: allow-listed ranges
/// (monitoring, verified crawlers) or a valid clearance cookie. (Pingora's background
/// revalidations never get here: the proxy treats them as cleared.)
pub fn cleared(session: &Session, ctx: &RequestCtx) -> bool {
    let Some(ip) = ctx.client_ip else {
        return true;
    };
    let protect = &ctx.snapshot.config.protect;
    if protect.allow.iter().any(|c| c.contains(ip)) {
        return true;
    }
    let cookies = session
        .req_header()
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes());
    ctx.snapshot.signer.cleared(cookies, ip, unix_now())
}

/// The answer to an uncleared request that would have gone to an origin: the challenge page
/// for a page a browser navigates to; 503 + Retry-After for anything else (an API call, a feed,
/// a script's fetch: none of them could show the page or solve it), and for everything with
/// `challenge = "off"` (the node then serves what it has cached, nothing more).
pub async fn refuse(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let attack = &ctx.snapshot.config.protect.attack;
    if !attack.challenge || !navigation(session.req_header()) {
        respond::send(
            session,
            ctx,
            503,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"the site is under heavy load: open it in a browser to continue\n"),
            &[("Retry-After", "30")],
        )
        .await?;
        return Ok(());
    }
    let back = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    page(session, ctx, &back).await
}

/// Whether the request is a browser loading a page (which can show and solve the challenge):
/// `Sec-Fetch-Mode: navigate`, or without that header (older browsers), one that accepts HTML.
fn navigation(req: &pingora::http::RequestHeader) -> bool {
    let header = |name| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    match header("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => header("accept").is_some_and(|a| a.contains("text/html")),
    }
}

async fn page(session: &mut Session, ctx: &mut RequestCtx, back: &str) -> Result<()> {
    let Some(ip) = ctx.client_ip else {
        return respond::text(session, ctx, 403, "no client address\n")
            .await
            .map(drop);
    };
    let bits = ctx.snapshot.config.protect.attack.difficulty;
    let token = ctx.snapshot.signer.challenge(ip, bits, unix_now());
    let body = challenge::page(&token, bits, back, nojs_wait(ctx));
    METRICS.challenge("issued");
    respond::send(
        session,
        ctx,
        403,
        "text/html; charset=utf-8",
        body,
        &[("X-Robots-Tag", "noindex")],
    )
    .await?;
    Ok(())
}

/// A request to `challenge::PATH`: a correct answer earns the clearance cookie and goes back
/// to the page it came from; anything else gets a new challenge.
pub async fn answer(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let answer = Answer::parse(session.req_header().uri.query().unwrap_or(""));
    let Some(ip) = ctx.client_ip else {
        return respond::text(session, ctx, 403, "no client address\n")
            .await
            .map(drop);
    };
    let now = unix_now();
    let attack = &ctx.snapshot.config.protect.attack;
    let checked =
        ctx.snapshot
            .signer
            .check(&answer.challenge, &answer.answer, ip, now, nojs_wait(ctx));
    let checked = match checked {
        // Waiting costs a bot nothing but time: each address block gets so many per window.
        Ok(challenge::Solved::Waited)
            if !NOJS_BUDGET.take(
                crate::protect::client::block_key(ip),
                now,
                attack.nojs_clearance.as_secs(),
                attack.nojs_per_block,
            ) =>
        {
            METRICS.challenge("nojs_refused");
            Err(challenge::Failed::NoJsBudget)
        }
        other => other,
    };
    match checked {
        Ok(how) => {
            let mut lifetime = attack.clearance.as_secs();
            if how == challenge::Solved::Waited {
                METRICS.challenge("passed_nojs");
                lifetime = lifetime.min(attack.nojs_clearance.as_secs());
            } else {
                METRICS.challenge("passed");
            }
            let value = ctx.snapshot.signer.clearance(ip, now + lifetime);
            let cookie = format!(
                "{}={value}; Path=/; Max-Age={lifetime}; HttpOnly; SameSite=Lax",
                challenge::COOKIE
            );
            respond::send(
                session,
                ctx,
                303,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"cleared\n"),
                &[("Location", &answer.return_to), ("Set-Cookie", &cookie)],
            )
            .await?;
            Ok(())
        }
        Err(why) => {
            METRICS.challenge("failed");
            tracing::debug!(?why, "challenge answer refused");
            page(session, ctx, &answer.return_to).await
        }
    }
}
