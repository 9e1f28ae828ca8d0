//! Routing, host matching, header handling and streaming through a real onair.

use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

fn two_pools(main: &Origin, api: &Origin) -> String {
    format!(
        r#"
[[site]]
name = "portal"
hosts = ["news.example.vn", "*.news.example.vn"]
pool = "main"
  [[site.route]]
  path = "/api/"
  pool = "api"
  [[site.route]]
  path = "/api/public/"
[[site]]
name = "fallback"
hosts = ["*.example.vn"]
pool = "api"

[[pool]]
name = "main"
  [[pool.origin]]
  addr = "{}"
[[pool]]
name = "api"
host = "api.internal"
  [[pool.origin]]
  addr = "{}"
"#,
        main.addr, api.addr
    )
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let main = Origin::start("main").await;
    let api = Origin::start("api").await;
    let onair = Onair::start(Setup::new(two_pools(&main, &api))).await;

    let cases = [
        ("news.example.vn", "/", "main"),
        ("NEWS.Example.VN:80", "/a", "main"),
        ("live.news.example.vn", "/", "main"),
        ("news.example.vn", "/api/x", "api"),
        // The longer prefix wins and falls back to the site's pool.
        ("news.example.vn", "/api/public/x", "main"),
        ("video.example.vn", "/", "api"),
    ];
    for (host, path, want) in cases {
        let r = get(onair.http, host, path).await.unwrap();
        assert_eq!(r.status, 200, "{host}{path}");
        assert_eq!(r.header("x-origin"), Some(want), "{host}{path}");
    }
    // A host no site claims is answered locally and never forwarded.
    let before = main.hits() + api.hits();
    let r = get(onair.http, "evil.example.org", "/").await.unwrap();
    assert_eq!(r.status, 421);
    assert_eq!(main.hits() + api.hits(), before);
    // The pool's host override reaches the origin; the client's host travels as X-Forwarded-Host.
    get(onair.http, "news.example.vn", "/api/y").await.unwrap();
    let seen = api.last_proxied().unwrap();
    assert_eq!(seen["host"], "api.internal");
    assert_eq!(seen["x-forwarded-host"], "news.example.vn");
}

#[tokio::test]
async fn forwarding_headers_both_ways() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        headers: vec![
            ("Keep-Alive".into(), "timeout=5".into()),
            ("Connection".into(), "X-Internal".into()),
            ("X-Internal".into(), "secret".into()),
            ("Via".into(), "1.1 origin-box".into()),
        ],
        ..Behaviour::default()
    });
    let onair = Onair::start(Setup::new(one_site(origin.addr, "", ""))).await;

    let r = request(
        onair.http,
        "GET",
        "site.example",
        "/page?q=1",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Request-Id", "req-abc"),
            ("Connection", "X-Hop"),
            ("X-Hop", "drop-me"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = origin.last_proxied().unwrap();
    assert_eq!(seen[":path"], "/page?q=1");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "site.example");
    assert_eq!(seen["via"], "1.1 edge-test");
    assert_eq!(seen["x-request-id"], "req-abc");
    assert_eq!(seen["host"], "site.example");
    assert!(
        !seen.contains_key("x-hop"),
        "connection-nominated header forwarded"
    );
    // Back to the client: our Via appended, the id echoed, hop-by-hop removed.
    assert_eq!(r.header("via"), Some("1.1 origin-box, 1.1 edge-test"));
    assert_eq!(r.header("x-request-id"), Some("req-abc"));
    assert!(r.header("keep-alive").is_none());
    assert!(r.header("x-internal").is_none());

    // Without an id, one is made, and the origin and client see the same one.
    let r = get(onair.http, "site.example", "/").await.unwrap();
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(origin.last_proxied().unwrap()["x-request-id"], id);

    // A request that already went through this node is a loop, not forwarded again.
    let before = origin.proxied_hits();
    let r = request(
        onair.http,
        "GET",
        "site.example",
        "/",
        &[("Via", "1.1 edge-test")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 508);
    assert_eq!(origin.proxied_hits(), before);

    // The access log has one JSON line per request with the fields operators search by.
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair
                .access_log()
                .iter()
                .any(|l| l["request_id"] == "req-abc")
        })
        .await
    );
    let line = onair
        .access_log()
        .into_iter()
        .find(|l| l["request_id"] == "req-abc")
        .unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "site.example");
    assert_eq!(line["path"], "/page");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["origin"], origin.addr.to_string());
    assert_eq!(line["site"], "s");
    assert!(line["duration_ms"].as_f64().is_some());
}

/// Bodies stream both ways: a body much larger than onair's memory growth limit passes
/// through, so nothing buffers it whole.
#[tokio::test]
async fn large_bodies_stream_with_flat_memory() {
    const SIZE: u64 = 1 << 30;
    let origin = Origin::start("o").await;
    // Uploads of this size need a larger protect.max_body than the 16 MiB default.
    let onair = Onair::start(Setup::new(format!(
        "[protect]\nmax_body = \"2GiB\"\n{}",
        one_site(origin.addr, "read_timeout = \"60s\"", "")
    )))
    .await;
    // Warm up so the baseline includes the runtime's steady state.
    get(onair.http, "a", "/").await.unwrap();
    let baseline = onair.peak_rss_kib();

    // Download: count bytes as they arrive instead of collecting them.
    origin.set(Behaviour {
        stream_bytes: Some(SIZE),
        ..Behaviour::default()
    });
    let received = download(onair.http, "/big").await;
    assert_eq!(received, SIZE);

    // Upload: a generated streaming body.
    origin.set(Behaviour::default());
    let status = upload(onair.http, "/upload", SIZE).await;
    assert_eq!(status, 200);
    assert_eq!(origin.uploaded(), SIZE);

    let growth = onair.peak_rss_kib().saturating_sub(baseline);
    eprintln!(
        "streamed {} MiB each way; peak RSS {baseline} KiB before, grew by {growth} KiB",
        SIZE >> 20
    );
    assert!(
        growth < 64 * 1024,
        "onair grew by {growth} KiB while streaming {} MiB each way",
        SIZE >> 20
    );
}

async fn download(addr: std::net::SocketAddr, path: &str) -> u64 {
    use http_body_util::BodyExt;
    let mut sender = connect(addr).await.unwrap();
    let mut body = sender
        .send_request(get_request(path))
        .await
        .unwrap()
        .into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            n += d.len() as u64;
        }
    }
    n
}

async fn upload(addr: std::net::SocketAddr, path: &str, size: u64) -> u16 {
    use http_body_util::BodyExt;
    let mut sender = connect(addr).await.unwrap();
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let mut left = size;
    let body = http_body_util::StreamBody::new(FromFn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(chunk.len() as u64) as usize;
        left -= n as u64;
        Some(Ok::<_, std::io::Error>(hyper::body::Frame::data(
            chunk.slice(..n),
        )))
    }));
    let req = hyper::Request::post(path)
        .header("Host", "a")
        .header("Content-Length", size.to_string())
        .body(body.boxed())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}
