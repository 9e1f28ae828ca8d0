//! Origin health: the shared up/down state of each origin and the active HTTP checks that
//! drive it.
//!
//! Health state outlives config snapshots: it lives in the [`HealthRegistry`] keyed by pool
//! name and origin address, so a reload that keeps an origin keeps its state. The checker is a
//! background service that restarts its per-pool probe loops whenever a new snapshot is
//! published, so changed paths, intervals and origins take effect with the reload.
//!
//! Pingora's own `LoadBalancer` health checking is not used: its health check can be set only
//! once (a `OnceLock`) and it has no notion of tiers or reloads. We reuse its `HttpHealthCheck`
//! for the probe itself, which brings connection handling and TLS for free.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinSet;

use super::protect::{Limiter, RetryBudget};
use super::Pool;
use crate::config::Passive;
use crate::metrics::METRICS;
use crate::snapshot::Live;

/// What live traffic saw from one attempt at an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Ok,
    /// Connection refused or reset, a broken response, or a 5xx.
    Failure,
    /// No answer within the pool's timeouts: the origin may be hung, and every request sent
    /// there costs a reader that long, so one is enough to eject it.
    Timeout,
}

/// A change of state worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Down,
    Up,
    /// Ejected by live traffic (also again, after a failed trial).
    Ejected {
        for_: Duration,
    },
}

/// Why an origin is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    /// The active health check failed `fall` times.
    Probe,
    /// Live traffic failed: ejected until a deadline, then one trial request at a time.
    Traffic,
}

#[derive(Debug)]
struct State {
    /// Consecutive successes and failures of probes (and, while ejected, of trial requests).
    successes: u32,
    failures: u32,
    /// Weight of consecutive failures on live traffic.
    traffic_failures: u32,
    down: Option<Down>,
    /// Ejections in a row; the ejection time doubles with each.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// A trial request is in flight until this time (after it, the trial counts as lost).
    trial_until: Option<Instant>,
    /// When the origin last came (back) up.
    up_since: Instant,
}

impl State {
    /// Ejected by traffic, its time served, and no trial out (or the last one lost).
    fn trial_open(&self, now: Instant) -> bool {
        self.down == Some(Down::Traffic)
            && self.ejected_until.is_some_and(|t| t <= now)
            && self.trial_until.is_none_or(|t| t <= now)
    }
}

/// Up/down state of one origin: active probes and live traffic (passive health) both feed it.
///
/// - Probes: down after `fall` failures in a row, up after `rise` successes.
/// - Traffic: `passive.failures` consecutive failures (a timeout counts for all of them) eject
///   the origin for `passive.eject`, doubling with each ejection in a row up to
///   `passive.max_eject`. Once that time has passed, one request at a time may try it (half
///   open); `rise` successes, of trials or probes, bring it back, and a failed trial ejects it
///   again for longer. So one green probe does not undo an ejection.
#[derive(Debug)]
pub struct OriginHealth {
    /// The state requests read, without the lock.
    up: AtomicBool,
    state: Mutex<State>,
    /// Attempts waiting for this origin's answer, and when it last answered anything (ms since
    /// `born`): a hang shows as waiting attempts and no answers, well before the first read
    /// timeout fires.
    waiting: AtomicUsize,
    answered_ms: AtomicU64,
    born: Instant,
}

