//! Scheduled releases: content under embargo until its time `at`, then released by every node
//! at the same instant (its own clock), with the purges of the pages that will link to it.
//!
//! - [`Spec`]: a release as operators give it (`POST /release`, `onair fleet release`) and as
//!   the signed fleet operation `release` carries it.
//! - [`Book`]: the releases this node holds, kept in its state dir (a restart keeps every
//!   embargo), and the matcher the request path asks: one atomic load when nothing is under
//!   embargo. The embargo is judged against `at` on every request, so it lifts at `at` exactly,
//!   whenever the flip itself runs.
//! - [`service`]: the flip: at each release's time, the purges it carries.
//!
//! An embargo covers a URL's path whatever its query (`/a?x=1` would otherwise fetch the page
//! early under another cache key), on every scheme and port of its host.

pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::cache::purge::{target_of_url, PurgeRequest};

/// A release, as given and as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Names the release (for changes and cancels): letters, digits, `-`, `_`.
    pub id: String,
    /// When it is released: RFC 3339 with a zone (`2027-01-20T10:00:00+07:00`).
    pub at: String,
    pub embargo: Embargo,
    /// URLs to fetch ahead (prewarm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<String>,
    /// What to purge at `at`: the pages that will link to the released content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge: Option<PurgeSpec>,
}

/// What a release keeps back until its time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embargo {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A purge at release time: what `POST /purge` takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub soft: bool,
}

impl PurgeSpec {
    pub fn request(&self) -> PurgeRequest {
        PurgeRequest {
            urls: self.urls.clone(),
            prefix: self.prefix.clone(),
            tags: self.tags.clone(),
            soft: self.soft,
        }
    }
}

/// Largest embargo a release carries (URLs), and longest id.
const MAX_URLS: usize = 10_000;
const MAX_ID: usize = 64;

/// A checked release: its time and the embargoed paths (`host[:port]/path`, no query).
#[derive(Debug, Clone)]
pub struct Checked {
    pub at_ms: u64,
    pub paths: Vec<String>,
    pub prefix: Option<String>,
}

impl Spec {
    /// A fresh id for a release given without one.
    pub fn new_id() -> String {
        let id: [u8; 8] = rand::random();
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Everything a node would refuse, refused here: before anything is published or stored.
    pub fn check(&self) -> Result<Checked, String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "release id {:?}: 1 to {MAX_ID} letters, digits, - or _",
                self.id
            ));
        }
        let at =
            time::OffsetDateTime::parse(&self.at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                format!(
                    "\"at\": {:?} is not an RFC 3339 time with a zone ({e}), e.g. \
                     2027-01-20T10:00:00+07:00",
                    self.at
                )
            })?;
        let at_ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("\"at\": {:?} is before 1970", self.at))?;
        if self.embargo.urls.is_empty() && self.embargo.prefix.is_none() {
            return Err("\"embargo\" needs \"urls\" or a \"prefix\"".to_owned());
        }
        if self.embargo.urls.len() + self.warm.len() > MAX_URLS {
            return Err(format!("at most {MAX_URLS} embargoed and warm URLs"));
        }
        let paths = self
            .embargo
            .urls
            .iter()
            .map(|u| target_of_url(u).map(|t| without_query(&t).to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("\"embargo\": {e}"))?;
        let prefix = match &self.embargo.prefix {
            Some(p) => {
                let t = target_of_url(p).map_err(|e| format!("\"embargo\": {e}"))?;
                Some(without_query(&t).to_owned())
            }
            None => None,
        };
        for url in &self.warm {
            target_of_url(url).map_err(|e| format!("\"warm\": {e}"))?;
        }
        if let Some(purge) = &self.purge {
            purge
                .request()
                .selector()
                .map_err(|e| format!("\"purge\": {e}"))?;
        }
        Ok(Checked {
            at_ms,
            paths,
            prefix,
        })
    }
}

fn without_query(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// Where a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Released,
    Cancelled,
}

/// A release this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub spec: Spec,
    pub at_ms: u64,
    pub state: State,
    /// When it was released or cancelled here (UNIX ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<u64>,
}

/// Released and cancelled releases stay listed this long.
const HISTORY_MS: u64 = 86_400_000;

const FILE: &str = "releases.json";

/// Embargoed paths of the pending releases: path → (release id, at).
#[derive(Default)]
struct Matcher {
    exact: HashMap<String, (Arc<str>, u64)>,
    prefixes: Vec<(String, Arc<str>, u64)>,
}

