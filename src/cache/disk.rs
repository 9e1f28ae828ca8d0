//! L2: the disk tier, one file per object under `cache.disk_path`, surviving restarts.
//!
//! File (format v2): a 40-byte head, a metadata section, the body, then a checksum per MiB of
//! body (so that a range of a large object is checked like a whole small one).
//! ```text
//! "ONAIRC02" | internal_len u32 | header_len u32 | target_len u32 | tags_len u32 | body_len u64
//!            | meta_crc u32 | body_crc u32            (all big-endian)
//! internal (Pingora's CacheMeta internal part) | header (its serialized response header)
//! | target (host[:port]/path?query) | tags ('\n'-separated) | body
//! | crc u32 of each CRC_CHUNK of the body | crc u32 of that table
//! ```
//! Bodies up to [`VERIFY_WHOLE`] (checked whole anyway) are written in format v1 ("ONAIRC01",
//! no table), which older versions read too: a rollback keeps them. A large v1 file (written
//! by an older version) is checked whole before a range of it is served.
//! - Writes stream to `tmp/<key>.<pid>.<seq>` (the pid keeps two processes apart during a
//!   graceful upgrade), then fsync and rename into `ab/cd/<key>`: a reader sees a whole file or
//!   none. A fill that does not finish leaves nothing.
//! - Reads check the magic, the lengths against the file size (truncation) and the metadata
//!   checksum; bodies up to [`VERIFY_WHOLE`] are read and checked whole before anything is
//!   served, larger ones are checked as they stream and the response is cut if they fail. A
//!   file that fails any check is removed and counts as a miss.
//! - The index (sizes, LRU order, targets and tags for purges) is rebuilt by a background scan
//!   at start; lookups go straight to the file named by the key, so they work before the scan
//!   ends and across processes sharing the directory.
//! - Capacity: least recently used objects are removed past `cache.disk`. A write error abandons
//!   that fill; a full filesystem (ENOSPC, EDQUOT) also pauses admissions for
//!   [`FULL_PAUSE`], so that a full disk costs no temp-file churn per request. Serving goes on.
//! - Publishing (rename + index) is let through by the cache's [`PurgeFence`]: a purge that had
//!   not ended when a fill or rewrite started refuses its publish, and a purge that starts while
//!   a publish is renaming waits for it and removes it again.
//! - A file that cannot be opened for another reason than its absence (EMFILE, EACCES, EIO)
//!   keeps its index entry: it is a miss now, but it stays visible to purges and the budget.
//! - Purges before the start-up scan has finished do not wait for it: the scan, and lookups of
//!   files it has not reached, apply them as they meet each file.
//! - Long passes (purge, scan, eviction) take the index lock in short batches, and lookups only
//!   try it to record use: no request waits for a purge.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::{Error, ErrorType, Result};

use super::fence::{PurgeFence, Purged, Running, Ticket};
use super::journal::{self, Entry, Journal};
use super::purge::{tags_of, Selector};

const MAGIC: &[u8; 8] = b"ONAIRC02";
const MAGIC_V1: &[u8; 8] = b"ONAIRC01";
/// Body bytes per checksum in the table of a v2 file.
pub const CRC_CHUNK: u64 = 1 << 20;
const HEAD_LEN: usize = 40;
/// Bodies up to this size are checked whole before they are served.
pub const VERIFY_WHOLE: u64 = 4 << 20;
/// Metadata sections larger than this are corrupt, not real.
const MAX_META: u32 = 4 << 20;
/// Body read size when streaming a large object.
const CHUNK: usize = 256 << 10;
/// Temp files older than this belong to no live fill (a crashed process's).
const STALE_TMP: Duration = Duration::from_secs(3600);
/// How long admissions stop after the filesystem reported itself full.
pub const FULL_PAUSE: Duration = Duration::from_secs(30);
/// Entries a long pass handles per hold of the index lock.
const BATCH: usize = 4096;
/// Seconds between passes of a start-up scan that could not read everything.
const RESCAN_EVERY: u64 = 5;
/// How often temp files of dead processes are looked for after the start-up scan.
const JANITOR_EVERY: Duration = Duration::from_secs(60);
/// Bytes of index memory charged per object beyond its target and tags (key, size, tick, the
/// maps' nodes).
const INDEX_ENTRY_OVERHEAD: u64 = 128;

/// What a file's head and metadata say.
pub struct Head {
    pub internal: Vec<u8>,
    pub header: Vec<u8>,
    pub target: String,
    pub tags: Vec<String>,
    pub body_offset: u64,
    pub body_len: u64,
    pub body_crc: u32,
    /// One checksum per [`CRC_CHUNK`] of body (v2 files); None for v1 files.
    pub chunk_crcs: Option<Vec<u32>>,
    /// The whole file's length.
    pub file_len: u64,
}

/// Checksums in the table of a body of `body_len` bytes.
fn chunks_of(body_len: u64) -> u64 {
    body_len.div_ceil(CRC_CHUNK)
}

#[derive(Default)]
struct Index {
    /// Whether the start-up scan has finished; until then the index is partial.
    scanned: bool,
    /// Keys removed while the scan runs, so that the scan does not index them again.
    removed_during_scan: std::collections::HashSet<HashBinary>,
    /// Purges made while the scan runs: the scan (and lookups of files it has not indexed yet)
    /// apply them to each file they meet, so such a purge is complete when it answers.
    scan_purges: Vec<(Selector, bool)>,
    /// Ordered, so that a long pass can resume after releasing the lock.
    objects: BTreeMap<HashBinary, IndexEntry>,
    /// Access order: tick -> key; the first entry is the least recently used.
    lru: BTreeMap<u64, HashBinary>,
    tick: u64,
    /// Bytes of the indexed files.
    total: u64,
    /// Approximate bytes of memory the index holds.
    memory: u64,
}

struct IndexEntry {
    size: u64,
    tick: u64,
    target: String,
    tags: Vec<String>,
}

impl IndexEntry {
    fn memory(&self) -> u64 {
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum();
        (self.target.len() + tags) as u64 + INDEX_ENTRY_OVERHEAD
    }
}

impl Index {
    fn touch(&mut self, key: &HashBinary) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.objects.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
        }
    }

    fn insert(&mut self, key: HashBinary, size: u64, target: String, tags: Vec<String>) {
        self.remove(&key);
        self.tick += 1;
        self.lru.insert(self.tick, key);
        self.total += size;
        let entry = IndexEntry {
            size,
            tick: self.tick,
            target,
            tags,
        };
        self.memory += entry.memory();
        self.objects.insert(key, entry);
    }

    fn remove(&mut self, key: &HashBinary) -> bool {
        if !self.scanned {
            self.removed_during_scan.insert(*key);
        }
        match self.objects.remove(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.total -= e.size;
                self.memory -= e.memory();
                true
            }
            None => false,
        }
    }

    /// What the purges made during the scan do to an object: None, or Some(soft).
    fn scan_purged(&self, target: &str, tags: &[String]) -> Option<bool> {
        let mut verdict = None;
        for (selector, soft) in &self.scan_purges {
            if selector.matches(target, tags) {
                // A hard purge wins over a soft one.
                verdict = Some(verdict.unwrap_or(true) && *soft);
            }
        }
        verdict
    }
}

/// The disk tier.
pub struct DiskStore {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    seq: AtomicU64,
    fence: Arc<PurgeFence>,
    /// Until when admissions are paused because the filesystem is full.
    full_until: Mutex<Option<Instant>>,
    /// Bytes in temp files: this process's fills in progress, plus what the janitor found of
    /// other processes' (a graceful upgrade's old process, a crashed one not yet cleaned).
    tmp_own: Arc<AtomicU64>,
    tmp_foreign: AtomicU64,
    /// Most memory the index may hold; past it the least recently used objects go.
    index_limit: u64,
    /// `Index::scanned`, readable without the lock.
    scan_complete: std::sync::atomic::AtomicBool,
    /// Held from a rewrite's check of the object it replaces to its rename, so that a refill
    /// cannot land in between; publishes only (a rename), never lookups or purges.
    publish_lock: Mutex<()>,
    /// What other processes over this directory do (a graceful upgrade); None in tests.
    journal: Option<Journal>,
    /// Applies another process's purge to the tiers above this one (memory).
    on_foreign_purge: std::sync::OnceLock<ForeignPurge>,
    foreign_purges: Mutex<ForeignPurges>,
    /// Files out of the index that could not be unlinked yet: never served.
    doomed: Mutex<std::collections::HashSet<HashBinary>>,
}

