//! The node's fleet service: reads the operation stream from where this node left off,
//! verifies each operation, applies those meant for it, and records its position durably.
//!
//! A background service, never on the request path. With `[fleet]` absent it idles; with the
//! bus out of reach (at start or later) the node serves as it is and this service tries again
//! with a capped backoff, then carries on from its stored position, so what was published
//! meanwhile is applied in order. A reload that changes `[fleet]` reconnects with it.
//!
//! The position is the node's own (`state::Position`, fsynced before the next operation is
//! read), not a durable consumer's on the server: the server keeps no state per node, a node
//! restored from a backup replays from where its state dir says, and retiring a node leaves
//! nothing behind on the bus.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::op::{self, Action, Operation, Seen};
use super::{bus, state, status};
use crate::cache::EdgeCache;
use crate::config::{AttackMode, Fleet};
use crate::metrics::METRICS;
use crate::snapshot::{Live, Snapshot};

/// The first wait after a failed connection; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the service looks for a changed `[fleet]` (a reload) while it reads.
const CONFIG_CHECK: Duration = Duration::from_secs(1);
/// With nothing read for this long, the service asks the stream whether it missed anything.
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// How often, at most, the position is made durable while operations keep coming. Each store
/// is an fsync; at a hundred operations a second one each would cost the node more than
/// applying them. After a crash the node applies again what it applied in the last moments
/// before it: purging again is harmless, and attack-mode records replay in their order.
const STORE_EVERY: Duration = Duration::from_millis(200);

pub struct FleetService {
    pub live: Arc<Live>,
    pub cache: EdgeCache,
    /// Lent the connection while there is one (the admin API publishes through it).
    pub link: Arc<super::link::Link>,
}

/// Refused operations are logged at most once a second (junk on the bus must not flood the
/// log); the metric counts every one.
#[derive(Default)]
struct Refusals {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn log(&mut self, why: &str) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            "fleet: refused an operation ({why}; {} more refused since the last line): only \
             operations signed by fleet.verify_key, issued within fleet.max_skew, and new, are \
             applied",
            self.unlogged
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}

