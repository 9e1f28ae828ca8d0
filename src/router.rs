//! Request routing: which site a Host belongs to, and which route (and so which pool) a path
//! takes inside that site.
//!
//! Built once per config snapshot; lookups borrow the request's host and path and allocate
//! nothing. Host matching order is exact name, then the longest `*.suffix` wildcard, then the
//! `"*"` default site. Inside a site the longest matching path prefix wins.

use std::collections::HashMap;

use crate::config;

/// Where a route sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    /// Index into the snapshot's pools.
    pub pool: usize,
    /// Whether the cache may answer or store requests on this route.
    pub cache: bool,
    /// How the query string enters the cache key.
    pub query: config::QueryKey,
    /// Freshness for responses that carry none (None: not stored).
    pub default_ttl: Option<std::time::Duration>,
    /// The route's own per-client limit: `(policy, limit)`, the policy keeping the route's
    /// counters apart from the node-wide ones (policy 0) and from other routes'. It is a hash of
    /// the site and the route's path, so a reload that adds or reorders routes keeps each
    /// route's counters.
    pub rate: Option<(u64, crate::protect::rate::Limit)>,
}

/// A site's routes, longest prefix first.
#[derive(Debug)]
pub struct SiteRoutes {
    /// `(prefix, target)`, sorted by descending prefix length.
    routes: Vec<(String, RouteTarget)>,
    default: RouteTarget,
}

impl SiteRoutes {
    /// The route for `path`.
    pub fn route_for(&self, path: &str) -> RouteTarget {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(self.default, |(_, target)| *target)
    }

    /// The pool index for `path`.
    pub fn pool_for(&self, path: &str) -> usize {
        self.route_for(path).pool
    }
}

/// Host -> site lookup table.
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    /// `(".suffix", site)`, longest suffix first, so `*.a.b.c` beats `*.b.c`.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl HostTable {
    /// Builds the table from validated sites (hosts are already lowercase and unique).
    pub fn new(sites: &[config::Site]) -> Self {
        let mut table = HostTable::default();
        for (i, site) in sites.iter().enumerate() {
            for host in &site.hosts {
                if host == "*" {
                    table.default = Some(i);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    table.wildcards.push((suffix.to_owned(), i));
                } else {
                    table.exact.insert(host.clone(), i);
                }
            }
        }
        table
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }

    /// The site index for a normalized host (see [`normalize_host`]).
    pub fn site_for(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            // `*.example.com` covers `a.example.com` but not `example.com` itself.
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, i)| *i)
            .or(self.default)
    }
}

