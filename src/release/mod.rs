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
//! What an embargo covers is judged loosely, as the origins behind it may: the URL's site (any of
//! its host names, on any port or scheme), its path in any case and any percent-encoding, with
//! or without a trailing slash or `;parameters`, and any query that holds the URL's own query
//! parameters however they are encoded (`/a?utm=x` must not fetch `/a` early under another
//! cache key). Holding back a little too much before the time is the safe side. Every URL of
//! the warm list is under the embargo too: a warm fetch passes the origin's own embargo (it
//! carries the fleet's secret), so what it brings must stay hidden until the time.
//!
//! Changes and cancels are ordered by when they were issued against the release's time: one
//! issued before the time holds on every node, even one that applies it after the time (it was
//! away); one issued after the time is refused everywhere (the content is out).

pub mod service;
pub mod warm;

use std::collections::{BTreeMap, HashMap};
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
    /// One purge per kind given (a release may purge pages by URL and by tag at once).
    pub fn requests(&self) -> Vec<PurgeRequest> {
        let one = |urls: Vec<String>, prefix: Option<String>, tags: Vec<String>| PurgeRequest {
            urls,
            prefix,
            tags,
            soft: self.soft,
        };
        let mut requests = Vec::new();
        if !self.urls.is_empty() {
            requests.push(one(self.urls.clone(), None, Vec::new()));
        }
        if let Some(prefix) = &self.prefix {
            requests.push(one(Vec::new(), Some(prefix.clone()), Vec::new()));
        }
        if !self.tags.is_empty() {
            requests.push(one(Vec::new(), None, self.tags.clone()));
        }
        requests
    }
}

/// Largest embargo a release carries (URLs), and longest id.
const MAX_URLS: usize = 10_000;
const MAX_ID: usize = 64;

/// A query's `name=value` pairs.
pub type QueryPairs = Vec<(String, String)>;

/// A checked release: its time and what its embargo covers.
#[derive(Debug, Clone)]
pub struct Checked {
    pub at_ms: u64,
    /// Embargoed URLs (the warm list's too): host (no port), loose path, and the query
    /// parameters they name.
    pub urls: Vec<(String, String, QueryPairs)>,
    /// The embargoed prefix: host (no port), loose path prefix, and whether it ends at a
    /// segment (`/vankien/` holds `/vankien` and `/vankien/x`, not `/vankien-cu`).
    pub prefix: Option<(String, String, bool)>,
}

