//! What checking a newsroom signature costs an edge, in-process: for one origin response of
//! 10 KiB and of 1 MiB, the RFC 9421 signature check on its head (signature base, Ed25519)
//! and the RFC 9530 digest over its body (SHA-256 as it streams, in 16 KiB chunks), against
//! the time to copy the same body (what any proxy does with it anyway).
//!
//! `cargo bench --bench integrity` measures and prints markdown; under `cargo test` (no
//! `--bench` argument) it runs a few iterations as a smoke test. docs/benchmarks.md records
//! the results. The end-to-end cost on a miss (p99, CPU per request through onair) is still
//! to be measured with the enforce mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use onair::integrity::digest;
use onair::integrity::signature::{self, Message, Request, REQUIRED};
use onair::integrity::tools::{sign, ToSign};
use onair::keys::VerifyKey;

/// Median of `runs` timings of `f`, each over `iterations` calls: per call.
fn median_per_call(runs: usize, iterations: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed() / iterations
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (runs, scale) = if full { (11, 1) } else { (1, 100) };
    let (private, public) = onair::keys::generate().unwrap();
    let keys = vec![(
        "newsroom-2027".to_owned(),
        VerifyKey::from_pem(public.as_bytes()).unwrap(),
    )];
    println!("\n| body | signature check (head) | digest (body) | copy of the body | check total per response |");
    println!("|---|--:|--:|--:|--:|");
    for (name, size, iterations) in [("10 KiB", 10 << 10, 2000), ("1 MiB", 1 << 20, 40)] {
        let iterations = (iterations / scale).max(1);
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let signed = sign(&ToSign {
            body: &body,
            path: "/vankien/nghi-quyet",
            content_type: "text/html",
            status: 200,
            key_pem: private.as_bytes(),
            key_id: "newsroom-2027",
            label: "newsroom",
            created: 1_800_000_000,
        })
        .unwrap();
        let mut headers = http::HeaderMap::new();
        for (k, v) in &signed {
            headers.insert(*k, v.parse().unwrap());
        }
        let none = http::HeaderMap::new();
        let msg = Message {
            status: Some(200),
            headers: &headers,
            request: Request {
                method: "GET",
                scheme: "https",
                authority: "portal.example.vn",
                path: "/vankien/nghi-quyet",
                query: None,
                headers: &none,
            },
        };
        let head = median_per_call(runs, iterations, || {
            black_box(signature::verify(&msg, &keys, &REQUIRED, 1_800_000_000)).unwrap();
        });
        let field = headers.get("content-digest").unwrap().as_bytes().to_vec();
        let hash = median_per_call(runs, iterations, || {
            let mut check = digest::Check::new(Some(&field)).unwrap();
            for chunk in body.chunks(16 << 10) {
                check.update(black_box(chunk));
            }
            check.finish().unwrap();
        });
        let copy = median_per_call(runs, iterations, || {
            let mut out = Vec::with_capacity(body.len());
            for chunk in body.chunks(16 << 10) {
                out.extend_from_slice(black_box(chunk));
            }
            black_box(out);
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            us(head),
            us(hash),
            us(copy),
            us(head + hash)
        );
    }
}
