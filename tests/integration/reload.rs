//! Hot reload: SIGHUP and `POST /reload` swap in a whole new snapshot; a bad file changes
//! nothing; requests in flight finish on the snapshot they started with.

use std::time::Duration;

use crate::common::*;

fn one_origin(origin: &Origin, pool_extra: &str) -> Setup {
    Setup::new(one_site(origin.addr, pool_extra, ""))
}

#[tokio::test]
async fn sighup_swaps_origins_and_keeps_requests_in_flight() {
    let old = Origin::start("old").await;
    let new = Origin::start("new").await;
    let onair = Onair::start(one_origin(&old, "")).await;
    assert_eq!(
        get(onair.http, "a", "/").await.unwrap().header("x-origin"),
        Some("old")
    );

    // A slow request starts on the old snapshot...
    old.set(Behaviour {
        delay: Duration::from_millis(800),
        ..Behaviour::default()
    });
    let http = onair.http;
    let in_flight = tokio::spawn(async move { get(http, "a", "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ...the file now names another origin, and SIGHUP reloads it.
    onair.rewrite(&one_origin(&new, ""));
    onair.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric("onair_config_version").await == Some(2.0)
        })
        .await
    );
    assert_eq!(
        get(onair.http, "a", "/").await.unwrap().header("x-origin"),
        Some("new")
    );
    // The request that started before the swap finished where it began.
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("old"));
    assert_eq!(
        onair
            .metric("onair_config_reloads_total{result=\"ok\"}")
            .await,
        Some(1.0)
    );
    // The old origin's label set is gone from the metrics, the new one's is there.
    let text = onair.metrics_text().await;
    assert!(!text.contains(&format!("onair_origin_up{{origin=\"{}\"", old.addr)));
    assert!(text.contains(&format!(
        "onair_origin_up{{origin=\"{}\",pool=\"p\"}} 1",
        new.addr
    )));
}

/// Origins named by position (`origin_addresses = false`): one whose address changes under the
/// same name keeps its series, and counts the requests it gets after the reload.
#[tokio::test]
async fn an_origin_renumbered_under_the_same_name_keeps_its_series() {
    let old = Origin::start("old").await;
    let new = Origin::start("new").await;
    let mut setup = one_origin(&old, "");
    setup.admin_extra = String::new();
    let onair = Onair::start(setup).await;
    get(onair.http, "a", "/").await.unwrap();
    let mut setup = one_origin(&new, "");
    setup.admin_extra = String::new();
    onair.rewrite(&setup);
    onair.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric("onair_config_version").await == Some(2.0)
        })
        .await
    );
    let r = get(onair.http, "a", "/").await.unwrap();
    assert_eq!(r.header("x-origin"), Some("new"));
    let series = "onair_origin_requests_total{origin=\"origin-0\",outcome=\"ok\",pool=\"p\"}";
    assert!(
        onair.metric(series).await.is_some_and(|v| v >= 1.0),
        "{}",
        onair.metrics_text().await
    );
    assert!(onair
        .metrics_text()
        .await
        .contains("onair_origin_up{origin=\"origin-0\",pool=\"p\"} 1"));
}

#[tokio::test]
async fn bad_file_changes_nothing() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(one_origin(&origin, "")).await;
    std::fs::write(
        &onair.config_path,
        "[node]\nid = \"edge-test\"\nthreads = \"many\"\n[[pool]]\nname = \"p\"\nbogus = 1\n",
    )
    .unwrap();
    let r = onair.admin("POST", "/reload").await;
    assert_eq!(r.status, 422);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["result"], "error");
    assert_eq!(body["config_version"], 1);
    assert!(!body["errors"].as_array().unwrap().is_empty());

    // An error that validation (not TOML) finds, with its key path.
    onair.rewrite(&one_origin(
        &origin,
        "connect_timeout = \"soon\"\nmax_attempts = 99",
    ));
    let r = onair.admin("POST", "/reload").await;
    assert_eq!(r.status, 422);
    let text = r.text();
    assert!(text.contains("pool[0].connect_timeout"), "{text}");
    assert!(text.contains("pool[0].max_attempts"), "{text}");

    // SIGHUP with the same bad file: logged and counted, still serving.
    onair.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .metric("onair_config_reloads_total{result=\"error\"}")
                .await
                == Some(3.0)
        })
        .await
    );
    assert_eq!(onair.metric("onair_config_version").await, Some(1.0));
    assert_eq!(get(onair.http, "a", "/").await.unwrap().status, 200);
    assert!(onair.stderr().contains("config reload failed"));

    // Fixing the file and reloading works again.
    onair.rewrite(&one_origin(&origin, ""));
    let r = onair.admin("POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(onair.metric("onair_config_version").await, Some(2.0));
}

#[tokio::test]
async fn health_checks_follow_reload() {
    let origin = Origin::start("o").await;
    let backup = Origin::start("b").await;
    let body = |path: &str| {
        Setup::new(format!(
            "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n[[pool]]\nname = \"p\"\n\
             health = {{ path = \"{path}\", interval = \"100ms\", timeout = \"200ms\", fall = 1, rise = 1 }}\n\
             [[pool.origin]]\naddr = \"{}\"\n[[pool.origin]]\naddr = \"{}\"\ntier = 1\n",
            origin.addr, backup.addr
        ))
    };
    let onair = Onair::start(body("/ok")).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            origin.requests().iter().any(|h| h[":path"] == "/ok")
        })
        .await
    );
    onair.rewrite(&body("/new-path"));
    assert_eq!(onair.admin("POST", "/reload").await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            origin.requests().iter().any(|h| h[":path"] == "/new-path")
        })
        .await
    );
    // The old snapshot's probe loop is gone: the old path is no longer probed.
    let old_probes = || {
        origin
            .requests()
            .iter()
            .filter(|h| h[":path"] == "/ok")
            .count()
    };
    let settled = old_probes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(old_probes(), settled, "the old health check still runs");
}
