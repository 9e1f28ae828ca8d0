//! Raw config -> validated [`Config`], collecting every error with its key path.
//!
//! Each section is checked even when an earlier one failed, so one `onair check` run shows
//! the operator every problem in the file. Cross-references (a site naming a pool) are checked
//! after all pools are known.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::schema::*;
use super::units::{parse_duration, parse_size};
use super::*;

/// Largest maintenance page we load into memory; it is served from every node on every
/// outage, so anything bigger is a mistake rather than a page.
const MAX_MAINTENANCE_PAGE: u64 = 1 << 20;

pub(super) struct Errors<'a>(pub(super) &'a mut Vec<ConfigError>);

impl Errors<'_> {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                self.push(path, e);
                default
            }),
        }
    }

    /// A duration that must lie within `lo..=hi`.
    fn duration_in(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
        (lo, hi): (Duration, Duration),
    ) -> Duration {
        let d = self.duration(path, value, default);
        if !(lo..=hi).contains(&d) {
            self.push(path, format!("must be between {lo:?} and {hi:?}"));
        }
        d
    }

    fn size(&mut self, path: &str, value: &Option<String>, default: u64) -> u64 {
        match value {
            None => default,
            Some(text) => parse_size(text).unwrap_or_else(|err| {
                self.push(path, err);
                default
            }),
        }
    }

    fn int_in(&mut self, path: &str, value: Option<i64>, default: i64, lo: i64, hi: i64) -> i64 {
        match value {
            None => default,
            Some(v) if (lo..=hi).contains(&v) => v,
            Some(v) => {
                self.push(path, format!("{v} is out of range ({lo}..={hi})"));
                default
            }
        }
    }

    fn addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("{text:?} is not an IP:port address (host names are not resolved)"),
                );
                None
            }
        }
    }

    fn name(&mut self, path: &str, value: &Option<String>) -> String {
        match value.as_deref() {
            None | Some("") => {
                self.push(path, "is required");
                String::new()
            }
            Some(v) if !is_token(v) => {
                self.push(
                    path,
                    format!("{v:?} may only use letters, digits, '.', '_' and '-'"),
                );
                v.to_owned()
            }
            Some(v) => v.to_owned(),
        }
    }

    pub(super) fn file(
        &mut self,
        path: &str,
        base: &Path,
        file: &str,
        max: u64,
    ) -> Option<Vec<u8>> {
        let full = resolve(base, file);
        let read = std::fs::metadata(&full).and_then(|m| {
            if m.len() > max {
                Err(std::io::Error::other(format!("larger than {max} bytes")))
            } else {
                std::fs::read(&full)
            }
        });
        match read {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.push(path, format!("cannot read {}: {e}", full.display()));
                None
            }
        }
    }
}

/// Names that end up in headers, metric labels and file names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| is_token(h))
        .unwrap_or_else(|| "onair".to_owned())
}

pub(super) fn validate(
    raw: RawConfig,
    base: &Path,
    overrides: &Overrides,
    errors: &mut Vec<ConfigError>,
) -> Config {
    let mut e = Errors(errors);
    let RawConfig {
        node,
        listen,
        admin,
        log,
        cache,
        protect,
        tls,
        site,
        pool,
        dns,
        fleet,
        release,
    } = raw;

    let node = validate_node(node, overrides, &mut e);
    let listen = validate_listen(listen, &mut e);
    let admin = Admin {
        tokens: admin_tokens(&mut e, base, admin.token_file, admin.tokens),
        origin_addresses: admin.origin_addresses.unwrap_or(false),
    };
    let log = validate_log(log, base, &mut e);
    let cache = validate_cache(cache, base, &mut e);
    let pools = validate_pools(pool, base, &mut e);
    let pool_names: HashSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    let sites = validate_sites(site, base, &pool_names, &mut e);
    let protect = validate_protect(protect, base, &mut e);
    let tls = validate_tls(tls, base, &mut e);
    if !listen.https.is_empty() && tls.certs.is_empty() {
        e.push(
            "listen.https",
            "HTTPS listeners need at least one [[tls.cert]]",
        );
    }
    if !listen.proxy_protocol.is_empty() && protect.trusted_proxies.is_empty() {
        e.push(
            "listen.proxy_protocol",
            "needs protect.trusted_proxies: the load balancers' addresses, the only peers whose \
             PROXY header is believed",
        );
    }
    let dns = validate_dns(dns, &mut e);
    let fleet = fleet.map(|f| super::fleet::validate(f, base, &cache, &mut e));
    let release = validate_release(release, base, &mut e);
    Config {
        node,
        listen,
        admin,
        log,
        cache,
        protect,
        tls,
        sites,
        pools,
        dns,
        fleet,
        release,
    }
}

fn validate_release(r: RawRelease, base: &Path, e: &mut Errors<'_>) -> Release {
    let warm_lead = e.duration_in(
        "release.warm_lead",
        &r.warm_lead,
        Release::DEFAULT_WARM_LEAD,
        (Duration::ZERO, Duration::from_secs(86_400)),
    );
    let warm_concurrency = r
        .warm_concurrency
        .map_or(Release::DEFAULT_WARM_CONCURRENCY, |n| n as usize);
    if !(1..=64).contains(&warm_concurrency) {
        e.push("release.warm_concurrency", "must be between 1 and 64");
    }
    let warm_secret = r.warm_secret_file.and_then(|f| {
        let bytes = e.file("release.warm_secret_file", base, &f, 4096)?;
        let secret = String::from_utf8_lossy(&bytes).trim().to_owned();
        let ok = secret.len() >= 16 && secret.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            e.push(
                "release.warm_secret_file",
                "the secret must be at least 16 printable characters (it lets a request past \
                 an embargo)",
            );
        }
        ok.then_some(secret)
    });
    Release {
        warm_lead,
        warm_concurrency,
        warm_secret,
    }
}

