//! The fleet control plane against a real NATS JetStream server: operations signed by the
//! operators' key, published by the CLI with no node involved, applied by every node in scope;
//! forged ones refused and counted.

use std::path::Path;
use std::time::Duration;

use crate::common::nats::{fleet_cli, fleet_node, operator_keys, Nats, Operator};
use crate::common::*;

/// A node of `region` on the bus at `url`, trusting `public`, in front of `origin`.
async fn node(id: &str, region: &str, url: &str, public: &Path, origin: &Origin) -> Onair {
    node_with(id, region, url, public, origin, "").await
}

/// [`node`] with more `[fleet]` keys.
async fn node_with(
    id: &str,
    region: &str,
    url: &str,
    public: &Path,
    origin: &Origin,
    fleet_extra: &str,
) -> Onair {
    fleet_node(id, region, &[url], public, origin.addr, fleet_extra, |s| s).await
}

fn tagged(tag: &str, body: &'static str) -> Behaviour {
    Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Surrogate-Key".into(), tag.into()),
        ],
        body: bytes::Bytes::from_static(body.as_bytes()),
        ..Behaviour::default()
    }
}

const APPLIED_PURGES: &str = "onair_fleet_ops_total{kind=\"purge\",result=\"applied\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_purge_from_the_cli_reaches_every_node_and_a_forged_one_none() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let (intruder, _) = operator_keys(keys.path(), "intruder");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    // Six nodes in two regions.
    let mut nodes = Vec::new();
    for (id, region) in [
        ("edge-hn-1", "hn"),
        ("edge-hn-2", "hn"),
        ("edge-hn-3", "hn"),
        ("edge-hcm-1", "hcm"),
        ("edge-hcm-2", "hcm"),
        ("edge-hcm-3", "hcm"),
    ] {
        nodes.push(node(id, region, &nats.url, &public, &origin).await);
    }
    let (hn, hcm) = (&nodes[0], &nodes[3]);
    for n in &nodes {
        assert!(
            n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
                .await,
            "{}",
            n.stderr()
        );
        assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");
    }
    assert_eq!(origin.proxied_hits(), 6);
    origin.set(tagged("election", "v2"));

    // Forged (another key) and then a real one, straight from the CLI: no node is asked.
    let forged = fleet_cli(&nats.url, &intruder, &["purge", "--tag", "election"]);
    assert_eq!(forged["kind"], "purge");
    let real = fleet_cli(&nats.url, &operator, &["purge", "--tag", "election"]);
    assert!(real["seq"].as_u64().unwrap() > forged["seq"].as_u64().unwrap());
    for n in &nodes {
        assert!(n.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
        let forged = "onair_fleet_ops_total{kind=\"unknown\",result=\"forged\"}";
        assert_eq!(n.metric(forged).await, Some(1.0));
        assert_eq!(
            n.metric("onair_fleet_applied_sequence").await,
            real["seq"].as_f64()
        );
        assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v2");
    }
    assert_eq!(origin.proxied_hits(), 12);

    // Who applied it: the CLI waits on the nodes' heartbeats, any node shows the fleet.
    let seq = real["seq"].as_u64().unwrap().to_string();
    let out = std::process::Command::new(onair_bin())
        .args([
            "fleet",
            "wait",
            &seq,
            "--timeout",
            "20",
            "--servers",
            &nats.url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        waited["applied"],
        serde_json::json!([
            "edge-hcm-1",
            "edge-hcm-2",
            "edge-hcm-3",
            "edge-hn-1",
            "edge-hn-2",
            "edge-hn-3"
        ])
    );
    let r = hn.admin("GET", "/fleet").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fleet: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let listed = fleet["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 6, "{fleet}");
    assert!(listed.iter().all(|n| n["state"] == "up"), "{fleet}");
    // Heartbeats measure each node's clock against the bus's (the first one, the next
    // heartbeat carries): one machine, one clock.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let r = hn.admin("GET", "/fleet").await;
            let fleet: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            fleet["nodes"].as_array().is_some_and(|nodes| {
                nodes.len() == 6
                    && nodes.iter().all(|n| {
                        n["clock_offset_ms"]
                            .as_i64()
                            .is_some_and(|ms| ms.abs() < 500)
                    })
            })
        })
        .await
    );
    let r = hcm.admin("GET", &format!("/fleet/ops/{seq}")).await;
    let op: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(op["done"], true, "{op}");
    // The forged one is not "done" because every node read past it: they refused it.
    let r = hcm
        .admin("GET", &format!("/fleet/ops/{}", forged["seq"]))
        .await;
    let op: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(op["done"], false, "{op}");
    assert_eq!(op["refused"].as_array().map(Vec::len), Some(6), "{op}");
    let out = std::process::Command::new(onair_bin())
        .args(["fleet", "status", "--servers", &nats.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("edge-hn-1") && table.contains("edge-hcm-1"),
        "{table}"
    );
}

