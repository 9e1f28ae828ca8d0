//! Fleet status: every node puts a heartbeat (who it is, where it is in the operation stream,
//! attack mode, cache, origins down) into a JetStream key-value bucket every few seconds, keyed
//! by node id. Any node's `GET /fleet` and `onair fleet status` read the whole bucket: who is
//! up, who lags, who is in attack mode, whose origins are down; a node whose heartbeat is older
//! than [`SILENT_AFTER`] is shown as silent. `GET /fleet/ops/SEQ` and `onair fleet wait SEQ`
//! tell which nodes have applied an operation.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Fleet;

/// How often a node puts its heartbeat.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// A node whose last heartbeat is older than this is silent (down, or cut off from the bus).
pub const SILENT_AFTER: Duration = Duration::from_secs(15);
/// Heartbeats of nodes gone for good leave the bucket after this.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// One node's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    pub region: String,
    pub version: String,
    pub config_version: u64,
    /// The last operation (stream sequence) applied.
    pub applied: u64,
    pub attack_mode: bool,
    pub cache_memory_bytes: u64,
    pub cache_memory_objects: u64,
    /// `pool/origin` of every origin this node sees down.
    pub origins_down: Vec<String>,
    /// When it was put, UNIX milliseconds.
    pub at: u64,
    /// The latest operations this node refused (forged, stale, invalid), up to 32.
    #[serde(default)]
    pub refused: Vec<u64>,
    /// How far the bus's clock is from this node's (ms), as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// The fleet's releases it holds, with how far it warmed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<crate::release::Beat>,
    /// Set by the reader, never sent: the heartbeat claims operations the stream does not
    /// hold, so no node wrote it (the bucket is as open as the bus's permissions make it).
    #[serde(skip)]
    pub doubtful: bool,
}

impl Heartbeat {
    pub fn silent(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at) > u64::try_from(SILENT_AFTER.as_millis()).unwrap_or(0)
    }

    fn state(&self, now_ms: u64) -> &'static str {
        if self.doubtful {
            "doubtful"
        } else if self.silent(now_ms) {
            "silent"
        } else {
            "up"
        }
    }
}

/// The newest operation a (believable) node has applied.
fn newest(beats: &[Heartbeat]) -> u64 {
    beats
        .iter()
        .filter(|b| !b.doubtful)
        .map(|b| b.applied)
        .max()
        .unwrap_or(0)
}

/// The bucket's name: the stream's, with `_nodes`.
pub fn bucket(cfg: &Fleet) -> String {
    format!("{}_nodes", cfg.stream)
}

/// The heartbeat bucket, created by the first node that needs it. Its stream is made here
/// with the key-value conventions (`KV_<bucket>`, `$KV.<bucket>.>`, one value per key) rather
/// than by the client's `create_key_value`, which first asks for account details in a form
/// that nats-server 2.9 (Debian's) does not answer in.
pub async fn store(js: &jetstream::Context, cfg: &Fleet) -> Result<kv::Store, String> {
    let name = bucket(cfg);
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: FORGET_AFTER,
        max_message_size: 64 << 10,
        storage: stream::StorageType::File,
        // A put never needs a roll-up; a node's key could otherwise wipe every heartbeat.
        allow_rollup: false,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("heartbeat bucket {name}: {e}"))?;
    js.get_key_value(&name)
        .await
        .map_err(|e| format!("heartbeat bucket {name}: {e}"))
}

/// Puts this node's heartbeat; and, from the time the bus stored it, how far this node's
/// clock is from the bus's (ms, the bus's minus this node's; within half the round trip).
/// Releases lift their embargo by each node's clock, so this is how far apart nodes release.
pub async fn put(store: &kv::Store, heartbeat: &Heartbeat) -> Result<Option<i64>, String> {
    let value = serde_json::to_vec(heartbeat).unwrap_or_default();
    let sent = std::time::SystemTime::now();
    store
        .put(&heartbeat.id, value.into())
        .await
        .map_err(|e| format!("heartbeat: {e}"))?;
    let back = std::time::SystemTime::now();
    let Ok(Some(entry)) = store.entry(&heartbeat.id).await else {
        return Ok(None);
    };
    // The put was stored between `sent` and `back`: its midpoint is the best guess of when.
    let rtt = back.duration_since(sent).unwrap_or_default();
    let local = sent + rtt / 2;
    let local_ns = i128::from(super::op::unix_ms(local)) * 1_000_000
        + i128::from(
            local
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 1_000_000),
        );
    let offset_ns = entry.created.unix_timestamp_nanos() - local_ns;
    Ok(i64::try_from(offset_ns / 1_000_000).ok())
}