fn validate_dns(d: RawDns, e: &mut Errors<'_>) -> Dns {
    let servers = d
        .servers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            // A bare address means the DNS port.
            let with_port = match text.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => text.parse::<SocketAddr>().ok(),
            };
            if with_port.is_none() {
                e.push(
                    format!("dns.servers[{i}]"),
                    format!("{text:?} is not an IP or IP:port address"),
                );
            }
            with_port
        })
        .collect();
    let min_ttl = e.duration("dns.min_ttl", &d.min_ttl, Duration::from_secs(5));
    let max_ttl = e.duration("dns.max_ttl", &d.max_ttl, Duration::from_secs(300));
    let timeout = e.duration("dns.timeout", &d.timeout, Duration::from_secs(2));
    // A day at most: a moved origin must not stay pinned longer (and the next lookup's time
    // must stay representable).
    const DAY: Duration = Duration::from_secs(86_400);
    if min_ttl.is_zero() || min_ttl > DAY {
        e.push("dns.min_ttl", "must be more than 0 and at most 1d");
    }
    if max_ttl < min_ttl || max_ttl > DAY {
        e.push("dns.max_ttl", "must be at least dns.min_ttl and at most 1d");
    }
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        e.push("dns.timeout", "must be more than 0 and at most 30s");
    }
    Dns {
        servers,
        min_ttl,
        max_ttl,
        timeout,
    }
}

/// An origin's `addr`: `IP:port`, or `name:port` for a DNS name.
fn origin_addr(e: &mut Errors<'_>, path: &str, text: &str) -> Option<OriginAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(OriginAddr::Ip(a));
    }
    // A trailing dot (fully qualified) is allowed; names are looked up fully qualified anyway.
    let named = text
        .rsplit_once(':')
        .and_then(|(host, port)| {
            Some((
                host.strip_suffix('.').unwrap_or(host),
                port.parse::<u16>().ok()?,
            ))
        })
        .filter(|(host, port)| {
            *port != 0 && is_dns_name(host) && host.parse::<std::net::IpAddr>().is_err()
        });
    match named {
        Some((host, port)) => Some(OriginAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        }),
        None => {
            e.push(
                path,
                format!("{text:?} is not an IP:port address or a DNS name with a port"),
            );
            None
        }
    }
}

fn validate_protect(p: RawProtect, base: &Path, e: &mut Errors<'_>) -> Protect {
    let mut ranges = |key: &str, list: Option<Vec<String>>| -> Vec<crate::cidr::Cidr> {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                text.parse()
                    .map_err(|err| e.push(format!("protect.{key}[{i}]"), err))
                    .ok()
            })
            .collect()
    };
    let trusted_proxies = ranges("trusted_proxies", p.trusted_proxies);
    let tiers = ranges("tiers", p.tiers);
    let deny = ranges("deny", p.deny);
    let allow = ranges("allow", p.allow);
    let d = Protect::default();
    let rate = rate_limit(e, "protect", &p.rate, p.burst);
    let block_rate = block_rate(e, &p.block_rate, p.block_burst, rate.as_ref());
    let max_header = e.size("protect.max_header", &p.max_header, d.max_header);
    let max_uri = e.size("protect.max_uri", &p.max_uri, d.max_uri);
    // Pingora reads at most 1 MiB of head and 256 fields; larger limits would never apply.
    if !(1024..=1 << 20).contains(&max_header) {
        e.push("protect.max_header", "must be between 1KiB and 1MiB");
    }
    if !(256..=max_header).contains(&max_uri) {
        e.push(
            "protect.max_uri",
            "must be between 256 bytes and protect.max_header",
        );
    }
    Protect {
        trusted_proxies,
        tiers,
        deny,
        allow,
        block_rate,
        rate,
        max_header,
        max_headers: e.int_in(
            "protect.max_headers",
            p.max_headers,
            d.max_headers as i64,
            8,
            256,
        ) as usize,
        max_uri,
        max_body: e.size("protect.max_body", &p.max_body, d.max_body),
        keepalive_timeout: {
            let t = e.duration(
                "protect.keepalive_timeout",
                &p.keepalive_timeout,
                d.keepalive_timeout,
            );
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
                e.push("protect.keepalive_timeout", "must be between 1s and 1h");
            }
            t
        },
        keepalive_requests: e.int_in(
            "protect.keepalive_requests",
            p.keepalive_requests,
            i64::from(d.keepalive_requests),
            1,
            1_000_000,
        ) as u32,
        max_connections_per_ip: e.int_in(
            "protect.max_connections_per_ip",
            p.max_connections_per_ip,
            i64::from(d.max_connections_per_ip),
            0,
            1_000_000,
        ) as u32,
        header_timeout: e.duration_in(
            "protect.header_timeout",
            &p.header_timeout,
            d.header_timeout,
            (Duration::from_secs(1), Duration::from_secs(300)),
        ),
        body_timeout: e.duration_in(
            "protect.body_timeout",
            &p.body_timeout,
            d.body_timeout,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        ),
        min_upload_rate: e.size(
            "protect.min_upload_rate",
            &p.min_upload_rate,
            d.min_upload_rate,
        ),
        shed_at: e.int_in("protect.shed_at", p.shed_at, 0, 0, 10_000_000) as usize,
        send_timeout: e.duration_in(
            "protect.send_timeout",
            &p.send_timeout,
            d.send_timeout,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        ),
        tarpit: e.duration_in(
            "protect.tarpit",
            &p.tarpit,
            d.tarpit,
            (Duration::ZERO, Duration::from_secs(60)),
        ),
        send_buffer: {
            let b = e.size("protect.send_buffer", &p.send_buffer, d.send_buffer as u64);
            if b != 0 && !(16 << 10..=64 << 20).contains(&b) {
                e.push(
                    "protect.send_buffer",
                    "must be 0 or between 16KiB and 64MiB",
                );
            }
            b as usize
        },
        attack: validate_attack(p.attack, base, e),
    }
}

