//! Signed content: the newsroom's tools on the command line (`onair keygen`, `onair sign`),
//! checked as the edge checks what an origin sends.

use std::process::Command;

use onair::integrity::signature::{self, Message, Request, REQUIRED};
use onair::keys::VerifyKey;

use crate::common::onair_bin;

/// `onair keygen` makes a pair OpenSSL's forms hold; `onair sign` prints the headers an origin
/// sends, which verify with the public half for that path, status and body, and only for them.
#[test]
fn keygen_and_sign_make_headers_the_edge_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(onair_bin())
        .args(["keygen", "--out"])
        .arg(dir.path().join("newsroom"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over an existing key.
    let again = Command::new(onair_bin())
        .args(["keygen", "--out"])
        .arg(dir.path().join("newsroom"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let page = dir.path().join("page.html");
    std::fs::write(&page, "<h1>Nghị quyết</h1>").unwrap();
    let out = Command::new(onair_bin())
        .arg("sign")
        .arg(&page)
        .arg("--key")
        .arg(dir.path().join("newsroom.key"))
        .args([
            "--key-id",
            "newsroom-2027",
            "--path",
            "/vankien/nghi-quyet",
            "--content-type",
            "text/html; charset=utf-8",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut headers = http::HeaderMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (name, value) = line.split_once(": ").unwrap();
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let public = std::fs::read(dir.path().join("newsroom.pub")).unwrap();
    let keys = vec![(
        "newsroom-2027".to_owned(),
        VerifyKey::from_pem(&public).unwrap(),
    )];
    let none = http::HeaderMap::new();
    let check = |path: &str, status: u16| {
        let msg = Message {
            status: Some(status),
            headers: &headers,
            request: Request {
                method: "GET",
                scheme: "https",
                authority: "portal.example.vn",
                path,
                query: None,
                headers: &none,
            },
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        signature::verify(&msg, &keys, &REQUIRED, now)
    };
    assert!(check("/vankien/nghi-quyet", 200).is_ok());
    assert!(check("/vankien/other", 200).is_err());
    assert!(check("/vankien/nghi-quyet", 500).is_err());
    let mut digest =
        onair::integrity::digest::Check::new(headers.get("content-digest").map(|v| v.as_bytes()))
            .unwrap();
    digest.update("<h1>Nghị quyết</h1>".as_bytes());
    assert!(digest.finish().is_ok());
}

/// Origin answers signed as `onair sign` does, for `path`, with `key`.
fn signed(key: &str, key_id: &str, path: &str, body: &'static [u8]) -> crate::common::Behaviour {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut headers: Vec<(String, String)> =
        onair::integrity::tools::sign(&onair::integrity::tools::ToSign {
            body,
            path,
            content_type: "text/html",
            status: 200,
            key_pem: key.as_bytes(),
            key_id,
            label: "newsroom",
            created,
        })
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    headers.push(("Cache-Control".into(), "max-age=600".into()));
    crate::common::Behaviour {
        headers,
        body: bytes::Bytes::from_static(body),
        ..Default::default()
    }
}

/// `[site.integrity]` in report mode: a signed page passes; an unsigned one, one by a key the
/// site does not list, one signed for another path and one whose body is not what was signed
/// are each counted by reason and logged with their URL, and served and cached as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_counts_and_logs_every_failure_and_serves_as_before() {
    use crate::common::*;
    let (newsroom, newsroom_pub) = onair::keys::generate().unwrap();
    let (intruder, _) = onair::keys::generate().unwrap();
    let origin = Origin::start("origin").await;
    let site = one_site(origin.addr, "", "").replacen(
        "pool = \"p\"\n",
        "pool = \"p\"\n[site.integrity]\nmode = \"report\"\n\
         keys = [{ id = \"newsroom-2027\", public_key = \"newsroom.pub\" }]\n",
        1,
    );
    let n = Onair::start(Setup::new(site).with_file("newsroom.pub", &newsroom_pub)).await;
    let failures =
        |reason: &str| format!("onair_integrity_failures_total{{reason=\"{reason}\",site=\"s\"}}");
    origin.set(signed(&newsroom, "newsroom-2027", "/good", b"<p>good</p>"));
    assert_eq!(
        get(n.http, "a", "/good").await.unwrap().text(),
        "<p>good</p>"
    );
    for (path, behaviour, reason) in [
        (
            "/unsigned",
            Behaviour {
                headers: vec![("Cache-Control".into(), "max-age=600".into())],
                body: bytes::Bytes::from_static(b"<p>defaced</p>"),
                ..Behaviour::default()
            },
            "no_signature",
        ),
        (
            "/stolen",
            signed(&intruder, "stolen-key", "/stolen", b"<p>defaced</p>"),
            "unknown_key",
        ),
        (
            "/elsewhere",
            signed(&newsroom, "newsroom-2027", "/good", b"<p>good</p>"),
            "bad_signature",
        ),
    ] {
        origin.set(behaviour);
        assert_eq!(get(n.http, "a", path).await.unwrap().status, 200, "{path}");
        assert!(
            n.metric_becomes(&failures(reason), |v| v == 1.0).await,
            "{path}: {}",
            n.metrics_text().await
        );
    }
    // Signed, then altered on the way: the body does not hash to the signed digest.
    let mut altered = signed(&newsroom, "newsroom-2027", "/altered", b"<p>the text</p>");
    altered.body = bytes::Bytes::from_static(b"<p>the TEXT</p>");
    origin.set(altered);
    assert_eq!(
        get(n.http, "a", "/altered").await.unwrap().text(),
        "<p>the TEXT</p>"
    );
    assert!(
        n.metric_becomes(&failures("digest_mismatch"), |v| v == 1.0)
            .await
    );
    // The signed page counted nothing; what failed is cached as before (report mode).
    assert!(n.metric(&failures("bad_signature")).await == Some(1.0));
    let asked = origin.hits();
    assert_eq!(get(n.http, "a", "/unsigned").await.unwrap().status, 200);
    assert_eq!(origin.hits(), asked, "report mode caches as before");
    assert!(
        n.stderr().contains("integrity:") && n.stderr().contains("http://a/"),
        "{}",
        n.stderr()
    );
}

/// What is checked is what gets stored: a reader's HEAD (the cache asks the origin a GET, and
/// stores its body) is checked over the body; an empty body is checked too (it ends with its
/// head); and a signed field the hop-by-hop rules would take away (`Connection: content-type`)
/// fails the check instead of leaving unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_checks_what_is_stored_and_served() {
    use crate::common::*;
    let (newsroom, newsroom_pub) = onair::keys::generate().unwrap();
    let origin = Origin::start("origin").await;
    let site = one_site(origin.addr, "", "").replacen(
        "pool = \"p\"\n",
        "pool = \"p\"\n[site.integrity]\n\
         keys = [{ id = \"newsroom-2027\", public_key = \"newsroom.pub\" }]\n",
        1,
    );
    let n = Onair::start(Setup::new(site).with_file("newsroom.pub", &newsroom_pub)).await;
    let failures =
        |reason: &str| format!("onair_integrity_failures_total{{reason=\"{reason}\",site=\"s\"}}");
    // Signed for one body, sent with another; asked first by a HEAD.
    let mut forged = signed(&newsroom, "newsroom-2027", "/head", b"<p>signed</p>");
    forged.body = bytes::Bytes::from_static(b"<p>forged!</p>");
    origin.set(forged);
    let r = request(n.http, "HEAD", "a", "/head", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        n.metric_becomes(&failures("digest_mismatch"), |v| v == 1.0)
            .await,
        "{}",
        n.metrics_text().await
    );
    // Signed for a body, sent empty.
    let mut emptied = signed(&newsroom, "newsroom-2027", "/empty", b"<p>signed</p>");
    emptied.body = bytes::Bytes::new();
    origin.set(emptied);
    assert_eq!(get(n.http, "a", "/empty").await.unwrap().status, 200);
    assert!(
        n.metric_becomes(&failures("digest_mismatch"), |v| v == 2.0)
            .await
    );
    // Signed, with its Content-Type named as hop-by-hop.
    let mut hop = signed(&newsroom, "newsroom-2027", "/hop", b"<p>signed</p>");
    hop.headers
        .push(("Connection".into(), "content-type".into()));
    origin.set(hop);
    assert_eq!(get(n.http, "a", "/hop").await.unwrap().status, 200);
    assert!(
        n.metric_becomes(&failures("bad_signature"), |v| v == 1.0)
            .await
    );
    // And a page signed as it is served passes, HEAD first or not.
    origin.set(signed(&newsroom, "newsroom-2027", "/fine", b"<p>fine</p>"));
    let r = request(n.http, "HEAD", "a", "/fine", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        get(n.http, "a", "/fine").await.unwrap().text(),
        "<p>fine</p>"
    );
    assert_eq!(n.metric(&failures("digest_mismatch")).await, Some(2.0));
    assert_eq!(n.metric(&failures("bad_signature")).await, Some(1.0));
}

/// Where the cache is off, a reader's HEAD goes to the origin as a HEAD: no body comes back,
/// and its signed head is all there is to check (no false digest failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_passed_through_is_checked_on_its_head_alone() {
    use crate::common::*;
    let (newsroom, newsroom_pub) = onair::keys::generate().unwrap();
    let origin = Origin::start("origin").await;
    let site = format!(
        "[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [site.integrity]\nkeys = [{{ id = \"newsroom-2027\", public_key = \"newsroom.pub\" }}]\n\
         [[site.route]]\npath = \"/live/\"\ncache = false\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    );
    let n = Onair::start(Setup::new(site).with_file("newsroom.pub", &newsroom_pub)).await;
    origin.set(signed(
        &newsroom,
        "newsroom-2027",
        "/live/score",
        b"<p>2-1</p>",
    ));
    let r = request(n.http, "HEAD", "a", "/live/score", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        get(n.http, "a", "/live/score").await.unwrap().text(),
        "<p>2-1</p>"
    );
    assert_eq!(origin.proxied_hits(), 2, "both went to the origin");
    assert!(
        !n.metrics_text()
            .await
            .contains("onair_integrity_failures_total{"),
        "{}",
        n.metrics_text().await
    );
}
