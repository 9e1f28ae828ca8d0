//! Load shedding: when the node has more requests in progress than `protect.shed_at`, new
//! cache misses are refused before they cost an origin connection, while cache hits go on.
//!
//! A shed miss takes the same road as one refused by a pool's `max_inflight`: a stale copy
//! when there is one, else 503 with Retry-After. Requests in progress is the signal because it
//! is what saturation looks like from inside (Little's law: when the node slows down, the
//! count climbs) and it costs one shared counter per request.

use std::sync::atomic::{AtomicUsize, Ordering};

static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// One request in progress, for as long as this lives (its context's lifetime).
#[derive(Debug)]
pub struct InProgress(());

impl Drop for InProgress {
    fn drop(&mut self) {
        IN_PROGRESS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in progress.
pub fn enter() -> InProgress {
    IN_PROGRESS.fetch_add(1, Ordering::Relaxed);
    InProgress(())
}

/// Requests in progress on this node now.
pub fn in_progress() -> usize {
    IN_PROGRESS.load(Ordering::Relaxed)
}

/// Whether a miss should be shed under `shed_at` (0: never).
pub fn overloaded(shed_at: usize) -> bool {
    shed_at > 0 && in_progress() > shed_at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_the_guards() {
        // Other tests in this process may hold guards too: compare against a baseline.
        let base = in_progress();
        let held: Vec<InProgress> = (0..5).map(|_| enter()).collect();
        assert!(in_progress() >= base + 5);
        assert!(overloaded(base + 4) || in_progress() < base + 5);
        assert!(!overloaded(0), "0 turns shedding off");
        drop(held);
        assert!(!overloaded(usize::MAX));
    }
}