/// Heartbeats read at most (a bucket filled by whoever holds the bus must not make a status
/// call endless).
const MAX_NODES: usize = 10_000;
/// A status call's deadline.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Heartbeats read at once: a status call over a far link costs a few round trips, not one
/// per node.
const PARALLEL_READS: usize = 32;

/// Every node's last heartbeat, sorted by region then id; those claiming operations beyond the
/// `stream`'s last one marked doubtful (read after the heartbeats, so no node's is).
pub async fn all(store: &kv::Store, stream: &mut stream::Stream) -> Result<Vec<Heartbeat>, String> {
    tokio::time::timeout(READ_TIMEOUT, async {
        let mut beats = read_all(store).await?;
        let last = stream
            .info()
            .await
            .map_err(|e| format!("stream info: {e}"))?
            .state
            .last_sequence;
        for beat in &mut beats {
            beat.doubtful = beat.applied > last;
        }
        Ok(beats)
    })
    .await
    .map_err(|_| format!("heartbeats: no answer within {READ_TIMEOUT:?}"))?
}

async fn read_all(store: &kv::Store) -> Result<Vec<Heartbeat>, String> {
    let mut keys = store.keys().await.map_err(|e| format!("heartbeats: {e}"))?;
    let mut ids = Vec::new();
    while let Some(key) = keys.next().await {
        ids.push(key.map_err(|e| format!("heartbeats: {e}"))?);
        if ids.len() >= MAX_NODES {
            break;
        }
    }
    let mut beats: Vec<Heartbeat> = futures_util::stream::iter(ids)
        .map(|id| async move { store.get(id).await })
        .buffer_unordered(PARALLEL_READS)
        .filter_map(|value| async move { serde_json::from_slice::<Heartbeat>(&value.ok()??).ok() })
        .collect()
        .await;
    beats.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
    Ok(beats)
}

/// `GET /fleet`: every node, whether it is silent, and how far behind the newest applied
/// operation it is.
pub fn fleet_json(beats: &[Heartbeat], now_ms: u64) -> serde_json::Value {
    let newest = newest(beats);
    let nodes: Vec<_> = beats
        .iter()
        .map(|b| {
            serde_json::json!({
                "id": b.id,
                "region": b.region,
                "state": b.state(now_ms),
                "last_heartbeat_ms_ago": now_ms.saturating_sub(b.at),
                "version": b.version,
                "config_version": b.config_version,
                "applied": b.applied,
                "behind": newest.saturating_sub(b.applied),
                "attack_mode": b.attack_mode,
                "cache_memory_bytes": b.cache_memory_bytes,
                "cache_memory_objects": b.cache_memory_objects,
                "origins_down": b.origins_down,
                "refused": b.refused,
                "clock_offset_ms": b.clock_offset_ms,
            })
        })
        .collect();
    serde_json::json!({
        "nodes": nodes,
        "newest_applied": newest,
        "silent_after_s": SILENT_AFTER.as_secs(),
    })
}

/// `GET /fleet/ops/SEQ`: which nodes have applied operation `seq`, which have not yet, and
/// which are silent (they will when they are back); heartbeats no node wrote count for nothing.
pub fn op_json(beats: &[Heartbeat], seq: u64, now_ms: u64) -> serde_json::Value {
    let (mut applied, mut pending, mut silent) = (Vec::new(), Vec::new(), Vec::new());
    let (mut doubtful, mut refused) = (Vec::new(), Vec::new());
    for b in beats {
        if b.doubtful {
            doubtful.push(b.id.clone());
        } else if b.refused.contains(&seq) {
            refused.push(b.id.clone());
        } else if b.applied >= seq {
            applied.push(b.id.clone());
        } else if b.silent(now_ms) {
            silent.push(b.id.clone());
        } else {
            pending.push(b.id.clone());
        }
    }
    let mut answer = serde_json::json!({
        "seq": seq,
        "applied": applied,
        "pending": pending,
        "silent": silent,
        "refused": refused,
        "doubtful": doubtful,
        // Done: every node that is not silent has applied it, none refused it.
        "done": pending.is_empty() && refused.is_empty() && !applied.is_empty(),
    });
    // A release this operation set: each node's warm list (what is still missing, or was
    // when it came out there).
    let releases: serde_json::Map<String, serde_json::Value> = beats
        .iter()
        .filter(|b| !b.doubtful)
        .filter_map(|b| {
            let release = b.releases.iter().find(|r| r.seq == Some(seq))?;
            Some((b.id.clone(), serde_json::json!(release)))
        })
        .collect();
    if !releases.is_empty() {
        answer["release"] = releases.into();
    }
    answer
}