/// The bus is not on the request path: a node whose NATS is gone serves on, and applies what
/// was published meanwhile once the bus is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_bus_a_node_serves_and_catches_up_when_it_returns() {
    let mut nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    let n = node("edge-hn-1", "hn", &nats.url, &public, &origin).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");

    // Readers in a closed loop from here until the purge has come through.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..4 {
        let (stop, http) = (stop.clone(), n.http);
        readers.spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(http, "a", &format!("/story/{}", r % 2)).await {
                    Ok(resp) if resp.status == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    nats.kill();
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 0.0)
            .await
    );
    // Published while this node cannot hear it: by another client once the server is back,
    // before the node has reconnected.
    nats.restart().await;
    origin.set(tagged("election", "v2"));
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "election"]);
    assert!(
        eventually(Duration::from_secs(40), || async {
            n.metric(APPLIED_PURGES).await == Some(1.0)
        })
        .await
    );
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v2");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    while let Some(done) = readers.join_next().await {
        let (o, f) = done.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{ok} answered");
    assert!(ok > 100, "the readers kept reading: {ok}");
}

/// No bus at all when the node starts: it starts and serves, and says it is not connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_serves_with_no_bus() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = operator_keys(keys.path(), "operator");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    let n = node("edge-hn-1", "hn", &url, &public, &origin).await;
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");
    assert_eq!(n.metric("onair_fleet_connected").await, Some(0.0));
}

/// A node with a disk cache and the fleet bus, in front of `origin`.
async fn node_with_disk(id: &str, url: &str, public: &Path, origin: &Origin, disk: &Path) -> Onair {
    let mut setup = Setup::new(format!(
        "{}\n[cache]\ndisk_path = \"{}\"\ndisk = \"64MiB\"\n\n[fleet]\nservers = [\"{url}\"]\n\
         verify_key = [\"{}\"]\n",
        one_site(origin.addr, "", ""),
        disk.display(),
        public.display()
    ));
    setup.node_extra = format!("id = \"{id}\"\nregion = \"hn\"\n");
    Onair::start(setup).await
}

/// A node killed while three pages are purged fleet-wide, restarted while the bus is still
/// out of reach: its disk copies of them are not served as they are (each is revalidated
/// first), and once the bus is back it applies the three purges in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_during_purges_does_not_serve_them_from_disk() {
    let mut nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let disk = tempfile::tempdir().unwrap();
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "forged"));
    let mut n = node_with_disk("edge-hn-1", &nats.url, &public, &origin, disk.path()).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    for i in 1..=3 {
        let r = get(n.http, "a", &format!("/story/{i}")).await.unwrap();
        assert_eq!(r.text(), "forged");
    }
    assert_eq!(origin.proxied_hits(), 3);

    n.signal("KILL");
    origin.set(tagged("election", "fixed"));
    let mut last = 0;
    for i in 1..=3 {
        let url = format!("http://a/story/{i}");
        last = fleet_cli(&nats.url, &operator, &["purge", "--url", &url])["seq"]
            .as_u64()
            .unwrap();
    }
    nats.kill();
    n.restart().await;
    // The disk still holds the forged pages, fresh for ten minutes: not served as they are.
    for i in 1..=3 {
        let r = get(n.http, "a", &format!("/story/{i}")).await.unwrap();
        assert_eq!(r.text(), "fixed", "{:?}", r.headers);
    }
    assert_eq!(origin.proxied_hits(), 6);

    nats.restart().await;
    let applied = |seq: u64| move |v: f64| v == seq as f64;
    assert!(
        eventually(Duration::from_secs(40), || async {
            n.metric("onair_fleet_applied_sequence").await == Some(last as f64)
        })
        .await
    );
    assert!(n.metric_becomes(APPLIED_PURGES, applied(3)).await);
}

