//! The purge fence: a purge is final even for fills, promotions and metadata rewrites already
//! in flight.
//!
//! A fill starts when the origin's headers arrive and publishes when its body ends, which can be
//! seconds later; a promotion reads a disk copy before it puts it into memory; a revalidation
//! or soft purge copies the stored body before it publishes. A purge that lands in between must
//! win: without the fence the late publish would put back content fetched (or read) before the
//! purge finished, and a correction the newsroom purged would stay on air for a whole TTL.
//!
//! A purge is not an instant: it clears memory, then walks the disk, and a reader can read a
//! disk copy the walk has not reached yet. So a purge has a start and an end, and a publish is
//! refused by every matching purge that had not *ended* when the publish's [`Ticket`] was
//! taken: the content it carries may predate the purge. Every fill or rewrite holds a ticket
//! taken when it starts; a purge is recorded here ([`PurgeFence::record`]) before it touches any
//! tier and ends when its [`Running`] guard drops; a publish checks, under the fence's lock,
//! whether such a purge matches it, and if one does it is refused (the client still gets its
//! response, it is just not stored). A purge's own rewrites (a soft purge marking copies stale)
//! carry its id and are not refused by it. Ended purges are kept only while a ticket older than
//! their end is open, so the record stays as small as the number of fills in flight.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use pingora::cache::key::HashBinary;

use super::purge::Selector;

/// Ended purges kept at most. A long-lived ticket (a large download filling the cache) would
/// otherwise keep every purge made meanwhile (each write through a URL is one), and every
/// publish scans them: past this many the oldest ended ones fold into `State::refuse_before`.
const MAX_ENDED: usize = 4096;

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

struct Record {
    id: u64,
    /// The epoch the purge ended at; None while it runs.
    ended: Option<u64>,
    purged: Purged,
}

#[derive(Default)]
struct State {
    /// Bumped when a purge starts and when it ends; a ticket remembers the value it started at.
    epoch: u64,
    next_id: u64,
    /// Open tickets per starting epoch.
    open: BTreeMap<u64, usize>,
    /// Running purges, and ended ones some open ticket predates.
    records: VecDeque<Record>,
    /// Tickets older than this are refused whatever they publish: the purges that would decide
    /// were folded away (see [`MAX_ENDED`]). Refusing is always safe: the object is fetched again.
    refuse_before: u64,
    /// Publishes let through but not finished yet (a disk rename), by id.
    publishing: BTreeMap<u64, Published>,
    next_publish: u64,
}

/// What a publish in progress is putting back.
struct Published {
    key: HashBinary,
    target: String,
    tags: Vec<String>,
}

impl State {
    /// Drops ended purges that no open ticket predates: nothing left could be refused by them.
    /// Past [`MAX_ENDED`], the oldest ended ones are folded into `refuse_before`.
    fn forget(&mut self) {
        let oldest = self.open.keys().next().copied();
        let mut ended = 0;
        self.records.retain(|r| {
            let keep = match (r.ended, oldest) {
                (None, _) => true,
                (Some(end), Some(oldest)) => oldest < end,
                (Some(_), None) => false,
            };
            ended += usize::from(keep && r.ended.is_some());
            keep
        });
        if ended > MAX_ENDED {
            let mut ends: Vec<u64> = self.records.iter().filter_map(|r| r.ended).collect();
            ends.sort_unstable();
            // Fold the older half: every ticket they could refuse is refused outright.
            let fold_to = ends[ends.len() / 2];
            self.refuse_before = self.refuse_before.max(fold_to);
            self.records
                .retain(|r| r.ended.is_none_or(|end| end > fold_to));
        }
    }
}

/// Shared by every tier of one cache.
#[derive(Default)]
pub struct PurgeFence {
    state: Mutex<State>,
    /// Signalled when a publish in progress finishes.
    published: Condvar,
}

/// Held by one fill or rewrite from its start until it has published (or given up).
pub struct Ticket {
    fence: Arc<PurgeFence>,
    epoch: u64,
    /// The purge this ticket works for (a soft purge's rewrites): that purge does not refuse it.
    on_behalf_of: Option<u64>,
}

/// A ticket taken when a request leaves for the origin, carried to the store in the
/// response's `CacheMeta` extensions (Pingora hands the same meta to `get_miss_handler`, and
/// merges it into `update_meta`'s after a 304). The origin made its answer before its head
/// arrived, so a ticket taken only then would let a purge landing in between pass for newer.
#[derive(Clone)]
pub struct EarlyTicket(pub Arc<Ticket>);

