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