impl Matcher {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// The releases this node holds.
#[derive(Default)]
pub struct Book {
    entries: Mutex<BTreeMap<String, Entry>>,
    matcher: ArcSwap<Matcher>,
    state_dir: OnceLock<PathBuf>,
    /// Woken when a release is added, changed or cancelled (the flip's next time may move).
    pub changed: tokio::sync::Notify,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reads the releases kept in `state_dir` (at start, before the first request): a node that
    /// restarts before a release's time keeps its embargo. An unreadable file is logged and
    /// kept aside, never a reason not to start.
    pub fn open(&self, state_dir: &Path) {
        let _ = self.state_dir.set(state_dir.to_owned());
        let path = state_dir.join(FILE);
        let entries: BTreeMap<String, Entry> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(
                    "release: {} is unreadable ({e}); kept as {FILE}.bad, and no release is \
                     known until the fleet replays them",
                    path.display()
                );
                let _ = std::fs::rename(&path, state_dir.join(format!("{FILE}.bad")));
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        *self.lock() = entries;
        self.rebuild();
    }

    /// Whether no release holds anything back (one atomic load).
    pub fn holds_nothing(&self) -> bool {
        self.matcher.load().is_empty()
    }

    /// The release whose embargo covers `path` (`host[:port]/path`, query or not) at `now_ms`.
    pub fn embargoed(&self, path: &str, now_ms: u64) -> Option<Arc<str>> {
        let matcher = self.matcher.load();
        if matcher.is_empty() {
            return None;
        }
        let path = without_query(path);
        if let Some((id, at)) = matcher.exact.get(path) {
            if now_ms < *at {
                return Some(id.clone());
            }
        }
        matcher
            .prefixes
            .iter()
            .find(|(prefix, _, at)| now_ms < *at && path.starts_with(prefix.as_str()))
            .map(|(_, id, _)| id.clone())
    }

    /// Adds a release, or changes a pending one with the same id. A release already released
    /// is not changed (its content is out).
    pub fn schedule(&self, spec: Spec, now_ms: u64) -> Result<&'static str, String> {
        let checked = spec.check()?;
        let what = {
            let mut entries = self.lock();
            let what = match entries.get(&spec.id).map(|e| e.state) {
                Some(State::Released) => {
                    return Err(format!("release {} is out already", spec.id));
                }
                Some(_) => "changed",
                None => "scheduled",
            };
            prune(&mut entries, now_ms);
            entries.insert(
                spec.id.clone(),
                Entry {
                    spec,
                    at_ms: checked.at_ms,
                    state: State::Pending,
                    done_ms: None,
                },
            );
            what
        };
        self.saved();
        Ok(what)
    }

    /// Cancels a pending release: its embargo lifts and nothing of it is done.
    pub fn cancel(&self, id: &str, now_ms: u64) -> Result<(), String> {
        {
            let mut entries = self.lock();
            let entry = entries
                .get_mut(id)
                .ok_or_else(|| format!("no release {id}"))?;
            if entry.state != State::Pending {
                return Err(format!("release {id} is {:?} already", entry.state));
            }
            entry.state = State::Cancelled;
            entry.done_ms = Some(now_ms);
        }
        self.saved();
        Ok(())
    }

    /// Pending releases whose time has come.
    pub fn due(&self, now_ms: u64) -> Vec<Entry> {
        self.lock()
            .values()
            .filter(|e| e.state == State::Pending && e.at_ms <= now_ms)
            .cloned()
            .collect()
    }

    /// The earliest time of a pending release.
    pub fn next_at(&self) -> Option<u64> {
        self.lock()
            .values()
            .filter(|e| e.state == State::Pending)
            .map(|e| e.at_ms)
            .min()
    }

    /// Marks a release done (its purges applied).
    pub fn released(&self, id: &str, now_ms: u64) {
        {
            let mut entries = self.lock();
            if let Some(entry) = entries.get_mut(id) {
                entry.state = State::Released;
                entry.done_ms = Some(now_ms);
            }
        }
        self.saved();
    }