/// Largest body a write through its URL rewrites to mark it stale (see
/// [`DiskStore::freshness`]).
pub const MARK_IN_PLACE: u64 = 1 << 20;

/// See [`DiskStore::freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Stale,
    Fresh,
    /// Fresh but large, or unreadable now.
    Unknown,
}

/// See [`DiskStore::on_foreign_purge`].
pub type ForeignPurge = Box<dyn Fn(&Entry) + Send + Sync>;

/// Other processes' purges still walking their tiers, by id, with when they began here.
type ForeignPurges = std::collections::HashMap<u64, (Running, Instant)>;

/// How long another process's purge may stay running here without its end arriving (it died).
const FOREIGN_PURGE_LIMIT: Duration = Duration::from_secs(600);

fn io_err(context: &'static str) -> impl Fn(std::io::Error) -> Box<Error> {
    move |e| Error::because(ErrorType::InternalError, context, e)
}

impl DiskStore {
    fn new(root: &Path, capacity: u64, fence: Arc<PurgeFence>) -> std::io::Result<DiskStore> {
        fs::create_dir_all(root.join("tmp"))?;
        Ok(DiskStore {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(Index::default()),
            seq: AtomicU64::new(0),
            fence,
            full_until: Mutex::new(None),
            tmp_own: Arc::default(),
            tmp_foreign: AtomicU64::new(0),
            // A 64-byte target and two tags cost about 250 bytes: 2 million objects.
            index_limit: 512 << 20,
            scan_complete: std::sync::atomic::AtomicBool::new(false),
            publish_lock: Mutex::new(()),
            journal: None,
            on_foreign_purge: std::sync::OnceLock::new(),
            foreign_purges: Mutex::default(),
            doomed: Mutex::default(),
        })
    }

    /// Opens (creating) the directory and starts the background index scan.
    pub fn open(
        root: &Path,
        capacity: u64,
        fence: Arc<PurgeFence>,
    ) -> std::io::Result<Arc<DiskStore>> {
        Self::open_with(root, capacity, fence, true)
    }

