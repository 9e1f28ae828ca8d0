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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinSet;

use super::Pool;
use crate::metrics::METRICS;
use crate::snapshot::Live;

/// Up/down state of one origin plus the streak that decides the next transition.
#[derive(Debug)]
pub struct OriginHealth {
    up: AtomicBool,
    /// `(consecutive successes, consecutive failures)`; a mutex because both move together.
    streak: Mutex<(u32, u32)>,
}

impl OriginHealth {
    fn new() -> Self {
        // Origins start healthy: at startup and after adding an origin, traffic must flow
        // before the first probe has had a chance to run.
        OriginHealth {
            up: AtomicBool::new(true),
            streak: Mutex::new((0, 0)),
        }
    }

    /// Whether requests should prefer this origin.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sets the state directly (tests, and pools without health checks).
    pub fn force(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Records one probe result; returns the new state when it changed.
    pub fn record(&self, ok: bool, fall: u32, rise: u32) -> Option<bool> {
        let mut streak = match self.streak.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if ok {
            streak.0 = streak.0.saturating_add(1);
            streak.1 = 0;
        } else {
            streak.1 = streak.1.saturating_add(1);
            streak.0 = 0;
        }
        let was_up = self.is_up();
        let now_up = if was_up {
            streak.1 < fall
        } else {
            streak.0 >= rise
        };
        self.up.store(now_up, Ordering::Relaxed);
        (now_up != was_up).then_some(now_up)
    }
}

/// Health state of every origin, across snapshots.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Arc<OriginHealth>>>,
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
            health.force(true);
        }
        health
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
            if let Some(up) = origin
                .health
                .record(result.is_ok(), health.fall, health.rise)
            {
                METRICS.set_origin_up(pool.name(), &origin.label, up);
                match result {
                    Ok(()) => {
                        tracing::info!(pool = pool.name(), origin = %origin.label, "origin is up")
                    }
                    Err(reason) => {
                        tracing::warn!(pool = pool.name(), origin = %origin.label, %reason, "origin is down")
                    }
                }
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
    let sni = cfg
        .sni
        .clone()
        .or_else(|| cfg.host.clone())
        .unwrap_or_default();
    let mut peer = HttpPeer::new("0.0.0.0:1", cfg.tls, sni);
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
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert!(h.is_up());
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
