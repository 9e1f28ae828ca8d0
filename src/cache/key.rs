//! The cache key: what makes two requests the same cached object.
//!
//! Key = scheme + normalized host (lowercase, default port dropped) + path + query, each part
//! length-prefixed so that no two different requests can build the same bytes (`a` + `bc`
//! versus `ab` + `c`). Nothing else from the request enters the key; headers only matter
//! through `Vary`, which Pingora folds into the variance part of the key. A header that is not
//! in the key (X-Forwarded-Host, X-Original-URL, ...) therefore can never change what is stored
//! under it, which is what keeps the cache from being poisoned.

use std::borrow::Cow;

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;

use crate::config::QueryKey;

/// The path and query as the key sees them under a route's `query` setting.
pub fn keyed_target(path_and_query: &str, mode: QueryKey) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    match mode {
        QueryKey::Keep => Cow::Borrowed(path_and_query),
        QueryKey::Drop => Cow::Borrowed(path),
        QueryKey::Sort => {
            let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            if params.is_empty() {
                Cow::Borrowed(path)
            } else {
                Cow::Owned(format!("{path}?{}", params.join("&")))
            }
        }
    }
}

/// Builds the key. `host` is the normalized host (see `router::normalize_host`); `port` is the
/// port the client named, kept only when it is not the scheme's default; `path_and_query` is
/// already shaped by [`keyed_target`].
pub fn cache_key(scheme: &str, host: &str, port: Option<u16>, path_and_query: &str) -> CacheKey {
    cache_key_with(
        scheme,
        host,
        port,
        path_and_query,
        &[],
        &http::HeaderMap::new(),
    )
}

