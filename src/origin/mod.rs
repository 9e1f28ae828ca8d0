//! Origin pools: which origin a request goes to, and how healthy each origin is.
//!
//! A [`Pool`] is built from config for each snapshot. Its origins share health state with
//! earlier snapshots through the [`health::HealthRegistry`], so a reload does not forget that an
//! origin is down. Choice order (DESIGN.md): the lowest tier that has a healthy origin; inside
//! that tier, origins of this node's region first; among equals, weighted round robin.

pub mod dns;
pub mod health;
pub mod protect;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config;
use crate::metrics::{OriginSeries, METRICS};
use health::{Change, HealthRegistry, OriginHealth};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use protect::{Limiter, RetryBudget};

/// How long an idle pooled connection to an origin is kept for reuse.
const UPSTREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// Concurrent requests per HTTP/2 connection to an origin.
const H2_STREAMS: usize = 100;

/// One origin server of a pool, as the proxy sees it.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    /// What metrics, logs about its health and `/status` call it: its name (`origin-N` by
    /// default), or its address with `admin.origin_addresses`. Computed once.
    pub label: String,
    /// `addr` as text, computed once, for the access log (which stays on the node).
    pub addr_text: String,
    /// The origin's identity in rendezvous hashing: a hash of its address, the same on every
    /// node.
    pub placement: u64,
    pub region: Option<String>,
    pub tier: u8,
    pub weight: u32,
    pub health: Arc<OriginHealth>,
    /// This origin's attempt counters and latency histogram.
    pub metrics: OriginSeries,
}

impl Origin {
    /// Publishes a change of this origin's state: the `onair_origin_up` gauge, the ejection
    /// counter, and a log line saying why.
    pub fn report(&self, pool: &str, change: Change, why: &str) {
        match change {
            Change::Up => {
                METRICS.set_origin_up(pool, &self.label, true);
                tracing::info!(pool, origin = %self.label, why, "origin is up");
            }
            Change::Down => {
                METRICS.set_origin_up(pool, &self.label, false);
                tracing::warn!(pool, origin = %self.label, why, "origin is down");
            }
            Change::Ejected { for_ } => {
                METRICS.set_origin_up(pool, &self.label, false);
                self.metrics.ejected();
                tracing::warn!(
                    pool,
                    origin = %self.label,
                    why,
                    for_s = for_.as_secs_f64(),
                    "origin ejected by live traffic"
                );
            }
        }
    }
}

/// A pool of origins with its connection settings.
#[derive(Debug)]
pub struct Pool {
    pub config: config::Pool,
    pub origins: Vec<Origin>,
    /// Round-robin cursor; shared by all requests of this snapshot.
    cursor: AtomicUsize,
    /// The cap on requests in flight (shared across snapshots).
    pub limiter: Arc<Limiter>,
    /// Retries allowed as a share of requests (shared across snapshots).
    pub budget: Arc<RetryBudget>,
    /// `ca_file`'s certificates and the mTLS client certificate, built once per snapshot in
    /// the form Pingora's peers take.
    pub ca: Option<Arc<CaType>>,
    pub client_cert: Option<Arc<CertKey>>,
    /// Index (in the snapshot's pools) of `config.fallback`, set when the snapshot is built.
    pub fallback: Option<usize>,
}

/// A 64-bit hash that is the same on every node and in every version (FNV-1a, then mixed):
/// placement must agree across the fleet, which the std hasher does not promise.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key a request is placed by in a `select = "hash"` pool: its host and path (and query),
/// as the cache key holds them, so one object always goes to one shield. Requests that are not
/// cached use it too (sticky), which keeps a URL's traffic on one origin.
pub fn request_hash(host: &str, path_and_query: &str) -> u64 {
    let mut text = Vec::with_capacity(host.len() + path_and_query.len() + 1);
    text.extend_from_slice(host.as_bytes());
    text.push(0);
    text.extend_from_slice(path_and_query.as_bytes());
    stable_hash(&text)
}

