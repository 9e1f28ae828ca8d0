//! Operational logs: `tracing` to stderr, with Pingora's `log` records bridged in.
//!
//! stderr keeps stdout free for the JSON access log. `RUST_LOG` overrides `log.level` for
//! debugging a live node without editing its config.

use tracing_subscriber::EnvFilter;

/// Lets a log line through at most once a second, shared by every caller of one site in the
/// code: a flood of the same event (an origin sending nothing signed, a bad header on every
/// response) must not flood the log; the metrics count every one.
pub struct OncePerSecond(std::sync::atomic::AtomicU64);

impl OncePerSecond {
    pub const fn new() -> Self {
        OncePerSecond(std::sync::atomic::AtomicU64::new(0))
    }

    /// Whether a line may be logged now (the first call in each UNIX second).
    pub fn due(&self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.0.swap(second, std::sync::atomic::Ordering::Relaxed) != second
    }
}

impl Default for OncePerSecond {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest prefix of `text` within `max` bytes that ends at a character: a field a
/// caller or an origin chose, bounded before it is logged or sent on.
pub fn within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let cut = (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

/// Installs the subscriber once; later calls (tests, the demo) keep the first.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // With the `tracing-log` feature, try_init also routes the `log` crate (Pingora) here.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
