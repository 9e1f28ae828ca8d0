//! TLS to the origins: verification against a private CA and the SNI name, mutual TLS
//! (authenticated origin pulls), HTTP/2 with multiplexing, and a certificate that does not
//! verify treated as an origin failure, never a silent downgrade.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::common::*;

/// A site whose pool speaks TLS to `origins` as `origin.test`, trusting `ca.pem`; `extra` adds
/// pool keys.
fn tls_site(origins: &[std::net::SocketAddr], extra: &str) -> Setup {
    let mut body = format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n[[pool]]\nname = \"p\"\ntls = true\n\
         sni = \"origin.test\"\nca_file = \"ca.pem\"\nconnect_timeout = \"1s\"\n{extra}\n"
    );
    for addr in origins {
        body.push_str(&format!("  [[pool.origin]]\n  addr = \"{addr}\"\n"));
    }
    Setup::new(body)
}

fn fine() -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), "no-store".into())],
        body: Bytes::from_static(b"over tls"),
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_against_a_private_ca_with_connection_reuse() {
    let pki = Pki::new("onair test CA");
    let cert = pki.issue(&["origin.test"]);
    let (origin, handshakes) = Origin::start_tls("tls", Pki::server_config(&cert, None)).await;
    origin.set(fine());
    let onair = Onair::start(tls_site(&[origin.addr], "").with_file("ca.pem", &pki.ca_pem())).await;
    for i in 0..20 {
        let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "over tls"),
            "request {i}"
        );
    }
    assert_eq!(origin.hits(), 20);
    // One connection, reused: not a handshake per request.
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    let seen = origin.last_proxied().unwrap();
    assert_eq!(seen[":version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_an_origin_failure() {
    let pki = Pki::new("onair test CA");
    let rogue_ca = Pki::new("someone else");
    let good = pki.issue(&["origin.test"]);
    // Three ways to fail: another CA, another name, expired.
    let wrong_ca = rogue_ca.issue(&["origin.test"]);
    let wrong_name = pki.issue(&["elsewhere.test"]);
    let expired = pki.issue_expired(&["origin.test"]);
    for (case, bad_cert) in [
        ("another CA", wrong_ca),
        ("another name", wrong_name),
        ("expired", expired),
    ] {
        let (bad, bad_handshakes) =
            Origin::start_tls("bad", Pki::server_config(&bad_cert, None)).await;
        let (ok, _) = Origin::start_tls("good", Pki::server_config(&good, None)).await;
        bad.set(fine());
        ok.set(fine());
        // Two origins: the one that does not verify fails over to the one that does.
        let onair =
            Onair::start(tls_site(&[bad.addr, ok.addr], "").with_file("ca.pem", &pki.ca_pem()))
                .await;
        for i in 0..6 {
            let r = get(onair.http, "a", &format!("/{i}")).await.unwrap();
            assert_eq!(r.status, 200, "{case}: request {i}");
            assert_eq!(r.header("x-origin"), Some("good"), "{case}");
        }
        assert_eq!(
            bad.hits(),
            0,
            "{case}: a request reached an unverified origin"
        );
        assert_eq!(bad_handshakes.load(Ordering::SeqCst), 0, "{case}");
        // Alone, it gets nothing either: the reader gets the maintenance page.
        let alone =
            Onair::start(tls_site(&[bad.addr], "").with_file("ca.pem", &pki.ca_pem())).await;
        let r = get(alone.http, "a", "/x").await.unwrap();
        assert_eq!(r.status, 503, "{case}");
        assert!(r.header("retry-after").is_some());
        assert_eq!(bad.hits(), 0, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_for_authenticated_origin_pulls() {
    let pki = Pki::new("onair test CA");
    let edges = Pki::new("edge client CA");
    let server = pki.issue(&["origin.test"]);
    let client = edges.issue(&["edge-hn-1.test"]);
    let (origin, handshakes) =
        Origin::start_tls("mtls", Pki::server_config(&server, Some(&edges))).await;
    origin.set(fine());
    let with_cert = Onair::start(
        tls_site(
            &[origin.addr],
            "client_cert = \"edge.pem\"\nclient_key = \"edge.key\"",
        )
        .with_file("ca.pem", &pki.ca_pem())
        .with_file("edge.pem", &client.cert_pem)
        .with_file("edge.key", &client.key_pem),
    )
    .await;
    let r = get(with_cert.http, "a", "/pull").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "over tls"));
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    // An edge without the client certificate is refused by the origin.
    let without =
        Onair::start(tls_site(&[origin.addr], "").with_file("ca.pem", &pki.ca_pem())).await;
    let r = get(without.http, "a", "/pull").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(origin.hits(), 1, "only the authenticated edge got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_the_origin_multiplexes_requests() {
    let pki = Pki::new("onair test CA");
    let cert = pki.issue(&["origin.test"]);
    let (origin, handshakes) = Origin::start_tls("h2", Pki::server_config(&cert, None)).await;
    origin.set(Behaviour {
        delay: std::time::Duration::from_millis(300),
        ..fine()
    });
    let onair =
        Onair::start(tls_site(&[origin.addr], "h2 = true").with_file("ca.pem", &pki.ca_pem()))
            .await;
    // Warm the connection, then 20 requests at once share it.
    get(onair.http, "a", "/warm").await.unwrap();
    let mut all = tokio::task::JoinSet::new();
    for i in 0..20 {
        let http = onair.http;
        all.spawn(async move { get(http, "a", &format!("/{i}")).await.unwrap().status });
    }
    while let Some(status) = all.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(origin.last_proxied().unwrap()[":version"], "HTTP/2.0");
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "one connection for all"
    );
    assert!(origin.peak_concurrency() > 1, "requests were multiplexed");
}

#[test]
fn check_names_the_bad_tls_file() {
    let pki = Pki::new("onair test CA");
    let other = Pki::new("other");
    let cert = pki.issue(&["edge.test"]);
    let foreign_key = other.issue(&["edge.test"]).key_pem;
    let expired = pki.issue_expired(&["edge.test"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cases = [
        (
            format!("ca_file = \"{}\"", dir.path().join("missing.pem").display()),
            "pool[0].ca_file",
            "cannot read",
        ),
        (
            format!("ca_file = \"{}\"", write("junk.pem", "junk")),
            "pool[0].ca_file",
            "no PEM certificate",
        ),
        (
            format!("client_cert = \"{}\"", write("c.pem", &cert.cert_pem)),
            "pool[0].client_key",
            "client_cert needs client_key",
        ),
        (
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                write("c2.pem", &cert.cert_pem),
                write("k2.pem", &foreign_key)
            ),
            "pool[0].client_cert",
            "does not match",
        ),
        (
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                write("e.pem", &expired.cert_pem),
                write("e.key", &expired.key_pem)
            ),
            "pool[0].client_cert",
            "expired",
        ),
    ];
    for (keys, path, needle) in cases {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:1\"]\n[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\ntls = true\nsni = \"origin.test\"\n{keys}\n  [[pool.origin]]\n  addr = \"127.0.0.1:2\"\n"
        );
        let (code, out) = check(&text);
        assert_eq!(code, 1, "{keys}");
        assert!(
            out.lines()
                .any(|l| l.starts_with(path) && l.contains(needle)),
            "{path} / {needle}:\n{out}"
        );
    }
}
