//! The cache through a real onair: hits and misses with `Cache-Status`, RFC 9111 rules,
//! coalescing, stale-while-revalidate and stale-if-error, and cache-poisoning attempts.

use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

fn cached(cc: &str) -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), cc.into())],
        body: Bytes::from_static(b"page v1"),
        ..Behaviour::default()
    }
}

fn site_with_api(origin: &Origin) -> Setup {
    Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n  [[site.route]]\n  path = \"/api/\"\n  cache = false\n\
         [[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ))
}

#[tokio::test]
async fn miss_then_hit_with_cache_status() {
    let origin = Origin::start("o").await;
    origin.set(cached("public, max-age=60"));
    let onair = Onair::start(site_with_api(&origin)).await;

    let r = get(onair.http, "news.vn", "/a").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; fwd=uri-miss; stored")
    );
    let r = get(onair.http, "news.vn", "/a").await.unwrap();
    assert_eq!(r.text(), "page v1");
    let status = r.header("cache-status").unwrap();
    assert!(status.starts_with("edge-test; hit; ttl="), "{status}");
    assert!(r.header("age").is_some());
    assert_eq!(origin.proxied_hits(), 1);
    // HEAD is answered from the cached GET.
    let r = request(onair.http, "HEAD", "news.vn", "/a", &[], Bytes::new())
        .await
        .unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.proxied_hits(), 1);
    // Host case and the default port do not split the cache.
    let r = get(onair.http, "NEWS.vn:80", "/a").await.unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
    // The query does.
    let r = get(onair.http, "news.vn", "/a?page=2").await.unwrap();
    assert!(r.header("cache-status").unwrap().contains("uri-miss"));
    // A route with cache = false bypasses.
    get(onair.http, "news.vn", "/api/x").await.unwrap();
    let r = get(onair.http, "news.vn", "/api/x").await.unwrap();
    assert_eq!(r.header("cache-status"), Some("edge-test; fwd=bypass"));
    assert_eq!(origin.proxied_hits(), 4);
    // Counted in the logging phase, which may end just after the client has its answer.
    let hits = "onair_requests_total{cache=\"hit\",code=\"2xx\",site=\"s\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(hits).await == Some(3.0)
        })
        .await
    );
}

#[tokio::test]
async fn uncacheable_responses_are_not_stored() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    for (path, cc) in [
        ("/no-store", "no-store"),
        ("/private", "private, max-age=60"),
        ("/none", ""),
    ] {
        let mut b = cached(cc);
        if cc.is_empty() {
            b.headers.clear();
        }
        origin.set(b);
        for _ in 0..2 {
            let r = get(onair.http, "a", path).await.unwrap();
            assert_eq!(
                r.header("cache-status"),
                Some("edge-test; fwd=uri-miss"),
                "{path}"
            );
        }
    }
    // A cookie is never handed to other readers.
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Set-Cookie".into(), "session=alice".into()),
        ],
        ..Behaviour::default()
    });
    get(onair.http, "a", "/cookie").await.unwrap();
    let r = get(onair.http, "a", "/cookie").await.unwrap();
    assert_eq!(r.header("cache-status"), Some("edge-test; fwd=uri-miss"));
    // A request with Authorization is stored only when the response says so.
    origin.set(cached("max-age=60"));
    let auth = [("Authorization", "Bearer x")];
    request(onair.http, "GET", "a", "/auth", &auth, Bytes::new())
        .await
        .unwrap();
    let r = request(onair.http, "GET", "a", "/auth", &auth, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.header("cache-status"), Some("edge-test; fwd=uri-miss"));
    // POST is never answered from the cache.
    origin.set(cached("max-age=60"));
    get(onair.http, "a", "/form").await.unwrap();
    let r = request(
        onair.http,
        "POST",
        "a",
        "/form",
        &[],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(r.header("cache-status"), Some("edge-test; fwd=bypass"));
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Vary".into(), "Accept-Language".into()),
        ],
        body: Bytes::from_static(b"vi"),
        ..Behaviour::default()
    });
    let onair = Onair::start(site_with_api(&origin)).await;
    let vi = [("Accept-Language", "vi")];
    let en = [("Accept-Language", "en")];
    request(onair.http, "GET", "a", "/", &vi, Bytes::new())
        .await
        .unwrap();
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Vary".into(), "Accept-Language".into()),
        ],
        body: Bytes::from_static(b"en"),
        ..Behaviour::default()
    });
    let r = request(onair.http, "GET", "a", "/", &en, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "en");
    let r = request(onair.http, "GET", "a", "/", &vi, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "vi");
    assert!(r.header("cache-status").unwrap().contains("hit"));
    let r = request(onair.http, "GET", "a", "/", &en, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "en");
    assert!(r.header("cache-status").unwrap().contains("hit"));
}