    /// As [`DiskStore::open`]; without the journal (`journal` false) for tests that reopen a
    /// directory within one process.
    pub fn open_with(
        root: &Path,
        capacity: u64,
        fence: Arc<PurgeFence>,
        journal: bool,
    ) -> std::io::Result<Arc<DiskStore>> {
        let mut store = DiskStore::new(root, capacity, fence)?;
        // Before the scan: what another process publishes from now on is in the journal.
        if journal {
            store.journal = Some(Journal::open(root)?);
        }
        let store = Arc::new(store);
        let scanner = store.clone();
        std::thread::Builder::new()
            .name("onair-disk-scan".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let n = scanner.scan();
                tracing::info!(
                    objects = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "disk cache index rebuilt"
                );
                // Then the janitor: temp files a crashed process left would otherwise count
                // against nothing and linger until the next restart.
                // And, every second, the news of another process over the directory.
                for tick in 1u64.. {
                    std::thread::sleep(Duration::from_secs(1));
                    if Arc::strong_count(&scanner) == 1 {
                        return;
                    }
                    let tidy = tick % JANITOR_EVERY.as_secs() == 0;
                    if let Some(journal) = &scanner.journal {
                        let others = journal.tick(tidy, |news| scanner.apply(news));
                        if !others {
                            // Nobody left to end the purges they began.
                            scanner.end_foreign_purges(None);
                        }
                    }
                    if !scanner.scan_complete.load(Ordering::SeqCst) && tick % RESCAN_EVERY == 0 {
                        scanner.scan();
                    }
                    scanner.retry_doomed();
                    if tidy {
                        scanner.sweep_tmp(SystemTime::now());
                        scanner.evict();
                    }
                }
            })?;
        Ok(store)
    }

    /// Opens the directory and scans it in the calling thread (tests, benchmarks).
    pub fn open_blocking(root: &Path, capacity: u64) -> std::io::Result<DiskStore> {
        let store = DiskStore::new(root, capacity, Arc::default())?;
        store.scan();
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        match self.index.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sets what another process's purges do to the tiers above this one.
    pub fn on_foreign_purge(&self, apply: ForeignPurge) {
        let _ = self.on_foreign_purge.set(apply);
    }

    /// Acts on what other processes journaled: their purges refuse this process's fills in
    /// flight (and reach its memory tier) until they end; their publishes join this index.
    /// Runs under the journal's reading lock (see `Journal::read_news_with`).
    fn apply(&self, news: Vec<Entry>) {
        for entry in news {
            match &entry {
                Entry::Purge { selector, id, .. } => {
                    // Running here until the other process has walked its tiers: a lookup
                    // here must not read back a copy its walk has not removed yet.
                    let running = self.fence.record(Purged::Matching(selector.clone()));
                    let mut foreign = self.foreign_purges();
                    foreign.retain(|_, (_, at)| at.elapsed() < FOREIGN_PURGE_LIMIT);
                    foreign.insert(*id, (running, Instant::now()));
                }
                Entry::PurgeDone { id } => {
                    self.end_foreign_purges(Some(*id));
                    continue;
                }
                Entry::Stale { key } | Entry::Remove { key } => {
                    if let Some(key) = journal::key_of(key) {
                        drop(self.fence.record(Purged::Key(key)));
                    }
                }
                Entry::Published {
                    key,
                    size,
                    target,
                    tags,
                } => {
                    if let Some(key) = journal::key_of(key) {
                        self.lock().insert(key, *size, target.clone(), tags.clone());
                    }
                    continue;
                }
            }
            if let Some(apply) = self.on_foreign_purge.get() {
                apply(&entry);
            }
        }
    }

    fn foreign_purges(&self) -> std::sync::MutexGuard<'_, ForeignPurges> {
        match self.foreign_purges.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Ends another process's purge `id` here (all of them: None).
    fn end_foreign_purges(&self, id: Option<u64>) {
        let ended: Vec<_> = {
            let mut foreign = self.foreign_purges();
            match id {
                Some(id) => foreign.remove(&id).into_iter().collect(),
                None => foreign.drain().map(|(_, v)| v).collect(),
            }
        };
        drop(ended);
    }

    /// Tells other processes over the directory of a purge (and first learns what they
    /// published, so that its walk finds it). Call before the purge records itself in the fence.
    /// Blocking.
    pub fn announce(&self, entry: Entry) {
        let Some(journal) = &self.journal else {
            return;
        };
        match journal.hold(true) {
            Ok(held) => {
                journal.read_news_with(&held, |news| self.apply(news));
                journal.append(&held, entry);
            }
            Err(e) => tracing::warn!("cache journal lock: {e}"),
        }
    }

    /// Reads and applies other processes' news now (tests; the janitor does it every second).
    #[cfg(test)]
    pub fn catch_up(&self) {
        if let Some(journal) = &self.journal {
            if let Ok(held) = journal.hold(false) {
                journal.read_news_with(&held, |news| self.apply(news));
            }
        }
    }

    /// Tells other processes that the purge `id` has walked every tier here.
    pub fn announce_done(&self, id: u64) {
        let Some(journal) = &self.journal else {
            return;
        };
        if let Ok(held) = journal.hold(false) {
            journal.append(&held, Entry::PurgeDone { id });
        }
    }

    /// Whether the start-up scan has indexed every file (until then a purge's count covers
    /// only the indexed ones; the scan applies it to the others).
    pub fn index_ready(&self) -> bool {
        self.lock().scanned
    }

    /// Objects and bytes indexed now.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.lock();
        (index.objects.len() as u64, index.total)
    }

    /// Approximate bytes of memory the index holds, and bytes in temp files (fills in
    /// progress and other processes' leftovers), both counted against their limits.
    pub fn overheads(&self) -> (u64, u64) {
        let memory = self.lock().memory;
        (memory, self.tmp_bytes())
    }

    fn tmp_bytes(&self) -> u64 {
        self.tmp_own.load(Ordering::Relaxed) + self.tmp_foreign.load(Ordering::Relaxed)
    }

    pub fn path_of(&self, key: &HashBinary) -> PathBuf {
        let name = journal::key_text(key);
        self.root.join(&name[0..2]).join(&name[2..4]).join(name)
    }

    /// Removes temp files no live fill owns (their process is gone, or they are older than
    /// [`STALE_TMP`]) and counts the bytes of the others that are not this process's.
    fn sweep_tmp(&self, now: SystemTime) {
        let me = std::process::id();
        let mut foreign = 0;
        for entry in fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('.').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| p == me || Path::new(&format!("/proc/{p}")).exists());
            if !alive || age > STALE_TMP {
                let _ = fs::remove_file(entry.path());
            } else if pid != Some(me) {
                foreign += meta.len();
            }
        }
        self.tmp_foreign.store(foreign, Ordering::Relaxed);
    }

    /// Walks the directory: drops dead temp files, indexes every valid object (oldest
    /// modification first, so LRU order approximates last use), removes corrupt ones, and
    /// applies the purges made while it ran.
    fn scan(&self) -> usize {
        self.sweep_tmp(SystemTime::now());
        let mut found: Vec<(SystemTime, HashBinary, u64, String, Vec<String>)> = Vec::new();
        // A directory or file that cannot be read now (EMFILE, EIO) leaves the scan
        // incomplete: it runs again later, and until then purges keep applying to files it
        // has not indexed (lookups check them), so nothing unindexed escapes a purge.
        let incomplete = std::cell::Cell::new(false);
        let level = |p: &Path| -> Vec<PathBuf> {
            match fs::read_dir(p) {
                Ok(entries) => entries
                    .filter_map(|e| e.map_err(|_| incomplete.set(true)).ok().map(|e| e.path()))
                    .collect(),
                Err(e) => {
                    tracing::warn!(dir = %p.display(), "cache directory unreadable: {e}");
                    incomplete.set(true);
                    Vec::new()
                }
            }
        };
        let is_shard = |p: &PathBuf| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() == 2)
        };
        for a in level(&self.root).into_iter().filter(is_shard) {
            for b in level(&a).into_iter().filter(is_shard) {
                for file in level(&b) {
                    let Some(key) = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(journal::key_of)
                    else {
                        continue;
                    };
                    match read_head(&file) {
                        Ok(head) => {
                            let size = head.file_len;
                            let mtime = fs::metadata(&file)
                                .and_then(|m| m.modified())
                                .unwrap_or(SystemTime::UNIX_EPOCH);
                            found.push((mtime, key, size, head.target, head.tags));
                        }
                        Err(ReadError::Missing) => {}
                        Err(ReadError::Unavailable(e)) => {
                            // Kept (too many open files is no reason to lose the cache); the
                            // next pass indexes it.
                            tracing::warn!(file = %file.display(), "cache file unreadable: {e}");
                            incomplete.set(true);
                        }
                        Err(ReadError::Corrupt(_)) => {
                            let _ = fs::remove_file(&file);
                        }
                    }
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let n = found.len();
        let mut soft = Vec::new();
        let mut found = found.into_iter().peekable();
        while found.peek().is_some() {
            // In batches: lookups and fills take this lock too.
            let mut index = self.lock();
            let mut gone = Vec::new();
            for (_, key, size, target, tags) in found.by_ref().take(BATCH) {
                // A fill that finished while we scanned is already indexed, and newer; an
                // object purged or evicted while we scanned stays gone.
                if index.objects.contains_key(&key) || index.removed_during_scan.contains(&key) {
                    continue;
                }
                match index.scan_purged(&target, &tags) {
                    None => index.insert(key, size, target, tags),
                    Some(false) => gone.push(key),
                    // The ticket is taken now, under the lock that orders purges made while
                    // we scan: one recorded after this refuses the rewrite below.
                    Some(true) => soft.push((key, self.fence.open())),
                }
            }
            drop(index);
            for key in gone {
                self.remove(&key);
            }
        }
        // Soft-purged while we scanned: marked stale (which indexes them) before the scan
        // counts as done, so that lookups keep applying the purge to them until then.
        for (key, ticket) in soft {
            self.expire(&key, ticket);
        }
        if incomplete.get() {
            tracing::warn!("disk cache index incomplete: scanning again shortly");
            return n;
        }
        let mut index = self.lock();
        index.scanned = true;
        index.removed_during_scan = Default::default();
        index.scan_purges = Vec::new();
        self.scan_complete.store(true, Ordering::SeqCst);
        drop(index);
        self.evict();
        n
    }

    /// Reads an object's head; a corrupt or truncated file is removed. Blocking.
    pub fn load(&self, key: &HashBinary) -> Option<(Head, File)> {
        if self
            .doomed
            .lock()
            .is_ok_and(|d| !d.is_empty() && d.contains(key))
        {
            return None;
        }
        let path = self.path_of(key);
        match read_head_and_file(&path) {
            Ok((head, file)) => {
                let (mut index, ticket) = if self.scan_complete.load(Ordering::SeqCst) {
                    // Only to record use, which is worth no wait: a purge pass may hold it.
                    match self.index.try_lock() {
                        Ok(index) => (index, None),
                        Err(std::sync::TryLockError::WouldBlock) => return Some((head, file)),
                        Err(std::sync::TryLockError::Poisoned(p)) => (p.into_inner(), None),
                    }
                } else {
                    // While the scan runs the lock also says which purges apply to this file:
                    // worth the wait. The ticket, for a soft purge's rewrite, predates them.
                    let ticket = self.fence.open();
                    (self.lock(), Some(ticket))
                };
                if index.scanned || index.objects.contains_key(key) {
                    index.touch(key);
                    return Some((head, file));
                }
                // Not reached by the start-up scan yet: purges made since apply here too.
                match index.scan_purged(&head.target, &head.tags) {
                    None => Some((head, file)),
                    Some(false) => {
                        drop(index);
                        self.remove(key);
                        None
                    }
                    Some(true) => {
                        drop(index);
                        let ticket = ticket.unwrap_or_else(|| self.fence.open());
                        if self.expire_loaded(key, head, file, ticket) {
                            read_head_and_file(&path).ok()
                        } else {
                            None
                        }
                    }
                }
            }
            Err(ReadError::Missing) => {
                #[cfg(test)]
                if let Some(hook) = AFTER_MISSING.with(|h| h.borrow_mut().take()) {
                    hook();
                }
                // Forget it only if it is still missing under the lock: a fill renaming it into
                // place meanwhile indexes it after taking this lock, and must stay indexed.
                let mut index = self.lock();
                if !path.exists() {
                    index.remove(key);
                }
                None
            }
            Err(ReadError::Unavailable(e)) => {
                // EMFILE, EACCES, EIO: a miss now, but the file is there, so its index entry
                // stays (purges and the budget must still see it).
                tracing::warn!(file = %path.display(), "cache file unavailable: {e}");
                None
            }
            Err(ReadError::Corrupt(why)) => {
                tracing::warn!(file = %path.display(), why, "corrupt cache file removed");
                self.remove(key);
                None
            }
        }
    }

    /// What a write through an object must do to the stored copy: nothing (absent or stale
    /// already), mark it (a rewrite of up to [`MARK_IN_PLACE`] bytes), or drop it (a larger
    /// one: a flood of writes must not make every one copy a video; also a copy that cannot
    /// be read now, which could not be checked). Blocking.
    pub fn freshness(&self, key: &HashBinary, at: SystemTime) -> Freshness {
        match read_head(&self.path_of(key)) {
            Err(ReadError::Missing) => Freshness::Stale,
            Err(_) => Freshness::Unknown,
            Ok(head) => match CacheMeta::deserialize(&head.internal, &head.header) {
                Ok(m) if m.fresh_until() <= at => Freshness::Stale,
                Ok(_) if head.body_len <= MARK_IN_PLACE => Freshness::Fresh,
                _ => Freshness::Unknown,
            },
        }
    }

    /// Removes an object's file and index entry. Blocking.
    pub fn remove(&self, key: &HashBinary) -> bool {
        let indexed = self.lock().remove(key);
        let path = self.path_of(key);
        let removed = self.unlink(key, &path);
        if removed {
            // A purge must stay done after a power cut, not only after a clean restart.
            sync_dir(&path);
        }
        indexed || removed
    }

    /// Unlinks an object's file; one that cannot be unlinked now (EIO, EROFS) is doomed: never
    /// served (it is out of the index, so purges would not see it), and unlinked again later.
    fn unlink(&self, key: &HashBinary, path: &Path) -> bool {
        match fs::remove_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cache file cannot be removed now: {e}");
                self.doomed().insert(*key);
                false
            }
        }
    }

    fn doomed(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<HashBinary>> {
        match self.doomed.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Tries again to unlink the files that could not be unlinked.
    fn retry_doomed(&self) {
        let keys: Vec<HashBinary> = self.doomed().iter().copied().collect();
        for key in keys {
            let path = self.path_of(&key);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
                _ => {
                    sync_dir(&path);
                    self.doomed().remove(&key);
                }
            }
        }
    }

    /// Starts a fill. Blocking (creates the temp file).
    pub fn begin(
        &self,
        key: HashBinary,
        meta: &CacheMeta,
        target: String,
        tags: Vec<String>,
    ) -> Result<DiskWrite> {
        let (internal, header) = meta.serialize()?;
        self.begin_serialized(key, &internal, &header, target, tags, None)
    }

    /// Starts a fill from metadata already serialized (`CacheMeta::serialize`), under `ticket`
    /// (taken when the fill started; None: now). Blocking. Refused at once while admissions are
    /// paused (a full filesystem).
    pub fn begin_serialized(
        &self,
        key: HashBinary,
        internal: &[u8],
        header: &[u8],
        target: String,
        tags: Vec<String>,
        ticket: Option<Ticket>,
    ) -> Result<DiskWrite> {
        if self.admissions_paused(Instant::now()) {
            return Error::e_explain(
                ErrorType::InternalError,
                "disk cache full: admissions paused",
            );
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{seq}",
            journal::key_text(&key),
            std::process::id()
        ));
        let file = File::create(&tmp)
            .map_err(|e| self.write_failed(e, "cannot create a cache temp file"))?;
        let tags_joined = tags.join("\n");
        let ticket = ticket.unwrap_or_else(|| self.fence.open());
        let mut section =
            Vec::with_capacity(internal.len() + header.len() + target.len() + tags_joined.len());
        section.extend_from_slice(internal);
        section.extend_from_slice(header);
        section.extend_from_slice(target.as_bytes());
        section.extend_from_slice(tags_joined.as_bytes());
        let lens = [
            internal.len(),
            header.len(),
            target.len(),
            tags_joined.len(),
        ]
        .map(|l| l as u32);
        // From here on the temp file is the DiskWrite's: an error below drops it, and its Drop
        // removes the file.
        let mut w = DiskWrite {
            key,
            tmp,
            file: Some(file),
            lens,
            meta_crc: crc32fast::hash(&section),
            body_crc: crc32fast::Hasher::new(),
            body_len: 0,
            meta_len: section.len() as u64,
            target,
            tags,
            sealed: false,
            done: false,
            ticket: Some(ticket),
            old_tags: Vec::new(),
            replaces: None,
            written: 0,
            chunk_crcs: Vec::new(),
            chunk_crc: crc32fast::Hasher::new(),
            tmp_bytes: self.tmp_own.clone(),
        };
        w.write(&[0u8; HEAD_LEN])
            .and_then(|_| w.write(&section))
            .map_err(|e| self.write_failed(e, "cannot write a cache temp file"))?;
        Ok(w)
    }

    /// Appends body bytes to a fill. Blocking.
    pub fn append(&self, w: &mut DiskWrite, data: &[u8]) -> Result<()> {
        w.write(data)
            .map_err(|e| self.write_failed(e, "cannot write a cache temp file"))?;
        w.body_crc.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let room = (CRC_CHUNK - w.body_len % CRC_CHUNK) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            w.chunk_crc.update(now);
            w.body_len += now.len() as u64;
            if w.body_len.is_multiple_of(CRC_CHUNK) {
                let done = std::mem::replace(&mut w.chunk_crc, crc32fast::Hasher::new());
                w.chunk_crcs.push(done.finalize());
            }
            rest = later;
        }
        Ok(())
    }

    /// Whether a fill may grow by `more` bytes: the disk's budget counts the files in progress
    /// too, and a fill that would not fit even after evicting everything else is abandoned.
    pub fn has_room(&self, more: u64) -> bool {
        self.tmp_bytes() + more <= self.capacity
    }

    /// Whether admissions are paused at `now`; the first check past the pause resumes them.
    pub fn admissions_paused(&self, now: Instant) -> bool {
        let mut full = match self.full_until.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match *full {
            Some(until) if now < until => true,
            Some(_) => {
                *full = None;
                tracing::info!("disk cache admissions resume");
                false
            }
            None => false,
        }
    }

    /// Turns a write error into the fill's error; a full filesystem also pauses admissions.
    fn write_failed(&self, e: std::io::Error, context: &'static str) -> Box<Error> {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        // (EFBIG is about one file, not the filesystem: it abandons that fill only.)
        if matches!(e.kind(), StorageFull | QuotaExceeded) {
            self.pause_admissions(Instant::now());
        }
        Error::because(ErrorType::InternalError, context, e)
    }

    fn pause_admissions(&self, now: Instant) {
        let mut full = match self.full_until.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if full.is_none() {
            tracing::warn!(
                pause_s = FULL_PAUSE.as_secs(),
                dir = %self.root.display(),
                "disk cache filesystem full: new objects are not stored on disk for a while; \
                 stored ones are still served"
            );
        }
        *full = Some(now + FULL_PAUSE);
    }

    /// Finishes a fill's file (head, fsync) so that publishing it is only a rename. Blocking.
    pub fn seal(&self, w: &mut DiskWrite) -> Result<()> {
        if w.chunked() {
            if !w.body_len.is_multiple_of(CRC_CHUNK) {
                let last = std::mem::replace(&mut w.chunk_crc, crc32fast::Hasher::new());
                w.chunk_crcs.push(last.finalize());
            }
            let mut table = Vec::with_capacity(w.chunk_crcs.len() * 4 + 4);
            for crc in &w.chunk_crcs {
                table.extend_from_slice(&crc.to_be_bytes());
            }
            let table_crc = crc32fast::hash(&table);
            table.extend_from_slice(&table_crc.to_be_bytes());
            w.write(&table)
                .map_err(|e| self.write_failed(e, "cannot write a cache temp file"))?;
        }
        let file = w
            .file
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "fill already finished"))?;
        let mut head = Vec::with_capacity(HEAD_LEN);
        head.extend_from_slice(if w.chunked() { MAGIC } else { MAGIC_V1 });
        for l in w.lens {
            head.extend_from_slice(&l.to_be_bytes());
        }
        head.extend_from_slice(&w.body_len.to_be_bytes());
        head.extend_from_slice(&w.meta_crc.to_be_bytes());
        head.extend_from_slice(&w.body_crc.clone().finalize().to_be_bytes());
        let dir = self.path_of(&w.key);
        file.write_all_at(&head, 0)
            .and_then(|_| file.sync_all())
            .and_then(|_| dir.parent().map_or(Ok(()), fs::create_dir_all))
            .map_err(|e| self.write_failed(e, "cannot finish a cache file"))?;
        w.sealed = true;
        Ok(())
    }

    /// Publishes a sealed fill (rename, index) unless a purge that had not ended when it
    /// started matches it; returns the body size, or None when a purge refused it. Call
    /// [`DiskStore::settle`] after. The rename happens outside the fence's lock: a purge starting
    /// meanwhile waits for it and removes the object again (see `fence::Running::overtaken`).
    pub fn publish(&self, mut w: DiskWrite) -> Result<Option<u64>> {
        if !w.sealed {
            return Error::e_explain(ErrorType::InternalError, "fill not sealed");
        }
        let target = std::mem::take(&mut w.target);
        let tags = std::mem::take(&mut w.tags);
        let key = w.key;
        let ticket = match w.ticket.take() {
            Some(ticket) => ticket,
            None => self.fence.open(),
        };
        // Another process's purges since our last look must refuse this publish too.
        let held = match &self.journal {
            Some(journal) => {
                let held = journal
                    .hold(false)
                    .map_err(io_err("cannot lock the cache journal"))?;
                journal.read_news_with(&held, |news| self.apply(news));
                Some((journal, held))
            }
            None => None,
        };
        // A rewrite is refused by purges of the tags it replaces as well as of its own.
        let mut fenced_tags = tags.clone();
        fenced_tags.extend(std::mem::take(&mut w.old_tags));
        let Some(publishing) = self
            .fence
            .begin_publish(&ticket, &key, &target, &fenced_tags)
        else {
            return Ok(None);
        };
        let _serial = match self.publish_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(created) = w.replaces {
            // A revalidation: only onto the very object it revalidated, not a refill of it.
            let current = read_head(&self.path_of(&key))
                .ok()
                .and_then(|h| CacheMeta::deserialize(&h.internal, &h.header).ok())
                .map(|m| m.created());
            if current != Some(created) {
                return Ok(None);
            }
        }
        self.publish_now(&mut w, &target, &tags)?;
        if let Some((journal, held)) = &held {
            journal.append(
                held,
                Entry::Published {
                    key: journal::key_text(&key),
                    size: w.file_len(),
                    target,
                    tags,
                },
            );
        }
        drop(publishing);
        Ok(Some(w.body_len))
    }

    fn publish_now(&self, w: &mut DiskWrite, target: &str, tags: &[String]) -> Result<()> {
        let path = self.path_of(&w.key);
        fs::rename(&w.tmp, &path)
            .map_err(|e| self.write_failed(e, "cannot publish a cache file"))?;
        w.mark_done();
        // The rename replaced a file that could not be unlinked: the new one is good.
        if let Ok(mut doomed) = self.doomed.lock() {
            doomed.remove(&w.key);
        }
        let size = w.file_len();
        self.lock()
            .insert(w.key, size, target.to_owned(), tags.to_vec());
        Ok(())
    }

    /// After a publish: makes the rename durable and evicts past capacity. Blocking.
    pub fn settle(&self, key: &HashBinary) {
        sync_dir(&self.path_of(key));
        self.evict();
    }

    /// Seals, publishes and settles a fill. Blocking.
    pub fn commit(&self, mut w: DiskWrite) -> Result<Option<u64>> {
        let key = w.key;
        self.seal(&mut w)?;
        let published = self.publish(w)?;
        if published.is_some() {
            self.settle(&key);
        }
        Ok(published)
    }

    /// Replaces an object's metadata (revalidation, soft purge), keeping its body; returns
    /// whether the object was there and the new copy was published. `ticket` is taken before
    /// the revalidation or purge began, so that a purge landing meanwhile wins; `replaces`, the
    /// `created` of the object revalidated: a refill stored meanwhile is left alone. The body is
    /// checked as it is copied: a damaged one is removed, never given a fresh checksum.
    /// Blocking.
    pub fn rewrite_meta(
        &self,
        key: &HashBinary,
        replaces: Option<SystemTime>,
        change: impl FnOnce(&mut CacheMeta),
        ticket: Ticket,
    ) -> Result<bool> {
        let Some((head, file)) = self.load(key) else {
            return Ok(false);
        };
        self.rewrite_loaded(key, head, file, replaces, change, ticket)
    }

    fn rewrite_loaded(
        &self,
        key: &HashBinary,
        head: Head,
        mut file: File,
        replaces: Option<SystemTime>,
        change: impl FnOnce(&mut CacheMeta),
        ticket: Ticket,
    ) -> Result<bool> {
        let mut meta = CacheMeta::deserialize(&head.internal, &head.header)?;
        if replaces.is_some_and(|created| created != meta.created()) {
            return Ok(false);
        }
        change(&mut meta);
        // The tags the new headers carry (a 304 may change them), not the old ones.
        let tags = tags_of(meta.response_header());
        let (internal, header) = meta.serialize()?;
        let mut w =
            self.begin_serialized(*key, &internal, &header, head.target, tags, Some(ticket))?;
        w.old_tags = head.tags;
        w.replaces = Some(meta.created());
        file.seek(SeekFrom::Start(head.body_offset))
            .map_err(io_err("cannot read a cache file"))?;
        let mut left = head.body_len;
        let mut buf = vec![0u8; CHUNK];
        let mut crc = crc32fast::Hasher::new();
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            file.read_exact(&mut buf[..n])
                .map_err(io_err("cannot read a cache file"))?;
            crc.update(&buf[..n]);
            self.append(&mut w, &buf[..n])?;
            left -= n as u64;
        }
        if crc.finalize() != head.body_crc {
            tracing::warn!(file = %self.path_of(key).display(), "corrupt cache file removed");
            drop(w);
            self.remove(key);
            return Ok(false);
        }
        Ok(self.commit(w)?.is_some())
    }

    /// Removes (or marks stale) every object the selector matches; returns their keys.
    /// Blocking. The caller records the purge in the fence first (`running`) and, after, removes
    /// the publishes it overtook. Before the start-up scan has finished, the purge is also handed
    /// to the scan, which applies it to every file it has not indexed yet: the purge is complete
    /// when this returns, without waiting for the scan.
    pub fn purge_matching(
        &self,
        selector: &Selector,
        soft: bool,
        running: &Running,
    ) -> Vec<HashBinary> {
        {
            let mut index = self.lock();
            if !index.scanned {
                index.scan_purges.push((selector.clone(), soft));
            }
        }
        let keys = self.matching(selector);
        for key in &keys {
            if soft {
                self.mark_stale(key, running);
            } else {
                self.remove(key);
            }
        }
        keys
    }

    /// Marks a copy stale for a purge: rewritten with its freshness ended (`expire_at` keeps
    /// `updated`, so Age still counts from when it was stored). A copy that cannot be marked (a
    /// concurrent purge refused the rewrite, a write error, a damaged body) goes: a purge never
    /// leaves a fresh copy behind. Blocking.
    pub fn mark_stale(&self, key: &HashBinary, running: &Running) {
        self.expire(key, running.ticket());
    }

    /// Marks a copy stale under `ticket`, or removes it when that fails; whether it was
    /// marked. Reads the file itself rather than through [`DiskStore::load`], whose start-up
    /// scan check would mark it a second time. Blocking.
    fn expire(&self, key: &HashBinary, ticket: Ticket) -> bool {
        match read_head_and_file(&self.path_of(key)) {
            Ok((head, file)) => self.expire_loaded(key, head, file, ticket),
            Err(_) => {
                self.remove(key);
                false
            }
        }
    }

    /// As [`DiskStore::expire`], for a file already read.
    fn expire_loaded(&self, key: &HashBinary, head: Head, file: File, ticket: Ticket) -> bool {
        let stale_at = SystemTime::now() - Duration::from_secs(1);
        let marked = self.rewrite_loaded(key, head, file, None, |m| m.expire_at(stale_at), ticket);
        if !matches!(marked, Ok(true)) {
            self.remove(key);
        }
        matches!(marked, Ok(true))
    }

    /// A purge of this tier alone (tests, tools): records it in the fence, walks, and removes
    /// what it overtook. Blocking.
    pub fn purge(&self, selector: &Selector, soft: bool) -> Vec<HashBinary> {
        let id = rand::random();
        self.announce(Entry::Purge {
            selector: selector.clone(),
            soft,
            id,
        });
        let running = self.fence.record(Purged::Matching(selector.clone()));
        let mut keys = self.purge_matching(selector, soft, &running);
        for key in running.overtaken() {
            self.remove(&key);
            keys.push(key);
        }
        self.announce_done(id);
        keys
    }

    /// The indexed keys a selector matches, read in batches so that the lock is never held
    /// for a whole pass. Entries indexed behind the cursor meanwhile were published after the
    /// purge started, which the fence deals with.
    fn matching(&self, selector: &Selector) -> Vec<HashBinary> {
        let mut keys = Vec::new();
        let mut after: Option<HashBinary> = None;
        loop {
            let index = self.lock();
            let from = match after {
                Some(k) => std::ops::Bound::Excluded(k),
                None => std::ops::Bound::Unbounded,
            };
            let range = index
                .objects
                .range::<HashBinary, _>((from, std::ops::Bound::Unbounded));
            let mut seen = 0;
            for (key, e) in range.take(BATCH) {
                seen += 1;
                after = Some(*key);
                if selector.matches(&e.target, &e.tags) {
                    keys.push(*key);
                }
            }
            if seen < BATCH {
                return keys;
            }
        }
    }

    /// Removes least recently used objects while the files (and fills in progress) exceed the
    /// capacity or the index its memory limit. Blocking.
    fn evict(&self) {
        let mut evicted = 0;
        let mut dirs = std::collections::BTreeSet::new();
        loop {
            let victims: Vec<HashBinary> = {
                let mut index = self.lock();
                let mut victims = Vec::new();
                while victims.len() < BATCH
                    && (index.total + self.tmp_bytes() > self.capacity
                        || index.memory > self.index_limit)
                {
                    let Some((_, key)) = index.lru.pop_first() else {
                        break;
                    };
                    if let Some(e) = index.objects.remove(&key) {
                        index.total -= e.size;
                        index.memory -= e.memory();
                    }
                    victims.push(key);
                }
                victims
            };
            if victims.is_empty() {
                break;
            }
            for victim in victims {
                let path = self.path_of(&victim);
                if self.unlink(&victim, &path) {
                    evicted += 1;
                    if let Some(dir) = path.parent() {
                        dirs.insert(dir.to_path_buf());
                    }
                }
            }
        }
        // Like a purge, an eviction must not be undone by a power cut: a file evicted from
        // the index but back on disk would be served yet invisible to purges.
        for dir in dirs {
            sync_dir(&dir.join("x"));
        }
        if evicted > 0 {
            crate::metrics::METRICS.cache_evicted("disk", evicted);
        }
    }
}

