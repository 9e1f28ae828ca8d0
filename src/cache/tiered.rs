//! The tiered store Pingora's cache uses: memory (L1) in front of disk (L2).
//!
//! Lookups try memory, then disk; a disk hit small enough for memory is promoted into it. Fills
//! go to both tiers as they stream; if one tier gives up (too large, disk full) the other still
//! finishes. Purges and metadata updates reach both, and go through the shared
//! [`PurgeFence`] so that a purge also wins against fills and promotions already in flight.

use std::any::Any;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

use super::disk::{self, DiskStore, DiskWrite, Head};
use super::fence::{EarlyTicket, PurgeFence, Purged};
use super::journal::Entry;
use super::key::target_of_key;
use super::memory::{MemoryFill, MemoryHit, MemoryStore};
use super::purge::{tags_of, Report, Selector};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Memory in front of an optional disk.
pub struct TieredStore {
    pub memory: &'static MemoryStore,
    pub disk: Option<Arc<DiskStore>>,
    max_object: u64,
    /// The fence both tiers were built with.
    pub fence: Arc<PurgeFence>,
}

impl TieredStore {
    pub fn new(
        memory: &'static MemoryStore,
        disk: Option<Arc<DiskStore>>,
        max_object: u64,
        fence: Arc<PurgeFence>,
    ) -> Self {
        TieredStore {
            memory,
            disk,
            max_object,
            fence,
        }
    }
}

impl TieredStore {
    /// Whether every stored object is indexed (no disk tier, or its start-up scan is done):
    /// until then a purge reaches the files not yet indexed only through the scan.
    pub fn index_ready(&self) -> bool {
        self.disk.as_ref().is_none_or(|d| d.index_ready())
    }

    /// Removes (or, `soft`, marks stale) every object the selector matches, in every tier.
    /// Blocking: walks both tiers.
    pub fn purge_selector(&self, selector: &Selector, soft: bool) -> Report {
        // Read before the walk: a scan finishing during it may have applied the purge to files
        // this count does not include.
        let index_ready = self.index_ready();
        // First, so that fills, promotions and rewrites in flight (here, or in another process
        // over the disk during an upgrade) cannot put back what this removes.
        let id = rand::random();
        if let Some(disk) = &self.disk {
            disk.announce(Entry::Purge {
                selector: selector.clone(),
                soft,
                id,
            });
        }
        let running = self.fence.record(Purged::Matching(selector.clone()));
        let mut keys: HashSet<HashBinary> = self
            .memory
            .purge_matching(selector, soft)
            .into_iter()
            .collect();
        if let Some(disk) = &self.disk {
            keys.extend(disk.purge_matching(selector, soft, &running));
            // Publishes that were renaming when the purge started: in place only now.
            for key in running.overtaken() {
                if soft {
                    disk.mark_stale(&key, &running);
                } else {
                    disk.remove(&key);
                }
                keys.insert(key);
            }
            disk.announce_done(id);
        }
        Report {
            purged: keys.len(),
            index_ready,
        }
    }

    /// Marks one object stale in every tier (see `EdgeCache::invalidate`). Blocking.
    pub fn mark_stale(&self, hash: HashBinary) {
        if let Some(disk) = &self.disk {
            disk.announce(Entry::Stale {
                key: super::journal::key_text(&hash),
            });
        }
        let running = self.fence.record(Purged::Key(hash));
        let stale_at = SystemTime::now() - Duration::from_secs(1);
        self.memory.mark_stale(&hash, stale_at);
        if let Some(disk) = &self.disk {
            let mut keys = vec![hash];
            keys.extend(running.overtaken());
            for key in keys {
                match disk.freshness(&key, stale_at) {
                    disk::Freshness::Stale => {}
                    disk::Freshness::Fresh => disk.mark_stale(&key, &running),
                    disk::Freshness::Unknown => {
                        disk.remove(&key);
                    }
                }
            }
        }
    }
}

/// How one tier's part of a fill ended.
enum Filled {
    Stored(usize),
    /// A purge since the fill started refused it: the tier keeps what the purge left.
    Refused,
    /// Abandoned (too large, write error) or never started.
    Failed,
}

fn blocking_failed(e: tokio::task::JoinError) -> Box<Error> {
    Error::because(ErrorType::InternalError, "cache disk task failed", e)
}

