//! L2: the disk tier, one file per object under `cache.disk_path`, surviving restarts.
//!
//! File (format v1): a 40-byte head, a metadata section, then the body.
//! ```text
//! "ONAIRC01" | internal_len u32 | header_len u32 | target_len u32 | tags_len u32 | body_len u64
//!            | meta_crc u32 | body_crc u32            (all big-endian)
//! internal (Pingora's CacheMeta internal part) | header (its serialized response header)
//! | target (host[:port]/path?query) | tags ('\n'-separated) | body
//! ```
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
//! - Publishing (rename + index) happens under the cache's [`PurgeFence`]: a purge recorded after
//!   a fill or rewrite started refuses its publish.

use std::collections::{BTreeMap, HashMap};
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

use super::fence::{PurgeFence, Ticket};
use super::purge::Selector;

const MAGIC: &[u8; 8] = b"ONAIRC01";
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

/// What a file's head and metadata say.
pub struct Head {
    pub internal: Vec<u8>,
    pub header: Vec<u8>,
    pub target: String,
    pub tags: Vec<String>,
    pub body_offset: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

#[derive(Default)]
struct Index {
    /// Whether the start-up scan has finished; until then the index is partial.
    scanned: bool,
    /// Keys removed while the scan runs, so that the scan does not index them again.
    removed_during_scan: std::collections::HashSet<HashBinary>,
    objects: HashMap<HashBinary, IndexEntry>,
    /// Access order: tick -> key; the first entry is the least recently used.
    lru: BTreeMap<u64, HashBinary>,
    tick: u64,
    total: u64,
}

struct IndexEntry {
    size: u64,
    tick: u64,
    target: String,
    tags: Vec<String>,
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
        self.objects.insert(
            key,
            IndexEntry {
                size,
                tick: self.tick,
                target,
                tags,
            },
        );
    }

    fn remove(&mut self, key: &HashBinary) -> bool {
        if !self.scanned {
            self.removed_during_scan.insert(*key);
        }
        match self.objects.remove(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.total -= e.size;
                true
            }
            None => false,
        }
    }
}

/// The disk tier.
pub struct DiskStore {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Signalled when the start-up scan finishes (purges wait for a complete index).
    scan_done: std::sync::Condvar,
    seq: AtomicU64,
    fence: Arc<PurgeFence>,
    /// Until when admissions are paused because the filesystem is full.
    full_until: Mutex<Option<Instant>>,
}

/// How long a purge waits for the start-up scan before purging what is indexed so far.
const PURGE_WAITS_FOR_SCAN: Duration = Duration::from_secs(120);

