//! L1: the in-memory tier, on moka (byte-weighted capacity, TinyLFU admission).
//!
//! An entry holds the metadata's fields and the body as one `Bytes`, so a hit hands out
//! slices of the body and copies none of it. The metadata is kept as plain fields rather than
//! Pingora's serialized form: deserializing it (its header codec runs zstd) took 15 % of the
//! CPU of a 1 KiB hit in the profile (docs/benchmarks.md). Fills are collected in memory and become visible when the
//! miss finishes; a fill that is dropped without finishing (origin failure, object too large)
//! leaves nothing behind.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::fence::{PurgeFence, Ticket};
use super::key::target_of_key;
use super::purge::{tags_of, Selector};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

/// Fixed cost charged per entry on top of its bytes (key, Arc, the header maps' allocations,
/// moka's bookkeeping), so that many small objects cannot push the process far past
/// `cache.memory`. `cargo bench --bench cache_store` measures about 1.9 KB per object beyond
/// its body for a typical four-header response; this plus [`StoredMeta::size`] charges about
/// that much.
const ENTRY_OVERHEAD: usize = 1024;

/// The parts of a `CacheMeta` a hit needs, kept ready to use.
#[derive(Clone)]
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    /// The reference point for age and freshness: the last revalidation.
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn capture(meta: &CacheMeta) -> Self {
        StoredMeta {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header().clone(),
        }
    }

    fn rebuild(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if self.epoch != self.created {
            // A revalidated object: age and freshness count from the revalidation.
            meta.set_epoch_override(self.epoch);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    /// Approximate bytes held by the header: Pingora keeps every field twice (the header map
    /// and a case-preserving copy of the names), each with its own allocations.
    fn size(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(k, v)| 2 * k.as_str().len() + v.len() + 96)
            .sum()
    }
}

/// What [`MemoryStore::fresh_hit`] hands out.
pub struct FreshHit {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Seconds since the object was stored or last revalidated.
    pub age: u64,
    pub fresh_until: SystemTime,
}

