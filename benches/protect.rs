//! The rate limiter's cost: time per check, and its memory at a million distinct clients (a
//! flood from many addresses). `cargo bench --bench protect`; docs/benchmarks.md records it.
//! Under `cargo test` (no `--bench` argument) it runs with 10,000 clients as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use onair::protect::rate::{Limit, RateLimiter, Verdict};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let clients: u128 = if full { 1_000_000 } else { 10_000 };
    let limiter = RateLimiter::default();
    let limit = Limit::new(100.0, 200);
    let now = Instant::now();
    let before = rss_kib();
    let started = Instant::now();
    for c in 0..clients {
        // IPv4-mapped keys, as real clients have.
        let key = (0xffff_u128 << 32) | c;
        assert_eq!(limiter.check(0, key, &limit, now), Verdict::Allow);
    }
    let insert = started.elapsed();
    let after = rss_kib();
    let tracked = limiter.len() as u64;
    // The steady state: one client checking again and again.
    let started = Instant::now();
    let rounds = 1_000_000u32;
    let mut t = now;
    for _ in 0..rounds {
        t += Duration::from_micros(10);
        let _ = limiter.check(0, 7, &limit, t);
    }
    let check = started.elapsed() / rounds;
    let swept = Instant::now();
    limiter.sweep(now + Duration::from_secs(10));
    let sweep = swept.elapsed();
    println!(
        "{clients} new clients: {:.0} ns each, {tracked} tracked, {:.0} bytes per client \
         (RSS +{} MiB); a returning client: {} ns per check; sweep of all: {:.1} ms, {} left",
        insert.as_nanos() as f64 / clients as f64,
        (after.saturating_sub(before) * 1024) as f64 / tracked.max(1) as f64,
        after.saturating_sub(before) / 1024,
        check.as_nanos(),
        sweep.as_secs_f64() * 1000.0,
        limiter.len()
    );
}