/// `onair fleet status`: the fleet as a table.
pub fn table(beats: &[Heartbeat], now_ms: u64) -> String {
    let newest = newest(beats);
    let mut out = format!(
        "{:<20} {:<8} {:<7} {:>9} {:>7} {:<7} {:>8} {}\n",
        "NODE", "REGION", "STATE", "APPLIED", "BEHIND", "ATTACK", "CLOCK", "ORIGINS DOWN"
    );
    for b in beats {
        let state = b.state(now_ms);
        out.push_str(&format!(
            "{:<20} {:<8} {:<7} {:>9} {:>7} {:<7} {:>8} {}\n",
            printable(&b.id),
            printable(&b.region),
            state,
            b.applied,
            newest.saturating_sub(b.applied),
            if b.attack_mode { "on" } else { "off" },
            b.clock_offset_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:+}ms")),
            if b.origins_down.is_empty() {
                "-".to_owned()
            } else {
                printable(&b.origins_down.join(" "))
            }
        ));
    }
    out
}

/// A heartbeat's text as a terminal may show it: anyone who can write to the bucket could put
/// escape sequences in it.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, applied: u64, at: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            region: "hn".into(),
            version: "0.1.0".into(),
            config_version: 1,
            applied,
            attack_mode: false,
            cache_memory_bytes: 0,
            cache_memory_objects: 0,
            origins_down: vec![],
            at,
            refused: vec![],
            releases: vec![],
            clock_offset_ms: None,
            doubtful: false,
        }
    }

    #[test]
    fn who_applied_who_lags_who_is_silent() {
        let now = 100_000;
        let beats = [
            beat("a", 7, now - 1_000),
            beat("b", 5, now - 2_000),
            beat("c", 3, now - 60_000),
        ];
        let op = op_json(&beats, 6, now);
        assert_eq!(op["applied"], serde_json::json!(["a"]));
        assert_eq!(op["pending"], serde_json::json!(["b"]));
        assert_eq!(op["silent"], serde_json::json!(["c"]));
        assert_eq!(op["done"], false);
        let fleet = fleet_json(&beats, now);
        assert_eq!(fleet["nodes"][1]["behind"], 2);
        assert_eq!(fleet["nodes"][2]["state"], "silent");
        let table = table(&beats, now);
        assert!(table.lines().nth(3).unwrap().contains("silent"), "{table}");
        // A node that refused it (its clock, or a key it does not have yet): not done.
        let mut refusing = beats[0].clone();
        refusing.refused = vec![6];
        let op = op_json(&[refusing], 6, now);
        assert_eq!(op["refused"], serde_json::json!(["a"]));
        assert_eq!(op["done"], false);
        // A heartbeat no node wrote (it claims what the stream does not hold) makes no one
        // done, and lags no one.
        let mut forged = beat("x", u64::MAX, now);
        forged.doubtful = true;
        let with = [beats[1].clone(), forged];
        let op = op_json(&with, 6, now);
        assert_eq!(op["doubtful"], serde_json::json!(["x"]));
        assert_eq!(op["done"], false);
        assert_eq!(fleet_json(&with, now)["nodes"][0]["behind"], 0);
        assert_eq!(fleet_json(&with, now)["nodes"][1]["state"], "doubtful");
        // Escape sequences from the bus never reach the terminal.
        let mut hostile = beat("\u{1b}[2Jx", 1, now);
        hostile.origins_down = vec!["p/\u{7}o".into()];
        let shown = super::table(&[hostile], now);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
    }

    #[test]
    fn a_release_operation_shows_each_nodes_warm_list() {
        let now = 100_000;
        let release = |seq, warmed, missing: &[&str]| crate::release::Beat {
            id: "vk".into(),
            seq: Some(seq),
            state: crate::release::State::Released,
            warm_total: 3,
            warmed,
            missing: missing.iter().map(|m| (*m).to_owned()).collect(),
        };
        let (mut a, mut b, c) = (beat("a", 9, now), beat("b", 9, now), beat("c", 9, now));
        a.releases = vec![release(8, 3, &[])];
        b.releases = vec![release(8, 2, &["http://a/vk/video.ts"])];
        let op = op_json(&[a.clone(), b.clone(), c], 8, now);
        assert_eq!(op["release"]["a"]["warmed"], 3);
        assert_eq!(
            op["release"]["b"]["missing"],
            serde_json::json!(["http://a/vk/video.ts"])
        );
        assert!(op["release"].get("c").is_none());
        // Another operation's status has no release; a heartbeat is read back as written.
        assert!(op_json(&[a.clone()], 7, now).get("release").is_none());
        let back: Heartbeat = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
    }
}
