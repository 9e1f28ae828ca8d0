//! Attack mode: whether clients without clearance are challenged (see `challenge`).
//!
//! The mode comes from `protect.attack.mode`, or from `POST /attack-mode`, which overrides the
//! file until the next call or restart. `auto` turns attack mode on when the node-wide request
//! rate reaches `trigger_rps` or a pool's origin protection has had requests queued for
//! [`SATURATED_TICKS`] measurements in a row (the origins are saturating, not just busy for a
//! moment), and off again once neither has been true for `cooldown`. The rate is measured once
//! a second by the maintenance task; requests only bump a counter, and only in `auto`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Attack, AttackMode};
use crate::metrics::METRICS;

/// The node's attack-mode state, across config reloads.
#[derive(Debug, Default)]
pub struct AttackState {
    active: AtomicBool,
    /// Whether the mode in force (the admin's or the file's) is `auto`: requests are counted.
    auto: AtomicBool,
    requests: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set by the admin API; wins over the file.
    overridden: Option<AttackMode>,
    last: Option<(Instant, u64)>,
    /// `auto`: when the rate last went below the trigger while on.
    calm_since: Option<Instant>,
    /// The last measured rate, for `/status`.
    rps: u64,
    /// Measurements in a row that found a pool's queue in use.
    saturated_ticks: u32,
}

/// Measurements in a row with origins saturated before `auto` turns attack mode on.
pub const SATURATED_TICKS: u32 = 3;

/// What `/status` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub mode: AttackMode,
    pub overridden: bool,
    pub active: bool,
    pub rps: u64,
}

impl AttackState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether clients without clearance are challenged now.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request toward the node-wide rate (only while the mode in force is `auto`).
    pub fn observe(&self) {
        if self.auto.load(Ordering::Relaxed) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The mode in force: the admin's, else the file's.
    pub fn mode(&self, config: &Attack) -> AttackMode {
        self.lock().overridden.unwrap_or(config.mode)
    }

    /// `POST /attack-mode`: `on` and `off` apply at once, `auto` at the next measurement.
    pub fn set(&self, mode: AttackMode, config: &Attack, now: Instant) {
        {
            let mut inner = self.lock();
            inner.overridden = Some(mode);
            inner.calm_since = None;
        }
        tracing::warn!(
            mode = mode.as_str(),
            "attack mode set through the admin API"
        );
        self.tick(config, now, false);
    }

    /// Re-evaluates the mode; the maintenance task calls this once a second. `saturated`: some
    /// pool has requests waiting for an origin slot.
    pub fn tick(&self, config: &Attack, now: Instant, saturated: bool) {
        let count = self.requests.load(Ordering::Relaxed);
        // The whole decision under the lock, so a tick cannot undo an admin's `set`.
        let mut inner = self.lock();
        let was = self.active();
        if saturated {
            inner.saturated_ticks = inner.saturated_ticks.saturating_add(1);
        } else {
            inner.saturated_ticks = 0;
        }
        if let Some((at, before)) = inner.last {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs >= 0.5 {
                inner.rps = ((count.saturating_sub(before)) as f64 / secs).round() as u64;
                inner.last = Some((now, count));
            }
        } else {
            inner.last = Some((now, count));
        }
        let mode = inner.overridden.unwrap_or(config.mode);
        self.auto.store(mode == AttackMode::Auto, Ordering::Relaxed);
        let on = match mode {
            AttackMode::Off => false,
            AttackMode::On => true,
            AttackMode::Auto => {
                if inner.rps >= config.trigger_rps || inner.saturated_ticks >= SATURATED_TICKS {
                    inner.calm_since = None;
                    true
                } else if was {
                    let calm = *inner.calm_since.get_or_insert(now);
                    now.saturating_duration_since(calm) < config.cooldown
                } else {
                    false
                }
            }
        };
        let rps = inner.rps;
        self.active.store(on, Ordering::Relaxed);
        drop(inner);
        if on != was {
            if on {
                tracing::warn!(
                    rps,
                    saturated,
                    "attack mode on: uncleared clients are challenged"
                );
            } else {
                tracing::warn!(rps, "attack mode off");
            }
        }
        METRICS.attack_mode(on);
    }

    pub fn report(&self, config: &Attack) -> Report {
        let inner = self.lock();
        Report {
            mode: inner.overridden.unwrap_or(config.mode),
            overridden: inner.overridden.is_some(),
            active: self.active(),
            rps: inner.rps,
        }
    }
}