/// A node whose position fell off the stream (the operations it missed are gone) cannot know
/// what they purged: it marks every copy it holds stale (each is revalidated before it is
/// served again), once: a second start does not do it again. The stream itself refuses to be
/// emptied by a bus user (only retention takes operations away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_position_fell_off_the_stream_revalidates_its_copies_once() {
    let nats = Nats::start().await;
    // Made here as retention would act on it: one that can be emptied.
    let stream = deletable_stream(&nats.url).await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let disk = tempfile::tempdir().unwrap();
    let origin = Origin::start("origin").await;
    let mut n = killed_at_one(&nats, &operator, &public, &origin, disk.path()).await;
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "something"]);
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "something-else"]);
    // Retention took them (here: the whole stream is emptied).
    stream.purge().await.unwrap();

    origin.set(tagged("election", "v2"));
    n.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            n.stderr().contains("operations it never saw are lost")
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            get(n.http, "a", "/kept").await.unwrap().text() == "v2"
        })
        .await
    );
    // Stored again after the loss: a second start keeps it.
    let hits = origin.proxied_hits();
    let logged = n.stderr().len();
    n.restart().await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    assert!(
        n.metric_becomes("onair_fleet_applied_sequence", |v| v == 3.0)
            .await
    );
    assert_eq!(get(n.http, "a", "/kept").await.unwrap().text(), "v2");
    let since = n.stderr()[logged..].to_owned();
    assert!(
        !since.contains("operations it never saw are lost"),
        "{since}"
    );
    assert_eq!(origin.proxied_hits(), hits);
}

/// The stream the nodes make refuses to be emptied or to lose a message by a bus user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_stream_cannot_be_emptied_from_the_bus() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let n = node("edge-hn-1", "hn", &nats.url, &public, &origin).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "x"]);
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("ONAIR").await.unwrap();
    assert!(stream.purge().await.is_err());
    assert!(stream.delete_message(1).await.is_err());
    // Full, it refuses new operations rather than drop old ones nodes may not have read.
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
}

/// After the bus comes back, the node reads on from where it was: operations it applied
/// before are not applied again, even when the bus sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_bus_restart_old_operations_are_not_applied_again() {
    let mut nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    // A short max_skew: the node forgets applied ids quickly, so only its position keeps it
    // from applying an operation the bus sends again.
    let fleet_extra = "max_skew = \"1s\"";
    let n = node_with("edge-hn-1", "hn", &nats.url, &public, &origin, fleet_extra).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "election"]);
    assert!(n.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
    // The second operation, issued well after the first, makes the node forget the first id.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "sport"]);
    assert!(n.metric_becomes(APPLIED_PURGES, |v| v == 2.0).await);
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");

    nats.restart().await;
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "third"]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            n.metric(APPLIED_PURGES).await == Some(3.0)
        })
        .await,
        "{}",
        n.stderr()
    );
    // Nothing applied twice: the page stored before is still a hit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(n.metric(APPLIED_PURGES).await, Some(3.0));
    let hits = origin.proxied_hits();
    assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");
    assert_eq!(origin.proxied_hits(), hits);
}