/// A fill in progress.
pub struct DiskWrite {
    key: HashBinary,
    tmp: PathBuf,
    file: Option<File>,
    lens: [u32; 4],
    meta_crc: u32,
    body_crc: crc32fast::Hasher,
    body_len: u64,
    meta_len: u64,
    target: String,
    tags: Vec<String>,
    /// Head written and fsynced: ready to publish.
    sealed: bool,
    /// Published (renamed into place): the temp file is gone.
    done: bool,
    /// Taken when the fill (or rewrite) started; a purge recorded since refuses the publish.
    ticket: Option<Ticket>,
    /// A rewrite: the tags of the copy it replaces (a purge of those refuses it too), and the
    /// `created` of that copy (it publishes only onto that very object).
    old_tags: Vec<String>,
    replaces: Option<SystemTime>,
    /// Bytes written to the temp file, counted in the store's temp bytes until it is gone.
    written: u64,
    /// Checksums of the body's finished chunks, and of the chunk being written.
    chunk_crcs: Vec<u32>,
    chunk_crc: crc32fast::Hasher,
    tmp_bytes: Arc<AtomicU64>,
}

impl DiskWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(data)?,
            None => return Err(std::io::Error::other("fill already sealed")),
        }
        self.written += data.len() as u64;
        self.tmp_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The temp file became the object: it no longer counts as a temp file.
    fn mark_done(&mut self) {
        self.done = true;
        self.tmp_bytes.fetch_sub(self.written, Ordering::Relaxed);
        self.written = 0;
    }

    /// Body bytes written so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The published file's length: head, metadata, body and checksum table.
    fn file_len(&self) -> u64 {
        let table = if self.chunked() {
            chunks_of(self.body_len) * 4 + 4
        } else {
            0
        };
        HEAD_LEN as u64 + self.meta_len + self.body_len + table
    }

    /// Whether the file gets a checksum table (format v2): only bodies read by chunk need one.
    /// Smaller ones stay in format v1, which every onair version reads, so that a rollback or
    /// the old process of an upgrade keeps the pages.
    fn chunked(&self) -> bool {
        self.body_len > VERIFY_WHOLE
    }
}

