//! What the shield tier buys and costs, with real onair processes on 127.0.0.x.
//!
//! `cargo bench --bench shield` measures, and prints as markdown tables:
//! 1. origin requests per object for a miss storm over four edges (every object asked for by
//!    40 readers at once, ten per edge), with the edges going straight to the origin, and with
//!    the edges filling from two consistent-hashed shields;
//! 2. reader latency (p50 / p99 over keep-alive connections, one request at a time) for an
//!    edge miss straight to the origin, an edge miss through a shield that misses too, an edge
//!    miss that the shield answers from its cache, and an edge hit;
//! 3. the share of keys that move when one of four shields leaves a `select = "hash"` pool
//!    (ideal: 25 %), from the pool's own choice code.
//!
//! docs/benchmarks.md records the results. Under `cargo test` (no `--bench` argument) it runs a
//! small smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect, get, read_whole, Behaviour, Onair, Origin, Setup};

/// A shield in front of `origin`, whose tiers are the edges (all of 127.0.0.0/24).
async fn shield(id: &str, ip: [u8; 4], origin: &Origin) -> Onair {
    let mut setup = Setup::new(format!(
        "[protect]\ntiers = [\"127.0.0.0/24\"]\n{}",
        common::one_site(origin.addr, "", "")
    ))
    .on(ip);
    setup.node_extra = format!("id = \"{id}\"\n");
    Onair::start(setup).await
}

/// An edge whose site goes to `upstreams` (hashed) and falls back to the origin.
async fn edge(id: &str, ip: [u8; 4], upstreams: &[std::net::SocketAddr], origin: &Origin) -> Onair {
    let mut text = "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"first\"\n\
                    [[pool]]\nname = \"first\"\nselect = \"hash\"\nfallback = \"origin\"\n"
        .to_owned();
    for addr in upstreams {
        text.push_str(&format!("  [[pool.origin]]\n  addr = \"{addr}\"\n"));
    }
    text.push_str(&format!(
        "[[pool]]\nname = \"origin\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ));
    let mut setup = Setup::new(text).on(ip);
    setup.node_extra = format!("id = \"{id}\"\n");
    Onair::start(setup).await
}

fn cached(delay: Duration) -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: Bytes::from_static(&[b'x'; 2048]),
        delay,
        ..Behaviour::default()
    }
}

/// Origin requests per object when `objects` objects are each asked for by 40 readers at once,
/// spread over four edges (five objects at a time).
async fn miss_storm(with_shields: bool, objects: usize) -> f64 {
    let origin = Origin::start_on("origin", [127, 0, 0, 10]).await;
    origin.set(cached(Duration::from_millis(100)));
    let mut shields = Vec::new();
    if with_shields {
        shields.push(shield("shield-1", [127, 0, 0, 21], &origin).await);
        shields.push(shield("shield-2", [127, 0, 0, 22], &origin).await);
    }
    let upstreams: Vec<_> = if with_shields {
        shields.iter().map(|s| s.http).collect()
    } else {
        vec![origin.addr]
    };
    let mut edges = Vec::new();
    for i in 0..4u8 {
        edges.push(
            edge(
                &format!("edge-{i}"),
                [127, 0, 0, 31 + i],
                &upstreams,
                &origin,
            )
            .await,
        );
    }
    // Five objects at a time: 200 readers, 50 on each edge, all from one address, under the
    // edges' per-address connection cap (256).
    let objects_list: Vec<usize> = (0..objects).collect();
    for batch in objects_list.chunks(5) {
        let mut asks = tokio::task::JoinSet::new();
        for &object in batch {
            for n in 0..40 {
                let addr = edges[n % 4].http;
                asks.spawn(async move {
                    get(addr, "a", &format!("/o/{object}"))
                        .await
                        .map(|r| r.status)
                });
            }
        }
        while let Some(done) = asks.join_next().await {
            assert_eq!(done.unwrap().unwrap(), 200);
        }
    }
    origin.proxied_hits() as f64 / objects as f64
}