fn io_err(context: &'static str) -> impl Fn(std::io::Error) -> Box<Error> {
    move |e| Error::because(ErrorType::InternalError, context, e)
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

impl DiskStore {
    fn new(root: &Path, capacity: u64, fence: Arc<PurgeFence>) -> std::io::Result<DiskStore> {
        fs::create_dir_all(root.join("tmp"))?;
        Ok(DiskStore {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(Index::default()),
            scan_done: std::sync::Condvar::new(),
            seq: AtomicU64::new(0),
            fence,
            full_until: Mutex::new(None),
        })
    }

    /// Opens (creating) the directory and starts the background index scan.
    pub fn open(
        root: &Path,
        capacity: u64,
        fence: Arc<PurgeFence>,
    ) -> std::io::Result<Arc<DiskStore>> {
        let store = Arc::new(DiskStore::new(root, capacity, fence)?);
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

    /// Objects and bytes indexed now.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.lock();
        (index.objects.len() as u64, index.total)
    }

    pub fn path_of(&self, key: &HashBinary) -> PathBuf {
        let name = hex(key);
        self.root.join(&name[0..2]).join(&name[2..4]).join(name)
    }

    /// Walks the directory: drops dead temp files, indexes every valid object (oldest
    /// modification first, so LRU order approximates last use), removes corrupt ones.
    fn scan(&self) -> usize {
        if let Ok(tmp) = fs::read_dir(self.root.join("tmp")) {
            for entry in tmp.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mut found: Vec<(SystemTime, HashBinary, u64, String, Vec<String>)> = Vec::new();
        let level = |p: &Path| {
            fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        };
        for a in level(&self.root).filter(|p| p.is_dir() && !p.ends_with("tmp")) {
            for b in level(&a).filter(|p| p.is_dir()) {
                for file in level(&b) {
                    let Some(key) = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(parse_hex)
                    else {
                        continue;
                    };
                    match read_head(&file) {
                        Ok(head) => {
                            let size = head.body_offset + head.body_len;
                            let mtime = fs::metadata(&file)
                                .and_then(|m| m.modified())
                                .unwrap_or(SystemTime::UNIX_EPOCH);
                            found.push((mtime, key, size, head.target, head.tags));
                        }
                        Err(_) => {
                            let _ = fs::remove_file(&file);
                        }
                    }
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let n = found.len();
        let mut index = self.lock();
        for (_, key, size, target, tags) in found {
            // A fill that finished while we scanned is already indexed, and newer; an object
            // purged or evicted while we scanned stays gone.
            if !index.objects.contains_key(&key) && !index.removed_during_scan.contains(&key) {
                index.insert(key, size, target, tags);
            }
        }
        index.scanned = true;
        index.removed_during_scan = Default::default();
        drop(index);
        self.scan_done.notify_all();
        self.evict();
        n
    }

    /// Reads an object's head; a corrupt or truncated file is removed. Blocking.
    pub fn load(&self, key: &HashBinary) -> Option<(Head, File)> {
        let path = self.path_of(key);
        match read_head_and_file(&path) {
            Ok(found) => {
                self.lock().touch(key);
                Some(found)
            }
            Err(ReadError::Missing) => {
                self.lock().remove(key);
                None
            }
            Err(ReadError::Corrupt(why)) => {
                tracing::warn!(file = %path.display(), why, "corrupt cache file removed");
                self.remove(key);
                None
            }
        }
    }

    /// Removes an object's file and index entry. Blocking.
    pub fn remove(&self, key: &HashBinary) -> bool {
        let indexed = self.lock().remove(key);
        let path = self.path_of(key);
        let removed = fs::remove_file(&path).is_ok();
        if removed {
            // A purge must stay done after a power cut, not only after a clean restart.
            sync_dir(&path);
        }
        indexed || removed
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
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}.{seq}", hex(&key), std::process::id()));
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
        w.body_len += data.len() as u64;
        Ok(())
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
        let file = w
            .file
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "fill already finished"))?;
        let mut head = Vec::with_capacity(HEAD_LEN);
        head.extend_from_slice(MAGIC);
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

    /// Publishes a sealed fill (rename, index) unless a purge since its start matches it;
    /// returns the body size, or None when a purge refused it. Blocking but short: it runs
    /// under the purge fence. Call [`DiskStore::settle`] after.
    pub fn publish(&self, mut w: DiskWrite) -> Result<Option<u64>> {
        if !w.sealed {
            return Error::e_explain(ErrorType::InternalError, "fill not sealed");
        }
        let target = std::mem::take(&mut w.target);
        let tags = std::mem::take(&mut w.tags);
        let key = w.key;
        let published = match w.ticket.take() {
            Some(ticket) => self.fence.publish(&ticket, &key, &target, &tags, || {
                self.publish_now(&mut w, &target, &tags)
            }),
            None => Some(self.publish_now(&mut w, &target, &tags)),
        };
        match published {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(())) => Ok(Some(w.body_len)),
        }
    }

    fn publish_now(&self, w: &mut DiskWrite, target: &str, tags: &[String]) -> Result<()> {
        let path = self.path_of(&w.key);
        fs::rename(&w.tmp, &path)
            .map_err(|e| self.write_failed(e, "cannot publish a cache file"))?;
        w.done = true;
        let size = HEAD_LEN as u64 + w.meta_len + w.body_len;
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
    /// whether the object was there and the new copy was published. Blocking.
    pub fn rewrite_meta(
        &self,
        key: &HashBinary,
        change: impl FnOnce(&mut CacheMeta),
    ) -> Result<bool> {
        // Opened before the read, so that a purge landing while the body is copied wins.
        let ticket = self.fence.open();
        let Some((head, mut file)) = self.load(key) else {
            return Ok(false);
        };
        let mut meta = CacheMeta::deserialize(&head.internal, &head.header)?;
        change(&mut meta);
        let mut w = self.begin(*key, &meta, head.target, head.tags)?;
        w.ticket = Some(ticket);
        file.seek(SeekFrom::Start(head.body_offset))
            .map_err(io_err("cannot read a cache file"))?;
        let mut left = head.body_len;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            file.read_exact(&mut buf[..n])
                .map_err(io_err("cannot read a cache file"))?;
            self.append(&mut w, &buf[..n])?;
            left -= n as u64;
        }
        Ok(self.commit(w)?.is_some())
    }

    /// Removes (or marks stale) every indexed object the selector matches. Blocking. The
    /// caller records the purge in the fence first.
    pub fn purge_matching(&self, selector: &Selector, soft: bool) -> Vec<HashBinary> {
        self.wait_for_scan();
        let keys: Vec<HashBinary> = self
            .lock()
            .objects
            .iter()
            .filter(|(_, e)| selector.matches(&e.target, &e.tags))
            .map(|(k, _)| *k)
            .collect();
        let stale_at = SystemTime::now() - Duration::from_secs(1);
        for key in &keys {
            if soft {
                // `expire_at` keeps `updated`, so Age still counts from when it was stored.
                if self.rewrite_meta(key, |m| m.expire_at(stale_at)).is_err() {
                    self.remove(key);
                }
            } else {
                self.remove(key);
            }
        }
        keys
    }

    /// Blocks until the start-up scan has indexed every file (bounded), so that a purge right
    /// after a restart also finds objects the scan had not reached yet.
    fn wait_for_scan(&self) {
        let index = self.lock();
        let waited = self
            .scan_done
            .wait_timeout_while(index, PURGE_WAITS_FOR_SCAN, |i| !i.scanned);
        if waited.is_ok_and(|(_, timeout)| timeout.timed_out()) {
            tracing::warn!("purging before the disk cache index scan finished");
        }
    }

    fn evict(&self) {
        let mut evicted = 0;
        loop {
            let victim = {
                let mut index = self.lock();
                if index.total <= self.capacity {
                    break;
                }
                let Some((_, key)) = index.lru.pop_first() else {
                    break;
                };
                if let Some(e) = index.objects.remove(&key) {
                    index.total -= e.size;
                }
                key
            };
            let _ = fs::remove_file(self.path_of(&victim));
            evicted += 1;
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
}

impl DiskWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(data),
            None => Err(std::io::Error::other("fill already sealed")),
        }
    }

    /// Body bytes written so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }
}

impl Drop for DiskWrite {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

enum ReadError {
    Missing,
    Corrupt(&'static str),
}

fn read_head(path: &Path) -> std::result::Result<Head, ReadError> {
    read_head_and_file(path).map(|(h, _)| h)
}

fn read_head_and_file(path: &Path) -> std::result::Result<(Head, File), ReadError> {
    let mut file = File::open(path).map_err(|_| ReadError::Missing)?;
    let file_len = file.metadata().map_err(|_| ReadError::Missing)?.len();
    let mut head = [0u8; HEAD_LEN];
    file.read_exact(&mut head)
        .map_err(|_| ReadError::Corrupt("short head"))?;
    if &head[0..8] != MAGIC {
        return Err(ReadError::Corrupt("bad magic"));
    }
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
    let expected = (HEAD_LEN as u64 + meta_len).checked_add(body_len);
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

fn parse_hex(name: &str) -> Option<HashBinary> {
    if name.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
    fn a_purge_right_after_a_restart_sees_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
        for i in 0..2000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            fill(&store, key, b"x");
        }
        drop(store);
        // The background scan is just starting; the purge must still reach every file.
        let store = DiskStore::open(dir.path(), u64::MAX, Arc::default()).unwrap();
        let purged = store.purge_matching(&Selector::Tags(["news".to_owned()].into()), false);
        assert_eq!(purged.len(), 2000);
        let again = DiskStore::open_blocking(dir.path(), u64::MAX).unwrap();
        assert_eq!(again.usage().0, 0, "purged files came back");
    }

    #[test]
    fn a_full_filesystem_pauses_admissions_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        fill(&store, [20; 16], b"stored before the disk filled up");
        // The next temp file is really /dev/full: its writes fail with ENOSPC.
        let seq = store.seq.load(Ordering::Relaxed);
        let tmp = dir.path().join("tmp");
        let name = format!("{}.{}.{seq}", hex(&[21; 16]), std::process::id());
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
        fence.record(Purged::Matching(Selector::Tags(["news".to_owned()].into())));
        assert_eq!(store.commit(w).unwrap(), None, "the purge refuses it");
        assert!(store.load(&[30; 16]).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A revalidation copying the body while a hard purge removes the object.
        fill(&store, [31; 16], b"old body");
        let rewritten = store
            .rewrite_meta(&[31; 16], |_| {
                fence.record(Purged::Key([31; 16]));
                store.remove(&[31; 16]);
            })
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
        let soft = store.purge_matching(&Selector::Prefix("a.vn/11".into()), true);
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
        let hard = store.purge_matching(&Selector::Tags(["news".to_owned()].into()), false);
        assert_eq!(hard.len(), 2);
        assert!(store.load(&[12; 16]).is_none());
        // Gone for good: a restart does not bring it back.
        let again = DiskStore::open_blocking(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.usage().0, 0);
    }
}