enum Loaded {
    Whole(Head, Bytes),
    Stream(Head, File),
}

#[async_trait]
impl Storage for TieredStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(hit) = self.memory.lookup(key, trace).await? {
            return Ok(Some(hit));
        }
        let Some(disk) = self.disk.clone() else {
            return Ok(None);
        };
        let hash = key.combined_bin();
        // Taken before the disk read: a purge landing meanwhile keeps the copy out of memory.
        let ticket = self.memory.ticket();
        let loaded = tokio::task::spawn_blocking(move || {
            let (head, mut file) = disk.load(&hash)?;
            if head.body_len <= disk::VERIFY_WHOLE {
                match disk::read_body(&mut file, &head) {
                    Some(body) => Some(Loaded::Whole(head, body)),
                    None => {
                        tracing::warn!("cache file body checksum mismatch; removed");
                        disk.remove(&hash);
                        None
                    }
                }
            } else {
                Some(Loaded::Stream(head, file))
            }
        })
        .await
        .map_err(blocking_failed)?;
        match loaded {
            None => Ok(None),
            Some(Loaded::Whole(head, body)) => {
                let meta = CacheMeta::deserialize(&head.internal, &head.header)?;
                self.memory
                    .insert(ticket, hash, &meta, body.clone(), head.target, head.tags);
                Ok(Some((meta, Box::new(MemoryHit::new(body)))))
            }
            Some(Loaded::Stream(head, file)) => {
                let meta = CacheMeta::deserialize(&head.internal, &head.header)?;
                let hit = DiskHit {
                    store: self.disk.clone(),
                    key: hash,
                    file: Some(file),
                    start: head.body_offset,
                    pos: 0,
                    end: head.body_len,
                    body_len: head.body_len,
                    chunk_crcs: head.chunk_crcs,
                    crc: Some(crc32fast::Hasher::new()),
                    expected_crc: head.body_crc,
                    check_whole_first: false,
                };
                Ok(Some((meta, Box::new(hit))))
            }
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let _ = trace;
        // One age for both tiers' parts of this fill, the age of the request that fetched it:
        // a purge refuses both or neither.
        let ticket = EarlyTicket::for_meta(&self.fence, meta);
        let memory = Some(self.memory.fill_with(key, meta, ticket.also()));
        let disk = match &self.disk {
            None => None,
            Some(store) => {
                let store = store.clone();
                let hash = key.combined_bin();
                let target = target_of_key(key.primary_key()).unwrap_or_default();
                let tags = tags_of(meta.response_header());
                let (internal, header) = meta.serialize()?;
                let begun = tokio::task::spawn_blocking(move || {
                    store.begin_serialized(hash, &internal, &header, target, tags, Some(ticket))
                })
                .await
                .map_err(blocking_failed)?;
                match begun {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!("disk cache fill not started: {e}");
                        None
                    }
                }
            }
        };
        Ok(Box::new(TieredMiss {
            key: key.combined_bin(),
            memory,
            memory_store: self.memory,
            disk,
            store: self.disk.clone(),
            max_object: self.max_object,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let hash = target.key().combined_bin();
        let running = match purge_type {
            PurgeType::Invalidation => {
                if let Some(disk) = self.disk.clone() {
                    tokio::task::spawn_blocking(move || {
                        disk.announce(super::journal::Entry::Remove {
                            key: super::journal::key_text(&hash),
                        })
                    })
                    .await
                    .map_err(blocking_failed)?;
                }
                Some(self.fence.record(Purged::Key(hash)))
            }
            _ => None,
        };
        let memory = self.memory.purge(target, purge_type, trace).await?;
        // Evictions from memory only demote: the disk copy stays.
        let on_disk = match (&self.disk, running) {
            (Some(disk), Some(running)) => {
                let disk = disk.clone();
                tokio::task::spawn_blocking(move || {
                    let removed = disk.remove(&hash);
                    // A publish of it that was renaming when the purge started.
                    for key in running.overtaken() {
                        disk.remove(&key);
                    }
                    removed
                })
                .await
                .map_err(blocking_failed)?
            }
            _ => false,
        };
        Ok(if on_disk || memory != PurgeOutcome::NotFound {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let _ = trace;
        let hash = key.combined_bin();
        // As old as the revalidation request: a purge since then wins over its 304.
        let ticket = EarlyTicket::for_meta(&self.fence, meta);
        let in_memory = self.memory.replace_meta(&ticket, hash, meta);
        let Some(disk) = self.disk.clone() else {
            return Ok(in_memory);
        };
        let (internal, header) = meta.serialize()?;
        // Only onto the object that was revalidated (Pingora carries its `created` over).
        let revalidated = meta.created();
        let on_disk = tokio::task::spawn_blocking(move || {
            disk.rewrite_meta(
                &hash,
                Some(revalidated),
                |m| {
                    if let Ok(new) = CacheMeta::deserialize(&internal, &header) {
                        *m = new;
                    }
                },
                ticket,
            )
        })
        .await
        .map_err(blocking_failed)??;
        Ok(in_memory || on_disk)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A fill going to both tiers.
struct TieredMiss {
    key: HashBinary,
    memory: Option<MemoryFill>,
    memory_store: &'static MemoryStore,
    disk: Option<DiskWrite>,
    store: Option<Arc<DiskStore>>,
    max_object: u64,
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let _ = eof;
        if let Some(m) = self.memory.as_mut() {
            if m.append(&data).is_err() {
                // Too large for memory: the disk copy may still finish.
                self.memory = None;
            }
        }
        if let (Some(mut w), Some(store)) = (self.disk.take(), self.store.clone()) {
            let more = data.len() as u64;
            if w.body_len() + more > self.max_object || !store.has_room(more) {
                drop(w);
            } else {
                let (w, result) = tokio::task::spawn_blocking(move || {
                    let r = store.append(&mut w, &data);
                    (w, r)
                })
                .await
                .map_err(blocking_failed)?;
                match result {
                    Ok(()) => self.disk = Some(w),
                    Err(e) => tracing::warn!("disk cache fill abandoned: {e}"),
                }
            }
        }
        if self.memory.is_none() && self.disk.is_none() {
            return Error::e_explain(
                ErrorType::InternalError,
                "no cache tier accepted the object",
            );
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let TieredMiss {
            key,
            memory,
            memory_store,
            disk,
            store,
            ..
        } = *self;
        let in_memory = match memory.map(MemoryFill::publish) {
            Some(Some(n)) => Filled::Stored(n),
            Some(None) => Filled::Refused,
            None => Filled::Failed,
        };
        let on_disk = match (&store, disk) {
            (Some(store), Some(w)) => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.commit(w))
                    .await
                    .map_err(blocking_failed)?
                {
                    Ok(Some(n)) => Filled::Stored(n as usize),
                    Ok(None) => Filled::Refused,
                    Err(e) => {
                        tracing::warn!("disk cache fill not published: {e}");
                        Filled::Failed
                    }
                }
            }
            _ => Filled::Failed,
        };
        let size = match (&in_memory, &on_disk) {
            (Filled::Stored(n), _) | (_, Filled::Stored(n)) => *n,
            (Filled::Refused, _) | (_, Filled::Refused) => {
                return Error::e_explain(ErrorType::InternalError, "purged while it was filled")
            }
            _ => {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "no cache tier stored the object",
                )
            }
        };
        // A tier that failed to take the new version must not keep serving the old one: it
        // would hide the new copy, or lend its body to the new headers on a later revalidation.
        // (A tier a purge refused keeps what the purge left: nothing, or a copy marked stale.)
        if let Filled::Failed = in_memory {
            memory_store.remove(&key);
        }
        if let (Filled::Failed, Some(store)) = (on_disk, store) {
            tokio::task::spawn_blocking(move || store.remove(&key))
                .await
                .map_err(blocking_failed)?;
        }
        Ok(MissFinishType::Created(size))
    }
}

/// Streams a large body from disk. A v2 file is read by checksummed chunk, and no byte of a
/// chunk is served before the chunk is checked, whole body or range alike. A v1 file (no
/// table) is checked as it streams whole, and checked whole before any range of it is served.
struct DiskHit {
    store: Option<Arc<DiskStore>>,
    key: HashBinary,
    file: Option<File>,
    /// File offset of the body.
    start: u64,
    /// Next body offset to read, and the end (exclusive).
    pos: u64,
    end: u64,
    body_len: u64,
    /// v2: one checksum per `disk::CRC_CHUNK` of body.
    chunk_crcs: Option<Vec<u32>>,
    /// v1: the running checksum of a read from the start; None once a range is asked.
    crc: Option<crc32fast::Hasher>,
    expected_crc: u32,
    /// v1: a range was asked and the whole body has not been checked yet.
    check_whole_first: bool,
}

impl DiskHit {
    /// A damaged file: removed (off this thread), and the response cut.
    fn damaged(&self) -> Result<Option<Bytes>> {
        if let Some(store) = self.store.clone() {
            let key = self.key;
            tokio::task::spawn_blocking(move || store.remove(&key));
        }
        Error::e_explain(
            ErrorType::InternalError,
            "cache file body checksum mismatch",
        )
    }

    /// Reads `len` body bytes from `from` on a blocking thread.
    async fn read_at(&mut self, from: u64, len: usize) -> Result<Vec<u8>> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "hit already read"))?;
        let offset = self.start + from;
        let (file, read) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let r = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut buf));
            (file, r.map(|_| buf))
        })
        .await
        .map_err(blocking_failed)?;
        self.file = Some(file);
        read.map_err(|e| Error::because(ErrorType::InternalError, "cache file read failed", e))
    }
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if let Some(crcs) = &self.chunk_crcs {
            let index = self.pos / disk::CRC_CHUNK;
            let expected = crcs.get(index as usize).copied();
            let from = index * disk::CRC_CHUNK;
            let len = (self.body_len - from).min(disk::CRC_CHUNK) as usize;
            let chunk = self.read_at(from, len).await?;
            if Some(crc32fast::hash(&chunk)) != expected {
                return self.damaged();
            }
            let until = self.end.min(from + len as u64);
            let part =
                Bytes::from(chunk).slice((self.pos - from) as usize..(until - from) as usize);
            self.pos = until;
            return Ok(Some(part));
        }
        if self.check_whole_first {
            let mut crc = crc32fast::Hasher::new();
            let mut at = 0;
            while at < self.body_len {
                let len = (self.body_len - at).min(disk::CRC_CHUNK) as usize;
                crc.update(&self.read_at(at, len).await?);
                at += len as u64;
            }
            if crc.finalize() != self.expected_crc {
                return self.damaged();
            }
            self.check_whole_first = false;
        }
        let n = (self.end - self.pos).min(256 << 10) as usize;
        let chunk = self.read_at(self.pos, n).await?;
        self.pos += n as u64;
        if let Some(crc) = self.crc.as_mut() {
            crc.update(&chunk);
            if self.pos == self.body_len {
                let ok = self
                    .crc
                    .take()
                    .is_some_and(|c| c.finalize() == self.expected_crc);
                if !ok {
                    return self.damaged();
                }
            }
        }
        Ok(Some(Bytes::from(chunk)))
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
        (self.pos, self.end) = super::seek_range(self.body_len, start, end)?;
        if self.chunk_crcs.is_none() && self.crc.is_some() {
            // v1: a range is not the whole body, so the running checksum cannot work.
            self.crc = None;
            self.check_whole_first = true;
        }
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    use crate::cache::key::cache_key;

    const SIZE: usize = 6 << 20;

    fn body() -> Vec<u8> {
        (0..SIZE as u32).map(|i| (i % 251) as u8).collect()
    }

    async fn store_with_large(dir: &std::path::Path) -> (&'static TieredStore, CacheKey) {
        let fence = Arc::new(PurgeFence::default());
        let memory: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
            1 << 20,
            64 << 10,
            fence.clone(),
        )));
        let disk = DiskStore::open_with(dir, 1 << 30, fence.clone(), false).unwrap();
        let store: &'static TieredStore = Box::leak(Box::new(TieredStore::new(
            memory,
            Some(disk),
            1 << 30,
            fence,
        )));
        let key = cache_key("http", "a.vn", None, "/video");
        let now = SystemTime::now();
        let meta = CacheMeta::new(
            now + Duration::from_secs(60),
            now,
            0,
            0,
            pingora::http::ResponseHeader::build(200, None).unwrap(),
        );
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut miss = store.get_miss_handler(&key, &meta, &span).await.unwrap();
        for part in body().chunks(300_000) {
            miss.write_body(Bytes::copy_from_slice(part), false)
                .await
                .unwrap();
        }
        miss.finish().await.unwrap();
        (store, key)
    }

    async fn range(
        store: &'static TieredStore,
        key: &CacheKey,
        from: usize,
        to: usize,
    ) -> Result<Vec<u8>> {
        let span = pingora::cache::trace::Span::inactive().handle();
        let (_, mut hit) = store.lookup(key, &span).await?.expect("stored");
        hit.seek(from, Some(to))?;
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn flip(path: &std::path::Path, body_offset_from_end: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() - body_offset_from_end;
        bytes[at] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_of_large_objects_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = store_with_large(dir.path()).await;
        let whole = body();
        assert_eq!(
            range(store, &key, 100, 200).await.unwrap(),
            &whole[100..200]
        );
        assert_eq!(
            range(store, &key, (1 << 20) - 10, (1 << 20) + 10)
                .await
                .unwrap(),
            &whole[(1 << 20) - 10..(1 << 20) + 10]
        );
        // Damage a byte in the fourth MiB (the table of six checksums and its own follow the
        // body: 7 × 4 bytes).
        let path = store.disk.as_ref().unwrap().path_of(&key.combined_bin());
        flip(&path, 28 + SIZE - (3 << 20) - 5);
        // A range in another chunk is still served; one in the damaged chunk is cut, and the
        // file goes.
        assert_eq!(range(store, &key, 10, 20).await.unwrap(), &whole[10..20]);
        assert!(range(store, &key, (3 << 20) + 1, (3 << 20) + 9)
            .await
            .is_err());
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!path.exists(), "the damaged file stays");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_of_large_v1_files_are_checked_whole_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = store_with_large(dir.path()).await;
        let path = store.disk.as_ref().unwrap().path_of(&key.combined_bin());
        // The same object as format v1 wrote it: no checksum table.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 28);
        bytes[..8].copy_from_slice(b"ONAIRC01");
        std::fs::write(&path, &bytes).unwrap();
        let whole = body();
        assert_eq!(
            range(store, &key, 100, 200).await.unwrap(),
            &whole[100..200]
        );
        // Damage far from the range asked: still refused.
        let at = bytes.len() - 5;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(range(store, &key, 100, 200).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_purge_keeps_refusing_promotions_until_it_has_walked() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(PurgeFence::default());
        let memory: &'static MemoryStore = Box::leak(Box::new(MemoryStore::with_fence(
            1 << 20,
            64 << 10,
            fence.clone(),
        )));
        let disk = DiskStore::open_with(dir.path(), 1 << 30, fence.clone(), true).unwrap();
        let store: &'static TieredStore = Box::leak(Box::new(TieredStore::new(
            memory,
            Some(disk.clone()),
            1 << 30,
            fence,
        )));
        let key = cache_key("http", "a.vn", None, "/story");
        let span = pingora::cache::trace::Span::inactive().handle();
        let now = SystemTime::now();
        let mut header = pingora::http::ResponseHeader::build(200, None).unwrap();
        header.insert_header("Cache-Tag", "news").unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let mut miss = store.get_miss_handler(&key, &meta, &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"old"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        memory.remove(&key.combined_bin());
        // Another process over the directory begins a purge of the tag (its journal line).
        let line = serde_json::json!({"pid": u32::MAX, "op": "purge", "id": 5,
            "selector": {"tags": ["news"]}, "soft": false});
        let log = dir.path().join("journal.log");
        std::fs::write(&log, format!("{line}\n")).unwrap();
        disk.catch_up();
        // Its walk has not reached the file yet: a lookup here may read it, but not keep it.
        assert!(store.lookup(&key, &span).await.unwrap().is_some());
        // The walk removes it, and the purge ends.
        std::fs::remove_file(disk.path_of(&key.combined_bin())).unwrap();
        let done = serde_json::json!({"pid": u32::MAX, "op": "purge_done", "id": 5});
        std::fs::write(&log, format!("{line}\n{done}\n")).unwrap();
        disk.catch_up();
        assert!(
            store.lookup(&key, &span).await.unwrap().is_none(),
            "the purged copy lives on in memory"
        );
    }
}
