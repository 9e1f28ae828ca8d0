//! Every metric onair exports, registered once in the default Prometheus registry that the
//! metrics listener serves.
//!
//! Labels are bounded by construction: site, pool and origin come from the config, the cache
//! label and outcome are closed sets, and status codes are folded into classes (`2xx`). A raw
//! path, host or client address never becomes a label.

use std::sync::LazyLock;
use std::time::Duration;

use pingora_prometheus::prometheus::{
    self, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts,
};

/// Latency buckets in seconds, from a memory hit (sub-millisecond) to a slow origin.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

/// Outcome of one attempt at an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginOutcome {
    Ok = 0,
    Error = 1,
    Timeout = 2,
    Status5xx = 3,
}

impl OriginOutcome {
    const ALL: [OriginOutcome; 4] = [
        OriginOutcome::Ok,
        OriginOutcome::Error,
        OriginOutcome::Timeout,
        OriginOutcome::Status5xx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OriginOutcome::Ok => "ok",
            OriginOutcome::Error => "error",
            OriginOutcome::Timeout => "timeout",
            OriginOutcome::Status5xx => "5xx",
        }
    }
}

/// All collectors, typed.
pub struct Metrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    origin_up: IntGaugeVec,
    origin_requests: IntCounterVec,
    origin_duration: HistogramVec,
    failovers: IntCounterVec,
    ejections: IntCounterVec,
    inflight: IntGaugeVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    config_reloads: IntCounterVec,
    config_version: IntGauge,
    cache_size: IntGaugeVec,
    cache_objects: IntGaugeVec,
    cache_index_bytes: IntGaugeVec,
    cache_temp_bytes: IntGaugeVec,
    cache_evictions: IntCounterVec,
    cache_admissions_paused: IntGaugeVec,
    stale_served: IntCounterVec,
    coalesced: IntCounter,
    rate_limited: IntCounterVec,
    refused: IntCounterVec,
    connections_denied: IntCounterVec,
    connections_open: IntGauge,
    requests_in_progress: IntGauge,
    slow_clients: IntCounterVec,
    attack_mode: IntGauge,
    tls_cert_expiry: IntGaugeVec,
    tls_handshake_failures: IntCounterVec,
    challenges: IntCounterVec,
    purged: IntCounter,
    refetches: IntCounter,
    dns_failures: IntCounter,
    fleet_connected: IntGauge,
    fleet_applied: IntGauge,
    fleet_lag: prometheus::Gauge,
    fleet_ops: IntCounterVec,
    releases_pending: IntGauge,
    warm_objects: IntGaugeVec,
    fleet_clock_offset: prometheus::Gauge,
    embargo_hits: IntCounter,
    integrity_failures: IntCounterVec,
    admin_calls: IntCounterVec,
}

