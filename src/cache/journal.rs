//! Two processes over one disk cache: what each must hear of the other during a graceful
//! upgrade.
//!
//! During a hand-over the old process keeps finishing fills while the new one takes the
//! listeners, the admin API and so the purges. Each has its own index and purge fence, so
//! without help the new process never indexes what the old one publishes after its start-up
//! scan (served by path, yet invisible to its purges and budget), and the old one publishes
//! fills it began before a purge the new one ran.
//!
//! So while more than one process uses the directory they keep a journal there
//! (`journal.log`, one JSON line an entry): every purge and every publish is appended, and each
//! process reads what the others appended before it publishes, before it purges, and every
//! second. A lock file (`journal.lock`, flock) orders them: a publish holds it shared from
//! reading the journal to appending its own entry, a purge holds it exclusively while it reads
//! and appends. A purge therefore sees every publish that finished before it (and indexes it),
//! and a publish that comes after sees the purge (and is refused by its fence).
//!
//! Liveness comes from `procs/<pid>`, which each process holds locked for its lifetime: the
//! journal is created when a process starts beside a live one and deleted by the last one left,
//! so a lone node pays one uncontended flock per publish and nothing else.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use pingora::cache::key::HashBinary;
use serde::{Deserialize, Serialize};

use super::purge::Selector;

/// Longest line read back; a longer one is damage, not an entry.
const MAX_LINE: usize = 1 << 20;

/// What another process did, as read from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// A purge by selector (`soft`: marked stale) begins; `id` names it for its end.
    Purge {
        selector: Selector,
        soft: bool,
        #[serde(default)]
        id: u64,
    },
    /// The purge `id` has walked every tier: until then the others keep it running in their
    /// fences, so that they do not read back what its walk has not removed yet.
    PurgeDone { id: u64 },
    /// One object marked stale (a write through it changed it at the origin).
    Stale { key: String },
    /// One object removed.
    Remove { key: String },
    /// One object published (a fill or a rewrite), with what its index entry needs.
    Published {
        key: String,
        size: u64,
        target: String,
        tags: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
struct Line {
    pid: u32,
    #[serde(flatten)]
    entry: Entry,
}

/// How far this process has read the journal (which file, and where in it).
#[derive(Default)]
struct Reader {
    inode: Option<(u64, u64)>,
    offset: u64,
}

/// The journal of one cache directory.
pub struct Journal {
    lock_path: PathBuf,
    log_path: PathBuf,
    procs: PathBuf,
    me: u32,
    /// Held locked while this process lives: its liveness for the others.
    _alive: File,
    reader: Mutex<Reader>,
}

/// Held while a publish or a purge reads and appends (see the module docs).
pub struct Held {
    _lock: File,
}

impl Journal {
    /// Registers this process in `root` and, when another one is alive there, opens the
    /// journal; what was appended before now is not this process's news (the state on disk
    /// already shows it, and its start-up scan reads that).
    pub fn open(root: &Path) -> std::io::Result<Journal> {
        let procs = root.join("procs");
        fs::create_dir_all(&procs)?;
        let me = std::process::id();
        // Locked under a name no liveness check looks at, then renamed into place: another
        // process never sees this entry unlocked (it would take it for a dead one's).
        let staging = procs.join(format!(".{me}"));
        let alive = File::create(&staging)?;
        alive.try_lock().map_err(std::io::Error::other)?;
        fs::rename(&staging, procs.join(me.to_string()))?;
        let journal = Journal {
            lock_path: root.join("journal.lock"),
            log_path: root.join("journal.log"),
            procs,
            me,
            _alive: alive,
            reader: Mutex::new(Reader::default()),
        };
        let _held = journal.hold(true)?;
        if journal.others_alive() {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&journal.log_path)?;
            let meta = fs::metadata(&journal.log_path)?;
            *journal.reader() = Reader {
                inode: Some((meta.dev(), meta.ino())),
                offset: meta.len(),
            };
        } else {
            // A journal a crashed process left: nobody is there to read it.
            let _ = fs::remove_file(&journal.log_path);
        }
        Ok(journal)
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        match self.reader.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes the lock file, shared (a publish) or exclusive (a purge). A fresh descriptor each
    /// time: flock belongs to the open file, so threads sharing one would share the lock.
    pub fn hold(&self, exclusive: bool) -> std::io::Result<Held> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)?;
        if exclusive {
            file.lock()?;
        } else {
            file.lock_shared()?;
        }
        Ok(Held { _lock: file })
    }

    /// Whether another process holds its `procs/` entry; entries of dead ones are removed.
    fn others_alive(&self) -> bool {
        let mut alive = false;
        for entry in fs::read_dir(&self.procs).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            if name == self.me.to_string() || name.starts_with('.') {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    let _ = fs::remove_file(entry.path());
                }
                Err(_) => alive = true,
            }
        }
        alive
    }

    /// Hands the entries other processes appended since the last read to `act`, under `held`
    /// and this process's reading lock: a second reader (another thread about to publish) waits
    /// until `act` has applied them, so no thread can publish past news another thread read.
    pub fn read_news_with(&self, held: &Held, act: impl FnOnce(Vec<Entry>)) {
        let mut reader = self.reader();
        let news = self.read_locked(held, &mut reader);
        act(news);
    }

    /// The entries other processes appended since the last read, under `held` (tests).
    #[cfg(test)]
    pub fn read_news(&self, held: &Held) -> Vec<Entry> {
        let mut reader = self.reader();
        self.read_locked(held, &mut reader)
    }

    fn read_locked(&self, held: &Held, reader: &mut Reader) -> Vec<Entry> {
        let _ = held;
        let Ok(mut file) = File::open(&self.log_path) else {
            return Vec::new();
        };
        let Ok(meta) = file.metadata() else {
            return Vec::new();
        };
        let inode = Some((meta.dev(), meta.ino()));
        if reader.inode != inode {
            // A journal created since we last looked: all of it is news.
            *reader = Reader { inode, offset: 0 };
        }
        if meta.len() <= reader.offset {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(reader.offset)).is_err()
            || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        // Only whole lines: an append in progress is read next time.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        reader.offset += end as u64 + 1;
        bytes[..end]
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty() && line.len() <= MAX_LINE)
            .filter_map(|line| match serde_json::from_slice::<Line>(line) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("cache journal: unreadable entry skipped: {e}");
                    None
                }
            })
            .filter(|l| l.pid != self.me)
            .map(|l| l.entry)
            .collect()
    }

    /// Appends an entry when a journal is open (another process is there to read it).
    pub fn append(&self, held: &Held, entry: Entry) {
        let _ = held;
        let Ok(mut file) = OpenOptions::new().append(true).open(&self.log_path) else {
            return;
        };
        let line = Line {
            pid: self.me,
            entry,
        };
        let Ok(mut text) = serde_json::to_vec(&line) else {
            return;
        };
        text.push(b'\n');
        // One write of one line on an O_APPEND file: appends of other writers do not interleave.
        if let Err(e) = file.write_all(&text) {
            tracing::warn!("cache journal: cannot append: {e}");
        }
    }

    /// Periodic upkeep: the news since the last read, handed to `act`; with `tidy`, the
    /// journal deleted once this process is the only one left (after reading what the others
    /// left in it). Returns whether another process is still there.
    pub fn tick(&self, tidy: bool, act: impl FnOnce(Vec<Entry>)) -> bool {
        if !self.log_path.exists() {
            return false;
        }
        let Ok(held) = self.hold(tidy) else {
            return true;
        };
        let mut reader = self.reader();
        act(self.read_locked(&held, &mut reader));
        if tidy && !self.others_alive() {
            let _ = fs::remove_file(&self.log_path);
            *reader = Reader::default();
            return false;
        }
        true
    }

    /// Whether a journal is open now (tests).
    pub fn is_open(&self) -> bool {
        self.log_path.exists()
    }
}