fn validate_tls(t: RawTls, base: &Path, e: &mut Errors<'_>) -> Tls {
    let now = std::time::SystemTime::now();
    let certs = t
        .cert
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let at = format!("tls.cert[{i}]");
            let (Some(cert), Some(key)) = (c.cert.as_deref(), c.key.as_deref()) else {
                e.push(at, "needs both cert and key");
                return None;
            };
            let cert_path = resolve(base, cert);
            let chain = crate::tls::load_certs(&cert_path)
                .map_err(|why| e.push(format!("{at}.cert"), why))
                .ok();
            let key_path = resolve(base, key);
            let key = crate::tls::load_key(&key_path)
                .map_err(|why| e.push(format!("{at}.key"), why))
                .ok();
            let (chain, key) = (chain?, key?);
            if let Err(why) = crate::tls::check_pair(&chain, &key, now) {
                e.push(format!("{at}.cert"), format!("{cert}: {why}"));
                return None;
            }
            let leaf = chain.first()?;
            match crate::tls::names_and_expiry(leaf) {
                Ok((names, _)) if names.is_empty() => {
                    e.push(
                        format!("{at}.cert"),
                        format!("{cert}: no DNS name in subjectAltName to match SNI against"),
                    );
                    None
                }
                Ok((names, not_after)) => Some(TlsCert {
                    cert: cert_path,
                    key_path,
                    chain,
                    key,
                    names,
                    not_after,
                }),
                Err(why) => {
                    e.push(format!("{at}.cert"), format!("{cert}: {why}"));
                    None
                }
            }
        })
        .collect();
    let hsts = t.hsts.filter(|h| !h.is_empty());
    if let Some(h) = &hsts {
        let max_age = h
            .strip_prefix("max-age=")
            .map(|rest| rest.split(';').next().unwrap_or("").trim());
        let valid = max_age.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid || http::HeaderValue::from_str(h).is_err() {
            e.push(
                "tls.hsts",
                "must be a Strict-Transport-Security value: \"max-age=N; ...\"",
            );
        }
    }
    Tls {
        redirect_http: t.redirect_http.unwrap_or(false),
        hsts,
        certs,
    }
}

fn validate_attack(a: RawAttack, base: &Path, e: &mut Errors<'_>) -> Attack {
    let d = Attack::default();
    let mode = match a.mode.as_deref() {
        None => d.mode,
        Some(text) => AttackMode::parse(text).unwrap_or_else(|| {
            e.push("protect.attack.mode", "must be \"off\", \"on\" or \"auto\"");
            d.mode
        }),
    };
    let challenge = match a.challenge.as_deref() {
        None | Some("pow") => true,
        Some("off") => false,
        Some(_) => {
            e.push("protect.attack.challenge", "must be \"pow\" or \"off\"");
            d.challenge
        }
    };
    let key = a.key_file.and_then(|f| {
        let bytes = e.file("protect.attack.key_file", base, &f, 4096)?;
        let text = String::from_utf8_lossy(&bytes);
        let key = text.trim().as_bytes();
        if key.len() < 32 {
            e.push(
                "protect.attack.key_file",
                "the key must be at least 32 characters (it signs clearance cookies; e.g. \
                 `openssl rand -hex 32`)",
            );
            return None;
        }
        Some(AttackKey(Arc::from(key)))
    });
    Attack {
        mode,
        trigger_rps: e.int_in(
            "protect.attack.trigger_rps",
            a.trigger_rps,
            d.trigger_rps as i64,
            1,
            100_000_000,
        ) as u64,
        cooldown: e.duration_in(
            "protect.attack.cooldown",
            &a.cooldown,
            d.cooldown,
            (Duration::from_secs(1), Duration::from_secs(86_400)),
        ),
        challenge,
        difficulty: e.int_in(
            "protect.attack.difficulty",
            a.difficulty,
            i64::from(d.difficulty),
            1,
            // 22 bits is about four million hashes: seconds on a laptop, up to a minute on a
            // slow phone. More could outlast the challenge's five minutes.
            22,
        ) as u8,
        clearance: e.duration_in(
            "protect.attack.clearance",
            &a.clearance,
            d.clearance,
            (Duration::from_secs(60), Duration::from_secs(7 * 86_400)),
        ),
        key,
        nojs_wait: e.duration_in(
            "protect.attack.nojs_wait",
            &a.nojs_wait,
            d.nojs_wait,
            // At most half the challenge's five-minute life, so the answer can still arrive.
            (Duration::from_secs(5), Duration::from_secs(150)),
        ),
        nojs_clearance: e.duration_in(
            "protect.attack.nojs_clearance",
            &a.nojs_clearance,
            d.nojs_clearance,
            (Duration::from_secs(30), Duration::from_secs(3600)),
        ),
        nojs_per_block: e.int_in(
            "protect.attack.nojs_per_block",
            a.nojs_per_block,
            i64::from(d.nojs_per_block),
            1,
            100_000,
        ) as u32,
    }
}

/// `rate` + `burst` under `at` (`protect` or a route). `burst` defaults to one second's worth
/// of the rate (at least 1) and means nothing without `rate`.
fn rate_limit(
    e: &mut Errors<'_>,
    at: &str,
    rate: &Option<String>,
    burst: Option<i64>,
) -> Option<RateLimit> {
    let (rate_key, burst_key) = (format!("{at}.rate"), format!("{at}.burst"));
    rate_limit_at(e, &rate_key, &burst_key, rate, burst)
}

