//! A fleet on 127.0.0.x: edges filling from consistent-hashed shields in front of one origin,
//! each node its own onair process. A miss storm over every edge costs the origin one request
//! per object; a shield that dies moves only its own keys (and they come back with it); a
//! region with no shield left falls back to the other region's, then to the origin; with the
//! origin gone too, readers get stale copies, announced.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

const ORIGIN_IP: [u8; 4] = [127, 0, 0, 10];

/// The shields each (phase, key) was answered through.
type Placements = HashMap<(usize, usize), HashSet<String>>;

/// A shield in `region` in front of `origin`, trusting the edges (all of 127.0.0.0/24).
async fn shield(id: &str, ip: [u8; 4], region: &str, origin: &Origin) -> Onair {
    let mut setup = Setup::new(format!(
        "[protect]\ntiers = [\"127.0.0.0/24\"]\n{}",
        one_site(origin.addr, "", "")
    ))
    .on(ip);
    setup.node_extra = format!("id = \"{id}\"\nregion = \"{region}\"\n");
    Onair::start(setup).await
}

/// The shield pools of an edge: every shield of `pools` as (pool name, [(shield, region)]),
/// each pool hashed and falling back to the next, the last to the origin.
fn edge_config(pools: &[(&str, Vec<(&Onair, &str)>)], origin: &Origin, health: bool) -> String {
    let health = if health {
        "health = { path = \"/\", interval = \"200ms\", timeout = \"1s\", fall = 1, rise = 1 }\n"
    } else {
        ""
    };
    let mut text = format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"{}\"\n",
        pools[0].0
    );
    for (i, (name, shields)) in pools.iter().enumerate() {
        let next = pools.get(i + 1).map_or("origin", |p| p.0);
        text.push_str(&format!(
            "[[pool]]\nname = \"{name}\"\nselect = \"hash\"\nshields = true\nfallback = \"{next}\"\nconnect_timeout = \"500ms\"\n{health}"
        ));
        for (shield, region) in shields {
            text.push_str(&format!(
                "  [[pool.origin]]\n  addr = \"{}\"\n  region = \"{region}\"\n",
                shield.http
            ));
        }
    }
    text.push_str(&format!(
        "[[pool]]\nname = \"origin\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ));
    text
}

async fn edge(id: &str, ip: [u8; 4], config: String) -> Onair {
    let mut setup = Setup::new(config).on(ip);
    setup.node_extra = format!("id = \"{id}\"\nregion = \"hn\"\n");
    Onair::start(setup).await
}

/// The shield an answer came through: the Via entry before the edge's own (the last).
fn shield_of(r: &Resp) -> Option<String> {
    let via = r.header("via")?;
    let hops: Vec<&str> = via.split(',').map(str::trim).collect();
    (hops.len() >= 2).then(|| hops[hops.len() - 2].trim_start_matches("1.1 ").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_storm_over_three_edges_costs_the_origin_one_request_per_object() {
    let origin = Origin::start_on("origin", ORIGIN_IP).await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=60".into())],
        delay: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let s1 = shield("shield-hn-1", [127, 0, 0, 21], "hn", &origin).await;
    let s2 = shield("shield-hn-2", [127, 0, 0, 22], "hn", &origin).await;
    let config = edge_config(
        &[("shields", vec![(&s1, "hn"), (&s2, "hn")])],
        &origin,
        false,
    );
    let mut edges = Vec::new();
    for i in 0..3u8 {
        edges.push(edge(&format!("edge-hn-{i}"), [127, 0, 0, 31 + i], config.clone()).await);
    }
    // 30 objects, each asked for 10 times at once, spread over the three edges.
    let mut asks = Vec::new();
    for object in 0..30 {
        for n in 0..10 {
            let addr = edges[(object + n) % 3].http;
            asks.push(tokio::spawn(async move {
                get(addr, "a", &format!("/storm/{object}"))
                    .await
                    .map(|r| r.status)
            }));
        }
    }
    for ask in asks {
        assert_eq!(ask.await.unwrap().unwrap(), 200);
    }
    assert_eq!(origin.proxied_hits(), 30, "one origin request per object");
    // Each object came through exactly one shield, and both shields took a share.
    let mut by_path: HashMap<String, HashSet<String>> = HashMap::new();
    for seen in origin.requests() {
        if seen.get("user-agent").map(String::as_str) == Some("onair-health") {
            continue;
        }
        let via = seen["via"].clone();
        let shield = via.rsplit(',').next().unwrap().trim().to_owned();
        by_path
            .entry(seen[":path"].clone())
            .or_default()
            .insert(shield);
    }
    assert_eq!(by_path.len(), 30);
    assert!(by_path.values().all(|s| s.len() == 1), "{by_path:?}");
    let used: HashSet<&String> = by_path.values().flatten().collect();
    assert_eq!(used.len(), 2, "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_dying_under_load_moves_only_its_keys_and_they_come_back() {
    let origin = Origin::start_on("origin", ORIGIN_IP).await;
    // Nothing is stored: every request goes edge -> shield -> origin, so the shield each key
    // goes through shows on every answer.
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "no-store".into())],
        ..Behaviour::default()
    });
    let mut s1 = shield("shield-hn-1", [127, 0, 0, 21], "hn", &origin).await;
    let s2 = shield("shield-hn-2", [127, 0, 0, 22], "hn", &origin).await;
    let config = edge_config(
        &[("shields", vec![(&s1, "hn"), (&s2, "hn")])],
        &origin,
        true,
    );
    let mut edges = Vec::new();
    for i in 0..3u8 {
        edges.push(edge(&format!("edge-hn-{i}"), [127, 0, 0, 31 + i], config.clone()).await);
    }
    const KEYS: usize = 40;
    let mut placed: Vec<String> = Vec::new();
    for key in 0..KEYS {
        let r = get(edges[key % 3].http, "a", &format!("/k/{key}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        placed.push(shield_of(&r).unwrap());
    }
    let on_s1 = placed.iter().filter(|s| *s == "shield-hn-1").count();
    assert!(on_s1 > 0 && on_s1 < KEYS, "{placed:?}");

    // A closed loop of readers on every edge, recording failures and where each key went.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let phase = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Placements>> = Arc::default();
    let mut readers = Vec::new();
    for r in 0..6 {
        let addr = edges[r % 3].http;
        let (stop, failures, answered, phase, seen) = (
            stop.clone(),
            failures.clone(),
            answered.clone(),
            phase.clone(),
            seen.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut key = r;
            while !stop.load(Ordering::SeqCst) {
                key = (key + 7) % KEYS;
                let at = phase.load(Ordering::SeqCst);
                match get(addr, "a", &format!("/k/{key}")).await {
                    Ok(resp) if resp.status == 200 => {
                        answered.fetch_add(1, Ordering::SeqCst);
                        if let Some(s) = shield_of(&resp) {
                            seen.lock().unwrap().entry((at, key)).or_default().insert(s);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s1.signal("KILL");
    // Phase 1 starts once the edges know (health checks every 200 ms); requests meanwhile
    // must still all succeed (retries move them on).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Between phases: answers now may come from before or after the restart.
    phase.store(3, Ordering::SeqCst);
    s1.restart().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed reader requests");
    assert!(answered.load(Ordering::SeqCst) > 100);
    let seen = seen.lock().unwrap();
    let mut moved = 0;
    for (key, home) in placed.iter().enumerate() {
        let during = seen.get(&(1, key)).cloned().unwrap_or_default();
        let after = seen.get(&(2, key)).cloned().unwrap_or_default();
        if home == "shield-hn-1" {
            moved += 1;
            assert!(
                during.iter().all(|s| s == "shield-hn-2"),
                "key {key} during: {during:?}"
            );
        } else {
            assert!(
                during.iter().all(|s| s == home),
                "key {key} moved: {during:?}"
            );
        }
        assert!(
            after.iter().all(|s| s == home),
            "key {key} after: {after:?}"
        );
    }
    assert_eq!(moved, on_s1, "only the dead shield's keys moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_shields_falls_back_then_serves_stale() {
    let origin = Origin::start_on("origin", ORIGIN_IP).await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=1".into())],
        ..Behaviour::default()
    });
    let hn = shield("shield-hn-1", [127, 0, 0, 21], "hn", &origin).await;
    let hcm = shield("shield-hcm-1", [127, 0, 0, 22], "hcm", &origin).await;
    let config = edge_config(
        &[
            ("shields-hn", vec![(&hn, "hn")]),
            ("shields-hcm", vec![(&hcm, "hcm")]),
        ],
        &origin,
        true,
    );
    let edge = edge("edge-hn-1", [127, 0, 0, 31], config).await;
    let r = get(edge.http, "a", "/a").await.unwrap();
    assert_eq!(shield_of(&r).as_deref(), Some("shield-hn-1"));

    hn.signal("KILL");
    let r = get(edge.http, "a", "/b").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        shield_of(&r).as_deref(),
        Some("shield-hcm-1"),
        "{:?}",
        r.headers
    );

    hcm.signal("KILL");
    let r = get(edge.http, "a", "/c").await.unwrap();
    assert_eq!(r.status, 200);
    // Straight from the origin: the edge is the only hop.
    assert_eq!(r.header("via"), Some("1.1 edge-hn-1"), "{:?}", r.headers);
    assert_eq!(origin.last_proxied().unwrap()["via"], "1.1 edge-hn-1");

    origin.kill();
    // /a is past its max-age by now (or soon): stale, and said so.
    let stale = eventually(Duration::from_secs(5), || async {
        get(edge.http, "a", "/a").await.is_ok_and(|r| {
            r.status == 200
                && crate::tiers::statuses(&r)
                    .last()
                    .is_some_and(|c| c.starts_with("edge-hn-1; hit; detail=stale-if-error"))
        })
    })
    .await;
    let r = get(edge.http, "a", "/a").await;
    assert!(stale, "{r:?}");
}
