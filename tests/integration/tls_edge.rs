//! The TLS edge: certificates chosen by SNI (exact, wildcard, the first without SNI), HTTP/1.1
//! and HTTP/2 over TLS through to an origin, HSTS, X-Forwarded-Proto, and the plain-HTTP
//! redirect. Certificates come from a private CA made in the test.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::*;

struct Edge {
    onair: Onair,
    origin: Origin,
    https: std::net::SocketAddr,
    pki: Pki,
}

/// onair with three certificates (the first is the default) and an HTTPS listener.
async fn edge(tls_extra: &str) -> Edge {
    let pki = Pki::new("onair test CA");
    let origin = Origin::start("o").await;
    let port = free_port();
    let mut setup = Setup::new(format!(
        "[tls]\n{tls_extra}\n\
         [[tls.cert]]\ncert = \"portal.pem\"\nkey = \"portal.key\"\n\
         [[tls.cert]]\ncert = \"news.pem\"\nkey = \"news.key\"\n\
         [[tls.cert]]\ncert = \"live.pem\"\nkey = \"live.key\"\n{}",
        one_site(origin.addr, "", "")
    ))
    .with_listen(&format!("https = [\"127.0.0.1:{port}\"]"));
    for (name, names) in [
        ("portal", &["portal.test", "www.portal.test"][..]),
        ("news", &["*.news.test"][..]),
        ("live", &["live.news.test"][..]),
    ] {
        let issued = pki.issue(names);
        setup = setup
            .with_file(&format!("{name}.pem"), &issued.cert_pem)
            .with_file(&format!("{name}.key"), &issued.key_pem);
    }
    let onair = Onair::start(setup).await;
    Edge {
        onair,
        origin,
        https: ([127, 0, 0, 1], port).into(),
        pki,
    }
}

