//! Failover latency: what readers feel when one of two origins dies (connections refused) or
//! hangs (accepts, never answers) under steady load.
//!
//! `cargo bench --bench failover` starts two origins and the release `onair` on 127.0.0.1,
//! runs 32 keep-alive clients for 8 s, injects the fault at 3 s, and prints a table for the
//! requests started in the 3 s after the fault: p50, p99, max, how many waited for a timeout
//! (over 500 ms) and how many failed. docs/benchmarks.md records the results.
//! Under `cargo test` (no `--bench` argument) it runs a one-second smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect, read_whole, site_pool, Behaviour, Onair, Origin, Setup};

/// One request as the client saw it.
struct Sample {
    started: Duration,
    took: Duration,
    ok: bool,
}

#[derive(Clone, Copy)]
enum Fault {
    Refused,
    Hang,
}

fn setup(a: &Origin, b: &Origin) -> Setup {
    Setup::new(site_pool(
        "connect_timeout = \"1s\"\nread_timeout = \"2s\"\n\
         health = { path = \"/\", interval = \"1s\", timeout = \"500ms\", fall = 2, rise = 2 }",
        &[(a.addr, ""), (b.addr, "")],
    ))
}

async fn run(fault: Fault, total: Duration, at: Duration) -> Vec<Sample> {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let page = Behaviour {
        headers: vec![("Cache-Control".into(), "no-store".into())],
        body: Bytes::from_static(b"the page"),
        ..Behaviour::default()
    };
    a.set(page.clone());
    b.set(page.clone());
    let onair = Onair::start(setup(&a, &b)).await;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..32 {
        let (samples, http) = (samples.clone(), onair.http);
        clients.spawn(async move {
            let mut n = 0u64;
            // One keep-alive connection per client, opened again only after an error (a new
            // connection per request would run the machine out of ephemeral ports).
            let mut conn = None;
            while t0.elapsed() < total {
                let started = t0.elapsed();
                let ok = send(&mut conn, http, &format!("/p/{c}/{n}")).await;
                n += 1;
                samples.lock().unwrap().push(Sample {
                    started,
                    took: t0.elapsed() - started,
                    ok,
                });
            }
        });
    }
    tokio::time::sleep(at).await;
    match fault {
        Fault::Refused => a.kill(),
        Fault::Hang => a.set(Behaviour {
            delay: Duration::from_secs(3600),
            ..page
        }),
    }
    while clients.join_next().await.is_some() {}
    drop(onair);
    Arc::try_unwrap(samples)
        .ok()
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

/// One GET on the client's connection (opened if needed); true for a whole 200.
async fn send(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<common::BoxBody>>,
    http: std::net::SocketAddr,
    path: &str,
) -> bool {
    use http_body_util::BodyExt;
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = connect(http).await.ok();
    }
    let Some(sender) = conn.as_mut() else {
        return false;
    };
    if sender.ready().await.is_err() {
        *conn = None;
        return false;
    }
    let req = hyper::Request::get(path)
        .header("Host", "a")
        .body(
            http_body_util::Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    match sender.send_request(req).await {
        Ok(resp) => read_whole(resp).await.is_ok_and(|r| r.status == 200),
        Err(_) => {
            *conn = None;
            false
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, samples: &[Sample], from: Duration, to: Duration) {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .collect();
    let before: Vec<Duration> = {
        let mut v: Vec<Duration> = samples
            .iter()
            .filter(|s| s.started < from)
            .map(|s| s.took)
            .collect();
        v.sort();
        v
    };
    let mut took: Vec<Duration> = window.iter().map(|s| s.took).collect();
    took.sort();
    let waited = took
        .iter()
        .filter(|t| **t > Duration::from_millis(500))
        .count();
    let failed = window.iter().filter(|s| !s.ok).count();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!(
        "| {name} | {} | {} / {} | {} | {} | {} | {waited} | {failed} |",
        window.len(),
        ms(percentile(&before, 0.5)),
        ms(percentile(&before, 0.99)),
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.99)),
        ms(took.last().copied().unwrap_or_default()),
    );
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (total, at) = if smoke {
        (Duration::from_secs(1), Duration::from_millis(300))
    } else {
        (Duration::from_secs(8), Duration::from_secs(3))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| fault | requests in the {:.1} s after it | before: p50 / p99 ms | after: p50 ms | p99 ms | max ms | waited > 500 ms | failed |",
        (total - at).as_secs_f64()
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for (name, fault) in [
        ("origin killed (refused)", Fault::Refused),
        ("origin hangs", Fault::Hang),
    ] {
        let samples = rt.block_on(run(fault, total, at));
        report(name, &samples, at, total);
    }
}