fn rate_limit_at(
    e: &mut Errors<'_>,
    rate_key: &str,
    burst_key: &str,
    rate: &Option<String>,
    burst: Option<i64>,
) -> Option<RateLimit> {
    let Some(text) = rate else {
        if burst.is_some() {
            e.push(burst_key, format!("needs {rate_key}"));
        }
        return None;
    };
    let per_second = crate::config::units::parse_rate(text)
        .map_err(|why| e.push(rate_key, why))
        .ok()?;
    let default_burst = per_second.ceil().clamp(1.0, 1_000_000.0) as i64;
    let burst = e.int_in(burst_key, burst, default_burst, 1, 1_000_000) as u32;
    Some(RateLimit {
        per_second,
        burst,
        limit: crate::protect::rate::Limit::new(per_second, burst),
    })
}

/// `protect.block_rate` / `block_burst`: as given; "off"; or, unset, 16 times the per-client
/// rate and burst (an office or a carrier NAT behind one /24 is many readers).
fn block_rate(
    e: &mut Errors<'_>,
    rate: &Option<String>,
    burst: Option<i64>,
    per_client: Option<&RateLimit>,
) -> Option<RateLimit> {
    let (rate_key, burst_key) = ("protect.block_rate", "protect.block_burst");
    if rate.as_deref() == Some("off") {
        if burst.is_some() {
            e.push(burst_key, format!("needs {rate_key}"));
        }
        return None;
    }
    if rate.is_some() || burst.is_some() {
        return rate_limit_at(e, rate_key, burst_key, rate, burst);
    }
    let per_client = per_client?;
    let per_second = per_client.per_second * 16.0;
    let burst = per_client.burst.saturating_mul(16);
    Some(RateLimit {
        per_second,
        burst,
        limit: crate::protect::rate::Limit::new(per_second, burst),
    })
}

fn validate_cache(c: RawCache, base: &Path, e: &mut Errors<'_>) -> Cache {
    let memory = e.size("cache.memory", &c.memory, 256 << 20);
    let max_object = e.size("cache.max_object", &c.max_object, 64 << 20);
    // moka weighs entries in u32: one object cannot exceed 4 GiB in the memory tier.
    if max_object > u64::from(u32::MAX) - 4096 {
        e.push("cache.max_object", "must be below 4GiB");
    }
    if memory > 0 && max_object > memory && c.disk_path.is_none() {
        e.push(
            "cache.max_object",
            "is larger than cache.memory (and there is no disk tier to hold such objects)",
        );
    }
    let purge_from = match c.purge_from {
        None => vec![
            crate::cidr::Cidr::from_str("127.0.0.1/32"),
            crate::cidr::Cidr::from_str("::1/128"),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                text.parse()
                    .map_err(|err| e.push(format!("cache.purge_from[{i}]"), err))
                    .ok()
            })
            .collect(),
    };
    let disk = e.size("cache.disk", &c.disk, 10 << 30);
    let disk_path = match c.disk_path.as_deref() {
        None => None,
        Some("") => {
            e.push(
                "cache.disk_path",
                "must not be empty (leave it out for memory only)",
            );
            None
        }
        Some(p) => Some(resolve(base, p)),
    };
    if disk_path.is_none() && c.disk.is_some() {
        e.push("cache.disk", "needs cache.disk_path");
    }
    Cache {
        memory,
        disk_path,
        disk,
        max_object,
        lock_timeout: e.duration(
            "cache.lock_timeout",
            &c.lock_timeout,
            Duration::from_secs(10),
        ),
        stale_while_revalidate: e.duration(
            "cache.stale_while_revalidate",
            &c.stale_while_revalidate,
            Duration::ZERO,
        ),
        stale_if_error: e.duration(
            "cache.stale_if_error",
            &c.stale_if_error,
            Duration::from_secs(7 * 86_400),
        ),
        purge_from,
    }
}

fn validate_node(node: RawNode, overrides: &Overrides, e: &mut Errors<'_>) -> Node {
    let id_value = overrides.node_id.clone().or(node.id);
    let id = match id_value {
        None => default_node_id(),
        Some(v) => e.name("node.id", &Some(v)),
    };
    let region = match overrides.region.clone().or(node.region) {
        None => String::new(),
        Some(v) => e.name("node.region", &Some(v)),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    Node {
        id,
        region,
        threads: e.int_in("node.threads", node.threads, cores, 1, 1024) as usize,
        grace_period: e.duration(
            "node.grace_period",
            &node.grace_period,
            Duration::from_secs(10),
        ),
        state_dir: PathBuf::from(
            node.state_dir
                .unwrap_or_else(|| "/var/lib/onair".to_owned()),
        ),
    }
}

/// Whether two listen addresses cannot both be bound: the same one, or the same port where
/// one is every address (`0.0.0.0` covers IPv4; `[::]` covers both families, as Linux binds
/// it by default).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let covers =
        |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a == b || covers(a, b) || covers(b, a)
}