impl Spec {
    /// A fresh id for a release given without one.
    pub fn new_id() -> String {
        let id: [u8; 8] = rand::random();
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// [`Spec::check`] for a release being issued now (`now_ms`): a time already a minute gone
    /// is refused as a typo (a node applying it late, on catch-up, takes it as it is).
    pub fn check_new(&self, now_ms: u64) -> Result<Checked, String> {
        let checked = self.check()?;
        if checked.at_ms.saturating_add(60_000) < now_ms {
            return Err(format!(
                "\"at\": {} is in the past: it would be released at once",
                self.at
            ));
        }
        Ok(checked)
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
        let mut urls = Vec::new();
        for (what, list) in [("embargo", &self.embargo.urls), ("warm", &self.warm)] {
            for url in list {
                let target = target_of_url(url).map_err(|e| format!("\"{what}\": {e}"))?;
                let (host, path, query) = split_target(&target);
                let path = loose(path);
                if path == "/" {
                    // Held back until the time, the site's front page would be gone.
                    return Err(format!(
                        "\"{what}\": {url:?} is the site's home page: purge it at the time \
                         (\"purge\") instead"
                    ));
                }
                urls.push((host, path, query_pairs(query)));
            }
        }
        let prefix = match &self.embargo.prefix {
            Some(p) => {
                let target = target_of_url(p).map_err(|e| format!("\"embargo\": {e}"))?;
                let (host, path, _) = split_target(&target);
                let loose_path = loose(path);
                if loose_path == "/" {
                    return Err(format!(
                        "\"embargo\": the prefix {p:?} is the whole site; name its section \
                         (https://{host}/section/)"
                    ));
                }
                let whole_segments = path.ends_with('/');
                Some((host, loose_path, whole_segments))
            }
            None => None,
        };
        if let Some(purge) = &self.purge {
            let requests = purge.requests();
            if requests.is_empty() {
                return Err("\"purge\" needs \"urls\", a \"prefix\" or \"tags\"".to_owned());
            }
            for request in requests {
                request.selector().map_err(|e| format!("\"purge\": {e}"))?;
            }
        }
        Ok(Checked {
            at_ms,
            urls,
            prefix,
        })
    }
}

/// Whether loose `prefix` covers loose `path`: as a string, or by whole segments.
fn covers(prefix: &str, whole_segments: bool, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => !whole_segments || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `host[:port]/path?query` as (host without its port, path, query).
fn split_target(target: &str) -> (String, &str, &str) {
    let (authority, rest) = match target.find('/') {
        Some(i) => target.split_at(i),
        None => (target, "/"),
    };
    let host = match authority.rsplit_once(':') {
        // `[::1]:8080` and `host:8080`; not the colons inside `[::1]`.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => host,
        _ => authority,
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (host.to_owned(), path, query)
}

/// A path as loosely as an origin might read it: any case, every `%XX` decoded (`%2F` as `/`,
/// `%40` as `@`), no `;parameters`, no empty segments, no trailing slash.
pub fn loose(path: &str) -> String {
    let decoded = crate::uri_path::decode_lossy(path);
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        if segment.is_empty() {
            continue;
        }
        out.push('/');
        out.push_str(&segment.to_ascii_lowercase());
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `a=1&b=2` as pairs, as loosely as an application reads them: `%XX` and `+` decoded, any
/// case (`?i%64=%35` is `?id=5` to PHP).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    let read = |s: &str| crate::uri_path::decode_lossy(&s.replace('+', " ")).to_lowercase();
    query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (read(k), read(v))
        })
        .collect()
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
    /// The fleet operation that set it last (none: the admin API of this node alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its warm list as it stood when it was released here: what readers met missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_at_release: Option<warm::Outcome>,
}

/// A release as a node's heartbeat tells it, so that the status of the operation that set it
/// (`GET /fleet/ops/SEQ`, `onair fleet wait SEQ`) shows how far each node warmed it and what
/// was still missing when it came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub id: String,
    /// The fleet operation that set it last.
    pub seq: Option<u64>,
    pub state: State,
    pub warm_total: usize,
    pub warmed: usize,
    /// The first of the URLs not warmed (the node's `GET /release/ID` lists them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// How many releases a heartbeat tells, how many missing URLs of each, and how much of each
/// URL: a heartbeat stays far under the bucket's 64 KiB message limit (a bigger one would be
/// refused, and the node shown as silent).
const BEAT_RELEASES: usize = 16;
const BEAT_MISSING: usize = 5;
const BEAT_URL_BYTES: usize = 200;

/// Released and cancelled releases stay listed this long after their time.
const HISTORY_MS: u64 = 86_400_000;

const FILE: &str = "releases.json";

/// One embargo rule of a pending release.
struct Rule {
    /// The URL's host: a request matches when its site is this host's site.
    host: String,
    /// Query parameters the request must hold (none: any query).
    query: Vec<(String, String)>,
    id: Arc<str>,
    at: u64,
    /// A warm fetch of what it covers may be stored (not while it is being called off).
    warm_ok: bool,
}

/// What the pending releases hold back: loose path → rules, and loose prefixes.
#[derive(Default)]
struct Matcher {
    exact: HashMap<String, Vec<Rule>>,
    /// Loose prefix, whether it ends at a segment, and its rule.
    prefixes: Vec<(String, bool, Rule)>,
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
    /// Woken when a release is added, changed or cancelled (the flip's next time may move),
    /// and when a warm fetch ends (another may start).
    pub changed: tokio::sync::Notify,
    /// Where each release's warm list stands.
    pub warm: warm::Progress,
    /// Held while the file is written: writers take the entries as they are once it is
    /// theirs, so the last file written is the latest state, never an older one.
    storing: Mutex<()>,
    /// Releases being called off or changed: their embargo holds until what they warmed is
    /// dropped, and no warm fetch of theirs is stored meanwhile (see [`Book::retire`]).
    retiring: Mutex<std::collections::HashSet<String>>,
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
    /// kept aside, never a reason not to start; then true: the releases it held are lost here,
    /// and the caller has the fleet's operations read again from the start of the stream.
    pub fn open(&self, state_dir: &Path) -> bool {
        let _ = self.state_dir.set(state_dir.to_owned());
        let path = state_dir.join(FILE);
        let (entries, lost) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, Entry>>(&bytes) {
                Ok(entries) => (entries, false),
                Err(e) => {
                    tracing::error!(
                        "release: {} is unreadable ({e}); kept as {FILE}.bad; the releases it \
                         held are known again when the fleet's operations are read again",
                        path.display()
                    );
                    let _ = std::fs::rename(&path, state_dir.join(format!("{FILE}.bad")));
                    (BTreeMap::new(), true)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), false),
            Err(e) => {
                tracing::error!(
                    "release: cannot read {}: {e}; the releases it held are known again when \
                     the fleet's operations are read again",
                    path.display()
                );
                (BTreeMap::new(), true)
            }
        };
        *self.lock() = entries;
        self.rebuild();
        lost
    }

    /// Whether no release holds anything back (one atomic load).
    pub fn holds_nothing(&self) -> bool {
        self.matcher.load().is_empty()
    }

    /// The release whose embargo covers a request for `path` (and `query`) at `now_ms`;
    /// `same_site(host)` says whether `host` is the request's site (as this node routes it).
    /// `query` is `None` where the route drops the query from the cache key: every query
    /// shares the object, so an embargoed URL's own parameters cannot tell them apart.
    pub fn embargoed(
        &self,
        same_site: &dyn Fn(&str) -> bool,
        path: &str,
        query: Option<&str>,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        self.matching(same_site, path, query, &|rule| now_ms < rule.at)
    }

