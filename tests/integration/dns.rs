//! Origins by DNS name, against a DNS server the test runs: every address a name resolves to
//! is an origin, a changed record moves traffic once its TTL is over, and DNS going away keeps
//! the pool on the last addresses it had.

use std::time::Duration;

use crate::common::dns::DnsServer;
use crate::common::*;

/// Two origins on one port, on two loopback addresses: what `origin.test` resolves to.
async fn two_origins() -> (Origin, Origin, u16) {
    for _ in 0..20 {
        let first = Origin::start_on("first", [127, 0, 0, 2]).await;
        let port = first.addr.port();
        if let Ok(second) = Origin::start_at("second", ([127, 0, 0, 3], port).into()).await {
            return (first, second, port);
        }
    }
    panic!("no port free on both addresses");
}

/// A site whose one origin is `origin.test:port`, resolved through `dns` with a 1 s TTL floor.
fn named_site(dns: &DnsServer, port: u16) -> String {
    format!(
        "[dns]\nservers = [\"{}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\ntimeout = \"500ms\"\n\
         [[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"origin.test:{port}\"\n",
        dns.addr
    )
}

/// Which origin answered `n` uncached requests, as (first, second) counts.
async fn spread(edge: &Onair, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for i in 0..n {
        let r = get(edge.http, "a", &format!("/n{i}-{}", rand_tag()))
            .await
            .unwrap();
        match r.header("x-origin") {
            Some("first") => counts.0 += 1,
            Some("second") => counts.1 += 1,
            other => panic!("answered by {other:?}: {} {:?}", r.status, r.headers),
        }
    }
    counts
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_two_addresses_uses_both_and_follows_the_record() {
    let (_first, _second, port) = two_origins().await;
    let dns = DnsServer::start().await;
    dns.set("origin.test", &[[127, 0, 0, 2], [127, 0, 0, 3]], 1);
    let edge = Onair::start(Setup::new(named_site(&dns, port))).await;
    let (a, b) = spread(&edge, 20).await;
    assert!(a > 0 && b > 0, "both addresses take traffic: {a} / {b}");
    let status = edge.admin("GET", "/status").await.text();
    assert!(status.contains("127.0.0.2:"), "{status}");
    assert!(status.contains("127.0.0.3:"), "{status}");

    // The record changes: once its TTL is over, traffic follows.
    dns.set("origin.test", &[[127, 0, 0, 3]], 1);
    let moved = eventually(Duration::from_secs(8), || async {
        spread(&edge, 4).await == (0, 4)
    })
    .await;
    assert!(moved, "traffic did not move to the new address");
    // The address that left is gone from the pool (and its metric series).
    let status = edge.admin("GET", "/status").await.text();
    assert!(!status.contains("127.0.0.2:"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_going_away_keeps_the_last_addresses() {
    let (_first, _second, port) = two_origins().await;
    let dns = DnsServer::start().await;
    dns.set("origin.test", &[[127, 0, 0, 2], [127, 0, 0, 3]], 1);
    let edge = Onair::start(Setup::new(named_site(&dns, port))).await;
    assert_eq!(get(edge.http, "a", "/x").await.unwrap().status, 200);
    dns.stop();
    // Failures counted, and the pool still has both addresses.
    assert!(
        edge.metric_becomes("onair_dns_failures_total", |v| v >= 2.0)
            .await,
        "{}",
        edge.stderr()
    );
    let (a, b) = spread(&edge, 20).await;
    assert!(a > 0 && b > 0, "{a} / {b}");
    assert!(edge.stderr().contains("cannot resolve an origin name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_its_origin_name_does_not_resolve() {
    let (_first, _second, port) = two_origins().await;
    let dns = DnsServer::start().await;
    let setup = Setup::new(named_site(&dns, port));
    // `check` warns, and still says the config is fine.
    let dir = tempfile::tempdir().unwrap();
    let [http, admin, metrics] = free_ports::<3>();
    let text = Onair::config_text(&setup, dir.path(), http, admin, metrics);
    let path = dir.path().join("onair.toml");
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(onair_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"origin.test\" does not resolve"),
        "{stderr}"
    );

    // The node starts; with no address yet its site answers the maintenance page.
    let edge = Onair::start(setup).await;
    assert_eq!(get(edge.http, "a", "/x").await.unwrap().status, 503);
    dns.set("origin.test", &[[127, 0, 0, 3]], 1);
    let served = eventually(Duration::from_secs(8), || async {
        get(edge.http, "a", "/x")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(served, "{}", edge.stderr());
}

#[test]
fn addresses_and_names_are_told_apart_at_check() {
    let bad = [
        "origin:0",
        "no-port.example",
        "bad_host!.example:80",
        "1.2.3.4",
        "exa mple.vn:80",
    ];
    for addr in bad {
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup::new(format!(
            "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n[[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{addr}\"\n"
        ));
        let text = Onair::config_text(&setup, dir.path(), 1, 2, 3);
        let path = dir.path().join("onair.toml");
        std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(onair_bin())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{addr}: {said}");
        assert!(said.contains("pool[0].origin[0].addr"), "{addr}: {said}");
    }
}
