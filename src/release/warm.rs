//! Prewarm: from `release.warm_lead` before a release's time, each node fetches the release's
//! `warm` list through itself, so that the content is stored (memory and disk) on every tier
//! and kept back by the embargo until the time; at the time readers get cache hits.
//!
//! A warm fetch is an ordinary request to the node's own plain-HTTP listener with an
//! `Onair-Warm` header: the node's own per-process token (accepted from its own machine only:
//! loopback, or the address the listener is on), or the fleet's `release.warm_secret`. Only
//! such a request passes an embargo (and the rate limits and the attack-mode challenge, which
//! are for readers). An `https://` URL is fetched there too, with `Onair-Warm-Scheme: https`:
//! keyed, forwarded and answered as an https reader's request (and not redirected to HTTPS). An edge's warm fetch goes to its shield like any miss, carrying the secret, which
//! the shield accepts from its tiers (`protect.tiers`) only; the origin gets the secret too, to
//! let the fetch through its own embargo. Any other copy of the header is removed.
//!
//! A fetch that fails is tried again every [`RETRY`] until the release's time; what is still
//! missing then is kept with the release ([`Outcome`]) and shown by `GET /release/ID`, by
//! the node's heartbeat (so `GET /fleet/ops/SEQ` and `onair fleet wait SEQ` show it for the
//! release's operation) and by `onair_release_warm_objects{state}`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request header that marks a warm fetch.
pub const HEADER: &str = "onair-warm";
/// The scheme of the URL a warm fetch is for (`https`); never forwarded.
pub const SCHEME_HEADER: &str = "onair-warm-scheme";

/// How long after a failed warm fetch it is tried again.
pub const RETRY: Duration = Duration::from_secs(2);

/// How long after a release arrives (or changes) here its warming starts. The bus brings an
/// operation to every node within milliseconds, but not at once: an edge that warmed through a
/// shield not holding the release yet would have its copy dropped there with the release's
/// drafts when the release arrives, and asked of the origin again. A shield that gets the
/// release later than this still costs just that one more origin request per object.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Longest a warm fetch may take (a video segment on a slow origin).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// This process's own token: lets its own warm fetches past its embargo, and nothing else.
static TOKEN: LazyLock<String> = LazyLock::new(|| {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
});

