//! Protection: per-client rate limits end to end (429 with Retry-After, other clients
//! unaffected, per route), and client identity through trusted proxies.

use std::time::Duration;

use crate::common::*;

fn limited(origin: &Origin, protect: &str, route: &str) -> Setup {
    Setup::new(format!(
        "[protect]\n{protect}\n[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n{route}\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ))
}

async fn statuses(
    onair: &Onair,
    from: [u8; 4],
    path: &str,
    n: usize,
    xff: Option<&str>,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
        out.push(
            get_from(onair.http, from, path, &headers)
                .await
                .unwrap()
                .status,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_rate_a_client_gets_429_and_others_are_unaffected() {
    let origin = Origin::start("o").await;
    // 1 per minute with a burst of 3: a fast client gets exactly 3 through (a slow machine
    // cannot let a fourth in by taking a second over the six requests).
    let onair = Onair::start(limited(&origin, "rate = \"1/m\"\nburst = 3", "")).await;
    let first = statuses(&onair, [127, 0, 0, 1], "/", 6, None).await;
    assert_eq!(first, [200, 200, 200, 429, 429, 429]);
    let r = get_from(onair.http, [127, 0, 0, 1], "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Another client has its own allowance.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 2], "/", 3, None).await,
        [200, 200, 200]
    );
    // The origin saw only what was let through.
    assert_eq!(origin.proxied_hits(), 6);
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .metric("onair_rate_limited_total{reason=\"node\"}")
                .await
                == Some(4.0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_be_stricter() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "",
        "  [[site.route]]\n  path = \"/api/\"\n  rate = \"1/m\"\n  burst = 2\n",
    ))
    .await;
    assert_eq!(
        statuses(&onair, [127, 0, 0, 1], "/api/live", 4, None).await,
        [200, 200, 429, 429]
    );
    // The rest of the site has no limit.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 1], "/page", 10, None).await,
        [200; 10]
    );
    let r = get_from(onair.http, [127, 0, 0, 1], "/api/live", &[])
        .await
        .unwrap();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry > 20,
        "a minute's rate: wait tens of seconds, not {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_x_forwarded_for() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "trusted_proxies = [\"127.0.0.1/32\"]\nrate = \"1/m\"\nburst = 2",
        "",
    ))
    .await;
    // Through the load balancer (127.0.0.1): each reader has its own allowance.
    for reader in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            statuses(&onair, [127, 0, 0, 1], "/", 3, Some(reader)).await,
            [200, 200, 429],
            "{reader}"
        );
    }
    // A forged entry on the left changes nothing: the rightmost untrusted one counts.
    assert_eq!(
        statuses(
            &onair,
            [127, 0, 0, 1],
            "/",
            1,
            Some("203.0.113.9, 198.51.100.1")
        )
        .await,
        [429]
    );
    // From a peer that is not trusted, the header is ignored: the peer is the client.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 3], "/", 3, Some("198.51.100.77")).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&onair, [127, 0, 0, 3], "/", 1, Some("198.51.100.78")).await,
        [429],
        "a new forged address does not buy a new allowance"
    );
    // The origin sees the chain with the hop onair got the request from appended.
    let seen = origin.last_proxied().unwrap();
    assert_eq!(seen["x-forwarded-for"], "198.51.100.77, 127.0.0.3");
}