fn validate_listen(listen: RawListen, e: &mut Errors<'_>) -> Listen {
    let mut seen: Vec<SocketAddr> = Vec::new();
    let mut check = |e: &mut Errors<'_>, path: String, text: &str| {
        let addr = e.addr(&path, text)?;
        if let Some(other) = seen.iter().find(|s| overlap(**s, addr)) {
            if *other == addr {
                e.push(path, format!("{addr} is used by another listener"));
            } else {
                e.push(path, format!("{addr} overlaps another listener ({other})"));
            }
        }
        seen.push(addr);
        Some(addr)
    };
    let http: Vec<SocketAddr> = listen
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, a)| check(e, format!("listen.http[{i}]"), a))
        .collect();
    let proxy_protocol: Vec<SocketAddr> = listen
        .proxy_protocol
        .iter()
        .enumerate()
        .filter_map(|(i, a)| check(e, format!("listen.proxy_protocol[{i}]"), a))
        .collect();
    let https: Vec<SocketAddr> = listen
        .https
        .iter()
        .enumerate()
        .filter_map(|(i, a)| check(e, format!("listen.https[{i}]"), a))
        .collect();
    if listen.http.is_empty() && listen.https.is_empty() && listen.proxy_protocol.is_empty() {
        e.push("listen.http", "at least one listener is required");
    }
    let metrics = listen
        .metrics
        .as_deref()
        .and_then(|a| check(e, "listen.metrics".into(), a));
    let admin = listen
        .admin
        .as_deref()
        .and_then(|a| check(e, "listen.admin".into(), a));
    Listen {
        http,
        https,
        proxy_protocol,
        metrics,
        admin,
    }
}

fn validate_log(log: RawLog, base: &Path, e: &mut Errors<'_>) -> Log {
    let access = match log.access.as_deref() {
        None | Some("stdout") => AccessLog::Stdout,
        Some("off") => AccessLog::Off,
        Some("") => {
            e.push("log.access", "use \"stdout\", \"off\" or a file path");
            AccessLog::Off
        }
        Some(path) => AccessLog::File(resolve(base, path)),
    };
    let level = log.level.unwrap_or_else(|| "info".to_owned());
    if !matches!(
        level.as_str(),
        "trace" | "debug" | "info" | "warn" | "error"
    ) {
        e.push(
            "log.level",
            format!("{level:?} is not one of trace, debug, info, warn, error"),
        );
    }
    Log { access, level }
}