/// One stored object.
struct Entry {
    meta: StoredMeta,
    body: Bytes,
    /// `host[:port]/path?query`, for purges by URL and prefix.
    target: String,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag`.
    tags: Vec<String>,
    /// Set by a soft purge: stale from then on. Marking in place (rather than inserting a
    /// stale copy) means a soft purge can never put back an object a concurrent hard purge,
    /// revalidation or refill replaced.
    stale_from: std::sync::OnceLock<SystemTime>,
}

impl Entry {
    fn new(meta: StoredMeta, body: Bytes, target: String, tags: Vec<String>) -> Entry {
        Entry {
            meta,
            body,
            target,
            tags,
            stale_from: std::sync::OnceLock::new(),
        }
    }

    /// Fresh until then: the stored freshness, cut short by a soft purge.
    fn fresh_until(&self) -> SystemTime {
        match self.stale_from.get() {
            Some(t) => self.meta.fresh_until.min(*t),
            None => self.meta.fresh_until,
        }
    }

    fn meta(&self) -> CacheMeta {
        let mut meta = self.meta.rebuild();
        if let Some(t) = self.stale_from.get() {
            if *t < self.meta.fresh_until {
                // `expire_at` keeps `updated`: Age still counts from the fill.
                meta.expire_at(*t);
            }
        }
        meta
    }

    fn weight(&self) -> u32 {
        let bytes = self.body.len()
            + self.meta.size()
            + self.target.len()
            + self.tags.iter().map(String::len).sum::<usize>()
            + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Hashes a cache key by taking 8 of its bytes: the key is already a Blake2 digest, uniformly
/// spread and not choosable by a client, so SipHash over it (moka's default) is wasted work
/// (5 % of a 10k-URL hit in the profile).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

type DigestState = std::hash::BuildHasherDefault<DigestHasher>;

/// The memory tier.
pub struct MemoryStore {
    entries: moka::sync::Cache<HashBinary, Arc<Entry>, DigestState>,
    /// Largest body this tier stores; larger fills are abandoned (they stream through).
    max_object: usize,
    /// Shared with the other tiers: a purge refuses fills and rewrites already in flight.
    fence: Arc<PurgeFence>,
}

impl MemoryStore {
    /// A store holding at most `capacity` bytes, objects up to `max_object` bytes each.
    pub fn new(capacity: u64, max_object: usize) -> Self {
        Self::with_fence(capacity, max_object, Arc::default())
    }

    /// As [`MemoryStore::new`], sharing the purge fence of the other tiers.
    pub fn with_fence(capacity: u64, max_object: usize, fence: Arc<PurgeFence>) -> Self {
        MemoryStore {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, e: &Arc<Entry>| e.weight())
                .eviction_listener(|_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        crate::metrics::METRICS.cache_evicted("memory", 1);
                    }
                })
                .build_with_hasher(DigestState::default()),
            max_object,
            fence,
        }
    }

    /// Starts something that will store an object later (a promotion from a lower tier).
    pub fn ticket(&self) -> Ticket {
        self.fence.open()
    }

    /// Inserts unless a purge since `ticket` matches the entry.
    fn insert_fenced(&self, ticket: &Ticket, key: HashBinary, entry: Arc<Entry>) -> bool {
        let (target, tags) = (entry.target.clone(), entry.tags.clone());
        self.fence
            .publish(ticket, &key, &target, &tags, || {
                self.entries.insert(key, entry)
            })
            .is_some()
    }

    /// Objects stored now (approximate until moka runs its pending maintenance).
    pub fn objects(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes accounted now (approximate, as above).
    pub fn size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Removes (or, `soft`, marks stale) every object the selector matches; returns their
    /// keys. A scan of the whole tier (purges are rare admin operations, lookups stay O(1)):
    /// call it off the request path. The caller records the purge in the fence first, so that
    /// fills and promotions in flight cannot put back what this removes.
    pub fn purge_matching(&self, selector: &Selector, soft: bool) -> Vec<HashBinary> {
        // Stale from now on: the next request revalidates, and the copy can still be served
        // within its stale windows if the origin is down.
        let stale_at = SystemTime::now() - Duration::from_secs(1);
        let mut purged = Vec::new();
        for (key, entry) in self.entries.iter() {
            if !selector.matches(&entry.target, &entry.tags) {
                continue;
            }
            purged.push(*key);
            if soft {
                let _ = entry.stale_from.set(stale_at);
            } else {
                self.entries.invalidate(&*key);
            }
        }
        purged
    }

    /// Stores an object read from a lower tier (promotion of a disk hit) unless a purge since
    /// `ticket` (taken before the lower tier was read) matches it.
    pub fn insert(
        &self,
        ticket: Ticket,
        key: HashBinary,
        meta: &CacheMeta,
        body: Bytes,
        target: String,
        tags: Vec<String>,
    ) {
        if body.len() > self.max_object {
            return;
        }
        let entry = Arc::new(Entry::new(StoredMeta::capture(meta), body, target, tags));
        self.insert_fenced(&ticket, key, entry);
    }

    /// A copy that can answer a plain request as it is: fresh at `now`, stored without `Vary`,
    /// with `Content-Length` and a status that has a body. Clones the header once and the body
    /// not at all.
    pub fn fresh_hit(&self, key: &HashBinary, now: SystemTime) -> Option<FreshHit> {
        let entry = self.entries.get(key)?;
        let m = &entry.meta;
        let status = m.header.status.as_u16();
        let fresh_until = entry.fresh_until();
        let usable = fresh_until >= now
            && m.variance.is_none()
            && !m.header.headers.contains_key(http::header::VARY)
            && m.header
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|l| l.to_str().ok()?.parse::<usize>().ok())
                == Some(entry.body.len())
            && status >= 200
            && !matches!(status, 204 | 304);
        usable.then(|| FreshHit {
            header: m.header.clone(),
            body: entry.body.clone(),
            age: now.duration_since(m.epoch).unwrap_or_default().as_secs(),
            fresh_until,
        })
    }

    /// Starts a fill of `key`; it becomes visible when [`MemoryFill::publish`] runs.
    pub fn fill(&'static self, key: &CacheKey, meta: &CacheMeta) -> MemoryFill {
        self.fill_with(key, meta, self.ticket())
    }

    /// As [`MemoryStore::fill`], under a ticket taken by the caller (shared with other tiers).
    pub fn fill_with(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        ticket: Ticket,
    ) -> MemoryFill {
        MemoryFill {
            store: self,
            key: key.combined_bin(),
            meta: StoredMeta::capture(meta),
            body: BytesMut::new(),
            target: target_of_key(key.primary_key()).unwrap_or_default(),
            tags: tags_of(meta.response_header()),
            ticket,
        }
    }

    /// Replaces an object's metadata after a revalidation, keeping its body; false when it is
    /// not stored (evicted or purged meanwhile: nothing to update, not an error), when the
    /// stored object is not the one revalidated (refilled meanwhile: the new headers belong to
    /// the old body, not to the refill's), or when a purge since `ticket` matches it.
    pub fn replace_meta(&self, ticket: &Ticket, hash: HashBinary, meta: &CacheMeta) -> bool {
        let Some(old) = self.entries.get(&hash) else {
            return false;
        };
        // Pingora carries the revalidated object's `created` into the new metadata; each fill
        // stamps its own, so a different one means another version is stored now.
        if old.meta.created != meta.created() {
            return false;
        }
        let tags = tags_of(meta.response_header());
        // Refused by a purge of the old tags or of the new ones.
        let mut all_tags = old.tags.clone();
        all_tags.extend(tags.iter().cloned());
        let entry = Arc::new(Entry::new(
            StoredMeta::capture(meta),
            old.body.clone(),
            old.target.clone(),
            tags,
        ));
        self.fence
            .publish(ticket, &hash, &old.target, &all_tags, || {
                // Still the object revalidated: a refill between the lookup above and here
                // must not be overwritten either.
                let current = self.entries.get(&hash);
                if current.is_some_and(|c| Arc::ptr_eq(&c, &old)) {
                    self.entries.insert(hash, entry);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false)
    }

    /// Marks one object stale from `at` (an unsafe method changed it at the origin).
    pub fn mark_stale(&self, key: &HashBinary, at: SystemTime) {
        if let Some(entry) = self.entries.get(key) {
            let _ = entry.stale_from.set(at);
        }
    }

    /// Drops one object (every caller that replaces or abandons a version).
    pub fn remove(&self, key: &HashBinary) {
        self.entries.invalidate(key);
    }

    /// Largest body this tier stores.
    pub fn max_object(&self) -> usize {
        self.max_object
    }

    /// Runs moka's deferred maintenance (evictions, counters). Cheap; call periodically.
    pub fn maintain(&self) {
        self.entries.run_pending_tasks();
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.entries.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = entry.meta();
        Ok(Some((meta, Box::new(MemoryHit::new(entry.body.clone())))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(self.fill(key, meta)))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key().combined_bin();
        Ok(match self.entries.remove(&key) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        Ok(self.replace_meta(&self.ticket(), key.combined_bin(), meta))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads a stored body, whole or a range of it, without copying.
pub(super) struct MemoryHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl MemoryHit {
    /// A hit over a body held in memory.
    pub(super) fn new(body: Bytes) -> Self {
        MemoryHit {
            end: body.len(),
            body,
            start: 0,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for MemoryHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (start, end) = super::seek_range(self.body.len() as u64, start, end)?;
        (self.start, self.end) = (start as usize, end as usize);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a fill; publishes it on `finish`.
pub struct MemoryFill {
    store: &'static MemoryStore,
    key: HashBinary,
    meta: StoredMeta,
    body: BytesMut,
    target: String,
    tags: Vec<String>,
    ticket: Ticket,
}

impl MemoryFill {
    /// Adds body bytes; fails (abandoning the fill) past the tier's `max_object`.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        if self.body.len() + data.len() > self.store.max_object {
            // Abandon the fill: the response still streams to the client, uncached.
            return Error::e_explain(
                ErrorType::InternalError,
                "object larger than cache.max_object",
            );
        }
        self.body.extend_from_slice(data);
        Ok(())
    }

    /// Makes the object visible; returns its size, or None when a purge since the fill started
    /// refused it.
    pub fn publish(self) -> Option<usize> {
        let size = self.body.len();
        let entry = Arc::new(Entry::new(
            self.meta,
            self.body.freeze(),
            self.target,
            self.tags,
        ));
        self.store
            .insert_fenced(&self.ticket, self.key, entry)
            .then_some(size)
    }
}

#[async_trait]
impl HandleMiss for MemoryFill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.append(&data)
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        match self.publish() {
            Some(size) => Ok(MissFinishType::Created(size)),
            None => Error::e_explain(ErrorType::InternalError, "purged while it was filled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fence::Purged;

    fn store() -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore::new(1 << 20, 64 << 10)))
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).unwrap();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    fn span() -> SpanHandle {
        pingora::cache::trace::Span::inactive().handle()
    }

    async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[tokio::test]
    async fn fill_then_hit_then_range_then_purge() {
        let s = store();
        let key = CacheKey::new("k1", "");
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
        let mut miss = s.get_miss_handler(&key, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"hello "), false)
            .await
            .unwrap();
        // Not visible before the fill finishes.
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
        miss.write_body(Bytes::from_static(b"world"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let (m, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(m.response_header().status, 200);
        assert_eq!(read_all(&mut hit).await, b"hello world");
        hit.seek(6, Some(9)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"wor");
        hit.seek(6, Some(1000)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"world");
        assert!(hit.seek(11, None).is_err());
        let compact = key.to_compact();
        let out = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(out, PurgeOutcome::Purged(None));
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_purge_wins_against_fills_and_promotions_in_flight() {
        let fence = Arc::new(PurgeFence::default());
        let s: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
            1 << 20,
            64 << 10,
            fence.clone(),
        )));
        let key = CacheKey::new("a.vn", "/story");
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Surrogate-Key", "election").unwrap();
        let now = SystemTime::now();
        let tagged = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        // A fill that started before a purge of its tag is not stored.
        let mut fill = s.fill(&key, &tagged);
        fill.append(b"the old text").unwrap();
        drop(fence.record(Purged::Matching(Selector::Tags(
            ["election".to_owned()].into(),
        ))));
        s.purge_matching(&Selector::Tags(["election".to_owned()].into()), false);
        assert_eq!(fill.publish(), None);
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
        // A promotion read before a purge of its key is not stored either.
        let ticket = s.ticket();
        drop(fence.record(Purged::Key(key.combined_bin())));
        s.insert(
            ticket,
            key.combined_bin(),
            &tagged,
            Bytes::from_static(b"from disk"),
            "a.vn/story".into(),
            vec![],
        );
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
        // A fill that starts after the purge is.
        let mut fill = s.fill(&key, &tagged);
        fill.append(b"the correction").unwrap();
        assert_eq!(fill.publish(), Some(14));
        assert!(s.lookup(&key, &span()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn metadata_survives_the_round_trip() {
        let s = store();
        let key = CacheKey::new("meta", "");
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("ETag", "\"v1\"").unwrap();
        let mut m = CacheMeta::new(created + Duration::from_secs(60), created, 30, 600, header);
        m.set_variance([7u8; 16]);
        let mut miss = s.get_miss_handler(&key, &m, &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let (got, _) = s.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(got.fresh_until(), m.fresh_until());
        assert_eq!(got.created(), created);
        assert_eq!(got.epoch(), created);
        assert_eq!(got.stale_while_revalidate_sec(), 30);
        assert_eq!(got.stale_if_error_sec(), 600);
        assert_eq!(got.variance(), Some([7u8; 16]));
        assert_eq!(got.headers().get("etag").unwrap(), "\"v1\"");
        // A revalidation moves the epoch; the stored object keeps its body.
        let mut revalidated = CacheMeta::new(
            created + Duration::from_secs(200),
            created,
            30,
            600,
            got.response_header().clone(),
        );
        revalidated.set_epoch_override(created + Duration::from_secs(100));
        assert!(s.update_meta(&key, &revalidated, &span()).await.unwrap());
        let (got, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(got.epoch(), created + Duration::from_secs(100));
        assert_eq!(got.fresh_until(), created + Duration::from_secs(200));
        assert_eq!(read_all(&mut hit).await, b"x");
    }

    #[tokio::test]
    async fn abandoned_or_oversized_fills_leave_nothing() {
        let s = store();
        let key = CacheKey::new("k2", "");
        let mut miss = s.get_miss_handler(&key, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
        let mut miss = s.get_miss_handler(&key, &meta(), &span()).await.unwrap();
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 65 << 10]), true)
            .await
            .is_err());
        drop(miss);
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn capacity_is_bounded_in_bytes() {
        let s: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(256 << 10, 64 << 10)));
        for i in 0..64 {
            let key = CacheKey::new(format!("obj{i}"), "");
            let mut miss = s.get_miss_handler(&key, &meta(), &span()).await.unwrap();
            miss.write_body(Bytes::from(vec![b'x'; 32 << 10]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
        }
        s.maintain();
        assert!(s.size() <= 256 << 10, "{} bytes held", s.size());
        assert!(s.objects() < 64);
    }

    #[tokio::test]
    async fn a_late_revalidation_does_not_dress_a_refill_in_old_headers() {
        let s = store();
        let key = CacheKey::new("late", "");
        let created = SystemTime::now();
        let v1 = CacheMeta::new(created + Duration::from_secs(60), created, 0, 0, {
            let mut h = ResponseHeader::build(200, None).unwrap();
            h.insert_header("ETag", "\"v1\"").unwrap();
            h
        });
        let mut miss = s.get_miss_handler(&key, &v1, &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"one"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        // A second writer refills it with version 2...
        let later = created + Duration::from_millis(5);
        let v2 = CacheMeta::new(later + Duration::from_secs(60), later, 0, 0, {
            let mut h = ResponseHeader::build(200, None).unwrap();
            h.insert_header("ETag", "\"v2\"").unwrap();
            h
        });
        let mut miss = s.get_miss_handler(&key, &v2, &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"two!"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        // ...then version 1's revalidation answers late (Pingora keeps v1's `created`).
        assert!(!s.update_meta(&key, &v1, &span()).await.unwrap());
        let (m, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(m.headers().get("etag").unwrap(), "\"v2\"");
        assert_eq!(read_all(&mut hit).await, b"two!");
    }

    #[tokio::test]
    async fn a_soft_purge_marks_in_place_and_never_resurrects() {
        let fence = Arc::new(PurgeFence::default());
        let s: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
            1 << 20,
            64 << 10,
            fence.clone(),
        )));
        let key = crate::cache::key::cache_key("http", "a.vn", None, "/soft");
        let mut miss = s.get_miss_handler(&key, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let selector = Selector::Urls(["a.vn/soft".to_owned()].into());
        assert_eq!(s.purge_matching(&selector, true).len(), 1);
        let (m, _) = s.lookup(&key, &span()).await.unwrap().unwrap();
        assert!(!m.is_fresh(SystemTime::now()), "soft purge left it fresh");
        assert!(s
            .fresh_hit(&key.combined_bin(), SystemTime::now())
            .is_none());
        // A hard purge, then the (idempotent) soft one again: nothing comes back.
        s.purge_matching(&selector, false);
        s.purge_matching(&selector, true);
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    }
}