/// Held by an attempt while it waits for the origin's answer head.
#[derive(Debug)]
pub struct Waiting(Arc<OriginHealth>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OriginHealth {
    fn new() -> Self {
        // Origins start healthy: at startup and after adding an origin, traffic must flow
        // before the first probe has had a chance to run.
        OriginHealth {
            waiting: AtomicUsize::new(0),
            answered_ms: AtomicU64::new(0),
            born: Instant::now(),
            up: AtomicBool::new(true),
            state: Mutex::new(State {
                successes: 0,
                failures: 0,
                traffic_failures: 0,
                down: None,
                ejections: 0,
                ejected_until: None,
                trial_until: None,
                up_since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether requests should prefer this origin.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.born).as_millis() as u64
    }

    /// An attempt starts waiting for this origin's answer; dropping the guard ends the wait.
    pub fn wait_for_answer(self: &Arc<Self>) -> Waiting {
        // The clock starts when someone starts waiting, not at the last answer of an idle
        // origin; it is set before the count goes up, so no reader sees a waiter with an old
        // clock.
        if self.waiting.load(Ordering::Acquire) == 0 {
            self.answered_ms
                .store(self.ms(Instant::now()), Ordering::Release);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self.clone())
    }

    /// The origin answered (anything, even an error status or a refused connection).
    pub fn answered(&self) {
        self.answered_ms
            .store(self.ms(Instant::now()), Ordering::Release);
    }

    /// Whether attempts have been waiting for this origin for `after` with no answer from it
    /// meanwhile: a likely hang. New requests go elsewhere while it lasts (no ejection: the
    /// first timeout does that).
    pub fn stalled(&self, now: Instant, after: Duration) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
            && self
                .ms(now)
                .saturating_sub(self.answered_ms.load(Ordering::Acquire))
                > after.as_millis() as u64
    }

    /// Sets the state directly (tests, the demo).
    pub fn force(&self, up: bool) {
        let mut s = self.lock();
        if up {
            self.bring_up(&mut s, Instant::now());
        } else {
            s.down = Some(Down::Probe);
            self.up.store(false, Ordering::Relaxed);
        }
    }

    /// A pool without active checks cannot leave an origin down by probe (it may have had
    /// checks before a reload); an ejection by traffic stays.
    fn clear_probe_down(&self) {
        let mut s = self.lock();
        if s.down == Some(Down::Probe) {
            self.bring_up(&mut s, Instant::now());
        }
    }

    fn bring_up(&self, s: &mut State, now: Instant) {
        s.down = None;
        s.successes = 0;
        s.failures = 0;
        s.traffic_failures = 0;
        s.ejected_until = None;
        s.trial_until = None;
        s.up_since = now;
        self.up.store(true, Ordering::Relaxed);
    }

    fn eject(&self, s: &mut State, passive: &Passive, now: Instant) -> Change {
        s.ejections = s.ejections.saturating_add(1);
        let factor = 1u32 << (s.ejections - 1).min(16);
        let for_ = passive.eject.saturating_mul(factor).min(passive.max_eject);
        s.down = Some(Down::Traffic);
        s.successes = 0;
        s.traffic_failures = 0;
        s.ejected_until = Some(now + for_);
        s.trial_until = None;
        self.up.store(false, Ordering::Relaxed);
        Change::Ejected { for_ }
    }

    /// Records one probe result.
    pub fn record(&self, ok: bool, fall: u32, rise: u32) -> Option<Change> {
        self.record_probe(ok, fall, rise, Instant::now())
    }

    fn record_probe(&self, ok: bool, fall: u32, rise: u32, now: Instant) -> Option<Change> {
        let mut s = self.lock();
        if ok {
            s.successes = s.successes.saturating_add(1);
            s.failures = 0;
            if s.down.is_some() && s.successes >= rise {
                self.bring_up(&mut s, now);
                return Some(Change::Up);
            }
        } else {
            s.failures = s.failures.saturating_add(1);
            s.successes = 0;
            if s.down.is_none() && s.failures >= fall {
                s.down = Some(Down::Probe);
                self.up.store(false, Ordering::Relaxed);
                return Some(Change::Down);
            }
        }
        None
    }

    /// Records what live traffic saw; `trial` says whether the request held the trial slot of
    /// an ejected origin.
    pub fn record_traffic(
        &self,
        seen: Seen,
        passive: &Passive,
        rise: u32,
        trial: bool,
    ) -> Option<Change> {
        self.traffic_at(seen, passive, rise, trial, Instant::now())
    }

    fn traffic_at(
        &self,
        seen: Seen,
        passive: &Passive,
        rise: u32,
        trial: bool,
        now: Instant,
    ) -> Option<Change> {
        if passive.failures == 0 {
            return None;
        }
        let mut s = self.lock();
        if s.down == Some(Down::Traffic) && !trial {
            // Requests already in flight at the ejection, or sent as a last resort, say nothing
            // new: only the trial decides, so one incident is one ejection.
            return None;
        }
        match (s.down, seen) {
            (None, Seen::Ok) => {
                s.traffic_failures = 0;
                // A long healthy stretch forgives earlier ejections.
                if now.duration_since(s.up_since) >= passive.max_eject {
                    s.ejections = 0;
                }
                None
            }
            (None, _) => {
                let weight = if seen == Seen::Timeout {
                    passive.failures
                } else {
                    1
                };
                s.traffic_failures = s.traffic_failures.saturating_add(weight);
                (s.traffic_failures >= passive.failures).then(|| self.eject(&mut s, passive, now))
            }
            (Some(Down::Traffic), Seen::Ok) => {
                s.trial_until = None;
                s.successes = s.successes.saturating_add(1);
                if s.successes >= rise {
                    self.bring_up(&mut s, now);
                    return Some(Change::Up);
                }
                // The next trial may go at once.
                s.ejected_until = Some(now);
                None
            }
            (Some(Down::Traffic), _) => Some(self.eject(&mut s, passive, now)),
            // Down by probe: the probes decide when it is back.
            (Some(Down::Probe), _) => None,
        }
    }

    /// The state in a word, for `GET /status`: `up`, `down` (by health check), `ejected` (by
    /// live traffic, waiting out its time) or `trial` (ejected, open to one request at a time).
    pub fn describe(&self) -> &'static str {
        let s = self.lock();
        match s.down {
            None => "up",
            Some(Down::Probe) => "down",
            Some(Down::Traffic) if s.ejected_until.is_some_and(|t| t <= Instant::now()) => "trial",
            Some(Down::Traffic) => "ejected",
        }
    }

    /// Whether an ejected origin may take a trial request now.
    pub fn trial_ready(&self, now: Instant) -> bool {
        self.lock().trial_open(now)
    }

    /// Claims the trial slot; false when another request has just taken it. A trial whose
    /// outcome never comes back (the client left) frees the slot after `lost_after`.
    pub fn begin_trial(&self, now: Instant, lost_after: Duration) -> bool {
        let mut s = self.lock();
        let ready = s.trial_open(now);
        if ready {
            s.trial_until = Some(now + lost_after);
        }
        ready
    }
}

/// A pool's in-flight cap and retry budget.
type Protection = (Arc<Limiter>, Arc<RetryBudget>);

/// Health state of every origin, and the protection state of every pool, across snapshots.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Arc<OriginHealth>>>,
    pools: Mutex<HashMap<String, Protection>>,
}

