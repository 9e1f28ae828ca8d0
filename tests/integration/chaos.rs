//! Origin chaos: one test per fault, each checking what the client sees and what the origins
//! see. Misbehaving origins are raw TCP servers (`RawOrigin`); well-behaved ones are `Origin`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::common::*;

/// One pool of two tier-0 origins (no active checks: passive health alone must cope), short
/// timeouts so that the tests run quickly.
fn pair(first: std::net::SocketAddr, second: std::net::SocketAddr, extra: &str) -> Setup {
    Setup::new(site_pool(
        &format!("connect_timeout = \"500ms\"\nread_timeout = \"500ms\"\n{extra}"),
        &[(first, ""), (second, "")],
    ))
}

/// Stores `/stored` ("stored copy"), already stale but allowed for stale-if-error: what a
/// refused miss falls back on.
async fn store_stale_copy(origin: &Origin, onair: &Onair) {
    origin.set(Behaviour {
        headers: vec![(
            "Cache-Control".into(),
            "max-age=0, stale-if-error=600".into(),
        )],
        body: Bytes::from_static(b"stored copy"),
        ..Behaviour::default()
    });
    get(onair.http, "a", "/stored").await.unwrap();
}

fn page(body: &'static [u8]) -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), "no-store".into())],
        body: Bytes::from_static(body),
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_origin_is_ejected_after_its_first_timeout() {
    let hung = RawOrigin::start(Fault::Hang).await;
    let good = Origin::start("good").await;
    good.set(page(b"fine"));
    let onair = Onair::start(pair(hung.addr, good.addr, "")).await;
    let mut slow = 0;
    for i in 0..40 {
        let started = Instant::now();
        let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "fine");
        if started.elapsed() >= Duration::from_millis(400) {
            slow += 1;
        }
    }
    // Round robin sends the first or second request to the hung origin; it times out, the
    // request moves on, and the origin is ejected: nobody else waits.
    assert!(slow <= 1, "{slow} requests waited for the hung origin");
    assert_eq!(hung.connections(), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .metric(&format!(
                    "onair_origin_ejections_total{{origin=\"{}\",pool=\"p\"}}",
                    hung.addr
                ))
                .await
                == Some(1.0)
        })
        .await
    );
    assert_eq!(
        onair
            .metric(&format!(
                "onair_origin_up{{origin=\"{}\",pool=\"p\"}}",
                hung.addr
            ))
            .await,
        Some(0.0)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&onair.admin("GET", "/status").await.body).unwrap();
    let states: Vec<&str> = status["pools"][0]["origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ejected", "up"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_fails_over() {
    let bad = RawOrigin::start(Fault::Garbage).await;
    let good = Origin::start("good").await;
    good.set(page(b"fine"));
    let onair = Onair::start(pair(bad.addr, good.addr, "")).await;
    for i in 0..20 {
        let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "request {i}");
    }
    // Three broken answers in a row eject it (passive.failures = 3).
    assert!(bad.connections() <= 3, "{} connections", bad.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_on_one_origin_of_two_is_invisible_to_readers() {
    let storm = Origin::start("storm").await;
    storm.set(Behaviour {
        status: 503,
        ..page(b"overloaded")
    });
    let good = Origin::start("good").await;
    good.set(page(b"fine"));
    let onair = Onair::start(pair(storm.addr, good.addr, "")).await;
    for i in 0..60 {
        let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "fine"), "request {i}");
    }
    // Retried on the good origin while it counted failures, then ejected.
    assert!(
        storm.hits() <= 3,
        "the storming origin saw {}",
        storm.hits()
    );
    // A POST is not retried after the origin got it: the reader sees the origin's answer.
    let (storm2, good2) = (Origin::start("storm2").await, Origin::start("good2").await);
    storm2.set(Behaviour {
        status: 503,
        ..page(b"overloaded")
    });
    good2.set(page(b"fine"));
    let onair2 = Onair::start(pair(storm2.addr, good2.addr, "")).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = request(
            onair2.http,
            "POST",
            "a",
            "/form",
            &[],
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_aborts_the_answer_and_caches_nothing() {
    let resetting = RawOrigin::start(Fault::ResetMidBody { len: 200_000 }).await;
    let setup = Setup::new(one_site(resetting.addr, "read_timeout = \"2s\"", ""));
    let onair = Onair::start(setup).await;
    for _ in 0..2 {
        let r = get(onair.http, "a", "/video.mp4").await;
        // The head went out with Content-Length 200000: the client must see the answer cut
        // short (an error, or fewer bytes), never a whole-looking body.
        if let Ok(r) = &r {
            assert_ne!(r.body.len(), 200_000);
        }
    }
    // Nothing was cached: the second request reached the origin again.
    assert_eq!(resetting.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_origin_is_cut_off_at_total_timeout() {
    let trickle = RawOrigin::start(Fault::Trickle {
        len: 1000,
        every: Duration::from_millis(200),
    })
    .await;
    let setup = Setup::new(one_site(
        trickle.addr,
        "read_timeout = \"1s\"\ntotal_timeout = \"2s\"",
        "",
    ));
    let onair = Onair::start(setup).await;
    let started = Instant::now();
    let r = get(onair.http, "a", "/slow").await;
    let took = started.elapsed();
    // read_timeout never fires (a byte every 200 ms); total_timeout does.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    if let Ok(r) = &r {
        assert!(r.body.len() < 1000, "a cut answer must not look whole");
    }
    // Not cached: the next request goes to the origin again.
    let _ = tokio::time::timeout(Duration::from_secs(1), get(onair.http, "a", "/slow")).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            trickle.connections() == 2
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_caps_a_miss_storm_at_the_origin() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(200),
        ..page(b"slow page")
    });
    let setup = Setup::new(one_site(
        origin.addr,
        "max_inflight = 8\nqueue = 300\nqueue_timeout = \"30s\"",
        "",
    ));
    let onair = Onair::start(setup).await;
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..200 {
        let http = onair.http;
        // Distinct URLs: the cache lock cannot coalesce them; only the cap protects the origin.
        storm.spawn(async move {
            get(http, "a", &format!("/miss/{i}"))
                .await
                .map(|r| r.status)
        });
    }
    let mut ok = 0;
    while let Some(r) = storm.join_next().await {
        if r.unwrap().unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "every reader waited in the queue and got the page");
    assert!(
        origin.peak_concurrency() <= 8,
        "the origin saw {} at once",
        origin.peak_concurrency()
    );
    assert_eq!(origin.peak_concurrency(), 8, "the cap was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_queue_readers_get_stale_or_503_and_the_origin_sees_nothing() {
    let origin = Origin::start("o").await;
    let setup = Setup::new(one_site(origin.addr, "max_inflight = 1\nqueue = 0", ""));
    let onair = Onair::start(setup).await;
    store_stale_copy(&origin, &onair).await;
    // Occupy the only slot with a slow request.
    origin.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..page(b"slow")
    });
    let http = onair.http;
    let slow = tokio::spawn(async move { get(http, "a", "/slow").await.unwrap() });
    assert!(eventually(Duration::from_secs(5), || async { origin.hits() == 2 }).await);
    let r = get(onair.http, "a", "/stored").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "stored copy");
    assert!(r.header("cache-status").unwrap().contains("stale"));
    let r = get(onair.http, "a", "/never-stored").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        origin.hits(),
        2,
        "the origin saw nothing of the refused requests"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .metric("onair_origin_rejected_total{pool=\"p\",reason=\"queue_full\"}")
                .await
                == Some(2.0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_node_serves_hits_and_sheds_misses() {
    let origin = Origin::start("o").await;
    let setup = Setup::new(format!(
        "[protect]\nshed_at = 3\n{}",
        one_site(origin.addr, "", "")
    ));
    let onair = Onair::start(setup).await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: Bytes::from_static(b"fresh copy"),
        ..Behaviour::default()
    });
    get(onair.http, "a", "/hit").await.unwrap();
    store_stale_copy(&origin, &onair).await;
    // Three misses held at the origin: the node is at shed_at.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    origin.set(Behaviour {
        gate: Some(gate.clone()),
        ..page(b"slow")
    });
    let http = onair.http;
    let slow: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get(http, "a", &format!("/slow/{i}")).await.unwrap() }))
        .collect();
    assert!(eventually(Duration::from_secs(5), || async { origin.hits() == 5 }).await);
    // Hits go on; a miss with a stored copy gets it, one without gets 503; the origin sees
    // neither.
    let r = get(onair.http, "a", "/hit").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "fresh copy"));
    let r = get(onair.http, "a", "/stored").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "stored copy"));
    assert!(r.header("cache-status").unwrap().contains("stale"));
    let r = get(onair.http, "a", "/new").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(origin.hits(), 5, "nothing shed reached the origin");
    gate.add_permits(100);
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    // Back under the mark, misses go through.
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(http, "a", "/new").await.is_ok_and(|r| r.status == 200)
        })
        .await
    );
    assert_eq!(
        onair
            .metric("onair_origin_rejected_total{pool=\"p\",reason=\"shed\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_one_config_a_node_loses_its_local_region() {
    // One origin per region on its own loopback address; every node runs the same config and
    // is told its region on the command line.
    let hn = Origin::start_on("hn", [127, 0, 0, 1]).await;
    let sg = Origin::start_on("sg", [127, 0, 0, 2]).await;
    let fra = Origin::start_on("fra", [127, 0, 0, 3]).await;
    for o in [&hn, &sg, &fra] {
        o.set(page(b"page"));
    }
    let fleet = site_pool(
        "connect_timeout = \"500ms\"\n\
         health = { path = \"/\", interval = \"200ms\", timeout = \"200ms\", fall = 2, rise = 2 }",
        &[
            (hn.addr, "region = \"hn\""),
            (sg.addr, "region = \"sg\""),
            (fra.addr, "region = \"fra\""),
        ],
    );
    let node_hn = Onair::start(Setup::new(fleet.clone()).with_args(&["--region", "hn"])).await;
    let node_sg = Onair::start(Setup::new(fleet).with_args(&["--region", "sg"])).await;
    let from = |r: &Resp| r.header("x-origin").unwrap_or("").to_owned();
    for i in 0..10 {
        let r = get(node_hn.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!(from(&r), "hn");
        let r = get(node_sg.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!(from(&r), "sg");
    }
    // The Hanoi region is cut off: its node keeps answering from the other regions, without
    // a failed request; the Singapore node does not notice.
    hn.kill();
    let mut elsewhere = std::collections::HashSet::new();
    for i in 0..30 {
        let r = get(node_hn.http, "a", &format!("/after/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}");
        elsewhere.insert(from(&r));
        let r = get(node_sg.http, "a", &format!("/after/{i}"))
            .await
            .unwrap();
        assert_eq!(from(&r), "sg");
    }
    assert_eq!(
        elsewhere,
        ["sg".to_owned(), "fra".to_owned()].into(),
        "both remote regions share the load"
    );
    // Hanoi comes back: after `rise` good checks its node fails back to it.
    hn.revive().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(node_hn.http, "a", "/back")
                .await
                .is_ok_and(|r| from(&r) == "hn")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_mid_stream_is_cut_and_not_cached() {
    let stalled = RawOrigin::start(Fault::StallMidBody { len: 100_000 }).await;
    let setup = Setup::new(one_site(stalled.addr, "read_timeout = \"1s\"", ""));
    let onair = Onair::start(setup).await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(onair.http, "a", "/clip").await;
        // Cut after read_timeout: the reader is not left hanging, and a cut answer never
        // looks whole.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        if let Ok(r) = &r {
            assert!(r.body.len() < 100_000);
        }
    }
    assert_eq!(stalled.connections(), 2, "the partial body was cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_tier_down_then_back_fails_over_and_back() {
    let (p1, p2) = (Origin::start("p1").await, Origin::start("p2").await);
    let backup = Origin::start("backup").await;
    for o in [&p1, &p2, &backup] {
        o.set(page(b"page"));
    }
    let setup = Setup::new(site_pool(
        "connect_timeout = \"500ms\"\n\
         health = { path = \"/\", interval = \"200ms\", timeout = \"200ms\", fall = 2, rise = 2 }",
        &[(p1.addr, ""), (p2.addr, ""), (backup.addr, "tier = 1")],
    ));
    let onair = Onair::start(setup).await;
    let from = |r: &Resp| r.header("x-origin").unwrap_or("").to_owned();
    // The whole primary tier goes: no failed request, the backup tier answers.
    p1.kill();
    p2.kill();
    for i in 0..20 {
        let r = get(onair.http, "a", &format!("/down/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(from(&r), "backup");
    }
    // One primary comes back: after `rise` good checks, traffic fails back to tier 0.
    p1.revive().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(onair.http, "a", "/back")
                .await
                .is_ok_and(|r| from(&r) == "p1")
        })
        .await
    );
    let hits = backup.proxied_hits();
    for i in 0..10 {
        let r = get(onair.http, "a", &format!("/after/{i}")).await.unwrap();
        assert_eq!(from(&r), "p1");
    }
    assert_eq!(
        backup.proxied_hits(),
        hits,
        "the backup serves only while tier 0 is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() {
    let dead = Origin::start("dead").await;
    let good = Origin::start("good").await;
    good.set(page(b"fine"));
    dead.kill();
    // No passive ejection and no retry share: only the floor of 10 retries per 10 s remains.
    let onair = Onair::start(pair(
        dead.addr,
        good.addr,
        "retry_budget = 0.0\npassive = { failures = 0 }",
    ))
    .await;
    let mut failed = 0;
    let started = Instant::now();
    for i in 0..40 {
        let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
        if r.status != 200 {
            assert_eq!(r.status, 503, "request {i}");
            failed += 1;
        }
    }
    // Requests that met the dead origin first: ten were retried on the good one, the rest
    // were refused a retry and got the maintenance page.
    let series =
        |result: &str| format!("onair_origin_retries_total{{pool=\"p\",result=\"{result}\"}}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(&series("over_budget")).await == Some(f64::from(failed))
        })
        .await,
        "{failed} failed, {:?} over budget",
        onair.metric(&series("over_budget")).await
    );
    // Ten per 10 s window: exactly ten when the 40 requests fit in one window (they take well
    // under a second alone), ten more per window a loaded test machine made them span.
    let windows = started.elapsed().as_secs() / 10 + 1;
    let allowed = onair.metric(&series("allowed")).await.unwrap_or(0.0);
    assert!(
        allowed >= 10.0 && allowed <= 10.0 * windows as f64,
        "{allowed} retries allowed over {windows} window(s)"
    );
    assert!(failed > 0);
}
