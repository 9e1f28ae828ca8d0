//! The HTTP cache: key (`key`), cacheability (`policy`), the memory tier (`memory`), and the
//! `Cache-Status` / metric vocabulary (`status`).
//!
//! Pingora's cache machinery wants `'static` plumbing, so [`EdgeCache`] is built once per
//! process and leaked. Its sizes (memory capacity, lock age) are therefore fixed at start; the
//! per-request settings (lock wait, stale grants, route bypass) come from the live snapshot and
//! follow reloads.

pub mod key;
pub mod memory;
pub mod policy;
pub mod status;

use std::time::Duration;

use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::CacheMeta;
use pingora::cache::{CacheOptionOverrides, HttpCache, VarianceBuilder};
use pingora::http::RequestHeader;

use crate::config;
use memory::MemoryStore;

/// Keys remembered as uncacheable per predictor shard: requests for them skip the cache lock,
/// so an uncacheable URL never makes concurrent readers wait for each other.
const PREDICTOR_SHARD_CAPACITY: usize = 4096;

/// The process-wide cache plumbing.
pub struct EdgeCache {
    pub memory: &'static MemoryStore,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<16>,
    max_object: usize,
}

impl EdgeCache {
    /// Builds (and leaks, once per process) the cache for these settings.
    pub fn new(settings: &config::Cache) -> EdgeCache {
        let max_object = usize::try_from(settings.max_object).unwrap_or(usize::MAX);
        let lock: Box<CacheKeyLockImpl> =
            CacheLock::new_boxed(settings.lock_timeout.max(Duration::from_secs(1)));
        EdgeCache {
            memory: Box::leak(Box::new(MemoryStore::new(settings.memory, max_object))),
            lock: Box::leak(lock),
            predictor: Box::leak(Box::new(Predictor::new(PREDICTOR_SHARD_CAPACITY, None))),
            max_object,
        }
    }

    /// Turns the cache on for one request; `lock_wait` is how long followers wait for the
    /// request that fetches the object (request coalescing).
    pub fn enable(&self, cache: &mut HttpCache, lock_wait: Duration) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(lock_wait);
        cache.enable(
            self.memory,
            None,
            Some(self.predictor),
            Some(self.lock),
            Some(overrides),
        );
        cache.set_max_file_size_bytes(self.max_object);
    }
}

/// Whether a request may be answered from (and fill) the cache at all.
pub fn request_cacheable(req: &RequestHeader) -> bool {
    matches!(req.method, http::Method::GET | http::Method::HEAD)
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
    for name in &names {
        let sent = req
            .headers
            .get(name.as_str())
            .map_or(&b""[..], |v| v.as_bytes());
        builder.add_value(name, sent);
    }
    builder.finalize()
}
