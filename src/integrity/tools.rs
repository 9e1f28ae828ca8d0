//! The newsroom's tools: `onair keygen` (a key pair to sign content with) and `onair sign`
//! (the headers an origin sends with a file, as the edge checks them).

use std::path::{Path, PathBuf};

use super::signature::{self, Component, Message, Request, REQUIRED};

/// `onair keygen --out NAME`: NAME.key (the private key, PKCS#8 PEM, mode 0600, never
/// overwritten) and NAME.pub (the public key, SPKI PEM, for a site's `[site.integrity]`).
/// Returns the two paths.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (private, public) = crate::keys::generate()?;
    crate::keys::write_pair(out, (".key", &private), (".pub", &public))
}

/// What `onair sign` signs: a body as served at `path` with `content_type` and `status`.
pub struct ToSign<'a> {
    pub body: &'a [u8],
    pub path: &'a str,
    pub content_type: &'a str,
    pub status: u16,
    pub key_pem: &'a [u8],
    pub key_id: &'a str,
    pub label: &'a str,
    /// The signature's `created` (UNIX seconds).
    pub created: i64,
}

/// The response headers an origin sends with the body, signed: `Content-Type`,
/// `Content-Digest`, `Signature-Input` and `Signature`, as `(name, value)`.
pub fn sign(what: &ToSign) -> Result<Vec<(&'static str, String)>, String> {
    let key = crate::keys::SignKey::from_pem(what.key_pem)?;
    let digest = super::digest::of(what.body);
    let mut headers = http::HeaderMap::new();
    let value = |v: &str| {
        http::HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a header value"))
    };
    headers.insert(http::header::CONTENT_TYPE, value(what.content_type)?);
    headers.insert("content-digest", value(&digest)?);
    let (path, query) = match what.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (what.path, None),
    };
    if !path.starts_with('/') {
        return Err(format!("--path {path:?}: the URL path, starting with /"));
    }
    let none = http::HeaderMap::new();
    let msg = Message {
        status: Some(what.status),
        headers: &headers,
        request: Request {
            method: "GET",
            scheme: "https",
            authority: "",
            path,
            query,
            headers: &none,
        },
    };
    let components: Vec<Component> = REQUIRED
        .iter()
        .map(|(name, req)| Component::new(name, *req))
        .collect();
    let (input, signature) = signature::sign(
        &msg,
        &components,
        &key,
        what.key_id,
        what.created,
        what.label,
    )?;
    Ok(vec![
        ("Content-Type", what.content_type.to_owned()),
        ("Content-Digest", digest),
        ("Signature-Input", input),
        ("Signature", signature),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_made_here_signs_what_the_edge_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keygen(&dir.path().join("newsroom")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            keygen(&dir.path().join("newsroom")).is_err(),
            "never overwritten"
        );
        let key_pem = std::fs::read(&private).unwrap();
        let headers = sign(&ToSign {
            body: b"<h1>Nghi quyet</h1>",
            path: "/vankien/nghi-quyet",
            content_type: "text/html; charset=utf-8",
            status: 200,
            key_pem: &key_pem,
            key_id: "newsroom-2027",
            label: "newsroom",
            created: 1_800_000_000,
        })
        .unwrap();
        let mut map = http::HeaderMap::new();
        for (name, value) in &headers {
            map.insert(*name, value.parse().unwrap());
        }
        let none = http::HeaderMap::new();
        let msg = Message {
            status: Some(200),
            headers: &map,
            request: Request {
                method: "GET",
                scheme: "http",
                authority: "portal.example.vn",
                path: "/vankien/nghi-quyet",
                query: None,
                headers: &none,
            },
        };
        let keys = vec![(
            "newsroom-2027".to_owned(),
            crate::keys::VerifyKey::from_pem(&std::fs::read(&public).unwrap()).unwrap(),
        )];
        assert!(signature::verify(&msg, &keys, &REQUIRED, 1_800_000_000).is_ok());
        let mut check =
            super::super::digest::Check::new(map.get("content-digest").map(|v| v.as_bytes()))
                .unwrap();
        check.update(b"<h1>Nghi quyet</h1>");
        assert!(check.finish().is_ok());
    }
}
