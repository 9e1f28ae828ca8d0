//! Two caches in a row, as a fleet runs them: an edge onair filling from a shield onair in
//! front of the origin. Each cache adds its own Cache-Status entry (the closest to the reader
//! last), the reader's address reaches the origin through both, and an object's age counts
//! across the tiers.

use crate::common::*;

fn cached(extra: &[(&str, &str)]) -> Behaviour {
    let mut headers = vec![("Cache-Control".to_owned(), "max-age=60".to_owned())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Behaviour {
        headers,
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_filling_from_a_shield_keeps_both_tiers_honest() {
    let origin = Origin::start("origin").await;
    origin.set(cached(&[]));
    // The shield trusts the edges (loopback here) to say who the reader is.
    let mut shield_setup = Setup::new(format!(
        "[protect]\ntiers = [\"127.0.0.1/32\"]\n{}",
        one_site(origin.addr, "", "")
    ));
    shield_setup.node_extra = "id = \"shield-hn-1\"\n".into();
    let shield = Onair::start(shield_setup).await;
    let edge = Onair::start(Setup::new(one_site(shield.http, "", ""))).await;

    let r = get_from(edge.http, [127, 0, 0, 5], "/story", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // One entry per cache, the edge's (closest to the reader) last.
    let statuses = statuses(&r);
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses[0].starts_with("shield-hn-1; fwd=uri-miss"),
        "{statuses:?}"
    );
    assert!(
        statuses[1].starts_with("edge-test; fwd=uri-miss"),
        "{statuses:?}"
    );
    // The origin sees the reader first in X-Forwarded-For, through both tiers.
    let seen = origin.last_proxied().unwrap();
    assert!(seen["x-forwarded-for"].starts_with("127.0.0.5"), "{seen:?}");
    // A second reader: the edge answers, the shield and the origin see nothing.
    let r = get(edge.http, "a", "/story").await.unwrap();
    let last = r
        .headers
        .get_all("cache-status")
        .iter()
        .next_back()
        .unwrap();
    assert!(
        last.to_str().unwrap().starts_with("edge-test; hit"),
        "{:?}",
        r.headers
    );
    assert_eq!(origin.proxied_hits(), 1);
}

/// An object that aged upstream is fresh here only for what is left of its lifetime, and
/// readers are told its whole age.
#[tokio::test]
async fn age_from_upstream_counts_at_the_edge() {
    let origin = Origin::start("origin").await;
    origin.set(cached(&[("Age", "50")]));
    let edge = Onair::start(Setup::new(one_site(origin.addr, "", ""))).await;
    get(edge.http, "a", "/aged").await.unwrap();
    let r = get(edge.http, "a", "/aged").await.unwrap();
    let status = r.header("cache-status").unwrap_or("").to_owned();
    let ttl: i64 = status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(-1);
    assert!((0..=10).contains(&ttl), "fresh for {ttl} s: {status}");
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!((50..55).contains(&age), "Age {age}");
}

/// A 304 updates the stored copy's fields (all but the framing ones), so a field the origin
/// changed shows on the next hit (RFC 9111 §4.3.4).
#[tokio::test]
async fn a_304_updates_the_stored_fields() {
    let origin = Origin::start("origin").await;
    origin.set(cached(&[("ETag", "\"e1\""), ("X-Version", "1")]));
    let edge = Onair::start(Setup::new(one_site(origin.addr, "", ""))).await;
    get(edge.http, "a", "/page").await.unwrap();
    let out = edge
        .admin_post("/purge", r#"{"urls": ["http://a/page"], "soft": true}"#)
        .await;
    assert_eq!(out.status, 200);
    origin.set(Behaviour {
        status: 304,
        body: bytes::Bytes::new(),
        ..cached(&[("ETag", "\"e1\""), ("X-Version", "2")])
    });
    let r = get(edge.http, "a", "/page").await.unwrap();
    assert_eq!(r.text(), "hello");
    let r = get(edge.http, "a", "/page").await.unwrap();
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-length"), Some("5"));
}

/// A shield trusting the edges (loopback here) in front of `origin`, and an edge filling from it.
async fn shield_and_edge(origin: &Origin) -> (Onair, Onair) {
    // The edges connect from 127.0.0.1; other loopback addresses stand for readers.
    // 127.0.0.7 stands for a load balancer in front of the shield: trusted to say who the
    // reader is, but no tier.
    let mut shield_setup = Setup::new(format!(
        "[protect]\ntiers = [\"127.0.0.1/32\"]\ntrusted_proxies = [\"127.0.0.7/32\"]\n{}",
        one_site(origin.addr, "", "")
    ));
    shield_setup.node_extra = "id = \"shield-hn-1\"\n".into();
    let shield = Onair::start(shield_setup).await;
    let edge = Onair::start(Setup::new(one_site(shield.http, "shields = true", ""))).await;
    (shield, edge)
}

fn version(v: &str, extra: &[(&str, &str)]) -> Behaviour {
    Behaviour {
        body: bytes::Bytes::from(v.to_owned()),
        ..cached(extra)
    }
}

/// A purge that reached the edge and not the shield (sent to one node, or still on its way):
/// the edge must not fill again from the shield's copy made before it. It asks again with
/// no-cache, the shield revalidates with the origin, and the reader gets the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_purge_is_not_undone_by_the_shields_older_copy() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[("Surrogate-Key", "home story")]));
    let (shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");
    // A reader never sees the tags; the edge got them from the shield (it purges by them).
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.header("surrogate-key"), None, "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 1);

    origin.set(version("v2", &[("Surrogate-Key", "home story")]));
    let out = edge
        .admin_post("/purge", r#"{"urls": ["http://a/story"]}"#)
        .await;
    assert_eq!(out.status, 200, "{}", out.text());
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "v2", "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 2);
    assert!(
        edge.metric_becomes("onair_upstream_refetches_total", |v| v == 1.0)
            .await
    );
    // The new version is stored at both tiers: the next readers cost nothing.
    assert_eq!(edge_hit(&edge, "/story").await.text(), "v2");

    // The same by tag (the edge knows the tags from the shield's answer).
    origin.set(version("v3", &[("Surrogate-Key", "home story")]));
    let out = edge.admin_post("/purge", r#"{"tags": ["home"]}"#).await;
    assert_eq!(out.status, 200, "{}", out.text());
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "v3", "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 3);
    drop(shield);
}

/// A reader's no-cache does not reach past the edge: only a tier's own refetch makes the
/// shield revalidate with the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_no_cache_does_not_make_the_shield_ask_the_origin() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[]));
    let (shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/page").await.unwrap().text(), "v1");
    // Another edge, cold: its miss goes to the shield with the reader's headers.
    let edge2 = Onair::start(Setup::new(one_site(shield.http, "", ""))).await;
    let r = request(
        edge2.http,
        "GET",
        "a",
        "/page",
        &[("Cache-Control", "no-cache"), ("Pragma", "no-cache")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "v1");
    assert_eq!(origin.proxied_hits(), 1, "{:?}", r.headers);
    // A reader reaching the shield directly is no tier, whatever Via it writes.
    let r = get_from(
        shield.http,
        [127, 0, 0, 9],
        "/page",
        &[
            ("Cache-Control", "no-cache"),
            ("Via", "1.1 edge-test"),
            ("Onair-Refetch", "1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "v1");
    assert_eq!(r.header("surrogate-key"), None);
    assert_eq!(origin.proxied_hits(), 1);
    // Nor is a reader behind a trusted load balancer, which passes on the reader's Via.
    let r = get_from(
        shield.http,
        [127, 0, 0, 7],
        "/page",
        &[
            ("Cache-Control", "no-cache"),
            ("Via", "1.1 edge-test"),
            ("X-Forwarded-For", "198.51.100.7"),
            ("Onair-Refetch", "1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "v1");
    assert_eq!(r.header("surrogate-key"), None);
    assert_eq!(origin.proxied_hits(), 1);
}

/// GETs `path` through the edge and checks that the edge answered from its own copy.
async fn edge_hit(edge: &Onair, path: &str) -> Resp {
    let r = get(edge.http, "a", path).await.unwrap();
    assert!(
        statuses(&r).last().unwrap().starts_with("edge-test; hit"),
        "{:?}",
        r.headers
    );
    r
}

/// The origin's answer to a conditional request: unchanged, still `etag`.
fn not_modified(etag: &str) -> Behaviour {
    Behaviour {
        status: 304,
        body: bytes::Bytes::new(),
        ..cached(&[("ETag", etag)])
    }
}

/// The Cache-Status entries of an answer, farthest cache first.
pub fn statuses(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("cache-status")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(|e| e.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The origin is down and the shield serves a stale copy: it says so, the edge passes that on,
/// and the edge keeps the copy as stale (asking the shield again next time), not as fresh for
/// the object's whole lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shields_stale_answer_is_announced_and_stays_stale_at_the_edge() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[]));
    let (shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/page").await.unwrap().text(), "v1");
    // Only the shield's copy goes stale; this edge never had it.
    let out = shield
        .admin_post("/purge", r#"{"urls": ["http://a/page"], "soft": true}"#)
        .await;
    assert_eq!(out.status, 200);
    origin.kill();
    let edge2 = Onair::start(Setup::new(one_site(shield.http, "", ""))).await;
    for round in 0..2 {
        let r = get(edge2.http, "a", "/page").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "v1");
        let statuses = statuses(&r);
        assert_eq!(statuses.len(), 2, "round {round}: {statuses:?}");
        assert!(
            statuses[0].starts_with("shield-hn-1; hit; detail=stale-if-error"),
            "round {round}: {statuses:?}"
        );
        // Not a fresh hit at the edge the second time: it asked the shield again.
        assert!(
            !statuses[1].contains("hit; ttl"),
            "round {round}: {statuses:?}"
        );
    }
    drop(edge);
}

/// A shield in attack mode does not challenge its edges (they challenged their readers), but
/// still challenges a reader who reaches it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_under_attack_mode_serves_its_edges() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[]));
    let (shield, edge) = shield_and_edge(&origin).await;
    let r = shield
        .admin_post("/attack-mode", "{\"mode\": \"on\"}")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(edge.http, "a", "/through-the-edge").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_from(
        shield.http,
        [127, 0, 0, 9],
        "/direct",
        &[("Via", "1.1 edge-test"), ("Accept", "text/html")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.headers);
}

/// After a purge at the edge, a shield copy that the origin confirms unchanged (304) is as good
/// as new: the edge stores it again (its Age restarts at the revalidation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_copy_revalidated_after_an_edge_purge_is_stored_again() {
    let origin = Origin::start("origin").await;
    // Already 30 s old when the shield got it (the origin is a cache too): clearly older
    // than the purge to come, with no waiting.
    origin.set(version("v1", &[("ETag", "\"e1\""), ("Age", "30")]));
    let (_shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");
    origin.set(not_modified("\"e1\""));
    let out = edge
        .admin_post("/purge", r#"{"urls": ["http://a/story"]}"#)
        .await;
    assert_eq!(out.status, 200);
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "v1", "{:?}", r.headers);
    let age: u64 = r.header("age").unwrap_or("0").parse().unwrap();
    assert!(age < 5, "the revalidated copy is new: Age {age}");
    assert_eq!(origin.proxied_hits(), 2);
    edge_hit(&edge, "/story").await;
    assert_eq!(origin.proxied_hits(), 2);
}

/// A soft purge at the edge: the stale copy is revalidated through the shield, which
/// revalidates its own copy with the origin. A changed page comes back whole; an unchanged one
/// comes back as the stored copy, with its age restarted. Never a bare 304, never the old page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_at_the_edge_revalidates_through_the_shield() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[("ETag", "\"e1\""), ("Age", "30")]));
    let (_shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");

    // Changed at the origin.
    origin.set(version("v2", &[("ETag", "\"e2\"")]));
    let soft = r#"{"urls": ["http://a/story"], "soft": true}"#;
    assert_eq!(edge.admin_post("/purge", soft).await.status, 200);
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.text(), "v2", "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 2);
    assert_eq!(edge_hit(&edge, "/story").await.text(), "v2");

    // Unchanged at the origin: the 304 travels back and the stored copy is served.
    origin.set(not_modified("\"e2\""));
    assert_eq!(edge.admin_post("/purge", soft).await.status, 200);
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.text(), "v2", "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 3);
    assert_eq!(edge_hit(&edge, "/story").await.text(), "v2");
    assert_eq!(origin.proxied_hits(), 3);
}

/// With the origin down, a shield answers what it cannot serve with its maintenance page (503,
/// and Cache-Status says which tier gave up): edges whose pool is `shields = true` do not take
/// that for the shield failing, on a miss or when they serve their own stale copy instead, so
/// they keep it in service for the copies it still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_whose_origin_is_down_stays_in_service() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[]));
    let (shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/page").await.unwrap().text(), "v1");
    // Only the shield has this one.
    let r = get_from(shield.http, [127, 0, 0, 9], "/shield-only", &[])
        .await
        .unwrap();
    assert_eq!(r.text(), "v1");
    origin.kill();
    let direct = get_from(shield.http, [127, 0, 0, 9], "/never-fetched", &[])
        .await
        .unwrap();
    assert_eq!(direct.status, 503);
    assert_eq!(
        statuses(&direct),
        ["shield-hn-1; fwd=uri-miss; detail=origin-unavailable"]
    );
    // More maintenance answers in a row than passive health's failures (3).
    for i in 0..6 {
        let r = get(edge.http, "a", &format!("/never-fetched-{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{:?}", r.headers);
    }
    // The edge's own copy, soft-purged: revalidated through the shield with no-cache, which
    // the shield cannot do (and will not answer from stale after a purge): the edge serves
    // its stale copy, and the shield's 503 does not count against it either.
    let soft = r#"{"urls": ["http://a/page"], "soft": true}"#;
    assert_eq!(edge.admin_post("/purge", soft).await.status, 200);
    for _ in 0..6 {
        let r = get(edge.http, "a", "/page").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.headers);
        assert_eq!(r.text(), "v1");
    }
    let ejections = format!(
        "onair_origin_ejections_total{{origin=\"{}\",pool=\"p\"}}",
        shield.http
    );
    assert_eq!(edge.metric(&ejections).await.unwrap_or(0.0), 0.0);
    // The edge still asks the shield, which has this copy.
    let r = get(edge.http, "a", "/shield-only").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.text(), "v1");

    // A bare 503 (a balancer in front of a dead shield) is no maintenance answer: it ejects.
    let dead = Origin::start("balancer").await;
    dead.set(Behaviour {
        status: 503,
        ..version("down", &[])
    });
    let edge2 = Onair::start(Setup::new(one_site(dead.addr, "shields = true", ""))).await;
    for i in 0..4 {
        let r = get(edge2.http, "a", &format!("/x{i}")).await.unwrap();
        assert_eq!(r.status, 503);
    }
    let ejections = format!(
        "onair_origin_ejections_total{{origin=\"{}\",pool=\"p\"}}",
        dead.addr
    );
    assert!(edge2.metric_becomes(&ejections, |v| v >= 1.0).await);
}

/// Three tiers (edge → regional shield → central shield → origin), the purge at the edge only:
/// the edge's no-cache travels through every tier, so no tier's older copy undoes the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_at_the_edge_reaches_through_every_tier() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[("Age", "30")]));
    let shield = |upstream: std::net::SocketAddr, id: &str, pool: &str| {
        let mut setup = Setup::new(format!(
            "[protect]\ntiers = [\"127.0.0.1/32\"]\n{}",
            one_site(upstream, pool, "")
        ));
        setup.node_extra = format!("id = \"{id}\"\n");
        Onair::start(setup)
    };
    let central = shield(origin.addr, "central", "").await;
    let regional = shield(central.http, "regional", "shields = true").await;
    let edge = Onair::start(Setup::new(one_site(regional.http, "shields = true", ""))).await;
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");
    assert_eq!(origin.proxied_hits(), 1);

    origin.set(version("v2", &[]));
    let out = edge
        .admin_post("/purge", r#"{"urls": ["http://a/story"]}"#)
        .await;
    assert_eq!(out.status, 200);
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "v2", "{:?}", r.headers);
    assert_eq!(origin.proxied_hits(), 2);
    // Stored at every tier: the next reader costs nothing.
    let r = get(edge.http, "a", "/story").await.unwrap();
    assert_eq!(r.text(), "v2");
    assert_eq!(origin.proxied_hits(), 2);
    let r = get_from(regional.http, [127, 0, 0, 9], "/story", &[])
        .await
        .unwrap();
    assert_eq!(r.text(), "v2");
    assert_eq!(origin.proxied_hits(), 2);
}

/// An origin that is itself a cache sends an old Age on every answer: after a purge at the edge
/// the shield's copy is asked for again once, and the answer is stored however old it says it
/// is. Not a refetch on every request (the origin would take each one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_always_old_costs_one_refetch_per_purge() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[("Age", "30")]));
    let (_shield, edge) = shield_and_edge(&origin).await;
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");
    let out = edge
        .admin_post("/purge", r#"{"urls": ["http://a/story"]}"#)
        .await;
    assert_eq!(out.status, 200);
    for _ in 0..5 {
        assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "v1");
    }
    assert_eq!(origin.proxied_hits(), 2);
    assert!(
        edge.metric_becomes("onair_upstream_refetches_total", |v| v == 1.0)
            .await
    );
}

/// A route the edge does not cache, in front of a shield that does (and a pool not marked
/// `shields`): the reader's no-cache, even with the tiers' own refetch header, does not pass
/// through the edge to make the shield ask the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_no_cache_on_an_uncached_edge_route_stays_at_the_edge() {
    let origin = Origin::start("origin").await;
    origin.set(version("v1", &[]));
    let (shield, _) = shield_and_edge(&origin).await;
    let edge = Onair::start(Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n  [[site.route]]\n  path = \"/api/\"\n  cache = false\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        shield.http
    )))
    .await;
    for _ in 0..3 {
        let r = request(
            edge.http,
            "GET",
            "a",
            "/api/feed",
            &[
                ("Cache-Control", "no-cache"),
                ("Pragma", "no-cache"),
                ("Onair-Refetch", "1"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.text(), "v1");
    }
    // The shield cached it once and served the rest.
    assert_eq!(origin.proxied_hits(), 1);
}

/// Several edges refetch the same object from a shield at once (after a purge that reached them
/// all): the shield fetches it from the origin once, and the others take that fill, new enough
/// for them, rather than revalidating it again one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refetches_at_a_shield_cost_the_origin_one_request() {
    let origin = Origin::start("origin").await;
    origin.set(Behaviour {
        delay: std::time::Duration::from_millis(300),
        ..version("v1", &[])
    });
    let (shield, _edge) = shield_and_edge(&origin).await;
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let addr = shield.http;
        asks.spawn(async move {
            request(
                addr,
                "GET",
                "a",
                "/story",
                &[("Cache-Control", "no-cache"), ("Onair-Refetch", "1")],
                bytes::Bytes::new(),
            )
            .await
            .map(|r| r.text())
        });
    }
    while let Some(done) = asks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), "v1");
    }
    assert_eq!(origin.proxied_hits(), 1);
}
