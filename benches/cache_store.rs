//! Cache store measurements that are not request throughput: disk-tier restart time with
//! 100,000 objects, and memory per cached object beyond its body.
//! Run with `cargo bench --bench cache_store` (prints a small report).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use onair::cache::disk::DiskStore;
use onair::cache::memory::MemoryStore;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;

fn meta() -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).unwrap();
    header
        .insert_header("Content-Type", "text/html; charset=utf-8")
        .unwrap();
    header
        .insert_header("Cache-Control", "public, max-age=60")
        .unwrap();
    header.insert_header("ETag", "\"5f1c2b-400\"").unwrap();
    header
        .insert_header("Surrogate-Key", "news article-1")
        .unwrap();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 604_800, header)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
    k
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn disk_restart(objects: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
    let m = meta();
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    for i in 0..objects {
        let mut w = store
            .begin(
                key(i),
                &m,
                format!("daihoi.example.vn/news/{i}"),
                vec!["news".into()],
            )
            .unwrap();
        store.append(&mut w, &body).unwrap();
        store.commit(w).unwrap();
    }
    let fill = started.elapsed();
    drop(store);
    let started = Instant::now();
    let reopened = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
    let scan = started.elapsed();
    let (n, bytes) = reopened.usage();
    println!(
        "disk: {objects} objects of 1 KiB written in {:.1} s (fsync each); restart index scan: {:.2} s for {n} objects, {} MiB",
        fill.as_secs_f64(),
        scan.as_secs_f64(),
        bytes >> 20
    );
}

fn memory_overhead(objects: u64) {
    let store = MemoryStore::new(u64::MAX, 1 << 20);
    let m = meta();
    let before = rss_kib();
    for i in 0..objects {
        let body = Bytes::from(vec![b'x'; 1024]);
        store.insert(
            store.ticket(),
            key(i),
            &m,
            body,
            format!("daihoi.example.vn/news/{i}"),
            vec!["news".into()],
        );
    }
    store.maintain();
    let after = rss_kib();
    let charged = store.size() as f64 / objects as f64;
    let per_object = (after.saturating_sub(before) * 1024) as f64 / objects as f64;
    println!(
        "memory: {objects} objects of 1 KiB: RSS +{} MiB, {:.0} bytes per object, {:.0} beyond the body; charged against cache.memory: {:.0} bytes per object",
        (after - before) >> 10,
        per_object,
        per_object - 1024.0,
        charged
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs it without: keep that quick.
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 100_000 } else { 1_000 };
    memory_overhead(n);
    disk_restart(n);
}
