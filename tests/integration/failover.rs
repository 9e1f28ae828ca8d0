//! Origin choice and failover: tiers, regions, health checks, refused connections, and the
//! maintenance page when nothing can answer.

use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

fn tiered(primary: &Origin, backup: &Origin, extra_site: &str) -> String {
    format!(
        r#"
[[site]]
name = "portal"
hosts = ["*"]
pool = "p"
{extra_site}
[[pool]]
name = "p"
connect_timeout = "1s"
health = {{ path = "/healthz", interval = "200ms", timeout = "200ms", fall = 2, rise = 2 }}
  [[pool.origin]]
  addr = "{}"
  tier = 0
  [[pool.origin]]
  addr = "{}"
  tier = 1
"#,
        primary.addr, backup.addr
    )
}

#[tokio::test]
async fn refused_primary_fails_over_with_no_failed_request() {
    let primary = Origin::start("primary").await;
    let backup = Origin::start("backup").await;
    let onair = Onair::start(Setup::new(tiered(&primary, &backup, ""))).await;

    let mut from = Vec::new();
    for i in 0..120 {
        if i == 40 {
            primary.kill();
        }
        // POST too: a refused connection reached no origin, so any method may move on.
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = request(onair.http, method, "a", "/", &[], Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i} failed: {}", r.text());
        from.push(r.header("x-origin").unwrap().to_owned());
    }
    assert!(from[..40].iter().all(|o| o == "primary"));
    assert!(from[40..].iter().all(|o| o == "backup"));
    assert!(
        onair
            .metric("onair_failovers_total{pool=\"p\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // The health check marks the primary down, so requests stop trying it at all.
    let label = format!("onair_origin_up{{origin=\"{}\",pool=\"p\"}}", primary.addr);
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(&label).await == Some(0.0)
        })
        .await
    );
    let refused = format!(
        "onair_origin_requests_total{{origin=\"{}\",outcome=\"error\",pool=\"p\"}}",
        primary.addr
    );
    let errors_before = onair.metric(&refused).await.unwrap_or(0.0);
    for _ in 0..10 {
        assert_eq!(
            get(onair.http, "a", "/").await.unwrap().header("x-origin"),
            Some("backup")
        );
    }
    assert_eq!(onair.metric(&refused).await.unwrap_or(0.0), errors_before);

    // Failback once the primary passes `rise` checks.
    primary.revive().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(&label).await == Some(1.0)
        })
        .await
    );
    assert_eq!(
        get(onair.http, "a", "/").await.unwrap().header("x-origin"),
        Some("primary")
    );
}

#[tokio::test]
async fn unhealthy_primary_is_skipped_before_any_request() {
    let primary = Origin::start("primary").await;
    let backup = Origin::start("backup").await;
    // The primary answers but its health endpoint fails: it is taken out of rotation.
    primary.set(Behaviour {
        status: 500,
        ..Behaviour::default()
    });
    let onair = Onair::start(Setup::new(tiered(&primary, &backup, ""))).await;
    let label = format!("onair_origin_up{{origin=\"{}\",pool=\"p\"}}", primary.addr);
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(&label).await == Some(0.0)
        })
        .await
    );
    let before = primary.proxied_hits();
    for _ in 0..5 {
        assert_eq!(
            get(onair.http, "a", "/").await.unwrap().header("x-origin"),
            Some("backup")
        );
    }
    assert_eq!(primary.proxied_hits(), before);
}

