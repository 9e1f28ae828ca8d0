//! Per-client rate limiting with the generic cell rate algorithm (GCRA).
//!
//! "N/s with burst B" means exactly: a client that has been quiet may send B requests at once,
//! then one every 1/N s; it never gets more than B + N·t requests through in any t seconds. GCRA
//! keeps one number per client, the theoretical arrival time (TAT) of its next request, so the
//! table costs one hash entry per recently active client. A client whose TAT has passed is
//! indistinguishable from a new one, which is what lets [`RateLimiter::sweep`] forget it: under
//! key churn (a flood from many addresses) the table holds only the clients of the last burst
//! window, and [`MAX_CLIENTS`] caps it outright. A full shard evicts its least recently
//! active clients (the smallest TATs: furthest from being limited) rather than letting a new
//! client through untracked, and the shard a key lands in is a keyed hash no client can aim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients tracked at most (over all shards). At about 100 bytes per entry (measured by
/// `benches/protect.rs`, see docs/benchmarks.md) this bounds the table near 100 MiB even under a
/// flood from a million addresses.
pub const MAX_CLIENTS: usize = 1 << 20;
const SHARDS: usize = 64;
/// The policy of the node-wide limit (routes have their own ids, never 0).
pub const NODE: u64 = 0;
/// Table entries of clients told off by the node-wide limit: until when.
const TOLD: u64 = u64::MAX;
/// The policy of the aggregate limit per address block (IPv4 /24, IPv6 /48).
pub const BLOCK: u64 = u64::MAX - 1;

/// One rate: `per_second` with `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Time between two requests at the steady rate.
    interval_ns: u64,
    /// How far ahead of the steady rate a client may run: (burst - 1) intervals.
    tolerance_ns: u64,
}

impl Limit {
    /// `per_second` > 0 and `burst` >= 1 (config validation guarantees both).
    pub fn new(per_second: f64, burst: u32) -> Limit {
        let interval_ns = (1e9 / per_second.max(1e-9)).round().max(1.0) as u64;
        Limit {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: the earliest the client may try again.
    Deny {
        retry_after: Duration,
    },
}

/// The table of clients, sharded so that concurrent requests rarely share a lock.
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<(u64, u128), u64>>>,
    epoch: Instant,
    per_shard: usize,
    /// Random per process: which shard a key lands in is not the client's choice (else one
    /// attacker could fill a single shard and evict everyone in it).
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::with_capacity(MAX_CLIENTS)
    }
}

