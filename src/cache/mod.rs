//! The HTTP cache: key (`key`), cacheability (`policy`), the memory tier (`memory`), and the
//! `Cache-Status` / metric vocabulary (`status`).
//!
//! Pingora's cache machinery wants `'static` plumbing, so [`EdgeCache`] is built once per
//! process and leaked. Its sizes (memory capacity, lock age) are therefore fixed at start; the
//! per-request settings (lock wait, stale grants, route bypass) come from the live snapshot and
//! follow reloads.

pub mod catch_up;
pub mod disk;
pub mod fence;
pub mod history;
pub mod journal;
pub mod key;
pub mod memory;
pub mod policy;
pub mod purge;
pub mod status;
pub mod tiered;

#[cfg(test)]
mod stress;

use std::time::Duration;

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::cache::{CacheOptionOverrides, HttpCache, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config;
use disk::DiskStore;
use memory::MemoryStore;
use tiered::TieredStore;

/// Keys remembered as uncacheable per predictor shard: requests for them skip the cache lock,
/// so an uncacheable URL never makes concurrent readers wait for each other.
const PREDICTOR_SHARD_CAPACITY: usize = 4096;

/// The process-wide cache plumbing (all `'static`, so copies are handles to the same cache).
#[derive(Clone, Copy)]
pub struct EdgeCache {
    pub memory: &'static MemoryStore,
    pub store: &'static TieredStore,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<16>,
    max_object: usize,
    /// Operator purges and when they began, to judge upstream caches' copies (see `history`).
    pub history: &'static history::PurgeHistory,
    /// Closed after a start with `[fleet]` until the fleet's operations are caught up.
    pub catch_up: &'static catch_up::CatchUp,
    /// Scheduled releases and their embargoes (what may not be served yet).
    pub releases: &'static crate::release::Book,
}

impl EdgeCache {
    /// Builds (and leaks, once per process) the cache for these settings, opening the disk
    /// tier when `disk_path` is set.
    pub fn new(settings: &config::Cache) -> std::io::Result<EdgeCache> {
        let max_object = usize::try_from(settings.max_object).unwrap_or(usize::MAX);
        let lock: Box<CacheKeyLockImpl> =
            CacheLock::new_boxed(settings.lock_timeout.max(Duration::from_secs(1)));
        let fence = std::sync::Arc::new(fence::PurgeFence::default());
        let memory: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
            settings.memory,
            memory_max_object(settings),
            fence.clone(),
        )));
        let history: &'static history::PurgeHistory = Box::leak(Box::default());
        let disk = match &settings.disk_path {
            Some(path) => {
                let disk = DiskStore::open(path, settings.disk, fence.clone())?;
                // Another process's purges (a graceful upgrade) reach this memory tier too, and
                // this process's record of purges: an upstream copy older than one is judged.
                disk.on_foreign_purge(Box::new(move |entry| match entry {
                    journal::Entry::Purge { selector, soft, .. } => {
                        history.record(selector);
                        memory.purge_matching(selector, *soft);
                    }
                    journal::Entry::Stale { key } => {
                        if let Some(key) = journal::key_of(key) {
                            let at = std::time::SystemTime::now() - Duration::from_secs(1);
                            memory.mark_stale(&key, at);
                        }
                    }
                    journal::Entry::Remove { key } => {
                        if let Some(key) = journal::key_of(key) {
                            memory.remove(&key);
                        }
                    }
                    journal::Entry::Published { .. } | journal::Entry::PurgeDone { .. } => {}
                }));
                Some(disk)
            }
            None => None,
        };
        Ok(EdgeCache {
            memory,
            store: Box::leak(Box::new(TieredStore::new(
                memory,
                disk,
                settings.max_object,
                fence,
            ))),
            lock: Box::leak(lock),
            predictor: Box::leak(Box::new(Predictor::new(
                PREDICTOR_SHARD_CAPACITY,
                Some(policy::transient_refusal),
            ))),
            max_object,
            history,
            catch_up: Box::leak(Box::default()),
            releases: Box::leak(Box::default()),
        })
    }

    /// Turns the cache on for one request; `lock_wait` is how long followers wait for the
    /// request that fetches the object (request coalescing).
    pub fn enable(&self, cache: &mut HttpCache, lock_wait: Duration) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(lock_wait);
        cache.enable(
            self.store,
            None,
            Some(self.predictor),
            Some(self.lock),
            Some(overrides),
        );
        cache.set_max_file_size_bytes(self.max_object);
    }
}

impl EdgeCache {
    /// Removes (or, `soft`, marks stale) every object the selector matches, in every tier;
    /// reports how many. The tiers are walked on a blocking thread: no request waits for it.
    pub async fn purge(&self, selector: &purge::Selector, soft: bool) -> purge::Report {
        self.history.record(selector);
        self.purge_here(selector, soft).await
    }

    /// [`EdgeCache::purge`] of this node's tiers only, not remembered for judging upstream
    /// copies: for copies that are stale here but not news (a release dropping the drafts it
    /// holds back, which every node holding the release drops too), so that the next tier's
    /// fresh copy is still taken.
    pub async fn purge_here(&self, selector: &purge::Selector, soft: bool) -> purge::Report {
        let store = self.store;
        let selector = selector.clone();
        let walked =
            tokio::task::spawn_blocking(move || (store.purge_selector(&selector, soft), selector))
                .await;
        match walked {
            Ok((report, selector)) => {
                crate::metrics::METRICS.purged(report.purged);
                tracing::info!(
                    ?selector,
                    soft,
                    count = report.purged,
                    index_ready = report.index_ready,
                    "purge"
                );
                report
            }
            Err(e) => {
                tracing::error!("purge failed: {e}");
                purge::Report {
                    purged: 0,
                    index_ready: false,
                }
            }
        }
    }

