//! How fast a fleet purge reaches every node, and what the bus costs a node, with real
//! nats-server and onair processes on 127.0.0.x.
//!
//! `cargo bench --bench fleet` measures, and prints as markdown:
//! 1. purge propagation: from the publish call returning (the stream has stored the purge) to
//!    the last of 6 nodes (3 per region, each on its region's NATS server, the two servers
//!    routed into one cluster) applying it, p50 / p99 over 1,000 purges published at 50 per
//!    second; once on bare loopback, once with simulated regions: a delaying TCP relay
//!    (`tests/common/relay.rs`) on every link, 20 ms one-way between a node (or the operator)
//!    and its region's server, 80 ms between the two servers. A node's time of applying is the
//!    timestamp of its `fleet: applied purge` log line; every process shares one clock.
//! 2. the CPU time and memory a node spends on the bus: idle (heartbeats only) and at 100
//!    purges per second, from `/proc`.
//!
//! `cargo bench --bench fleet -- cost` (or `-- propagation`) runs one part only.
//! docs/benchmarks.md records the results. Under `cargo test` (no `--bench` argument) it runs a
//! small smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::nats::{fleet_node, operator_keys, Nats, Operator};
use common::relay::Relay;
use common::{Onair, Origin};

const REGIONS: [&str; 2] = ["hn", "hcm"];

/// The simulated network: one-way delays inside a region and between regions.
#[derive(Clone, Copy)]
struct Links {
    inside: Duration,
    between: Duration,
}

/// Two NATS servers, one per region, routed into one JetStream cluster; with `links`, every
/// route and client connection goes through a delaying relay.
struct Bus {
    _servers: Vec<Nats>,
    /// The URL a client of each region connects to.
    entry: Vec<String>,
    _relays: Vec<Relay>,
}

impl Bus {
    async fn start(links: Option<Links>) -> Bus {
        // Each server's cluster address, as the other one reaches it: through a relay that
        // plays the link between the regions, or directly.
        let cluster_ports = common::free_ports::<2>();
        let mut relays = Vec::new();
        let mut reach = Vec::new();
        for port in cluster_ports {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            match links {
                Some(links) => {
                    let relay = Relay::start([127, 0, 0, 1], to, links.between).await;
                    reach.push(relay.addr);
                    relays.push(relay);
                }
                None => reach.push(to),
            }
        }
        let mut servers = Vec::new();
        for (i, port) in cluster_ports.iter().enumerate() {
            let args = vec![
                "--server_name".to_owned(),
                format!("nats-{}", REGIONS[i]),
                "--cluster_name".to_owned(),
                "onair-bench".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{port}"),
                // Advertised to the other server, so it comes back across the same link.
                "--cluster_advertise".to_owned(),
                reach[i].to_string(),
                "--routes".to_owned(),
                format!("nats://{}", reach[1 - i]),
                // Clients stay on their region's link: no other server's address is offered.
                "--no_advertise".to_owned(),
            ];
            servers.push(Nats::start_with(args).await);
        }
        let mut entry = Vec::new();
        for server in &servers {
            let to = SocketAddr::from(([127, 0, 0, 1], server.port()));
            match links {
                Some(links) => {
                    let relay = Relay::start([127, 0, 0, 1], to, links.inside).await;
                    entry.push(format!("nats://{}", relay.addr));
                    relays.push(relay);
                }
                None => entry.push(server.url.clone()),
            }
        }
        Bus {
            _servers: servers,
            entry,
            _relays: relays,
        }
    }
}

/// Six nodes, three per region, each on its region's entry; all connected and reading.
async fn fleet(bus: &Bus, public: &Path, origin: &Origin) -> Vec<Onair> {
    let mut nodes = Vec::new();
    for (r, region) in REGIONS.iter().enumerate() {
        for i in 0..3u8 {
            let ip = [127, 0, 0, 31 + 10 * r as u8 + i];
            let id = format!("edge-{region}-{}", i + 1);
            let entry = bus.entry[r].as_str();
            nodes.push(
                fleet_node(&id, region, &[entry], public, origin.addr, "", |s| s.on(ip)).await,
            );
        }
    }
    for node in &nodes {
        assert!(
            common::eventually(Duration::from_secs(60), || async {
                node.metric("onair_fleet_connected").await == Some(1.0)
            })
            .await,
            "a node did not connect to the bus:\n{}",
            node.stderr()
        );
    }
    nodes
}