fn validate_pools(pools: Vec<RawPool>, base: &Path, e: &mut Errors<'_>) -> Vec<Pool> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(pools.len());
    for (i, p) in pools.into_iter().enumerate() {
        let at = format!("pool[{i}]");
        let name = e.name(&format!("{at}.name"), &p.name);
        if !name.is_empty() && !names.insert(name.clone()) {
            e.push(
                format!("{at}.name"),
                format!("pool {name:?} is defined twice"),
            );
        }
        let tls = p.tls.unwrap_or(false);
        if tls
            && p.sni
                .as_deref()
                .filter(|s| !s.is_empty())
                .or(p.host.as_deref())
                .unwrap_or("")
                .is_empty()
        {
            // Pingora skips certificate verification when SNI is empty: refuse the config
            // rather than silently connect to an unverified origin.
            e.push(
                format!("{at}.sni"),
                "tls = true needs sni (or host): an empty SNI would disable certificate verification",
            );
        }
        let health = p.health.map(|h| Health {
            path: match h.path {
                Some(path) if !path.starts_with('/') => {
                    e.push(format!("{at}.health.path"), "must start with '/'");
                    path
                }
                Some(path) => path,
                None => "/".to_owned(),
            },
            interval: e.duration(
                &format!("{at}.health.interval"),
                &h.interval,
                Duration::from_secs(2),
            ),
            timeout: e.duration(
                &format!("{at}.health.timeout"),
                &h.timeout,
                Duration::from_secs(1),
            ),
            fall: e.int_in(&format!("{at}.health.fall"), h.fall, 2, 1, 100) as u32,
            rise: e.int_in(&format!("{at}.health.rise"), h.rise, 2, 1, 100) as u32,
        });
        if let Some(h) = &health {
            if h.interval.is_zero() {
                e.push(format!("{at}.health.interval"), "must be more than 0");
            }
            if h.timeout.is_zero() {
                e.push(format!("{at}.health.timeout"), "must be more than 0");
            }
        }
        if p.origin.is_empty() {
            e.push(format!("{at}.origin"), "a pool needs at least one origin");
        }
        let mut addrs = HashSet::new();
        let mut names = HashSet::new();
        let origins = p
            .origin
            .into_iter()
            .enumerate()
            .filter_map(|(j, o)| {
                let oat = format!("{at}.origin[{j}]");
                let region = o.region.map(|r| e.name(&format!("{oat}.region"), &Some(r)));
                let tier = e.int_in(&format!("{oat}.tier"), o.tier, 0, 0, 255) as u8;
                let weight = e.int_in(&format!("{oat}.weight"), o.weight, 1, 1, 1000) as u32;
                let addr = match o.addr {
                    None => {
                        e.push(format!("{oat}.addr"), "is required");
                        None
                    }
                    Some(a) => origin_addr(e, &format!("{oat}.addr"), &a),
                }?;
                if !addrs.insert(addr.clone()) {
                    e.push(
                        format!("{oat}.addr"),
                        format!("{addr} is listed twice in this pool"),
                    );
                }
                let name = o.name.map(|n| e.name(&format!("{oat}.name"), &Some(n)));
                if let Some(n) = &name {
                    if !names.insert(n.clone()) {
                        e.push(
                            format!("{oat}.name"),
                            format!("{n:?} is used twice in this pool"),
                        );
                    }
                }
                Some(Origin {
                    addr,
                    name,
                    region,
                    tier,
                    weight,
                })
            })
            .collect();
        let connect_timeout = e.duration(
            &format!("{at}.connect_timeout"),
            &p.connect_timeout,
            Duration::from_secs(2),
        );
        let read_timeout = e.duration(
            &format!("{at}.read_timeout"),
            &p.read_timeout,
            Duration::from_secs(15),
        );
        let total_timeout = e.duration(
            &format!("{at}.total_timeout"),
            &p.total_timeout,
            Duration::from_secs(300),
        );
        let queue_timeout = e.duration(
            &format!("{at}.queue_timeout"),
            &p.queue_timeout,
            Duration::from_secs(1),
        );
        let ca = p.ca_file.as_deref().and_then(|f| {
            crate::tls::load_certs(&resolve(base, f))
                .map_err(|why| e.push(format!("{at}.ca_file"), why))
                .ok()
        });
        let client_cert = match (p.client_cert.as_deref(), p.client_key.as_deref()) {
            (None, None) => None,
            (Some(_), None) => {
                e.push(format!("{at}.client_key"), "client_cert needs client_key");
                None
            }
            (None, Some(_)) => {
                e.push(format!("{at}.client_cert"), "client_key needs client_cert");
                None
            }
            (Some(cert), Some(key)) => {
                let chain = crate::tls::load_certs(&resolve(base, cert))
                    .map_err(|why| e.push(format!("{at}.client_cert"), why))
                    .ok();
                let key = crate::tls::load_key(&resolve(base, key))
                    .map_err(|why| e.push(format!("{at}.client_key"), why))
                    .ok();
                match (chain, key) {
                    (Some(chain), Some(key)) => {
                        match crate::tls::check_pair(&chain, &key, std::time::SystemTime::now()) {
                            Ok(()) => Some(ClientCert { chain, key }),
                            Err(why) => {
                                e.push(format!("{at}.client_cert"), format!("{cert}: {why}"));
                                None
                            }
                        }
                    }
                    _ => None,
                }
            }
        };
        let h2 = p.h2.unwrap_or(false);
        if !tls && (h2 || ca.is_some() || client_cert.is_some()) {
            let key = if h2 {
                "h2"
            } else if ca.is_some() {
                "ca_file"
            } else {
                "client_cert"
            };
            e.push(format!("{at}.{key}"), "needs tls = true");
        }
        let defaults = Passive::default();
        let passive = match p.passive {
            None => defaults,
            Some(raw) => {
                let passive = Passive {
                    failures: e.int_in(
                        &format!("{at}.passive.failures"),
                        raw.failures,
                        i64::from(defaults.failures),
                        0,
                        100,
                    ) as u32,
                    eject: e.duration(&format!("{at}.passive.eject"), &raw.eject, defaults.eject),
                    max_eject: e.duration(
                        &format!("{at}.passive.max_eject"),
                        &raw.max_eject,
                        defaults.max_eject,
                    ),
                };
                if passive.eject.is_zero() {
                    e.push(format!("{at}.passive.eject"), "must be more than 0");
                }
                if passive.max_eject < passive.eject {
                    e.push(
                        format!("{at}.passive.max_eject"),
                        "must be at least passive.eject",
                    );
                }
                passive
            }
        };
        if total_timeout < connect_timeout {
            e.push(
                format!("{at}.total_timeout"),
                "must be at least connect_timeout",
            );
        }
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("total_timeout", total_timeout),
        ] {
            if d.is_zero() {
                e.push(format!("{at}.{key}"), "must be more than 0");
            }
        }
        if let Some(host) = p.host.as_deref().filter(|h| !h.is_empty()) {
            let valid = host.parse::<http::uri::Authority>().is_ok_and(|a| {
                !a.as_str().contains('@') && (is_dns_name(a.host()) || a.host().starts_with('['))
            });
            if !valid {
                e.push(
                    format!("{at}.host"),
                    format!("{host:?} is not a host name (with an optional :port)"),
                );
            }
        }
        if let Some(sni) = p.sni.as_deref().filter(|s| !s.is_empty()) {
            if !is_dns_name(sni) {
                e.push(format!("{at}.sni"), format!("{sni:?} is not a DNS name"));
            }
        }
        let select = match p.select.as_deref() {
            None | Some("round_robin") => crate::config::Select::RoundRobin,
            Some("hash") => crate::config::Select::Hash,
            Some(other) => {
                e.push(
                    format!("{at}.select"),
                    format!("{other:?} is not one of \"round_robin\", \"hash\""),
                );
                crate::config::Select::RoundRobin
            }
        };
        out.push(Pool {
            name,
            select,
            fallback: p.fallback.filter(|f| !f.is_empty()),
            shields: p.shields.unwrap_or(false),
            tls,
            sni: p.sni.filter(|s| !s.is_empty()),
            host: p.host.filter(|s| !s.is_empty()),
            connect_timeout,
            read_timeout,
            max_attempts: e.int_in(&format!("{at}.max_attempts"), p.max_attempts, 3, 1, 16)
                as usize,
            total_timeout,
            max_inflight: e.int_in(
                &format!("{at}.max_inflight"),
                p.max_inflight,
                1024,
                1,
                1_000_000,
            ) as usize,
            queue: e.int_in(&format!("{at}.queue"), p.queue, 256, 0, 1_000_000) as usize,
            queue_timeout,
            ca,
            client_cert,
            h2,
            retry_budget: match p.retry_budget {
                None => 0.2,
                Some(b) if (0.0..=1.0).contains(&b) => b,
                Some(b) => {
                    e.push(
                        format!("{at}.retry_budget"),
                        format!("{b} is out of range (0.0..=1.0, a share of requests)"),
                    );
                    0.2
                }
            },
            health,
            passive,
            origins,
        });
    }
    // Fallback chains: every name known, no chain coming back on itself.
    for (i, p) in out.iter().enumerate() {
        let Some(first) = &p.fallback else { continue };
        let at = format!("pool[{i}].fallback");
        if !names.contains(first) {
            e.push(&at, format!("no pool is named {first:?}"));
            continue;
        }
        let mut seen = vec![p.name.as_str()];
        let mut next = Some(first.as_str());
        while let Some(name) = next {
            if seen.contains(&name) {
                e.push(&at, format!("the fallback chain comes back to {name:?}"));
                break;
            }
            seen.push(name);
            next = out
                .iter()
                .find(|q| q.name == name)
                .and_then(|q| q.fallback.as_deref());
        }
    }
    out
}