/// Whether `req` is a warm fetch this node lets past its embargo: its own (`local`: from its
/// own machine, loopback or the very address it reached; with its token), or a tier's carrying
/// the fleet's secret.
pub fn recognized(req: &RequestHeader, local: bool, from_tier: bool, secret: Option<&str>) -> bool {
    let Some(value) = req.headers.get(HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let own = local && constant_eq(value, &TOKEN);
    own || ((from_tier || local) && secret.is_some_and(|s| constant_eq(value, s)))
}

/// Whether a (recognized) warm fetch is for an https URL: it comes through the plain listener,
/// and is keyed, forwarded and answered as an https reader's request.
pub fn for_https(req: &RequestHeader) -> bool {
    req.headers
        .get(SCHEME_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A release's warm list as it stood when it came out here (kept with the release).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub total: usize,
    pub warmed: usize,
    /// The URLs readers met unwarmed (their first reader went to the origin, or the shield).
    pub missing: Vec<String>,
}

/// Where each release's warm list stands (in memory: after a restart the node warms again,
/// mostly from its own disk).
#[derive(Default)]
pub struct Progress {
    releases: Mutex<HashMap<String, Warming>>,
    /// Releases whose warming waits (while their drafts are dropped: a copy fetched meanwhile
    /// would be dropped with them), with how many holds of each are under way.
    paused: Mutex<HashMap<String, usize>>,
    /// Bumped by every reset: a fetch started before one does not count after it.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Warming {
    generation: u64,
    /// Not before: see [`SETTLE`].
    start_after: Option<Instant>,
    done: HashSet<String>,
    running: HashSet<String>,
    /// Failed URLs and when they may be tried again.
    retry_at: HashMap<String, Instant>,
    failures: HashMap<String, String>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Warming>> {
        match self.releases.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn paused(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        match self.paused.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Holds `id`'s warming back until [`Progress::resume`].
    pub fn pause(&self, id: &str) {
        *self.paused().entry(id.to_owned()).or_default() += 1;
    }

    /// Ends one [`Progress::pause`]; warming goes on when the last one ends.
    pub fn resume(&self, id: &str) {
        let mut paused = self.paused();
        if let Some(count) = paused.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                paused.remove(id);
            }
        }
    }

    /// Up to `limit` URLs of `list` to fetch now (marked running), with the generation to
    /// give back to [`Progress::finished`].
    pub fn next(
        &self,
        id: &str,
        list: &[String],
        limit: usize,
        now: Instant,
    ) -> (u64, Vec<String>) {
        if self.paused().contains_key(id) {
            return (0, Vec::new());
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        let mut all = self.lock();
        let w = all.entry(id.to_owned()).or_insert_with(|| Warming {
            generation,
            ..Warming::default()
        });
        if w.start_after.is_some_and(|at| now < at) {
            return (w.generation, Vec::new());
        }
        let mut picked = Vec::new();
        for url in list {
            if picked.len() + w.running.len() >= limit {
                break;
            }
            let waiting = w.retry_at.get(url).is_some_and(|at| now < *at);
            if !w.done.contains(url) && !w.running.contains(url) && !waiting {
                w.running.insert(url.clone());
                picked.push(url.clone());
            }
        }
        (w.generation, picked)
    }

    /// The fetch of `url`, started in `generation`, ended.
    pub fn finished(&self, id: &str, generation: u64, url: &str, result: Result<(), String>) {
        let mut all = self.lock();
        let Some(w) = all.get_mut(id).filter(|w| w.generation == generation) else {
            // The release changed meanwhile: this fetch is of the old one.
            return;
        };
        w.running.remove(url);
        match result {
            Ok(()) => {
                w.done.insert(url.to_owned());
                w.retry_at.remove(url);
                w.failures.remove(url);
            }
            Err(e) => {
                w.retry_at.insert(url.to_owned(), Instant::now() + RETRY);
                w.failures.insert(url.to_owned(), e);
            }
        }
    }

    /// The release arrived or was changed: it warms again from the start, [`SETTLE`] from now.
    pub fn reset(&self, id: &str, now: Instant) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.lock().insert(
            id.to_owned(),
            Warming {
                generation,
                start_after: Some(now + SETTLE),
                ..Warming::default()
            },
        );
    }

    /// Where `list` stands now, for the record kept when the release comes out.
    pub fn outcome(&self, id: &str, list: &[String]) -> Outcome {
        let all = self.lock();
        let w = all.get(id);
        let missing: Vec<String> = list
            .iter()
            .filter(|u| !w.is_some_and(|w| w.done.contains(*u)))
            .cloned()
            .collect();
        Outcome {
            total: list.len(),
            warmed: list.len() - missing.len(),
            missing,
        }
    }

    /// `{"total", "warmed", "missing": [{url, error}]}` for `list`.
    pub fn report(&self, id: &str, list: &[String]) -> serde_json::Value {
        let all = self.lock();
        let w = all.get(id);
        let warmed = list
            .iter()
            .filter(|u| w.is_some_and(|w| w.done.contains(*u)))
            .count();
        let missing: Vec<serde_json::Value> = list
            .iter()
            .filter(|u| !w.is_some_and(|w| w.done.contains(*u)))
            .map(|u| {
                serde_json::json!({
                    "url": u,
                    "error": w.and_then(|w| w.failures.get(u)),
                })
            })
            .collect();
        serde_json::json!({ "total": list.len(), "warmed": warmed, "missing": missing })
    }

    /// (warmed, missing) over the given releases' lists.
    pub fn counts<'a>(
        &self,
        lists: impl Iterator<Item = (&'a str, &'a [String])>,
    ) -> (usize, usize) {
        let all = self.lock();
        let (mut warmed, mut missing) = (0, 0);
        for (id, list) in lists {
            let done = all
                .get(id)
                .map_or(0, |w| list.iter().filter(|u| w.done.contains(*u)).count());
            warmed += done;
            missing += list.len() - done;
        }
        (warmed, missing)
    }
}

/// Fetches `url` through this node's listener at `listen`, with `Onair-Warm: value`, reading
/// the whole answer (so that the cache stores all of it). An https URL is marked as such when
/// the node has `https_readers` (an HTTPS listener), so that it is stored as they will ask for
/// it. A 2xx or 3xx answer is a success.
pub async fn fetch(
    listen: SocketAddr,
    url: &str,
    value: &str,
    https_readers: bool,
) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    // Raw UTF-8 pasted from a browser goes as readers send it: percent-encoded.
    let path =
        crate::cache::purge::encode_non_ascii(uri.path_and_query().map_or("/", |p| p.as_str()));
    let scheme = if https_readers && uri.scheme_str() == Some("https") {
        format!("{SCHEME_HEADER}: https\r\n")
    } else {
        String::new()
    };
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(listen)
            .await
            .map_err(|e| format!("connect {listen}: {e}"))?;
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{HEADER}: {value}\r\n{scheme}\
             User-Agent: onair-warm\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut status = None;
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            if status.is_none() {
                answer.extend_from_slice(&buf[..n]);
                status = status_of(&answer);
                if answer.len() > 64 * 1024 && status.is_none() {
                    return Err("no status line".to_owned());
                }
            }
        }
        let status = status.ok_or_else(|| "no answer".to_owned())?;
        if (200..400).contains(&status) {
            Ok(status)
        } else {
            Err(format!("answered {status}"))
        }
    })
    .await
    .map_err(|_| format!("no whole answer within {FETCH_TIMEOUT:?}"))?
}

