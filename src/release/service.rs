//! The flip: a background service that sleeps until the next release's time and then applies
//! what the release carries to purge (the pages that will link to the released content). The
//! embargo itself needs no flip: the request path compares each request with the release's
//! time, so it lifts at that instant by this node's clock. The purges come a second after it
//! ([`SETTLE_MS`]), so a reader who sees a refreshed page can always fetch what it links to.
//!
//! A release whose time passed while the node was down (or that arrives late, on catch-up) is
//! applied at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{now_ms, warm, Book};
use crate::cache::EdgeCache;
use crate::metrics::METRICS;
use crate::snapshot::Live;

/// The longest sleep between looks (a clock stepped forward is noticed within it).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How long after a release's time its purges apply. The embargo lifts at the time itself;
/// the pages that link to the content are refreshed a moment later, so that a node whose clock
/// is behind by up to this much (a shield behind its edges) has lifted its own embargo by the
/// time any reader can follow a new link.
const SETTLE_MS: u64 = 1_000;

pub struct ReleaseService {
    pub live: Arc<Live>,
    pub cache: EdgeCache,
}

impl ReleaseService {
    fn book(&self) -> &Book {
        self.cache.releases
    }

    /// Applies the purges of every release whose time has come (and settled).
    async fn flip(&self) {
        let now = now_ms();
        for entry in self.book().due(now.saturating_sub(SETTLE_MS)) {
            let id = entry.spec.id.clone();
            let mut purged = 0;
            let snapshot = self.live.current();
            for request in entry.spec.purge.iter().flat_map(|p| p.requests()) {
                match snapshot.purge_selector(&request) {
                    Ok(selector) => {
                        purged += self.cache.purge(&selector, request.soft).await.purged;
                    }
                    Err(e) => tracing::warn!("release {id}: its purge cannot apply here: {e}"),
                }
            }
            self.book().released(&id, entry.at_ms, now_ms());
            tracing::info!(
                late_ms = now.saturating_sub(entry.at_ms),
                purged,
                "release {id}: released"
            );
        }
    }
}

impl ReleaseService {
    /// Starts the warm fetches due now: every pending release within `release.warm_lead` of
    /// its time, up to `release.warm_concurrency` at once each.
    fn warm(&self) {
        let snapshot = self.live.current();
        let settings = &snapshot.config.release;
        let now = now_ms();
        let lead = u64::try_from(settings.warm_lead.as_millis()).unwrap_or(u64::MAX);
        let pending: Vec<_> = self
            .book()
            .list()
            .into_iter()
            .filter(|e| e.state == super::State::Pending)
            .collect();
        let (warmed, missing) = self.book().warm.counts(
            pending
                .iter()
                .map(|e| (e.spec.id.as_str(), e.spec.warm.as_slice())),
        );
        METRICS.warm_objects(warmed, missing);
        if missing == 0 {
            return;
        }
        // The node's own plain-HTTP listener, as a reader would reach it (an https URL is
        // fetched there too, marked as such: see `warm::for_https`).
        let listen = snapshot.config.listen.http.first().map(|a| {
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            std::net::SocketAddr::new(ip, a.port())
        });
        // A node without an HTTPS listener (a shield its edges reach over plain HTTP) keys
        // every request as plain HTTP: an https URL is warmed as its tiers will ask for it.
        let https_readers = !snapshot.config.listen.https.is_empty();
        let value = settings
            .warm_secret
            .clone()
            .unwrap_or_else(|| warm::token().to_owned());
        for entry in pending {
            if now.saturating_add(lead) < entry.at_ms || now >= entry.at_ms {
                continue;
            }
            let id = entry.spec.id.clone();
            let (generation, urls) = self.book().warm.next(
                &id,
                &entry.spec.warm,
                settings.warm_concurrency,
                Instant::now(),
            );
            for url in urls {
                let (cache, id, value) = (self.cache, id.clone(), value.clone());
                tokio::spawn(async move {
                    let result = match listen {
                        Some(listen) => warm::fetch(listen, &url, &value, https_readers)
                            .await
                            .map(|_| ()),
                        None => {
                            Err("no plain-HTTP listener ([listen] http) to warm through".to_owned())
                        }
                    };
                    if let Err(e) = &result {
                        tracing::debug!("release {id}: warm {url}: {e}");
                    }
                    let fetched = result.is_ok();
                    cache.releases.warm.finished(&id, generation, &url, result);
                    if fetched {
                        // Its slot is free: the loop starts the next fetch now, not at its
                        // next look a second later. (A failure waits `warm::RETRY` anyway:
                        // fetches failing at once must not spin the loop.)
                        cache.releases.changed.notify_one();
                    }
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ReleaseService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.flip().await;
            self.warm();
            let wait = self.book().next_at().map_or(MAX_SLEEP, |at| {
                Duration::from_millis(at.saturating_sub(now_ms())).min(MAX_SLEEP)
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.book().changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
