//! A randomized stress test of the tiered cache: concurrent fills, revalidations, promotions
//! (a memory tier too small for the set), purges by URL, prefix and tag, hard and soft, and
//! restarts over the same disk directory (a new memory tier, fence and start-up scan), for a
//! bounded time. One invariant is checked on every read: no reader ever receives a version a
//! completed purge covered (a soft-purged one only as stale).
//!
//! The origin is a version counter per key. The newsroom changes a page, then purges it: a
//! purge first bumps the version of every key it matches, and when it completes it raises
//! those keys' floors. A read notes the floors before it looks, so any answer older than the
//! noted floor was purged before the read began. Fills take their ticket before they read the
//! origin, as the proxy does when a request leaves for the origin.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::DiskStore;
use super::fence::{EarlyTicket, PurgeFence};
use super::key::cache_key;
use super::memory::MemoryStore;
use super::purge::Selector;
use super::tiered::TieredStore;

const KEYS: usize = 24;
const WORKERS: usize = 4;
const ROUND: Duration = Duration::from_millis(700);
const ROUNDS: usize = 4;

struct World {
    versions: Vec<AtomicU64>,
    /// Versions below these were hard-purged (never to be served) or soft-purged (never fresh).
    hard_floor: Vec<AtomicU64>,
    soft_floor: Vec<AtomicU64>,
    violations: std::sync::Mutex<Vec<String>>,
    reads: AtomicUsize,
    hits: AtomicUsize,
    fills: AtomicUsize,
    revalidations: AtomicUsize,
    purges: AtomicUsize,
}

fn key(i: usize) -> CacheKey {
    cache_key("http", "a.vn", None, &format!("/k{i}"))
}

fn target(i: usize) -> String {
    format!("a.vn/k{i}")
}

fn tags(i: usize) -> Vec<String> {
    vec![format!("t{}", i % 3), "all".to_owned()]
}

fn body(i: usize, version: u64, rng: &mut StdRng) -> Bytes {
    let head = format!("k{i} v{version} ");
    let len = rng.gen_range(1_000..6_000);
    head.bytes().cycle().take(len.max(head.len())).collect()
}

fn version_of(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body.get(..40.min(body.len()))?).ok()?;
    text.split(' ').nth(1)?.strip_prefix('v')?.parse().ok()
}

fn meta(i: usize, created: SystemTime) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).unwrap();
    header
        .insert_header("Cache-Tag", tags(i).join(" "))
        .unwrap();
    CacheMeta::new(created + Duration::from_secs(600), created, 0, 600, header)
}

/// What Pingora stores after a 304: the old header and `created`, fresh again.
fn refreshed(old: &CacheMeta) -> CacheMeta {
    let now = SystemTime::now();
    let header = old.response_header().clone();
    let mut m = CacheMeta::new(
        now + Duration::from_secs(600),
        old.created(),
        0,
        600,
        header,
    );
    m.set_epoch_override(now);
    m
}

fn open(dir: &std::path::Path) -> &'static TieredStore {
    let fence = Arc::new(PurgeFence::default());
    // Room for about a third of the set: lookups keep promoting from disk.
    let memory: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
        48 << 10,
        12 << 10,
        fence.clone(),
    )));
    let disk = DiskStore::open_with(dir, 64 << 20, fence.clone(), false).unwrap();
    Box::leak(Box::new(TieredStore::new(
        memory,
        Some(disk),
        64 << 20,
        fence,
    )))
}