impl Metrics {
    // Metric names and help texts are literals checked by the unit test below; a failure here
    // is a programming error found before any release, so expect() is the honest choice.
    #[allow(clippy::expect_used)]
    fn register() -> Metrics {
        let r = prometheus::default_registry();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram");
            r.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let origin_up = gauge(
            "onair_origin_up",
            "1 when the origin passes its health checks, 0 when it is down.",
            &["pool", "origin"],
        );
        let config_version = IntGauge::new(
            "onair_config_version",
            "Version of the config snapshot in use; it grows by one with each successful reload.",
        )
        .expect("valid gauge");
        r.register(Box::new(config_version.clone()))
            .expect("registered once");
        gauge(
            "onair_build_info",
            "Always 1; the label carries the onair version.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let coalesced = plain_counter(
            "onair_coalesced_requests_total",
            "Requests answered by another request's origin fetch (they waited on the cache lock).",
        );
        let purged = plain_counter(
            "onair_purged_objects_total",
            "Cached objects removed or marked stale by purges (admin API and PURGE method).",
        );

        let refetches = plain_counter(
            "onair_upstream_refetches_total",
            "Upstream caches' copies asked for again with no-cache: made before a purge here.",
        );

        let dns_failures = plain_counter(
            "onair_dns_failures_total",
            "Origin name resolutions that failed (the name's last good addresses stay in use).",
        );
        let fleet_connected = plain_gauge(
            "onair_fleet_connected",
            "1 while the node is connected to the fleet bus (NATS JetStream) and reading \
             operations; 0 without a bus or while it is out of reach (the node serves anyway).",
        );
        let fleet_applied = plain_gauge(
            "onair_fleet_applied_sequence",
            "The last fleet operation (stream sequence) this node applied or refused for good.",
        );
        let fleet_lag = prometheus::Gauge::new(
            "onair_fleet_lag_seconds",
            "Age of the newest fleet operation not applied yet (0 when caught up).",
        )
        .expect("valid gauge");
        r.register(Box::new(fleet_lag.clone()))
            .expect("registered once");
        let fleet_ops = counter(
            "onair_fleet_ops_total",
            "Fleet operations read from the bus, by kind (purge, attack-mode, release, \
             release-cancel, unknown) and \
             result: applied, not_in_scope, or refused (unsigned, forged, stale, replayed, \
             malformed, invalid).",
            &["kind", "result"],
        );
        let fleet_clock_offset = prometheus::Gauge::new(
            "onair_fleet_clock_offset_seconds",
            "How far the fleet bus's clock is from this node's (the bus's minus this node's), \
             as the last heartbeat measured it: releases come out by each node's clock.",
        )
        .expect("valid gauge");
        r.register(Box::new(fleet_clock_offset.clone()))
            .expect("registered once");
        let warm_objects = IntGaugeVec::new(
            Opts::new(
                "onair_release_warm_objects",
                "Objects of the pending releases' warm lists, by state: warmed (stored here, \
                 held back until the release) or missing (not fetched yet, or failing).",
            ),
            &["state"],
        )
        .expect("valid gauge");
        r.register(Box::new(warm_objects.clone()))
            .expect("registered once");
        let releases_pending = plain_gauge(
            "onair_releases_pending",
            "Scheduled releases this node holds whose time has not come (their content is \
             under embargo).",
        );
        let embargo_hits = plain_counter(
            "onair_release_embargo_hits_total",
            "Requests for content under a release's embargo, answered with the embargo answer \
             before its time (readers early, or someone trying to get it before it is out).",
        );

        Metrics {
            requests: counter(
                "onair_requests_total",
                "Client requests answered, by site, cache status and status class.",
                &["site", "cache", "code"],
            ),
            request_duration: histogram(
                "onair_request_duration_seconds",
                "Time from request head to the last byte of the answer.",
                &["cache"],
            ),
            origin_up,
            origin_requests: counter(
                "onair_origin_requests_total",
                "Attempts at an origin, by outcome (ok, error, timeout, 5xx).",
                &["pool", "origin", "outcome"],
            ),
            origin_duration: histogram(
                "onair_origin_duration_seconds",
                "Time from choosing an origin to its response head (or failure).",
                &["pool", "origin"],
            ),
            failovers: counter(
                "onair_failovers_total",
                "Requests moved to another origin after an attempt failed.",
                &["pool"],
            ),
            ejections: counter(
                "onair_origin_ejections_total",
                "Times live traffic ejected an origin (consecutive failures, a timeout, or a \
                 failed trial after an ejection).",
                &["pool", "origin"],
            ),
            inflight: gauge(
                "onair_origin_inflight",
                "Requests in flight to a pool's origins (capped by pool.max_inflight).",
                &["pool"],
            ),
            rejected: counter(
                "onair_origin_rejected_total",
                "Requests not sent to a pool: it was at max_inflight and the queue was full \
                 (queue_full) or the wait ran out (queue_timeout), or the node was over \
                 protect.shed_at (shed). They got a stale copy or 503.",
                &["pool", "reason"],
            ),
            retries: counter(
                "onair_origin_retries_total",
                "Retries after a failed attempt, by whether the pool's retry budget allowed them \
                 (allowed, over_budget).",
                &["pool", "result"],
            ),
            config_reloads: counter(
                "onair_config_reloads_total",
                "Config reloads, by result (ok, error). A failed reload changes nothing.",
                &["result"],
            ),
            config_version,
            cache_size: gauge(
                "onair_cache_size_bytes",
                "Bytes held by each cache tier, bodies and metadata.",
                &["tier"],
            ),
            cache_objects: gauge(
                "onair_cache_objects",
                "Objects held by each cache tier.",
                &["tier"],
            ),
            cache_index_bytes: gauge(
                "onair_cache_index_bytes",
                "Approximate memory held by a cache tier's index (disk: targets, tags, LRU \
                 order); bounded, past the bound the least recently used objects go.",
                &["tier"],
            ),
            cache_temp_bytes: gauge(
                "onair_cache_temp_bytes",
                "Bytes in a cache tier's temp files (fills in progress, and leftovers of another \
                 process); counted against the tier's capacity.",
                &["tier"],
            ),
            cache_evictions: counter(
                "onair_cache_evictions_total",
                "Objects evicted from each cache tier to stay within its capacity (an object \
                 evicted from memory stays on disk).",
                &["tier"],
            ),
            cache_admissions_paused: gauge(
                "onair_cache_admissions_paused",
                "1 while a cache tier stores no new objects (disk: the filesystem reported \
                 itself full); stored objects are still served.",
                &["tier"],
            ),
            stale_served: counter(
                "onair_stale_served_total",
                "Stale copies served, by reason (stale-while-revalidate, stale-if-error).",
                &["reason"],
            ),
            coalesced,
            purged,
            refetches,
            dns_failures,
            fleet_connected,
            fleet_applied,
            fleet_lag,
            fleet_ops,
            releases_pending,
            warm_objects,
            fleet_clock_offset,
            embargo_hits,
            admin_calls: counter(
                "onair_admin_calls_total",
                "Admin API calls (the probes aside), by outcome: ok, error, unauthorized (no or \
                 a wrong token), forbidden (a token without the scope).",
                &["outcome"],
            ),
            integrity_failures: counter(
                "onair_integrity_failures_total",
                "Origin responses whose newsroom signature does not hold ([site.integrity]), by \
                 site and reason: no_signature, bad_signature, unknown_key, digest_mismatch, \
                 expired.",
                &["site", "reason"],
            ),
            connections_denied: counter(
                "onair_connections_denied_total",
                "Connections closed at accept, by reason: deny (the address is in \
                 protect.deny), rate (the address is over protect.rate right now), per_ip (its \
                 address already has max_connections_per_ip open), proxy_protocol (a PROXY \
                 protocol listener got no valid header).",
                &["reason"],
            ),
            requests_in_progress: plain_gauge(
                "onair_requests_in_progress",
                "Client requests in progress on the node (sampled each second); over \
                 protect.shed_at, cache misses are shed.",
            ),
            connections_open: plain_gauge(
                "onair_connections_open",
                "Client connections open on the public listeners.",
            ),
            slow_clients: counter(
                "onair_slow_clients_total",
                "Client connections cut for being too slow, by reason: header (the request \
                 head took longer than protect.header_timeout), upload (a request body fell \
                 below protect.min_upload_rate), send (the client took no bytes of an answer \
                 for protect.send_timeout).",
                &["reason"],
            ),
            tls_cert_expiry: gauge(
                "onair_tls_cert_expiry_seconds",
                "When each served certificate expires, in UNIX seconds, by its first DNS name \
                 (alert on onair_tls_cert_expiry_seconds - time() < 14 days).",
                &["name"],
            ),
            tls_handshake_failures: counter(
                "onair_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason: protocol (no common version or cipher, \
                 e.g. TLS 1.1), no_certificate, client_alert (the client gave up, often over our \
                 certificate), closed, timeout (not done within protect.header_timeout), other.",
                &["reason"],
            ),
            attack_mode: plain_gauge(
                "onair_attack_mode",
                "1 while attack mode is on (clients without clearance get the challenge), 0 \
                 while it is off.",
            ),
            challenges: counter(
                "onair_challenges_total",
                "Attack-mode challenges, by result: issued (a challenge page was sent), passed \
                 (a proof of work earned a clearance cookie), passed_nojs (a no-JavaScript wait \
                 did), nojs_refused (a no-JavaScript wait over its address block's budget), \
                 failed (a wrong, stale or refused answer).",
                &["result"],
            ),
            refused: counter(
                "onair_requests_refused_total",
                "Requests refused before any cache or origin work, by reason: method (405), uri \
                 (414), header_size or header_count (431), body (413), smuggling or \
                 content_length (400).",
                &["reason"],
            ),
            rate_limited: counter(
                "onair_rate_limited_total",
                "Requests answered 429 because their client was over a rate limit, by which \
                 limit (node: protect.rate, route: a route's rate).",
                &["reason"],
            ),
        }
    }

