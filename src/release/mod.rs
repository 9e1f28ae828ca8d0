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
//! its host names, on any port or scheme), its path in any case, with or without a trailing
//! slash, `;parameters` or an encoded `/` (`%2F`), and any query that holds the URL's own query
//! parameters (`/a?utm=x` must not fetch `/a` early under another cache key). Holding back a
//! little too much before the time is the safe side.

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
    /// Embargoed URLs: host (no port), loose path, and the query parameters they name.
    pub urls: Vec<(String, String, QueryPairs)>,
    /// The embargoed prefix: host (no port), loose path prefix.
    pub prefix: Option<(String, String)>,
    /// The URLs as the cache stores them (`host[:port]/path?query`), to drop copies of them.
    pub targets: Vec<String>,
    pub prefix_target: Option<String>,
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
        let mut targets = Vec::new();
        for url in &self.embargo.urls {
            let target = target_of_url(url).map_err(|e| format!("\"embargo\": {e}"))?;
            let (host, path, query) = split_target(&target);
            urls.push((host, loose(path), query_pairs(query)));
            targets.push(target);
        }
        let (prefix, prefix_target) = match &self.embargo.prefix {
            Some(p) => {
                let target = target_of_url(p).map_err(|e| format!("\"embargo\": {e}"))?;
                let (host, path, _) = split_target(&target);
                (Some((host, loose(path))), Some(target))
            }
            None => (None, None),
        };
        for url in &self.warm {
            target_of_url(url).map_err(|e| format!("\"warm\": {e}"))?;
        }
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
            targets,
            prefix_target,
        })
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

/// A path as loosely as an origin might read it: any case, `%2F` as `/`, no `;parameters`, no
/// empty segments, no trailing slash.
pub fn loose(path: &str) -> String {
    let decoded = path.replace("%2F", "/").replace("%2f", "/");
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

/// `a=1&b=2` as pairs.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
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
}

/// Released and cancelled releases stay listed this long.
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
}