async fn read(store: &'static TieredStore, world: &World, i: usize, rng: &mut StdRng) {
    let span = pingora::cache::trace::Span::inactive().handle();
    let hard = world.hard_floor[i].load(Ordering::SeqCst);
    let soft = world.soft_floor[i].load(Ordering::SeqCst);
    world.reads.fetch_add(1, Ordering::Relaxed);
    let k = key(i);
    match store.lookup(&k, &span).await {
        Ok(Some((meta, mut hit))) => {
            let mut got = Vec::new();
            while let Ok(Some(chunk)) = hit.read_body().await {
                got.extend_from_slice(&chunk);
            }
            world.hits.fetch_add(1, Ordering::Relaxed);
            let Some(v) = version_of(&got) else {
                world.fail(format!("k{i}: unreadable body"));
                return;
            };
            let fresh = meta.is_fresh(SystemTime::now());
            if v < hard {
                world.fail(format!("k{i}: v{v} served after a purge to v{hard}"));
            } else if v < soft && fresh {
                world.fail(format!(
                    "k{i}: v{v} served fresh after a soft purge to v{soft}"
                ));
            }
            // Revalidate now and then: a 304 only while the origin still has this version.
            if rng.gen_bool(0.2) {
                let ticket = EarlyTicket(Arc::new(store.fence.open()));
                if world.versions[i].load(Ordering::SeqCst) == v {
                    let mut new = refreshed(&meta);
                    new.extensions_mut().insert(ticket);
                    world.revalidations.fetch_add(1, Ordering::Relaxed);
                    let _ = store.update_meta(&k, &new, &span).await;
                }
            }
        }
        Ok(None) => {
            // A miss: the request leaves for the origin (ticket), which answers its version.
            let ticket = EarlyTicket(Arc::new(store.fence.open()));
            let v = world.versions[i].load(Ordering::SeqCst);
            // The origin's answer is on its way back (purges can land meanwhile).
            tokio::time::sleep(Duration::from_micros(rng.gen_range(0..1500))).await;
            let mut m = meta(i, SystemTime::now());
            m.extensions_mut().insert(ticket);
            let Ok(mut miss) = store.get_miss_handler(&k, &m, &span).await else {
                return;
            };
            let b = body(i, v, rng);
            let half = b.len() / 2;
            if miss.write_body(b.slice(..half), false).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
            if miss.write_body(b.slice(half..), true).await.is_err() {
                return;
            }
            if miss.finish().await.is_ok() {
                world.fills.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => world.fail(format!("k{i}: lookup failed: {e}")),
    }
}

async fn purge(store: &'static TieredStore, world: &World, rng: &mut StdRng) {
    let i = rng.gen_range(0..KEYS);
    let selector = match rng.gen_range(0..4) {
        0 => Selector::Urls([target(i)].into()),
        1 => Selector::Prefix(format!("a.vn/k{}", i % 3)),
        2 => Selector::Tags([format!("t{}", i % 3)].into()),
        _ => Selector::Tags(["all".to_owned()].into()),
    };
    let soft = rng.gen_bool(0.3);
    // The newsroom changes the pages first, then purges them.
    let bumped: Vec<(usize, u64)> = (0..KEYS)
        .filter(|k| selector.matches(&target(*k), &tags(*k)))
        .map(|k| (k, world.versions[k].fetch_add(1, Ordering::SeqCst) + 1))
        .collect();
    let walk = selector.clone();
    tokio::task::spawn_blocking(move || store.purge_selector(&walk, soft))
        .await
        .unwrap();
    world.purges.fetch_add(1, Ordering::Relaxed);
    for (k, v) in bumped {
        let floor = if soft {
            &world.soft_floor[k]
        } else {
            &world.hard_floor[k]
        };
        floor.fetch_max(v, Ordering::SeqCst);
    }
}

impl World {
    fn fail(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 20 {
            v.push(what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_ever_gets_what_a_completed_purge_covered() {
    let seed: u64 = std::env::var("ONAIR_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World {
        versions: (0..KEYS).map(|_| AtomicU64::new(1)).collect(),
        hard_floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        soft_floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        violations: Default::default(),
        reads: AtomicUsize::new(0),
        hits: AtomicUsize::new(0),
        fills: AtomicUsize::new(0),
        revalidations: AtomicUsize::new(0),
        purges: AtomicUsize::new(0),
    });
    for round in 0..ROUNDS {
        // A restart: a new memory tier, fence and disk index over the same directory (its
        // start-up scan runs while the workers already read and purge).
        let store = open(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let (world, stop) = (world.clone(), stop.clone());
            let mut rng = StdRng::seed_from_u64(seed ^ ((round * WORKERS + w) as u64 + 1));
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if rng.gen_bool(0.04) {
                        purge(store, &world, &mut rng).await;
                    } else {
                        let i = rng.gen_range(0..KEYS);
                        read(store, &world, i, &mut rng).await;
                    }
                }
            }));
        }
        let started = Instant::now();
        while started.elapsed() < ROUND {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
    }
    let violations = world.violations.lock().unwrap().clone();
    let (reads, hits, fills, revalidations, purges) = (
        world.reads.load(Ordering::Relaxed),
        world.hits.load(Ordering::Relaxed),
        world.fills.load(Ordering::Relaxed),
        world.revalidations.load(Ordering::Relaxed),
        world.purges.load(Ordering::Relaxed),
    );
    eprintln!(
        "cache stress: seed {seed}, {ROUNDS} restarts, {reads} reads ({hits} hits), {fills} fills, \
         {revalidations} revalidations, {purges} purges"
    );
    assert!(
        purges > 20 && hits > 100 && fills > 50,
        "too little happened"
    );
    assert!(
        violations.is_empty(),
        "seed {seed} (rerun with ONAIR_STRESS_SEED={seed}): {violations:#?}"
    );
}
