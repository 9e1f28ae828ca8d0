//! A scheduled release on a two-region fleet, measured: real nats-server and onair processes
//! (a shield and two edges per region, each edge behind its region's shield) in front of one
//! origin that answers after a simulated 20 ms.
//!
//! `cargo bench --bench release` publishes one release of 200 objects of 200 KiB each (an
//! article, its cover, 47 photos, a video manifest and 150 video segments: the video is 30 MiB)
//! under an embargoed prefix, to come out 30 s later, and prints as markdown:
//! 1. time to warm: from the publish call returning to every shield, then every node, holding
//!    the whole warm list (their `onair_release_warm_objects{state="warmed"}`);
//! 2. origin requests for the release's objects during the warm and after the time;
//! 3. the skew between the first and the last node to serve the article: each node is asked
//!    every millisecond from just before the time; each node's first 200 is timed by the
//!    client, and by the node's own access log (its time of answering, to the millisecond);
//! 4. reader latency: 32 keep-alive readers on the four edges all along (50 public objects of
//!    the same size, cached, before the time; the released objects after it), p50 / p99 / max
//!    in a normal second (two seconds before the time), in the second after the time, and five
//!    seconds after it; and 500 new readers (a connection each) arriving at the time for the
//!    article. The control: the same 500 new readers for a public page of the same size, five
//!    seconds before the time, and the kept-alive readers' second after them: what such a
//!    burst costs on this machine without a release.
//!
//! docs/benchmarks.md records the results. Under `cargo test` (no `--bench` argument) it runs a
//! small smoke version (20 objects of 20 KiB, 6 s ahead, 50 readers at the time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;

use common::nats::{fleet_cli, fleet_node, operator_keys, Nats};
use common::{Behaviour, Onair, Origin};

const SECRET: &str = "bench-warm-secret-0123456789";

struct Sizes {
    objects: usize,
    bytes: usize,
    lead: Duration,
    arrivals: usize,
}

/// The release's objects: article, cover, photos, manifest, then the video's segments.
fn objects(n: usize) -> Vec<String> {
    let segments = n * 3 / 4;
    let mut list = vec![
        "/vk/nghi-quyet".to_owned(),
        "/vk/cover.jpg".to_owned(),
        "/vk/video/master.m3u8".to_owned(),
    ];
    let photos = n - segments - list.len();
    list.extend((1..=photos).map(|i| format!("/vk/photos/{i}.jpg")));
    list.extend((1..=segments).map(|i| format!("/vk/video/seg-{i:03}.ts")));
    list
}

/// A shield or an edge of `region`; an edge goes through `upstream` (its shield).
async fn node(
    id: &str,
    region: &str,
    nats: &str,
    public: &std::path::Path,
    upstream: SocketAddr,
    shield: bool,
    ip: [u8; 4],
) -> Onair {
    let release = "[release]\nwarm_secret_file = \"warm.secret\"\n";
    let n = fleet_node(id, region, &[nats], public, upstream, "", |mut s| {
        s.body = if shield {
            format!("{release}[protect]\ntiers = [\"127.0.0.0/8\"]\n{}", s.body)
        } else {
            let pool = "[[pool]]\nname = \"p\"\n";
            format!(
                "{release}{}",
                s.body.replacen(pool, &format!("{pool}shields = true\n"), 1)
            )
        };
        s.with_file("warm.secret", SECRET).on(ip)
    })
    .await;
    assert!(
        common::eventually(Duration::from_secs(60), || async {
            n.metric("onair_fleet_connected").await == Some(1.0)
        })
        .await,
        "{}",
        n.stderr()
    );
    n
}

/// One reader's request: when it was sent, how long it took, its status.
type Sample = (SystemTime, Duration, u16);

