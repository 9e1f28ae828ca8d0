//! Scheduled releases on real nodes and a real NATS server: content under embargo until its
//! time on every node and by every path, then released by each node at that instant with the
//! purges it carries; cancelled, rescheduled, forged, and kept across a restart.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::common::nats::{connected_node, fleet_cli, fleet_node, operator_keys, Nats};
use crate::common::*;

/// RFC 3339 (UTC) of `t`.
fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn page(body: &'static str) -> Behaviour {
    Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Surrogate-Key".into(), "home".into()),
        ],
        body: bytes::Bytes::from_static(body.as_bytes()),
        ..Behaviour::default()
    }
}

/// How many times the origin was asked for `path` (its query aside).
fn asked(origin: &Origin, path: &str) -> usize {
    origin
        .requests()
        .iter()
        .filter(|r| r[":path"] == path)
        .count()
}

/// `secs` from now, to the millisecond: a release's time as nodes read it (they keep
/// milliseconds), so that "not before its time" is judged against the same instant.
fn in_secs(secs: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_millis(now.as_millis() as u64 + secs * 1000)
}

/// The fleet's warm secret in the tests.
const SECRET: &str = "warm-secret-0123456789";

/// A shield in front of `origin` (trusting its tiers) and an edge behind it, both with the
/// fleet's warm secret.
async fn shield_and_edge(origin: &Origin) -> (Onair, Onair) {
    let release_keys = "[release]\nwarm_secret_file = \"warm.secret\"\n";
    let mut shield_setup = Setup::new(format!(
        "{release_keys}[protect]\ntiers = [\"127.0.0.0/24\"]\n{}",
        one_site(origin.addr, "", "")
    ))
    .with_file("warm.secret", SECRET);
    shield_setup.node_extra = "id = \"shield-hn-1\"\n".into();
    let shield = Onair::start(shield_setup).await;
    let edge = Onair::start(
        Setup::new(format!(
            "{release_keys}{}",
            one_site(shield.http, "shields = true", "")
        ))
        .with_file("warm.secret", SECRET),
    )
    .await;
    (shield, edge)
}

/// A fleet operation's status as a node's admin API tells it.
async fn op_status(n: &Onair, seq: u64) -> serde_json::Value {
    let r = n.admin("GET", &format!("/fleet/ops/{seq}")).await;
    serde_json::from_slice(&r.body).unwrap_or_default()
}

/// The article's answers by every path a reader (or a leak hunter) may take.
async fn every_path(n: &Onair) -> Vec<(String, u16, Option<String>)> {
    let mut seen = Vec::new();
    for (method, path, headers) in [
        ("GET", "/vankien/nghi-quyet", vec![]),
        ("HEAD", "/vankien/nghi-quyet", vec![]),
        ("GET", "/vankien/nghi-quyet?utm=x", vec![]),
        ("GET", "//vankien/./nghi-quyet", vec![]),
        ("GET", "/vankien/nghi-quyet", vec![("Range", "bytes=0-3")]),
        (
            "GET",
            "/vankien/nghi-quyet",
            vec![("If-None-Match", "\"x\"")],
        ),
        // Would match any stored copy: never a 304 that confirms one.
        ("GET", "/vankien/nghi-quyet", vec![("If-None-Match", "*")]),
        ("GET", "/media/nq/1.jpg", vec![]),
    ] {
        let r = request(n.http, method, "a", path, &headers, bytes::Bytes::new())
            .await
            .unwrap();
        seen.push((
            format!("{method} {path} {headers:?}"),
            r.status,
            r.header("cache-control").map(str::to_owned),
        ));
    }
    seen
}