    /// The first rule covering the request that `and` also holds for.
    fn matching(
        &self,
        same_site: &dyn Fn(&str) -> bool,
        path: &str,
        query: Option<&str>,
        and: &dyn Fn(&Rule) -> bool,
    ) -> Option<Arc<str>> {
        let matcher = self.matcher.load();
        if matcher.is_empty() {
            return None;
        }
        let path = loose(path);
        let pairs = query.map(query_pairs);
        let holds = |rule: &Rule| {
            and(rule)
                && pairs
                    .as_ref()
                    .is_none_or(|pairs| rule.query.iter().all(|p| pairs.contains(p)))
                && same_site(&rule.host)
        };
        if let Some(rule) = matcher
            .exact
            .get(&path)
            .and_then(|rules| rules.iter().find(|r| holds(r)))
        {
            return Some(rule.id.clone());
        }
        matcher
            .prefixes
            .iter()
            .find(|(prefix, whole_segments, rule)| {
                covers(prefix, *whole_segments, &path) && holds(rule)
            })
            .map(|(_, _, rule)| rule.id.clone())
    }

    /// Adds a release, or changes one with the same id (set by fleet operation `seq`, if
    /// any), issued at `issued_ms`. A change issued after the release's time is refused (its
    /// content is out); one issued before holds, even where it arrives late (this node was
    /// away, and may have let the content out meanwhile). The same release given again (the
    /// bus's copy of one the admin API scheduled, a replay) is "unchanged": it keeps its warm
    /// progress and its warmed copies. The release it replaces, if any, is returned too.
    pub fn schedule(
        &self,
        spec: Spec,
        seq: Option<u64>,
        issued_ms: u64,
        now_ms: u64,
    ) -> Result<(&'static str, Option<Spec>), String> {
        let checked = spec.check()?;
        let id = spec.id.clone();
        let (what, before) = {
            let mut entries = self.lock();
            // A release a day past its time is history: the id, used again, names a new one.
            // Judged by when the new one was issued, so that every node judges it alike.
            if entries.get(&spec.id).is_some_and(|e| {
                e.state != State::Pending && e.at_ms.saturating_add(HISTORY_MS) <= issued_ms
            }) {
                entries.remove(&spec.id);
            }
            let what = match entries.get_mut(&spec.id) {
                Some(e) if e.state != State::Cancelled && e.spec == spec => {
                    e.seq = seq.or(e.seq);
                    "unchanged"
                }
                Some(e) if e.at_ms <= issued_ms && e.state != State::Cancelled => {
                    return Err(late(&spec.id, &e.spec.at));
                }
                Some(_) => "changed",
                None => "scheduled",
            };
            if what == "unchanged" {
                drop(entries);
                self.saved();
                return Ok((what, None));
            }
            prune(&mut entries, now_ms);
            // Changed: it warms again (its list, or what it holds back, may differ).
            self.warm.reset(&spec.id, std::time::Instant::now());
            let before = entries.insert(
                spec.id.clone(),
                Entry {
                    spec,
                    at_ms: checked.at_ms,
                    state: State::Pending,
                    done_ms: None,
                    seq,
                    warm_at_release: None,
                },
            );
            (what, before.map(|e| e.spec))
        };
        self.retiring().remove(&id);
        self.saved();
        Ok((what, before))
    }