/// The status of an answer whose start is `bytes` (`HTTP/1.1 200 OK`).
fn status_of(bytes: &[u8]) -> Option<u16> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's own warm token.
pub fn token() -> &'static str {
    &TOKEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_token_or_the_fleets_secret_from_a_tier_pass() {
        let with = |value: &str| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header(HEADER, value).unwrap();
            req
        };
        // From this machine (loopback, or the address it reached), or from afar.
        let (local, far) = (true, false);
        let secret = Some("a-fleet-wide-warm-secret");
        assert!(recognized(&with(token()), local, false, None));
        assert!(
            !recognized(&with(token()), far, false, None),
            "a reader with a leaked token"
        );
        assert!(recognized(
            &with("a-fleet-wide-warm-secret"),
            far,
            true,
            secret
        ));
        assert!(!recognized(
            &with("a-fleet-wide-warm-secret"),
            far,
            false,
            secret
        ));
        assert!(!recognized(&with("guess"), local, true, secret));
        let plain = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!recognized(&plain, local, true, secret));
        let mut https = with(token());
        assert!(!for_https(&https));
        https.insert_header(SCHEME_HEADER, "HTTPS").unwrap();
        assert!(for_https(&https));
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
    }

    #[test]
    fn progress_retries_failures_later_and_reports_what_is_missing() {
        let p = Progress::default();
        let list = vec!["http://a/1".to_owned(), "http://a/2".to_owned()];
        let now = Instant::now();
        let (generation, first) = p.next("r", &list, 8, now);
        assert_eq!(first.len(), 2);
        assert!(
            p.next("r", &list, 8, now).1.is_empty(),
            "running ones are not picked again"
        );
        p.finished("r", generation, "http://a/1", Ok(()));
        p.finished("r", generation, "http://a/2", Err("answered 503".into()));
        assert!(
            p.next("r", &list, 8, Instant::now()).1.is_empty(),
            "a failure waits RETRY"
        );
        let report = p.report("r", &list);
        assert_eq!(report["warmed"], 1);
        assert_eq!(report["missing"][0]["error"], "answered 503");
        assert_eq!(p.counts([("r", list.as_slice())].into_iter()), (1, 1));
        assert_eq!(
            p.outcome("r", &list),
            Outcome {
                total: 2,
                warmed: 1,
                missing: vec!["http://a/2".into()]
            }
        );
        // Changed (or just arrived): nothing for SETTLE; paused (its drafts being dropped):
        // nothing; an old fetch that ends late does not count.
        p.reset("r", now);
        assert!(p.next("r", &list, 8, now).1.is_empty());
        let settled = now + SETTLE;
        p.pause("r");
        assert!(p.next("r", &list, 8, settled).1.is_empty());
        p.resume("r");
        let (new_generation, again) = p.next("r", &list, 8, settled);
        assert_eq!(again.len(), 2);
        p.finished("r", generation, "http://a/1", Ok(()));
        assert_eq!(p.report("r", &list)["warmed"], 0);
        p.finished("r", new_generation, "http://a/1", Ok(()));
        assert_eq!(p.report("r", &list)["warmed"], 1);
    }
}