/// What the pending releases hold back: loose path → rules, and loose prefixes.
#[derive(Default)]
struct Matcher {
    exact: HashMap<String, Vec<Rule>>,
    prefixes: Vec<(String, Rule)>,
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
    /// Where each release's warm list stands.
    pub warm: warm::Progress,
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
    pub fn embargoed(
        &self,
        same_site: &dyn Fn(&str) -> bool,
        path: &str,
        query: Option<&str>,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        let matcher = self.matcher.load();
        if matcher.is_empty() {
            return None;
        }
        let path = loose(path);
        let pairs = query_pairs(query.unwrap_or(""));
        let holds = |rule: &Rule| {
            now_ms < rule.at
                && rule.query.iter().all(|p| pairs.contains(p))
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
            .find(|(prefix, rule)| path.starts_with(prefix.as_str()) && holds(rule))
            .map(|(_, rule)| rule.id.clone())
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
            // Changed: it warms again (its list, or what it holds back, may differ).
            self.warm.reset(&spec.id);
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

    /// Marks a release done (its purges applied), unless it was changed or cancelled while
    /// they ran (`at_ms` is the time it was flipped for).
    pub fn released(&self, id: &str, at_ms: u64, now_ms: u64) {
        {
            let mut entries = self.lock();
            match entries.get_mut(id) {
                Some(entry) if entry.state == State::Pending && entry.at_ms == at_ms => {
                    entry.state = State::Released;
                    entry.done_ms = Some(now_ms);
                }
                _ => return,
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
            let rule = |host: String, query: Vec<(String, String)>| Rule {
                host,
                query,
                id: id.clone(),
                at: entry.at_ms,
            };
            for (host, path, query) in checked.urls {
                matcher
                    .exact
                    .entry(path)
                    .or_default()
                    .push(rule(host, query));
            }
            if let Some((host, prefix)) = checked.prefix {
                matcher.prefixes.push((prefix, rule(host, Vec::new())));
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

/// Schedules (or changes) `spec` on this node, and drops what the cache holds of the content it
/// embargoes: a copy stored before the release was known (an old draft, a test page) must not
/// be what readers get when it is out. The time check of the embargo keeps everything else.
pub async fn hold(cache: &crate::cache::EdgeCache, spec: Spec) -> Result<&'static str, String> {
    let checked = spec.check()?;
    // Its warming waits until the drafts are gone: a copy fetched while they are dropped
    // would be dropped with them (the embargo is on from `schedule` already).
    let id = spec.id.clone();
    cache.releases.warm.pause(&id);
    let what = match cache.releases.schedule(spec, now_ms()) {
        Ok(what) => what,
        Err(e) => {
            cache.releases.warm.resume(&id);
            return Err(e);
        }
    };
    let mut selectors = Vec::new();
    if !checked.targets.is_empty() {
        selectors.push(crate::cache::purge::Selector::Urls(
            checked.targets.into_iter().collect(),
        ));
    }
    if let Some(prefix) = checked.prefix_target {
        selectors.push(crate::cache::purge::Selector::Prefix(prefix));
    }
    for selector in selectors {
        // Every node holding the release drops its own: a shield's copy fetched after it is
        // no older draft, and an edge must take it.
        cache.purge_here(&selector, false).await;
    }
    cache.releases.warm.resume(&id);
    Ok(what)
}

/// Forgets releases done more than a day ago.
fn prune(entries: &mut BTreeMap<String, Entry>, now_ms: u64) {
    entries.retain(|_, e| {
        e.done_ms
            .is_none_or(|done| now_ms.saturating_sub(done) < HISTORY_MS)
    });
}

/// The response header by which an origin puts a response under embargo on its own: stored,
/// but answered with the embargo answer until the HTTP-date it gives (never sent to readers).
pub const ORIGIN_EMBARGO: &str = "onair-embargo-until";

/// Whether a stored or arriving response is under its origin's embargo at `now`.
pub fn origin_embargo(headers: &http::HeaderMap, now: SystemTime) -> bool {
    headers
        .get(ORIGIN_EMBARGO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .is_some_and(|until| now < until)
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
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), AT - 1000)
            .unwrap();
        let held = |path: &str, query: Option<&str>| book.embargoed(&portal, path, query, AT - 1);
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
            .embargoed(&|_| false, "/vankien/nghi-quyet", None, AT - 1)
            .is_none());
        assert!(
            book.embargoed(&portal, "/vankien/nghi-quyet", None, AT)
                .is_none(),
            "lifted at its time exactly"
        );
        // A restart keeps it.
        let again = Book::default();
        again.open(dir.path());
        assert!(again
            .embargoed(&portal, "/vankien/nghi-quyet", None, AT - 1)
            .is_some());
        assert_eq!(again.due(AT).len(), 1);
        assert_eq!(again.next_at(), Some(AT));
        // Released: out for good, and not changed any more.
        again.released("vk", AT, AT);
        assert!(again
            .schedule(spec("vk", "2027-01-21T10:00:00+07:00"), AT)
            .is_err());
        assert!(again.due(AT + 1).is_empty());
    }

    #[test]
    fn a_change_while_the_flip_runs_is_not_lost() {
        let book = Book::default();
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), 0)
            .unwrap();
        let due = book.due(AT);
        assert_eq!(due.len(), 1);
        // Moved an hour later while the flip applied the purges.
        book.schedule(spec("vk", "2027-01-20T11:00:00+07:00"), AT)
            .unwrap();
        book.released("vk", due[0].at_ms, AT);
        assert!(book
            .embargoed(&portal, "/vankien/nghi-quyet", None, AT + 1)
            .is_some());
        assert_eq!(book.get("vk").unwrap().state, State::Pending);
    }

    #[test]
    fn cancel_reschedule_and_bad_releases() {
        let book = Book::default();
        book.schedule(spec("vk", "2027-01-20T10:00:00+07:00"), 0)
            .unwrap();
        assert_eq!(
            book.schedule(spec("vk", "2027-01-20T11:00:00+07:00"), 0),
            Ok("changed")
        );
        assert!(book
            .embargoed(&portal, "/vankien/nghi-quyet", None, AT + 1)
            .is_some());
        book.cancel("vk", 1).unwrap();
        assert!(book.holds_nothing());
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