/// How long `auto` takes at most to notice a flood: one measurement period.
pub const PERIOD: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> Attack {
        Attack {
            mode: AttackMode::Auto,
            trigger_rps: 100,
            cooldown: Duration::from_secs(10),
            ..Attack::default()
        }
    }

    #[test]
    fn auto_turns_on_above_the_trigger_and_off_after_the_cooldown() {
        let state = AttackState::default();
        let config = auto();
        let t0 = Instant::now();
        state.tick(&config, t0, false);
        let flood = |n| (0..n).for_each(|_| state.observe());
        flood(50);
        state.tick(&config, t0 + PERIOD, false);
        assert!(!state.active(), "50/s is under the trigger");
        flood(150);
        state.tick(&config, t0 + PERIOD * 2, false);
        assert!(state.active());
        assert_eq!(state.report(&config).rps, 150);
        // Calm from here: on for the cooldown, then off.
        for s in 3..=12 {
            state.tick(&config, t0 + PERIOD * s, false);
            assert!(state.active(), "still cooling down at {s} s");
        }
        state.tick(&config, t0 + PERIOD * 13, false);
        assert!(!state.active());
    }

    #[test]
    fn a_burst_during_the_cooldown_restarts_it() {
        let state = AttackState::default();
        let config = auto();
        let t0 = Instant::now();
        state.tick(&config, t0, false);
        (0..200).for_each(|_| state.observe());
        for s in 1..=8 {
            state.tick(&config, t0 + PERIOD * s, false);
        }
        (0..200).for_each(|_| state.observe());
        state.tick(&config, t0 + PERIOD * 9, false);
        // Calm again from 10 s: on through 19 s, off at 20 s.
        for s in 10..=19 {
            state.tick(&config, t0 + PERIOD * s, false);
            assert!(
                state.active(),
                "the cooldown counts from the last burst ({s} s)"
            );
        }
        state.tick(&config, t0 + PERIOD * 20, false);
        assert!(!state.active());
    }

    #[test]
    fn origins_saturated_for_three_measurements_turn_it_on_without_a_flood() {
        let state = AttackState::default();
        let config = auto();
        let t0 = Instant::now();
        state.tick(&config, t0, true);
        state.tick(&config, t0 + PERIOD, false);
        state.tick(&config, t0 + PERIOD * 2, true);
        state.tick(&config, t0 + PERIOD * 3, true);
        assert!(!state.active(), "a queue now and then is just a busy pool");
        state.tick(&config, t0 + PERIOD * 4, true);
        assert!(state.active());
    }

    #[test]
    fn an_admin_auto_counts_requests_even_when_the_file_says_off() {
        let state = AttackState::default();
        let off = Attack {
            mode: AttackMode::Off,
            ..auto()
        };
        let t0 = Instant::now();
        state.tick(&off, t0, false);
        state.observe();
        assert_eq!(
            state.requests.load(Ordering::Relaxed),
            0,
            "off: not counted"
        );
        state.set(AttackMode::Auto, &off, t0);
        (0..150).for_each(|_| state.observe());
        state.tick(&off, t0 + PERIOD, false);
        assert!(state.active(), "150/s over the trigger of 100");
    }

    #[test]
    fn the_admin_overrides_the_file_and_fixed_modes_ignore_the_rate() {
        let state = AttackState::default();
        let config = auto();
        let t0 = Instant::now();
        state.set(AttackMode::On, &config, t0);
        assert!(state.active(), "on applies at once");
        state.tick(&config, t0 + PERIOD, false);
        assert!(state.active(), "no flood needed");
        assert_eq!(state.mode(&config), AttackMode::On);
        state.set(AttackMode::Off, &config, t0 + PERIOD * 2);
        (0..1000).for_each(|_| state.observe());
        state.tick(&config, t0 + PERIOD * 3, true);
        assert!(!state.active(), "off stays off");
        let off = Attack {
            mode: AttackMode::Off,
            ..auto()
        };
        state.set(AttackMode::Auto, &off, t0 + PERIOD * 4);
        assert_eq!(state.mode(&off), AttackMode::Auto);
    }
}