/// When each node applied each operation, by id: from the nodes' `fleet: applied` log lines.
fn applied_times(nodes: &[Onair]) -> Vec<HashMap<String, SystemTime>> {
    nodes
        .iter()
        .map(|node| {
            node.stderr()
                .lines()
                .filter(|line| line.contains("fleet: applied purge"))
                .filter_map(|line| {
                    let at = rfc3339(line.split_whitespace().next()?)?;
                    let id = line.split("id=").nth(1)?.split_whitespace().next()?;
                    Some((id.to_owned(), at))
                })
                .collect()
        })
        .collect()
}

/// `2026-12-03T10:52:01.123456Z` (tracing's timestamps) as a time.
fn rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Publishes `count` purges at `rate` per second, each on a task of its own so a slow
/// acknowledgement never holds the next one back; (id, returned) in publish order.
async fn publish_at(
    operator: &std::sync::Arc<Operator>,
    count: usize,
    rate: u32,
) -> Vec<(String, SystemTime)> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    for n in 0..count {
        tick.tick().await;
        let operator = operator.clone();
        tasks.push(tokio::spawn(async move {
            operator.purge(&format!("http://a/bench/{n}")).await
        }));
    }
    let mut published = Vec::new();
    for task in tasks {
        published.push(task.await.unwrap().unwrap());
    }
    published
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Propagation {
    /// Publish returned → last node applied, per purge, ms.
    last: Vec<f64>,
    /// Publish returned → a node of each region applied (its region's last), ms.
    by_region: Vec<Vec<f64>>,
    /// Purges some node never applied within the wait.
    missing: usize,
    leader: String,
}

async fn propagation(links: Option<Links>, count: usize) -> Propagation {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let bus = Bus::start(links).await;
    let nodes = fleet(&bus, &public, &origin).await;
    // The operator sits in the region whose server stores the operations, as a publish that
    // must first cross to the other region would return only after crossing twice.
    let probe = Operator::connect(&bus.entry[0], &private).await;
    let leader = probe.stream_leader().await;
    let at = REGIONS.iter().position(|r| *r == leader).unwrap_or(0);
    let operator = std::sync::Arc::new(Operator::connect(&bus.entry[at], &private).await);
    // One purge first, until every node has applied it: every consumer is in place.
    let (warm, _) = operator.purge("http://a/bench/warm").await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(60), || async {
            applied_times(&nodes).iter().all(|m| m.contains_key(&warm))
        })
        .await
    );
    let published = publish_at(&operator, count, 50).await;
    let ids: Vec<&String> = published.iter().map(|(id, _)| id).collect();
    common::eventually(Duration::from_secs(30), || async {
        let seen = applied_times(&nodes);
        ids.iter()
            .all(|id| seen.iter().all(|m| m.contains_key(*id)))
    })
    .await;
    let seen = applied_times(&nodes);
    let ms = |from: SystemTime, to: SystemTime| match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    };
    let mut result = Propagation {
        last: Vec::new(),
        by_region: vec![Vec::new(); REGIONS.len()],
        missing: 0,
        leader,
    };
    for (id, returned) in &published {
        let times: Option<Vec<SystemTime>> = seen.iter().map(|m| m.get(id).copied()).collect();
        let Some(times) = times else {
            result.missing += 1;
            continue;
        };
        result
            .last
            .push(ms(*returned, *times.iter().max().unwrap()));
        for (r, region) in result.by_region.iter_mut().enumerate() {
            let last = times[3 * r..3 * r + 3].iter().max().unwrap();
            region.push(ms(*returned, *last));
        }
    }
    result.last.sort_by(f64::total_cmp);
    for region in &mut result.by_region {
        region.sort_by(f64::total_cmp);
    }
    drop(bus);
    result
}

/// CPU seconds a process has used (user + system), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // /proc counts in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ.
    ticks / 100.0
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Cost {
    idle_cpu_pct: f64,
    busy_cpu_pct: f64,
    us_per_purge: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    nats_cpu_pct: f64,
}