    /// A ticket for a request about to leave for the origin (see [`fence::EarlyTicket`]).
    pub fn early_ticket(&self) -> fence::EarlyTicket {
        fence::EarlyTicket(std::sync::Arc::new(self.store.fence.open()))
    }

    /// Marks one object (its primary variant) stale in every tier, after an unsafe method
    /// changed it at the origin (RFC 9111 §4.4). Stale, not removed: a client's POST must not
    /// be able to evict the copy the site falls back on while its origins are down. The next
    /// reader revalidates. Cheap when it is already stale, so a flood of POSTs costs nothing.
    pub async fn invalidate(&self, key: &CacheKey) {
        let store = self.store;
        let hash = key.combined_bin();
        if let Err(e) = tokio::task::spawn_blocking(move || store.mark_stale(hash)).await {
            tracing::warn!("cache invalidation failed: {e}");
        }
    }
}

/// The paths whose cached copies a response makes obsolete (RFC 9111 §4.4): after a successful
/// answer to an unsafe method (POST, PUT, DELETE, ...), the request's own path and the same-host
/// paths its answer names in `Location` / `Content-Location`. Empty for everything else.
pub fn invalidated_by(req: &RequestHeader, resp: &ResponseHeader, host: &str) -> Vec<String> {
    let succeeded = resp.status.is_success() || resp.status.is_redirection();
    if req.method.is_safe() || !succeeded {
        return Vec::new();
    }
    let mut paths = vec![req
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())];
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(uri) = resp
            .headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.parse::<http::Uri>().ok())
        else {
            continue;
        };
        // Only the same host: an origin must not be able to evict another site's pages.
        let same_host = uri
            .host()
            .is_none_or(|h| crate::router::normalize_host(h).as_deref() == Some(host));
        if let (true, Some(p)) = (same_host, uri.path_and_query()) {
            // In the normal form the copies are stored under.
            if let Ok(p) = crate::uri_path::normalize_path_and_query(p.as_str()) {
                paths.push(p.into_owned());
            }
        }
    }
    paths
}

/// The largest object the memory tier takes: `max_object`, but with a disk tier no more than a
/// quarter of the memory, so one large object cannot flush the hot set (the disk holds it).
fn memory_max_object(settings: &config::Cache) -> usize {
    let limit = if settings.disk_path.is_some() {
        settings.max_object.min(settings.memory / 4)
    } else {
        settings.max_object
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Validates a `HandleHit::seek` request against a body of `len` bytes: returns the
/// `[start, end)` to serve. `end` past the last byte means "to the end".
pub(crate) fn seek_range(
    len: u64,
    start: usize,
    end: Option<usize>,
) -> pingora::Result<(u64, u64)> {
    let start = start as u64;
    if start >= len {
        return pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "range start beyond the body",
        );
    }
    Ok((start, end.map_or(len, |e| (e as u64).min(len))))
}

/// The request header with which an onair node asks the next tier for a copy revalidated with
/// the origin (beside `Cache-Control: no-cache`, which other caches may act on). Every node
/// removes it from what it forwards and adds it only to its own refetches, so a reader's copy
/// never gets through an edge, whatever the route; and a node honours it only from its tiers
/// (see `proxy::ctx::RequestCtx::revalidate`): from readers it would let anyone send every
/// request to the origin.
pub const REFETCH_HEADER: &str = "onair-refetch";

/// Whether a request is another tier's refetch ([`REFETCH_HEADER`]).
pub fn asks_revalidation(req: &RequestHeader) -> bool {
    req.headers.contains_key(REFETCH_HEADER)
}

/// Whether a request may be answered from (and fill) the cache at all: GET and HEAD without
/// a body. A body is not in the key, and an origin may answer it differently (a GET with a
/// search body): stored, that answer would go to every reader of the URL.
pub fn request_cacheable(req: &RequestHeader) -> bool {
    matches!(req.method, http::Method::GET | http::Method::HEAD)
        && !crate::proxy::headers::has_body(req)
}

/// The variance of a stored response for this request: the values of every request header its
/// `Vary` names. Pingora keys variants by this hash.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    let values: Vec<Vec<u8>> = names
        .iter()
        .map(|name| {
            // Every line of the header, as the origin saw them: a second line must not be able
            // to hide behind the first's variant.
            let mut joined = Vec::new();
            for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined
        })
        .collect();
    for (name, value) in names.iter().zip(&values) {
        builder.add_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> RequestHeader {
        RequestHeader::build(method, path.as_bytes(), None).unwrap()
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn unsafe_methods_invalidate_their_targets() {
        assert!(invalidated_by(&req("GET", "/a"), &resp(200, &[]), "a.vn").is_empty());
        assert!(invalidated_by(&req("POST", "/a"), &resp(500, &[]), "a.vn").is_empty());
        assert_eq!(
            invalidated_by(&req("POST", "/a?x=1"), &resp(204, &[]), "a.vn"),
            ["/a?x=1"]
        );
        let r = resp(
            303,
            &[
                ("Location", "http://A.vn/story/1"),
                ("Content-Location", "https://other.vn/x"),
            ],
        );
        assert_eq!(
            invalidated_by(&req("PUT", "/story"), &r, "a.vn"),
            ["/story", "/story/1"]
        );
        let r = resp(201, &[("Location", "/story/2")]);
        assert_eq!(
            invalidated_by(&req("POST", "/story"), &r, "a.vn"),
            ["/story", "/story/2"]
        );
    }
}
