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

fn plain_site(origin: &Origin, site_extra: &str, routes: &str) -> Setup {
    Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n{site_extra}\n{routes}\n\
         [[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ))
}

fn cached_page(body: &'static str) -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: Bytes::from_static(body.as_bytes()),
        ..Behaviour::default()
    }
}

/// Nothing outside the key may shape what is stored: headers origins act on are stripped,
/// the origin gets the host and port the key was built from, a port the key cannot hold is
/// refused, a GET with a body is not cached, and a `query = "drop"` route drops the query
/// before the origin sees it.
#[tokio::test]
async fn unkeyed_inputs_never_reach_the_origin() {
    let origin = Origin::start("o").await;
    origin.set(cached_page("page"));
    let onair = Onair::start(plain_site(
        &origin,
        "",
        "  [[site.route]]\n  path = \"/search\"\n  query = \"drop\"\n",
    ))
    .await;
    let evil = [
        ("Forwarded", "for=1.2.3.4;host=evil.example;proto=https"),
        ("X-Forwarded-Port", "8443"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Forwarded-Scheme", "nothttps"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Host", "evil.example"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Real-IP", "1.2.3.4"),
    ];
    let r = request(
        onair.http,
        "GET",
        "Portal.VN.",
        "/home",
        &evil,
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = origin.last_proxied().unwrap();
    for (name, _) in evil {
        let name = name.to_ascii_lowercase();
        if name == "x-forwarded-host" {
            continue;
        }
        assert!(
            !seen.contains_key(&name),
            "{name} reached the origin: {seen:?}"
        );
    }
    assert_eq!(seen["x-forwarded-host"], "portal.vn");
    assert_eq!(
        seen["host"], "portal.vn",
        "the origin must get the keyed host"
    );
    // A port the key could not hold is refused, not dropped.
    let r = get(onair.http, "portal.vn:65616", "/home").await.unwrap();
    assert_eq!(r.status, 400);
    // A default port is the same object, and the origin is told the keyed form.
    let hits = origin.proxied_hits();
    let r = get(onair.http, "portal.vn:80", "/home").await.unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.proxied_hits(), hits);
    // A GET with a body is answered but never stored.
    let hits = origin.proxied_hits();
    for _ in 0..2 {
        let r = request(
            onair.http,
            "GET",
            "portal.vn",
            "/with-body",
            &[],
            Bytes::from_static(b"q=1"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        origin.proxied_hits(),
        hits + 2,
        "a GET with a body was cached"
    );
    // query = "drop": the origin gets no query (one object for every query).
    get(onair.http, "portal.vn", "/search?q=evil&utm=1")
        .await
        .unwrap();
    assert_eq!(origin.last_proxied().unwrap()[":path"], "/search");
    let r = get(onair.http, "portal.vn", "/search?q=other")
        .await
        .unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
}

/// A header the site's origin needs can be passed, and then it is part of the key.
#[tokio::test]
async fn a_passed_header_is_part_of_the_key() {
    let origin = Origin::start("o").await;
    origin.set(cached_page("page"));
    let onair = Onair::start(plain_site(
        &origin,
        "pass_headers = [\"X-Forwarded-Prefix\"]",
        "",
    ))
    .await;
    let get_with = |prefix: &'static str| {
        let http = onair.http;
        async move {
            request(
                http,
                "GET",
                "a",
                "/p",
                &[("X-Forwarded-Prefix", prefix)],
                Bytes::new(),
            )
            .await
            .unwrap()
        }
    };
    get_with("/one").await;
    assert_eq!(origin.last_proxied().unwrap()["x-forwarded-prefix"], "/one");
    let hits = origin.proxied_hits();
    assert!(get_with("/one")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    get_with("/two").await;
    assert_eq!(
        origin.proxied_hits(),
        hits + 1,
        "another value must be another object"
    );
    // A write through the URL stales the copy it keyed, passed headers and all.
    let r = request(
        onair.http,
        "POST",
        "a",
        "/p",
        &[("X-Forwarded-Prefix", "/one")],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = get_with("/one").await;
    assert!(
        !r.header("cache-status").unwrap().contains("; hit; ttl"),
        "served fresh after a write: {:?}",
        r.header("cache-status")
    );
    // Only headers onair would strip can be passed.
    let (code, out) = check(&format!(
        "{}\n[[site]]\nname = \"t\"\nhosts = [\"t\"]\npool = \"p\"\npass_headers = [\"Cookie\"]\n",
        plain_site(&origin, "", "").body
    ));
    assert_ne!(code, 0);
    assert!(out.contains("site[1].pass_headers[0]"), "{out}");
}

/// Routes and the key see the normal form of the path: every spelling of `/login` gets the
/// `/login` route's policy (here: never cached, own pool), every spelling of a cached page is
/// the same object, and the origin gets the normal form. Ambiguous paths are refused.
#[tokio::test]
async fn every_spelling_of_a_path_gets_its_route_and_its_object() {
    let origin = Origin::start("o").await;
    let login = Origin::start("login").await;
    origin.set(cached_page("page"));
    login.set(cached_page("login form"));
    let mut setup = plain_site(
        &origin,
        "",
        "  [[site.route]]\n  path = \"/login\"\n  pool = \"auth\"\n  cache = false\n",
    );
    setup.body.push_str(&format!(
        "[[pool]]\nname = \"auth\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        login.addr
    ));
    let onair = Onair::start(setup).await;
    for spelling in [
        "/login",
        "//login",
        "/%6cogin",
        "/%6Cogin",
        "/x/../login",
        "/./login",
        "/x/%2e%2e/login",
    ] {
        let before = login.proxied_hits();
        let r = get(onair.http, "a", spelling).await.unwrap();
        assert_eq!(r.text(), "login form", "{spelling} missed the route");
        assert_eq!(
            login.proxied_hits(),
            before + 1,
            "{spelling} was answered from the cache"
        );
        assert_eq!(
            login.last_proxied().unwrap()[":path"],
            "/login",
            "{spelling}"
        );
    }
    get(onair.http, "a", "/news/1").await.unwrap();
    let hits = origin.proxied_hits();
    for spelling in ["/news//1", "/news/%31", "/news/x/../1", "//news/./1"] {
        let r = get(onair.http, "a", spelling).await.unwrap();
        assert!(
            r.header("cache-status").unwrap_or("").contains("hit"),
            "{spelling} is another object"
        );
    }
    assert_eq!(origin.proxied_hits(), hits);
    for raw in ["/a%00b", "/a\\b", "/a%zz"] {
        let head = format!("GET {raw} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(onair.http, head.as_bytes(), Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw}: {answer}");
    }
    assert_eq!(origin.proxied_hits(), hits);
}