impl HealthRegistry {
    /// The health of `addr` in `pool`, created healthy when new. An origin of a pool without
    /// health checks is always up.
    pub fn get(&self, pool: &str, addr: SocketAddr, checked: bool) -> Arc<OriginHealth> {
        let mut map = match self.map.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let health = map
            .entry((pool.to_owned(), addr))
            .or_insert_with(|| Arc::new(OriginHealth::new()))
            .clone();
        if !checked {
            health.clear_probe_down();
        }
        health
    }

    /// The in-flight cap and retry budget of a pool, created or updated to `config`.
    pub fn protection(&self, config: &crate::config::Pool) -> Protection {
        let mut pools = match self.pools.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (limiter, budget) = pools.entry(config.name.clone()).or_insert_with(|| {
            (
                Arc::new(Limiter::new(
                    config.max_inflight,
                    config.queue,
                    METRICS.inflight(&config.name),
                )),
                Arc::new(RetryBudget::new(config.retry_budget)),
            )
        });
        limiter.resize(config.max_inflight, config.queue);
        budget.set_ratio(config.retry_budget);
        (limiter.clone(), budget.clone())
    }

    /// Forgets origins that are no longer in any pool, so a re-added origin starts fresh.
    pub fn retain(&self, keep: &[(String, SocketAddr)]) {
        let mut map = match self.map.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|k, _| keep.contains(k));
    }
}

/// Background service running the active health checks of the live snapshot's pools.
pub struct HealthChecker {
    live: Arc<Live>,
}

impl HealthChecker {
    pub fn new(live: Arc<Live>) -> Self {
        HealthChecker { live }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.live.subscribe();
        loop {
            let mut loops = JoinSet::new();
            let snapshot = self.live.current();
            for pool in &snapshot.pools {
                if pool.config.health.is_some() {
                    loops.spawn(probe_loop(self.live.clone(), pool.clone()));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Dropping the JoinSet aborts the old loops; the new snapshot's pools
                    // (sharing health state) get fresh ones on the next turn.
                    drop(loops);
                }
            }
        }
    }
}

async fn probe_loop(live: Arc<Live>, pool: Arc<Pool>) {
    let Some(health) = pool.config.health.clone() else {
        return;
    };
    let check = Arc::new(build_check(&pool, &health));
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = JoinSet::new();
        for (i, origin) in pool.origins.iter().enumerate() {
            let check = check.clone();
            let addr = origin.addr;
            let timeout = health.timeout;
            probes.spawn(async move { (i, probe(&check, addr, timeout).await) });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((i, result)) = done else { continue };
            let Some(origin) = pool.origins.get(i) else {
                continue;
            };
            // A loop of a replaced snapshot may outlive the swap by a moment: it must not
            // bring back the gauge of an origin the new config removed.
            if !live.current().pools.iter().any(|p| Arc::ptr_eq(p, &pool)) {
                return;
            }
            if let Some(change) = origin
                .health
                .record(result.is_ok(), health.fall, health.rise)
            {
                let why = match &result {
                    Ok(()) => "health check passed",
                    Err(reason) => reason.as_str(),
                };
                origin.report(pool.name(), change, why);
            }
        }
    }
}

