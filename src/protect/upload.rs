//! Slow HTTP/2 uploads.
//!
//! The connection gate (`conn`) clocks HTTP/1 request bodies on the raw stream. HTTP/2 carries
//! many requests on one connection, and Pingora 0.9.1 reads an HTTP/2 request body with no
//! timeout at all (`read_body_bytes` has a `TODO: timeout`; `set_read_timeout` is a no-op for
//! HTTP/2) and no hook runs while a read waits. So onair does what it can from the proxy:
//! - each chunk that arrives is checked against the same budget as HTTP/1 bodies
//!   (`body_timeout` of grace, then `min_upload_rate`): a trickling client is cut at its next
//!   chunk with 408;
//! - a client that stops sending altogether is cut when the origin, waiting for the rest of the
//!   body, times out (`read_timeout` of the pool): that timeout is then the client's fault, so
//!   the origin is not marked down for it and the request is not retried.
//!
//! Either way the request ends, which frees its `max_inflight` slot. A stall shorter than the
//! pool's `read_timeout` holds the slot that long; cutting it at `body_timeout` needs a read
//! timeout inside Pingora's HTTP/2 session.

use std::time::{Duration, Instant};

use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use crate::proxy::ctx::RequestCtx;

/// Whether the HTTP/2 upload of this request is behind its budget, checked as a chunk arrives.
pub fn too_slow(session: &Session, ctx: &mut RequestCtx, end_of_stream: bool) -> bool {
    if !session.is_http2() {
        return false;
    }
    let now = Instant::now();
    let started = *ctx.body_started.get_or_insert(now);
    if end_of_stream && session.body_bytes_read() == 0 {
        return false;
    }
    let protect = &ctx.snapshot.config.protect;
    over_budget(
        now.saturating_duration_since(started),
        session.body_bytes_read() as u64,
        protect.body_timeout,
        protect.min_upload_rate,
    )
}

/// `body_timeout` of grace plus the time `bytes` take at `min_rate` bytes/s (0: no minimum,
/// only the grace).
fn over_budget(elapsed: Duration, bytes: u64, grace: Duration, min_rate: u64) -> bool {
    let earned = match min_rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
    };
    min_rate > 0 && elapsed > grace + earned
}

/// Whether an origin timed out while the client still owed it the rest of an HTTP/2 body.
pub fn stalled_origin_wait(session: &mut Session, e: &Error) -> bool {
    session.is_http2()
        && *e.esource() == ErrorSource::Upstream
        && matches!(e.etype(), ErrorType::ReadTimedout)
        && !session.is_body_done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_grace_plus_the_minimum_rate() {
        let grace = Duration::from_secs(20);
        // 500 B/s: 10 kB buy 20 s on top of the grace.
        assert!(!over_budget(Duration::from_secs(39), 10_000, grace, 500));
        assert!(over_budget(Duration::from_secs(41), 10_000, grace, 500));
        // Nothing sent: the grace alone.
        assert!(over_budget(Duration::from_secs(21), 0, grace, 500));
        // No minimum rate: never cut by the budget.
        assert!(!over_budget(Duration::from_secs(3600), 0, grace, 0));
    }
}
