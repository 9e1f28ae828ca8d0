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
    /// Removes (or, `soft`, marks stale) every object the selector matches, in every tier.
    /// Blocking: walks both tiers.
    pub fn purge_selector(&self, selector: &Selector, soft: bool) -> Report {
        // Read before the walk: a scan finishing during it may have applied the purge to files
        // this count does not include.
        let index_ready = self.disk.as_ref().is_none_or(|d| d.index_ready());
        // First, so that fills, promotions and rewrites in flight (here, or in another process
        // over the disk during an upgrade) cannot put back what this removes.
        if let Some(disk) = &self.disk {
            disk.announce(Entry::Purge {
                selector: selector.clone(),
                soft,
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
                if disk.is_fresh(&key, stale_at) {
                    disk.mark_stale(&key, &running);
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
                    crc: Some(crc32fast::Hasher::new()),
                    expected_crc: head.body_crc,
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

/// Streams a large body from disk, checking its checksum when read whole.
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
    /// Running checksum; None once a range read makes it meaningless.
    crc: Option<crc32fast::Hasher>,
    expected_crc: u32,
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "hit already read"))?;
        let offset = self.start + self.pos;
        let n = (self.end - self.pos).min(256 << 10) as usize;
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            let r = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut buf));
            (file, r.map(|_| buf))
        })
        .await
        .map_err(blocking_failed)?;
        self.file = Some(file);
        let chunk = chunk
            .map_err(|e| Error::because(ErrorType::InternalError, "cache file read failed", e))?;
        self.pos += n as u64;
        if let Some(crc) = self.crc.as_mut() {
            crc.update(&chunk);
            if self.pos == self.body_len {
                let ok = self
                    .crc
                    .take()
                    .is_some_and(|c| c.finalize() == self.expected_crc);
                if !ok {
                    if let Some(store) = self.store.clone() {
                        let key = self.key;
                        tokio::task::spawn_blocking(move || store.remove(&key));
                    }
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "cache file body checksum mismatch",
                    );
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
        // A range is not the whole body: its checksum cannot be checked.
        self.crc = None;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
