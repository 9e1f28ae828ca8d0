//! The fleet catch-up gate: after a start with `[fleet]`, copies stored before the start may
//! have been purged by the fleet while this node was away. Until the node has read every
//! operation published meanwhile, such copies are not served as they are: each is revalidated
//! with the origin first (and the fast hit path is off), so a page purged fleet-wide during the
//! outage is not served again from this node's disk. Copies stored after the start are current.
//!
//! Never off air: with the origin down, the revalidation fails and stale-if-error still serves
//! the copy, as it would have without the fleet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Open (0), or the UNIX milliseconds before which stored copies are suspect.
#[derive(Debug, Default)]
pub struct CatchUp {
    before_ms: AtomicU64,
}

impl CatchUp {
    /// Closes the gate for copies stored before `at` (the node's start).
    pub fn close(&self, at: SystemTime) {
        let ms = at.duration_since(UNIX_EPOCH).map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.before_ms.store(ms, Ordering::Release);
    }

    /// The node has read every operation published while it was away.
    pub fn open(&self) {
        self.before_ms.store(0, Ordering::Release);
    }

    /// Whether the gate is open (one atomic load: the fast hit path asks on every request).
    pub fn is_open(&self) -> bool {
        self.before_ms.load(Ordering::Acquire) == 0
    }

    /// Whether a copy validated at `epoch` must be revalidated before it is served.
    pub fn suspect(&self, epoch: SystemTime) -> bool {
        let before = self.before_ms.load(Ordering::Acquire);
        before != 0 && epoch < UNIX_EPOCH + Duration::from_millis(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copies_from_before_the_start_are_suspect_until_caught_up() {
        let gate = CatchUp::default();
        let start = SystemTime::now();
        let before = start - Duration::from_secs(60);
        let after = start + Duration::from_secs(1);
        assert!(gate.is_open() && !gate.suspect(before));
        gate.close(start);
        assert!(!gate.is_open());
        assert!(gate.suspect(before));
        assert!(!gate.suspect(after));
        gate.open();
        assert!(gate.is_open() && !gate.suspect(before));
    }
}