/// Why a session with the bus ended without an error.
enum Ended {
    Shutdown,
    Reconfigured,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_BACKOFF;
        // Kept across reconnects: an operation delivered again after one is not applied twice.
        let mut seen = Seen::default();
        let first = self.live.current();
        if first.config.fleet.is_some() {
            self.restore_attack_mode(&first.config.node.state_dir);
        }
        loop {
            let snapshot = self.live.current();
            let Some(cfg) = snapshot.config.fleet.clone() else {
                METRICS.fleet_connected(false);
                // No fleet (any more): nothing to catch up with.
                self.cache.catch_up.open();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(CONFIG_CHECK) => continue,
                }
            };
            let began = Instant::now();
            let result = self
                .session(&cfg, &snapshot, &mut seen, &mut shutdown)
                .await;
            if began.elapsed() > MAX_BACKOFF {
                // A session that lasted is not a failure in a row.
                backoff = FIRST_BACKOFF;
            }
            self.link.take_back();
            METRICS.fleet_connected(false);
            match result {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Reconfigured) => backoff = FIRST_BACKOFF,
                Err(e) => {
                    tracing::warn!("fleet: {e}; the node serves on, trying again in {backoff:?}");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl FleetService {
    /// One connection to the bus: catch up from the stored position, then follow the stream.
    async fn session(
        &self,
        cfg: &Fleet,
        snapshot: &Snapshot,
        seen: &mut Seen,
        shutdown: &mut ShutdownWatch,
    ) -> Result<Ended, String> {
        let node = snapshot.config.node.id.clone();
        let state_dir = snapshot.config.node.state_dir.clone();
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client = bus::connect_counting(cfg, &node, connections.clone()).await?;
        let js = jetstream::new(client.clone());
        let mut stream = bus::stream(&js, cfg).await?;
        let mut position = load(&state_dir).await;
        seen.raise(position.newest);
        let (first, last, identity) = {
            let info = stream
                .info()
                .await
                .map_err(|e| format!("stream info: {e}"))?;
            let created = info.created.unix_timestamp_nanos() / 1_000_000;
            (
                info.state.first_sequence,
                info.state.last_sequence,
                created.to_string(),
            )
        };
        let reset = position.stream.as_ref().is_some_and(|s| *s != identity) || position.seq > last;
        let fell_off = position.seq > 0 && position.seq.saturating_add(1) < first;
        if reset || fell_off {
            // Operations this node never saw are gone (retention took them, or the stream was
            // made again): it cannot know what they purged. Everything it holds is marked
            // stale, so each copy is revalidated before it is served again, and still served
            // if the origin fails (never off air).
            tracing::error!(
                "fleet: this node applied up to operation {} of {}, the stream now holds {first} \
                 to {last} of {identity}: operations it never saw are lost; every cached \
                 object is marked stale",
                position.seq,
                position.stream.as_deref().unwrap_or("an unknown stream"),
            );
            let everything = crate::cache::purge::Selector::Prefix(String::new());
            let report = self.cache.purge(&everything, true).await;
            tracing::error!("fleet: marked {} cached objects stale", report.purged);
            position.seq = first.saturating_sub(1);
        }
        if position.stream.as_deref() != Some(identity.as_str()) || reset || fell_off {
            position.stream = Some(identity);
            store(&state_dir, position.clone()).await?;
        }
        METRICS.fleet_position(position.seq, Duration::ZERO);
        // Caught up once everything stored before this connection is applied.
        if position.seq >= last {
            self.caught_up(position.seq);
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: bus::ops_subject(cfg),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: position.seq.saturating_add(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("reading operations: {e}"))?;
        // Best effort: without the bucket the node still applies operations.
        let heartbeats = match status::store(&js, cfg).await {
            Ok(store) => Some(store),
            Err(e) => {
                tracing::warn!("fleet: {e}; no heartbeats this session");
                None
            }
        };
        METRICS.fleet_connected(true);
        self.link
            .lend(client.clone(), js.clone(), cfg.clone(), heartbeats.clone());
        tracing::info!(
            "fleet: connected; reading operations from sequence {}",
            position.seq.saturating_add(1)
        );
        let mut check = tokio::time::interval(CONFIG_CHECK);
        let mut beat = tokio::time::interval(status::INTERVAL);
        let mut refusals = Refusals::default();
        // When the node last moved on in the stream (or looked and had nothing to read).
        let mut progressed = Instant::now();
        // The first connection's event may come after this: only a second one is a reconnect.
        let connected = connections
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        // Applied but not yet on disk; and when it last was (the first operation of the
        // session is stored at once).
        let mut dirty = false;
        let mut stored = Instant::now()
            .checked_sub(STORE_EVERY)
            .unwrap_or_else(Instant::now);
        let ended = async { loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Ended::Shutdown),
                _ = beat.tick() => {
                    // A missed heartbeat is not worth ending the session for: the next one
                    // comes in a few seconds.
                    if let Some(store) = &heartbeats {
                        if let Err(e) = status::put(store, &self.heartbeat(position.seq)).await {
                            tracing::debug!("fleet: {e}");
                        }
                    }
                }
                _ = tokio::time::sleep_until((stored + STORE_EVERY).into()), if dirty => {
                    store(&state_dir, position.clone()).await?;
                    (dirty, stored) = (false, Instant::now());
                }
                _ = check.tick() => {
                    // The client reconnects by itself; the metric follows its state.
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    METRICS.fleet_connected(up);
                    if connections.load(std::sync::atomic::Ordering::Relaxed) > connected {
                        // Reconnected (perhaps to another server): the ordered consumer may
                        // have been on the server that went; read on from the stored position
                        // with a new one.
                        return Err("the bus connection was made again".to_owned());
                    }
                    if progressed.elapsed() >= STUCK_AFTER {
                        // The stream holds operations this node has not read, and none came:
                        // the consumer went with a server of the cluster (no reconnect here).
                        let last = stream
                            .get_info()
                            .await
                            .map_err(|e| format!("stream info: {e}"))?
                            .state
                            .last_sequence;
                        if last > position.seq {
                            return Err(format!(
                                "the stream holds operations up to {last}, this node read up to \
                                 {} and none came for {STUCK_AFTER:?}",
                                position.seq
                            ));
                        }
                        progressed = Instant::now();
                    }
                    if self.live.current().config.fleet.as_ref() != Some(cfg) {
                        tracing::info!("fleet: [fleet] changed; reconnecting with it");
                        return Ok(Ended::Reconfigured);
                    }
                }
                next = messages.next() => {
                    let Some(message) = next else {
                        return Err("the operation stream ended".to_owned());
                    };
                    let message = message.map_err(|e| format!("reading operations: {e}"))?;
                    let (seq, stored_at, pending) = {
                        let info = message.info().map_err(|e| format!("operation metadata: {e}"))?;
                        let ms = info.published.unix_timestamp_nanos() / 1_000_000;
                        (info.stream_sequence, u64::try_from(ms).unwrap_or(0), info.pending)
                    };
                    if seq <= position.seq {
                        // The ordered consumer started again from the stream's start (it does
                        // after a reconnect before its first message): a new session reads
                        // on from the stored position instead of applying old operations again.
                        return Err(format!(
                            "the bus sent operation {seq} again (applied up to {})",
                            position.seq
                        ));
                    }
                    progressed = Instant::now();
                    self.handle(&message.payload, stored_at, cfg, seen, &mut position, &mut refusals)
                        .await;
                    position.seq = seq;
                    position.at = op::unix_ms(SystemTime::now());
                    position.newest = seen.newest();
                    // Durable at once after a quiet spell, then at most every STORE_EVERY.
                    dirty = true;
                    if stored.elapsed() >= STORE_EVERY {
                        store(&state_dir, position.clone()).await?;
                        (dirty, stored) = (false, Instant::now());
                    }
                    if seq >= last || pending == 0 {
                        self.caught_up(seq);
                    }
                    let lag = if pending > 0 {
                        Duration::from_millis(position.at.saturating_sub(stored_at))
                    } else {
                        Duration::ZERO
                    };
                    METRICS.fleet_position(seq, lag);
                }
            }
        } }
        .await;
        // Whatever ended the session, what was applied is on disk before the next one reads
        // on from there (else it would meet its own operations again, as replays).
        if dirty {
            store(&state_dir, position).await?;
        }
        ended
    }