/// Weighted rendezvous score of one origin for one key: `-weight / ln(u)` with `u` uniform in
/// (0, 1) from the pair's hash (Schindelhauer and Schomaker's weighted HRW), so an origin gets
/// a share of keys proportional to its weight and removing one moves only its keys.
fn rendezvous_score(key: u64, placement: u64, weight: u32) -> f64 {
    let h = mix(key ^ placement.rotate_left(17));
    // 53 random bits, never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// An origin's label (see [`Origin::label`]). One resolved from a DNS name is told apart
/// by its address: `shield-1/10.0.0.5` (bounded: a name gives at most
/// [`dns::MAX_ADDRESSES`] addresses, and those that leave are forgotten).
fn label(o: &config::Origin, index: usize, addr: SocketAddr, addresses: bool) -> String {
    let base = match (&o.name, addresses) {
        (_, true) => return addr.to_string(),
        (Some(name), false) => name.clone(),
        (None, false) => format!("origin-{index}"),
    };
    match &o.addr {
        config::OriginAddr::Ip(_) => base,
        config::OriginAddr::Name { .. } => format!("{base}/{}", addr.ip()),
    }
}

impl Pool {
    /// Builds a pool, attaching each origin to its (possibly existing) health state.
    /// Origins given by DNS name become one origin per address in `resolved` (none while the
    /// name has never resolved); health state is per address, so it follows an address that
    /// stays across re-resolutions.
    pub fn new(
        config: &config::Pool,
        registry: &HealthRegistry,
        addresses: bool,
        resolved: &dns::Addresses,
    ) -> Pool {
        let mut seen = std::collections::HashSet::new();
        let origins = config
            .origins
            .iter()
            .enumerate()
            .flat_map(|(i, o)| {
                let addrs: Vec<SocketAddr> = match &o.addr {
                    config::OriginAddr::Ip(a) => vec![*a],
                    config::OriginAddr::Name { host, port } => resolved
                        .get(host)
                        .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect())
                        .unwrap_or_default(),
                };
                addrs.into_iter().map(move |addr| (i, o, addr))
            })
            // A name may resolve to an address the pool also lists: one origin per address.
            .filter(|(_, _, addr)| seen.insert(*addr))
            .map(|(i, o, addr)| {
                let label = label(o, i, addr, addresses);
                Origin {
                    addr,
                    addr_text: addr.to_string(),
                    placement: stable_hash(addr.to_string().as_bytes()),
                    metrics: METRICS.origin_series(&config.name, &label),
                    label,
                    region: o.region.clone(),
                    tier: o.tier,
                    weight: o.weight,
                    health: registry.get(&config.name, addr, config.health.is_some()),
                }
            })
            .collect();
        let (limiter, budget) = registry.protection(config);
        // The DER was parsed at config load (crate::tls), so these constructors cannot panic.
        let ca = config.ca.as_ref().map(|certs| {
            certs
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect::<Vec<_>>()
                .into()
        });
        let client_cert = config
            .client_cert
            .as_ref()
            .map(|c| Arc::new(CertKey::new(c.chain.clone(), c.key.0.clone())));
        Pool {
            config: config.clone(),
            origins,
            cursor: AtomicUsize::new(0),
            limiter,
            budget,
            ca,
            client_cert,
            fallback: None,
        }
    }

    /// A peer for origin `index` with the pool's timeouts and TLS settings.
    pub fn peer(&self, index: usize) -> Option<HttpPeer> {
        let origin = self.origins.get(index)?;
        let cfg = &self.config;
        // Validation makes tls = true impossible without sni or host: an empty SNI would
        // disable certificate verification in Pingora.
        let sni = cfg
            .sni
            .clone()
            .or_else(|| cfg.host.clone())
            .unwrap_or_default();
        let mut peer = HttpPeer::new(origin.addr, cfg.tls, sni);
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        // Bounds TCP connect plus the TLS handshake, which connection_timeout alone does not.
        peer.options.total_connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = Some(cfg.read_timeout);
        peer.options.write_timeout = Some(cfg.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client_cert.clone();
        if cfg.h2 {
            // Offer h2, accept http/1.1; many requests share one connection.
            peer.options.set_http_version(2, 1);
            peer.options.max_h2_streams = H2_STREAMS;
        }
        Some(peer)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Chooses the next origin for a request that has already tried the origins whose indexes
    /// are in `tried`. Healthy origins come first, together with ejected ones whose ejection
    /// time is over and whose single trial slot is free (this request becomes the trial); when
    /// none is left, the untried unhealthy ones are offered in the same order, because a health
    /// check can be wrong and a real attempt beats a certain maintenance page.
    pub fn choose(&self, region: &str, tried: &[usize]) -> Option<usize> {
        self.choose_trial(region, tried, 0).map(|(i, _)| i)
    }

    /// As [`Pool::choose`], also saying whether the request holds the trial slot of an ejected
    /// origin (its result then decides the origin's fate).
    /// `key` places the request among the origins of a `select = "hash"` pool (see
    /// [`request_hash`]); round-robin pools ignore it.
    pub fn choose_trial(&self, region: &str, tried: &[usize], key: u64) -> Option<(usize, bool)> {
        self.choose_at(region, tried, Instant::now(), key)
    }

    fn choose_at(
        &self,
        region: &str,
        tried: &[usize],
        now: Instant,
        key: u64,
    ) -> Option<(usize, bool)> {
        let mut lost_trials: Vec<usize> = Vec::new();
        let stall = self.stall_after();
        loop {
            let picked = self.pick(region, key, |i, o| {
                !tried.contains(&i)
                    && !lost_trials.contains(&i)
                    && ((o.health.is_up() && !o.health.stalled(now, stall))
                        || o.health.trial_ready(now))
            });
            let Some(i) = picked else { break };
            let health = &self.origins[i].health;
            if health.is_up() {
                return Some((i, false));
            }
            if health.begin_trial(now, self.config.total_timeout) {
                return Some((i, true));
            }
            // Another request took the trial between the two looks.
            lost_trials.push(i);
        }
        // Healthy but seemingly stalled origins next, then anything untried.
        self.pick(region, key, |i, o| !tried.contains(&i) && o.health.is_up())
            .or_else(|| self.pick(region, key, |i, _| !tried.contains(&i)))
            .map(|i| (i, false))
    }

    /// How long attempts may wait on an origin that answers nothing before new requests avoid
    /// it: a quarter of read_timeout, at most a second.
    fn stall_after(&self) -> std::time::Duration {
        (self.config.read_timeout / 4).min(std::time::Duration::from_secs(1))
    }

    /// The `rise` count that brings an ejected origin back (the active check's, else 2).
    pub fn rise(&self) -> u32 {
        self.config.health.as_ref().map_or(2, |h| h.rise)
    }

    fn pick(
        &self,
        region: &str,
        key: u64,
        eligible: impl Fn(usize, &Origin) -> bool,
    ) -> Option<usize> {
        let candidates = || {
            self.origins
                .iter()
                .enumerate()
                .filter(|(i, o)| eligible(*i, o))
        };
        let tier = candidates().map(|(_, o)| o.tier).min()?;
        let is_local = |o: &Origin| !region.is_empty() && o.region.as_deref() == Some(region);
        let any_local = candidates().any(|(_, o)| o.tier == tier && is_local(o));
        let chosen =
            || candidates().filter(move |(_, o)| o.tier == tier && (!any_local || is_local(o)));
        let total: u64 = chosen().map(|(_, o)| u64::from(o.weight)).sum();
        if total == 0 {
            return None;
        }
        if self.config.select == config::Select::Hash {
            // The highest weighted score wins; a retry (the winner tried) takes the next, so
            // every node walks one key's origins in the same order.
            return chosen()
                .map(|(i, o)| (i, rendezvous_score(key, o.placement, o.weight)))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i);
        }
        let mut only = chosen();
        if let (Some((i, _)), None) = (only.next(), only.next()) {
            // No choice to make: leave the cursor alone, or a retry's pick would shift the
            // rotation and send every next request to the same origin first.
            return Some(i);
        }
        let mut n = (self.cursor.fetch_add(1, Ordering::Relaxed) as u64) % total;
        for (i, o) in chosen() {
            let w = u64::from(o.weight);
            if n < w {
                return Some(i);
            }
            n -= w;
        }
        None
    }

    /// Whether an origin not in `tried` could take a request now: healthy and not stalled, or
    /// due a trial. Has no side effects (a trial is not begun).
    pub fn any_ready(&self, tried: &[usize]) -> bool {
        let now = Instant::now();
        let stall = self.stall_after();
        self.origins.iter().enumerate().any(|(i, o)| {
            !tried.contains(&i)
                && ((o.health.is_up() && !o.health.stalled(now, stall))
                    || o.health.trial_ready(now))
        })
    }

    /// True when at least one origin is healthy.
    pub fn any_up(&self) -> bool {
        self.origins.iter().any(|o| o.health.is_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(origins: &[(&str, Option<&str>, u8, u32)]) -> (Pool, HealthRegistry) {
        let registry = HealthRegistry::default();
        let cfg = config::Pool {
            name: "p".into(),
            select: config::Select::RoundRobin,
            fallback: None,
            shields: false,
            tls: false,
            sni: None,
            host: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_attempts: 3,
            total_timeout: Duration::from_secs(60),
            max_inflight: 100,
            queue: 10,
            queue_timeout: Duration::from_secs(1),
            retry_budget: 0.2,
            ca: None,
            client_cert: None,
            h2: false,
            health: None,
            passive: config::Passive::default(),
            origins: origins
                .iter()
                .map(|(a, r, t, w)| config::Origin {
                    addr: config::OriginAddr::Ip(a.parse().unwrap()),
                    name: None,
                    region: r.map(str::to_owned),
                    tier: *t,
                    weight: *w,
                })
                .collect(),
        };
        (
            Pool::new(&cfg, &registry, true, &dns::Addresses::default()),
            registry,
        )
    }

    #[test]
    fn lowest_healthy_tier_then_region() {
        let (p, _r) = pool(&[
            ("127.0.0.1:1", Some("hn"), 1, 1),
            ("127.0.0.1:2", Some("sg"), 0, 1),
            ("127.0.0.1:3", Some("hn"), 0, 1),
        ]);
        for _ in 0..10 {
            assert_eq!(p.choose("hn", &[]), Some(2));
        }
        // The other region's origin of the same tier comes next, before tier 1.
        assert_eq!(p.choose("hn", &[2]), Some(1));
        assert_eq!(p.choose("hn", &[2, 1]), Some(0));
        assert_eq!(p.choose("hn", &[0, 1, 2]), None);
        // No region: both tier-0 origins share the load.
        let picks: Vec<_> = (0..4).map(|_| p.choose("", &[]).unwrap()).collect();
        assert!(picks.contains(&1) && picks.contains(&2) && !picks.contains(&0));
    }

    #[test]
    fn unhealthy_tier_is_skipped_but_still_tried_last() {
        let (p, _r) = pool(&[("127.0.0.1:1", None, 0, 1), ("127.0.0.1:2", None, 1, 1)]);
        p.origins[0].health.force(false);
        assert_eq!(p.choose("", &[]), Some(1));
        // Backup failed too: the unhealthy primary still gets a try.
        assert_eq!(p.choose("", &[1]), Some(0));
        p.origins[0].health.force(true);
        assert_eq!(p.choose("", &[]), Some(0));
    }

    #[test]
    fn an_ejected_origin_gets_one_trial_when_its_time_is_up() {
        let (p, _r) = pool(&[("127.0.0.1:1", None, 0, 1), ("127.0.0.1:2", None, 1, 1)]);
        let passive = config::Passive {
            failures: 1,
            eject: Duration::from_secs(10),
            max_eject: Duration::from_secs(10),
        };
        p.origins[0]
            .health
            .record_traffic(health::Seen::Failure, &passive, 1, false);
        let later = Instant::now() + Duration::from_secs(11);
        // Still ejected: the backup answers.
        assert_eq!(p.choose("", &[]), Some(1));
        // The primary's ejection is over: this request is its trial, the next goes to the
        // backup while the trial is out.
        assert_eq!(p.choose_at("", &[], later, 0), Some((0, true)));
        assert_eq!(p.choose_at("", &[], later, 0), Some((1, false)));
        p.origins[0]
            .health
            .record_traffic(health::Seen::Ok, &passive, 1, true);
        assert_eq!(p.choose("", &[]), Some(0));
    }

    #[test]
    fn weights_share_the_load() {
        let (p, _r) = pool(&[("127.0.0.1:1", None, 0, 3), ("127.0.0.1:2", None, 0, 1)]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[p.choose("", &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    fn hashed(origins: &[(&str, u32)]) -> (Pool, HealthRegistry) {
        let spec: Vec<(&str, Option<&str>, u8, u32)> =
            origins.iter().map(|(a, w)| (*a, None, 0, *w)).collect();
        let registry = HealthRegistry::default();
        let (mut pool, _) = pool(&spec);
        let mut cfg = pool.config.clone();
        cfg.select = config::Select::Hash;
        pool = Pool::new(&cfg, &registry, true, &dns::Addresses::default());
        (pool, registry)
    }

    fn owner<'a>(p: &'a Pool, key: u64, tried: &[usize]) -> Option<&'a str> {
        p.choose_trial("", tried, key)
            .map(|(i, _)| p.origins[i].addr_text.as_str())
    }

    #[test]
    fn hash_pools_place_keys_alike_on_every_node_and_move_only_a_leavers_share() {
        let four = [
            ("10.0.0.1:80", 1),
            ("10.0.0.2:80", 1),
            ("10.0.0.3:80", 1),
            ("10.0.0.4:80", 1),
        ];
        let (a, _r1) = hashed(&four);
        let (b, _r2) = hashed(&four);
        let (three, _r3) = hashed(&four[..3]);
        let keys: Vec<u64> = (0..4000)
            .map(|i| request_hash("a.vn", &format!("/p/{i}")))
            .collect();
        let mut moved = 0;
        let mut counts = std::collections::HashMap::new();
        for &k in &keys {
            let on_a = owner(&a, k, &[]).unwrap();
            assert_eq!(Some(on_a), owner(&b, k, &[]), "two nodes disagree");
            *counts.entry(on_a).or_insert(0) += 1;
            let after = owner(&three, k, &[]).unwrap();
            if on_a == "10.0.0.4:80" {
                moved += 1;
            } else {
                assert_eq!(on_a, after, "a key moved that the leaver did not own");
            }
        }
        // Each of four gets about a quarter; only the leaver's quarter moves.
        for (_, n) in counts {
            assert!((800..1200).contains(&n), "{n} of 4000");
        }
        assert!((800..1200).contains(&moved), "{moved} moved");
        // A retry walks the key's order: the next origin is the one that would own it without
        // the first.
        for &k in keys.iter().take(200) {
            let first = a.choose_trial("", &[], k).unwrap().0;
            let second = owner(&a, k, &[first]).unwrap();
            let without: Vec<_> = four
                .iter()
                .filter(|(addr, _)| *addr != a.origins[first].addr_text)
                .copied()
                .collect();
            let (rest, _r) = hashed(&without);
            assert_eq!(Some(second), owner(&rest, k, &[]));
        }
    }

    #[test]
    fn hash_pools_share_keys_by_weight() {
        let (p, _r) = hashed(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 3)]);
        let heavy = (0..4000)
            .filter(|i| {
                owner(&p, request_hash("a.vn", &format!("/w/{i}")), &[]) == Some("10.0.0.2:80")
            })
            .count();
        assert!(
            (2800..3200).contains(&heavy),
            "{heavy} of 4000 on the weight-3 origin"
        );
    }
}