/// A release published by the CLI with no node involved: before its time the article, a
/// prefix of images and every spelling of them answer 404 (no-store) on every node and the
/// origin sees nothing of them; at its time every node serves them (the skew is printed),
/// and the home page it purges is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_embargoed_everywhere_until_its_time_then_out_on_every_node() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(page("v1"));
    let mut nodes = Vec::new();
    for (id, region) in [
        ("edge-hn-1", "hn"),
        ("edge-hn-2", "hn"),
        ("edge-hcm-1", "hcm"),
    ] {
        let n = connected_node(id, region, &nats.url, &public, origin.addr).await;
        assert_eq!(get(n.http, "a", "/").await.unwrap().text(), "v1");
        nodes.push(n);
    }
    let at = in_secs(4);
    let answer = fleet_cli(
        &nats.url,
        &operator,
        &[
            "release",
            "--id",
            "vankien",
            "--at",
            &rfc3339(at),
            "--embargo-url",
            "http://a/vankien/nghi-quyet",
            "--embargo-prefix",
            "http://a/media/nq/",
            "--purge-tags",
            "home",
        ],
    );
    assert_eq!(answer["release"], "vankien", "{answer}");
    origin.set(page("v2"));
    for n in &nodes {
        assert!(
            n.metric_becomes("onair_releases_pending", |v| v == 1.0)
                .await
        );
        for (how, status, cache_control) in every_path(n).await {
            assert_eq!(status, 404, "{how}");
            assert_eq!(cache_control.as_deref(), Some("no-store"), "{how}");
        }
        // The home page is the old one until the release.
        assert_eq!(get(n.http, "a", "/").await.unwrap().text(), "v1");
        assert!(n.metric("onair_release_embargo_hits_total").await.unwrap() >= 7.0);
        let logged = n.access_log();
        assert!(
            logged
                .iter()
                .any(|l| l["embargo"] == "vankien" && l["status"] == 404),
            "{logged:?}"
        );
    }
    let early = origin
        .requests()
        .iter()
        .filter(|r| {
            let path = r
                .get(":path")
                .or_else(|| r.get("path"))
                .cloned()
                .unwrap_or_default();
            path.contains("vankien") || path.contains("media")
        })
        .count();
    assert_eq!(early, 0, "the origin saw the embargoed content asked for");

    // At its time: each node serves it, within a bound.
    let mut late = Vec::new();
    for n in &nodes {
        let started = Instant::now();
        loop {
            let r = get(n.http, "a", "/vankien/nghi-quyet").await.unwrap();
            if r.status == 200 {
                let after = SystemTime::now().duration_since(at).unwrap_or_default();
                late.push(after);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The purge at the release: the home page is the new one everywhere.
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(5), || async {
                get(n.http, "a", "/").await.unwrap().text() == "v2"
            })
            .await
        );
        assert!(
            n.metric_becomes("onair_releases_pending", |v| v == 0.0)
                .await
        );
        let r = n.admin("GET", "/release/vankien").await;
        let entry: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(entry["state"], "released", "{entry}");
    }
    println!("served after the release time by: {late:?}");
}

/// Cancelled before its time: nothing is held back any more; a release changed to an earlier
/// time comes out at the new time; a release signed by someone else changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_rescheduled_and_forged_releases() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let (intruder, _) = operator_keys(keys.path(), "intruder");
    let origin = Origin::start("origin").await;
    origin.set(page("v1"));
    let n = connected_node("edge-hn-1", "hn", &nats.url, &public, origin.addr).await;
    // A copy cached before any release names it (a draft).
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");
    origin.set(page("v2"));
    let later = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let release = |key: &Path, id: &str, at: &str| {
        fleet_cli(
            &nats.url,
            key,
            &[
                "release",
                "--id",
                id,
                "--at",
                at,
                "--embargo-url",
                "http://a/story",
            ],
        )
    };
    // Forged: nothing held back.
    release(&intruder, "forged", &later);
    release(&operator, "real", &later);
    assert!(
        n.metric_becomes("onair_releases_pending", |v| v == 1.0)
            .await
    );
    let forged = "onair_fleet_ops_total{kind=\"unknown\",result=\"forged\"}";
    assert_eq!(n.metric(forged).await, Some(1.0));
    assert_eq!(get(n.http, "a", "/story").await.unwrap().status, 404);
    // Cancelled: nothing of it comes out; the origin decides again, asked afresh (not the
    // draft cached before the release was known, nor the copy it warmed past the origin's
    // own embargo).
    let warm_file = keys.path().join("warm.txt");
    std::fs::write(&warm_file, "http://a/story\n").unwrap();
    let soonish = rfc3339(SystemTime::now() + Duration::from_secs(300));
    fleet_cli(
        &nats.url,
        &operator,
        &[
            "release",
            "--id",
            "real",
            "--at",
            &soonish,
            "--embargo-url",
            "http://a/story",
            "--warm",
            warm_file.to_str().unwrap(),
        ],
    );
    assert!(
        n.metric_becomes("onair_release_warm_objects{state=\"warmed\"}", |v| v == 1.0)
            .await
    );
    let warmed = asked(&origin, "/story");
    fleet_cli(&nats.url, &operator, &["release", "--cancel", "real"]);
    assert!(
        n.metric_becomes("onair_releases_pending", |v| v == 0.0)
            .await
    );
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v2");
    assert_eq!(
        asked(&origin, "/story"),
        warmed + 1,
        "served the warmed copy"
    );
    // Another, then moved earlier: out at the new time.
    release(&operator, "moved", &later);
    assert!(
        n.metric_becomes("onair_releases_pending", |v| v == 1.0)
            .await
    );
    assert_eq!(get(n.http, "a", "/other").await.unwrap().status, 200);
    let soon = in_secs(2);
    release(&operator, "moved", &rfc3339(soon));
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(n.http, "a", "/story").await.unwrap().status == 200
        })
        .await
    );
    assert!(SystemTime::now() >= soon);
}