impl EarlyTicket {
    /// The ticket a fill or rewrite of `meta` should hold: the early one's age when the proxy
    /// attached one, else a fresh one.
    pub fn for_meta(fence: &Arc<PurgeFence>, meta: &pingora::cache::CacheMeta) -> Ticket {
        match meta.extensions().get::<EarlyTicket>() {
            Some(early) => early.0.also(),
            None => fence.open(),
        }
    }
}

/// A purge in progress: it ends (and stops refusing new work) when this drops.
#[must_use = "a purge ends when its guard drops"]
pub struct Running {
    fence: Arc<PurgeFence>,
    id: u64,
    /// Publishes of matching objects that were already past the fence when the purge started.
    overtaken: Vec<(u64, HashBinary)>,
}

/// A publish let through the fence and not finished yet: a purge starting meanwhile waits for
/// it (see [`Running::overtaken`]) rather than the publish holding the fence's lock while it
/// touches the filesystem.
pub struct Publishing {
    fence: Arc<PurgeFence>,
    id: u64,
}

impl PurgeFence {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts a fill or rewrite: purges running now or recorded from now on can refuse its
    /// publish.
    pub fn open(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        let epoch = state.epoch;
        *state.open.entry(epoch).or_default() += 1;
        Ticket {
            fence: self.clone(),
            epoch,
            on_behalf_of: None,
        }
    }

    /// Records a purge; call it before the purge touches any tier, and keep the guard until it
    /// has touched all of them.
    pub fn record(self: &Arc<Self>, purged: Purged) -> Running {
        let mut state = self.lock();
        state.epoch += 1;
        state.next_id += 1;
        let id = state.next_id;
        let overtaken = state
            .publishing
            .iter()
            .filter(|(_, p)| purged.hits(&p.key, &p.target, &p.tags))
            .map(|(id, p)| (*id, p.key))
            .collect();
        state.records.push_back(Record {
            id,
            ended: None,
            purged,
        });
        Running {
            fence: self.clone(),
            id,
            overtaken,
        }
    }

    /// Lets a publish through unless a purge that had not ended when `ticket` was opened
    /// matches the object. Unlike [`PurgeFence::publish`] the work happens after the fence's
    /// lock is released: hold the returned guard until the object is in place.
    pub fn begin_publish(
        self: &Arc<Self>,
        ticket: &Ticket,
        key: &HashBinary,
        target: &str,
        tags: &[String],
    ) -> Option<Publishing> {
        let mut state = self.lock();
        if refused(&state, ticket, key, target, tags) {
            return None;
        }
        state.next_publish += 1;
        let id = state.next_publish;
        state.publishing.insert(
            id,
            Published {
                key: *key,
                target: target.to_owned(),
                tags: tags.to_vec(),
            },
        );
        Some(Publishing {
            fence: self.clone(),
            id,
        })
    }

    /// Runs `publish` unless a purge that had not ended when `ticket` was opened matches the
    /// object; returns whether it ran. `publish` runs under the fence's lock, so no purge can
    /// start between the check and the publish: keep it short (an index insert).
    pub fn publish<T>(
        &self,
        ticket: &Ticket,
        key: &HashBinary,
        target: &str,
        tags: &[String],
        publish: impl FnOnce() -> T,
    ) -> Option<T> {
        let state = self.lock();
        (!refused(&state, ticket, key, target, tags)).then(publish)
    }

    /// Purges remembered (tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.lock().records.len()
    }
}

/// Whether a purge that had not ended when `ticket` was opened matches the object.
fn refused(
    state: &State,
    ticket: &Ticket,
    key: &HashBinary,
    target: &str,
    tags: &[String],
) -> bool {
    if ticket.epoch < state.refuse_before {
        return true;
    }
    state.records.iter().any(|r| {
        let after_ticket = r.ended.is_none_or(|end| ticket.epoch < end);
        after_ticket && Some(r.id) != ticket.on_behalf_of && r.purged.hits(key, target, tags)
    })
}

impl Running {
    /// A ticket for this purge's own rewrites (a soft purge): refused by other purges as usual,
    /// never by this one.
    pub fn ticket(&self) -> Ticket {
        let mut ticket = self.fence.open();
        ticket.on_behalf_of = Some(self.id);
        ticket
    }