/// One node (and one NATS server) idle for `window`, then at 100 purges/s for `window`.
async fn cost(window: Duration) -> Cost {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let nats = Nats::start().await;
    let node = fleet_node(
        "edge-hn-1",
        "hn",
        &[nats.url.as_str()],
        &public,
        origin.addr,
        "",
        |s| s,
    )
    .await;
    assert!(
        node.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    let operator = std::sync::Arc::new(Operator::connect(&nats.url, &private).await);
    let (warm, _) = operator.purge("http://a/bench/warm").await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            applied_times(std::slice::from_ref(&node))[0].contains_key(&warm)
        })
        .await
    );
    let pid = u32::try_from(node.pid()).unwrap();
    let nats_pid = nats.pid().unwrap();
    let rss_before_kib = rss_kib(pid);
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    let cpu1 = cpu_seconds(pid);
    let nats1 = cpu_seconds(nats_pid);
    let count = (window.as_secs_f64() * 100.0) as usize;
    let started = std::time::Instant::now();
    let published = publish_at(&operator, count, 100).await;
    let last = &published.last().unwrap().0;
    common::eventually(Duration::from_secs(30), || async {
        applied_times(std::slice::from_ref(&node))[0].contains_key(last)
    })
    .await;
    let busy = started.elapsed().as_secs_f64();
    let cpu2 = cpu_seconds(pid);
    let nats2 = cpu_seconds(nats_pid);
    let idle_rate = (cpu1 - cpu0) / window.as_secs_f64();
    let busy_rate = (cpu2 - cpu1) / busy;
    Cost {
        idle_cpu_pct: idle_rate * 100.0,
        busy_cpu_pct: busy_rate * 100.0,
        us_per_purge: ((cpu2 - cpu1) - idle_rate * busy) / count as f64 * 1e6,
        rss_before_kib,
        rss_after_kib: rss_kib(pid),
        nats_cpu_pct: (nats2 - nats1) / busy * 100.0,
    }
}

fn print_propagation(name: &str, floor: &str, p: &Propagation) {
    let row = |v: &[f64]| {
        if v.is_empty() {
            return "- | - | - | - | -".to_owned();
        }
        let over = v.iter().filter(|ms| **ms > 150.0).count();
        format!(
            "{:.1} | {:.1} | {:.1} | {:.1} | {over}",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1],
        )
    };
    println!(
        "| {name} | last of all 6 | {} | {} | {floor} | {} |",
        p.last.len(),
        row(&p.last),
        p.leader
    );
    for (r, region) in REGIONS.iter().enumerate() {
        println!(
            "| {name} | last of {region} | {} | {} | | |",
            p.by_region[r].len(),
            row(&p.by_region[r])
        );
    }
    if p.missing > 0 {
        println!(
            "| ({} purges not applied by every node within 30 s) |",
            p.missing
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `-- cost` or `-- propagation`: one part only (to profile a node under load, say).
    let only_cost = std::env::args().any(|a| a == "cost");
    let only_propagation = std::env::args().any(|a| a == "propagation");
    let (count, window) = if full {
        (1000, Duration::from_secs(30))
    } else {
        (20, Duration::from_secs(2))
    };
    println!("\n### Purge propagation, publish returned → applied (ms), {count} purges at 50/s\n");
    println!(
        "| network | nodes | purges | p50 | p90 | p99 | max | over 150 ms | floor | stream in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    if !only_cost {
        let loopback = propagation(None, count).await;
        print_propagation("loopback", "0", &loopback);
        let links = Links {
            inside: Duration::from_millis(20),
            between: Duration::from_millis(80),
        };
        let regions = propagation(Some(links), count).await;
        print_propagation(
            "20 ms in a region, 80 ms between",
            "80 (100 to the far region's nodes less the 20 of the acknowledgement)",
            &regions,
        );
        assert_eq!(loopback.missing + regions.missing, 0, "purges were lost");
    }

    if only_propagation {
        return;
    }
    let c = cost(window).await;
    println!(
        "\n### A node's cost of the bus ({}s idle, then 100 purges/s)\n",
        window.as_secs()
    );
    println!("| | idle (heartbeats) | 100 purges/s |");
    println!("|---|---|---|");
    println!(
        "| node CPU (% of one core) | {:.2} | {:.2} |",
        c.idle_cpu_pct, c.busy_cpu_pct
    );
    println!("| node CPU per purge (µs) | | {:.0} |", c.us_per_purge);
    println!(
        "| node resident memory (MiB) | {:.1} | {:.1} |",
        c.rss_before_kib as f64 / 1024.0,
        c.rss_after_kib as f64 / 1024.0
    );
    println!(
        "| nats-server CPU (% of one core) | | {:.2} |",
        c.nats_cpu_pct
    );
}