#[tokio::test]
async fn everything_down_serves_the_maintenance_page() {
    let primary = Origin::start("primary").await;
    let backup = Origin::start("backup").await;
    let page = "<h1>Bảo trì — back soon</h1>";
    let site_extra = "maintenance_page = \"maintenance.html\"";
    let onair = Onair::start(
        Setup::new(tiered(&primary, &backup, site_extra)).with_file("maintenance.html", page),
    )
    .await;
    primary.kill();
    backup.kill();
    for method in ["GET", "POST", "HEAD"] {
        let r = request(onair.http, method, "a", "/x", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{method}");
        assert_eq!(r.header("retry-after"), Some("30"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        if method != "HEAD" {
            assert_eq!(r.text(), page);
        }
    }
    // Once an origin is back, the site is too.
    backup.revive().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(onair.http, "a", "/")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await
    );
}

#[tokio::test]
async fn builtin_maintenance_page_without_config() {
    let dead = Origin::start("dead").await;
    dead.kill();
    let onair = Onair::start(Setup::new(one_site(dead.addr, "", ""))).await;
    let r = get(onair.http, "a", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("Under maintenance"));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn local_region_first_within_a_tier() {
    let far = Origin::start("far").await;
    let near = Origin::start("near").await;
    let body = format!(
        r#"
[[site]]
name = "s"
hosts = ["*"]
pool = "p"
[[pool]]
name = "p"
  [[pool.origin]]
  addr = "{}"
  region = "sg"
  [[pool.origin]]
  addr = "{}"
  region = "hn"
"#,
        far.addr, near.addr
    );
    let mut setup = Setup::new(body);
    setup.node_extra = "region = \"hn\"".into();
    let onair = Onair::start(setup).await;
    for _ in 0..10 {
        assert_eq!(
            get(onair.http, "a", "/").await.unwrap().header("x-origin"),
            Some("near")
        );
    }
    // The local origin dies: the other region's origin of the same tier takes over.
    near.kill();
    assert_eq!(
        get(onair.http, "a", "/").await.unwrap().header("x-origin"),
        Some("far")
    );
}

#[tokio::test]
async fn a_client_that_gives_up_is_not_retried_elsewhere() {
    let slow = Origin::start("slow").await;
    let backup = Origin::start("backup").await;
    slow.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    let onair = Onair::start(Setup::new(tiered(&slow, &backup, ""))).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(300), get(onair.http, "a", "/")).await;
    assert!(gave_up.is_err(), "the slow origin answered too early");
    // The client's departure is not the origin's fault: nothing moves to the backup.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(backup.proxied_hits(), 0);
    let failovers = onair.metric("onair_failovers_total{pool=\"p\"}").await;
    assert_eq!(failovers, Some(0.0));
}

#[tokio::test]
async fn non_idempotent_request_is_not_replayed_after_the_origin_got_it() {
    let slow = Origin::start("slow").await;
    let other = Origin::start("other").await;
    slow.set(Behaviour {
        delay: Duration::from_secs(3),
        ..Behaviour::default()
    });
    let body = format!(
        r#"
[[site]]
name = "s"
hosts = ["*"]
pool = "p"
[[pool]]
name = "p"
read_timeout = "500ms"
  [[pool.origin]]
  addr = "{}"
  [[pool.origin]]
  addr = "{}"
  tier = 1
"#,
        slow.addr, other.addr
    );
    let onair = Onair::start(Setup::new(body)).await;
    // POST timed out after the origin received it: never sent again elsewhere.
    let r = request(
        onair.http,
        "POST",
        "a",
        "/",
        &[],
        Bytes::from_static(b"vote"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(other.proxied_hits(), 0);
    // GET is idempotent: it moves to the next origin.
    let r = get(onair.http, "a", "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("other"));
}

/// `select = "hash"`: every edge with the same config sends one object to one origin (a
/// shield), so a miss storm over many edges reaches each shield once per object; a shield that
/// goes down moves only its own objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_pools_send_each_object_to_one_origin_from_every_node() {
    let shields = [Origin::start("s1").await, Origin::start("s2").await];
    for s in &shields {
        s.set(Behaviour {
            headers: vec![("Cache-Control".into(), "max-age=600".into())],
            ..Behaviour::default()
        });
    }
    let body = format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nselect = \"hash\"\nconnect_timeout = \"300ms\"\n\
           [[pool.origin]]\n  addr = \"{}\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        shields[0].addr, shields[1].addr
    );
    let edges = [
        Onair::start(Setup::new(body.clone())).await,
        Onair::start(Setup::new(body.clone())).await,
    ];
    for edge in &edges {
        for i in 0..30 {
            let r = get(edge.http, "portal.vn", &format!("/obj/{i}"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
    }
    let seen_by = |s: &Origin| -> std::collections::HashSet<String> {
        s.requests()
            .into_iter()
            .map(|h| h[":path"].clone())
            .collect()
    };
    let (one, two) = (seen_by(&shields[0]), seen_by(&shields[1]));
    assert_eq!(one.len() + two.len(), 30, "an object reached both shields");
    assert!(one.is_disjoint(&two));
    assert!(
        !one.is_empty() && !two.is_empty(),
        "the hash used one shield only"
    );
    // Each edge asked each object once: 2 × 30 requests, 2 per object on its one shield.
    assert_eq!(shields[0].proxied_hits() + shields[1].proxied_hits(), 60);
    // The second shield goes: only its objects move (to the first), new misses keep working.
    shields[1].kill();
    let before = shields[0].proxied_hits();
    for i in 30..60 {
        let r = get(edges[0].http, "portal.vn", &format!("/obj/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(shields[0].proxied_hits(), before + 30);
    let (code, out) = check(&body.replace("select = \"hash\"", "select = \"random\""));
    assert_ne!(code, 0);
    assert!(out.contains("pool[0].select"), "{out}");
}

/// `fallback`: when no origin of a pool can be used, the request goes on to the fallback pool
/// (shields, then the origin), counted as a failover; chains are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_nothing_left_hands_over_to_its_fallback() {
    let shield = Origin::start("shield").await;
    let origin = Origin::start("origin").await;
    let body = format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"shields\"\n\
         [[pool]]\nname = \"shields\"\nselect = \"hash\"\nfallback = \"origin\"\nconnect_timeout = \"300ms\"\n\
           [[pool.origin]]\n  addr = \"{}\"\n\
         [[pool]]\nname = \"origin\"\nconnect_timeout = \"300ms\"\n\
           [[pool.origin]]\n  addr = \"{}\"\n",
        shield.addr, origin.addr
    );
    let onair = Onair::start(Setup::new(body.clone())).await;
    let r = get(onair.http, "a", "/one").await.unwrap();
    assert_eq!(r.header("x-origin"), Some("shield"));
    // The shield goes: its requests go on to the origin pool, not to the maintenance page.
    shield.kill();
    for i in 0..5 {
        let r = get(onair.http, "a", &format!("/two/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-origin"), Some("origin"));
    }
    assert!(
        onair
            .metric("onair_failovers_total{pool=\"shields\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    // Chains must name pools and must not loop.
    let looped = body.replace(
        "[[pool]]\nname = \"origin\"\n",
        "[[pool]]\nname = \"origin\"\nfallback = \"shields\"\n",
    );
    let (code, out) = check(&looped);
    assert_ne!(code, 0);
    assert!(out.contains("fallback chain comes back"), "{out}");
    let (code, out) = check(&body.replace("fallback = \"origin\"", "fallback = \"nowhere\""));
    assert_ne!(code, 0);
    assert!(out.contains("pool[0].fallback"), "{out}");
}