impl Drop for DiskWrite {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.tmp_bytes.fetch_sub(self.written, Ordering::Relaxed);
        let tmp = std::mem::take(&mut self.tmp);
        // An abandoned fill is dropped on the proxy's threads: the unlink goes to a blocking
        // thread so that a slow filesystem never stalls them.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || fs::remove_file(tmp));
            }
            Err(_) => {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

enum ReadError {
    Missing,
    /// There, but it could not be opened or sized now (EMFILE, EACCES, EIO).
    Unavailable(std::io::Error),
    Corrupt(&'static str),
}

fn open_error(e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ReadError::Missing
    } else {
        ReadError::Unavailable(e)
    }
}

fn read_head(path: &Path) -> std::result::Result<Head, ReadError> {
    read_head_and_file(path).map(|(h, _)| h)
}

#[cfg(test)]
thread_local! {
    /// Tests: the OS error the next opens of cache files fail with (EMFILE, EIO, ...).
    static FAIL_OPEN: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
    /// Tests: runs once right after an open found no file, before the index is touched.
    static AFTER_MISSING: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

fn open_file(path: &Path) -> std::io::Result<File> {
    #[cfg(test)]
    if let Some(code) = FAIL_OPEN.with(|f| f.get()) {
        return Err(std::io::Error::from_raw_os_error(code));
    }
    File::open(path)
}

fn read_head_and_file(path: &Path) -> std::result::Result<(Head, File), ReadError> {
    let mut file = open_file(path).map_err(open_error)?;
    let file_len = file.metadata().map_err(open_error)?.len();
    let mut head = [0u8; HEAD_LEN];
    file.read_exact(&mut head)
        .map_err(|_| ReadError::Corrupt("short head"))?;
    let v2 = match &head[0..8] {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err(ReadError::Corrupt("bad magic")),
    };
    let u32_at = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let lens = [u32_at(8), u32_at(12), u32_at(16), u32_at(20)];
    let mut body_len_bytes = [0u8; 8];
    body_len_bytes.copy_from_slice(&head[24..32]);
    let body_len = u64::from_be_bytes(body_len_bytes);
    let (meta_crc, body_crc) = (u32_at(32), u32_at(36));
    let meta_len: u64 = lens.iter().map(|l| u64::from(*l)).sum();
    if lens.iter().any(|l| *l > MAX_META) {
        return Err(ReadError::Corrupt("metadata too large"));
    }
    let table_len = if v2 {
        chunks_of(body_len)
            .checked_mul(4)
            .and_then(|t| t.checked_add(4))
    } else {
        Some(0)
    };
    let expected = (HEAD_LEN as u64 + meta_len)
        .checked_add(body_len)
        .and_then(|l| l.checked_add(table_len?));
    if expected != Some(file_len) {
        return Err(ReadError::Corrupt("truncated or padded"));
    }
    let mut section = vec![0u8; meta_len as usize];
    file.read_exact(&mut section)
        .map_err(|_| ReadError::Corrupt("short metadata"))?;
    if crc32fast::hash(&section) != meta_crc {
        return Err(ReadError::Corrupt("metadata checksum"));
    }
    let mut parts = Vec::with_capacity(4);
    let mut at = 0usize;
    for l in lens {
        parts.push(&section[at..at + l as usize]);
        at += l as usize;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| ReadError::Corrupt("bad text"));
    let tags_text = text(parts[3])?;
    // Only large bodies are read by chunk; smaller ones are checked whole.
    let chunk_crcs = if v2 && body_len > VERIFY_WHOLE {
        // The file length was checked against it, so the table fits in memory we can give it.
        let mut table = vec![0u8; (file_len - HEAD_LEN as u64 - meta_len - body_len) as usize];
        file.seek(SeekFrom::Start(HEAD_LEN as u64 + meta_len + body_len))
            .and_then(|_| file.read_exact(&mut table))
            .map_err(|_| ReadError::Corrupt("short checksum table"))?;
        let (crcs, own) = table.split_at(table.len() - 4);
        if crc32fast::hash(crcs).to_be_bytes() != own {
            return Err(ReadError::Corrupt("checksum table"));
        }
        Some(
            crcs.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    } else {
        None
    };
    let head = Head {
        internal: parts[0].to_vec(),
        header: parts[1].to_vec(),
        target: text(parts[2])?,
        tags: tags_text
            .split('\n')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        body_offset: HEAD_LEN as u64 + meta_len,
        body_len,
        body_crc,
        chunk_crcs,
        file_len,
    };
    Ok((head, file))
}

/// Makes a rename or removal in `path`'s directory durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Reads a whole body and checks it. Blocking.
pub fn read_body(file: &mut File, head: &Head) -> Option<Bytes> {
    let mut body = vec![0u8; head.body_len as usize];
    file.seek(SeekFrom::Start(head.body_offset)).ok()?;
    file.read_exact(&mut body).ok()?;
    (crc32fast::hash(&body) == head.body_crc).then(|| Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fence::Purged;
    use pingora::http::ResponseHeader;

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Surrogate-Key", "news").unwrap();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 600, header)
    }

    fn fill(store: &DiskStore, key: HashBinary, body: &[u8]) {
        let mut w = store
            .begin(
                key,
                &meta(),
                format!("a.vn/{}", key[0]),
                vec!["news".into()],
            )
            .unwrap();
        for chunk in body.chunks(1000) {
            store.append(&mut w, chunk).unwrap();
        }
        store.commit(w).unwrap();
    }

    fn body_of(store: &DiskStore, key: &HashBinary) -> Option<Vec<u8>> {
        let (head, mut file) = store.load(key)?;
        read_body(&mut file, &head).map(|b| b.to_vec())
    }

    #[test]
    fn round_trip_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        fill(&store, [1; 16], &body);
        // Small bodies keep format v1, which older versions (a rollback) read too.
        assert_eq!(
            &fs::read(store.path_of(&[1; 16])).unwrap()[..8],
            b"ONAIRC01"
        );
        assert_eq!(body_of(&store, &[1; 16]).unwrap(), body);
        let (head, _) = store.load(&[1; 16]).unwrap();
        let m = CacheMeta::deserialize(&head.internal, &head.header).unwrap();
        assert_eq!(m.stale_if_error_sec(), 600);
        assert_eq!(head.target, "a.vn/1");
        assert_eq!(head.tags, ["news"]);
        // A new process over the same directory finds it, and indexes it.
        let again = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.usage().0, 1);
        assert_eq!(body_of(&again, &[1; 16]).unwrap(), body);
    }

    #[test]
    fn unfinished_fills_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        let mut w = store
            .begin([2; 16], &meta(), "a.vn/2".into(), vec![])
            .unwrap();
        store.append(&mut w, b"partial").unwrap();
        drop(w);
        assert!(store.load(&[2; 16]).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_and_truncated_files_are_misses_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        for key in [[3; 16], [4; 16], [5; 16], [6; 16]] {
            fill(&store, key, &vec![b'x'; 3000]);
        }
        // A flipped body byte: the head reads, the body check fails.
        let p = store.path_of(&[3; 16]);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        assert!(body_of(&store, &[3; 16]).is_none());
        // Truncated.
        let p = store.path_of(&[4; 16]);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        assert!(store.load(&[4; 16]).is_none());
        assert!(!p.exists(), "a truncated file must be removed");
        // Garbage.
        let p = store.path_of(&[5; 16]);
        fs::write(&p, b"not a cache file at all, just junk bytes......").unwrap();
        assert!(store.load(&[5; 16]).is_none());
        assert!(!p.exists());
        // Metadata damage.
        let p = store.path_of(&[6; 16]);
        let mut bytes = fs::read(&p).unwrap();
        bytes[HEAD_LEN + 2] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        assert!(store.load(&[6; 16]).is_none());
        // A restart's scan drops what is corrupt and keeps nothing of it.
        let again = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        assert!(
            again.load(&[3; 16]).is_some(),
            "body damage is only found by reading the body"
        );
    }

    #[test]
    fn capacity_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 10_000).unwrap();
        fill(&store, [7; 16], &[b'a'; 3000]);
        fill(&store, [8; 16], &[b'b'; 3000]);
        // Use the first so that the second is the least recently used.
        assert!(store.load(&[7; 16]).is_some());
        fill(&store, [9; 16], &[b'c'; 3000]);
        fill(&store, [10; 16], &[b'd'; 3000]);
        let (_, bytes) = store.usage();
        assert!(bytes <= 10_000, "{bytes} bytes on disk");
        assert!(
            store.load(&[8; 16]).is_none(),
            "the least recently used object stays"
        );
        assert!(store.load(&[10; 16]).is_some());
    }

    #[test]
    fn a_purge_before_the_start_up_scan_is_complete_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
        let key_of = |i: u32| {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key
        };
        for i in 0..2000u32 {
            fill(&store, key_of(i), b"x");
        }
        // One soft-purged one must stay, stale.
        let mut w = store
            .begin([99; 16], &meta(), "a.vn/soft".into(), vec!["soft".into()])
            .unwrap();
        store.append(&mut w, b"kept stale").unwrap();
        store.commit(w).unwrap();
        drop(store);
        // A restart whose scan has not started yet: the index is empty.
        let store = DiskStore::new(dir.path(), u64::MAX, Arc::default()).unwrap();
        let purged = store.purge(&Selector::Tags(["news".to_owned()].into()), false);
        assert!(purged.len() < 2000, "nothing was indexed yet");
        store.purge(&Selector::Tags(["soft".to_owned()].into()), true);
        // Lookups before the scan reaches the files already apply the purge...
        for i in (0..2000u32).step_by(97) {
            assert!(
                store.load(&key_of(i)).is_none(),
                "{i} served after its purge"
            );
        }
        let (head, _) = store.load(&[99; 16]).unwrap();
        let m = CacheMeta::deserialize(&head.internal, &head.header).unwrap();
        assert!(!m.is_fresh(SystemTime::now()), "soft purge not applied");
        // ...and so does the scan when it gets there.
        store.scan();
        assert_eq!(store.usage().0, 1);
        let again = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
        assert_eq!(again.usage().0, 1, "purged files came back");
        assert_eq!(body_of(&again, &[99; 16]).unwrap(), b"kept stale");
    }

    #[test]
    fn a_full_filesystem_pauses_admissions_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [20; 16], b"stored before the disk filled up");
        // The next temp file is really /dev/full: its writes fail with ENOSPC.
        let seq = store.seq.load(Ordering::Relaxed);
        let tmp = dir.path().join("tmp");
        let name = format!(
            "{}.{}.{seq}",
            journal::key_text(&[21; 16]),
            std::process::id()
        );
        std::os::unix::fs::symlink("/dev/full", tmp.join(&name)).unwrap();
        let err = store.begin([21; 16], &meta(), "a.vn/21".into(), vec![]);
        assert!(err.is_err());
        // Paused: the next fill is refused without touching the filesystem.
        let err = store
            .begin([22; 16], &meta(), "a.vn/22".into(), vec![])
            .err()
            .unwrap();
        assert!(err.to_string().contains("admissions paused"), "{err}");
        let leftovers: Vec<_> = fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Serving goes on.
        assert_eq!(
            body_of(&store, &[20; 16]).unwrap(),
            b"stored before the disk filled up"
        );
        // After the pause, admissions resume.
        assert!(store.admissions_paused(Instant::now()));
        assert!(!store.admissions_paused(Instant::now() + FULL_PAUSE));
        fill(&store, [22; 16], b"space again");
        assert_eq!(body_of(&store, &[22; 16]).unwrap(), b"space again");
    }

    #[test]
    fn a_purge_wins_against_fills_and_rewrites_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(PurgeFence::default());
        let store = DiskStore::new(dir.path(), 1 << 20, fence.clone()).unwrap();
        store.scan();
        // A fill that started before a purge of its tag.
        let mut w = store
            .begin([30; 16], &meta(), "a.vn/30".into(), vec!["news".into()])
            .unwrap();
        store.append(&mut w, b"fetched before the purge").unwrap();
        drop(fence.record(Purged::Matching(Selector::Tags(["news".to_owned()].into()))));
        assert_eq!(store.commit(w).unwrap(), None, "the purge refuses it");
        assert!(store.load(&[30; 16]).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A revalidation copying the body while a hard purge removes the object.
        fill(&store, [31; 16], b"old body");
        let rewritten = store
            .rewrite_meta(
                &[31; 16],
                None,
                |_| {
                    drop(fence.record(Purged::Key([31; 16])));
                    store.remove(&[31; 16]);
                },
                fence.open(),
            )
            .unwrap();
        assert!(!rewritten);
        assert!(store.load(&[31; 16]).is_none(), "the purge was undone");
        let again = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.usage().0, 0);
    }

    #[test]
    fn purge_and_soft_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [11; 16], b"one");
        fill(&store, [12; 16], b"two");
        let purged_at = SystemTime::now();
        let soft = store.purge(&Selector::Prefix("a.vn/11".into()), true);
        assert_eq!(soft, vec![[11; 16]]);
        let (head, _) = store.load(&[11; 16]).unwrap();
        let m = CacheMeta::deserialize(&head.internal, &head.header).unwrap();
        assert!(!m.is_fresh(SystemTime::now()));
        assert!(
            m.serve_stale_if_error(SystemTime::now()),
            "still good for stale-if-error"
        );
        assert!(m.updated() < purged_at, "Age still counts from the fill");
        assert_eq!(body_of(&store, &[11; 16]).unwrap(), b"one");
        let hard = store.purge(&Selector::Tags(["news".to_owned()].into()), false);
        assert_eq!(hard.len(), 2);
        assert!(store.load(&[12; 16]).is_none());
        // Gone for good: a restart does not bring it back.
        let again = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.usage().0, 0);
    }

    #[test]
    fn a_file_that_cannot_be_opened_now_stays_indexed_and_purgeable() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [40; 16], b"body");
        for errno in [24 /* EMFILE */, 13 /* EACCES */, 5 /* EIO */] {
            FAIL_OPEN.with(|f| f.set(Some(errno)));
            assert!(
                store.load(&[40; 16]).is_none(),
                "a miss while it cannot be read"
            );
            FAIL_OPEN.with(|f| f.set(None));
            assert_eq!(store.usage().0, 1, "errno {errno} dropped the index entry");
        }
        assert_eq!(body_of(&store, &[40; 16]).unwrap(), b"body");
        assert_eq!(
            store
                .purge(&Selector::Tags(["news".to_owned()].into()), false)
                .len(),
            1
        );
        assert!(!store.path_of(&[40; 16]).exists());
    }

    #[test]
    fn a_lookup_that_found_nothing_does_not_forget_a_fill_published_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open_blocking(dir.path(), 1 << 20).unwrap());
        let filler = store.clone();
        AFTER_MISSING.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || fill(&filler, [41; 16], b"just published")))
        });
        assert!(store.load(&[41; 16]).is_none());
        assert_eq!(store.usage().0, 1, "the new file is invisible to purges");
        assert_eq!(
            store
                .purge(&Selector::Tags(["news".to_owned()].into()), false)
                .len(),
            1
        );
        assert!(store.load(&[41; 16]).is_none());
    }

    #[test]
    fn a_rewrite_never_launders_a_damaged_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [42; 16], &[b'x'; 3000]);
        let p = store.path_of(&[42; 16]);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        let stale_at = SystemTime::now();
        let rewritten = store
            .rewrite_meta(
                &[42; 16],
                None,
                |m| m.expire_at(stale_at),
                store.fence.open(),
            )
            .unwrap();
        assert!(!rewritten);
        assert!(
            !p.exists(),
            "the damaged file must go, not get a fresh checksum"
        );
        assert_eq!(store.usage().0, 0);
    }

    #[test]
    fn a_late_revalidation_does_not_dress_a_refill_in_old_headers() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [43; 16], b"version 1");
        let (head, _) = store.load(&[43; 16]).unwrap();
        let v1 = CacheMeta::deserialize(&head.internal, &head.header).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        fill(&store, [43; 16], b"version 2, longer");
        let rewritten = store
            .rewrite_meta(
                &[43; 16],
                Some(v1.created()),
                |m| m.expire_at(SystemTime::now()),
                store.fence.open(),
            )
            .unwrap();
        assert!(!rewritten, "version 1's revalidation landed on version 2");
        assert_eq!(body_of(&store, &[43; 16]).unwrap(), b"version 2, longer");
    }

    #[test]
    fn temp_files_count_against_capacity_and_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 10_000).unwrap();
        let tmp = dir.path().join("tmp");
        // A crashed process's leftover (no such pid) and a live one's fill (pid 1).
        let dead = tmp.join(format!(
            "{}.{}.0",
            journal::key_text(&[44; 16]),
            u32::MAX - 1
        ));
        let live = tmp.join(format!("{}.1.0", journal::key_text(&[45; 16])));
        fs::write(&dead, vec![0u8; 4000]).unwrap();
        fs::write(&live, vec![0u8; 4000]).unwrap();
        fill(&store, [46; 16], &[b'a'; 2500]);
        fill(&store, [47; 16], &[b'b'; 2500]);
        store.sweep_tmp(SystemTime::now());
        assert!(!dead.exists(), "a dead process's temp file stays");
        assert!(live.exists());
        assert_eq!(store.overheads().1, 4000);
        store.evict();
        let (_, bytes) = store.usage();
        assert!(
            bytes + 4000 <= 10_000,
            "{bytes} bytes of objects beside 4000 of temp files"
        );
        // A fill in progress counts too.
        let mut w = store
            .begin([48; 16], &meta(), "a.vn/48".into(), vec![])
            .unwrap();
        store.append(&mut w, &[0u8; 1000]).unwrap();
        assert!(store.overheads().1 > 5000);
        drop(w);
        assert_eq!(store.overheads().1, 4000);
    }

    #[test]
    fn another_process_publishes_are_indexed_and_its_purges_refuse_fills() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20, Arc::default()).unwrap();
        // Another process (here: a store without a journal) publishes after our scan, and
        // journals it, as a process beside a live one does.
        let other = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&other, [50; 16], b"published by the old process");
        let line = |entry: Entry| {
            let mut v = serde_json::to_value(&entry).unwrap();
            v["pid"] = serde_json::json!(u32::MAX);
            format!("{v}\n")
        };
        let size = fs::metadata(store.path_of(&[50; 16])).unwrap().len();
        let mut log = line(Entry::Published {
            key: journal::key_text(&[50; 16]),
            size,
            target: "a.vn/50".into(),
            tags: vec!["news".into()],
        });
        fs::write(dir.path().join("journal.log"), &log).unwrap();
        // A fill of ours is in flight when the other process purges the tag.
        let mut w = store
            .begin([51; 16], &meta(), "a.vn/51".into(), vec!["news".into()])
            .unwrap();
        store
            .append(&mut w, b"fetched before the other's purge")
            .unwrap();
        // Our purge of the tag finds the other's object.
        assert_eq!(
            store
                .purge(&Selector::Tags(["news".to_owned()].into()), false)
                .len(),
            1
        );
        assert!(!store.path_of(&[50; 16]).exists());
        log.push_str(&line(Entry::Purge {
            selector: Selector::Tags(["sport".to_owned(), "news".to_owned()].into()),
            soft: false,
            id: 1,
        }));
        fs::write(dir.path().join("journal.log"), &log).unwrap();
        // Read at publish time: the fill is refused.
        assert_eq!(store.commit(w).unwrap(), None);
        assert!(store.load(&[51; 16]).is_none());
    }

    #[test]
    fn a_scan_that_cannot_read_keeps_the_files_and_the_purges_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        for key in [[60; 16], [61; 16]] {
            fill(&store, key, b"body");
        }
        drop(store);
        let store = DiskStore::new(dir.path(), 1 << 20, Arc::default()).unwrap();
        FAIL_OPEN.with(|f| f.set(Some(24)));
        store.scan();
        FAIL_OPEN.with(|f| f.set(None));
        assert!(
            store.path_of(&[60; 16]).exists(),
            "EMFILE at start-up lost the cache"
        );
        assert!(!store.index_ready());
        // A purge now cannot find them in the index, and still holds.
        store.purge(&Selector::Tags(["news".to_owned()].into()), false);
        assert!(store.load(&[60; 16]).is_none());
        store.scan();
        assert!(store.index_ready());
        assert_eq!(store.usage().0, 0);
        assert!(!store.path_of(&[61; 16]).exists());
    }
}