/// The admin API's `"scope"`: a node with `fleet.sign_key` signs and publishes the call for
/// its operators (its answer carries the operation's seq and id), a node without one says why
/// (403), and with the bus gone the call is refused (503) while local calls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_with_a_scope_go_to_the_fleet() {
    let mut nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    let sign = format!("sign_key = \"{}\"", operator.display());
    let signer = node_with("edge-hn-1", "hn", &nats.url, &public, &origin, &sign).await;
    let other = node("edge-hcm-1", "hcm", &nats.url, &public, &origin).await;
    for n in [&signer, &other] {
        assert!(
            n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
                .await
        );
        assert_eq!(get(n.http, "a", "/story").await.unwrap().text(), "v1");
    }
    origin.set(tagged("election", "v2"));

    let r = signer
        .admin_post("/purge", r#"{"tags": ["election"], "scope": "fleet"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["purged"], 1, "applied here at once: {answer}");
    assert!(
        answer["seq"].as_u64().is_some() && answer["id"].is_string(),
        "{answer}"
    );
    assert!(other.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
    assert_eq!(get(other.http, "a", "/story").await.unwrap().text(), "v2");

    // Attack mode fleet-wide: the signer switches as the others do, in the stream's order
    // (it answers once its own fleet service has read the operation back).
    let r = signer
        .admin_post("/attack-mode", r#"{"mode": "on", "scope": "fleet"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["read_here"], true, "{answer}");
    assert_eq!(answer["active"], true, "{answer}");
    assert!(
        other
            .metric_becomes("onair_attack_mode", |v| v == 1.0)
            .await
    );
    let r = signer
        .admin_post("/attack-mode", r#"{"mode": "off", "scope": "fleet"}"#)
        .await;
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["active"], false, "{answer}");
    assert!(
        other
            .metric_becomes("onair_attack_mode", |v| v == 0.0)
            .await
    );

    // Without a signing key: refused, with the reason.
    let r = other
        .admin_post("/attack-mode", r#"{"mode": "on", "scope": "region:hn"}"#)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("sign_key"), "{}", r.text());
    // A scope that is not one.
    let r = signer
        .admin_post("/purge", r#"{"tags": ["x"], "scope": "everyone"}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // The bus gone: fleet calls 503, local ones as ever.
    nats.kill();
    assert!(
        signer
            .metric_becomes("onair_fleet_connected", |v| v == 0.0)
            .await
    );
    let r = signer
        .admin_post("/purge", r#"{"tags": ["election"], "scope": "fleet"}"#)
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = signer
        .admin_post("/purge", r#"{"tags": ["election"]}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A NATS cluster of three, the stream kept on all three: one server killed (whichever), the
/// node goes on receiving operations through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_three_keeps_delivering_with_one_server_down() {
    let mut cluster = Nats::cluster(3).await;
    let urls: Vec<String> = cluster.iter().map(|n| format!("\"{}\"", n.url)).collect();
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let mut setup = Setup::new(format!(
        "{}\n[fleet]\nservers = [{}]\nverify_key = [\"{}\"]\nreplicas = 3\n",
        one_site(origin.addr, "", ""),
        urls.join(", "),
        public.display()
    ));
    setup.node_extra = "id = \"edge-hn-1\"\nregion = \"hn\"\n".into();
    let n = Onair::start(setup).await;
    // The cluster elects its JetStream leader first: the node retries until it can.
    assert!(
        eventually(Duration::from_secs(40), || async {
            n.metric("onair_fleet_connected").await == Some(1.0)
        })
        .await,
        "{}",
        n.stderr()
    );
    fleet_cli(&cluster[1].url, &operator, &["purge", "--tag", "one"]);
    assert!(n.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);

    cluster[0].kill();
    // Publishing waits for the stream's new leader, if server 0 was it: a few tries (the
    // election takes longer on a loaded machine; a minute at most).
    let mut published = false;
    for _ in 0..120 {
        let out = std::process::Command::new(onair_bin())
            .args([
                "fleet",
                "purge",
                "--tag",
                "two",
                "--servers",
                &cluster[2].url,
            ])
            .arg("--key")
            .arg(&operator)
            .output()
            .unwrap();
        if out.status.success() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        published,
        "no server took the operation with one of three down"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            n.metric(APPLIED_PURGES).await == Some(2.0)
        })
        .await,
        "{}",
        n.stderr()
    );
}

/// A fleet purge reaches an edge before its shield (here: the shield gets it last, as if it
/// lagged): the edge does not refill from the shield's older copy; the reader gets the new page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_applies_a_purge_before_its_shield_does_not_refill_the_old_page() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "forged"));
    let fleet = format!(
        "[fleet]\nservers = [\"{}\"]\nverify_key = [\"{}\"]\n",
        nats.url,
        public.display()
    );
    let mut setup = Setup::new(format!(
        "[protect]\ntiers = [\"127.0.0.1/32\"]\n{}\n{fleet}",
        one_site(origin.addr, "", "")
    ));
    setup.node_extra = "id = \"shield-hn\"\nregion = \"hn\"\n".into();
    let shield = Onair::start(setup).await;
    let mut setup = Setup::new(format!(
        "{}\n{fleet}",
        one_site(shield.http, "shields = true", "")
    ));
    setup.node_extra = "id = \"edge-hn-1\"\nregion = \"hn\"\n".into();
    let edge = Onair::start(setup).await;
    for n in [&shield, &edge] {
        assert!(
            n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
                .await
        );
    }
    assert_eq!(
        get(edge.http, "a", "/story").await.unwrap().text(),
        "forged"
    );

    origin.set(tagged("election", "fixed"));
    fleet_cli(
        &nats.url,
        &operator,
        &["purge", "--tag", "election", "--nodes", "edge-hn-1"],
    );
    assert!(edge.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
    // The shield has not applied it (it is not in scope): its copy is the forged one.
    assert_eq!(shield.metric(APPLIED_PURGES).await.unwrap_or(0.0), 0.0);
    for _ in 0..3 {
        let r = get(edge.http, "a", "/story").await.unwrap();
        assert_eq!(r.text(), "fixed", "{:?}", r.headers);
    }
    // Then the shield applies it too: nothing changes for the reader.
    fleet_cli(
        &nats.url,
        &operator,
        &["purge", "--tag", "election", "--nodes", "shield-hn"],
    );
    assert!(shield.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
    assert_eq!(get(edge.http, "a", "/story").await.unwrap().text(), "fixed");
}

/// `onair fleet nkey --out NAME` in `dir`: the public key it printed (and wrote to NAME.pub).
fn nkey(dir: &Path, name: &str) -> String {
    let out = std::process::Command::new(onair_bin())
        .args(["fleet", "nkey", "--out"])
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(public.starts_with('U'), "{public}");
    public
}

/// The NATS configs shipped in deploy/nats/ are valid for the nats-server the tests run.
#[test]
fn the_shipped_nats_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats");
    let keys = tempfile::tempdir().unwrap();
    let (node, operator) = (nkey(keys.path(), "node"), nkey(keys.path(), "operator"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let out = std::process::Command::new(crate::common::nats::binary())
                .arg("-t")
                .arg("-c")
                .arg(&path)
                .env("ONAIR_NODE_NKEY", &node)
                .env("ONAIR_OPERATOR_NKEY", &operator)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} configs");
}

/// The shipped per-role users (deploy/nats/auth.conf) on a real server: a node with the node
/// user's key runs (stream, consumer, heartbeats) but cannot publish an operation; the
/// operator's key can, and the node applies it; no key, no bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_nats_users_let_nodes_read_and_only_operators_publish() {
    let keys = tempfile::tempdir().unwrap();
    let (node_key, operator_key) = (nkey(keys.path(), "node"), nkey(keys.path(), "operator"));
    let conf = keys.path().join("server.conf");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats/auth.conf"),
        keys.path().join("auth.conf"),
    )
    .unwrap();
    std::fs::write(&conf, "include auth.conf\n").unwrap();
    let nats = Nats::start_with_env(
        vec!["-c".into(), conf.display().to_string()],
        vec![
            ("ONAIR_NODE_NKEY".into(), node_key),
            ("ONAIR_OPERATOR_NKEY".into(), operator_key),
        ],
    )
    .await;
    let (operator, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let node_seed = keys.path().join("node.nk");
    let n = node_with(
        "edge-hn-1",
        "hn",
        &nats.url,
        &public,
        &origin,
        &format!("nkey_file = \"{}\"", node_seed.display()),
    )
    .await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await,
        "{}",
        n.stderr()
    );
    let publish = |user: Option<&Path>| {
        let mut cmd = std::process::Command::new(onair_bin());
        cmd.args(["fleet", "purge", "--tag", "home", "--servers", &nats.url])
            .arg("--key")
            .arg(&operator);
        if let Some(user) = user {
            cmd.arg("--nkey").arg(user);
        }
        cmd.output().unwrap()
    };
    let as_node = publish(Some(&node_seed));
    assert!(!as_node.status.success());
    let anonymous = publish(None);
    assert!(!anonymous.status.success());
    let said = String::from_utf8_lossy(&anonymous.stderr).to_lowercase();
    assert!(said.contains("authorization"), "{said}");
    let as_operator = publish(Some(&keys.path().join("operator.nk")));
    assert!(
        as_operator.status.success(),
        "{}",
        String::from_utf8_lossy(&as_operator.stderr)
    );
    assert!(n.metric_becomes(APPLIED_PURGES, |v| v == 1.0).await);
    // Nor can it make a stream of its own (which could republish into the operations).
    let seed = std::fs::read_to_string(&node_seed).unwrap();
    let as_node = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        .connect(&nats.url)
        .await
        .unwrap();
    let made = async_nats::jetstream::new(as_node)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ELSEWHERE".into(),
            subjects: vec!["elsewhere".into()],
            ..Default::default()
        })
        .await;
    assert!(made.is_err(), "a node's key made a stream");
    // The node reads the fleet's heartbeats (GET /fleet) with its key.
    assert!(
        eventually(Duration::from_secs(20), || async {
            n.admin("GET", "/fleet").await.text().contains("edge-hn-1")
        })
        .await,
        "{}",
        n.admin("GET", "/fleet").await.text()
    );
    // The node's heartbeat went through: the operator sees it.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let out = std::process::Command::new(onair_bin())
                .args(["fleet", "status", "--servers", &nats.url, "--nkey"])
                .arg(keys.path().join("operator.nk"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("edge-hn-1")
        })
        .await
    );
}