fn build_check(pool: &Pool, health: &crate::config::Health) -> HttpHealthCheck {
    let cfg = &pool.config;
    let host = cfg
        .host
        .clone()
        .or_else(|| cfg.sni.clone())
        .or_else(|| pool.origins.first().map(|o| o.label.clone()))
        .unwrap_or_default();
    let mut check = HttpHealthCheck::new(&host, cfg.tls);
    // The same TLS settings as requests (CA, client certificate, SNI, ALPN): a probe must not
    // pass where a request would fail verification. The address is replaced per probe.
    let Some(mut peer) = pool.peer(0) else {
        return check;
    };
    peer.options.connection_timeout = Some(health.timeout);
    peer.options.total_connection_timeout = Some(health.timeout);
    peer.options.read_timeout = Some(health.timeout);
    check.peer_template = peer;
    if let Ok(mut req) = pingora::http::RequestHeader::build("GET", health.path.as_bytes(), None) {
        // A health request that cannot be built keeps the default `GET /`.
        if req.insert_header("Host", &host).is_ok()
            && req.insert_header("User-Agent", "onair-health").is_ok()
        {
            check.req = req;
        }
    }
    check.validator = Some(Box::new(|resp| {
        if resp.status.is_success() {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::CustomCode("health status", resp.status.as_u16()),
                "health check answered with a non-2xx status",
            )
        }
    }));
    check
}