/// Builds a site's route table; `pool_index` maps pool names (already validated) to indexes.
pub fn site_routes(site: &config::Site, pool_index: &dyn Fn(&str) -> usize) -> SiteRoutes {
    let mut routes: Vec<(String, RouteTarget)> = site
        .routes
        .iter()
        .map(|r| {
            let pool = r.pool.as_deref().unwrap_or(&site.pool);
            let rate = r
                .rate
                .map(|rate| (rate_policy(&site.name, &r.path), rate.limit));
            let target = RouteTarget {
                pool: pool_index(pool),
                cache: r.cache,
                query: r.query,
                default_ttl: r.default_ttl,
                rate,
            };
            (r.path.clone(), target)
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    SiteRoutes {
        routes,
        default: RouteTarget {
            pool: pool_index(&site.pool),
            cache: true,
            query: config::QueryKey::Keep,
            default_ttl: None,
            rate: None,
        },
    }
}

/// The rate-limit policy of a route: a stable hash of its site and path, never one of the
/// limiter's reserved ids (0 for the node-wide limit, u64::MAX - 1 for address blocks, u64::MAX
/// for told-off clients).
fn rate_policy(site: &str, path: &str) -> u64 {
    // FNV-1a: stable across processes and versions (the std hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in site.bytes().chain([0u8]).chain(path.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.clamp(1, u64::MAX - 2)
}

/// A Host/authority value split into the normalized host and the port it names: None when the
/// host is invalid or the port is not a number from 0 to 65535. A port that does not parse
/// must be refused, not dropped: the key would then ignore it while the origin saw it.
pub fn parse_authority(raw: &str) -> Option<(String, Option<u16>)> {
    let host = normalize_host(raw)?;
    let raw = raw.trim();
    let after_host = match raw.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
        None => raw.rsplit_once(':').map_or("", |(_, port)| port),
    };
    let port_text = after_host.strip_prefix(':').unwrap_or(after_host);
    let port = match (raw.starts_with('['), raw.contains(':')) {
        // `[::1]` and a bare name: no port. `name:` (empty port) is allowed by RFC 3986.
        (true, _) if after_host.is_empty() => None,
        (false, false) => None,
        _ if port_text.is_empty() => None,
        _ => Some(port_text.parse::<u16>().ok()?),
    };
    Some((host, port))
}

/// Lowercases a Host/authority value and drops the port and a trailing dot, so that
/// `News.Example.com.:80` and `news.example.com` route alike. Returns None for a value that
/// cannot be a host (empty, or with characters no host name has).
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        raw.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, hosts: &[&str], routes: &[(&str, &str)]) -> config::Site {
        config::Site {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            pool: "main".into(),
            maintenance_page: None,
            embargo_status: 404,
            force_stale_if_error: false,
            nojs_challenge: false,
            pass_headers: Vec::new(),
            integrity: None,
            routes: routes
                .iter()
                .map(|(p, pool)| config::Route {
                    path: p.to_string(),
                    pool: Some(pool.to_string()),
                    cache: *pool != "api",
                    query: config::QueryKey::Keep,
                    default_ttl: None,
                    rate: None,
                })
                .collect(),
        }
    }

    #[test]
    fn host_matching_order() {
        let sites = vec![
            site("exact", &["news.example.vn"], &[]),
            site("wild", &["*.example.vn"], &[]),
            site("deeper", &["*.live.example.vn"], &[]),
            site("default", &["*"], &[]),
        ];
        let t = HostTable::new(&sites);
        assert_eq!(t.site_for("news.example.vn"), Some(0));
        assert_eq!(t.site_for("video.example.vn"), Some(1));
        assert_eq!(t.site_for("a.live.example.vn"), Some(2));
        // A wildcard does not cover the bare suffix.
        assert_eq!(t.site_for("example.vn"), Some(3));
        assert_eq!(t.site_for("other.org"), Some(3));
        let no_default = HostTable::new(&sites[..3]);
        assert_eq!(no_default.site_for("other.org"), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let s = site(
            "s",
            &["*"],
            &[("/api/", "api"), ("/api/v2/", "v2"), ("/img", "img")],
        );
        let index = |name: &str| match name {
            "main" => 0,
            "api" => 1,
            "v2" => 2,
            _ => 3,
        };
        let r = site_routes(&s, &index);
        assert_eq!(r.pool_for("/"), 0);
        assert_eq!(r.pool_for("/api/x"), 1);
        assert_eq!(r.pool_for("/api/v2/x"), 2);
        assert_eq!(r.pool_for("/img/a.png"), 3);
        assert_eq!(r.pool_for("/images/a.png"), 0);
        assert_eq!(r.pool_for("/ap"), 0);
        assert!(!r.route_for("/api/x").cache);
        assert!(r.route_for("/api/v2/x").cache);
        assert!(r.route_for("/").cache);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(
            normalize_host("News.Example.VN:8080").as_deref(),
            Some("news.example.vn")
        );
        assert_eq!(normalize_host("example.vn.").as_deref(), Some("example.vn"));
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host("evil.com/x"), None);
        assert_eq!(
            parse_authority("A.vn.:8080"),
            Some(("a.vn".into(), Some(8080)))
        );
        assert_eq!(parse_authority("a.vn"), Some(("a.vn".into(), None)));
        assert_eq!(parse_authority("a.vn:"), Some(("a.vn".into(), None)));
        assert_eq!(
            parse_authority("[::1]:81"),
            Some(("[::1]".into(), Some(81)))
        );
        assert_eq!(parse_authority("[::1]"), Some(("[::1]".into(), None)));
        // A port the key could not hold: refused, never dropped.
        assert_eq!(parse_authority("a.vn:65616"), None);
        assert_eq!(parse_authority("a.vn:99999999999999999999"), None);
        assert_eq!(parse_authority("[::1]x"), None);
    }
}