#[tokio::test]
async fn every_line_of_a_varied_header_selects_the_variant() {
    let origin = Origin::start("o").await;
    let vary = |body: &'static [u8]| Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Vary".into(), "Accept-Language".into()),
        ],
        body: Bytes::from_static(body),
        ..Behaviour::default()
    };
    origin.set(vary(b"for vi + evil"));
    let onair = Onair::start(site_with_api(&origin)).await;
    // Two header lines: the variant is keyed on both, as the origin saw both.
    let stream = tokio::net::TcpStream::connect(onair.http).await.unwrap();
    let raw = "GET /v HTTP/1.1\r\nHost: a\r\nAccept-Language: vi\r\nAccept-Language: evil\r\nConnection: close\r\n\r\n";
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("for vi + evil"));
    }
    // A reader sending only the first line gets its own variant, not the attacker's.
    origin.set(vary(b"for vi"));
    let r = request(
        onair.http,
        "GET",
        "a",
        "/v",
        &[("Accept-Language", "vi")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "for vi");
}

#[tokio::test]
async fn one_error_does_not_turn_the_cache_off_for_a_url() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    // A 503 first, then the page is fine and cacheable: it must be cached at once.
    origin.set(Behaviour {
        status: 503,
        ..Behaviour::default()
    });
    assert_eq!(get(onair.http, "a", "/flaky").await.unwrap().status, 503);
    origin.set(cached("max-age=60"));
    get(onair.http, "a", "/flaky").await.unwrap();
    assert!(
        is_hit(&onair, "a", "/flaky").await,
        "a 503 made the URL uncacheable"
    );
    // Same after a response with a cookie.
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Set-Cookie".into(), "s=1".into()),
        ],
        ..Behaviour::default()
    });
    get(onair.http, "a", "/cookie-once").await.unwrap();
    origin.set(cached("max-age=60"));
    get(onair.http, "a", "/cookie-once").await.unwrap();
    assert!(is_hit(&onair, "a", "/cookie-once").await);
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(300),
        ..cached("max-age=60")
    });
    let onair = Onair::start(site_with_api(&origin)).await;
    let http = onair.http;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        clients.spawn(async move { get(http, "a", "/breaking").await.unwrap() });
    }
    while let Some(r) = clients.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "page v1");
    }
    assert_eq!(
        origin.proxied_hits(),
        1,
        "the origin saw more than one request"
    );
}

#[tokio::test]
async fn stale_if_error_keeps_the_page_up_when_every_origin_fails() {
    let origin = Origin::start("o").await;
    // Already stale when stored (max-age=0), so no sleep is needed to expire it.
    origin.set(cached("max-age=0, stale-if-error=600"));
    let onair = Onair::start(site_with_api(&origin)).await;
    assert_eq!(get(onair.http, "a", "/story").await.unwrap().status, 200);

    // The origin answers 503 now: readers still get the stored page.
    origin.set(Behaviour {
        status: 503,
        body: Bytes::from_static(b"origin broken"),
        ..Behaviour::default()
    });
    let r = get(onair.http, "a", "/story").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "page v1");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-if-error")
    );

    // The origin is gone entirely: still the stored page, not the maintenance page.
    origin.kill();
    let r = get(onair.http, "a", "/story").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "page v1");
    // A page that was never cached gets the maintenance page.
    assert_eq!(get(onair.http, "a", "/never").await.unwrap().status, 503);
}