/// An operation published where no node reads is refused by the publisher, not lost in
/// silence: no stream takes the subject, or another stream than the nodes' one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_where_no_node_reads_is_refused() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, _) = operator_keys(keys.path(), "operator");
    let purge = || {
        std::process::Command::new(onair_bin())
            .args(["fleet", "purge", "--tag", "home", "--servers", &nats.url])
            .arg("--key")
            .arg(&operator)
            .output()
            .unwrap()
    };
    let out = purge();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no node with this [fleet] has connected"),
        "{said}"
    );

    let client = async_nats::connect(&nats.url).await.unwrap();
    async_nats::jetstream::new(client)
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "SOMEONE_ELSES".into(),
            subjects: vec!["onair.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let out = purge();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("stream SOMEONE_ELSES stored it, not ONAIR"),
        "{said}"
    );
}

/// A burst of purges (published as fast as the bus takes them) is applied in full and in
/// order, although the node makes its position durable at most every 200 ms; a clean stop
/// stores the last one, so the restarted node applies none of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_purges_is_applied_in_full_and_a_clean_stop_keeps_the_position() {
    let nats = Nats::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    let mut n = node("edge-hn-1", "hn", &nats.url, &public, &origin).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await
    );
    let operator = std::sync::Arc::new(Operator::connect(&nats.url, &private).await);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let operator = operator.clone();
            tokio::spawn(async move { operator.purge(&format!("http://a/burst/{i}")).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            n.metric(APPLIED_PURGES).await == Some(300.0)
        })
        .await
    );
    assert_eq!(n.metric("onair_fleet_applied_sequence").await, Some(300.0));
    assert_eq!(
        n.metric("onair_fleet_ops_total{kind=\"purge\",result=\"replayed\"}")
            .await,
        None
    );

    n.signal("TERM");
    assert!(n.wait_exit(Duration::from_secs(10)));
    let stored = std::fs::read_to_string(n.dir.path().join("state/fleet.position")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["seq"], 300, "{stored}");
    assert!(stored["newest"].as_u64().unwrap() > 0, "{stored}");

    n.restart().await;
    operator.purge("http://a/after").await.unwrap();
    assert!(
        n.metric_becomes("onair_fleet_applied_sequence", |v| v == 301.0)
            .await
    );
    assert_eq!(n.metric(APPLIED_PURGES).await, Some(1.0));
}