    /// Cancels a release, issued at `issued_ms` (before its time, as for a change): its
    /// embargo lifts and nothing of it is done. The release cancelled is returned (what it
    /// warmed must go: see [`call_off`]).
    pub fn cancel(&self, id: &str, issued_ms: u64, now_ms: u64) -> Result<Spec, String> {
        let spec = {
            let mut entries = self.lock();
            let entry = entries
                .get_mut(id)
                .ok_or_else(|| format!("no release {id}"))?;
            if entry.state == State::Cancelled {
                return Err(format!("release {id} is cancelled already"));
            }
            if entry.at_ms <= issued_ms {
                return Err(late(id, &entry.spec.at));
            }
            entry.state = State::Cancelled;
            entry.done_ms = Some(now_ms);
            entry.spec.clone()
        };
        self.retiring().remove(id);
        self.saved();
        Ok(spec)
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

    /// Marks a release done (its purges applied), unless it was changed or cancelled while
    /// they ran (`at_ms` is the time it was flipped for), with its warm list as it stood.
    pub fn released(&self, id: &str, at_ms: u64, now_ms: u64) {
        {
            let mut entries = self.lock();
            match entries.get_mut(id) {
                Some(entry) if entry.state == State::Pending && entry.at_ms == at_ms => {
                    entry.state = State::Released;
                    entry.done_ms = Some(now_ms);
                    if !entry.spec.warm.is_empty() {
                        entry.warm_at_release = Some(self.warm.outcome(id, &entry.spec.warm));
                    }
                }
                _ => return,
            }
        }
        self.saved();
    }

    fn retiring(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.retiring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts calling off (or changing) pending release `id`, issued at `issued_ms`: its
    /// embargo still holds, but no warm fetch of it is stored any more, so what it warmed can
    /// be dropped before the embargo lifts ([`Book::cancel`] and [`Book::schedule`] end it).
    /// Its spec, or why it cannot be called off.
    pub fn retire(&self, id: &str, issued_ms: u64) -> Result<Spec, String> {
        let spec = {
            let entries = self.lock();
            let entry = entries.get(id).ok_or_else(|| format!("no release {id}"))?;
            if entry.state == State::Cancelled {
                return Err(format!("release {id} is cancelled already"));
            }
            if entry.at_ms <= issued_ms {
                return Err(late(id, &entry.spec.at));
            }
            entry.spec.clone()
        };
        self.retiring().insert(id.to_owned());
        self.rebuild();
        Ok(spec)
    }

    /// Ends [`Book::retire`] without a change: the release holds as it was.
    pub fn keep(&self, id: &str) {
        if self.retiring().remove(id) {
            self.rebuild();
        }
    }

    /// Whether a warm fetch for this request may be stored: a pending release (not being
    /// called off) covers it, whatever the time. A warm fetch passes the origin's own embargo;
    /// what no release here holds back must not be kept (this node is not in the release's
    /// scope, or it was cancelled while the fetch ran).
    pub fn warm_covered(
        &self,
        same_site: &dyn Fn(&str) -> bool,
        path: &str,
        query: Option<&str>,
    ) -> bool {
        self.matching(same_site, path, query, &|rule| rule.warm_ok)
            .is_some()
    }

    /// The fleet's releases this node holds, for its heartbeat: pending ones first, then the
    /// latest; bounded (a heartbeat is one small message).
    pub fn beats(&self) -> Vec<Beat> {
        let entries = self.list();
        let mut fleet: Vec<&Entry> = entries.iter().filter(|e| e.seq.is_some()).collect();
        fleet.sort_by_key(|e| (e.state != State::Pending, std::cmp::Reverse(e.at_ms)));
        fleet
            .into_iter()
            .take(BEAT_RELEASES)
            .map(|e| {
                let warm = match e.state {
                    State::Pending => Some(self.warm.outcome(&e.spec.id, &e.spec.warm)),
                    State::Released => e.warm_at_release.clone(),
                    State::Cancelled => None,
                }
                .unwrap_or_default();
                Beat {
                    id: e.spec.id.clone(),
                    seq: e.seq,
                    state: e.state,
                    warm_total: warm.total,
                    warmed: warm.warmed,
                    missing: warm
                        .missing
                        .into_iter()
                        .take(BEAT_MISSING)
                        .map(|url| shortened(url, BEAT_URL_BYTES))
                        .collect(),
                }
            })
            .collect()
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
        let retiring = self.retiring();
        let mut matcher = Matcher::default();
        let mut pending = 0;
        for entry in entries.values().filter(|e| e.state == State::Pending) {
            pending += 1;
            let checked = match entry.spec.check() {
                Ok(checked) => checked,
                Err(e) => {
                    // Kept by an older version that took it: it holds nothing back now.
                    tracing::error!(
                        "release {}: holds nothing back: {e}; cancel it and issue it again",
                        entry.spec.id
                    );
                    continue;
                }
            };
            let id: Arc<str> = Arc::from(entry.spec.id.as_str());
            let warm_ok = !retiring.contains(&entry.spec.id);
            let rule = |host: String, query: Vec<(String, String)>| Rule {
                host,
                query,
                id: id.clone(),
                at: entry.at_ms,
                warm_ok,
            };
            for (host, path, query) in checked.urls {
                matcher
                    .exact
                    .entry(path)
                    .or_default()
                    .push(rule(host, query));
            }
            if let Some((host, prefix, whole_segments)) = checked.prefix {
                matcher
                    .prefixes
                    .push((prefix, whole_segments, rule(host, Vec::new())));
            }
        }
        crate::metrics::METRICS.releases_pending(pending);
        self.matcher.store(Arc::new(matcher));
    }

    /// Writes the releases to the state dir, durably (see `fleet::state::write_durably`).
    /// Releases change rarely (an editor's schedule), so this runs where they change.
    fn store(&self) {
        let Some(dir) = self.state_dir.get() else {
            return;
        };
        let _storing = self
            .storing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = serde_json::to_vec_pretty(&*self.lock()).unwrap_or_default();
        if let Err(e) = crate::fleet::state::write_durably(dir, FILE, &bytes) {
            tracing::error!(
                "release: cannot keep the releases in {}: {e} (a restart would forget them \
                 until the fleet replays them)",
                dir.display()
            );
        }
    }
}

/// Schedules (or changes) `spec` on this node (fleet operation `seq`, issued at `issued_ms`),
/// and drops what the cache holds of the content it embargoes: a copy stored before the
/// release was known (an old draft, a test page) must not be what readers get when it is out.
/// A change first drops what the release held before, while its embargo still holds: a URL it
/// no longer holds back must not come out as the copy warmed past the origin's embargo. The
/// time check of the embargo keeps everything else. Copies are named as the routes of
/// `snapshot` key them (`query = "drop"` and `"sort"`), like any purge.
pub async fn hold(
    cache: &crate::cache::EdgeCache,
    snapshot: &crate::snapshot::Snapshot,
    spec: Spec,
    seq: Option<u64>,
    issued_ms: u64,
) -> Result<&'static str, String> {
    spec.check()?;
    let (book, id) = (cache.releases, spec.id.clone());
    let changed = book
        .get(&id)
        .is_some_and(|e| e.state != State::Cancelled && e.spec != spec);
    if changed {
        let before = book.retire(&id, issued_ms)?;
        drop_copies(cache, snapshot, &before).await;
    }
    // Its warming waits until the drafts are gone: a copy fetched while they are dropped
    // would be dropped with them (the embargo is on from `schedule` already).
    book.warm.pause(&id);
    let what = match book.schedule(spec.clone(), seq, issued_ms, now_ms()) {
        Ok((what, _)) if what != "unchanged" => what,
        // Held already as it is: what it warmed is no draft. Or refused.
        done => {
            book.warm.resume(&id);
            book.keep(&id);
            return done.map(|(what, _)| what);
        }
    };
    drop_copies(cache, snapshot, &spec).await;
    book.warm.resume(&id);
    Ok(what)
}

/// Cancels release `id` on this node (issued at `issued_ms`) and drops what it warmed, first,
/// while its embargo still holds: fetched past the origin's own embargo, it must not come out
/// because the release does not. (A warm fetch still running when the copies are dropped is not
/// stored: the purge fences fills in flight, and a release being called off stores none.)
pub async fn call_off(
    cache: &crate::cache::EdgeCache,
    snapshot: &crate::snapshot::Snapshot,
    id: &str,
    issued_ms: u64,
) -> Result<(), String> {
    let spec = cache.releases.retire(id, issued_ms)?;
    drop_copies(cache, snapshot, &spec).await;
    cache.releases.cancel(id, issued_ms, now_ms()).map(|_| ())
}

/// Drops every copy of what `spec` embargoes (its URLs, its prefix, its warm list), on this
/// node.
async fn drop_copies(
    cache: &crate::cache::EdgeCache,
    snapshot: &crate::snapshot::Snapshot,
    spec: &Spec,
) {
    let urls: Vec<String> = spec
        .embargo
        .urls
        .iter()
        .chain(&spec.warm)
        .cloned()
        .collect();
    let request = |urls: Vec<String>, prefix: Option<String>| PurgeRequest {
        urls,
        prefix,
        tags: Vec::new(),
        soft: false,
    };
    let mut requests = Vec::new();
    if !urls.is_empty() {
        requests.push(request(urls, None));
    }
    if let Some(prefix) = &spec.embargo.prefix {
        requests.push(request(Vec::new(), Some(prefix.clone())));
    }
    for request in requests {
        match snapshot.purge_selector(&request) {
            // Every node holding the release drops its own: a shield's copy fetched after it
            // is no older draft, and an edge must take it.
            Ok(selector) => {
                cache.purge_here(&selector, false).await;
            }
            Err(e) => tracing::warn!("release {}: cannot drop its copies: {e}", spec.id),
        }
    }
}

/// Forgets releases out or cancelled more than a day after their time (housekeeping; an id
/// used again is judged by [`Book::schedule`] itself).
fn prune(entries: &mut BTreeMap<String, Entry>, now_ms: u64) {
    entries.retain(|_, e| e.state == State::Pending || now_ms < e.at_ms.saturating_add(HISTORY_MS));
}

/// `text` cut to at most `max` bytes (at a character), marked `…` where it was cut.
fn shortened(text: String, max: usize) -> String {
    match crate::logging::within(&text, max) {
        whole if whole.len() == text.len() => text,
        cut => format!("{cut}…"),
    }
}

/// What a change or cancel issued after the release's time gets, everywhere alike.
fn late(id: &str, at: &str) -> String {
    format!("release {id} came out at {at}: {LATE}")
}

/// Marks the refusal of a change or cancel issued after the release's time.
pub const LATE: &str = "a change after its time cannot call it back";

/// The response header by which an origin puts a response under embargo on its own: stored,
/// but answered with the embargo answer until the HTTP-date it gives (never sent to readers).
pub const ORIGIN_EMBARGO: &str = "onair-embargo-until";

/// Whether a stored or arriving response is under its origin's embargo at `now`. The time is
/// an HTTP-date, or RFC 3339 (what a CMS may write instead). A value that is neither holds the
/// response back for good (logged): the origin meant to hide it, and the header never reaches
/// readers, so a mistake there must not let it out unseen. An empty value or `0` is none.
pub fn origin_embargo(headers: &http::HeaderMap, now: SystemTime) -> bool {
    let Some(value) = headers.get(ORIGIN_EMBARGO) else {
        return false;
    };
    let text = value.to_str().unwrap_or("\u{0}").trim();
    if text.is_empty() || text == "0" {
        // A template with no date in it, or `0` as in `Expires: 0`: no embargo.
        return false;
    }
    let until = httpdate::parse_http_date(text).ok().or_else(|| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(SystemTime::from)
    });
    match until {
        Some(until) => now < until,
        None => {
            static LOGGED: crate::logging::OncePerSecond = crate::logging::OncePerSecond::new();
            if LOGGED.due() {
                tracing::warn!(
                    "release: an origin sent {ORIGIN_EMBARGO}: {value:?}, which is no \
                     HTTP-date: the response is held back until the origin sends a date"
                );
            }
            true
        }
    }
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
                urls: vec![
                    "https://portal.example.vn/vankien/nghi-quyet".into(),
                    "https://portal.example.vn/tin-tức".into(),
                    "https://portal.example.vn/article.php?id=5".into(),
                ],
                prefix: Some("https://portal.example.vn/media/nq/".into()),
            },
            warm: vec![],
            purge: Some(PurgeSpec {
                tags: vec!["home".into()],
                ..PurgeSpec::default()
            }),
        }
    }

    /// The portal's site: its two names; anything else is another site.
    fn portal(host: &str) -> bool {
        matches!(host, "portal.example.vn" | "www.portal.example.vn")
    }

    // 2027-01-20T10:00:00+07:00
    const AT: u64 = 1_800_414_000_000;

    #[test]
    fn an_embargo_holds_until_its_time_on_every_spelling_of_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::default();
        book.open(dir.path());
        book.schedule(
            spec("vk", "2027-01-20T10:00:00+07:00"),
            None,
            AT - 1000,
            AT - 1000,
        )
        .unwrap();
        let held = |path: &str, query: Option<&str>| {
            book.embargoed(&portal, path, Some(query.unwrap_or("")), AT - 1)
        };
        for (path, query) in [
            ("/vankien/nghi-quyet", None),
            ("/vankien/nghi-quyet", Some("utm=x")),
            ("/vankien/nghi-quyet/", None),
            ("/VanKien/Nghi-Quyet", None),
            ("/vankien/nghi-quyet;jsessionid=1", None),
            ("/vankien%2Fnghi-quyet", None),
            ("/tin-t%E1%BB%A9c", None),
            ("/article.php", Some("id=5")),
            ("/article.php", Some("x=1&id=5")),
            ("/media/nq/1.jpg", None),
            ("/media/nq", None),
        ] {
            assert_eq!(held(path, query).as_deref(), Some("vk"), "{path}?{query:?}");
        }
        for (path, query) in [
            ("/vankien/other", None),
            ("/article.php", Some("id=6")),
            ("/article.php", None),
        ] {
            assert!(held(path, query).is_none(), "{path}?{query:?}");
        }
        // Another site's page of the same path is not held.
        assert!(book
            .embargoed(&|_| false, "/vankien/nghi-quyet", Some(""), AT - 1)
            .is_none());
        assert!(
            book.embargoed(&portal, "/vankien/nghi-quyet", Some(""), AT)
                .is_none(),
            "lifted at its time exactly"
        );
        // A restart keeps it.
        let again = Book::default();
        again.open(dir.path());
        assert!(again
            .embargoed(&portal, "/vankien/nghi-quyet", Some(""), AT - 1)
            .is_some());
        assert_eq!(again.due(AT).len(), 1);
        assert_eq!(again.next_at(), Some(AT));
        // Released: out for good, and not changed any more.
        again.released("vk", AT, AT);
        assert!(again
            .schedule(spec("vk", "2027-01-21T10:00:00+07:00"), None, AT, AT)
            .is_err());
        assert!(again.due(AT + 1).is_empty());
    }

    #[test]
    fn changes_are_ordered_by_when_they_were_issued_against_the_time() {
        let book = Book::default();
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
            .unwrap();
        let due = book.due(AT);
        assert_eq!(due.len(), 1);
        // Moved an hour later, issued before the time, applied while the flip ran: kept.
        book.schedule(
            spec("vk", "2027-01-20T11:00:00+07:00"),
            None,
            AT - 1,
            AT + 500,
        )
        .unwrap();
        book.released("vk", due[0].at_ms, AT);
        assert!(book
            .embargoed(&portal, "/vankien/nghi-quyet", Some(""), AT + 1)
            .is_some());
        assert_eq!(book.get("vk").unwrap().state, State::Pending);
        // Issued after the (new) time: refused, on every node alike, flipped or not.
        let late = AT + 3_600_000 + 500;
        let e = book
            .schedule(spec("vk", "2027-01-21T10:00:00+07:00"), None, late, late)
            .unwrap_err();
        assert!(e.contains("after its time"), "{e}");
        assert!(book.cancel("vk", late, late).is_err());
        // A node away across the time flips at once when back, then applies a change issued
        // before the time: held back again, not left out on this node alone.
        let away = Book::default();
        away.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
            .unwrap();
        away.released("vk", AT, AT + 60_000);
        away.schedule(
            spec("vk", "2027-01-20T12:00:00+07:00"),
            None,
            AT - 1,
            AT + 60_001,
        )
        .unwrap();
        assert!(away
            .embargoed(&portal, "/vankien/nghi-quyet", Some(""), AT + 60_002)
            .is_some());
        // The same release again (the bus's copy of the admin API's, a replay) is unchanged,
        // even after its time, and takes the operation's seq.
        assert_eq!(
            away.schedule(
                spec("vk", "2027-01-20T12:00:00+07:00"),
                Some(9),
                AT + 9_000_000,
                0
            ),
            Ok(("unchanged", None))
        );
        assert_eq!(away.get("vk").unwrap().seq, Some(9));
    }

    #[test]
    fn warm_urls_are_held_back_and_spellings_of_queries_and_paths_too() {
        let book = Book::default();
        let mut release = spec("vk", "2027-01-20T10:00:00+07:00");
        release.warm = vec![
            "https://portal.example.vn/media/nq.jpg".into(),
            "https://portal.example.vn/media/nq@2x.jpg".into(),
        ];
        book.schedule(release, None, 0, 0).unwrap();
        let held = |path: &str, query: Option<&str>| book.embargoed(&portal, path, query, AT - 1);
        for (path, query) in [
            // The warm list is under the embargo: it was fetched past the origin's own.
            ("/media/nq.jpg", Some("")),
            ("/media/nq%402x.jpg", Some("")),
            ("/Media/NQ%40%32x.JPG", Some("")),
            // The query as an application reads it.
            ("/article.php", Some("id=%35")),
            ("/article.php", Some("i%64=5")),
            ("/article.php", Some("ID=5&x=1")),
            ("/article.php", Some("x=1;id=5")),
            // Where the route drops the query, any query shares the object.
            ("/article.php", None),
            // The prefix by whole segments.
            ("/media/nq", Some("")),
            ("/media/nq/a/b", Some("")),
        ] {
            assert_eq!(held(path, query).as_deref(), Some("vk"), "{path}?{query:?}");
        }
        for (path, query) in [
            ("/media/nq-old/1.jpg", Some("")),
            ("/media/nqx", Some("")),
            ("/article.php", Some("id=55")),
        ] {
            assert!(held(path, query).is_none(), "{path}?{query:?}");
        }
        // A prefix given without its trailing slash is a plain string prefix.
        let mut loose_prefix = spec("lp", "2027-01-20T10:00:00+07:00");
        loose_prefix.embargo.prefix = Some("https://portal.example.vn/live/nq-".into());
        book.schedule(loose_prefix, None, 0, 0).unwrap();
        assert!(held("/live/nq-2027", Some("")).is_some());
        // The whole site is no prefix: refused.
        for whole in ["https://portal.example.vn/", "https://portal.example.vn"] {
            let mut everything = spec("all", "2027-01-20T10:00:00+07:00");
            everything.embargo.prefix = Some(whole.into());
            let e = everything.check().unwrap_err();
            assert!(e.contains("whole site"), "{e}");
        }
    }

    #[test]
    fn concurrent_changes_leave_the_latest_state_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let book = Arc::new(Book::default());
        book.open(dir.path());
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let book = book.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let id = format!("r{t}-{i}");
                        book.schedule(spec(&id, "2027-01-20T10:00:00+07:00"), None, 0, 0)
                            .unwrap();
                        if i % 3 == 0 {
                            book.cancel(&id, 0, 0).unwrap();
                        }
                    }
                })
            })
            .collect();
        // Meanwhile the file is always whole (a reader is what a restart is).
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (done, path) = (done.clone(), dir.path().join(FILE));
            std::thread::spawn(move || {
                let mut torn = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(bytes) = std::fs::read(&path) {
                        let whole = serde_json::from_slice::<BTreeMap<String, Entry>>(&bytes);
                        torn += usize::from(whole.is_err());
                    }
                }
                torn
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reader.join().unwrap(), 0, "a torn file was seen");
        let again = Book::default();
        assert!(!again.open(dir.path()), "the file is whole");
        let states = |b: &Book| -> Vec<(String, State)> {
            b.list().into_iter().map(|e| (e.spec.id, e.state)).collect()
        };
        assert_eq!(states(&again).len(), 200);
        assert_eq!(states(&again), states(&book));
    }

    #[test]
    fn a_release_being_called_off_holds_but_stores_no_warm_fetch() {
        let book = Book::default();
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
            .unwrap();
        let path = "/vankien/nghi-quyet";
        assert!(book.warm_covered(&portal, path, Some("")));
        assert!(!book.warm_covered(&portal, "/elsewhere", Some("")));
        book.retire("vk", 1).unwrap();
        assert!(book.embargoed(&portal, path, Some(""), AT - 1).is_some());
        assert!(!book.warm_covered(&portal, path, Some("")));
        // Kept after all (a change refused): warm fetches are stored again.
        book.keep("vk");
        assert!(book.warm_covered(&portal, path, Some("")));
        book.retire("vk", 1).unwrap();
        book.cancel("vk", 1, 1).unwrap();
        assert!(book.embargoed(&portal, path, Some(""), AT - 1).is_none());
        // Too late to call off, on every node alike; the refusal says so.
        let out = Book::default();
        out.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
            .unwrap();
        assert!(out.retire("vk", AT).unwrap_err().contains(LATE));
        assert!(out.cancel("vk", AT, AT).unwrap_err().contains(LATE));
    }

    #[test]
    fn history_is_forgotten_by_the_release_time_so_an_id_is_new_everywhere_alike() {
        let day = HISTORY_MS;
        let (early, late) = (Book::default(), Book::default());
        for book in [&early, &late] {
            book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
                .unwrap();
        }
        // One released at the time, one two hours later (it was away).
        early.released("vk", AT, AT);
        late.released("vk", AT, AT + 7_200_000);
        // The id used again a day and an hour after the time: new on both.
        let again = AT + day + 3_600_000;
        for book in [&early, &late] {
            let reused = spec("vk", "2027-01-22T10:00:00+07:00");
            assert_eq!(
                book.schedule(reused, None, again, again)
                    .map(|(what, _)| what),
                Ok("scheduled")
            );
        }
        // The home page cannot be held back.
        let mut home = spec("h", "2027-01-20T10:00:00+07:00");
        home.warm = vec!["https://portal.example.vn/".into()];
        assert!(home.check().unwrap_err().contains("home page"));
    }

    #[test]
    fn a_heartbeats_releases_stay_small_whatever_the_urls() {
        let book = Book::default();
        let long = format!("https://portal.example.vn/vk/{}", "ả".repeat(3000));
        for i in 0..=BEAT_RELEASES as u64 {
            let mut release = spec(&format!("r{i}"), "2027-01-20T10:00:00+07:00");
            release.warm = (0..=BEAT_MISSING).map(|j| format!("{long}/{j}")).collect();
            book.schedule(release, Some(i), 0, 0).unwrap();
        }
        let beats = book.beats();
        assert_eq!(beats.len(), BEAT_RELEASES);
        assert!(beats.iter().all(|b| b.missing.len() == BEAT_MISSING));
        let size = serde_json::to_vec(&beats).unwrap().len();
        assert!(size < 24 << 10, "{size} bytes");
    }

    #[test]
    fn an_origin_embargo_date_that_cannot_be_read_holds_the_response_back() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(AT);
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(ORIGIN_EMBARGO, value.parse().unwrap());
            headers
        };
        assert!(origin_embargo(&with("Wed, 20 Jan 2027 03:00:01 GMT"), now));
        assert!(!origin_embargo(&with("Wed, 20 Jan 2027 03:00:00 GMT"), now));
        assert!(origin_embargo(&with("2027-01-20T10:00:01+07:00"), now));
        assert!(!origin_embargo(&with("2027-01-20T09:59:59+07:00"), now));
        assert!(origin_embargo(&with("tomorrow at ten"), now));
        assert!(!origin_embargo(&with(""), now));
        assert!(!origin_embargo(&with("0"), now));
        assert!(!origin_embargo(&http::HeaderMap::new(), now));
    }

    #[test]
    fn cancel_reschedule_and_bad_releases() {
        let book = Book::default();
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), None, 0, 0)
            .unwrap();
        assert_eq!(
            book.schedule(spec("vk", "2027-01-20T11:00:00+07:00"), None, 0, 0),
            Ok(("changed", Some(spec("vk", "2027-01-20T10:00:00+07:00"))))
        );
        assert!(book
            .embargoed(&portal, "/vankien/nghi-quyet", Some(""), AT + 1)
            .is_some());
        book.cancel("vk", 1, 1).unwrap();
        assert!(book.holds_nothing());
        assert!(book.due(u64::MAX).is_empty());
        for (bad, why) in [
            (spec("a b", "2027-01-20T10:00:00+07:00"), "release id"),
            (spec("x", "2027-01-20 10:00"), "RFC 3339"),
            (spec("x", "2027-01-20T10:00:00"), "RFC 3339"),
        ] {
            let e = book.schedule(bad, None, 0, 0).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut none = spec("x", "2027-01-20T10:00:00Z");
        none.embargo = Embargo::default();
        assert!(book
            .schedule(none, None, 0, 0)
            .unwrap_err()
            .contains("embargo"));
        // Issued for a time long gone: a typo, refused where it is issued.
        assert!(spec("x", "2020-01-20T10:00:00Z")
            .check_new(AT)
            .unwrap_err()
            .contains("past"));
        // Purges of several kinds at once.
        let mut both = spec("y", "2027-01-20T10:00:00Z");
        both.purge = Some(PurgeSpec {
            urls: vec!["https://portal.example.vn/".into()],
            tags: vec!["home".into()],
            ..PurgeSpec::default()
        });
        assert!(both.check().is_ok());
        assert_eq!(both.purge.unwrap().requests().len(), 2);
    }
}