#[tokio::test]
async fn operator_window_applies_but_must_revalidate_is_respected() {
    let origin = Origin::start("o").await;
    // No stale-if-error from the origin: the operator's default 7-day window applies.
    origin.set(cached("max-age=0"));
    let onair = Onair::start(site_with_api(&origin)).await;
    get(onair.http, "a", "/plain").await.unwrap();
    origin.set(cached("max-age=0, must-revalidate"));
    let r = get(onair.http, "a", "/strict").await.unwrap();
    // It is stored (to revalidate), just never served stale.
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; fwd=uri-miss; stored")
    );
    origin.kill();
    let r = get(onair.http, "a", "/plain").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-if-error")
    );
    // must-revalidate forbids serving it stale: the maintenance page instead.
    assert_eq!(get(onair.http, "a", "/strict").await.unwrap().status, 503);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_background() {
    let origin = Origin::start("o").await;
    origin.set(cached("max-age=0, stale-while-revalidate=60"));
    let onair = Onair::start(site_with_api(&origin)).await;
    get(onair.http, "a", "/live").await.unwrap();
    // The origin has a new version, and it is slow.
    origin.set(Behaviour {
        body: Bytes::from_static(b"page v2"),
        delay: Duration::from_millis(2000),
        ..cached("max-age=60")
    });
    let started = std::time::Instant::now();
    let r = get(onair.http, "a", "/live").await.unwrap();
    assert_eq!(r.text(), "page v1");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-while-revalidate")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited for the origin"
    );
    // The background refresh lands.
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(onair.http, "a", "/live")
                .await
                .map(|r| r.text() == "page v2")
                .unwrap_or(false)
        })
        .await
    );
}

#[tokio::test]
async fn unkeyed_headers_cannot_poison_the_cache() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    // An attacker's request with unkeyed headers reaches the origin and is cached...
    origin.set(cached("max-age=60"));
    let evil = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Forwarded-Scheme", "nothttps"),
    ];
    request(onair.http, "GET", "a", "/home", &evil, Bytes::new())
        .await
        .unwrap();
    // ...but what the origin saw as X-Forwarded-Host is what onair set, not the attacker's.
    let seen = origin.last_proxied().unwrap();
    assert_eq!(seen["x-forwarded-host"], "a");
    // And a later plain request gets the same object the attack produced only through the key:
    // path and host. The attacker's path trick does not select another stored object.
    origin.set(Behaviour {
        body: Bytes::from_static(b"admin page"),
        ..cached("max-age=60")
    });
    let r = get(onair.http, "a", "/admin").await.unwrap();
    assert_eq!(r.text(), "admin page");
    let r = get(onair.http, "a", "/home").await.unwrap();
    assert_eq!(r.text(), "page v1");
}

#[tokio::test]
async fn edge_directives_take_precedence_and_stay_at_the_edge() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    // Browsers must not keep it, the edge may (RFC 9213 / Surrogate-Control).
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "no-store".into()),
            ("Surrogate-Control".into(), "max-age=60".into()),
            ("Surrogate-Key".into(), "news article-1".into()),
        ],
        ..Behaviour::default()
    });
    get(onair.http, "a", "/s").await.unwrap();
    let r = get(onair.http, "a", "/s").await.unwrap();
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("surrogate-control").is_none());
    assert!(r.header("surrogate-key").is_none());
    // CDN-Cache-Control wins over both and can also forbid storing.
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("CDN-Cache-Control".into(), "no-store".into()),
        ],
        ..Behaviour::default()
    });
    get(onair.http, "a", "/c").await.unwrap();
    let r = get(onair.http, "a", "/c").await.unwrap();
    assert_eq!(r.header("cache-status"), Some("edge-test; fwd=uri-miss"));
}

