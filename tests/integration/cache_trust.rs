//! A cache you can trust, through a real onair: purges that stay final under concurrent
//! readers, revalidations that keep purge tags right on disk, and writes that stale rather
//! than evict the copy the site falls back on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

fn site(origin: &Origin, disk: &std::path::Path) -> Setup {
    Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\n  [[pool.origin]]\n  addr = \"{}\"\n\
         [cache]\ndisk_path = \"{}\"\ndisk = \"64MiB\"\n",
        origin.addr,
        disk.display()
    ))
}

fn version(tags: &str, body: String, extra: &[(&str, &str)]) -> Behaviour {
    let mut headers = vec![
        (
            "Cache-Control".to_owned(),
            "max-age=600, stale-if-error=600".to_owned(),
        ),
        ("Cache-Tag".to_owned(), tags.to_owned()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Behaviour {
        headers,
        body: Bytes::from(body),
        ..Behaviour::default()
    }
}

async fn purge(onair: &Onair, json: &str) -> serde_json::Value {
    let r = onair.admin_post("/purge", json).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// The race the fence must win: a purge clears memory, then walks the disk; readers that miss
/// memory meanwhile read the disk copy not yet removed and would put it back into memory. Four
/// readers loop over 60 tagged pages while each round purges the tag; a read that starts after
/// the purge answered must never get the purged version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_is_final_under_concurrent_readers() {
    const PAGES: usize = 60;
    const ROUNDS: usize = 6;
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let onair = Onair::start(site(&origin, disk.path())).await;
    // The version the origin serves now; readers judge answers against `purged_below`.
    let purged_below = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stale_reads = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    origin.set(version("election", "v1".into(), &[]));
    for p in 0..PAGES {
        get(onair.http, "portal.vn", &format!("/p/{p}"))
            .await
            .unwrap();
    }
    let mut readers = Vec::new();
    for r in 0..4 {
        let (http, purged_below, stop, stale_reads, reads) = (
            onair.http,
            purged_below.clone(),
            stop.clone(),
            stale_reads.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut p = r * 7;
            while !stop.load(Ordering::SeqCst) {
                // Versions below this were purged before the read began.
                let floor = purged_below.load(Ordering::SeqCst);
                let Ok(resp) = get(http, "portal.vn", &format!("/p/{}", p % PAGES)).await else {
                    continue;
                };
                let got: usize = resp.text().trim_start_matches('v').parse().unwrap_or(0);
                reads.fetch_add(1, Ordering::SeqCst);
                if got < floor {
                    stale_reads.fetch_add(1, Ordering::SeqCst);
                }
                p += 1;
            }
        }));
    }
    for round in 2..2 + ROUNDS {
        // The newsroom publishes version `round`, then purges the tag.
        origin.set(version("election", format!("v{round}"), &[]));
        let out = purge(&onair, r#"{"tags": ["election"]}"#).await;
        assert!(out["purged"].as_u64().unwrap() > 0, "{out}");
        purged_below.store(round, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let (bad, total) = (
        stale_reads.load(Ordering::SeqCst),
        reads.load(Ordering::SeqCst),
    );
    assert!(total > 100, "only {total} reads");
    assert_eq!(
        bad, 0,
        "{bad} of {total} reads after a purge got a purged version"
    );
}

/// A 304 that changes the purge tags must change them on disk too: after a restart (memory
/// gone) a purge by the new tag still finds the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_that_changes_tags_updates_them_on_disk() {
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let mut onair = Onair::start(site(&origin, disk.path())).await;
    origin.set(version("draft", "the story".into(), &[("ETag", "\"e1\"")]));
    assert_eq!(
        get(onair.http, "a", "/story").await.unwrap().text(),
        "the story"
    );
    // Marked stale, so the next reader revalidates; the origin's 304 retags it.
    purge(&onair, r#"{"tags": ["draft"], "soft": true}"#).await;
    origin.set(Behaviour {
        status: 304,
        body: Bytes::new(),
        ..version("published", String::new(), &[("ETag", "\"e1\"")])
    });
    let r = get(onair.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "the story");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; fwd=stale; fwd-status=304")
    );
    // Memory forgets; the disk copy must carry the new tag.
    onair.restart().await;
    let out = purge(&onair, r#"{"tags": ["published"]}"#).await;
    assert_eq!(out["purged"], 1, "{out}");
    origin.kill();
    let r = get(onair.http, "a", "/story").await.unwrap();
    assert_eq!(r.status, 503, "the purged story came back: {}", r.text());
}

/// Any client can POST. A successful unsafe method marks the URL's copies stale (RFC 9111
/// §4.4) but must not delete them: with the origins down the copy is still the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stales_the_copy_but_keeps_it_for_when_origins_fail() {
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let onair = Onair::start(site(&origin, disk.path())).await;
    origin.set(version("home", "front page".into(), &[]));
    get(onair.http, "a", "/").await.unwrap();
    let r = request(
        onair.http,
        "POST",
        "a",
        "/",
        &[],
        Bytes::from_static(b"x=1"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    origin.kill();
    let r = get(onair.http, "a", "/").await.unwrap();
    assert_eq!(r.status, 200, "the POST evicted the fallback copy");
    assert_eq!(r.text(), "front page");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-if-error")
    );
    // With the origin back, the stale copy is revalidated, not served as fresh.
    origin.revive().await;
    origin.set(version("home", "front page, updated".into(), &[]));
    let r = get(onair.http, "a", "/").await.unwrap();
    assert_eq!(r.text(), "front page, updated");
}
