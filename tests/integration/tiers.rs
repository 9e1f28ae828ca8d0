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
        "[protect]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
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
    let statuses: Vec<String> = r
        .headers
        .get_all("cache-status")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|e| e.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
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
