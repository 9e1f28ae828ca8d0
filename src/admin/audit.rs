//! The audit log: every admin call that changes something, and every refused one, appended as
//! a JSON line to `<state_dir>/audit.log` and fsynced before the caller gets its answer (so a
//! `kill -9` right after keeps it). Who (the token's name), from where, what, and the result.
//! Counted in `onair_admin_calls_total{outcome}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// The file, under the node's state dir.
pub const FILE: &str = "audit.log";

/// One audited call.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    /// The token's name; `-` when none was recognized.
    pub who: &'a str,
    pub from: String,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `ok`, or the error the caller got.
    pub result: String,
}

/// Refused calls written per second at most (the rest are counted only).
pub const REFUSALS_PER_SECOND: u64 = 10;

/// The longest path written (a caller chooses it).
const MAX_PATH: usize = 512;

/// Whether another refused call may be written in `second` (UNIX seconds).
pub fn refusal_allowed(second: u64) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The second in the high half, the count in the low one: one atomic word.
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let mut current = WINDOW.load(Ordering::Relaxed);
    loop {
        let (at, count) = (current >> 32, current & 0xffff_ffff);
        let next = if at == (second & 0xffff_ffff) {
            if count >= REFUSALS_PER_SECOND {
                return false;
            }
            current + 1
        } else {
            ((second & 0xffff_ffff) << 32) | 1
        };
        match WINDOW.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// `path` cut to [`MAX_PATH`] bytes (at a character).
pub fn shortened(path: &str) -> &str {
    if path.len() <= MAX_PATH {
        return path;
    }
    let cut = (0..=MAX_PATH)
        .rev()
        .find(|i| path.is_char_boundary(*i))
        .unwrap_or(0);
    &path[..cut]
}

/// Serializes the appends (one line at a time, in order).
static WRITING: Mutex<()> = Mutex::new(());

/// Appends `entry` to the audit log in `state_dir`, durably. A failure to write is logged (the
/// call itself has been made; refusing its answer would not undo it).
pub async fn record(state_dir: &Path, entry: &Entry<'_>) {
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    let path = state_dir.join(FILE);
    let written = tokio::task::spawn_blocking(move || append(&path, &line)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err((path, e))) => {
            tracing::error!("audit: cannot append to {}: {e}", path.display());
        }
        Err(e) => tracing::error!("audit: {e}"),
    }
}

fn append(path: &Path, line: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let _one_at_a_time = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| (path.to_owned(), e))?;
    file.write_all(line)
        .and_then(|()| file.sync_data())
        .map_err(|e| (path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_written_a_few_a_second_and_paths_are_cut() {
        let second = 1_800_000_000;
        let written = (0..50).filter(|_| refusal_allowed(second)).count();
        assert_eq!(written as u64, REFUSALS_PER_SECOND);
        assert!(refusal_allowed(second + 1), "a new second");
        let long = "/x".repeat(1000);
        assert_eq!(shortened(&long).len(), MAX_PATH);
        assert_eq!(shortened("/purge"), "/purge");
    }
}