    /// This node as the fleet status shows it.
    fn heartbeat(&self, applied: u64) -> status::Heartbeat {
        let snapshot = self.live.current();
        let origins_down = snapshot
            .pools
            .iter()
            .flat_map(|p| {
                p.origins
                    .iter()
                    .filter(|o| !o.health.is_up())
                    .map(move |o| format!("{}/{}", p.name(), o.label))
            })
            .collect();
        status::Heartbeat {
            id: snapshot.config.node.id.clone(),
            region: snapshot.config.node.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_version: snapshot.version,
            applied,
            attack_mode: self.live.attack().active(),
            cache_memory_bytes: self.cache.memory.size(),
            cache_memory_objects: self.cache.memory.objects(),
            origins_down,
            at: op::unix_ms(SystemTime::now()),
            doubtful: false,
        }
    }

    /// Everything published until this connection is applied: copies stored before the start
    /// are current again.
    fn caught_up(&self, seq: u64) {
        if !self.cache.catch_up.is_open() {
            tracing::info!("fleet: caught up at operation {seq}");
            self.cache.catch_up.open();
        }
    }

    /// Verifies one operation and applies it if it is meant for this node; counts the result.
    async fn handle(
        &self,
        envelope: &[u8],
        stored_at: u64,
        cfg: &Fleet,
        seen: &mut Seen,
        position: &mut state::Position,
        refusals: &mut Refusals,
    ) {
        let op = match op::verify(
            envelope,
            &cfg.verify_keys,
            stored_at,
            op::unix_ms(SystemTime::now()),
            cfg.max_skew,
            seen,
        ) {
            Ok(op) => op,
            Err(refusal) => {
                METRICS.fleet_op("unknown", refusal.label());
                refusals.log(refusal.label());
                return;
            }
        };
        let snapshot = self.live.current();
        let node = &snapshot.config.node;
        let kind = op.action.kind();
        if !op.scope.includes(&node.id, &node.region) {
            METRICS.fleet_op(kind, "not_in_scope");
            return;
        }
        if let Action::AttackMode { mode } = &op.action {
            // An older attack-mode operation (replayed by whoever holds the bus) never
            // overrides a newer one.
            if position
                .attack
                .as_ref()
                .is_some_and(|last| last.issued_at > op.issued_at)
            {
                METRICS.fleet_op(kind, "stale");
                refusals.log("stale");
                return;
            }
            position.attack = Some(state::AttackRecord {
                mode: mode.clone(),
                issued_at: op.issued_at,
            });
        }
        if self.link.was_applied_here(&op.id) {
            // This node's admin API published it and applied it here itself.
            METRICS.fleet_op(kind, "applied");
            return;
        }
        match self.apply(&op, &snapshot).await {
            Ok(what) => {
                METRICS.fleet_op(kind, "applied");
                tracing::info!(id = %op.id, scope = %op.scope, "fleet: applied {kind}: {what}");
            }
            Err(e) => {
                METRICS.fleet_op(kind, "invalid");
                tracing::warn!(id = %op.id, "fleet: cannot apply {kind}: {e}");
            }
        }
    }

    /// The attack mode the fleet set last, after a restart (it lives in memory otherwise).
    pub fn restore_attack_mode(&self, state_dir: &Path) {
        let Some(record) = state::load(state_dir).attack else {
            return;
        };
        if let Some(mode) = AttackMode::parse(&record.mode) {
            let snapshot = self.live.current();
            self.live
                .attack()
                .set(mode, &snapshot.config.protect.attack, Instant::now());
            tracing::info!(
                "fleet: attack mode {} as the fleet last set it",
                record.mode
            );
        }
    }

    async fn apply(&self, op: &Operation, snapshot: &Snapshot) -> Result<String, String> {
        match &op.action {
            Action::Purge { .. } => {
                let request = op
                    .action
                    .purge_request()
                    .ok_or_else(|| "not a purge".to_owned())?;
                let selector = snapshot.purge_selector(&request)?;
                let report = self.cache.purge(&selector, request.soft).await;
                Ok(format!("{} objects", report.purged))
            }
            Action::AttackMode { mode } => {
                let mode = AttackMode::parse(mode)
                    .ok_or_else(|| format!("{mode:?} is not on, off or auto"))?;
                self.live
                    .attack()
                    .set(mode, &snapshot.config.protect.attack, Instant::now());
                Ok(mode.as_str().to_owned())
            }
        }
    }
}

async fn load(state_dir: &Path) -> state::Position {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || state::load(&dir))
        .await
        .unwrap_or_default()
}

async fn store(state_dir: &Path, position: state::Position) -> Result<(), String> {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || state::store(&dir, position))
        .await
        .map_err(|e| format!("storing the fleet position: {e}"))?
        .map_err(|e| format!("storing the fleet position in {}: {e}", state_dir.display()))
}