/// A stream the test can empty or cut into, as retention (or a bus user without the nodes'
/// protections) would.
async fn deletable_stream(url: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(url).await.unwrap();
    async_nats::jetstream::new(client)
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ONAIR".into(),
            subjects: vec!["onair.ops".into()],
            ..Default::default()
        })
        .await
        .unwrap()
}

/// A node with a disk cache at `disk` that applied operation 1 and stored `/kept` ("v1" from
/// `origin`), then killed (SIGKILL).
async fn killed_at_one(
    nats: &Nats,
    operator: &Path,
    public: &Path,
    origin: &Origin,
    disk: &Path,
) -> Onair {
    origin.set(tagged("election", "v1"));
    let n = node_with_disk("edge-hn-1", &nats.url, public, origin, disk).await;
    fleet_cli(&nats.url, operator, &["purge", "--tag", "nothing-yet"]);
    assert!(
        n.metric_becomes("onair_fleet_applied_sequence", |v| v == 1.0)
            .await
    );
    assert_eq!(get(n.http, "a", "/kept").await.unwrap().text(), "v1");
    n.signal("KILL");
    n
}

/// A node that never read this stream (new, or its state dir wiped while its disk stayed) and
/// comes to a fleet whose operations retention has all taken: it cannot know what they purged,
/// so it marks its copies stale and reads on from the stream's end (caught up, not stuck
/// waiting for operations that are gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_read_a_stream_whose_start_is_gone_marks_its_copies_stale() {
    let nats = Nats::start().await;
    let stream = deletable_stream(&nats.url).await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let disk = tempfile::tempdir().unwrap();
    let origin = Origin::start("origin").await;
    let mut n = killed_at_one(&nats, &operator, &public, &origin, disk.path()).await;
    // Its state dir wiped: it never read this stream, as far as it knows.
    std::fs::remove_file(n.dir.path().join("state/fleet.position")).unwrap();
    fleet_cli(&nats.url, &operator, &["purge", "--url", "http://a/kept"]);
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "other"]);
    stream.purge().await.unwrap();
    origin.set(tagged("election", "v2"));
    n.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            n.stderr().contains("caught up at operation 3")
        })
        .await,
        "{}",
        n.stderr()
    );
    assert!(n.stderr().contains("operations it never saw are lost"));
    assert_eq!(get(n.http, "a", "/kept").await.unwrap().text(), "v2");
}

