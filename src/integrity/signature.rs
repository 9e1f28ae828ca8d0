//! HTTP Message Signatures (RFC 9421), Ed25519 only: the signature base is built by the RFC
//! (§2.5) from the covered components, in their order, and the `@signature-params` line; the
//! structured fields (`Signature-Input`, `Signature`, the component identifiers) are read and
//! written by `sfv`, so their serialization is the canonical one (§2.3).
//!
//! What the edge asks of a response ([`REQUIRED`]): a signature by one of the site's keys over
//! at least `@status`, `content-digest`, `content-type` and the request's `"@path";req` and
//! `"@query";req`, so that a signed body cannot be replayed as another page, with another type
//! or another status.
//! `created` in the future (beyond [`CLOCK_SLACK_S`]) or `expires` in the past fail; `alg`,
//! when given, must be `ed25519`; `nonce` and `tag` are read and not required.

use base64::Engine;
use http::HeaderMap;
use sfv::{BareItem, InnerList, Item, ListEntry, Parameters, SerializeValue};

use super::Failure;
use crate::keys::{SignKey, VerifyKey};

/// What a response's signature must cover, as component identifiers (name, from the request).
/// The request's query too: on a route that keys it, `/article?id=2`'s page must not pass for
/// `?id=1` (the origin gets the query the edge keys, so both ends see the same one; no query
/// is `?`).
pub const REQUIRED: [(&str, bool); 5] = [
    ("@status", false),
    ("content-digest", false),
    ("content-type", false),
    ("@path", true),
    ("@query", true),
];

/// The most signatures read from one response: each one by a known key costs a signature base
/// and a verification, and an origin (or a link) must not make a response cost seconds.
pub const MAX_LABELS: usize = 8;

/// How far in the future a signature's `created` may be (clocks are never exactly in step).
pub const CLOCK_SLACK_S: i64 = 5;

/// The request a message belongs to: the request itself, or the one a response answers
/// (its `;req` components).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host, and port when it is not the scheme's default; lowercase.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A message signed or verified: a response (`status`, its `headers`) with its request, or a
/// request alone (`status` none, `headers` its own).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub status: Option<u16>,
    pub headers: &'a HeaderMap,
    pub request: Request<'a>,
}

/// A covered component: a field name or a derived `@component`, and whether it is taken from
/// the request (`;req`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub req: bool,
}

impl Component {
    pub fn new(name: &str, req: bool) -> Component {
        Component {
            name: name.to_ascii_lowercase(),
            req,
        }
    }

    fn item(&self) -> Item {
        let mut params = Parameters::new();
        if self.req {
            params.insert("req".to_owned(), BareItem::Boolean(true));
        }
        Item::with_params(BareItem::String(self.name.clone()), params)
    }

    /// From an item of `Signature-Input`.
    fn from_item(item: &Item) -> Result<Component, String> {
        let BareItem::String(name) = &item.bare_item else {
            return Err("a covered component is not a string".to_owned());
        };
        let mut req = false;
        for (param, value) in &item.params {
            match (param.as_str(), value) {
                ("req", BareItem::Boolean(b)) => req = *b,
                _ => {
                    return Err(format!(
                        "component {name:?}: parameter {param:?} not supported"
                    ))
                }
            }
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("component {name:?} is not lowercase"));
        }
        Ok(Component {
            name: name.clone(),
            req,
        })
    }

    /// Its value in `msg` (RFC 9421 §2.1, §2.2).
    fn value(&self, msg: &Message) -> Result<Vec<u8>, String> {
        let request = &msg.request;
        // A request's own components; a response's, or its request's with `;req`.
        let of_request = self.req || msg.status.is_none();
        let Some(derived) = self.name.strip_prefix('@') else {
            let headers = if self.req {
                request.headers
            } else {
                msg.headers
            };
            let values: Vec<&[u8]> = headers
                .get_all(self.name.as_str())
                .iter()
                .map(|v| trim(v.as_bytes()))
                .collect();
            if values.is_empty() {
                return Err(format!("the message has no {:?}", self.name));
            }
            return Ok(values.join(&b", "[..]));
        };
        let path = if request.path.is_empty() {
            "/"
        } else {
            request.path
        };
        let value = match derived {
            "status" if !self.req => msg
                .status
                .map(|s| format!("{s:03}"))
                .ok_or("@status on a request")?,
            _ if !of_request => {
                return Err(format!("@{derived} of a response needs ;req"));
            }
            "method" => request.method.to_owned(),
            "scheme" => request.scheme.to_ascii_lowercase(),
            "authority" => request.authority.to_ascii_lowercase(),
            "path" => path.to_owned(),
            "query" => format!("?{}", request.query.unwrap_or("")),
            "request-target" => match request.query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            },
            "target-uri" => {
                let query = request.query.map(|q| format!("?{q}")).unwrap_or_default();
                format!(
                    "{}://{}{path}{query}",
                    request.scheme.to_ascii_lowercase(),
                    request.authority.to_ascii_lowercase()
                )
            }
            other => return Err(format!("@{other} is not supported")),
        };
        Ok(value.into_bytes())
    }
}