/// The admin API schedules a release on this node alone (no scope) and lists it; the embargo
/// outlives a restart (SIGKILL) of the node; a node away at the release time releases when it
/// is back, with its purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_outlives_a_restart_and_a_node_away_releases_when_back() {
    let origin = Origin::start("origin").await;
    origin.set(page("v1"));
    let mut n = Onair::start(Setup::new(one_site(origin.addr, "", ""))).await;
    assert_eq!(get(n.http, "a", "/").await.unwrap().text(), "v1");
    let at = in_secs(5);
    let body = format!(
        r#"{{"id": "nq", "at": "{}", "embargo": {{"urls": ["http://a/story"]}},
            "purge": {{"tags": ["home"]}}}}"#,
        rfc3339(at)
    );
    let r = n.admin_post("/release", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = n.admin("GET", "/release").await;
    assert!(r.text().contains("\"nq\""), "{}", r.text());
    // Bad ones: refused with the reason, nothing scheduled.
    let r = n
        .admin_post(
            "/release",
            r#"{"at": "tomorrow", "embargo": {"urls": ["http://a/x"]}}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("RFC 3339"), "{}", r.text());

    n.restart().await;
    assert_eq!(get(n.http, "a", "/story").await.unwrap().status, 404);
    // The site's other names, a port in the Host header: the same site, held back too.
    for host in ["a:1", "b", "A."] {
        assert_eq!(
            get(n.http, host, "/story").await.unwrap().status,
            404,
            "{host}"
        );
    }
    origin.set(page("v2"));
    // Killed across the release time, back after it: released at once, purges done.
    n.signal("KILL");
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    n.restart().await;
    assert_eq!(get(n.http, "a", "/story").await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(n.http, "a", "/").await.unwrap().text() == "v2"
        })
        .await
    );
}

/// A release book lost with an unreadable file comes back from the fleet: the node reads the
/// operation stream again, and the embargo holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_release_book_comes_back_from_the_fleet() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(page("v1"));
    let mut n = connected_node("edge-hn-1", "hn", &nats.url, &public, origin.addr).await;
    let later = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    fleet_cli(
        &nats.url,
        &operator,
        &[
            "release",
            "--id",
            "r",
            "--at",
            &later,
            "--embargo-url",
            "http://a/story",
        ],
    );
    assert!(
        n.metric_becomes("onair_releases_pending", |v| v == 1.0)
            .await
    );
    n.signal("KILL");
    let book = n.dir.path().join("state/releases.json");
    std::fs::write(&book, "{").unwrap();
    n.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            get(n.http, "a", "/story").await.unwrap().status == 404
        })
        .await,
        "{}",
        n.stderr()
    );
    assert!(n.dir.path().join("state/releases.json.bad").exists());
}