/// Operations taken from the middle of the stream (deleted by whoever could) are a loss the
/// node notices: it marks its copies stale rather than jump over the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_stream_marks_every_copy_stale() {
    let nats = Nats::start().await;
    let stream = deletable_stream(&nats.url).await;
    let keys = tempfile::tempdir().unwrap();
    let (operator, public) = operator_keys(keys.path(), "operator");
    let disk = tempfile::tempdir().unwrap();
    let origin = Origin::start("origin").await;
    let mut n = killed_at_one(&nats, &operator, &public, &origin, disk.path()).await;
    let purge = fleet_cli(&nats.url, &operator, &["purge", "--url", "http://a/kept"]);
    fleet_cli(&nats.url, &operator, &["purge", "--tag", "other"]);
    stream
        .delete_message(purge["seq"].as_u64().unwrap())
        .await
        .unwrap();
    origin.set(tagged("election", "v2"));
    n.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            n.stderr().contains("caught up at operation 3")
        })
        .await,
        "{}",
        n.stderr()
    );
    assert!(
        n.stderr().contains("operations 2 to 2 are missing"),
        "{}",
        n.stderr()
    );
    assert_eq!(get(n.http, "a", "/kept").await.unwrap().text(), "v2");
}

/// `[fleet]` added by a reload while the bus is out of reach: the copies the node holds may
/// have been purged by the fleet already, so they are revalidated before they are served,
/// as after a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_added_by_a_reload_revalidates_what_the_node_holds() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = operator_keys(keys.path(), "operator");
    let origin = Origin::start("origin").await;
    origin.set(tagged("election", "v1"));
    let mut setup = Setup::new(one_site(origin.addr, "", ""));
    setup.node_extra = "id = \"edge-hn-1\"\nregion = \"hn\"\n".to_owned();
    let n = Onair::start(setup).await;
    assert_eq!(get(n.http, "a", "/kept").await.unwrap().text(), "v1");
    origin.set(tagged("election", "v2"));
    // A bus nobody answers on.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let mut setup = Setup::new(format!(
        "{}\n[fleet]\nservers = [\"{dead}\"]\nverify_key = [\"{}\"]\n",
        one_site(origin.addr, "", ""),
        public.display()
    ));
    setup.node_extra = "id = \"edge-hn-1\"\nregion = \"hn\"\n".to_owned();
    n.rewrite(&setup);
    let r = n.admin("POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(n.http, "a", "/kept").await.unwrap().text() == "v2"
        })
        .await
    );
}