#[tokio::test]
async fn conditionals_ranges_and_writes() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("ETag".into(), "\"v1\"".into()),
            (
                "Last-Modified".into(),
                "Mon, 02 Nov 2026 10:00:00 GMT".into(),
            ),
        ],
        body: Bytes::from_static(b"0123456789"),
        ..Behaviour::default()
    });
    let onair = Onair::start(site_with_api(&origin)).await;
    get(onair.http, "a", "/doc").await.unwrap();

    // Client revalidation is answered 304 from the cache, without the origin.
    let r = request(
        onair.http,
        "GET",
        "a",
        "/doc",
        &[("If-None-Match", "\"v1\"")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 304);
    let ims = [("If-Modified-Since", "Mon, 02 Nov 2026 10:00:00 GMT")];
    let r = request(onair.http, "GET", "a", "/doc", &ims, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 304);
    let r = request(
        onair.http,
        "GET",
        "a",
        "/doc",
        &[("If-None-Match", "\"v0\"")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    // Single and multipart ranges from the cached body.
    let r = request(
        onair.http,
        "GET",
        "a",
        "/doc",
        &[("Range", "bytes=2-5")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    let r = request(
        onair.http,
        "GET",
        "a",
        "/doc",
        &[("Range", "bytes=0-1,8-9")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges"));
    assert!(r.text().contains("01") && r.text().contains("89"));
    assert_eq!(origin.proxied_hits(), 1);

    // A successful POST to the URL drops the cached copy: the next GET goes to the origin.
    origin.set(Behaviour {
        body: Bytes::from_static(b"new"),
        ..cached("max-age=60")
    });
    let r = request(
        onair.http,
        "POST",
        "a",
        "/doc",
        &[],
        Bytes::from_static(b"edit"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = get(onair.http, "a", "/doc").await.unwrap();
    assert_eq!(r.text(), "new");
    assert!(r.header("cache-status").unwrap().contains("uri-miss"));
}

#[tokio::test]
async fn cache_metrics() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(200),
        ..cached("max-age=60")
    });
    let onair = Onair::start(site_with_api(&origin)).await;
    let http = onair.http;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..5 {
        clients.spawn(async move { get(http, "a", "/c").await.unwrap() });
    }
    while clients.join_next().await.is_some() {}
    origin.set(cached("max-age=0, stale-if-error=60"));
    get(onair.http, "a", "/m").await.unwrap();
    origin.kill();
    get(onair.http, "a", "/m").await.unwrap();
    // Counted in the logging phase, which may end just after the client has its answer.
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .metric("onair_stale_served_total{reason=\"stale-if-error\"}")
                .await
                == Some(1.0)
        })
        .await
    );
    assert!(
        onair
            .metric("onair_coalesced_requests_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric("onair_cache_objects{tier=\"memory\"}").await == Some(2.0)
        })
        .await
    );
    assert!(
        onair
            .metric("onair_cache_size_bytes{tier=\"memory\"}")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
}

fn tagged(tags: &str, body: &'static [u8]) -> Behaviour {
    Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Surrogate-Key".into(), tags.into()),
        ],
        body: Bytes::from_static(body),
        ..Behaviour::default()
    }
}