async fn tls_connect(
    edge: &Edge,
    name: &str,
    sni: bool,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = (*edge.pki.client_config(alpn)).clone();
    config.enable_sni = sni;
    let tcp = TcpStream::connect(edge.https).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// An HTTP/2 connection to portal.test, negotiated by ALPN among `alpn`.
async fn h2_connect(
    edge: &Edge,
    alpn: &[&[u8]],
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let tls = tls_connect(edge, "portal.test", true, alpn).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// The DNS names of the certificate the server presented.
fn presented(tls: &TlsStream<TcpStream>) -> Vec<String> {
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| {
            n.to_string()
                .trim_start_matches("DNSName(")
                .trim_end_matches(')')
                .to_owned()
        })
        .collect()
}

async fn get_h1(tls: TlsStream<TcpStream>, host: &str, path: &str) -> Resp {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("Host", host)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    read_whole(sender.send_request(req).await.unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_exact_then_wildcard_then_the_first() {
    let edge = edge("").await;
    for (name, expect) in [
        ("portal.test", "portal.test"),
        ("www.portal.test", "portal.test"),
        ("live.news.test", "live.news.test"),
        ("sport.news.test", "*.news.test"),
    ] {
        let tls = tls_connect(&edge, name, true, &[b"http/1.1"])
            .await
            .unwrap();
        assert!(
            presented(&tls).iter().any(|n| n.contains(expect)),
            "{name}: {:?}",
            presented(&tls)
        );
    }
    // Without SNI: the first certificate (which the client then checks for portal.test).
    let tls = tls_connect(&edge, "portal.test", false, &[b"http/1.1"])
        .await
        .unwrap();
    assert!(presented(&tls).iter().any(|n| n.contains("portal.test")));
    // A name nothing covers also gets the first, which the client rightly refuses.
    assert!(tls_connect(&edge, "other.test", true, &[b"http/1.1"])
        .await
        .is_err());
    assert!(
        edge.onair
            .metric_becomes(
                "onair_tls_handshake_failures_total{reason=\"client_alert\"}",
                |v| v >= 1.0
            )
            .await,
        "{}",
        edge.onair.metrics_text().await
    );
    // TLS 1.2 and 1.3 both work.
    let (_, session) = tls.get_ref();
    assert!(matches!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_reach_the_origin_over_http1_and_http2_with_hsts() {
    let edge = edge("hsts = \"max-age=63072000\"").await;
    let tls = tls_connect(&edge, "portal.test", true, &[b"http/1.1"])
        .await
        .unwrap();
    let r = get_h1(tls, "portal.test", "/page").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    let seen = edge.origin.last_proxied().unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");

    // HTTP/2, negotiated by ALPN, several streams on one connection.
    let sender = h2_connect(&edge, &[b"h2", b"http/1.1"]).await;
    let mut streams = Vec::new();
    for i in 0..5 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = hyper::Request::get(format!("https://portal.test/h2/{i}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let hsts = resp.headers().get("strict-transport-security").cloned();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, hsts, body)
        }));
    }
    for s in streams {
        let (status, hsts, body) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(hsts.is_some());
        assert_eq!(&body[..], b"hello");
    }
    // Plain HTTP answers carry no HSTS (it means nothing there).
    let r = get(edge.onair.http, "portal.test", "/page").await.unwrap();
    assert!(r.header("strict-transport-security").is_none());
    // The access log says which HTTP and TLS versions each request used.
    let logged = |path: &'static str| {
        let log = &edge.onair;
        async move {
            log.access_log()
                .into_iter()
                .find(|e| e["path"] == path)
                .map(|e| (e["http"].clone(), e["tls"].clone(), e["alpn"].clone()))
        }
    };
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            logged("/page").await.is_some() && logged("/h2/0").await.is_some()
        })
        .await
    );
    let (http, tls, alpn) = logged("/h2/0").await.unwrap();
    assert_eq!(http, "2");
    assert_eq!(alpn, "h2");
    assert!(
        tls.as_str()
            .is_some_and(|v| v.contains('3') || v.contains('2')),
        "{tls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_for_tls_sites_except_acme_challenges() {
    let edge = edge("redirect_http = true").await;
    let port = edge.https.port();
    let r = get(edge.onair.http, "www.portal.test", "/news/1?x=2")
        .await
        .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://www.portal.test:{port}/news/1?x=2")
    );
    let r = request(
        edge.onair.http,
        "POST",
        "portal.test",
        "/comment",
        &[],
        Bytes::from_static(b"a=1"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 308, "the method and body are kept");
    // ACME http-01 and hosts no certificate covers are served over plain HTTP.
    let r = get(
        edge.onair.http,
        "portal.test",
        "/.well-known/acme-challenge/token",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = get(edge.onair.http, "uncovered.test", "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(edge.origin.proxied_hits(), 2);
}

/// The leaf certificate a connection got, in DER.
fn leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_a_reload_and_a_broken_one_changes_nothing() {
    let edge = edge("").await;
    let before = tls_connect(&edge, "portal.test", true, &[b"http/1.1"])
        .await
        .unwrap();
    let old_leaf = leaf(&before);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get_on =
        |sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>| {
            let req = hyper::Request::get("/kept")
                .header("Host", "portal.test")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req)
        };
    assert_eq!(get_on(&mut sender).await.unwrap().status(), 200);

    // Renewed files, then a reload.
    let renewed = edge.pki.issue(&["portal.test", "www.portal.test"]);
    let dir = edge.onair.dir.path();
    std::fs::write(dir.join("portal.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(dir.join("portal.key"), &renewed.key_pem).unwrap();
    assert_eq!(edge.onair.admin("POST", "/reload").await.status, 200);
    let after = tls_connect(&edge, "portal.test", true, &[b"http/1.1"])
        .await
        .unwrap();
    let new_leaf = leaf(&after);
    assert_ne!(
        new_leaf, old_leaf,
        "new handshakes get the renewed certificate"
    );
    // The connection opened before the reload goes on.
    sender.ready().await.unwrap();
    assert_eq!(get_on(&mut sender).await.unwrap().status(), 200);

    // A broken file: the reload fails, names the file, and the renewed certificate stays.
    std::fs::write(
        dir.join("portal.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let r = edge.onair.admin("POST", "/reload").await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("portal.pem"), "{}", r.text());
    let still = tls_connect(&edge, "portal.test", true, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf(&still), new_leaf);
    assert!(
        edge.onair
            .metric_becomes("onair_config_reloads_total{result=\"error\"}", |v| v >= 1.0)
            .await
    );
    // A renewal written to disk is picked up without a signal or admin call.
    let renewed_again = edge.pki.issue(&["portal.test", "www.portal.test"]);
    std::fs::write(dir.join("portal.key"), &renewed_again.key_pem).unwrap();
    std::fs::write(dir.join("portal.pem"), &renewed_again.cert_pem).unwrap();
    let picked_up = eventually(std::time::Duration::from_secs(10), || async {
        match tls_connect(&edge, "portal.test", true, &[b"http/1.1"]).await {
            Ok(tls) => leaf(&tls) != new_leaf,
            Err(_) => false,
        }
    })
    .await;
    assert!(picked_up, "the changed files were not reloaded");
    // The expiry of every served certificate is exported.
    let metrics = edge.onair.metrics_text().await;
    assert!(
        metrics.contains("onair_tls_cert_expiry_seconds{name=\"*.news.test\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_and_tls_below_1_2_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = edge("").await;
    // One client config, so its session cache carries the ticket from one connection to the
    // next.
    let config = edge.pki.client_config(&[b"http/1.1"]);
    let connect = || async {
        let tcp = TcpStream::connect(edge.https).await.unwrap();
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from("portal.test").unwrap(), tcp)
            .await
            .unwrap()
    };
    let first = connect().await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // A request reads the session tickets the server sends after the handshake.
    assert_eq!(get_h1(first, "portal.test", "/").await.status, 200);
    let second = connect().await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // A TLS 1.1 ClientHello (no supported_versions extension) gets an alert, not a ServerHello.
    let mut hello = vec![0x01, 0x00, 0x00, 0x00, 0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend_from_slice(&[0x01, 0x00]); // no compression
    let body_len = (hello.len() - 4) as u32;
    hello[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    record.extend_from_slice(&hello);
    let mut tcp = TcpStream::connect(edge.https).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tcp.read_to_end(&mut answer),
    )
    .await;
    assert!(
        answer.first().is_none_or(|&b| b == 0x15),
        "expected an alert or nothing, got {answer:02x?}"
    );
    assert!(
        edge.onair
            .metric_becomes(
                "onair_tls_handshake_failures_total{reason=\"protocol\"}",
                |v| v >= 1.0
            )
            .await,
        "{}",
        edge.onair.metrics_text().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_http_answers_are_cached_apart() {
    let edge = edge("").await;
    edge.origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        ..Behaviour::default()
    });
    let over_tls = |path: &'static str| {
        let edge = &edge;
        async move {
            let tls = tls_connect(edge, "portal.test", true, &[b"http/1.1"])
                .await
                .unwrap();
            get_h1(tls, "portal.test", path).await
        }
    };
    assert!(over_tls("/a")
        .await
        .header("cache-status")
        .unwrap()
        .contains("miss"));
    assert!(over_tls("/a")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    // The same URL over plain HTTP is another object (an origin may answer it differently,
    // e.g. with a redirect to https that must never be served over TLS).
    let plain = get(edge.onair.http, "portal.test", "/a").await.unwrap();
    assert!(
        plain.header("cache-status").unwrap().contains("miss"),
        "{:?}",
        plain.header("cache-status")
    );
    assert_eq!(edge.origin.proxied_hits(), 2);
}

/// HTTP/2 uploads have no clock inside Pingora: onair checks each chunk against
/// `body_timeout` + `min_upload_rate` and cuts a trickling stream with 408, which frees its
/// `max_inflight` slot for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_http2_upload_is_cut_and_frees_its_origin_slot() {
    let pki = Pki::new("onair test CA");
    let origin = Origin::start("o").await;
    let port = free_port();
    let issued = pki.issue(&["portal.test"]);
    let setup = Setup::new(format!(
        "[protect]\nbody_timeout = \"1s\"\nmin_upload_rate = \"1KiB\"\n\
         [[tls.cert]]\ncert = \"portal.pem\"\nkey = \"portal.key\"\n{}",
        one_site(origin.addr, "max_inflight = 1\nqueue = 0", "")
    ))
    .with_listen(&format!("https = [\"127.0.0.1:{port}\"]"))
    .with_file("portal.pem", &issued.cert_pem)
    .with_file("portal.key", &issued.key_pem);
    let onair = Onair::start(setup).await;
    let edge = Edge {
        onair,
        origin,
        https: ([127, 0, 0, 1], port).into(),
        pki,
    };
    let tls = tls_connect(&edge, "portal.test", true, &[b"h2"])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let req = hyper::Request::post("https://portal.test/upload")
        .body(body)
        .unwrap();
    let started = std::time::Instant::now();
    let upload = tokio::spawn(async move { sender.send_request(req).await });
    // 100 bytes every 300 ms: about 330 B/s against a minimum of 1 KiB/s after 1 s of grace.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 100]))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    trickle.abort();
    // The pool's only slot is free again.
    let r = get(edge.onair.http, "portal.test", "/after").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        edge.onair
            .metric_becomes("onair_slow_clients_total{reason=\"upload\"}", |v| v >= 1.0)
            .await
    );
}

/// A release's embargo holds over HTTP/2 as over HTTP/1: with the content warmed and stored
/// (the https URL, on a site that redirects plain HTTP),
/// every stream for it (GET, HEAD, a range, a conditional, a PURGE, another spelling) gets the
/// embargo answer, never the stored copy, and the origin hears of none of them; at the release
/// time the same connection gets the content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_embargo_holds_over_http2() {
    use std::time::{Duration, SystemTime};
    // Plain HTTP redirects to HTTPS here: the warm fetch, which goes through the plain
    // listener for the https URL, is not redirected.
    let edge = edge("redirect_http = true").await;
    edge.origin.set(Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: Bytes::from_static(b"the resolution"),
        ..Behaviour::default()
    });
    let at = SystemTime::now() + Duration::from_secs(5);
    let at_text = time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = format!(
        r#"{{"id": "h2", "at": "{at_text}", "embargo": {{"prefix": "https://portal.test/vk/"}},
            "warm": ["https://portal.test/vk/article"]}}"#
    );
    let r = edge.onair.admin_post("/release", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(Duration::from_secs(4), || async {
            let r = edge.onair.admin("GET", "/release/h2").await;
            let entry: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            entry["warm"]["warmed"] == 1
        })
        .await
    );
    let asked = edge.origin.hits();
    let sender = h2_connect(&edge, &[b"h2"]).await;
    let ask =
        |method: &'static str, path: &'static str, header: Option<(&'static str, &'static str)>| {
            let mut sender = sender.clone();
            async move {
                let mut req = hyper::Request::builder()
                    .method(method)
                    .uri(format!("https://portal.test{path}"));
                if let Some((name, value)) = header {
                    req = req.header(name, value);
                }
                let resp = sender
                    .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let cache_control = resp
                    .headers()
                    .get("cache-control")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, cache_control, body)
            }
        };
    for (method, path, header) in [
        ("GET", "/vk/article", None),
        ("HEAD", "/vk/article", None),
        ("GET", "/vk/article", Some(("range", "bytes=0-2"))),
        ("GET", "/vk/article", Some(("if-none-match", "*"))),
        ("PURGE", "/vk/article", None),
        ("GET", "/vk//Article/?x=1", None),
    ] {
        let (status, cache_control, body) = ask(method, path, header).await;
        assert_eq!(status, 404, "{method} {path} {header:?}");
        assert_eq!(cache_control.as_deref(), Some("no-store"));
        assert!(!body.windows(3).any(|w| w == b"res"), "{body:?}");
    }
    assert_eq!(edge.origin.hits(), asked, "the origin heard of a reader");
    tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let (status, _, body) = ask("GET", "/vk/article", None).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"the resolution");
    assert_eq!(edge.origin.hits(), asked, "served from the warmed copy");
}
