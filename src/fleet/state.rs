//! Where a node is in the operation stream: the last sequence it applied, in its state dir,
//! written to a temporary file, fsynced and renamed over the old one, so that after a crash it
//! is either the old position or the new one, never a torn file. A node that lost it (a new
//! machine, a wiped state dir) starts from the beginning of the stream: applying purges again
//! is harmless.

use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "fleet.position";

/// The applied position of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The last stream sequence applied (or refused for good); 0: none yet.
    pub seq: u64,
    /// When it was applied, UNIX milliseconds.
    pub at: u64,
    /// Which stream `seq` counts in (its creation time): a stream deleted and made again
    /// numbers from 1, and a position in the old one says nothing about the new one.
    #[serde(default)]
    pub stream: Option<String>,
    /// The last attack-mode operation applied: the mode outlives a restart, and an older
    /// operation (a replay) never overrides a newer one.
    #[serde(default)]
    pub attack: Option<AttackRecord>,
    /// The newest issue time of an operation acted on (UNIX ms, signed): after a restart,
    /// operations older than it by more than twice `max_skew` cannot be new (see `op::Seen`).
    #[serde(default)]
    pub newest: u64,
}

/// An applied attack-mode operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttackRecord {
    pub mode: String,
    /// Its issue time, UNIX milliseconds (signed, unlike the bus's metadata).
    pub issued_at: u64,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The stored position; a missing or unreadable file is the start of the stream.
pub fn load(state_dir: &Path) -> Position {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "fleet: {} is unreadable ({e}); replaying the operation stream from its start",
                path(state_dir).display()
            );
            Position::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Position::default(),
        Err(e) => {
            tracing::warn!(
                "fleet: cannot read {} ({e}); replaying the operation stream from its start",
                path(state_dir).display()
            );
            Position::default()
        }
    }
}

/// Forgets the position (kept aside as `fleet.position.old`): the node reads the operation
/// stream again from its start, as a new node would (a release book lost with its file).
pub fn read_again(state_dir: &Path) {
    let from = path(state_dir);
    if from.exists() {
        let _ = std::fs::rename(&from, state_dir.join(format!("{FILE}.old")));
        tracing::warn!("fleet: reading the operation stream again from its start");
    }
}

/// Stores `position` durably. Blocking (fsync): call it from a blocking thread.
pub fn store(state_dir: &Path, position: Position) -> std::io::Result<()> {
    write_durably(
        state_dir,
        FILE,
        &serde_json::to_vec(&position).unwrap_or_default(),
    )
}

/// Replaces `state_dir/name` with `bytes` so that after a crash it is the old file or the new
/// one, never a torn one: a temporary file, fsynced, renamed over it, the directory fsynced.
pub fn write_durably(state_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    // Two processes over one state dir (a graceful upgrade) must not write one temp file.
    let tmp = state_dir.join(format!("{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(name))?;
    // The rename itself must survive a crash too.
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_survives_and_garbage_is_the_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Position::default());
        let p = Position {
            seq: 42,
            at: 7,
            stream: Some("1764720000000".into()),
            attack: Some(AttackRecord {
                mode: "on".into(),
                issued_at: 5,
            }),
            newest: 9,
        };
        store(dir.path(), p.clone()).unwrap();
        assert_eq!(load(dir.path()), p);
        // A file from before the stream identity was kept still reads.
        std::fs::write(dir.path().join(FILE), br#"{"seq": 3, "at": 1}"#).unwrap();
        assert_eq!(load(dir.path()).seq, 3);
        std::fs::write(dir.path().join(FILE), b"{torn").unwrap();
        assert_eq!(load(dir.path()), Position::default());
    }
}