/// An origin that marks a response `Onair-Embargo-Until` keeps it back on its own: the edge
/// stores it (one origin request) but answers the embargo answer by every path until then,
/// never showing the header; from then on it serves the stored copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_marked_embargo_is_stored_but_held_back_until_its_time() {
    let origin = Origin::start("origin").await;
    let until = SystemTime::now() + Duration::from_secs(3);
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Onair-Embargo-Until".into(), httpdate::fmt_http_date(until)),
            ("ETag".into(), "\"x\"".into()),
        ],
        body: bytes::Bytes::from_static(b"the resolution"),
        ..Behaviour::default()
    });
    // This site answers the embargo with 451 instead of the default 404.
    let site = one_site(origin.addr, "", "").replacen(
        "pool = \"p\"\n",
        "pool = \"p\"\nembargo_status = 451\n",
        1,
    );
    let n = Onair::start(Setup::new(site)).await;
    for _ in 0..3 {
        for (how, status, cache_control) in every_path(&n).await {
            if how.contains("/vankien/nghi-quyet") {
                assert_eq!(status, 451, "{how}");
                assert_eq!(cache_control.as_deref(), Some("no-store"), "{how}");
            }
        }
    }
    let r = get(n.http, "a", "/vankien/nghi-quyet").await.unwrap();
    assert_eq!(r.text(), "not found\n");
    assert!(r.header("onair-embargo-until").is_none());
    // Stored once (the query variant is another object), never asked for again.
    assert_eq!(asked(&origin, "/vankien/nghi-quyet"), 1);
    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    for _ in 0..2 {
        // The second one from the fast hit path.
        let r = get(n.http, "a", "/vankien/nghi-quyet").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "the resolution");
        assert!(r.header("onair-embargo-until").is_none());
    }
    assert_eq!(
        asked(&origin, "/vankien/nghi-quyet"),
        1,
        "served from the copy stored before the time"
    );
}

/// Prewarm through the tiers: an edge and its shield, each holding the release, fetch its warm
/// list ahead of the time (the edge through the shield, with the fleet's warm secret, which the
/// origin sees too); the origin is asked once per object; readers get 404 until the time, and a
/// burst of readers at the time costs the origin nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_warms_through_the_tiers_and_costs_the_origin_nothing_at_its_time() {
    let origin = Origin::start("origin").await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: bytes::Bytes::from_static(&[b'x'; 4096]),
        ..Behaviour::default()
    });
    let (shield, edge) = shield_and_edge(&origin).await;
    let at = in_secs(6);
    let objects = ["/vk/article", "/vk/photo.jpg", "/vk/video/seg-1.ts"];
    let warm: Vec<String> = objects.iter().map(|p| format!("\"http://a{p}\"")).collect();
    let body = format!(
        r#"{{"id": "vk", "at": "{}", "embargo": {{"prefix": "http://a/vk/"}},
            "warm": [{}]}}"#,
        rfc3339(at),
        warm.join(", ")
    );
    for n in [&shield, &edge] {
        let r = n.admin_post("/release", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            let r = edge.admin("GET", "/release/vk").await;
            let entry: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            entry["warm"]["warmed"] == 3
        })
        .await,
        "{}",
        edge.admin("GET", "/release/vk").await.text()
    );
    assert!(
        edge.metric_becomes("onair_release_warm_objects{state=\"warmed\"}", |v| v == 3.0)
            .await
    );
    let ahead_counts: Vec<usize> = objects.iter().map(|p| asked(&origin, p)).collect();
    for path in objects {
        assert_eq!(asked(&origin, path), 1, "{path}");
        for n in [&shield, &edge] {
            assert_eq!(get(n.http, "a", path).await.unwrap().status, 404, "{path}");
        }
    }
    // The access log tells warm fetches from readers, and never holds the secret.
    assert!(
        eventually(Duration::from_secs(5), || async {
            edge.access_log()
                .iter()
                .any(|l| l["path"] == "/vk/article" && l["warm"] == true && l["status"] == 200)
        })
        .await
    );
    for n in [&shield, &edge] {
        let logs = std::fs::read_to_string(n.dir.path().join("access.log")).unwrap_or_default()
            + &n.stderr();
        assert!(!logs.contains(SECRET), "the secret was logged");
    }
    // The origin saw the fleet's secret on the warm fetches, never a reader.
    assert!(origin
        .requests()
        .iter()
        .all(|r| r.get("onair-warm").map(String::as_str) == Some(SECRET)));
    // A reader with a guessed marker is a reader.
    let r = request(
        edge.http,
        "GET",
        "a",
        "/vk/article",
        &[("Onair-Warm", "guess")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
    let readers: Vec<_> = (0..60)
        .map(|i| {
            let (addr, path) = (edge.http, objects[i % 3]);
            tokio::spawn(async move { get(addr, "a", path).await.map(|r| r.status) })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), 200);
    }
    let after: Vec<usize> = objects.iter().map(|p| asked(&origin, p)).collect();
    assert_eq!(
        after, ahead_counts,
        "the origin was asked again at the release"
    );
}

