//! What this node's operators purged and when, to judge the copies another cache hands it.
//!
//! An edge that purges an object must not fill it again from a shield's copy made before the
//! purge: the purge may have reached this node and not the shield (sent to one node, or still
//! on its way to the others). The upstream's `Age` says when its copy was made (now − Age,
//! RFC 9111 §4.2.3); a copy that may predate a matching purge is asked for again with
//! `Cache-Control: no-cache`, which makes an onair shield revalidate it with the origin.
//!
//! Only operator purges (admin API, `PURGE`) are kept. An unsafe method's invalidation went
//! through the shield too (it invalidated its own copy), and leaving those out keeps a client
//! flooding POSTs from pushing real purges out of the record.
//!
//! Bounded: past [`MAX_KEPT`] purges or [`MAX_BYTES`] of selectors the oldest fold into
//! `refuse_before`, and every upstream copy made before that is asked for again. Refusing costs
//! one revalidation at the origin for an object that was not purged, never a purge undone.
//!
//! Indexed: each upstream answer with an `Age` is judged, so a lookup is a hash probe per URL
//! and tag, plus a scan of only the prefix purges newer than the copy, not a walk over every
//! purge since it was made.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::purge::Selector;

/// Purges remembered at most (lookups are indexed: the bound is for memory, see MAX_BYTES).
const MAX_KEPT: usize = 262_144;
/// Selector bytes remembered at most (a purge may list thousands of URLs).
const MAX_BYTES: usize = 64 << 20;

/// When a purge began, and its place in the record (times can be equal; places cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    at: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    /// Purges in the order they began (times never go backwards, see [`PurgeHistory::record`]),
    /// for folding the oldest away.
    kept: VecDeque<(Mark, Selector)>,
    bytes: usize,
    next_seq: u64,
    /// The latest purge naming each URL, and each tag.
    urls: HashMap<String, Mark>,
    tags: HashMap<String, Mark>,
    /// Prefix purges, oldest first.
    prefixes: VecDeque<(Mark, String)>,
    /// Copies made before this are treated as predating a purge: the purges that would say
    /// were folded away.
    refuse_before: Option<Instant>,
}

impl State {
    /// Forgets the oldest purge, folding its time into `refuse_before`.
    fn fold_oldest(&mut self) -> bool {
        let Some((mark, old)) = self.kept.pop_front() else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(weight(&old));
        // An index entry belongs to this purge only if no later purge named the same URL/tag.
        match old {
            Selector::Urls(set) => {
                for url in set {
                    if self.urls.get(&url) == Some(&mark) {
                        self.urls.remove(&url);
                    }
                }
            }
            Selector::Tags(set) => {
                for tag in set {
                    if self.tags.get(&tag) == Some(&mark) {
                        self.tags.remove(&tag);
                    }
                }
            }
            Selector::Prefix(_) => {
                if self.prefixes.front().is_some_and(|(m, _)| *m == mark) {
                    self.prefixes.pop_front();
                }
            }
        }
        self.refuse_before = Some(self.refuse_before.map_or(mark.at, |r| r.max(mark.at)));
        true
    }
}

/// The record of recent operator purges; one per process, shared by every request.
#[derive(Default)]
pub struct PurgeHistory {
    state: Mutex<State>,
}

/// What an upstream cache's copy is, judged against the purges made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Made after every matching purge began (or no purge matches): use it.
    Current,
    /// Made within a second of a matching purge (Age counts whole seconds): it may predate it.
    MayPredate,
    /// Made before a matching purge began.
    Predates,
}

impl PurgeHistory {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records a purge beginning now; call it before the purge touches any tier.
    pub fn record(&self, selector: &Selector) {
        self.record_at(Instant::now(), selector);
    }

    fn record_at(&self, at: Instant, selector: &Selector) {
        let mut state = self.lock();
        // Callers record in order; a test's explicit time must not break the order either.
        let at = state.kept.back().map_or(at, |(last, _)| at.max(last.at));
        let mark = Mark {
            at,
            seq: state.next_seq,
        };
        state.next_seq += 1;
        match selector {
            Selector::Urls(set) => {
                for url in set {
                    state.urls.insert(url.clone(), mark);
                }
            }
            Selector::Tags(set) => {
                for tag in set {
                    state.tags.insert(tag.clone(), mark);
                }
            }
            Selector::Prefix(prefix) => state.prefixes.push_back((mark, prefix.clone())),
        }
        state.bytes += weight(selector);
        state.kept.push_back((mark, selector.clone()));
        while (state.kept.len() > MAX_KEPT || state.bytes > MAX_BYTES) && state.fold_oldest() {}
    }

    /// Judges a copy of `target` (with `tags`) that an upstream cache says is `age` old.
    pub fn judge(&self, age: Duration, target: &str, tags: &[String]) -> Verdict {
        self.judge_at(Instant::now(), age, target, tags)
    }

    /// Ages only, on the monotonic clock: a wall clock stepped forward and back would leave
    /// purges "in the future", and every copy would predate them until it caught up.
    fn judge_at(&self, now: Instant, age: Duration, target: &str, tags: &[String]) -> Verdict {
        // Age is whole seconds, rounded down: the copy was made in (now − age − 1 s, now − age].
        // A time before this process's clock began (None) is before every purge it recorded.
        let latest = now.checked_sub(age);
        let earliest = latest.and_then(|l| l.checked_sub(Duration::from_secs(1)));
        let after_latest = |at: Instant| latest.is_none_or(|l| at > l);
        let after_earliest = |at: Instant| earliest.is_none_or(|e| at > e);
        let state = self.lock();
        // The latest purge matching the copy.
        let mut last = state.refuse_before;
        let mut newer = |at: Instant| last = Some(last.map_or(at, |l| l.max(at)));
        if let Some(mark) = state.urls.get(target) {
            newer(mark.at);
        }
        for tag in tags {
            if let Some(mark) = state.tags.get(tag) {
                newer(mark.at);
            }
        }
        for (mark, prefix) in state.prefixes.iter().rev() {
            if !after_earliest(mark.at) {
                break;
            }
            if target.starts_with(prefix.as_str()) {
                newer(mark.at);
                break;
            }
        }
        match last {
            Some(at) if after_latest(at) => Verdict::Predates,
            Some(at) if after_earliest(at) => Verdict::MayPredate,
            _ => Verdict::Current,
        }
    }
}