async fn probe(check: &HttpHealthCheck, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let backend = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    };
    // The peer's connect and read timeouts bound each step; this bounds the whole probe,
    // including a body that never ends.
    match tokio::time::timeout(timeout * 2, check.check(&backend)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise() {
        let h = OriginHealth::new();
        assert!(h.is_up());
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(Change::Down));
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(Change::Up));
        assert!(h.is_up());
    }

    fn passive() -> Passive {
        Passive {
            failures: 3,
            eject: Duration::from_secs(10),
            max_eject: Duration::from_secs(60),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_successes_reset_the_count() {
        let h = OriginHealth::new();
        let p = passive();
        let t = Instant::now();
        assert_eq!(h.traffic_at(Seen::Failure, &p, 2, true, t), None);
        assert_eq!(h.traffic_at(Seen::Failure, &p, 2, true, t), None);
        assert_eq!(h.traffic_at(Seen::Ok, &p, 2, true, t), None, "not in a row");
        assert_eq!(h.traffic_at(Seen::Failure, &p, 2, true, t), None);
        assert_eq!(h.traffic_at(Seen::Failure, &p, 2, true, t), None);
        assert_eq!(
            h.traffic_at(Seen::Failure, &p, 2, true, t),
            Some(Change::Ejected {
                for_: Duration::from_secs(10)
            })
        );
        assert!(!h.is_up());
        // A timeout is enough on its own.
        let h = OriginHealth::new();
        assert!(matches!(
            h.traffic_at(Seen::Timeout, &p, 2, true, t),
            Some(Change::Ejected { .. })
        ));
        // failures = 0: passive health off.
        let h = OriginHealth::new();
        let off = Passive {
            failures: 0,
            ..passive()
        };
        assert_eq!(h.traffic_at(Seen::Timeout, &off, 2, true, t), None);
        assert!(h.is_up());
    }

    #[test]
    fn ejection_backs_off_then_one_trial_at_a_time() {
        let h = OriginHealth::new();
        let p = passive();
        let t = Instant::now();
        let lost = Duration::from_secs(30);
        h.traffic_at(Seen::Timeout, &p, 2, true, t);
        // Ejected for 10 s: no trial before.
        assert!(!h.trial_ready(t + Duration::from_secs(9)));
        let t1 = t + Duration::from_secs(10);
        assert!(h.trial_ready(t1));
        assert!(h.begin_trial(t1, lost));
        assert!(!h.begin_trial(t1, lost), "one trial at a time");
        // The trial fails: ejected again, twice as long.
        assert_eq!(
            h.traffic_at(Seen::Failure, &p, 2, true, t1),
            Some(Change::Ejected {
                for_: Duration::from_secs(20)
            })
        );
        assert!(!h.trial_ready(t1 + Duration::from_secs(19)));
        // ... capped at max_eject.
        let mut now = t1;
        for _ in 0..5 {
            now += Duration::from_secs(120);
            assert!(h.begin_trial(now, lost));
            h.traffic_at(Seen::Failure, &p, 2, true, now);
        }
        assert!(!h.trial_ready(now + Duration::from_secs(59)));
        now += Duration::from_secs(60);
        // Two good trials (rise = 2) bring it back; the second may go at once.
        assert!(h.begin_trial(now, lost));
        assert_eq!(h.traffic_at(Seen::Ok, &p, 2, true, now), None);
        assert!(!h.is_up());
        assert!(h.begin_trial(now, lost));
        assert_eq!(h.traffic_at(Seen::Ok, &p, 2, true, now), Some(Change::Up));
        assert!(h.is_up());
    }

    #[test]
    fn only_the_trial_speaks_while_ejected() {
        let h = OriginHealth::new();
        let p = passive();
        let t = Instant::now();
        assert!(matches!(
            h.traffic_at(Seen::Timeout, &p, 2, false, t),
            Some(Change::Ejected { .. })
        ));
        // Fifty requests that were already waiting time out too: still one ejection of 10 s.
        for _ in 0..50 {
            assert_eq!(h.traffic_at(Seen::Timeout, &p, 2, false, t), None);
        }
        assert!(h.trial_ready(t + Duration::from_secs(10)));
        // A late success of a non-trial request does not open a second trial or count to rise.
        assert_eq!(h.traffic_at(Seen::Ok, &p, 1, false, t), None);
        assert!(!h.is_up());
    }

    #[test]
    fn a_lost_trial_frees_its_slot() {
        let h = OriginHealth::new();
        let p = passive();
        let t = Instant::now();
        h.traffic_at(Seen::Timeout, &p, 2, true, t);
        let t1 = t + Duration::from_secs(10);
        assert!(h.begin_trial(t1, Duration::from_secs(5)));
        assert!(!h.begin_trial(t1 + Duration::from_secs(4), Duration::from_secs(5)));
        assert!(h.begin_trial(t1 + Duration::from_secs(5), Duration::from_secs(5)));
    }

    #[test]
    fn probes_and_traffic_agree() {
        let h = OriginHealth::new();
        let p = passive();
        let t = Instant::now();
        h.traffic_at(Seen::Timeout, &p, 2, true, t);
        // One green probe does not undo an ejection; rise (2) of them do.
        assert_eq!(h.record_probe(true, 2, 2, t), None);
        assert!(!h.is_up());
        assert_eq!(h.record_probe(true, 2, 2, t), Some(Change::Up));
        // Down by probe: traffic does not decide, and no trials are offered.
        h.record_probe(false, 2, 2, t);
        h.record_probe(false, 2, 2, t);
        assert!(!h.is_up());
        assert_eq!(h.traffic_at(Seen::Ok, &p, 2, true, t), None);
        assert!(!h.trial_ready(t + Duration::from_secs(3600)));
        // A registry rebuild for a pool without checks clears a probe verdict, not an ejection.
        h.clear_probe_down();
        assert!(h.is_up());
        h.traffic_at(Seen::Timeout, &p, 2, true, t);
        h.clear_probe_down();
        assert!(!h.is_up());
    }

    #[test]
    fn waiting_with_no_answer_is_a_stall() {
        let h = Arc::new(OriginHealth::new());
        let after = Duration::from_secs(1);
        let now = Instant::now();
        assert!(
            !h.stalled(now + Duration::from_secs(60), after),
            "idle is not stalled"
        );
        let waiting = h.wait_for_answer();
        assert!(!h.stalled(now + Duration::from_millis(500), after));
        assert!(h.stalled(now + Duration::from_secs(2), after));
        // Any answer from the origin resets the clock; nobody waiting, no stall.
        h.answered();
        assert!(!h.stalled(Instant::now() + Duration::from_millis(500), after));
        drop(waiting);
        assert!(!h.stalled(Instant::now() + Duration::from_secs(60), after));
    }

    #[test]
    fn registry_keeps_state_across_rebuilds() {
        let r = HealthRegistry::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        r.get("p", addr, true).force(false);
        assert!(!r.get("p", addr, true).is_up());
        r.retain(&[]);
        assert!(r.get("p", addr, true).is_up());
    }
}