impl RateLimiter {
    pub fn with_capacity(clients: usize) -> RateLimiter {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
            per_shard: (clients / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &(u64, u128)) -> std::sync::MutexGuard<'_, HashMap<(u64, u128), u64>> {
        use std::hash::BuildHasher;
        let shard = &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize];
        match shard.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Counts one request of `client` under `policy` (0: the node-wide limit, others: a
    /// route's), if `limit` allows it.
    pub fn check(&self, policy: u64, client: u128, limit: &Limit, now: Instant) -> Verdict {
        let t = self.ns(now);
        let key = (policy, client);
        let mut shard = self.shard(&key);
        let tat = shard.get(&key).copied().unwrap_or(t).max(t);
        let allowed_from = tat.saturating_sub(limit.tolerance_ns);
        if t < allowed_from {
            if policy == NODE {
                // Told to slow down: until its allowance is back, the accept refuses it.
                drop(shard);
                let told = (TOLD, client);
                let mut shard = self.shard(&told);
                if shard.len() >= self.per_shard && !shard.contains_key(&told) {
                    make_room(&mut shard, t, self.per_shard);
                }
                shard.insert(told, allowed_from);
            }
            return Verdict::Deny {
                retry_after: Duration::from_nanos(allowed_from - t),
            };
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            make_room(&mut shard, t, self.per_shard);
        }
        shard.insert(key, tat + limit.interval_ns);
        Verdict::Allow
    }

    /// Whether `client` got a 429 from the node-wide limit and is still over it (the
    /// accept-time check). A client that merely used up its burst is not refused: it first
    /// hears 429 with Retry-After.
    pub fn told_off(&self, client: u128, now: Instant) -> bool {
        let told = (TOLD, client);
        self.shard(&told)
            .get(&told)
            .is_some_and(|&until| self.ns(now) < until)
    }

    /// Forgets every client whose next request would be allowed as if it were new.
    pub fn sweep(&self, now: Instant) {
        let t = self.ns(now);
        for shard in &self.shards {
            let mut shard = match shard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            shard.retain(|_, tat| *tat > t);
        }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|g| g.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees room in a full shard: first the clients back to a clean slate; if that is not
/// enough, the eighth of the shard least recently active (smallest TAT). A client being
/// limited has a TAT in the future and is the last to go; evicting in batches keeps the cost
/// per new client constant under a flood of new addresses.
fn make_room(shard: &mut HashMap<(u64, u128), u64>, now: u64, capacity: usize) {
    shard.retain(|_, tat| *tat > now);
    if shard.len() < capacity {
        return;
    }
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let cut = (capacity / 8).max(1).min(tats.len() - 1);
    let (_, threshold, _) = tats.select_nth_unstable(cut);
    let threshold = *threshold;
    shard.retain(|_, tat| *tat > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(l: &RateLimiter, limit: &Limit, at: Instant, n: usize) -> usize {
        (0..n)
            .filter(|_| l.check(0, 1, limit, at) == Verdict::Allow)
            .count()
    }

    #[test]
    fn burst_then_the_steady_rate_exactly() {
        let l = RateLimiter::default();
        let limit = Limit::new(10.0, 5);
        let t0 = l.epoch + Duration::from_secs(1);
        // A quiet client: exactly the burst at once.
        assert_eq!(allowed(&l, &limit, t0, 20), 5);
        // Then one per 100 ms, and the refusal says when.
        match l.check(0, 1, &limit, t0 + Duration::from_millis(50)) {
            Verdict::Deny { retry_after } => assert_eq!(retry_after, Duration::from_millis(50)),
            v => panic!("{v:?}"),
        }
        assert_eq!(allowed(&l, &limit, t0 + Duration::from_millis(100), 3), 1);
        assert_eq!(allowed(&l, &limit, t0 + Duration::from_millis(200), 3), 1);
        // Over any window t, at most burst + rate·t get through.
        let mut through = 0;
        for ms in (300..10_300).step_by(10) {
            through += allowed(&l, &limit, t0 + Duration::from_millis(ms), 1);
        }
        assert_eq!(through, 100, "10 s at 10/s");
        // Quiet again for the burst's worth of time: the whole burst is back.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(allowed(&l, &limit, later, 20), 5);
    }

    #[test]
    fn only_a_client_told_off_by_the_node_limit_is_refused_at_accept() {
        let l = RateLimiter::default();
        let limit = Limit::new(10.0, 2);
        let t0 = Instant::now();
        assert_eq!(l.check(NODE, 7, &limit, t0), Verdict::Allow);
        assert_eq!(l.check(NODE, 7, &limit, t0), Verdict::Allow);
        assert!(!l.told_off(7, t0), "a used-up burst alone is not refused");
        assert!(matches!(l.check(NODE, 7, &limit, t0), Verdict::Deny { .. }));
        assert!(l.told_off(7, t0));
        assert!(!l.told_off(8, t0));
        // Back under the rate a tenth of a second later (the time one request earns).
        assert!(!l.told_off(7, t0 + Duration::from_millis(100)));
        // A route's 429 does not close the door on the whole node.
        assert_eq!(l.check(42, 9, &limit, t0), Verdict::Allow);
        assert_eq!(l.check(42, 9, &limit, t0), Verdict::Allow);
        assert!(matches!(l.check(42, 9, &limit, t0), Verdict::Deny { .. }));
        assert!(!l.told_off(9, t0));
        l.sweep(t0 + Duration::from_secs(1));
        assert!(l.is_empty(), "told-off entries are swept like the rest");
    }

    #[test]
    fn clients_and_policies_are_apart() {
        let l = RateLimiter::default();
        let limit = Limit::new(1.0, 1);
        let t = Instant::now();
        assert_eq!(l.check(0, 1, &limit, t), Verdict::Allow);
        assert!(matches!(l.check(0, 1, &limit, t), Verdict::Deny { .. }));
        assert_eq!(l.check(0, 2, &limit, t), Verdict::Allow, "another client");
        assert_eq!(l.check(1, 1, &limit, t), Verdict::Allow, "another route");
    }

    #[test]
    fn a_flood_of_new_clients_cannot_free_a_limited_one() {
        let l = RateLimiter::with_capacity(SHARDS * 64);
        let limit = Limit::new(1.0, 5);
        let t = Instant::now();
        // A client that used its whole burst: its TAT is the furthest ahead.
        assert_eq!(allowed(&l, &limit, t, 6), 5);
        // Many new addresses in the same instant fill every shard.
        for client in 1_000..200_000u128 {
            l.check(0, client, &limit, t);
        }
        assert!(l.len() <= SHARDS * 64, "{} tracked", l.len());
        // Eviction took the least active, not the limited client...
        assert!(matches!(l.check(0, 1, &limit, t), Verdict::Deny { .. }));
        // ...and new clients are tracked, not waved through untracked.
        assert_eq!(
            (0..10)
                .filter(|_| l.check(0, 199_999, &limit, t) == Verdict::Allow)
                .count(),
            4,
            "one of its burst was spent in the flood"
        );
    }

    #[test]
    fn churn_is_bounded_and_swept() {
        let l = RateLimiter::with_capacity(SHARDS * 100);
        let limit = Limit::new(100.0, 10);
        let t = Instant::now();
        for client in 0..100_000u128 {
            assert_eq!(l.check(0, client, &limit, t), Verdict::Allow);
        }
        assert!(l.len() <= SHARDS * 100, "{} tracked", l.len());
        // A second later every one of them is back to a clean slate and can be forgotten.
        l.sweep(t + Duration::from_secs(1));
        assert!(l.is_empty());
    }
}
