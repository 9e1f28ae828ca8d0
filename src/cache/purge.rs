//! Purging: which stored objects a purge request means, by URL, URL prefix or tag.
//!
//! Objects are matched on `host[:port]/path?query`, whatever the scheme, so purging
//! `https://site/x` also drops a copy fetched over plain HTTP. A purge removes every variant
//! (`Vary`) of a URL. Tags come from the origin's `Surrogate-Key` or `Cache-Tag` header, space-
//! or comma-separated.

use std::collections::HashSet;

use pingora::http::ResponseHeader;

use crate::router::normalize_host;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Exact `host[:port]/path?query` targets.
    Urls(HashSet<String>),
    /// A `host[:port]/path` prefix.
    Prefix(String),
    /// Objects carrying any of these tags.
    Tags(HashSet<String>),
}

impl Selector {
    /// Whether an object stored for `target` with `tags` matches.
    pub fn matches(&self, target: &str, tags: &[String]) -> bool {
        match self {
            Selector::Urls(urls) => urls.contains(target),
            Selector::Prefix(prefix) => target.starts_with(prefix.as_str()),
            Selector::Tags(wanted) => tags.iter().any(|t| wanted.contains(t)),
        }
    }
}

/// `host[:port]/path?query` of an absolute URL, with the host normalized and the scheme's
/// default port dropped, the way objects are stored.
pub fn target_of_url(url: &str) -> Result<String, String> {
    target_of_url_shaped(url, &|_, path| path.to_owned())
}

/// Like [`target_of_url`], with `shape(host, path_and_query)` giving the path and query as the
/// cache key holds them (a route's `query = "sort" | "drop"`).
pub fn target_of_url_shaped(
    url: &str,
    shape: &dyn Fn(&str, &str) -> String,
) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{url:?} needs http:// or https://"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("{url:?} needs http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let host =
        normalize_host(authority.host()).ok_or_else(|| format!("{url:?} has an invalid host"))?;
    let port = authority.port_u16().filter(|p| *p != default_port);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // Stored under the normal form of the path, whatever spelling the purge uses.
    let path = crate::uri_path::normalize_path_and_query(path)
        .map_err(|e| format!("{url:?}: {}", e.reason()))?;
    // A URL pasted from a browser may hold raw UTF-8 (`/tin-tức`); requests carry it
    // percent-encoded, and so does the cache key.
    let path = encode_non_ascii(&path);
    Ok(target(&host, port, &shape(&host, &path)))
}

/// `s` with every byte outside ASCII as an uppercase `%XX`.
pub fn encode_non_ascii(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The stored form of a request target.
pub fn target(host: &str, port: Option<u16>, path_and_query: &str) -> String {
    match port {
        Some(p) => format!("{host}:{p}{path_and_query}"),
        None => format!("{host}{path_and_query}"),
    }
}

/// Purge tags of a response: `Surrogate-Key` and `Cache-Tag` values, split on spaces and commas.
pub fn tags_of(resp: &ResponseHeader) -> Vec<String> {
    let mut tags: Vec<String> = ["surrogate-key", "cache-tag"]
        .iter()
        .flat_map(|name| resp.headers.get_all(*name))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',']))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// What a purge did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Objects removed or marked stale, in any tier.
    pub purged: usize,
    /// False while the disk tier's start-up scan is still running: `purged` then counts only
    /// the objects indexed so far. The purge itself is complete either way: the scan, and
    /// lookups of files it has not reached, apply it to every other file.
    pub index_ready: bool,
}

/// A `POST /purge` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub urls: Vec<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Mark stale instead of deleting.
    #[serde(default)]
    pub soft: bool,
}

impl PurgeRequest {
    /// The selector this request means; exactly one of urls, prefix and tags must be given.
    pub fn selector(&self) -> Result<Selector, String> {
        self.selector_shaped(&|_, path| path.to_owned())
    }

    /// The selector, with URLs shaped the way the cache key holds them (see
    /// [`target_of_url_shaped`]).
    pub fn selector_shaped(
        &self,
        shape: &dyn Fn(&str, &str) -> String,
    ) -> Result<Selector, String> {
        let given = usize::from(!self.urls.is_empty())
            + usize::from(self.prefix.is_some())
            + usize::from(!self.tags.is_empty());
        if given != 1 {
            return Err("give exactly one of \"urls\", \"prefix\" or \"tags\"".to_owned());
        }
        if let Some(prefix) = &self.prefix {
            return target_of_url(prefix).map(Selector::Prefix);
        }
        if !self.urls.is_empty() {
            let urls = self
                .urls
                .iter()
                .map(|u| target_of_url_shaped(u, shape))
                .collect::<Result<_, _>>()?;
            return Ok(Selector::Urls(urls));
        }
        Ok(Selector::Tags(self.tags.iter().cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalize_like_the_cache_key() {
        assert_eq!(
            target_of_url("https://Daihoi.Example.vn/a?b=1").unwrap(),
            "daihoi.example.vn/a?b=1"
        );
        assert_eq!(target_of_url("http://a.vn:80/").unwrap(), "a.vn/");
        assert_eq!(target_of_url("http://a.vn:8080/x").unwrap(), "a.vn:8080/x");
        assert_eq!(target_of_url("http://a.vn").unwrap(), "a.vn/");
        assert!(target_of_url("/relative").is_err());
        assert!(target_of_url("ftp://a.vn/x").is_err());
        assert_eq!(
            target_of_url("http://a.vn//news/%6cive/../1?x=%2e").unwrap(),
            "a.vn/news/1?x=%2e"
        );
    }

    #[test]
    fn tags_from_both_headers() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Surrogate-Key", "news  article-1").unwrap();
        r.insert_header("Cache-Tag", "article-1,live").unwrap();
        assert_eq!(tags_of(&r), ["article-1", "live", "news"]);
    }

    #[test]
    fn requests_name_one_selector() {
        let req = |json: &str| {
            serde_json::from_str::<PurgeRequest>(json)
                .unwrap()
                .selector()
        };
        assert!(matches!(
            req(r#"{"tags": ["news"]}"#),
            Ok(Selector::Tags(_))
        ));
        assert_eq!(
            req(r#"{"prefix": "https://a.vn/news/"}"#),
            Ok(Selector::Prefix("a.vn/news/".into()))
        );
        assert!(req(r#"{"tags": ["x"], "urls": ["http://a.vn/"]}"#).is_err());
        assert!(req(r#"{}"#).is_err());
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"url": "x"}"#).is_err());
        let s = Selector::Prefix("a.vn/news/".into());
        assert!(s.matches("a.vn/news/1", &[]));
        assert!(!s.matches("b.vn/news/1", &[]));
    }
}
