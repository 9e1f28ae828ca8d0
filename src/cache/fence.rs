//! The purge fence: a purge is final even for fills and metadata rewrites already in flight.
//!
//! A fill starts when the origin's headers arrive and publishes when its body ends, which can be
//! seconds later; a revalidation or soft purge copies the stored body before it publishes. A
//! purge that lands in between must win: without the fence the late publish would put back
//! content fetched (or copied) before the purge, and a correction the newsroom purged would stay
//! on air for a whole TTL.
//!
//! Every fill or rewrite holds a [`Ticket`] taken when it starts (a fill starts when the
//! origin's answer head arrives: a purge landing between sending the request and that moment
//! is not fenced, a window of one origin response time). A purge is recorded here before
//! it touches any tier, and a publish checks, under the fence's lock, whether a purge recorded
//! after its ticket matches it; if one does, the publish is refused (the client still gets its
//! response, it is just not stored). Purges are kept only while a ticket older than them is open,
//! so the record stays as small as the number of fills in flight.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pingora::cache::key::HashBinary;

use super::purge::Selector;

/// What a purge removed or marked stale.
#[derive(Debug, Clone)]
pub enum Purged {
    /// One object (every variant of it shares the primary key's target, but invalidation after
    /// an unsafe method names the exact stored key).
    Key(HashBinary),
    /// Everything a selector matches.
    Matching(Selector),
}

impl Purged {
    fn hits(&self, key: &HashBinary, target: &str, tags: &[String]) -> bool {
        match self {
            Purged::Key(k) => k == key,
            Purged::Matching(selector) => selector.matches(target, tags),
        }
    }
}

#[derive(Default)]
struct State {
    /// Bumped by every purge; a ticket remembers the value it started at.
    epoch: u64,
    /// Open tickets per starting epoch.
    open: BTreeMap<u64, usize>,
    /// Purges newer than the oldest open ticket, oldest first.
    recent: VecDeque<(u64, Purged)>,
}

/// Shared by every tier of one cache.
#[derive(Default)]
pub struct PurgeFence {
    state: Mutex<State>,
}

/// Held by one fill or rewrite from its start until it has published (or given up).
pub struct Ticket {
    fence: Arc<PurgeFence>,
    epoch: u64,
}

impl PurgeFence {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts a fill or rewrite: purges recorded from now on can refuse its publish.
    pub fn open(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        let epoch = state.epoch;
        *state.open.entry(epoch).or_default() += 1;
        Ticket {
            fence: self.clone(),
            epoch,
        }
    }

    /// Records a purge; call it before the purge touches any tier.
    pub fn record(&self, purged: Purged) {
        let mut state = self.lock();
        state.epoch += 1;
        // With nothing in flight there is nothing the purge could be undone by.
        if !state.open.is_empty() {
            let epoch = state.epoch;
            state.recent.push_back((epoch, purged));
        }
    }

    /// Runs `publish` unless a purge recorded after `ticket` was opened matches the object;
    /// returns whether it ran. `publish` runs under the fence's lock, so no purge can be
    /// recorded between the check and the publish: keep it short (an index insert, a rename).
    pub fn publish<T>(
        &self,
        ticket: &Ticket,
        key: &HashBinary,
        target: &str,
        tags: &[String],
        publish: impl FnOnce() -> T,
    ) -> Option<T> {
        let state = self.lock();
        let purged = state
            .recent
            .iter()
            .filter(|(epoch, _)| *epoch > ticket.epoch)
            .any(|(_, p)| p.hits(key, target, tags));
        (!purged).then(publish)
    }

    /// Purges kept for open tickets (tests and the status page).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.lock().recent.len()
    }
}

impl Ticket {
    /// Another ticket of the same age, for a second tier of the same fill: both are refused by
    /// exactly the same purges.
    pub fn also(&self) -> Ticket {
        let mut state = self.fence.lock();
        *state.open.entry(self.epoch).or_default() += 1;
        Ticket {
            fence: self.fence.clone(),
            epoch: self.epoch,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.fence.lock();
        if let Some(n) = state.open.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                state.open.remove(&self.epoch);
            }
        }
        // Only tickets opened before a purge can be refused by it.
        match state.open.keys().next().copied() {
            Some(oldest) => {
                while state.recent.front().is_some_and(|(e, _)| *e <= oldest) {
                    state.recent.pop_front();
                }
            }
            None => state.recent.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_purge_after_the_start_refuses_the_publish() {
        let fence = Arc::new(PurgeFence::default());
        let before = fence.open();
        fence.record(Purged::Matching(Selector::Tags(
            ["election".to_owned()].into(),
        )));
        let after = fence.open();
        let key = [1; 16];
        assert!(fence
            .publish(&before, &key, "a.vn/x", &tags(&["election"]), || ())
            .is_none());
        assert!(fence
            .publish(&after, &key, "a.vn/x", &tags(&["election"]), || ())
            .is_some());
    }

    #[test]
    fn only_matching_purges_refuse() {
        let fence = Arc::new(PurgeFence::default());
        let t1 = fence.open();
        let t2 = fence.open();
        let t3 = fence.open();
        fence.record(Purged::Matching(Selector::Prefix("a.vn/news/".into())));
        fence.record(Purged::Key([9; 16]));
        assert!(fence
            .publish(&t1, &[1; 16], "a.vn/sport/1", &[], || ())
            .is_some());
        assert!(fence
            .publish(&t2, &[2; 16], "a.vn/news/1", &[], || ())
            .is_none());
        assert!(fence
            .publish(&t3, &[9; 16], "a.vn/other", &[], || ())
            .is_none());
    }

    #[test]
    fn the_record_shrinks_as_tickets_close() {
        let fence = Arc::new(PurgeFence::default());
        // No fill in flight: nothing to remember.
        fence.record(Purged::Key([1; 16]));
        assert_eq!(fence.kept(), 0);
        let old = fence.open();
        fence.record(Purged::Key([2; 16]));
        let young = fence.open();
        fence.record(Purged::Key([3; 16]));
        assert_eq!(fence.kept(), 2);
        drop(old);
        assert_eq!(
            fence.kept(),
            1,
            "only the purge after the young ticket stays"
        );
        drop(young);
        assert_eq!(fence.kept(), 0);
    }
}