/// A field value without leading and trailing whitespace (RFC 9421 §2.1).
fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace());
    let end = value.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(s), Some(e)) => &value[s..=e],
        _ => &[],
    }
}

/// The signature base (RFC 9421 §2.5) of `components` in `msg`, with `params` serialized as
/// the `@signature-params` line; and that serialization (the `Signature-Input` member).
fn base(
    msg: &Message,
    components: &[Component],
    params: &Parameters,
) -> Result<(Vec<u8>, String), String> {
    let mut out = Vec::new();
    for (i, c) in components.iter().enumerate() {
        if components[..i].contains(c) {
            return Err(format!("{:?} is covered twice", c.name));
        }
        let id = c.item().serialize_value().map_err(|e| e.to_string())?;
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b": ");
        let value = c.value(msg)?;
        if value.contains(&b'\n') || value.contains(&b'\r') {
            return Err(format!("{:?} holds a line break", c.name));
        }
        out.extend_from_slice(&value);
        out.push(b'\n');
    }
    let list: sfv::List = vec![ListEntry::InnerList(InnerList::with_params(
        components.iter().map(Component::item).collect(),
        params.clone(),
    ))];
    let serialized = list.serialize_value().map_err(|e| e.to_string())?;
    out.extend_from_slice(b"\"@signature-params\": ");
    out.extend_from_slice(serialized.as_bytes());
    Ok((out, serialized))
}

/// The key that verified a response's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub label: String,
}

/// Checks `msg`'s signatures: one must be by a key of `keys` (id → key), cover every
/// component of `required`, be valid at `now` (UNIX seconds) and verify. When none does, the
/// failure of the one that came closest.
pub fn verify(
    msg: &Message,
    keys: &[(String, VerifyKey)],
    required: &[(&str, bool)],
    now: i64,
) -> Result<Verified, Failure> {
    let field = |name: &str| -> Option<Vec<u8>> {
        let values: Vec<&[u8]> = msg
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        (!values.is_empty()).then(|| values.join(&b", "[..]))
    };
    let (Some(input), Some(signature)) = (field("signature-input"), field("signature")) else {
        return Err(Failure::NoSignature);
    };
    let bad = |e: &str| Failure::BadSignature(e.to_owned());
    let inputs = sfv::Parser::parse_dictionary(&input).map_err(bad)?;
    if inputs.len() > MAX_LABELS {
        return Err(Failure::BadSignature(format!(
            "{} signatures: at most {MAX_LABELS} are read",
            inputs.len()
        )));
    }
    let signatures = sfv::Parser::parse_dictionary(&signature).map_err(bad)?;
    let mut closest = Failure::NoSignature;
    for (label, entry) in &inputs {
        let outcome = verify_one(msg, keys, required, now, entry, signatures.get(label));
        match outcome {
            Ok(key_id) => {
                return Ok(Verified {
                    key_id,
                    label: label.clone(),
                })
            }
            // A signature by a known key that fails says more than an unknown key.
            Err(failure) => {
                let rank = |f: &Failure| match f {
                    Failure::NoSignature => 0,
                    Failure::UnknownKey(_) => 1,
                    _ => 2,
                };
                if rank(&failure) >= rank(&closest) {
                    closest = failure;
                }
            }
        }
    }
    Err(closest)
}

