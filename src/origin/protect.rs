//! Origin protection: a hard cap on requests in flight to a pool, with a short bounded queue in
//! front of it, and a retry budget so that failures cannot multiply the load on the origins.
//!
//! Both outlive config snapshots (they are keyed by pool name in the registry): a reload must
//! not hand a pool a fresh, empty cap while the old snapshot's requests are still in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora_prometheus::prometheus::IntGauge;
use tokio::sync::Notify;

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// As many requests were already waiting as `pool.queue` allows.
    QueueFull,
    /// No slot freed within `pool.queue_timeout`.
    QueueTimeout,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::QueueTimeout => "queue_timeout",
        }
    }
}

/// The cap on requests in flight to one pool.
#[derive(Debug)]
pub struct Limiter {
    inflight: AtomicUsize,
    waiting: AtomicUsize,
    max: AtomicUsize,
    queue: AtomicUsize,
    freed: Notify,
    gauge: IntGauge,
}

/// A slot, held from the first origin attempt to the end of the request.
#[derive(Debug)]
pub struct Permit(Arc<Limiter>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
        self.0.freed.notify_one();
    }
}

impl Limiter {
    pub fn new(max: usize, queue: usize, gauge: IntGauge) -> Limiter {
        Limiter {
            inflight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            queue: AtomicUsize::new(queue),
            freed: Notify::new(),
            gauge,
        }
    }

    /// Applies a reloaded config; requests in flight keep their slots.
    pub fn resize(&self, max: usize, queue: usize) {
        let grew = max > self.max.swap(max, Ordering::AcqRel);
        self.queue.store(queue, Ordering::Release);
        if grew {
            self.freed.notify_waiters();
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max.load(Ordering::Acquire);
        let mut current = self.inflight.load(Ordering::Acquire);
        while current < max {
            match self.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.gauge.inc();
                    return Some(Permit(self.clone()));
                }
                Err(now) => current = now,
            }
        }
        None
    }

    /// A slot now, or after waiting in the queue up to `wait`.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Permit, Rejected> {
        // Newcomers do not jump the queue: while anyone waits, a freed slot is theirs.
        if self.waiting.load(Ordering::Acquire) == 0 {
            if let Some(permit) = self.try_take() {
                return Ok(permit);
            }
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        if queued >= self.queue.load(Ordering::Acquire) {
            return Err(Rejected::QueueFull);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a slot freed in between wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_take() {
                return Ok(permit);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Rejected::QueueTimeout);
            }
        }
    }

    /// Requests waiting for a slot now: the pool is saturated.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Requests holding a slot now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// Decrements the waiting count however `acquire` ends (also when its request is dropped).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Retries allowed per [`WINDOW`] regardless of traffic, so that a quiet pool can still retry.
const MIN_RETRIES: u32 = 10;
/// The budget counts requests and retries over this many one-second buckets.
const WINDOW: usize = 10;

/// Retries at most `ratio` of a pool's requests over the last [`WINDOW`] seconds, plus
/// [`MIN_RETRIES`]. Without it, an origin that fails half its requests gets 1.5× its load from
/// retries exactly when it can least take it (a retry storm).
#[derive(Debug)]
pub struct RetryBudget {
    ratio: Mutex<f64>,
    window: Mutex<Window>,
    started: Instant,
}

#[derive(Debug, Default)]
struct Window {
    /// The second (since `started`) the newest bucket belongs to.
    second: u64,
    /// Requests and retries per second, indexed by second % WINDOW.
    buckets: [(u32, u32); WINDOW],
}

impl Window {
    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let stale = (second - self.second).min(WINDOW as u64);
        for s in 1..=stale {
            self.buckets[((self.second + s) % WINDOW as u64) as usize] = (0, 0);
        }
        self.second = second;
    }

    fn bucket(&mut self) -> &mut (u32, u32) {
        &mut self.buckets[(self.second % WINDOW as u64) as usize]
    }
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio: Mutex::new(ratio),
            window: Mutex::new(Window::default()),
            started: Instant::now(),
        }
    }

    pub fn set_ratio(&self, ratio: f64) {
        if let Ok(mut r) = self.ratio.lock() {
            *r = ratio;
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        match self.window.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.started).as_secs()
    }

    /// Counts a request (its first attempt).
    pub fn request(&self, now: Instant) {
        let mut w = self.window();
        w.advance(self.second(now));
        let b = w.bucket();
        b.0 = b.0.saturating_add(1);
    }

    /// Whether one more retry fits the budget; if so, it is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let ratio = self.ratio.lock().map(|r| *r).unwrap_or(0.0);
        let mut w = self.window();
        w.advance(self.second(now));
        let (requests, retries) = w.buckets.iter().fold((0u64, 0u64), |(q, r), b| {
            (q + u64::from(b.0), r + u64::from(b.1))
        });
        let allowed = (requests as f64 * ratio) as u64 + u64::from(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        let b = w.bucket();
        b.1 = b.1.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, queue: usize) -> Arc<Limiter> {
        let gauge = IntGauge::new("test_inflight", "test").unwrap();
        Arc::new(Limiter::new(max, queue, gauge))
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_the_queue_is_bounded() {
        let l = limiter(2, 1);
        let a = l.acquire(Duration::from_secs(1)).await.unwrap();
        let _b = l.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(l.inflight(), 2);
        // One may wait; it gets the slot `a` frees.
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(Duration::from_secs(1)).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        // The queue is full: the next one is refused at once.
        assert_eq!(
            l.acquire(Duration::from_secs(1)).await.err(),
            Some(Rejected::QueueFull)
        );
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Nobody frees a slot: the wait runs out.
        let _c = l.acquire(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            l.acquire(Duration::from_millis(100)).await.err(),
            Some(Rejected::QueueTimeout)
        );
        assert_eq!(l.inflight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_larger_cap_after_reload_lets_waiters_in() {
        let l = limiter(1, 4);
        let _a = l.acquire(Duration::from_secs(1)).await.unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(Duration::from_secs(5)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        l.resize(2, 4);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn retries_stay_within_the_budget() {
        let b = RetryBudget::new(0.2);
        let t0 = b.started;
        for _ in 0..100 {
            b.request(t0);
        }
        // 20 % of 100 requests, plus the floor of 10.
        let allowed = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(allowed, 30);
        // The window forgets after ten seconds: only the floor is left.
        let later = t0 + Duration::from_secs(11);
        let allowed = (0..100).filter(|_| b.try_retry(later)).count();
        assert_eq!(allowed, MIN_RETRIES as usize);
    }
}