/// A key as the journal writes it (and as the disk tier names its files).
pub fn key_text(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key the journal wrote; None for anything else.
pub fn key_of(text: &str) -> Option<HashBinary> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_keys_parse() {
        let e = Entry::Purge {
            selector: Selector::Tags(["news".to_owned()].into()),
            soft: true,
            id: 7,
        };
        let text = serde_json::to_string(&Line {
            pid: 7,
            entry: e.clone(),
        })
        .unwrap();
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entry, e);
        assert_eq!(key_of(&key_text(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(key_of("zz"), None);
    }

    #[test]
    fn a_lone_process_keeps_no_journal_and_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert!(!j.is_open());
        let held = j.hold(true).unwrap();
        j.append(
            &held,
            Entry::Stale {
                key: key_text(&[1; 16]),
            },
        );
        assert!(j.read_news(&held).is_empty());
        assert!(!j.is_open());
    }

    #[test]
    fn news_from_another_process_is_read_once_and_only_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // Another process's journal lines (a foreign pid), one of them still being written.
        let other = Line {
            pid: u32::MAX,
            entry: Entry::Stale {
                key: key_text(&[2; 16]),
            },
        };
        let mut text = serde_json::to_vec(&other).unwrap();
        text.push(b'\n');
        text.extend_from_slice(b"{\"pid\": 1, \"op\": \"sta");
        fs::write(dir.path().join("journal.log"), &text).unwrap();
        let held = j.hold(false).unwrap();
        assert_eq!(j.read_news(&held), vec![other.entry.clone()]);
        assert!(j.read_news(&held).is_empty(), "read twice");
        // The line being written is read once it is whole.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.log"))
            .unwrap();
        f.write_all(b"le\", \"key\": \"junk\"}\n").unwrap();
        let news = j.read_news(&held);
        assert_eq!(news, vec![Entry::Stale { key: "junk".into() }]);
        // Its own entries are not news to it.
        j.append(
            &held,
            Entry::Stale {
                key: key_text(&[3; 16]),
            },
        );
        assert!(j.read_news(&held).is_empty());
    }
}