fn verify_one(
    msg: &Message,
    keys: &[(String, VerifyKey)],
    required: &[(&str, bool)],
    now: i64,
    entry: &ListEntry,
    signature: Option<&ListEntry>,
) -> Result<String, Failure> {
    let bad = |why: String| Failure::BadSignature(why);
    let ListEntry::InnerList(list) = entry else {
        return Err(bad(
            "a Signature-Input member is not an inner list".to_owned()
        ));
    };
    let Some(ListEntry::Item(Item {
        bare_item: BareItem::ByteSeq(signature),
        ..
    })) = signature
    else {
        return Err(bad("no Signature of the same label".to_owned()));
    };
    let mut key_id = None;
    for (name, value) in &list.params {
        match (name.as_str(), value) {
            ("keyid", BareItem::String(id)) => key_id = Some(id.clone()),
            ("alg", BareItem::String(alg)) if alg == "ed25519" => {}
            ("alg", _) => return Err(bad(format!("alg {value:?}: only ed25519"))),
            ("created", BareItem::Integer(created)) => {
                if *created > now.saturating_add(CLOCK_SLACK_S) {
                    return Err(Failure::Expired);
                }
            }
            ("expires", BareItem::Integer(expires)) => {
                if *expires < now {
                    return Err(Failure::Expired);
                }
            }
            ("nonce" | "tag", BareItem::String(_)) => {}
            _ => return Err(bad(format!("signature parameter {name:?} not understood"))),
        }
    }
    let key_id = key_id.ok_or_else(|| bad("no keyid".to_owned()))?;
    let key = keys
        .iter()
        .find(|(id, _)| *id == key_id)
        .map(|(_, key)| key)
        .ok_or_else(|| Failure::UnknownKey(key_id.clone()))?;
    let components = list
        .items
        .iter()
        .map(Component::from_item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    for (name, req) in required {
        if !components.contains(&Component::new(name, *req)) {
            let req = if *req { ";req" } else { "" };
            return Err(bad(format!("it does not cover \"{name}\"{req}")));
        }
    }
    let (base, _) = base(msg, &components, &list.params).map_err(bad)?;
    if key.verifies(&base, signature) {
        Ok(key_id)
    } else {
        Err(bad("it does not verify".to_owned()))
    }
}

/// Signs `msg` over `components` with `key` (named `key_id`), created at `created` (UNIX
/// seconds): the `Signature-Input` and `Signature` values, under label `label`.
pub fn sign(
    msg: &Message,
    components: &[Component],
    key: &SignKey,
    key_id: &str,
    created: i64,
    label: &str,
) -> Result<(String, String), String> {
    let mut params = Parameters::new();
    params.insert("created".to_owned(), BareItem::Integer(created));
    params.insert("keyid".to_owned(), BareItem::String(key_id.to_owned()));
    params.insert("alg".to_owned(), BareItem::String("ed25519".to_owned()));
    let (base, serialized) = base(msg, components, &params)?;
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&base));
    Ok((
        format!("{label}={serialized}"),
        format!("{label}=:{signature}:"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9421 §B.1.4: the example Ed25519 key `test-key-ed25519`.
    const RFC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";
    const RFC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";

    /// RFC 9421 §B.2: the test request's head.
    fn test_request_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
            ("content-length", "18"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        h
    }

    fn test_request(headers: &HeaderMap) -> Request<'_> {
        Request {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers,
        }
    }

    fn rfc_keys() -> Vec<(String, VerifyKey)> {
        vec![(
            "test-key-ed25519".to_owned(),
            VerifyKey::from_pem(RFC_PUBLIC.as_bytes()).unwrap(),
        )]
    }

    /// RFC 9421 §B.2.6, "Signing a Request Using ed25519": the signature base, and the
    /// signature, which Ed25519 makes the same every time.
    #[test]
    fn the_rfc_ed25519_example_verifies_and_signs_alike() {
        let mut headers = test_request_headers();
        let msg = Message {
            status: None,
            headers: &headers,
            request: test_request(&headers),
        };
        let components: Vec<Component> = [
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ]
        .iter()
        .map(|n| Component::new(n, false))
        .collect();
        let mut params = Parameters::new();
        params.insert("created".to_owned(), BareItem::Integer(1_618_884_473));
        params.insert(
            "keyid".to_owned(),
            BareItem::String("test-key-ed25519".to_owned()),
        );
        let (base, input) = base(&msg, &components, &params).unwrap();
        let expected_base = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
\"@method\": POST\n\
\"@path\": /foo\n\
\"@authority\": example.com\n\
\"content-type\": application/json\n\
\"content-length\": 18\n\
\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
        assert_eq!(String::from_utf8(base.clone()).unwrap(), expected_base);
        let rfc_signature = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
        let key = SignKey::from_pem(RFC_PRIVATE.as_bytes()).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(key.sign(&base)),
            rfc_signature
        );
        // And through the fields, as a verifier meets them.
        headers.insert(
            "signature-input",
            format!("sig-b26={input}").parse().unwrap(),
        );
        headers.insert(
            "signature",
            format!("sig-b26=:{rfc_signature}:").parse().unwrap(),
        );
        let msg = Message {
            status: None,
            headers: &headers,
            request: test_request(&headers),
        };
        let verified = verify(&msg, &rfc_keys(), &[], 1_618_884_473).unwrap();
        assert_eq!(verified.key_id, "test-key-ed25519");
        assert_eq!(verified.label, "sig-b26");
        // Any change to a covered component breaks it.
        let mut altered = headers.clone();
        altered.insert("content-length", "19".parse().unwrap());
        let msg = Message {
            status: None,
            headers: &altered,
            request: test_request(&altered),
        };
        assert!(matches!(
            verify(&msg, &rfc_keys(), &[], 1_618_884_473),
            Err(Failure::BadSignature(_))
        ));
    }

    /// A response as an origin signs it (`onair sign`), checked as the edge checks it.
    fn signed_response(
        created: i64,
        components: &[Component],
        request_headers: &HeaderMap,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/html".parse().unwrap());
        headers.insert(
            "content-digest",
            super::super::digest::of(b"<p>hi</p>").parse().unwrap(),
        );
        let key = SignKey::from_pem(RFC_PRIVATE.as_bytes()).unwrap();
        let request = Request {
            method: "GET",
            scheme: "https",
            authority: "portal.example.vn",
            path: "/vankien/nghi-quyet",
            query: None,
            headers: request_headers,
        };
        let msg = Message {
            status: Some(200),
            headers: &headers,
            request,
        };
        let (input, signature) = sign(
            &msg,
            components,
            &key,
            "test-key-ed25519",
            created,
            "newsroom",
        )
        .unwrap();
        headers.insert("signature-input", input.parse().unwrap());
        headers.insert("signature", signature.parse().unwrap());
        headers
    }

    fn edge_check(
        headers: &HeaderMap,
        status: u16,
        path: &str,
        now: i64,
    ) -> Result<Verified, Failure> {
        let empty = HeaderMap::new();
        let msg = Message {
            status: Some(status),
            headers,
            request: Request {
                method: "GET",
                scheme: "https",
                authority: "portal.example.vn",
                path,
                query: None,
                headers: &empty,
            },
        };
        verify(&msg, &rfc_keys(), &REQUIRED, now)
    }

    fn required_components() -> Vec<Component> {
        REQUIRED
            .iter()
            .map(|(n, r)| Component::new(n, *r))
            .collect()
    }

    #[test]
    fn a_signed_response_holds_only_as_it_was_signed() {
        let empty = HeaderMap::new();
        let now = 1_800_000_000;
        let headers = signed_response(now, &required_components(), &empty);
        let path = "/vankien/nghi-quyet";
        assert!(edge_check(&headers, 200, path, now).is_ok());
        // Replayed as another page, or with another status: refused.
        assert!(matches!(
            edge_check(&headers, 200, "/other", now),
            Err(Failure::BadSignature(_))
        ));
        assert!(matches!(
            edge_check(&headers, 404, path, now),
            Err(Failure::BadSignature(_))
        ));
        // Another type.
        let mut retyped = headers.clone();
        retyped.insert("content-type", "text/javascript".parse().unwrap());
        assert!(edge_check(&retyped, 200, path, now).is_err());
        // Created in the future: refused (beyond a few seconds of clock slack).
        assert_eq!(
            edge_check(&headers, 200, path, now - 60).err(),
            Some(Failure::Expired)
        );
        assert!(edge_check(&headers, 200, path, now - CLOCK_SLACK_S).is_ok());
        // Unsigned; by a key the site does not list.
        assert_eq!(
            edge_check(&HeaderMap::new(), 200, path, now).err(),
            Some(Failure::NoSignature)
        );
        let mut stolen = headers.clone();
        let input = stolen["signature-input"]
            .to_str()
            .unwrap()
            .replace("test-key-ed25519", "stolen");
        stolen.insert("signature-input", input.parse().unwrap());
        assert_eq!(
            edge_check(&stolen, 200, path, now).err(),
            Some(Failure::UnknownKey("stolen".into()))
        );
    }

    #[test]
    fn a_page_signed_for_one_query_does_not_pass_for_another_and_labels_are_few() {
        let empty = HeaderMap::new();
        let now = 1_800_000_000;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/html".parse().unwrap());
        headers.insert(
            "content-digest",
            super::super::digest::of(b"<p>2</p>").parse().unwrap(),
        );
        let key = SignKey::from_pem(RFC_PRIVATE.as_bytes()).unwrap();
        fn article<'a>(
            headers: &'a HeaderMap,
            query: Option<&'a str>,
            empty: &'a HeaderMap,
        ) -> Message<'a> {
            Message {
                status: Some(200),
                headers,
                request: Request {
                    method: "GET",
                    scheme: "https",
                    authority: "a",
                    path: "/article",
                    query,
                    headers: empty,
                },
            }
        }
        let msg = |headers: &HeaderMap, query| {
            let m = article(headers, query, &empty);
            verify(&m, &rfc_keys(), &REQUIRED, now)
        };
        let (input, signature) = sign(
            &article(&headers, Some("id=2"), &empty),
            &required_components(),
            &key,
            "test-key-ed25519",
            now,
            "newsroom",
        )
        .unwrap();
        headers.insert("signature-input", input.parse().unwrap());
        headers.insert("signature", signature.parse().unwrap());
        assert!(msg(&headers, Some("id=2")).is_ok());
        assert!(msg(&headers, Some("id=1")).is_err());
        assert!(msg(&headers, None).is_err());
        // Many signatures: refused before any is checked.
        let many: Vec<String> = (0..=MAX_LABELS)
            .map(|i| format!("s{i}=(\"@status\");keyid=\"test-key-ed25519\""))
            .collect();
        headers.insert("signature-input", many.join(", ").parse().unwrap());
        match msg(&headers, Some("id=2")) {
            Err(Failure::BadSignature(why)) => assert!(why.contains("at most"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signature_must_cover_what_the_edge_requires_and_be_well_formed() {
        let empty = HeaderMap::new();
        let now = 1_800_000_000;
        // Not covering the request's path: a signed page could be served as any other.
        let partial: Vec<Component> = required_components()
            .into_iter()
            .filter(|c| c.name != "@path")
            .collect();
        let headers = signed_response(now, &partial, &empty);
        match edge_check(&headers, 200, "/vankien/nghi-quyet", now) {
            Err(Failure::BadSignature(why)) => assert!(why.contains("@path"), "{why}"),
            other => panic!("{other:?}"),
        }
        // @path of a response without ;req is no component of a response.
        let mut wrong = required_components();
        wrong.push(Component::new("@method", false));
        let key = SignKey::from_pem(RFC_PRIVATE.as_bytes()).unwrap();
        let msg = Message {
            status: Some(200),
            headers: &empty,
            request: Request {
                method: "GET",
                scheme: "https",
                authority: "a",
                path: "/",
                query: None,
                headers: &empty,
            },
        };
        assert!(sign(&msg, &wrong, &key, "k", now, "s").is_err());
        // Expired; garbage in the fields; a second label that verifies wins.
        let mut expired = signed_response(now, &required_components(), &empty);
        let input = format!(
            "{};expires={}",
            expired["signature-input"].to_str().unwrap(),
            now - 1
        );
        expired.insert("signature-input", input.parse().unwrap());
        assert_eq!(
            edge_check(&expired, 200, "/vankien/nghi-quyet", now).err(),
            Some(Failure::Expired)
        );
        let mut garbage = signed_response(now, &required_components(), &empty);
        garbage.insert("signature", "newsroom=:%%%:".parse().unwrap());
        assert!(matches!(
            edge_check(&garbage, 200, "/vankien/nghi-quyet", now),
            Err(Failure::BadSignature(_))
        ));
        let mut two = signed_response(now, &required_components(), &empty);
        let good_input = two["signature-input"].to_str().unwrap().to_owned();
        let good_sig = two["signature"].to_str().unwrap().to_owned();
        two.insert(
            "signature-input",
            format!("old=(\"@status\");keyid=\"gone\", {good_input}")
                .parse()
                .unwrap(),
        );
        two.insert(
            "signature",
            format!("old=:AAAA:, {good_sig}").parse().unwrap(),
        );
        assert!(edge_check(&two, 200, "/vankien/nghi-quyet", now).is_ok());
    }
}