/// The release on a two-region fleet of six nodes (a shield and two edges in each region):
/// every tier warms the list ahead (the origin asked once per object per shield, with the
/// fleet's secret), nothing comes out anywhere before the time, every node serves it within a
/// bound of the time (the skew is measured and printed), a burst of 500 readers at the time
/// costs the origin nothing, the home page is refreshed, and the operation's fleet status
/// shows, node by node, the one object that could not be warmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_nodes_in_two_regions_warm_ahead_and_release_together() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(page("v1"));
    let release_keys = "[release]\nwarm_secret_file = \"warm.secret\"\n";
    let node = |id: &'static str, region: &'static str, upstream, shield: bool| {
        let (url, public) = (nats.url.clone(), public.clone());
        async move {
            let n = fleet_node(id, region, &[&url], &public, upstream, "", |mut s| {
                s.body = if shield {
                    format!(
                        "{release_keys}[protect]\ntiers = [\"127.0.0.0/24\"]\n{}",
                        s.body
                    )
                } else {
                    format!(
                        "{release_keys}{}",
                        s.body.replacen(
                            "[[pool]]\nname = \"p\"\n",
                            "[[pool]]\nname = \"p\"\nshields = true\n",
                            1
                        )
                    )
                };
                s.with_file("warm.secret", SECRET)
            })
            .await;
            assert!(
                n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
                    .await,
                "{}",
                n.stderr()
            );
            n
        }
    };
    let mut shields = Vec::new();
    let mut edges = Vec::new();
    for (shield_id, region, edge_ids) in [
        ("shield-hn", "hn", ["edge-hn-1", "edge-hn-2"]),
        ("shield-hcm", "hcm", ["edge-hcm-1", "edge-hcm-2"]),
    ] {
        let shield = node(shield_id, region, origin.addr, true).await;
        for id in edge_ids {
            let edge = node(id, region, shield.http, false).await;
            assert_eq!(get(edge.http, "a", "/").await.unwrap().text(), "v1");
            edges.push((id, edge));
        }
        shields.push((shield_id, shield));
    }
    // What the release brings out: its own tag, not the home page's.
    origin.set(Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Surrogate-Key".into(), "vk".into()),
        ],
        body: bytes::Bytes::from_static(b"v2"),
        ..Behaviour::default()
    });
    // The cover image is outside the embargoed prefix: on the warm list, it is held back too.
    let mut objects = vec!["/vk/article".to_owned(), "/media/vk-cover.jpg".to_owned()];
    objects.extend((1..=8).map(|i| format!("/vk/photo-{i}.jpg")));
    objects.extend((1..=10).map(|i| format!("/vk/video/seg-{i}.ts")));
    let broken = "/status/503/vk-map.svg";
    let warm_file = keys.path().join("warm.txt");
    let mut list: Vec<String> = objects.iter().map(|p| format!("http://a{p}")).collect();
    list.push(format!("http://a{broken}"));
    std::fs::write(&warm_file, list.join("\n")).unwrap();
    let at = in_secs(10);
    let answer = fleet_cli(
        &nats.url,
        &operator,
        &[
            "release",
            "--id",
            "vk",
            "--at",
            &rfc3339(at),
            "--embargo-prefix",
            "http://a/vk/",
            "--warm",
            warm_file.to_str().unwrap(),
            "--purge-tags",
            "home",
        ],
    );
    let seq = answer["seq"].as_u64().unwrap();
    let all: Vec<&Onair> = shields.iter().chain(edges.iter()).map(|(_, n)| n).collect();
    let ids: Vec<&str> = shields
        .iter()
        .chain(edges.iter())
        .map(|(id, _)| *id)
        .collect();
    let edges: Vec<&Onair> = edges.iter().map(|(_, n)| n).collect();
    for n in &all {
        let warmed = "onair_release_warm_objects{state=\"warmed\"}";
        assert!(
            eventually(Duration::from_secs(8), || async {
                n.metric(warmed).await == Some(objects.len() as f64)
            })
            .await,
            "{}",
            n.admin("GET", "/release/vk").await.text()
        );
    }
    assert!(SystemTime::now() < at, "warming took too long to test");
    // Ahead of the time: held back on every node by every path; the origin saw each object
    // once per shield, always with the secret.
    for n in &all {
        for (method, path, headers) in [
            ("GET", "/vk/article", vec![]),
            ("HEAD", "/vk/article", vec![]),
            ("GET", "/vk/video/seg-3.ts", vec![("Range", "bytes=0-0")]),
            ("GET", "/vk/photo-1.jpg", vec![("If-None-Match", "\"x\"")]),
            ("GET", "/VK/Article/", vec![]),
            ("GET", "/media/vk-cover.jpg", vec![]),
        ] {
            let r = request(n.http, method, "a", path, &headers, bytes::Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, 404, "{method} {path} {headers:?}");
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
    }
    let warm_counts: Vec<usize> = objects.iter().map(|p| asked(&origin, p)).collect();
    assert!(warm_counts.iter().all(|&c| c == 2), "{warm_counts:?}");
    assert!(origin
        .requests()
        .iter()
        .filter(|r| r[":path"].contains("vk"))
        .all(|r| r.get("onair-warm").map(String::as_str) == Some(SECRET)));

    // From just before the time, each node is asked every few ms until it serves the article.
    let pollers: Vec<_> = all
        .iter()
        .map(|n| {
            let addr = n.http;
            tokio::spawn(async move {
                let start = at - Duration::from_millis(300);
                tokio::time::sleep(start.duration_since(SystemTime::now()).unwrap_or_default())
                    .await;
                loop {
                    let r = get(addr, "a", "/vk/article").await.unwrap();
                    let answered = SystemTime::now();
                    if r.status == 200 {
                        assert!(answered >= at, "out before its time");
                        return answered.duration_since(at).unwrap();
                    }
                    assert!(
                        answered < at + Duration::from_secs(5),
                        "not out 5 s after its time"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let readers: Vec<_> = (0..500)
        .map(|i| {
            let addr = edges[i % edges.len()].http;
            let path = objects[i % objects.len()].clone();
            tokio::spawn(async move { get(addr, "a", &path).await.map(|r| r.status) })
        })
        .collect();
    let mut late = Vec::new();
    for p in pollers {
        late.push(p.await.unwrap());
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), 200);
    }
    let skew = *late.iter().max().unwrap() - *late.iter().min().unwrap();
    println!("six nodes served the release after its time by {late:?}: skew {skew:?}");
    // The embargo lifts by each node's clock at the time itself; what is measured past it is
    // the pollers' own lateness on a machine busy with the burst.
    assert!(late.iter().all(|l| *l < Duration::from_secs(2)), "{late:?}");
    let after: Vec<usize> = objects.iter().map(|p| asked(&origin, p)).collect();
    assert_eq!(
        after, warm_counts,
        "the origin was asked again at the release"
    );
    // The home page, purged a moment after the time, is the new one on every edge.
    for n in &edges {
        assert!(
            eventually(Duration::from_secs(5), || async {
                get(n.http, "a", "/").await.unwrap().text() == "v2"
            })
            .await
        );
    }
    // The operation's status shows each node's warm list as it stood at the time.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let op = op_status(edges[0], seq).await;
            ids.iter()
                .all(|id| op["release"][id]["state"] == "released")
        })
        .await,
        "{}",
        op_status(edges[0], seq).await
    );
    let op = op_status(edges[0], seq).await;
    for id in &ids {
        let mine = &op["release"][id];
        assert_eq!(mine["warmed"], objects.len(), "{op}");
        assert_eq!(
            mine["missing"],
            serde_json::json!([format!("http://a{broken}")]),
            "{op}"
        );
    }
}

/// Called off, a release keeps nothing it fetched past the origin's own embargo: its warmed
/// copies are dropped before its embargo lifts, found however their route keys them (the image
/// is on a `query = "drop"` route and named with a query), and a warm fetch still running when
/// it is called off is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_called_off_while_it_warms_keeps_nothing_it_fetched() {
    let origin = Origin::start("origin").await;
    origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: bytes::Bytes::from_static(b"fetched past the embargo"),
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    let n = Onair::start(Setup::new(format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[site.route]]\npath = \"/media/\"\nquery = \"drop\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    )))
    .await;
    let at = rfc3339(SystemTime::now() + Duration::from_secs(300));
    let release = |id: &str, warm: &[&str]| {
        let warm: Vec<String> = warm.iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            r#"{{"id": "{id}", "at": "{at}", "embargo": {{"urls": ["http://a/story"]}},
                "warm": [{}]}}"#,
            warm.join(", ")
        )
    };
    let warmed = |id: &'static str| {
        let n = &n;
        async move {
            let r = n.admin("GET", &format!("/release/{id}")).await;
            let entry: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            entry["warm"]["warmed"].as_u64().unwrap_or(0)
        }
    };
    // Warmed, then called off.
    let body = release("r", &["http://a/story", "http://a/media/nq.jpg?v=2"]);
    assert_eq!(n.admin_post("/release", &body).await.status, 200);
    assert!(eventually(Duration::from_secs(10), || async { warmed("r").await == 2 }).await);
    let r = n.admin_post("/release", r#"{"cancel": "r"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for path in ["/story", "/media/nq.jpg"] {
        let before = asked(&origin, path);
        assert_eq!(get(n.http, "a", path).await.unwrap().status, 200);
        assert_eq!(
            asked(&origin, path),
            before + 1,
            "{path}: the warmed copy was served"
        );
    }
    // Called off while a warm fetch runs: what it brings is not kept.
    let body = release("late", &["http://a/story/late"]);
    assert_eq!(n.admin_post("/release", &body).await.status, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            asked(&origin, "/story/late") == 1
        })
        .await
    );
    let r = n.admin_post("/release", r#"{"cancel": "late"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(Duration::from_secs(10), || async {
            n.access_log()
                .iter()
                .any(|l| l["path"] == "/story/late" && l["warm"] == true)
        })
        .await
    );
    assert_eq!(get(n.http, "a", "/story/late").await.unwrap().status, 200);
    assert_eq!(
        asked(&origin, "/story/late"),
        2,
        "the late warm fetch was stored"
    );
}