fn validate_sites(
    sites: Vec<RawSite>,
    base: &Path,
    pools: &HashSet<&str>,
    e: &mut Errors<'_>,
) -> Vec<Site> {
    let mut names = HashSet::new();
    let mut host_owner: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(sites.len());
    if sites.is_empty() {
        e.push("site", "at least one [[site]] is required");
    }
    let check_pool = |e: &mut Errors<'_>, path: String, name: &str| {
        if !pools.contains(name) {
            e.push(path, format!("no pool is named {name:?}"));
        }
    };
    for (i, s) in sites.into_iter().enumerate() {
        let at = format!("site[{i}]");
        let name = e.name(&format!("{at}.name"), &s.name);
        if !name.is_empty() && !names.insert(name.clone()) {
            e.push(
                format!("{at}.name"),
                format!("site {name:?} is defined twice"),
            );
        }
        if s.hosts.is_empty() {
            e.push(
                format!("{at}.hosts"),
                "a site needs at least one host (\"*\" for any)",
            );
        }
        let mut hosts = Vec::with_capacity(s.hosts.len());
        for (j, h) in s.hosts.iter().enumerate() {
            let hat = format!("{at}.hosts[{j}]");
            let host = h.trim().to_ascii_lowercase();
            if !is_host_pattern(&host) {
                e.push(
                    &hat,
                    format!("{h:?} is not a host name, \"*.suffix\" wildcard or \"*\""),
                );
                continue;
            }
            if let Some(owner) = host_owner.insert(host.clone(), name.clone()) {
                e.push(
                    &hat,
                    format!("{host:?} is already claimed by site {owner:?}"),
                );
            }
            hosts.push(host);
        }
        let pool = match s.pool {
            None => {
                e.push(format!("{at}.pool"), "is required");
                String::new()
            }
            Some(p) => {
                check_pool(e, format!("{at}.pool"), &p);
                p
            }
        };
        let maintenance_page = s.maintenance_page.and_then(|f| {
            e.file(
                &format!("{at}.maintenance_page"),
                base,
                &f,
                MAX_MAINTENANCE_PAGE,
            )
            .map(Bytes::from)
        });
        let embargo_status = s.embargo_status.unwrap_or(404);
        if !(400..=499).contains(&embargo_status) {
            e.push(
                format!("{at}.embargo_status"),
                "must be a 4xx status (404 by default: like any missing page)",
            );
        }
        let mut paths = HashSet::new();
        let routes = s
            .route
            .into_iter()
            .enumerate()
            .map(|(j, r)| {
                let rat = format!("{at}.route[{j}]");
                let path = r.path.unwrap_or_default();
                if !path.starts_with('/') {
                    e.push(
                        format!("{rat}.path"),
                        format!("{path:?} must start with '/'"),
                    );
                } else if crate::uri_path::normalize(&path).ok().as_deref() != Some(path.as_str()) {
                    // Requests are matched in their normal form, which this can never be.
                    e.push(
                        format!("{rat}.path"),
                        format!(
                            "{path:?} is not in normal form (no //, . or .. segments, \
                             unreserved characters not percent-encoded)"
                        ),
                    );
                } else if !paths.insert(path.clone()) {
                    e.push(format!("{rat}.path"), format!("{path:?} is routed twice"));
                }
                if let Some(p) = &r.pool {
                    check_pool(e, format!("{rat}.pool"), p);
                }
                let query = match r.query.as_deref() {
                    None | Some("keep") => QueryKey::Keep,
                    Some("sort") => QueryKey::Sort,
                    Some("drop") => QueryKey::Drop,
                    Some(other) => {
                        e.push(
                            format!("{rat}.query"),
                            format!("{other:?} is not one of \"keep\", \"sort\", \"drop\""),
                        );
                        QueryKey::Keep
                    }
                };
                let default_ttl = r.default_ttl.as_ref().map(|_| {
                    e.duration(
                        &format!("{rat}.default_ttl"),
                        &r.default_ttl,
                        Duration::ZERO,
                    )
                });
                let rate = rate_limit(e, &rat, &r.rate, r.burst);
                Route {
                    path,
                    pool: r.pool,
                    cache: r.cache.unwrap_or(true),
                    query,
                    default_ttl: default_ttl.filter(|d| !d.is_zero()),
                    rate,
                }
            })
            .collect();
        out.push(Site {
            name,
            hosts,
            pool,
            maintenance_page,
            embargo_status,
            force_stale_if_error: s.force_stale_if_error.unwrap_or(false),
            nojs_challenge: s.nojs_challenge.unwrap_or(false),
            pass_headers: pass_headers(e, &at, &s.pass_headers),
            routes,
            integrity: s
                .integrity
                .and_then(|raw| integrity(e, &format!("{at}.integrity"), base, raw))
                .map(std::sync::Arc::new),
        });
    }
    out
}

