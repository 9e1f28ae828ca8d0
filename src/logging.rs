//! Operational logs: `tracing` to stderr, with Pingora's `log` records bridged in.
//!
//! stderr keeps stdout free for the JSON access log. `RUST_LOG` overrides `log.level` for
//! debugging a live node without editing its config.

use tracing_subscriber::EnvFilter;

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