/// A shield that does not hold a release (out of its scope) passes an edge's warm fetch on but
/// does not store what the origin let through its own embargo: nothing there would hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_without_the_release_keeps_no_warm_copy() {
    let origin = Origin::start("origin").await;
    origin.set(page("under embargo at the origin"));
    let (shield, edge) = shield_and_edge(&origin).await;
    let at = rfc3339(SystemTime::now() + Duration::from_secs(300));
    let body = format!(
        r#"{{"id": "vk", "at": "{at}", "embargo": {{"prefix": "http://a/vk/"}},
            "warm": ["http://a/vk/article"]}}"#
    );
    assert_eq!(edge.admin_post("/release", &body).await.status, 200);
    assert!(
        edge.metric_becomes("onair_release_warm_objects{state=\"warmed\"}", |v| v == 1.0)
            .await,
        "{}",
        edge.admin("GET", "/release/vk").await.text()
    );
    assert_eq!(asked(&origin, "/vk/article"), 1);
    // The shield holds no copy: a request reaching it goes to the origin (which decides).
    assert_eq!(
        get(shield.http, "a", "/vk/article").await.unwrap().status,
        200
    );
    assert_eq!(
        asked(&origin, "/vk/article"),
        2,
        "the shield kept the warm copy"
    );
    assert_eq!(
        get(edge.http, "a", "/vk/article").await.unwrap().status,
        404
    );
}