    /// Objects purged.
    pub fn purged(&self, count: usize) {
        self.purged.inc_by(count as u64);
    }

    /// An origin name that could not be resolved.
    pub fn dns_failure(&self) {
        self.dns_failures.inc();
    }

    /// An upstream cache's copy asked for again because it may predate a purge made here.
    pub fn refetched(&self) {
        self.refetches.inc();
    }

    /// Whether the fleet bus is connected.
    pub fn fleet_connected(&self, up: bool) {
        self.fleet_connected.set(i64::from(up));
    }

    /// A fleet operation read: `kind` and `result` from fixed sets (see the help text).
    pub fn fleet_op(&self, kind: &'static str, result: &'static str) {
        self.fleet_ops.with_label_values(&[kind, result]).inc();
    }

    /// The bus's clock minus this node's, ms.
    pub fn fleet_clock_offset(&self, ms: i64) {
        self.fleet_clock_offset.set(ms as f64 / 1000.0);
    }

    /// The pending releases' warm objects, warmed and missing.
    pub fn warm_objects(&self, warmed: usize, missing: usize) {
        for (state, n) in [("warmed", warmed), ("missing", missing)] {
            self.warm_objects
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// How many releases are waiting for their time.
    pub fn releases_pending(&self, n: usize) {
        self.releases_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An admin call answered (`ok`, `error`, `unauthorized`, `forbidden`).
    pub fn admin_call(&self, outcome: &'static str) {
        self.admin_calls.with_label_values(&[outcome]).inc();
    }

    /// An origin response of `site` (a configured site's name) failed its integrity check.
    pub fn integrity_failure(&self, site: &str, reason: &'static str) {
        self.integrity_failures
            .with_label_values(&[site, reason])
            .inc();
    }

    /// A request answered with a release's embargo answer.
    pub fn embargo_hit(&self) {
        self.embargo_hits.inc();
    }

    /// The position in the operation stream, and how far behind it is.
    pub fn fleet_position(&self, seq: u64, lag: Duration) {
        self.fleet_applied
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        self.fleet_lag.set(lag.as_secs_f64());
    }

    /// Publishes a cache tier's occupancy.
    pub fn cache_tier(&self, tier: &str, bytes: u64, objects: u64) {
        self.cache_size
            .with_label_values(&[tier])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_objects
            .with_label_values(&[tier])
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Publishes a tier's overheads: its index's memory and its temp files' bytes.
    pub fn cache_overheads(&self, tier: &str, index_bytes: u64, temp_bytes: u64) {
        self.cache_index_bytes
            .with_label_values(&[tier])
            .set(i64::try_from(index_bytes).unwrap_or(i64::MAX));
        self.cache_temp_bytes
            .with_label_values(&[tier])
            .set(i64::try_from(temp_bytes).unwrap_or(i64::MAX));
    }

    /// `n` objects left a tier to make room.
    pub fn cache_evicted(&self, tier: &str, n: u64) {
        self.cache_evictions.with_label_values(&[tier]).inc_by(n);
    }

    /// Whether a tier admits new objects.
    pub fn cache_admissions(&self, tier: &str, paused: bool) {
        self.cache_admissions_paused
            .with_label_values(&[tier])
            .set(i64::from(paused));
    }

    /// A stale copy was served; `reason` is `stale-while-revalidate` or `stale-if-error`.
    pub fn stale_served(&self, reason: &'static str) {
        self.stale_served.with_label_values(&[reason]).inc();
    }

    /// A connection was closed at accept; `reason` is `deny`, `rate`, `per_ip` or
    /// `proxy_protocol`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_denied.with_label_values(&[reason]).inc();
    }

    /// Counts an open client connection until the guard is dropped.
    pub fn connection_open(&self) -> GaugeGuard {
        self.connections_open.inc();
        GaugeGuard(self.connections_open.clone())
    }

    /// A client connection was cut for slowness (`header`, `upload` or `send`).
    pub fn slow_client(&self, reason: &'static str) {
        self.slow_clients.with_label_values(&[reason]).inc();
    }

    /// Publishes the node's requests in progress.
    pub fn in_progress(&self, n: usize) {
        self.requests_in_progress
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Publishes the served certificates' expiry (the set replaces the previous one).
    pub fn tls_certs<'a>(&self, certs: impl Iterator<Item = (&'a str, i64)>) {
        self.tls_cert_expiry.reset();
        for (name, not_after) in certs {
            self.tls_cert_expiry
                .with_label_values(&[name])
                .set(not_after);
        }
    }

    /// A TLS handshake failed.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Whether attack mode is on.
    pub fn attack_mode(&self, on: bool) {
        self.attack_mode.set(i64::from(on));
    }

    /// A challenge was `issued`, `passed` or `failed`.
    pub fn challenge(&self, result: &'static str) {
        self.challenges.with_label_values(&[result]).inc();
    }

    /// A request was refused by request hygiene (see `protect::hygiene`).
    pub fn refused(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// A request was refused by a rate limit (`node` or `route`).
    pub fn rate_limited(&self, reason: &'static str) {
        self.rate_limited.with_label_values(&[reason]).inc();
    }

    /// A request was answered by another request's fetch.
    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    /// The request series of one site (or `-` for requests no site claimed), resolved once
    /// per snapshot so the request path increments them without a label lookup.
    pub fn site_series(&self, site: &str) -> SiteSeries {
        SiteSeries {
            by_cache: CACHE_LABELS.map(|cache| {
                STATUS_CLASSES.map(|class| self.requests.with_label_values(&[site, cache, class]))
            }),
            duration: CACHE_LABELS.map(|cache| self.request_duration.with_label_values(&[cache])),
        }
    }

    /// The attempt series of one origin, resolved once per snapshot.
    pub fn origin_series(&self, pool: &str, origin: &str) -> OriginSeries {
        OriginSeries {
            outcomes: OriginOutcome::ALL.map(|o| {
                self.origin_requests
                    .with_label_values(&[pool, origin, o.label()])
            }),
            duration: self.origin_duration.with_label_values(&[pool, origin]),
            ejections: self.ejections.with_label_values(&[pool, origin]),
        }
    }

    /// The in-flight gauge of a pool.
    pub fn inflight(&self, pool: &str) -> IntGauge {
        self.inflight.with_label_values(&[pool])
    }

    /// A request refused by a pool at max_inflight; `reason` is `queue_full` or `queue_timeout`.
    pub fn rejected(&self, pool: &str, reason: &'static str) {
        self.rejected.with_label_values(&[pool, reason]).inc();
    }

    /// A retry considered; `allowed` is whether the retry budget let it go.
    pub fn retry(&self, pool: &str, allowed: bool) {
        let result = if allowed { "allowed" } else { "over_budget" };
        self.retries.with_label_values(&[pool, result]).inc();
    }

    /// A request moved on to another origin.
    pub fn failover(&self, pool: &str) {
        self.failovers.with_label_values(&[pool]).inc();
    }

    /// An origin changed state (or was first seen).
    pub fn set_origin_up(&self, pool: &str, origin: &str, up: bool) {
        self.origin_up
            .with_label_values(&[pool, origin])
            .set(i64::from(up));
    }

    /// Creates a pool's failover series at zero, so it exists before the first failover.
    pub fn init_pool(&self, pool: &str) {
        self.failovers.with_label_values(&[pool]);
        self.inflight.with_label_values(&[pool]);
    }

    /// Drops every series of an origin that left the config (or an address its name no longer
    /// resolves to), so dashboards do not show ghosts and DNS churn does not grow the scrape
    /// for ever. A counter that comes back starts again from 0, which `rate()` takes as a reset.
    pub fn forget_origin(&self, pool: &str, origin: &str) {
        let _ = self.origin_up.remove_label_values(&[pool, origin]);
        for outcome in OriginOutcome::ALL {
            let _ = self
                .origin_requests
                .remove_label_values(&[pool, origin, outcome.label()]);
        }
        let _ = self.origin_duration.remove_label_values(&[pool, origin]);
        let _ = self.ejections.remove_label_values(&[pool, origin]);
    }

    /// A reload attempt; `version` is the snapshot now in use.
    pub fn reload(&self, ok: bool, version: u64) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.config_version.set(version as i64);
    }

    /// The first snapshot is in place.
    pub fn initial_config(&self, version: u64) {
        // Both results start at zero so that rate() and absent() behave from the first scrape.
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for reason in ["stale-while-revalidate", "stale-if-error"] {
            self.stale_served.with_label_values(&[reason]);
        }
        self.config_version.set(version as i64);
    }
}

/// Status class labels, in the order [`status_class_index`] returns.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Folds a status code into its class (an index into [`STATUS_CLASSES`]).
fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// Folds a status code into its class label.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// Values of the `cache` label (see `cache::status::Outcome::label`).
const CACHE_LABELS: [&str; 5] = ["hit", "stale", "revalidated", "miss", "bypass"];

/// Holds a gauge one higher while it lives (an open connection).
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Pre-resolved `onair_requests_total` / `onair_request_duration_seconds` series of a site.
#[derive(Debug)]
pub struct SiteSeries {
    by_cache: [[IntCounter; 6]; 5],
    duration: [Histogram; 5],
}

impl SiteSeries {
    /// One answered client request; `cache` is one of the cache labels.
    pub fn request(&self, cache: &str, status: u16, elapsed: Duration) {
        let c = CACHE_LABELS
            .iter()
            .position(|l| *l == cache)
            .unwrap_or(CACHE_LABELS.len() - 1);
        self.by_cache[c][status_class_index(status)].inc();
        self.duration[c].observe(elapsed.as_secs_f64());
    }
}

/// Pre-resolved `onair_origin_requests_total` / `onair_origin_duration_seconds` series of an
/// origin.
#[derive(Debug)]
pub struct OriginSeries {
    outcomes: [IntCounter; 4],
    duration: Histogram,
    ejections: IntCounter,
}

impl OriginSeries {
    /// Live traffic ejected the origin.
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// One attempt at the origin.
    pub fn attempt(&self, outcome: OriginOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The metrics in Prometheus text format (what the metrics listener serves).
pub fn render() -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&prometheus::gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render() {
        METRICS
            .site_series("portal")
            .request("miss", 204, Duration::from_millis(3));
        METRICS
            .origin_series("p", "127.0.0.1:1")
            .attempt(OriginOutcome::Timeout, Duration::from_secs(1));
        METRICS.failover("p");
        METRICS.set_origin_up("p", "127.0.0.1:1", false);
        METRICS.reload(true, 2);
        let text = render();
        for name in [
            "onair_requests_total{cache=\"miss\",code=\"2xx\",site=\"portal\"} 1",
            "onair_request_duration_seconds_bucket",
            "onair_origin_up{origin=\"127.0.0.1:1\",pool=\"p\"} 0",
            "onair_origin_requests_total{origin=\"127.0.0.1:1\",outcome=\"timeout\",pool=\"p\"} 1",
            "onair_origin_duration_seconds_bucket",
            "onair_failovers_total{pool=\"p\"} 1",
            "onair_config_reloads_total{result=\"ok\"} 1",
            "onair_config_version 2",
            "onair_build_info{version=",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn a_forgotten_origin_leaves_no_series() {
        let (pool, origin) = ("gone-pool", "10.9.9.9:80");
        let series = METRICS.origin_series(pool, origin);
        series.attempt(OriginOutcome::Ok, Duration::from_millis(3));
        series.ejected();
        METRICS.set_origin_up(pool, origin, true);
        assert!(render().contains(origin));
        METRICS.forget_origin(pool, origin);
        let text = render();
        assert!(!text.contains(origin), "{text}");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(status_class(600), "other");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(421), "4xx");
        assert_eq!(status_class(0), "other");
    }
}