async fn purge(onair: &Onair, json: &str) -> serde_json::Value {
    let auth = format!("Bearer {}", onair.token);
    let r = request(
        onair.admin,
        "POST",
        "admin",
        "/purge",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Bytes::from(json.to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

async fn is_hit(onair: &Onair, host: &str, path: &str) -> bool {
    let r = get(onair.http, host, path).await.unwrap();
    r.header("cache-status").unwrap_or("").contains("; hit")
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    for (path, tags) in [
        ("/news/1", "news article-1"),
        ("/news/2", "news article-2"),
        ("/sport/1", "sport article-3"),
        ("/home", "home"),
    ] {
        origin.set(tagged(tags, b"v1"));
        get(onair.http, "portal.vn", path).await.unwrap();
        assert!(is_hit(&onair, "portal.vn", path).await, "{path} not cached");
    }
    // By URL (any scheme, host case-insensitive).
    let out = purge(&onair, r#"{"urls": ["https://PORTAL.vn/home"]}"#).await;
    assert_eq!(out["purged"], 1);
    assert!(!is_hit(&onair, "portal.vn", "/home").await);
    // By tag.
    let out = purge(&onair, r#"{"tags": ["article-3"]}"#).await;
    assert_eq!(out["purged"], 1);
    assert!(!is_hit(&onair, "portal.vn", "/sport/1").await);
    // By prefix.
    let out = purge(&onair, r#"{"prefix": "http://portal.vn/news/"}"#).await;
    assert_eq!(out["purged"], 2);
    assert!(!is_hit(&onair, "portal.vn", "/news/1").await);
    assert_eq!(onair.metric("onair_purged_objects_total").await, Some(4.0));
    // Bad requests are refused with a reason, and purge nothing.
    let auth = format!("Bearer {}", onair.token);
    for bad in [
        r#"{"urls": ["/relative"]}"#,
        r#"{"tags": ["x"], "prefix": "http://a/"}"#,
        "not json",
    ] {
        let r = request(
            onair.admin,
            "POST",
            "admin",
            "/purge",
            &[("Authorization", &auth)],
            Bytes::from(bad),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "{bad}");
    }
    // Without the token nothing is purged.
    let r = request(
        onair.admin,
        "POST",
        "admin",
        "/purge",
        &[],
        Bytes::from(r#"{"tags": ["news"]}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn soft_purge_revalidates_but_still_keeps_the_site_up() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(site_with_api(&origin)).await;
    origin.set(tagged("live", b"v1"));
    get(onair.http, "a", "/live").await.unwrap();
    let out = purge(&onair, r#"{"tags": ["live"], "soft": true}"#).await;
    assert_eq!(out["purged"], 1);
    // Soft-purged and the origin down: the copy is still served (stale-if-error).
    origin.kill();
    let r = get(onair.http, "a", "/live").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "v1");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-if-error")
    );
    // Origin back with a new version: the next request revalidates and gets it.
    origin.revive().await;
    origin.set(tagged("live", b"v2"));
    let r = get(onair.http, "a", "/live").await.unwrap();
    assert_eq!(r.text(), "v2");
}

#[tokio::test]
async fn purge_method_from_allowed_addresses_only() {
    let origin = Origin::start("o").await;
    origin.set(cached("max-age=600"));
    let mut setup = site_with_api(&origin);
    // The test client is 127.0.0.1: first not allowed, then allowed.
    setup
        .body
        .push_str("\n[cache]\npurge_from = [\"10.0.0.0/8\"]\n");
    let onair = Onair::start(setup).await;
    get(onair.http, "a", "/p").await.unwrap();
    let before = origin.proxied_hits();
    let r = request(onair.http, "PURGE", "a", "/p", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(is_hit(&onair, "a", "/p").await);
    let mut allowed = site_with_api(&origin);
    allowed
        .body
        .push_str("\n[cache]\npurge_from = [\"127.0.0.0/8\", \"::1\"]\n");
    onair.rewrite(&allowed);
    assert_eq!(onair.admin("POST", "/reload").await.status, 200);
    let r = request(onair.http, "PURGE", "a", "/p", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let out: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(out["purged"], 1);
    // PURGE never reached the origin.
    assert_eq!(origin.proxied_hits(), before);
    assert!(!is_hit(&onair, "a", "/p").await);
}

fn with_disk(origin: &Origin, disk: &std::path::Path) -> Setup {
    let mut setup = site_with_api(origin);
    setup.body.push_str(&format!(
        "\n[cache]\ndisk_path = \"{}\"\ndisk = \"64MiB\"\n",
        disk.display()
    ));
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_survive_a_restart_with_every_origin_down() {
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let mut onair = Onair::start(with_disk(&origin, disk.path())).await;
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);
    for (path, body) in [
        ("/small", Bytes::from_static(b"small page")),
        ("/big", big.clone()),
    ] {
        origin.set(Behaviour {
            body,
            ..cached("max-age=0, stale-if-error=600")
        });
        assert_eq!(get(onair.http, "a", path).await.unwrap().status, 200);
    }
    // Crash (SIGKILL) and restart with no origin at all: the pages come from disk.
    origin.kill();
    onair.restart().await;
    let r = get(onair.http, "a", "/small").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "small page");
    assert_eq!(
        r.header("cache-status"),
        Some("edge-test; hit; detail=stale-if-error")
    );
    // A large object streams from disk and matches byte for byte.
    let r = get(onair.http, "a", "/big").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == big, "the large body differs after the restart");
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric("onair_cache_objects{tier=\"disk\"}").await == Some(2.0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_pages_do_not_come_back_after_a_restart() {
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let mut onair = Onair::start(with_disk(&origin, disk.path())).await;
    origin.set(tagged("news", b"v1"));
    get(onair.http, "a", "/n1").await.unwrap();
    get(onair.http, "a", "/n2").await.unwrap();
    origin.set(tagged("other", b"v1"));
    get(onair.http, "a", "/keep").await.unwrap();
    let out = purge(&onair, r#"{"tags": ["news"]}"#).await;
    assert_eq!(out["purged"], 2);
    origin.kill();
    onair.restart().await;
    // The purged pages are gone (maintenance page), the other one is still served.
    assert_eq!(get(onair.http, "a", "/n1").await.unwrap().status, 503);
    assert_eq!(get(onair.http, "a", "/n2").await.unwrap().status, 503);
    let r = get(onair.http, "a", "/keep").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "v1");
}

/// kill -9 in the middle of many large fills, then restart: whatever is served (from disk or
/// fetched again) matches the origin byte for byte. A half-written object is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_fills_never_serves_a_broken_body() {
    const SIZE: usize = 256 << 10;
    const OBJECTS: usize = 200;
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(20),
        ..cached("max-age=600").with_pattern(SIZE)
    });
    let disk = tempfile::tempdir().unwrap();
    let mut onair = Onair::start(with_disk(&origin, disk.path())).await;
    let http = onair.http;
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..OBJECTS {
        fills.spawn(async move { get(http, "a", &format!("/obj/{i}")).await });
    }
    // Crash while fills are in flight: once some objects are on disk, before all are.
    assert!(
        eventually(Duration::from_secs(20), || async {
            onair
                .metric("onair_cache_objects{tier=\"disk\"}")
                .await
                .unwrap_or(0.0)
                >= 10.0
        })
        .await,
        "no fill reached the disk"
    );
    onair.restart().await;
    while fills.join_next().await.is_some() {}
    origin.set(cached("max-age=600").with_pattern(SIZE));
    let mut from_disk = 0;
    for i in 0..OBJECTS {
        let path = format!("/obj/{i}");
        let r = get(onair.http, "a", &path).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.body == pattern_body(&path, SIZE),
            "{path}: body differs from the origin's"
        );
        if r.header("cache-status").unwrap_or("").contains("; hit") {
            from_disk += 1;
        }
    }
    eprintln!("{from_disk} of {OBJECTS} objects survived the crash on disk");
    // The crash came after at least 10 fills reached the disk: some must be served from it.
    assert!(
        from_disk > 0,
        "nothing survived the crash: the disk tier was not used"
    );
}

#[tokio::test]
async fn route_query_modes_shape_the_key() {
    let origin = Origin::start("o").await;
    origin.set(cached("max-age=600"));
    let onair = Onair::start(Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[site.route]]\npath = \"/sorted/\"\nquery = \"sort\"\n\
         [[site.route]]\npath = \"/dropped/\"\nquery = \"drop\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    )))
    .await;
    get(onair.http, "a", "/sorted/x?b=2&a=1").await.unwrap();
    assert!(is_hit(&onair, "a", "/sorted/x?a=1&b=2").await);
    assert!(!is_hit(&onair, "a", "/sorted/x?a=1&b=3").await);
    get(onair.http, "a", "/dropped/x?utm_source=mail")
        .await
        .unwrap();
    assert!(is_hit(&onair, "a", "/dropped/x?utm_source=social").await);
    assert!(is_hit(&onair, "a", "/dropped/x").await);
    // The origin gets the query as the key holds it: what it answers is what is stored.
    let seen = origin
        .requests()
        .into_iter()
        .find(|h| h[":path"].starts_with("/dropped/"))
        .unwrap();
    assert_eq!(seen[":path"], "/dropped/x");
    let seen = origin
        .requests()
        .into_iter()
        .find(|h| h[":path"].starts_with("/sorted/"))
        .unwrap();
    assert_eq!(seen[":path"], "/sorted/x?a=1&b=2");
    // An admin purge by URL follows the route's query mode too.
    let out = purge(&onair, r#"{"urls": ["http://a/sorted/x?b=2&a=1"]}"#).await;
    assert_eq!(out["purged"], 1);
    assert!(!is_hit(&onair, "a", "/sorted/x?a=1&b=2").await);
    // Default: the query as sent is part of the key.
    get(onair.http, "a", "/plain?b=2&a=1").await.unwrap();
    assert!(!is_hit(&onair, "a", "/plain?a=1&b=2").await);
}

#[tokio::test]
async fn route_default_ttl_caches_what_the_origin_left_silent() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour::default());
    let onair = Onair::start(Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[site.route]]\npath = \"/feeds/\"\ndefault_ttl = \"30s\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    )))
    .await;
    get(onair.http, "a", "/feeds/rss").await.unwrap();
    assert!(is_hit(&onair, "a", "/feeds/rss").await);
    // Elsewhere, no heuristics: not stored.
    get(onair.http, "a", "/other").await.unwrap();
    assert!(!is_hit(&onair, "a", "/other").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_keeps_the_old_content_out() {
    // The newsroom purges a story while a reader's request is still fetching the old text: the
    // old text must not land in the cache (memory or disk) after the purge.
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let onair = Onair::start(with_disk(&origin, disk.path())).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    origin.set(Behaviour {
        gate: Some(gate.clone()),
        ..tagged(
            "election story-7",
            b"the old text, fetched before the purge",
        )
    });
    let http = onair.http;
    let reader = tokio::spawn(async move { get(http, "portal.vn", "/story/7").await.unwrap() });
    assert!(eventually(Duration::from_secs(5), || async { origin.hits() == 1 }).await);
    purge(&onair, r#"{"tags": ["story-7"]}"#).await;
    gate.add_permits(1);
    let r = reader.await.unwrap();
    assert_eq!(r.status, 200, "the reader in flight still gets its answer");
    assert_eq!(r.text(), "the old text, fetched before the purge");
    origin.set(tagged("election story-7", b"the correction"));
    let r = get(onair.http, "portal.vn", "/story/7").await.unwrap();
    assert_eq!(r.text(), "the correction", "{:?}", r.header("cache-status"));
    assert_eq!(origin.hits(), 2);
    assert!(is_hit(&onair, "portal.vn", "/story/7").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_evict_past_their_capacity_and_count_it() {
    let origin = Origin::start("o").await;
    let disk = tempfile::tempdir().unwrap();
    let mut setup = site_with_api(&origin);
    setup.body.push_str(&format!(
        "\n[cache]\nmemory = \"256KiB\"\ndisk_path = \"{}\"\ndisk = \"200KiB\"\n",
        disk.path().display()
    ));
    let onair = Onair::start(setup).await;
    origin.set(cached("max-age=600").with_pattern(40_000));
    for i in 0..12 {
        let path = format!("/obj/{i}");
        let r = get(onair.http, "a", &path).await.unwrap();
        assert_eq!(r.body, pattern_body(&path, 40_000));
    }
    // Memory evictions are counted by the tier's periodic maintenance.
    for tier in ["memory", "disk"] {
        let series = format!("onair_cache_evictions_total{{tier=\"{tier}\"}}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                onair.metric(&series).await.unwrap_or(0.0) >= 1.0
            })
            .await,
            "{series}"
        );
    }
    let on_disk = onair
        .metric("onair_cache_size_bytes{tier=\"disk\"}")
        .await
        .unwrap();
    assert!(on_disk <= 200.0 * 1024.0, "{on_disk} bytes on disk");
    assert_eq!(
        onair
            .metric("onair_cache_admissions_paused{tier=\"disk\"}")
            .await,
        Some(0.0)
    );
    // Whatever was evicted, every answer is still the origin's bytes.
    for i in 0..12 {
        let path = format!("/obj/{i}");
        let r = get(onair.http, "a", &path).await.unwrap();
        assert_eq!(r.body, pattern_body(&path, 40_000));
    }
}

#[tokio::test]
async fn fast_and_full_hit_paths_answer_alike() {
    // A plain GET of a fresh memory copy is answered before Pingora's cache machinery; a GET
    // with a (non-matching) conditional goes the full way. Readers must not tell them apart.
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("ETag".into(), "\"v1\"".into()),
            ("Surrogate-Key".into(), "edge-only".into()),
            ("X-Origin-Header".into(), "kept".into()),
        ],
        ..Behaviour::default()
    });
    let onair = Onair::start(site_with_api(&origin)).await;
    get(onair.http, "a", "/page").await.unwrap();
    let fast = get(onair.http, "a", "/page").await.unwrap();
    let full = request(
        onair.http,
        "GET",
        "a",
        "/page",
        &[("If-None-Match", "\"other\"")],
        Bytes::new(),
    )
    .await
    .unwrap();
    let head = request(onair.http, "HEAD", "a", "/page", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(origin.hits(), 1);
    let comparable = |r: &Resp| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "age" | "date"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(comparable(&fast), comparable(&full));
    assert_eq!(comparable(&fast), comparable(&head));
    assert_eq!(fast.body, full.body);
    assert!(head.body.is_empty());
    assert!(fast.header("age").is_some());
    assert!(fast.header("cache-status").unwrap().contains("; hit; ttl="));
    assert!(fast.header("surrogate-key").is_none());
    // Conditionals and ranges still work (they take the full path).
    let not_modified = request(
        onair.http,
        "GET",
        "a",
        "/page",
        &[("If-None-Match", "\"v1\"")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(not_modified.status, 304);
    let range = request(
        onair.http,
        "GET",
        "a",
        "/page",
        &[("Range", "bytes=1-2")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!((range.status, range.text().as_str()), (206, "el"));
    // Counted and logged as hits either way.
    let hits = "onair_requests_total{cache=\"hit\",code=\"2xx\",site=\"s\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(hits).await == Some(4.0)
        })
        .await,
        "{:?}",
        onair.metric(hits).await
    );
    // The 304 too; the log writer flushes in the background.
    let logged_hits = || {
        onair
            .access_log()
            .iter()
            .filter(|e| e["cache"] == "hit")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { logged_hits() == 5 }).await,
        "{} hits logged",
        logged_hits()
    );
}