    /// Waits (blocking) for the publishes this purge overtook and returns their keys: they
    /// finished after the purge walked the tiers, so the caller removes them again.
    pub fn overtaken(&self) -> Vec<HashBinary> {
        let mut state = self.fence.lock();
        for (id, _) in &self.overtaken {
            while state.publishing.contains_key(id) {
                state = match self.fence.published.wait(state) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        }
        self.overtaken.iter().map(|(_, key)| *key).collect()
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.fence.lock().publishing.remove(&self.id);
        self.fence.published.notify_all();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.fence.lock();
        state.epoch += 1;
        let end = state.epoch;
        if let Some(r) = state.records.iter_mut().find(|r| r.id == self.id) {
            r.ended = Some(end);
        }
        state.forget();
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
            on_behalf_of: self.on_behalf_of,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.fence.lock();
        let was_oldest = state.open.keys().next() == Some(&self.epoch);
        if let Some(n) = state.open.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                state.open.remove(&self.epoch);
            }
        }
        // Only the oldest ticket closing can let purges go: skip the pass (on every fill's end,
        // under this lock) otherwise.
        if was_oldest && !state.records.is_empty() {
            state.forget();
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
        let _ = fence.record(Purged::Matching(Selector::Tags(
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
        let _ = fence.record(Purged::Matching(Selector::Prefix("a.vn/news/".into())));
        let _ = fence.record(Purged::Key([9; 16]));
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
    fn work_started_while_a_purge_runs_is_refused_until_it_ends() {
        let fence = Arc::new(PurgeFence::default());
        let running = fence.record(Purged::Key([1; 16]));
        // A reader that read the disk copy the purge has not reached yet.
        let during = fence.open();
        assert!(fence
            .publish(&during, &[1; 16], "a.vn/x", &[], || ())
            .is_none());
        // The purge's own rewrite (a soft purge marking it stale) goes through.
        let own = running.ticket();
        assert!(fence
            .publish(&own, &[1; 16], "a.vn/x", &[], || ())
            .is_some());
        drop(running);
        assert!(fence
            .publish(&during, &[1; 16], "a.vn/x", &[], || ())
            .is_none());
        let after = fence.open();
        assert!(fence
            .publish(&after, &[1; 16], "a.vn/x", &[], || ())
            .is_some());
    }

    #[test]
    fn a_purge_waits_for_the_publishes_it_overtook() {
        let fence = Arc::new(PurgeFence::default());
        let ticket = fence.open();
        let publishing = fence
            .begin_publish(&ticket, &[5; 16], "a.vn/5", &tags(&["news"]))
            .unwrap();
        let other = fence
            .begin_publish(&ticket, &[6; 16], "a.vn/6", &tags(&["sport"]))
            .unwrap();
        let running = fence.record(Purged::Matching(Selector::Tags(["news".to_owned()].into())));
        let waiter = std::thread::spawn(move || running.overtaken());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "returned before the publish finished"
        );
        drop(publishing);
        assert_eq!(waiter.join().unwrap(), vec![[5; 16]]);
        drop(other);
        // Refused from now on.
        assert!(fence
            .begin_publish(&ticket, &[5; 16], "a.vn/5", &tags(&["news"]))
            .is_none());
    }

    #[test]
    fn a_long_lived_ticket_keeps_the_record_bounded() {
        let fence = Arc::new(PurgeFence::default());
        let old = fence.open();
        for i in 0..12_000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            drop(fence.record(Purged::Key(key)));
        }
        assert!(fence.kept() <= MAX_ENDED + 1, "{} kept", fence.kept());
        // Whatever was folded still refuses the old ticket; a new one goes through.
        assert!(fence
            .publish(&old, &[0; 16], "a.vn/x", &[], || ())
            .is_none());
        assert!(fence
            .publish(&old, &[9; 16], "a.vn/unrelated", &[], || ())
            .is_none());
        let new = fence.open();
        assert!(fence
            .publish(&new, &[0; 16], "a.vn/x", &[], || ())
            .is_some());
    }

    #[test]
    fn the_record_shrinks_as_tickets_close() {
        let fence = Arc::new(PurgeFence::default());
        // No fill in flight: nothing to remember.
        let _ = fence.record(Purged::Key([1; 16]));
        assert_eq!(fence.kept(), 0);
        let old = fence.open();
        let _ = fence.record(Purged::Key([2; 16]));
        let young = fence.open();
        let _ = fence.record(Purged::Key([3; 16]));
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