/// As [`cache_key`], with the values of the `passed` request headers (a site's `pass_headers`)
/// as a fifth part: they reach the origin, so each value selects its own object.
pub fn cache_key_with(
    scheme: &str,
    host: &str,
    port: Option<u16>,
    path_and_query: &str,
    passed: &[String],
    headers: &http::HeaderMap,
) -> CacheKey {
    let default_port = match scheme {
        "https" => 443,
        _ => 80,
    };
    let port = port.filter(|p| *p != default_port);
    let mut primary = Vec::with_capacity(scheme.len() + host.len() + path_and_query.len() + 24);
    push_part(&mut primary, scheme.as_bytes());
    push_part(&mut primary, host.as_bytes());
    match port {
        Some(p) => push_part(&mut primary, p.to_string().as_bytes()),
        None => push_part(&mut primary, b""),
    }
    push_part(&mut primary, path_and_query.as_bytes());
    if !passed.is_empty() {
        let mut part = Vec::new();
        for name in passed {
            part.extend_from_slice(name.as_bytes());
            for value in headers.get_all(name.as_str()) {
                // Length-prefixed like the parts: no value can pass for another's lines.
                part.push(b'\0');
                part.extend_from_slice(&(value.len() as u32).to_be_bytes());
                part.extend_from_slice(value.as_bytes());
            }
            part.push(b'\n');
        }
        push_part(&mut primary, &part);
    }
    let mut key = CacheKey::new(primary, "");
    // Pingora asks for the primary hash several times per request (lookup, lock, predictor)
    // and recomputes Blake2 each time; pinning it to its own value computes it once.
    let hash = key.primary_bin();
    key.set_primary_bin_override(hash);
    key
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The `host[:port]/path?query` a key was built from (see `purge::target`), read back from its
/// length-prefixed parts. None for a key not built by [`cache_key`].
pub fn target_of_key(primary: &[u8]) -> Option<String> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(5);
    let mut rest = primary;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        parts.push(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    // The fifth part (a site's passed headers) is raw bytes, not text: it is not read.
    let (host, port, path) = match parts[..] {
        [_scheme, host, port, path] | [_scheme, host, port, path, _] => (host, port, path),
        _ => return None,
    };
    let text = |b| std::str::from_utf8(b).ok();
    let (host, port, path) = (text(host)?, text(port)?, text(path)?);
    let port = if port.is_empty() {
        None
    } else {
        port.parse().ok()
    };
    Some(super::purge::target(host, port, path))
}

/// The port a Host/authority value names, if any.
pub fn port_of(raw_host: &str) -> Option<u16> {
    let after_v6 = raw_host.rsplit_once(']').map_or(raw_host, |(_, rest)| rest);
    after_v6.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(k: &CacheKey) -> String {
        k.primary()
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        assert_ne!(
            hex(&cache_key("http", "a.vn", None, "/x")),
            hex(&cache_key("http", "a.vn/", None, "x"))
        );
        assert_ne!(
            hex(&cache_key("http", "a", None, "b/c")),
            hex(&cache_key("http", "ab", None, "/c"))
        );
    }

    #[test]
    fn default_port_is_dropped_others_kept() {
        let plain = hex(&cache_key("http", "a.vn", None, "/"));
        assert_eq!(plain, hex(&cache_key("http", "a.vn", Some(80), "/")));
        assert_ne!(plain, hex(&cache_key("http", "a.vn", Some(8080), "/")));
        assert_ne!(plain, hex(&cache_key("https", "a.vn", None, "/")));
        assert_eq!(
            hex(&cache_key("https", "a.vn", None, "/")),
            hex(&cache_key("https", "a.vn", Some(443), "/"))
        );
    }

    #[test]
    fn query_is_part_of_the_key() {
        assert_ne!(
            hex(&cache_key("http", "a.vn", None, "/p?x=1")),
            hex(&cache_key("http", "a.vn", None, "/p?x=2"))
        );
    }

    #[test]
    fn pinned_hash_is_the_plain_hash() {
        let k = cache_key("http", "a.vn", None, "/x");
        let plain = CacheKey::new(k.primary_key().to_vec(), "");
        assert_eq!(k.primary_bin(), plain.primary_bin());
    }

    #[test]
    fn targets_read_back_from_keys() {
        let k = cache_key("https", "a.vn", Some(8443), "/x?y=1");
        assert_eq!(
            target_of_key(k.primary_key()).as_deref(),
            Some("a.vn:8443/x?y=1")
        );
        let k = cache_key("http", "a.vn", Some(80), "/");
        assert_eq!(target_of_key(k.primary_key()).as_deref(), Some("a.vn/"));
        assert_eq!(target_of_key(b"junk"), None);
        // Passed headers of any bytes do not hide the target.
        let mut headers = http::HeaderMap::new();
        headers.insert("x-original-url", "a".repeat(200).parse().unwrap());
        headers.append(
            "x-original-url",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        let k = cache_key_with(
            "http",
            "a.vn",
            None,
            "/x",
            &["x-original-url".into()],
            &headers,
        );
        assert_eq!(target_of_key(k.primary_key()).as_deref(), Some("a.vn/x"));
    }

    #[test]
    fn query_modes() {
        assert_eq!(keyed_target("/a?b=2&a=1", QueryKey::Keep), "/a?b=2&a=1");
        assert_eq!(keyed_target("/a?b=2&a=1", QueryKey::Sort), "/a?a=1&b=2");
        assert_eq!(keyed_target("/a?b=2&a=1", QueryKey::Drop), "/a");
        assert_eq!(keyed_target("/a", QueryKey::Sort), "/a");
        assert_eq!(keyed_target("/a?", QueryKey::Sort), "/a");
        assert_eq!(keyed_target("/a?&&x=1", QueryKey::Sort), "/a?x=1");
    }

    #[test]
    fn ports() {
        assert_eq!(port_of("a.vn:8080"), Some(8080));
        assert_eq!(port_of("a.vn"), None);
        assert_eq!(port_of("[::1]:81"), Some(81));
        assert_eq!(port_of("[::1]"), None);
    }
}