    /// Every release held, for `GET /release`.
    pub fn list(&self) -> Vec<Entry> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.lock().get(id).cloned()
    }

    /// After a change: the matcher rebuilt, the file written, the flip woken.
    fn saved(&self) {
        self.rebuild();
        self.store();
        self.changed.notify_one();
    }

    fn rebuild(&self) {
        let entries = self.lock();
        let mut matcher = Matcher::default();
        let mut pending = 0;
        for entry in entries.values().filter(|e| e.state == State::Pending) {
            pending += 1;
            let Ok(checked) = entry.spec.check() else {
                continue;
            };
            let id: Arc<str> = Arc::from(entry.spec.id.as_str());
            for path in checked.paths {
                // Two releases holding one path: the later one keeps it back longer.
                let slot = matcher
                    .exact
                    .entry(path)
                    .or_insert_with(|| (id.clone(), entry.at_ms));
                if slot.1 < entry.at_ms {
                    *slot = (id.clone(), entry.at_ms);
                }
            }
            if let Some(prefix) = checked.prefix {
                matcher.prefixes.push((prefix, id.clone(), entry.at_ms));
            }
        }
        crate::metrics::METRICS.releases_pending(pending);
        self.matcher.store(Arc::new(matcher));
    }

    /// Writes the releases to the state dir: a temporary file, fsynced, renamed over the old
    /// one. Releases change rarely (an editor's schedule), so this runs where they change.
    fn store(&self) {
        let Some(dir) = self.state_dir.get() else {
            return;
        };
        let bytes = serde_json::to_vec_pretty(&*self.lock()).unwrap_or_default();
        let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, dir.join(FILE)));
        if let Err(e) = written {
            tracing::error!(
                "release: cannot keep the releases in {}: {e} (a restart would forget them \
                 until the fleet replays them)",
                dir.display()
            );
        }
    }
}

/// Forgets releases done more than a day ago.
fn prune(entries: &mut BTreeMap<String, Entry>, now_ms: u64) {
    entries.retain(|_, e| {
        e.done_ms
            .is_none_or(|done| now_ms.saturating_sub(done) < HISTORY_MS)
    });
}

/// UNIX milliseconds now.
pub fn now_ms() -> u64 {
    crate::fleet::op::unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, at: &str) -> Spec {
        Spec {
            id: id.into(),
            at: at.into(),
            embargo: Embargo {
                urls: vec!["https://portal.example.vn/vankien/nghi-quyet".into()],
                prefix: Some("https://portal.example.vn/media/nq/".into()),
            },
            warm: vec![],
            purge: Some(PurgeSpec {
                tags: vec!["home".into()],
                ..PurgeSpec::default()
            }),
        }
    }

    #[test]
    fn an_embargo_holds_until_its_time_on_every_spelling_of_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::default();
        book.open(dir.path());
        // 2027-01-20T03:00:00Z
        let at = 1_800_414_000_000;
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), at - 1000)
            .unwrap();
        let article = "portal.example.vn/vankien/nghi-quyet";
        assert_eq!(book.embargoed(article, at - 1).as_deref(), Some("vk"));
        assert_eq!(
            book.embargoed(&format!("{article}?utm=x"), at - 1)
                .as_deref(),
            Some("vk"),
            "a query does not get around it"
        );
        assert!(book
            .embargoed("portal.example.vn/media/nq/1.jpg", at - 1)
            .is_some());
        assert!(book
            .embargoed("portal.example.vn/vankien/other", at - 1)
            .is_none());
        assert!(
            book.embargoed(article, at).is_none(),
            "lifted at its time exactly"
        );
        // A restart keeps it.
        let again = Book::default();
        again.open(dir.path());
        assert!(again.embargoed(article, at - 1).is_some());
        assert_eq!(again.due(at).len(), 1);
        assert_eq!(again.next_at(), Some(at));
        // Released: out for good, and not changed any more.
        again.released("vk", at);
        assert!(again
            .schedule(spec("vk", "2027-01-21T10:00:00+07:00"), at)
            .is_err());
        assert!(again.due(at + 1).is_empty());
    }

    #[test]
    fn cancel_reschedule_and_bad_releases() {
        let book = Book::default();
        let at = 1_800_414_000_000;
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), 0)
            .unwrap();
        assert_eq!(
            book.schedule(spec("vk", "2027-01-20T11:00:00+07:00"), 0),
            Ok("changed")
        );
        assert!(book
            .embargoed("portal.example.vn/vankien/nghi-quyet", at + 1)
            .is_some());
        book.cancel("vk", 1).unwrap();
        assert!(book
            .embargoed("portal.example.vn/vankien/nghi-quyet", 0)
            .is_none());
        assert!(book.due(u64::MAX).is_empty());
        for (bad, why) in [
            (spec("a b", "2027-01-20T10:00:00+07:00"), "release id"),
            (spec("x", "2027-01-20 10:00"), "RFC 3339"),
            (spec("x", "2027-01-20T10:00:00"), "RFC 3339"),
        ] {
            let e = book.schedule(bad, 0).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut none = spec("x", "2027-01-20T10:00:00Z");
        none.embargo = Embargo::default();
        assert!(book.schedule(none, 0).unwrap_err().contains("embargo"));
    }
}