/// `[admin]`'s tokens: `token_file` (every scope, named `admin`) and each of `tokens`, read
/// now and kept as SHA-256 hashes. A secret shorter than 16 characters, a name or a secret
/// given twice, or an unknown scope is an error.
fn admin_tokens(
    e: &mut Errors<'_>,
    base: &Path,
    token_file: Option<String>,
    tokens: Vec<super::schema::RawAdminToken>,
) -> Vec<AdminToken> {
    let mut out: Vec<AdminToken> = Vec::new();
    let read = |e: &mut Errors<'_>, at: &str, file: &str| -> Option<[u8; 32]> {
        let bytes = e.file(at, base, file, 4096)?;
        let secret = String::from_utf8_lossy(&bytes).trim().to_owned();
        if secret.len() < 16 {
            e.push(
                at,
                "the token must be at least 16 characters (it guards reload and purge)",
            );
            return None;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        <[u8; 32]>::try_from(digest.as_ref()).ok()
    };
    let mut add = |e: &mut Errors<'_>, at: &str, token: AdminToken| {
        if out.iter().any(|t| t.name == token.name) {
            e.push(at, format!("token name {:?} is used twice", token.name));
        } else if out.iter().any(|t| t.hash == token.hash) {
            e.push(at, "the same secret as another token (each needs its own)");
        } else {
            out.push(token);
        }
    };
    if let Some(file) = token_file {
        if let Some(hash) = read(e, "admin.token_file", &file) {
            let token = AdminToken {
                name: "admin".to_owned(),
                hash,
                scopes: Scopes::ALL,
            };
            add(e, "admin.token_file", token);
        }
    }
    for (i, raw) in tokens.into_iter().enumerate() {
        let at = format!("admin.tokens[{i}]");
        let name = e.name(&format!("{at}.name"), &raw.name);
        let mut scopes = Scopes::default();
        for scope in &raw.scopes {
            match scope.as_str() {
                "read" => scopes.read = true,
                "purge" => scopes.purge = true,
                "operate" => scopes.operate = true,
                other => e.push(
                    format!("{at}.scopes"),
                    format!("{other:?} is not \"read\", \"purge\" or \"operate\""),
                ),
            }
        }
        if scopes == Scopes::default() {
            e.push(format!("{at}.scopes"), "needs at least one scope");
        }
        let Some(file) = raw.file else {
            e.push(
                format!("{at}.file"),
                "is required (the file holding the token)",
            );
            continue;
        };
        if let Some(hash) = read(e, &format!("{at}.file"), &file) {
            add(e, &at, AdminToken { name, hash, scopes });
        }
    }
    out
}

/// `[site.integrity]`: its mode, its keys (each read now: a bad key is an error with its
/// path, never a node checking against nothing) and how much `enforce` may hold back.
fn integrity(
    e: &mut Errors<'_>,
    at: &str,
    base: &Path,
    raw: super::schema::RawIntegrity,
) -> Option<Integrity> {
    let mode = match raw.mode.as_deref() {
        None | Some("report") => IntegrityMode::Report,
        Some("enforce") => {
            e.push(
                format!("{at}.mode"),
                "\"enforce\" is not in this version yet: \"report\" counts and logs what \
                 fails (and serves as before)",
            );
            IntegrityMode::Report
        }
        Some(other) => {
            e.push(
                format!("{at}.mode"),
                format!("{other:?} is not \"enforce\" or \"report\""),
            );
            IntegrityMode::Report
        }
    };
    if raw.keys.is_empty() {
        e.push(
            format!("{at}.keys"),
            "needs at least one key: [{ id = \"newsroom-2027\", public_key = \"newsroom.pub\" }]",
        );
    }
    let mut keys: Vec<(String, crate::keys::VerifyKey)> = Vec::new();
    for (i, key) in raw.keys.into_iter().enumerate() {
        let kat = format!("{at}.keys[{i}]");
        let id = match key.id {
            Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()) => id,
            _ => {
                e.push(format!("{kat}.id"), "is required (printable, no spaces)");
                continue;
            }
        };
        if keys.iter().any(|(known, _)| *known == id) {
            e.push(format!("{kat}.id"), format!("{id:?} is listed twice"));
            continue;
        }
        let Some(file) = key.public_key else {
            e.push(
                format!("{kat}.public_key"),
                "is required (a PEM PUBLIC KEY file)",
            );
            continue;
        };
        let Some(pem) = e.file(&format!("{kat}.public_key"), base, &file, 64 << 10) else {
            continue;
        };
        match crate::keys::VerifyKey::from_pem(&pem) {
            Ok(public) => keys.push((id, public)),
            Err(why) => e.push(format!("{kat}.public_key"), format!("{file}: {why}")),
        }
    }
    let max_buffer = e.size(&format!("{at}.max_buffer"), &raw.max_buffer, 8 << 20);
    if max_buffer == 0 {
        e.push(format!("{at}.max_buffer"), "must be above 0");
    }
    Some(Integrity {
        mode,
        keys,
        max_buffer,
    })
}

/// `site.pass_headers`: header names onair would strip as unkeyed; the ones it sets itself
/// (Host, X-Forwarded-*, Via, X-Request-Id) cannot be passed.
fn pass_headers(e: &mut Errors<'_>, at: &str, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let lower = name.trim().to_ascii_lowercase();
        if !crate::proxy::headers::UNKEYED.contains(&lower.as_str()) {
            e.push(
                format!("{at}.pass_headers[{i}]"),
                format!(
                    "{name:?} is not a header onair strips (one of: {})",
                    crate::proxy::headers::UNKEYED.join(", ")
                ),
            );
        } else if !out.contains(&lower) {
            out.push(lower);
        }
    }
    out
}

/// `*`, `*.example.com`, or a plain DNS name / IP literal. No port: requests are matched on
/// their host with the port removed, so a pattern with a port could never match.
fn is_host_pattern(host: &str) -> bool {
    if host == "*" {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    is_dns_name(host.strip_prefix("*.").unwrap_or(host))
}

/// A DNS name or IPv4 literal: labels of letters, digits, '-' and '_' joined by dots.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}