/// About what a selector costs to keep: each URL, tag or prefix is held twice (the selector
/// and its index entry).
fn weight(selector: &Selector) -> usize {
    64 + match selector {
        Selector::Urls(set) | Selector::Tags(set) => set.iter().map(|s| 2 * s.len() + 96).sum(),
        Selector::Prefix(p) => 2 * p.len() + 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Selector {
        Selector::Urls(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_copy_made_before_a_matching_purge_predates_it() {
        let h = PurgeHistory::default();
        let t0 = Instant::now();
        h.record_at(t0, &urls(&["a/story"]));
        let now = t0 + Duration::from_secs(10);
        // Made 20 s ago: before the purge.
        let v = h.judge_at(now, Duration::from_secs(20), "a/story", &[]);
        assert_eq!(v, Verdict::Predates);
        // Made 5 s ago: after it.
        let v = h.judge_at(now, Duration::from_secs(5), "a/story", &[]);
        assert_eq!(v, Verdict::Current);
        // Another object: untouched by the purge.
        let v = h.judge_at(now, Duration::from_secs(20), "a/other", &[]);
        assert_eq!(v, Verdict::Current);
        // Made "10 s ago", which Age rounds down: maybe a moment before the purge.
        let v = h.judge_at(now, Duration::from_secs(10), "a/story", &[]);
        assert_eq!(v, Verdict::MayPredate);
    }

    #[test]
    fn tags_and_prefixes_match_as_purges_do() {
        let h = PurgeHistory::default();
        let t0 = Instant::now();
        h.record_at(t0, &Selector::Tags(["home".to_string()].into()));
        h.record_at(t0, &Selector::Prefix("a/news/".into()));
        let now = t0 + Duration::from_secs(3);
        let old = Duration::from_secs(30);
        assert_eq!(
            h.judge_at(now, old, "a/x", &["home".into()]),
            Verdict::Predates
        );
        assert_eq!(h.judge_at(now, old, "a/news/1", &[]), Verdict::Predates);
        assert_eq!(h.judge_at(now, old, "a/sport/1", &[]), Verdict::Current);
    }

    #[test]
    fn a_copy_older_than_the_process_clock_predates_its_purges() {
        let h = PurgeHistory::default();
        let t0 = Instant::now();
        h.record_at(t0, &urls(&["a/story"]));
        // Ten years: before this machine's monotonic clock began.
        let ancient = Duration::from_secs(10 * 365 * 86_400);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(h.judge_at(now, ancient, "a/story", &[]), Verdict::Predates);
        assert_eq!(h.judge_at(now, ancient, "a/other", &[]), Verdict::Current);
    }

    #[test]
    fn folding_a_purge_keeps_a_later_purge_of_the_same_object() {
        let h = PurgeHistory::default();
        let t0 = Instant::now();
        // Same URL and tag twice, at the same instant (a clock that did not move).
        h.record_at(t0, &urls(&["a/story"]));
        h.record_at(t0, &Selector::Tags(["home".to_string()].into()));
        h.record_at(t0, &Selector::Prefix("a/news/".into()));
        let t1 = t0 + Duration::from_secs(100);
        h.record_at(t1, &urls(&["a/story"]));
        h.record_at(t1, &Selector::Tags(["home".to_string()].into()));
        h.record_at(t1, &Selector::Prefix("a/news/".into()));
        {
            let mut state = h.lock();
            for _ in 0..3 {
                assert!(state.fold_oldest());
            }
            assert_eq!(state.refuse_before, Some(t0));
        }
        let now = t1 + Duration::from_secs(10);
        // Made between the two purges: the second still counts.
        let between = Duration::from_secs(60);
        assert_eq!(h.judge_at(now, between, "a/story", &[]), Verdict::Predates);
        assert_eq!(
            h.judge_at(now, between, "a/x", &["home".into()]),
            Verdict::Predates
        );
        assert_eq!(h.judge_at(now, between, "a/news/1", &[]), Verdict::Predates);
        assert_eq!(h.judge_at(now, between, "a/other", &[]), Verdict::Current);
        // Made after both.
        let after = Duration::from_secs(5);
        assert_eq!(h.judge_at(now, after, "a/story", &[]), Verdict::Current);
    }

    #[test]
    fn past_the_bound_old_copies_are_refused_not_forgotten() {
        let h = PurgeHistory::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEPT + 10 {
            h.record_at(
                t0 + Duration::from_millis(i as u64),
                &urls(&[&format!("a/{i}")]),
            );
        }
        let state = h.lock();
        assert_eq!(state.kept.len(), MAX_KEPT);
        drop(state);
        let now = t0 + Duration::from_secs(600);
        // The first purge was folded away; a copy older than the fold is refused anyway.
        assert_eq!(
            h.judge_at(now, Duration::from_secs(700), "a/0", &[]),
            Verdict::Predates
        );
        // A copy made after every purge is current.
        assert_eq!(
            h.judge_at(now, Duration::from_secs(1), "a/0", &[]),
            Verdict::Current
        );
    }
}
