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
