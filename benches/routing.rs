//! Micro-benchmarks of the per-request lookups: host -> site, path -> route, and origin
//! choice. Run with `cargo bench --bench routing`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use onair::config::{Config, Overrides};
use onair::origin::health::HealthRegistry;
use onair::router::normalize_host;
use onair::snapshot::Snapshot;

/// A portal-sized config: 20 sites with exact and wildcard hosts, 8 routes each, a default
/// site, and pools of 6 origins over two tiers and three regions.
fn config() -> Config {
    let mut text = String::from(
        "[node]\nid = \"bench\"\nregion = \"hn\"\n[listen]\nhttp = [\"127.0.0.1:1\"]\n",
    );
    for s in 0..20 {
        text.push_str(&format!(
            "[[site]]\nname = \"site{s}\"\nhosts = [\"www.site{s}.example.vn\", \"*.site{s}.example.vn\"]\npool = \"pool{}\"\n",
            s % 4
        ));
        for r in 0..8 {
            text.push_str(&format!(
                "  [[site.route]]\n  path = \"/section{r}/\"\n  pool = \"pool{}\"\n",
                r % 4
            ));
        }
    }
    text.push_str("[[site]]\nname = \"default\"\nhosts = [\"*\"]\npool = \"pool0\"\n");
    for p in 0..4 {
        text.push_str(&format!("[[pool]]\nname = \"pool{p}\"\n"));
        for (o, (region, tier)) in [
            ("hn", 0),
            ("hcm", 0),
            ("sg", 0),
            ("hn", 1),
            ("hcm", 1),
            ("sg", 1),
        ]
        .iter()
        .enumerate()
        {
            text.push_str(&format!(
                "  [[pool.origin]]\n  addr = \"10.0.{p}.{o}:8080\"\n  region = \"{region}\"\n  tier = {tier}\n"
            ));
        }
    }
    Config::parse(&text, Path::new("."), &Overrides::default()).expect("bench config")
}

fn routing(c: &mut Criterion) {
    let registry = HealthRegistry::default();
    let snap = Snapshot::build(config(), 1, &registry, &Default::default());
    c.bench_function("route: host + path -> pool", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("Live.Site17.example.vn:80")).unwrap();
            let site = snap.hosts.site_for(&host).unwrap();
            snap.sites[site]
                .routes
                .pool_for(black_box("/section5/2026/ket-qua.html"))
        })
    });
    c.bench_function("route: unknown host -> default site", |b| {
        b.iter(|| snap.hosts.site_for(black_box("elsewhere.example.org")))
    });
    let pool = snap.pools[1].clone();
    c.bench_function("origin choice: healthy local tier 0", |b| {
        b.iter(|| pool.choose(black_box("hn"), black_box(&[])))
    });
    pool.origins[0].health.force(false);
    pool.origins[1].health.force(false);
    pool.origins[2].health.force(false);
    c.bench_function("origin choice: tier 0 down, fall back to tier 1", |b| {
        b.iter(|| pool.choose(black_box("hn"), black_box(&[3])))
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