/// Asks `path` over a kept-alive connection (made again when it fails).
async fn ask(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<common::BoxBody>>,
    addr: SocketAddr,
    path: &str,
) -> Option<u16> {
    if sender.is_none() {
        *sender = common::connect(addr).await.ok();
    }
    let s = sender.as_mut()?;
    let req = hyper::Request::get(path)
        .header("Host", "a")
        .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        .unwrap();
    match s.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let whole = resp.into_body().collect().await.is_ok();
            if !whole {
                *sender = None;
            }
            Some(status)
        }
        Err(_) => {
            *sender = None;
            None
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50, p99 and max of the samples sent within `[from, from + 1 s)`, and their count.
fn second(samples: &[Sample], from: SystemTime) -> (usize, Duration, Duration, Duration) {
    let mut took: Vec<Duration> = samples
        .iter()
        .filter(|(sent, _, _)| *sent >= from && *sent < from + Duration::from_secs(1))
        .map(|(_, took, _)| *took)
        .collect();
    took.sort();
    (
        took.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or_default(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            objects: 200,
            bytes: 200 * 1024,
            lead: Duration::from_secs(30),
            arrivals: 500,
        }
    } else {
        Sizes {
            objects: 20,
            bytes: 20 * 1024,
            lead: Duration::from_secs(6),
            arrivals: 50,
        }
    };
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=3600".into())],
        body: Bytes::from(vec![b'x'; sizes.bytes]),
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let mut shields = Vec::new();
    let mut edges = Vec::new();
    for (r, region) in ["hn", "hcm"].iter().enumerate() {
        let base = 41 + 10 * r as u8;
        let shield = node(
            &format!("shield-{region}"),
            region,
            &nats.url,
            &public,
            origin.addr,
            true,
            [127, 0, 0, base],
        )
        .await;
        for i in 1..=2u8 {
            let edge = node(
                &format!("edge-{region}-{i}"),
                region,
                &nats.url,
                &public,
                shield.http,
                false,
                [127, 0, 0, base + i],
            )
            .await;
            edges.push(edge);
        }
        shields.push(shield);
    }
    let all: Vec<&Onair> = shields.iter().chain(edges.iter()).collect();
    // Public pages of the same size, hot on every edge: what readers ask before the time.
    let public_pages: Vec<String> = (0..50).map(|i| format!("/pub/{i}")).collect();
    for e in &edges {
        for page in &public_pages {
            assert_eq!(common::get(e.http, "a", page).await.unwrap().status, 200);
        }
    }
    let list = objects(sizes.objects);
    let warm_file = keys.path().join("warm.txt");
    let urls: Vec<String> = list.iter().map(|p| format!("http://a{p}")).collect();
    std::fs::write(&warm_file, urls.join("\n")).unwrap();
    let before_publish = origin.requests().len();

    // Publish; time the warm.
    // To the millisecond, as nodes read a release's time: "not before" judged alike.
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let at =
        SystemTime::UNIX_EPOCH + Duration::from_millis(since_epoch.as_millis() as u64) + sizes.lead;
    let at_text = time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    fleet_cli(
        &nats.url,
        &operator,
        &[
            "release",
            "--id",
            "vk",
            "--at",
            &at_text,
            "--embargo-prefix",
            "http://a/vk/",
            "--warm",
            warm_file.to_str().unwrap(),
        ],
    );
    let published = Instant::now();
    let warmed = "onair_release_warm_objects{state=\"warmed\"}";
    let mut shields_done = None;
    let mut all_done = None;
    while all_done.is_none() && SystemTime::now() < at {
        let mut done = Vec::new();
        for n in &all {
            done.push(n.metric(warmed).await == Some(list.len() as f64));
        }
        if shields_done.is_none() && done[..shields.len()].iter().all(|d| *d) {
            shields_done = Some(published.elapsed());
        }
        if done.iter().all(|d| *d) {
            all_done = Some(published.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let released_objects = |from: usize| {
        origin.requests()[from..]
            .iter()
            .filter(|r| r[":path"].starts_with("/vk/"))
            .count()
    };
    let during_warm = released_objects(before_publish);
    let before_time = origin.requests().len();

    // Readers all along, and the pollers from just before the time.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = at + Duration::from_secs(7);
    let mut readers = Vec::new();
    for i in 0..32usize {
        let (addr, samples) = (edges[i % edges.len()].http, samples.clone());
        let (list, public_pages) = (list.clone(), public_pages.clone());
        readers.push(tokio::spawn(async move {
            let mut sender = None;
            let mut k = i;
            while SystemTime::now() < stop {
                k += 1;
                let path = if SystemTime::now() < at {
                    public_pages[k % public_pages.len()].as_str()
                } else {
                    list[k % list.len()].as_str()
                };
                let sent = SystemTime::now();
                let started = Instant::now();
                if let Some(status) = ask(&mut sender, addr, path).await {
                    samples
                        .lock()
                        .unwrap()
                        .push((sent, started.elapsed(), status));
                }
            }
        }));
    }
    let pollers: Vec<_> = all
        .iter()
        .map(|n| {
            let addr = n.http;
            tokio::spawn(async move {
                let from = at - Duration::from_millis(200);
                tokio::time::sleep(from.duration_since(SystemTime::now()).unwrap_or_default())
                    .await;
                let mut sender = None;
                loop {
                    let status = ask(&mut sender, addr, "/vk/nghi-quyet").await;
                    let now = SystemTime::now();
                    if status == Some(200) {
                        assert!(now >= at, "served before its time");
                        return now.duration_since(at).unwrap_or_default();
                    }
                    assert!(now < at + Duration::from_secs(10), "never released");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let burst = |path: &'static str, into: &Arc<Mutex<Vec<Sample>>>| -> Vec<_> {
        (0..sizes.arrivals)
            .map(|i| {
                let (addr, samples) = (edges[i % edges.len()].http, into.clone());
                tokio::spawn(async move {
                    let sent = SystemTime::now();
                    let started = Instant::now();
                    let status = common::get(addr, "a", path).await.map_or(0, |r| r.status);
                    samples
                        .lock()
                        .unwrap()
                        .push((sent, started.elapsed(), status));
                })
            })
            .collect()
    };
    let control_at = at - Duration::from_secs(5);
    tokio::time::sleep(
        control_at
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let control: Arc<Mutex<Vec<Sample>>> = Arc::default();
    for a in burst("/pub/1", &control) {
        a.await.unwrap();
    }
    tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let arrived: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let arrivals = burst("/vk/nghi-quyet", &arrived);
    let mut first = Vec::new();
    for p in pollers {
        first.push(p.await.unwrap());
    }
    for a in arrivals {
        a.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    let at_time = released_objects(before_time);
    let samples = samples.lock().unwrap().clone();
    let arrived = arrived.lock().unwrap().clone();
    let control = control.lock().unwrap().clone();
    let failed = samples
        .iter()
        .chain(arrived.iter())
        .filter(|(sent, _, status)| *sent >= at && *status != 200)
        .count();
    // Each node's first 200 for the article, by its own access log.
    let logged: Vec<Duration> = all
        .iter()
        .map(|n| {
            let first = n
                .access_log()
                .iter()
                .filter(|l| l["path"] == "/vk/nghi-quyet" && l["status"] == 200)
                .filter(|l| l["warm"] != true)
                .filter_map(|l| {
                    time::OffsetDateTime::parse(
                        l["time"].as_str()?,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()
                })
                .map(SystemTime::from)
                .min()
                .expect("a node never served the article");
            // Logged to the millisecond, when the answer was done.
            assert!(
                first + Duration::from_millis(1) >= at,
                "a node served before its time"
            );
            first.duration_since(at).unwrap_or_default()
        })
        .collect();

    println!(
        "\n### A release of {} objects of {} KiB on six nodes in two regions\n",
        list.len(),
        sizes.bytes / 1024
    );
    let secs = |d: Option<Duration>| {
        d.map_or("not within the lead".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    println!("| | |");
    println!("|---|---|");
    println!("| time to warm, both shields | {} |", secs(shields_done));
    println!("| time to warm, all six nodes | {} |", secs(all_done));
    println!(
        "| origin requests for the release during the warm | {during_warm} ({} objects × 2 shields = {}) |",
        list.len(),
        list.len() * 2
    );
    println!("| origin requests for the release from the time on | {at_time} |");
    for (how, times) in [
        ("as the pollers saw it", &first),
        ("by the nodes' access logs", &logged),
    ] {
        let (min, max) = (
            times.iter().min().copied().unwrap_or_default(),
            times.iter().max().copied().unwrap_or_default(),
        );
        println!(
            "| first 200 after the time, first / last node, {how} | {:.1} ms / {:.1} ms (skew {:.1} ms) |",
            ms(min),
            ms(max),
            ms(max - min)
        );
    }
    println!("| readers' answers after the time that were not 200 | {failed} |");
    println!("\n| reader latency (ms), 32 kept-alive readers | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, from) in [
        (
            "the second after the control burst (5 s before the time)",
            control_at,
        ),
        (
            "a normal second (2 s before the time)",
            at - Duration::from_secs(2),
        ),
        ("the second after the time", at),
        ("5 s after the time", at + Duration::from_secs(5)),
    ] {
        let (count, p50, p99, max) = second(&samples, from);
        println!(
            "| {name} | {count} | {:.2} | {:.2} | {:.2} |",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    for (name, samples, from) in [
        ("for a public page (control)", &control, control_at),
        ("at the time, for the article", &arrived, at),
    ] {
        let (count, p50, p99, max) = second(samples, from);
        println!(
            "| {} new readers {name} (connect + answer) | {count} | {:.2} | {:.2} | {:.2} |",
            sizes.arrivals,
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    assert_eq!(
        at_time, 0,
        "the origin was asked for warmed objects at the time"
    );
    assert_eq!(failed, 0, "readers failed after the time");
}