/// Latencies of `n` sequential GETs on keep-alive connections (500 requests each, under the
/// nodes' keepalive_requests); `path(i)` names each.
async fn timed(
    addr: std::net::SocketAddr,
    n: usize,
    path: impl Fn(usize) -> String,
) -> Vec<Duration> {
    use http_body_util::BodyExt;
    let mut sender = connect(addr).await.unwrap();
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        // A connection carries at most protect.keepalive_requests (1000) requests.
        if i > 0 && i % 500 == 0 {
            sender = connect(addr).await.unwrap();
        }
        let req = hyper::Request::get(path(i))
            .header("Host", "a")
            .body(
                http_body_util::Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap();
        sender.ready().await.unwrap();
        let started = Instant::now();
        let resp = read_whole(sender.send_request(req).await.unwrap())
            .await
            .unwrap();
        took.push(started.elapsed());
        assert_eq!(resp.status, 200);
    }
    took.sort();
    took
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

async fn latencies(n: usize) {
    let origin = Origin::start_on("origin", [127, 0, 0, 10]).await;
    origin.set(cached(Duration::ZERO));
    let s = shield("shield-1", [127, 0, 0, 21], &origin).await;
    let direct = edge("edge-direct", [127, 0, 0, 31], &[origin.addr], &origin).await;
    let tiered = edge("edge-tiered", [127, 0, 0, 32], &[s.http], &origin).await;
    // Warm the shield with what the third case reads, through another edge.
    let warmer = edge("edge-warmer", [127, 0, 0, 33], &[s.http], &origin).await;
    timed(warmer.http, n, |i| format!("/warm/{i}")).await;
    let cases = [
        (
            "edge miss -> origin",
            timed(direct.http, n, |i| format!("/d/{i}")).await,
        ),
        (
            "edge miss -> shield miss -> origin",
            timed(tiered.http, n, |i| format!("/t/{i}")).await,
        ),
        (
            "edge miss -> shield hit",
            timed(tiered.http, n, |i| format!("/warm/{i}")).await,
        ),
        (
            "edge hit",
            timed(tiered.http, n, |i| format!("/warm/{i}")).await,
        ),
    ];
    println!("| path | requests | p50 ms | p99 ms |");
    println!("|---|--:|--:|--:|");
    for (name, took) in cases {
        println!(
            "| {name} | {} | {:.3} | {:.3} |",
            took.len(),
            pct(&took, 0.5),
            pct(&took, 0.99)
        );
    }
}

/// The share of `keys` keys whose shield changes when the last of four leaves.
fn keys_moved(keys: u64) -> f64 {
    use onair::config::{self, OriginAddr};
    use onair::origin::{dns::Addresses, health::HealthRegistry, request_hash, Pool};
    let text = "[listen]\nhttp = [\"127.0.0.1:1\"]\n[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
                [[pool]]\nname = \"p\"\nselect = \"hash\"\n\
                  [[pool.origin]]\n  addr = \"10.0.0.1:80\"\n  [[pool.origin]]\n  addr = \"10.0.0.2:80\"\n\
                  [[pool.origin]]\n  addr = \"10.0.0.3:80\"\n  [[pool.origin]]\n  addr = \"10.0.0.4:80\"\n";
    let cfg = config::Config::parse(
        text,
        std::path::Path::new("."),
        &config::Overrides::default(),
    )
    .unwrap();
    let pool_cfg = &cfg.pools[0];
    let registry = HealthRegistry::default();
    let pool = Pool::new(pool_cfg, &registry, true, &Addresses::default());
    let gone = pool
        .origins
        .iter()
        .position(|o| matches!(&pool_cfg.origins[3].addr, OriginAddr::Ip(a) if *a == o.addr))
        .unwrap();
    let mut moved = 0u64;
    for k in 0..keys {
        let key = request_hash("portal.example", &format!("/article/{k}"));
        let before = pool.choose_trial("", &[], key).unwrap().0;
        // The leaving shield counts as tried: the request goes where it would with it gone.
        let after = pool.choose_trial("", &[gone], key).unwrap().0;
        if before != after {
            moved += 1;
        }
    }
    moved as f64 / keys as f64
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let objects = if smoke { 3 } else { 50 };
    let direct = rt.block_on(miss_storm(false, objects));
    let shielded = rt.block_on(miss_storm(true, objects));
    println!(
        "| miss storm: {objects} objects x 40 readers over 4 edges | origin requests per object |"
    );
    println!("|---|--:|");
    println!("| edges straight to the origin | {direct:.2} |");
    println!("| edges filling from 2 hashed shields | {shielded:.2} |");
    println!();
    rt.block_on(latencies(if smoke { 20 } else { 2000 }));
    println!();
    let keys = if smoke { 10_000 } else { 1_000_000 };
    println!("| one of 4 shields leaves ({keys} keys) | keys moved |");
    println!("|---|--:|");
    println!(
        "| rendezvous hashing, equal weights | {:.2} % |",
        keys_moved(keys) * 100.0
    );
}
